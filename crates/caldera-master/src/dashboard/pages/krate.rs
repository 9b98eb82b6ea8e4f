//! `/experiments/{name}/crates/{crate}`: both runs of a crate side by side (outcome, reason,
//! steps, durations, peak memory), its triage mark, what the flaky memory knows of it, and both
//! logs with the first error only in the end log highlighted.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use caldera_core::crates::CrateId;
use caldera_core::outcome::{Comparison, compare};
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::flakes::Flake;
use caldera_db::results::{self, SideDetail};
use caldera_db::{DbError, PgPool};
use caldera_report::{CrateReport, first_new_error};
use caldera_storage::ObjectStore;
use maud::{Markup, html};

use crate::AppState;
use crate::dashboard::logview::{self, LogText};
use crate::dashboard::views::{
    self, comparison_badge, crate_href, crate_label, experiment_href, query_encode,
};
use crate::dashboard::{Dashboard, PageError, Viewer};

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
    let (start_log, end_log) = read_logs(&*state.store, start, end).await;
    let new_error = (end_log.missing.is_none())
        .then(|| first_new_error(&start_log.text, &end_log.text))
        .flatten();
    let comparison = match (start, end) {
        (Some(s), Some(en)) => Some(compare(&s.outcome, &en.outcome)),
        _ => None,
    };
    let triage = match (comparison, end) {
        (Some(Comparison::Regressed), Some(end)) => {
            Some(triage_section(&state, &headers, &name, &stored, &id, end).await?)
        }
        _ => None,
    };
    let flakes = known_flakes(&state.pool, &id).await?;
    let history = super::history::load(&state.pool, &id, &stored).await?;
    let label = crate_label(&id);
    let body = html! {
        p.small { a href=(experiment_href(&name)) { "← experiment " (name) } }
        h1 { (label) " " @if let Some(c) = comparison { (comparison_badge(c)) } (views::confirmation_badge(view.and_then(|v| v.confirmation()))) }
        p.small { code { (stored) } @if let Some(s) = &detail.job_state { " · job " (s) } @if let Some(a) = detail.attempt { " · attempt " (a) } " · " (views::external_links(&id)) }
        @if let Some(v) = view { (regression_note(&name, v)) }
        @if let Some(t) = triage { (t) }
        (flakes_section(&flakes))
        (runs_table(&e, start, end))
        (logs_section(&start_log, &end_log, new_error.as_ref(), &format!("{}/diff", crate_href(&name, &id))))
        (super::history::section(&history, &name, &stored))
    };
    Ok(views::layout(
        &format!("{label} in {name}"),
        Some("experiments"),
        body,
    ))
}

/// Both logs of the crate, read concurrently (up to [`logview::LOG_VIEW_CAP`] each).
pub(super) async fn read_logs(
    store: &dyn ObjectStore,
    start: Option<&SideDetail>,
    end: Option<&SideDetail>,
) -> (LogText, LogText) {
    tokio::join!(
        logview::read(
            store,
            start.and_then(|d| d.log_key.as_deref()),
            logview::LOG_VIEW_CAP
        ),
        logview::read(
            store,
            end.and_then(|d| d.log_key.as_deref()),
            logview::LOG_VIEW_CAP
        ),
    )
}

/// The triage section of a regressed crate (`stored` is its id as stored): its mark, and the
/// form to change it when the caller is an operator.
async fn triage_section(
    state: &AppState,
    headers: &HeaderMap,
    experiment: &str,
    stored: &str,
    id: &CrateId,
    end: &SideDetail,
) -> Result<Markup, PageError> {
    let stored_id: CrateId = stored.parse().unwrap_or_else(|_| id.clone());
    let mark = crate::triage::marks_for(&state.pool, std::iter::once((&stored_id, &end.outcome)))
        .await?
        .remove(&stored_id);
    let operator = crate::dashboard::operator(state, headers).await?;
    Ok(crate::dashboard::triage::section(
        experiment,
        &stored_id,
        &end.outcome,
        mark.as_ref(),
        operator.as_deref(),
    ))
}

/// What the flaky memory knows of this crate version (registry crates).
async fn known_flakes(pool: &PgPool, id: &CrateId) -> Result<Vec<Flake>, DbError> {
    match id {
        CrateId::Registry { name, version, .. } => {
            caldera_db::flakes::of_crate(pool, name, Some(&version.to_string())).await
        }
        _ => Ok(Vec::new()),
    }
}

