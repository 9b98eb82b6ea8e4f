//! The `caldera experiment` client, the real binary against a real master (in this process) and a
//! real Postgres: create, show, start, show with job counts, list as JSON; a rejected create says
//! which field is wrong, exits non-zero and changes nothing.

mod common;

use std::process::Command;

use caldera_db::testing::TestDb;
use common::*;

fn caldera(server: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(["experiment", "--server", server, "--token", token])
        .args(args)
        .env_remove("CALDERA_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn experiment_count(pool: &caldera_db::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_commands_against_a_master() {
    let db = TestDb::new().await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let t = tokens(&db.pool).await;
    let (http, op) = (master.http.clone(), t.operator.clone());
    let run = move |args: Vec<&'static str>| {
        let (http, op) = (http.clone(), op.clone());
        tokio::task::spawn_blocking(move || caldera(&http, &op, &args))
    };

    // a bad toolchain: the field is named, the exit status says so, nothing is stored
    let (ok, stdout, stderr) = run(vec![
        "create",
        "cli-x",
        "--start",
        "stable",
        "--end",
        "nightly+colour=blue",
        "--crates",
        "fnv@1.0.7",
    ])
    .await
    .unwrap();
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("end"), "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    assert_eq!(experiment_count(&db.pool).await, 0);

    let (ok, stdout, stderr) = run(vec![
        "create",
        "cli-x",
        "--start",
        "stable",
        "--end",
        "nightly",
        "--mode",
        "check-only",
        "--crates",
        "fnv@1.0.7,itoa@1.0.11,semver@1.0.23",
    ])
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.lines().next().unwrap_or_default(),
        "created experiment cli-x (queued); start it with `caldera experiment start cli-x`"
    );
    // the estimate follows: no history in this mode, no worker connected
    assert!(
        stdout.contains(
            "jobs:        3 (6 sides to run, 0 settled by the cache, 0 settled otherwise)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("CPU time:    unknown"), "{stdout}");
    assert!(
        stdout.contains("3 job(s) have no estimate: no CPU time."),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(vec!["show", "cli-x"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("mode:         check-only"), "{stdout}");
    assert!(
        stdout.contains("jobs:         0 of 0 finished"),
        "no jobs before the start: {stdout}"
    );

    let (ok, stdout, stderr) = run(vec!["start", "cli-x"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("running"), "{stdout}");
    let (ok, stdout, stderr) = run(vec!["show", "cli-x"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "jobs:         0 of 3 finished (0 done, 0 error, 0 cancelled), 0 running, 3 queued"
        ),
        "{stdout}"
    );

    let (ok, stdout, stderr) = run(vec!["estimate", "cli-x"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("experiment cli-x (running)\nestimate, what is left:\n"),
        "{stdout}"
    );
    assert!(stdout.contains("estimate at the start ("), "{stdout}");
    let (ok, stdout, stderr) = run(vec!["estimate", "nope"]).await.unwrap();
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains(r#"experiment "nope" not found"#),
        "{stderr}"
    );

    let (ok, stdout, stderr) = run(vec!["--json", "list"]).await.unwrap();
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["items"][0]["name"], "cli-x");
    assert_eq!(v["items"][0]["status"], "running");

    // a second create with the same name is refused and changes nothing
    let (ok, _, stderr) = run(vec![
        "create",
        "cli-x",
        "--start",
        "stable",
        "--end",
        "beta",
        "--crates",
        "fnv@1.0.7",
    ])
    .await
    .unwrap();
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(experiment_count(&db.pool).await, 1);

    let (ok, stdout, stderr) = run(vec!["abort", "cli-x"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("aborted"), "{stdout}");
    let (ok, stdout, _) = run(vec!["show", "cli-x"]).await.unwrap();
    assert!(ok);
    assert!(
        stdout.contains("jobs:         3 of 3 finished (0 done, 0 error, 3 cancelled)"),
        "{stdout}"
    );
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_mode_is_refused_with_a_suggestion_and_sends_nothing() {
    let db = TestDb::new().await;
    let master = InProcessMaster::start(db.pool.clone(), fast_config(), None).await;
    let t = tokens(&db.pool).await;
    let out = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args([
            "experiment",
            "--server",
            &master.http,
            "--token",
            &t.operator,
        ])
        .args(["create", "typo", "--start", "stable", "--end", "beta"])
        .args(["--crates", "serde@1.0.219", "--mode", "chekc-only"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'chekc-only' for '--mode <MODE>'")
            && stderr.contains("a similar value exists: 'check-only'"),
        "{stderr}"
    );
    assert_eq!(experiment_count(&db.pool).await, 0);
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_says_what_it_applied_and_logs_have_no_colour_in_a_file() {
    let db = TestDb::empty().await;
    let migrate = || {
        Command::new(env!("CARGO_BIN_EXE_caldera"))
            .args(["migrate", "--database-url", &db.url])
            .env("CALDERA_LOG", "debug")
            .output()
            .unwrap()
    };
    let first = migrate();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr),
    );
    assert!(first.status.success(), "{stderr}");
    let applied = caldera_db::applied_migrations(&db.pool).await.unwrap();
    assert!(applied > 0);
    assert_eq!(
        stdout.trim(),
        format!("applied {applied} migrations; the database is up to date ({applied} in all)")
    );
    // stderr is a pipe here, as a file would be: plain text, no escape sequences
    assert!(
        stderr.contains("DEBUG"),
        "debug logs were written: {stderr:?}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    let again = migrate();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        format!("database is up to date ({applied} migrations applied before)")
    );
}
