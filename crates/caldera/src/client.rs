//! A small HTTP client for the master's API, shared by the CLI commands.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How to reach the master.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the master's HTTP API.
    #[arg(
        long,
        env = "CALDERA_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token (create one with `caldera token create`).
    #[arg(long, env = "CALDERA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the raw JSON responses instead of human-readable output.
    #[arg(long, env = "CALDERA_JSON", global = true)]
    pub json: bool,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ServerArgs) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    /// Send a request to `/api/v1{path}`; returns the JSON body (or `Null` for 204).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: cannot reach the master"))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {url}: reading the response"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let err = &value["error"];
        let message = err["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        match err["field"].as_str() {
            Some(field) => bail!("{message} (field `{field}`, HTTP {status})"),
            None => bail!("{message} (HTTP {status})"),
        }
    }
}

/// Percent-encode a path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
