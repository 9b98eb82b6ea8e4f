//! `caldera worker`: connect to a master and run its jobs in the Docker sandbox.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, Timeouts};
use caldera_storage::ObjectStore;
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use caldera_worker::workdir::{WorkDirError, WorkDirLock};
use caldera_worker::{Backoff, WorkerConfig};
use clap::Args;

use super::storage_args::{SecretOption, StorageArgs};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The master's worker service (gRPC) endpoint. An https:// master's certificate is checked
    /// against the system's roots or the CA file; http:// is plain TCP, for a loopback address
    /// (elsewhere it needs the insecure-plaintext option).
    #[arg(long, env = "CALDERA_MASTER", default_value = "http://127.0.0.1:9090")]
    pub master: String,
    /// CA certificates (PEM) the master's certificate must chain to, instead of the system's roots
    /// (e.g. the ca.pem of `caldera cert ca`). A master whose certificate does not verify is
    /// refused: the worker stops without sending its token.
    #[arg(long, env = "CALDERA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow http:// to a master that is not on loopback: the worker token and all job traffic
    /// cross the network in clear text.
    #[arg(long, env = "CALDERA_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// This worker's token, as issued by the master's operator. On the command line it shows in
    /// the process list of every local user: prefer a file (`--token-file`) or the variable.
    #[arg(long, env = "CALDERA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding this worker's token (one line; keep it mode 0600 — a file other users can
    /// read is warned about). Not together with the token itself (`--token`, `CALDERA_TOKEN`).
    #[arg(long, env = "CALDERA_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// A stable name for this worker [default: the host name].
    #[arg(long, env = "CALDERA_WORKER_NAME")]
    pub name: Option<String>,
    /// Holds the result and upload spools, target dirs (per slot and toolchain), job sources,
    /// downloaded crates and the shared cargo home (mounted read-only into the sandbox: keep no
    /// credentials in it).
    #[arg(
        long,
        env = "CALDERA_WORK_DIR",
        default_value = "/var/lib/caldera/worker"
    )]
    pub work_dir: PathBuf,
    /// On SIGTERM/SIGINT: how long running jobs may go on before they are cancelled and handed back.
    #[arg(long, env = "CALDERA_DRAIN_TIMEOUT_SECS", default_value_t = 600)]
    pub drain_timeout_secs: u64,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// How jobs run: the Docker sandbox, its limits and the toolchains. Shared by `caldera worker` and
