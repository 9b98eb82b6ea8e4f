//! `index.html`: a static page browsable without the master. Counts, root causes, error groups,
//! and every crate that is not the same on both sides, with links to its logs in `logs.tar.zst`.
//! It is streamed: the head first, then each section as it is rendered.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use caldera_core::crates::CrateId;
use caldera_core::outcome::Comparison;
use caldera_db::experiments::ExperimentRow;
use caldera_db::triage::Mark;
use caldera_report::{CrateReport, Report};
use caldera_storage::{ObjectStore, keys};
use chrono::Utc;
use maud::{Markup, PreEscaped, html};

use super::stream::put_streamed;
use super::{ExportError, ExportedFile};
use crate::dashboard::cache;
use crate::dashboard::views::{self, comparison_badge, crate_label};

/// Input-order indices of the crates the bundle lists and the archive holds logs of: regressions
/// (roots first), spurious and error results, then fixes and unknowns.
pub(super) fn notable(report: &Report) -> Vec<usize> {
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

/// Stores `index.html` of `report` (the report of `experiment`), listing the crates `listed`
/// (from [`notable`]); `started` is when its work began.
pub(super) async fn write_index(
    store: &dyn ObjectStore,
    experiment: &ExperimentRow,
    report: &Arc<Report>,
    header: &super::files::Header,
    marks: &Arc<HashMap<CrateId, Mark>>,
    listed: Vec<usize>,
    started: Instant,
) -> Result<ExportedFile, ExportError> {
    let k = keys::report(&experiment.name, "index.html")?;
    let build = |t: Option<&caldera_core::toolchain::ToolchainIdentity>| match t {
        Some(t) => format!("{}, cargo {}", t.describe(), t.cargo),
        None => "not recorded".to_owned(),
    };
    let pins = &header.pins;
    let builds = (pins.start.is_some() || pins.end.is_some())
        .then(|| (build(pins.start.as_ref()), build(pins.end.as_ref())));
    let ctx = BundleContext {
        experiment: experiment.name.clone(),
        start: experiment.spec.start.to_string(),
        end: experiment.spec.end.to_string(),
        mode: experiment.spec.mode.as_str().to_owned(),
        lockfile: experiment.spec.lockfile.as_str(),
        status: experiment.status.as_str().to_owned(),
        generated_at: Utc::now(),
        reruns: header.reruns,
        builds,
        cached: crate::cache::sources(&header.cached),
        cost: header.cost.as_ref().map(|c| c.line()),
    };
    let r = report.clone();
    let m = marks.clone();
    let n = put_streamed(store, &k, "index.html", true, move |w| {
        write_bundle(w, &r, &ctx, &listed, &m)
    })
    .await?;
    Ok(ExportedFile::new("index.html", &k, n, started))
}

struct BundleContext {
    experiment: String,
    start: String,
    end: String,
    mode: String,
    /// the experiment's lockfile policy
    lockfile: &'static str,
    status: String,
    generated_at: chrono::DateTime<Utc>,
    reruns: Option<(u64, u64)>,
    /// the build each side ran with (start, end), when known
    builds: Option<(String, String)>,
    /// the source experiments of the sides settled from the result cache, with their counts
    cached: Vec<(String, usize)>,
    /// the estimate made at the start against what the run cost, in one line
    cost: Option<String>,
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

/// Writes the whole page: the head, then the body section by section.
fn write_bundle(
    w: &mut dyn Write,
    report: &Report,
    ctx: &BundleContext,
    listed: &[usize],
    marks: &HashMap<CrateId, Mark>,
) -> io::Result<()> {
    w.write_all(document_head(&ctx.experiment).as_bytes())?;
    w.write_all(b"<body><main>")?;
    w.write_all(top(report, ctx).into_string().as_bytes())?;
    if report.root_regressions().len() > 0 {
        write_roots(w, report, marks)?;
        w.write_all(error_groups(report).into_string().as_bytes())?;
    }
    w.write_all(views::diagnostics_note(report).into_string().as_bytes())?;
    w.write_all(views::flaky_note(report).into_string().as_bytes())?;
    if views::SPURIOUS_COMPARISONS
        .iter()
        .any(|&c| report.counts().get(c) > 0)
    {
        w.write_all(spurious_table(report).into_string().as_bytes())?;
    }
    write_crates(w, report, listed, marks)?;
    w.write_all(
        html! { script { (PreEscaped(views::js())) } }
            .into_string()
            .as_bytes(),
    )?;
    w.write_all(b"</body></html>\n")?;
    Ok(())
}

/// The document up to its body, which is written after it.
fn document_head(experiment: &str) -> String {
    let head = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Report: " (experiment) }
                style { (PreEscaped(views::css())) }
            }
        }
    };
    // maud closes elements; the body is streamed after the head, so write the document in pieces.
    let head = head.into_string();
    match head.strip_suffix("</html>") {
        Some(open) => open.to_owned(),
        None => head,
    }
}

