//! The caldera master: HTTP API (axum) over Postgres.
//!
//! The master never runs untrusted code and never depends on the sandbox. It is the only
//! component that talks to Postgres.

pub mod api;
pub mod auth;
pub mod cache;
pub mod dashboard;
pub mod edge;
pub mod error;
pub mod estimate;
pub mod export;
pub mod metrics;
pub mod resolve;
pub mod scheduler;
mod server;
pub mod sparse;
pub mod tls;
pub mod triage;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use caldera_db::PgPool;
use serde::Serialize;
use tower_http::trace::TraceLayer;

pub use server::{Master, MasterConfig};
pub use tls::ServerTls;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub scheduler: scheduler::Scheduler,
    /// A listing of the whole registry, for `top:N`, `random:N`, `all` and `rdeps:NAME` (and
    /// unversioned names when there is no live index).
    pub registry: Option<std::sync::Arc<caldera_core::registry::RegistryListing>>,
    /// The live registry index, to check and pin crate names when they are given.
    pub index: Option<std::sync::Arc<sparse::SparseIndex>>,
    /// Object storage holding logs, lockfiles and report bundles (workers write, the master reads).
    pub store: std::sync::Arc<dyn caldera_storage::ObjectStore>,
}

/// Liveness and database reachability.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `degraded`
    pub status: &'static str,
    /// `ok` or the reason the database is unreachable
    pub database: String,
    pub version: &'static str,
}

/// Liveness: 200 when the database answers, 503 otherwise.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(State(state): State<AppState>) -> (axum::http::StatusCode, Json<Health>) {
    let version = env!("CARGO_PKG_VERSION");
    match caldera_db::ping(&state.pool).await {
        Ok(()) => (
            axum::http::StatusCode::OK,
            Json(Health {
                status: "ok",
                database: "ok".into(),
                version,
            }),
        ),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "degraded",
                database: e.to_string(),
                version,
            }),
        ),
    }
}

/// Prometheus metrics (text exposition). Queue depth per experiment is read from Postgres at scrape time.
async fn metrics_text(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let m = state.scheduler.metrics();
    if let Ok(progress) = caldera_db::jobs::progress(&state.pool).await {
        m.queue_depth.clear();
        for (experiment, p) in progress.into_iter().filter(|(_, p)| p.queued > 0) {
            m.queue_depth
                .get_or_create(&metrics::ExperimentLabel { experiment })
                .set(p.queued);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            // prometheus-client writes the OpenMetrics text format (`# EOF`, `_total` counters)
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(api::openapi::document())
}

async fn fallback() -> error::ApiError {
    error::ApiError::not_found("no such route; see /api/v1/openapi.json")
}

/// The HTTP application, with the dashboard open to anyone (see [`router_with`]).
pub fn router(state: AppState) -> Router {
    router_with(state, dashboard::DashboardConfig::default())
}

/// The HTTP application: the JSON API under `/api/v1`, `/healthz`, `/metrics`, and the dashboard
/// (HTML pages at `/`, `/experiments/…`, `/workers`, `/queue`).
pub fn router_with(state: AppState, dashboard: dashboard::DashboardConfig) -> Router {
    use api::{crate_lists, experiments, logs};
    use axum::routing::post;
    let dashboard = dashboard::Dashboard::new(dashboard);
    let v1 = Router::new()
        .route("/openapi.json", get(openapi_json))
        .route(
            "/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route(
            "/experiments/{name}",
            get(experiments::get)
                .patch(experiments::edit)
                .delete(experiments::delete),
        )
        .route("/experiments/{name}/estimate", get(api::estimate::get))
        .route("/experiments/{name}/start", post(experiments::start))
        .route("/experiments/{name}/pause", post(experiments::pause))
        .route("/experiments/{name}/resume", post(experiments::resume))
        .route("/experiments/{name}/abort", post(experiments::abort))
        .route(
            "/experiments/{name}/confirmations",
            get(experiments::confirmations),
        )
        .route(
            "/experiments/{name}/flakes",
            get(api::flakes::of_experiment),
        )
        .route("/flakes", get(api::flakes::of_crate))
        .route(
            "/experiments/{name}/report",
            get(api::report::list).post(api::report::regenerate),
        )
        .route("/experiments/{name}/report/{file}", get(api::report::file))
        .route("/experiments/{name}/pr-comment", get(api::pr::comment))
        .route(
            "/experiments/{name}/results/{crate}/{toolchain}/log",
            get(logs::get_log),
        )
        .route("/experiments/{name}/triage", get(api::triage::experiment))
        .route(
            "/experiments/{name}/triage/{crate}",
            axum::routing::put(api::triage::mark).delete(api::triage::unmark),
        )
        .route("/triage", get(api::triage::list))
        .route(
            "/crate-lists",
            get(crate_lists::list).post(crate_lists::create),
        )
        .route(
            "/crate-lists/{name}",
            get(crate_lists::get).delete(crate_lists::delete),
        )
        .route("/workers", get(api::farm::workers))
        .route("/queue", get(api::farm::queue))
        .route("/tokens", get(api::tokens::list))
        .route("/tokens/{id}", axum::routing::delete(api::tokens::revoke))
        .layer(axum::middleware::from_fn(edge::require_json))
        .layer(axum::extract::DefaultBodyLimit::max(edge::MAX_BODY_BYTES))
        // the pull-request comment reads the dashboard's cached reports
        .layer(axum::Extension(dashboard.clone()));
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics_text))
        .nest("/api/v1", v1)
        .merge(dashboard::routes(dashboard))
        .fallback(fallback)
        .layer(axum::middleware::from_fn(edge::json_errors))
        .layer(axum::middleware::from_fn(edge::refuse_nul))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
