//! The sandbox against the real Docker engine, with the fixture crates of tests/fixtures/crates.
//!
//! Prerequisites (run as root; the xtask does it before the tests): `scripts/ensure-docker.sh` and
//! `scripts/build-sandbox-image.sh`. See tests/common/mod.rs.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use caldera_sandbox::{
    Limits, Sandbox, SandboxConfig, SandboxError, StepCommand, TimeoutKind, ToolchainMount,
};
use common::*;

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn connect_explains_missing_image_and_unreachable_engine() {
    let err = Sandbox::connect(SandboxConfig {
        image: "caldera-no-such-image:never".into(),
        sweep_on_connect: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(err, SandboxError::ImageMissing { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("scripts/build-sandbox-image.sh"),
        "{message}"
    );
    assert!(message.contains("docker/builder"), "{message}");
    assert!(!err.is_retryable());

    let nowhere = tempfile::tempdir().unwrap();
    let err = Sandbox::connect(SandboxConfig {
        docker_host: Some(format!("unix://{}/docker.sock", nowhere.path().display())),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, SandboxError::EngineUnreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("scripts/ensure-docker.sh"),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn pass_fixture_builds_and_tests_in_one_container() {
    let (sandbox, dirs, mut container) = stable_job("pass", "pass", test_limits()).await;
    assert!(sandbox.engine().api_version.starts_with("1."));

    let build = run(&mut container, &cargo(&["build", "--offline", "--locked"])).await;
    assert_eq!(build.exit_code, Some(0), "{}", excerpt(&build));
    assert!(build.success());
    assert!(build.peak_memory_bytes.is_some_and(|p| p > MIB));
    // Every line is timestamped.
    for line in build.output.text().lines() {
        assert!(
            line.starts_with('[') && line.as_bytes()[9] == b']',
            "{line:?}"
        );
    }
    assert!(build.output.contains("Finished"), "{}", excerpt(&build));

    let test = run(&mut container, &cargo(&["test", "--offline", "--locked"])).await;
    assert_eq!(test.exit_code, Some(0), "{}", excerpt(&test));
    assert!(
        test.output.contains("test result: ok. 2 passed"),
        "{}",
        excerpt(&test)
    );
    assert!(
        test.output.contains("test result: ok. 1 passed"),
        "{}",
        excerpt(&test)
    );
    assert!(!test.output.truncated());

    // The build products are in the host's target dir, owned by the sandbox user.
    assert!(dirs.target.join("debug").is_dir());
    assert!(!dirs.source.join("target").exists());
    container.remove().await.unwrap();
}

#[tokio::test]
async fn compile_error_fixture_fails_with_e0308() {
    let (_sandbox, _dirs, mut container) =
        stable_job("compile-error", "compile-error", test_limits()).await;
    let build = run(&mut container, &cargo(&["build", "--offline", "--locked"])).await;
    assert_eq!(build.exit_code, Some(101), "{}", excerpt(&build));
    assert!(
        build.output.contains("error[E0308]: mismatched types"),
        "{}",
        excerpt(&build)
    );
    assert!(!build.oom_killed && build.timed_out.is_none());
    container.remove().await.unwrap();
}

#[tokio::test]
async fn test_fail_fixture_names_the_failing_test() {
    let (_sandbox, _dirs, mut container) =
        stable_job("test-fail", "test-fail", test_limits()).await;
    let test = run(&mut container, &cargo(&["test", "--offline", "--locked"])).await;
    assert_eq!(test.exit_code, Some(101), "{}", excerpt(&test));
    assert!(
        test.output
            .contains("test tests::fails_on_purpose ... FAILED"),
        "{}",
        excerpt(&test)
    );
    assert!(
        test.output.contains("test tests::doubles ... ok"),
        "{}",
        excerpt(&test)
    );
    container.remove().await.unwrap();
}

#[tokio::test]
async fn warnings_fixture_fails_only_under_deny_warnings() {
    let (_sandbox, _dirs, mut container) = stable_job("warnings", "warnings", test_limits()).await;
    let plain = run(&mut container, &cargo(&["build", "--offline", "--locked"])).await;
    assert_eq!(plain.exit_code, Some(0), "{}", excerpt(&plain));
    assert!(
        plain.output.contains("warning: unused variable"),
        "{}",
        excerpt(&plain)
    );
    let denied = run(
        &mut container,
        &cargo(&["build", "--offline", "--locked"]).env("RUSTFLAGS", "-Dwarnings"),
    )
    .await;
    assert_eq!(denied.exit_code, Some(101), "{}", excerpt(&denied));
    assert!(
        denied.output.contains("error: unused variable"),
        "{}",
        excerpt(&denied)
    );
    container.remove().await.unwrap();
}

#[tokio::test]
async fn regression_fixture_passes_on_stable_and_fails_on_nightly() {
    let sandbox = sandbox("regress").await;
    let dirs = job_dirs("regress-on-nightly");
    let toolchains = vec![toolchain("stable").await, toolchain("nightly").await];
    let mut container = sandbox
        .create(mounts(&dirs, toolchains), test_limits())
        .await
        .unwrap();
    let stable = run(&mut container, &cargo(&["test", "--offline", "--locked"])).await;
    assert_eq!(stable.exit_code, Some(0), "{}", excerpt(&stable));
    let nightly = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked"]).toolchain("nightly"),
    )
    .await;
    assert_eq!(nightly.exit_code, Some(101), "{}", excerpt(&nightly));
    assert!(
        nightly.output.contains("error[E0308]"),
        "{}",
        excerpt(&nightly)
    );
    let unknown = container
        .exec(&StepCommand::new(["true"]).toolchain("beta"))
        .await
        .unwrap_err();
    assert!(matches!(unknown, SandboxError::Invalid(_)), "{unknown}");
    container.remove().await.unwrap();
}

/// The address a container would use to reach this host over Docker's default bridge, if there is
/// one; with `--network none` nothing may arrive there.
async fn host_address_seen_from_containers(sandbox: &Sandbox) -> String {
    let bridge = sandbox
        .docker()
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .ok();
    bridge
        .and_then(|n| n.ipam?.config?.into_iter().find_map(|c| c.gateway))
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// No network is not no loopback: `localhost` resolves and a test can serve and connect on it, as
/// many real crates' tests do. (A container created with networking disabled has an empty
/// `/etc/hosts`, and such tests failed as if they had tried the network.)
#[tokio::test]
async fn localhost_resolves_and_loopback_works_in_the_sandbox() {
    let (_sandbox, _dirs, mut container) =
        stable_job("loopback", "loopback-test", test_limits()).await;
    let test = run(&mut container, &cargo(&["test", "--offline", "--locked"])).await;
    assert_eq!(test.exit_code, Some(0), "{}", excerpt(&test));
    assert!(
        test.output
            .contains("test talks_to_itself_over_localhost ... ok"),
        "{}",
        excerpt(&test)
    );
    let hosts = run(
        &mut container,
        &StepCommand::new(["getent", "hosts", "localhost"])
            .timeouts(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await;
    assert_eq!(hosts.exit_code, Some(0), "{}", excerpt(&hosts));
    container.remove().await.unwrap();
}

#[tokio::test]
async fn network_is_unreachable_from_build_scripts_and_tests() {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    // Control: on the host, the canary reaches the listener (so the canary can tell).
    let host_dirs = job_dirs("canary-net-build");
    let host = tokio::process::Command::new("cargo")
        .args(["build", "--offline", "--locked", "--quiet"])
        .current_dir(&host_dirs.source)
        .env("CARGO_TARGET_DIR", &host_dirs.target)
        .env("CALDERA_CANARY_ADDR", format!("127.0.0.1:{port}"))
        .output()
        .await
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    assert!(
        listener.accept().is_ok(),
        "the host control run should have connected"
    );

    let (sandbox, _dirs, mut build_container) =
        stable_job("net-build", "canary-net-build", test_limits()).await;
    let addr = format!(
        "{}:{port}",
        host_address_seen_from_containers(&sandbox).await
    );
    let build = run(
        &mut build_container,
        &cargo(&["build", "--offline", "--locked"]).env("CALDERA_CANARY_ADDR", &addr),
    )
    .await;
    assert_eq!(build.exit_code, Some(101), "{}", excerpt(&build));
    assert!(
        build
            .output
            .contains("build.rs: network interfaces besides lo: []"),
        "{}",
        excerpt(&build)
    );
    assert!(
        build.output.contains("build.rs: network access failed"),
        "{}",
        excerpt(&build)
    );
    build_container.remove().await.unwrap();

    let (_sandbox, _dirs, mut test_container) =
        stable_job("net-test", "canary-net-test", test_limits()).await;
    let test = run(
        &mut test_container,
        &cargo(&["test", "--offline", "--locked"]).env("CALDERA_CANARY_ADDR", &addr),
    )
    .await;
    assert_eq!(test.exit_code, Some(101), "{}", excerpt(&test));
    assert!(
        test.output.contains("test: network access failed"),
        "{}",
        excerpt(&test)
    );
    test_container.remove().await.unwrap();

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something reached the host listener from the sandbox: {other:?}"),
    }
}

#[tokio::test]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let limits = Limits {
        pids: 200,
        ..test_limits()
    };
    let (_sandbox, _dirs, mut container) =
        stable_job("fork-bomb", "canary-fork-bomb", limits).await;
    let build = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--no-run"]),
    )
    .await;
    assert_eq!(build.exit_code, Some(0), "{}", excerpt(&build));
    let bomb = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--", "--nocapture"])
            .env("CALDERA_SANDBOX_CANARY", "1")
            .timeouts(Duration::from_secs(60), Duration::from_secs(8)),
    )
    .await;
    assert!(
        bomb.output.contains("fork bomb starting"),
        "{}",
        excerpt(&bomb)
    );
    assert!(
        bomb.pids_limit_hit,
        "the bomb should have hit the pids limit"
    );
    assert_eq!(bomb.timed_out, Some(TimeoutKind::NoOutput));
    assert_eq!(bomb.exit_code, None);
    assert!(
        bomb.duration < Duration::from_secs(40),
        "{:?}",
        bomb.duration
    );

    // The whole tree is gone: the container is usable again and runs only what we start.
    let ps = run(&mut container, &StepCommand::new(["ps", "-eo", "args"])).await;
    assert_eq!(ps.exit_code, Some(0), "{}", excerpt(&ps));
    assert!(!ps.output.contains("fork_bomb"), "{}", excerpt(&ps));
    // And the host can still start processes.
    let host = tokio::process::Command::new("true").status().await.unwrap();
    assert!(host.success());
    container.remove().await.unwrap();
}

async fn memory_bomb(use_host_cgroups: bool) {
    let sandbox = sandbox_with("mem-bomb", |c| c.use_host_cgroups = use_host_cgroups).await;
    let dirs = job_dirs("canary-mem-bomb");
    let toolchains = vec![toolchain("stable").await];
    // Compile with room to spare, then run the test binary in a container of 256 MiB sharing the
    // same target dir.
    let mut builder = sandbox
        .create(mounts(&dirs, toolchains.clone()), test_limits())
        .await
        .unwrap();
    let build = run(
        &mut builder,
        &cargo(&["test", "--offline", "--locked", "--no-run"]),
    )
    .await;
    assert_eq!(build.exit_code, Some(0), "{}", excerpt(&build));
    builder.remove().await.unwrap();

    let limits = Limits {
        memory_bytes: 256 * MIB,
        ..test_limits()
    };
    let mut container = sandbox
        .create(mounts(&dirs, toolchains), limits)
        .await
        .unwrap();
    assert_eq!(container.reads_host_cgroup(), use_host_cgroups);
    let bomb = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked"]).env("CALDERA_SANDBOX_CANARY", "1"),
    )
    .await;
    assert!(bomb.oom_killed, "{}", excerpt(&bomb));
    assert_eq!(bomb.exit_code, Some(101), "{}", excerpt(&bomb));
    assert!(
        bomb.output.contains("signal: 9, SIGKILL"),
        "{}",
        excerpt(&bomb)
    );
    assert!(!bomb.success());
    let peak = bomb.peak_memory_bytes.expect("peak memory is known");
    assert!(
        peak > 192 * MIB && peak <= 256 * MIB,
        "peak {peak} bytes should be close to the 256 MiB limit"
    );
    // The next step in the same container is not affected.
    let after = run(&mut container, &StepCommand::new(["true"])).await;
    assert!(after.success() && !after.oom_killed, "{after:?}");
    container.remove().await.unwrap();
}

#[tokio::test]
async fn memory_bomb_is_oom_killed() {
    memory_bomb(true).await;
}

#[tokio::test]
async fn memory_bomb_is_oom_killed_with_engine_events_only() {
    memory_bomb(false).await;
}

#[tokio::test]
async fn silent_loop_hits_the_no_output_timeout_and_chatter_the_total_one() {
    let (_sandbox, _dirs, mut container) =
        stable_job("silent-loop", "canary-silent-loop", test_limits()).await;
    let build = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--no-run"]),
    )
    .await;
    assert_eq!(build.exit_code, Some(0), "{}", excerpt(&build));
    let silent = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked"])
            .timeouts(Duration::from_secs(120), Duration::from_secs(5)),
    )
    .await;
    assert_eq!(silent.timed_out, Some(TimeoutKind::NoOutput));
    assert_eq!(silent.exit_code, None);
    assert!(!silent.success());
    assert!(
        silent.duration >= Duration::from_secs(5),
        "{:?}",
        silent.duration
    );
    assert!(
        silent.duration < Duration::from_secs(30),
        "{:?}",
        silent.duration
    );
    assert!(
        silent.output.contains("test tests::spins_forever"),
        "{}",
        excerpt(&silent)
    );

    let chatty = run(
        &mut container,
        &StepCommand::new(["sh", "-c", "while :; do echo tick; sleep 0.2; done"])
            .timeouts(Duration::from_secs(3), Duration::from_secs(60)),
    )
    .await;
    assert_eq!(chatty.timed_out, Some(TimeoutKind::Total));
    assert!(chatty.duration >= Duration::from_secs(3));
    assert!(
        chatty.duration < Duration::from_secs(20),
        "{:?}",
        chatty.duration
    );
    assert!(chatty.output.lines() >= 5, "{}", excerpt(&chatty));

    // Nothing of the killed steps survives; the container still works.
    let ps = run(&mut container, &StepCommand::new(["ps", "-eo", "args"])).await;
    assert_eq!(ps.exit_code, Some(0));
    assert!(!ps.output.contains("fixture_canary"), "{}", excerpt(&ps));
    assert!(!ps.output.contains("tick"), "{}", excerpt(&ps));
    container.remove().await.unwrap();
}

