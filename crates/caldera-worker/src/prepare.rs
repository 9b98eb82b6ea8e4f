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
//! Failures are sorted into three kinds ([`PrepareError`]), host command output through one table
//! of cargo's phrases (`FAILURES`): what the crate makes impossible anywhere (invalid or missing
//! manifest, a dependency that does not exist or has only yanked matching versions) is `broken`;
//! other faults of the crate found by this preparation (invalid lockfile, checksum mismatch,
//! hostile archive) are `prepare-fail`; infrastructure failures (registry or storage unreachable,
//! disk full, timeouts) are `error`, so the job is retried. Environment faults are never crate
//! outcomes.
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
//! the cargo home (the sandbox's mount is read-only, and no crate code runs on the host).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caldera_core::crates::CrateId;
use caldera_storage::{ObjectKey, ObjectStore, PutOptions, StorageError, keys};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tame_index::index::{FileLock, IndexConfig, IndexLocation, IndexPath, IndexUrl, SparseIndex};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

/// Limits of [`unpack_crate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most bytes of file content in one archive.
    pub max_total_bytes: u64,
    /// Most entries (files, directories, links) in one archive.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// 500 MiB and 50,000 entries.
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 500 << 20,
            max_entries: 50_000,
        }
    }
}

/// What [`unpack_crate`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnpackStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Why an archive was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive is malformed or hostile: the crate's fault.
    #[error("{0}")]
    Invalid(String),
    /// Writing the files failed (disk full, permissions): the host's fault.
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn invalid(msg: impl Into<String>) -> UnpackError {
    UnpackError::Invalid(msg.into())
}

/// Counts the bytes read through it and fails past a cap (a decompression bomb stops here, not
/// when the disk is full).
struct CappedReader<R> {
    inner: R,
    read: u64,
    cap: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.cap {
            return Err(io::Error::other(format!(
                "the archive decompresses to more than {} bytes",
                self.cap
            )));
        }
        Ok(n)
    }
}

/// The path of an archive entry below the `prefix` directory, as plain components: the prefix
/// itself is `Some(empty)`; anything absolute, with `..`, or outside the prefix is refused.
fn entry_rel_path(path: &Path, prefix: &str) -> Result<PathBuf, UnpackError> {
    let mut comps = path.components().filter(|c| *c != Component::CurDir);
    match comps.next() {
        Some(Component::Normal(first)) if first == prefix => {}
        Some(Component::RootDir | Component::Prefix(_)) => {
            return Err(invalid(format!(
                "archive entry {} is an absolute path",
                path.display()
            )));
        }
        _ => {
            return Err(invalid(format!(
                "archive entry {} is outside the crate's directory {prefix}/",
                path.display()
            )));
        }
    }
    let mut rel = PathBuf::new();
    for c in comps {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(format!(
                    "archive entry {} contains `..`",
                    path.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "archive entry {} is an absolute path",
                    path.display()
                )));
            }
        }
    }
    Ok(rel)
}

/// Whether a symlink at `rel` (relative to the tree's root) pointing at `target` stays inside the
/// tree, resolved lexically. Absolute targets never do.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() || target.as_os_str().is_empty() {
        return false;
    }
    // depth of the directory holding the link
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Refuses to write below a symlink: every existing ancestor of `rel` inside `dest` must be a real
/// directory. (Together with [`link_stays_inside`] this keeps every write inside `dest`.)
fn check_no_symlink_ancestor(dest: &Path, rel: &Path) -> Result<(), UnpackError> {
    let mut at = dest.to_path_buf();
    let parent_count = rel.components().count().saturating_sub(1);
    for c in rel.components().take(parent_count) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(format!(
                    "archive entry {} would be written through the symlink {}",
                    rel.display(),
                    at.strip_prefix(dest).unwrap_or(&at).display()
                )));
            }
            Ok(m) if !m.is_dir() => {
                return Err(invalid(format!(
                    "archive entry {} is below the file {}",
                    rel.display(),
                    at.strip_prefix(dest).unwrap_or(&at).display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(UnpackError::Io { path: at, source }),
        }
    }
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (not following symlinks) so a later entry can replace it.
fn clear_path(path: &Path) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(invalid(format!(
            "archive entry {} replaces a directory",
            path.display()
        ))),
        Ok(_) => std::fs::remove_file(path).map_err(io_at(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path)(e)),
    }
}

/// Unpacks a `.crate` archive (gzipped tar) whose entries all live under `prefix/`
/// (`NAME-VERSION/`) into `dest`, which must exist. Files get mode 0644 (0755 when executable),
/// directories 0755. Refuses absolute paths, `..`, entries outside `prefix/`, symlinks leaving the
/// tree, hard links (copied instead when they point at an earlier file of the archive), device
/// files and FIFOs, and archives over `limits`. Blocking: call it from `spawn_blocking`.
pub fn unpack_crate(
    archive: impl Read,
    dest: &Path,
    prefix: &str,
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    let cap = limits
        .max_total_bytes
        .saturating_add(limits.max_entries.saturating_mul(2048))
        .saturating_add(1 << 20);
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(CappedReader {
        inner: gz,
        read: 0,
        cap,
    });
    let mut stats = UnpackStats::default();
    let mut entries_seen = 0u64;
    let mut files_written: HashSet<PathBuf> = HashSet::new();
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("corrupt archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt archive: {e}")))?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(invalid(format!(
                "the archive has more than {} entries",
                limits.max_entries
            )));
        }
        let raw_path = entry
            .path()
            .map_err(|e| invalid(format!("corrupt archive entry name: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let rel = entry_rel_path(&raw_path, prefix)?;
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                continue;
            }
            return Err(invalid(format!(
                "archive entry {} replaces the crate's directory",
                raw_path.display()
            )));
        }
        check_no_symlink_ancestor(dest, &rel)?;
        let out = dest.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                if std::fs::symlink_metadata(&out).is_ok_and(|m| !m.is_dir()) {
                    return Err(invalid(format!(
                        "archive entry {} is a directory over a file",
                        rel.display()
                    )));
                }
                std::fs::create_dir_all(&out).map_err(io_at(&out))?;
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_at(&out))?;
                stats.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.header().size().unwrap_or(u64::MAX);
                if stats.bytes.saturating_add(size) > limits.max_total_bytes {
                    return Err(invalid(format!(
                        "the archive's files add up to more than {} bytes",
                        limits.max_total_bytes
                    )));
                }
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                clear_path(&out)?;
                let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&out)
                    .map_err(io_at(&out))?;
                let mut limited = (&mut entry).take(size);
                let written = copy_split_errors(&mut limited, &mut file, &out)?;
                if written != size {
                    return Err(invalid(format!(
                        "archive entry {} is truncated ({written} of {size} bytes)",
                        rel.display()
                    )));
                }
                let mode = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode))
                    .map_err(io_at(&out))?;
                stats.bytes += written;
                stats.files += 1;
                files_written.insert(rel);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| invalid(format!("corrupt link in archive: {e}")))?
                    .ok_or_else(|| invalid(format!("symlink {} has no target", rel.display())))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(invalid(format!(
                        "symlink {} -> {} points outside the crate",
                        rel.display(),
                        target.display()
                    )));
                }
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                clear_path(&out)?;
                std::os::unix::fs::symlink(&target, &out).map_err(io_at(&out))?;
                stats.symlinks += 1;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| invalid(format!("corrupt link in archive: {e}")))?
                    .ok_or_else(|| invalid(format!("hard link {} has no target", rel.display())))?
                    .into_owned();
                let target_rel = entry_rel_path(&target, prefix).map_err(|_| {
                    invalid(format!(
                        "hard link {} -> {} points outside the crate",
                        rel.display(),
                        target.display()
                    ))
                })?;
                if !files_written.contains(&target_rel) {
                    return Err(invalid(format!(
                        "hard link {} -> {} does not point at an earlier file of the archive",
                        rel.display(),
                        target.display()
                    )));
                }
                let from = dest.join(&target_rel);
                let size = std::fs::metadata(&from).map_err(io_at(&from))?.len();
                if stats.bytes.saturating_add(size) > limits.max_total_bytes {
                    return Err(invalid(format!(
                        "the archive's files add up to more than {} bytes",
                        limits.max_total_bytes
                    )));
                }
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                clear_path(&out)?;
                // a copy, never a real link: the link could not leave the tree, but a copy cannot
                // be changed through its twin either
                std::fs::copy(&from, &out).map_err(io_at(&out))?;
                stats.bytes += size;
                stats.files += 1;
                files_written.insert(rel);
            }
            other => {
                return Err(invalid(format!(
                    "archive entry {} has a refused type ({other:?}): only files, directories \
                     and links are allowed",
                    rel.display()
                )));
            }
        }
    }
    Ok(stats)
}

