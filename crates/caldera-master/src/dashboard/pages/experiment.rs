//! `/experiments/{name}`: counts per comparison, then either the crates the filters select or the
//! overview (regressions grouped by root cause, error groups, spurious results).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use caldera_core::crates::CrateId;
use caldera_core::lifecycle::ExperimentStatus;
use caldera_core::outcome::Comparison;
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::results::ExperimentProgress;
use caldera_db::triage::Mark;
use caldera_report::{CrateReport, Report};
use chrono::Utc;
use maud::{Markup, html};

use super::filters::{Filters, select};
use crate::AppState;
use crate::dashboard::cache::Snapshot;
use crate::dashboard::views::{self, comparison_badge, crate_href, crate_label, experiment_href};
use crate::dashboard::{Dashboard, PageError, Viewer};

/// Root regressions per page of the experiment view.
const ROOTS_PER_PAGE: usize = 50;
/// Dependents named inline under a root.
const DEPENDENTS_INLINE: usize = 10;
/// Crates per page of a filtered list.
const CRATES_PER_PAGE: usize = 100;
/// Error groups shown.
const GROUPS_SHOWN: usize = 50;

/// The triage marks that apply to a report's regressions, by crate.
type Marks = HashMap<CrateId, Mark>;

pub async fn experiment(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _viewer: Viewer,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Markup, PageError> {
    let filters = Filters::parse(&query)?;
    let e = experiments::get(&state.pool, &name).await?;
    let progress = dash.progress(&state.pool, e.id).await?;
    let snap = dash.cache.get(&state.pool, e.id).await?;
    let report = &snap.report;
    let marks = crate::triage::marks_for_report(&state.pool, report).await?;
    let name = e.name.as_str();
    let counts = report.counts();
    let cost = cost_line(&state, &e).await;
    let body = html! {
        (experiment_header(&e, &progress, &dash, &snap.cached))
        @if let Some(cost) = cost { p #cost { "Cost: " (cost) } }
        (exports_note(&snap, name))
        (headline(report))
        @if !marks.is_empty() {
            p.small #triage-count { (marks.len()) " of " (counts.get(Comparison::Regressed)) " regressions carry a triage mark (expected, known issue or ignored), set here or on an earlier experiment for the same crate and cause." }
        }
        (counts_table(report, name))
        (filter_form(report, &filters, name))
        @if filters.any() {
            (filtered(&snap, &filters, name, &marks))
        } @else {
            (overview(&snap, &filters, name, &marks))
        }
    };
    Ok(views::layout(
        &format!("Experiment {name}"),
        Some("experiments"),
        body,
    ))
}

fn experiment_header(
    e: &ExperimentRow,
    p: &ExperimentProgress,
    dash: &Dashboard,
    cached: &[(String, usize)],
) -> Markup {
    let now = Utc::now();
    let pace = views::pace(p, dash.config.throughput_window, e.started_at, now);
    html! {
        h1 { "Experiment " code { (e.name) } }
        table {
            tr { th { "status" } td.status { (e.status.as_str()) } }
            tr { th { "toolchains" } td { code { (e.spec.start.to_string()) } " (start) → " code { (e.spec.end.to_string()) } " (end)" } }
            tr { th { "mode" } td { (e.spec.mode.as_str()) } }
            tr { th { "priority" } td { (e.spec.priority) } }
            tr { th { "progress" } td { (views::progress_bar(p))
                @if e.status == ExperimentStatus::Running {
                    " · " (format!("{:.1}", pace.per_minute)) " crates/min"
                    @if let Some(s) = pace.eta_secs { " · ETA " (views::eta(s)) }
                } } }
            @if let Some(s) = e.started_at { tr { th { "started" } td { (views::timestamp(s)) } } }
            @if let Some(f) = e.finished_at { tr { th { "finished" } td { (views::timestamp(f)) } } }
            @if !cached.is_empty() {
                tr #cached { th { "result cache" } td { (views::cached_sources(cached, experiment_href)) } }
            }
        }
    }
}

/// `CPU time 24s, wall time 14s on 2 slots`.
fn estimate_text(e: &caldera_core::estimate::Estimate) -> String {
    let d = caldera_report::cost::duration;
    let cpu = e.cpu_ms.map_or("unknown".to_owned(), d);
    let wall = match (e.wall_ms, e.slots) {
        (Some(w), n) => format!("{} on {n} slots connected now", d(w)),
        (None, 0) => "none (no worker connected)".to_owned(),
        (None, _) => "unknown".to_owned(),
    };
    format!("CPU time {cpu}, wall time {wall}")
}

/// The cost of the experiment (`GET …/estimate` in one line): before the start the estimate,
/// while running what is left and the estimate at the start, after the run the estimate
/// against what it took.
async fn cost_line(state: &AppState, e: &ExperimentRow) -> Option<String> {
    let said = |r: Result<String, String>| match r {
        Ok(s) => s,
        Err(why) => format!("no estimate ({why})"),
    };
    match e.status {
        ExperimentStatus::Queued => Some(said(
            crate::estimate::before_start(state, e)
                .await
                .map(|est| format!("if it started now, {}. {}", estimate_text(&est), est.method))
                .map_err(|err| err.message),
        )),
        ExperimentStatus::Running | ExperimentStatus::Paused => {
            let left = crate::estimate::remaining_for_view(state, e)
                .await
                .map(|est| format!("left: {}", estimate_text(&est)))
                .ok_or_else(|| "being computed".to_owned());
            let start = caldera_db::estimate::stored(&state.pool, e.id)
                .await
                .ok()
                .flatten();
            Some(match start {
                Some(s) => format!(
                    "{}; estimated at the start: {}",
                    said(left),
                    estimate_text(&s.estimate)
                ),
                None => said(left),
            })
        }
        ExperimentStatus::Completed | ExperimentStatus::Aborted => {
            let c = crate::estimate::comparison(&state.pool, e)
                .await
                .ok()
                .flatten()?;
            Some(c.line())
        }
    }
}

/// How old the report shown is, and the links to the exported report files.
fn exports_note(snap: &Snapshot, name: &str) -> Markup {
    let report = &snap.report;
    html! {
        p.small {
            "Report of " (report.len()) " crates as of " (views::timestamp(snap.built_at))
            " (built in " (views::duration_ms(snap.build_time.as_millis() as i64)) "). Exports: "
            @for (i, file) in crate::export::FILES.iter().enumerate() {
                @if i > 0 { ", " }
                a href=(format!("{}/report/{}", experiment_href(name), file)) { (file) }
            }
            " (written when the experiment completes, or on " code { "POST /api/v1/experiments/" (name) "/report" } ")."
        }
        p.small { a #pr-comment-link href=(format!("{}/pr-comment", experiment_href(name))) { "Pull-request comment" } " — a Markdown summary to paste into a pull request, with a copy button." }
    }
}

fn headline(report: &Report) -> Markup {
    // the regressions listed: those of quiet crates are named apart
    let n = report.regressions().len();
    let roots = report.root_regressions().len();
    let quiet = report.quiet_regressions().len();
    html! {
        @match report.root_regressions().next() {
            None if quiet == 0 && report.diagnostics_changes().len() == 0 => p.headline { "No regressions." },
            None => p.headline { "No regressions listed." },
            Some(top) => {
                p.headline {
                    (n) " " (if n == 1 { "regression" } else { "regressions" }) ", "
                    (top.regressions_through()) " of them through " code { (crate_label(top.krate())) } "."
                }
                p { (roots) " regressed on their own; the other " (n - roots) " regressed because a dependency did." }
            }
        }
        (views::quiet_note(report))
        @if let Some(note) = caldera_report::confirmation_note(report, None) { p { (note) } }
    }
}

/// The crates per comparison, each count linking to the list of its crates.
fn counts_table(report: &Report, name: &str) -> Markup {
    let counts = report.counts();
    html! {
        h2 { "Counts" }
        table #counts {
            thead { tr { th { "comparison" } th.num { "crates" } } }
            tbody {
                @for (c, n) in counts.iter() {
                    tr class=[(n == 0).then_some("zero")] {
                        td { @if n > 0 { a href=(Filters { category: Some(c), ..Filters::default() }.href(name, 1)) { (comparison_badge(c)) } } @else { (comparison_badge(c)) } }
                        td.num { (n) }
                    }
                }
                tr { th { "total" } th.num { (counts.total()) } }
            }
        }
    }
}

/// The form of the filters, showing the ones applied (it works without JavaScript).
fn filter_form(report: &Report, filters: &Filters, name: &str) -> Markup {
    html! {
        h2 #filter { "Find crates" }
        form.filters method="get" action=(experiment_href(name)) {
            label { "category"
                select name="category" {
                    option value="" { "any" }
                    @for (c, n) in report.counts().iter() {
                        option value=(c.as_str()) selected[filters.category == Some(c)] { (c.as_str()) " (" (n) ")" }
                    }
                }
            }
            label { "error (end outcome)"
                select name="code" {
                    option value="" { "any" }
                    @for g in report.error_groups().take(GROUPS_SHOWN) {
                        option value=(g.key().as_str()) selected[filters.code.as_deref() == Some(g.key().as_str())] { (g.key().as_str()) " (" (g.len()) " roots)" }
                    }
                    @if let Some(code) = &filters.code {
                        @if !report.error_groups().any(|g| g.key().as_str() == code) {
                            option value=(code) selected { (code) }
                        }
                    }
                }
            }
            label { "crate name"
                input type="search" name="q" value=[filters.q.as_deref()] placeholder="e.g. serde";
            }
            @if let Some(r) = &filters.root { input type="hidden" name="root" value=(r.to_string()); }
            button type="submit" { "Filter" }
            @if filters.any() { a href=(experiment_href(name)) { "clear" } }
        }
    }
}

fn pager(f: &Filters, experiment: &str, total: usize, per_page: usize) -> Markup {
    let pages = total.div_ceil(per_page).max(1);
    html! {
        @if pages > 1 {
            p.pager {
                @if f.page > 1 { a href=(f.href(experiment, f.page - 1)) rel="prev" { "← previous" } }
                span { "page " (f.page.min(pages)) " of " (pages) }
                @if f.page < pages { a href=(f.href(experiment, f.page + 1)) rel="next" { "next →" } }
            }
        }
    }
}

fn crate_row(experiment: &str, c: CrateReport<'_>, marks: &Marks) -> Markup {
    let r = c.result();
    let page = crate_href(experiment, c.krate());
    html! {
        tr {
            td {
                a href=(page) { (crate_label(c.krate())) }
                @if matches!(c.comparison(), Comparison::Regressed | Comparison::Fixed) {
                    " " a.small href=(format!("{page}/diff")) aria-label=(format!("what changed in {}", crate_label(c.krate()))) { "diff" }
                }
                br; (views::external_links(c.krate()))
            }
            td { (comparison_badge(c.comparison())) (views::confirmation_badge(c.confirmation())) @if let Some(m) = marks.get(c.krate()) { " " (crate::triage::badge(m)) } }
            td { code { (r.start.to_string()) } }
            td { code { (r.end.to_string()) } }
            td.small {
                @if c.is_root() {
                    "root: " (c.regressions_through()) " through it"
                } @else if c.comparison() == Comparison::Regressed {
                    "through "
                    @for (i, root) in c.root_causes().enumerate() {
                        @if i > 0 { ", " }
                        a href=(crate_href(experiment, root)) { (crate_label(root)) }
                    }
                }
            }
        }
    }
}

fn filtered(snap: &Snapshot, f: &Filters, experiment: &str, marks: &Marks) -> Markup {
    let matches = select(snap, f);
    let start = (f.page - 1) * CRATES_PER_PAGE;
    html! {
        h2 #results { (matches.len()) " matching " (if matches.len() == 1 { "crate" } else { "crates" })
            @if let Some(r) = &f.root { " (" code { (crate_label(r)) } " and the regressions through it)" } }
        @if f.category.is_some_and(|c| views::SPURIOUS_COMPARISONS.contains(&c) || c == Comparison::Regressed) {
            p.small { "To run these again: the report's " a href=(format!("{}/report/retry.txt", experiment_href(experiment))) { "retry.txt" } " (regressions, spurious results and errors) is a crate list; see the commands in the " a href=(format!("{}/pr-comment", experiment_href(experiment))) { "pull-request comment" } "." }
        }
        @if matches.is_empty() {
            p { "No crate matches these filters." }
        } @else {
            input type="search" placeholder="filter this page…" data-filter-rows="crates" hidden;
            table #crates {
                thead { tr { th { "crate" } th { "comparison" } th { "start" } th { "end" } th { "root cause" } } }
                tbody {
                    @for c in matches.iter().skip(start).take(CRATES_PER_PAGE) { (crate_row(experiment, *c, marks)) }
                }
            }
            (pager(f, experiment, matches.len(), CRATES_PER_PAGE))
        }
    }
}

