//! `GET /api/v1/experiments/{name}/estimate`: what an experiment will cost, what is left of it,
//! and, once it has finished, what it cost against what was expected.

use axum::Json;
use axum::extract::{Path, State};
use caldera_core::estimate::Estimate;
use caldera_core::lifecycle::ExperimentStatus;
use caldera_db::experiments::{self, ExperimentRow};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Reader;
use crate::error::{ApiError, ErrorBody};

/// The estimate kept from the start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StartEstimate {
    pub made_at: DateTime<Utc>,
    #[serde(flatten)]
    pub estimate: Estimate,
}

/// What a finished (or aborted) experiment cost.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActualCost {
    /// First-run sides that built (settled and `error` sides left out, as the estimate does).
    pub sides_run: i64,
    /// Their build time summed, in milliseconds.
    pub cpu_ms: i64,
    /// From the start to the end, in milliseconds.
    pub wall_ms: Option<i64>,
}

/// An experiment's estimate at every stage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EstimateView {
    pub experiment: String,
    pub status: ExperimentStatus,
    /// Queued: the whole experiment (its selection resolved now). Running or paused: what is
    /// left (queued and running jobs, confirmation runs included). Finished: absent.
    pub estimate: Option<Estimate>,
    /// The estimate made when it started.
    pub at_start: Option<StartEstimate>,
    /// Completed or aborted: what it cost.
    pub actual: Option<ActualCost>,
}

/// The estimate of a started experiment's rest, for its view (running or paused only).
pub async fn remaining_of(state: &AppState, row: &ExperimentRow) -> Option<Estimate> {
    if !matches!(
        row.status,
        ExperimentStatus::Running | ExperimentStatus::Paused
    ) {
        return None;
    }
    crate::estimate::remaining_for_view(state, row).await
}

/// What it costs: before the start the whole experiment, while running what is left, after
/// the run the estimate made at the start against what it cost. See
/// docs/user-guide.md "Cost and ETA" for how it is made.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/estimate", tag = "experiments", operation_id = "experiment_estimate",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = EstimateView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 422, description = "queued: its selection cannot be resolved (as its start would say)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<EstimateView>, ApiError> {
    let row = experiments::get(&state.pool, &name).await?;
    let estimate = match row.status {
        ExperimentStatus::Queued => Some(crate::estimate::before_start(&state, &row).await?),
        ExperimentStatus::Running | ExperimentStatus::Paused => {
            Some(crate::estimate::remaining(&state, &row).await?)
        }
        ExperimentStatus::Completed | ExperimentStatus::Aborted => None,
    };
    let at_start = caldera_db::estimate::stored(&state.pool, row.id)
        .await?
        .map(|s| StartEstimate {
            made_at: s.made_at,
            estimate: s.estimate,
        });
    let actual = match row.status {
        ExperimentStatus::Completed | ExperimentStatus::Aborted => {
            let a = caldera_db::estimate::actual(&state.pool, row.id).await?;
            Some(ActualCost {
                sides_run: a.sides_run,
                cpu_ms: a.cpu_ms,
                wall_ms: row
                    .started_at
                    .zip(row.finished_at)
                    .map(|(s, f)| (f - s).num_milliseconds()),
            })
        }
        _ => None,
    };
    Ok(Json(EstimateView {
        experiment: row.name,
        status: row.status,
        estimate,
        at_start,
        actual,
    }))
}
