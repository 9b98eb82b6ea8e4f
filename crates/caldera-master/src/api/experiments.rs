//! `/api/v1/experiments`: create, list, get, edit (queued only), delete, and the lifecycle actions.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use caldera_core::experiment::{ExperimentEdit, ExperimentSpec};
use caldera_core::lifecycle::{ExperimentAction, ExperimentStatus};
use caldera_db::experiments::{self, ExperimentRow};
use caldera_db::jobs;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{check_json_syntax, parse_page};
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ErrorBody};

/// An experiment: its spec plus lifecycle state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentView {
    pub id: Uuid,
    pub status: ExperimentStatus,
    #[serde(flatten)]
    pub spec: ExperimentSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Job counts by state (only when one experiment is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobCounts>,
    /// What it will cost (create, start), or what is left of it (one running or paused
    /// experiment): see `GET …/estimate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<caldera_core::estimate::Estimate>,
}

/// How many of an experiment's jobs are in each state (one job per crate).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobCounts {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub error: i64,
    pub cancelled: i64,
    pub total: i64,
}

impl From<caldera_db::jobs::Progress> for JobCounts {
    fn from(p: caldera_db::jobs::Progress) -> Self {
        JobCounts {
            total: p.total(),
            queued: p.queued,
            running: p.running,
            done: p.done,
            error: p.error,
            cancelled: p.cancelled,
        }
    }
}

impl From<ExperimentRow> for ExperimentView {
    fn from(r: ExperimentRow) -> Self {
        ExperimentView {
            id: r.id,
            status: r.status,
            spec: r.spec,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            progress: None,
            estimate: None,
        }
    }
}

/// A page of experiments, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentPage {
    pub items: Vec<ExperimentView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

fn validation(e: caldera_core::experiment::ValidationError) -> ApiError {
    ApiError::invalid(e.field.clone(), e.message.clone())
}

