//! The farm: `/workers` (workers, slots, running jobs, last heartbeat) and `/queue` (queued,
//! running and paused experiments by priority, with queued job counts).

use axum::extract::State;
use caldera_db::results;
use chrono::Utc;
use maud::{Markup, html};

use crate::AppState;
use crate::dashboard::views::{self, experiment_href};
use crate::dashboard::{PageError, Viewer};

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
