//! Pieces of HTML shared by the dashboard pages and the static report bundle: the page layout,
//! outcome and comparison rendering, links, numbers, progress and ETAs.

use std::fmt::Write as _;

use caldera_core::crates::CrateId;
use caldera_core::outcome::{BuildFailReason, Comparison, Outcome, TestFailReason};
use caldera_db::results::ExperimentProgress;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters kept as they are in a path segment or query value: unreserved ones only.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` as one URL path segment (`/` and everything else reserved is percent-encoded).
pub fn path_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// `s` as a query-string value.
pub fn query_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The dashboard page of a crate in an experiment.
pub fn crate_href(experiment: &str, krate: &CrateId) -> String {
    format!(
        "/experiments/{}/crates/{}",
        path_encode(experiment),
        path_encode(&krate.to_string())
    )
}

/// The dashboard page of an experiment.
pub fn experiment_href(experiment: &str) -> String {
    format!("/experiments/{}", path_encode(experiment))
}

/// The comparisons listed apart as spurious and infrastructure results, in the order shown: not
/// regressions, to retry before believing them.
pub const SPURIOUS_COMPARISONS: [Comparison; 4] = [
    Comparison::SpuriousRegressed,
    Comparison::SpuriousFixed,
    Comparison::Spurious,
    Comparison::Error,
];

/// Quiet crates named per quiet-regressions note.
const QUIET_SHOWN: usize = 20;

/// The note under a report's headline naming the regressions of crates marked quiet (empty when
/// there are none): they count, but are in no list of regressions.
pub fn quiet_note(report: &caldera_report::Report) -> Markup {
    let n = report.quiet_regressions().len();
    html! {
        @if n > 0 {
            p.quiet {
                (n) " " (if n == 1 { "regression" } else { "regressions" }) " of crates marked quiet "
                (if n == 1 { "is" } else { "are" }) " not listed: "
                @for (k, c) in report.quiet_regressions().take(QUIET_SHOWN).enumerate() {
                    @if k > 0 { ", " }
                    code { (crate_label(c.krate())) }
                }
                @if n > QUIET_SHOWN { " … and " (n - QUIET_SHOWN) " more" }
                "."
            }
        }
    }
}

/// The note naming the regressions that are only a diagnostics change (empty when there are
/// none): tests comparing the compiler's output with stored expectations failed. They count as
/// regressed but are kept below, and apart from, real breakage.
pub fn diagnostics_note(report: &caldera_report::Report) -> Markup {
    let n = report.diagnostics_changes().len();
    html! {
        @if n > 0 {
            h2 #diagnostics { "Compiler output changed" }
            p.quiet {
                (n) " " (if n == 1 { "crate" } else { "crates" })
                " regressed only because tests that compare the compiler's diagnostics with stored \
                 expectations (trybuild, ui_test, compiletest) saw them change — a diagnostics \
                 change, not breakage: "
                @for (k, c) in report.diagnostics_changes().take(QUIET_SHOWN).enumerate() {
                    @if k > 0 { ", " }
                    code { (crate_label(c.krate())) }
                }
                @if n > QUIET_SHOWN { " … and " (n - QUIET_SHOWN) " more" }
                "."
            }
        }
    }
}

/// The section naming the crates whose confirmation runs disagreed with their first run (empty
/// when there are none): not evidence either way, so in no list of regressions.
pub fn flaky_note(report: &caldera_report::Report) -> Markup {
    let n = report.flaky().len();
    html! {
        @if n > 0 {
            h2 #flaky { "Flaky (not confirmed)" }
            p.quiet {
                (n) " " (if n == 1 { "crate" } else { "crates" })
                " regressed or got fixed on the first run, but a re-run from clean target dirs \
                 disagreed — not regressions: "
                @for (k, c) in report.flaky().take(QUIET_SHOWN).enumerate() {
                    @if k > 0 { ", " }
                    code { (crate_label(c.krate())) }
                    " (" (c.comparison().as_str()) ")"
                }
                @if n > QUIET_SHOWN { " … and " (n - QUIET_SHOWN) " more" }
                "."
            }
        }
    }
}

/// A small badge with a crate's confirmation status, when it was re-run.
pub fn confirmation_badge(c: Option<caldera_core::confirm::ConfirmationStatus>) -> Markup {
    use caldera_core::confirm::ConfirmationStatus as S;
    html! {
        @match c {
            Some(S::Confirmed) => { " " span.badge.same title="every re-run agreed" { "confirmed" } }
            Some(S::Flaky) => { " " span.badge.warn title="a re-run disagreed" { "flaky" } }
            Some(S::Pending) => { " " span.badge.same title="re-runs still running" { "confirming…" } }
            Some(S::KnownFlaky) => { " " span.badge.warn title="an earlier run showed this failure to be flaky" { "known flaky" } }
            None => {}
        }
    }
}

/// The sides the result cache settled, by source experiment (`crate::cache::sources`): `3 sides
/// cached from <source>; …`, each source linked by `href`.
pub fn cached_sources(cached: &[(String, usize)], href: impl Fn(&str) -> String) -> Markup {
    html! {
        @for (i, (source, n)) in cached.iter().enumerate() {
            @if i > 0 { "; " }
            (n) @if *n == 1 { " side" } @else { " sides" } " cached from " a href=(href(source)) { code { (source) } }
        }
    }
}