fn peak_rss_of_this_process() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn output_flood_is_capped_keeping_head_and_tail() {
    // The fixture floods 4 GiB by default; 1 GiB keeps this test around 15 s and still shows the
    // flood is not held in memory (see the RSS check below).
    const FLOOD: u64 = 1 << 30;
    const CAP: usize = 1 << 20;
    let (_sandbox, _dirs, mut container) = stable_job("flood", "canary-flood", test_limits()).await;
    let build = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--no-run"]),
    )
    .await;
    assert_eq!(build.exit_code, Some(0), "{}", excerpt(&build));
    let flood = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--", "--nocapture"])
            .env("CALDERA_SANDBOX_CANARY", "1")
            .env("FLOOD_BYTES", FLOOD.to_string())
            .log_cap(CAP),
    )
    .await;
    assert_eq!(flood.exit_code, Some(0), "{}", excerpt(&flood));
    let log = &flood.output;
    assert!(
        log.as_bytes().len() <= CAP,
        "{} > {CAP}",
        log.as_bytes().len()
    );
    assert!(log.as_bytes().len() > CAP - 1024);
    assert!(log.truncated());
    assert!(log.output_bytes() > FLOOD, "{}", log.output_bytes());
    let text = log.text();
    let marker = format!(
        "[caldera: log truncated: {} bytes omitted here",
        log.omitted_bytes()
    );
    assert!(text.contains(&marker), "{marker} not in the log");
    let head = &text[..CAP / 4];
    assert!(head.contains("FLOOD START"));
    let tail = &text[text.len() - CAP / 4..];
    assert!(tail.contains(&format!("FLOOD DONE after {FLOOD} bytes")));
    assert!(tail.contains("test result: ok. 1 passed"));
    // The flood went through without being held in memory here.
    let rss = peak_rss_of_this_process();
    assert!(rss < 512 * MIB, "peak RSS of the test process: {rss} bytes");
    container.remove().await.unwrap();
}

