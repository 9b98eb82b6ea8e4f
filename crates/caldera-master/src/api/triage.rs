//! Triage marks (see [`caldera_core::triage`]):
//!
//! * `PUT /api/v1/experiments/{name}/triage/{crate}` marks the crate's regression in that
//!   experiment; the server computes the cause from the stored end outcome. 201 for a new mark,
//!   200 when it replaced (or equalled) the stored one.
//! * `DELETE` on the same path removes the mark that applies to that regression (204).
//! * `GET /api/v1/experiments/{name}/triage` lists the experiment's regressions with their cause
//!   and the mark that applies, if any.
//! * `GET /api/v1/triage[?crate=NAME][&limit=N]` lists every mark with its history, and the audit
//!   trail (removals included).
//!
//! `{crate}` is a crate, percent-encoded, in any spelling (`serde@1.0.0`, `reg%3Aserde%401.0.0`,
//! `path%3A%2Fdir`, `local%3A%2Fdir`, `git%3AURL%23REV`), or a registry crate name (`serde`) when
//! the experiment holds one version of it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use caldera_core::crates::CrateId;
use caldera_core::outcome::{Comparison, compare};
use caldera_core::triage::{MarkKind, MarkRequest, cause, crate_key};
use caldera_db::experiments;
use caldera_db::triage::{
    self, AuditEntry, CrateRef, Mark, MarkFields, Origin, SetOutcome, Target,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::check_json_syntax;
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ErrorBody};

/// A triage mark.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarkView {
    /// The crate it is kept for: registry name, `git:URL` or `local:/DIR`.
    pub crate_name: String,
    /// The cause it applies to, e.g. `build-fail:compiler-error(E0308)`.
    pub cause: String,
    #[schema(value_type = String, example = "known-issue")]
    pub kind: MarkKind,
    pub link: Option<String>,
    pub note: String,
    /// The experiment and crate id it was last set from.
    pub experiment: String,
    pub crate_id: String,
    /// Token names.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
    /// Its changes, oldest first (only in `GET /api/v1/triage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<AuditView>>,
}

impl From<Mark> for MarkView {
    fn from(m: Mark) -> Self {
        MarkView {
            crate_name: m.crate_name,
            cause: m.cause,
            kind: m.kind,
            link: m.link,
            note: m.note,
            experiment: m.experiment,
            crate_id: m.crate_id,
            created_by: m.created_by,
            created_at: m.created_at,
            updated_by: m.updated_by,
            updated_at: m.updated_at,
            history: None,
        }
    }
}

/// What a mark said before or after a change.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MarkFieldsView {
    #[schema(value_type = String)]
    pub kind: MarkKind,
    pub link: Option<String>,
    pub note: String,
}

impl From<MarkFields> for MarkFieldsView {
    fn from(f: MarkFields) -> Self {
        MarkFieldsView {
            kind: f.kind,
            link: f.link,
            note: f.note,
        }
    }
}

/// One change to a mark.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub crate_name: String,
    pub cause: String,
    /// `set`, `update` or `remove`.
    pub action: String,
    pub before: Option<MarkFieldsView>,
    pub after: Option<MarkFieldsView>,
    pub experiment: String,
    pub crate_id: String,
    /// The token name of whoever made the change.
    pub actor: String,
    pub at: DateTime<Utc>,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> Self {
        AuditView {
            id: a.id,
            crate_name: a.crate_name,
            cause: a.cause,
            action: a.action,
            before: a.before.map(Into::into),
            after: a.after.map(Into::into),
            experiment: a.experiment,
            crate_id: a.crate_id,
            actor: a.actor,
            at: a.at,
        }
    }
}

/// Every mark, and the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriageList {
    /// Current marks, by crate name and cause, each with its history.
    pub marks: Vec<MarkView>,
    /// The newest `limit` changes (removals included), oldest first.
    pub audit: Vec<AuditView>,
}

/// A regression of an experiment, with its cause and the mark that applies.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegressionTriage {
    /// The crate id.
    #[serde(rename = "crate")]
    pub krate: String,
    pub crate_name: String,
    pub cause: String,
    /// The mark that applies (same crate name and cause), if any.
    pub mark: Option<MarkView>,
}

/// An experiment's regressions with their marks.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentTriage {
    pub experiment: String,
    pub regressions: Vec<RegressionTriage>,
}

/// The request body of `PUT …/triage/{crate}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarkBody {
    /// `expected`, `known-issue` or `ignore`.
    pub kind: String,
    /// An `http(s)://` URL; required for `known-issue`.
    pub link: Option<String>,
    /// At most 2000 characters, no control characters.
    pub note: Option<String>,
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-path", e.body_text()).with_field("path")
}