/// `io::copy`, telling read errors (a corrupt archive) from write errors (the host's disk).
fn copy_split_errors(
    from: &mut impl Read,
    to: &mut std::fs::File,
    path: &Path,
) -> Result<u64, UnpackError> {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(format!("corrupt archive: {e}"))),
        };
        to.write_all(&buf[..n]).map_err(io_at(path))?;
        total += n as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// Preparation

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

/// A toolchain on the host, as preparation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostToolchain {
    /// The toolchain directory (with `bin/cargo` and `bin/rustc`).
    pub path: PathBuf,
    /// What `cargo -V` says, e.g. `1.95.0`.
    pub cargo_version: semver::Version,
}

impl HostToolchain {
    /// Runs `<dir>/bin/cargo -V` to learn the cargo version.
    pub async fn probe(dir: &Path) -> Result<HostToolchain, PrepareError> {
        let cargo = dir.join("bin/cargo");
        let out = tokio::process::Command::new(&cargo)
            .arg("-V")
            .env_remove("RUSTUP_TOOLCHAIN")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| PrepareError::Infra(format!("running {} -V: {e}", cargo.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .nth(1)
            .and_then(|v| semver::Version::parse(v).ok())
            .filter(|_| out.status.success())
            .ok_or_else(|| {
                PrepareError::Infra(format!(
                    "{} -V printed {:?}, not a version",
                    cargo.display(),
                    text.trim()
                ))
            })?;
        Ok(HostToolchain {
            path: dir.to_owned(),
            cargo_version: version,
        })
    }
}

/// Where the lockfile a job builds with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockfileOrigin {
    /// Object storage already held one for this experiment and crate.
    Stored,
    /// The crate shipped one (brought up to date the way `cargo build` would); now stored.
    Shipped,
    /// Generated with `cargo generate-lockfile` by the start toolchain; now stored.
    Generated,
}

impl LockfileOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            LockfileOrigin::Stored => "stored",
            LockfileOrigin::Shipped => "shipped",
            LockfileOrigin::Generated => "generated",
        }
    }
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

/// A registry crate as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCrate {
    pub checksum: String,
    pub yanked: bool,
    pub download_url: String,
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

/// What a failed host command's output means (see [`FAILURES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The network, a service or the host failed, not the crate: [`PrepareError::Infra`].
    Infra,
    /// The crate makes a build impossible anywhere: [`PrepareError::Broken`], the reason
    /// prefixed with this label.
    Broken(&'static str),
    /// The crate's fault, for this preparation: [`PrepareError::Crate`], the reason prefixed with
    /// this label.
    Crate(&'static str),
}

/// How [`FAILURES`] recognises a kind of failure in a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// This phrase (lower case) appears anywhere in the output, whatever its case there.
    Phrase(&'static str),
    /// cargo's rustc-style manifest error: an `error:` line whose next line is
    /// ` --> …Cargo.toml:LINE:COL` (how cargo ≥ 1.80 reports TOML syntax and type errors, without
    /// saying "failed to parse manifest").
    ManifestLocation,
}

/// The one table of failures in host command output (cargo, git), in priority order: the first
/// entry that matches decides. Infrastructure comes first, since a network failure can surface
/// under a crate-looking message (`failed to load source for dependency` … `Could not resolve
/// host`). Output matching nothing is the crate's ([`PrepareError::Crate`], unlabelled).
///
/// The `Broken` phrases are cargo's own wording for what no toolchain and no retry can fix
/// (checked against cargo 1.95 on the `prepare-*` fixtures); crater files the same messages as
/// broken crates (invalid `Cargo.toml`, yanked or missing dependencies).
const FAILURES: &[(Pattern, FailureKind)] = {
    use FailureKind::{Broken, Crate, Infra};
    use Pattern::{ManifestLocation, Phrase};
    &[
        // the network, a service or the host
        (Phrase("could not resolve host"), Infra),
        (Phrase("couldn't resolve host"), Infra),
        (Phrase("failed to lookup address"), Infra),
        (Phrase("failed to resolve address"), Infra),
        (Phrase("temporary failure in name resolution"), Infra),
        (Phrase("name or service not known"), Infra),
        (Phrase("network failure seems to have happened"), Infra),
        (Phrase("network is unreachable"), Infra),
        (Phrase("no route to host"), Infra),
        (Phrase("connection refused"), Infra),
        (Phrase("connection reset"), Infra),
        (Phrase("connection timed out"), Infra),
        (Phrase("operation timed out"), Infra),
        (Phrase("timeout was reached"), Infra),
        (Phrase("ssl connect error"), Infra),
        (Phrase("spurious network error"), Infra),
        (Phrase("failed to connect to"), Infra),
        (Phrase("http2 framing layer"), Infra),
        (Phrase("503 service unavailable"), Infra),
        (Phrase("502 bad gateway"), Infra),
        (Phrase("504 gateway timeout"), Infra),
        (Phrase("429 too many requests"), Infra),
        (Phrase("no space left on device"), Infra),
        (Phrase("disk quota exceeded"), Infra),
        (Phrase("read-only file system"), Infra),
        (Phrase("too many open files"), Infra),
        (Phrase("cannot allocate memory"), Infra),
        // the lockfile: what was shipped (or stored) does not fit; another lockfile could
        (
            Phrase("failed to parse lock file"),
            Crate("invalid lockfile"),
        ),
        (
            Phrase("needs to be updated but --locked was passed"),
            Crate("invalid lockfile"),
        ),
        // the manifest: no cargo can read it
        (
            Phrase("failed to parse manifest"),
            Broken("invalid manifest"),
        ),
        (
            Phrase("could not parse input as toml"),
            Broken("invalid manifest"),
        ),
        (
            Phrase("failed to load manifest for workspace member"),
            Broken("invalid manifest"),
        ),
        (ManifestLocation, Broken("invalid manifest")),
        // dependencies: none exists (any more) that fits the requirement, or only yanked ones
        (
            Phrase("failed to select a version for the requirement"),
            Broken("no usable version of a dependency"),
        ),
        (
            Phrase("no matching package named"),
            Broken("missing dependency"),
        ),
        (
            Phrase("no matching package found"),
            Broken("missing dependency"),
        ),
        (
            Phrase("failed to load source for dependency"),
            Broken("missing dependency"),
        ),
    ]
};

/// The first entry of [`FAILURES`] that matches `output`, with what matched (for the reason).
fn failure_kind(output: &str) -> Option<(&'static str, FailureKind)> {
    let lower = output.to_ascii_lowercase();
    FAILURES.iter().find_map(|&(pattern, kind)| match pattern {
        Pattern::Phrase(p) => lower.contains(p).then_some((p, kind)),
        Pattern::ManifestLocation => {
            manifest_location(output).then_some(("--> Cargo.toml:LINE:COL", kind))
        }
    })
}

/// Whether an `error:` line of `output` is followed by a ` --> …Cargo.toml:LINE:COL` line.
fn manifest_location(output: &str) -> bool {
    let mut lines = output.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("error:") {
            continue;
        }
        let Some(loc) = lines.clone().next().and_then(|l| l.strip_prefix("--> ")) else {
            continue;
        };
        // PATH:LINE:COL, PATH ending in Cargo.toml
        let mut parts = loc.rsplitn(3, ':');
        let (col, line_no, path) = (parts.next(), parts.next(), parts.next());
        let numeric = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric(col)
            && numeric(line_no)
            && path.is_some_and(|p| p == "Cargo.toml" || p.ends_with("/Cargo.toml"))
        {
            return true;
        }
    }
    false
}

/// The [`PrepareError`] for a failed cargo command `label` that ended with `status`: its output
/// looked up in [`FAILURES`], the reason taken from it by [`failure_reason`].
fn classify_cargo_failure(output: &str, label: &str, status: &str) -> PrepareError {
    let reason = failure_reason(output);
    match failure_kind(output) {
        Some((phrase, FailureKind::Infra)) => PrepareError::Infra(format!(
            "`{label}` failed ({status}; the output mentions {phrase:?}): {reason}"
        )),
        Some((_, FailureKind::Broken(label))) => PrepareError::Broken(format!("{label}: {reason}")),
        Some((_, FailureKind::Crate(label))) => PrepareError::Crate(format!("{label}: {reason}")),
        None => PrepareError::Crate(reason),
    }
}