/// `foo 1.2.3` for registry crates, the id otherwise.
pub fn crate_label(id: &CrateId) -> String {
    match id {
        CrateId::Registry { name, version, .. } => format!("{name} {version}"),
        other => other.to_string(),
    }
}

/// CSS class of a comparison: `bad` (regressions), `good` (fixes), `warn` (spurious, errors,
/// unknown), `same` (everything else).
pub fn comparison_class(c: Comparison) -> &'static str {
    match c {
        Comparison::Regressed => "bad",
        Comparison::Fixed => "good",
        Comparison::SpuriousRegressed
        | Comparison::SpuriousFixed
        | Comparison::Spurious
        | Comparison::Error
        | Comparison::Unknown => "warn",
        _ => "same",
    }
}

pub fn comparison_badge(c: Comparison) -> Markup {
    html! { span class={ "badge " (comparison_class(c)) } { (c.as_str()) } }
}

/// The details of an outcome beyond its compact form: reasons, failed tests, failed dependencies.
pub fn outcome_reason(o: &Outcome) -> Option<String> {
    match o {
        Outcome::TestFail {
            failed_tests,
            reason: Some(r),
        } => Some(format!(
            "{}{}{}",
            match r {
                TestFailReason::DiagnosticsChange =>
                    "diagnostics-change: tests comparing compiler output with stored expectations failed"
                        .to_owned(),
                r => format!("{r}: spurious, says nothing about the toolchain"),
            },
            if failed_tests.is_empty() { "" } else { "; failed tests: " },
            failed_tests.join(", ")
        )),
        Outcome::TestFail { failed_tests, .. } if !failed_tests.is_empty() => {
            Some(format!("failed tests: {}", failed_tests.join(", ")))
        }
        Outcome::BuildFail(BuildFailReason::DependsOn { crates }) if !crates.is_empty() => {
            Some(format!("failed dependencies: {}", crates.join(", ")))
        }
        Outcome::BuildFail(BuildFailReason::CompilerError { codes }) if !codes.is_empty() => {
            Some(format!("error codes: {}", codes.join(", ")))
        }
        Outcome::BuildFail(r) if r.is_spurious() => Some(format!(
            "{}: spurious, says nothing about the toolchain",
            r.kind()
        )),
        Outcome::PrepareFail { reason }
        | Outcome::Broken { reason }
        | Outcome::Error { reason } => Some(reason.clone()),
        _ => None,
    }
}

