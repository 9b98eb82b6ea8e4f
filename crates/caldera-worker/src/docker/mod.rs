//! [`DockerExecutor`]: the real [`Executor`]. It prepares a job's crate once on the host
//! ([`crate::prepare`]), then runs each side (start, end) in a sandbox container of its own and
//! classifies what happened.
//!
//! # One job
//!
//! 1. A worker slot is taken (at most `slots` jobs at once); its target directories are emptied
//!    when the slot last served another experiment, or when the disk holding them is fuller than
//!    the high-water mark (their contents are renamed into `<work>/trash` and deleted in the
//!    background).
//! 2. Both toolchains are resolved in the host's rustup home (`toolchain:<name>` capabilities name
//!    what is there); the crate is prepared with the start toolchain: one lockfile, stored, and
//!    every dependency fetched into the shared cargo home. A prepare failure is `prepare-fail` on
//!    both sides, `broken` when the crate makes a build impossible anywhere (invalid manifest,
//!    missing or yanked dependency), or `error` when the infrastructure failed.
//! 3. Each side gets a fresh container (network none, source, cargo home and the side's toolchain
//!    read-only, the slot's target dir for that toolchain writable, the configured limits plus the
//!    job's extra memory). A confirmation run (`JobSpec::run > 0`) gets fresh, empty target dirs
//!    of its own instead (`targets/fresh-<slot>`, removed after it), never the slot's reused ones. It is usually a *spare*, created for the slot after its previous job
//!    (with its step driver already waiting, see [`Container::prime`]), so jobs do not wait for a
//!    container to start. That works because the source is mounted from the slot's source dir
//!    (`<sources>/slot-<n>`), into which the prepared crate is moved (renamed) before the steps; a
//!    spare that does not fit (another toolchain, extra memory) is removed and a container is
//!    created for the job while the crate is prepared. The side runs the mode's steps
//!    ([`plan_steps`]) `--locked --offline` in one exec ([`Container::exec_steps`]), stopping at
//!    the first failed step. The steps are classified with
//!    [`caldera_classify::classify_job`]; when that reports a contaminated target dir (E0464),
//!    the dir is purged and the side runs once more from clean before anything is reported. A
//!    separate container per side means nothing one toolchain leaves in `/tmp` or `$HOME` can
//!    change what the other sees, and no job sees another's: a container serves one side of one
//!    job. Once the job's steps are over, its containers are removed and the slot's spares
//!    created, in the background (so that no container work competes with the steps).
//! 4. Each side's log — a header naming the crate, toolchain, mode, steps with their durations and
//!    the outcome, then the preparation's output and every step's output — is written to the
//!    upload spool under `keys::log(experiment, toolchain, crate)` and awaited until durable before
//!    the job returns; [`SideOutput::log_key`] names it.
//!
//! Anything the sandbox or the host could not do ([`SandboxError`], storage, I/O) is an `error`
//! outcome, which the master retries; never a build failure. That includes a container removed or
//! killed from outside while a step ran ([`SandboxError::ContainerLost`]: its processes die by
//! SIGKILL, status 137, as in an OOM kill, but only the cgroup's OOM counter makes a step `oom`);
//! the side's log keeps the steps' output up to the kill and names what happened. Cancellation
//! kills the side's container at once.
//!
//! # Where things are
//!
//! `job` runs one job, in the order above; `toolchains` resolves a side's toolchain (and names
//! what a worker offers); `targets` keeps the slot's directories (target dirs, their reuse and
//! purging, the source dir); `depstore` and `shared_deps` share registry dependency builds
//! across crates when [`DockerExecutorConfig::shared_deps`] is on (a first run's side then
//! starts from a target dir filled from the store and runs a deps-only build of a stub of the
//! crate before its steps; see docs/ARCHITECTURE.md, "Shared dependency builds"); `spares` the containers, made ahead or for the job; `steps` plans a
//! side's cargo steps and runs them; `log` writes a side's log.
//!
//! [`Container::prime`]: caldera_sandbox::Container::prime
//! [`Container::exec_steps`]: caldera_sandbox::Container::exec_steps

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use caldera_classify::Classification;
use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::Toolchain;
use caldera_sandbox::{Limits, Sandbox, SandboxError, Timeouts};
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::executor::{Assignment, Executor, JobOutput, SideOutput};
use crate::prepare::{HostToolchain, PrepareConfig, Preparer};
use crate::upload_spool::UploadSpool;
use crate::workdir::WorkDirLock;

