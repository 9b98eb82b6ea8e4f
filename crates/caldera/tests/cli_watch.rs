//! The CLI follows a run, through the real binary, a real master (in this process), real Postgres:
//!
//! * with a real worker (the Docker executor building fixture crates, stable vs nightly):
//!   `experiment watch` to the end (plain lines, the summary, the report's address, exit 1 with
//!   `--fail-on-regression`), `report` in its forms, `logs` of a crate named as typed, `experiment
//!   retry`, `experiment list` with its progress column, and the refusals of each;
//! * with the fake executor (jobs held at a gate): Ctrl-C stops `watch` cleanly (130), and an
//!   aborted experiment ends it with an error;
//! * `completions` for the shells, and clap's refusals of unknown option values.
//!
//! The Docker test needs the Docker engine, the sandbox image (`cargo xtask provision`) and the
//! `stable` and `nightly` toolchains in the host's rustup home.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use caldera_core::outcome::Outcome;
use caldera_db::testing::TestDb;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, Timeouts, default_rustup_home};
use caldera_storage::StorageConfig;
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
use caldera_worker::fake::{FakeBehaviour, FakeExecutor};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use common::*;
use serde_json::Value;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `caldera ARGS` against the master (stdout is a pipe, not a terminal).
fn caldera(server: &str, token: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(args)
        .env("CALDERA_SERVER", server)
        .env("CALDERA_TOKEN", token)
        .env_remove("CALDERA_LOG")
        .env_remove("CALDERA_JSON")
        .output()
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`caldera`] on a blocking thread, so that the master in this process goes on serving.
async fn run(server: &str, token: &str, args: &[&str]) -> Out {
    let (server, token) = (server.to_owned(), token.to_owned());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        caldera(&server, &token, &args)
    })
    .await
    .unwrap()
}

fn fixture(name: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crates")
        .join(name)
        .canonicalize()
        .unwrap();
    format!("path:{}", dir.display())
}

