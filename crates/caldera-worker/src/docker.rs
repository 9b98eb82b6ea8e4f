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
//!    [`caldera_core::classify::classify_job`]; when that reports a contaminated target dir (E0464),
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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use caldera_core::classify::{Classification, StepKind, StepRun, Termination, classify_job};
use caldera_core::experiment::Mode;
use caldera_core::job::{JobSpec, Side};
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::{Toolchain, ToolchainSource};
use caldera_sandbox::{
    Container, JobMounts, Limits, Sandbox, SandboxError, StepCommand, StepResult, TimeoutKind,
    Timeouts, ToolchainMount, paths, resolve_toolchain,
};
use caldera_storage::{ObjectKey, Spool, keys};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::executor::{Assignment, Executor, JobOutput, SideOutput};
use crate::prepare::{
    HostToolchain, PrepareConfig, PrepareError, PrepareReport, PreparedCrate, Preparer,
};

/// Everything a [`DockerExecutor`] needs besides the engine and the spool.
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
    /// Fixed variables set in every step (chosen by the operator; nothing of the worker's own
    /// environment is passed). They cannot override the variables the executor sets.
    pub sandbox_env: BTreeMap<String, String>,
    /// How long to wait for a log to reach object storage before the side is reported as `error`.
    pub log_upload_timeout: Duration,
    pub prepare: PrepareConfig,
}

impl DockerExecutorConfig {
    /// Defaults: one slot, the sandbox's default limits and timeouts (4 GiB, 2 CPUs, 4096 pids;
    /// 15 min / 5 min), 5 MiB logs, an 80 % high-water mark, 10 minutes for log uploads.
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
            sandbox_env: BTreeMap::new(),
            log_upload_timeout: Duration::from_secs(600),
        }
    }

    fn targets_dir(&self) -> PathBuf {
        self.work_dir.join("targets")
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
    spool: Arc<Spool>,
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

/// A container being created (or made) for a job not yet known.
type Creation = tokio::task::JoinHandle<Result<Container, String>>;

/// A container being created, with what it mounts and its limits.
type Made = (JobMounts, Limits, Creation);

/// A spare container: what it mounts and its limits, so a job takes it only when they match.
struct Spare {
    mounts: JobMounts,
    limits: Limits,
    creation: Creation,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A resolved side: the toolchain spec, where it is on the host, and its mount name.
#[derive(Debug, Clone)]
struct SideToolchain {
    spec: Toolchain,
    dir: PathBuf,
    mount_name: String,
}

/// One step to run: which kind (for classification), a label and cargo's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub kind: StepKind,
    pub argv: Vec<String>,
}

/// A side ready for its container.
struct SideSetup {
    /// the log so far (miri's setup)
    body: Vec<u8>,
    commands: Vec<(StepKind, StepCommand)>,
    target: PathBuf,
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

/// Cargo's message format for steps that compile.
const MESSAGE_FORMAT: &str = "--message-format=json-diagnostic-rendered-ansi";

/// The cargo invocations of one side, in order (see the module docs): build-and-test is `build`,
/// `test --no-run`, `test` (without the last when tests are skipped); build-only `build`;
/// check-only `check --all-targets`; clippy `clippy --all-targets`; rustdoc `doc --no-deps`; miri
/// `miri test`. All run `--locked --offline`; compiling steps print JSON diagnostics; the
/// toolchain's `--target` and cargo flags are appended.
pub fn plan_steps(mode: Mode, skip_tests: bool, toolchain: &Toolchain) -> Vec<PlannedStep> {
    let step = |kind: StepKind, sub: &[&str], json: bool| {
        let mut argv: Vec<String> = std::iter::once("cargo")
            .chain(sub.iter().copied())
            .chain(["--locked", "--offline"])
            .map(String::from)
            .collect();
        if json {
            argv.push(MESSAGE_FORMAT.into());
        }
        if let Some(target) = &toolchain.target {
            argv.push("--target".into());
            argv.push(target.clone());
        }
        if let Some(flags) = &toolchain.cargoflags {
            argv.extend(flags.split_whitespace().map(String::from));
        }
        PlannedStep { kind, argv }
    };
    match mode {
        Mode::BuildAndTest => {
            let mut steps = vec![
                step(StepKind::Build, &["build"], true),
                step(StepKind::TestNoRun, &["test", "--no-run"], true),
            ];
            if !skip_tests {
                steps.push(step(StepKind::Test, &["test"], false));
            }
            steps
        }
        Mode::BuildOnly => vec![step(StepKind::Build, &["build"], true)],
        Mode::CheckOnly => vec![step(StepKind::Check, &["check", "--all-targets"], true)],
        Mode::Clippy => vec![step(StepKind::Clippy, &["clippy", "--all-targets"], true)],
        Mode::Rustdoc => vec![step(StepKind::Doc, &["doc", "--no-deps"], true)],
        Mode::Miri => {
            if skip_tests {
                // nothing to build without running: miri only interprets tests
                vec![step(StepKind::Check, &["check", "--all-targets"], true)]
            } else {
                vec![step(StepKind::Miri, &["miri", "test"], false)]
            }
        }
    }
}

/// `RUSTFLAGS`/`RUSTDOCFLAGS`-style value: the toolchain's flags, then `--cap-lints=<cap>`.
fn with_cap_lints(flags: Option<&str>, cap: &str) -> String {
    match flags.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => format!("{f} --cap-lints={cap}"),
        None => format!("--cap-lints={cap}"),
    }
}

/// A directory name for a toolchain id: readable prefix plus a hash, so ids differing only in
/// characters that are not kept still get different dirs.
fn toolchain_dir_key(id: &str) -> String {
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let hash = hex::encode(&Sha256::digest(id.as_bytes())[..6]);
    format!("{readable}-{hash}")
}

fn mount_name(source: &ToolchainSource) -> String {
    match source {
        ToolchainSource::Rustup(name)
            if name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
        {
            name.clone()
        }
        _ => "toolchain".into(),
    }
}

fn termination(r: &StepResult) -> Option<Termination> {
    match (r.timed_out, r.oom_killed, r.exit_code) {
        (Some(TimeoutKind::Total), _, _) => Some(Termination::Timeout),
        (Some(TimeoutKind::NoOutput), _, _) => Some(Termination::NoOutputTimeout),
        (None, true, _) => Some(Termination::OomKilled),
        (None, false, Some(code)) => {
            Some(Termination::Exited(i32::try_from(code).unwrap_or(i32::MAX)))
        }
        (None, false, None) => None,
    }
}

/// Removes everything inside `dir` (keeping `dir`, which may be a live bind mount).
/// Removes the container of `creation` once it exists.
fn discard(creation: Creation) {
    tokio::spawn(async move {
        if let Ok(Ok(container)) = creation.await
            && let Err(e) = container.remove().await
        {
            tracing::warn!(error = %e, "could not remove a sandbox container");
        }
    });
}

/// Creates `dir` (mode 0755, so the sandbox user can read what is moved in) if needed.
async fn make_dir_for_sandbox(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).await
}

