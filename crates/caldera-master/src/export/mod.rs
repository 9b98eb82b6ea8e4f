//! Report exports: the files of an experiment's report, written to object storage under
//! `experiments/{experiment}/report/{file}` ([`caldera_storage::keys::report`]) when the experiment
//! completes (see [`install_completion_hook`]) and on demand (`POST /api/v1/experiments/{name}/report`).
//!
//! | file | content | stored |
//! | --- | --- | --- |
//! | `summary.md` | [`summary_markdown`](caldera_report::summary_markdown): headline, counts, root regressions, errors, spurious results, fit to paste in a GitHub issue; then the triaged regressions ([`crate::triage::summary_section`]) | plain |
//! | `results.json` | the whole [`Report`] as JSON: every crate with both outcomes, comparison, log keys and root causes; plus `"triage"`: the triage mark that applies to each marked regression, by crate id | zstd |
//! | `index.html` | a static page browsable without the master: counts, root causes, error groups, and every crate that is not the same on both sides, with links to its logs | zstd |
//! | `retry.txt` | [`Report::retry_list`] as crate specs, one a line (regressions, then spurious and error crates): joined with commas it is a crate selection, and as lines it is a crate list | plain |
//! | `logs.tar.zst` | the logs of every crate listed in `index.html`, as `logs/{crate}/start.log` and `logs/{crate}/end.log` (plus `logs/MISSING.txt` naming logs that could not be read) | tar + zstd |
//!
//! `results.json` and `index.html` are stored zstd-compressed (`Content-Encoding: zstd`) so big
//! experiments stay under the store's object size cap; the HTTP API serves them decompressed (or
//! compressed, to clients that accept zstd). Download `index.html` and `logs.tar.zst` into one
//! directory and extract the archive there (`tar --zstd -xf logs.tar.zst`): the page's log links
//! then open the logs, with no master involved.
//!
//! Nothing is built whole in memory but the report itself: JSON, HTML and the archive are produced
//! on blocking threads into bounded channels that the object store's `put` consumes as it uploads,
//! and each log is streamed from storage into the archive.

mod confirm;
mod files;
mod html;
mod logs_tar;
mod stream;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use caldera_core::confirm::ConfirmationStatus;
use caldera_core::outcome::Comparison;
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::{DbError, PgPool};
use caldera_report::{CrateResult, Report};
use caldera_storage::{ObjectKey, ObjectStore, StorageError};
use serde::Serialize;

pub use confirm::{Confirmation, confirmation, confirmation_lookup};
pub use files::write_files;
pub use stream::decompress;

/// The report files, in the order they are written.
pub const FILES: &[&str] = &[
    "summary.md",
    "retry.txt",
    "results.json",
    "index.html",
    "logs.tar.zst",
];

/// Files stored zstd-compressed (with `Content-Encoding: zstd`).
pub const COMPRESSED: &[&str] = &["results.json", "index.html"];

/// The content type of a report file.
pub fn content_type(file: &str) -> &'static str {
    match file {
        "summary.md" => "text/markdown; charset=utf-8",
        "retry.txt" => "text/plain; charset=utf-8",
        "results.json" => "application/json",
        "index.html" => "text/html; charset=utf-8",
        _ => "application/zstd",
    }
}

/// zstd level for report files: fast; JSON and HTML compress well anyway.
const ZSTD_LEVEL: i32 = 1;
/// Bytes per chunk handed to the object store.
const CHUNK: usize = 256 * 1024;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("object storage: {0}")]
    Storage(#[from] StorageError),
    #[error("building the report: {0}")]
    Report(#[from] caldera_report::ReportError),
    #[error("writing {file}: {source}")]
    Write {
        file: &'static str,
        source: io::Error,
    },
    #[error("export task failed: {0}")]
    Task(String),
}

/// One file written.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportedFile {
    pub name: String,
    /// Its object-storage key.
    pub key: String,
    /// Bytes stored (compressed, for compressed files).
    pub stored_bytes: u64,
    /// Stored with `Content-Encoding: zstd`.
    pub compressed: bool,
    /// Time spent producing and storing it (files are written concurrently).
    pub seconds: f64,
}

