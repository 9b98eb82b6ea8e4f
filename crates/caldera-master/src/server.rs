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
use crate::sparse::SparseIndex;
use crate::tls::ServerTls;
use crate::{AppState, export, metrics, router_with};

/// What a master is made of and where it listens.
#[derive(Clone)]
pub struct MasterConfig {
    pub pool: PgPool,
    /// Object storage holding logs, lockfiles and report bundles (workers write, the master reads).
    pub store: Arc<dyn ObjectStore>,
    /// A listing of the whole registry, for `top:N`, `random:N`, `all` and `rdeps:NAME` (and
    /// unversioned names when there is no live index).
    pub registry: Option<Arc<RegistryListing>>,
    /// The live registry index (`--registry-url`): names are checked, and bare names pinned to
    /// their newest version, when an experiment or a crate list is created. `None` (the default
    /// here, and what tests use unless they start an index of their own) looks nothing up.
    pub index: Option<Arc<SparseIndex>>,
    pub scheduler: SchedulerConfig,
    pub dashboard: DashboardConfig,
    /// Address of the HTTP API and the dashboard (port 0 picks a free port).
    pub http: SocketAddr,
    /// Address of the worker service (gRPC) that workers connect to (port 0 picks a free port).
    pub grpc: SocketAddr,
    /// The certificate both ports serve (`https://`, and TLS for the workers), reloaded when its
    /// files change. `None` serves plain TCP: the caller decides whether that is allowed
    /// (`caldera master` only on loopback or with `--insecure-plaintext`).
    pub tls: Option<Arc<ServerTls>>,
}

impl MasterConfig {
    /// Default settings, no registry listing, no live index, both services on free ports of
    /// 127.0.0.1.
    pub fn new(pool: PgPool, store: Arc<dyn ObjectStore>) -> MasterConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        MasterConfig {
            pool,
            store,
            registry: None,
            index: None,
            scheduler: SchedulerConfig::default(),
            dashboard: DashboardConfig::default(),
            http: any,
            grpc: any,
            tls: None,
        }
    }
}

/// A running master: its addresses, its state, and the way to stop it. Dropping it does not stop
/// it; [`Master::stop`] does.
pub struct Master {
    http: SocketAddr,
    grpc: SocketAddr,
    tls: Option<Arc<ServerTls>>,
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
            index: config.index,
            store: config.store,
        };
        export::install_completion_hook(state.pool.clone(), state.store.clone(), &state.scheduler);
        let listeners = Listeners {
            http,
            grpc,
            tls: config.tls.clone(),
        };
        let task = tokio::spawn(run_servers(
            state.clone(),
            config.dashboard,
            listeners,
            shutdown.clone(),
        ));
        Ok(Master {
            http: http_addr,
            grpc: grpc_addr,
            tls: config.tls,
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

    /// The HTTP API's base URL, `http://ADDR` or `https://ADDR` (the API is under `/api/v1`).
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.http)
    }

    /// The URL workers connect to, `http://ADDR` or `https://ADDR`.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.grpc)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The certificate both ports serve, when they speak TLS ([`ServerTls::reload`] reads its
    /// files again).
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
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

/// The two bound ports and the certificate they serve, if any.
struct Listeners {
    http: TcpListener,
    grpc: TcpListener,
    tls: Option<Arc<ServerTls>>,
}

/// Serves both until `shutdown` is cancelled; when either stops, the other is told to stop too.
async fn run_servers(
    state: AppState,
    dashboard: DashboardConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let Listeners { http, grpc, tls } = listeners;
    let scheme = if tls.is_some() { "TLS" } else { "plain TCP" };
    tracing::info!(addr = %http.local_addr()?, scheme, "master HTTP API listening");
    tracing::info!(addr = %grpc.local_addr()?, scheme, "worker service (gRPC) listening");
    let service = state.scheduler.clone();
    let router = router_with(state, dashboard);
    let http_shutdown = shutdown.clone().cancelled_owned();
    let grpc_task;
    match tls {
        Some(tls) => {
            let incoming = tls.grpc_incoming(grpc).map_err(io::Error::other)?;
            let listener = tls.http_listener(http).map_err(io::Error::other)?;
            let router = router.layer(axum::middleware::map_request(mark_https));
            tls.clone().watch(shutdown.clone());
            grpc_task = tokio::spawn(serve_grpc(service, incoming, shutdown.clone()));
            axum::serve(listener, router)
                .with_graceful_shutdown(http_shutdown)
                .await?;
        }
        None => {
            grpc_task = tokio::spawn(serve_grpc(service, plain_incoming(grpc), shutdown.clone()));
            axum::serve(http, router)
                .with_graceful_shutdown(http_shutdown)
                .await?;
        }
    }
    shutdown.cancel();
    match grpc_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io::Error::other(format!("gRPC server: {e}"))),
        Err(e) => Err(io::Error::other(format!("gRPC server task: {e}"))),
    }
}

/// Requests that came over TLS say so, as a TLS-terminating proxy would (whatever the client
/// sent): links the master builds from the request's `Host` then start with `https://`.
async fn mark_https(mut request: axum::extract::Request) -> axum::extract::Request {
    request.headers_mut().insert(
        "x-forwarded-proto",
        axum::http::HeaderValue::from_static("https"),
    );
    request
}

/// The gRPC port's connections over plain TCP.
///
/// No Nagle (on TLS connections too): an assignment or an acknowledgement is a small write that
/// must leave at once. With Nagle it waits for the ACK of the previous one, which the worker's
/// kernel delays by up to 40 ms (measured: claim→worker p50 40 ms → see docs/benchmarks.md). The
/// worker sets the same on its side.
fn plain_incoming(
    grpc: TcpListener,
) -> impl futures::Stream<Item = io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc),
        |conn| conn.and_then(|c| c.set_nodelay(true).map(|()| c)),
    )
}

/// The worker service on the connections of `incoming` until `shutdown` is cancelled.
async fn serve_grpc<S, IO>(
    scheduler: Scheduler,
    incoming: S,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error>
where
    S: futures::Stream<Item = io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(scheduler.service())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
