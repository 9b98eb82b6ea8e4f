//! The worker's session behaviour against a scripted master (see `common`).

mod common;

use std::time::Duration;

use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_proto::v1::{self, master_message};
use caldera_worker::WorkerError;
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use caldera_worker::result_spool::ResultSpool;
use common::{Event, TestMaster, TestWorker, config, eventually, init_tracing, spec, token};

fn outcome(side: &Option<v1::SideResult>) -> Outcome {
    Outcome::try_from(side.clone().unwrap().outcome.unwrap()).unwrap()
}

fn lease(job_id: u64) -> v1::LeaseRef {
    v1::LeaseRef {
        job_id,
        lease_token: token(job_id),
    }
}

#[tokio::test]
async fn hello_welcome_assign_result_and_ack_removes_it_from_the_spool() {
    init_tracing();
    let mut master = TestMaster::start().await;
    master.set_auto_ack(false);
    let spool_dir = tempfile::tempdir().unwrap();
    let regression = Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec!["E0308".into()],
    });
    let fake = FakeExecutor::new().with_crate(
        "regresses",
        FakeBehaviour::outcomes(Outcome::TestPass, regression.clone()),
    );
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());

    let hello = master.expect_hello().await;
    assert_eq!(hello.name, "w1");
    assert_eq!(hello.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        hello.capabilities,
        ["toolchain:stable", "toolchain:nightly", "arch:x86_64"]
    );
    assert_eq!(hello.slots, 2);
    assert!(hello.running.is_empty());

    master.assign(1, "reg:regresses@1.0.0");
    let result = master.expect_result(1).await;
    assert_eq!(result.lease_token, token(1));
    assert_eq!(outcome(&result.start), Outcome::TestPass);
    assert_eq!(outcome(&result.end), regression);

    // spooled before it was sent, kept until acknowledged
    let spooled = || ResultSpool::read_dir_results(spool_dir.path()).unwrap();
    assert_eq!(spooled(), vec![result.clone()]);
    master.ack(1, true);
    eventually("the result leaves the spool after the ack", || {
        spooled().is_empty()
    })
    .await;

    worker.drain_and_join().await.unwrap();
    assert_eq!(fake.runs(), 1);
    assert_eq!(master.results_for(1), 1, "sent once");
}

#[tokio::test]
async fn results_finished_while_the_master_is_down_are_delivered_after_it_comes_back() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new()
        .with_crate("quick", FakeBehaviour::default().gated("quick"))
        .with_crate("long", FakeBehaviour::default().gated("long"));
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;
    master.assign(1, "reg:quick@1.0.0");
    master.assign(2, "reg:long@1.0.0");
    tokio::time::timeout(common::PATIENCE, fake.wait_for(|s| s.running == 2))
        .await
        .unwrap();

    master.stop().await;
    // job 1 finishes while the master is away: its result waits in the spool
    fake.open_gate("quick");
    let spooled = || ResultSpool::read_dir_results(spool_dir.path()).unwrap();
    eventually("job 1's result is spooled", || {
        spooled().iter().any(|r| r.job_id == 1)
    })
    .await;
    assert_eq!(master.results_for(1), 0);

    master.restart().await;
    let hello = master.expect_hello().await;
    assert_eq!(
        hello.running,
        [lease(1), lease(2)],
        "the new Hello lists the job still running and the result not yet acknowledged"
    );
    let result = master.expect_result(1).await;
    assert_eq!(outcome(&result.end), Outcome::TestPass);
    eventually("job 1's result leaves the spool after the ack", || {
        spooled().is_empty()
    })
    .await;

    // the job that ran through the outage reports on the new session
    fake.open_gate("long");
    master.expect_result(2).await;
    worker.drain_and_join().await.unwrap();
    assert!(spooled().is_empty());
    assert_eq!(fake.stats().finished, 2);
}

