//! Flaky memory across experiments (`caldera_db::flakes`): `/api/v1/flakes?crate=NAME` lists a
//! crate's known flakes; `/api/v1/experiments/{name}/flakes` gives, for an experiment's crates, the
//! known flaky subjects that apply (a later failure they explain is spurious).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Reader;
use crate::error::{ApiError, ErrorBody};

/// The last time a flake was seen: the two runs, on the same toolchain, that should have agreed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlakeEvidenceView {
    /// The experiment it was seen in.
    pub experiment: String,
    /// `confirmation` (a confirmation run's side against the same side of run 0) or
    /// `calibration` (a calibration experiment's end against its start).
    pub source: String,
    /// The run that differed.
    pub run: i16,
    /// `start` or `end` (for a calibration: `end`).
    pub side: String,
    /// The log of the run compared against (run 0's side, or the calibration's start).
    pub log_key: Option<String>,
    /// The log of the run that differed.
    pub other_log_key: Option<String>,
}

/// A known flake of one crate version: a test (`test:NAME`) or a failure kind
/// (`build-fail:oom`, `test-fail:timeout`, …) that came and went between runs that should have
/// agreed, with how often that was seen across experiments.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlakeView {
    /// The crate id (`reg:name@version`, `git:url#rev`, `local:/path`).
    #[serde(rename = "crate")]
    pub krate: String,
    pub name: String,
    pub version: Option<String>,
    pub subject: String,
    /// Sightings, across experiments.
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last: FlakeEvidenceView,
}

impl From<caldera_db::flakes::Flake> for FlakeView {
    fn from(f: caldera_db::flakes::Flake) -> Self {
        FlakeView {
            krate: f.krate,
            name: f.name,
            version: f.version,
            subject: f.subject,
            count: f.count,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            last: FlakeEvidenceView {
                experiment: f.last.experiment,
                source: f.last.source.as_str().to_owned(),
                run: f.last.run,
                side: f.last.side,
                log_key: f.last.log_key,
                other_log_key: f.last.other_log_key,
            },
        }
    }
}

/// A crate's known flakes.
#[derive(Debug, Serialize, ToSchema)]
pub struct CrateFlakesView {
    /// Most seen first, by crate id.
    pub flakes: Vec<FlakeView>,
}

/// The known flakes of a crate (every version, or one), with counts and the evidence of the last
/// sighting.
#[utoipa::path(get, path = "/api/v1/flakes", tag = "flakes", operation_id = "flakes_of_crate",
    params(
        ("crate" = String, Query, min_length = 1, description = "the crate's name"),
        ("version" = Option<String>, Query, description = "only this version"),
    ),
    responses((status = 200, body = CrateFlakesView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn of_crate(
    State(state): State<AppState>,
    _caller: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<CrateFlakesView>, ApiError> {
    let name = query
        .get("crate")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("crate", "the crate's name is required: ?crate=NAME")
        })?;
    let version = query.get("version").map(String::as_str);
    let found = caldera_db::flakes::of_crate(&state.pool, name, version).await?;
    Ok(Json(CrateFlakesView {
        flakes: found.into_iter().map(FlakeView::from).collect(),
    }))
}

/// The known flakes that apply to an experiment's crates.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentFlakesView {
    /// Crate id → its known flakes (crates with none are left out).
    pub crates: BTreeMap<String, Vec<FlakeView>>,
}

/// For each crate of the experiment, its known flaky subjects (from this and other experiments):
/// a failure whose every failed test, or whose failure kind, is among them is explained by
/// known flakiness.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/flakes", tag = "flakes",
    operation_id = "experiment_flakes",
    params(("name" = String, Path)),
    responses((status = 200, body = ExperimentFlakesView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn of_experiment(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<ExperimentFlakesView>, ApiError> {
    let row = caldera_db::experiments::get(&state.pool, &name).await?;
    let known = caldera_db::flakes::known_subjects(&state.pool, row.id).await?;
    Ok(Json(ExperimentFlakesView {
        crates: known
            .crates
            .into_iter()
            .map(|(k, fs)| (k, fs.into_iter().map(FlakeView::from).collect()))
            .collect(),
    }))
}