/// `1.2 s`, `3 min 4 s`, `1 h 2 min`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let secs = ms / 1000;
    if secs < 3600 {
        return format!("{} min {} s", secs / 60, secs % 60);
    }
    if secs < 86_400 {
        return format!("{} h {} min", secs / 3600, (secs % 3600) / 60);
    }
    format!("{} d {} h", secs / 86_400, (secs % 86_400) / 3600)
}

/// `512 B`, `3.4 MiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{} B", n.max(0))
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2026-11-21 14:03:07 UTC`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How fast an experiment finishes jobs, and when it will be done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Finished jobs per minute over the window (or since the start, if that is shorter).
    pub per_minute: f64,
    /// Seconds until the unfinished jobs are done at that pace; `None` when nothing finished in
    /// the window or nothing is left.
    pub eta_secs: Option<f64>,
}

/// The pace of an experiment at `now`, from the jobs that finished in the window of `window`
/// before `now` (shortened to the time since `started_at` when the experiment is younger).
pub fn pace(
    progress: &ExperimentProgress,
    window: std::time::Duration,
    started_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Pace {
    let mut secs = window.as_secs_f64();
    if let Some(start) = started_at {
        let since = (now - start).num_milliseconds() as f64 / 1000.0;
        secs = secs.min(since);
    }
    let secs = secs.max(1.0);
    let per_minute = progress.finished_in_window as f64 * 60.0 / secs;
    let left = (progress.queued + progress.running) as f64;
    let eta_secs = (per_minute > 0.0 && left > 0.0).then(|| left / per_minute * 60.0);
    Pace {
        per_minute,
        eta_secs,
    }
}

/// `about 3 min`, `about 2 h 5 min`.
pub fn eta(secs: f64) -> String {
    format!("about {}", duration_ms((secs * 1000.0) as i64))
}

/// A progress bar: finished jobs (done, error, cancelled) of all; works without CSS too.
pub fn progress_bar(p: &ExperimentProgress) -> Markup {
    let total = p.total().max(1) as f64;
    let pct = |n: i64| n as f64 * 100.0 / total;
    let done = pct(p.done);
    let error = pct(p.error + p.cancelled);
    let running = pct(p.running);
    let finished_pct = pct(p.finished());
    html! {
        div.progress role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow=(format!("{finished_pct:.0}"))
            title=(format!("{} done, {} error, {} cancelled, {} running, {} queued", p.done, p.error, p.cancelled, p.running, p.queued)) {
            span.done style=(format!("width:{done:.2}%")) {}
            span.err style=(format!("width:{error:.2}%")) {}
            span.run style=(format!("width:{running:.2}%")) {}
        }
        span.small { (p.finished()) " / " (p.total()) " (" (format!("{finished_pct:.1}")) "%)" }
    }
}

/// A small bar chart of counts (oldest first), as inline SVG.
pub fn sparkline(counts: &[i64]) -> Markup {
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let w = 3;
    let h = 24.0;
    let mut bars = String::new();
    for (i, &n) in counts.iter().enumerate() {
        let bh = (n as f64 / max * h).max(if n > 0 { 1.0 } else { 0.0 });
        let _ = write!(
            bars,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{:.1}\"/>",
            i * w,
            h - bh,
            w - 1,
            bh
        );
    }
    html! {
        svg.spark width=(counts.len() * w) height="24" viewBox=(format!("0 0 {} 24", counts.len() * w))
            role="img" aria-label="finished jobs per minute" { (PreEscaped(bars)) }
    }
}

const CSS: &str = r#"
:root { --bg:#fff; --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bad:#cf222e; --good:#1a7f37; --warn:#9a6700; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); margin: 0; }
header.top { background: #24292f; color: #fff; padding: .5rem 1rem; display: flex; gap: 1.2rem; align-items: center; }
header.top a { color: #fff; text-decoration: none; }
header.top a.active { text-decoration: underline; }
header.top .brand { font-weight: 700; margin-right: 1rem; }
main { padding: 1rem 1.5rem 3rem; max-width: 1600px; }
h1 { font-size: 1.5rem; margin: .3rem 0 .8rem; }
h2 { font-size: 1.15rem; margin: 1.6rem 0 .5rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .4rem 0; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
a { color: var(--accent); }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 1rem; font-size: 12px; border: 1px solid var(--line); white-space: nowrap; }
.badge.bad { background: #ffebe9; color: var(--bad); border-color: #ffcecb; }
.badge.good { background: #dafbe1; color: var(--good); border-color: #aceebb; }
.badge.warn { background: #fff8c5; color: var(--warn); border-color: #f5e0a0; }
.badge.triage { background: #ddf4ff; color: #0550ae; border-color: #b6e3ff; text-decoration: none; }
.badge.triage-ignore { background: #eaeef2; color: #57606a; border-color: #d0d7de; }
.status { font-weight: 600; }
.headline { font-size: 1.1rem; font-weight: 600; }
.error { color: var(--bad); }
.small, .muted { color: var(--muted); font-size: 12px; }
.progress { display: inline-flex; width: 220px; height: 12px; background: #eaeef2; border-radius: 6px; overflow: hidden; vertical-align: middle; margin-right: .4rem; }
.progress span.done { background: #2da44e; } .progress span.err { background: #cf222e; } .progress span.run { background: #54aeff; }
svg.spark rect { fill: #54aeff; }
form.filters { display: flex; flex-wrap: wrap; gap: .6rem; align-items: end; margin: .6rem 0; padding: .6rem; background: #f6f8fa; border: 1px solid var(--line); }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.roots li { margin: .2rem 0; }
.deps { color: var(--muted); font-size: 12.5px; }
/* Both logs side by side where there is room, stacked below 1100px; a column never grows with
   its longest line (minmax(0, 1fr), min-width: 0): each log scrolls on its own. */
.side-by-side { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1rem; }
.side-by-side > * { min-width: 0; }
@media (max-width: 1100px) { .side-by-side { grid-template-columns: minmax(0, 1fr); } }
main { min-width: 0; }
/* narrow screens: wide tables scroll on their own, long words wrap, the page never scrolls sideways */
@media (max-width: 700px) {
  main { padding: .6rem .6rem 2rem; }
  header.top { flex-wrap: wrap; gap: .6rem; }
  table { display: block; overflow-x: auto; max-width: 100%; }
  p, li, td, h1, h2, h3, .new-error { overflow-wrap: anywhere; }
  .progress { width: 120px; }
}
.log { background: #0d1117; color: #e6edf3; padding: .6rem; overflow: auto; max-height: 70vh; white-space: pre; border-radius: 4px; margin: 0; max-width: 100%; }
.log:focus { outline: 2px solid var(--accent); outline-offset: 2px; }
/* the first new error: dark text on light yellow (contrast > 12:1), whatever the ANSI colours say,
   and a marker so that colour is not the only signal */
.log mark { background: #fff1a8; color: #1b1f24; outline: 2px solid #d4a72c; font-weight: 600; }
.log mark * { color: inherit !important; background: none !important; }
.log mark::before { content: "\25B6  "; color: var(--bad); }
.ext a { margin-right: .5rem; font-size: 12px; }
.lists h3 { font-size: 1rem; margin: .8rem 0 .2rem; }
.lists p { margin: 0 0 .4rem; }
table.diff { border-collapse: collapse; width: max-content; min-width: 100%; margin: 0; }
table.diff th, table.diff td { border: 0; padding: 0 .4rem; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; white-space: pre; }
table.diff th { background: #f6f8fa; font-family: inherit; }
table.diff .ln { width: 4.5em; text-align: right; color: var(--muted); user-select: none; }
table.diff .sign { width: 1.6em; text-align: center; font-weight: 700; }
table.diff tr.add td { background: #dafbe1; } table.diff tr.add td.sign { color: var(--good); }
table.diff tr.del td { background: #ffebe9; } table.diff tr.del td.sign { color: var(--bad); }
table.diff tr.sep td { background: #ddf4ff; color: var(--muted); padding: .2rem .4rem; }
.diff-wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 4px; margin: .4rem 0 1rem; }
textarea.pr { width: 100%; min-height: 24rem; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
a:focus-visible, button:focus-visible, select:focus-visible, input:focus-visible, textarea:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -9999px; } .skip:focus { left: .5rem; top: .5rem; background: #fff; padding: .3rem; z-index: 10; }
.new-error { border-left: 4px solid var(--bad); background: #ffebe9; padding: .5rem .8rem; margin: .6rem 0; }
.pager a, .pager span { margin-right: .6rem; }
tr.hidden { display: none; }
"#;

/// Progressive enhancement: `<input data-filter-rows="ID">` hides the rows of table `ID` that do not
/// contain what is typed. The page works the same without it (the server-side filters).
const JS: &str = r#"
document.querySelectorAll('input[data-filter-rows]').forEach(function (input) {
  var table = document.getElementById(input.getAttribute('data-filter-rows'));
  if (!table) return;
  input.hidden = false;
  input.addEventListener('input', function () {
    var q = input.value.toLowerCase();
    table.querySelectorAll('tbody tr').forEach(function (tr) {
      tr.classList.toggle('hidden', q !== '' && tr.textContent.toLowerCase().indexOf(q) < 0);
    });
  });
});
"#;

/// The copy button of the pull-request comment page: `<button data-copy="ID">` copies the text of
/// the element `ID` (a textarea) to the clipboard and says so in `[data-copy-status]`.
const COPY_JS: &str = r#"
document.querySelectorAll('button[data-copy]').forEach(function (button) {
  var source = document.getElementById(button.getAttribute('data-copy'));
  var status = document.querySelector('[data-copy-status]');
  if (!source) return;
  button.hidden = false;
  button.addEventListener('click', function () {
    var say = function (text) { if (status) status.textContent = text; };
    var manual = function () { say('Select the text and copy it (Ctrl+C).'); };
    source.focus(); source.select();
    var ok = false;
    try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
    if (ok) { say('Copied.'); return; }
    if (navigator.clipboard) {
      navigator.clipboard.writeText(source.value).then(function () { say('Copied.'); }, manual);
    } else {
      manual();
    }
  });
});
"#;

/// The path of the dashboard's script ([`script`]).
pub const SCRIPT_PATH: &str = "/assets/dashboard.js";

/// The dashboard's script, served at [`SCRIPT_PATH`] (a file of the master's own, so the pages
/// need no inline script): the as-you-type row filter and the copy button.
pub fn script() -> String {
    format!("{JS}{COPY_JS}")
}

/// Links to a crate's pages elsewhere: crates.io and docs.rs for registry crates, the repository
/// for git crates.
pub fn external_links(id: &CrateId) -> Markup {
    html! {
        span.ext {
            @match id {
                CrateId::Registry { name, version, .. } => {
                    a href=(format!("https://crates.io/crates/{}/{}", path_encode(name), path_encode(&version.to_string()))) rel="noopener" { "crates.io" }
                    a href=(format!("https://docs.rs/{}/{}", path_encode(name), path_encode(&version.to_string()))) rel="noopener" { "docs.rs" }
                }
                CrateId::Git { url, .. } => {
                    @if url.starts_with("https://") || url.starts_with("http://") {
                        a href=(url) rel="noopener" { "repository" }
                    }
                }
                CrateId::Local { .. } => {}
            }
        }
    }
}

/// The dashboard's page frame. `active` names the navigation entry to mark (`experiments`,
/// `workers`, `queue`).
pub fn layout(title: &str, active: Option<&str>, body: Markup) -> Markup {
    let nav = [
        ("/", "experiments", "Experiments"),
        ("/workers", "workers", "Workers"),
        ("/queue", "queue", "Queue"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — caldera" }
                style { (PreEscaped(CSS)) }
            }
            body {
                a.skip href="#content" { "Skip to the content" }
                header.top {
                    a.brand href="/" { "caldera" }
                    @for (href, key, label) in nav {
                        a href=(href) class=[(active == Some(key)).then_some("active")] { (label) }
                    }
                }
                main #content { (body) }
                script src=(SCRIPT_PATH) defer {}
            }
        }
    }
}

/// The dashboard's style sheet (also inlined in the static report bundle).
pub fn css() -> &'static str {
    CSS
}

/// The dashboard's script: row filtering as you type (also in the static report bundle).
pub fn js() -> &'static str {
    JS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(
            path_encode("git:https://h/x.git#r"),
            "git%3Ahttps%3A%2F%2Fh%2Fx.git%23r"
        );
        assert_eq!(query_encode("a b&c=<d>"), "a%20b%26c%3D%3Cd%3E");
        assert_eq!(
            crate_href("e-1", &"reg:foo@1.0.0".parse().unwrap()),
            "/experiments/e-1/crates/reg%3Afoo%401.0.0"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(duration_ms(250), "250 ms");
        assert_eq!(duration_ms(1500), "1.5 s");
        assert_eq!(duration_ms(125_000), "2 min 5 s");
        assert_eq!(duration_ms(3_720_000), "1 h 2 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
    }

    #[test]
    fn pace_and_eta_come_from_the_window() {
        let now: DateTime<Utc> = "2026-11-21T12:00:00Z".parse().unwrap();
        let p = ExperimentProgress {
            queued: 900,
            running: 100,
            done: 600,
            finished_in_window: 300,
            ..Default::default()
        };
        let window = std::time::Duration::from_secs(15 * 60);
        // 300 in 15 minutes = 20/min; 1000 left = 50 minutes
        let long_ago = Some(now - chrono::Duration::hours(2));
        let got = pace(&p, window, long_ago, now);
        assert!((got.per_minute - 20.0).abs() < 1e-9, "{got:?}");
        assert!((got.eta_secs.unwrap() - 3000.0).abs() < 1e-6, "{got:?}");
        // started 5 minutes ago: the window is 5 minutes, 60/min
        let recent = Some(now - chrono::Duration::minutes(5));
        let got = pace(&p, window, recent, now);
        assert!((got.per_minute - 60.0).abs() < 1e-9, "{got:?}");
        // nothing finished recently: no ETA
        let idle = ExperimentProgress {
            queued: 5,
            ..Default::default()
        };
        assert_eq!(pace(&idle, window, long_ago, now).eta_secs, None);
        // nothing left: no ETA
        let done = ExperimentProgress {
            done: 5,
            finished_in_window: 5,
            ..Default::default()
        };
        assert_eq!(pace(&done, window, long_ago, now).eta_secs, None);
    }

    #[test]
    fn cached_sources_name_each_source_with_its_count() {
        let cases: [(&[(&str, usize)], &str); 3] = [
            (&[], ""),
            (
                &[("a", 1)],
                r#"1 side cached from <a href="/experiments/a"><code>a</code></a>"#,
            ),
            (
                &[("a", 3), ("b<", 2)],
                concat!(
                    r#"3 sides cached from <a href="/experiments/a"><code>a</code></a>; "#,
                    r#"2 sides cached from <a href="/experiments/b%3C"><code>b&lt;</code></a>"#
                ),
            ),
        ];
        for (cached, want) in cases {
            let cached: Vec<(String, usize)> =
                cached.iter().map(|(s, n)| (s.to_string(), *n)).collect();
            assert_eq!(cached_sources(&cached, experiment_href).into_string(), want);
        }
    }

    #[test]
    fn layout_escapes_the_title() {
        let page = layout("<script>x</script>", None, html! {}).into_string();
        assert!(!page.contains("<script>x</script>"));
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;"));
    }
}