use spares::Spare;
use targets::delete_trash;
use toolchains::toolchain_dir_key;

pub use steps::{PlannedStep, plan_steps};
pub use toolchains::{capabilities, toolchain_identities};

mod depstore;
mod job;
mod log;
mod shared_deps;
mod spares;
mod steps;
mod targets;
mod toolchains;

/// Everything a [`DockerExecutor`] needs besides the engine and the upload spool.
#[derive(Debug, Clone)]
pub struct DockerExecutorConfig {
    /// Holds `targets/` (per slot and toolchain), and what [`PrepareConfig`] puts there (cargo
    /// home, sources, downloads).
    pub work_dir: PathBuf,
    /// The rustup home toolchains are resolved in and mounted from.
    pub rustup_home: PathBuf,
    /// How many jobs run at once (each has its own target dirs).
    pub slots: u32,
    /// Container limits; a job's `extra_memory_mib` is added to the memory.
    pub limits: Limits,
    /// Per-step timeouts; a job's `extra_timeout_secs` is added to both.
    pub timeouts: Timeouts,
    /// Cap of one step's captured output, in bytes (head and tail kept).
    pub log_cap: usize,
    /// Purge a slot's target dirs before a job when the disk holding them is fuller than this
    /// fraction (0.8 = 80 %).
    pub disk_high_water: f64,
    /// Reuse a slot's target dirs across the crates of one experiment (the default). When off,
    /// every job starts from empty target dirs (slower; see docs/benchmarks.md).
    pub reuse_target_dirs: bool,
    /// Share registry dependency builds across crates through the worker's dependency store
    /// (`<work>/depstore`; see docs/ARCHITECTURE.md, "Shared dependency builds"). When on, a
    /// first run's target dirs are emptied before every job (instead of being reused) and filled
    /// from the store; confirmation runs never use it.
    pub shared_deps: bool,
    /// Most disk the dependency store may hold, in bytes: past it, the units placed longest ago
    /// are removed (down to three quarters of it) after a deps-only build stored new ones.
    pub shared_deps_max_bytes: u64,
    /// Fixed variables set in every step (chosen by the operator; nothing of the worker's own
    /// environment is passed). They cannot override the variables the executor sets.
    pub sandbox_env: BTreeMap<String, String>,
    /// How long to wait for a log to reach object storage before the side is reported as `error`.
    pub log_upload_timeout: Duration,
    pub prepare: PrepareConfig,
    /// The work dir's lock, held as long as the executor lives (`caldera worker` and `caldera
    /// local` take it before connecting to the engine; see [`crate::workdir`]).
    pub work_dir_lock: Option<Arc<WorkDirLock>>,
}

impl DockerExecutorConfig {
    /// Defaults: one slot, the sandbox's default limits and timeouts (4 GiB, 2 CPUs, 4096 pids;
    /// 15 min / 5 min), 5 MiB logs, an 80 % high-water mark, 10 minutes for log uploads, no
    /// shared dependency builds (a 20 GiB store when they are turned on).
    pub fn new(work_dir: impl Into<PathBuf>, rustup_home: impl Into<PathBuf>) -> Self {
        let work_dir = work_dir.into();
        DockerExecutorConfig {
            prepare: PrepareConfig::new(&work_dir),
            work_dir,
            rustup_home: rustup_home.into(),
            slots: 1,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            log_cap: caldera_sandbox::DEFAULT_LOG_CAP,
            disk_high_water: 0.8,
            reuse_target_dirs: true,
            shared_deps: false,
            shared_deps_max_bytes: 20 << 30,
            sandbox_env: BTreeMap::new(),
            log_upload_timeout: Duration::from_secs(600),
            work_dir_lock: None,
        }
    }

    fn targets_dir(&self) -> PathBuf {
        self.work_dir.join("targets")
    }

    /// The dependency store: one directory per build key (see `depstore`).
    fn depstore_root(&self) -> PathBuf {
        self.work_dir.join("depstore")
    }

    /// Where purged target dirs wait to be deleted in the background.
    fn trash_dir(&self) -> PathBuf {
        self.work_dir.join("trash")
    }

