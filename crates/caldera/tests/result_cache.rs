//! The result cache end to end: a second experiment whose start side equals an earlier one's
//! runs only the end side; its results and report say "cached" and link the source; the
//! lockfile and the log come along; a side whose earlier outcome was spurious runs again; and
//! `"cache": false` runs everything, and another lockfile policy settles nothing. Real Postgres,
//! gRPC on loopback, a fake executor.

mod common;

use std::sync::Arc;
use std::time::Duration;

use caldera_core::fingerprint::Environment;
use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_core::toolchain::ToolchainIdentity;
use caldera_db::testing::TestDb;
use caldera_storage::{ObjectStore, keys};
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use common::*;
use serde_json::json;

fn build(name: &str, hash: char) -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: name.into(),
        commit_hash: hash.to_string().repeat(40),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: format!("1.95.0-{name}"),
        cargo: format!("1.95.0-{name} (fedcba987 2026-11-29)"),
    }
}

/// (crate, side, outcome kind, cached from) of every result of `name`, sorted.
async fn results(
    pool: &caldera_db::PgPool,
    name: &str,
) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.outcome_kind, r.cached_from_name FROM results r
         JOIN experiments e ON e.id = r.experiment_id JOIN crates c ON c.id = r.crate_id
         WHERE e.name = $1 AND r.run = 0 ORDER BY 1, 2 DESC",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap()
}

const SPURIOUS: &str = "fx00001";

/// A master whose object store is a local directory the test can read and write too.
async fn master_with_store(
    pool: &caldera_db::PgPool,
) -> (tempfile::TempDir, Arc<dyn ObjectStore>, InProcessMaster) {
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(caldera_storage::LocalStore::open(store_dir.path(), 64 << 20).unwrap());
    let master =
        InProcessMaster::start_with_store(pool.clone(), fast_config(), None, store.clone()).await;
    (store_dir, store, master)
}

