//! The README's "Running the master by hand" example, as written: its `caldera experiment`
//! commands (read from README.md, so the README cannot drift from what works) against a real
//! `caldera master` process started with no registry listing, only `--registry-url` pointing at a
//! sparse index of the test's own (real HTTP; the default is crates.io's, which the test does not
//! depend on).

use std::process::{Command, Stdio};
use std::time::Duration;

use caldera_db::testing::TestDb;
use caldera_db::tokens::{self, Role};
use caldera_master::sparse::testing::TestIndex;

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The README's client commands after `export CALDERA_SERVER=…`, each as its arguments (after
/// the binary), continuation lines joined.
fn readme_commands() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("export CALDERA_SERVER=")
        .nth(1)
        .expect("the README exports CALDERA_SERVER");
    let block = section.split("```").next().unwrap();
    let joined = block.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("./target/release/caldera "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_as_written() {
    let commands = readme_commands();
    let verbs: Vec<String> = commands.iter().map(|c| c[..2].join(" ")).collect();
    assert_eq!(
        verbs,
        ["experiment create", "experiment list", "experiment start"],
        "the README's example changed; update this test"
    );
    assert!(
        commands[0].contains(&"serde,rand@0.8.5,anyhow".to_owned()),
        "{commands:?}"
    );

    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let index = TestIndex::start(&dir.path().join("index")).await;
    index.publish("serde", &[("1.0.218", false), ("1.0.219", false)]);
    index.publish("rand", &[("0.8.5", false), ("0.9.1", false)]);
    index.publish(
        "anyhow",
        &[("1.0.97", false), ("1.0.98", false), ("2.0.0-rc.1", false)],
    );
    let (_, token) = tokens::create(&db.pool, "me", Role::Admin).await.unwrap();
    let (http, grpc) = (free_addr(), free_addr());
    let mut master = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(["master", "--listen", &http.to_string()])
        .args(["--grpc-listen", &grpc.to_string()])
        .arg(format!(
            "--storage=local:{}",
            dir.path().join("objects").display()
        ))
        .args(["--registry-url", &index.url()])
        .env("CALDERA_DATABASE_URL", &db.url)
        .env("CALDERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = format!("http://{http}");
    let mut up = false;
    for _ in 0..200 {
        if reqwest::get(format!("{server}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut outputs = Vec::new();
    if up {
        for args in &commands {
            let (server, token, argv) = (server.clone(), token.clone(), args.clone());
            let out = tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_caldera"))
                    .args(&argv)
                    .env("CALDERA_SERVER", server)
                    .env("CALDERA_TOKEN", token)
                    .env_remove("CALDERA_LOG")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            outputs.push((
                args.join(" "),
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
    }
    let _ = master.kill();
    let _ = master.wait();
    assert!(up, "the master did not come up");
    for (command, ok, stderr) in &outputs {
        assert!(ok, "caldera {command}: {stderr}");
    }

    // The bare names were pinned to their newest releases, and the start made one job each.
    let jobs: Vec<String> = sqlx::query_scalar(
        "SELECT c.name || '@' || c.version FROM jobs j JOIN crates c ON c.id = j.crate_id \
         JOIN experiments e ON e.id = j.experiment_id WHERE e.name = 'nightly-check' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(jobs, ["anyhow@1.0.98", "rand@0.8.5", "serde@1.0.219"]);
    let status: String =
        sqlx::query_scalar("SELECT status FROM experiments WHERE name = 'nightly-check'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "running");
    index.stop().await;
}
