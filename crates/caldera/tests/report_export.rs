//! End to end: when the scheduler completes an experiment, its report files are exported to
//! object storage without anyone asking (the completion hook), and served by the API.

mod common;

use std::time::{Duration, Instant};

use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_db::testing::TestDb;
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use common::*;

#[tokio::test]
async fn a_completed_experiment_gets_its_report() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let executor = FakeExecutor::new().with_crate(
        "fx00001",
        FakeBehaviour::outcomes(
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::CompilerError {
                codes: vec!["E0599".into()],
            }),
        ),
    );
    let spool = tempfile::tempdir().unwrap();
    let worker = InProcessWorker::spawn(
        worker_config(&master.grpc, &t.worker, "w1", 4, spool.path()),
        executor,
    );
    let crates = crate_names(20);
    start_experiment(&master.http, &t.operator, "auto-report", &crates).await;
    wait_status(
        &db.pool,
        "auto-report",
        "completed",
        Duration::from_secs(60),
    )
    .await;

    // The export runs in the background after completion: poll for it.
    let t0 = Instant::now();
    let summary = loop {
        let resp = reqwest::Client::new()
            .get(format!(
                "{}/api/v1/experiments/auto-report/report/summary.md",
                master.http
            ))
            .bearer_auth(&t.operator)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break resp.text().await.unwrap();
        }
        assert_eq!(resp.status(), 404);
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no report was exported after the experiment completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        summary.contains("**1 regression, 1 of them through `fx00001 1.0.0`.**"),
        "{summary}"
    );
    assert!(summary.contains("| same-test-pass | 19 |"), "{summary}");
    // Every file is there.
    let t0 = Instant::now();
    loop {
        let (status, listing) = api(
            &master.http,
            &t.operator,
            reqwest::Method::GET,
            "/experiments/auto-report/report",
            None,
        )
        .await;
        assert_eq!(status, 200);
        if listing["files"].as_array().unwrap().len() == 5 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{listing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/experiments/auto-report/report/retry.txt",
            master.http
        ))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let retry = resp.text().await.unwrap();
    assert_eq!(retry, "reg:fx00001@1.0.0\n");
    worker.stop().await;
    master.stop().await;
}