/// Why a regressed crate regressed: on its own (with the regressions through it) or because of
/// the dependencies named. Empty for other crates.
fn regression_note(name: &str, v: CrateReport<'_>) -> Markup {
    html! {
        @if v.comparison() == Comparison::Regressed {
            p {
                @if v.is_root() {
                    "Regressed on its own; " (v.regressions_through()) " " (if v.regressions_through() == 1 { "regression" } else { "regressions" }) " through it"
                    @if v.dependents() > 0 { " (" a href=(format!("{}?root={}", experiment_href(name), query_encode(&v.krate().to_string()))) { "list" } ")" }
                    "."
                } @else {
                    "Regressed because a dependency did: "
                    @for (i, r) in v.root_causes().enumerate() {
                        @if i > 0 { ", " }
                        a href=(crate_href(name, r)) { (crate_label(r)) }
                    }
                    "."
                }
            }
        }
    }
}

/// The known flakes of the crate version (empty when there are none).
fn flakes_section(flakes: &[Flake]) -> Markup {
    html! {
        @if !flakes.is_empty() {
            h2 #flakes { "Known flaky" }
            p.small { "What re-runs and calibration runs of this version saw differ between runs that should have agreed; a later failure these explain is reported known-flaky." }
            table {
                thead { tr { th { "subject" } th.num { "times seen" } th { "last seen" } } }
                tbody {
                    @for f in flakes {
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
    }
}

fn side_cell(d: Option<&SideDetail>, f: impl Fn(&SideDetail) -> Markup) -> Markup {
    match d {
        Some(d) => f(d),
        None => html! { span.muted { "no result yet" } },
    }
}

/// Both runs side by side: outcome, reason, duration, steps, peak memory, worker, when.
/// "cached from <experiment>" (linked) for a side the result cache settled, else "ran here".
fn cached_cell(d: &SideDetail) -> Markup {
    match &d.cached_from {
        Some(source) => {
            html! { "cached from " a href=(views::experiment_href(source)) { code { (source) } } }
        }
        None => html! { span.muted { "ran here" } },
    }
}

fn runs_table(e: &ExperimentRow, start: Option<&SideDetail>, end: Option<&SideDetail>) -> Markup {
    let steps_of = |d: &SideDetail| {
        html! {
            @if d.steps.is_empty() { span.muted { "—" } }
            @else { ul { @for s in &d.steps { li { (s.name) ": " (views::duration_ms(s.duration_ms)) } } } }
        }
    };
    html! {
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
                @if [start, end].iter().any(|d| d.is_some_and(|d| d.cached_from.is_some())) {
                    tr { th { "result cache" }
                        td { (side_cell(start, cached_cell)) }
                        td { (side_cell(end, cached_cell)) } }
                }
            }
        }
    }
}

/// Both logs side by side, the first error only in the end log (`new_error`: its line and text)
/// named above them and marked in the end log.
fn logs_section(
    start_log: &LogText,
    end_log: &LogText,
    new_error: Option<&(usize, String)>,
    diff_href: &str,
) -> Markup {
    html! {
        @if let Some((line, text)) = new_error {
            div.new-error #new-error-summary {
                strong { "First error only in the end log" } " (line " (line + 1) "): "
                a href="#first-new-error" { code { (text) } }
            }
        }
        h2 #logs { "Logs" }
        p { a #diff-link href=(diff_href) { "What changed between the two logs" } " — both aligned, what always differs (timestamps, paths, durations, toolchains, hashes) removed." }
        div.side-by-side {
            @for (side, log, highlight) in [("start", start_log, None), ("end", end_log, new_error.map(|(l, _)| *l))] {
                section id=(format!("log-{side}")) aria-label=(format!("{side} log")) {
                    h3 { (side) " log" }
                    @if let Some(m) = &log.missing { p.muted { (m) } }
                    @else {
                        (logview::render(&log.text, highlight, "first-new-error"))
                        @if log.truncated { p.small { "Only the first " (views::bytes(logview::LOG_VIEW_CAP as i64)) " are shown." } }
                    }
                }
            }
        }
    }
}