/// The top of the page: the experiment, the files of the report, the headline and the counts.
fn top(report: &Report, ctx: &BundleContext) -> Markup {
    let counts = report.counts();
    // the regressions listed: those of quiet crates are named apart
    let n = report.regressions().len();
    html! {
        h1 { "Report of experiment " code { (ctx.experiment) } }
        table {
            tr { th { "toolchains" } td { code { (ctx.start) } " (start) → " code { (ctx.end) } " (end)" } }
            @if let Some((start, end)) = &ctx.builds {
                tr { th { "builds" } td { "start " code { (start) } "; end " code { (end) } } }
            }
            @if !ctx.cached.is_empty() {
                tr { th { "result cache" } td {
                    (views::cached_sources(&ctx.cached, |s| format!("../../{s}/report/index.html")))
                } }
            }
            @if let Some(cost) = &ctx.cost {
                tr { th { "cost" } td { (cost) } }
            }
            tr { th { "mode" } td { (ctx.mode) } }
            tr { th { "lockfiles" } td { (ctx.lockfile) } }
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
        @if let Some(note) = caldera_report::confirmation_note(report, ctx.reruns) { p { (note) } }
        h2 { "Counts" }
        table #counts {
            thead { tr { th { "comparison" } th.num { "crates" } } }
            tbody {
                @for (c, k) in counts.iter() { tr { td { (comparison_badge(c)) } td.num { (k) } } }
                tr { th { "total" } th.num { (counts.total()) } }
            }
        }
    }
}

/// The root regressions, most regressions through them first, each with the crates that
/// regressed through it (a long list, so written one item at a time).
fn write_roots(
    w: &mut dyn Write,
    report: &Report,
    marks: &HashMap<CrateId, Mark>,
) -> io::Result<()> {
    let dependents = cache::dependents(report);
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
        let li = root_item(root, deps, marks.get(root.krate()));
        w.write_all(li.into_string().as_bytes())?;
    }
    w.write_all(b"</ol>")
}

/// One root regression of the list: its end outcome, its mark, and the regressions through it.
fn root_item(root: CrateReport<'_>, deps: &[CrateId], mark: Option<&Mark>) -> Markup {
    html! {
        li {
            (crate_link(root.krate())) " " code { (root.result().end.to_string()) }
            @if let Some(m) = mark { " " (crate::triage::badge(m)) }
            " — " (root.regressions_through()) " " (if root.regressions_through() == 1 { "regression" } else { "regressions" })
            @if !deps.is_empty() {
                div.deps { "through it: " @for (i, d) in deps.iter().enumerate() { @if i > 0 { ", " } (crate_link(d)) } }
            }
        }
    }
}

/// The root regressions grouped by error (code or kind), naming the first 20 crates of each.
fn error_groups(report: &Report) -> Markup {
    html! {
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
    }
}

/// The spurious and infrastructure results: how many of each, and why.
fn spurious_table(report: &Report) -> Markup {
    let counts = report.counts();
    html! {
        h2 #spurious { "Spurious and infrastructure results" }
        p.small { "Not regressions; retry them before believing them." }
        table {
            thead { tr { th { "comparison" } th.num { "crates" } th { "reasons" } } }
            tbody {
                @for c in views::SPURIOUS_COMPARISONS {
                    tr { td { (comparison_badge(c)) } td.num { (counts.get(c)) }
                         td { @for (i, r) in report.spurious_reasons(c).iter().enumerate() { @if i > 0 { ", " } (r.kind) " " (r.crates) } } }
                }
            }
        }
    }
}

/// The table of the crates that changed, in `listed` order, one row at a time.
fn write_crates(
    w: &mut dyn Write,
    report: &Report,
    listed: &[usize],
    marks: &HashMap<CrateId, Mark>,
) -> io::Result<()> {
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
    w.write_all(b"</tbody></table></main>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_links_escape_percent_signs() {
        let id: CrateId = "reg:foo@1.0.0".parse().unwrap();
        assert_eq!(log_href(&id, "end"), "logs/reg%253Afoo@1.0.0/end.log");
        assert_eq!(anchor(&id), "c-reg%3Afoo%401.0.0");
    }
}
