//! The dashboard's pages.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use caldera_core::crates::CrateId;
use caldera_core::lifecycle::ExperimentStatus;
use caldera_core::outcome::{BuildFailReason, Comparison, Outcome, compare};
use caldera_core::report::{CrateReport, Report, first_new_error};
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::results::{self, ExperimentProgress, SideDetail};
use caldera_db::triage::Mark;
use chrono::Utc;
use maud::{Markup, html};

use super::cache::Snapshot;
use super::views::{
    self, comparison_badge, crate_href, crate_label, experiment_href, query_encode,
};
use super::{Dashboard, PageError, Viewer, logview};
use crate::AppState;

/// Root regressions per page of the experiment view.
const ROOTS_PER_PAGE: usize = 50;
/// Dependents named inline under a root.
const DEPENDENTS_INLINE: usize = 10;
/// Crates per page of a filtered list.
const CRATES_PER_PAGE: usize = 100;
/// Error groups shown.
const GROUPS_SHOWN: usize = 50;

fn is_terminal(s: ExperimentStatus) -> bool {
    matches!(s, ExperimentStatus::Completed | ExperimentStatus::Aborted)
}

// ---------------------------------------------------------------------------------------------
// Home

pub async fn home(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _viewer: Viewer,
) -> Result<Markup, PageError> {
    let page = experiments::list(&state.pool, None, 200, 0).await?;
    let now = Utc::now();
    let window = dash.config.throughput_window;
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let ids: Vec<_> = page.items.iter().map(|e| e.id).collect();
    let progress = results::progress(&state.pool, &ids, window_start).await?;
    let mut sparks = HashMap::new();
    for e in page
        .items
        .iter()
        .filter(|e| e.status == ExperimentStatus::Running)
    {
        let counts = results::finished_per_bucket(
            &state.pool,
            e.id,
            now - chrono::Duration::minutes(30),
            now,
            60,
        )
        .await?;
        sparks.insert(e.id, counts);
    }
    let empty = ExperimentProgress::default();
    Ok(views::layout(
        "Experiments",
        Some("experiments"),
        html! {
            h1 { "Experiments" }
            @if page.items.is_empty() {
                p { "No experiments yet. Create one with " code { "caldera experiment create" } "." }
            } @else {
                p.small { (page.total) " experiments" @if page.total > page.items.len() as i64 { ", the " (page.items.len()) " newest shown" } "." }
                input type="search" placeholder="filter…" data-filter-rows="experiments" hidden;
                table #experiments {
                    thead { tr {
                        th { "experiment" } th { "status" } th { "start → end" } th { "mode" }
                        th { "progress" } th.num { "throughput" } th { "ETA" } th { "created" }
                    } }
                    tbody {
                        @for e in &page.items {
                            @let p = progress.get(&e.id).unwrap_or(&empty);
                            @let pace = views::pace(p, window, e.started_at, now);
                            tr {
                                td { a href=(experiment_href(&e.name)) { (e.name) } }
                                td.status { (e.status.as_str()) }
                                td { code { (e.spec.start.to_string()) } " → " code { (e.spec.end.to_string()) } }
                                td { (e.spec.mode.as_str()) }
                                td { (views::progress_bar(p)) }
                                td.num {
                                    @if e.status == ExperimentStatus::Running {
                                        (format!("{:.1}", pace.per_minute)) " /min"
                                        @if let Some(s) = sparks.get(&e.id) { br; (views::sparkline(s)) }
                                    } @else { span.muted { "—" } }
                                }
                                td {
                                    @if is_terminal(e.status) {
                                        @if let Some(f) = e.finished_at { span.small { "finished " (views::timestamp(f)) } }
                                    } @else if let Some(secs) = pace.eta_secs {
                                        (views::eta(secs))
                                    } @else { span.muted { "—" } }
                                }
                                td.small { (views::timestamp(e.created_at)) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Experiment

/// The experiment page's filters.
#[derive(Debug, Default, Clone)]
struct Filters {
    category: Option<Comparison>,
    code: Option<String>,
    /// lower-cased
    q: Option<String>,
    root: Option<CrateId>,
    page: usize,
}

impl Filters {
    fn parse(query: &HashMap<String, String>) -> Result<Filters, PageError> {
        let get = |k: &str| query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let category = get("category")
            .map(|c| {
                c.parse::<Comparison>().map_err(|_| {
                    PageError::bad_request(format!(
                        "unknown category {c:?}; expected one of {}",
                        Comparison::ALL
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .transpose()?;
        let root = get("root")
            .map(|r| {
                r.parse::<CrateId>()
                    .map_err(|e| PageError::bad_request(format!("root: {e}")))
            })
            .transpose()?;
        let page = match get("page") {
            None => 1,
            Some(p) => p.parse::<usize>().ok().filter(|&p| p >= 1).ok_or_else(|| {
                PageError::bad_request(format!("page must be a positive integer, got {p:?}"))
            })?,
        };
        Ok(Filters {
            category,
            code: get("code").map(str::to_owned),
            q: get("q").map(str::to_ascii_lowercase),
            root,
            page,
        })
    }

    fn any(&self) -> bool {
        self.category.is_some() || self.code.is_some() || self.q.is_some() || self.root.is_some()
    }

    /// The query string of these filters on another page.
    fn href(&self, experiment: &str, page: usize) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.category {
            parts.push(format!("category={}", c.as_str()));
        }
        if let Some(c) = &self.code {
            parts.push(format!("code={}", query_encode(c)));
        }
        if let Some(q) = &self.q {
            parts.push(format!("q={}", query_encode(q)));
        }
        if let Some(r) = &self.root {
            parts.push(format!("root={}", query_encode(&r.to_string())));
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        let base = experiment_href(experiment);
        if parts.is_empty() {
            base
        } else {
            format!("{base}?{}", parts.join("&"))
        }
    }
}

/// Does the end outcome belong to the error group `code` (an error code or a kind)?
fn matches_code(o: &Outcome, code: &str) -> bool {
    match o {
        Outcome::BuildFail(BuildFailReason::CompilerError { codes }) => {
            codes.iter().any(|c| c == code) || (codes.is_empty() && code == "compiler-error")
        }
        Outcome::BuildFail(r) => r.kind() == code,
        other => other.kind() == code,
    }
}

/// ASCII-case-insensitive substring test; `needle` is lower-case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

fn name_matches(id: &CrateId, q: &str) -> bool {
    match id {
        CrateId::Registry { name, version, .. } => {
            contains_ci(name, q)
                || (q.as_bytes()[0].is_ascii_digit() && version.to_string().contains(q))
        }
        CrateId::Git { url, rev } => contains_ci(url, q) || contains_ci(rev, q),
        CrateId::Local { path } => contains_ci(path, q),
    }
}

/// The crates the filters select, in a meaningful order: regressions roots first, spurious and
/// error lists by id, everything else in input order.
fn select<'a>(snap: &'a Snapshot, f: &Filters) -> Vec<CrateReport<'a>> {
    let report = &snap.report;
    let base: Box<dyn Iterator<Item = CrateReport<'a>> + 'a> = if let Some(root) = &f.root {
        let root_view = report.get(root);
        let deps = root_view
            .and_then(|r| snap.dependents.get(r.krate()))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        Box::new(
            root_view
                .into_iter()
                .chain(deps.iter().filter_map(|d| report.get(d))),
        )
    } else {
        match f.category {
            Some(Comparison::Regressed) => Box::new(report.regressions()),
            Some(Comparison::SpuriousRegressed) => Box::new(report.spurious_regressed()),
            Some(Comparison::SpuriousFixed) => Box::new(report.spurious_fixed()),
            Some(Comparison::Spurious) => Box::new(report.spurious_both()),
            Some(Comparison::Error) => Box::new(report.errors()),
            _ => Box::new(report.crates()),
        }
    };
    base.filter(|c| f.category.is_none_or(|cat| c.comparison() == cat))
        .filter(|c| {
            f.code
                .as_deref()
                .is_none_or(|code| matches_code(&c.result().end, code))
        })
        .filter(|c| f.q.as_deref().is_none_or(|q| name_matches(c.krate(), q)))
        .collect()
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
        @if let Some(note) = caldera_core::report::confirmation_note(report, None) { p { (note) } }
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

/// The triage marks that apply to a report's regressions, by crate.
type Marks = HashMap<CrateId, Mark>;

fn crate_row(experiment: &str, c: CrateReport<'_>, marks: &Marks) -> Markup {
    let r = c.result();
    html! {
        tr {
            td { a href=(crate_href(experiment, c.krate())) { (crate_label(c.krate())) } }
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

fn experiment_header(e: &ExperimentRow, p: &ExperimentProgress, dash: &Dashboard) -> Markup {
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
        }
    }
}

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
    let body = html! {
        (experiment_header(&e, &progress, &dash))
        p.small {
            "Report of " (report.len()) " crates as of " (views::timestamp(snap.built_at))
            " (built in " (views::duration_ms(snap.build_time.as_millis() as i64)) "). Exports: "
            @for (i, file) in crate::export::FILES.iter().enumerate() {
                @if i > 0 { ", " }
                a href=(format!("{}/report/{}", experiment_href(name), file)) { (file) }
            }
            " (written when the experiment completes, or on " code { "POST /api/v1/experiments/" (name) "/report" } ")."
        }
        (headline(report))
        @if !marks.is_empty() {
            p.small #triage-count { (marks.len()) " of " (counts.get(Comparison::Regressed)) " regressions carry a triage mark (expected, known issue or ignored), set here or on an earlier experiment for the same crate and cause." }
        }
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
        h2 #filter { "Find crates" }
        form.filters method="get" action=(experiment_href(name)) {
            label { "category"
                select name="category" {
                    option value="" { "any" }
                    @for (c, n) in counts.iter() {
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

fn filtered(snap: &Snapshot, f: &Filters, experiment: &str, marks: &Marks) -> Markup {
    let matches = select(snap, f);
    let start = (f.page - 1) * CRATES_PER_PAGE;
    html! {
        h2 #results { (matches.len()) " matching " (if matches.len() == 1 { "crate" } else { "crates" })
            @if let Some(r) = &f.root { " (" code { (crate_label(r)) } " and the regressions through it)" } }
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

fn overview(snap: &Snapshot, f: &Filters, experiment: &str, marks: &Marks) -> Markup {
    let report = &snap.report;
    let roots = report.root_regressions().len();
    let start = (f.page - 1) * ROOTS_PER_PAGE;
    let spurious = [
        Comparison::SpuriousRegressed,
        Comparison::SpuriousFixed,
        Comparison::Spurious,
        Comparison::Error,
    ];
    html! {
        @if roots > 0 {
            h2 #roots { "Regressions by root cause" }
            p.small { "Crates that regressed on their own, most regressions through them first; under each, the crates that regressed because it did." }
            ol.roots start=(start + 1) {
                @for root in report.root_regressions().skip(start).take(ROOTS_PER_PAGE) {
                    @let deps = snap.dependents.get(root.krate()).map(|v| v.as_slice()).unwrap_or(&[]);
                    li {
                        a href=(crate_href(experiment, root.krate())) { strong { (crate_label(root.krate())) } }
                        " " code { (root.result().end.to_string()) }
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
            (pager(f, experiment, roots, ROOTS_PER_PAGE))
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
        (views::diagnostics_note(report))
        (views::flaky_note(report))
        @if spurious.iter().any(|&c| report.counts().get(c) > 0) {
            h2 #spurious { "Spurious and infrastructure results" }
            p.small { "Not regressions: out of memory, timeouts, the pids limit, full disk, network access in the sandbox, or the infrastructure failed. Retry them before believing them." }
            table {
                thead { tr { th { "comparison" } th.num { "crates" } th { "reasons" } } }
                tbody {
                    @for c in spurious {
                        tr {
                            td { a href=(Filters { category: Some(c), ..Filters::default() }.href(experiment, 1)) { (comparison_badge(c)) } }
                            td.num { (report.counts().get(c)) }
                            td { @for (i, r) in report.spurious_reasons(c).iter().enumerate() { @if i > 0 { ", " } (r.kind) " " (r.crates) } }
                        }
                    }
                }
            }
        }
        @if !report.unresolved_dependencies().is_empty() {
            h2 { "Dependencies not in this experiment" }
            p.small { "Named by failed builds of regressed crates; those crates are counted as roots." }
            ul { @for u in report.unresolved_dependencies().iter().take(GROUPS_SHOWN) { li { code { (u.name) } ": " (u.dependents) } } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Crate

fn side_cell(d: Option<&SideDetail>, f: impl Fn(&SideDetail) -> Markup) -> Markup {
    match d {
        Some(d) => f(d),
        None => html! { span.muted { "no result yet" } },
    }
}

pub async fn krate(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _viewer: Viewer,
    headers: HeaderMap,
    Path((name, krate)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    let e = experiments::get(&state.pool, &name).await?;
    let id: CrateId = krate
        .parse()
        .map_err(|err| PageError::not_found(format!("{krate:?} is not a crate id: {err}")))?;
    let snap = dash.cache.get(&state.pool, e.id).await?;
    let view = snap.report.get(&id);
    // the stored spelling (with its checksum), when the report knows the crate
    let stored = view
        .map(|v| v.krate().to_string())
        .unwrap_or_else(|| krate.clone());
    let detail = results::crate_detail(&state.pool, e.id, &stored)
        .await?
        .ok_or_else(|| {
            PageError::not_found(format!("crate {krate:?} is not in experiment {name:?}"))
        })?;
    let (start, end) = (detail.start.as_ref(), detail.end.as_ref());
    let store = state.store.clone();
    let (start_log, end_log) = tokio::join!(
        logview::read(
            &*store,
            start.and_then(|d| d.log_key.as_deref()),
            logview::LOG_VIEW_CAP
        ),
        logview::read(
            &*store,
            end.and_then(|d| d.log_key.as_deref()),
            logview::LOG_VIEW_CAP
        ),
    );
    let new_error = (end_log.missing.is_none())
        .then(|| first_new_error(&start_log.text, &end_log.text))
        .flatten();
    let comparison = match (start, end) {
        (Some(s), Some(en)) => Some(compare(&s.outcome, &en.outcome)),
        _ => None,
    };
    let triage = match (comparison, end) {
        (Some(Comparison::Regressed), Some(end)) => {
            let stored_id: CrateId = stored.parse().unwrap_or_else(|_| id.clone());
            let mark =
                crate::triage::marks_for(&state.pool, std::iter::once((&stored_id, &end.outcome)))
                    .await?
                    .remove(&stored_id);
            let operator = super::operator(&state, &headers).await?;
            Some(super::triage::section(
                &name,
                &stored_id,
                &end.outcome,
                mark.as_ref(),
                operator.as_deref(),
            ))
        }
        _ => None,
    };
    // what the flaky memory knows of this crate version (registry crates)
    let flakes = match &id {
        CrateId::Registry { name, version, .. } => {
            caldera_db::flakes::of_crate(&state.pool, name, Some(&version.to_string())).await?
        }
        _ => Vec::new(),
    };
    let label = crate_label(&id);
    let steps_of = |d: &SideDetail| {
        html! {
            @if d.steps.is_empty() { span.muted { "—" } }
            @else { ul { @for s in &d.steps { li { (s.name) ": " (views::duration_ms(s.duration_ms)) } } } }
        }
    };
    let body = html! {
        p.small { a href=(experiment_href(&name)) { "← experiment " (name) } }
        h1 { (label) " " @if let Some(c) = comparison { (comparison_badge(c)) } (views::confirmation_badge(view.and_then(|v| v.confirmation()))) }
        p.small { code { (stored) } @if let Some(s) = &detail.job_state { " · job " (s) } @if let Some(a) = detail.attempt { " · attempt " (a) } }
        @if let Some(v) = view {
            @if v.comparison() == Comparison::Regressed {
                p {
                    @if v.is_root() {
                        "Regressed on its own; " (v.regressions_through()) " " (if v.regressions_through() == 1 { "regression" } else { "regressions" }) " through it"
                        @if v.dependents() > 0 { " (" a href=(format!("{}?root={}", experiment_href(&name), query_encode(&v.krate().to_string()))) { "list" } ")" }
                        "."
                    } @else {
                        "Regressed because a dependency did: "
                        @for (i, r) in v.root_causes().enumerate() {
                            @if i > 0 { ", " }
                            a href=(crate_href(&name, r)) { (crate_label(r)) }
                        }
                        "."
                    }
                }
            }
        }
        @if let Some(t) = triage { (t) }
        @if !flakes.is_empty() {
            h2 #flakes { "Known flaky" }
            p.small { "What re-runs and calibration runs of this version saw differ between runs that should have agreed; a later failure these explain is reported known-flaky." }
            table {
                thead { tr { th { "subject" } th.num { "times seen" } th { "last seen" } } }
                tbody {
                    @for f in &flakes {
                        tr {
                            td { code { (f.subject) } }
                            td.num { (f.count) }
                            td {
                                a href=(experiment_href(&f.last.experiment)) { (f.last.experiment) }
                                " · " (f.last.source.as_str()) " run " (f.last.run) ", " (f.last.side) " side · "
                                (views::timestamp(f.last_seen))
                            }
                        }
                    }
                }
            }
        }
        h2 { "Runs" }
        table #runs {
            thead { tr { th {} th { "start: " code { (e.spec.start.to_string()) } } th { "end: " code { (e.spec.end.to_string()) } } } }
            tbody {
                tr { th { "outcome" } td { (side_cell(start, |d| html! { code { (d.outcome.to_string()) } })) } td { (side_cell(end, |d| html! { code { (d.outcome.to_string()) } })) } }
                tr { th { "reason" }
                    td { (side_cell(start, |d| html! { (views::outcome_reason(&d.outcome).unwrap_or_default()) })) }
                    td { (side_cell(end, |d| html! { (views::outcome_reason(&d.outcome).unwrap_or_default()) })) } }
                tr { th { "duration" }
                    td { (side_cell(start, |d| html! { (d.duration_ms.map(views::duration_ms).unwrap_or_default()) })) }
                    td { (side_cell(end, |d| html! { (d.duration_ms.map(views::duration_ms).unwrap_or_default()) })) } }
                tr { th { "steps" } td { (side_cell(start, steps_of)) } td { (side_cell(end, steps_of)) } }
                tr { th { "peak memory" }
                    td { (side_cell(start, |d| html! { (d.peak_memory_bytes.map(views::bytes).unwrap_or_default()) })) }
                    td { (side_cell(end, |d| html! { (d.peak_memory_bytes.map(views::bytes).unwrap_or_default()) })) } }
                tr { th { "worker" }
                    td { (side_cell(start, |d| html! { (d.worker.clone().unwrap_or_default()) })) }
                    td { (side_cell(end, |d| html! { (d.worker.clone().unwrap_or_default()) })) } }
                tr { th { "recorded" }
                    td.small { (side_cell(start, |d| html! { (views::timestamp(d.recorded_at)) })) }
                    td.small { (side_cell(end, |d| html! { (views::timestamp(d.recorded_at)) })) } }
            }
        }
        @if let Some((line, text)) = &new_error {
            div.new-error #new-error-summary {
                strong { "First error only in the end log" } " (line " (line + 1) "): "
                a href="#first-new-error" { code { (text) } }
            }
        }
        h2 { "Logs" }
        div.side-by-side {
            @for (side, log, highlight) in [("start", &start_log, None), ("end", &end_log, new_error.as_ref().map(|(l, _)| *l))] {
                section id=(format!("log-{side}")) {
                    h3 { (side) " log" }
                    @if let Some(m) = &log.missing { p.muted { (m) } }
                    @else {
                        (logview::render(&log.text, highlight, "first-new-error"))
                        @if log.truncated { p.small { "Only the first " (views::bytes(logview::LOG_VIEW_CAP as i64)) " are shown." } }
                    }
                }
            }
        }
    };
    Ok(views::layout(
        &format!("{label} in {name}"),
        Some("experiments"),
        body,
    ))
}

/// A report file, for the dashboard's download links (same as the API's, under the dashboard's
/// access rule).
pub async fn report_file(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((name, file)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, PageError> {
    crate::api::report::stream_file(&state, &name, &file, &headers)
        .await
        .map_err(|e| PageError {
            status: e.status,
            message: e.message,
        })
}

// ---------------------------------------------------------------------------------------------
// Workers and queue

pub async fn workers(State(state): State<AppState>, _viewer: Viewer) -> Result<Markup, PageError> {
    let workers = caldera_db::workers::list(&state.pool).await?;
    let sessions = state.scheduler.connected_workers();
    let now = Utc::now();
    let connected: Vec<_> = workers.iter().filter(|w| w.connected).collect();
    let slots: i64 = connected.iter().map(|w| w.slots as i64).sum();
    let running: i64 = workers.iter().map(|w| w.running).sum();
    Ok(views::layout(
        "Workers",
        Some("workers"),
        html! {
            h1 { "Workers" }
            p { (connected.len()) " connected (" (sessions) " open sessions), " (slots) " slots, " (running) " jobs running." }
            @if workers.is_empty() {
                p { "No worker has connected yet. Start one with " code { "caldera worker" } "." }
            } @else {
                table #workers {
                    thead { tr { th { "worker" } th { "state" } th.num { "slots" } th.num { "running" } th { "last heartbeat" } th { "version" } th { "capabilities" } th { "first seen" } } }
                    tbody {
                        @for w in &workers {
                            tr {
                                td { (w.name) }
                                td { @if w.connected { span.badge.good { "connected" } } @else { span.badge { "disconnected" } } }
                                td.num { (w.slots) }
                                td.num { (w.running) }
                                td { (views::duration_ms((now - w.last_seen_at).num_milliseconds())) " ago"
                                    br; span.small { (views::timestamp(w.last_seen_at)) } }
                                td { code { (w.version) } }
                                td { @for (i, c) in w.capabilities.iter().enumerate() { @if i > 0 { ", " } code { (c) } } }
                                td.small { (views::timestamp(w.first_seen_at)) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

pub async fn queue(State(state): State<AppState>, _viewer: Viewer) -> Result<Markup, PageError> {
    let entries = results::queue(&state.pool).await?;
    let queued: i64 = entries.iter().map(|e| e.queued).sum();
    Ok(views::layout(
        "Queue",
        Some("queue"),
        html! {
            h1 { "Queue" }
            p { (queued) " jobs queued in " (entries.len()) " experiments. Workers take jobs of running experiments, highest priority first, then oldest." }
            @if !entries.is_empty() {
                table #queue {
                    thead { tr { th.num { "#" } th { "experiment" } th { "status" } th.num { "priority" } th.num { "queued" } th.num { "running" } th { "created" } } }
                    tbody {
                        @for (i, e) in entries.iter().enumerate() {
                            tr {
                                td.num { (i + 1) }
                                td { a href=(experiment_href(&e.name)) { (e.name) } }
                                td.status { (e.status) }
                                td.num { (e.priority) }
                                td.num { (e.queued) }
                                td.num { (e.running) }
                                td.small { (views::timestamp(e.created_at)) }
                            }
                        }
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_groups() {
        let ce = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into(), "E0599".into()],
        });
        assert!(matches_code(&ce, "E0599"));
        assert!(!matches_code(&ce, "E0277"));
        assert!(!matches_code(&ce, "compiler-error"));
        let bare = Outcome::BuildFail(BuildFailReason::CompilerError { codes: vec![] });
        assert!(matches_code(&bare, "compiler-error"));
        assert!(matches_code(
            &Outcome::BuildFail(BuildFailReason::Ice),
            "ice"
        ));
        assert!(matches_code(
            &Outcome::TestFail {
                failed_tests: vec![],
                reason: None,
            },
            "test-fail"
        ));
        assert!(!matches_code(&Outcome::TestPass, "ice"));
    }

    #[test]
    fn names_match_case_insensitively() {
        let id: CrateId = "reg:Serde_Json@1.0.3".parse().unwrap();
        assert!(name_matches(&id, "serde_j"));
        assert!(name_matches(&id, "1.0.3"));
        assert!(!name_matches(&id, "tokio"));
        assert!(contains_ci("abc", ""));
    }

    #[test]
    fn filters_parse_and_round_trip() {
        let q: HashMap<String, String> = [
            ("category", "regressed"),
            ("code", "E0308"),
            ("q", "Foo"),
            ("page", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let f = Filters::parse(&q).unwrap();
        assert_eq!(f.category, Some(Comparison::Regressed));
        assert_eq!(f.q.as_deref(), Some("foo"));
        assert_eq!(
            f.href("e", 3),
            "/experiments/e?category=regressed&code=E0308&q=foo&page=3"
        );
        let bad: HashMap<String, String> = [("category".to_owned(), "worse".to_owned())].into();
        assert_eq!(
            Filters::parse(&bad).unwrap_err().status,
            axum::http::StatusCode::BAD_REQUEST
        );
        let bad: HashMap<String, String> = [("page".to_owned(), "0".to_owned())].into();
        assert!(Filters::parse(&bad).is_err());
    }
}