/// Moves everything in `from` into the (emptied) `to` by renaming (both are in the preparer's
/// sources dir), so the cost does not grow with the crate's size. `to` itself stays: containers
/// bind-mount it.
async fn move_tree_contents(from: PathBuf, to: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            std::fs::rename(entry.path(), to.join(entry.file_name()))?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Moves what is in `dir` into `trash` (renames: instant however big a target dir is) and returns
/// the moved paths, for deletion in the background; with `keep_subdirs`, the subdirectories stay
/// and their contents move instead. What cannot be renamed (another file system) is deleted here.
fn move_to_trash(dir: &Path, keep_subdirs: bool, trash: &Path) -> std::io::Result<Vec<PathBuf>> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut moved = Vec::new();
    for entry in entries {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        if is_dir && keep_subdirs {
            moved.extend(move_to_trash(&entry.path(), false, trash)?);
            continue;
        }
        let to = trash.join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        match std::fs::rename(entry.path(), &to) {
            Ok(()) => moved.push(to),
            Err(_) if is_dir => std::fs::remove_dir_all(entry.path())?,
            Err(_) => std::fs::remove_file(entry.path())?,
        }
    }
    Ok(moved)
}

/// Deletes what [`move_to_trash`] moved.
fn delete_trash(paths: Vec<PathBuf>) {
    for path in paths {
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a purged target dir");
        }
    }
}

/// The steps' `TMPDIR`, inside the target dir (see [`fresh_tmp_dir`]).
const TMP_DIR: &str = ".caldera-tmp";

/// Empties (or creates) the steps' temp dir inside `target`, writable by everyone (sticky): the
/// sandbox's `/tmp` is a `noexec` tmpfs, so doctest binaries, which rustdoc writes to `TMPDIR`
/// and runs, could not run there.
async fn fresh_tmp_dir(target: &Path) -> std::io::Result<()> {
    let dir = target.join(TMP_DIR);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::fs::create_dir(&dir).await?;
    tokio::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o1777),
    )
    .await
}

/// Used fraction of the filesystem holding `dir` (as `df` counts it), if known.
async fn disk_used_fraction(dir: PathBuf) -> Option<f64> {
    let st = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
        .await
        .ok()?
        .ok()?;
    let total = st.f_blocks as f64;
    let avail = st.f_bavail as f64;
    let used = (st.f_blocks - st.f_bfree) as f64;
    (total > 0.0).then(|| used / (used + avail))
}