/// The dashboard page at `path`, which must answer 200.
async fn dashboard_page(http: &str, token: &str, path: &str) -> String {
    let page = reqwest::Client::new()
        .get(format!("{http}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.unwrap()
}

/// A worker of 2 slots running `exec`, with its builds and a sandbox environment (so that its
/// sides have cache keys), once the master counts it connected.
async fn connected_worker(
    pool: &caldera_db::PgPool,
    grpc: &str,
    token: &str,
    exec: &FakeExecutor,
    spool: &std::path::Path,
) -> InProcessWorker {
    let mut config = worker_config(grpc, token, "w", 2, spool);
    config.toolchains = exec.identities();
    config.environment = Some(Environment {
        image: "sha256:0123".into(),
        limits: "memory=4294967296,cpus=1".into(),
        classifier: caldera_worker::CLASSIFIER_VERSION,
    });
    let worker = InProcessWorker::spawn(config, exec.clone());
    wait_count(
        pool,
        "SELECT count(*) FROM workers WHERE connected",
        1,
        Duration::from_secs(30),
    )
    .await;
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_experiment_with_the_same_start_side_runs_only_the_end_side() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let (_store_dir, store, master) = master_with_store(&db.pool).await;
    let oom = Outcome::BuildFail(BuildFailReason::Oom);
    let exec = FakeExecutor::new()
        .with_toolchain(build("stable", '5'))
        .with_toolchain(build("nightly", 'a'))
        .with_crate(
            SPURIOUS,
            FakeBehaviour::outcomes(oom.clone(), Outcome::TestPass),
        );
    let spool = tempfile::tempdir().unwrap();
    let worker = connected_worker(&db.pool, &master.grpc, &t.worker, &exec, spool.path()).await;
    let crates = crate_names(4);
    start_experiment(&master.http, &t.operator, "first", &crates).await;
    wait_status(&db.pool, "first", "completed", Duration::from_secs(60)).await;
    assert_eq!(exec.runs(), 4);
    // what a Docker worker stores for a crate: its lockfile, and a side's log
    let krate = "reg:fx00000@1.0.0";
    let lock = keys::lockfile("first", krate).unwrap();
    let lockfile = "# the lockfile both sides built with\n";
    store
        .put_bytes(&lock, lockfile.into(), Default::default())
        .await
        .unwrap();
    let log = keys::log("first", "stable", krate).unwrap();
    caldera_storage::put_log(store.as_ref(), &log, "the start side's log\n")
        .await
        .unwrap();
    sqlx::query(
        "UPDATE results r SET log_key = $1 FROM crates c
         WHERE c.id = r.crate_id AND c.crate_id = $2 AND r.toolchain = 'start'",
    )
    .bind(log.to_string())
    .bind(krate)
    .execute(&db.pool)
    .await
    .unwrap();

    // the second experiment: the same start side, another end side; the fake would now fail
    // every start side it ran
    exec.set_crate(
        "fx00000",
        FakeBehaviour::outcomes(
            Outcome::TestFail {
                failed_tests: vec!["t".into()],
                reason: None,
            },
            Outcome::TestPass,
        ),
    );
    // and fx00002 regresses: its start side is cached, its end side fails
    let broken = Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec!["E0308".into()],
    });
    exec.set_crate(
        "fx00002",
        FakeBehaviour::outcomes(Outcome::TestPass, broken.clone()),
    );
    start_experiment_with(
        &master.http,
        &t.operator,
        "second",
        &crates,
        json!({"confirm": 1, "end": "nightly+rustflags=-Cdebug-assertions"}),
    )
    .await;
    wait_status(&db.pool, "second", "completed", Duration::from_secs(60)).await;
    assert_eq!(
        exec.runs(),
        9,
        "every job ran, three of them one side only, and the regression's confirmation"
    );
    // the regression of a one-sided job is confirmed like any other: a run of both sides
    let confirmations: Vec<(String, i16, String, Option<String>)> = sqlx::query_as(
        "SELECT c.crate_id, r.run, r.toolchain, r.cached_from_name FROM results r
         JOIN experiments e ON e.id = r.experiment_id JOIN crates c ON c.id = r.crate_id
         WHERE e.name = 'second' AND r.run > 0 ORDER BY 1, 2, 3 DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let fx2 = "reg:fx00002@1.0.0".to_owned();
    assert_eq!(
        confirmations,
        [
            (fx2.clone(), 1, "start".into(), None),
            (fx2.clone(), 1, "end".into(), None),
        ]
    );
    let got = results(&db.pool, "second").await;
    let row = |i: usize, side: &str, kind: &str, from: Option<&str>| {
        (
            format!("reg:fx{i:05}@1.0.0"),
            side.to_owned(),
            kind.to_owned(),
            from.map(str::to_owned),
        )
    };
    assert_eq!(
        got,
        [
            row(0, "start", "test-pass", Some("first")),
            row(0, "end", "test-pass", None),
            // the start side was spurious (oom) in the first experiment: it ran again
            row(1, "start", "build-fail", None),
            row(1, "end", "test-pass", None),
            row(2, "start", "test-pass", Some("first")),
            row(2, "end", "build-fail", None),
            row(3, "start", "test-pass", Some("first")),
            row(3, "end", "test-pass", None),
        ]
    );
    // the lockfile came along before any worker prepared the crate, and the log is readable
    // in the new experiment's prefix
    let copied = store
        .get_bytes(&keys::lockfile("second", krate).unwrap())
        .await
        .unwrap();
    assert_eq!(copied, lockfile.as_bytes());
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/experiments/second/results/fx00000%401.0.0/start/log",
            master.http
        ))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "the start side's log\n");
    let log_key: String = sqlx::query_scalar(
        "SELECT r.log_key FROM results r JOIN experiments e ON e.id = r.experiment_id
         JOIN crates c ON c.id = r.crate_id WHERE e.name = 'second' AND c.crate_id = $1
           AND r.toolchain = 'start'",
    )
    .bind(krate)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        log_key,
        keys::log("second", "stable", krate).unwrap().to_string()
    );

    // the report says so, and links the source
    let md = report_file(&master.http, &t.operator, "second", "summary.md").await;
    assert!(
        md.contains("3 sides were settled from the result cache")
            && md.contains("start side of `reg:fx00000@1.0.0`: cached from [first]"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &report_file(&master.http, &t.operator, "second", "results.json").await,
    )
    .unwrap();
    assert_eq!(
        json["cached"][krate]["start"], "first",
        "{}",
        json["cached"]
    );
    assert!(json["cached"].get("reg:fx00001@1.0.0").is_none());
    let index = report_file(&master.http, &t.operator, "second", "index.html").await;
    assert!(index.contains("cached from"), "{index}");
    // and so does the dashboard's crate page
    let page = dashboard_page(
        &master.http,
        &t.operator,
        "/experiments/second/crates/reg%3Afx00000%401.0.0",
    )
    .await;
    assert!(
        page.contains(r#"cached from <a href="/experiments/first"><code>first</code></a>"#)
            && page.contains("ran here"),
        "{page}"
    );
    // and its experiment page, in the header
    let page = dashboard_page(&master.http, &t.operator, "/experiments/second").await;
    assert!(
        page.contains(r#"<tr id="cached"><th>result cache</th><td>3 sides cached from <a href="/experiments/first"><code>first</code></a></td></tr>"#),
        "{page}"
    );

    // `"cache": false` runs every side
    start_experiment_with(
        &master.http,
        &t.operator,
        "uncached",
        &crates,
        json!({"confirm": 0, "cache": false}),
    )
    .await;
    wait_status(&db.pool, "uncached", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&db.pool, "uncached", 4).await;
    assert!(
        results(&db.pool, "uncached")
            .await
            .iter()
            .all(|r| r.3.is_none()),
        "nothing cached"
    );
    assert_eq!(exec.runs(), 13);

    // another lockfile policy is another input: a `fresh` experiment settles nothing from the
    // `shipped` ones (their sides built with other dependency versions)
    start_experiment_with(
        &master.http,
        &t.operator,
        "fresh-locks",
        &crates,
        json!({"confirm": 0, "lockfile": "fresh"}),
    )
    .await;
    wait_status(
        &db.pool,
        "fresh-locks",
        "completed",
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_one_result_each(&db.pool, "fresh-locks", 4).await;
    assert!(
        results(&db.pool, "fresh-locks")
            .await
            .iter()
            .all(|r| r.3.is_none()),
        "nothing cached across lockfile policies"
    );
    assert_eq!(exec.runs(), 17);

    // the same sides as `first` on both sides: every job is done at the start, nothing runs
    start_experiment(&master.http, &t.operator, "again", &crates[2..]).await;
    wait_status(&db.pool, "again", "completed", Duration::from_secs(30)).await;
    assert_exactly_one_result_each(&db.pool, "again", 2).await;
    assert_eq!(exec.runs(), 17, "both sides cached: nothing ran");
    assert!(
        results(&db.pool, "again")
            .await
            .iter()
            .all(|r| r.3.is_some()),
        "every side cached"
    );
    worker.stop().await;
    master.stop().await;
}

/// A confirmation run of a crate whose start side was settled from the cache does not build that
/// side again where the source experiment re-ran it: the source's re-run of the same build is
/// copied (and says where from), only the end side is built, the regression is confirmed, and
/// the left-out side shows no flake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_takes_the_cached_sides_reruns_from_the_source() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let (store_dir, store, master) = master_with_store(&db.pool).await;
    let broken = Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec!["E0308".into()],
    });
    let exec = FakeExecutor::new()
        .with_toolchain(build("stable", '5'))
        .with_toolchain(build("nightly", 'a'))
        .with_crate(
            "fx00000",
            FakeBehaviour::outcomes(Outcome::TestPass, broken.clone()),
        );
    let spool = tempfile::tempdir().unwrap();
    let worker = connected_worker(&db.pool, &master.grpc, &t.worker, &exec, spool.path()).await;
    let crates = crate_names(2);
    start_experiment_with(
        &master.http,
        &t.operator,
        "first",
        &crates,
        json!({"confirm": 2}),
    )
    .await;
    wait_status(&db.pool, "first", "completed", Duration::from_secs(60)).await;
    assert_eq!(
        exec.stats().sides,
        8,
        "two crates and two confirmation runs"
    );
    let borrowed = give_reruns_logs(&db.pool, store.as_ref()).await;

    // another end side; fx00000 regresses again, its start side is settled from `first`
    start_experiment_with(
        &master.http,
        &t.operator,
        "second",
        &crates,
        json!({"confirm": 2, "end": "nightly+rustflags=-Cdebug-assertions"}),
    )
    .await;
    wait_status(&db.pool, "second", "completed", Duration::from_secs(60)).await;
    assert_eq!(
        exec.stats().sides,
        8 + 4,
        "the end sides of both crates and of the two confirmation runs, nothing else"
    );
    let reruns: Vec<(i16, String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT r.run, r.toolchain, r.outcome_kind, r.cached_from_name, r.cached_from_side
         FROM results r JOIN experiments e ON e.id = r.experiment_id
         WHERE e.name = 'second' AND r.run > 0 ORDER BY 1, 2 DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |run: i16, side: &str, kind: &str, from: Option<&str>| {
        (
            run,
            side.to_owned(),
            kind.to_owned(),
            from.map(str::to_owned),
            from.map(|_| "start".to_owned()),
        )
    };
    assert_eq!(
        reruns,
        [
            row(1, "start", "test-pass", Some("first")),
            row(1, "end", "build-fail", None),
            row(2, "start", "test-pass", Some("first")),
            row(2, "end", "build-fail", None),
        ]
    );
    // the copies carry the source's logs and timings, not new ones
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM results a JOIN experiments ea ON ea.id = a.experiment_id
         JOIN results b ON b.crate_id = a.crate_id AND b.run = a.run AND b.toolchain = a.toolchain
         JOIN experiments eb ON eb.id = b.experiment_id
         WHERE ea.name = 'second' AND eb.name = 'first' AND a.run > 0 AND a.toolchain = 'start'
           AND a.log_key IS NOT DISTINCT FROM b.log_key AND a.duration_ms = b.duration_ms",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(same, 2);
    let json: serde_json::Value = serde_json::from_str(
        &report_file(&master.http, &t.operator, "second", "results.json").await,
    )
    .unwrap();
    let fx0 = (json["crates"].as_array().unwrap().iter())
        .find(|c| c["crate"] == "reg:fx00000@1.0.0")
        .unwrap();
    assert_eq!(fx0["comparison"], "regressed", "{fx0}");
    assert_eq!(fx0["confirmation"], "confirmed", "{fx0}");
    let flakes: i64 = sqlx::query_scalar("SELECT count(*) FROM flakes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(flakes, 0, "a side left out is no flake");

    deleting_the_source_moves_the_borrowed_logs(
        &master.http,
        &t.operator,
        &db.pool,
        &store,
        store_dir.path(),
        borrowed,
    )
    .await;
    worker.stop().await;
    master.stop().await;
}

const FX0: &str = "reg:fx00000@1.0.0";

/// (run, log key) of `second`'s copied re-runs of the start side.
async fn borrowed_keys(pool: &caldera_db::PgPool) -> Vec<(i16, Option<String>)> {
    sqlx::query_as(
        "SELECT r.run, r.log_key FROM results r JOIN experiments e ON e.id = r.experiment_id
         WHERE e.name = 'second' AND r.run > 0 AND r.toolchain = 'start' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Deleting `first` gives `second` its own copies of the logs it borrowed; a copy that fails
/// keeps `first`'s objects (and `second`'s keys) until DELETE is sent again.
async fn deleting_the_source_moves_the_borrowed_logs(
    http: &str,
    token: &str,
    pool: &caldera_db::PgPool,
    store: &Arc<dyn ObjectStore>,
    store_dir: &std::path::Path,
    borrowed: &str,
) {
    let delete = || {
        api(
            http,
            token,
            reqwest::Method::DELETE,
            "/experiments/first",
            None,
        )
    };
    let before = borrowed_keys(pool).await;
    let first = keys::experiment_prefix("first").unwrap();
    let objects = store.list(&first).await.unwrap().len();
    // a directory where run 1's copy goes: writing it fails
    let own = keys::run_log("second", "stable", FX0, 1, false).unwrap();
    let blocker = store_dir.join("objects").join(own.as_str());
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let (status, body) = delete().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage-unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("experiment \"first\" is deleted from the database, but copying the logs other experiments' confirmation runs borrowed from it failed:")
            && message.ends_with("its objects stay until DELETE is sent again"),
        "{message}"
    );
    assert_eq!(borrowed_keys(pool).await, before, "second's rows unchanged");
    assert_eq!(
        store.list(&first).await.unwrap().len(),
        objects,
        "first's objects stay"
    );

    std::fs::remove_dir_all(&blocker).unwrap();
    let (status, body) = delete().await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        borrowed_keys(pool).await,
        [(1, Some(own.to_string())), (2, None)],
        "run 1's log copied, run 2's was gone already"
    );
    let text = caldera_storage::read_log(store.as_ref(), &own, 1 << 20)
        .await
        .unwrap();
    assert_eq!(text, borrowed.as_bytes());
    assert_eq!(
        store.list(&first).await.unwrap().len(),
        0,
        "first's objects are gone"
    );
}

/// What a Docker worker stores for `first`'s two re-runs of fx00000's start side: a log each,
/// but run 2's object is lost since (its row names it all the same). The text of run 1's log.
async fn give_reruns_logs(pool: &caldera_db::PgPool, store: &dyn ObjectStore) -> &'static str {
    let text = "the start side's first re-run\n";
    for run in [1, 2] {
        let key = keys::run_log("first", "stable", FX0, run, false).unwrap();
        if run == 1 {
            caldera_storage::put_log(store, &key, text).await.unwrap();
        }
        sqlx::query(
            "UPDATE results r SET log_key = $1 FROM crates c, experiments e
             WHERE c.id = r.crate_id AND c.crate_id = $2 AND e.id = r.experiment_id
               AND e.name = 'first' AND r.toolchain = 'start' AND r.run = $3",
        )
        .bind(key.to_string())
        .bind(FX0)
        .bind(run as i16)
        .execute(pool)
        .await
        .unwrap();
    }
    text
}
