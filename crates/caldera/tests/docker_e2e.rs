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
use caldera_storage::{Spool, SpoolConfig, StorageConfig};
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
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

    // the worker: the Docker executor over its own work dir, uploading to the master's store
    let spool = Arc::new(
        Spool::open(
            store.clone(),
            SpoolConfig::new(dir.path().join("upload-spool")),
        )
        .await
        .unwrap(),
    );
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: format!("test-e2e-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rustup_home = default_rustup_home().expect("RUSTUP_HOME or HOME");
    let mut config = DockerExecutorConfig::new(dir.path().join("work"), &rustup_home);
    config.slots = 2;
    config.limits = Limits {
        memory_bytes: 1 << 30,
        cpus: 1.0,
        pids: 512,
        tmp_bytes: 256 << 20,
    };
    config.timeouts = Timeouts {
        total: Duration::from_secs(300),
        no_output: Duration::from_secs(120),
    };
    let executor = Arc::new(DockerExecutor::new(config, sandbox, spool.clone()).unwrap());
    let mut wconfig = worker_config(
        &master.grpc,
        &t.worker,
        "docker-e2e",
        2,
        &dir.path().join("spool"),
    );
    wconfig.capabilities = caldera_worker::docker::capabilities(&rustup_home)
        .await
        .unwrap();
    assert!(
        wconfig
            .capabilities
            .iter()
            .any(|c| c == "toolchain:nightly"),
        "this test needs a nightly toolchain in {}: {:?}",
        rustup_home.display(),
        wconfig.capabilities
    );
    // a fast lease would expire during real builds: keep the fast heartbeats, which renew it
    let worker = InProcessWorker::spawn_with(wconfig, executor.clone());

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