#[tokio::test]
async fn a_spooled_result_from_an_earlier_run_is_delivered_at_startup() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let earlier = v1::JobResult {
        job_id: 9,
        lease_token: token(9),
        start: Some(v1::SideResult {
            outcome: Some((&Outcome::TestPass).into()),
            duration_ms: 5,
            ..Default::default()
        }),
        end: Some(v1::SideResult {
            outcome: Some((&Outcome::Skipped).into()),
            ..Default::default()
        }),
    };
    // written by an earlier run, which has ended (the directory has one owner at a time)
    ResultSpool::open(spool_dir.path())
        .unwrap()
        .write_blocking(&earlier)
        .unwrap();

    // the master is not there yet when the worker starts: it keeps trying
    master.stop().await;
    let fake = FakeExecutor::new();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    master.restart().await;

    master.expect_hello().await;
    assert_eq!(master.expect_result(9).await, earlier);
    eventually("the result leaves the spool after the ack", || {
        ResultSpool::read_dir_results(spool_dir.path())
            .unwrap()
            .is_empty()
    })
    .await;
    worker.drain_and_join().await.unwrap();
    assert_eq!(fake.runs(), 0, "nothing was run again");
}

#[tokio::test]
async fn cancel_stops_the_job_and_its_result_is_not_sent() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("stuck", FakeBehaviour::default().gated("never"));
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;

    master.assign(1, "reg:stuck@1.0.0");
    tokio::time::timeout(common::PATIENCE, fake.wait_for(|s| s.running == 1))
        .await
        .unwrap();
    master.cancel(1);
    tokio::time::timeout(
        common::PATIENCE,
        fake.wait_for(|s| s.cancelled == 1 && s.running == 0),
    )
    .await
    .unwrap();

    // the worker goes on: the next job runs and reports, and the heartbeats no longer hold job 1
    master.assign(2, "reg:fine@1.0.0");
    master.expect_result(2).await;
    master
        .expect("a heartbeat listing no job", |e| {
            matches!(e, Event::Heartbeat(h) if h.running.is_empty()).then_some(())
        })
        .await;
    worker.drain_and_join().await.unwrap();

    assert_eq!(
        master.results_for(1),
        0,
        "a cancelled job's result is never sent"
    );
    assert!(
        ResultSpool::read_dir_results(spool_dir.path())
            .unwrap()
            .is_empty()
    );
    assert!(
        !master
            .all_events()
            .iter()
            .any(|e| matches!(e, Event::Returned(_))),
        "a cancelled job is not handed back"
    );
}

#[tokio::test]
async fn drain_waits_for_running_jobs_refuses_new_ones_and_returns() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("slow", FakeBehaviour::default().gated("slow"));
    let mut worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;
    master.assign(1, "reg:slow@1.0.0");
    tokio::time::timeout(common::PATIENCE, fake.wait_for(|s| s.running == 1))
        .await
        .unwrap();

    worker.drain();
    // a job offered while draining is handed back (this also shows the drain has begun)
    master.assign(2, "reg:other@1.0.0");
    let returned = master.expect_returned(2).await;
    assert_eq!(returned.lease_token, token(2));
    assert!(returned.reason.contains("draining"), "{}", returned.reason);
    assert!(!worker.is_finished(), "the drain waits for the running job");

    fake.open_gate("slow");
    master.expect_result(1).await;
    worker.join().await.unwrap();
    assert_eq!(fake.stats().finished, 1);
    assert_eq!(fake.runs(), 1, "job 2 never ran");
    assert!(
        ResultSpool::read_dir_results(spool_dir.path())
            .unwrap()
            .is_empty(),
        "the result was acknowledged before leaving"
    );
}

#[tokio::test]
async fn drain_from_the_master_cancels_and_hands_back_what_outlives_the_timeout() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("stuck", FakeBehaviour::default().gated("never"));
    let mut cfg = config(&master, spool_dir.path());
    cfg.drain_timeout = Duration::from_millis(100);
    let worker = TestWorker::spawn(cfg, fake.clone());
    master.expect_hello().await;
    master.assign(1, "reg:stuck@1.0.0");
    tokio::time::timeout(common::PATIENCE, fake.wait_for(|s| s.running == 1))
        .await
        .unwrap();

    master.send(common::master(master_message::Kind::Drain(v1::Drain {
        reason: "deploy".into(),
    })));
    let returned = master.expect_returned(1).await;
    assert_eq!(returned.lease_token, token(1));
    assert!(
        returned.reason.contains("did not finish"),
        "{}",
        returned.reason
    );
    worker.join().await.unwrap();
    assert_eq!(fake.stats().cancelled, 1);
    assert_eq!(master.results_for(1), 0);
}

