//! `caldera local`, the real binary on embedded defaults: a private Postgres under a state directory,
//! local object storage, the master and a Docker worker in one process.
//!
//! * the demo with two registry crates (the README's first command, made small): the regression
//!   fixture shows as regressed, the fix as fixed, the memory eater as spurious, the real crates as
//!   they truly are (both pass);
//! * stopping a run with SIGTERM and running the same command again resumes the experiment with
//!   the results of the first run kept.
//!
//! Needs the Docker engine and the sandbox image (`cargo xtask provision`), and the registry for
//! the demo's two crates.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn caldera(state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_caldera"));
    c.arg("local")
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("CALDERA_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs the command to the end with a time limit; returns (success, stdout, stderr).
fn run(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("caldera local did not finish within {limit:?}");
        }
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The comparison printed for the crate whose id ends with `suffix` in the "per crate" list.
fn comparison_of<'a>(stdout: &'a str, suffix: &str) -> Option<&'a str> {
    stdout
        .split("per crate:")
        .nth(1)?
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .collect::<Vec<_>>()
                .split_first()
                .map(|(a, b)| (*a, b.to_vec()))
        })
        .find(|(krate, _)| krate.ends_with(suffix))
        .and_then(|(_, rest)| rest.last().copied())
}

#[test]
fn the_demo_runs_with_a_small_crate_set() {
    let state = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(
        caldera(state.path(), &["--demo", "--demo-crates", "2"]),
        Duration::from_secs(900),
    );
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expect = [
        ("/regress-on-nightly", "regressed"),
        ("/fixed-on-nightly", "fixed"),
        ("/spurious-oom-on-nightly", "spurious-regressed"),
        ("/pass", "same-test-pass"),
        ("reg:cfg-if@1.0.1", "same-test-pass"),
        ("reg:fnv@1.0.7", "same-test-pass"),
    ];
    for (krate, want) in expect {
        assert_eq!(
            comparison_of(&stdout, krate),
            Some(want),
            "{krate}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stdout.contains("**1 regression, 1 of them through"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| spurious-regressed | 1 | oom 1 |"),
        "{stdout}"
    );
    // the report's files, readable as they are, and the dashboard URL
    let report_dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .and_then(|l| l.split(" (").next())
        .map(Path::new)
        .unwrap_or_else(|| panic!("the report's location is printed:\n{stdout}\n{stderr}"));
    let read = |f: &str| {
        std::fs::read_to_string(report_dir.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", report_dir.join(f).display()))
    };
    let summary = read("summary.md");
    assert!(summary.starts_with("# demo"), "{summary}");
    assert!(summary.contains("regress-on-nightly"), "{summary}");
    let results: serde_json::Value = serde_json::from_str(&read("results.json")).unwrap();
    assert!(results.to_string().contains("spurious-oom-on-nightly"));
    assert!(read("index.html").contains("<html"));
    assert!(read("retry.txt").contains("regress-on-nightly"));
    assert!(stdout.contains("dashboard: http://127.0.0.1:"), "{stdout}");
    // not a terminal: plain progress lines, no tracing noise at the default level
    assert!(
        stderr.contains("caldera local: experiment demo started"),
        "{stderr}"
    );
    assert!(!stderr.contains(" INFO "), "{stderr}");
}

/// Reads the child's stderr lines into a channel (and keeps them all for messages).
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn finished_jobs(base: &str, token: &str, name: &str) -> Option<(i64, i64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("{base}/api/v1/experiments/{name}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let p = &v["progress"];
        Some((p["done"].as_i64()?, p["total"].as_i64()?))
    })
}

#[test]
fn a_stopped_run_resumes_with_its_results() {
    let state = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crates")
        .canonicalize()
        .unwrap();
    let names = [
        "pass",
        "test-fail",
        "compile-error",
        "warnings",
        "debug-overflow",
    ];
    let crates = names
        .iter()
        .map(|n| format!("path:{}", fixtures.join(n).display()))
        .collect::<Vec<_>>()
        .join(",");
    let args = [
        "--crates",
        crates.as_str(),
        "--start",
        "stable",
        "--end",
        "stable+rustflags=-Dwarnings",
        "--name",
        "resume",
        // one job per crate (the counts below): no confirmation runs of `warnings`' regression
        "--confirm",
        "0",
    ];

    // first run: stopped with SIGTERM once two crates are done
    let mut first = caldera(state.path(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut first);
    let mut seen = Vec::new();
    let t0 = Instant::now();
    let base = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no dashboard line: {seen:#?}"));
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("caldera local: dashboard ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
        }
    };
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.path().join("tokens.json")).unwrap())
            .unwrap();
    let token = tokens["admin"].as_str().unwrap().to_owned();
    let done_before = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "two crates were not done in time: {seen:#?}"
        );
        // (no jobs until the experiment has started)
        if let Some((done, total)) = finished_jobs(&base, &token, "resume")
            && total > 0
        {
            assert_eq!(total, names.len() as i64);
            assert!(done < total, "the run finished before it could be stopped");
            if done >= 2 {
                break done;
            }
        }
        seen.extend(lines.try_iter());
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status();
    let status = first.wait().unwrap();
    seen.extend(lines.try_iter());
    assert!(!status.success(), "an interrupted run fails: {seen:#?}");
    let all = seen.join("\n");
    assert!(
        all.contains("interrupted before the experiment finished")
            && all.contains("run the same command again to resume it"),
        "{all}"
    );

    // second run: resumes; the crates done before are not run again
    let (ok, stdout, stderr) = run(caldera(state.path(), &args), Duration::from_secs(600));
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let resumed = stderr
        .lines()
        .find(|l| l.contains("experiment resume exists"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let finished: i64 = resumed
        .split_once("running, ")
        .and_then(|(_, r)| r.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{resumed}"));
    assert!(
        finished >= done_before,
        "the {done_before} crates done before are kept: {resumed}"
    );
    let want = [
        ("/pass", "same-test-pass"),
        ("/test-fail", "same-test-fail"),
        ("/compile-error", "same-build-fail"),
        ("/warnings", "regressed"),
        ("/debug-overflow", "same-test-fail"),
    ];
    for (krate, comparison) in want {
        assert_eq!(
            comparison_of(&stdout, krate),
            Some(comparison),
            "{krate}\n{stdout}\n{stderr}"
        );
    }
    // a third run of a finished experiment only prints its report again
    let (ok, stdout2, stderr2) = run(caldera(state.path(), &args), Duration::from_secs(300));
    assert!(ok, "{stderr2}");
    assert!(
        stderr2.contains("experiment resume exists (completed, 5/5 jobs finished)"),
        "{stderr2}"
    );
    assert_eq!(per_crate(&stdout2), per_crate(&stdout));
    assert_eq!(per_crate(&stdout).len(), names.len());
}

/// The "per crate" lines of the printed report.
fn per_crate(stdout: &str) -> Vec<&str> {
    stdout
        .split("per crate:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn a_selection_that_cannot_start_is_not_left_behind() {
    let state = tempfile::tempdir().unwrap();
    for run_no in 1..=2 {
        let (ok, stdout, stderr) = run(
            caldera(state.path(), &["--crates", "top:3", "--name", "t3"]),
            Duration::from_secs(300),
        );
        assert!(!ok, "run {run_no}: {stdout}");
        assert!(
            stderr.contains(
                "error: starting experiment t3: `top` needs a listing of the whole registry"
            ),
            "run {run_no}: {stderr}"
        );
        assert!(
            !stderr.contains("exists"),
            "run {run_no}: the failed experiment was not kept: {stderr}"
        );
    }
}
