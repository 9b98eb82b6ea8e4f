//! Report exports: the files of an experiment's report, written to object storage under
//! `experiments/{experiment}/report/{file}` ([`caldera_storage::keys::report`]) when the experiment
//! completes (see [`install_completion_hook`]) and on demand (`POST /api/v1/experiments/{name}/report`).
//!
//! | file | content | stored |
//! | --- | --- | --- |
//! | `summary.md` | [`summary_markdown`]: headline, counts, root regressions, errors, spurious results, fit to paste in a GitHub issue; then the triaged regressions ([`crate::triage::summary_section`]) | plain |
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

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use bytes::Bytes;
use caldera_core::confirm::ConfirmationStatus;
use caldera_core::crates::CrateId;
use caldera_core::outcome::Comparison;
use caldera_core::report::CrateResult;
use caldera_core::report::{CrateReport, Report, SummaryOptions, summary_markdown};
use caldera_db::confirmations::Confirmations;
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::flakes::{Flake, KnownFlakes};
use caldera_db::triage::Mark;
use caldera_db::{DbError, PgPool};
use caldera_storage::{
    ByteStream, ObjectBody, ObjectKey, ObjectStore, PutOptions, StorageError, keys,
};
use chrono::Utc;
use futures::StreamExt;
use maud::{Markup, PreEscaped, html};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::dashboard::cache;
use crate::dashboard::views::{self, comparison_badge, crate_label};

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
    Report(#[from] caldera_core::report::ReportError),
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

/// The status the report gives a regressed or fixed crate: its re-runs' verdict when they
/// confirmed it or found it flaky; otherwise `known-flaky` when its failing side is explained by
/// the flaky memory (`known`); otherwise its re-runs' status (pending) if it has any.
pub fn confirmation_lookup(
    confirmations: &Confirmations,
    known: KnownFlakes,
) -> impl Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus> + Send + 'static {
    let by_id: HashMap<String, ConfirmationStatus> = confirmations
        .crates
        .iter()
        .map(|c| (c.krate.clone(), c.status))
        .collect();
    move |r: &CrateResult, comparison: Comparison| {
        let id = r.krate.to_string();
        let rerun = by_id
            .get(&id)
            .or_else(|| by_id.get(&r.krate.without_checksum().to_string()))
            .copied();
        if matches!(
            rerun,
            Some(ConfirmationStatus::Confirmed | ConfirmationStatus::Flaky)
        ) {
            return rerun;
        }
        let failing = match comparison {
            Comparison::Regressed => &r.end,
            _ => &r.start,
        };
        if known.explains(&id, failing) {
            return Some(ConfirmationStatus::KnownFlaky);
        }
        rerun
    }
}

/// What the report needs besides the results: the confirmation statuses (re-runs and the flaky
/// memory), the re-runs' count and cost, and the known flakes of the crates called known-flaky.
pub struct Confirmation {
    pub status: Box<dyn Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus> + Send>,
    pub reruns: Option<(u64, u64)>,
    pub known: KnownFlakes,
}

/// Reads an experiment's confirmation runs and its crates' known flakes.
pub async fn confirmation(
    pool: &PgPool,
    experiment_id: uuid::Uuid,
) -> Result<Confirmation, DbError> {
    let (confirmations, known) = futures::try_join!(
        caldera_db::confirmations::of_experiment(pool, experiment_id),
        caldera_db::flakes::known_subjects(pool, experiment_id)
    )?;
    let reruns = (confirmations.runs_finished > 0).then(|| {
        (
            confirmations.runs_finished.max(0) as u64,
            confirmations.duration_ms.max(0) as u64,
        )
    });
    Ok(Confirmation {
        status: Box::new(confirmation_lookup(&confirmations, known.clone())),
        reruns,
        known,
    })
}

/// The known flakes of the crates the report calls known-flaky, by crate id (the evidence).
fn known_flakes_of(report: &Report, known: &KnownFlakes) -> BTreeMap<String, Vec<Flake>> {
    report
        .flaky()
        .filter(|c| c.confirmation() == Some(ConfirmationStatus::KnownFlaky))
        .filter_map(|c| {
            let id = c.krate().to_string();
            known.crates.get(&id).map(|f| (id, f.clone()))
        })
        .collect()
}