async fn experiment_names(pool: &caldera_db::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM experiments ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A worker with the Docker executor over its own work dir, uploading logs to `store`.
async fn docker_worker(
    master: &InProcessMaster,
    token: &str,
    dir: &std::path::Path,
    store: Arc<dyn caldera_storage::ObjectStore>,
) -> (InProcessWorker, Arc<DockerExecutor>, Arc<UploadSpool>) {
    let spool = Arc::new(
        UploadSpool::open(store, UploadSpoolConfig::new(dir.join("upload-spool")))
            .await
            .unwrap(),
    );
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: format!("test-cli-watch-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rustup_home = default_rustup_home().expect("RUSTUP_HOME or HOME");
    let mut config = DockerExecutorConfig::new(dir.join("work"), &rustup_home);
    config.slots = 2;
    config.timeouts = Timeouts {
        total: Duration::from_secs(300),
        no_output: Duration::from_secs(120),
    };
    config.limits = Limits {
        memory_bytes: 1 << 30,
        cpus: 1.0,
        pids: 512,
        tmp_bytes: 256 << 20,
    };
    let executor = Arc::new(DockerExecutor::new(config, sandbox, spool.clone()).unwrap());
    let mut wconfig = worker_config(&master.grpc, token, "cli-watch", 2, &dir.join("spool"));
    wconfig.capabilities = caldera_worker::docker::capabilities(&rustup_home)
        .await
        .unwrap();
    let worker = InProcessWorker::spawn_with(wconfig, executor.clone());
    (worker, executor, spool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_report_logs_and_retry_with_a_real_worker() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = caldera_storage::open(&StorageConfig::local(dir.path().join("objects"))).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store.clone())
            .await;
    let t = tokens(&db.pool).await;
    let (http, op) = (master.http.as_str(), t.operator.as_str());
    let (pass, regress) = (fixture("pass"), fixture("regress-on-nightly"));
    let crates = format!("{pass},{regress}");
    let o = run(
        http,
        op,
        &[
            "experiment",
            "create",
            "e2e",
            "--start",
            "stable",
            "--end",
            "nightly",
            "--crates",
            &crates,
            "--confirm",
            "0",
        ],
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);

    // watching an experiment that does not exist fails at once, naming it
    let o = run(http, op, &["experiment", "watch", "nope"]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("\"nope\""), "{}", o.stderr);

    // watch from before the start: it waits, follows, and ends with the summary
    let watch = {
        let (http, op) = (http.to_owned(), op.to_owned());
        tokio::task::spawn_blocking(move || {
            let args = [
                "experiment",
                "watch",
                "e2e",
                "--fail-on-regression",
                "--interval",
                "0.5",
            ];
            caldera(&http, &op, &args)
        })
    };
    // long enough for the watch to see the experiment queued before it starts
    tokio::time::sleep(Duration::from_secs(3)).await;
    let o = run(http, op, &["experiment", "start", "e2e"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let (worker, executor, spool) = docker_worker(&master, &t.worker, dir.path(), store).await;
    let w = tokio::time::timeout(Duration::from_secs(900), watch)
        .await
        .expect("watch ends when the experiment does")
        .unwrap();
    assert_eq!(
        w.code,
        Some(1),
        "a regression, asked to fail on one: {}\n{}",
        w.stdout,
        w.stderr
    );
    // the logs are durable before a result is recorded: the worker can go
    worker.stop().await;
    executor.shutdown().await;
    spool.wait_idle().await;
    let lines: Vec<&str> = w.stdout.lines().collect();
    assert!(lines[0].contains("queued: 0/0 finished"), "{}", w.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("running: 0/2 finished (0%)")),
        "{}",
        w.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("completed: 2/2 finished (100%)")),
        "{}",
        w.stdout
    );
    let regress_id = regress.replace("path:", "local:");
    assert!(
        w.stdout.contains("experiment e2e completed in "),
        "{}",
        w.stdout
    );
    assert!(
        w.stdout
            .contains(": 2 crates: 1 regressed, 1 same-test-pass"),
        "{}",
        w.stdout
    );
    assert!(
        w.stdout
            .contains(&format!("1 regression:\n  {regress_id}\n")),
        "{}",
        w.stdout
    );
    assert!(
        w.stdout
            .contains(&format!("report: {http}/experiments/e2e ")),
        "{}",
        w.stdout
    );
    assert!(!w.stdout.contains('\x1b'), "no bar and no colour in a pipe");

    // watching it again: it is over, so the summary at once; without the flag, exit 0
    let o = run(http, op, &["experiment", "watch", "e2e"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("1 regression:"), "{}", o.stdout);

    // the report in each form
    let o = run(http, op, &["report", "e2e"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("regress"), "{}", o.stdout);
    assert!(o.stdout.starts_with('#'), "Markdown: {}", o.stdout);
    let o = run(http, op, &["report", "e2e", "--format", "json"]).await;
    let json: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(json["regressions"], serde_json::json!([regress_id]));
    let o = run(http, op, &["report", "e2e", "--format", "retry"]).await;
    assert_eq!(o.stdout, format!("{regress_id}\n"));
    // the pull-request comment: Markdown naming the regression, with links to this master
    let o = run(http, op, &["report", "e2e", "--format", "pr"]).await;
    assert!(o.stdout.len() <= 65_536, "{}", o.stdout.len());
    assert!(o.stdout.contains("regress-on-nightly"), "{}", o.stdout);
    assert!(
        o.stdout.contains(&format!("{http}/experiments/e2e")),
        "{}",
        o.stdout
    );
    let html = dir.path().join("report.html");
    let o = run(
        http,
        op,
        &[
            "report",
            "e2e",
            "--format",
            "html",
            "--output",
            html.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));
    let o = run(http, op, &["report", "nope"]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("nope"), "{}", o.stderr);
    assert!(o.stdout.is_empty());

    // logs: the crate as typed in the list, as printed, by side or both
    let o = run(http, op, &["logs", "e2e", &regress, "--side", "end"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("E0308"), "{}", o.stdout);
    assert!(!o.stdout.contains("==>"), "one side, no header");
    assert!(!o.stdout.contains('\x1b'), "no colour in a pipe");
    assert!(
        !o.stdout.contains("\"reason\":\"compiler-message\""),
        "diagnostics rendered"
    );
    let raw = run(
        http,
        op,
        &["logs", "e2e", &regress_id, "--side", "end", "--raw"],
    )
    .await;
    assert!(raw.stdout.contains("compiler-message"), "{}", raw.stdout);
    let o = run(http, op, &["logs", "e2e", &regress_id]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let start = o.stdout.find(&format!("==> start log of {regress_id} <=="));
    let end = o.stdout.find(&format!("==> end log of {regress_id} <=="));
    assert!(start.is_some() && end > start, "{}", o.stdout);
    let o = run(http, op, &["logs", "e2e", "path:/no/such/crate"]).await;
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr
            .contains("`local:/no/such/crate` is not part of experiment"),
        "{}",
        o.stderr
    );
    let o = run(http, op, &["logs", "e2e", "x y"]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("invalid crate"), "{}", o.stderr);

    // retry: nothing spurious to retry creates nothing; the regressions make a follow-up
    let o = run(http, op, &["experiment", "retry", "e2e", "--spurious"]).await;
    assert_eq!(o.code, Some(1));
    assert!(
        o.stderr.contains(
            "no spurious results, flaky crates or errors to retry; no experiment created"
        ),
        "{}",
        o.stderr
    );
    assert_eq!(experiment_names(&db.pool).await, ["e2e"]);
    let o = run(http, op, &["experiment", "retry", "nope"]).await;
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("\"nope\""), "{}", o.stderr);
    assert_eq!(experiment_names(&db.pool).await, ["e2e"]);
    let o = run(http, op, &["experiment", "retry", "e2e", "--regressed"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout
            .starts_with("created experiment e2e-retry over 1 crate of e2e's report"),
        "{}",
        o.stdout
    );
    let o = run(http, op, &["experiment", "retry", "e2e", "--start"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout
            .contains("created experiment e2e-retry-2 over 1 crate"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("started e2e-retry-2"), "{}", o.stdout);
    let o = run(http, op, &["experiment", "show", "e2e-retry", "--json"]).await;
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["status"], "queued");
    assert_eq!(
        v["crates"],
        serde_json::json!({"kind": "list", "crates": [regress]})
    );
    assert_eq!(
        (
            &v["start"]["toolchain"],
            &v["end"]["toolchain"],
            &v["confirm"]
        ),
        (&"stable".into(), &"nightly".into(), &0.into()),
        "{v}"
    );

    // the list, with its progress column
    let o = run(http, op, &["experiment", "list"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let row = |name: &str| {
        o.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} in {}", o.stdout))
            .to_owned()
    };
    assert!(
        o.stdout.lines().next().unwrap().contains("progress"),
        "{}",
        o.stdout
    );
    assert!(row("e2e").contains("completed   2/2 100%"), "{}", o.stdout);
    assert!(row("e2e-retry").contains("queued      -"), "{}", o.stdout);
    let o = run(http, op, &["experiment", "list", "--status", "runing"]).await;
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr
            .contains("possible values: queued, running, paused, completed, aborted"),
        "{}",
        o.stderr
    );

    master.stop().await;
}

/// Reads lines of the child's stdout until one contains `want`.
fn wait_for_line(reader: &mut impl std::io::BufRead, want: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no {want:?} in {seen}"
        );
        seen.push_str(&line);
        if line.contains(want) {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_an_abort_end_watch() {
    let db = TestDb::new().await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let t = tokens(&db.pool).await;
    let executor = FakeExecutor::new()
        .with_default(FakeBehaviour::outcomes(Outcome::TestPass, Outcome::TestPass).gated("hold"));
    let spool = tempfile::tempdir().unwrap();
    let worker = InProcessWorker::spawn(
        worker_config(&master.grpc, &t.worker, "w1", 2, spool.path()),
        executor.clone(),
    );
    start_experiment(&master.http, &t.operator, "held", &crate_names(5)).await;
    executor.wait_for(|s| s.running == 2).await;

    let (http, op) = (master.http.clone(), t.operator.clone());
    let watch = move || {
        Command::new(env!("CARGO_BIN_EXE_caldera"))
            .args(["experiment", "watch", "held", "--interval", "0.2"])
            .env("CALDERA_SERVER", &http)
            .env("CALDERA_TOKEN", &op)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Ctrl-C: the watch stops, says how to follow again, exit 130; the experiment goes on
    let o = tokio::task::spawn_blocking({
        let watch = watch.clone();
        move || {
            let mut child = watch();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            let first = wait_for_line(&mut out, "running: 0/5 finished (0%) · 2 running, 3 queued");
            let kill = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
            (child.wait().unwrap().code(), first + &rest)
        }
    })
    .await
    .unwrap();
    assert_eq!(o.0, Some(130), "{}", o.1);
    assert!(
        o.1.contains("stopped watching held (it goes on;"),
        "{}",
        o.1
    );
    assert_eq!(status(&db.pool, "held").await, "running");

    // an abort while watching: the watch ends with an error
    let child = tokio::task::spawn_blocking(move || {
        let mut child = watch();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        wait_for_line(&mut out, "running: 0/5");
        (child, out)
    })
    .await
    .unwrap();
    let (status_code, v) = api(
        &master.http,
        &t.operator,
        reqwest::Method::POST,
        "/experiments/held/abort",
        None,
    )
    .await;
    assert_eq!(status_code, 200, "{v}");
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let (mut child, mut out) = child;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (child.wait().unwrap().code(), rest, err)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("aborted: "), "{stdout}");
    assert_eq!(stderr.trim(), "error: experiment held was aborted");

    executor.open_gate("hold");
    worker.stop().await;
    master.stop().await;
}

#[test]
fn completions_for_each_shell_and_clap_refusals() {
    let o = caldera("http://127.0.0.1:1", "-", &["completions", "bash"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for word in [
        "experiment",
        "watch",
        "retry",
        "report",
        "logs",
        "completions",
        "--fail-on-regression",
        "--format",
    ] {
        assert!(o.stdout.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = caldera("http://127.0.0.1:1", "-", &["completions", shell]);
        assert_eq!(o.code, Some(0), "{shell}: {}", o.stderr);
        assert!(o.stdout.contains("watch"), "{shell}");
    }
    let o = caldera("http://127.0.0.1:1", "-", &["completions", "tcsh"]);
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr
            .contains("[possible values: bash, elvish, fish, powershell, zsh]"),
        "{}",
        o.stderr
    );
    let o = caldera(
        "http://127.0.0.1:1",
        "-",
        &["report", "x", "--format", "markdown"],
    );
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr
            .contains("[possible values: md, json, html, retry, pr]"),
        "{}",
        o.stderr
    );
    let o = caldera(
        "http://127.0.0.1:1",
        "-",
        &["logs", "x", "serde", "--side", "ends"],
    );
    assert_eq!(o.code, Some(2));
    assert!(
        o.stderr.contains("similar value: 'end'")
            || o.stderr.contains("possible values: start, end"),
        "{}",
        o.stderr
    );
    // the master is unreachable: said plainly
    let o = caldera("http://127.0.0.1:1", "-", &["report", "x"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("cannot reach the master"), "{}", o.stderr);
}
