//! The dashboard's pages, one module per page: the experiments (`home`), an experiment with its
//! filters, a crate of an experiment, and the farm (workers and queue).

mod diff;
mod experiment;
mod farm;
mod filters;
mod history;
mod home;
mod krate;
mod lists;
mod pr;

use axum::extract::{Path, State};

pub use diff::diff;
pub use experiment::experiment;
pub use farm::{queue, workers};
pub use home::home;
pub use krate::krate;
pub use pr::pr_comment;

use super::{PageError, Viewer};
use crate::AppState;

/// A report file, for the dashboard's download links (same as the API's, under the dashboard's
/// access rule).
pub async fn report_file(
    State(state): State<AppState>,
    _viewer: Viewer,
    Path((name, file)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, PageError> {
    let mut response = crate::api::report::stream_file(&state, &name, &file, &headers)
        .await
        .map_err(|e| PageError {
            status: e.status,
            message: e.message,
        })?;
    response.headers_mut().insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(crate::edge::REPORT_CSP),
    );
    Ok(response)
}
