//! The dashboard's pages, one module per page: the experiments (`home`), an experiment with its
//! filters, a crate of an experiment, and the farm (workers and queue).

mod experiment;
mod farm;
mod filters;
mod home;
mod krate;

use axum::extract::{Path, State};

pub use experiment::experiment;
pub use farm::{queue, workers};
pub use home::home;
pub use krate::krate;

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
    crate::api::report::stream_file(&state, &name, &file, &headers)
        .await
        .map_err(|e| PageError {
            status: e.status,
            message: e.message,
        })
}