#[tokio::test]
async fn slots_are_respected() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("busy", FakeBehaviour::default().gated("busy"));
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;

    for job in 1..=5 {
        master.assign(job, "reg:busy@1.0.0");
    }
    for job in 3..=5 {
        let returned = master.expect_returned(job).await;
        assert!(
            returned.reason.contains("no free slot"),
            "{}",
            returned.reason
        );
    }
    assert_eq!(fake.stats().running, 2);
    fake.open_gate("busy");
    master.expect_results(&[1, 2]).await;
    // slots free up again
    master.assign(6, "reg:busy@1.0.0");
    master.expect_result(6).await;
    worker.drain_and_join().await.unwrap();
    let stats = fake.stats();
    assert_eq!((stats.max_running, stats.started), (2, 3));
    assert_eq!(stats.jobs, [1, 2, 6]);
}

#[tokio::test]
async fn heartbeats_list_the_running_leases() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("slow", FakeBehaviour::default().gated("slow"));
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;
    master.assign(7, "reg:slow@1.0.0");

    // the leases are renewed again and again while the job runs
    for _ in 0..3 {
        let beat = master
            .expect("a heartbeat listing job 7", |e| match e {
                Event::Heartbeat(h) if !h.running.is_empty() => Some(h.clone()),
                _ => None,
            })
            .await;
        assert_eq!(beat.running, [lease(7)]);
        assert!(beat.free_disk_bytes > 0);
    }
    fake.open_gate("slow");
    master.expect_result(7).await;
    master
        .expect("a heartbeat listing no job", |e| {
            matches!(e, Event::Heartbeat(h) if h.running.is_empty()).then_some(())
        })
        .await;
    worker.drain_and_join().await.unwrap();
}

/// A finished job's lease is listed until its result is acknowledged: as far as the master's
/// reaper knows the job still runs until the result is written, and a result writer that falls
/// behind by more than a lease must not see the lease expire under a result it already holds.
#[tokio::test]
async fn heartbeats_keep_listing_a_finished_job_until_its_result_is_acknowledged() {
    init_tracing();
    let mut master = TestMaster::start().await;
    master.set_auto_ack(false);
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;
    master.assign(8, "reg:quick@1.0.0");
    master.expect_result(8).await;

    // the result is in; the next heartbeats still list its lease
    for _ in 0..2 {
        let beat = master
            .expect("a heartbeat after the result", |e| match e {
                Event::Heartbeat(h) => Some(h.clone()),
                _ => None,
            })
            .await;
        assert_eq!(beat.running, [lease(8)], "unacknowledged: still held");
    }

    master.ack(8, true);
    master
        .expect("a heartbeat listing no job once acknowledged", |e| {
            matches!(e, Event::Heartbeat(h) if h.running.is_empty()).then_some(())
        })
        .await;
    worker.drain_and_join().await.unwrap();
    assert_eq!(master.results_for(8), 1, "sent once");
}

/// The master answers a heartbeat that lists a lease whose result it already wrote with a
/// Cancel: the worker drops the result (it was delivered) and stops listing the lease.
#[tokio::test]
async fn a_cancel_for_an_unacknowledged_result_drops_it_and_its_lease() {
    init_tracing();
    let mut master = TestMaster::start().await;
    master.set_auto_ack(false);
    let spool_dir = tempfile::tempdir().unwrap();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), FakeExecutor::new());
    master.expect_hello().await;
    master.assign(9, "reg:quick@1.0.0");
    master.expect_result(9).await;
    master.cancel(9);
    let spooled = || ResultSpool::read_dir_results(spool_dir.path()).unwrap();
    eventually("the cancelled result leaves the spool", || {
        spooled().is_empty()
    })
    .await;
    master
        .expect("a heartbeat listing no job once cancelled", |e| {
            matches!(e, Event::Heartbeat(h) if h.running.is_empty()).then_some(())
        })
        .await;
    worker.drain_and_join().await.unwrap();
    assert_eq!(master.results_for(9), 1, "not sent again");
}