fn fmt_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

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
        spool: Arc<Spool>,
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
        for dir in [&config.work_dir, &config.targets_dir(), &config.trash_dir()] {
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
    pub fn spool(&self) -> &Arc<Spool> {
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

/// What a worker with this rustup home offers: `docker`, `arch:<arch>`, and for each installed
/// toolchain `toolchain:<name>` (e.g. `toolchain:stable`) and `toolchain:<dir name>` (with the host
/// triple), plus `miri:<name>` when it has Miri. Names that are not valid capabilities are left
/// out.
pub async fn capabilities(rustup_home: &Path) -> Result<Vec<String>, SandboxError> {
    let mut caps = vec![
        "docker".to_owned(),
        format!("arch:{}", std::env::consts::ARCH),
    ];
    for tc in caldera_sandbox::list_toolchains(rustup_home).await? {
        caps.push(format!("toolchain:{}", tc.name));
        caps.push(format!("toolchain:{}", tc.dir_name));
        if tokio::fs::try_exists(tc.path.join("bin/cargo-miri"))
            .await
            .unwrap_or(false)
        {
            caps.push(format!("miri:{}", tc.name));
        }
    }
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| caldera_core::experiment::is_valid_requirement(c) && seen.insert(c.clone()));
    Ok(caps)
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
    /// Runs one job; `None` when cancelled.
    async fn run_job(
        self: Arc<Self>,
        job: Assignment,
        cancel: CancellationToken,
    ) -> Option<JobOutput> {
        let spec = &job.spec;
        let t0 = Instant::now();
        let slot = self.take_slot().await;
        let crate_key = spec.krate.without_checksum().to_string();

        // the toolchains
        let mut sides = Vec::new();
        for side in Side::BOTH {
            let tc = match side {
                Side::Start => &spec.start,
                Side::End => &spec.end,
            };
            sides.push(self.resolve_side(tc, spec.mode).await);
        }
        let start_host = match &sides[0] {
            Ok(tc) => self.host_toolchain(&tc.dir).await,
            Err(reason) => Err(PrepareError::Infra(reason.clone())),
        };

        // Containers first: the slot's spare, made ahead of the job, when it fits; otherwise one
        // is created now and starts while the crate is prepared. The source is mounted from the
        // slot's source dir, into which the prepared crate is moved below.
        let slot_src = self.config.slot_source_dir(slot.index);
        let slot_src_ready = make_dir_for_sandbox(&slot_src).await;
        if spec.run > 0 {
            // a confirmation run: fresh target dirs, whatever a previous one left there goes
            if let Err(e) = self.purge(self.fresh_targets(slot.index), false).await {
                tracing::warn!(error = %e, "could not empty the fresh target dirs");
            }
        }
        let mut creations: Vec<Option<Made>> = Vec::new();
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let mut creation = None;
            if let (Ok(tc), Ok(())) = (&sides[i], &slot_src_ready) {
                let target = self.job_target(slot.index, tc, spec.run);
                if spec.run > 0 {
                    // the slot's own dir, which the spare made after this job mounts
                    let _ = tokio::fs::create_dir_all(self.side_target(slot.index, tc)).await;
                }
                if tokio::fs::create_dir_all(&target).await.is_ok() {
                    let mounts = JobMounts {
                        source: slot_src.clone(),
                        target,
                        cargo_home: self.config.prepare.cargo_home.clone(),
                        toolchains: vec![ToolchainMount::new(&tc.mount_name, &tc.dir)],
                    };
                    let limits = self.side_limits(spec);
                    let handle = self.container_for(slot.index, side, &mounts, &limits);
                    creation = Some((mounts, limits, handle));
                }
            }
            creations.push(creation);
        }

        tracing::debug!(at = ?t0.elapsed(), "containers requested");
        // preparation, once for both sides
        let mut header_notes = Vec::new();
        let (report, prepared) = match start_host {
            Ok(host) => {
                // dropping the preparation kills its subprocesses and removes its directory
                tokio::select! {
                    r = self.preparer.prepare(&spec.experiment, &spec.krate, &host) => r,
                    () = cancel.cancelled() => {
                        self.keep_unused(slot.index, &mut creations);
                        return None;
                    }
                }
            }
            Err(e) => (PrepareReport::default(), Err(e)),
        };
        let prepared = match (prepared, slot_src_ready) {
            (Ok(p), Ok(())) => match async {
                // what the slot's previous job left goes to the trash first
                self.purge(slot_src.clone(), false).await?;
                move_tree_contents(p.source(), slot_src.clone()).await
            }
            .await
            {
                Ok(()) => Ok(p),
                Err(e) => Err(PrepareError::Infra(format!(
                    "moving the prepared source into {}: {e}",
                    slot_src.display()
                ))),
            },
            (Ok(_), Err(e)) => Err(PrepareError::Infra(format!(
                "the slot's source dir {}: {e}",
                slot_src.display()
            ))),
            (Err(e), _) => Err(e),
        };
        tracing::debug!(at = ?t0.elapsed(), "prepared and moved into the slot");
        if let Err(e) = self.prepare_slot(slot.index, &spec.experiment).await {
            header_notes.push(format!("target dir housekeeping failed: {e}"));
        }
        tracing::debug!(at = ?t0.elapsed(), "slot housekeeping done");

        // Both sides are set up first. The end side's container (when not a spare already) starts
        // while the start side's steps run, and the start side's log is made durable while the end
        // side runs.
        let mut plans = Vec::new();
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let plan = match (&sides[i], &prepared) {
                (Err(reason), _) => Err(SideRun::error(reason.clone(), Vec::new(), Duration::ZERO)),
                (_, Err(PrepareError::Crate(reason))) => Err(SideRun {
                    outcome: Outcome::PrepareFail {
                        reason: reason.clone(),
                    },
                    ..SideRun::error(String::new(), Vec::new(), Duration::ZERO)
                }),
                (_, Err(PrepareError::Broken(reason))) => Err(SideRun {
                    outcome: Outcome::Broken {
                        reason: reason.clone(),
                    },
                    ..SideRun::error(String::new(), Vec::new(), Duration::ZERO)
                }),
                (_, Err(PrepareError::Infra(reason))) => {
                    Err(SideRun::error(reason.clone(), Vec::new(), Duration::ZERO))
                }
                (Ok(tc), Ok(_)) => {
                    let target = self.job_target(slot.index, tc, spec.run);
                    tokio::select! {
                        r = self.setup_side(spec, tc, &target) => r,
                        () = cancel.cancelled() => {
                            self.keep_unused(slot.index, &mut creations);
                            return None;
                        }
                    }
                }
            };
            tracing::trace!(%side, ok = plan.is_ok(), "side set up");
            if plan.is_err()
                && let Some(made) = creations[i].take()
            {
                // not needed by this job: the next one can have it
                self.keep_spare(slot.index, side, made);
            }
            plans.push(plan);
        }

        tracing::debug!(at = ?t0.elapsed(), "sides set up");
        // containers used by this job, and the spares to make for the slot's next one: both wait
        // until the job's steps are over, so that no container work competes with them
        let mut used: Vec<Container> = Vec::new();
        let mut respare: Vec<(Side, JobMounts, Limits)> = Vec::new();
        let mut outputs: Vec<SideOutput> = Vec::new();
        let mut pending: Option<(ObjectKey, SideRun)> = None;
        for (i, (side, plan)) in Side::BOTH.into_iter().zip(plans).enumerate() {
            let tc_spec = match side {
                Side::Start => &spec.start,
                Side::End => &spec.end,
            };
            let side_t0 = Instant::now();
            let creation = creations[i].take();
            // the slot's next spare mounts the slot's own target dir, not a confirmation run's
            let slot_target = sides[i]
                .as_ref()
                .ok()
                .map(|tc| self.side_target(slot.index, tc));
            let work = async {
                match (plan, &prepared) {
                    (Err(run), _) => Some(run),
                    (Ok(setup), Ok(prepared)) => {
                        let container = match creation {
                            Some((mounts, limits, handle)) => {
                                let waited = Instant::now();
                                let container = handle.await.unwrap_or_else(|e| {
                                    Err(format!("creating the container: {e}"))
                                });
                                tracing::debug!(%side, waited = ?waited.elapsed(), "container ready");
                                if container.is_ok() {
                                    let mut mounts = mounts;
                                    if let Some(target) = slot_target.filter(|_| spec.run > 0) {
                                        mounts.target = target;
                                    }
                                    respare.push((side, mounts, limits));
                                }
                                container
                            }
                            None => Err("no container was created".to_owned()),
                        };
                        self.run_in(setup, container, spec, prepared, &cancel, &mut used)
                            .await
                    }
                    (Ok(_), Err(_)) => unreachable!("a side is set up only for a prepared crate"),
                }
            };
            // the previous side's log reaches storage while this side runs
            let (run, previous) = match pending.take() {
                Some((key, prev)) => {
                    let (run, stored) = tokio::join!(work, self.finish_store(key, &cancel));
                    (run, Some((prev, stored)))
                }
                None => (work.await, None),
            };
            let (run, previous) = match previous {
                Some((prev, Some(stored))) => (run, Some(side_output(prev, stored))),
                Some((_, None)) => (None, None), // cancelled
                None => (run, None),
            };
            let Some(mut run) = run else {
                // cancelled: the containers not used yet are the slot's next spares
                self.keep_unused(slot.index, &mut creations);
                self.after_job(slot.index, used, respare);
                self.drop_fresh_targets(slot.index, spec.run).await;
                return None;
            };
            outputs.extend(previous);
            run.duration = side_t0.elapsed();
            if i == 0 {
                // preparation happened once, on the start side's clock
                run.steps.splice(
                    0..0,
                    report
                        .steps
                        .iter()
                        .map(|(n, d)| (format!("prepare:{n}"), *d)),
                );
                run.duration += report.steps.iter().map(|(_, d)| *d).sum::<Duration>();
            }
            let log = self.compose_log(
                spec,
                side,
                tc_spec,
                sides[i].as_ref().ok(),
                prepared.as_ref().ok(),
                &report,
                &run,
                &header_notes,
            );
            // a confirmation run's logs, and the end side's of a calibration (A/A) run, have keys
            // of their own: they never replace the first run's or the start side's
            let same_toolchain_end = side == Side::End && spec.start == spec.end;
            match keys::run_log(
                &spec.experiment,
                &tc_spec.id(),
                &crate_key,
                spec.run,
                same_toolchain_end,
            ) {
                Ok(key) => match self.spool.enqueue_log(key.clone(), log).await {
                    Ok(_) => pending = Some((key, run)),
                    Err(e) => {
                        outputs.push(side_output(run, Err(e.to_string())));
                        pending = None;
                    }
                },
                Err(e) => outputs.push(side_output(run, Err(format!("no log key: {e}")))),
            }
        }
        self.after_job(slot.index, used, respare);
        self.drop_fresh_targets(slot.index, spec.run).await;
        if let Some((key, prev)) = pending.take() {
            outputs.push(side_output(prev, self.finish_store(key, &cancel).await?));
        }
        drop(prepared);
        drop(slot);
        tracing::debug!(elapsed = ?t0.elapsed(), "job finished");
        let end = outputs.pop()?;
        let start = outputs.pop()?;
        Some(JobOutput { start, end })
    }

    /// Empties `dir` (with `keep_subdirs`, empties its subdirectories, which spare containers
    /// mount); the contents are moved to the trash at once and deleted in the background.
    async fn purge(&self, dir: PathBuf, keep_subdirs: bool) -> std::io::Result<()> {
        let trash = self.config.trash_dir();
        let moved = tokio::task::spawn_blocking(move || move_to_trash(&dir, keep_subdirs, &trash))
            .await
            .map_err(std::io::Error::other)??;
        if !moved.is_empty() {
            self.background.spawn_blocking(move || delete_trash(moved));
        }
        Ok(())
    }

    /// Where `slot` keeps the fresh target dirs of a confirmation run (emptied before and after
    /// it): a run that confirms a regression or fix never reuses the slot's target dirs.
    fn fresh_targets(&self, slot: u32) -> PathBuf {
        self.config.targets_dir().join(format!("fresh-{slot}"))
    }

    /// The target dir a job of run `run` uses on `slot` for a side's toolchain: the slot's
    /// (reused across the crates of an experiment) for a first run, a fresh one for a
    /// confirmation run.
    fn job_target(&self, slot: u32, tc: &SideToolchain, run: u32) -> PathBuf {
        if run == 0 {
            self.side_target(slot, tc)
        } else {
            self.fresh_targets(slot)
                .join(toolchain_dir_key(&tc.spec.id()))
        }
    }

    /// After a confirmation run: its fresh target dirs go (in the background).
    async fn drop_fresh_targets(&self, slot: u32, run: u32) {
        if run > 0
            && let Err(e) = self.purge(self.fresh_targets(slot), false).await
        {
            tracing::warn!(error = %e, "could not remove a confirmation run's target dirs");
        }
    }

    /// The target dir of `slot` for a side's toolchain.
    fn side_target(&self, slot: u32, tc: &SideToolchain) -> PathBuf {
        self.config
            .targets_dir()
            .join(format!("slot-{slot}"))
            .join(toolchain_dir_key(&tc.spec.id()))
    }

    /// The configured limits plus the job's extra memory.
    fn side_limits(&self, spec: &JobSpec) -> Limits {
        Limits {
            memory_bytes: self.config.limits.memory_bytes
                + (u64::from(spec.extra_memory_mib) << 20),
            ..self.config.limits.clone()
        }
    }

    fn spawn_create(&self, mounts: JobMounts, limits: Limits) -> Creation {
        let sandbox = self.sandbox.clone();
        self.background.spawn(async move {
            sandbox
                .create(mounts, limits)
                .await
                .map_err(|e| sandbox_reason(&e))
        })
    }

    /// The container for a side of a job in `slot`: the slot's spare for that side when it has the
    /// same mounts and limits, otherwise one created now.
    fn container_for(
        &self,
        slot: u32,
        side: Side,
        mounts: &JobMounts,
        limits: &Limits,
    ) -> Creation {
        let spare = lock(&self.spares).remove(&(slot, side));
        if let Some(spare) = spare {
            if spare.mounts == *mounts && spare.limits == *limits {
                lock(&self.stats).spare_hits += 1;
                return spare.creation;
            }
            discard(spare.creation);
        }
        lock(&self.stats).spare_misses += 1;
        self.spawn_create(mounts.clone(), limits.clone())
    }

    /// After a job's steps: removes its containers and starts creating the slot's spares, in the
    /// background.
    fn after_job(&self, slot: u32, used: Vec<Container>, respare: Vec<(Side, JobMounts, Limits)>) {
        for container in used {
            self.background.spawn(async move {
                if let Err(e) = container.remove().await {
                    tracing::warn!(error = %e, "could not remove a sandbox container");
                }
            });
        }
        for (side, mounts, limits) in respare {
            self.replenish(slot, side, mounts, limits);
        }
    }

    /// Starts creating the slot's spare for its next job on `side`.
    fn replenish(&self, slot: u32, side: Side, mounts: JobMounts, limits: Limits) {
        let creation = self.spawn_create(mounts.clone(), limits.clone());
        self.keep_spare(slot, side, (mounts, limits, creation));
    }

    /// Keeps a container (being) made with `mounts` and `limits` for the slot's next job on
    /// `side`, replacing an older spare.
    fn keep_spare(&self, slot: u32, side: Side, (mounts, limits, creation): Made) {
        let spare = Spare {
            mounts,
            limits,
            creation,
        };
        if let Some(old) = lock(&self.spares).insert((slot, side), spare) {
            discard(old.creation);
        }
    }

    /// The containers a cancelled job did not use (nothing ran in them) become the slot's spares.
    fn keep_unused(&self, slot: u32, creations: &mut [Option<Made>]) {
        for (side, made) in Side::BOTH.into_iter().zip(creations.iter_mut()) {
            if let Some(made) = made.take() {
                self.keep_spare(slot, side, made);
            }
        }
    }

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

    /// Purges the slot's target dirs when it last served another experiment or the disk is past
    /// the high-water mark; records the experiment.
    async fn prepare_slot(&self, slot: u32, experiment: &str) -> std::io::Result<()> {
        let dir = self.config.targets_dir().join(format!("slot-{slot}"));
        tokio::fs::create_dir_all(&dir).await?;
        let marker = dir.join(".experiment");
        let previous = tokio::fs::read_to_string(&marker).await.ok();
        if previous.as_deref().is_some_and(|p| p != experiment) {
            tracing::info!(slot, "new experiment: purging the slot's target dirs");
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_experiment_change += 1;
        }
        if !self.config.reuse_target_dirs {
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_no_reuse += 1;
        } else if let Some(used) = disk_used_fraction(self.config.targets_dir()).await
            && used > self.config.disk_high_water
        {
            tracing::info!(
                slot,
                used = format!("{:.0}%", used * 100.0),
                "disk past the high-water mark: purging the slot's target dirs"
            );
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_high_water += 1;
        }
        if previous.as_deref() != Some(experiment) || !tokio::fs::try_exists(&marker).await? {
            tokio::fs::write(&marker, experiment).await?;
        }
        Ok(())
    }

    async fn resolve_side(&self, tc: &Toolchain, mode: Mode) -> Result<SideToolchain, String> {
        if !tc.patches.is_empty() {
            return Err(format!(
                "toolchain {}: [patch] overrides are not supported by the Docker executor",
                tc.id()
            ));
        }
        let dir = match &tc.source {
            ToolchainSource::Rustup(name) => {
                resolve_toolchain(&self.config.rustup_home, name)
                    .await
                    .map_err(|e| e.to_string())?
                    .path
            }
            ToolchainSource::Path(path) => PathBuf::from(path),
        };
        for tool in ["bin/cargo", "bin/rustc"] {
            if !tokio::fs::try_exists(dir.join(tool)).await.unwrap_or(false) {
                return Err(format!(
                    "toolchain {} at {} has no {tool}",
                    tc.id(),
                    dir.display()
                ));
            }
        }
        if mode == Mode::Miri
            && !tokio::fs::try_exists(dir.join("bin/cargo-miri"))
                .await
                .unwrap_or(false)
        {
            return Err(format!(
                "toolchain {} has no miri (no bin/cargo-miri in {}); install the `miri` and \
                 `rust-src` components or do not send miri jobs to this worker",
                tc.id(),
                dir.display()
            ));
        }
        Ok(SideToolchain {
            spec: tc.clone(),
            mount_name: mount_name(&tc.source),
            dir,
        })
    }

    async fn host_toolchain(&self, dir: &Path) -> Result<HostToolchain, PrepareError> {
        let mut cache = self.host_toolchains.lock().await;
        if let Some(tc) = cache.get(dir) {
            return Ok(tc.clone());
        }
        let tc = HostToolchain::probe(dir).await?;
        cache.insert(dir.to_owned(), tc.clone());
        Ok(tc)
    }

    /// The Miri sysroot of a toolchain, built on the host once, inside the shared cargo home (so
    /// the sandbox sees it read-only). Returns its path inside the container.
    async fn miri_sysroot(&self, tc: &SideToolchain, body: &mut Vec<u8>) -> Result<String, String> {
        let key = toolchain_dir_key(&tc.dir.display().to_string());
        let rel = format!("miri-sysroots/{key}");
        let host_dir = self.config.prepare.cargo_home.join(&rel);
        let ready = host_dir.join(".caldera-ready");
        let _guard = self.miri_setup.lock().await;
        if !tokio::fs::try_exists(&ready).await.unwrap_or(false) {
            let host = self
                .host_toolchain(&tc.dir)
                .await
                .map_err(|e| e.to_string())?;
            let mut report = PrepareReport::default();
            let result = self
                .preparer
                .miri_setup(&host, &host_dir, &mut report)
                .await;
            body.extend_from_slice(report.log.as_bytes());
            result.map_err(|e| e.to_string())?;
            tokio::fs::write(&ready, b"")
                .await
                .map_err(|e| format!("marking the miri sysroot ready: {e}"))?;
        }
        Ok(format!("{}/{rel}", paths::CARGO_HOME))
    }

    /// Everything a side needs before its container: the target dir, the environment, the steps,
    /// the mounts and limits. `Err` is the side's run when it cannot even start.
    async fn setup_side(
        &self,
        spec: &JobSpec,
        tc: &SideToolchain,
        target: &Path,
    ) -> Result<SideSetup, SideRun> {
        let t0 = Instant::now();
        let mut body = Vec::new();
        if let Err(e) = tokio::fs::create_dir_all(target).await {
            return Err(SideRun::error(
                format!("creating the target dir {}: {e}", target.display()),
                body,
                t0.elapsed(),
            ));
        }
        let mut env: BTreeMap<String, String> = self.config.sandbox_env.clone();
        let cap = spec.cap_lints.to_string();
        env.insert(
            "RUSTFLAGS".into(),
            with_cap_lints(tc.spec.rustflags.as_deref(), &cap),
        );
        env.insert(
            "RUSTDOCFLAGS".into(),
            with_cap_lints(tc.spec.rustdocflags.as_deref(), &cap),
        );
        env.insert("LC_ALL".into(), "C".into());
        env.insert("CARGO_TERM_COLOR".into(), "always".into());
        env.insert("CARGO_INCREMENTAL".into(), "0".into());
        // the sandbox's /tmp is a noexec tmpfs, where rustdoc cannot run the doctests it builds
        env.insert("TMPDIR".into(), format!("{}/{TMP_DIR}", paths::TARGET));
        if spec.mode == Mode::Miri && !spec.skip_tests {
            match self.miri_sysroot(tc, &mut body).await {
                Ok(sysroot) => {
                    env.insert("MIRI_SYSROOT".into(), sysroot);
                }
                Err(reason) => {
                    return Err(SideRun::error(
                        format!("miri setup: {reason}"),
                        body,
                        t0.elapsed(),
                    ));
                }
            }
        }
        let extra = Duration::from_secs(u64::from(spec.extra_timeout_secs));
        let timeouts = Timeouts {
            total: self.config.timeouts.total + extra,
            no_output: self.config.timeouts.no_output + extra,
        };
        let plan = plan_steps(spec.mode, spec.skip_tests, &tc.spec);
        let commands: Vec<(StepKind, StepCommand)> = plan
            .into_iter()
            .map(|p| {
                let mut cmd = StepCommand::new(p.argv)
                    .timeouts(timeouts.total, timeouts.no_output)
                    .log_cap(self.config.log_cap)
                    .toolchain(&tc.mount_name);
                cmd.env = env.clone();
                (p.kind, cmd)
            })
            .collect();

        Ok(SideSetup {
            body,
            commands,
            target: target.to_owned(),
        })
    }

    /// Runs a set-up side in its container; `None` when cancelled (the container is removed). Once
    /// the steps are done (nothing of the job runs in it any more: every step's leftovers were
    /// killed) the container goes to `used`, for removal after the job.
    async fn run_in(
        &self,
        setup: SideSetup,
        container: Result<Container, String>,
        spec: &JobSpec,
        prepared: &PreparedCrate,
        cancel: &CancellationToken,
        used: &mut Vec<Container>,
    ) -> Option<SideRun> {
        let t0 = Instant::now();
        let SideSetup {
            body,
            commands,
            target,
            ..
        } = setup;
        let mut body = body;
        let mut container = match container {
            Ok(c) => c,
            Err(reason) => return Some(SideRun::error(reason, body, t0.elapsed())),
        };
        let result = {
            let work = self.run_steps(
                &mut container,
                spec,
                prepared,
                &target,
                &commands,
                &mut body,
            );
            tokio::select! {
                r = work => Some(r),
                () = cancel.cancelled() => None,
            }
        };
        if result.is_some() {
            used.push(container);
        } else if let Err(e) = container.remove().await {
            tracing::warn!(error = %e, "could not remove a sandbox container");
        }
        let mut run = match result? {
            Ok(run) => run,
            Err(reason) => SideRun::error(reason, Vec::new(), Duration::ZERO),
        };
        let mut all = body;
        all.append(&mut run.body);
        run.body = all;
        run.duration = t0.elapsed();
        Some(run)
    }

    /// The steps of one side in a running container, re-run once from a clean target dir when the
    /// classification saw E0464. `Err` is an infrastructure failure.
    async fn run_steps(
        &self,
        container: &mut Container,
        spec: &JobSpec,
        prepared: &PreparedCrate,
        target: &Path,
        commands: &[(StepKind, StepCommand)],
        body: &mut Vec<u8>,
    ) -> Result<SideRun, String> {
        let mut steps_out = Vec::new();
        let mut step_lines = Vec::new();
        let mut peak = 0u64;
        for attempt in 0..2 {
            fresh_tmp_dir(target)
                .await
                .map_err(|e| format!("preparing the step temp dir: {e}"))?;
            let mut results: Vec<(StepKind, Termination, StepResult)> = Vec::new();
            // all steps in one exec: it stops after the first that fails
            let cmds: Vec<StepCommand> = commands.iter().map(|(_, c)| c.clone()).collect();
            let exec_t0 = Instant::now();
            let step_results = match container.exec_steps(&cmds).await {
                Ok(results) => results,
                Err(SandboxError::ContainerLost {
                    step, loss, steps, ..
                }) => {
                    // Killed or removed from outside: SIGKILL like an OOM kill, but nothing the
                    // crate did. The steps that ran go to the log; the side is an `error`.
                    let kind = commands
                        .get(step.saturating_sub(1))
                        .map_or(StepKind::Build, |(k, _)| *k);
                    let reason =
                        format!("the sandbox container was {loss} during step {step} ({kind})");
                    for (i, ((kind, cmd), result)) in commands.iter().zip(&steps).enumerate() {
                        let name = if attempt == 0 {
                            kind.as_str().to_owned()
                        } else {
                            format!("{kind} (clean re-run)")
                        };
                        let end = if i + 1 == steps.len() {
                            format!("interrupted: the sandbox container was {loss}")
                        } else {
                            termination(result).map_or_else(String::new, |t| t.to_string())
                        };
                        peak = peak.max(result.peak_memory_bytes.unwrap_or(0));
                        steps_out.push((name.clone(), result.duration));
                        step_lines.push(format!(
                            "{name:<24} {:>8.2} s  {end}{}",
                            result.duration.as_secs_f64(),
                            limit_notes(result, true)
                        ));
                        write_step_output(body, i, commands.len(), &name, cmd, result, &end);
                    }
                    return Ok(SideRun {
                        outcome: Outcome::Error { reason },
                        classification: None,
                        steps: steps_out,
                        step_lines,
                        peak_memory_bytes: peak,
                        body: Vec::new(),
                        duration: Duration::ZERO,
                    });
                }
                Err(e) => return Err(sandbox_reason(&e)),
            };
            tracing::debug!(
                elapsed = ?exec_t0.elapsed(),
                steps = ?step_results.iter().map(|r| r.duration).collect::<Vec<_>>(),
                "exec done"
            );
            for (i, ((kind, cmd), result)) in commands.iter().zip(step_results).enumerate() {
                let term = termination(&result).ok_or_else(|| {
                    format!(
                        "step {} ({}) ended without an exit status: the sandbox container died",
                        i + 1,
                        kind
                    )
                })?;
                peak = peak.max(result.peak_memory_bytes.unwrap_or(0));
                let name = if attempt == 0 {
                    kind.as_str().to_owned()
                } else {
                    format!("{kind} (clean re-run)")
                };
                steps_out.push((name.clone(), result.duration));
                step_lines.push(format!(
                    "{name:<24} {:>8.2} s  {term}{}",
                    result.duration.as_secs_f64(),
                    limit_notes(&result, true)
                ));
                write_step_output(
                    body,
                    i,
                    commands.len(),
                    &name,
                    cmd,
                    &result,
                    &term.to_string(),
                );
                let success = term.success();
                results.push((*kind, term, result));
                if !success {
                    break;
                }
            }
            let texts: Vec<std::borrow::Cow<'_, str>> =
                results.iter().map(|(_, _, r)| r.output.text()).collect();
            let runs: Vec<StepRun<'_>> = results
                .iter()
                .zip(&texts)
                .map(|((kind, term, result), text)| StepRun {
                    kind: *kind,
                    termination: *term,
                    output: text,
                    own_packages: &prepared.own_packages,
                    pids_limit_hit: result.pids_limit_hit,
                })
                .collect();
            let mut classification = classify_job(spec.mode, &runs, spec.skip_tests);
            if let Some(free) = crate::system::free_bytes(target.to_owned()).await
                && let Some(reason) = crate::system::host_disk_full(&classification.outcome, free)
            {
                // out of the worker's disk, not of a sandbox limit: the farm's fault
                let _ = writeln!(LogText(body), "\n==== error: {reason} ====");
                classification.outcome = Outcome::Error { reason };
            }
            if classification.contaminated_target_dir && attempt == 0 {
                let _ = writeln!(
                    LogText(body),
                    "\n==== E0464 (multiple candidates for a dependency): the reused target dir \
                     is contaminated; purging it and re-running this side in a clean one ===="
                );
                // only the contents go: the dir itself is the container's live bind mount
                self.purge(target.to_owned(), false)
                    .await
                    .map_err(|e| format!("purging the contaminated target dir: {e}"))?;
                lock(&self.stats).contaminated_reruns += 1;
                continue;
            }
            return Ok(SideRun {
                outcome: classification.outcome.clone(),
                classification: Some(classification),
                steps: steps_out,
                step_lines,
                peak_memory_bytes: peak,
                body: Vec::new(),
                duration: Duration::ZERO,
            });
        }
        unreachable!("the second attempt always returns")
    }

    #[allow(clippy::too_many_arguments)]
    fn compose_log(
        &self,
        spec: &JobSpec,
        side: Side,
        tc_spec: &Toolchain,
        tc: Option<&SideToolchain>,
        prepared: Option<&PreparedCrate>,
        report: &PrepareReport,
        run: &SideRun,
        notes: &[String],
    ) -> Vec<u8> {
        let mut head = String::new();
        let _ = writeln!(head, "caldera build log");
        let _ = writeln!(head, "crate:       {}", spec.krate);
        let _ = writeln!(head, "experiment:  {}", spec.experiment);
        let _ = writeln!(
            head,
            "side:        {side} — toolchain {}{}",
            tc_spec.id(),
            tc.map(|t| format!(" ({})", t.dir.display()))
                .unwrap_or_default()
        );
        let _ = writeln!(
            head,
            "mode:        {} (cap-lints {}, skip-tests {}, extra timeout {} s, extra memory {} MiB)",
            spec.mode,
            spec.cap_lints,
            spec.skip_tests,
            spec.extra_timeout_secs,
            spec.extra_memory_mib
        );
        let _ = writeln!(
            head,
            "sandbox:     image {}, memory {}, {} CPUs, {} pids, timeouts {} s / {} s no output",
            self.sandbox.config().image,
            fmt_bytes(self.config.limits.memory_bytes + (u64::from(spec.extra_memory_mib) << 20)),
            self.config.limits.cpus,
            self.config.limits.pids,
            self.config.timeouts.total.as_secs() + u64::from(spec.extra_timeout_secs),
            self.config.timeouts.no_output.as_secs() + u64::from(spec.extra_timeout_secs),
        );
        if let Some(p) = prepared {
            let _ = writeln!(
                head,
                "lockfile:    {} (sha256 {}), stored as {}",
                p.lockfile.as_str(),
                p.lockfile_sha256,
                p.lockfile_key
            );
        }
        let _ = writeln!(head, "steps:");
        for (name, d) in report.steps.iter().filter(|_| side == Side::Start) {
            let _ = writeln!(head, "  prepare:{name:<16} {:>8.2} s", d.as_secs_f64());
        }
        for line in &run.step_lines {
            let _ = writeln!(head, "  {line}");
        }
        let _ = writeln!(
            head,
            "outcome:     {}{}",
            run.outcome,
            match &run.outcome {
                Outcome::PrepareFail { reason }
                | Outcome::Broken { reason }
                | Outcome::Error { reason } => format!(" — {reason}"),
                Outcome::TestFail { failed_tests, .. } if !failed_tests.is_empty() =>
                    format!(" — {}", failed_tests.join(", ")),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            head,
            "duration:    {:.2} s, peak memory {}",
            run.duration.as_secs_f64(),
            fmt_bytes(run.peak_memory_bytes)
        );
        if let Some(c) = &run.classification {
            if c.diagnostics_changed {
                let _ = writeln!(
                    head,
                    "note:        a UI-test harness saw diagnostics change"
                );
            }
            for note in &c.notes {
                let _ = writeln!(head, "note:        {note}");
            }
        }
        for note in notes {
            let _ = writeln!(head, "note:        {note}");
        }
        let _ = writeln!(head, "\n==== prepare (shared by both sides) ====");
        head.push_str(&report.log);
        let mut log = head.into_bytes();
        log.extend_from_slice(&run.body);
        log
    }

    /// Waits until a spooled log is durable; `None` when cancelled.
    async fn finish_store(
        &self,
        key: ObjectKey,
        cancel: &CancellationToken,
    ) -> Option<Result<ObjectKey, String>> {
        let work = async {
            match tokio::time::timeout(
                self.config.log_upload_timeout,
                self.spool.wait_durable(&key),
            )
            .await
            {
                Ok(Ok(())) => Ok(key),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "not in object storage after {:?} (it stays in the upload spool)",
                    self.config.log_upload_timeout
                )),
            }
        };
        tokio::select! {
            r = work => Some(r),
            () = cancel.cancelled() => None,
        }
    }
}