#[tokio::test]
async fn writes_outside_the_target_dir_are_refused() {
    let (_sandbox, dirs, mut container) =
        stable_job("write-outside", "canary-write-outside", test_limits()).await;
    let test = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--", "--nocapture"])
            .env("CALDERA_SANDBOX_CANARY", "1"),
    )
    .await;
    assert_eq!(test.exit_code, Some(101), "{}", excerpt(&test));
    for path in [
        "/caldera/src/escaped.txt",
        "/escaped.txt",
        "/caldera/cargo-home/escaped.txt",
    ] {
        let line = format!("write {path}: Err(Os {{ code: 30, kind: ReadOnlyFilesystem");
        assert!(
            test.output.contains(&line),
            "{line} missing:\n{}",
            excerpt(&test)
        );
    }
    assert!(
        test.output
            .contains("write /caldera/toolchains/stable/escaped.txt: Err(Os { code: 30"),
        "{}",
        excerpt(&test)
    );
    assert!(
        test.output.contains("allowed.txt: Ok(())"),
        "{}",
        excerpt(&test)
    );
    assert!(
        test.output
            .contains("writes outside the target dir were refused"),
        "{}",
        excerpt(&test)
    );
    assert!(!dirs.source.join("escaped.txt").exists());
    assert!(!dirs.cargo_home.join("escaped.txt").exists());
    container.remove().await.unwrap();
}

