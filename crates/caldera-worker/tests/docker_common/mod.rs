//! Shared set-up of the Docker executor tests (`tests/docker_*.rs`).
//!
//! These tests run real cargo in the real Docker sandbox. They need a running engine and the
//! sandbox image — run first (as root; the project's xtask does it before the tests):
//!
//! ```text
//! scripts/ensure-docker.sh
//! scripts/build-sandbox-image.sh
//! ```
//!
//! and the host's rustup home (`$RUSTUP_HOME`, else `~/.rustup`) must hold `stable` and `nightly`.
//! Registry tests need the registry (through cargo's configuration, as a worker would).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use caldera_core::crates::CrateId;
use caldera_core::experiment::{CapLints, Mode};
use caldera_core::job::JobSpec;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, Timeouts, default_rustup_home};
use caldera_storage::{ObjectKey, ObjectStore, StorageConfig};
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use caldera_worker::{Assignment, Executor, JobOutput};
use tokio_util::sync::CancellationToken;

pub fn fixture(name: &str) -> CrateId {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/crates")
        .join(name);
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    CrateId::Local {
        path: dir.to_string_lossy().into_owned(),
    }
}

/// One executor over its own work dir, local object storage and upload spool.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub executor: DockerExecutor,
    pub store: Arc<dyn ObjectStore>,
    pub spool: Arc<UploadSpool>,
    /// The sandbox owner label of this harness's containers.
    pub owner: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Limits small enough for two tests side by side on a 2-core machine.
pub fn test_limits() -> Limits {
    Limits {
        memory_bytes: 2 << 30,
        cpus: 2.0,
        pids: 512,
        tmp_bytes: 256 << 20,
    }
}

pub async fn harness(name: &str, tweak: impl FnOnce(&mut DockerExecutorConfig)) -> Harness {
    let dir = tempfile::Builder::new()
        .prefix(&format!("caldera-exec-{name}-"))
        .tempdir()
        .unwrap();
    let store = caldera_storage::open(&StorageConfig::local(dir.path().join("objects"))).unwrap();
    let mut spool_config = UploadSpoolConfig::new(dir.path().join("upload-spool"));
    spool_config.min_backoff = Duration::from_millis(50);
    let spool = Arc::new(
        UploadSpool::open(store.clone(), spool_config)
            .await
            .unwrap(),
    );
    let owner = format!(
        "test-exec-{name}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: owner.clone(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut config = DockerExecutorConfig::new(
        dir.path().join("work"),
        default_rustup_home().expect("RUSTUP_HOME or HOME must be set"),
    );
    config.limits = test_limits();
    config.timeouts = Timeouts {
        total: Duration::from_secs(300),
        no_output: Duration::from_secs(120),
    };
    config.log_upload_timeout = Duration::from_secs(60);
    tweak(&mut config);
    let executor = DockerExecutor::new(config, sandbox, spool.clone()).unwrap();
    Harness {
        dir,
        executor,
        store,
        spool,
        owner,
    }
}

pub fn spec(experiment: &str, krate: CrateId, start: &str, end: &str, mode: Mode) -> JobSpec {
    JobSpec {
        experiment: experiment.into(),
        krate,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
        mode,
        cap_lints: CapLints::Forbid,
        skip_tests: false,
        quiet: false,
        extra_timeout_secs: 0,
        extra_memory_mib: 0,
        lockfile: Default::default(),
        run: 0,
        only: None,
    }
}

static JOB_ID: AtomicU32 = AtomicU32::new(1);

impl Harness {
    pub async fn run(&self, spec: JobSpec) -> JobOutput {
        self.run_with(spec, CancellationToken::new()).await
    }

    pub async fn run_with(&self, spec: JobSpec, cancel: CancellationToken) -> JobOutput {
        let id = JOB_ID.fetch_add(1, Ordering::Relaxed);
        let krate = spec.krate.to_string();
        let started = std::time::Instant::now();
        let out = self
            .executor
            .run(
                Assignment {
                    job_id: u64::from(id),
                    attempt: 1,
                    spec,
                },
                cancel,
            )
            .await;
        eprintln!(
            "--- job {id} {krate}: start {} / end {} in {:.1} s (steps {:?} / {:?})",
            out.start.outcome,
            out.end.outcome,
            started.elapsed().as_secs_f64(),
            out.start.steps,
            out.end.steps
        );
        out
    }

    /// The stored (decompressed) log behind a side's `log_key`.
    pub async fn log(&self, log_key: Option<&str>) -> String {
        let key = ObjectKey::new(log_key.expect("the side has a log key")).unwrap();
        let bytes = caldera_storage::read_log(self.store.as_ref(), &key, 64 << 20)
            .await
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn work_dir(&self) -> PathBuf {
        self.executor.config().work_dir.clone()
    }
}

impl Drop for Harness {
    /// The executor keeps spare containers for its slots' next jobs: they are removed here (the
    /// tests run on multi-threaded runtimes), and whatever this harness's owner still has after
    /// that (a test that panicked mid-job) too.
    fn drop(&mut self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let executor = self.executor.clone();
            tokio::task::block_in_place(|| handle.block_on(executor.shutdown()));
        }
        let ids = containers_owned_by(&self.owner);
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// Head and tail of a log, for assertion messages.
pub fn excerpt(log: &str) -> String {
    if log.len() <= 8000 {
        return log.to_owned();
    }
    let head = log.floor_char_boundary(4000);
    let tail = log.ceil_char_boundary(log.len() - 4000);
    format!("{}\n…\n{}", &log[..head], &log[tail..])
}

/// The host's address as seen from containers on the default bridge (an address of this
/// machine), else this host's first address.
pub fn host_address_for_containers() -> String {
    let gw = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty());
    gw.or_else(|| {
        std::process::Command::new("hostname")
            .arg("-I")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .map(String::from)
            })
    })
    .expect("no address of this host found")
}

pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Containers of this engine whose owner label starts with `prefix`.
pub fn containers_owned_by(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Label \"org.caldera.sandbox.owner\"}} {{.ID}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect()
}
