//! Shared harness for end-to-end tests: a master (in-process or as a `caldera master` process),
//! workers (in-process with the fake executor, or as a separate process), and checks on Postgres.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use caldera_db::PgPool;
use caldera_db::tokens::{self, Role};
use caldera_master::scheduler::SchedulerConfig;
use caldera_master::{Master, MasterConfig};
use caldera_worker::fake::FakeExecutor;
use caldera_worker::{Backoff, WorkerConfig};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Scheduler settings for tests: short leases, fast heartbeats and reaping.
pub fn fast_config() -> SchedulerConfig {
    SchedulerConfig {
        lease: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(250),
        reap_interval: Duration::from_millis(200),
        dispatch_tick: Duration::from_millis(500),
        ..Default::default()
    }
}

pub struct Tokens {
    pub operator: String,
    pub worker: String,
}

pub async fn tokens(pool: &PgPool) -> Tokens {
    Tokens {
        operator: tokens::create(pool, "op", Role::Operator).await.unwrap().1,
        worker: tokens::create(pool, "worker", Role::Worker)
            .await
            .unwrap()
            .1,
    }
}

/// A master running inside the test process (started as `caldera master` starts one).
pub struct InProcessMaster {
    pub http: String,
    pub grpc: String,
    pub master: Master,
}

impl InProcessMaster {
    pub async fn start(
        pool: PgPool,
        config: SchedulerConfig,
        grpc: Option<SocketAddr>,
    ) -> InProcessMaster {
        let store_dir = std::env::temp_dir().join(format!(
            "caldera-e2e-store-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let store = Arc::new(caldera_storage::LocalStore::open(&store_dir, 64 << 20).unwrap());
        Self::start_with_store(pool, config, grpc, store).await
    }

    /// A master whose object store is `store` (shared with the workers of the test).
    pub async fn start_with_store(
        pool: PgPool,
        config: SchedulerConfig,
        grpc: Option<SocketAddr>,
        store: Arc<dyn caldera_storage::ObjectStore>,
    ) -> InProcessMaster {
        let defaults = MasterConfig::new(pool, store);
        let master = Master::start(MasterConfig {
            scheduler: config,
            grpc: grpc.unwrap_or(defaults.grpc),
            ..defaults
        })
        .await
        .unwrap();
        InProcessMaster {
            http: master.http_url(),
            grpc: master.grpc_url(),
            master,
        }
    }

    pub async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.master.stop()).await;
    }
}

pub fn worker_config(
    master: &str,
    token: &str,
    name: &str,
    slots: u32,
    spool: &std::path::Path,
) -> WorkerConfig {
    let mut c = WorkerConfig::new(master, token, name, spool);
    c.slots = slots;
    c.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        jitter: 0.5,
    };
    c.drain_timeout = Duration::from_secs(10);
    c.drain_ack_timeout = Duration::from_secs(10);
    c
}

/// A worker running inside the test process; drain it with `stop`.
pub struct InProcessWorker {
    pub drain: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), caldera_worker::WorkerError>>,
}

impl InProcessWorker {
    pub fn spawn(config: WorkerConfig, executor: FakeExecutor) -> InProcessWorker {
        Self::spawn_with(config, Arc::new(executor))
    }

    pub fn spawn_with(
        config: WorkerConfig,
        executor: Arc<dyn caldera_worker::Executor>,
    ) -> InProcessWorker {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(caldera_worker::run(config, executor, async move {
            let _ = rx.await;
        }));
        InProcessWorker {
            drain: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(d) = self.drain.take() {
            let _ = d.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker drains in time");
        r.expect("worker task").expect("worker ends cleanly");
    }
}

pub async fn api(
    http: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{http}/api/v1{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `n` distinct registry crates with explicit versions.
pub fn crate_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("fx{i:05}@1.0.0")).collect()
}

/// Create and start an experiment over `crates` (stable vs nightly, build-and-test), without
/// confirmation runs (`confirm: 0`: these tests count runs and results of first runs).
pub async fn start_experiment(http: &str, token: &str, name: &str, crates: &[String]) {
    start_experiment_with(http, token, name, crates, json!({"confirm": 0})).await
}

/// [`start_experiment`] with the fields of `extra` added to the spec.
pub async fn start_experiment_with(
    http: &str,
    token: &str,
    name: &str,
    crates: &[String],
    extra: serde_json::Value,
) {
    let mut body = json!({"name": name, "start": "stable", "end": "nightly", "crates": {"kind": "list", "crates": crates}});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    let (status, v) = api(
        http,
        token,
        reqwest::Method::POST,
        "/experiments",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = api(
        http,
        token,
        reqwest::Method::POST,
        &format!("/experiments/{name}/start"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

pub async fn status(pool: &PgPool, name: &str) -> String {
    sqlx::query_scalar("SELECT status FROM experiments WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Wait until the experiment reaches `want` (polling Postgres), or panic after `limit`.
pub async fn wait_status(pool: &PgPool, name: &str, want: &str, limit: Duration) {
    let t0 = std::time::Instant::now();
    loop {
        let status =
            sqlx::query_scalar::<_, String>("SELECT status FROM experiments WHERE name = $1")
                .bind(name)
                .fetch_one(pool)
                .await;
        if status.is_ok_and(|s| s == want) {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "experiment {name} did not become {want} within {limit:?}: {:?}",
            job_states(pool, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `query` (a scalar count) reaches at least `n`.
pub async fn wait_count(pool: &PgPool, query: &str, n: i64, limit: Duration) {
    let t0 = std::time::Instant::now();
    loop {
        let c: i64 = sqlx::query_scalar(query)
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        if c >= n {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "`{query}` stayed at {c} < {n} for {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn job_states(pool: &PgPool, name: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT j.state, count(*) FROM jobs j JOIN experiments e ON e.id = j.experiment_id WHERE e.name = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// Every job of the experiment is done and has exactly one result per toolchain side.
pub async fn assert_exactly_one_result_each(pool: &PgPool, name: &str, jobs: i64) {
    let states = job_states(pool, name).await;
    assert_eq!(states, vec![("done".to_owned(), jobs)], "all jobs done");
    let per_job: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT j.id, count(r.toolchain) FROM jobs j JOIN experiments e ON e.id = j.experiment_id
         LEFT JOIN results r ON r.experiment_id = j.experiment_id AND r.crate_id = j.crate_id
         WHERE e.name = $1 GROUP BY j.id HAVING count(r.toolchain) <> 2",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        per_job.is_empty(),
        "jobs without exactly two results (start, end): {per_job:?}"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM results r JOIN experiments e ON e.id = r.experiment_id WHERE e.name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(total, jobs * 2);
    assert_counts_exact(pool).await;
}

/// The job counts the triggers keep agree with a count of the jobs.
pub async fn assert_counts_exact(pool: &PgPool) {
    let drift = caldera_db::jobs::count_drift(pool).await.unwrap();
    assert!(
        drift.is_empty(),
        "job counts drifted (experiment, kept, counted): {drift:?}"
    );
}

/// A file of the experiment's exported report (`summary.md`, `results.json`, …), waiting up to a
/// minute for the export that follows completion.
pub async fn report_file(http: &str, token: &str, experiment: &str, file: &str) -> String {
    let url = format!("{http}/api/v1/experiments/{experiment}/report/{file}");
    let t0 = std::time::Instant::now();
    loop {
        let resp = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            return resp.text().await.unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{experiment}/{file}: {}",
            resp.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