/// Runs in a child process started by `secrets_do_not_reach_the_sandbox`, with secrets in its
/// environment (setting them in this process would race with other tests' threads).
#[tokio::test]
#[ignore = "run by secrets_do_not_reach_the_sandbox in a child process"]
async fn secrets_probe() {
    let token = std::env::var("CALDERA_TOKEN").expect("started with CALDERA_TOKEN");
    assert!(std::env::var("AWS_SECRET_ACCESS_KEY").is_ok());
    let (_sandbox, _dirs, mut container) =
        stable_job("secrets", "canary-secrets", test_limits()).await;
    let test = run(
        &mut container,
        &cargo(&["test", "--offline", "--locked", "--", "--nocapture"]),
    )
    .await;
    assert_eq!(test.exit_code, Some(0), "{}", excerpt(&test));
    assert!(test.output.contains("ENV NAMES: "), "{}", excerpt(&test));
    assert!(
        !test.output.contains(&token),
        "the token leaked:\n{}",
        excerpt(&test)
    );
    assert!(!test.output.contains("CALDERA_TOKEN"), "{}", excerpt(&test));
    assert!(
        !test.output.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        excerpt(&test)
    );
    assert!(
        !test.output.contains("SECRET-LOOKING VARIABLE"),
        "{}",
        excerpt(&test)
    );
    container.remove().await.unwrap();
}

