//! The whole path with real parts: an experiment over the fixture crates, stable vs nightly,
//! created and started through the HTTP API; the scheduler hands the jobs over gRPC to a worker
//! whose executor runs real cargo in the real Docker sandbox; the results land in Postgres and the
//! logs in object storage, where the master's log endpoint reads them.
//!
//! Needs the Docker engine, the sandbox image (`cargo xtask provision` sets both up) and the
//! `stable` and `nightly` toolchains in the host's rustup home.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use caldera_db::testing::TestDb;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, Timeouts, default_rustup_home};
use caldera_storage::StorageConfig;
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use common::*;

fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crates")
        .join(name)
        .canonicalize()
        .unwrap();
    format!("path:{}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixtures_through_api_scheduler_worker_and_docker() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = caldera_storage::open(&StorageConfig::local(dir.path().join("objects"))).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store.clone())
            .await;
    let t = tokens(&db.pool).await;

    // the worker: the Docker executor over its own work dir, uploading to the master's store;
    // a fast lease would expire during real builds: keep the fast heartbeats, which renew it
    let (worker, executor, spool) = docker_worker(
        &master,
        &t.worker,
        dir.path(),
        store.clone(),
        "docker-e2e",
        2,
        |config| {
            config.limits = Limits {
                memory_bytes: 1 << 30,
                cpus: 1.0,
                pids: 512,
                tmp_bytes: 256 << 20,
            };
        },
    )
    .await;

    // crate → (start outcome kind, end outcome kind, comparison)
    let expected: BTreeMap<&str, (&str, &str, &str)> = [
        ("pass", ("test-pass", "test-pass", "same-test-pass")),
        (
            "compile-error",
            ("build-fail", "build-fail", "same-build-fail"),
        ),
        ("test-fail", ("test-fail", "test-fail", "same-test-fail")),
        (
            "regress-on-nightly",
            ("test-pass", "build-fail", "regressed"),
        ),
        ("fixed-on-nightly", ("build-fail", "test-pass", "fixed")),
        (
            "broken-path-dep",
            ("build-fail", "build-fail", "same-build-fail"),
        ),
    ]
    .into_iter()
    .collect();
    let crates: Vec<String> = expected.keys().map(|c| fixture(c)).collect();
    // stable vs nightly, build-and-test
    start_experiment(&master.http, &t.operator, "e2e", &crates).await;

    wait_status(&db.pool, "e2e", "completed", Duration::from_secs(900)).await;
    assert_exactly_one_result_each(&db.pool, "e2e", expected.len() as i64).await;

    // the results in Postgres: outcome kinds per side, error codes, logs
    let rows: Vec<(String, String, String, serde_json::Value, Option<String>)> = sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.outcome_kind, r.outcome, r.log_key
         FROM results r JOIN crates c ON c.id = r.crate_id JOIN experiments e ON e.id = r.experiment_id
         WHERE e.name = 'e2e' ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut got: BTreeMap<String, BTreeMap<String, (String, serde_json::Value)>> = BTreeMap::new();
    for (krate, side, kind, outcome, log_key) in &rows {
        let name = krate.rsplit('/').next().unwrap().to_owned();
        assert!(
            log_key.is_some(),
            "{krate} {side}: every run has its log ({outcome})"
        );
        got.entry(name)
            .or_default()
            .insert(side.clone(), (kind.clone(), outcome.clone()));
    }
    for (name, (start, end, _)) in &expected {
        let sides = &got[*name];
        assert_eq!(
            (sides["start"].0.as_str(), sides["end"].0.as_str()),
            (*start, *end),
            "{name}: {sides:?}"
        );
    }
    // the reasons, as the classifier reads cargo's JSON messages
    let reason = |name: &str, side: &str| got[name][side].1.to_string();
    assert!(
        reason("regress-on-nightly", "end").contains("E0308"),
        "{}",
        reason("regress-on-nightly", "end")
    );
    assert!(reason("compile-error", "start").contains("E0308"));
    assert!(
        reason("broken-path-dep", "start").contains("depends-on"),
        "{}",
        reason("broken-path-dep", "start")
    );
    assert!(
        reason("test-fail", "end").contains("tests::fails_on_purpose"),
        "{}",
        reason("test-fail", "end")
    );

    // the comparison of the two stored outcomes, as the report makes it
    for (name, (_, _, comparison)) in &expected {
        let outcome = |side: &str| -> caldera_core::outcome::Outcome {
            serde_json::from_value(got[*name][side].1.clone()).unwrap()
        };
        let c = caldera_core::outcome::compare(&outcome("start"), &outcome("end"));
        assert_eq!(c.to_string(), *comparison, "{name}");
    }

    // a log through the master's log endpoint: the real cargo output of the end side
    let krate = fixture("regress-on-nightly").replace("path:", "local:");
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/experiments/e2e/results/{}/end/log",
            master.http,
            urlencode(&krate)
        ))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log = resp.text().await.unwrap();
    assert!(
        log.contains("error[E0308]") || log.contains("E0308"),
        "{log}"
    );
    assert!(log.contains("cargo build"), "{log}");

    worker.stop().await;
    assert!(
        executor.stats().spare_hits > 0,
        "later jobs ran in spare containers: {:?}",
        executor.stats()
    );
    executor.shutdown().await;
    spool.wait_idle().await;
    master.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A worker with `slots` slots and the Docker executor over its own work dir (inside `dir`),