/// A short reason from cargo's (or git's) output: the first `error:`/`fatal:` line, followed by the
/// first line of the last `Caused by:` entry when there is one.
pub fn failure_reason(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim_end).collect();
    let first = lines.iter().position(|l| {
        let l = l.trim_start();
        l.starts_with("error:") || l.starts_with("fatal:") || l.starts_with("error[")
    });
    let mut reason = match first {
        Some(i) => lines[i].trim().to_owned(),
        None => lines
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .unwrap_or_default(),
    };
    // rustc-style location of a manifest error: ` --> Cargo.toml:7:6`
    if let Some(loc) = first
        .and_then(|i| lines.get(i + 1))
        .and_then(|l| l.trim_start().strip_prefix("--> "))
    {
        reason.push_str(&format!(" (at {})", loc.trim()));
    }
    if let Some(start) = first
        && let Some(caused) = lines[start..]
            .iter()
            .rposition(|l| l.trim() == "Caused by:")
        && let Some(cause) = lines[start + caused + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
    {
        reason.push_str(": ");
        reason.push_str(cause);
    }
    clip(&reason, 500)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Keeps the head and tail of long command output.
fn cap_output(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let half = cap / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[… {} bytes of output omitted …]\n{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// Environment variables of the worker that host-side cargo and git may see (network set-up).
fn passes_through(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "HOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ];
    EXACT.contains(&name)
        || [
            "CARGO_HTTP_",
            "CARGO_NET_",
            "CARGO_REGISTRIES_",
            "CARGO_REGISTRY_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

struct CommandOutput {
    success: bool,
    status: String,
    stdout: String,
    /// stdout, then stderr
    text: String,
}

/// Walks `root` without following symlinks: removes `.cargo/config*` and `rust-toolchain*`, and
/// makes everything readable (directories traversable) by every user. Returns what was removed.
fn sanitize_tree(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        std::fs::set_permissions(
            &dir,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777 | 0o755),
        )?;
        let in_dot_cargo = dir.file_name().is_some_and(|n| n == ".cargo");
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ty = entry.file_type()?;
            let doomed = (name.starts_with("rust-toolchain") && !ty.is_dir())
                || (in_dot_cargo && name.starts_with("config") && !ty.is_dir());
            if doomed {
                std::fs::remove_file(&path)?;
                removed.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
            } else if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                let want = mode | 0o444 | if mode & 0o111 != 0 { 0o111 } else { 0 };
                if want != mode {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))?;
                }
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// The marker [`make_dependencies_readable`] writes into an unpacked dependency's directory once
/// everything in it is readable by the sandbox user. It lives inside the directory, so when cargo
/// replaces a directory (it unpacks again when its own `.cargo-ok` is missing) the marker goes
/// with it and the new contents are walked again.
pub const READABLE_MARKER: &str = ".caldera-readable";

/// What [`make_dependencies_readable`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadableStats {
    /// Dependency directories walked (those without the marker).
    pub dirs: u64,
    /// Files and directories whose mode was changed.
    pub changed: u64,
}

/// Makes every dependency source cargo unpacked into `cargo_home` — `registry/src/*/*` and
/// `git/checkouts/*/*` — readable by every user: files get `o+r` (and `o+x` where `u+x`),
/// directories `o+rx`. Registry tarballs may ship files with mode 0640 (`fnv 1.0.7`,
/// `pin-utils 0.1.0`, `term 0.5.2`), which cargo keeps; fetched as root on the host, they would
/// be unreadable by the unprivileged sandbox user, and every crate depending on them would fail to
/// build for a reason that is not its own.
///
/// Only directories cargo has finished unpacking (holding its `.cargo-ok`) and not yet marked
/// ([`READABLE_MARKER`]) are walked, so a job walks only what its fetch added. Symlinks are never
/// followed, neither as directories to descend into nor as files to chmod (a chmod through a link
/// would change its target, possibly outside the tree). Blocking: call it from `spawn_blocking`.
pub fn make_dependencies_readable(cargo_home: &Path) -> io::Result<ReadableStats> {
    let mut stats = ReadableStats::default();
    for (top, base) in [("registry", "registry/src"), ("git", "git/checkouts")] {
        let base = cargo_home.join(base);
        let Some(meta) = real_dir(&base)? else {
            continue;
        };
        // the directories leading to the sources: cargo_home/registry/src, …/git/checkouts
        let top = cargo_home.join(top);
        if let Some(m) = real_dir(&top)? {
            stats.changed += u64::from(add_mode(&top, &m, 0o005)?);
        }
        stats.changed += u64::from(add_mode(&base, &meta, 0o005)?);
        for group in std::fs::read_dir(&base)? {
            let group = group?.path();
            // one per registry (`index.crates.io-…`) or per git repository (`name-hash`)
            let Some(meta) = real_dir(&group)? else {
                continue;
            };
            stats.changed += u64::from(add_mode(&group, &meta, 0o005)?);
            for krate in std::fs::read_dir(&group)? {
                let krate = krate?.path();
                if real_dir(&krate)?.is_none()
                    || !krate.join(".cargo-ok").is_file()
                    || std::fs::symlink_metadata(krate.join(READABLE_MARKER)).is_ok()
                {
                    continue;
                }
                stats.changed += make_tree_readable(&krate)?;
                let marker = krate.join(READABLE_MARKER);
                std::fs::write(&marker, b"")?;
                std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644))?;
                stats.dirs += 1;
            }
        }
    }
    Ok(stats)
}

/// The metadata of `path` when it is a directory and not a symlink; `None` when it is missing or
/// anything else.
fn real_dir(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Some(m)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Adds the `bits` to the mode of `path` (described by `meta`, never a symlink); returns whether
/// the mode changed.
fn add_mode(path: &Path, meta: &std::fs::Metadata, bits: u32) -> io::Result<bool> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode | bits == mode {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | bits))?;
    Ok(true)
}

/// Walks `root` (a real directory) without following symlinks: directories get `o+rx`, files
/// `o+r` and `o+x` where `u+x`; symlinks and special files are left alone. Returns how many modes
/// changed.
fn make_tree_readable(root: &Path) -> io::Result<u64> {
    let mut changed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        changed += u64::from(add_mode(&dir, &meta, 0o005)?);
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            // `file_type` of a directory entry does not follow symlinks
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(entry.path());
            } else if ty.is_file() {
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path)?;
                let mode = meta.permissions().mode();
                let bits = if mode & 0o100 != 0 { 0o005 } else { 0o004 };
                changed += u64::from(add_mode(&path, &meta, bits)?);
            }
        }
    }
    Ok(changed)
}

/// The kinds of target tables a manifest may list, with the directory where cargo looks for a
/// target's file when the entry names no `path`.
const TARGET_TABLES: &[(&str, &str)] = &[
    ("bin", "src/bin"),
    ("example", "examples"),
    ("test", "tests"),
    ("bench", "benches"),
];

/// The files cargo would build a `kind` target named `name` from, when its entry has no `path`
/// (relative to the package root). Generous on purpose: an entry is dropped only when none exists.
fn default_target_paths(kind: &str, dir: &str, name: &str, package: Option<&str>) -> Vec<String> {
    let mut paths = vec![format!("{dir}/{name}.rs"), format!("{dir}/{name}/main.rs")];
    if kind == "bin" {
        // the package's own binary, and cargo's legacy binary paths
        if package.is_none_or(|p| p == name) {
            paths.push("src/main.rs".into());
        }
        paths.push(format!("src/{name}.rs"));
        paths.push("src/bin/main.rs".into());
    }
    paths
}

/// Whether `path` (from a manifest) is relative and stays inside the package, so that looking for
/// it does not look outside.
fn inside_package(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Drops from a manifest the `[[bin]]`, `[[example]]`, `[[test]]` and `[[bench]]` entries whose
/// source file the package does not ship (`exists` answers for a path relative to the package
/// root), as crater does: older crates often list targets whose files were left out when they
/// were published, and cargo then refuses the whole manifest. Everything else in the text is kept
/// byte for byte. Returns the new text and a description of each dropped target, or `None` when
/// nothing is dropped (or the text is not TOML: cargo will say what is wrong with it). Entries
/// the check cannot judge (no name nor path, a path leaving the package) are kept;
/// auto-discovered targets are not listed, so never touched.
pub fn tidy_manifest(text: &str, exists: impl Fn(&str) -> bool) -> Option<(String, Vec<String>)> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let mut dropped = Vec::new();
    for &(kind, dir) in TARGET_TABLES {
        // what cargo would build this entry from; `None` when it cannot be judged (kept)
        let missing = |name: Option<&str>, path: Option<&str>| -> Option<String> {
            let candidates = match (path, name) {
                (Some(p), _) if inside_package(p) => vec![p.to_owned()],
                (Some(_), _) => return None,
                (None, Some(n)) if inside_package(n) => {
                    default_target_paths(kind, dir, n, package.as_deref())
                }
                (None, _) => return None,
            };
            if candidates.iter().any(|c| exists(c)) {
                return None;
            }
            Some(format!(
                "[[{kind}]] {} ({} not in the package)",
                name.map_or_else(|| "(unnamed)".to_owned(), |n| format!("`{n}`")),
                candidates.join(" or ")
            ))
        };
        let Some(item) = doc.get_mut(kind) else {
            continue;
        };
        let before = dropped.len();
        let now_empty = match item {
            toml_edit::Item::ArrayOfTables(array) => {
                array.retain(|t| {
                    let gone = missing(
                        t.get("name").and_then(|v| v.as_str()),
                        t.get("path").and_then(|v| v.as_str()),
                    );
                    dropped.extend(gone.clone());
                    gone.is_none()
                });
                array.is_empty()
            }
            // the inline form: `example = [{ name = "x" }]`
            toml_edit::Item::Value(toml_edit::Value::Array(array)) => {
                array.retain(|v| {
                    let Some(t) = v.as_inline_table() else {
                        return true;
                    };
                    let gone = missing(
                        t.get("name").and_then(|v| v.as_str()),
                        t.get("path").and_then(|v| v.as_str()),
                    );
                    dropped.extend(gone.clone());
                    gone.is_none()
                });
                array.is_empty()
            }
            _ => false,
        };
        if now_empty && dropped.len() > before {
            // no `[[kind]]` entry is left: the key goes too (cargo would take `kind = []` alike)
            doc.remove(kind);
        }
    }
    if dropped.is_empty() {
        return None;
    }
    Some((doc.to_string(), dropped))
}

