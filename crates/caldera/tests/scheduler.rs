//! End to end: HTTP API → Postgres → scheduler → gRPC → worker agents (fake executor) → results.
//! Real Postgres, real gRPC on loopback, real processes where a process must die.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_db::testing::TestDb;
use caldera_proto::v1::{
    self, master_message, worker_message, worker_service_client::WorkerServiceClient,
};
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use caldera_worker::result_spool::ResultSpool;
use common::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_run_2000_jobs_exactly_once() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new().with_crate(
        "fx00007",
        FakeBehaviour::outcomes(
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::CompilerError {
                codes: vec!["E0308".into()],
            }),
        ),
    );
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let name = format!("w{i}");
            InProcessWorker::spawn(
                worker_config(&master.grpc, &t.worker, &name, 2, &spool.path().join(&name)),
                exec.clone(),
            )
        })
        .collect();
    start_experiment(&master.http, &t.operator, "big", &crate_names(2000)).await;
    wait_status(&db.pool, "big", "completed", Duration::from_secs(180)).await;
    assert_exactly_one_result_each(&db.pool, "big", 2000).await;

    let stats = exec.stats();
    assert_eq!(stats.started, 2000, "no job ran twice");
    assert!(
        stats.max_running <= 8,
        "never more than 4 × 2 slots at once: {}",
        stats.max_running
    );
    let regressed: String = sqlx::query_scalar(
        "SELECT r.outcome->'reason'->>'kind' FROM results r JOIN crates c ON c.id = r.crate_id WHERE c.name = 'fx00007' AND r.toolchain = 'end'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(regressed, "compiler-error");
    let per_worker: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM results GROUP BY worker_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        per_worker.len(),
        4,
        "all four workers took part: {per_worker:?}"
    );

    let metrics = reqwest::get(format!("{}/metrics", master.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("caldera_jobs_completed_total 2000"),
        "{metrics}"
    );
    assert!(metrics.contains("caldera_workers_connected 4"), "{metrics}");
    assert!(
        metrics.contains("caldera_claim_latency_seconds_count"),
        "{metrics}"
    );
    for w in workers {
        w.stop().await;
    }
    master.stop().await;
}