#[tokio::test]
async fn secrets_do_not_reach_the_sandbox() {
    const TOKEN: &str = "caldera-test-secret-7f3a9c";
    // Control: on the host, the probe does print a secret-looking variable.
    let dirs = job_dirs("canary-secrets");
    let host = tokio::process::Command::new("cargo")
        .args([
            "test",
            "--offline",
            "--locked",
            "--quiet",
            "--",
            "--nocapture",
        ])
        .current_dir(&dirs.source)
        .env("CARGO_TARGET_DIR", &dirs.target)
        .env("CALDERA_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let host_out = String::from_utf8_lossy(&host.stdout);
    assert!(
        host_out.contains(&format!("SECRET-LOOKING VARIABLE CALDERA_TOKEN={TOKEN}")),
        "{host_out}"
    );

    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["secrets_probe", "--exact", "--ignored", "--nocapture"])
        .env("CALDERA_TOKEN", TOKEN)
        .env("AWS_SECRET_ACCESS_KEY", "caldera-test-aws-secret")
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "{out}\n{err}");
    assert!(out.contains("test secrets_probe ... ok"), "{out}\n{err}");
}

#[tokio::test]
async fn steps_run_unprivileged_with_a_scratch_environment() {
    let (_sandbox, _dirs, mut container) = stable_job("isolation", "pass", test_limits()).await;
    let facts = run(
        &mut container,
        &StepCommand::new([
            "sh",
            "-c",
            "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; \
             cat /proc/net/dev | tail -n +3 | cut -d: -f1; env | sort; \
             echo to-stderr >&2; touch /caldera/target/ok && echo target-writable",
        ])
        .env("EXTRA_VAR", "extra value"),
    )
    .await;
    assert_eq!(facts.exit_code, Some(0), "{}", excerpt(&facts));
    let lines: Vec<String> = facts
        .output
        .text()
        .lines()
        .map(|l| l[11..].to_owned())
        .collect();
    let mut expect = vec![
        "1000".to_owned(),
        "1000".to_owned(),
        "CapEff:\t0000000000000000".to_owned(),
        "CapBnd:\t0000000000000000".to_owned(),
        "NoNewPrivs:\t1".to_owned(),
        "    lo".to_owned(),
    ];
    let mut env = vec![
        "CARGO_HOME=/caldera/cargo-home",
        "CARGO_TARGET_DIR=/caldera/target",
        "CARGO_TERM_COLOR=never",
        "EXTRA_VAR=extra value",
        "HOME=/home/caldera",
        "LANG=C.UTF-8",
        "PATH=/caldera/toolchains/stable/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD=/caldera/src",
        "TMPDIR=/tmp",
        "USER=caldera",
    ];
    env.sort();
    expect.extend(env.into_iter().map(String::from));
    expect.push("to-stderr".into());
    expect.push("target-writable".into());
    assert_eq!(lines, expect);
    container.remove().await.unwrap();
}