/// Create an experiment (status `queued`).
#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments", operation_id = "create_experiment",
    request_body(content = ExperimentSpec, description = "the experiment; toolchains and crate selections accept their compact string forms"),
    responses(
        (status = 201, body = ExperimentView),
        (status = 400, description = "body is not JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "name taken", body = ErrorBody),
        (status = 422, description = "a field is invalid; `field` names it", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Writer(caller): Writer,
    body: Bytes,
) -> Result<(StatusCode, Json<ExperimentView>), ApiError> {
    check_json_syntax(&body)?;
    let mut spec = ExperimentSpec::from_json(&body).map_err(validation)?;
    // unknown crates and versions are refused here, and bare names pinned (see `resolve`)
    crate::resolve::pin_selection(state.index.as_deref(), &mut spec.crates).await?;
    let row = experiments::create(&state.pool, &spec).await?;
    tracing::info!(experiment = %row.name, token = %caller.name, "experiment created");
    // best effort: a selection the start could not resolve is the start's 422, not the create's
    let estimate = crate::estimate::before_start(&state, &row)
        .await
        .inspect_err(|e| tracing::info!(experiment = %row.name, error = ?e, "no estimate"))
        .ok();
    let mut view = ExperimentView::from(row);
    view.estimate = estimate;
    Ok((StatusCode::CREATED, Json(view)))
}

/// List experiments, optionally filtered by status.
#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", operation_id = "list_experiments",
    params(
        ("status" = Option<ExperimentStatus>, Query, description = "only experiments in this status"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "page size, 1–500 (default 50)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "items to skip (default 0)"),
    ),
    responses((status = 200, body = ExperimentPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ExperimentPage>, ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "status" | "limit" | "offset"))
    {
        return Err(ApiError::bad_request(
            unknown.clone(),
            format!("unknown query parameter {unknown:?}; expected status, limit or offset"),
        ));
    }
    let status = query
        .get("status")
        .map(|s| {
            s.parse::<ExperimentStatus>().map_err(|_| {
                ApiError::bad_request(
                    "status",
                    format!("unknown status {s:?}; expected queued, running, paused, completed or aborted"),
                )
            })
        })
        .transpose()?;
    let (limit, offset) = parse_page(
        query.get("limit").map(String::as_str),
        query.get("offset").map(String::as_str),
    )?;
    let page = experiments::list(&state.pool, status, limit, offset).await?;
    Ok(Json(ExperimentPage {
        items: page.items.into_iter().map(Into::into).collect(),
        total: page.total,
        limit: page.limit,
        offset: page.offset,
    }))
}

/// One experiment.
#[utoipa::path(get, path = "/api/v1/experiments/{name}", tag = "experiments", operation_id = "get_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<ExperimentView>, ApiError> {
    let row = experiments::get(&state.pool, &name).await?;
    let progress = caldera_db::jobs::progress_of(&state.pool, row.id).await?;
    let estimate = super::estimate::remaining_of(&state, &row).await;
    let mut view = ExperimentView::from(row);
    view.progress = Some(progress.into());
    view.estimate = estimate;
    Ok(Json(view))
}

/// Edit a queued experiment: any field but `name`; the result is validated as a whole.
#[utoipa::path(patch, path = "/api/v1/experiments/{name}", tag = "experiments", operation_id = "edit_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    request_body(content = ExperimentEdit),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody),
        (status = 409, description = "not queued", body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn edit(
    State(state): State<AppState>,
    Writer(caller): Writer,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<ExperimentView>, ApiError> {
    check_json_syntax(&body)?;
    let mut edit = ExperimentEdit::from_json(&body).map_err(validation)?;
    if let Some(crates) = &mut edit.crates {
        crate::resolve::pin_selection(state.index.as_deref(), crates).await?;
    }
    let row = experiments::edit(&state.pool, &name, edit).await?;
    tracing::info!(experiment = %row.name, token = %caller.name, "experiment edited");
    Ok(Json(row.into()))
}

/// Delete an experiment that is not running or paused, with its jobs, results and objects in storage
/// (everything under `experiments/{name}/`).
///
/// Rows first, then objects: once the rows are gone no result refers to the objects, so a storage
/// failure leaves unreferenced objects (a leak), never a result pointing at a missing log. That
/// failure is a 503 saying so; sending DELETE again finishes the cleanup (an experiment without rows
/// but with objects left is answered 204 once they are deleted, 404 only when there is nothing left).
/// Between the two, the logs of this experiment's re-runs that another experiment's confirmation
/// runs took over (a side settled from this one's results) are copied into that experiment; if
/// that fails, the objects stay (503) until DELETE is sent again.
#[utoipa::path(delete, path = "/api/v1/experiments/{name}", tag = "experiments", operation_id = "delete_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, description = "the rows are deleted but storage could not delete the objects; retry", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Writer(caller): Writer,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let deleted_rows = match experiments::delete(&state.pool, &name).await {
        Ok(_) => true,
        // Rows already gone: a retry after a storage failure, or an unknown name.
        Err(caldera_db::DbError::NotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if deleted_rows {
        tracing::info!(experiment = %name, token = %caller.name, "experiment deleted");
    }
    let in_db = if deleted_rows {
        "deleted from"
    } else {
        "no longer in"
    };
    match crate::cache::relocate_borrowed_logs(&state, &name).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(experiment = %name, rows = n, "logs other experiments borrowed copied to them")
        }
        Err(e) => {
            tracing::error!(experiment = %name, error = %e, "cannot copy the logs other experiments borrow; the objects stay until DELETE is sent again");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                super::logs::STORAGE_UNAVAILABLE,
                format!(
                    "experiment {name:?} is {in_db} the database, but copying the logs other experiments' confirmation runs borrowed from it failed: {e}; its objects stay until DELETE is sent again"
                ),
            ));
        }
    }
    match super::logs::delete_experiment_objects(&state, &name).await {
        Ok(0) if !deleted_rows => Err(ApiError::not_found(format!(
            "experiment {name:?} not found"
        ))),
        Ok(n) => {
            tracing::info!(experiment = %name, objects = n, "experiment's objects deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            tracing::error!(experiment = %name, error = %e, "deleting the experiment's objects failed; they stay until DELETE is sent again");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                super::logs::STORAGE_UNAVAILABLE,
                format!(
                    "experiment {name:?} is {in_db} the database, but deleting its objects from storage failed: {e}; send DELETE again to finish"
                ),
            ))
        }
    }
}

