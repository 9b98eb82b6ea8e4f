//! The JSON API under `/api/v1`.

pub mod crate_lists;
pub mod experiments;
pub mod flakes;
pub mod logs;
pub mod openapi;
pub mod report;
pub mod triage;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reject bodies that are not JSON at all (400) before the typed parse, which reports the
/// offending field (422).
pub(crate) fn check_json_syntax(body: &Bytes) -> Result<(), ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-json",
                format!("request body is not valid JSON: {e}"),
            )
            .with_field("body")
        })
}

/// Parse a JSON body into `T`, naming the field path of the first error.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    check_json_syntax(body)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(field, e.into_inner().to_string())
    })
}

/// Parse `limit` / `offset` query values.
pub(crate) fn parse_page(
    limit: Option<&str>,
    offset: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    let limit = match limit {
        None => 50,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("limit must be an integer from 1 to 500, got {v:?}"),
                )
            })?,
    };
    let offset = match offset {
        None => 0,
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "offset",
                format!("offset must be a non-negative integer, got {v:?}"),
            )
        })?,
    };
    Ok((limit, offset))
}