/// `caldera local`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// Jobs run at once [default: half the CPU cores, at least 1].
    #[arg(long, env = "CALDERA_SLOTS")]
    pub slots: Option<u32>,
    /// The sandbox image (build it with `scripts/build-sandbox-image.sh`).
    #[arg(long, env = "CALDERA_IMAGE", default_value = caldera_sandbox::DEFAULT_IMAGE)]
    pub image: String,
    /// The Docker engine (`unix:///var/run/docker.sock`, `tcp://host:2375`) [default: DOCKER_HOST,
    /// else the local socket].
    #[arg(long, env = "CALDERA_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// The rustup home whose toolchains are advertised and mounted [default: $RUSTUP_HOME, else
    /// ~/.rustup].
    #[arg(long, env = "CALDERA_RUSTUP_HOME")]
    pub rustup_home: Option<PathBuf>,
    /// Memory per sandbox (also its memory+swap), e.g. `4GiB`, `512MiB`; a job's extra memory is
    /// added.
    #[arg(long, env = "CALDERA_MEMORY", default_value = "4GiB", value_parser = parse_size)]
    pub memory: u64,
    /// CPUs per sandbox (may be fractional).
    #[arg(long, env = "CALDERA_CPUS", default_value_t = 2.0)]
    pub cpus: f64,
    /// Most processes and threads per sandbox (a test suite may start a thousand threads; the
    /// limit is there to stop fork bombs).
    #[arg(long, env = "CALDERA_PIDS", default_value_t = caldera_sandbox::DEFAULT_PIDS)]
    pub pids: u32,
    /// Size of each sandbox's /tmp (counts against its memory).
    #[arg(long, env = "CALDERA_TMP_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub tmp_size: u64,
    /// Total time limit of one step, in seconds; a job's extra timeout is added.
    #[arg(long, env = "CALDERA_TIMEOUT_SECS", default_value_t = 900)]
    pub timeout_secs: u64,
    /// A step that prints nothing for this many seconds is killed.
    #[arg(long, env = "CALDERA_NO_OUTPUT_TIMEOUT_SECS", default_value_t = 300)]
    pub no_output_timeout_secs: u64,
    /// Most output kept per step (head and tail), e.g. `5MiB`.
    #[arg(long, env = "CALDERA_LOG_CAP", default_value = "5MiB", value_parser = parse_size)]
    pub log_cap: u64,
    /// Purge a slot's target dirs when the disk holding them is fuller than this fraction.
    #[arg(long, env = "CALDERA_DISK_HIGH_WATER", default_value_t = 0.8)]
    pub disk_high_water: f64,
    /// Start every job from empty target dirs instead of reusing a slot's target dirs across
    /// the crates of an experiment (slower; for workers short of disk).
    #[arg(long, env = "CALDERA_NO_TARGET_REUSE")]
    pub no_target_reuse: bool,
    /// Share registry dependency builds across crates and experiments through the worker's
    /// dependency store (`<work-dir>/depstore`): every first run starts from empty target dirs
    /// filled from the store. See docs/ARCHITECTURE.md, "Shared dependency builds".
    #[arg(long, env = "CALDERA_SHARED_DEPS")]
    pub shared_deps: bool,
    /// Most disk the dependency store may take, e.g. `20GiB`: past it, the units jobs placed
    /// longest ago are removed, down to three quarters of it.
    #[arg(
        long,
        env = "CALDERA_SHARED_DEPS_MAX_SIZE",
        default_value = "20GiB",
        value_parser = parse_size
    )]
    pub shared_deps_max_size: u64,
    /// Fixed `KEY=VALUE` variables for every sandboxed step (comma-separated in the variable).
    /// Nothing of the worker's own environment reaches the sandbox otherwise.
    #[arg(long, env = "CALDERA_SANDBOX_ENV", value_delimiter = ',', value_parser = parse_key_value)]
    pub sandbox_env: Vec<(String, String)>,
    /// Host commands of crate preparation (git clone, cargo fetch, …) are killed after this many
    /// seconds.
    #[arg(long, env = "CALDERA_PREPARE_TIMEOUT_SECS", default_value_t = 600)]
    pub prepare_timeout_secs: u64,
    /// Filled by [`ExecutorArgs::build`].
    #[arg(skip)]
    capabilities: OnceLock<Vec<String>>,
    /// Filled by [`ExecutorArgs::build`]: the build of each installed toolchain.
    #[arg(skip)]
    toolchains: OnceLock<Vec<caldera_core::toolchain::ToolchainIdentity>>,
    /// Filled by [`ExecutorArgs::build`]: the image id, limits and classifier version.
    #[arg(skip)]
    environment: OnceLock<caldera_core::fingerprint::Environment>,
}

impl ExecutorArgs {
    pub fn slots(&self) -> u32 {
        self.slots.unwrap_or_else(default_slots).max(1)
    }

    /// What the built executor offers (`docker`, `arch:…`, `toolchain:…`, `miri:…`). Known once
    /// [`build`](Self::build) ran; before that only `docker` and the architecture.
    pub fn capabilities(&self) -> Vec<String> {
        self.capabilities.get().cloned().unwrap_or_else(|| {
            vec![
                "docker".to_owned(),
                format!("arch:{}", std::env::consts::ARCH),
            ]
        })
    }

    /// The build of each installed toolchain (`rustc -vV`, `cargo -V`), for Hello. Known once
    /// [`build`](Self::build) ran; empty before.
    pub fn toolchains(&self) -> Vec<caldera_core::toolchain::ToolchainIdentity> {
        self.toolchains.get().cloned().unwrap_or_default()
    }

    /// What can change an outcome here besides the job (the result cache's environment), for
    /// Hello. Known once [`build`](Self::build) ran; `None` before.
    pub fn environment(&self) -> Option<caldera_core::fingerprint::Environment> {
        self.environment.get().cloned()
    }

    /// The limits in the canonical text form of the result cache's environment.
    fn limits_text(&self) -> String {
        let mut text = format!(
            "memory={},cpus={},pids={},tmp={},timeout={},no_output={},log_cap={}",
            self.memory,
            self.cpus,
            self.pids,
            self.tmp_size,
            self.timeout_secs,
            self.no_output_timeout_secs,
            self.log_cap
        );
        let env: BTreeMap<&str, &str> = self
            .sandbox_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in env {
            text.push_str(&format!(",env:{k}={v}"));
        }
        text
    }

    /// Checks the engine and the image, lists the toolchains and builds the executor over
    /// `work_dir` (target dirs, sources, cargo home, upload spool), storing logs and lockfiles
    /// in `store`.
    pub async fn build(
        &self,
        work_dir: &Path,
        store: Arc<dyn ObjectStore>,
    ) -> anyhow::Result<Arc<DockerExecutor>> {
        self.build_locked(WorkDirLock::acquire(work_dir)?, store)
            .await
    }

