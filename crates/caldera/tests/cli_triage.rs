//! `caldera triage`, the real binary against a real master (in this process) and a real
//! Postgres: mark, list (all marks, one crate, one experiment), a rejected mark names its field
//! and changes nothing, unmark.

mod common;

use std::process::Command;
use std::sync::Arc;

use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_db::testing::TestDb;
use caldera_master::dashboard::fixture;
use common::*;

fn caldera(server: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(["triage", "--server", server, "--token", token])
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

async fn count(pool: &caldera_db::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triage_commands_against_a_master() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn caldera_storage::ObjectStore> =
        Arc::new(caldera_storage::LocalStore::open(dir.path(), 64 << 20).unwrap());
    let e0308 = Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec!["E0308".into()],
    });
    fixture::create_with(
        &db.pool,
        &store,
        "e1",
        &[
            ("reg:foo@1.0.0", Outcome::TestPass, e0308.clone()),
            ("reg:bar@1.0.0", Outcome::TestPass, Outcome::TestPass),
        ],
    )
    .await;
    fixture::create_with(
        &db.pool,
        &store,
        "e2",
        &[("reg:foo@1.1.0", Outcome::TestPass, e0308)],
    )
    .await;
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store).await;
    let t = tokens(&db.pool).await;
    let (http, op) = (master.http.clone(), t.operator.clone());
    let run = move |args: Vec<&'static str>| {
        let (http, op) = (http.clone(), op.clone());
        tokio::task::spawn_blocking(move || caldera(&http, &op, &args))
    };

    // a known issue needs a link: the field is named, the exit status says so, nothing is stored
    let (ok, stdout, stderr) = run(vec!["mark", "e1", "foo", "--kind", "known-issue"])
        .await
        .unwrap();
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("field `link`"), "{stderr}");
    assert_eq!(count(&db.pool, "triage_marks").await, 0);
    assert_eq!(count(&db.pool, "triage_audit").await, 0);
    // a crate that did not regress
    let (ok, _, stderr) = run(vec!["mark", "e1", "bar", "--kind", "ignore"])
        .await
        .unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("same-test-pass") && stderr.contains("HTTP 409"),
        "{stderr}"
    );
    // clap refuses an unknown kind before anything is sent
    let (ok, _, stderr) = run(vec!["mark", "e1", "foo", "--kind", "meh"])
        .await
        .unwrap();
    assert!(!ok);
    assert!(stderr.contains("known-issue"), "{stderr}");

    let (ok, stdout, stderr) = run(vec![
        "mark",
        "e1",
        "reg:foo@1.0.0",
        "--kind",
        "known-issue",
        "--link",
        "https://github.com/rust-lang/rust/issues/1",
        "--note",
        "inference change",
    ])
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("marked foo (build-fail:compiler-error(E0308)): known-issue https://github.com/rust-lang/rust/issues/1 \"inference change\" (by op, "),
        "{stdout}"
    );

    // the mark applies in e2 (a new version, the same cause)
    let (ok, stdout, stderr) = run(vec!["list", "--experiment", "e2"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("reg:foo@1.1.0  build-fail:compiler-error(E0308)  known-issue https://"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(vec!["--json", "list", "--crate", "foo"]).await.unwrap();
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["marks"][0]["kind"], "known-issue", "{v}");
    assert_eq!(v["marks"][0]["history"][0]["actor"], "op");
    let (ok, stdout, _) = run(vec!["list"]).await.unwrap();
    assert!(ok);
    assert!(stdout.contains("set by op on e1"), "{stdout}");

    let (ok, stdout, stderr) = run(vec!["unmark", "e2", "foo"]).await.unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "removed the mark of foo in experiment e2");
    let (ok, _, stderr) = run(vec!["unmark", "e2", "foo"]).await.unwrap();
    assert!(!ok);
    assert!(stderr.contains("field `mark`"), "{stderr}");
    let (_, stdout, _) = run(vec!["list", "--experiment", "e1"]).await.unwrap();
    assert!(stdout.contains("not triaged"), "{stdout}");
    assert_eq!(count(&db.pool, "triage_audit").await, 2);
    master.stop().await;
}
