//! `/experiments/{name}/pr-comment`: the pull-request comment of an experiment
//! ([`crate::api::pr`]) in a text box with a copy button, and the API call and CLI that give the
//! same text.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use caldera_db::experiments;
use maud::{Markup, html};

use crate::AppState;
use crate::dashboard::views::{self, experiment_href, path_encode};
use crate::dashboard::{Dashboard, PageError, Viewer};

pub async fn pr_comment(
    State(state): State<AppState>,
    Extension(dash): Extension<Arc<Dashboard>>,
    _viewer: Viewer,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let e = experiments::get(&state.pool, &name).await?;
    let base = crate::api::pr::base_url(None, &headers).map_err(PageError::bad_request)?;
    let snap = dash.cache.get(&state.pool, e.id).await?;
    let text = crate::api::pr::markdown(&e, &snap, &base);
    let api = format!("/api/v1/experiments/{}/pr-comment", path_encode(&e.name));
    let body = html! {
        p.small { a href=(experiment_href(&e.name)) { "← experiment " (e.name) } }
        h1 { "Pull-request comment for " code { (e.name) } }
        p { "A Markdown summary sized for a GitHub comment (" (text.chars().count()) " of at most 65,536 characters): the counts, the regressions by root cause with links to their logs and log diffs, the fixed crates and the commands that retry the rest. Its links start with " code { (base) } "." }
        p {
            button type="button" data-copy="pr-comment" hidden { "Copy to the clipboard" }
            " " span.small data-copy-status aria-live="polite" {}
        }
        label for="pr-comment" { "The comment" }
        textarea.pr #pr-comment readonly { (text) }
        p.small { "The same text from the API: " code { "GET " (api) "?base_url=https://your-dashboard" } " (any reading token)." }
    };
    Ok(views::layout(
        &format!("Pull-request comment for {}", e.name),
        Some("experiments"),
        body,
    ))
}
