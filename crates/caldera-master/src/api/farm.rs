//! `/api/v1/workers` and `/api/v1/queue`: the farm as the dashboard's `/workers` and `/queue`
//! pages show it, as JSON (the same queries: `caldera_db::workers::list`,
//! `caldera_db::results::queue`).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Reader;

/// A worker: registered on its first connection, kept (disconnected) after it leaves.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: Uuid,
    /// The name the worker connects with (`caldera worker --name`); unique.
    pub name: String,
    /// Whether a session of it is open now.
    pub connected: bool,
    /// Jobs it runs at once.
    #[schema(minimum = 0)]
    pub slots: i32,
    /// Jobs leased to it now.
    #[schema(minimum = 0)]
    pub busy: i64,
    /// Its last sign of life: a heartbeat, a result, or its connection.
    pub last_heartbeat_at: DateTime<Utc>,
    pub first_seen_at: DateTime<Utc>,
    /// The caldera version it runs.
    pub version: String,
    /// The toolchains it can resolve by name (its `toolchain:NAME` capabilities).
    pub toolchains: Vec<String>,
    /// Everything it advertises (experiments' `requirements` must be among these).
    pub capabilities: Vec<String>,
}

/// Every worker, connected first, by name, with the farm's totals.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    /// Workers with an open session.
    #[schema(minimum = 0)]
    pub connected: usize,
    /// Slots of the connected workers.
    #[schema(minimum = 0)]
    pub slots: i64,
    /// Jobs leased to workers now.
    #[schema(minimum = 0)]
    pub busy: i64,
    pub workers: Vec<WorkerView>,
}

impl From<caldera_db::workers::WorkerRow> for WorkerView {
    fn from(w: caldera_db::workers::WorkerRow) -> Self {
        WorkerView {
            toolchains: w
                .capabilities
                .iter()
                .filter_map(|c| c.strip_prefix("toolchain:"))
                .map(str::to_owned)
                .collect(),
            id: w.id,
            name: w.name,
            connected: w.connected,
            slots: w.slots,
            busy: w.running,
            last_heartbeat_at: w.last_seen_at,
            first_seen_at: w.first_seen_at,
            version: w.version,
            capabilities: w.capabilities,
        }
    }
}

/// The workers: connected or not, their slots, the jobs they run and their last heartbeat.
#[utoipa::path(get, path = "/api/v1/workers", tag = "farm", operation_id = "list_workers",
    responses((status = 200, body = WorkerList)),
    security(("bearer" = [])))]
pub async fn workers(
    State(state): State<AppState>,
    _caller: Reader,
) -> Result<Json<WorkerList>, crate::error::ApiError> {
    let rows = caldera_db::workers::list(&state.pool).await?;
    let connected: Vec<_> = rows.iter().filter(|w| w.connected).collect();
    Ok(Json(WorkerList {
        connected: connected.len(),
        slots: connected.iter().map(|w| i64::from(w.slots)).sum(),
        busy: rows.iter().map(|w| w.running).sum(),
        workers: rows.into_iter().map(Into::into).collect(),
    }))
}

/// An experiment in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueEntryView {
    pub experiment: String,
    pub status: caldera_core::lifecycle::ExperimentStatus,
    pub priority: i32,
    /// Its jobs waiting for a worker.
    #[schema(minimum = 0)]
    pub queued: i64,
    /// Its jobs leased to workers now.
    #[schema(minimum = 0)]
    pub running: i64,
    pub created_at: DateTime<Utc>,
}

/// The queue: experiments not yet finished (queued, running, paused) in the order workers are
/// served — highest priority first, then oldest — with their queued and running jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Queued jobs, all experiments.
    #[schema(minimum = 0)]
    pub queued: i64,
    /// Running jobs, all experiments.
    #[schema(minimum = 0)]
    pub running: i64,
    pub experiments: Vec<QueueEntryView>,
}

/// The queue: unfinished experiments in dispatch order with their queued and running job counts.
/// Only `running` experiments are dispatched; `queued` ones have no jobs until they start, and
/// `paused` ones keep theirs.
#[utoipa::path(get, path = "/api/v1/queue", tag = "farm", operation_id = "get_queue",
    responses((status = 200, body = QueueView)),
    security(("bearer" = [])))]
pub async fn queue(
    State(state): State<AppState>,
    _caller: Reader,
) -> Result<Json<QueueView>, crate::error::ApiError> {
    let entries = caldera_db::results::queue(&state.pool).await?;
    let mut experiments = Vec::with_capacity(entries.len());
    for e in entries {
        let status = e.status.parse().map_err(|_| {
            tracing::error!(experiment = %e.name, status = %e.status, "an experiment with an unknown status");
            crate::error::ApiError::internal()
        })?;
        experiments.push(QueueEntryView {
            experiment: e.name,
            status,
            priority: e.priority,
            queued: e.queued,
            running: e.running,
            created_at: e.created_at,
        });
    }
    Ok(Json(QueueView {
        queued: experiments.iter().map(|e| e.queued).sum(),
        running: experiments.iter().map(|e| e.running).sum(),
        experiments,
    }))
}
