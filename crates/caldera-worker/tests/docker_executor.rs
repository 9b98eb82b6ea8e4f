//! The Docker executor end to end: fixture crates through preparation, the real sandbox and
//! classification, with exact outcomes. See `docker_common` for what the tests need.

mod docker_common;

use std::time::{Duration, Instant};

use caldera_core::experiment::Mode;
use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};
use caldera_sandbox::{Limits, Timeouts};
use caldera_worker::docker::ExecutorStats;
use docker_common::{
    containers_owned_by, env, excerpt, fixture, harness, host_address_for_containers, spec,
    test_limits,
};
use tokio_util::sync::CancellationToken;

fn compiler_error(codes: &[&str]) -> Outcome {
    Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: codes.iter().map(|c| (*c).to_owned()).collect(),
    })
}

fn test_fail(tests: &[&str]) -> Outcome {
    Outcome::TestFail {
        failed_tests: tests.iter().map(|c| (*c).to_owned()).collect(),
        reason: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_get_their_exact_outcomes_on_stable_and_nightly() {
    let h = harness("fixtures", |_| {}).await;
    let cases: Vec<(&str, Outcome, Outcome)> = vec![
        ("pass", Outcome::TestPass, Outcome::TestPass),
        (
            "compile-error",
            compiler_error(&["E0308"]),
            compiler_error(&["E0308"]),
        ),
        (
            "test-fail",
            test_fail(&["tests::fails_on_purpose"]),
            test_fail(&["tests::fails_on_purpose"]),
        ),
        (
            "debug-overflow",
            test_fail(&["tests::bump_wraps_in_release"]),
            test_fail(&["tests::bump_wraps_in_release"]),
        ),
        (
            "broken-path-dep",
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["broken-dep".into()],
            }),
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["broken-dep".into()],
            }),
        ),
        (
            "regress-on-nightly",
            Outcome::TestPass,
            compiler_error(&["E0308"]),
        ),
        (
            "diagnostics-change-on-nightly",
            Outcome::TestPass,
            Outcome::TestFail {
                failed_tests: vec!["ui".into()],
                reason: Some(TestFailReason::DiagnosticsChange),
            },
        ),
    ];
    for (name, start, end) in cases {
        let out = h
            .run(spec(
                "fx",
                fixture(name),
                "stable",
                "nightly",
                Mode::BuildAndTest,
            ))
            .await;
        let start_log = h.log(out.start.log_key.as_deref()).await;
        let end_log = h.log(out.end.log_key.as_deref()).await;
        assert_eq!(
            out.start.outcome,
            start,
            "{name} start:\n{}",
            excerpt(&start_log)
        );
        assert_eq!(out.end.outcome, end, "{name} end:\n{}", excerpt(&end_log));
        for (side, log) in [("start", &start_log), ("end", &end_log)] {
            assert!(log.starts_with("caldera build log\n"), "{name} {side}");
            assert!(
                log.contains(&format!("crate:       {}", fixture(name))),
                "{name} {side}"
            );
            assert!(log.contains("mode:        build-and-test"), "{name} {side}");
            assert!(log.contains("==== step 1/3: build: cargo build --locked --offline --message-format=json-diagnostic-rendered-ansi"), "{name} {side}");
        }
        assert!(start_log.contains("side:        start — toolchain stable"));
        assert!(end_log.contains("side:        end — toolchain nightly"));
    }

    // the steps and their timings of a passing job, and where its logs are
    let out = h
        .run(spec(
            "fx",
            fixture("pass"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let names: Vec<&str> = out.start.steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "prepare:source",
            "prepare:lockfile",
            "prepare:fetch",
            "prepare:metadata",
            "build",
            "test-no-run",
            "test"
        ]
    );
    let names: Vec<&str> = out.end.steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["build", "test-no-run", "test"]);
    assert!(out.start.peak_memory_bytes > 1 << 20, "{:?}", out.start);
    assert!(out.end.duration >= out.end.steps.iter().map(|(_, d)| *d).sum::<Duration>());
    assert_eq!(
        out.start.log_key.as_deref(),
        Some(
            caldera_storage::keys::log("fx", "stable", &fixture("pass").to_string())
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(
        out.end.log_key.as_deref(),
        Some(
            caldera_storage::keys::log("fx", "nightly", &fixture("pass").to_string())
                .unwrap()
                .as_str()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_fail_only_under_deny_warnings_and_cap_lints_lowers_them() {
    let h = harness("warnings", |_| {}).await;
    let out = h
        .run(spec(
            "warn",
            fixture("warnings"),
            "stable",
            "stable+rustflags=-Dwarnings",
            Mode::BuildAndTest,
        ))
        .await;
    let end_log = h.log(out.end.log_key.as_deref()).await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    assert_eq!(
        out.end.outcome,
        compiler_error(&["unused_variables"]),
        "{}",
        excerpt(&end_log)
    );
    // the flags reach cargo, and the lint cap comes after them
    assert!(end_log.contains("unused variable"), "{}", excerpt(&end_log));

    // with the experiment's lint cap at `warn`, -Dwarnings cannot fail the build
    let mut capped = spec(
        "warn-capped",
        fixture("warnings"),
        "stable",
        "stable+rustflags=-Dwarnings",
        Mode::CheckOnly,
    );
    capped.cap_lints = caldera_core::experiment::CapLints::Warn;
    let out = h.run(capped).await;
    assert_eq!(
        (out.start.outcome, out.end.outcome),
        (Outcome::TestPass, Outcome::TestPass)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_are_contained_and_classified() {
    // a listener on this machine that nothing in the sandbox may reach
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = format!(
        "{}:{}",
        host_address_for_containers(),
        listener.local_addr().unwrap().port()
    );
    let h = harness("canaries", |c| {
        c.limits = Limits {
            memory_bytes: 768 << 20,
            ..test_limits()
        };
        // the no-output timeout leaves the kernel time to OOM-kill the memory bomb: on a loaded
        // host a cgroup at its limit can stall in reclaim for over 20 s before the kill
        c.timeouts = Timeouts {
            total: Duration::from_secs(240),
            no_output: Duration::from_secs(45),
        };
        c.log_cap = 256 << 10;
        c.sandbox_env = env(&[
            ("CALDERA_SANDBOX_CANARY", "1"),
            ("CALDERA_CANARY_ADDR", &addr),
            ("FLOOD_BYTES", &(64u64 << 20).to_string()),
        ]);
    })
    .await;
    let run = |name: &'static str| {
        h.run(spec(
            "canaries",
            fixture(name),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
    };

    // the outcome follows the step that failed: the build script's network access fails the
    // build; the tests' network access, memory bomb and silence fail the tests, naming why
    for (name, kind, reason) in [
        ("canary-net-build", "build-fail", "network-access"),
        ("canary-net-test", "test-fail", "network-access"),
        ("canary-mem-bomb", "test-fail", "oom"),
        ("canary-silent-loop", "test-fail", "no-output-timeout"),
    ] {
        let t0 = Instant::now();
        let out = run(name).await;
        for side in [&out.start, &out.end] {
            let log = h.log(side.log_key.as_deref()).await;
            assert_eq!(
                (side.outcome.kind(), side.outcome.reason_kind()),
                (kind, Some(reason)),
                "{name}: {}\n{}",
                side.outcome,
                excerpt(&log)
            );
            assert!(side.outcome.is_spurious(), "{name}: {}", side.outcome);
            if name == "canary-mem-bomb" {
                // the step line of the header names the limit hit
                assert!(
                    log.contains("s  killed by the OOM killer, peak memory"),
                    "{}",
                    excerpt(&log)
                );
            }
        }
        if name == "canary-silent-loop" {
            // two sides, each ended by the 45 s no-output timeout, not the 240 s total one
            assert!(
                t0.elapsed() < Duration::from_secs(200),
                "{:?}",
                t0.elapsed()
            );
        }
        if name == "canary-mem-bomb" {
            assert!(
                out.start.peak_memory_bytes > 400 << 20,
                "peak {}",
                out.start.peak_memory_bytes
            );
        }
    }

    // the flood passes, and its log is capped: head and tail kept, the cut marked
    let out = run("canary-flood").await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass)
    );
    let log = h.log(out.start.log_key.as_deref()).await;
    assert!(log.len() < 2 << 20, "log of {} bytes", log.len());
    assert!(log.contains("FLOOD START"), "{}", excerpt(&log));
    assert!(
        log.contains(&format!("FLOOD DONE after {} bytes", 64u64 << 20)),
        "{}",
        excerpt(&log)
    );
    assert!(log.contains("output truncated"), "{}", excerpt(&log));

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something reached the host listener from the sandbox: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dirs_are_reused_decontaminated_and_purged_per_experiment() {
    // reuse is what this test is about: a full disk on the test machine (past the default
    // high-water mark) must not purge the slot (`a_disk_past_the_high_water_mark_purges_the_slot`)
    let h = harness("reuse", |c| {
        c.slots = 1;
        c.disk_high_water = 1.0;
    })
    .await;
    let stable: caldera_core::toolchain::Toolchain = "stable".parse().unwrap();
    let target = h.executor.target_dir(0, &stable);
    let has_artifact = |prefix: &str| {
        std::fs::read_dir(target.join("debug/deps"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
            .unwrap_or(false)
    };

    let out = h
        .run(spec(
            "e1",
            fixture("contaminate-a"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass)
    );
    assert!(has_artifact("libfixture_contaminate_a"));

    // same experiment: the target dir is reused, so contaminate-b's test finds two builds of
    // shared-dep (E0464) — the executor purges and re-runs each side before reporting
    let out = h
        .run(spec(
            "e1",
            fixture("contaminate-b"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let log = h.log(out.start.log_key.as_deref()).await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass),
        "{}",
        excerpt(&log)
    );
    assert!(log.contains("error[E0464]"), "{}", excerpt(&log));
    assert!(
        log.contains("re-running this side in a clean one"),
        "{}",
        excerpt(&log)
    );
    let names: Vec<&str> = out.end.steps.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "build",
            "test-no-run",
            "test",
            "build (clean re-run)",
            "test-no-run (clean re-run)",
            "test (clean re-run)"
        ]
    );
    assert_eq!(
        h.executor.stats(),
        ExecutorStats {
            jobs: 2,
            contaminated_reruns: 2,
            purges_experiment_change: 0,
            purges_high_water: 0,
            purges_no_reuse: 0,
            // the first job created its containers; the second ran in the spares made meanwhile
            spare_misses: 2,
            spare_hits: 2,
            ..ExecutorStats::default()
        }
    );
    assert!(
        !has_artifact("libfixture_contaminate_a"),
        "the purge emptied it"
    );
    assert!(has_artifact("libfixture_contaminate_b"));

    // another experiment: the slot's target dirs are purged first
    let out = h
        .run(spec(
            "e2",
            fixture("pass"),
            "stable",
            "nightly",
            Mode::CheckOnly,
        ))
        .await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass)
    );
    assert!(!has_artifact("libfixture_contaminate_b"));
    assert_eq!(h.executor.stats().purges_experiment_change, 1);
    // same toolchains and limits: the spares fit another experiment too
    assert_eq!(h.executor.stats().spare_hits, 4);
    assert_eq!(h.executor.spare_count(), 2);
    h.executor.shutdown().await;
    assert_eq!(h.executor.spare_count(), 0);
    assert!(
        containers_owned_by(&h.owner).is_empty(),
        "{:?}",
        containers_owned_by(&h.owner)
    );
}

/// A confirmation run (`run > 0`) builds in fresh target dirs of its own, removed after it: it
/// neither sees nor disturbs what the slot's reused dirs hold, and the slot's next job finds
/// its spares again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_run_builds_from_fresh_target_dirs() {
    // reuse is what this test is about: a full disk on the test machine (past the default
    // high-water mark) must not purge the slot (`a_disk_past_the_high_water_mark_purges_the_slot`)
    let h = harness("fresh", |c| {
        c.slots = 1;
        c.disk_high_water = 1.0;
    })
    .await;
    let stable: caldera_core::toolchain::Toolchain = "stable".parse().unwrap();
    let target = h.executor.target_dir(0, &stable);
    let fresh = target.parent().unwrap().parent().unwrap().join("fresh-0");
    let has_artifact = |prefix: &str| {
        std::fs::read_dir(target.join("debug/deps"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
            })
            .unwrap_or(false)
    };
    let sp = |krate: &str, run: u32| {
        let mut s = spec(
            "e1",
            fixture(krate),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        );
        s.run = run;
        s
    };
    let out = h.run(sp("contaminate-a", 0)).await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    assert!(has_artifact("libfixture_contaminate_a"));

    // in the slot's dirs contaminate-b would find two builds of its dependency (E0464); in
    // fresh ones it does not, and the slot's dirs are left as they were
    let out = h.run(sp("contaminate-b", 1)).await;
    let log = h.log(out.start.log_key.as_deref()).await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass),
        "{}",
        excerpt(&log)
    );
    assert!(!log.contains("error[E0464]"), "{}", excerpt(&log));
    assert!(
        out.start
            .log_key
            .as_deref()
            .is_some_and(|k| k.ends_with("/log.run-1.zst")),
        "a confirmation run's log does not replace the first run's: {:?}",
        out.start.log_key
    );
    assert_eq!(h.executor.stats().contaminated_reruns, 0);
    assert!(
        has_artifact("libfixture_contaminate_a"),
        "the slot's dirs are kept"
    );
    assert!(!has_artifact("libfixture_contaminate_b"), "and not written");
    let left: Vec<_> = std::fs::read_dir(&fresh)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the fresh dirs are removed after the run: {left:?}"
    );

    // the next first run gets the spares made for the slot's own dirs
    let hits = h.executor.stats().spare_hits;
    let out = h.run(sp("pass", 0)).await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    assert_eq!(h.executor.stats().spare_hits, hits + 2);

    // a calibration (A/A) job: the same toolchain on both sides, each side's log its own
    let out = h
        .run(spec(
            "aa",
            fixture("pass"),
            "stable",
            "stable",
            Mode::CheckOnly,
        ))
        .await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass)
    );
    let (start_key, end_key) = (out.start.log_key.clone(), out.end.log_key.clone());
    assert!(
        end_key
            .as_deref()
            .is_some_and(|k| k.ends_with("/log.end.zst"))
            && start_key != end_key,
        "{start_key:?} {end_key:?}"
    );
    assert!(h.log(start_key.as_deref()).await.contains("cargo check"));
    assert!(h.log(end_key.as_deref()).await.contains("cargo check"));
    h.executor.shutdown().await;
}