/// A side's output once its log is stored (or could not be): a side whose log is lost is an
/// `error`, unless it already was one.
fn side_output(run: SideRun, stored: Result<ObjectKey, String>) -> SideOutput {
    let (outcome, log_key) = match stored {
        Ok(key) => (run.outcome, Some(key.to_string())),
        Err(e) if matches!(run.outcome, Outcome::Error { .. }) => {
            tracing::warn!(error = %e, "could not store the log of a failed side");
            (run.outcome, None)
        }
        Err(e) => (
            Outcome::Error {
                reason: format!("the log could not be stored: {e}"),
            },
            None,
        ),
    };
    SideOutput {
        outcome,
        steps: run.steps,
        peak_memory_bytes: run.peak_memory_bytes,
        log_key,
        duration: run.duration,
    }
}

/// `write!` into a byte log.
struct LogText<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for LogText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What a step's line adds to its termination: its peak memory (`with_peak`), and the limits the
/// cgroup counted it hitting: a failed fork at the pids limit, and an OOM kill in a step that
/// ended by a timeout (otherwise an OOM kill is the termination itself, "killed by the OOM
/// killer").
fn limit_notes(result: &StepResult, with_peak: bool) -> String {
    let mut notes = String::new();
    if let Some(p) = result.peak_memory_bytes.filter(|_| with_peak) {
        let _ = write!(notes, ", peak memory {}", fmt_bytes(p));
    }
    if result.oom_killed && result.timed_out.is_some() {
        // (otherwise the termination itself says "killed by the OOM killer")
        notes.push_str(", memory limit hit (OOM kill)");
    }
    if result.pids_limit_hit {
        notes.push_str(", pids limit hit");
    }
    notes
}

