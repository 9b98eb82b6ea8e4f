//! Crate preparation on the worker host, before anything runs in the sandbox.
//!
//! The network is used here, by caldera itself, and never inside the sandbox. For one job:
//!
//! 1. **Source.** Registry crates are looked up in the registry index (the one cargo's
//!    configuration names, found by `tame-index` from the worker's cargo home, so no registry
//!    host is written here), downloaded through the index's `config.json` `dl` template, checked
//!    against the index's sha256 (and against the checksum in the crate id when it has one), and
//!    unpacked safely ([`unpack_crate`]: no absolute paths, no `..`, no links leaving the tree, no
//!    device files, size and file-count caps). Git crates are cloned and checked out at their
//!    revision (submodules included); local crates are copied.
//! 2. **Sanitising.** `.cargo/config*` and `rust-toolchain*` are removed anywhere in the tree (they
//!    would change what the toolchains build), and everything is made readable by the sandbox user.
//!    The root `Cargo.toml` is then *tidied* the way crater does ([`tidy_manifest`]): `[[bin]]`,
//!    `[[example]]`, `[[test]]` and `[[bench]]` entries whose source file the package does not
//!    ship (often left out at publish by older crates) are dropped, each named in the log, the
//!    rest of the file kept byte for byte — otherwise cargo refuses the whole manifest. This
//!    applies to every source (registry, git, local): a crate is judged on what it builds, not
//!    on stale target lists.
//! 3. **Lockfile, once per (experiment, crate).** If object storage holds
//!    `keys::lockfile(experiment, crate)`, that lockfile is used. Otherwise a shipped `Cargo.lock`
//!    is kept (brought up to date the way `cargo build` would), or one is generated with
//!    `cargo generate-lockfile`, with the job's start toolchain — and stored before anything is
//!    built, so both sides, and any retry of the job, build the same dependency versions.
//! 4. **Dependencies.** `cargo fetch --locked` downloads (and unpacks) every dependency into the
//!    worker's shared cargo home, which the sandbox mounts read-only; both sides then build
//!    `--locked --offline`. Whatever the fetch unpacked is then made readable by the sandbox
//!    user ([`make_dependencies_readable`]): tarballs may ship files with mode 0640, which cargo
//!    keeps, and the sandbox's unprivileged user could not read them.
//! 5. **Own packages.** `cargo metadata --no-deps` names the root package (or, for a virtual
//!    workspace, its members), which outcome classification needs to tell the crate's own errors
//!    from its dependencies'.
//!
//! Each job has its module: `registry` (index look-up, download, checksums), `unpack` (safe
//! unpacking), `git`, `local`, `sanitize`, `manifest` (tidying), `lockfile`, `cargo` (the host-side
//! cargo runs), `readable` (the cargo home made readable), `command` (running and logging host
//! commands) and `failures` (what a failed command means); this module holds the types and the
//! steps in order.
//!
//! Failures are sorted into three kinds ([`PrepareError`]), host command output through one table
//! of cargo's phrases (`failures::FAILURES`): what the crate makes impossible anywhere (invalid or
//! missing manifest, a dependency that does not exist or has only yanked matching versions) is
//! `broken`; other faults of the crate found by this preparation (invalid lockfile, checksum
//! mismatch, hostile archive) are `prepare-fail`; infrastructure failures (registry or storage
//! unreachable, disk full, timeouts) are `error`, so the job is retried. Environment faults are
//! never crate outcomes.
//!
//! # Why dependencies are fetched on the host and then made readable
//!
//! Crater (rustwide) runs `cargo fetch` inside its sandbox as the build user, so whatever cargo
//! unpacks belongs to the user that reads it. Here the fetch runs on the host, as the worker's
//! user, into one cargo home shared by every job and mounted read-only into the sandboxes, and
//! the files' modes are then normalised (`o+r`, `o+x` where `u+x`, directories `o+rx`) once per
//! unpacked directory, a marker file recording it. The choice keeps the sandbox's properties
//! intact: it never has network, and never has a writable cargo home that one crate's build
//! could poison for the next (a shared, writable registry cache would be exactly that). Fetching
//! in the sandbox would need either a network-enabled container per job or a per-job cargo home
//! (every dependency downloaded and unpacked again for every crate). The cost is this one walk
//! per newly unpacked dependency, and it relies on cargo's unpacking being the only writer of

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_core::experiment::LockfilePolicy;
use caldera_core::fingerprint::sha256_hex;
use caldera_storage::{ObjectKey, ObjectStore, keys};
use tame_index::index::IndexConfig;
use tokio::sync::OnceCell;

