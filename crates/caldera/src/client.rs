//! A small HTTP client for the master's API, shared by the CLI commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How to reach the master.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the master's HTTP API. An https:// master's certificate is checked against the
    /// system's roots or the CA file; http:// is plain TCP, for a loopback address (elsewhere it
    /// needs the insecure-plaintext option).
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
    /// CA certificates (PEM) the master's certificate must chain to, instead of the system's roots
    /// (e.g. the ca.pem of `caldera cert ca`).
    #[arg(long, env = "CALDERA_CA_FILE", global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow http:// to a master that is not on loopback: the API token crosses the network in
    /// clear text.
    #[arg(long, env = "CALDERA_INSECURE_PLAINTEXT", global = true)]
    pub insecure_plaintext: bool,
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
        let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        let http = with_transport(builder, args)?
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: args.server.trim_end_matches('/').to_owned(),
            token: args.token.clone(),
        })
    }

    /// The master's base URL (no trailing `/`), for links printed to the user.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request to `/api/v1{path}`; returns the JSON body (or `Null` for 204).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (resp, url) = self.send(method.clone(), path, body).await?;
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
        api_error(&value, status)
    }

    /// `GET /api/v1{path}` for a body that is not JSON (a log, a report file): the response, to
    /// read chunk by chunk, once its status says success; an error response becomes the error.
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let (resp, url) = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp
            .text()
            .await
            .with_context(|| format!("GET {url}: reading the response"))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        api_error(&value, status)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(reqwest::Response, String)> {
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
        Ok((resp, url))
    }
}

/// TLS for `https://` (the system's roots, or only those of --ca-file); plain TCP for `http://`
/// to loopback, or elsewhere with --insecure-plaintext (and a warning).
fn with_transport(
    builder: reqwest::ClientBuilder,
    args: &ServerArgs,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let url = reqwest::Url::parse(&args.server)
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" => {
            let tls = caldera_worker::tls::client_config(args.ca_file.as_deref(), &[b"http/1.1"])
                .map_err(anyhow::Error::msg)
                .context("--ca-file")?;
            Ok(builder.use_preconfigured_tls(tls))
        }
        "http" => {
            caldera_worker::tls::check_plaintext(host, args.insecure_plaintext)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("--server {}", args.server))?;
            if !caldera_worker::tls::is_loopback(host) {
                tracing::warn!(
                    server = args.server,
                    "plain HTTP (--insecure-plaintext): the API token crosses the network in clear text"
                );
            }
            Ok(builder)
        }
        other => anyhow::bail!(
            "--server {}: {other}:// is neither https:// nor http://",
            args.server
        ),
    }
}

/// An error answer of the API: its status, message and the field it names.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{} (field `{field}`, HTTP {})",
                self.message, self.status
            ),
            None => write!(f, "{} (HTTP {})", self.message, self.status),
        }
    }
}

impl std::error::Error for ApiError {}

/// The error of an API error response: its message, the field it names and the status.
fn api_error<T>(value: &Value, status: StatusCode) -> anyhow::Result<T> {
    let err = &value["error"];
    let message = err["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    Err(ApiError {
        status,
        message,
        field: err["field"].as_str().map(str::to_owned),
    }
    .into())
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