/// The page without filters: the regressions by root cause and by error, the notes on
/// diagnostics changes and flaky crates, the spurious results and the missing dependencies.
fn overview(snap: &Snapshot, f: &Filters, experiment: &str, marks: &Marks) -> Markup {
    let report = &snap.report;
    let roots = report.root_regressions().len();
    html! {
        @if roots > 0 {
            (roots_list(snap, f, experiment, marks))
            (pager(f, experiment, roots, ROOTS_PER_PAGE))
            (error_groups(report, experiment))
        }
        (super::lists::section(report, experiment))
        (views::diagnostics_note(report))
        (views::flaky_note(report))
        @if views::SPURIOUS_COMPARISONS.iter().any(|&c| report.counts().get(c) > 0) {
            (spurious_table(report, experiment))
        }
        @if !report.unresolved_dependencies().is_empty() {
            h2 { "Dependencies not in this experiment" }
            p.small { "Named by failed builds of regressed crates; those crates are counted as roots." }
            ul { @for u in report.unresolved_dependencies().iter().take(GROUPS_SHOWN) { li { code { (u.name) } ": " (u.dependents) } } }
        }
    }
}

/// One page of the root regressions, most regressions through them first.
fn roots_list(snap: &Snapshot, f: &Filters, experiment: &str, marks: &Marks) -> Markup {
    let start = (f.page - 1) * ROOTS_PER_PAGE;
    html! {
        h2 #roots { "Regressions by root cause" }
        p.small { "Crates that regressed on their own, most regressions through them first; under each, the crates that regressed because it did." }
        ol.roots start=(start + 1) {
            @for root in snap.report.root_regressions().skip(start).take(ROOTS_PER_PAGE) {
                @let deps = snap.dependents.get(root.krate()).map(|v| v.as_slice()).unwrap_or(&[]);
                (root_item(root, deps, experiment, marks))
            }
        }
    }
}

