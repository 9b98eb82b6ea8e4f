//! `GET /api/v1/experiments/{name}/pr-comment`: the pull-request comment of an experiment
//! (Markdown, at most GitHub's 65,536 characters; see [`caldera_report::pr_comment`]), with links
//! into the dashboard.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use caldera_db::experiments::ExperimentRow;
use caldera_report::{PrCommentOptions, pr_comment};

use crate::AppState;
use crate::auth::Reader;
use crate::dashboard::Dashboard;
use crate::dashboard::cache::Snapshot;
use crate::error::{ApiError, ErrorBody};

/// Longest `base_url` accepted.
const MAX_BASE_URL: usize = 512;

/// The dashboard address the links start with: `base_url` when given (checked), else
/// `http://{Host}` of the request (`https://` behind `X-Forwarded-Proto: https`, which a master
/// serving TLS sets itself), else `http://localhost`.
pub fn base_url(given: Option<&str>, headers: &HeaderMap) -> Result<String, String> {
    if let Some(url) = given {
        let url = url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"));
        return match rest {
            None => Err(format!(
                "base_url must start with http:// or https://, got {url:?}"
            )),
            Some("") => Err("base_url has no host".into()),
            Some(_) if url.len() > MAX_BASE_URL => {
                Err(format!("base_url is longer than {MAX_BASE_URL} characters"))
            }
            Some(_)
                if url.chars().any(|c| {
                    c.is_whitespace() || c.is_control() || "<>\"'`()[]{}|\\^".contains(c)
                }) =>
            {
                Err(format!(
                    "base_url must be a plain URL (no spaces, quotes, brackets or parentheses), got {url:?}"
                ))
            }
            Some(_) => Ok(url.to_owned()),
        };
    }
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    Ok(format!("{}://{host}", if https { "https" } else { "http" }))
}

/// The comment of experiment `e` from its cached report.
pub fn markdown(e: &ExperimentRow, snap: &Snapshot, base_url: &str) -> String {
    let (start, end) = (e.spec.start.to_string(), e.spec.end.to_string());
    pr_comment(
        &snap.report,
        &PrCommentOptions::new(&e.name, &start, &end, base_url),
    )
}

/// The pull-request comment of an experiment: a Markdown summary sized for a GitHub comment
/// (at most 65,536 characters whatever the experiment's size): the counts, the regressions by
/// root cause with links to each root's logs and log diff on the dashboard, the fixed crates,
/// what is not counted as a regression, and the commands that retry the regressions and
/// spurious results. Lists that do not fit end in "… and N more, see <link>". The links start
/// with `base_url` (the dashboard as readers reach it), or `http://{Host}` of the request.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/pr-comment", tag = "reports", operation_id = "get_pr_comment",
    params(("name" = String, Path),
        ("base_url" = Option<String>, Query, description = "the dashboard's address for the links, e.g. https://caldera.example (default: http:// and the request's Host)")),
    responses((status = 200, description = "the comment", content_type = "text/markdown"),
        (status = 400, description = "base_url is not an http(s) URL", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn comment(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _caller: Reader,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(key) = query.keys().find(|k| k.as_str() != "base_url") {
        return Err(ApiError::bad_request(
            key.clone(),
            format!("unknown query parameter {key:?}; the only one is base_url"),
        ));
    }
    let base = base_url(query.get("base_url").map(String::as_str), &headers)
        .map_err(|m| ApiError::bad_request("base_url", m))?;
    let e = caldera_db::experiments::get(&state.pool, &name).await?;
    let snap = dash.cache.get(&state.pool, e.id).await?;
    let text = markdown(&e, &snap, &base);
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/markdown; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(
            base_url(Some("https://c.example/"), &h).unwrap(),
            "https://c.example"
        );
        assert_eq!(
            base_url(Some("http://10.0.0.1:8080/caldera"), &h).unwrap(),
            "http://10.0.0.1:8080/caldera"
        );
        for bad in [
            "ftp://x",
            "https://",
            "c.example",
            "https://a b",
            "https://x/)](javascript:1)",
        ] {
            assert!(base_url(Some(bad), &h).is_err(), "{bad}");
        }
        assert_eq!(base_url(None, &h).unwrap(), "http://localhost");
        h.insert(HOST, HeaderValue::from_static("127.0.0.1:9000"));
        assert_eq!(base_url(None, &h).unwrap(), "http://127.0.0.1:9000");
        h.insert(HOST, HeaderValue::from_static("evil\"host"));
        assert_eq!(base_url(None, &h).unwrap(), "http://localhost");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(None, &h).unwrap(), "https://localhost");
    }
}