/// Loads the experiment's results and confirmations and builds its report (on a blocking
/// thread); also gives the confirmation runs' count and build time for the summary.
pub async fn load_report(
    pool: &PgPool,
    experiment: &ExperimentRow,
) -> Result<(Report, Option<(u64, u64)>), ExportError> {
    let input = caldera_db::results::report_input(pool, experiment.id, true).await?;
    let Confirmation { status, reruns, .. } = confirmation(pool, experiment.id).await?;
    let spec = experiment.spec.clone();
    let report = tokio::task::spawn_blocking(move || {
        Report::build_with(input, |k| spec.is_quiet(k), status)
    })
    .await
    .map_err(|e| ExportError::Task(e.to_string()))??;
    Ok((report, reruns))
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
    let spec = experiment.spec.clone();
    let report = tokio::task::spawn_blocking(move || {
        Report::build_with(input, |k| spec.is_quiet(k), status)
    })
    .await
    .map_err(|e| ExportError::Task(e.to_string()))??;
    let marks = crate::triage::marks_for_report(pool, &report).await?;
    let known = Arc::new(known_flakes_of(&report, &known));
    let build_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut summary = write_files(
        store,
        &experiment,
        Arc::new(report),
        reruns,
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

/// Writes every report file of `report` (the report of `experiment`), with the triage `marks` that
/// apply to its regressions ([`crate::triage::marks_for_report`]). The files are produced
/// concurrently: `summary.md` and `retry.txt`; `results.json`; `index.html` then `logs.tar.zst`.
pub async fn write_files(
    store: Arc<dyn ObjectStore>,
    experiment: &ExperimentRow,
    report: Arc<Report>,
    reruns: Option<(u64, u64)>,
    marks: Arc<HashMap<CrateId, Mark>>,
    known_flakes: Arc<BTreeMap<String, Vec<Flake>>>,
) -> Result<ExportSummary, ExportError> {
    let name = experiment.name.clone();
    let start = experiment.spec.start.to_string();
    let end = experiment.spec.end.to_string();
    let file = |file: &'static str, k: &ObjectKey, stored: u64, t: Instant| ExportedFile {
        name: file.to_owned(),
        key: k.to_string(),
        stored_bytes: stored,
        compressed: COMPRESSED.contains(&file),
        seconds: t.elapsed().as_secs_f64(),
    };

    let small = async {
        let t = Instant::now();
        let opts = SummaryOptions {
            reruns,
            ..SummaryOptions::new(&name, &start, &end)
        };
        let mut md = summary_markdown(&report, &opts);
        md.push_str(&crate::triage::summary_section(&report, &marks));
        let k = keys::report(&name, "summary.md")?;
        let n = store
            .put_bytes(
                &k,
                Bytes::from(md),
                PutOptions::content_type(content_type("summary.md")),
            )
            .await?;
        let summary = file("summary.md", &k, n, t);
        let t = Instant::now();
        let k = keys::report(&name, "retry.txt")?;
        let r = report.clone();
        let n = put_streamed(&*store, &k, "retry.txt", false, move |w| {
            if let Some(caldera_core::CrateSelection::List(specs)) = r.retry_selection() {
                for s in specs {
                    writeln!(w, "{s}")?;
                }
            }
            Ok(())
        })
        .await?;
        Ok::<_, ExportError>(vec![summary, file("retry.txt", &k, n, t)])
    };

    let json = async {
        let t = Instant::now();
        let k = keys::report(&name, "results.json")?;
        let r = report.clone();
        let m = marks.clone();
        let known = known_flakes.clone();
        let n = put_streamed(&*store, &k, "results.json", true, move |w| {
            let json = ResultsJson {
                report: &r,
                triage: m.iter().map(|(id, mark)| (id.to_string(), mark)).collect(),
                known_flakes: &known,
            };
            serde_json::to_writer(io::BufWriter::with_capacity(CHUNK, w), &json)
                .map_err(io::Error::other)
        })
        .await?;
        Ok::<_, ExportError>(vec![file("results.json", &k, n, t)])
    };

    let logs_counts = Arc::new(Mutex::new((0usize, 0usize)));
    let html_and_logs = async {
        let t = Instant::now();
        let notable = notable(&report);
        let k = keys::report(&name, "index.html")?;
        let ctx = BundleContext {
            experiment: name.clone(),
            start: start.clone(),
            end: end.clone(),
            mode: experiment.spec.mode.as_str().to_owned(),
            status: experiment.status.as_str().to_owned(),
            generated_at: Utc::now(),
            reruns,
        };
        let r = report.clone();
        let listed = notable.clone();
        let m = marks.clone();
        let n = put_streamed(&*store, &k, "index.html", true, move |w| {
            write_bundle(w, &r, &ctx, &listed, &m)
        })
        .await?;
        let html = file("index.html", &k, n, t);

        let t = Instant::now();
        let k = keys::report(&name, "logs.tar.zst")?;
        let mut entries = Vec::new();
        let mut missing = Vec::new();
        {
            let all: Vec<CrateReport<'_>> = report.crates().collect();
            for &i in &notable {
                let c = all[i];
                let dir = keys::encode_component(&c.krate().to_string())?;
                for (side, log) in [
                    ("start", &c.result().start_log),
                    ("end", &c.result().end_log),
                ] {
                    let path = format!("logs/{dir}/{side}.log");
                    match log {
                        Some(key) => entries.push((path, key.clone())),
                        None => missing.push(format!("{path}: no log was recorded")),
                    }
                }
            }
        }
        let handle = tokio::runtime::Handle::current();
        let log_store = store.clone();
        let counts = logs_counts.clone();
        let n = put_streamed(&*store, &k, "logs.tar.zst", false, move |w| {
            let written = write_logs_tar(w, handle, log_store, entries, missing)?;
            *counts.lock().unwrap_or_else(|p| p.into_inner()) = written;
            Ok(())
        })
        .await?;
        Ok::<_, ExportError>(vec![html, file("logs.tar.zst", &k, n, t)])
    };

    let (a, b, c) = tokio::try_join!(small, json, html_and_logs)?;
    let mut files: Vec<ExportedFile> = a.into_iter().chain(b).chain(c).collect();
    files.sort_by_key(|f| FILES.iter().position(|n| *n == f.name));
    let (logs, missing_logs) = *logs_counts.lock().unwrap_or_else(|p| p.into_inner());
    Ok(ExportSummary {
        experiment: name,
        crates: report.len(),
        regressions: report.counts().get(Comparison::Regressed),
        files,
        logs,
        missing_logs,
        load_seconds: 0.0,
        build_seconds: 0.0,
        write_seconds: 0.0,
    })
}

/// `results.json`: the report's JSON, plus `"triage"`: the mark that applies to each marked
/// regression, by crate id; and `"known_flakes"`: for each crate the report calls known-flaky,
/// the flakes that explain it, with the evidence (experiment, run, side, log keys).
#[derive(Serialize)]
struct ResultsJson<'a> {
    #[serde(flatten)]
    report: &'a Report,
    triage: std::collections::BTreeMap<String, &'a Mark>,
    known_flakes: &'a BTreeMap<String, Vec<Flake>>,
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

// ---------------------------------------------------------------------------------------------
// Streaming into the object store

/// A `Write` that hands chunks to an async consumer through a bounded channel. Blocking: use it
/// on a blocking thread only.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the object store stopped reading",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stores what `produce` writes (zstd-compressed if `compress`) under `key` while it is written.
/// A failure of either side stores nothing.
async fn put_streamed(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    file: &'static str,
    compress: bool,
    produce: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
) -> Result<u64, ExportError> {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let fail = tx.clone();
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let result = (|| {
            if compress {
                let mut z = zstd::Encoder::new(&mut w, ZSTD_LEVEL)?;
                produce(&mut z)?;
                z.finish()?;
            } else {
                produce(&mut w)?;
            }
            w.send()
        })();
        if let Err(e) = &result {
            // Fail the upload so nothing half-written is stored.
            let _ = fail.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let body: ByteStream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    let mut options = PutOptions::content_type(content_type(file));
    if compress {
        options.content_encoding = Some("zstd".into());
    }
    let (put, produced) = tokio::join!(store.put(key, body, options), producer);
    let produced = produced.map_err(|e| ExportError::Task(e.to_string()))?;
    match (put, produced) {
        (Ok(n), Ok(())) => Ok(n),
        // The producer's error explains the failed put better than the put's echo of it.
        (_, Err(source)) if source.kind() != io::ErrorKind::BrokenPipe => {
            Err(ExportError::Write { file, source })
        }
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(source)) => Err(ExportError::Write { file, source }),
    }
}

/// A stored object's body, decompressed from zstd while it streams (on a blocking thread).
pub fn decompress(body: ObjectBody) -> ByteStream {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let reader =
            SyncIoBridge::new(StreamReader::new(body.map(|r| r.map_err(io::Error::other))));
        let mut decoder = match zstd::Decoder::new(reader) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

// ---------------------------------------------------------------------------------------------
// The HTML bundle

/// Input-order indices of the crates the bundle lists and the archive holds logs of: regressions
/// (roots first), spurious and error results, then fixes and unknowns.
fn notable(report: &Report) -> Vec<usize> {
    let mut index: HashMap<&CrateId, usize> = HashMap::new();
    for (i, c) in report.crates().enumerate() {
        if !matches!(
            c.comparison(),
            Comparison::SameBuildFail
                | Comparison::SameTestFail
                | Comparison::SameTestPass
                | Comparison::SameTestSkipped
                | Comparison::Skipped
                | Comparison::Broken
                | Comparison::PrepareFail
        ) {
            index.insert(c.krate(), i);
        }
    }
    let mut out = Vec::with_capacity(index.len());
    let ordered = report
        .regressions()
        .chain(report.spurious_regressed())
        .chain(report.spurious_fixed())
        .chain(report.errors());
    for c in ordered {
        if let Some(i) = index.remove(c.krate()) {
            out.push(i);
        }
    }
    let mut rest: Vec<usize> = index.into_values().collect();
    rest.sort_unstable();
    out.extend(rest);
    out
}

struct BundleContext {
    experiment: String,
    start: String,
    end: String,
    mode: String,
    status: String,
    generated_at: chrono::DateTime<Utc>,
    reruns: Option<(u64, u64)>,
}

/// The anchor of a crate in the bundle.
fn anchor(id: &CrateId) -> String {
    format!("c-{}", views::path_encode(&id.to_string()))
}

/// The relative link of a log file in the bundle (the archive's path, with `%` escaped for URLs).
fn log_href(id: &CrateId, side: &str) -> String {
    let dir = keys::encode_component(&id.to_string()).unwrap_or_default();
    format!("logs/{}/{side}.log", dir.replace('%', "%25"))
}

fn crate_link(id: &CrateId) -> Markup {
    html! { a href=(format!("#{}", anchor(id))) { (crate_label(id)) } }
}

fn bundle_row(c: CrateReport<'_>, mark: Option<&Mark>) -> Markup {
    let r = c.result();
    html! {
        tr id=(anchor(c.krate())) {
            td { strong { (crate_label(c.krate())) } br; span.small { code { (c.krate().to_string()) } } }
            td { (comparison_badge(c.comparison())) @if let Some(m) = mark { " " (crate::triage::badge(m)) } }
            td { code { (r.start.to_string()) } @if let Some(x) = views::outcome_reason(&r.start) { br; span.small { (x) } } }
            td { code { (r.end.to_string()) } @if let Some(x) = views::outcome_reason(&r.end) { br; span.small { (x) } } }
            td.small {
                @if c.is_root() { "root: " (c.regressions_through()) " through it" }
                @else if c.comparison() == Comparison::Regressed {
                    "through " @for (i, root) in c.root_causes().enumerate() { @if i > 0 { ", " } (crate_link(root)) }
                }
            }
            td.small {
                @if r.start_log.is_some() { a href=(log_href(c.krate(), "start")) { "start" } }
                " "
                @if r.end_log.is_some() { a href=(log_href(c.krate(), "end")) { "end" } }
            }
        }
    }
}

fn write_bundle(
    w: &mut dyn Write,
    report: &Report,
    ctx: &BundleContext,
    listed: &[usize],
    marks: &HashMap<CrateId, Mark>,
) -> io::Result<()> {
    let counts = report.counts();
    let dependents = cache::dependents(report);
    // the regressions listed: those of quiet crates are named apart
    let n = report.regressions().len();
    let head = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Report: " (ctx.experiment) }
                style { (PreEscaped(views::css())) }
            }
        }
    };
    // maud closes elements; the body is streamed after the head, so write the document in pieces.
    let head = head.into_string();
    let head = head.strip_suffix("</html>").unwrap_or(&head);
    w.write_all(head.as_bytes())?;
    let top = html! {
        h1 { "Report of experiment " code { (ctx.experiment) } }
        table {
            tr { th { "toolchains" } td { code { (ctx.start) } " (start) → " code { (ctx.end) } " (end)" } }
            tr { th { "mode" } td { (ctx.mode) } }
            tr { th { "status" } td { (ctx.status) } }
            tr { th { "crates" } td { (report.len()) } }
            tr { th { "generated" } td { (views::timestamp(ctx.generated_at)) } }
        }
        p.small { "Files of this report: " a href="summary.md" { "summary.md" } ", " a href="results.json" { "results.json" } ", "
            a href="retry.txt" { "retry.txt" } ", " a href="logs.tar.zst" { "logs.tar.zst" }
            " (extract it next to this page for the log links: " code { "tar --zstd -xf logs.tar.zst" } ")." }
        @match report.root_regressions().next() {
            None if report.quiet_regressions().len() == 0
                && report.diagnostics_changes().len() == 0 => p.headline { "No regressions." },
            None => p.headline { "No regressions listed." },
            Some(top) => p.headline {
                (n) " " (if n == 1 { "regression" } else { "regressions" }) ", " (top.regressions_through())
                " of them through " code { (crate_label(top.krate())) } "."
            },
        }
        (views::quiet_note(report))
        @if let Some(note) = caldera_core::report::confirmation_note(report, ctx.reruns) { p { (note) } }
        h2 { "Counts" }
        table #counts {
            thead { tr { th { "comparison" } th.num { "crates" } } }
            tbody {
                @for (c, k) in counts.iter() { tr { td { (comparison_badge(c)) } td.num { (k) } } }
                tr { th { "total" } th.num { (counts.total()) } }
            }
        }
    };
    w.write_all(b"<body><main>")?;
    w.write_all(top.into_string().as_bytes())?;

    if report.root_regressions().len() > 0 {
        w.write_all(
            html! {
                h2 #roots { "Regressions by root cause" }
                p.small { "Crates that regressed on their own, most regressions through them first; under each, the crates that regressed because it did." }
            }
            .into_string()
            .as_bytes(),
        )?;
        w.write_all(b"<ol class=\"roots\">")?;
        for root in report.root_regressions() {
            let deps = dependents
                .get(root.krate())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let li = html! {
                li {
                    (crate_link(root.krate())) " " code { (root.result().end.to_string()) }
                    @if let Some(m) = marks.get(root.krate()) { " " (crate::triage::badge(m)) }
                    " — " (root.regressions_through()) " " (if root.regressions_through() == 1 { "regression" } else { "regressions" })
                    @if !deps.is_empty() {
                        div.deps { "through it: " @for (i, d) in deps.iter().enumerate() { @if i > 0 { ", " } (crate_link(d)) } }
                    }
                }
            };
            w.write_all(li.into_string().as_bytes())?;
        }
        w.write_all(b"</ol>")?;
        let groups = html! {
            h2 #errors { "Root regressions by error" }
            table {
                thead { tr { th { "error" } th.num { "root regressions" } th { "crates" } } }
                tbody {
                    @for g in report.error_groups() {
                        tr {
                            td { code { (g.key().as_str()) } }
                            td.num { (g.len()) }
                            td { @for (i, c) in g.crates().take(20).enumerate() { @if i > 0 { ", " } (crate_link(c.krate())) }
                                 @if g.len() > 20 { " … and " (g.len() - 20) " more" } }
                        }
                    }
                }
            }
        };
        w.write_all(groups.into_string().as_bytes())?;
    }
    w.write_all(views::diagnostics_note(report).into_string().as_bytes())?;
    w.write_all(views::flaky_note(report).into_string().as_bytes())?;
    let spurious = [
        Comparison::SpuriousRegressed,
        Comparison::SpuriousFixed,
        Comparison::Spurious,
        Comparison::Error,
    ];
    if spurious.iter().any(|&c| counts.get(c) > 0) {
        let table = html! {
            h2 #spurious { "Spurious and infrastructure results" }
            p.small { "Not regressions; retry them before believing them." }
            table {
                thead { tr { th { "comparison" } th.num { "crates" } th { "reasons" } } }
                tbody {
                    @for c in spurious {
                        tr { td { (comparison_badge(c)) } td.num { (counts.get(c)) }
                             td { @for (i, r) in report.spurious_reasons(c).iter().enumerate() { @if i > 0 { ", " } (r.kind) " " (r.crates) } } }
                    }
                }
            }
        };
        w.write_all(table.into_string().as_bytes())?;
    }
    let intro = html! {
        h2 #crates-heading { "Crates that changed" }
        p.small { (listed.len()) " crates whose outcome is not the same on both toolchains (every crate is in results.json)." }
        input type="search" placeholder="filter…" data-filter-rows="crates" hidden;
    };
    w.write_all(intro.into_string().as_bytes())?;
    w.write_all(b"<table id=\"crates\"><thead><tr><th>crate</th><th>comparison</th><th>start</th><th>end</th><th>root cause</th><th>logs</th></tr></thead><tbody>")?;
    // `listed` holds input-order indices; walk the crates once and emit them in listed order.
    let views: Vec<CrateReport<'_>> = report.crates().collect();
    for &i in listed {
        let c = views[i];
        w.write_all(bundle_row(c, marks.get(c.krate())).into_string().as_bytes())?;
    }
    w.write_all(b"</tbody></table></main>")?;
    w.write_all(
        html! { script { (PreEscaped(views::js())) } }
            .into_string()
            .as_bytes(),
    )?;
    w.write_all(b"</body></html>\n")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The log archive