/// [`tidy_manifest`] on the file `manifest`, written back when something was dropped; returns
/// what was dropped. A symlinked manifest is left alone (the write would go through the link).
fn tidy_manifest_file(manifest: &Path) -> io::Result<Vec<String>> {
    if std::fs::symlink_metadata(manifest)?
        .file_type()
        .is_symlink()
    {
        return Ok(Vec::new());
    }
    let root = manifest.parent().unwrap_or(Path::new("."));
    let Ok(text) = std::fs::read_to_string(manifest) else {
        // not UTF-8: cargo will say so
        return Ok(Vec::new());
    };
    match tidy_manifest(&text, |rel| root.join(rel).is_file()) {
        Some((tidied, dropped)) => {
            std::fs::write(manifest, tidied)?;
            Ok(dropped)
        }
        None => Ok(Vec::new()),
    }
}

/// Copies a local crate directory (not its top-level `target/`); symlinks are copied as links,
/// other special files skipped.
fn copy_tree(from: &Path, to: &Path, top: bool) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            if top && entry.file_name() == "target" {
                continue;
            }
            copy_tree(&entry.path(), &dest, false)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn storage_infra(what: &str, e: &StorageError) -> PrepareError {
    PrepareError::Infra(format!("{what}: {e}"))
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

    /// Prepares `krate` for `experiment` (see the module docs), using `start` for host-side cargo.
    /// Returns what happened for the log, and the prepared crate or why there is none.
    pub async fn prepare(
        &self,
        experiment: &str,
        krate: &CrateId,
        start: &HostToolchain,
    ) -> (PrepareReport, Result<PreparedCrate, PrepareError>) {
        let mut report = PrepareReport::default();
        let result = self
            .prepare_inner(experiment, krate, start, &mut report)
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
        match krate {
            CrateId::Registry {
                name,
                version,
                checksum,
            } => {
                self.fetch_registry_crate(name, version, checksum.as_deref(), start, &src, report)
                    .await?
            }
            CrateId::Git { url, rev } => self.clone_git(url, rev, &src, report).await?,
            CrateId::Local { path } => {
                let from = PathBuf::from(path);
                let to = src.clone();
                report.line(format!("copying local crate {path}"));
                let copied = tokio::task::spawn_blocking(move || {
                    if !from.is_dir() {
                        return Err(PrepareError::Crate(format!(
                            "local crate directory {} does not exist on this worker",
                            from.display()
                        )));
                    }
                    copy_tree(&from, &to, true).map_err(|e| {
                        PrepareError::Infra(format!("copying {}: {e}", from.display()))
                    })
                })
                .await
                .map_err(|e| PrepareError::Infra(format!("copy task: {e}")))?;
                copied?;
            }
        }
        report.steps.push(("source".into(), t0.elapsed()));

        // 2. sanitising
        let root = src.clone();
        let removed = tokio::task::spawn_blocking(move || sanitize_tree(&root))
            .await
            .map_err(|e| PrepareError::Infra(format!("sanitize task: {e}")))?
            .map_err(|e| PrepareError::Infra(format!("sanitizing the source tree: {e}")))?;
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
        let manifest = src.join("Cargo.toml");
        let dropped = tokio::task::spawn_blocking(move || tidy_manifest_file(&manifest))
            .await
            .map_err(|e| PrepareError::Infra(format!("tidy task: {e}")))?
            .map_err(|e| PrepareError::Infra(format!("tidying Cargo.toml: {e}")))?;
        for target in &dropped {
            report.line(format!(
                "tidied Cargo.toml: dropped {target}: the package does not ship its file"
            ));
        }

        // 3. the lockfile
        let t0 = Instant::now();
        let lock_path = src.join("Cargo.lock");
        let origin = match self.inner.store.get_bytes(&lockfile_key).await {
            Ok(bytes) => {
                tokio::fs::write(&lock_path, &bytes)
                    .await
                    .map_err(|e| PrepareError::Infra(format!("writing Cargo.lock: {e}")))?;
                report.line(format!("using the stored lockfile {lockfile_key}"));
                LockfileOrigin::Stored
            }
            Err(e) if e.is_not_found() => {
                if tokio::fs::try_exists(&lock_path).await.unwrap_or(false) {
                    // `cargo metadata` brings a stale shipped lockfile up to date minimally, as
                    // `cargo build` would for a user
                    self.cargo(start, &src, &["metadata", "--format-version", "1"], report)
                        .await?;
                    LockfileOrigin::Shipped
                } else {
                    self.cargo(start, &src, &["generate-lockfile"], report)
                        .await?;
                    LockfileOrigin::Generated
                }
            }
            Err(e) => return Err(storage_infra("reading the stored lockfile", &e)),
        };
        let lock_bytes = tokio::fs::read(&lock_path).await.map_err(|e| {
            PrepareError::Crate(format!("no Cargo.lock after lockfile generation: {e}"))
        })?;
        let lockfile_sha256 = sha256_hex(&lock_bytes);
        if origin != LockfileOrigin::Stored {
            self.inner
                .store
                .put_bytes(
                    &lockfile_key,
                    Bytes::from(lock_bytes),
                    PutOptions::content_type("text/plain; charset=utf-8"),
                )
                .await
                .map_err(|e| storage_infra("storing the lockfile", &e))?;
            report.line(format!(
                "stored the {} lockfile as {lockfile_key}",
                origin.as_str()
            ));
        }
        report.line(format!(
            "lockfile: {} (sha256 {lockfile_sha256})",
            origin.as_str()
        ));
        report.steps.push(("lockfile".into(), t0.elapsed()));

        // 4. dependencies
        let t0 = Instant::now();
        self.cargo(start, &src, &["fetch", "--locked"], report)
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
        report.steps.push(("fetch".into(), t0.elapsed()));

        // 5. the crate's own packages
        let t0 = Instant::now();
        let metadata = self
            .cargo(
                start,
                &src,
                &[
                    "metadata",
                    "--no-deps",
                    "--format-version",
                    "1",
                    "--locked",
                    "--offline",
                ],
                report,
            )
            .await?;
        let root_manifest = tokio::fs::canonicalize(src.join("Cargo.toml"))
            .await
            .unwrap_or_else(|_| src.join("Cargo.toml"));
        let own_packages = parse_own_packages(&metadata, &root_manifest)
            .map_err(|e| PrepareError::Crate(format!("cargo metadata: {e}")))?;
        report.steps.push(("metadata".into(), t0.elapsed()));

        // the fetch and metadata runs may have created files; keep everything readable
        let root = src.clone();
        tokio::task::spawn_blocking(move || sanitize_tree(&root))
            .await
            .map_err(|e| PrepareError::Infra(format!("sanitize task: {e}")))?
            .map_err(|e| PrepareError::Infra(format!("sanitizing the source tree: {e}")))?;

        Ok(PreparedCrate {
            dir,
            lockfile: origin,
            lockfile_sha256,
            lockfile_key,
            own_packages,
        })
    }

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

    /// Runs a host command with the configured timeout and records it in the report.
    async fn run_logged(
        &self,
        mut cmd: tokio::process::Command,
        label: &str,
        report: &mut PrepareReport,
    ) -> Result<CommandOutput, PrepareError> {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let t0 = Instant::now();
        let timeout = self.inner.config.command_timeout;
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                report.line(format!("$ {label}\n(timed out after {timeout:?})"));
                return Err(PrepareError::Infra(format!(
                    "`{label}` timed out after {timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(PrepareError::Infra(format!("running `{label}`: {e}"))),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut text = stdout.clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&stderr);
        }
        let status = out.status.to_string();
        let _ = writeln!(
            report.log,
            "$ {label}   ({:.2} s, {status})",
            t0.elapsed().as_secs_f64()
        );
        let shown = if label.contains("metadata") && out.status.success() {
            // the JSON is long and in the stored lockfile anyway; keep the log readable
            stderr.into_owned()
        } else {
            text.clone()
        };
        let shown = cap_output(&shown, self.inner.config.command_log_cap);
        report.log.push_str(&shown);
        if !shown.is_empty() && !shown.ends_with('\n') {
            report.log.push('\n');
        }
        Ok(CommandOutput {
            success: out.status.success(),
            status,
            stdout,
            text,
        })
    }

    /// Runs host-side cargo of `tc` in `dir` with a clean environment (the worker's cargo home and
    /// the network settings passed through) and returns its stdout. A failure whose output names
    /// a network, service or host problem is `Infra`; any other is the crate's (`Crate`).
    async fn cargo(
        &self,
        tc: &HostToolchain,
        dir: &Path,
        args: &[&str],
        report: &mut PrepareReport,
    ) -> Result<String, PrepareError> {
        self.cargo_with(tc, dir, args, &[], report).await
    }

    async fn cargo_with(
        &self,
        tc: &HostToolchain,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
        report: &mut PrepareReport,
    ) -> Result<String, PrepareError> {
        let bin = tc.path.join("bin");
        let mut cmd = tokio::process::Command::new(bin.join("cargo"));
        cmd.args(args)
            .current_dir(dir)
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k.to_str().is_some_and(passes_through)))
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            )
            .env("CARGO_HOME", &self.inner.config.cargo_home)
            .env("RUSTC", bin.join("rustc"))
            .env("CARGO_TERM_COLOR", "never")
            .env("LC_ALL", "C");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let label = format!("cargo {}", args.join(" "));
        let out = self.run_logged(cmd, &label, report).await?;
        if out.success {
            return Ok(out.stdout);
        }
        // name the crate's directory as the sandbox does, so reasons compare across jobs
        let shown = out.text.replace(&dir.display().to_string(), "/caldera/src");
        Err(classify_cargo_failure(&shown, &label, &out.status))
    }

    /// Builds Miri's sysroot for `tc` into `sysroot` on the host (it downloads the standard
    /// library's dependencies, which the sandbox cannot). A failure is `Infra`: it is nothing the
    /// crate did.
    pub async fn miri_setup(
        &self,
        tc: &HostToolchain,
        sysroot: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let dir = self.inner.config.cargo_home.clone();
        self.cargo_with(
            tc,
            &dir,
            &["miri", "setup"],
            &[("MIRI_SYSROOT", sysroot)],
            report,
        )
        .await
        .map(drop)
        .map_err(|e| match e {
            PrepareError::Crate(reason)
            | PrepareError::Broken(reason)
            | PrepareError::Infra(reason) => {
                PrepareError::Infra(format!("cargo miri setup: {reason}"))
            }
        })
    }

    async fn git(
        &self,
        args: &[&str],
        cwd: Option<&Path>,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/true")
            .env("LC_ALL", "C");
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let label = format!("git {}", args.join(" "));
        let out = self.run_logged(cmd, &label, report).await?;
        if out.success {
            return Ok(());
        }
        let reason = failure_reason(&out.text);
        Err(match failure_kind(&out.text) {
            Some((phrase, FailureKind::Infra)) => PrepareError::Infra(format!(
                "`{label}` failed (the output mentions {phrase:?}): {reason}"
            )),
            // git's failures are never cargo's manifest or dependency messages: the crate's
            _ => PrepareError::Crate(format!("`{label}` failed: {reason}")),
        })
    }

    async fn clone_git(
        &self,
        url: &str,
        rev: &str,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        // ids are validated (no leading '-', known URL schemes), and `--` ends the options anyway
        let dest = src.to_string_lossy().into_owned();
        self.git(&["clone", "--quiet", "--", url, &dest], None, report)
            .await?;
        self.git(
            &["checkout", "--quiet", "--detach", rev, "--"],
            Some(src),
            report,
        )
        .await?;
        if tokio::fs::try_exists(src.join(".gitmodules"))
            .await
            .unwrap_or(false)
        {
            self.git(
                &["submodule", "update", "--init", "--recursive", "--quiet"],
                Some(src),
                report,
            )
            .await?;
        }
        Ok(())
    }

    /// The registry index's entry for `name@version` (see the module docs).
    pub async fn registry_lookup(
        &self,
        name: &str,
        version: &semver::Version,
        cargo_version: &semver::Version,
    ) -> Result<RegistryCrate, PrepareError> {
        let config = &self.inner.config;
        let utf8 = |p: &Path| {
            tame_index::PathBuf::from_path_buf(p.to_owned())
                .map_err(|p| PrepareError::Infra(format!("{} is not a UTF-8 path", p.display())))
        };
        let config_root = utf8(&config.config_root)?;
        let cargo_home = utf8(&config.cargo_home)?;
        let cv = cargo_version.to_string();
        let cargo_version = cargo_version.clone();
        let index = tokio::task::spawn_blocking(move || {
            let url = IndexUrl::crates_io(Some(config_root), Some(&cargo_home), Some(&cv))
                .map_err(|e| PrepareError::Infra(format!("finding the registry index: {e}")))?;
            if !url.is_sparse() {
                return Err(PrepareError::Infra(format!(
                    "the registry index {} is not a sparse (HTTP) index; this worker reads only \
                     sparse indexes (set registries.crates-io.protocol = \"sparse\" in the cargo \
                     home's config.toml)",
                    url.as_str()
                )));
            }
            SparseIndex::new(IndexLocation {
                url,
                root: IndexPath::UserSpecified(cargo_home),
                cargo_version: Some(cargo_version),
            })
            .map_err(|e| PrepareError::Infra(format!("opening the registry index: {e}")))
        })
        .await
        .map_err(|e| PrepareError::Infra(format!("index task: {e}")))??;

        let index_config = self
            .inner
            .index_config
            .get_or_try_init(|| async {
                let url = format!("{}config.json", index.url());
                let body = self.http_get(&url, 1 << 20).await?;
                serde_json::from_slice::<IndexConfig>(&body).map_err(|e| {
                    PrepareError::Infra(format!("the registry's {url} is not valid: {e}"))
                })
            })
            .await?;
        if index_config.auth_required {
            return Err(PrepareError::Infra(
                "the registry requires authentication, which this worker does not support".into(),
            ));
        }

        let krate = tame_index::KrateName::cargo(name)
            .map_err(|e| PrepareError::Crate(format!("crate name {name:?}: {e}")))?;
        let url = index.crate_url(krate);
        let response = self
            .inner
            .http
            .get(&url)
            .header("cargo-protocol", "version=1")
            .header("accept", "text/plain")
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("registry index request {url}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(PrepareError::Infra(format!(
                "registry index request {url}: {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| PrepareError::Infra(format!("registry index response {url}: {e}")))?;
        let mut http_response = tame_index::external::http::Response::new(body.to_vec());
        *http_response.status_mut() =
            tame_index::external::http::StatusCode::from_u16(status.as_u16())
                .map_err(|e| PrepareError::Infra(format!("registry index status {status}: {e}")))?;
        let lock = FileLock::unlocked();
        let entry = index
            .parse_remote_response(krate, &http_response, false, &lock)
            .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?
            .ok_or_else(|| {
                PrepareError::Crate(format!("crate {name} is not in the registry index"))
            })?;
        let wanted = version.to_string();
        let iter = entry
            .iter()
            .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?;
        for v in iter {
            let v = v
                .deserialize()
                .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?;
            if v.version.as_str() == wanted {
                let download_url = v.download_url(index_config).ok_or_else(|| {
                    PrepareError::Infra(format!("no download URL for {name} {wanted}"))
                })?;
                return Ok(RegistryCrate {
                    checksum: hex::encode(v.checksum.0),
                    yanked: v.yanked,
                    download_url,
                });
            }
        }
        Err(PrepareError::Crate(format!(
            "version {wanted} of crate {name} is not in the registry index"
        )))
    }

    async fn http_get(&self, url: &str, cap: u64) -> Result<Vec<u8>, PrepareError> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(PrepareError::Infra(format!(
                "GET {url}: {}",
                response.status()
            )));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PrepareError::Infra(format!("GET {url}: {e}")))?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > cap {
                return Err(PrepareError::Infra(format!(
                    "GET {url}: more than {cap} bytes"
                )));
            }
        }
        Ok(body)
    }

    /// Downloads (or reuses) the verified `.crate` file of `name@version`; returns its path.
    async fn download_crate(
        &self,
        name: &str,
        version: &semver::Version,
        entry: &RegistryCrate,
        report: &mut PrepareReport,
    ) -> Result<PathBuf, PrepareError> {
        let config = &self.inner.config;
        let path = config.downloads_dir.join(format!("{name}-{version}.crate"));
        if let Ok(bytes) = tokio::fs::read(&path).await {
            let sum = tokio::task::spawn_blocking(move || sha256_hex(&bytes))
                .await
                .map_err(|e| PrepareError::Infra(format!("checksum task: {e}")))?;
            if sum == entry.checksum {
                report.line(format!(
                    "reusing the downloaded {name}-{version}.crate (sha256 {sum} verified)"
                ));
                return Ok(path);
            }
            let _ = tokio::fs::remove_file(&path).await;
        }
        let url = &entry.download_url;
        report.line(format!("downloading {url}"));
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("downloading {name} {version}: {e}")))?;
        let status = response.status();
        if status.as_u16() == 404 || status.as_u16() == 410 {
            return Err(PrepareError::Crate(format!(
                "downloading {name} {version}: the registry answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(PrepareError::Infra(format!(
                "downloading {name} {version}: the registry answered {status}"
            )));
        }
        let tmp = config
            .downloads_dir
            .join(format!(".{name}-{version}.{:x}.tmp", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| PrepareError::Infra(format!("creating {}: {e}", tmp.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    PrepareError::Infra(format!("downloading {name} {version}: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > config.max_download_bytes {
                    return Err(PrepareError::Crate(format!(
                        "{name} {version}: the .crate file is larger than {} bytes",
                        config.max_download_bytes
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .await
                    .map_err(|e| PrepareError::Infra(format!("writing {}: {e}", tmp.display())))?;
            }
            file.sync_all()
                .await
                .map_err(|e| PrepareError::Infra(format!("writing {}: {e}", tmp.display())))?;
            let sum = hex::encode(hasher.finalize());
            if sum != entry.checksum {
                return Err(PrepareError::Crate(format!(
                    "checksum mismatch for {name} {version}: the download has sha256 {sum}, the \
                     registry index says {}",
                    entry.checksum
                )));
            }
            report.line(format!("downloaded {size} bytes, sha256 {sum} verified"));
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| PrepareError::Infra(format!("moving {}: {e}", tmp.display())))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| path)
    }

    async fn fetch_registry_crate(
        &self,
        name: &str,
        version: &semver::Version,
        expected: Option<&str>,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let entry = self
            .registry_lookup(name, version, &start.cargo_version)
            .await?;
        report.line(format!(
            "registry index: {name} {version} sha256 {}{}",
            entry.checksum,
            if entry.yanked { " (yanked)" } else { "" }
        ));
        if let Some(expected) = expected
            && expected != entry.checksum
        {
            return Err(PrepareError::Crate(format!(
                "checksum mismatch for {name} {version}: the crate id says {expected}, the \
                 registry index says {}",
                entry.checksum
            )));
        }
        let archive = self.download_crate(name, version, &entry, report).await?;
        let prefix = format!("{name}-{version}");
        let limits = self.inner.config.unpack_limits;
        let dest = src.to_owned();
        let stats = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive)?;
            Ok::<_, io::Error>(unpack_crate(
                io::BufReader::new(file),
                &dest,
                &prefix,
                &limits,
            ))
        })
        .await
        .map_err(|e| PrepareError::Infra(format!("unpack task: {e}")))?
        .map_err(|e| PrepareError::Infra(format!("opening the downloaded crate: {e}")))?
        .map_err(|e| match e {
            UnpackError::Invalid(reason) => {
                PrepareError::Crate(format!("unsafe or corrupt .crate archive: {reason}"))
            }
            e @ UnpackError::Io { .. } => PrepareError::Infra(format!("unpacking: {e}")),
        })?;
        report.line(format!(
            "unpacked {} files, {} directories, {} symlinks, {} bytes",
            stats.files, stats.dirs, stats.symlinks, stats.bytes
        ));
        Ok(())
    }
}

/// The crate's own packages from `cargo metadata --no-deps --format-version 1` output: the root
/// package (the one whose manifest is `root_manifest`) when there is one — so a path dependency
/// that fails is `depends-on`, even when cargo counts it as a workspace member — and every
/// workspace member of a virtual workspace.
fn parse_own_packages(output: &str, root_manifest: &Path) -> Result<Vec<String>, String> {
    let json_line = output
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or("no JSON in the output")?;
    #[derive(serde::Deserialize)]
    struct Package {
        id: String,
        manifest_path: PathBuf,
    }
    #[derive(serde::Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
        workspace_members: Vec<String>,
    }
    let m: Metadata = serde_json::from_str(json_line).map_err(|e| e.to_string())?;
    match m
        .packages
        .into_iter()
        .find(|p| p.manifest_path == root_manifest)
    {
        Some(root) => Ok(vec![root.id]),
        None => Ok(m.workspace_members),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzipped tar built entry by entry, with headers written raw so hostile names survive.
    struct Builder {
        tar: tar::Builder<Vec<u8>>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                tar: tar::Builder::new(Vec::new()),
            }
        }

        fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            // set the name bytes directly: `set_path` refuses `..` and absolute paths
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_cksum();
            h
        }

        fn file(mut self, path: &str, content: &[u8]) -> Self {
            let h = Self::header(path, tar::EntryType::Regular, content.len() as u64, 0o644);
            self.tar.append(&h, content).unwrap();
            self
        }

        fn dir(mut self, path: &str) -> Self {
            let h = Self::header(path, tar::EntryType::Directory, 0, 0o755);
            self.tar.append(&h, &[][..]).unwrap();
            self
        }

        fn link(mut self, path: &str, kind: tar::EntryType, target: &str) -> Self {
            let mut h = Self::header(path, kind, 0, 0o777);
            let l = &mut h.as_old_mut().linkname;
            l[..target.len()].copy_from_slice(target.as_bytes());
            h.set_cksum();
            self.tar.append(&h, &[][..]).unwrap();
            self
        }

        fn special(mut self, path: &str, kind: tar::EntryType) -> Self {
            let h = Self::header(path, kind, 0, 0o644);
            self.tar.append(&h, &[][..]).unwrap();
            self
        }

        fn gz(self) -> Vec<u8> {
            let raw = self.tar.into_inner().unwrap();
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut enc, &raw).unwrap();
            enc.finish().unwrap()
        }
    }

    fn unpack(
        archive: &[u8],
        limits: UnpackLimits,
    ) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("src");
        std::fs::create_dir(&dest).unwrap();
        let r = unpack_crate(archive, &dest, "foo-1.0.0", &limits);
        (dir, r)
    }

    fn refused(archive: &[u8], needle: &str) {
        let (dir, r) = unpack(archive, UnpackLimits::default());
        match r {
            Err(UnpackError::Invalid(msg)) => {
                assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
            }
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
        // nothing escaped next to the destination
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["src"],
            "something was written outside the destination"
        );
    }

    #[test]
    fn unpacks_a_normal_crate() {
        let archive = Builder::new()
            .dir("foo-1.0.0/")
            .dir("foo-1.0.0/src/")
            .file("foo-1.0.0/Cargo.toml", b"[package]\nname = \"foo\"\n")
            .file("foo-1.0.0/src/lib.rs", b"pub fn f() {}\n")
            .link("foo-1.0.0/src/alias.rs", tar::EntryType::Symlink, "lib.rs")
            .link(
                "foo-1.0.0/README",
                tar::EntryType::Link,
                "foo-1.0.0/Cargo.toml",
            )
            .gz();
        let (dir, r) = unpack(&archive, UnpackLimits::default());
        let stats = r.unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                files: 3,
                dirs: 1,
                symlinks: 1,
                bytes: 23 + 14 + 23
            }
        );
        let src = dir.path().join("src");
        assert_eq!(
            std::fs::read_to_string(src.join("src/alias.rs")).unwrap(),
            "pub fn f() {}\n"
        );
        let readme = std::fs::symlink_metadata(src.join("README")).unwrap();
        assert!(readme.is_file(), "hard links become copies");
        assert_eq!(readme.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn refuses_hostile_archives() {
        refused(&Builder::new().file("/etc/evil", b"x").gz(), "absolute");
        refused(&Builder::new().file("foo-1.0.0/../evil", b"x").gz(), "`..`");
        refused(
            &Builder::new().file("other-1.0.0/x", b"x").gz(),
            "outside the crate's directory",
        );
        refused(
            &Builder::new()
                .link("foo-1.0.0/up", tar::EntryType::Symlink, "../../x")
                .gz(),
            "points outside",
        );
        refused(
            &Builder::new()
                .link("foo-1.0.0/abs", tar::EntryType::Symlink, "/etc")
                .gz(),
            "points outside",
        );
        // a symlink inside the tree, then a write through it that would land elsewhere
        refused(
            &Builder::new()
                .link("foo-1.0.0/s", tar::EntryType::Symlink, ".")
                .link("foo-1.0.0/s/s/t", tar::EntryType::Symlink, "../..")
                .gz(),
            "through the symlink",
        );
        refused(
            &Builder::new()
                .link("foo-1.0.0/h", tar::EntryType::Link, "/etc/passwd")
                .gz(),
            "outside the crate",
        );
        refused(
            &Builder::new()
                .link("foo-1.0.0/h", tar::EntryType::Link, "foo-1.0.0/missing")
                .gz(),
            "earlier file",
        );
        refused(
            &Builder::new()
                .special("foo-1.0.0/dev", tar::EntryType::Char)
                .gz(),
            "refused type",
        );
        refused(
            &Builder::new()
                .special("foo-1.0.0/fifo", tar::EntryType::Fifo)
                .gz(),
            "refused type",
        );
        refused(b"this is not gzip", "corrupt");
    }

    #[test]
    fn enforces_size_and_count_caps() {
        let big = vec![7u8; 10_000];
        let archive = Builder::new()
            .file("foo-1.0.0/a", &big)
            .file("foo-1.0.0/b", &big)
            .gz();
        let (_d, r) = unpack(
            &archive,
            UnpackLimits {
                max_total_bytes: 15_000,
                max_entries: 100,
            },
        );
        assert!(matches!(r, Err(UnpackError::Invalid(m)) if m.contains("more than 15000 bytes")));
        let mut b = Builder::new();
        for i in 0..11 {
            b = b.file(&format!("foo-1.0.0/f{i}"), b"x");
        }
        let (_d, r) = unpack(
            &b.gz(),
            UnpackLimits {
                max_total_bytes: 1 << 20,
                max_entries: 10,
            },
        );
        assert!(matches!(r, Err(UnpackError::Invalid(m)) if m.contains("more than 10 entries")));
        // a file whose header claims more than the cap is refused before anything is written
        let (_d, r) = unpack(
            &archive,
            UnpackLimits {
                max_total_bytes: 5_000,
                max_entries: 100,
            },
        );
        assert!(matches!(r, Err(UnpackError::Invalid(_))));
    }

    #[test]
    fn symlink_targets_are_checked_lexically() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(link_stays_inside(Path::new("a"), Path::new("c/d")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("/c")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("")));
    }

    #[test]
    fn sanitizing_removes_toolchain_and_cargo_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "Cargo.toml",
            "rust-toolchain",
            "rust-toolchain.toml",
            ".cargo/config",
            ".cargo/config.toml",
            ".cargo/keep.txt",
            "sub/.cargo/config.toml",
            "sub/rust-toolchain.toml",
            "sub/src/lib.rs",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let removed = sanitize_tree(root).unwrap();
        let removed: Vec<String> = removed
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            removed,
            [
                ".cargo/config",
                ".cargo/config.toml",
                "rust-toolchain",
                "rust-toolchain.toml",
                "sub/.cargo/config.toml",
                "sub/rust-toolchain.toml"
            ]
        );
        assert!(root.join(".cargo/keep.txt").exists());
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("sub/src/lib.rs"), 0o644);
        assert_eq!(mode("sub"), 0o755);
    }

    #[test]
    fn failure_reasons_name_the_error_and_its_cause() {
        let out = "    Updating index\nerror: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  TOML parse error at line 3, column 1\n    |\n";
        assert_eq!(
            failure_reason(out),
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`: TOML parse error at line 3, column 1"
        );
        assert_eq!(
            failure_reason(
                "error: no matching package named `x` found\nlocation searched: index\n"
            ),
            "error: no matching package named `x` found"
        );
        assert_eq!(failure_reason("just text\n\n"), "just text");
        assert_eq!(
            failure_reason("error: key with no value, expected `=`\n --> Cargo.toml:7:6\n  |\n"),
            "error: key with no value, expected `=` (at Cargo.toml:7:6)"
        );
    }

    /// cargo's real output (1.95) for the `prepare-*` fixtures and its other unfixable messages,
    /// and what each becomes.
    #[test]
    fn failures_are_sorted_by_one_table() {
        let kind = |out: &str| classify_cargo_failure(out, "cargo x", "exit status: 101");
        let broken = |out: &str, want: &str| match kind(out) {
            PrepareError::Broken(reason) => assert_eq!(reason, want, "{out}"),
            other => panic!("{out}: {other:?}"),
        };
        // prepare-bad-manifest: cargo ≥ 1.80 reports TOML errors rustc-style, with a location
        broken(
            "error: key with no value, expected `=`\n --> Cargo.toml:7:6\n  |\n7 | this line is not toml\n  |      ^\n",
            "invalid manifest: error: key with no value, expected `=` (at Cargo.toml:7:6)",
        );
        // a workspace member's
        broken(
            "error: invalid type: integer `3`, expected a version string\n --> m/Cargo.toml:5:7\n  |\nerror: failed to load manifest for workspace member `/x/m`\n",
            "invalid manifest: error: invalid type: integer `3`, expected a version string (at m/Cargo.toml:5:7)",
        );
        broken(
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  missing field `package.name`\n",
            "invalid manifest: error: failed to parse manifest at `/caldera/src/Cargo.toml`: missing field `package.name`",
        );
        broken(
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  can't find `gone` example at `examples/gone.rs` or `examples/gone/main.rs`.\n",
            "invalid manifest: error: failed to parse manifest at `/caldera/src/Cargo.toml`: can't find `gone` example at `examples/gone.rs` or `examples/gone/main.rs`.",
        );
        // prepare-missing-dep
        broken(
            "    Updating crates.io index\nerror: no matching package named `caldera-fixture-no-such-crate-7f3a9` found\nlocation searched: crates.io index\n",
            "missing dependency: error: no matching package named `caldera-fixture-no-such-crate-7f3a9` found",
        );
        // only yanked (or no) versions match
        broken(
            "error: failed to select a version for the requirement `fnv = \"=1.0.9\"`\ncandidate versions found which didn't match: 1.0.7, 1.0.6\n",
            "no usable version of a dependency: error: failed to select a version for the requirement `fnv = \"=1.0.9\"`",
        );
        // prepare-bad-lockfile: another lockfile would do, so the crate is not broken
        assert_eq!(
            kind("error: failed to parse lock file at: /caldera/src/Cargo.lock\n\nCaused by:\n  TOML parse error at line 1, column 6\n"),
            PrepareError::Crate(
                "invalid lockfile: error: failed to parse lock file at: /caldera/src/Cargo.lock: TOML parse error at line 1, column 6".into()
            )
        );
        // the network first, even under a crate-looking message
        let out = "error: failed to get `x` as a dependency\n\nCaused by:\n  failed to load source for dependency `x`\n\nCaused by:\n  failed to resolve address for github.com: Name or service not known; class=Net (12)\n";
        match kind(out) {
            PrepareError::Infra(reason) => assert!(
                reason.starts_with("`cargo x` failed (exit status: 101; the output mentions \"failed to resolve address\"): error: failed to get `x`"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            kind("error: failed to download\nCaused by:\n  [6] Could not resolve host: example"),
            PrepareError::Infra(_)
        ));
        // without a known phrase: the crate's, as the preparation found it
        assert_eq!(
            kind("error: something new\n"),
            PrepareError::Crate("error: something new".into())
        );
        // a location that is not a manifest's is no manifest error
        assert!(!manifest_location("error: x\n --> src/lib.rs:1:1\n"));
        assert!(!manifest_location("warning: x\n --> Cargo.toml:1:1\n"));
        assert!(!manifest_location("error: x\n --> Cargo.toml\n"));
        assert!(manifest_location("error: x\n  --> sub/Cargo.toml:12:3\n"));
    }

    /// A fake cargo home: one registry with one unpacked crate, one git checkout.
    fn fake_cargo_home() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let krate = home
            .path()
            .join("registry/src/index.example-0123/foo-1.0.0");
        std::fs::create_dir_all(krate.join("src/private")).unwrap();
        std::fs::write(krate.join(".cargo-ok"), "{\"v\":1}").unwrap();
        std::fs::write(krate.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::write(krate.join("src/lib.rs"), "").unwrap();
        std::fs::write(krate.join("src/private/tool.sh"), "").unwrap();
        std::fs::set_permissions(
            krate.join("src/lib.rs"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(
            krate.join("src/private/tool.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::set_permissions(
            krate.join("src/private"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let checkout = home.path().join("git/checkouts/bar-abcdef/1234567");
        std::fs::create_dir_all(&checkout).unwrap();
        std::fs::write(checkout.join(".cargo-ok"), "").unwrap();
        std::fs::write(checkout.join("lib.rs"), "").unwrap();
        std::fs::set_permissions(
            checkout.join("lib.rs"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        home
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn unpacked_dependencies_are_made_readable_once() {
        let home = fake_cargo_home();
        let krate = home
            .path()
            .join("registry/src/index.example-0123/foo-1.0.0");
        let checkout = home.path().join("git/checkouts/bar-abcdef/1234567");
        // a symlink pointing outside the cargo home, at a directory and at a file
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "").unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(
            outside.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), krate.join("src/out-dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), krate.join("src/out-file"))
            .unwrap();
        // a directory cargo has not finished unpacking (no .cargo-ok) is left for later
        let partial = home
            .path()
            .join("registry/src/index.example-0123/baz-0.1.0");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join("lib.rs"), "").unwrap();
        std::fs::set_permissions(
            partial.join("lib.rs"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();

        let stats = make_dependencies_readable(home.path()).unwrap();
        assert_eq!(stats.dirs, 2, "{stats:?}");
        assert_eq!(mode(&krate.join("src/lib.rs")), 0o644);
        assert_eq!(mode(&krate.join("src/private")), 0o755);
        assert_eq!(mode(&krate.join("src/private/tool.sh")), 0o755);
        assert_eq!(mode(&checkout.join("lib.rs")), 0o604);
        assert!(krate.join(READABLE_MARKER).is_file());
        assert!(checkout.join(READABLE_MARKER).is_file());
        // nothing outside was followed
        assert_eq!(mode(outside.path()), 0o700);
        assert_eq!(mode(&outside.path().join("secret")), 0o600);
        assert_eq!(mode(&partial.join("lib.rs")), 0o600);
        assert!(!partial.join(READABLE_MARKER).exists());

        // the marker spares a second walk: a file made unreadable since stays so
        std::fs::set_permissions(
            krate.join("src/lib.rs"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let stats = make_dependencies_readable(home.path()).unwrap();
        assert_eq!(stats, ReadableStats::default());
        assert_eq!(mode(&krate.join("src/lib.rs")), 0o600);
        // … and a directory cargo has since finished unpacking is walked
        std::fs::write(partial.join(".cargo-ok"), "").unwrap();
        let stats = make_dependencies_readable(home.path()).unwrap();
        assert_eq!(stats.dirs, 1, "{stats:?}");
        assert_eq!(mode(&partial.join("lib.rs")), 0o604);
        // an empty cargo home is fine
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            make_dependencies_readable(empty.path()).unwrap(),
            ReadableStats::default()
        );
    }

    /// `tidy_manifest` over a package holding `files`.
    fn tidy(text: &str, files: &[&str]) -> Option<(String, Vec<String>)> {
        tidy_manifest(text, |p| files.contains(&p))
    }

    #[test]
    fn manifests_lose_only_the_targets_whose_files_are_missing() {
        let text = r#"# top comment, kept
[package]
name   =   "foo"   # odd spacing, kept
version = "1.0.0"
autoexamples = false

[[example]]
name = "present"

[[example]]   # a missing example
name = "gone"

[[example]]
name = "custom"
path = "demo/custom.rs"

[[example]]
name = "dir-style"

[[test]]
name = "gone-test"
harness = false

[[bench]]
name = "gone-bench"

[[bin]]
name = "foo"

[[bin]]
name = "tool"
path = "src/tools/tool.rs"

[dependencies]
bar = { version = "1", features = ["x"] } # kept
"#;
        let files = [
            "examples/present.rs",
            "examples/dir-style/main.rs",
            "src/main.rs",
        ];
        let (tidied, dropped) = tidy(text, &files).unwrap();
        assert_eq!(
            dropped,
            [
                "[[bin]] `tool` (src/tools/tool.rs not in the package)",
                "[[example]] `gone` (examples/gone.rs or examples/gone/main.rs not in the package)",
                "[[example]] `custom` (demo/custom.rs not in the package)",
                "[[test]] `gone-test` (tests/gone-test.rs or tests/gone-test/main.rs not in the package)",
                "[[bench]] `gone-bench` (benches/gone-bench.rs or benches/gone-bench/main.rs not in the package)",
            ]
        );
        assert_eq!(
            tidied,
            r#"# top comment, kept
[package]
name   =   "foo"   # odd spacing, kept
version = "1.0.0"
autoexamples = false

[[example]]
name = "present"

[[example]]
name = "dir-style"

[[bin]]
name = "foo"

[dependencies]
bar = { version = "1", features = ["x"] } # kept
"#
        );
        // all present, or nothing listed (auto-discovery): the text is not touched
        let all = [
            "examples/present.rs",
            "examples/gone.rs",
            "demo/custom.rs",
            "examples/dir-style.rs",
            "tests/gone-test.rs",
            "benches/gone-bench/main.rs",
            "src/main.rs",
            "src/tools/tool.rs",
        ];
        assert_eq!(tidy(text, &all), None);
        assert_eq!(
            tidy("[package]\nname = \"foo\"\nversion = \"1.0.0\"\n", &[]),
            None
        );
    }

    #[test]
    fn tidying_keeps_what_it_cannot_judge() {
        // not TOML: cargo says what is wrong
        assert_eq!(tidy("this is not toml", &[]), None);
        // a path leaving the package, an absolute one, an entry with neither name nor path
        let text = "[package]\nname = \"foo\"\n\n[[example]]\nname = \"up\"\npath = \"../x.rs\"\n\n[[example]]\nname = \"abs\"\npath = \"/etc/x.rs\"\n\n[[test]]\nharness = false\n";
        assert_eq!(tidy(text, &[]), None);
        // the legacy binary paths cargo still accepts
        let bins = "[package]\nname = \"foo\"\n\n[[bin]]\nname = \"old\"\n";
        assert_eq!(tidy(bins, &["src/old.rs"]), None);
        assert_eq!(tidy(bins, &["src/bin/main.rs"]), None);
        assert!(
            tidy(bins, &["src/main.rs"]).is_some(),
            "src/main.rs is `foo`'s"
        );
        // the inline form, and a key left with no entry is removed
        let (tidied, dropped) = tidy(
            "example = [{ name = \"a\" }, { name = \"b\" }]\nbench = [{ name = \"c\" }]\n[package]\nname = \"foo\"\n",
            &["examples/a.rs"],
        )
        .unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert_eq!(
            tidied,
            "example = [{ name = \"a\" }]\n[package]\nname = \"foo\"\n"
        );
    }

    #[test]
    fn a_manifest_file_is_rewritten_only_when_something_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        let text = "[package]\nname = \"foo\"\n\n[[example]]\nname = \"gone\"\n";
        std::fs::write(&manifest, text).unwrap();
        let dropped = tidy_manifest_file(&manifest).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&manifest).unwrap(),
            "[package]\nname = \"foo\"\n"
        );
        assert!(tidy_manifest_file(&manifest).unwrap().is_empty());
        // a symlinked manifest is not written through
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("real.toml"), text).unwrap();
        std::fs::remove_file(&manifest).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("real.toml"), &manifest).unwrap();
        assert!(tidy_manifest_file(&manifest).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(elsewhere.path().join("real.toml")).unwrap(),
            text
        );
    }

    #[test]
    fn own_packages_are_the_root_package_or_the_virtual_workspace() {
        let out = r#"{"packages":[{"id":"path+file:///a/dep#dep@0.1.0","manifest_path":"/a/dep/Cargo.toml"},{"id":"path+file:///a#x@0.1.0","manifest_path":"/a/Cargo.toml"}],"workspace_members":["path+file:///a#x@0.1.0","path+file:///a/dep#dep@0.1.0"],"resolve":null}
warning: x
"#;
        assert_eq!(
            parse_own_packages(out, Path::new("/a/Cargo.toml")).unwrap(),
            ["path+file:///a#x@0.1.0"]
        );
        assert_eq!(
            parse_own_packages(out, Path::new("/elsewhere/Cargo.toml")).unwrap(),
            ["path+file:///a#x@0.1.0", "path+file:///a/dep#dep@0.1.0"],
            "a virtual workspace owns all its members"
        );
        assert!(parse_own_packages("nope", Path::new("/a")).is_err());
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let text = format!("{}{}", "a".repeat(1000), "b".repeat(1000));
        let capped = cap_output(&text, 100);
        assert!(capped.starts_with(&"a".repeat(50)));
        assert!(capped.ends_with(&"b".repeat(50)));
        assert!(capped.contains("1900 bytes of output omitted"));
        assert_eq!(cap_output("short", 100), "short");
    }
}
