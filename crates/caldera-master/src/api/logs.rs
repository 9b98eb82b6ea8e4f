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
use caldera_core::crates::{CrateId, CrateRef};
use caldera_core::job::Side;
use caldera_core::toolchain::{Toolchain, ToolchainSource};
use caldera_db::experiments;
use caldera_db::logs::{self, LogLookup};
use caldera_db::triage::{self, Target};
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

/// The side a log path's `{toolchain}` segment names: `start` or `end`, or the toolchain of one
/// side (`stable`, `nightly-2026-01-01`, `path:/opt/rust`, or its whole compact form
/// `nightly+rustflags=-Zx`). A name both sides share (a calibration experiment) is ambiguous.
pub(crate) fn side_named(
    segment: &str,
    start: &Toolchain,
    end: &Toolchain,
) -> Result<Side, ApiError> {
    match segment {
        "start" => return Ok(Side::Start),
        "end" => return Ok(Side::End),
        _ => {}
    }
    let names = |t: &Toolchain| {
        let source = match &t.source {
            ToolchainSource::Rustup(name) => name.clone(),
            ToolchainSource::Path(path) => format!("path:{path}"),
        };
        [source, t.id()]
    };
    let (s, e) = (names(start), names(end));
    match (
        s.iter().any(|n| n == segment),
        e.iter().any(|n| n == segment),
    ) {
        (true, false) => Ok(Side::Start),
        (false, true) => Ok(Side::End),
        (true, true) => Err(ApiError::bad_request(
            "toolchain",
            format!("both sides use the toolchain {segment:?}; say `start` or `end`"),
        )),
        (false, false) => Err(ApiError::bad_request(
            "toolchain",
            format!(
                "unknown side {segment:?}; expected `start`, `end`, or a side's toolchain (`{}` for start, `{}` for end)",
                s[0], e[0]
            ),
        )),
    }
}

/// The side of a log path: `start`/`end` need nothing else; a toolchain name is looked up in the
/// experiment's spec (404 on `name` when there is no such experiment).
async fn side_of(state: &AppState, name: &str, segment: &str) -> Result<Side, ApiError> {
    if let Some(side) = Side::BOTH.iter().find(|s| s.as_str() == segment) {
        return Ok(*side);
    }
    let row = experiments::get(&state.pool, name)
        .await
        .map_err(|e| ApiError::from(e).with_field("name"))?;
    side_named(segment, &row.spec.start, &row.spec.end)
}

/// The crate id a log path names: any spelling of an exact crate, or a bare registry name
/// resolved to the experiment's one crate of that name.
async fn crate_of(state: &AppState, name: &str, krate: CrateRef) -> Result<CrateId, ApiError> {
    let crate_name = match &krate {
        CrateRef::Id(id) => return Ok(id.clone()),
        CrateRef::Name(n) => n,
    };
    match triage::find_crate(&state.pool, name, &krate).await? {
        Target::Found { crate_id, .. } => Ok(crate_id),
        Target::NoExperiment => {
            Err(ApiError::not_found(format!("experiment {name:?} not found")).with_field("name"))
        }
        Target::NoCrate => Err(ApiError::not_found(format!(
            "experiment {name:?} has no registry crate named `{crate_name}`"
        ))
        .with_field("crate")),
        Target::Ambiguous { candidates } => Err(ApiError::bad_request(
            "crate",
            format!(
                "`{crate_name}` matches several crates of experiment {name:?} ({}); give the version",
                candidates.join(", ")
            ),
        )),
    }
}

/// The log of one side of one crate's result, decompressed, as plain text (ANSI colour kept).
///
/// `{crate}` is the crate, percent-encoded, in any spelling: as typed (`serde%401.0.0`,
/// `path%3A%2Fdir`, `git%3Ahttps%3A%2F%2Fhost%2Fx.git%23rev`), as printed (`reg%3Aserde%401.0.0`,
/// `local%3A%2Fdir`), or a bare registry name when the experiment holds one version of it; a
/// registry crate without `#checksum` also finds one resolved with it. `{toolchain}` is the side:
/// `start` or `end`, or the toolchain of one side (`stable`, `nightly`).
#[utoipa::path(get, path = "/api/v1/experiments/{name}/results/{crate}/{toolchain}/log", tag = "experiments", operation_id = "get_log",
    params(
        ("name" = String, Path, description = "experiment name"),
        ("crate" = String, Path, description = "the crate, percent-encoded: NAME@VERSION, git:URL#REV or path:/ABS/DIR (or as ids: reg:NAME@VERSION[#SHA256], local:/ABS/DIR), or a registry crate name the experiment holds one version of"),
        ("toolchain" = String, Path, description = "the side: `start` or `end`, or the toolchain of one side (`stable`, `nightly`; ambiguous when both sides use it)"),
    ),
    responses(
        (status = 200, description = "the log, streamed", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, description = "`crate` is not a crate, or names several; `toolchain` is not a side or names both", body = ErrorBody),
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
    let krate: CrateRef = krate
        .parse()
        .map_err(|e: caldera_core::crates::CrateIdError| {
            ApiError::bad_request("crate", e.to_string())
        })?;
    let side = side_of(&state, &name, &toolchain).await?;
    let krate = crate_of(&state, &name, krate).await?;
    let (crate_id, log_key) = log_key_of(&state, &name, &krate, side).await?;
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

/// The crate id and log key of `side` of `krate` in experiment `name`, or the error naming what is
/// missing.
async fn log_key_of(
    state: &AppState,
    name: &str,
    krate: &CrateId,
    side: Side,
) -> Result<(String, String), ApiError> {
    Ok(match logs::find(&state.pool, name, krate, side).await? {
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