async fn action(
    state: &AppState,
    caller: &Writer,
    name: &str,
    action: ExperimentAction,
) -> Result<Json<ExperimentView>, ApiError> {
    let mut estimate = None;
    let row = match action {
        ExperimentAction::Start => {
            // resolve before taking the row lock: this may read crate lists or a registry listing
            let current = experiments::get(&state.pool, name).await?;
            if current.status != ExperimentStatus::Queued {
                // let the transition produce the precise error
                experiments::apply_action(&state.pool, name, action).await?
            } else {
                let registry = crate::resolve::Registry::of(state);
                let crates = crate::resolve::resolve(&state.pool, registry, &current.spec).await?;
                // the result cache's lookup and object copies, before the row lock too
                let cached = crate::cache::prepare(state, &current.spec, &crates).await?;
                let mut pending = experiments::begin_action(&state.pool, name, action).await?;
                let n = jobs::create_for_experiment(&mut pending.tx, pending.current.id, &crates)
                    .await?;
                jobs::set_implied_requirements(
                    &mut pending.tx,
                    pending.current.id,
                    &pending.current.spec.implied_requirements(),
                )
                .await?;
                // crates the overrides say not to run get their outcome now
                let settled = overridden(&pending.current.spec, &crates);
                let skipped = jobs::settle_without_running(
                    &mut pending.tx,
                    pending.current.id,
                    &settled,
                    chrono::Utc::now(),
                )
                .await?;
                let from_cache = crate::cache::apply(&mut pending, &cached).await?;
                // made (and kept) on the start's transaction: what the start settled is in it
                estimate = Some(crate::estimate::at_start(state, &mut pending).await?);
                let row = pending.commit().await?;
                tracing::info!(experiment = %row.name, jobs = n, skipped, cached = ?from_cache, "jobs created");
                if skipped > 0 || from_cache.jobs_done > 0 {
                    state.scheduler.check_finished(row.id).await;
                }
                state.scheduler.wake();
                row
            }
        }
        ExperimentAction::Abort => {
            let mut pending = experiments::begin_action(&state.pool, name, action).await?;
            let leases = jobs::cancel_experiment(&mut pending.tx, pending.current.id).await?;
            let row = pending.commit().await?;
            state
                .scheduler
                .cancel_leases(&leases, "the experiment was aborted");
            row
        }
        _ => {
            let row = experiments::apply_action(&state.pool, name, action).await?;
            state.scheduler.wake();
            row
        }
    };
    tracing::info!(experiment = %row.name, token = %caller.0.name, status = %row.status, "experiment {action:?}");
    let mut view = ExperimentView::from(row);
    view.estimate = estimate;
    Ok(Json(view))
}

/// The crates whose override says not to run them (`broken`, `skip`), with the outcome they get.
fn overridden(
    spec: &ExperimentSpec,
    crates: &[caldera_core::crates::CrateId],
) -> Vec<(
    caldera_core::crates::CrateId,
    caldera_core::outcome::Outcome,
)> {
    crates
        .iter()
        .filter_map(|c| {
            let o = spec.override_for(c.registry_name()?)?;
            let outcome = match (&o.broken, o.skip) {
                (Some(reason), _) => caldera_core::outcome::Outcome::Broken {
                    reason: reason.clone(),
                },
                (None, true) => caldera_core::outcome::Outcome::Skipped,
                (None, false) => return None,
            };
            Some((c.clone(), outcome))
        })
        .collect()
}

/// Start a queued experiment.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/start", tag = "experiments", operation_id = "start_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<AppState>,
    caller: Writer,
    Path(name): Path<String>,
) -> Result<Json<ExperimentView>, ApiError> {
    action(&state, &caller, &name, ExperimentAction::Start).await
}

/// Pause a running experiment: no new jobs are handed out; running jobs finish.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/pause", tag = "experiments", operation_id = "pause_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Writer,
    Path(name): Path<String>,
) -> Result<Json<ExperimentView>, ApiError> {
    action(&state, &caller, &name, ExperimentAction::Pause).await
}

