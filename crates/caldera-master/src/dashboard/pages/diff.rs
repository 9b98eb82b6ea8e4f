//! `/experiments/{name}/crates/{crate}/diff`: what changed between a crate's two logs — both
//! aligned after normalising what always differs (stamps, timestamps, paths, durations,
//! toolchain names, hashes), the sections where they diverge with their context
//! ([`caldera_report::log_diff`]).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use caldera_core::crates::CrateId;
use caldera_core::outcome::compare;
use caldera_db::experiments;
use caldera_db::results;
use caldera_report::{DiffLine, DiffOptions, LogDiff, Section, log_diff};
use maud::{Markup, html};

use super::krate::read_logs;
use crate::AppState;
use crate::dashboard::views::{self, comparison_badge, crate_href, crate_label, experiment_href};
use crate::dashboard::{Dashboard, PageError, Viewer};

/// The crate's id as stored (with its checksum) when the report knows it, else as written.
pub(super) async fn stored_id(
    dash: &Dashboard,
    state: &AppState,
    experiment: uuid::Uuid,
    krate: &str,
) -> Result<(CrateId, String), PageError> {
    let id: CrateId = krate
        .parse()
        .map_err(|err| PageError::not_found(format!("{krate:?} is not a crate id: {err}")))?;
    let snap = dash.cache.get(&state.pool, experiment).await?;
    let stored = snap
        .report
        .get(&id)
        .map(|v| v.krate().to_string())
        .unwrap_or_else(|| krate.to_owned());
    Ok((id, stored))
}

pub async fn diff(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _viewer: Viewer,
    Path((name, krate)): Path<(String, String)>,
) -> Result<Markup, PageError> {
    let e = experiments::get(&state.pool, &name).await?;
    let (id, stored) = stored_id(&dash, &state, e.id, &krate).await?;
    let detail = results::crate_detail(&state.pool, e.id, &stored)
        .await?
        .ok_or_else(|| {
            PageError::not_found(format!("crate {krate:?} is not in experiment {name:?}"))
        })?;
    let (start, end) = (detail.start.as_ref(), detail.end.as_ref());
    let (start_log, end_log) = read_logs(&*state.store, start, end).await;
    let comparison = start
        .zip(end)
        .map(|(s, en)| compare(&s.outcome, &en.outcome));
    let missing = start_log.missing.as_ref().or(end_log.missing.as_ref());
    let diff = match missing {
        None => {
            let (a, b) = (start_log.text, end_log.text);
            Some(
                tokio::task::spawn_blocking(move || log_diff(&a, &b, &DiffOptions::default()))
                    .await
                    .map_err(|e| PageError {
                        status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        message: format!("the diff failed: {e}"),
                    })?,
            )
        }
        Some(_) => None,
    };
    let label = crate_label(&id);
    let page = crate_href(&name, &id);
    let body = html! {
        p.small { a href=(experiment_href(&name)) { "← experiment " (name) } " · " a href=(page) { "← " (label) ": both logs" } }
        h1 { "What changed: " (label) " " @if let Some(c) = comparison { (comparison_badge(c)) } }
        table #sides {
            tr { th { "start" } td { code { (e.spec.start.to_string()) } } td { (start.map(|d| d.outcome.to_string()).unwrap_or_else(|| "no result yet".into())) } }
            tr { th { "end" } td { code { (e.spec.end.to_string()) } } td { (end.map(|d| d.outcome.to_string()).unwrap_or_else(|| "no result yet".into())) } }
        }
        @match (&diff, missing) {
            (_, Some(why)) => p.muted #no-diff { "No diff: " (why) },
            (Some(d), None) => (diff_body(d, start_log.truncated || end_log.truncated)),
            (None, None) => {},
        }
    };
    Ok(views::layout(
        &format!("What changed: {label} in {name}"),
        Some("experiments"),
        body,
    ))
}

/// The sections of a diff, or why there are none.
fn diff_body(d: &LogDiff, truncated: bool) -> Markup {
    html! {
        p.small {
            "Both logs aligned line by line after removing what always differs between two runs: line stamps, colours, timestamps, temporary, target, registry and home paths, durations, toolchain names and versions, hashes. "
            "Lines marked " strong { "−" } " are only in the start log, " strong { "+" } " only in the end log; the numbers are the lines of each log."
            @if d.header_lines != (0, 0) { " The run summaries at the top of both logs are compared in the crate's Runs table, not here." }
        }
        @if truncated { p.small { "A log was longer than " (views::bytes(crate::dashboard::logview::LOG_VIEW_CAP as i64)) "; only its beginning is compared." } }
        @if d.timed_out { p.small { "The logs are long and very different: the alignment is coarse." } }
        @if d.identical() {
            p #identical { "The two logs are the same once normalised." }
        } @else {
            h2 #sections { (d.total_sections) " divergent " (if d.total_sections == 1 { "section" } else { "sections" })
                @if d.sections.len() < d.total_sections { " (the first " (d.sections.len()) " shown)" } }
            @for (k, s) in d.sections.iter().enumerate() {
                (section(k, s))
            }
        }
    }
}

fn section(k: usize, s: &Section) -> Markup {
    let (removed, added) = s.changes();
    html! {
        h3 id=(format!("section-{}", k + 1)) {
            "Section " (k + 1) ": " (removed) " " (if removed == 1 { "line" } else { "lines" }) " only in the start log, "
            (added) " only in the end log"
        }
        div.diff-wrap tabindex="0" role="region" aria-label=(format!("divergent section {}", k + 1)) {
            table.diff {
                thead { tr { th.ln { "start" } th.ln { "end" } th.sign { span.skip { "change" } } th { "line" } } }
                tbody {
                    @for l in &s.lines { (line(l)) }
                    @if s.cut > 0 { tr.sep { td colspan="4" { "… " (s.cut) " more lines in this section" } } }
                }
            }
        }
    }
}

fn line(l: &DiffLine) -> Markup {
    let (class, start, end, sign, title) = match l {
        DiffLine::Same { start, end, .. } => {
            ("same", Some(*start), Some(*end), " ", "in both logs")
        }
        DiffLine::Removed { start, .. } => {
            ("del", Some(*start), None, "−", "only in the start log")
        }
        DiffLine::Added { end, .. } => ("add", None, Some(*end), "+", "only in the end log"),
    };
    html! {
        tr class=(class) title=(title) {
            td.ln { @if let Some(n) = start { (n + 1) } }
            td.ln { @if let Some(n) = end { (n + 1) } }
            td.sign { (sign) }
            td.text { (l.text()) }
        }
    }
}