/// Appends step `i`'s section to a side's log: a header with its command, its output, and a
/// footer with how it ended.
fn write_step_output(
    body: &mut Vec<u8>,
    i: usize,
    of: usize,
    name: &str,
    cmd: &StepCommand,
    result: &StepResult,
    end: &str,
) {
    let _ = write!(
        LogText(body),
        "\n==== step {}/{of}: {name}: {} ====\n",
        i + 1,
        cmd.argv.join(" ")
    );
    body.extend_from_slice(result.output.as_bytes());
    if !result.output.as_bytes().ends_with(b"\n") {
        body.push(b'\n');
    }
    let _ = writeln!(
        LogText(body),
        "==== {name}: {end} after {:.2} s{}{} ====",
        result.duration.as_secs_f64(),
        limit_notes(result, false),
        if result.output.truncated() {
            format!(
                ", output truncated ({} of {} bytes omitted)",
                result.output.omitted_bytes(),
                result.output.output_bytes()
            )
        } else {
            String::new()
        }
    );
}

fn sandbox_reason(e: &SandboxError) -> String {
    format!("sandbox: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(s: &str) -> Toolchain {
        s.parse().unwrap()
    }

    fn argvs(steps: &[PlannedStep]) -> Vec<(StepKind, String)> {
        steps.iter().map(|s| (s.kind, s.argv.join(" "))).collect()
    }

    #[test]
    fn modes_map_to_cargo_commands() {
        let j = MESSAGE_FORMAT;
        let plain = tc("stable");
        assert_eq!(
            argvs(&plan_steps(Mode::BuildAndTest, false, &plain)),
            [
                (
                    StepKind::Build,
                    format!("cargo build --locked --offline {j}")
                ),
                (
                    StepKind::TestNoRun,
                    format!("cargo test --no-run --locked --offline {j}")
                ),
                (StepKind::Test, "cargo test --locked --offline".into()),
            ]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::BuildAndTest, true, &plain)).len(),
            2,
            "skip_tests drops the test run"
        );
        assert_eq!(
            argvs(&plan_steps(Mode::BuildOnly, false, &plain)),
            [(
                StepKind::Build,
                format!("cargo build --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::CheckOnly, false, &plain)),
            [(
                StepKind::Check,
                format!("cargo check --all-targets --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Clippy, false, &plain)),
            [(
                StepKind::Clippy,
                format!("cargo clippy --all-targets --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Rustdoc, false, &plain)),
            [(
                StepKind::Doc,
                format!("cargo doc --no-deps --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Miri, false, &plain)),
            [(StepKind::Miri, "cargo miri test --locked --offline".into())]
        );
        let flagged =
            tc("nightly+cargoflags=--features x --release+target=x86_64-unknown-linux-gnu");
        assert_eq!(
            argvs(&plan_steps(Mode::BuildOnly, false, &flagged)),
            [(
                StepKind::Build,
                format!(
                    "cargo build --locked --offline {j} --target x86_64-unknown-linux-gnu \
                     --features x --release"
                )
            )]
        );
    }

    #[tokio::test]
    async fn capabilities_name_the_installed_toolchains() {
        let home = tempfile::tempdir().unwrap();
        let tc = |dir: &str, tools: &[&str]| {
            let bin = home.path().join("toolchains").join(dir).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for t in tools {
                std::fs::write(bin.join(t), "").unwrap();
            }
        };
        std::fs::write(
            home.path().join("settings.toml"),
            "default_host_triple = \"x86_64-unknown-linux-gnu\"\n",
        )
        .unwrap();
        tc("stable-x86_64-unknown-linux-gnu", &["cargo", "rustc"]);
        tc(
            "nightly-x86_64-unknown-linux-gnu",
            &["cargo", "rustc", "cargo-miri"],
        );
        tc("broken-x86_64-unknown-linux-gnu", &["cargo"]);
        tc("Weird Name", &["cargo", "rustc"]);
        let caps = capabilities(home.path()).await.unwrap();
        assert_eq!(
            caps,
            [
                "docker".to_owned(),
                format!("arch:{}", std::env::consts::ARCH),
                "toolchain:nightly".into(),
                "toolchain:nightly-x86_64-unknown-linux-gnu".into(),
                "miri:nightly".into(),
                "toolchain:stable".into(),
                "toolchain:stable-x86_64-unknown-linux-gnu".into(),
            ]
        );
    }

    #[test]
    fn cap_lints_follow_the_toolchain_flags() {
        assert_eq!(with_cap_lints(None, "forbid"), "--cap-lints=forbid");
        assert_eq!(with_cap_lints(Some("  "), "warn"), "--cap-lints=warn");
        assert_eq!(
            with_cap_lints(Some("-Dwarnings"), "forbid"),
            "-Dwarnings --cap-lints=forbid"
        );
    }

    #[test]
    fn toolchain_dir_keys_are_distinct_and_tame() {
        let a = toolchain_dir_key("stable");
        let b = toolchain_dir_key("stable+rustflags=-Dwarnings");
        let c = toolchain_dir_key("stable+rustflags=-Dwarnings/");
        assert!(a.starts_with("stable-"));
        assert_ne!(b, c);
        for k in [&a, &b, &c] {
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                "{k}"
            );
        }
        assert_eq!(
            mount_name(&ToolchainSource::Rustup("nightly".into())),
            "nightly"
        );
        assert_eq!(
            mount_name(&ToolchainSource::Path("/opt/rust".into())),
            "toolchain"
        );
    }
}