mod cargo;
mod command;
mod failures;
mod git;
mod local;
mod lockfile;
mod manifest;
mod readable;
mod registry;
mod sanitize;
mod unpack;

pub use cargo::HostToolchain;
pub use failures::failure_reason;
pub use lockfile::LockfileOrigin;
pub use manifest::tidy_manifest;
pub use readable::{READABLE_MARKER, ReadableStats, make_dependencies_readable};
pub use registry::RegistryCrate;
pub use unpack::{UnpackError, UnpackLimits, UnpackStats, unpack_crate};

/// Why a crate could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// The crate's fault, as this preparation found it (invalid lockfile, checksum mismatch,
    /// hostile archive, a version the index does not list): reported as `prepare-fail` with this
    /// reason.
    #[error("prepare-fail: {0}")]
    Crate(String),
    /// Something the crate itself makes impossible anywhere, with any toolchain and on any retry
    /// (an invalid manifest, no manifest, a dependency that does not exist or whose only matching
    /// versions are yanked): reported as `broken` with this reason.
    #[error("broken: {0}")]
    Broken(String),
    /// The host's or a service's fault: reported as `error` (the job is retried).
    #[error("error: {0}")]
    Infra(String),
}

/// How preparation behaves.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// The shared cargo home: registry index cache, downloaded and unpacked dependencies. Mounted
    /// read-only into every sandbox, so it must hold nothing secret (no credentials).
    pub cargo_home: PathBuf,
    /// Per-job source directories are created (and removed) here.
    pub sources_dir: PathBuf,
    /// Verified `.crate` files are kept here and reused while their checksum matches.
    pub downloads_dir: PathBuf,
    /// Where cargo's configuration hierarchy starts for index look-ups (as cargo would look from a
    /// crate in `sources_dir`).
    pub config_root: PathBuf,
    pub unpack_limits: UnpackLimits,
    /// Largest `.crate` download accepted.
    pub max_download_bytes: u64,
    /// Limit for each host command (git clone, cargo generate-lockfile, cargo fetch) and download.
    pub command_timeout: Duration,
    /// Most bytes of one host command's output kept in the log (head and tail).
    pub command_log_cap: usize,
}

impl PrepareConfig {
    /// Defaults under one work directory: `cargo-home/`, `sources/`, `downloads/`; 500 MiB /
    /// 50,000 entries per archive, 200 MiB downloads, 10 minutes per command, 256 KiB of output.
    pub fn new(work_dir: &Path) -> Self {
        PrepareConfig {
            cargo_home: work_dir.join("cargo-home"),
            sources_dir: work_dir.join("sources"),
            downloads_dir: work_dir.join("downloads"),
            config_root: work_dir.to_owned(),
            unpack_limits: UnpackLimits::default(),
            max_download_bytes: 200 << 20,
            command_timeout: Duration::from_secs(600),
            command_log_cap: 256 << 10,
        }
    }
}

/// What preparation did, for the job's log: one section of text and its timed steps.
#[derive(Debug, Clone, Default)]
pub struct PrepareReport {
    pub log: String,
    pub steps: Vec<(String, Duration)>,
}

impl PrepareReport {
    fn line(&mut self, line: impl AsRef<str>) {
        self.log.push_str(line.as_ref());
        self.log.push('\n');
    }
}

