use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use caldera_master::scheduler::SchedulerConfig;
use clap::Args;

use super::DbArgs;
use super::storage_args::StorageArgs;

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Address of the HTTP API (and dashboard, /metrics, /healthz).
    #[arg(long, env = "CALDERA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the worker service (gRPC) that workers connect to.
    #[arg(long, env = "CALDERA_GRPC_LISTEN", default_value = "127.0.0.1:9090")]
    pub grpc_listen: SocketAddr,
    /// Do not apply pending migrations at startup (run `caldera migrate` yourself).
    #[arg(long, env = "CALDERA_NO_MIGRATE")]
    pub no_migrate: bool,
    /// A lease lasts this many seconds unless renewed by a worker's heartbeat.
    #[arg(long, env = "CALDERA_LEASE_SECS", default_value_t = 120)]
    pub lease_secs: u64,
    /// Workers send heartbeats this often (milliseconds); keep it well under the lease.
    #[arg(long, env = "CALDERA_HEARTBEAT_MS", default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// Leases a job gets before it ends as `error`: a lease that expired, or one whose result had an
    /// infrastructure `error` (which is retried), uses one up.
    #[arg(long, env = "CALDERA_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i32,
    /// How often the reaper looks for expired leases (milliseconds).
    #[arg(long, env = "CALDERA_REAP_INTERVAL_MS", default_value_t = 5_000)]
    pub reap_interval_ms: u64,
    /// The registry's database dump (a directory with crates.csv and versions.csv), for
    /// unversioned crate names, `top:N`, `random:N` and `all`.
    #[arg(long, env = "CALDERA_REGISTRY_DUMP", conflicts_with = "registry_index")]
    pub registry_dump: Option<PathBuf>,
    /// A checkout of the registry index, instead of --registry-dump.
    #[arg(long, env = "CALDERA_REGISTRY_INDEX")]
    pub registry_index: Option<PathBuf>,
    /// Who may read the dashboard (HTML pages at /, /experiments/…, /workers, /queue; they only
    /// read): `open` (anyone who reaches --listen) or `token` (an API token of a reading role —
    /// viewer, operator or admin — as a bearer header or entered once at /login).
    #[arg(long, env = "CALDERA_DASHBOARD_AUTH", default_value = "open")]
    pub dashboard_auth: caldera_master::dashboard::DashboardAuth,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

pub async fn run(args: MasterArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    if !args.no_migrate {
        caldera_db::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let registry = load_registry(&args).await?;
    caldera_db::workers::disconnect_all(&pool).await?;
    let scheduler = scheduler_config(&args)?;
    let store =
        caldera_storage::open(&args.storage.to_config()).context("opening object storage")?;
    tracing::info!(store = store.describe(), "object storage");
    let master = caldera_master::Master::start(caldera_master::MasterConfig {
        registry: registry.map(Arc::new),
        scheduler,
        dashboard: caldera_master::dashboard::DashboardConfig {
            auth: args.dashboard_auth,
            ..Default::default()
        },
        http: args.listen,
        grpc: args.grpc_listen,
        ..caldera_master::MasterConfig::new(pool, store)
    })
    .await
    .with_context(|| format!("binding {} and {}", args.listen, args.grpc_listen))?;
    let signal = master.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    master.wait().await.context("serving")
}

/// The registry listing given by --registry-dump or --registry-index, if any.
async fn load_registry(
    args: &MasterArgs,
) -> anyhow::Result<Option<caldera_core::registry::RegistryListing>> {
    let registry = match (args.registry_dump.clone(), args.registry_index.clone()) {
        (Some(dir), _) => Some(
            tokio::task::spawn_blocking(move || caldera_master::resolve::load_db_dump(&dir))
                .await?
                .map_err(anyhow::Error::msg)?,
        ),
        (_, Some(dir)) => Some(
            tokio::task::spawn_blocking(move || caldera_master::resolve::load_index(&dir))
                .await?
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    if let Some(r) = &registry {
        tracing::info!(crates = r.len(), "registry listing loaded");
    }
    Ok(registry)
}

/// The scheduler's settings from the command line, refused when leases would expire between
/// heartbeats.
fn scheduler_config(args: &MasterArgs) -> anyhow::Result<SchedulerConfig> {
    let config = SchedulerConfig {
        lease: Duration::from_secs(args.lease_secs.max(1)),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(10)),
        max_attempts: args.max_attempts.max(1),
        reap_interval: Duration::from_millis(args.reap_interval_ms.max(10)),
        ..Default::default()
    };
    anyhow::ensure!(
        config.heartbeat_interval * 2 < config.lease,
        "--heartbeat-ms must be less than half of --lease-secs, or leases expire between heartbeats"
    );
    Ok(config)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}
