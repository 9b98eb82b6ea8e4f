//! Postgres restarts mid-experiment: the master recovers without operator action and no result is
//! lost or doubled. Uses its own private cluster (not the shared test cluster) so it can stop it.

mod common;

use std::time::Duration;

use caldera_db::embedded::{ClusterOptions, PrivatePostgres};
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        dir: dir.path().join("pg"),
        port: free_addr().port(),
        ephemeral: false,
        unsafe_fast: true,
        statement_stats: false,
    };
    let pg = PrivatePostgres::start(options.clone()).await.unwrap();
    let admin = caldera_db::connect(&pg.url("postgres"), 1).await.unwrap();
    sqlx::query("CREATE DATABASE caldera")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = caldera_db::connect(&pg.url("caldera"), 10).await.unwrap();
    caldera_db::migrate(&pool).await.unwrap();
    let t = tokens(&pool).await;

    let mut config = fast_config();
    config.lease = Duration::from_secs(10); // longer than the outage: leases need not expire
    config.heartbeat_interval = Duration::from_millis(300);
    let master = InProcessMaster::start(pool.clone(), config, None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new()
        .with_default(FakeBehaviour::default().with_delay(Duration::from_millis(100)));
    let worker = InProcessWorker::spawn(
        worker_config(&master.grpc, &t.worker, "w", 4, spool.path()),
        exec.clone(),
    );
    start_experiment(&master.http, &t.operator, "pg", &crate_names(80)).await;
    wait_count(
        &pool,
        "SELECT count(*) FROM jobs WHERE state = 'done'",
        10,
        Duration::from_secs(30),
    )
    .await;

    let finished = exec.stats().finished;
    pg.stop().await;
    // the worker finishes what it runs; those results wait behind the outage
    exec.wait_for(|s| s.running == 0 && s.finished > finished)
        .await;
    let health = reqwest::get(format!("{}/healthz", master.http))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503, "healthz reports the outage");
    let pg = PrivatePostgres::start(options).await.unwrap();

    wait_status(&pool, "pg", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&pool, "pg", 80).await;
    let health = reqwest::get(format!("{}/healthz", master.http))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    worker.stop().await;
    master.stop().await;
    pool.close().await;
    pg.stop().await;
}
