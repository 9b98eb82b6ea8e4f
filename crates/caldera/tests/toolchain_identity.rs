//! Toolchain identity end to end: workers report the build of each toolchain in Hello and in
//! each result; the first result recorded for a side pins the experiment's build; a worker with
//! another nightly is then not given the experiment's jobs, and a result of another build
//! claimed before the pin is not recorded. Real Postgres, gRPC on loopback, fake executors.

mod common;

use std::time::Duration;

use caldera_core::toolchain::ToolchainIdentity;
use caldera_db::testing::TestDb;
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use common::*;

fn build(name: &str, hash: &str) -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: name.into(),
        commit_hash: hash.into(),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: format!("1.95.0-{name}"),
        cargo: format!("1.95.0-{name} (fedcba987 2026-11-29)"),
    }
}

const STABLE: &str = "5555555555555555555555555555555555555555";
const NIGHTLY_1: &str = "0123456789abcdef0123456789abcdef01234567";
const NIGHTLY_2: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A fake executor whose `stable` and `nightly` are these builds, each run taking `delay`.
fn executor(nightly: &str, delay: Duration) -> FakeExecutor {
    FakeExecutor::new()
        .with_default(FakeBehaviour::default().with_delay(delay))
        .with_toolchain(build("stable", STABLE))
        .with_toolchain(build("nightly", nightly))
}

fn spawn(
    master: &InProcessMaster,
    token: &str,
    name: &str,
    spool: &std::path::Path,
    exec: &FakeExecutor,
) -> InProcessWorker {
    let mut config = worker_config(&master.grpc, token, name, 1, &spool.join(name));
    config.toolchains = exec.identities();
    InProcessWorker::spawn(config, exec.clone())
}

async fn count(pool: &caldera_db::PgPool, query: &str) -> i64 {
    sqlx::query_scalar(query).fetch_one(pool).await.unwrap()
}

