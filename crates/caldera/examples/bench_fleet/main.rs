//! `cargo xtask bench fleet`: one master under a fleet for a few minutes.
//!
//! The master is `caldera master`, a process of its own (its memory read from `/proc`), on a private
//! Postgres cluster with durable settings. The bench process runs the fleet: `--workers` workers of
//! `--slots` slots, each its own gRPC stream with the master's heartbeats and leases, whose fake
//! executor takes `--min-ms`..`--max-ms` per job (spread evenly, fixed per crate); and `--clients`
//! dashboard/API clients reading a page every `--think-ms`. One experiment of `--jobs` crates runs
//! to completion. Heartbeats come every `--heartbeat-ms`, leases last `--lease-secs` (1 s and 8 s
//! by default: the 1:8 ratio of the defaults, 15 s and 120 s, at 15 times the rate).
//!
//! It prints jobs/s against the fleet's capacity, the master's heartbeat lateness and handling
//! time (its `/metrics` histograms), leases that expired or were re-queued and results refused
//! (every worker lives throughout, so all must be 0), API latency per endpoint, and the master's
//! memory and CPU. It fails when a lease expired, a result was refused, a job was cancelled, a
//! request failed, or a result is missing.
//!
//! Usage: bench_fleet [--smoke] [--workers N] [--slots N] [--jobs N] [--min-ms N] [--max-ms N]
//! [--clients N] [--think-ms N] [--heartbeat-ms N] [--lease-secs N] [--reap-ms N]

mod clients;
#[path = "../common/mod.rs"]
mod common;
mod master;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use caldera_db::embedded::{ClusterOptions, PrivatePostgres};
use caldera_db::tokens::{self, Role};
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use caldera_worker::{Backoff, WorkerConfig};
use tokio_util::sync::CancellationToken;

use master::MasterProcess;

const EXPERIMENT: &str = "fleet";

/// The bench's knobs.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub slots: u32,
    pub jobs: usize,
    pub min_ms: u64,
    pub max_ms: u64,
    pub clients: usize,
    pub think_ms: u64,
    pub heartbeat_ms: u64,
    pub lease_secs: u64,
    pub reap_ms: u64,
}

impl Options {
    /// 200 workers × 2 slots on jobs of 0.5–3 s: about 230 jobs/s of capacity, so 40,000 jobs take
    /// about three minutes.
    fn full() -> Self {
        Options {
            workers: 200,
            slots: 2,
            jobs: 40_000,
            min_ms: 500,
            max_ms: 3_000,
            clients: 50,
            think_ms: 1_000,
            heartbeat_ms: 1_000,
            lease_secs: 8,
            reap_ms: 1_000,
        }
    }

    /// Seconds, on a debug build: the harness works, not the numbers.
    fn smoke() -> Self {
        Options {
            workers: 10,
            slots: 2,
            jobs: 150,
            min_ms: 20,
            max_ms: 100,
            clients: 5,
            think_ms: 100,
            heartbeat_ms: 200,
            lease_secs: 4,
            reap_ms: 200,
        }
    }

    fn parse(args: &[String]) -> Result<Self> {
        let mut o = if args.iter().any(|a| a == "--smoke") {
            Options::smoke()
        } else {
            Options::full()
        };
        let mut it = args.iter().filter(|a| *a != "--smoke");
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let n: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value:?}: not a number"))?;
            match flag.as_str() {
                "--workers" => o.workers = n as usize,
                "--slots" => o.slots = n as u32,
                "--jobs" => o.jobs = n as usize,
                "--min-ms" => o.min_ms = n,
                "--max-ms" => o.max_ms = n,
                "--clients" => o.clients = n as usize,
                "--think-ms" => o.think_ms = n,
                "--heartbeat-ms" => o.heartbeat_ms = n,
                "--lease-secs" => o.lease_secs = n,
                "--reap-ms" => o.reap_ms = n,
                other => bail!("unknown option {other:?}; see the usage in bench_fleet/main.rs"),
            }
        }
        ensure!(o.workers > 0 && o.slots > 0 && o.jobs > 0, "nothing to run");
        ensure!(o.min_ms <= o.max_ms, "--min-ms is over --max-ms");
        Ok(o)
    }

    /// Jobs per second the fleet could do if it were never idle: slots over the mean job time.
    fn capacity(&self) -> f64 {
        let mean = (self.min_ms + self.max_ms) as f64 / 2.0 / 1000.0;
        (self.workers as f64 * self.slots as f64) / mean.max(0.001)
    }
}