/// Runs as a separate worker process for `killed_worker_process_jobs_run_elsewhere` (re-executed
/// from this test binary); does nothing when run directly.
#[tokio::test]
#[ignore]
async fn child_worker_process() {
    let (Ok(master), Ok(token), Ok(spool)) = (
        std::env::var("CALDERA_E2E_CHILD_MASTER"),
        std::env::var("CALDERA_E2E_CHILD_TOKEN"),
        std::env::var("CALDERA_E2E_CHILD_SPOOL"),
    ) else {
        return;
    };
    let exec = FakeExecutor::new()
        .with_default(FakeBehaviour::default().with_delay(Duration::from_secs(600)));
    let config = worker_config(&master, &token, "victim", 4, std::path::Path::new(&spool));
    caldera_worker::run(config, std::sync::Arc::new(exec), std::future::pending())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_process_jobs_run_elsewhere() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    start_experiment(&master.http, &t.operator, "kill", &crate_names(12)).await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_worker_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("CALDERA_E2E_CHILD_MASTER", &master.grpc)
        .env("CALDERA_E2E_CHILD_TOKEN", &t.worker)
        .env("CALDERA_E2E_CHILD_SPOOL", spool.path().join("victim"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // the victim holds four jobs mid-run: claimed for it, and renewed by one of its heartbeats
    // (the lease, 2 s from the claim, was extended)
    // since (which lists only jobs it received; a job claimed but not yet sent would be handed
    // back when the victim dies, not left to expire)
    wait_count(
        &db.pool,
        "SELECT count(*) FROM jobs j JOIN workers w ON w.id = j.lease_owner JOIN leases l ON l.id = j.lease_id
         WHERE w.name = 'victim' AND j.state = 'running'
           AND l.expires_at > j.claimed_at + make_interval(secs => 2)",
        4,
        Duration::from_secs(60),
    )
    .await;
    let victim_jobs: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let exec = FakeExecutor::new();
    let survivor = InProcessWorker::spawn(
        worker_config(
            &master.grpc,
            &t.worker,
            "survivor",
            4,
            &spool.path().join("survivor"),
        ),
        exec.clone(),
    );
    wait_status(&db.pool, "kill", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&db.pool, "kill", 12).await;
    assert_eq!(
        exec.runs(),
        12,
        "the survivor ran everything once, the victim's jobs after their leases expired"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempt FROM jobs WHERE id = ANY($1) ORDER BY id")
            .bind(&victim_jobs)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        vec![2; 4],
        "the victim's jobs were re-run as a second attempt"
    );
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT w.name FROM results r JOIN workers w ON w.id = r.worker_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(owners, vec!["survivor"]);
    survivor.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_process_restart_loses_and_doubles_nothing() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let (http, grpc) = (free_addr(), free_addr());
    let spawn_master = || {
        Command::new(env!("CARGO_BIN_EXE_caldera"))
            .args([
                "master",
                "--listen",
                &http.to_string(),
                "--grpc-listen",
                &grpc.to_string(),
                // the fixture names are in no index: no live lookups
                "--registry-url",
                "none",
            ])
            .args([
                "--lease-secs",
                "3",
                "--heartbeat-ms",
                "300",
                "--reap-interval-ms",
                "200",
            ])
            .env("CALDERA_DATABASE_URL", &db.url)
            .env("CALDERA_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_up = || async {
        for _ in 0..200 {
            if reqwest::get(format!("http://{http}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("master did not come up");
    };
    let mut master = spawn_master();
    wait_up().await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new()
        .with_default(FakeBehaviour::default().with_delay(Duration::from_millis(100)));
    let grpc_url = format!("http://{grpc}");
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let name = format!("w{i}");
            InProcessWorker::spawn(
                worker_config(&grpc_url, &t.worker, &name, 2, &spool.path().join(&name)),
                exec.clone(),
            )
        })
        .collect();
    start_experiment(
        &format!("http://{http}"),
        &t.operator,
        "restart",
        &crate_names(60),
    )
    .await;
    wait_count(
        &db.pool,
        "SELECT count(*) FROM jobs WHERE state = 'done'",
        15,
        Duration::from_secs(60),
    )
    .await;

    // Kill while jobs run on the workers (right after a batch of results the workers can be
    // between jobs, and then nothing would finish while the master is away).
    tokio::time::timeout(Duration::from_secs(30), exec.wait_for(|s| s.running >= 2))
        .await
        .expect("the workers run jobs");
    master.kill().unwrap(); // SIGKILL: no goodbye to anyone
    master.wait().unwrap();
    let at_kill = exec.stats();
    // workers keep running their jobs; results finished meanwhile are spooled
    tokio::time::timeout(
        Duration::from_secs(30),
        exec.wait_for(|s| s.finished > at_kill.finished),
    )
    .await
    .unwrap_or_else(|_| panic!("no job finished while the master was away: {at_kill:?}"));
    let mut master = spawn_master();
    wait_up().await;

    wait_status(&db.pool, "restart", "completed", Duration::from_secs(60)).await;
    assert_exactly_one_result_each(&db.pool, "restart", 60).await;
    for w in workers {
        w.stop().await;
    }
    for name in ["w0", "w1"] {
        let left = ResultSpool::read_dir_results(spool.path().join(name)).unwrap();
        assert!(
            left.is_empty(),
            "{name}'s spool holds no result: every result was acknowledged: {left:?}"
        );
    }
    master.kill().unwrap();
    master.wait().unwrap();
}

async fn raw_session(
    grpc: &str,
    token: &str,
) -> (
    tokio::sync::mpsc::Sender<v1::WorkerMessage>,
    tonic::Streaming<v1::MasterMessage>,
) {
    let mut client = WorkerServiceClient::connect(grpc.to_owned()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = v1::Hello {
        name: "raw".into(),
        version: "test".into(),
        capabilities: vec![],
        slots: 1,
        running: vec![],
        toolchains: vec![],
        environment: None,
    };
    tx.send(v1::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let inbound = client.session(req).await.unwrap().into_inner();
    (tx, inbound)
}

async fn next(inbound: &mut tonic::Streaming<v1::MasterMessage>) -> master_message::Kind {
    tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("a message in time")
        .unwrap()
        .unwrap()
        .kind
        .unwrap()
}

/// The master measures how late each heartbeat comes after the previous one on its stream (the
/// margin a lease loses): the first heartbeat of a stream has nothing to compare with, a
/// heartbeat 400 ms after the interval is 400 ms late, and every heartbeat's handling is timed.
#[tokio::test]
async fn heartbeat_lateness_is_measured_per_stream() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let config = fast_config();
    let master = InProcessMaster::start(db.pool.clone(), config.clone(), None).await;
    let beat = || v1::WorkerMessage {
        kind: Some(worker_message::Kind::Heartbeat(v1::Heartbeat::default())),
    };
    let (a, mut a_in) = raw_session(&master.grpc, &t.worker).await;
    let (b, mut b_in) = raw_session(&master.grpc, &t.worker).await;
    for inbound in [&mut a_in, &mut b_in] {
        assert!(matches!(
            next(inbound).await,
            master_message::Kind::Welcome(_)
        ));
    }
    // one heartbeat on each stream: nothing to be late after
    a.send(beat()).await.unwrap();
    b.send(beat()).await.unwrap();
    tokio::time::sleep(config.heartbeat_interval + Duration::from_millis(400)).await;
    a.send(beat()).await.unwrap();

    let metric = |text: &str, key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = reqwest::get(format!("{}/metrics", master.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "caldera_heartbeat_handling_seconds_count") == 3.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "3 heartbeats handled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let lateness = "caldera_heartbeat_lateness_seconds";
    assert_eq!(metric(&text, &format!("{lateness}_count")), 1.0, "{text}");
    // about 0.4 s: not in the buckets up to 0.256 s, in the one up to 2.048 s
    assert_eq!(
        metric(&text, &format!("{lateness}_bucket{{le=\"0.256\"}}")),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("{lateness}_bucket{{le=\"2.048\"}}")),
        1.0,
        "{text}"
    );
    let late = metric(&text, &format!("{lateness}_sum"));
    assert!((0.35..2.0).contains(&late), "{late} s late:\n{text}");
    drop((a, b));
    master.stop().await;
}

fn result(job_id: u64, token: &str, end: Outcome) -> v1::WorkerMessage {
    let side = |o: &Outcome| v1::SideResult {
        outcome: Some(o.into()),
        duration_ms: 5,
        ..Default::default()
    };
    v1::WorkerMessage {
        kind: Some(worker_message::Kind::Result(v1::JobResult {
            job_id,
            lease_token: token.into(),
            start: Some(side(&Outcome::TestPass)),
            end: Some(side(&end)),
        })),
    }
}

#[tokio::test]
async fn stale_and_duplicate_results_are_rejected() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    start_experiment(&master.http, &t.operator, "fence", &crate_names(1)).await;
    let (tx, mut inbound) = raw_session(&master.grpc, &t.worker).await;
    assert!(matches!(
        next(&mut inbound).await,
        master_message::Kind::Welcome(_)
    ));
    let master_message::Kind::Assign(assign) = next(&mut inbound).await else {
        panic!("expected an assignment")
    };
    assert_eq!(assign.spec.as_ref().unwrap().crate_id, "reg:fx00000@1.0.0");

    let snapshot = || async {
        sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT coalesce(json_agg(r.outcome ORDER BY r.crate_id, r.toolchain), '[]') FROM results r",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    // a made-up lease token: rejected, nothing written, the job still runs
    let stale = uuid::Uuid::new_v4().to_string();
    tx.send(result(assign.job_id, &stale, Outcome::TestPass))
        .await
        .unwrap();
    let master_message::Kind::Ack(ack) = next(&mut inbound).await else {
        panic!("expected an ack")
    };
    assert!(!ack.accepted && ack.lease_token == stale, "{ack:?}");
    assert_eq!(snapshot().await, serde_json::json!([]));
    assert_eq!(
        job_states(&db.pool, "fence").await,
        vec![("running".to_owned(), 1)]
    );

    // a malformed one: rejected, naming the field
    tx.send(result(assign.job_id, "not-a-token", Outcome::TestPass))
        .await
        .unwrap();
    let master_message::Kind::Ack(ack) = next(&mut inbound).await else {
        panic!("expected an ack")
    };
    assert!(
        !ack.accepted && ack.reason.contains("lease_token"),
        "{ack:?}"
    );

    // the current lease: accepted
    let fail = Outcome::TestFail {
        failed_tests: vec!["t::x".into()],
        reason: None,
    };
    tx.send(result(assign.job_id, &assign.lease_token, fail))
        .await
        .unwrap();
    let master_message::Kind::Ack(ack) = next(&mut inbound).await else {
        panic!("expected an ack")
    };
    assert!(ack.accepted, "{ack:?}");
    let recorded = snapshot().await;
    assert_eq!(recorded.as_array().unwrap().len(), 2);

    // the same result again, and a different one under the same token: rejected, nothing overwritten
    tx.send(result(
        assign.job_id,
        &assign.lease_token,
        Outcome::TestPass,
    ))
    .await
    .unwrap();
    let master_message::Kind::Ack(ack) = next(&mut inbound).await else {
        panic!("expected an ack")
    };
    assert!(!ack.accepted, "{ack:?}");
    assert_eq!(snapshot().await, recorded);
    wait_status(&db.pool, "fence", "completed", Duration::from_secs(10)).await;
    let metrics = reqwest::get(format!("{}/metrics", master.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"caldera_results_rejected_total{reason="stale-lease"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"caldera_results_rejected_total{reason="malformed"} 1"#),
        "{metrics}"
    );
    master.stop().await;
}

#[tokio::test]
async fn workers_need_a_worker_token() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    for (token, code) in [
        (t.operator.as_str(), tonic::Code::PermissionDenied),
        ("cldr_nope", tonic::Code::Unauthenticated),
    ] {
        let mut client = WorkerServiceClient::connect(master.grpc.clone())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let hello = v1::Hello {
            name: "x".into(),
            slots: 1,
            ..Default::default()
        };
        tx.send(v1::WorkerMessage {
            kind: Some(worker_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let err = client.session(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
    }
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "a refused worker is not registered");
    master.stop().await;
}

/// Revoking a worker's token ends its open stream at its next heartbeat: the worker stops with
/// the refusal, its jobs go back to the queue when their lease expires, and it cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_worker_token_ends_its_open_stream() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let (row, secret) =
        caldera_db::tokens::create(&db.pool, "doomed", caldera_db::tokens::Role::Worker)
            .await
            .unwrap();
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new().with_default(FakeBehaviour::default().gated("hold"));
    let worker = InProcessWorker::spawn(
        worker_config(&master.grpc, &secret, "doomed", 2, spool.path()),
        exec.clone(),
    );
    start_experiment(&master.http, &t.operator, "revoked", &crate_names(3)).await;
    exec.wait_for(|s| s.running == 2).await;

    // what `caldera token revoke` does
    caldera_db::tokens::revoke(&db.pool, row.id).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), worker.task)
        .await
        .expect("the worker stops within a few heartbeats")
        .unwrap();
    let err = ended.expect_err("the worker stops with an error");
    assert!(
        matches!(&err, caldera_worker::WorkerError::Unauthorized { message, .. } if message.contains("revoked")),
        "{err:?}"
    );
    // its two jobs come back after the lease (2 s) and a worker with a valid token runs all three
    exec.open_gate("hold");
    let spool2 = tempfile::tempdir().unwrap();
    let other = InProcessWorker::spawn(
        worker_config(&master.grpc, &t.worker, "other", 2, spool2.path()),
        FakeExecutor::new(),
    );
    wait_count(
        &db.pool,
        "SELECT count(*) FROM jobs WHERE state = 'done'",
        3,
        Duration::from_secs(20),
    )
    .await;
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempt FROM jobs ORDER BY attempt")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        attempts,
        [1, 2, 2],
        "the revoked worker's two jobs ran again"
    );
    assert_exactly_one_result_each(&db.pool, "revoked", 3).await;
    other.stop().await;
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_abort() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new().with_default(FakeBehaviour::default().gated("hold"));
    let worker = InProcessWorker::spawn(
        worker_config(&master.grpc, &t.worker, "w", 2, spool.path()),
        exec.clone(),
    );
    let (http, op) = (master.http.as_str(), t.operator.as_str());

    start_experiment(http, op, "pausable", &crate_names(10)).await;
    exec.wait_for(|s| s.running == 2).await;
    assert_eq!(
        api(http, op, Method::POST, "/experiments/pausable/pause", None)
            .await
            .0,
        200
    );
    exec.open_gate("hold"); // the two running jobs finish; nothing new is handed out while paused
    wait_count(
        &db.pool,
        "SELECT count(*) FROM jobs WHERE state = 'done'",
        2,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await; // > one dispatch tick
    assert_eq!(exec.runs(), 2, "no job started while paused");
    assert_eq!(status(&db.pool, "pausable").await, "paused");
    assert_eq!(
        api(http, op, Method::POST, "/experiments/pausable/resume", None)
            .await
            .0,
        200
    );
    wait_status(&db.pool, "pausable", "completed", Duration::from_secs(20)).await;
    assert_exactly_one_result_each(&db.pool, "pausable", 10).await;

    // abort: running jobs are cancelled on the worker, queued ones never run, no result is kept
    exec.set_crate("fx00000", FakeBehaviour::default().gated("never"));
    exec.set_crate("fx00001", FakeBehaviour::default().gated("never"));
    let before = exec.runs();
    let crates: Vec<String> = crate_names(6);
    let body = serde_json::json!({"name": "doomed", "start": "stable", "end": "nightly", "crates": {"kind": "list", "crates": crates}});
    assert_eq!(
        api(http, op, Method::POST, "/experiments", Some(body))
            .await
            .0,
        201
    );
    // make the first two crates the only ones that can start before the abort
    assert_eq!(
        api(http, op, Method::POST, "/experiments/doomed/start", None)
            .await
            .0,
        200
    );
    exec.wait_for(|s| s.running == 2).await;
    let (code, v) = api(http, op, Method::POST, "/experiments/doomed/abort", None).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("aborted")));
    exec.wait_for(|s| s.cancelled >= 2).await;
    let states = job_states(&db.pool, "doomed").await;
    assert_eq!(
        states
            .iter()
            .filter(|(s, _)| s != "cancelled" && s != "done")
            .count(),
        0,
        "{states:?}"
    );
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results r JOIN experiments e ON e.id = r.experiment_id WHERE e.name = 'doomed'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let done = states
        .iter()
        .find(|(s, _)| s == "done")
        .map_or(0, |(_, n)| *n);
    assert_eq!(results, done * 2, "only finished jobs have results");
    assert!(exec.runs() - before <= 6);
    worker.stop().await;
    master.stop().await;
}

/// An experiment whose last results were recorded without this master completing it (a previous
/// master committed the last batch and stopped before moving the experiment on) is completed by
/// the reaper's sweep, not left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_experiments_left_running_are_completed_by_the_reaper() {
    use caldera_db::jobs::{self, Completion, SideRecord};
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    start_experiment(&master.http, &t.operator, "orphan", &crate_names(3)).await;
    // no worker is connected: settle the jobs directly, as another master would have
    let now = chrono::Utc::now();
    let (token, _) =
        caldera_db::tokens::create(&db.pool, "direct", caldera_db::tokens::Role::Worker)
            .await
            .unwrap();
    let worker = caldera_db::workers::connect(&db.pool, "direct", "0", &[], 3, token.id, now)
        .await
        .unwrap();
    let claimed = jobs::claim(&db.pool, worker, &[], 3, now, chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let side = SideRecord {
        cache_key: None,
        outcome: Outcome::TestPass,
        log_key: None,
        duration_ms: 1,
        peak_memory_bytes: 0,
        steps: Vec::new(),
    };
    let batch: Vec<Completion> = claimed
        .iter()
        .map(|c| Completion {
            job_id: c.job_id,
            lease_token: c.lease_token,
            worker,
            start: side.clone(),
            end: side.clone(),
        })
        .collect();
    let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
    assert_eq!(out.accepted.len(), 3);
    assert_eq!(status(&db.pool, "orphan").await, "running");
    wait_status(&db.pool, "orphan", "completed", Duration::from_secs(10)).await;
    assert_exactly_one_result_each(&db.pool, "orphan", 3).await;
    master.stop().await;
}

/// Crate ids (`reg:…`) of the experiment's results of `run`, with the name of the worker that
/// ran them, by crate.
async fn runs_by_worker(
    pool: &caldera_db::PgPool,
    name: &str,
    crate_name: &str,
) -> Vec<(i16, String)> {
    sqlx::query_as(
        "SELECT DISTINCT r.run, w.name FROM results r JOIN experiments e ON e.id = r.experiment_id
         JOIN crates c ON c.id = r.crate_id JOIN workers w ON w.id = r.worker_id
         WHERE e.name = $1 AND c.name = $2 ORDER BY 1",
    )
    .bind(name)
    .bind(crate_name)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A crate that regresses is run twice more, on the other worker; one that regresses only on its
/// first run ends flaky; the experiment completes only after the confirmation runs, and the API
/// tells each crate's status, runs and logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regressions_are_confirmed_on_the_other_worker() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let broken = || {
        Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        })
    };
    let exec = FakeExecutor::new()
        .with_crate(
            "fx00001",
            FakeBehaviour::outcomes(Outcome::TestPass, broken()),
        )
        .with_crate(
            "fx00002",
            FakeBehaviour::outcomes(Outcome::TestPass, broken())
                .on_reruns(Outcome::TestPass, Outcome::TestPass),
        );
    let workers: Vec<_> = ["w0", "w1"]
        .iter()
        .map(|name| {
            InProcessWorker::spawn(
                worker_config(&master.grpc, &t.worker, name, 2, &spool.path().join(name)),
                exec.clone(),
            )
        })
        .collect();
    wait_count(
        &db.pool,
        "SELECT count(*) FROM workers WHERE connected",
        2,
        Duration::from_secs(30),
    )
    .await;
    start_experiment_with(
        &master.http,
        &t.operator,
        "confirm",
        &crate_names(6),
        serde_json::json!({"confirm": 2}),
    )
    .await;
    wait_status(&db.pool, "confirm", "completed", Duration::from_secs(60)).await;
    assert_eq!(
        exec.runs(),
        6 + 2 * 2,
        "two crates regressed, each re-run twice"
    );
    assert_eq!(
        job_states(&db.pool, "confirm").await,
        vec![("done".to_owned(), 10)]
    );
    assert_counts_exact(&db.pool).await;
    for krate in ["fx00001", "fx00002"] {
        let runs = runs_by_worker(&db.pool, "confirm", krate).await;
        assert_eq!(runs.len(), 3, "{krate}: {runs:?}");
        let first = &runs[0].1;
        assert!(
            runs[1..].iter().all(|(_, w)| w != first),
            "{krate}: the confirmation runs ran on the other worker: {runs:?}"
        );
    }

    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/experiments/confirm/confirmations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            &v["confirm"],
            &v["confirmed"],
            &v["flaky"],
            &v["pending"],
            &v["runs_finished"]
        ),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(4)
        ),
        "{v:#}"
    );
    let crates = v["crates"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = crates
        .iter()
        .map(|c| {
            (
                c["crate"].as_str().unwrap(),
                c["comparison"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("reg:fx00001@1.0.0", "regressed", "confirmed"),
            ("reg:fx00002@1.0.0", "regressed", "flaky")
        ]
    );
    let flaky_runs: Vec<(i64, &str)> = crates[1]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["run"].as_i64().unwrap(),
                r["comparison"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flaky_runs,
        [
            (0, "regressed"),
            (1, "same-test-pass"),
            (2, "same-test-pass")
        ]
    );
    assert_eq!(crates[1]["runs"][1]["end"]["outcome"]["kind"], "test-pass");
    // the report's reads see the first runs only
    let first_runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM results r JOIN experiments e ON e.id = r.experiment_id
         WHERE e.name = 'confirm' AND r.run = 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(first_runs, 12);
    let (status, _) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/experiments/nope/confirmations",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let metrics = reqwest::get(format!("{}/metrics", master.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("caldera_confirmation_runs_queued_total 4"),
        "{metrics}"
    );
    for w in workers {
        w.stop().await;
    }
    master.stop().await;
}

/// With one worker the confirmation runs still run (there), and a calibration (A/A) experiment,
/// the same toolchain on both sides, runs like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_worker_confirms_its_own_regressions_in_a_calibration_run() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let exec = FakeExecutor::new().with_crate(
        "fx00000",
        FakeBehaviour::outcomes(
            Outcome::BuildFail(BuildFailReason::CompilerError { codes: vec![] }),
            Outcome::TestPass,
        ),
    );
    let worker = InProcessWorker::spawn(
        worker_config(
            &master.grpc,
            &t.worker,
            "solo",
            2,
            &spool.path().join("solo"),
        ),
        exec.clone(),
    );
    // without `calibration`, the same toolchain on both sides is refused
    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::POST,
        "/experiments",
        Some(serde_json::json!({"name": "aa", "start": "stable", "end": "stable", "crates": "a@1.0.0"})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["field"], "end");
    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::POST,
        "/experiments",
        Some(serde_json::json!({"name": "aa", "start": "stable", "end": "stable", "crates": "a@1.0.0", "calibration": true, "confirm": 6})),
    )
    .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["field"], "confirm");
    start_experiment_with(
        &master.http,
        &t.operator,
        "aa",
        &crate_names(3),
        serde_json::json!({"end": "stable", "calibration": true, "confirm": 1}),
    )
    .await;
    wait_status(&db.pool, "aa", "completed", Duration::from_secs(60)).await;
    assert_eq!(exec.runs(), 3 + 1);
    assert_eq!(
        runs_by_worker(&db.pool, "aa", "fx00000").await,
        [(0, "solo".to_owned()), (1, "solo".to_owned())]
    );
    assert_counts_exact(&db.pool).await;
    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/experiments/aa/confirmations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["crates"][0]["status"], "confirmed", "{v:#}");
    assert_eq!(v["crates"][0]["comparison"], "fixed", "{v:#}");
    let (_, e) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/experiments/aa",
        None,
    )
    .await;
    assert_eq!(
        (&e["calibration"], &e["start"], &e["end"]),
        (&serde_json::json!(true), &e["end"], &e["start"])
    );
    // the same toolchain failed to build on one side and passed on the other, twice (run 0 and
    // its confirmation run): the flaky memory has it from the calibration, with count 2
    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/flakes?crate=fx00000",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let flakes = v["flakes"].as_array().unwrap();
    assert_eq!(flakes.len(), 1, "{v:#}");
    assert_eq!(
        (
            &flakes[0]["subject"],
            &flakes[0]["count"],
            &flakes[0]["last"]["source"]
        ),
        (
            &serde_json::json!("build-fail:compiler-error"),
            &serde_json::json!(2),
            &serde_json::json!("calibration")
        ),
        "{v:#}"
    );
    worker.stop().await;
    master.stop().await;
}

