//! `/api/v1/experiments/{name}/report`: the exported report files (see [`crate::export`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use caldera_db::experiments;
use caldera_storage::keys;
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ErrorBody};
use crate::export::{self, ExportError, ExportSummary};

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Db(e) => e.into(),
            ExportError::Storage(e) => {
                tracing::error!(error = %e, "object storage error during a report export");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("object storage failed: {e}"),
                )
            }
            other => {
                tracing::error!(error = %other, "report export failed");
                ApiError::internal()
            }
        }
    }
}

fn storage_error(e: caldera_storage::StorageError) -> ApiError {
    tracing::error!(error = %e, "object storage error while serving a report file");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "object storage is unavailable; retry later",
    )
}

/// Regenerate every report file of an experiment (any status: a running experiment gets a report
/// of the results so far). Answers when the files are written.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/report", tag = "reports", operation_id = "regenerate_report",
    params(("name" = String, Path)),
    responses((status = 200, body = ExportSummary), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn regenerate(
    State(state): State<AppState>,
    Writer(caller): Writer,
    Path(name): Path<String>,
) -> Result<Json<ExportSummary>, ApiError> {
    let summary = export::export(&state.pool, state.store.clone(), &name).await?;
    tracing::info!(experiment = %name, token = %caller.name, "report regenerated on request");
    Ok(Json(summary))
}

/// A report file that exists.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportFile {
    pub name: String,
    /// Bytes as stored (compressed for `results.json` and `index.html`).
    pub stored_bytes: u64,
    /// `GET` this path for the file.
    pub href: String,
}

/// The report files of an experiment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportFiles {
    pub experiment: String,
    /// Files generated so far (none before the first export).
    pub files: Vec<ReportFile>,
}

/// List the report files of an experiment.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/report", tag = "reports", operation_id = "list_report_files",
    params(("name" = String, Path)),
    responses((status = 200, body = ReportFiles), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<ReportFiles>, ApiError> {
    let e = experiments::get(&state.pool, &name).await?;
    let prefix = keys::report_prefix(&e.name)
        .map_err(|err| ApiError::bad_request("name", err.to_string()))?;
    let objects = state.store.list(&prefix).await.map_err(storage_error)?;
    let mut files = Vec::new();
    for o in objects {
        if let Ok(keys::ParsedKey::Report { file, .. }) = keys::parse(&o.key)
            && export::FILES.contains(&file.as_str())
        {
            files.push(ReportFile {
                href: format!(
                    "/api/v1/experiments/{}/report/{file}",
                    crate::dashboard::views::path_encode(&e.name)
                ),
                name: file,
                stored_bytes: o.size,
            });
        }
    }
    Ok(Json(ReportFiles {
        experiment: e.name,
        files,
    }))
}

/// One report file, streamed from object storage: `summary.md`, `retry.txt`, `results.json`,
/// `index.html` or `logs.tar.zst`. `results.json` and `index.html` are sent zstd-encoded to
/// clients whose `Accept-Encoding` has `zstd`, and decompressed for the others.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/report/{file}", tag = "reports", operation_id = "get_report_file",
    params(("name" = String, Path), ("file" = String, Path, description = "summary.md, retry.txt, results.json, index.html or logs.tar.zst")),
    responses((status = 200, description = "the file"), (status = 401, body = ErrorBody),
        (status = 404, description = "unknown experiment or file, or not generated yet", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn file(
    State(state): State<AppState>,
    _caller: Reader,
    Path((name, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    stream_file(&state, &name, &file, &headers).await
}

/// The response for one report file (shared with the dashboard's download links).
pub async fn stream_file(
    state: &AppState,
    name: &str,
    file: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Some(&file) = export::FILES.iter().find(|f| **f == file) else {
        return Err(ApiError::not_found(format!(
            "no report file {file:?}; the files are {}",
            export::FILES.join(", ")
        ))
        .with_field("file"));
    };
    let e = experiments::get(&state.pool, name).await?;
    let key = keys::report(&e.name, file)
        .map_err(|err| ApiError::bad_request("name", err.to_string()))?;
    let object = match state.store.get(&key).await {
        Ok(o) => o,
        Err(err) if err.is_not_found() => {
            return Err(ApiError::not_found(format!(
                "{file} of experiment {name:?} has not been generated yet; it is written when the experiment completes, or POST /api/v1/experiments/{name}/report"
            )));
        }
        Err(err) => return Err(storage_error(err)),
    };
    let zstd = object.meta.content_encoding.as_deref() == Some("zstd");
    let accepts_zstd = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            parts
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("zstd"))
                && !parts.any(|p| p.trim().replace(' ', "") == "q=0")
        });
    let mut response_headers = HeaderMap::new();
    response_headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(export::content_type(file)),
    );
    let body = if zstd {
        response_headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        if accepts_zstd {
            response_headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            response_headers.insert(CONTENT_LENGTH, HeaderValue::from(object.meta.size));
            Body::from_stream(object.body.map(|r| r.map_err(std::io::Error::other)))
        } else {
            Body::from_stream(export::decompress(object.body))
        }
    } else {
        response_headers.insert(CONTENT_LENGTH, HeaderValue::from(object.meta.size));
        Body::from_stream(object.body.map(|r| r.map_err(std::io::Error::other)))
    };
    Ok((StatusCode::OK, response_headers, body).into_response())
}