    /// [`build`](Self::build) over a work dir already locked: the lock comes before any Docker
    /// call, so a second process on the same work dir fails before it touches a container.
    pub async fn build_locked(
        &self,
        lock: WorkDirLock,
        store: Arc<dyn ObjectStore>,
    ) -> anyhow::Result<Arc<DockerExecutor>> {
        let work_dir = lock.dir().to_owned();
        let rustup_home = self
            .rustup_home
            .clone()
            .or_else(caldera_sandbox::default_rustup_home)
            .context("no rustup home: pass --rustup-home or set RUSTUP_HOME or HOME")?;
        let (capabilities, toolchains) = installed_toolchains(&rustup_home).await?;

        // containers are labelled with the work dir's instance id, and only this instance's
        // leftovers are removed at start: two workers on one engine never sweep each other
        let sandbox = Sandbox::connect(SandboxConfig {
            docker_host: self.docker_host.clone(),
            image: self.image.clone(),
            owner: lock.instance().to_owned(),
            sweep_on_connect: true,
            ..SandboxConfig::default()
        })
        .await
        .context("the Docker sandbox is not usable")?;
        let engine = sandbox.engine().clone();
        let image_id = sandbox
            .image_id()
            .await
            .context("the Docker sandbox is not usable")?;
        let _ = self
            .environment
            .set(caldera_core::fingerprint::Environment {
                image: image_id,
                limits: self.limits_text(),
                classifier: caldera_worker::CLASSIFIER_VERSION,
            });
        let spool = Arc::new(
            UploadSpool::open(store, UploadSpoolConfig::new(work_dir.join("upload-spool")))
                .await
                .context("opening the upload spool")?,
        );

        let mut config = DockerExecutorConfig::new(&work_dir, &rustup_home);
        config.slots = self.slots();
        config.limits = Limits {
            memory_bytes: self.memory,
            cpus: self.cpus,
            pids: self.pids,
            tmp_bytes: self.tmp_size,
        };
        config.timeouts = Timeouts {
            total: Duration::from_secs(self.timeout_secs.max(1)),
            no_output: Duration::from_secs(self.no_output_timeout_secs.max(1)),
        };
        config.log_cap = usize::try_from(self.log_cap).unwrap_or(usize::MAX);
        config.disk_high_water = self.disk_high_water;
        config.reuse_target_dirs = !self.no_target_reuse;
        config.shared_deps = self.shared_deps;
        config.shared_deps_max_bytes = self.shared_deps_max_size;
        config.sandbox_env = self.sandbox_env.iter().cloned().collect::<BTreeMap<_, _>>();
        config.prepare.command_timeout = Duration::from_secs(self.prepare_timeout_secs.max(1));
        config.work_dir_lock = Some(Arc::new(lock));
        let executor =
            DockerExecutor::new(config, sandbox, spool).context("setting up the executor")?;
        tracing::info!(
            image = self.image,
            engine = engine.server_version,
            api = engine.api_version,
            slots = self.slots(),
            capabilities = capabilities.join(" "),
            "Docker executor ready"
        );
        let _ = self.capabilities.set(capabilities);
        let _ = self.toolchains.set(toolchains);
        Ok(Arc::new(executor))
    }
}

/// What the toolchains of `rustup_home` offer (capabilities) and the build of each (resolved
/// once per start of the worker, sent in Hello); at least one toolchain must be installed.
async fn installed_toolchains(
    rustup_home: &Path,
) -> anyhow::Result<(Vec<String>, Vec<caldera_core::toolchain::ToolchainIdentity>)> {
    let capabilities = caldera_worker::docker::capabilities(rustup_home)
        .await
        .with_context(|| format!("listing the toolchains in {}", rustup_home.display()))?;
    anyhow::ensure!(
        capabilities.iter().any(|c| c.starts_with("toolchain:")),
        "no toolchain is installed in {}; install one with rustup",
        rustup_home.display()
    );
    // each toolchain's build, resolved once per start of the worker
    let toolchains = caldera_worker::docker::toolchain_identities(rustup_home)
        .await
        .with_context(|| format!("listing the toolchains in {}", rustup_home.display()))?;

    for t in &toolchains {
        tracing::info!(
            toolchain = t.toolchain,
            build = t.describe(),
            cargo = t.cargo,
            "toolchain"
        );
    }
    Ok((capabilities, toolchains))
}

