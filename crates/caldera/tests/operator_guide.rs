//! docs/operator-guide.md, run as written: every ```` ```sh ```` block marked `<!-- run: ID -->`
//! runs in `bash -euo pipefail` in one directory (the operator's), with the variables of the
//! guide's "The commands in this guide" set to this test's own site: a private Postgres, a
//! `caldera master` process (started by the guide's own block) serving TLS with the certificates
//! the guide's `caldera cert` commands made, and a real `caldera worker` on the machine's Docker
//! engine (it needs the sandbox image and toolchains: `cargo xtask provision`). Each block must
//! exit 0, and its effect is checked: the worker connected, the new certificate's serial served,
//! a revoked token refused with 401 and a worker using it stopped, the restored database, …
//! Every run block of the guide is run, and the guide may leave only a few unrun (saying why).

#[path = "operator_guide/blocks.rs"]
mod blocks;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blocks::{Block, shell_blocks};
use caldera_db::testing::TestDb;
use caldera_master::sparse::testing::TestIndex;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operator-guide.md");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
/// Blocks the guide may leave unrun (each says why): its variables, and the systemd install.
const MOST_NOT_RUN: usize = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A block running in the background (the master, a worker), in a process group of its own,
/// its stderr in a file; killed with its group when dropped.
struct Background {
    id: String,
    child: Child,
    log: PathBuf,
}

impl Background {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                t0.elapsed() < limit,
                "{} never logged {needle:?}:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args([signal, "--", &group])
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM (a clean stop: the worker drains), then waits for the exit.
    async fn stop(mut self) -> String {
        self.signal("-TERM");
        let t0 = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{} does not stop:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.log()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("-KILL");
            let _ = self.child.wait();
        }
    }
}

/// The operator's directory and shell: the guide's blocks by id, the variables, and which
/// blocks ran.
struct Site {
    dir: PathBuf,
    env: Vec<(String, String)>,
    blocks: Vec<Block>,
    ran: BTreeSet<String>,
}

impl Site {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn var(&self, name: &str) -> &str {
        &self.env.iter().find(|(k, _)| k == name).unwrap().1
    }

    fn block(&mut self, id: &str) -> Block {
        let block = self
            .blocks
            .iter()
            .find(|b| b.id.as_deref() == Some(id))
            .unwrap_or_else(|| panic!("the guide has no block `<!-- run: {id} -->`"))
            .clone();
        self.ran.insert(id.to_owned());
        block
    }