/// A crate as users write it (`rand@0.8.5`, `reg:rand@0.8.5`, `git:URL#REV`, `path:/DIR`,
/// `local:/DIR`) or a bare registry name: [`CrateRef`]'s one parser.
pub(crate) fn parse_crate_ref(s: &str) -> Result<CrateRef, ApiError> {
    s.parse::<CrateRef>()
        .map_err(|e| ApiError::bad_request("crate", e.to_string()))
}

/// The regression a triage request is about: the crate, its key and its cause. Errors: 404 on
/// `name` or `crate`, 400 on `crate` (ambiguous), 409 on `crate` (not regressed).
pub(crate) async fn regression(
    state: &AppState,
    name: &str,
    krate: &CrateRef,
) -> Result<(CrateId, String, String), ApiError> {
    match triage::find_crate(&state.pool, name, krate).await? {
        Target::NoExperiment => {
            Err(ApiError::not_found(format!("experiment {name:?} not found")).with_field("name"))
        }
        Target::NoCrate => Err(ApiError::not_found(format!(
            "crate {} is not part of experiment {name:?}",
            show(krate)
        ))
        .with_field("crate")),
        Target::Ambiguous { candidates } => Err(ApiError::bad_request(
            "crate",
            format!(
                "{} matches several crates of experiment {name:?} ({}); give the crate id",
                show(krate),
                candidates.join(", ")
            ),
        )),
        Target::Found {
            crate_id,
            start: Some(start),
            end: Some(end),
        } => {
            let comparison = compare(&start, &end);
            if comparison != Comparison::Regressed {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "crate `{crate_id}` is {comparison} in experiment {name:?} ({start} → {end}); only regressions can be triaged"
                    ),
                )
                .with_field("crate"));
            }
            let key = crate_key(&crate_id);
            let cause = cause(&end);
            Ok((crate_id, key, cause))
        }
        Target::Found { crate_id, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("crate `{crate_id}` of experiment {name:?} has no result yet; only regressions can be triaged"),
        )
        .with_field("crate")),
    }
}

fn show(krate: &CrateRef) -> String {
    match krate {
        CrateRef::Id(id) => format!("`{id}`"),
        CrateRef::Name(n) => format!("`{n}`"),
    }
}

/// Mark a regression: the mark applies to this crate (by name) and this cause in every
/// experiment, until the cause changes.
#[utoipa::path(put, path = "/api/v1/experiments/{name}/triage/{crate}", tag = "triage",
    operation_id = "triage_mark",
    params(
        ("name" = String, Path, description = "experiment name"),
        ("crate" = String, Path, description = "crate id, percent-encoded, or a registry crate name"),
    ),
    request_body = MarkBody,
    responses(
        (status = 201, description = "a new mark", body = MarkView),
        (status = 200, description = "the stored mark was replaced (or already said this)", body = MarkView),
        (status = 400, description = "body is not JSON, or `crate` is not a crate id or name, or is ambiguous", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "`field` names what is missing: `name` (experiment) or `crate`", body = ErrorBody),
        (status = 409, description = "the crate did not regress in this experiment", body = ErrorBody),
        (status = 422, description = "`kind`, `link` or `note` is invalid", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn mark(
    State(state): State<AppState>,
    Writer(caller): Writer,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<MarkView>), ApiError> {
    let Path((name, krate)) = path.map_err(path_error)?;
    let krate = parse_crate_ref(&krate)?;
    check_json_syntax(&body)?;
    let request = MarkRequest::from_json(&body)
        .map_err(|e| ApiError::invalid(e.field.clone(), e.message.clone()))?;
    let (mark, how) = set_mark(&state, &name, &krate, &request, &caller.name).await?;
    let status = if how == SetOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(mark.into())))
}

/// Sets the mark of a regression (the API's and the dashboard's way), logging it.
pub(crate) async fn set_mark(
    state: &AppState,
    name: &str,
    krate: &CrateRef,
    request: &MarkRequest,
    actor: &str,
) -> Result<(Mark, SetOutcome), ApiError> {
    let (crate_id, key, cause) = regression(state, name, krate).await?;
    let crate_text = crate_id.to_string();
    let (mark, how) = triage::set(
        &state.pool,
        &key,
        &cause,
        request,
        Origin {
            experiment: name,
            crate_id: &crate_text,
            actor,
        },
    )
    .await?;
    tracing::info!(experiment = %name, krate = %crate_text, cause = %cause, kind = %request.kind, token = %actor, ?how, "triage mark set");
    Ok((mark, how))
}

