//! `cargo xtask bench scheduler`: jobs dispatched and completed per second end to end (HTTP start →
//! Postgres → scheduler → gRPC → workers with a no-op executor → results in Postgres), and the time
//! from a job's claim to the worker receiving it.
//!
//! Usage: bench_scheduler [JOBS] [WORKERS] [SLOTS] [--unsafe-fast] [--statements]
//! Postgres is a private cluster with durable settings (fsync on) unless --unsafe-fast;
//! `--statements` loads `pg_stat_statements` and ends with the statements Postgres spent its time on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use caldera_core::outcome::Outcome;
use caldera_db::embedded::{ClusterOptions, PrivatePostgres};
use caldera_db::tokens::{self, Role};
use caldera_master::scheduler::SchedulerConfig;
use caldera_worker::{Assignment, Backoff, Executor, JobOutput, SideOutput, WorkerConfig};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Returns at once and notes when each job arrived.
#[derive(Clone, Default)]
struct Instant0 {
    received: Arc<Mutex<HashMap<u64, SystemTime>>>,
}

impl Executor for Instant0 {
    fn run(&self, job: Assignment, _cancel: CancellationToken) -> BoxFuture<'static, JobOutput> {
        self.received
            .lock()
            .unwrap()
            .insert(job.job_id, SystemTime::now());
        let side = SideOutput {
            outcome: Outcome::TestPass,
            steps: vec![],
            peak_memory_bytes: 0,
            log_key: None,
            duration: Duration::ZERO,
            toolchain: None,
            cache_key: None,
        };
        Box::pin(async move {
            JobOutput {
                start: side.clone(),
                end: side,
            }
        })
    }
}

/// Busy, stolen and total CPU time of the whole machine so far, in clock ticks (`/proc/stat`), so
/// that the bench can report CPU per job, which varies much less than throughput on a shared VM.
/// Busy excludes the time the hypervisor gave to other guests (steal), which is reported apart.
fn cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    let (idle, steal) = (field(3) + field(4), field(7));
    (total - idle - steal, steal, total)
}

