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
    /// The result cache's maximum age (`30d`, `12h`, `90min`): when an experiment starts, a side
    /// whose fingerprint has a trustworthy result younger than this is settled from it without
    /// running. `0` turns the cache off.
    #[arg(long, env = "CALDERA_RESULT_CACHE_MAX_AGE", default_value = "30d", value_parser = parse_max_age)]
    pub result_cache_max_age: Duration,
    /// The registry's live index (cargo's sparse protocol over HTTP; a mirror's URL works too).
    /// When an experiment or a crate list is created, every registry crate it names is looked up:
    /// an unknown crate or version is refused, and in an experiment a name without a version is
    /// pinned to its newest version. `none` turns lookups off (an air-gapped master): then a name
    /// needs a version, or a listing (--registry-dump / --registry-index).
    #[arg(
        long,
        env = "CALDERA_REGISTRY_URL",
        value_name = "URL|none",
        default_value = caldera_master::sparse::DEFAULT_URL
    )]
    pub registry_url: String,
    /// The registry's database dump (a directory with crates.csv and versions.csv, and
    /// crate_downloads.csv and dependencies.csv when present), for `top:N`, `random:N`, `all` and
    /// `rdeps:NAME` (and unversioned crate names with --registry-url none).
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
    pub tls: TlsArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// TLS of both ports (docs/operator-guide.md, "TLS").
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Certificate chain (PEM, the master's own certificate first) served on both ports: the
    /// HTTP API becomes https:// and workers connect with TLS. Read again when the file changes
    /// and on SIGHUP. `caldera cert` makes a private CA and a certificate for a test fleet.
    #[arg(
        long,
        env = "CALDERA_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CALDERA_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes, in seconds (SIGHUP reloads at once).
    #[arg(long, env = "CALDERA_TLS_RELOAD_SECS", default_value_t = 5)]
    pub tls_reload_secs: u64,
    /// Serve plain TCP without --tls-cert on an address that is not loopback: API and worker
    /// tokens then cross the network in clear text. Without a certificate the master otherwise
    /// only listens on loopback addresses.
    #[arg(long, env = "CALDERA_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    pub insecure_plaintext: bool,
}

pub async fn run(args: MasterArgs) -> anyhow::Result<()> {
    // first: a master that may not serve is refused before it touches anything
    let tls = server_tls(&args)?;
    if let Some(tls) = &tls {
        reload_on_hangup(tls.clone())?;
    }
    let pool = args.db.connect().await?;
    if !args.no_migrate {
        caldera_db::migrate(&pool)
            .await
            .context("applying migrations")?;
    }
    let registry = load_registry(&args).await?;
    let index = live_index(&args.registry_url)?;
    caldera_db::workers::disconnect_all(&pool).await?;
    let scheduler = scheduler_config(&args)?;
    let store =
        caldera_storage::open(&args.storage.to_config()?).context("opening object storage")?;
    tracing::info!(store = store.describe(), "object storage");
    let master = caldera_master::Master::start(caldera_master::MasterConfig {
        registry: registry.map(Arc::new),
        index,
        scheduler,
        dashboard: caldera_master::dashboard::DashboardConfig {
            auth: args.dashboard_auth,
            ..Default::default()
        },
        http: args.listen,
        grpc: args.grpc_listen,
        tls: tls.clone(),
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

/// The certificate of --tls-cert/--tls-key; `None` for plain TCP, which needs loopback addresses
/// or --insecure-plaintext.
fn server_tls(args: &MasterArgs) -> anyhow::Result<Option<Arc<caldera_master::ServerTls>>> {
    let tls = &args.tls;
    if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
        let loaded = caldera_master::ServerTls::load(cert, key)
            .context("--tls-cert/--tls-key")?
            .with_poll(Duration::from_secs(tls.tls_reload_secs.max(1)));
        tracing::info!(cert = %cert.display(), "TLS on both ports");
        return Ok(Some(Arc::new(loaded)));
    }
    let exposed: Vec<String> = [args.listen, args.grpc_listen]
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(ToString::to_string)
        .collect();
    if exposed.is_empty() {
        tracing::info!("plain TCP on loopback only (no --tls-cert)");
    } else if tls.insecure_plaintext {
        tracing::warn!(
            addresses = exposed.join(" "),
            "serving plain TCP beyond loopback (--insecure-plaintext): tokens cross the network in clear text"
        );
    } else {
        anyhow::bail!(
            "{} is not a loopback address and there is no certificate: pass --tls-cert and \
             --tls-key (`caldera cert` makes them for a test fleet), or --insecure-plaintext to \
             send tokens in clear text",
            exposed.join(" and ")
        );
    }
    Ok(None)
}

/// From now on, every SIGHUP reads the certificate files again (the handler is in place when this
/// returns, so a SIGHUP no longer ends the process).
fn reload_on_hangup(tls: Arc<caldera_master::ServerTls>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(
                    cert = %tls.cert_path().display(),
                    "SIGHUP: TLS certificate reloaded"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "SIGHUP: the certificate does not load; still serving the previous one"
                ),
            }
        }
    });
    Ok(())
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

/// The live index of --registry-url, or `None` for `none`.
fn live_index(url: &str) -> anyhow::Result<Option<Arc<caldera_master::sparse::SparseIndex>>> {
    if url == "none" {
        tracing::info!("no live registry index (--registry-url none)");
        return Ok(None);
    }
    let index = caldera_master::sparse::SparseIndex::new(url)
        .map_err(anyhow::Error::msg)
        .context("--registry-url")?;
    tracing::info!(url = index.url(), "live registry index");
    Ok(Some(Arc::new(index)))
}

/// The scheduler's settings from the command line, refused when leases would expire between
/// heartbeats.
fn scheduler_config(args: &MasterArgs) -> anyhow::Result<SchedulerConfig> {
    let config = SchedulerConfig {
        lease: Duration::from_secs(args.lease_secs.max(1)),
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(10)),
        max_attempts: args.max_attempts.max(1),
        reap_interval: Duration::from_millis(args.reap_interval_ms.max(10)),
        result_cache_max_age: args.result_cache_max_age,
        ..Default::default()
    };
    anyhow::ensure!(
        config.heartbeat_interval * 2 < config.lease,
        "--heartbeat-ms must be less than half of --lease-secs, or leases expire between heartbeats"
    );
    Ok(config)
}

/// `--result-cache-max-age`: a human duration (`30d`, `12h 30m`) or `0`.
fn parse_max_age(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" => Ok(Duration::ZERO),
        t => humantime::parse_duration(t)
            .map_err(|e| format!("{s:?} is not a duration like 30d, 12h or 0: {e}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_cache_max_age_is_a_human_duration() {
        assert_eq!(parse_max_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_max_age("12h 30m"), Ok(Duration::from_secs(45_000)));
        assert_eq!(parse_max_age("0"), Ok(Duration::ZERO));
        let err = parse_max_age("forever").unwrap_err();
        assert!(
            err.starts_with(r#""forever" is not a duration like 30d, 12h or 0: "#),
            "{err}"
        );
        assert!(parse_max_age("30").is_err(), "a unit is needed");
    }
}
