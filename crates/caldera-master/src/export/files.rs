//! Writing the report files: `summary.md` and `retry.txt`, `results.json`, and `index.html` with
//! its `logs.tar.zst`, produced concurrently.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use caldera_core::crates::CrateId;
use caldera_core::outcome::Comparison;
use caldera_db::cache::CachedSides;
use caldera_db::experiments::ExperimentRow;
use caldera_db::flakes::Flake;
use caldera_db::toolchains::Pins;
use caldera_db::triage::Mark;
use caldera_report::{Report, SummaryOptions, Toolchains, summary_markdown};
use caldera_storage::{ObjectStore, PutOptions, keys};
use serde::Serialize;

use super::stream::put_streamed;
use super::{CHUNK, ExportError, ExportSummary, ExportedFile, FILES, content_type};
use super::{html, logs_tar};

/// What the report files say about the runs besides their outcomes.
#[derive(Debug, Default)]
pub struct Header {
    /// The confirmation runs made (finished runs, their build time in ms), when known.
    pub reruns: Option<(u64, u64)>,
    /// The build each side ran with.
    pub pins: Pins,
    /// The sides settled from the result cache, with their source experiments.
    pub cached: CachedSides,
    /// The estimate made at the start against what the run cost, when one was kept.
    pub cost: Option<caldera_report::cost::CostComparison>,
}