/// A prepared crate: its source directory (removed when this is dropped) and what the sandbox
/// needs to know about it.
#[derive(Debug)]
pub struct PreparedCrate {
    dir: JobDir,
    /// The lockfile both sides build with.
    pub lockfile: LockfileOrigin,
    pub lockfile_sha256: String,
    pub lockfile_key: ObjectKey,
    /// Package ids of the crate's own packages: the root package, or every member of a virtual
    /// workspace.
    pub own_packages: Vec<String>,
}

impl PreparedCrate {
    /// The crate's root directory (holding `Cargo.toml` and `Cargo.lock`).
    pub fn source(&self) -> PathBuf {
        self.dir.source()
    }
}

/// A per-job directory, removed (on a blocking thread) when dropped.
#[derive(Debug)]
struct JobDir {
    root: PathBuf,
}

impl JobDir {
    fn source(&self) -> PathBuf {
        self.root.join("src")
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let root = std::mem::take(&mut self.root);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&root)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %root.display(), error = %e, "could not remove a job's source directory");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

/// Prepares crates (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Preparer {
    inner: Arc<PreparerInner>,
}

#[derive(Debug)]
struct PreparerInner {
    config: PrepareConfig,
    store: Arc<dyn ObjectStore>,
    http: reqwest::Client,
    /// The registry's config.json, read once per process.
    index_config: OnceCell<IndexConfig>,
}