#[tokio::test]
async fn processes_left_behind_by_a_step_are_killed_before_the_next() {
    let (_sandbox, _dirs, mut container) = stable_job("leftovers", "pass", test_limits()).await;
    let spawn = run(
        &mut container,
        &StepCommand::new([
            "sh",
            "-c",
            "setsid sleep 1234 >/dev/null 2>&1 & nohup sleep 4321 >/dev/null 2>&1 & echo spawned",
        ]),
    )
    .await;
    assert_eq!(spawn.exit_code, Some(0));
    let ps = run(&mut container, &StepCommand::new(["ps", "-eo", "args"])).await;
    assert!(!ps.output.contains("sleep 1234"), "{}", excerpt(&ps));
    assert!(!ps.output.contains("sleep 4321"), "{}", excerpt(&ps));
    assert!(
        ps.output.contains("sleep 3600"),
        "PID 1's sleep survives: {}",
        excerpt(&ps)
    );
    container.remove().await.unwrap();
}

#[tokio::test]
async fn steps_in_one_exec_are_split_stopped_and_cleaned_between() {
    let (_sandbox, _dirs, mut container) = stable_job("driver", "pass", test_limits()).await;
    let sh = |script: &str| StepCommand::new(["sh", "-c", script]);
    assert!(
        container.is_primed(),
        "a new container has its driver waiting"
    );
    let results = container
        .exec_steps(&[
            // output without a final newline; a daemon left behind; a forged marker with a guessed
            // nonce; and the driver's stdin, where the real nonce came from, is empty for steps
            sh("printf 'one'; setsid sleep 1234 >/dev/null 2>&1 & \
                printf '\\n\\036caldera-step-end 00000000000000000000000000000000 0 0\\n'; \
                cat; printf 'stdin was empty'"),
            // (SIGKILL is delivered asynchronously: on a loaded machine the daemon can still be
            // listed for a moment, so the check gives it a second to be gone)
            sh("for i in 1 2 3 4 5 6 7 8 9 10; do \
                  ps -eo args | grep -q '^sleep 1234' || break; sleep 0.1; done; \
                ps -eo args; echo two >&2; exit 3"),
            sh("echo never"),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2, "the third step does not run: {results:?}");
    assert!(!container.is_primed(), "the waiting driver ran these steps");
    let (one, two) = (&results[0], &results[1]);
    assert_eq!(one.exit_code, Some(0));
    let text = one.output.text();
    assert!(text.contains("] one"), "{text}");
    assert!(
        text.contains("caldera-step-end 00000000000000000000000000000000 0 0"),
        "a forged marker is plain output: {text}"
    );
    assert!(text.contains("stdin was empty"), "{text}");
    assert_eq!(two.exit_code, Some(3));
    assert!(!two.success());
    let text = two.output.text();
    assert!(
        !text.lines().any(|l| l.ends_with("] sleep 1234")),
        "the first step's daemon was killed before the second: {text}"
    );
    assert!(text.lines().any(|l| l.ends_with("] sleep 3600")), "{text}");
    assert!(text.contains("two"), "stderr is merged: {text}");
    assert!(
        !text
            .lines()
            .any(|l| l.ends_with("] one") || l.ends_with("stdin was empty")),
        "each step has its own output: {text}"
    );

    // a timeout in a later step ends that step only, and the container runs the next exec
    let results = container
        .exec_steps(&[
            sh("echo quick"),
            sh("echo slow; sleep 600").timeouts(Duration::from_secs(60), Duration::from_secs(2)),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert!(results[0].success());
    assert_eq!(
        results[1].timed_out,
        Some(caldera_sandbox::TimeoutKind::NoOutput)
    );
    assert!(results[1].output.contains("slow"));
    let after = run(&mut container, &StepCommand::new(["true"])).await;
    assert!(after.success(), "{after:?}");

    // steps that differ in environment cannot share an exec
    let err = container
        .exec_steps(&[sh("true"), sh("true").env("A", "1")])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("must share their environment"),
        "{err}"
    );
    container.remove().await.unwrap();
}

#[tokio::test]
async fn bad_mounts_and_leftover_containers() {
    let sandbox = sandbox("mounts").await;
    let dirs = job_dirs("pass");
    // A source the sandbox user cannot read is refused before anything is created.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut bad = mounts(&dirs, vec![toolchain("stable").await]);
    bad.source = private.path().to_owned();
    let err = sandbox.create(bad, test_limits()).await.unwrap_err();
    assert!(
        matches!(err, SandboxError::Mount { role: "source", .. }),
        "{err}"
    );
    let bad = mounts(
        &dirs,
        vec![ToolchainMount::new("stable", dirs.source.clone())],
    );
    let err = sandbox.create(bad, test_limits()).await.unwrap_err();
    assert!(err.to_string().contains("has no bin/cargo"), "{err}");

    // A container dropped without `remove()` is removed in the background.
    let dropped = sandbox
        .create(
            mounts(&dirs, vec![toolchain("stable").await]),
            test_limits(),
        )
        .await
        .unwrap();
    let id = dropped.id().to_owned();
    drop(dropped);
    let mut removed = false;
    for _ in 0..100 {
        match sandbox
            .docker()
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                removed = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(removed, "dropped container {id} still exists after 10 s");

    // A container that is never removed (a crashed worker) is swept by the next connect.
    let leaked = sandbox
        .create(
            mounts(&dirs, vec![toolchain("stable").await]),
            test_limits(),
        )
        .await
        .unwrap();
    let id = leaked.id().to_owned();
    std::mem::forget(leaked);
    let again = Sandbox::connect(sandbox.config().clone()).await.unwrap();
    let gone = again
        .docker()
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    assert!(
        matches!(
            gone,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        ),
        "{gone:?}"
    );
}

/// Runs `sh -c 'echo started; sleep 120'` as the second of two steps and, once it runs, does
/// `docker <action> <container>` from outside; returns what `exec_steps` made of it, and what the
/// container does with the next exec.
async fn step_interrupted_from_outside(
    test: &str,
    action: &'static [&'static str],
) -> (
    caldera_sandbox::Result<Vec<caldera_sandbox::StepResult>>,
    caldera_sandbox::Result<caldera_sandbox::StepResult>,
) {
    let (_sandbox, _dirs, mut container) = stable_job(test, "pass", test_limits()).await;
    let id = container.id().to_owned();
    let outside = tokio::spawn(async move {
        // once the sleeping step runs
        for _ in 0..600 {
            let top = tokio::process::Command::new("docker")
                .args(["top", &id])
                .output()
                .await
                .unwrap();
            if String::from_utf8_lossy(&top.stdout).contains("sleep 120") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = tokio::process::Command::new("docker")
            .args(action)
            .arg(&id)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "docker {action:?} {id}: {out:?}");
    });
    let sh = |script: &str| StepCommand::new(["sh", "-c", script]);
    let results = container
        .exec_steps(&[sh("echo first"), sh("echo started; sleep 120")])
        .await;
    outside.await.unwrap();
    eprintln!("--- after docker {action:?}: {results:?}");
    let next = container.exec(&sh("echo next")).await;
    eprintln!("--- the next exec: {next:?}");
    (results, next)
}

/// A container removed or killed from outside ends its step with SIGKILL, like an OOM kill; it is
/// an infrastructure error naming what happened, with the output so far, never a step result.
fn assert_lost(
    results: caldera_sandbox::Result<Vec<caldera_sandbox::StepResult>>,
    want: &caldera_sandbox::ContainerLoss,
) {
    match results {
        Err(SandboxError::ContainerLost {
            step, loss, steps, ..
        }) => {
            assert_eq!((step, &loss), (2, want));
            assert_eq!(steps.len(), 2);
            assert!(steps[0].success(), "{:?}", steps[0]);
            assert!(steps[1].output.contains("started"), "{:?}", steps[1]);
            assert!(!steps[1].oom_killed && !steps[1].success());
        }
        other => panic!("want the container lost ({want}), got {other:?}"),
    }
}

#[tokio::test]
async fn a_container_removed_mid_step_is_an_error_not_oom() {
    let (results, next) = step_interrupted_from_outside("removed", &["rm", "-f"]).await;
    let message = results.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("was removed from outside during step 2"),
        "{message}"
    );
    assert_lost(results, &caldera_sandbox::ContainerLoss::Removed);
    let next = next.unwrap_err();
    assert!(next.is_retryable(), "{next}");
    assert!(next.to_string().contains("removed"), "{next}");
}

#[tokio::test]
async fn a_container_killed_mid_step_is_an_error_not_oom() {
    let (results, next) = step_interrupted_from_outside("killed", &["kill"]).await;
    let message = results.as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(
        message.contains("was killed from outside (container exit status 137) during step 2"),
        "{message}"
    );
    assert_lost(
        results,
        &caldera_sandbox::ContainerLoss::Stopped {
            exit_code: Some(137),
        },
    );
    // the killed container is started again for the next steps
    let next = next.unwrap();
    assert!(next.success() && next.output.contains("next"), "{next:?}");
}
