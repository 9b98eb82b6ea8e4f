//! TLS on both of the master's ports: certificates made by `caldera cert` (the real binary), a
//! master serving them, workers running an experiment over TLS, the CLI over HTTPS, a worker and
//! the CLI refusing a master whose certificate does not verify, certificate reloads (SIGHUP on a
//! `caldera master` process; changed files in-process), and the refusals of plain TCP beyond
//! loopback. Real Postgres, real sockets, real processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_db::testing::TestDb;
use caldera_master::{Master, MasterConfig, ServerTls};
use caldera_worker::WorkerError;
use caldera_worker::fake::FakeExecutor;
use common::*;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn caldera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(args)
        .env_remove("CALDERA_LOG")
        .env_remove("CALDERA_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("CALDERA_INSECURE_PLAINTEXT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The error output of a command that must fail.
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A CA of its own and a certificate for the master on this machine, made by `caldera cert`.
struct Fleet {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Fleet {
    fn new(dir: &Path) -> Fleet {
        let d = dir.to_str().unwrap();
        ok(&caldera(&["cert", "ca", "--out", d]));
        Fleet::issue_into(dir, dir)
    }

    /// Another certificate for the same names from the CA in `ca_dir`, written to `out`.
    fn issue_into(ca_dir: &Path, out: &Path) -> Fleet {
        ok(&caldera(&[
            "cert",
            "issue",
            "--ca",
            ca_dir.to_str().unwrap(),
            "--name",
            "localhost",
            "--san",
            "127.0.0.1,::1",
            "--out",
            out.to_str().unwrap(),
        ]));
        Fleet {
            dir: out.to_owned(),
            ca: ca_dir.join("ca.pem"),
            cert: out.join("localhost.pem"),
            key: out.join("localhost-key.pem"),
        }
    }

    fn der(&self) -> Vec<u8> {
        CertificateDer::from_pem_file(&self.cert).unwrap().to_vec()
    }

    /// Copies this pair over `cert` and `key` (each replaced by a rename, as tools that renew
    /// certificates do).
    fn install(&self, cert: &Path, key: &Path) {
        for (from, to) in [(&self.cert, cert), (&self.key, key)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    }
}

/// The certificate (DER) the server at `addr` presents to a client trusting `ca`, or why the
/// handshake failed.
async fn served_cert(
    addr: std::net::SocketAddr,
    ca: &Path,
    alpn: &[u8],
) -> Result<Vec<u8>, String> {
    let config = caldera_worker::tls::client_config(Some(ca), &[alpn])?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = conn.get_ref();
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

/// Waits until both ports serve `want`.
async fn wait_served(
    http: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    ca: &Path,
    want: &[u8],
) {
    let t0 = Instant::now();
    loop {
        let got = (
            served_cert(http, ca, b"http/1.1").await,
            served_cert(grpc, ca, b"h2").await,
        );
        if matches!(&got, (Ok(a), Ok(b)) if a == want && b == want) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the new certificate is not served: {:?}",
            (got.0.map(|c| c.len()), got.1.map(|c| c.len()))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tls_master(pool: caldera_db::PgPool, tls: Arc<ServerTls>, store_dir: &Path) -> Master {
    let store = Arc::new(caldera_storage::LocalStore::open(store_dir, 64 << 20).unwrap());
    Master::start(MasterConfig {
        scheduler: fast_config(),
        tls: Some(tls),
        ..MasterConfig::new(pool, store)
    })
    .await
    .unwrap()
}

/// `caldera experiment …` against `server`, trusting `ca`.
fn experiment(server: &str, ca: &Path, token: &str, args: &[&str]) -> Output {
    let mut all = vec!["experiment", "--server", server, "--token", token];
    all.extend(["--ca-file", ca.to_str().unwrap()]);
    all.extend(args);
    caldera(&all)
}

async fn experiment_count(pool: &caldera_db::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_the_cli_run_an_experiment_over_tls() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&dir.path().join("tls"));
    let tls = Arc::new(ServerTls::load(&fleet.cert, &fleet.key).unwrap());
    let master = tls_master(db.pool.clone(), tls, &dir.path().join("store")).await;
    let (http, grpc) = (master.http_url(), master.grpc_url());
    assert!(
        http.starts_with("https://") && grpc.starts_with("https://"),
        "{http} {grpc}"
    );

    let exec = FakeExecutor::new();
    let mut config = worker_config(&grpc, &t.worker, "tls-worker", 2, &dir.path().join("spool"));
    config.ca_file = Some(fleet.ca.clone());
    let worker = InProcessWorker::spawn(config, exec.clone());

    let crates: Vec<String> = crate_names(12);
    let list = crates.join(",");
    let (ca, op) = (fleet.ca.clone(), t.operator.clone());
    let server = http.clone();
    let create = tokio::task::spawn_blocking(move || {
        let args = ["create", "tls-run", "--start", "stable", "--end", "nightly"];
        let out = experiment(
            &server,
            &ca,
            &op,
            &[&args[..], &["--crates", &list]].concat(),
        );
        ok(&out);
        ok(&experiment(&server, &ca, &op, &["start", "tls-run"]))
    });
    create.await.unwrap();
    wait_status(&db.pool, "tls-run", "completed", Duration::from_secs(60)).await;
    assert_eq!(
        job_states(&db.pool, "tls-run").await,
        vec![("done".to_owned(), 12)]
    );
    assert_eq!(
        exec.stats().started,
        12,
        "every job ran once, over the TLS stream"
    );
    let name: String = sqlx::query_scalar("SELECT name FROM workers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(name, "tls-worker");

    // the CLI reads over HTTPS too
    let (server, ca, op) = (http.clone(), fleet.ca.clone(), t.operator.clone());
    let shown = tokio::task::spawn_blocking(move || {
        ok(&experiment(
            &server,
            &ca,
            &op,
            &["show", "tls-run", "--json"],
        ))
    })
    .await
    .unwrap();
    assert!(shown.contains("\"completed\""), "{shown}");
    // links the master builds from the request point back over https://
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(
            caldera_worker::tls::client_config(Some(&fleet.ca), &[b"http/1.1"]).unwrap(),
        )
        .build()
        .unwrap();
    let comment = client
        .get(format!("{http}/api/v1/experiments/tls-run/pr-comment"))
        .bearer_auth(&t.operator)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        comment.contains(&format!("{http}/experiments/tls-run")) && !comment.contains("http://"),
        "{comment}"
    );

    worker.stop().await;
    master.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_the_cli_refuse_a_master_whose_certificate_does_not_verify() {
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&dir.path().join("tls"));
    let other = Fleet::new(&dir.path().join("other"));
    let tls = Arc::new(ServerTls::load(&fleet.cert, &fleet.key).unwrap());
    let master = tls_master(db.pool.clone(), tls, &dir.path().join("store")).await;
    let http = master.http_url();
    start_over_tls(&http, &fleet.ca, &t.operator, "waiting", &crate_names(3)).await;

    // a worker trusting another CA: it stops with a clear error, before sending its token
    let exec = FakeExecutor::new();
    let mut config = worker_config(
        &master.grpc_url(),
        &t.worker,
        "w",
        1,
        &dir.path().join("spool"),
    );
    config.ca_file = Some(other.ca.clone());
    let run = caldera_worker::run(config, Arc::new(exec.clone()), std::future::pending());
    let result = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the worker gives up at once: retrying cannot help");
    let err = result.expect_err("the worker refuses the master");
    assert!(matches!(err, WorkerError::Certificate { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("does not verify") && message.contains("UnknownIssuer"),
        "{message}"
    );
    assert_eq!(exec.stats().started, 0, "no job ran");
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "the master never saw the worker");
    assert_eq!(
        job_states(&db.pool, "waiting").await,
        vec![("queued".to_owned(), 3)]
    );

    // the CLI with the other CA, and with the system's roots: refused, nothing created
    let (ca, op) = (other.ca.clone(), t.operator.clone());
    let server = http.clone();
    let (wrong_ca, system_roots) = tokio::task::spawn_blocking(move || {
        let args = [
            "create", "nope", "--start", "stable", "--end", "nightly", "--crates", "a@1.0.0",
        ];
        let wrong = experiment(&server, &ca, &op, &args);
        let mut plain = vec!["experiment", "--server", &server, "--token", &op];
        plain.extend(args);
        (wrong, caldera(&plain))
    })
    .await
    .unwrap();
    let stderr = fails(&wrong_ca);
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    let stderr = fails(&system_roots);
    assert!(
        stderr.contains("invalid peer certificate") || stderr.contains("no trusted root"),
        "{stderr}"
    );
    assert_eq!(experiment_count(&db.pool).await, 1);
    master.stop().await.unwrap();
}

/// Creates and starts an experiment through the CLI over HTTPS.
async fn start_over_tls(http: &str, ca: &Path, token: &str, name: &str, crates: &[String]) {
    let (http, ca, token, name) = (
        http.to_owned(),
        ca.to_owned(),
        token.to_owned(),
        name.to_owned(),
    );
    let list = crates.join(",");
    tokio::task::spawn_blocking(move || {
        let args = [
            "create", &name, "--start", "stable", "--end", "nightly", "--crates", &list,
        ];
        ok(&experiment(&http, &ca, &token, &args));
        ok(&experiment(&http, &ca, &token, &["start", &name]));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_a_master_process_serve_the_new_certificate() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let first = Fleet::new(&dir.path().join("tls"));
    let second = Fleet::issue_into(&first.dir, &dir.path().join("renewed"));
    assert_ne!(first.der(), second.der());
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    first.install(&cert, &key);

    let (http, grpc) = (free_addr(), free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(["master", "--listen", &http.to_string()])
        .args(["--grpc-listen", &grpc.to_string(), "--registry-url", "none"])
        .arg(format!(
            "--storage=local:{}",
            dir.path().join("store").display()
        ))
        .args(["--tls-cert", cert.to_str().unwrap()])
        .args(["--tls-key", key.to_str().unwrap()])
        // no polling within the test: only the signal reloads
        .args(["--tls-reload-secs", "3600"])
        .env("CALDERA_DATABASE_URL", &db.url)
        .env("CALDERA_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_served(http, grpc, &first.ca, &first.der()).await;
    // the API answers over HTTPS with the fleet's CA
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(
            caldera_worker::tls::client_config(Some(&first.ca), &[b"http/1.1"]).unwrap(),
        )
        .build()
        .unwrap();
    let health = client
        .get(format!("https://{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // plain HTTP on the TLS port gets no answer
    assert!(
        reqwest::get(format!("http://{http}/healthz"))
            .await
            .is_err()
    );

    second.install(&cert, &key);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_cert(http, &first.ca, b"http/1.1").await.unwrap(),
        first.der(),
        "nothing reloads before the signal"
    );
    let killed = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_served(http, grpc, &first.ca, &second.der()).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the master"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_served_and_a_broken_pair_keeps_the_previous_one() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let first = Fleet::new(&dir.path().join("tls"));
    let second = Fleet::issue_into(&first.dir, &dir.path().join("renewed"));
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    first.install(&cert, &key);
    let tls = Arc::new(
        ServerTls::load(&cert, &key)
            .unwrap()
            .with_poll(Duration::from_millis(100)),
    );
    let master = tls_master(db.pool.clone(), tls.clone(), &dir.path().join("store")).await;
    let (http, grpc) = (master.http_addr(), master.grpc_addr());
    wait_served(http, grpc, &first.ca, &first.der()).await;

    second.install(&cert, &key);
    wait_served(http, grpc, &first.ca, &second.der()).await;

    // the first certificate with the second key: refused, the second pair stays in service
    std::fs::copy(&first.cert, &cert).unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(
        err.contains("does not fit") && err.contains("cert.pem") && err.contains("key.pem"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_cert(http, &first.ca, b"http/1.1").await.unwrap(),
        second.der()
    );
    assert_eq!(tls.certificate().to_vec(), second.der());
    master.stop().await.unwrap();
}

#[test]
fn unusable_certificate_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&dir.path().join("tls"));
    let other = Fleet::new(&dir.path().join("other"));
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(&Path, &Path, &[&str]); 4] = [
        (&missing, &fleet.key, &["reading", "missing.pem"]),
        (&text, &fleet.key, &["notes.txt", "no CERTIFICATE"]),
        (
            &fleet.cert,
            &fleet.cert,
            &["localhost.pem", "no usable private key"],
        ),
        (
            &fleet.cert,
            &other.key,
            &["does not fit", "localhost-key.pem"],
        ),
    ];
    for (cert, key, want) in cases {
        let err = ServerTls::load(cert, key).unwrap_err().to_string();
        for w in want {
            assert!(err.contains(w), "{cert:?} {key:?}: {err}");
        }
    }
}

#[test]
fn plain_tcp_beyond_loopback_and_bad_tls_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::new(&dir.path().join("tls"));
    let other = Fleet::new(&dir.path().join("other"));
    // refused before the database is even looked for
    let stderr = fails(&caldera(&[
        "master",
        "--listen",
        "0.0.0.0:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ]));
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address")
            && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
    let stderr = fails(&caldera(&[
        "master",
        "--tls-cert",
        fleet.cert.to_str().unwrap(),
    ]));
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (cert, key) = (fleet.cert.to_str().unwrap(), other.key.to_str().unwrap());
    let stderr = fails(&caldera(&["master", "--tls-cert", cert, "--tls-key", key]));
    assert!(
        stderr.contains("--tls-cert/--tls-key") && stderr.contains("does not fit"),
        "{stderr}"
    );

    let stderr = fails(&caldera(&[
        "worker",
        "--master",
        "http://10.1.2.3:9090",
        "--token",
        "t",
    ]));
    assert!(
        stderr.contains("clear text") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
    let stderr = fails(&caldera(&[
        "worker",
        "--master",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "--ca-file",
        "/nonexistent/ca.pem",
    ]));
    assert!(
        stderr.contains("ca_file") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
    let stderr = fails(&caldera(&[
        "experiment",
        "list",
        "--server",
        "http://10.1.2.3:8080",
    ]));
    assert!(stderr.contains("clear text"), "{stderr}");
    let stderr = fails(&caldera(&[
        "experiment",
        "list",
        "--server",
        "ftp://master",
    ]));
    assert!(stderr.contains("neither https:// nor http://"), "{stderr}");

    // a ca.pem that is not the CA of ca-key.pem: nothing is written
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(&fleet.ca, mixed.join("ca.pem")).unwrap();
    std::fs::copy(other.dir.join("ca-key.pem"), mixed.join("ca-key.pem")).unwrap();
    let out = dir.path().join("out");
    let stderr = fails(&caldera(&[
        "cert",
        "issue",
        "--ca",
        mixed.to_str().unwrap(),
        "--name",
        "m.example",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("does not verify against ca.pem"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
    let stderr = fails(&caldera(&[
        "cert",
        "issue",
        "--ca",
        fleet.dir.to_str().unwrap(),
        "--name",
        "bad name!",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(stderr.contains("bad name!"), "{stderr}");
    // and an existing file is never replaced
    let stderr = fails(&caldera(&[
        "cert",
        "ca",
        "--out",
        fleet.dir.to_str().unwrap(),
    ]));
    assert!(stderr.contains("ca.pem exists"), "{stderr}");
}
