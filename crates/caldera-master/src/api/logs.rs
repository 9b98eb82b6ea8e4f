//! Logs and other objects of an experiment in object storage.
//!
//! * `GET /api/v1/experiments/{name}/results/{crate}/{toolchain}/log` streams one result's log,
//!   decompressed, as `text/plain; charset=utf-8` (ANSI escapes kept). The key comes from the
//!   result row in Postgres; the bytes are piped from the store through zstd to the client chunk by
//!   chunk, never held whole in memory.
//! * [`delete_experiment_objects`] removes everything under `experiments/{name}/` when an
//!   experiment is deleted (see `experiments::delete` for the ordering rule).
//!
//! Storage errors map to statuses here, once: an unreachable store (or one refusing the master's
//! credentials) is 503 `storage-unavailable`, a result pointing at a missing object is 404 on `log`
//! (and logged: it breaks the invariant that a result is recorded only once its log is durable),
//! corrupt data is 500. An error after the first bytes were sent cannot change the status any more:
//! the response is then cut off without its terminating chunk, so a client sees a failed transfer,
//! never a silently truncated log.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use caldera_core::crates::CrateId;
use caldera_core::job::Side;
use caldera_db::logs::{self, LogLookup};
use caldera_storage::{ObjectKey, StorageError, keys};
use futures::{StreamExt, TryStreamExt};

use crate::AppState;
use crate::auth::Reader;
use crate::error::{ApiError, ErrorBody};

/// The error code of a store that cannot be used right now.
pub const STORAGE_UNAVAILABLE: &str = "storage-unavailable";

/// Maps a storage error to a response, logging it once (server-side errors only).
pub(crate) fn storage_error(err: StorageError) -> ApiError {
    if err.is_not_found() {
        // The caller checks existence through Postgres first, so this is a dangling key.
        tracing::error!(error = %err, "a result points at a missing object");
        return ApiError::not_found(format!("the log is missing from object storage: {err}"))
            .with_field("log");
    }
    if err.is_transient()
        || matches!(
            err,
            StorageError::Credentials { .. } | StorageError::NoSuchBucket { .. }
        )
    {
        tracing::error!(error = %err, "object storage is unavailable");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            STORAGE_UNAVAILABLE,
            "object storage is unavailable; retry later",
        );
    }
    tracing::error!(error = %err, "object storage error");
    ApiError::internal()
}

fn parse_side(toolchain: &str) -> Result<Side, ApiError> {
    match toolchain {
        "start" => Ok(Side::Start),
        "end" => Ok(Side::End),
        other => Err(ApiError::bad_request(
            "toolchain",
            format!("unknown toolchain side {other:?}; expected `start` or `end`"),
        )),
    }
}

/// The log of one side of one crate's result, decompressed, as plain text (ANSI colour kept).
///
/// `{crate}` is the crate id, percent-encoded (`reg%3Aserde%401.0.0`,
/// `git%3Ahttps%3A%2F%2Fhost%2Fx.git%23rev`); a registry id without `#checksum` also finds a crate
/// resolved with one. `{toolchain}` is `start` or `end`.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/results/{crate}/{toolchain}/log", tag = "experiments",
    params(
        ("name" = String, Path, description = "experiment name"),
        ("crate" = String, Path, description = "crate id, percent-encoded: reg:NAME@VERSION[#SHA256], git:URL#REV or local:/ABS/DIR"),
        ("toolchain" = String, Path, description = "`start` or `end`"),
    ),
    responses(
        (status = 200, description = "the log, streamed", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, description = "`crate` is not a crate id, or `toolchain` is neither `start` nor `end`", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "`field` names what is missing: `name` (experiment), `crate` (not in the experiment), `toolchain` (no result for that side yet) or `log` (the result has no log)", body = ErrorBody),
        (status = 503, description = "object storage or the database is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_log(
    State(state): State<AppState>,
    _caller: Reader,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((name, krate, toolchain)) = path.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-path", e.body_text()).with_field("path")
    })?;
    let side = parse_side(&toolchain)?;
    let krate: CrateId = krate
        .parse()
        .map_err(|e: caldera_core::crates::CrateIdError| {
            ApiError::bad_request("crate", e.to_string())
        })?;
    let (crate_id, log_key) = match logs::find(&state.pool, &name, &krate, side).await? {
        LogLookup::Found { crate_id, log_key } => (crate_id, log_key),
        LogLookup::NoExperiment => {
            return Err(
                ApiError::not_found(format!("experiment {name:?} not found")).with_field("name"),
            );
        }
        LogLookup::NoCrate => {
            return Err(ApiError::not_found(format!(
                "crate `{krate}` is not part of experiment {name:?}"
            ))
            .with_field("crate"));
        }
        LogLookup::Ambiguous { candidates } => {
            return Err(ApiError::bad_request(
                "crate",
                format!(
                    "crate id `{krate}` matches several crates of experiment {name:?} ({}); give the checksum",
                    candidates.join(", ")
                ),
            ));
        }
        LogLookup::NoResult { crate_id } => {
            return Err(ApiError::not_found(format!(
                "crate `{crate_id}` of experiment {name:?} has no result for the {side} toolchain yet"
            ))
            .with_field("toolchain"));
        }
        LogLookup::NoLog {
            crate_id,
            outcome_kind,
        } => {
            return Err(ApiError::not_found(format!(
                "the {side} result of crate `{crate_id}` in experiment {name:?} ({outcome_kind}) has no log"
            ))
            .with_field("log"));
        }
    };
    let key = checked_key(&name, &log_key)?;
    let mut body = caldera_storage::get_log(&*state.store, &key)
        .await
        .map_err(storage_error)?;
    // Wait for the first chunk, so that an unreachable store or a corrupt object still gets a
    // proper status; later errors can only cut the response off.
    let first = match body.next().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => return Err(storage_error(e)),
        None => None,
    };
    let span_key = key.to_string();
    let rest = body.inspect_err(move |e| {
        tracing::error!(key = %span_key, error = %e, "log download cut off by a storage error");
    });
    let stream = futures::stream::iter(first.map(Ok)).chain(rest);
    tracing::debug!(experiment = %name, krate = %crate_id, toolchain = %side, key = %key, "streaming log");
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, caldera_storage::LOG_CONTENT_TYPE)
        // The log is the crate's output, i.e. untrusted text: never let a browser sniff it as HTML.
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Body::from_stream(stream))
        .map_err(|e| {
            tracing::error!(error = %e, "building the log response");
            ApiError::internal()
        })
}

/// The stored key as an object key, refusing one outside the experiment's prefix: keys come from
/// workers, and a worker must not be able to make the master serve another experiment's objects.
fn checked_key(experiment: &str, log_key: &str) -> Result<ObjectKey, ApiError> {
    let key = ObjectKey::new(log_key).ok();
    let prefix = keys::experiment_prefix(experiment).ok();
    match (key, prefix) {
        (Some(key), Some(prefix)) if key.is_under(&prefix) => Ok(key),
        _ => {
            tracing::error!(
                experiment,
                log_key,
                "a result's log key is outside its experiment's prefix; refusing to serve it"
            );
            Err(ApiError::internal())
        }
    }
}

/// Deletes every object under `experiments/{name}/`; returns how many there were. A name that cannot
/// be a key component owns no objects (0).
pub(crate) async fn delete_experiment_objects(
    state: &AppState,
    name: &str,
) -> Result<u64, StorageError> {
    let Ok(prefix) = keys::experiment_prefix(name) else {
        return Ok(0);
    };
    state.store.delete_prefix(&prefix).await
}