/// Writes every report file of `report` (the report of `experiment`), with the triage `marks` that
/// apply to its regressions ([`crate::triage::marks_for_report`]). The files are produced
/// concurrently: `summary.md` and `retry.txt`; `results.json`; `index.html` then `logs.tar.zst`.
pub async fn write_files(
    store: Arc<dyn ObjectStore>,
    experiment: &ExperimentRow,
    report: Arc<Report>,
    header: Arc<Header>,
    marks: Arc<HashMap<CrateId, Mark>>,
    known_flakes: Arc<BTreeMap<String, Vec<Flake>>>,
) -> Result<ExportSummary, ExportError> {
    let name = experiment.name.clone();
    let small = write_summary_and_retry(&*store, experiment, &report, &header, &marks);
    let json = write_results_json(&*store, experiment, &report, &marks, &known_flakes, &header);
    let html_and_logs = write_index_and_logs(&store, experiment, &report, &header, &marks);
    let (a, b, (c, (logs, missing_logs))) = tokio::try_join!(small, json, html_and_logs)?;
    let mut files: Vec<ExportedFile> = a.into_iter().chain(b).chain(c).collect();
    files.sort_by_key(|f| FILES.iter().position(|n| *n == f.name));
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

/// `summary.md` (the summary, then the triaged regressions) and `retry.txt`, one after the other:
/// both are small.
async fn write_summary_and_retry(
    store: &dyn ObjectStore,
    experiment: &ExperimentRow,
    report: &Arc<Report>,
    header: &Header,
    marks: &HashMap<CrateId, Mark>,
) -> Result<Vec<ExportedFile>, ExportError> {
    let name = &experiment.name;
    let (start, end) = (
        experiment.spec.start.to_string(),
        experiment.spec.end.to_string(),
    );
    let t = Instant::now();
    let opts = SummaryOptions {
        reruns: header.reruns,
        toolchains: toolchains(&header.pins),
        ..SummaryOptions::new(name, &start, &end)
    };
    let mut md = summary_markdown(report, &opts);
    md.push_str(&crate::triage::summary_section(report, marks));
    md.push_str(&crate::cache::summary_section(&header.cached));
    if let Some(cost) = &header.cost {
        md.push_str(&cost.markdown());
    }
    let k = keys::report(name, "summary.md")?;
    let n = store
        .put_bytes(
            &k,
            Bytes::from(md),
            PutOptions::content_type(content_type("summary.md")),
        )
        .await?;
    let summary = ExportedFile::new("summary.md", &k, n, t);
    let t = Instant::now();
    let k = keys::report(name, "retry.txt")?;
    let r = report.clone();
    let n = put_streamed(store, &k, "retry.txt", false, move |w| {
        // ids, as everything else prints them (selections read them back as they are)
        for id in r.retry_list() {
            writeln!(w, "{}", id.without_checksum())?;
        }
        Ok(())
    })
    .await?;
    Ok(vec![summary, ExportedFile::new("retry.txt", &k, n, t)])
}

/// `results.json`: see [`ResultsJson`].
async fn write_results_json(
    store: &dyn ObjectStore,
    experiment: &ExperimentRow,
    report: &Arc<Report>,
    marks: &Arc<HashMap<CrateId, Mark>>,
    known_flakes: &Arc<BTreeMap<String, Vec<Flake>>>,
    header: &Arc<Header>,
) -> Result<Vec<ExportedFile>, ExportError> {
    let t = Instant::now();
    let k = keys::report(&experiment.name, "results.json")?;
    let lockfile = experiment.spec.lockfile;
    let r = report.clone();
    let m = marks.clone();
    let known = known_flakes.clone();
    let header = header.clone();
    let n = put_streamed(store, &k, "results.json", true, move |w| {
        let json = ResultsJson {
            report: &r,
            toolchains: toolchains(&header.pins),
            lockfile,
            cached: &header.cached,
            cost: header.cost.as_ref(),
            triage: m.iter().map(|(id, mark)| (id.to_string(), mark)).collect(),
            known_flakes: &known,
        };
        serde_json::to_writer(io::BufWriter::with_capacity(CHUNK, w), &json)
            .map_err(io::Error::other)
    })
    .await?;
    Ok(vec![ExportedFile::new("results.json", &k, n, t)])
}

/// `index.html`, then `logs.tar.zst` with the logs of the crates the page lists. Also returns
/// the logs written and missing.
async fn write_index_and_logs(
    store: &Arc<dyn ObjectStore>,
    experiment: &ExperimentRow,
    report: &Arc<Report>,
    header: &Header,
    marks: &Arc<HashMap<CrateId, Mark>>,
) -> Result<(Vec<ExportedFile>, (usize, usize)), ExportError> {
    let t = Instant::now();
    let notable = html::notable(report);
    let index = html::write_index(
        &**store,
        experiment,
        report,
        header,
        marks,
        notable.clone(),
        t,
    )
    .await?;
    let (logs, counts) = logs_tar::write_archive(store, &experiment.name, report, &notable).await?;
    Ok((vec![index, logs], counts))
}

/// `results.json`: the report's JSON, plus `"triage"`: the mark that applies to each marked
/// regression, by crate id; `"known_flakes"`: for each crate the report calls known-flaky,
/// the flakes that explain it, with the evidence (experiment, run, side, log keys); and
/// `"toolchains"`: the build each side ran with (see [`Toolchains`]; `null` sides when unknown);
/// `"lockfile"`: the experiment's lockfile policy (`shipped` or `fresh`);
/// `"cached"`: for each crate with a side settled from the result cache, the source experiment
/// of each such side (`{"reg:x@1.0.0": {"start": "last-week"}}`); `"cost"`: the estimate made
/// at the start against what the run cost (`null` when none was kept).
#[derive(Serialize)]
struct ResultsJson<'a> {
    #[serde(flatten)]
    report: &'a Report,
    toolchains: Toolchains<'a>,
    lockfile: caldera_core::LockfilePolicy,
    cached: &'a CachedSides,
    cost: Option<&'a caldera_report::cost::CostComparison>,
    triage: BTreeMap<String, &'a Mark>,
    known_flakes: &'a BTreeMap<String, Vec<Flake>>,
}

/// The pinned builds, as the report files show them.
fn toolchains(pins: &Pins) -> Toolchains<'_> {
    Toolchains {
        start: pins.start.as_ref(),
        end: pins.end.as_ref(),
    }
}