impl Preparer {
    /// A preparer that keeps lockfiles in `store`. Creates the directories it needs.
    pub fn new(config: PrepareConfig, store: Arc<dyn ObjectStore>) -> io::Result<Preparer> {
        for dir in [
            &config.cargo_home,
            &config.sources_dir,
            &config.downloads_dir,
        ] {
            std::fs::create_dir_all(dir)?;
            // the sandbox user must reach the sources and the cargo home
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(config.command_timeout)
            .user_agent(concat!("caldera-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(io::Error::other)?;
        Ok(Preparer {
            inner: Arc::new(PreparerInner {
                config,
                store,
                http,
                index_config: OnceCell::new(),
            }),
        })
    }

    pub fn config(&self) -> &PrepareConfig {
        &self.inner.config
    }

    /// Prepares `krate` for `experiment` (see the module docs) with the experiment's lockfile
    /// policy, using `start` for host-side cargo. Returns what happened for the log, and the
    /// prepared crate or why there is none.
    pub async fn prepare(
        &self,
        experiment: &str,
        krate: &CrateId,
        lockfile: LockfilePolicy,
        start: &HostToolchain,
    ) -> (PrepareReport, Result<PreparedCrate, PrepareError>) {
        let mut report = PrepareReport::default();
        let result = self
            .prepare_inner(experiment, krate, lockfile, start, &mut report)
            .await;
        if let Err(e) = &result {
            report.line(format!("preparation failed: {e}"));
        }
        (report, result)
    }

    async fn prepare_inner(
        &self,
        experiment: &str,
        krate: &CrateId,
        policy: LockfilePolicy,
        start: &HostToolchain,
        report: &mut PrepareReport,
    ) -> Result<PreparedCrate, PrepareError> {
        let crate_key = krate.without_checksum().to_string();
        let lockfile_key = keys::lockfile(experiment, &crate_key)
            .map_err(|e| PrepareError::Infra(format!("lockfile key: {e}")))?;

        let dir = self.new_job_dir().await?;
        let src = dir.source();

        // 1. the source
        let t0 = Instant::now();
        self.fetch_source(krate, start, &src, report).await?;
        report.steps.push(("source".into(), t0.elapsed()));

        // 2. sanitising
        sanitize_and_tidy(&src, report).await?;

        // 3. the lockfile
        let t0 = Instant::now();
        let (origin, lockfile_sha256) = self
            .settle_lockfile(&lockfile_key, policy, start, &src, report)
            .await?;
        report.steps.push(("lockfile".into(), t0.elapsed()));

        // 4. dependencies
        let t0 = Instant::now();
        self.fetch_dependencies(start, &src, report).await?;
        report.steps.push(("fetch".into(), t0.elapsed()));

        // 5. the crate's own packages
        let t0 = Instant::now();
        let own_packages = self.own_packages(start, &src, report).await?;
        report.steps.push(("metadata".into(), t0.elapsed()));

        // the fetch and metadata runs may have created files; keep everything readable
        sanitize::sanitize(&src).await?;

        Ok(PreparedCrate {
            dir,
            lockfile: origin,
            lockfile_sha256,
            lockfile_key,
            own_packages,
        })
    }

    /// Step 1: the crate's source into `src`, from wherever it comes.
    async fn fetch_source(
        &self,
        krate: &CrateId,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        match krate {
            CrateId::Registry {
                name,
                version,
                checksum,
            } => {
                self.fetch_registry_crate(name, version, checksum.as_deref(), start, src, report)
                    .await
            }
            CrateId::Git { url, rev } => self.clone_git(url, rev, src, report).await,
            CrateId::Local { path } => local::copy_local(path, src, report).await,
        }
    }

    /// Step 4: `cargo fetch --locked` into the shared cargo home, then whatever it unpacked made
    /// readable by the sandbox user ([`make_dependencies_readable`]).
    async fn fetch_dependencies(
        &self,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        self.cargo(start, src, &["fetch", "--locked"], report)
            .await?;
        let cargo_home = self.inner.config.cargo_home.clone();
        let made = tokio::task::spawn_blocking(move || make_dependencies_readable(&cargo_home))
            .await
            .map_err(|e| PrepareError::Infra(format!("permissions task: {e}")))?
            .map_err(|e| {
                PrepareError::Infra(format!(
                    "making the cargo home's dependency sources readable: {e}"
                ))
            })?;
        if made.dirs > 0 {
            report.line(format!(
                "made {} newly unpacked dependency source dirs readable by the sandbox user \
                 ({} modes changed)",
                made.dirs, made.changed
            ));
        }
        Ok(())
    }

    /// A new per-job directory (`sources_dir/job-RANDOM`, with `src/` in it), readable by the
    /// sandbox user.
    async fn new_job_dir(&self) -> Result<JobDir, PrepareError> {
        let base = &self.inner.config.sources_dir;
        for _ in 0..16 {
            let root = base.join(format!("job-{:016x}", rand::random::<u64>()));
            match tokio::fs::create_dir(&root).await {
                Ok(()) => {
                    let dir = JobDir { root };
                    tokio::fs::create_dir(dir.source())
                        .await
                        .map_err(|e| PrepareError::Infra(format!("creating a job dir: {e}")))?;
                    for p in [dir.root.clone(), dir.source()] {
                        tokio::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                            .await
                            .map_err(|e| {
                                PrepareError::Infra(format!("chmod {}: {e}", p.display()))
                            })?;
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(PrepareError::Infra(format!(
                        "creating a job dir in {}: {e}",
                        base.display()
                    )));
                }
            }
        }
        Err(PrepareError::Infra("could not name a job dir".into()))
    }
}

/// Step 2: the tree sanitised and its root manifest tidied ([`tidy_manifest`]), each removed
/// file and dropped target named in the log. A crate with no root `Cargo.toml` is broken.
async fn sanitize_and_tidy(src: &Path, report: &mut PrepareReport) -> Result<(), PrepareError> {
    let removed = sanitize::sanitize(src).await?;
    for path in &removed {
        report.line(format!("removed {}", path.display()));
    }
    if !tokio::fs::try_exists(src.join("Cargo.toml"))
        .await
        .unwrap_or(false)
    {
        return Err(PrepareError::Broken(
            "the crate has no Cargo.toml at its root".into(),
        ));
    }
    let dropped = manifest::tidy_root_manifest(src).await?;
    for target in &dropped {
        report.line(format!(
            "tidied Cargo.toml: dropped {target}: the package does not ship its file"
        ));
    }
    Ok(())
}