#[tokio::test]
async fn a_refused_token_is_fatal_with_a_clear_message() {
    init_tracing();
    let mut master = TestMaster::start_with_token("the-right-token").await;
    let spool_dir = tempfile::tempdir().unwrap();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), FakeExecutor::new());
    let err = worker.join().await.unwrap_err();
    assert!(
        matches!(&err, WorkerError::Unauthorized { code, message } if code == "Unauthenticated" && message == "unknown worker token"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("refused this worker's token"),
        "{err}"
    );
    assert_eq!(master.session_attempts(), 1, "not retried");
    assert!(master.all_events().is_empty());
}

#[tokio::test]
async fn an_invalid_assignment_is_handed_back_naming_the_field() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;

    let mut bad_spec = spec("reg:x@1.0.0");
    bad_spec.mode = "fuzz".into();
    master.assign_raw(v1::Assign {
        job_id: 1,
        lease_token: token(1),
        attempt: 1,
        spec: Some(bad_spec),
    });
    master.assign_raw(v1::Assign {
        job_id: 2,
        lease_token: "not-a-token".into(),
        attempt: 1,
        spec: Some(spec("reg:x@1.0.0")),
    });
    master.assign_raw(v1::Assign {
        job_id: 3,
        lease_token: token(3),
        attempt: 1,
        spec: None,
    });
    for (job, field) in [(1, "spec.mode"), (2, "lease_token"), (3, "spec")] {
        let returned = master.expect_returned(job).await;
        assert!(
            returned.reason.contains(&format!("invalid {field}:")),
            "{}",
            returned.reason
        );
    }
    worker.drain_and_join().await.unwrap();
    assert_eq!(fake.runs(), 0);
}

#[tokio::test]
async fn a_rejected_result_is_dropped_and_not_sent_again() {
    init_tracing();
    let mut master = TestMaster::start().await;
    master.set_auto_ack(false);
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new();
    let worker = TestWorker::spawn(config(&master, spool_dir.path()), fake.clone());
    master.expect_hello().await;
    master.assign(1, "reg:late@1.0.0");
    master.expect_result(1).await;
    master.ack(1, false);
    eventually("the rejected result leaves the spool", || {
        ResultSpool::read_dir_results(spool_dir.path())
            .unwrap()
            .is_empty()
    })
    .await;

    // a new session gets every unacknowledged result right after Welcome: job 1 is not among them
    master.stop().await;
    master.restart().await;
    master.set_auto_ack(true);
    master.expect_hello().await;
    let after_hello = master.seen.len();
    master.assign(2, "reg:next@1.0.0");
    master.expect_result(2).await;
    assert!(
        !master.seen[after_hello..]
            .iter()
            .any(|e| matches!(e, Event::Result(r) if r.job_id == 1)),
        "job 1 was sent again: {:#?}",
        master.seen
    );
    worker.drain_and_join().await.unwrap();
    assert_eq!(master.results_for(1), 1);
}

#[tokio::test]
async fn a_drain_with_the_master_away_waits_for_acks_only_so_long_and_keeps_the_spool() {
    init_tracing();
    let mut master = TestMaster::start().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let fake = FakeExecutor::new().with_crate("slow", FakeBehaviour::default().gated("slow"));
    let mut cfg = config(&master, spool_dir.path());
    cfg.drain_ack_timeout = Duration::from_millis(200);
    let mut worker = TestWorker::spawn(cfg, fake.clone());
    master.expect_hello().await;
    master.assign(1, "reg:slow@1.0.0");
    tokio::time::timeout(common::PATIENCE, fake.wait_for(|s| s.running == 1))
        .await
        .unwrap();

    master.stop().await;
    worker.drain();
    let started = std::time::Instant::now();
    fake.open_gate("slow");
    worker.join().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "gave up on the ack too early: {:?}",
        started.elapsed()
    );
    let spooled = ResultSpool::read_dir_results(spool_dir.path()).unwrap();
    assert_eq!(
        spooled.iter().map(|r| r.job_id).collect::<Vec<_>>(),
        [1],
        "the result waits for the next run"
    );
}