/// A job whose other side was settled from the result cache (`JobSpec::only`) runs one side:
/// the other gets no steps and no log of its own (the master copied the source's log to that
/// side's key, which must stay as it is), and is reported as the `not_run` placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_one_side_settled_runs_only_the_other() {
    let h = harness("one-side", |c| c.slots = 1).await;
    for (only, ran) in [
        (caldera_core::job::Side::End, "nightly"),
        (caldera_core::job::Side::Start, "stable"),
    ] {
        let experiment = format!("one-{}", only.as_str());
        let mut s = spec(
            &experiment,
            fixture("pass"),
            "stable",
            "nightly",
            Mode::CheckOnly,
        );
        s.only = Some(only);
        let krate = s.krate.to_string();
        let other = if ran == "stable" { "nightly" } else { "stable" };
        // the log the master copied from the source experiment for the settled side
        let copied = caldera_storage::keys::log(&experiment, other, &krate).unwrap();
        caldera_storage::put_log(h.store.as_ref(), &copied, "the source's log\n")
            .await
            .unwrap();
        let out = h.run(s).await;
        let (run, settled) = match only {
            caldera_core::job::Side::Start => (&out.start, &out.end),
            caldera_core::job::Side::End => (&out.end, &out.start),
        };
        assert_eq!(run.outcome, Outcome::TestPass, "{only:?}");
        let log = h.log(run.log_key.as_deref()).await;
        assert!(log.contains("cargo check"));
        // the preparation ran on the clock of the side that ran, whichever it is
        assert!(
            run.steps[0].0.starts_with("prepare:") && log.contains("\n  prepare:source"),
            "{only:?}: {:?}\n{log}",
            run.steps
        );
        assert_eq!(settled, &caldera_worker::SideOutput::not_run(), "{only:?}");
        assert_eq!(
            h.log(Some(copied.as_ref())).await,
            "the source's log\n",
            "the settled side's copied log is left alone"
        );
    }
    h.executor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_past_the_high_water_mark_purges_the_slot() {
    let h = harness("high-water", |c| c.disk_high_water = 0.0).await;
    let stable: caldera_core::toolchain::Toolchain = "stable".parse().unwrap();
    let target = h.executor.target_dir(0, &stable);
    let sp = || {
        spec(
            "hw",
            fixture("pass"),
            "stable",
            "stable+rustflags=-Cdebuginfo=0",
            Mode::CheckOnly,
        )
    };
    let out = h.run(sp()).await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    let marker = target.join("caldera-test-marker");
    std::fs::write(&marker, "x").unwrap();
    let out = h.run(sp()).await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    assert!(
        !marker.exists(),
        "the slot was purged before the second job"
    );
    assert_eq!(h.executor.stats().purges_high_water, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_container_at_once() {
    let h = harness("cancel", |c| {
        c.timeouts = Timeouts {
            total: Duration::from_secs(600),
            no_output: Duration::from_secs(600),
        };
    })
    .await;
    let cancel = CancellationToken::new();
    let job = spec(
        "cancel",
        fixture("canary-silent-loop"),
        "stable",
        "nightly",
        Mode::BuildAndTest,
    );
    let run = tokio::spawn({
        let cancel = cancel.clone();
        let h_exec = h.executor.clone();
        async move {
            use caldera_worker::Executor;
            h_exec
                .run(
                    caldera_worker::Assignment {
                        job_id: 1,
                        attempt: 1,
                        spec: job,
                    },
                    cancel,
                )
                .await
        }
    });
    // wait until the spinning test runs in a container (its test step started)
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the container never appeared"
        );
        if !containers_owned_by(&h.owner).is_empty() && t0.elapsed() > Duration::from_secs(1) {
            let spinning = std::process::Command::new("sh")
                .arg("-c")
                .arg("ps -eo args | grep -c '[d]eps/fixture_canary_silent_loop-'")
                .output()
                .unwrap();
            if String::from_utf8_lossy(&spinning.stdout).trim() != "0" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancelled_at = Instant::now();
    cancel.cancel();
    let out = run.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(15),
        "{:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(
        out.start.outcome,
        Outcome::Error {
            reason: "cancelled".into()
        }
    );
    // what is left are the idle spares kept for the slot's next job, one per side at most
    let left = containers_owned_by(&h.owner);
    assert!(
        left.len() <= h.executor.spare_count() && h.executor.spare_count() <= 2,
        "{left:?}, {} spares",
        h.executor.spare_count()
    );
    let spinning = std::process::Command::new("sh")
        .arg("-c")
        .arg("ps -eo args | grep -c '[d]eps/fixture_canary_silent_loop-'")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&spinning.stdout).trim(), "0");
    h.executor.shutdown().await;
    assert!(
        containers_owned_by(&h.owner).is_empty(),
        "{:?}",
        containers_owned_by(&h.owner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_problems_are_errors_not_build_failures() {
    let h = harness("infra", |_| {}).await;
    // a toolchain this machine does not have: that side is an error, the other side runs
    let out = h
        .run(spec(
            "infra",
            fixture("pass"),
            "stable",
            "1.2.3",
            Mode::CheckOnly,
        ))
        .await;
    assert_eq!(out.start.outcome, Outcome::TestPass);
    match &out.end.outcome {
        Outcome::Error { reason } => assert!(reason.contains("1.2.3"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // miri on toolchains without it
    let out = h
        .run(spec(
            "infra",
            fixture("pass"),
            "stable",
            "nightly",
            Mode::Miri,
        ))
        .await;
    for side in [&out.start, &out.end] {
        match &side.outcome {
            Outcome::Error { reason } => assert!(reason.contains("has no miri"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    // a toolchain with patches, which this executor cannot apply
    let out = h
        .run(spec(
            "infra",
            fixture("pass"),
            "stable",
            "stable+patch=foo=https://host.invalid/foo.git#abc",
            Mode::CheckOnly,
        ))
        .await;
    assert!(
        matches!(&out.end.outcome, Outcome::Error { reason } if reason.contains("[patch]")),
        "{:?}",
        out.end.outcome
    );
}

/// A registry tarball may ship files the sandbox user cannot read (`fnv 1.0.7` and `pin-utils
/// 0.1.0` publish theirs with mode 0640). They are fetched on the host into the shared cargo home;
/// the crate's real outcome must come out, not `build-fail: depends-on` for `Permission denied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_published_unreadable_are_readable_in_the_sandbox() {
    use std::os::unix::fs::PermissionsExt;

    let h = harness("unreadable-dep", |_| {}).await;
    let out = h
        .run(spec(
            "unreadable",
            fixture("registry-unreadable-dep"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let start_log = h.log(out.start.log_key.as_deref()).await;
    let end_log = h.log(out.end.log_key.as_deref()).await;
    assert_eq!(
        out.start.outcome,
        Outcome::TestPass,
        "{}",
        excerpt(&start_log)
    );
    assert_eq!(out.end.outcome, Outcome::TestPass, "{}", excerpt(&end_log));
    assert!(
        start_log.contains("newly unpacked dependency source dirs readable by the sandbox user"),
        "{}",
        excerpt(&start_log)
    );
    // the unpacked sources in the cargo home: readable by all now, and marked as done
    let registry = h.executor.config().prepare.cargo_home.join("registry/src");
    let index = std::fs::read_dir(&registry)
        .unwrap()
        .next()
        .expect("a registry source dir")
        .unwrap()
        .path();
    for (dir, file) in [("fnv-1.0.7", "lib.rs"), ("pin-utils-0.1.0", "src/lib.rs")] {
        let mode = std::fs::metadata(index.join(dir).join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o004, 0o004, "{dir}/{file}: {mode:o}");
        assert!(
            index
                .join(dir)
                .join(caldera_worker::prepare::READABLE_MARKER)
                .is_file()
        );
    }
    // the next job finds them marked: nothing is walked again
    let out = h
        .run(spec(
            "unreadable",
            fixture("registry-unreadable-dep"),
            "stable",
            "nightly",
            Mode::CheckOnly,
        ))
        .await;
    let log = h.log(out.start.log_key.as_deref()).await;
    assert_eq!(
        (&out.start.outcome, &out.end.outcome),
        (&Outcome::TestPass, &Outcome::TestPass),
        "{}",
        excerpt(&log)
    );
    assert!(
        !log.contains("newly unpacked dependency source dirs"),
        "{}",
        excerpt(&log)
    );
    // a farm-provided file the sandbox cannot read (marked done, so nothing fixes it) is the
    // farm's fault: `error` on both sides, never the crate's build failure
    let lib = index.join("fnv-1.0.7/lib.rs");
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = h
        .run(spec(
            "unreadable-farm",
            fixture("registry-unreadable-dep"),
            "stable",
            "nightly",
            Mode::CheckOnly,
        ))
        .await;
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    for side in [&out.start, &out.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert!(
            matches!(&side.outcome, Outcome::Error { reason }
                if reason.contains("could not read a path the farm provides")
                    && reason.contains("Permission denied")),
            "{}\n{}",
            side.outcome,
            excerpt(&log)
        );
    }
}

/// A manifest naming an example the package does not ship is tidied (the entry dropped, and
/// said so in the log), not refused: the crate is built and compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_the_package_does_not_ship_are_dropped_not_prepare_fail() {
    let h = harness("missing-example", |_| {}).await;
    let out = h
        .run(spec(
            "tidy",
            fixture("missing-example"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let start_log = h.log(out.start.log_key.as_deref()).await;
    let end_log = h.log(out.end.log_key.as_deref()).await;
    assert_eq!(
        out.start.outcome,
        Outcome::TestPass,
        "{}",
        excerpt(&start_log)
    );
    assert_eq!(out.end.outcome, Outcome::TestPass, "{}", excerpt(&end_log));
    for log in [&start_log, &end_log] {
        assert!(
            log.contains(
                "tidied Cargo.toml: dropped [[example]] `not-shipped` (examples/not-shipped.rs \
                 or examples/not-shipped/main.rs not in the package)"
            ),
            "{}",
            excerpt(log)
        );
        assert!(!log.contains("[[test]] `shipped`"), "{}", excerpt(log));
        // the listed test whose file is shipped was kept, and ran
        assert!(log.contains("shipped_test_runs ... ok"), "{}", excerpt(log));
    }
}

/// The id of this harness's container whose processes include `needle`, once there is one.
async fn container_running(owner: &str, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no container of {owner} ever ran {needle}"
        );
        for line in containers_owned_by(owner) {
            let id = line.rsplit(' ').next().unwrap().to_owned();
            let top = tokio::process::Command::new("docker")
                .args(["top", &id])
                .output()
                .await
                .unwrap();
            if String::from_utf8_lossy(&top.stdout).contains(needle) {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A container removed (`docker rm -f`) or killed (`docker kill`) from outside while a step runs
/// dies by SIGKILL as an OOM kill would: the side is an `error` naming what happened (the master
/// retries it), never `oom` nor a test failure, and its log keeps the output so far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_or_killed_from_outside_is_an_error() {
    let h = harness("lost", |c| {
        c.timeouts = Timeouts {
            total: Duration::from_secs(600),
            no_output: Duration::from_secs(600),
        };
    })
    .await;
    let job = spec(
        "lost",
        fixture("canary-silent-loop"),
        "stable",
        "nightly",
        Mode::BuildAndTest,
    );
    let run = tokio::spawn({
        let h_exec = h.executor.clone();
        async move {
            use caldera_worker::Executor;
            h_exec
                .run(
                    caldera_worker::Assignment {
                        job_id: 1,
                        attempt: 1,
                        spec: job,
                    },
                    CancellationToken::new(),
                )
                .await
        }
    });
    // each side's test spins silently in its container: the start side's is removed, the end
    // side's killed
    for action in [&["rm", "-f"][..], &["kill"][..]] {
        let id = container_running(&h.owner, "deps/fixture_canary_silent_loop-").await;
        // (the process shows before its first output; give that a moment to reach the log)
        tokio::time::sleep(Duration::from_secs(2)).await;
        let out = tokio::process::Command::new("docker")
            .args(action)
            .arg(&id)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "docker {action:?} {id}: {out:?}");
        // (the next side's container is found once this one no longer runs the test)
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            let top = tokio::process::Command::new("docker")
                .args(["top", &id])
                .output()
                .await
                .unwrap();
            if !String::from_utf8_lossy(&top.stdout).contains("fixture_canary_silent_loop") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let out = run.await.unwrap();
    for (side, want) in [
        (
            &out.start,
            "the sandbox container was removed from outside during step 3 (test)",
        ),
        (
            &out.end,
            "the sandbox container was killed from outside (container exit status 137) during \
             step 3 (test)",
        ),
    ] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(
            side.outcome,
            Outcome::Error {
                reason: want.into()
            },
            "{}",
            excerpt(&log)
        );
        assert!(
            log.contains(&format!("outcome:     error — {want}")),
            "{}",
            excerpt(&log)
        );
        // the steps that ran are in the log, the interrupted one named as such
        assert!(
            log.contains("==== step 3/3: test: cargo test"),
            "{}",
            excerpt(&log)
        );
        assert!(log.contains("running 1 test"), "{}", excerpt(&log));
        assert!(
            log.contains("==== test: interrupted: the sandbox container was"),
            "{}",
            excerpt(&log)
        );
        let names: Vec<&str> = side
            .steps
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !n.starts_with("prepare:"))
            .collect();
        assert_eq!(names, ["build", "test-no-run", "test"]);
    }
    // a job after that runs normally
    let out = h
        .run(spec(
            "lost",
            fixture("pass"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    assert_eq!(
        (out.start.outcome, out.end.outcome),
        (Outcome::TestPass, Outcome::TestPass)
    );
    h.executor.shutdown().await;
}

/// The default limits let a test suite start a thousand threads (the former default of 512 pids
/// made it fail or hang), and still stop a fork bomb at the pids limit — and the outcome says so:
/// `test-fail` with reason `pids-limit` (the bomb is in a test), not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limits_fit_a_thousand_threads_and_name_the_pids_limit_a_fork_bomb_hits() {
    let h = harness("pids", |c| {
        c.limits = Limits::default();
        c.timeouts = Timeouts {
            total: Duration::from_secs(240),
            no_output: Duration::from_secs(20),
        };
        c.sandbox_env = env(&[("CALDERA_SANDBOX_CANARY", "1")]);
    })
    .await;
    let run = |name: &'static str| {
        h.run(spec(
            "pids",
            fixture(name),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
    };
    let out = run("many-threads").await;
    for side in [&out.start, &out.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        assert!(
            log.contains("tests::a_thousand_threads_meet_at_a_barrier ... ok"),
            "{}",
            excerpt(&log)
        );
        assert!(
            log.contains(&format!("{} pids", caldera_sandbox::DEFAULT_PIDS)),
            "{}",
            excerpt(&log)
        );
    }

    let t0 = Instant::now();
    let out = run("canary-fork-bomb").await;
    for side in [&out.start, &out.end] {
        let log = h.log(side.log_key.as_deref()).await;
        // (the test in flight may or may not be named: the bomb's copies print nothing)
        assert!(
            matches!(
                &side.outcome,
                Outcome::TestFail {
                    reason: Some(TestFailReason::PidsLimit),
                    ..
                }
            ),
            "{}",
            excerpt(&log)
        );
        assert!(log.contains(", pids limit hit"), "{}", excerpt(&log));
    }
    // each side ended by the 20 s no-output timeout once the bomb went silent at the limit
    assert!(
        t0.elapsed() < Duration::from_secs(150),
        "{:?}",
        t0.elapsed()
    );
    let host = tokio::process::Command::new("true").status().await.unwrap();
    assert!(host.success());
}