/// Resume a paused experiment.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/resume", tag = "experiments", operation_id = "resume_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Writer,
    Path(name): Path<String>,
) -> Result<Json<ExperimentView>, ApiError> {
    action(&state, &caller, &name, ExperimentAction::Resume).await
}

/// Abort an experiment: pending jobs are cancelled and running ones stopped.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/abort", tag = "experiments", operation_id = "abort_experiment",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn abort(
    State(state): State<AppState>,
    caller: Writer,
    Path(name): Path<String>,
) -> Result<Json<ExperimentView>, ApiError> {
    action(&state, &caller, &name, ExperimentAction::Abort).await
}

/// One side of one run of a crate.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunSideView {
    pub outcome: caldera_core::outcome::Outcome,
    /// The side's log in object storage (read it with `GET …/results/{crate}/{toolchain}/log`
    /// for run 0).
    pub log_key: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One run of a crate: run 0 (the first) or a confirmation run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run: i16,
    /// The run's job state: `queued`, `running`, `done`, `error` or `cancelled`.
    pub state: String,
    /// The worker that ran it, once finished.
    pub worker: Option<String>,
    pub start: Option<RunSideView>,
    pub end: Option<RunSideView>,
    /// How end compares with start in this run, once finished.
    pub comparison: Option<caldera_core::outcome::Comparison>,
}

/// A crate whose first run was regressed or fixed, and its confirmation runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrateConfirmationView {
    #[serde(rename = "crate")]
    pub krate: String,
    /// The first run's comparison (`regressed` or `fixed`).
    pub comparison: caldera_core::outcome::Comparison,
    pub status: caldera_core::confirm::ConfirmationStatus,
    /// Every run, the first (run 0) first.
    pub runs: Vec<RunView>,
}

/// The confirmation runs of an experiment: each crate whose first run was regressed or fixed is
/// run again, both sides, `confirm` times; it is `confirmed` when every run agrees, `flaky` when
/// one does not, `pending` until all have finished.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmationsView {
    /// The experiment's `confirm` (runs per crate).
    pub confirm: u32,
    pub confirmed: usize,
    pub flaky: usize,
    pub pending: usize,
    /// Confirmation runs created (queued, running or finished).
    pub runs_created: i64,
    /// Confirmation runs finished: the extra runs made.
    pub runs_finished: i64,
    /// What they cost: their build time, both sides, in milliseconds.
    pub duration_ms: i64,
    pub crates: Vec<CrateConfirmationView>,
}

fn side_view(s: caldera_db::confirmations::RunSide) -> RunSideView {
    RunSideView {
        outcome: s.outcome,
        log_key: s.log_key,
        duration_ms: s.duration_ms,
    }
}

impl ConfirmationsView {
    fn new(confirm: u32, c: caldera_db::confirmations::Confirmations) -> Self {
        ConfirmationsView {
            confirm,
            confirmed: c.confirmed,
            flaky: c.flaky,
            pending: c.pending,
            runs_created: c.runs_created,
            runs_finished: c.runs_finished,
            duration_ms: c.duration_ms,
            crates: c
                .crates
                .into_iter()
                .map(|k| CrateConfirmationView {
                    krate: k.krate,
                    comparison: k.comparison,
                    status: k.status,
                    runs: k
                        .runs
                        .into_iter()
                        .map(|r| RunView {
                            run: r.run,
                            state: r.state,
                            worker: r.worker,
                            start: r.start.map(side_view),
                            end: r.end.map(side_view),
                            comparison: r.comparison,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The confirmation runs of an experiment's regressions and fixes, and their statuses.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/confirmations", tag = "experiments", operation_id = "experiment_confirmations",
    params(("name" = String, Path, description = "the experiment's name")),
    responses((status = 200, body = ConfirmationsView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn confirmations(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<ConfirmationsView>, ApiError> {
    let row = experiments::get(&state.pool, &name).await?;
    let found = caldera_db::confirmations::of_experiment(&state.pool, row.id).await?;
    Ok(Json(ConfirmationsView::new(row.spec.confirm, found)))
}