    /// The source directory of a slot: a job's prepared source is moved in for its steps. It is
    /// the same directory for every job of the slot, so containers can be created before the job
    /// (and its crate) is known.
    fn slot_source_dir(&self, slot: u32) -> PathBuf {
        self.prepare.sources_dir.join(format!("slot-{slot}"))
    }
}

/// Why a [`DockerExecutor`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DockerExecutorError {
    #[error("invalid executor configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Counters of what the executor did, for tests, benchmarks and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Jobs run to the end (not cancelled).
    pub jobs: u64,
    /// Sides re-run in a clean target dir because the classification saw E0464.
    pub contaminated_reruns: u64,
    /// Slot purges because the slot last served another experiment.
    pub purges_experiment_change: u64,
    /// Slot purges because the disk was past the high-water mark.
    pub purges_high_water: u64,
    /// Slot purges because target dir reuse is off.
    pub purges_no_reuse: u64,
    /// Sides that ran in a spare container created ahead of the job.
    pub spare_hits: u64,
    /// Deps-only builds run (shared dependency builds).
    pub deps_builds: u64,
    /// Units the store had for a side before its deps-only build.
    pub deps_units_reused: u64,
    /// Units deps-only builds added to the store.
    pub deps_units_stored: u64,
    /// Units removed from the store to keep it within its size.
    pub deps_units_evicted: u64,
    /// Sides re-run in a clean target dir because a unit linked from the store had to be rebuilt.
    pub store_conflict_reruns: u64,
    /// Slot purges before a job because shared dependency builds are on.
    pub purges_shared_deps: u64,
    /// Sides whose container was created for the job (no spare, or one with other mounts or
    /// limits).
    pub spare_misses: u64,
}

/// The real executor (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct DockerExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("work_dir", &self.inner.config.work_dir)
            .field("slots", &self.inner.config.slots)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: DockerExecutorConfig,
    sandbox: Sandbox,
    spool: Arc<UploadSpool>,
    preparer: Preparer,
    permits: Arc<Semaphore>,
    free_slots: Mutex<Vec<u32>>,
    /// `cargo -V` of each toolchain directory, asked once.
    host_toolchains: tokio::sync::Mutex<HashMap<PathBuf, HostToolchain>>,
    /// Serialises Miri sysroot builds.
    miri_setup: tokio::sync::Mutex<()>,
    stats: Mutex<ExecutorStats>,
    /// Spare containers, created ahead for each slot's next job: one per side.
    spares: Mutex<HashMap<(u32, Side), Spare>>,
    /// Container work done after a job (removals, spare creation).
    background: tokio_util::task::TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a side produced, before its log is stored.
struct SideRun {
    outcome: Outcome,
    classification: Option<Classification>,
    steps: Vec<(String, Duration)>,
    step_lines: Vec<String>,
    peak_memory_bytes: u64,
    body: Vec<u8>,
    duration: Duration,
}

impl SideRun {
    fn error(reason: String, body: Vec<u8>, duration: Duration) -> Self {
        SideRun {
            outcome: Outcome::Error { reason },
            classification: None,
            steps: Vec::new(),
            step_lines: Vec::new(),
            peak_memory_bytes: 0,
            body,
            duration,
        }
    }
}

/// How long a cancelled job may take to remove its container before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(15);

/// A slot taken by one job; handed back when dropped.
struct SlotGuard {
    inner: Arc<Inner>,
    index: u32,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        lock(&self.inner.free_slots).push(self.index);
    }
}