/// A root regression: its end outcome, badges, and the first of the regressions through it.
fn root_item(root: CrateReport<'_>, deps: &[CrateId], experiment: &str, marks: &Marks) -> Markup {
    html! {
        li {
            a href=(crate_href(experiment, root.krate())) { strong { (crate_label(root.krate())) } }
            " " code { (root.result().end.to_string()) }
            " " a.small href=(format!("{}/diff", crate_href(experiment, root.krate()))) aria-label=(format!("what changed in {}", crate_label(root.krate()))) { "diff" }
            " — " (root.regressions_through()) " " (if root.regressions_through() == 1 { "regression" } else { "regressions" })
            @if root.in_cycle() { " " span.badge.warn { "cycle" } }
            (views::confirmation_badge(root.confirmation()))
            @if let Some(m) = marks.get(root.krate()) { " " (crate::triage::badge(m)) }
            @if !deps.is_empty() {
                div.deps {
                    "through it: "
                    @for (i, d) in deps.iter().take(DEPENDENTS_INLINE).enumerate() {
                        @if i > 0 { ", " }
                        a href=(crate_href(experiment, d)) { (crate_label(d)) }
                    }
                    @if deps.len() > DEPENDENTS_INLINE {
                        " … " a href=(Filters { root: Some(root.krate().clone()), ..Filters::default() }.href(experiment, 1)) { "and " (deps.len() - DEPENDENTS_INLINE) " more" }
                    }
                }
            }
        }
    }
}