/// The crate names of the experiment.
fn crate_name(i: usize) -> String {
    format!("fleet{i:07}")
}

/// A job time for crate `i`, spread evenly over `min..=max` by a fixed hash (splitmix64).
fn job_time(i: usize, o: &Options) -> Duration {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Duration::from_millis(o.min_ms + z % (o.max_ms - o.min_ms + 1))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Options::parse(&args)?;
    let bin = common::caldera_binary()?;
    let work = std::env::var_os("BENCH_WORK_DIR").map(PathBuf::from);
    let dir = match &work {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            tempfile::tempdir_in(w)?
        }
        None => tempfile::tempdir()?,
    };
    let pg = PrivatePostgres::start(ClusterOptions {
        dir: dir.path().join("pg"),
        port: 0,
        ephemeral: true,
        unsafe_fast: false,
        statement_stats: false,
    })
    .await?;
    let admin = caldera_db::connect(&pg.url("postgres"), 1).await?;
    sqlx::query("CREATE DATABASE fleet").execute(&admin).await?;
    let pool = caldera_db::connect(&pg.url("fleet"), 4).await?;
    caldera_db::migrate(&pool).await?;
    let master = MasterProcess::spawn(&bin, &pg.url("fleet"), dir.path(), &o).await?;
    let outcome = run(&o, &pool, &master, dir.path()).await;
    if outcome.is_err() {
        eprintln!("the master's log ends:\n{}", master.log_tail());
    }
    master.stop().await;
    pg.stop().await;
    outcome
}