/// `4GiB`, `512MiB`, `64KiB`, `1G`, `100M` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4GiB, 512MiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use KiB, MiB, GiB)")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let valid = k
        .chars()
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
    if !valid {
        return Err(format!("{k:?} is not a variable name"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "caldera-worker".to_owned())
}

fn default_slots() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores / 2).unwrap_or(u32::MAX).max(1)
}

/// The worker token's options.
const TOKEN: SecretOption = SecretOption {
    what: "the worker's token",
    flag: "--token",
    env: "CALDERA_TOKEN",
    file_flag: "--token-file",
    file_env: "CALDERA_TOKEN_FILE",
};

impl WorkerArgs {
    /// The token, from --token / CALDERA_TOKEN or from --token-file / CALDERA_TOKEN_FILE.
    pub fn token(&self) -> anyhow::Result<String> {
        TOKEN
            .resolve(self.token.as_deref(), self.token_file.as_deref())?
            .context(
                "the worker needs its token: --token-file FILE (or CALDERA_TOKEN_FILE), or \
                 CALDERA_TOKEN",
            )
    }
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(host_name);
    // what was given is checked first, then the work dir is locked: before storage, before Docker
    let mut worker = WorkerConfig::new(
        args.master.clone(),
        args.token()?,
        name.clone(),
        args.work_dir.join("result-spool"),
    );
    worker.ca_file = args.ca_file.clone();
    worker.insecure_plaintext = args.insecure_plaintext;
    worker.slots = args.executor.slots();
    worker.reconnect = Backoff::default();
    worker.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    worker.validate()?;
    if args.master.starts_with("http://") && args.insecure_plaintext {
        tracing::warn!(
            master = args.master,
            "plain TCP (--insecure-plaintext): off loopback, the worker token crosses the network in clear text"
        );
    }
    let storage = args.storage.to_config()?;
    let lock = WorkDirLock::acquire(&args.work_dir).map_err(|e| match e {
        WorkDirError::Busy { .. } => {
            anyhow::anyhow!("{e}; give each worker on this host its own --work-dir")
        }
        e => e.into(),
    })?;
    let store = caldera_storage::open(&storage).context("opening storage")?;
    let executor = args.executor.build_locked(lock, store).await?;
    worker.capabilities = args.executor.capabilities();
    worker.toolchains = args.executor.toolchains();
    worker.environment = args.executor.environment();
    tracing::info!(worker = name, master = args.master, "worker starting");

    let result =
        caldera_worker::run(worker, executor.clone(), super::master::shutdown_signal()).await;
    // every log was made durable before its result was sent; this only waits for stragglers
    if tokio::time::timeout(Duration::from_secs(30), executor.spool().wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            pending = executor.spool().pending().len(),
            "uploads still pending at exit; they resume on the next start"
        );
    }
    executor.shutdown().await;
    result?;
    tracing::info!("worker drained and stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("5M"), Ok(5 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4XB").is_err());
        assert!(parse_size("0").is_err());
    }

    fn token_of(args: &[&str]) -> anyhow::Result<String> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            worker: WorkerArgs,
        }
        let argv = std::iter::once("x").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .worker
            .token()
    }

    #[test]
    fn the_token_comes_from_an_option_or_a_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w1.token");
        std::fs::write(&file, "cldr_abc\n").unwrap();
        let file = file.to_str().unwrap();
        assert_eq!(token_of(&["--token", "cldr_x"]).unwrap(), "cldr_x");
        assert_eq!(token_of(&["--token-file", file]).unwrap(), "cldr_abc");
        let err = token_of(&["--token", "cldr_x", "--token-file", file])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the worker's token is given twice")
                && err.contains("--token (or CALDERA_TOKEN)")
                && err.contains("--token-file (or CALDERA_TOKEN_FILE)"),
            "{err}"
        );
        assert!(
            !err.contains("cldr_x"),
            "the message shows no secret: {err}"
        );
        let err = token_of(&[]).unwrap_err().to_string();
        assert!(err.contains("the worker needs its token"), "{err}");
        let err = format!(
            "{:#}",
            token_of(&["--token-file", "/nonexistent/t"]).unwrap_err()
        );
        assert!(
            err.contains("reading the worker's token from /nonexistent/t"),
            "{err}"
        );
    }

    #[test]
    fn sandbox_env_entries_parse() {
        assert_eq!(
            parse_key_value("A_1=x=y"),
            Ok(("A_1".to_owned(), "x=y".to_owned()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("1A=x").is_err());
        assert!(parse_key_value("A-B=x").is_err());
    }
}
