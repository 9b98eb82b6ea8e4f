//! Starting the master. [`Master::start`] is the one way to do it: it binds both ports, starts the
//! scheduler, and serves the HTTP API (with the dashboard) and the worker service (gRPC) until it
//! is stopped. `caldera master`, `caldera local` and the tests all start a master through it, so
//! they run the same thing.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use caldera_core::registry::RegistryListing;
use caldera_db::PgPool;
use caldera_storage::ObjectStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dashboard::DashboardConfig;
use crate::scheduler::{Scheduler, SchedulerConfig, SystemClock};
use crate::{AppState, export, metrics, router_with};

/// What a master is made of and where it listens.
#[derive(Clone)]
pub struct MasterConfig {
    pub pool: PgPool,
    /// Object storage holding logs, lockfiles and report bundles (workers write, the master reads).
    pub store: Arc<dyn ObjectStore>,
    /// A listing of the whole registry, for unversioned names, `top:N`, `random:N` and `all`.
    pub registry: Option<Arc<RegistryListing>>,
    pub scheduler: SchedulerConfig,
    pub dashboard: DashboardConfig,
    /// Address of the HTTP API and the dashboard (port 0 picks a free port).
    pub http: SocketAddr,
    /// Address of the worker service (gRPC) that workers connect to (port 0 picks a free port).
    pub grpc: SocketAddr,
}

impl MasterConfig {
    /// Default settings, no registry listing, both services on free ports of 127.0.0.1.
    pub fn new(pool: PgPool, store: Arc<dyn ObjectStore>) -> MasterConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        MasterConfig {
            pool,
            store,
            registry: None,
            scheduler: SchedulerConfig::default(),
            dashboard: DashboardConfig::default(),
            http: any,
            grpc: any,
        }
    }
}

/// A running master: its addresses, its state, and the way to stop it. Dropping it does not stop
/// it; [`Master::stop`] does.
pub struct Master {
    http: SocketAddr,
    grpc: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Master {
    /// Binds both addresses, then starts the scheduler (with the system clock) and serves. The
    /// ports are bound first, so a port that is taken is an error before anything started (its
    /// kind is `AddrInUse`, for a caller that wants to try another).
    pub async fn start(config: MasterConfig) -> io::Result<Master> {
        let (http, grpc) = bind(config.http, config.grpc).await?;
        let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
        let shutdown = CancellationToken::new();
        let scheduler = Scheduler::start(
            config.pool.clone(),
            config.scheduler,
            Arc::new(SystemClock),
            Arc::new(metrics::Metrics::default()),
            shutdown.clone(),
        );
        let state = AppState {
            pool: config.pool,
            scheduler,
            registry: config.registry,
            store: config.store,
        };
        export::install_completion_hook(state.pool.clone(), state.store.clone(), &state.scheduler);
        let task = tokio::spawn(run_servers(
            state.clone(),
            config.dashboard,
            http,
            grpc,
            shutdown.clone(),
        ));
        Ok(Master {
            http: http_addr,
            grpc: grpc_addr,
            state,
            shutdown,
            task,
        })
    }

    /// The address the HTTP API and the dashboard listen on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The address the worker service (gRPC) listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The HTTP API's base URL, `http://ADDR` (the API is under `/api/v1`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The URL workers connect to, `http://ADDR`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The state the handlers share (the database, the scheduler, storage).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The running scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.state.scheduler
    }

    /// Cancelling this token stops the master (both servers and the scheduler), e.g. on a signal;
    /// [`Master::wait`] then returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the master is stopped (see [`Master::shutdown_token`]); the servers' error,
    /// if one of them failed.
    pub async fn wait(self) -> io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("master task: {e}"))),
        }
    }

    /// Stops the master and waits until both servers have closed.
    pub async fn stop(self) -> io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Bind both listeners (port 0 picks a free port).
async fn bind(http: SocketAddr, grpc: SocketAddr) -> io::Result<(TcpListener, TcpListener)> {
    Ok((
        TcpListener::bind(http).await?,
        TcpListener::bind(grpc).await?,
    ))
}

/// Serves both until `shutdown` is cancelled; when either stops, the other is told to stop too.
async fn run_servers(
    state: AppState,
    dashboard: DashboardConfig,
    http: TcpListener,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    tracing::info!(addr = %http.local_addr()?, "master HTTP API listening");
    tracing::info!(addr = %grpc.local_addr()?, "worker service (gRPC) listening");
    let grpc_task = tokio::spawn(serve_grpc(state.scheduler.clone(), grpc, shutdown.clone()));
    let http_shutdown = shutdown.clone();
    axum::serve(http, router_with(state, dashboard))
        .with_graceful_shutdown(http_shutdown.cancelled_owned())
        .await?;
    shutdown.cancel();
    match grpc_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io::Error::other(format!("gRPC server: {e}"))),
        Err(e) => Err(io::Error::other(format!("gRPC server task: {e}"))),
    }
}

/// The worker service on `grpc` until `shutdown` is cancelled.
async fn serve_grpc(
    scheduler: Scheduler,
    grpc: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(scheduler.service())
        .serve_with_incoming_shutdown(
            // No Nagle: an assignment or an acknowledgement is a small write that must leave
            // at once. With Nagle it waits for the ACK of the previous one, which the worker's
            // kernel delays by up to 40 ms (measured: claim→worker p50 40 ms → see
            // docs/benchmarks.md). The worker sets the same on its side.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                |conn| conn.and_then(|c| c.set_nodelay(true).map(|()| c)),
            ),
            shutdown.cancelled_owned(),
        )
        .await
}
