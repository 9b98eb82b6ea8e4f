//! The HTTP error policy: every error is `{"error": {"code", "message", "field"}}` with a status
//! that says whose fault it is. Errors are logged once, here, when they are server-side.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use caldera_db::DbError;
use serde::Serialize;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

/// The JSON body of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `invalid-json`, `invalid-field`, `invalid-path`,
    /// `invalid-request`, `unauthorized`, `forbidden`, `not-found`, `method-not-allowed`,
    /// `conflict`, `too-large`, `unsupported-media-type`, `unavailable`, `storage-unavailable`,
    /// `registry-unavailable`, `internal`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field (a JSON path such as `start` or `overrides.serde.skip`, a query
    /// parameter, or `authorization`), when one is to blame.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-field", message).with_field(field)
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", message).with_field(field)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message).with_field("authorization")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message).with_field("authorization")
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the master's log",
        )
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::NotFound { what } => ApiError::not_found(format!("{what} not found")),
            DbError::Conflict { field, message } => {
                let e = ApiError::new(StatusCode::CONFLICT, "conflict", message);
                match field {
                    Some(f) => e.with_field(f),
                    None => e,
                }
            }
            DbError::Invalid { field, message } => ApiError::invalid(field, message),
            e if e.is_unstorable_text() => {
                tracing::warn!(error = %e, "refused text the database cannot store");
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-field",
                    "the request holds text the database cannot store (a NUL character or invalid UTF-8)",
                )
            }
            other => {
                tracing::error!(error = %other, "database error while serving a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}