/// Everything between a started master and its stop.
async fn run(
    o: &Options,
    pool: &caldera_db::PgPool,
    master: &MasterProcess,
    dir: &std::path::Path,
) -> Result<()> {
    let operator = tokens::create(pool, "bench", Role::Operator).await?.1;
    let worker_token = tokens::create(pool, "fleet", Role::Worker).await?.1;
    let names: Vec<String> = (0..o.jobs).map(crate_name).collect();
    create_experiment(&master.http, &operator, &names).await?;

    let fake = FakeExecutor::new();
    for (i, name) in names.iter().enumerate() {
        fake.set_crate(name, FakeBehaviour::default().with_delay(job_time(i, o)));
    }
    let fleet = CancellationToken::new();
    start_workers(o, &master.grpc, &worker_token, &fake, dir, &fleet);
    wait_connected(pool, o.workers).await?;

    let stop = CancellationToken::new();
    let memory = master::sample_memory(master.pid(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = *memory.lock().unwrap();

    let before = master::Metrics::fetch(&master.http).await?;
    let cpu0 = master::cpu_secs(master.pid());
    let t0 = Instant::now();
    action(&master.http, &operator, "start").await?;
    // the crates are in the experiment from its start on
    let latencies = clients::Clients {
        http: master.http.clone(),
        token: operator.clone(),
        experiment: EXPERIMENT.into(),
        crates: names.iter().map(|n| format!("reg:{n}@1.0.0")).collect(),
        think: Duration::from_millis(o.think_ms),
    }
    .start(o.clients, stop.clone());
    // ten times what the fleet needs at full speed, and two minutes
    let limit = Duration::from_secs_f64(o.jobs as f64 / o.capacity() * 10.0 + 120.0);
    let timeline = wait_completed(pool, o.jobs, t0, limit).await?;
    let elapsed = t0.elapsed();
    let cpu = master::cpu_secs(master.pid()) - cpu0;
    stop.cancel();
    let metrics = master::Metrics::fetch(&master.http).await?.since(&before);
    fleet.cancel();
    let peak = *memory.lock().unwrap();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());

    let figures = report::Figures {
        o,
        elapsed,
        timeline,
        metrics,
        master_cpu_secs: cpu,
        idle,
        memory: peak,
        latencies,
        fake: fake.stats(),
        retried_jobs: sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempt > 1")
            .fetch_one(pool)
            .await?,
        results: sqlx::query_scalar("SELECT count(*) FROM results")
            .fetch_one(pool)
            .await?,
        log_problems: master.log_problems(),
    };
    figures.print();
    figures.check()
}

async fn create_experiment(http: &str, token: &str, names: &[String]) -> Result<()> {
    let crates: Vec<String> = names.iter().map(|n| format!("{n}@1.0.0")).collect();
    let body = serde_json::json!({
        "name": EXPERIMENT, "start": "stable", "end": "nightly",
        "crates": {"kind": "list", "crates": crates},
    });
    let r = reqwest::Client::new()
        .post(format!("{http}/api/v1/experiments"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    ensure!(r.status().is_success(), "create: {}", r.text().await?);
    Ok(())
}

async fn action(http: &str, token: &str, action: &str) -> Result<()> {
    let r = reqwest::Client::new()
        .post(format!("{http}/api/v1/experiments/{EXPERIMENT}/{action}"))
        .bearer_auth(token)
        .send()
        .await?;
    ensure!(r.status().is_success(), "{action}: {}", r.text().await?);
    Ok(())
}

/// The fleet: one worker task per worker, each with its own gRPC stream and spool; they drain
/// when `fleet` fires.
fn start_workers(
    o: &Options,
    grpc: &str,
    token: &str,
    fake: &FakeExecutor,
    dir: &std::path::Path,
    fleet: &CancellationToken,
) {
    for i in 0..o.workers {
        let mut c = WorkerConfig::new(
            grpc,
            token,
            format!("fleet{i:03}"),
            dir.join(format!("spool/{i}")),
        );
        c.slots = o.slots;
        c.reconnect = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.5,
        };
        c.drain_timeout = Duration::from_secs(5);
        c.drain_ack_timeout = Duration::from_secs(5);
        let exec = Arc::new(fake.clone());
        let drain = fleet.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = caldera_worker::run(c, exec, drain).await {
                eprintln!("worker {i} stopped: {e}");
            }
        });
    }
}

async fn wait_connected(pool: &caldera_db::PgPool, workers: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let connected = caldera_db::workers::list(pool)
            .await?
            .iter()
            .filter(|w| w.connected)
            .count();
        if connected >= workers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {connected} of {workers} workers connected within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the experiment completes; returns (seconds since `t0`, results so far) once a
/// second, for the steady rate.
async fn wait_completed(
    pool: &caldera_db::PgPool,
    jobs: usize,
    t0: Instant,
    limit: Duration,
) -> Result<Vec<(f64, i64)>> {
    let mut timeline = Vec::new();
    let mut said = Instant::now();
    loop {
        let (status, results): (String, i64) = sqlx::query_as(
            "SELECT status, (SELECT count(*) FROM results) FROM experiments WHERE name = $1",
        )
        .bind(EXPERIMENT)
        .fetch_one(pool)
        .await?;
        let at = t0.elapsed().as_secs_f64();
        timeline.push((at, results / 2));
        if status == "completed" {
            return Ok(timeline);
        }
        if t0.elapsed() > limit {
            bail!("{} of {jobs} jobs done after {at:.0} s", results / 2);
        }
        if said.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "bench_fleet: {at:.0} s, {} of {jobs} jobs done",
                results / 2
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