/// uploading to `store`; `tweak` adjusts the executor's configuration.
async fn docker_worker(
    master: &InProcessMaster,
    token: &str,
    dir: &std::path::Path,
    store: Arc<dyn caldera_storage::ObjectStore>,
    name: &str,
    slots: u32,
    tweak: impl FnOnce(&mut DockerExecutorConfig),
) -> (InProcessWorker, Arc<DockerExecutor>, Arc<UploadSpool>) {
    let dir = dir.join(name);
    let spool = Arc::new(
        UploadSpool::open(store, UploadSpoolConfig::new(dir.join("upload-spool")))
            .await
            .unwrap(),
    );
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: format!("test-e2e-{name}-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rustup_home = default_rustup_home().expect("RUSTUP_HOME or HOME");
    let mut config = DockerExecutorConfig::new(dir.join("work"), &rustup_home);
    config.slots = slots;
    config.timeouts = Timeouts {
        total: Duration::from_secs(300),
        no_output: Duration::from_secs(120),
    };
    tweak(&mut config);
    let executor = Arc::new(DockerExecutor::new(config, sandbox, spool.clone()).unwrap());
    let mut wconfig = worker_config(&master.grpc, token, name, slots, &dir.join("spool"));
    wconfig.capabilities = caldera_worker::docker::capabilities(&rustup_home)
        .await
        .unwrap();
    assert!(
        wconfig
            .capabilities
            .iter()
            .any(|c| c == "toolchain:nightly"),
        "these tests need a nightly toolchain in {}: {:?}",
        rustup_home.display(),
        wconfig.capabilities
    );
    let worker = InProcessWorker::spawn_with(wconfig, executor.clone());
    (worker, executor, spool)
}

/// Confirmation end to end, with real builds: a regression and a diagnostics change are
/// confirmed by a re-run on the other worker; a crate whose test fails only on the first worker
/// (its sandbox sets `CALDERA_FIXTURE_FLAKY=1`) comes out flaky and leaves the regressions. The
/// labels are in Postgres, the confirmations API, results.json, summary.md and the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regressions_are_confirmed_on_another_worker_and_flakes_named() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = caldera_storage::open(&StorageConfig::local(dir.path().join("objects"))).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store.clone())
            .await;
    let t = tokens(&db.pool).await;
    let (first, first_exec, first_spool) = docker_worker(
        &master,
        &t.worker,
        dir.path(),
        store.clone(),
        "first",
        1,
        |c| c.sandbox_env = [("CALDERA_FIXTURE_FLAKY".to_owned(), "1".to_owned())].into(),
    )
    .await;
    // the flaky crate first, so that the only worker connected takes its first run
    let crates: Vec<String> = [
        "flaky-on-nightly",
        "regress-on-nightly",
        "diagnostics-change-on-nightly",
        "pass",
    ]
    .iter()
    .map(|c| fixture(c))
    .collect();
    start_experiment_with(
        &master.http,
        &t.operator,
        "confirm",
        &crates,
        serde_json::json!({"confirm": 1}),
    )
    .await;
    let flaky_id = fixture("flaky-on-nightly").replace("path:", "local:");
    let t0 = std::time::Instant::now();
    loop {
        let running: Option<String> = sqlx::query_scalar(
            "SELECT j.state FROM jobs j JOIN crates c ON c.id = j.crate_id
             WHERE c.crate_id = $1 AND j.run = 0",
        )
        .bind(&flaky_id)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if running.as_deref().is_some_and(|s| s != "queued") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the second worker, whose sandboxes do not make the flaky test fail
    let (second, second_exec, second_spool) = docker_worker(
        &master,
        &t.worker,
        dir.path(),
        store.clone(),
        "second",
        1,
        |_| {},
    )
    .await;

    wait_status(&db.pool, "confirm", "completed", Duration::from_secs(1200)).await;

    // Postgres: one re-run of each regression, on the other worker
    let runs: Vec<(String, i16, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT c.crate_id, r.run, r.worker_id FROM results r JOIN crates c ON c.id = r.crate_id
         WHERE r.toolchain = 'end' ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let of = |name: &str| -> Vec<(i16, Option<uuid::Uuid>)> {
        runs.iter()
            .filter(|(k, _, _)| k.ends_with(&format!("/{name}")))
            .map(|(_, r, w)| (*r, *w))
            .collect()
    };
    for name in [
        "flaky-on-nightly",
        "regress-on-nightly",
        "diagnostics-change-on-nightly",
    ] {
        let r = of(name);
        assert_eq!(r.len(), 2, "{name}: {runs:?}");
        assert_ne!(r[0].1, r[1].1, "{name}: the re-run ran on the other worker");
    }
    assert_eq!(of("pass").len(), 1, "same-test-pass is not re-run");

    // the confirmations API
    let (status, conf) = api(
        &master.http,
        &t.operator,
        reqwest::Method::GET,
        "/experiments/confirm/confirmations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{conf}");
    let status_of = |name: &str| {
        conf["crates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["crate"].as_str().unwrap().ends_with(&format!("/{name}")))
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        status_of("regress-on-nightly").as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        status_of("diagnostics-change-on-nightly").as_deref(),
        Some("confirmed")
    );
    assert_eq!(
        status_of("flaky-on-nightly").as_deref(),
        Some("flaky"),
        "{conf}"
    );

    // results.json and summary.md (exported when the experiment completed)
    let get = |file: &'static str| report_file(&master.http, &t.operator, "confirm", file);
    let results: serde_json::Value = serde_json::from_str(&get("results.json").await).unwrap();
    assert_eq!(results["flaky"], serde_json::json!([flaky_id]), "{results}");
    assert_eq!(
        results["confirmation"],
        serde_json::json!({"confirmed": 2, "flaky": 1, "pending": 0, "known_flaky": 0})
    );
    assert_eq!(
        results["regressions"],
        serde_json::json!([fixture("regress-on-nightly").replace("path:", "local:")])
    );
    assert_eq!(results["diagnostics_changes"].as_array().unwrap().len(), 1);
    let summary = get("summary.md").await;
    assert!(summary.contains("2 confirmed, 1 flaky"), "{summary}");
    assert!(summary.contains("(confirmed)"), "{summary}");
    assert!(summary.contains("## Flaky (not confirmed)"), "{summary}");
    assert!(summary.contains("## Compiler output changed"), "{summary}");
    assert!(
        summary.contains("test-fail:diagnostics-change(1)"),
        "{summary}"
    );

    // the dashboard's experiment page
    let page = reqwest::Client::new()
        .get(format!("{}/experiments/confirm", master.http))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Flaky (not confirmed)"), "{page}");
    assert!(page.contains(">confirmed<"), "{page}");

    for (worker, exec, spool) in [
        (first, first_exec, first_spool),
        (second, second_exec, second_spool),
    ] {
        worker.stop().await;
        exec.shutdown().await;
        spool.wait_idle().await;
    }
    master.stop().await;
}

/// A calibration (A/A) run over the fixtures that build (stable on both sides, with
/// confirmation on): no regression and no fix, so nothing to confirm. The canaries are left out:
/// they test the sandbox, not the comparison, and cost minutes each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_calibration_run_of_the_fixtures_finds_no_regression() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = caldera_storage::open(&StorageConfig::local(dir.path().join("objects"))).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store.clone())
            .await;
    let t = tokens(&db.pool).await;
    let (worker, exec, spool) =
        docker_worker(&master, &t.worker, dir.path(), store, "aa", 1, |_| {}).await;
    let crates: Vec<String> = [
        "pass",
        "compile-error",
        "test-fail",
        "warnings",
        "debug-overflow",
        "broken-path-dep",
        "regress-on-nightly",
        "fixed-on-nightly",
        "diagnostics-change-on-nightly",
        "flaky-on-nightly",
        "missing-example",
        "contaminate-a",
        "contaminate-b",
    ]
    .iter()
    .map(|c| fixture(c))
    .collect();
    start_experiment_with(
        &master.http,
        &t.operator,
        "aa",
        &crates,
        serde_json::json!({"end": "stable", "calibration": true, "confirm": 1}),
    )
    .await;
    wait_status(&db.pool, "aa", "completed", Duration::from_secs(1200)).await;
    let results: serde_json::Value =
        serde_json::from_str(&report_file(&master.http, &t.operator, "aa", "results.json").await)
            .unwrap();
    let counts = &results["counts"];
    assert_eq!(
        (&counts["regressed"], &counts["fixed"]),
        (&serde_json::json!(0), &serde_json::json!(0)),
        "{results:#}"
    );
    assert_eq!(results["confirmation"]["confirmed"], 0, "{results:#}");
    assert_eq!(results["total"], crates.len(), "{results:#}");
    worker.stop().await;
    exec.shutdown().await;
    spool.wait_idle().await;
    master.stop().await;
}
