//! The JSON API under `/api/v1`.

pub mod crate_lists;
pub mod estimate;
pub mod experiments;
pub mod farm;
pub mod flakes;
pub mod logs;
pub mod openapi;
pub mod pr;
pub mod report;
pub mod tokens;
pub mod triage;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reject bodies that are not JSON at all (400) before the typed parse, which reports the
/// offending field (422), and text no field can hold: a NUL character (`\u0000`) is a 422
/// naming its field, since Postgres text cannot store it.
pub(crate) fn check_json_syntax(body: &Bytes) -> Result<(), ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid-json",
            format!("request body is not valid JSON: {e}"),
        )
        .with_field("body")
    })?;
    // JSON can only carry a NUL escaped, so bodies without the escape are not parsed again
    if body.windows(6).any(|w| w == b"\\u0000")
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(field) = nul_field(&value, String::new())
    {
        return Err(ApiError::invalid(
            field,
            "contains a NUL character (\\u0000), a control character no text field can hold",
        ));
    }
    Ok(())
}

/// The path (`description`, `crates[2]`, `overrides.serde.skip`) of the first string or key in
/// `v` that holds a NUL character.
fn nul_field(v: &serde_json::Value, path: String) -> Option<String> {
    let here = |path: String| {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path
        }
    };
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(here(path)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_field(item, format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
            let inner = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if key.contains('\0') {
                Some(here(path.clone()))
            } else {
                nul_field(item, inner)
            }
        }),
        _ => None,
    }
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
