//! Running the experiment through the master's API: create and start it (or resume the one this
//! state directory already has), then wait for it to end, showing progress.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use caldera_db::{PgPool, experiments};
use reqwest::Method;
use serde_json::Value;

use super::spec::{experiment_body, experiment_name};
use super::{LocalArgs, say};

/// Create (or resume) the experiment and wait for it, showing progress. Returns its name.
pub(super) async fn drive(
    args: &LocalArgs,
    end: &str,
    pool: &PgPool,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let name = experiment_name(args);
    let api = Api {
        http: reqwest::Client::new(),
        base,
        token,
    };
    match experiments::get(pool, &name).await {
        Ok(row) => resume(&api, pool, &name, row).await?,
        Err(caldera_db::DbError::NotFound { .. }) => {
            let body = experiment_body(args, end, &name)?;
            create_and_start(&api, &name, body).await?;
            say(format_args!(
                "experiment {name} started: {} vs {end}, {}",
                args.start, args.mode
            ));
        }
        Err(e) => return Err(e.into()),
    }
    wait_until_finished(pool, &name).await?;
    Ok(name)
}

/// The master's API as the admin of this state directory.
struct Api<'a> {
    http: reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Api<'_> {
    /// Sends a request to `/api/v1{path}`; a failure is an error naming the message and field.
    async fn call(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let e = &v["error"];
            bail!(
                "{} (field `{}`)",
                e["message"].as_str().unwrap_or("request failed"),
                e["field"].as_str().unwrap_or("-")
            );
        }
        Ok(v)
    }
}

/// Resumes the experiment this state directory already has, with its data: starts it if it is
/// still queued, resumes it if paused.
async fn resume(
    api: &Api<'_>,
    pool: &PgPool,
    name: &str,
    row: experiments::ExperimentRow,
) -> anyhow::Result<()> {
    let p = caldera_db::jobs::progress_of(pool, row.id).await?;
    say(format_args!(
        "experiment {name} exists ({}, {}/{} jobs finished); resuming it with its data",
        row.status,
        p.done + p.error + p.cancelled,
        p.total()
    ));
    match row.status.as_str() {
        "queued" => drop(
            api.call(Method::POST, format!("/experiments/{name}/start"), None)
                .await?,
        ),
        "paused" => drop(
            api.call(Method::POST, format!("/experiments/{name}/resume"), None)
                .await?,
        ),
        _ => {}
    }
    Ok(())
}

/// Creates the experiment and starts it; one that cannot start is deleted again.
async fn create_and_start(api: &Api<'_>, name: &str, body: Value) -> anyhow::Result<()> {
    api.call(Method::POST, "/experiments".into(), Some(body))
        .await?;
    if let Err(e) = api
        .call(Method::POST, format!("/experiments/{name}/start"), None)
        .await
    {
        // not left behind half-made: the next run would only fail the same way
        let _ = api
            .call(Method::DELETE, format!("/experiments/{name}"), None)
            .await;
        return Err(e.context(format!("starting experiment {name}")));
    }
    Ok(())
}

/// Polls the experiment until its status is terminal: a progress bar on a terminal, else a line
/// every 10 s.
async fn wait_until_finished(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let bar = std::io::stderr().is_terminal().then(progress_bar);
    let t0 = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let row = experiments::get(pool, name).await?;
        let p = caldera_db::jobs::progress_of(pool, row.id).await?;
        let finished = (p.done + p.error + p.cancelled) as u64;
        let msg = format!("{} running, {} queued", p.running, p.queued);
        match &bar {
            Some(b) => {
                b.set_length(p.total() as u64);
                b.set_position(finished);
                b.set_message(msg);
            }
            None if last_line.elapsed() >= Duration::from_secs(10) => {
                last_line = Instant::now();
                say(format_args!(
                    "[{:>5}s] {finished}/{} jobs finished, {msg}",
                    t0.elapsed().as_secs(),
                    p.total()
                ));
            }
            None => {}
        }
        if row.status.is_terminal() {
            if let Some(b) = &bar {
                b.finish();
            }
            say(format_args!(
                "experiment {name} {} after {:.0?}",
                row.status,
                t0.elapsed()
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} jobs {msg} (eta {eta})",
        )
        .expect("a valid template"),
    );
    b
}