/// CPU time of this process (the master and the workers) so far, in clock ticks.
fn own_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the fields after the command name (which is in parentheses): utime and stime are 14 and 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    field(11) + field(12)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unsafe_fast = args.iter().any(|a| a == "--unsafe-fast");
    let statement_stats = args.iter().any(|a| a == "--statements");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let jobs = nums.first().copied().unwrap_or(20_000);
    let workers = nums.get(1).copied().unwrap_or(4);
    let slots = nums.get(2).copied().unwrap_or(64) as u32;

    let dir = tempfile::tempdir()?;
    let pg = PrivatePostgres::start(ClusterOptions {
        dir: dir.path().join("pg"),
        port: 0,
        ephemeral: true,
        unsafe_fast,
        statement_stats,
    })
    .await?;
    let admin = caldera_db::connect(&pg.url("postgres"), 1).await?;
    sqlx::query("CREATE DATABASE bench").execute(&admin).await?;
    let pool = caldera_db::connect(&pg.url("bench"), 32).await?;
    caldera_db::migrate(&pool).await?;
    if statement_stats {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await?;
    }
    let operator = tokens::create(&pool, "op", Role::Operator).await?.1;
    let worker_token = tokens::create(&pool, "w", Role::Worker).await?.1;

    let store = Arc::new(caldera_storage::LocalStore::open(
        dir.path().join("objects"),
        1 << 20,
    )?);
    let master = caldera_master::Master::start(caldera_master::MasterConfig {
        scheduler: SchedulerConfig {
            claim_batch: 256,
            result_batch: 1024,
            ..Default::default()
        },
        ..caldera_master::MasterConfig::new(pool.clone(), store)
    })
    .await?;
    let (http, grpc) = (master.http_url(), master.grpc_url());
    // the workers stop with the master
    let shutdown = master.shutdown_token();

    let exec = Instant0::default();
    for i in 0..workers {
        let mut c = WorkerConfig::new(
            &grpc,
            &worker_token,
            format!("bench{i}"),
            dir.path().join(format!("spool{i}")),
        );
        c.slots = slots;
        c.reconnect = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: 0.5,
        };
        tokio::spawn(caldera_worker::run(
            c,
            Arc::new(exec.clone()),
            shutdown.clone().cancelled_owned(),
        ));
    }
    // let the workers connect before the clock starts
    while caldera_db::workers::list(&pool)
        .await?
        .iter()
        .filter(|w| w.connected)
        .count()
        < workers
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let http_client = reqwest::Client::new();
    let crates: Vec<String> = (0..jobs).map(|i| format!("bench{i:07}@1.0.0")).collect();
    let body = serde_json::json!({"name": "bench", "start": "stable", "end": "nightly", "crates": {"kind": "list", "crates": crates}});
    let r = http_client
        .post(format!("{http}/api/v1/experiments"))
        .bearer_auth(&operator)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "create: {}", r.text().await?);
    let t0 = Instant::now();
    let r = http_client
        .post(format!("{http}/api/v1/experiments/bench/start"))
        .bearer_auth(&operator)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "start: {}", r.text().await?);
    let started = t0.elapsed();
    let (busy0, steal0, total0) = cpu_ticks();
    let own0 = own_ticks();
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status FROM experiments WHERE name = 'bench'")
                .fetch_one(&pool)
                .await?;
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = t0.elapsed();
    let dispatch = elapsed - started;
    let (busy1, steal1, total1) = cpu_ticks();
    let own_us = (own_ticks() - own0) as f64 * 10_000.0;
    // clock ticks are 1/100 s on Linux
    let busy_us = (busy1 - busy0) as f64 * 10_000.0;
    let share = |ticks: u64| ticks as f64 / (total1 - total0).max(1) as f64 * 100.0;
    let (busy_share, steal_share) = (share(busy1 - busy0), share(steal1 - steal0));

    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        results == 2 * jobs as i64,
        "expected {} results, found {results}",
        2 * jobs
    );
    let claimed: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, claimed_at FROM jobs")
            .fetch_all(&pool)
            .await?;
    let received = exec.received.lock().unwrap().clone();
    let mut lat: Vec<f64> = claimed
        .iter()
        .filter_map(|(id, at)| {
            let got = received.get(&(*id as u64))?;
            let claim = SystemTime::from(*at);
            Some(got.duration_since(claim).unwrap_or_default().as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);

    println!(
        "# {jobs} jobs, {workers} workers x {slots} slots, postgres fsync {}",
        if unsafe_fast { "off" } else { "on" }
    );
    println!(
        "start (resolve + create jobs): {:.0} ms",
        started.as_secs_f64() * 1000.0
    );
    println!(
        "scheduler: {:.0} jobs/s",
        jobs as f64 / dispatch.as_secs_f64()
    );
    println!(
        "scheduler_end_to_end: {:.0} jobs/s",
        jobs as f64 / elapsed.as_secs_f64()
    );
    println!(
        "cpu_per_job: {:.0} µs (whole machine, {busy_share:.0} % busy, {steal_share:.0} % stolen by the host)",
        busy_us / jobs as f64,
    );
    println!(
        "cpu_per_job_master_and_workers: {:.0} µs (the rest is mostly Postgres)",
        own_us / jobs as f64
    );
    println!("claim_to_worker_p50: {:.2} ms", percentile(&lat, 0.50));
    println!("claim_to_worker_p99: {:.2} ms", percentile(&lat, 0.99));
    // the master's own view: mean time of a claim transaction and of handing its jobs over
    let metrics = http_client
        .get(format!("{http}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find_map(|(key, v)| key.ends_with(name).then(|| v.trim().parse().ok())?)
            .unwrap_or(f64::NAN)
    };
    for (what, metric) in [
        ("claim", "claim_latency_seconds"),
        ("claim_to_send", "claim_to_send_seconds"),
    ] {
        let (sum, count) = (
            value(&format!("{metric}_sum")),
            value(&format!("{metric}_count")),
        );
        println!(
            "{what}_mean: {:.2} ms over {count} claims",
            sum / count * 1000.0
        );
    }
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    if statement_stats {
        // where Postgres spent its time, by statement
        let rows: Vec<(String, i64, f64, i64)> = sqlx::query_as(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 100), calls, total_exec_time, rows
             FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12",
        )
        .fetch_all(&pool)
        .await?;
        println!("# statements by total execution time (pg_stat_statements)");
        for (query, calls, total_ms, n) in rows {
            println!("{total_ms:>8.0} ms {calls:>7} calls {n:>7} rows  {query}");
        }
    }
    pg.stop().await;
    Ok(())
}