/// Reads exactly `left` bytes from `inner`: stops there if it has more, pads with zeros if it
/// ends or fails early (so the tar entry keeps the size its header announced).
struct Exact<R> {
    inner: R,
    left: u64,
    failed: Option<String>,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = if self.failed.is_some() {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read(buf),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    0
                }
            }
        };
        let n = if n == 0 {
            if self.failed.is_none() {
                self.failed = Some(format!("the log ended {} bytes early", self.left));
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a tar of the logs (decompressed) into `w`, zstd-compressed. Returns the logs written
/// and the number missing.
fn write_logs_tar(
    w: &mut dyn Write,
    handle: tokio::runtime::Handle,
    store: Arc<dyn ObjectStore>,
    entries: Vec<(String, String)>,
    mut missing: Vec<String>,
) -> io::Result<(usize, usize)> {
    let mtime = Utc::now().timestamp().max(0) as u64;
    let encoder = zstd::Encoder::new(w, 3)?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(CHUNK, encoder));
    let mut written = 0;
    for (path, key) in entries {
        let key = match ObjectKey::new(key.as_str()) {
            Ok(k) => k,
            Err(e) => {
                missing.push(format!("{path}: invalid key {key:?}: {e}"));
                continue;
            }
        };
        let size = match handle.block_on(store.head(&key)) {
            Ok(meta) => meta
                .metadata
                .get(caldera_storage::ORIGINAL_SIZE_METADATA)
                .and_then(|s| s.parse::<u64>().ok()),
            Err(e) if e.is_not_found() => {
                missing.push(format!("{path}: not in object storage ({key})"));
                continue;
            }
            Err(e) => {
                missing.push(format!("{path}: {e}"));
                continue;
            }
        };
        let Some(size) = size else {
            missing.push(format!(
                "{path}: {key} is not a log stored by caldera (no original size)"
            ));
            continue;
        };
        let body = match handle.block_on(caldera_storage::get_log(&*store, &key)) {
            Ok(b) => b,
            Err(e) => {
                missing.push(format!("{path}: {e}"));
                continue;
            }
        };
        let reader = SyncIoBridge::new_with_handle(
            StreamReader::new(body.map(|r| r.map_err(io::Error::other))),
            handle.clone(),
        );
        let mut exact = Exact {
            inner: reader,
            left: size,
            failed: None,
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &path, &mut exact)?;
        if let Some(why) = exact.failed {
            missing.push(format!("{path}: incomplete (padded with zeros): {why}"));
        }
        written += 1;
    }
    let n_missing = missing.len();
    if !missing.is_empty() {
        let mut text = String::from("Logs that are not in this archive, or not whole:\n");
        for m in &missing {
            text.push_str(m);
            text.push('\n');
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, "logs/MISSING.txt", text.as_bytes())?;
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()?;
    Ok((written, n_missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_truncates_and_pads() {
        let mut out = Vec::new();
        Exact {
            inner: &b"hello world"[..],
            left: 5,
            failed: None,
        }
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, b"hello");
        let mut out = Vec::new();
        let mut short = Exact {
            inner: &b"hi"[..],
            left: 5,
            failed: None,
        };
        short.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hi\0\0\0");
        assert!(short.failed.unwrap().contains("3 bytes early"));
    }

    #[test]
    fn log_links_escape_percent_signs() {
        let id: CrateId = "reg:foo@1.0.0".parse().unwrap();
        assert_eq!(log_href(&id, "end"), "logs/reg%253Afoo@1.0.0/end.log");
        assert_eq!(anchor(&id), "c-reg%3Afoo%401.0.0");
    }
}