/// A test that fails on a first run and passes on its confirmation run is remembered as flaky
/// (per crate version, with the evidence); the same flake in a later experiment counts again; the
/// API lists it for the crate and for the experiments whose crates it concerns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flake_seen_in_confirmation_runs_is_remembered_across_experiments() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let spool = tempfile::tempdir().unwrap();
    let flaky = Outcome::TestFail {
        failed_tests: vec!["net::retries".into()],
        reason: None,
    };
    let exec = FakeExecutor::new().with_crate(
        "fx00001",
        FakeBehaviour::outcomes(Outcome::TestPass, flaky.clone())
            .on_reruns(Outcome::TestPass, Outcome::TestPass),
    );
    let worker = InProcessWorker::spawn(
        worker_config(
            &master.grpc,
            &t.worker,
            "solo",
            2,
            &spool.path().join("solo"),
        ),
        exec.clone(),
    );
    for (round, name) in ["flaky1", "flaky2"].into_iter().enumerate() {
        start_experiment_with(
            &master.http,
            &t.operator,
            name,
            &crate_names(3),
            serde_json::json!({"confirm": 1}),
        )
        .await;
        wait_status(&db.pool, name, "completed", Duration::from_secs(60)).await;
        let (status, v) = api(
            &master.http,
            &t.operator,
            Method::GET,
            "/flakes?crate=fx00001",
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let flakes = v["flakes"].as_array().unwrap();
        assert_eq!(flakes.len(), 1, "{v:#}");
        let f = &flakes[0];
        assert_eq!(
            (&f["crate"], &f["subject"], &f["count"]),
            (
                &serde_json::json!("reg:fx00001@1.0.0"),
                &serde_json::json!("test:net::retries"),
                &serde_json::json!(round + 1)
            ),
            "{v:#}"
        );
        assert_eq!(
            (
                &f["last"]["experiment"],
                &f["last"]["source"],
                &f["last"]["run"],
                &f["last"]["side"]
            ),
            (
                &serde_json::json!(name),
                &serde_json::json!("confirmation"),
                &serde_json::json!(1),
                &serde_json::json!("end")
            ),
            "{v:#}"
        );
        // (the fake executor stores no logs: the evidence's log keys are tested in caldera-db)
        let (status, v) = api(
            &master.http,
            &t.operator,
            Method::GET,
            &format!("/experiments/{name}/flakes"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let crates = v["crates"].as_object().unwrap();
        assert_eq!(
            crates.keys().collect::<Vec<_>>(),
            ["reg:fx00001@1.0.0"],
            "{v:#}"
        );
        assert_eq!(
            crates["reg:fx00001@1.0.0"][0]["subject"],
            "test:net::retries"
        );
    }
    // a later experiment without re-runs: the same failure is known flaky, named with its
    // evidence in results.json and kept out of the regressions
    start_experiment_with(
        &master.http,
        &t.operator,
        "flaky3",
        &crate_names(3),
        serde_json::json!({"confirm": 0}),
    )
    .await;
    wait_status(&db.pool, "flaky3", "completed", Duration::from_secs(60)).await;
    let results: serde_json::Value = serde_json::from_str(
        &report_file(&master.http, &t.operator, "flaky3", "results.json").await,
    )
    .unwrap();
    assert_eq!(results["regressions"], serde_json::json!([]), "{results:#}");
    assert_eq!(results["flaky"], serde_json::json!(["reg:fx00001@1.0.0"]));
    assert_eq!(results["confirmation"]["known_flaky"], 1);
    assert_eq!(
        results["known_flakes"]["reg:fx00001@1.0.0"][0]["subject"],
        "test:net::retries"
    );
    let entry = results["crates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["crate"] == "reg:fx00001@1.0.0")
        .unwrap();
    assert_eq!(entry["confirmation"], "known-flaky");
    // the crate's dashboard page shows what the flaky memory knows, and the badge
    let page = reqwest::Client::new()
        .get(format!(
            "{}/experiments/flaky3/crates/reg%3Afx00001%401.0.0",
            master.http
        ))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("Known flaky"), "{page}");
    assert!(page.contains("test:net::retries"), "{page}");
    assert!(page.contains("known flaky</span>"), "{page}");

    // other crates, and a crate name with no flakes
    let (status, v) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/flakes?crate=fx00002",
        None,
    )
    .await;
    assert_eq!((status, &v["flakes"]), (200, &serde_json::json!([])), "{v}");
    let (status, v) = api(&master.http, &t.operator, Method::GET, "/flakes", None).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["field"], "crate");
    let (status, _) = api(
        &master.http,
        &t.operator,
        Method::GET,
        "/experiments/nope/flakes",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = api(&master.http, "", Method::GET, "/flakes?crate=fx00001", None).await;
    assert_eq!(status, 401);
    let metrics = reqwest::get(format!("{}/metrics", master.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("caldera_flakes_recorded_total 2"),
        "{metrics}"
    );
    assert_counts_exact(&db.pool).await;
    worker.stop().await;
    master.stop().await;
}