impl ExportedFile {
    /// The file `file`, stored under `key` in `stored` bytes, whose work began at `started`.
    fn new(file: &'static str, key: &ObjectKey, stored: u64, started: Instant) -> ExportedFile {
        ExportedFile {
            name: file.to_owned(),
            key: key.to_string(),
            stored_bytes: stored,
            compressed: COMPRESSED.contains(&file),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExportSummary {
    pub experiment: String,
    pub crates: usize,
    pub regressions: usize,
    pub files: Vec<ExportedFile>,
    /// Logs put in `logs.tar.zst`.
    pub logs: usize,
    /// Logs that could not be read (listed in `logs/MISSING.txt` of the archive).
    pub missing_logs: usize,
    /// Time spent, in seconds: loading results, building the report, writing the files.
    pub load_seconds: f64,
    pub build_seconds: f64,
    pub write_seconds: f64,
}

/// One export per experiment at a time.
static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

fn lock_for(name: &str) -> Arc<tokio::sync::Mutex<()>> {
    LOCKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name.to_owned())
        .or_default()
        .clone()
}

/// Loads the experiment's results and confirmations and builds its report (on a blocking
/// thread); also gives the confirmation runs' count and build time for the summary.
pub async fn load_report(
    pool: &PgPool,
    experiment: &ExperimentRow,
) -> Result<(Report, Option<(u64, u64)>), ExportError> {
    let input = caldera_db::results::report_input(pool, experiment.id, true).await?;
    let Confirmation { status, reruns, .. } = confirmation(pool, experiment.id).await?;
    let report = build_report(experiment, input, status).await?;
    Ok((report, reruns))
}

/// Builds the report of `experiment` from its results on a blocking thread (big experiments take
/// seconds), with its quiet crates and the confirmation `status` of each regressed or fixed crate.
async fn build_report(
    experiment: &ExperimentRow,
    input: Vec<CrateResult>,
    status: Box<dyn Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus> + Send>,
) -> Result<Report, ExportError> {
    let spec = experiment.spec.clone();
    tokio::task::spawn_blocking(move || Report::build_with(input, |k| spec.is_quiet(k), status))
        .await
        .map_err(|e| ExportError::Task(e.to_string()))?
        .map_err(ExportError::from)
}

/// Regenerates every report file of the experiment `name`.
pub async fn export(
    pool: &PgPool,
    store: Arc<dyn ObjectStore>,
    name: &str,
) -> Result<ExportSummary, ExportError> {
    let lock = lock_for(name);
    let _guard = lock.lock().await;
    let experiment = experiments::get(pool, name).await?;
    let t = Instant::now();
    let input = caldera_db::results::report_input(pool, experiment.id, true).await?;
    let Confirmation {
        status,
        reruns,
        known,
    } = confirmation(pool, experiment.id).await?;
    let load_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = build_report(&experiment, input, status).await?;
    let marks = crate::triage::marks_for_report(pool, &report).await?;
    let known = Arc::new(confirm::known_flakes_of(&report, &known));
    let header = Arc::new(files::Header {
        reruns,
        pins: caldera_db::toolchains::of_experiment(pool, experiment.id).await?,
        cached: caldera_db::cache::of_experiment(pool, experiment.id).await?,
        cost: crate::estimate::comparison(pool, &experiment).await?,
    });
    let build_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut summary = write_files(
        store,
        &experiment,
        Arc::new(report),
        header,
        Arc::new(marks),
        known,
    )
    .await?;
    summary.load_seconds = load_seconds;
    summary.build_seconds = build_seconds;
    summary.write_seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        experiment = %name,
        crates = summary.crates,
        regressions = summary.regressions,
        logs = summary.logs,
        missing_logs = summary.missing_logs,
        seconds = summary.load_seconds + summary.build_seconds + summary.write_seconds,
        "report exported"
    );
    Ok(summary)
}

/// After the scheduler completes an experiment, export its report in the background (the
/// result writer does not wait).
pub fn install_completion_hook(
    pool: PgPool,
    store: Arc<dyn ObjectStore>,
    scheduler: &crate::scheduler::Scheduler,
) {
    scheduler.on_experiment_completed(move |name: &str| {
        let (pool, store, name) = (pool.clone(), store.clone(), name.to_owned());
        tokio::spawn(async move {
            if let Err(e) = export(&pool, store, &name).await {
                tracing::error!(experiment = %name, error = %e, "cannot export the report of a completed experiment; retry with POST /api/v1/experiments/{{name}}/report");
            }
        });
    });
}
