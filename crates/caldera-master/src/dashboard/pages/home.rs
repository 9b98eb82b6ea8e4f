//! `/`: the experiments, with status, toolchains, mode, progress, throughput and ETA.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use caldera_core::lifecycle::ExperimentStatus;
use caldera_db::experiments;
use caldera_db::results::{self, ExperimentProgress};
use chrono::Utc;
use maud::{Markup, html};

use crate::AppState;
use crate::dashboard::views::{self, experiment_href};
use crate::dashboard::{Dashboard, PageError, Viewer};

fn is_terminal(s: ExperimentStatus) -> bool {
    matches!(s, ExperimentStatus::Completed | ExperimentStatus::Aborted)
}

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