/// Results of the experiment by the name of the worker that ran them.
async fn results_by_worker(pool: &caldera_db::PgPool, name: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT w.name, count(*) FROM results r JOIN experiments e ON e.id = r.experiment_id
         JOIN workers w ON w.id = r.worker_id WHERE e.name = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn pinned_end_commit(pool: &caldera_db::PgPool, name: &str) -> String {
    sqlx::query_scalar(
        "SELECT t.identity->>'commit_hash' FROM experiment_toolchains t
         JOIN experiments e ON e.id = t.experiment_id WHERE e.name = $1 AND t.side = 'end'",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Done-when: a worker with a different nightly build is not given a pinned side. Worker `a`
/// (nightly 1) pins the experiment; then `b` (nightly 2) and `c` (nightly 1, like `a`) connect
/// while jobs are still queued: `c` shares the work, `b` gets none. The report shows the builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_different_nightly_is_not_given_a_pinned_side() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(100);
    let (exec_a, exec_b, exec_c) = (
        executor(NIGHTLY_1, delay),
        executor(NIGHTLY_2, delay),
        executor(NIGHTLY_1, delay),
    );
    let a = spawn(&master, &t.worker, "a", spool.path(), &exec_a);
    wait_count(
        &db.pool,
        "SELECT count(*) FROM workers WHERE connected",
        1,
        Duration::from_secs(30),
    )
    .await;
    start_experiment(&master.http, &t.operator, "pinned", &crate_names(30)).await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM experiment_toolchains",
        2,
        Duration::from_secs(30),
    )
    .await;
    let late = [
        spawn(&master, &t.worker, "b", spool.path(), &exec_b),
        spawn(&master, &t.worker, "c", spool.path(), &exec_c),
    ];
    wait_count(
        &db.pool,
        "SELECT count(*) FROM workers WHERE connected",
        3,
        Duration::from_secs(30),
    )
    .await;
    let queued = count(&db.pool, "SELECT count(*) FROM jobs WHERE state = 'queued'").await;
    assert!(queued > 0, "jobs were left for the late workers");
    wait_status(&db.pool, "pinned", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&db.pool, "pinned", 30).await;

    assert_eq!(exec_b.runs(), 0, "the other nightly ran nothing");
    assert!(exec_c.runs() > 0, "the same nightly shared the work");
    let by_worker = results_by_worker(&db.pool, "pinned").await;
    assert_eq!(by_worker.iter().map(|(_, n)| n).sum::<i64>(), 60);
    assert!(by_worker.iter().all(|(w, _)| w != "b"), "{by_worker:?}");
    assert_eq!(pinned_end_commit(&db.pool, "pinned").await, NIGHTLY_1);
    // the worker's capability carries its build; the queue requires the pinned one
    let caps: Vec<String> = sqlx::query_scalar(
        "SELECT c FROM workers w, jsonb_array_elements_text(w.capabilities) c WHERE w.name = 'b'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        caps.contains(&"toolchain-id:nightly=fedcba987654".to_owned()),
        "{caps:?}"
    );

    // the report's header and results.json name each side's build
    let md = report_file(&master.http, &t.operator, "pinned", "summary.md").await;
    assert!(
        md.contains(
            "end `1.95.0-nightly (0123456789ab 2026-11-30, x86_64-unknown-linux-gnu)`, cargo \
             `1.95.0-nightly (fedcba987 2026-11-29)`"
        ) && md.contains("start `1.95.0-stable (555555555555"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &report_file(&master.http, &t.operator, "pinned", "results.json").await,
    )
    .unwrap();
    assert_eq!(json["toolchains"]["end"]["commit_hash"], NIGHTLY_1);
    assert_eq!(json["toolchains"]["start"]["commit_hash"], STABLE);
    assert_eq!(json["toolchains"]["end"]["toolchain"], "nightly");
    let index = report_file(&master.http, &t.operator, "pinned", "index.html").await;
    assert!(
        index.contains("<th>builds</th><td>start <code>1.95.0-stable (555555555555 2026-11-30"),
        "{index}"
    );

    for w in late {
        w.stop().await;
    }
    a.stop().await;
    master.stop().await;
}

/// Two workers with different nightlies both take a job before anything is pinned: the first
/// result pins its worker's build, the other worker's result is not recorded (its job is queued
/// again, the reason kept), and every recorded result ran with the pinned build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_of_another_build_is_not_recorded() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec_1 = executor(NIGHTLY_1, Duration::from_millis(200));
    let exec_2 = executor(NIGHTLY_2, Duration::from_millis(200));
    let workers = [
        spawn(&master, &t.worker, "one", spool.path(), &exec_1),
        spawn(&master, &t.worker, "two", spool.path(), &exec_2),
    ];
    wait_count(
        &db.pool,
        "SELECT count(*) FROM workers WHERE connected",
        2,
        Duration::from_secs(30),
    )
    .await;
    start_experiment(&master.http, &t.operator, "race", &crate_names(6)).await;
    wait_status(&db.pool, "race", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&db.pool, "race", 6).await;

    let pinned = pinned_end_commit(&db.pool, "race").await;
    let (winner, loser, loser_exec) = if pinned == NIGHTLY_1 {
        ("one", "two", &exec_2)
    } else {
        ("two", "one", &exec_1)
    };
    assert!(loser_exec.runs() >= 1, "both took a job before the pin");
    assert_eq!(
        results_by_worker(&db.pool, "race").await,
        [(winner.to_owned(), 12)],
        "{loser} recorded nothing"
    );
    assert_eq!(
        exec_1.runs() + exec_2.runs(),
        6 + loser_exec.runs(),
        "each refused run was run again"
    );
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT last_error FROM jobs WHERE attempt > 1 AND last_error IS NOT NULL",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(reasons.len(), loser_exec.runs(), "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains(
            "toolchain build differs from the experiment's pin: end: toolchain nightly on this worker is"
        )),
        "{reasons:?}"
    );
    for w in workers {
        w.stop().await;
    }
    master.stop().await;
}
