//! `caldera local`: the whole farm on one machine with embedded defaults — a private Postgres under
//! the state directory, local-disk object storage, the master and one worker in this process — running
//! one experiment and printing its report.

mod drive;
mod report;
mod spec;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use caldera_db::PgPool;
use caldera_worker::docker::DockerExecutor;
use clap::Args;

use super::worker::ExecutorArgs;

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Run the demo experiment: a dozen small registry crates plus fixture crates showing a
    /// regression, a fix and a spurious failure (stable vs nightly).
    #[arg(long, env = "CALDERA_DEMO")]
    pub demo: bool,
    /// With --demo: only this many registry crates (a quick smoke test).
    #[arg(long, env = "CALDERA_DEMO_CRATES")]
    pub demo_crates: Option<usize>,
    /// Crates: a comma-separated list of `name@version`, `git:URL#rev`, `path:/dir` (selections that
    /// need a registry listing — `top:N`, `all`, names without a version — need a full master).
    #[arg(long, env = "CALDERA_CRATES", required_unless_present = "demo")]
    pub crates: Option<String>,
    /// Baseline toolchain (compact form, e.g. `stable` or `stable+rustflags=-Dwarnings`).
    #[arg(long, env = "CALDERA_START", default_value = "stable")]
    pub start: String,
    /// Candidate toolchain [default: nightly; with --demo on a machine without a nightly toolchain,
    /// `stable+rustflags=--cfg=caldera_nightly`, which the demo's fixtures react to as they do to
    /// nightly].
    #[arg(long, env = "CALDERA_END")]
    pub end: Option<String>,
    /// build-and-test, build-only, check-only, clippy, rustdoc or miri.
    #[arg(long, env = "CALDERA_MODE", default_value = "build-and-test")]
    pub mode: String,
    /// The experiment's name; re-running with the same name resumes it.
    #[arg(long, env = "CALDERA_EXPERIMENT_NAME")]
    pub name: Option<String>,
    /// Run each regressed or fixed crate again this many times (0–5) to confirm it [default: the
    /// experiment default, 2; 0 turns confirmation off]. With one local worker, the re-runs run
    /// on it, from fresh target dirs.
    #[arg(long, env = "CALDERA_CONFIRM")]
    pub confirm: Option<u32>,
    /// A calibration (A/A) experiment: --start and --end may be the same toolchain, to measure how
    /// often the farm itself disagrees with itself.
    #[arg(long, env = "CALDERA_CALIBRATION")]
    pub calibration: bool,
    /// Which dependency versions crates build with: `shipped` (a crate's own Cargo.lock when it
    /// has one) or `fresh` (always resolved anew: the newest its requirements allow) [default:
    /// shipped].
    #[arg(long, env = "CALDERA_LOCKFILE", value_parser = ["shipped", "fresh"])]
    pub lockfile: Option<String>,
    /// Where the private Postgres, the objects and the worker's files live (kept between runs).
    #[arg(long, env = "CALDERA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the dashboard and HTTP API.
    #[arg(long, env = "CALDERA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Keep the dashboard up after the experiment finishes (until Ctrl-C).
    #[arg(long, env = "CALDERA_SERVE")]
    pub serve: bool,
    /// Directory of the fixture crates used by --demo.
    #[arg(long, env = "CALDERA_FIXTURES_DIR")]
    pub fixtures_dir: Option<PathBuf>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("caldera local: {msg}");
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let state = state::state_dir(args.state_dir.as_deref())?;
    // Check the sandbox first: without Docker and the image nothing can run, and the error says how to fix it.
    let store = state::open_store(&state)?;
    let executor = args
        .executor
        .build(&state.join("worker"), store.clone())
        .await?;

    let end = spec::end_toolchain(&args, &args.executor.capabilities())?;

    let (pg, pool) = state::start_postgres(&state).await?;
    let (admin, worker_token) = state::local_tokens(&pool, &state).await?;
    state::forget_previous_run(&pool).await?;

    let master = start_master(&args, pool.clone(), store.clone()).await?;
    let base = master.http_url();
    say(format_args!(
        "dashboard {base}/  (API token for this state directory: {})",
        state.join("tokens.json").display()
    ));
    let worker = LocalWorker::spawn(&args, &master.grpc_url(), &worker_token, &state, executor);
    wait_for_worker(&master).await;

    let finished = run_experiment(&args, &end, &pool, &base, &admin, &*store, &state).await;
    worker.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), master.stop()).await;
    pool.close().await;
    pg.stop().await;
    finished
}