    fn shell(&self, code: &str, cwd: &Path) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", code])
            .current_dir(cwd)
            .stdin(Stdio::null());
        for var in [
            "CALDERA_TOKEN",
            "CALDERA_TOKEN_FILE",
            "DATABASE_URL",
            "CALDERA_INSECURE_PLAINTEXT",
            "CALDERA_LOG_FORMAT",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs block `id` (in `cwd`, by default the site's directory); its stdout, or the failure
    /// with both outputs.
    async fn try_run_in(&mut self, id: &str, cwd: Option<&Path>) -> Result<String, String> {
        let block = self.block(id);
        let mut cmd = self.shell(&block.code, cwd.unwrap_or(&self.dir));
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "the block `{id}` (line {}) failed ({}):\n{}\nstdout: {stdout}\nstderr: {stderr}",
                block.line, out.status, block.code
            ))
        }
    }

    async fn run(&mut self, id: &str) -> String {
        self.try_run_in(id, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs block `id` until it succeeds and `done` accepts its output, for up to `limit`.
    async fn run_until(
        &mut self,
        id: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let t0 = Instant::now();
        loop {
            let got = self.try_run_in(id, None).await;
            match &got {
                Ok(out) if done(out) => return out.clone(),
                _ if t0.elapsed() > limit => panic!("after {limit:?}: {got:?}"),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Starts block `id` in the background, its stderr in `logs/NAME.log`.
    fn spawn(&mut self, id: &str, name: &str) -> Background {
        let block = self.block(id);
        std::fs::create_dir_all(self.path("logs")).unwrap();
        let log = self.path(&format!("logs/{name}.log"));
        let child = self
            .shell(&block.code, &self.dir)
            .env("CALDERA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Background {
            id: id.to_owned(),
            child,
            log,
        }
    }

    /// The HTTP status of `GET path` with `token`, by curl trusting the site's CA file.
    fn status_with(&self, token: &str, path: &str) -> String {
        let header = self.path("probe.header");
        std::fs::write(&header, format!("Authorization: Bearer {token}\n")).unwrap();
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(self.var("CALDERA_CA_FILE"))
            .arg("-H")
            .arg(format!("@{}", header.display()))
            .arg(format!("{}{path}", self.var("CALDERA_SERVER")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn mode(&self, rel: &str) -> u32 {
        std::fs::metadata(self.path(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }
}

/// The two serials of the guide's `served-certificate` block (the file's, the served one's).
fn serials(out: &str) -> (String, String) {
    let s: Vec<&str> = out.lines().filter(|l| l.starts_with("serial=")).collect();
    assert_eq!(s.len(), 2, "{out}");
    (s[0].to_owned(), s[1].to_owned())
}

async fn active_token_names(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM api_tokens WHERE revoked_at IS NULL ORDER BY name")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn drop_restored() {
    let admin = TestDb::admin_url().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::query("DROP DATABASE IF EXISTS caldera_restored WITH (FORCE)")
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_guide_runs_as_written() {
    let guide = std::fs::read_to_string(GUIDE).unwrap();
    let blocks = shell_blocks(&guide).unwrap_or_else(|e| panic!("docs/operator-guide.md {e}"));
    let not_run: Vec<&Block> = blocks.iter().filter(|b| b.id.is_none()).collect();
    assert!(
        not_run.len() <= MOST_NOT_RUN,
        "more blocks are not run than the few that cannot be: {not_run:#?}"
    );

    let db = TestDb::empty().await;
    drop_restored().await;
    let dir = tempfile::tempdir().unwrap();
    let index = TestIndex::start(&dir.path().join("index")).await;
    index.publish("fnv", &[("1.0.7", false)]);
    index.publish("itoa", &[("1.0.11", false)]);
    let site_dir = dir.path().join("site");
    std::fs::create_dir_all(&site_dir).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_caldera")).parent().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let env = [
        (
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        ),
        ("CALDERA_DATABASE_URL", db.url.clone()),
        ("MASTER_HOST", "localhost".into()),
        ("CALDERA_LISTEN", format!("127.0.0.1:{http}")),
        ("CALDERA_GRPC_LISTEN", format!("127.0.0.1:{grpc}")),
        ("CALDERA_SERVER", format!("https://localhost:{http}")),
        ("CALDERA_MASTER", format!("https://localhost:{grpc}")),
        (
            "CALDERA_CA_FILE",
            format!("{}/etc/ca.pem", site_dir.display()),
        ),
        (
            "CALDERA_STORAGE",
            format!("local:{}/objects", site_dir.display()),
        ),
        // the master's, and the worker's (the guide leaves them to their defaults)
        ("CALDERA_REGISTRY_URL", index.url()),
        ("CALDERA_TLS_RELOAD_SECS", "1".into()),
        ("CALDERA_WORK_DIR", format!("{}/work", site_dir.display())),
    ];
    let mut site = Site {
        dir: site_dir,
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        blocks: blocks.clone(),
        ran: BTreeSet::new(),
    };

    let (master, worker) = set_up(&mut site, &db).await;
    let worker = rotate_certificates(&mut site, worker).await;
    let worker = rotate_tokens(&mut site, worker).await;
    check_metrics(&mut site).await;
    check_backups(&mut site, &db).await;

    let log = worker.stop().await;
    assert!(log.contains("worker drained and stopped"), "{log}");
    master.stop().await;
    // the master again, as the guide's "Logs" starts it: one JSON object a line
    let master = site.spawn("master-json-log", "master-json");
    master
        .wait_log("worker service (gRPC) listening", Duration::from_secs(60))
        .await;
    let log = master.stop().await;
    let first = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "not JSON: {first}"
    );
    drop_restored().await;
    index.stop().await;

    let in_guide: BTreeSet<String> = blocks.iter().filter_map(|b| b.id.clone()).collect();
    assert_eq!(site.ran, in_guide, "every run block of the guide is run");
}

/// The database, the certificates, the master, and a machine added to the fleet.
async fn set_up(site: &mut Site, db: &TestDb) -> (Background, Background) {
    site.run("certificates").await;
    assert_eq!(site.mode("ca/ca-key.pem"), 0o600);
    assert_eq!(site.mode("tls/localhost-key.pem"), 0o600);
    assert_eq!(site.read("etc/ca.pem"), site.read("ca/ca.pem"));

    let out = site.run("database").await;
    assert!(out.starts_with("applied "), "{out}");
    assert!(
        !out.contains("cldr_"),
        "the token goes to the file only: {out}"
    );
    assert_eq!(site.mode("admin.token"), 0o600);
    assert_eq!(site.mode("admin.header"), 0o600);
    let admin = site.read("admin.token").trim().to_owned();
    assert!(admin.starts_with("cldr_"), "{admin}");
    assert_eq!(
        site.read("admin.header"),
        format!("Authorization: Bearer {admin}\n")
    );
    assert_eq!(active_token_names(db).await, ["admin"]);

    let master = site.spawn("master", "master");
    let health = site
        .run_until("healthz", Duration::from_secs(60), |o| {
            o.contains("\"status\":\"ok\"")
        })
        .await;
    assert!(health.contains("\"database\":\"ok\""), "{health}");
    assert!(
        master.log().contains("scheme=TLS") || master.log().contains("TLS"),
        "{}",
        master.log()
    );

    let out = site.run("prerequisites").await;
    assert!(out.contains("caldera-builder:latest sha256:"), "{out}");
    site.run("worker-token").await;
    assert_eq!(site.mode("build-02.token"), 0o600);
    assert_eq!(active_token_names(db).await, ["admin", "build-02"]);
    let worker = site.spawn("worker", "worker");
    worker
        .wait_log("connected to the master", Duration::from_secs(120))
        .await;
    let out = site.run("worker-listed").await;
    assert!(out.contains("\"connected\":true,\"slots\":1"), "{out}");
    (master, worker)
}

/// Starts the guide's worker again (as a restart of its service would) and waits until it is
/// connected.
async fn restart_worker(site: &mut Site, worker: Background) -> Background {
    let log = worker.stop().await;
    assert!(log.contains("worker drained and stopped"), "{log}");
    let worker = site.spawn("worker", "worker-again");
    worker
        .wait_log("connected to the master", Duration::from_secs(120))
        .await;
    worker
}

/// Waits until the master serves a certificate other than `before` and the file's; its serial.
async fn wait_new_serial(site: &mut Site, before: &str) -> String {
    let out = site
        .run_until("served-certificate", Duration::from_secs(30), |o| {
            let (file, served) = serials(o);
            file == served && served != before
        })
        .await;
    // what the test's own TLS client is served is the file's certificate
    let file = CertificateDer::from_pem_file(site.path("tls/localhost.pem")).unwrap();
    let port: u16 = site
        .var("CALDERA_LISTEN")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(
        served_cert(port, &site.path("etc/ca.pem")).await,
        file.to_vec()
    );
    serials(&out).1
}

/// The certificate (DER) the master's HTTP port presents to a client trusting the CAs of `ca`.
async fn served_cert(port: u16, ca: &Path) -> Vec<u8> {
    let config = caldera_worker::tls::client_config(Some(ca), &[b"http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// `curl` of the healthz endpoint trusting only `ca`: whether the certificate verified.
fn verifies_with(site: &Site, ca: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--cacert"])
        .arg(site.path(ca))
        .arg(format!("{}/healthz", site.var("CALDERA_SERVER")))
        .status()
        .unwrap()
        .success()
}

/// The master's certificate renewed, then the CA rotated in the guide's order, with the worker
/// connected throughout.
async fn rotate_certificates(site: &mut Site, worker: Background) -> Background {
    let (file, first) = serials(&site.run("served-certificate").await);
    assert_eq!(file, first);
    site.run("renew-certificate").await;
    assert!(!site.path("tls/next").exists());
    let renewed = wait_new_serial(site, &first).await;
    let out = site.run("worker-listed").await;
    assert!(out.contains("\"connected\":true"), "{out}");

    site.run("new-ca").await;
    assert_eq!(
        site.read("etc/ca.pem").matches("BEGIN CERTIFICATE").count(),
        2
    );
    let worker = restart_worker(site, worker).await;
    site.run("switch-ca").await;
    let switched = wait_new_serial(site, &renewed).await;
    assert!(
        !verifies_with(site, "ca/ca.pem"),
        "the old CA alone no longer verifies"
    );
    assert!(verifies_with(site, "ca-next/ca.pem"));
    let out = site.run("worker-listed").await;
    assert!(out.contains("\"connected\":true"), "{out}");

    site.run("retire-ca").await;
    assert_eq!(site.read("etc/ca.pem"), site.read("ca/ca.pem"));
    assert!(!site.path("ca-retired/ca-key.pem").exists());
    assert!(!site.path("ca-both.pem").exists());
    assert!(verifies_with(site, "etc/ca.pem"));
    let worker = restart_worker(site, worker).await;
    // and the CA in ca/ is the one new certificates come from
    site.run("renew-certificate").await;
    wait_new_serial(site, &switched).await;
    worker
}

/// A worker's token and the admin's rotated; the old ones refused.
async fn rotate_tokens(site: &mut Site, worker: Background) -> Background {
    let old_worker = site.read("build-02.token").trim().to_owned();
    assert_eq!(site.status_with(&old_worker, "/api/v1/experiments"), "403");
    site.run("rotate-worker-token").await;
    assert_eq!(site.mode("build-02.token"), 0o600);
    assert_ne!(site.read("build-02.token").trim(), old_worker);
    let worker = restart_worker(site, worker).await;
    site.run("revoke-worker-token").await;
    assert_eq!(site.status_with(&old_worker, "/api/v1/experiments"), "401");
    refused_worker(site, &old_worker).await;
    let out = site.run("worker-listed").await;
    assert!(
        out.contains("\"connected\":true"),
        "the new token works: {out}"
    );

    let old_admin = site.read("admin.token").trim().to_owned();
    let out = site.run("rotate-admin-token").await;
    assert!(out.contains("\"name\":\"admin\",\"active\":false"), "{out}");
    let new_admin = site.read("admin.token").trim().to_owned();
    assert_ne!(new_admin, old_admin);
    assert_eq!(site.status_with(&old_admin, "/api/v1/tokens"), "401");
    assert_eq!(site.status_with(&new_admin, "/api/v1/tokens"), "200");
    assert!(!site.path("admin.token.next").exists());

    let out = site.run("token-commands").await;
    assert!(out.contains("created operator token \"alice\""), "{out}");
    assert!(out.contains("revoked "), "{out}");
    // `caldera token list`: its columns line up
    let header = out.lines().find(|l| l.starts_with("id ")).unwrap();
    let column = header.find("name").unwrap();
    let row = out.lines().find(|l| l.contains(" alice ")).unwrap();
    assert_eq!(row.find("alice"), Some(column), "\n{header}\n{row}");
    worker
}

/// A worker started with a revoked token stops at once, saying so.
async fn refused_worker(site: &Site, token: &str) {
    let file = site.path("old.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = site.shell(
        "caldera worker --master \"$CALDERA_MASTER\" --token-file old.token --name old \
         --slots 1 --work-dir work-old",
        &site.dir,
    );
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown or revoked worker token"),
        "{stderr}"
    );
}

/// The metrics the guide shows and names exist; the heartbeat check finds no gap; the
/// requirements example creates its experiment.
async fn check_metrics(site: &mut Site) {
    let out = site.run("metrics").await;
    assert!(out.contains("caldera_workers_connected 1"), "{out}");
    let out = site.run("heartbeat-gaps").await;
    assert_eq!(out, "", "no connected worker misses heartbeats");

    let exposition = {
        let mut cmd = site.shell(
            "curl -sf --cacert \"$CALDERA_CA_FILE\" \"$CALDERA_SERVER/metrics\"",
            &site.dir,
        );
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    let served: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let guide = std::fs::read_to_string(GUIDE).unwrap();
    let section = guide
        .split("## Metrics and alerts")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let named = metric_names(section);
    assert!(named.len() >= 14, "{named:?}");
    let unknown: Vec<&String> = named
        .iter()
        .filter(|n| !served.contains(base_name(n)))
        .collect();
    assert!(
        unknown.is_empty(),
        "the guide names metrics the master does not serve: {unknown:?}\n{exposition}"
    );
    let undocumented: Vec<&&str> = served
        .iter()
        .filter(|n| !named.iter().any(|m| base_name(m) == **n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "the master serves metrics the guide does not name: {undocumented:?}"
    );

    site.run("requirements").await;
}

/// Every `caldera_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("caldera_") && w.len() > "caldera_".len())
        .map(str::to_owned)
        .collect()
}

/// A sample's metric family: `_total`, `_bucket`, `_sum`, `_count` taken off.
fn base_name(name: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// The dump, and its restore into a second database that then has the same tokens.
async fn check_backups(site: &mut Site, db: &TestDb) {
    let repo = PathBuf::from(REPO);
    site.try_run_in("sandbox-image", Some(&repo))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    site.run("backup").await;
    assert!(site.path("caldera.dump").metadata().unwrap().len() > 0);
    let out = site.run("restore").await;
    assert!(out.contains("up to date"), "{out}");
    let restored = format!("{}/caldera_restored", db.url.rsplit_once('/').unwrap().0);
    let pool = caldera_db::connect(&restored, 2).await.unwrap();
    let tokens: Vec<String> =
        sqlx::query_scalar("SELECT name FROM api_tokens WHERE revoked_at IS NULL ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(tokens, active_token_names(db).await);
    assert!(tokens.contains(&"build-02-2".to_owned()), "{tokens:?}");
}
