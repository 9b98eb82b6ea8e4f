//! The caldera master: HTTP API (axum) over Postgres.
//!
//! The master never runs untrusted code and never depends on the sandbox. It is the only
//! component that talks to Postgres.

pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod metrics;
pub mod resolve;
pub mod scheduler;
pub mod triage;

use std::net::SocketAddr;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use caldera_db::PgPool;
use serde::Serialize;
use tower_http::trace::TraceLayer;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub scheduler: scheduler::Scheduler,
    /// A listing of the whole registry, for unversioned names, `top:N`, `random:N` and `all`.
    pub registry: Option<std::sync::Arc<caldera_core::registry::RegistryListing>>,
    /// Object storage holding logs, lockfiles and report bundles (workers write, the master reads).
    pub store: std::sync::Arc<dyn caldera_storage::ObjectStore>,
}

impl AppState {
    /// State with a running scheduler using the system clock and default settings.
    pub fn new(
        pool: PgPool,
        store: std::sync::Arc<dyn caldera_storage::ObjectStore>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> AppState {
        let scheduler = scheduler::Scheduler::start(
            pool.clone(),
            scheduler::SchedulerConfig::default(),
            std::sync::Arc::new(scheduler::SystemClock),
            std::sync::Arc::new(metrics::Metrics::default()),
            shutdown,
        );
        AppState {
            pool,
            scheduler,
            registry: None,
            store,
        }
    }
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
#[utoipa::path(get, path = "/healthz", tag = "health",
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
            "text/plain; version=0.0.4",
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
        );
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics_text))
        .nest("/api/v1", v1)
        .merge(dashboard::routes(dashboard::Dashboard::new(dashboard)))
        .fallback(fallback)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serve the HTTP API on `http` and the worker service (gRPC) on `grpc` until `shutdown` is cancelled.
pub async fn serve(
    state: AppState,
    http: tokio::net::TcpListener,
    grpc: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    serve_with(
        state,
        dashboard::DashboardConfig::default(),
        http,
        grpc,
        shutdown,
    )
    .await
}

/// [`serve`] with dashboard settings. Completed experiments get their report exported.
pub async fn serve_with(
    state: AppState,
    dashboard: dashboard::DashboardConfig,
    http: tokio::net::TcpListener,
    grpc: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    export::install_completion_hook(state.pool.clone(), state.store.clone(), &state.scheduler);
    tracing::info!(addr = %http.local_addr()?, "master HTTP API listening");
    tracing::info!(addr = %grpc.local_addr()?, "worker service (gRPC) listening");
    let service = state.scheduler.service();
    let grpc_shutdown = shutdown.clone();
    let grpc_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming_shutdown(
                // No Nagle: an assignment or an acknowledgement is a small write that must leave
                // at once. With Nagle it waits for the ACK of the previous one, which the worker's
                // kernel delays by up to 40 ms (measured: claim→worker p50 40 ms → see
                // docs/benchmarks.md). The worker sets the same on its side.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc),
                    |conn| conn.and_then(|c| c.set_nodelay(true).map(|()| c)),
                ),
                grpc_shutdown.cancelled_owned(),
            )
            .await
    });
    let http_shutdown = shutdown.clone();
    axum::serve(http, router_with(state, dashboard))
        .with_graceful_shutdown(http_shutdown.cancelled_owned())
        .await?;
    shutdown.cancel();
    match grpc_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(std::io::Error::other(format!("gRPC server: {e}"))),
        Err(e) => Err(std::io::Error::other(format!("gRPC server task: {e}"))),
    }
}

/// Bind both listeners (port 0 picks a free port).
pub async fn bind(
    http: SocketAddr,
    grpc: SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    Ok((
        tokio::net::TcpListener::bind(http).await?,
        tokio::net::TcpListener::bind(grpc).await?,
    ))
}