/// Waits (at most [`WORKER_WAIT`]) until the worker has said Hello: the result cache and the
/// cost estimate are computed at start from what the connected workers advertise, and an
/// experiment started before its worker connected would run every cached side again.
async fn wait_for_worker(master: &caldera_master::Master) {
    let t0 = std::time::Instant::now();
    while master.scheduler().advertised().is_empty() {
        if t0.elapsed() > WORKER_WAIT {
            say(format_args!(
                "the worker has not connected after {WORKER_WAIT:?}; starting without the result cache"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const WORKER_WAIT: Duration = Duration::from_secs(30);

/// The master on --listen, or on a free port when that one is taken; the worker service on a
/// free port.
async fn start_master(
    args: &LocalArgs,
    pool: PgPool,
    store: Arc<dyn caldera_storage::ObjectStore>,
) -> anyhow::Result<caldera_master::Master> {
    let config = caldera_master::MasterConfig {
        http: args.listen,
        ..caldera_master::MasterConfig::new(pool, store)
    };
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let fallback = caldera_master::MasterConfig {
        http: any,
        ..config.clone()
    };
    match caldera_master::Master::start(config).await {
        Ok(master) => Ok(master),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            say(format_args!(
                "{} is in use; taking a free port",
                args.listen
            ));
            Ok(caldera_master::Master::start(fallback).await?)
        }
        Err(e) => Err(e).context("binding the master's ports"),
    }
}

/// Runs the experiment to its end and prints its report, then with --serve keeps the dashboard
/// up until Ctrl-C. Ctrl-C or SIGTERM before the end stops the run cleanly; the next run with
/// this state directory resumes it.
async fn run_experiment(
    args: &LocalArgs,
    end: &str,
    pool: &PgPool,
    base: &str,
    admin: &str,
    store: &dyn caldera_storage::ObjectStore,
    state: &Path,
) -> anyhow::Result<()> {
    let name = tokio::select! {
        r = drive::drive(args, end, pool, base, admin) => r?,
        () = super::master::shutdown_signal() => anyhow::bail!(
            "interrupted before the experiment finished; its results so far are kept in {} — \
             run the same command again to resume it",
            state.display()
        ),
    };
    report::print_report(pool, &name, base, store, state).await?;
    if args.serve {
        say(format_args!(
            "serving the dashboard at {base}/ — Ctrl-C to stop"
        ));
        super::master::shutdown_signal().await;
    }
    Ok(())
}

/// The worker of this run, in this process, with the Docker executor.
struct LocalWorker {
    executor: Arc<DockerExecutor>,
    drain: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), caldera_worker::WorkerError>>,
}

impl LocalWorker {
    fn spawn(
        args: &LocalArgs,
        grpc_url: &str,
        token: &str,
        state: &Path,
        executor: Arc<DockerExecutor>,
    ) -> LocalWorker {
        let mut wconfig =
            caldera_worker::WorkerConfig::new(grpc_url, token, "local", state.join("worker/spool"));
        wconfig.slots = args.executor.slots();
        wconfig.capabilities = args.executor.capabilities();
        wconfig.toolchains = args.executor.toolchains();
        wconfig.environment = args.executor.environment();
        wconfig.drain_timeout = Duration::from_secs(5);
        let (drain, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(caldera_worker::run(wconfig, executor.clone(), async move {
            let _ = drain_rx.await;
        }));
        LocalWorker {
            executor,
            drain,
            task,
        }
    }

    /// Drains the worker, lets the result spool deliver what it holds, and stops the executor;
    /// each step has a time limit.
    async fn stop(self) {
        let _ = self.drain.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(30), self.executor.spool().wait_idle()).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.executor.shutdown()).await;
    }
}
