//! Workers sharing a host, and their secrets, with real processes: `caldera worker` started as
//! the binary, a real master (in-process, real gRPC and HTTP), real Postgres, the real Docker
//! engine and sandbox image.
//!
//! * A second worker on a busy work dir fails at once, with one message naming the work dir and
//!   the holder's pid, and touches no container; a worker on another work dir runs beside the
//!   first and sweeps nothing of its; a worker restarted after a crash sweeps its own leftovers.
//! * A sandbox container removed from outside during a step makes the side an `error` (the job
//!   is queued again), never `oom`.
//! * The README's worker command shows no secret in the process list (`/proc/PID/cmdline`).
//!
//! The Docker tests need the engine, the sandbox image and the `stable` and `nightly` toolchains
//! (`cargo xtask provision`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use caldera_db::testing::TestDb;
use caldera_storage::StorageConfig;
use caldera_worker::workdir::WorkDirLock;
use common::*;

const BUSY: &str = "is in use by another caldera process";

fn fixture(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crates")
        .join(name)
        .canonicalize()
        .unwrap();
    format!("path:{}", dir.display())
}

fn write_secret(path: &Path, secret: &str, mode: u32) {
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `caldera worker` processes of one test; killed (and their containers removed) when dropped,
/// whatever happened.
struct Workers {
    master: String,
    objects: PathBuf,
    token_file: PathBuf,
    logs: PathBuf,
    children: Vec<(String, Child)>,
    work_dirs: Vec<PathBuf>,
}

impl Workers {
    /// `caldera worker --name NAME --work-dir WORK` with the token file; its stderr goes to
    /// `<logs>/<name>.log`.
    fn spawn(&mut self, name: &str, work_dir: &Path) -> u32 {
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_caldera"))
            .args(["worker", "--master", &self.master, "--name", name])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--work-dir")
            .arg(work_dir)
            .arg(format!("--storage=local:{}", self.objects.display()))
            .args(["--slots", "1", "--memory", "1GiB", "--cpus", "1"])
            .args(["--timeout-secs", "900", "--no-output-timeout-secs", "900"])
            .args(["--drain-timeout-secs", "2"])
            .env("CALDERA_LOG", "info")
            .env_remove("CALDERA_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.work_dirs.push(work_dir.to_owned());
        self.children.push((name.to_owned(), child));
        pid
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Waits until worker `name`'s log contains `needle`.
    async fn wait_log(&self, name: &str, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.log(name).contains(needle) {
            assert!(
                t0.elapsed() < limit,
                "worker {name} never logged {needle:?}:\n{}",
                self.log(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn child(&mut self, name: &str) -> &mut Child {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        child
    }

    /// Waits for worker `name` to exit; its status.
    async fn wait_exit(&mut self, name: &str, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child(name).try_wait().unwrap() {
                return status;
            }
            assert!(
                t0.elapsed() < limit,
                "worker {name} still runs after {limit:?}:\n{}",
                self.log(name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, name: &str, signal: &str) {
        let pid = self.child(name).id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.work_dirs {
            if let Ok(id) = std::fs::read_to_string(dir.join("instance-id")) {
                for c in containers_of(id.trim(), true) {
                    let _ = Command::new("docker").args(["rm", "-f", &c]).output();
                }
            }
        }
    }
}

fn instance_of(work_dir: &Path) -> String {
    std::fs::read_to_string(work_dir.join("instance-id"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The ids of the containers labelled with `instance` (`all`: stopped ones too).
fn containers_of(instance: &str, all: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-q", "--no-trunc"]);
    if all {
        cmd.arg("-a");
    }
    let out = cmd
        .args([
            "--filter",
            &format!("label=org.caldera.sandbox.owner={instance}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// The container of `instance` whose processes include `needle`, once there is one.
async fn container_running(instance: &str, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no container of {instance} ever ran {needle}"
        );
        for id in containers_of(instance, false) {
            let top = Command::new("docker").args(["top", &id]).output().unwrap();
            if String::from_utf8_lossy(&top.stdout).contains(needle) {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_all_running(ids: &[String], when: &str) {
    for id in ids {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", id])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "true",
            "{when}: container {id} no longer runs ({out:?})"
        );
    }
}

/// Removes `id` from outside (`docker rm -f`), then waits until no container of `instance` runs
/// `needle` any more (the side it served is over).
async fn remove_from_outside(id: &str, instance: &str, needle: &str) {
    let out = Command::new("docker")
        .args(["rm", "-f", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker rm -f {id}: {out:?}");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let mut still = false;
        for c in containers_of(instance, false) {
            let top = Command::new("docker").args(["top", &c]).output().unwrap();
            still |= c == id && String::from_utf8_lossy(&top.stdout).contains(needle);
        }
        if !still {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Worker A builds (a test that spins silently: it runs until something stops it); worker B on
/// A's work dir fails at once without touching a container; worker C on another work dir runs
/// beside A and sweeps nothing of A's. A's containers removed from outside make its job an
/// `error`, queued again, never `oom`. A killed outright leaves its containers; A restarted on
/// the same work dir removes exactly those, and none of C's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_a_host() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let store = caldera_storage::open(&StorageConfig::local(&objects)).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store).await;
    let t = tokens(&db.pool).await;
    let token_file = dir.path().join("worker.token");
    write_secret(&token_file, &t.worker, 0o600);
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let mut w = Workers {
        master: master.grpc.clone(),
        objects,
        token_file,
        logs,
        children: Vec::new(),
        work_dirs: Vec::new(),
    };
    let (work_a, work_c) = (dir.path().join("work-a"), dir.path().join("work-c"));

    let pid_a = w.spawn("a", &work_a);
    w.wait_log("a", "connected to the master", Duration::from_secs(120))
        .await;
    let instance_a = instance_of(&work_a);
    start_experiment(
        &master.http,
        &t.operator,
        "host",
        &[fixture("canary-silent-loop")],
    )
    .await;
    let needle = "fixture_canary_silent_loop-";
    let looping = container_running(&instance_a, needle).await;
    let of_a = containers_of(&instance_a, false);
    assert!(of_a.contains(&looping), "{of_a:?}");

    // B on A's work dir: fails at once, says so once, and A's containers all still run
    let t0 = Instant::now();
    w.spawn("b", &work_a);
    let status = w.wait_exit("b", Duration::from_secs(30)).await;
    let took = t0.elapsed();
    let log_b = w.log("b");
    assert!(!status.success(), "{log_b}");
    assert!(took < Duration::from_secs(10), "B took {took:?}:\n{log_b}");
    assert_eq!(log_b.matches(BUSY).count(), 1, "one message:\n{log_b}");
    let want = format!(
        "error: the work dir {} {BUSY} (pid {pid_a}); give each worker on this host its own \
         --work-dir",
        work_a.canonicalize().unwrap().display()
    );
    assert!(log_b.contains(&want), "{want}\n{log_b}");
    assert!(!log_b.contains("removed leftover"), "{log_b}");
    assert!(!log_b.contains("Docker"), "B never got to Docker:\n{log_b}");
    assert_eq!(containers_of(&instance_a, false), of_a);
    assert_all_running(&of_a, "after B");
    assert_eq!(
        std::fs::read_to_string(work_a.join("worker.lock")).unwrap(),
        format!("pid {pid_a}\n"),
        "B left A's lock file as it was"
    );

    // C on its own work dir: runs beside A, sweeps nothing of A's
    w.spawn("c", &work_c);
    w.wait_log("c", "connected to the master", Duration::from_secs(120))
        .await;
    let instance_c = instance_of(&work_c);
    assert_ne!(instance_c, instance_a);
    assert!(!w.log("c").contains("removed leftover"), "{}", w.log("c"));
    assert_all_running(&of_a, "after C started");
    assert_eq!(containers_of(&instance_a, false), of_a);

    // each side's container removed from outside while its test spins: `error`, never `oom`
    let job_id: i64 = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    remove_from_outside(&looping, &instance_a, needle).await;
    let end_side = container_running(&instance_a, needle).await;
    assert_ne!(end_side, looping);
    remove_from_outside(&end_side, &instance_a, needle).await;
    let t0 = Instant::now();
    let last_error = loop {
        let e: Option<String> = sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if let Some(e) = e {
            break e;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the job never came back:\n{}",
            w.log("a")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(last_error.contains("removed from outside"), "{last_error}");
    let results: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        results, 0,
        "an infrastructure error is retried, not recorded"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_ne!(state, "done", "queued again: {last_error}");

    // A killed outright leaves its containers; restarted on the same work dir (same instance),
    // it removes them: exactly them (the count it logs; the sweep filters on the label)
    w.signal("a", "-KILL");
    w.wait_exit("a", Duration::from_secs(10)).await;
    let left = containers_of(&instance_a, true);
    assert!(!left.is_empty(), "a killed worker leaves its containers");
    w.children.retain(|(n, _)| n != "a");
    w.spawn("a", &work_a);
    w.wait_log("a", "connected to the master", Duration::from_secs(120))
        .await;
    assert_eq!(instance_of(&work_a), instance_a);
    let log_a = w.log("a");
    assert!(
        log_a.contains(&format!("removed={}", left.len()))
            && log_a.contains("removed leftover sandbox containers"),
        "{log_a}"
    );
    let now_a = containers_of(&instance_a, true);
    assert!(
        left.iter().all(|c| !now_a.contains(c)),
        "{left:?} {now_a:?}"
    );
    // both drain on SIGTERM and leave no container behind
    for name in ["a", "c"] {
        w.signal(name, "-TERM");
    }
    for name in ["a", "c"] {
        let status = w.wait_exit(name, Duration::from_secs(120)).await;
        assert!(status.success(), "{name}: {status:?}\n{}", w.log(name));
    }
    for instance in [&instance_a, &instance_c] {
        assert_eq!(containers_of(instance, true), Vec::<String>::new());
    }
    master.stop().await;
}

/// Bad secret inputs: both a token and a token file is refused before anything else (no work
/// dir made); a token file other users can read is warned about; a busy work dir is named with
/// its holder, once. None of it needs Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_a_busy_work_dir_fail_early_with_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("w.token");
    write_secret(&token_file, "cldr_not_a_real_token", 0o644);
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_caldera"));
        cmd.arg("worker")
            .args(args)
            .env_remove("CALDERA_TOKEN")
            .env_remove("CALDERA_TOKEN_FILE")
            .env("CALDERA_LOG", "info")
            .arg(format!(
                "--storage=local:{}",
                dir.path().join("objects").display()
            ));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let work = dir.path().join("work");
    let work_arg = format!("--work-dir={}", work.display());
    let file_arg = format!("--token-file={}", token_file.display());

    // both forms of the token, on the command line or from the environment
    for (args, envs) in [
        (vec!["--token", "cldr_x", file_arg.as_str()], vec![]),
        (vec![file_arg.as_str()], vec![("CALDERA_TOKEN", "cldr_x")]),
    ] {
        let mut all = args.clone();
        all.push(&work_arg);
        let (status, err) = run(&all, &envs);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(
                "error: the worker's token is given twice: by --token (or CALDERA_TOKEN) and by \
                 --token-file (or CALDERA_TOKEN_FILE); give only one"
            ),
            "{err}"
        );
        assert!(!err.contains("cldr_"), "no secret in the message: {err}");
        assert!(!work.exists(), "nothing made before the check");
    }
    // no token at all
    let (status, err) = run(&[&work_arg], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("the worker needs its token"), "{err}");
    assert!(!work.exists());

    // a world-readable token file is warned about; the busy work dir (this test holds its lock)
    // ends the start, named once with the holder
    let lock = WorkDirLock::acquire(&work).unwrap();
    let instance = std::fs::read_to_string(work.join("instance-id")).unwrap();
    let (status, err) = run(&[&file_arg, &work_arg], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} (holding the worker's token) is readable by every user of this host (mode 644)",
            token_file.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches(BUSY).count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "error: the work dir {} {BUSY} (pid {})",
            lock.dir().display(),
            std::process::id()
        )),
        "{err}"
    );
    assert!(!err.contains("cldr_not_a_real_token"), "{err}");
    assert_eq!(
        std::fs::read_to_string(work.join("instance-id")).unwrap(),
        instance
    );
    // the token on the command line works, but is warned about
    let (status, err) = run(&["--token", "cldr_y", &work_arg], &[]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "--token on the command line shows in the process list of every local user; use \
             --token-file or CALDERA_TOKEN"
        ),
        "{err}"
    );
    assert!(err.contains(BUSY), "{err}");
    drop(lock);
}

/// The README's `caldera worker` command (and the `token create` line before it), run as
/// written: the worker connects with the token, which its command line does not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_worker_command_shows_no_secret() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("## Running the master by hand")
        .nth(1)
        .expect("the README's section");
    let block = section.split("```sh").nth(1).unwrap().split("```").next();
    let joined = block.unwrap().replace("\\\n", " ");
    let line = |needle: &str| -> String {
        let l = joined
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the README's block:\n{joined}"));
        // the comment and the `&` off
        let l = l.split("  #").next().unwrap().trim().trim_end_matches('&');
        l.trim().to_owned()
    };
    let token_line = line("token create --role worker");
    let worker_line = line("caldera worker ");
    assert!(
        !worker_line.contains("$(") && !worker_line.contains("--token "),
        "the README's worker command puts no secret on its command line: {worker_line}"
    );

    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let store = caldera_storage::open(&StorageConfig::local(&objects)).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, store).await;
    let bin = env!("CARGO_BIN_EXE_caldera");
    let local = |l: &str| {
        l.replace("./target/release/caldera", bin)
            .replace("http://127.0.0.1:9090", &master.grpc)
            .replace("/var/lib/caldera/objects", &objects.display().to_string())
    };

    let out = Command::new("sh")
        .args(["-c", &local(&token_line)])
        .current_dir(dir.path())
        .env("CALDERA_DATABASE_URL", &db.url)
        .env("CALDERA_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{token_line}: {out:?}");
    let token_file = dir.path().join("worker.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the token file is private: {mode:o}");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.starts_with("cldr_"), "{token}");

    let log = dir.path().join("worker.log");
    let mut worker = Command::new("sh")
        .args(["-c", &format!("exec {}", local(&worker_line))])
        .current_dir(dir.path())
        .env("CALDERA_WORK_DIR", dir.path().join("work"))
        .env("CALDERA_LOG", "info")
        .env_remove("CALDERA_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains("connected to the master") {
        assert!(
            worker.try_wait().unwrap().is_none(),
            "the worker ended:\n{}",
            read_log()
        );
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", worker.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(" worker "), "{cmdline}");
    assert!(!cmdline.contains(token), "the secret shows: {cmdline}");
    assert!(
        !read_log().contains("readable by every user"),
        "{}",
        read_log()
    );
    assert!(!read_log().contains("process list"), "{}", read_log());

    let pid = worker.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{}", read_log());
    master.stop().await;
}
