//! Checks at the HTTP edge that every route shares, before any handler runs, and the JSON form
//! of the errors the framework itself answers with.
//!
//! * A NUL character (`%00`) in the path or the query is a 400 naming `path` or `query`: Postgres
//!   text cannot hold it, and it is never part of a name, a crate id or a filter.
//! * A request body under `/api/v1` must say it is JSON (`Content-Type: application/json` or
//!   `…+json`), else 415 naming `content-type`. Requests without a body (`start`, `pause`, …)
//!   need no content type.
//! * Dashboard pages carry the security headers of [`DASHBOARD_HEADERS`].
//! * Errors axum produces on its own — a wrong method (405), a body over [`MAX_BODY_BYTES`]
//!   (413), a path or query it cannot extract (400) — come as plain text; [`json_errors`] turns
//!   every such 4xx into the `{"error": {…}}` object of [`ApiError`], keeping the headers
//!   (`Allow` on a 405). HTML and JSON responses are left as they are.

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The largest request body accepted: room for a crate list or an explicit selection of
/// 100,000 crates (the documented maximum) written as objects, with margin.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Refuses a NUL character in the path or the query (400), before routing.
pub async fn refuse_nul(req: Request, next: Next) -> Response {
    let uri = req.uri();
    if has_nul(uri.path()) {
        return nul_error("path").into_response();
    }
    if uri.query().is_some_and(has_nul) {
        return nul_error("query").into_response();
    }
    next.run(req).await
}

fn nul_error(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-path",
        format!("the {field} contains a NUL character (%00), which no name or value can hold"),
    )
    .with_field(field)
}

/// Whether percent-encoded `s` holds an encoded (or raw) NUL.
fn has_nul(s: &str) -> bool {
    s.contains('\0')
        || s.as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Refuses a request body that does not say it is JSON (415).
pub async fn require_json(req: Request, next: Next) -> Response {
    if has_body(req.method(), req.headers()) && !is_json(req.headers()) {
        let got = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "none".to_owned(), |v| format!("`{v}`"));
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("request bodies are JSON: send `Content-Type: application/json` (got {got})"),
        )
        .with_field("content-type")
        .into_response();
    }
    next.run(req).await
}

fn has_body(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        return false;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Gives the framework's own 4xx answers (plain text or empty) the JSON error body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !status.is_client_error() || !is_plain(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = framework_error(status, &text);
    let mut json = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// A response the framework wrote itself: no content type, or plain text.
fn is_plain(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"))
}

/// The JSON error for a status the framework answered with; `text` is what it said.
fn framework_error(status: StatusCode, text: &str) -> ApiError {
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "this method is not allowed here (see the Allow header and /api/v1/openapi.json)"
                .to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too-large",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        StatusCode::NOT_FOUND => (
            "not-found",
            "no such route; see /api/v1/openapi.json".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", text.to_owned()),
        _ if text.is_empty() => ("invalid-request", status.to_string()),
        _ => ("invalid-request", text.to_owned()),
    };
    let error = ApiError::new(status, code, message);
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => error.with_field("body"),
        StatusCode::METHOD_NOT_ALLOWED => error.with_field("method"),
        _ => error,
    }
}

/// The headers every dashboard page carries: scripts only from the master itself (the pages
/// have no inline script; [`REPORT_CSP`] is the exception), no framing by other sites
/// (clickjacking), no `<base>` or plugin tricks, forms only to this origin, no content-type
/// sniffing, and no full URLs (experiment and crate names) sent to other sites.
pub const DASHBOARD_HEADERS: [(&str, &str); 4] = [
    (
        "content-security-policy",
        "script-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
];

/// The policy of the exported report files served by the dashboard: the static `index.html`
/// carries its script inline (it is browsable without the master), so it is [`DASHBOARD_HEADERS`]'
/// policy without `script-src`.
pub const REPORT_CSP: &str =
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'";

/// Adds [`DASHBOARD_HEADERS`] to a response that does not set them itself.
pub async fn dashboard_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in DASHBOARD_HEADERS {
        if !headers.contains_key(name) {
            headers.insert(name, header::HeaderValue::from_static(value));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_found_encoded_or_raw() {
        for (s, nul) in [
            ("/api/v1/experiments/a%00b", true),
            ("/api/v1/experiments/ab", false),
            ("name=x%00", true),
            ("a\0b", true),
            ("%0", false),
            ("%20%30%30", false),
        ] {
            assert_eq!(has_nul(s), nul, "{s}");
        }
    }

    #[test]
    fn json_content_types() {
        for (ct, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/jsonx", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), json, "{ct}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