impl DockerExecutor {
    /// An executor over a connected sandbox (whose image the caller checked by connecting) and an
    /// open upload spool. Creates the work directory's parts.
    pub fn new(
        config: DockerExecutorConfig,
        sandbox: Sandbox,
        spool: Arc<UploadSpool>,
    ) -> Result<DockerExecutor, DockerExecutorError> {
        if config.slots == 0 {
            return Err(DockerExecutorError::Config(
                "slots must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.disk_high_water) {
            return Err(DockerExecutorError::Config(format!(
                "disk_high_water {} must be in [0, 1]",
                config.disk_high_water
            )));
        }
        if let Some(k) = config
            .sandbox_env
            .keys()
            .find(|k| k.is_empty() || !k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()))
        {
            return Err(DockerExecutorError::Config(format!(
                "sandbox_env: {k:?} is not a variable name"
            )));
        }
        for dir in [
            &config.work_dir,
            &config.targets_dir(),
            &config.trash_dir(),
            &config.depstore_root(),
        ] {
            std::fs::create_dir_all(dir).map_err(|source| DockerExecutorError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
            std::fs::set_permissions(
                dir,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
            )
            .map_err(|source| DockerExecutorError::Io {
                context: format!("chmod {}", dir.display()),
                source,
            })?;
        }
        let preparer =
            Preparer::new(config.prepare.clone(), spool.store().clone()).map_err(|source| {
                DockerExecutorError::Io {
                    context: "setting up crate preparation".into(),
                    source,
                }
            })?;
        // what an earlier run left in the trash
        let leftovers: Vec<PathBuf> = std::fs::read_dir(config.trash_dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        if !leftovers.is_empty() {
            std::thread::spawn(move || delete_trash(leftovers));
        }
        let slots = config.slots;
        Ok(DockerExecutor {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(slots as usize)),
                free_slots: Mutex::new((0..slots).rev().collect()),
                config,
                sandbox,
                spool,
                preparer,
                host_toolchains: tokio::sync::Mutex::new(HashMap::new()),
                miri_setup: tokio::sync::Mutex::new(()),
                stats: Mutex::new(ExecutorStats::default()),
                spares: Mutex::new(HashMap::new()),
                background: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    pub fn config(&self) -> &DockerExecutorConfig {
        &self.inner.config
    }

    /// The upload spool logs go through.
    pub fn spool(&self) -> &Arc<UploadSpool> {
        &self.inner.spool
    }

    pub fn stats(&self) -> ExecutorStats {
        lock(&self.inner.stats).clone()
    }

    /// Removes the spare containers kept for the slots' next jobs. Call it when the worker stops;
    /// whatever is missed is swept by the next start with the same owner.
    pub async fn shutdown(&self) {
        let spares: Vec<Spare> = lock(&self.inner.spares).drain().map(|(_, s)| s).collect();
        for spare in spares {
            if let Ok(Ok(container)) = spare.creation.await
                && let Err(e) = container.remove().await
            {
                tracing::warn!(error = %e, "could not remove a spare sandbox container");
            }
        }
    }

    /// Waits until the container work started after jobs so far (removals, spares being created)
    /// is done. For benchmarks and tests.
    pub async fn settle(&self) {
        self.inner.background.close();
        self.inner.background.wait().await;
        self.inner.background.reopen();
    }

    /// How many spare containers are kept (or being created) for the slots' next jobs.
    pub fn spare_count(&self) -> usize {
        lock(&self.inner.spares).len()
    }

    /// The target dir slot `slot` uses for `toolchain` (exists once a job ran there).
    pub fn target_dir(&self, slot: u32, toolchain: &Toolchain) -> PathBuf {
        self.inner
            .config
            .targets_dir()
            .join(format!("slot-{slot}"))
            .join(toolchain_dir_key(&toolchain.id()))
    }
}

impl Executor for DockerExecutor {
    fn run(&self, job: Assignment, cancel: CancellationToken) -> BoxFuture<'static, JobOutput> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let t0 = Instant::now();
            let work = Inner::run_job(inner.clone(), job, cancel.clone());
            let mut work = std::pin::pin!(work);
            let out = tokio::select! {
                out = &mut work => out,
                () = cancel.cancelled() => {
                    // the job notices the cancellation itself and removes its container; give it
                    // a moment, then drop it (a dropped container is removed from its `Drop`)
                    let _ = tokio::time::timeout(CANCEL_GRACE, &mut work).await;
                    None
                }
            };
            match out {
                Some(out) => {
                    lock(&inner.stats).jobs += 1;
                    out
                }
                None => {
                    let side = SideOutput::error("cancelled", t0.elapsed());
                    JobOutput {
                        start: side.clone(),
                        end: side,
                    }
                }
            }
        })
    }
}

impl Inner {
    async fn take_slot(self: &Arc<Self>) -> SlotGuard {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        let index = lock(&self.free_slots)
            .pop()
            .expect("a permit guarantees a free slot");
        SlotGuard {
            inner: self.clone(),
            index,
            _permit: permit,
        }
    }
}

fn sandbox_reason(e: &SandboxError) -> String {
    format!("sandbox: {e}")
}