/// The root regressions grouped by error (code or kind), each linking to its crates.
fn error_groups(report: &Report, experiment: &str) -> Markup {
    html! {
        h2 #errors { "Root regressions by error" }
        table {
            thead { tr { th { "error" } th.num { "root regressions" } th { "crates" } } }
            tbody {
                @for g in report.error_groups().take(GROUPS_SHOWN) {
                    tr {
                        td { a href=(Filters { code: Some(g.key().as_str().to_owned()), category: Some(Comparison::Regressed), ..Filters::default() }.href(experiment, 1)) { code { (g.key().as_str()) } } }
                        td.num { (g.len()) }
                        td {
                            @for (i, c) in g.crates().take(3).enumerate() {
                                @if i > 0 { ", " }
                                a href=(crate_href(experiment, c.krate())) { (crate_label(c.krate())) }
                            }
                            @if g.len() > 3 { " … and " (g.len() - 3) " more" }
                        }
                    }
                }
            }
        }
    }
}

/// The spurious and infrastructure results: how many of each (linking to them), and why.
fn spurious_table(report: &Report, experiment: &str) -> Markup {
    html! {
        h2 #spurious { "Spurious and infrastructure results" }
        p.small { "Not regressions: out of memory, timeouts, the pids limit, full disk, network access in the sandbox, or the infrastructure failed. Retry them before believing them." }
        table {
            thead { tr { th { "comparison" } th.num { "crates" } th { "reasons" } } }
            tbody {
                @for c in views::SPURIOUS_COMPARISONS {
                    tr {
                        td { a href=(Filters { category: Some(c), ..Filters::default() }.href(experiment, 1)) { (comparison_badge(c)) } }
                        td.num { (report.counts().get(c)) }
                        td { @for (i, r) in report.spurious_reasons(c).iter().enumerate() { @if i > 0 { ", " } (r.kind) " " (r.crates) } }
                    }
                }
            }
        }
    }
}