/// Removes the mark that applies to a regression, logging it.
pub(crate) async fn remove_mark(
    state: &AppState,
    name: &str,
    krate: &CrateRef,
    actor: &str,
) -> Result<Mark, ApiError> {
    let (crate_id, key, cause) = regression(state, name, krate).await?;
    let crate_text = crate_id.to_string();
    let old = triage::remove(
        &state.pool,
        &key,
        &cause,
        Origin {
            experiment: name,
            crate_id: &crate_text,
            actor,
        },
    )
    .await
    .map_err(|e| match e {
        caldera_db::DbError::NotFound { .. } => ApiError::not_found(format!(
            "no triage mark applies to crate `{crate_text}` in experiment {name:?} (cause {cause})"
        ))
        .with_field("mark"),
        other => other.into(),
    })?;
    tracing::info!(experiment = %name, krate = %crate_text, cause = %cause, token = %actor, "triage mark removed");
    Ok(old)
}

/// Remove the mark that applies to a regression.
#[utoipa::path(delete, path = "/api/v1/experiments/{name}/triage/{crate}", tag = "triage",
    operation_id = "triage_unmark",
    params(
        ("name" = String, Path, description = "experiment name"),
        ("crate" = String, Path, description = "crate id, percent-encoded, or a registry crate name"),
    ),
    responses(
        (status = 204, description = "removed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "`name` (experiment), `crate` (not in it), or `mark` (no mark applies)", body = ErrorBody),
        (status = 409, description = "the crate did not regress in this experiment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn unmark(
    State(state): State<AppState>,
    Writer(caller): Writer,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((name, krate)) = path.map_err(path_error)?;
    let krate = parse_crate_ref(&krate)?;
    remove_mark(&state, &name, &krate, &caller.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The experiment's regressions, each with its cause and the mark that applies.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/triage", tag = "triage",
    operation_id = "triage_experiment",
    params(("name" = String, Path, description = "experiment name")),
    responses((status = 200, body = ExperimentTriage), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn experiment(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<ExperimentTriage>, ApiError> {
    let row = experiments::get(&state.pool, &name)
        .await
        .map_err(|e| ApiError::from(e).with_field("name"))?;
    let results = caldera_db::results::report_input(&state.pool, row.id, false).await?;
    let regressed: Vec<_> = results
        .iter()
        .filter(|r| compare(&r.start, &r.end) == Comparison::Regressed)
        .collect();
    let mut marks =
        crate::triage::marks_for(&state.pool, regressed.iter().map(|r| (&r.krate, &r.end))).await?;
    let mut regressions: Vec<RegressionTriage> = regressed
        .into_iter()
        .map(|r| RegressionTriage {
            krate: r.krate.to_string(),
            crate_name: crate_key(&r.krate),
            cause: cause(&r.end),
            mark: marks.remove(&r.krate).map(Into::into),
        })
        .collect();
    regressions.sort_by(|a, b| a.krate.cmp(&b.krate));
    Ok(Json(ExperimentTriage {
        experiment: name,
        regressions,
    }))
}

/// Every mark with its history, and the newest changes (removals included).
#[utoipa::path(get, path = "/api/v1/triage", tag = "triage",
    operation_id = "triage_list",
    params(
        ("crate" = Option<String>, Query, min_length = 1, max_length = 4096, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$", description = "only this crate: registry name, `git:URL` or `local:/DIR` (at most 4096 bytes, no control characters)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "audit entries, 1–1000 (default 200)"),
    ),
    responses((status = 200, body = TriageList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<TriageList>, ApiError> {
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "crate" | "limit"))
    {
        return Err(ApiError::bad_request(
            unknown.clone(),
            format!("unknown query parameter {unknown:?}; expected crate or limit"),
        ));
    }
    let krate = query.get("crate").map(String::as_str);
    if let Some(k) = krate {
        let ok = !k.is_empty() && k.len() <= 4096 && !k.chars().any(char::is_control);
        if !ok {
            return Err(ApiError::bad_request(
                "crate",
                "crate must be a registry crate name, git:URL or local:/DIR",
            ));
        }
    }
    let limit = match query.get("limit") {
        None => 200,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("limit must be an integer from 1 to 1000, got {v:?}"),
                )
            })?,
    };
    let marks = triage::list(&state.pool, krate).await?;
    let audit = triage::audit_trail(&state.pool, krate, limit).await?;
    // each mark's history: every change of its key (not bounded by `limit`)
    let mut history: HashMap<(String, String), Vec<AuditView>> = marks
        .iter()
        .map(|m| ((m.crate_name.clone(), m.cause.clone()), Vec::new()))
        .collect();
    let keys: Vec<(String, String)> = history.keys().cloned().collect();
    for a in triage::history(&state.pool, &keys).await? {
        if let Some(h) = history.get_mut(&(a.crate_name.clone(), a.cause.clone())) {
            h.push(a.into());
        }
    }
    let marks = marks
        .into_iter()
        .map(|m| {
            let h = history
                .remove(&(m.crate_name.clone(), m.cause.clone()))
                .unwrap_or_default();
            let mut v = MarkView::from(m);
            v.history = Some(h);
            v
        })
        .collect();
    Ok(Json(TriageList {
        marks,
        audit: audit.into_iter().map(Into::into).collect(),
    }))
}
