//! The worker's dependency store: cargo target-dir files of registry dependency units, built once
//! without the crate under test and shared by every later job with the same build key (see
//! docs/ARCHITECTURE.md, "Shared dependency builds").
//!
//! A *unit* is what cargo names `<package>-<hash>` in a profile dir (`debug`, `release`,
//! `<triple>/debug`, …): its `.fingerprint/<package>-<hash>/`, `build/<package>-<hash>/` and the
//! `deps/` files whose name carries `-<hash>`. The store keeps each unit in a directory of its own,
//! `units/<profile>/<package>-<hash>/` (profile with `/` written as `+`), holding those files under
//! their paths relative to the profile dir. A unit enters the store by one rename of a complete
//! directory, so a reader sees all of it or nothing, and a unit already there is never replaced.
//! Everything in the store is root's, files `0444` (`0555` when executable), directories `0755`.
//!
//! [`populate`] puts units into a job's (empty) target dir: compiled artifacts as hardlinks to the
//! store's read-only inodes, everything cargo may rewrite (fingerprints, dep-info, build script
//! output) as copies owned by the sandbox user, mtimes kept either way. [`harvest`] copies the
//! completed units of registry packages that a deps-only build added into the store.
//!
//! A unit directory's own mtime (nothing cargo reads: only the files inside are placed) records
//! when a job last placed it; [`populate`] moves it forward. [`evict`] keeps the stores of every
//! build key within a size by removing the units placed longest ago. Every placement touches all
//! the units it placed at one instant, a unit's dependencies included (they are in the same
//! lockfile), so a unit is never evicted while a unit that depends on it stays.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Names temporary directories in a store uniquely within the process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Who owns what a job's target dir gets (the sandbox user).
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// The packages of a lockfile, as the store sees them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct LockPackages {
    /// Names of registry packages that no path package shares and that do not depend, directly
    /// or through other packages, on a path or git package: only their units are shared.
    pub(super) registry: BTreeSet<String>,
}

/// Reads `Cargo.lock`: the names of registry packages (`source = "registry+…"` or `"sparse+…"`)
/// minus any name a path package (no `source`) or git package also has, so that a unit of the
/// crate under test is never taken for a dependency's — and minus every registry package that
/// depends on a path or git package. Those are the crates a crate under test is a dependency of
/// through its own dev-dependencies (`unicode-ident` ← `proc-macro2` ← a dev-dependency of
/// `unicode-ident`; `itoa` ← `serde_json`): the deps-only build compiles them against the
/// crate's stub, the crate's steps against its real source, so cargo rebuilds them in place —
/// over files linked read-only from the store, which fails, and the side is re-run from a clean
/// target dir. Built by the crate's steps instead, in its own target dir. Names stand for every
/// version of a package (conservative: a registry `itoa` that depends on nothing local is left
/// out too when another `itoa` does).
pub(super) fn lock_packages(lockfile: &str) -> Result<LockPackages, String> {
    let doc: toml_edit::DocumentMut = lockfile
        .parse()
        .map_err(|e| format!("Cargo.lock is not TOML: {e}"))?;
    let Some(packages) = doc.get("package") else {
        return Ok(LockPackages::default());
    };
    let packages = packages
        .as_array_of_tables()
        .ok_or("Cargo.lock: `package` is not an array of tables")?;
    let mut registry = BTreeSet::new();
    let mut other = BTreeSet::new();
    // each registry package's dependencies, by name
    let mut depends: Vec<(String, Vec<String>)> = Vec::new();
    for p in packages {
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or("Cargo.lock: a package without a name")?;
        match p.get("source").and_then(|s| s.as_str()) {
            Some(s) if s.starts_with("registry+") || s.starts_with("sparse+") => {
                registry.insert(name.to_owned());
                let deps = (p.get("dependencies").and_then(|d| d.as_array()))
                    .map(|a| a.iter().filter_map(|d| d.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default();
                // an entry is `name`, `name version` or `name version (source)`
                let deps = deps.iter().filter_map(|d| d.split_whitespace().next());
                depends.push((name.to_owned(), deps.map(str::to_owned).collect()));
            }
            _ => {
                other.insert(name.to_owned());
            }
        }
    }
    // the path and git packages, then whatever depends on them, until nothing is added
    let mut local = other;
    loop {
        let before = local.len();
        for (name, deps) in &depends {
            if deps.iter().any(|d| local.contains(d)) {
                local.insert(name.clone());
            }
        }
        if local.len() == before {
            break;
        }
    }
    registry.retain(|n| !local.contains(n));
    Ok(LockPackages { registry })
}

/// The profile dirs of a target dir: those (at depth 1 or 2) that hold a `.fingerprint` dir, as
/// paths relative to the target dir.
fn profile_dirs(target: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for e in read_dir_or_empty(target)? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let one = PathBuf::from(e.file_name());
        if is_real_dir(&target.join(&one).join(".fingerprint")) {
            found.push(one.clone());
        }
        for e2 in read_dir_or_empty(&target.join(&one))? {
            let e2 = e2?;
            let two = one.join(e2.file_name());
            if e2.file_type()?.is_dir() && is_real_dir(&target.join(&two).join(".fingerprint")) {
                found.push(two);
            }
        }
    }
    Ok(found)
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>> {
    match fs::read_dir(dir) {
        Ok(d) => Ok(Box::new(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// `debug` → `debug`, `x86_64-unknown-linux-gnu/debug` → `x86_64-unknown-linux-gnu+debug`.
fn profile_key(profile: &Path) -> String {
    profile.to_string_lossy().replace('/', "+")
}

/// Splits a unit dir name `<package>-<hash>`.
fn split_unit(name: &str) -> Option<(&str, &str)> {
    let (pkg, hash) = name.rsplit_once('-')?;
    (!pkg.is_empty() && hash.len() >= 8 && hash.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some((pkg, hash))
}

/// Whether a `deps/` file name belongs to the unit with `hash` (`libfoo-<hash>.rlib`,
/// `foo-<hash>.d`, `foo-<hash>`).
fn deps_file_of(name: &str, hash: &str) -> bool {
    let stem = name.split_once('.').map_or(name, |(s, _)| s);
    stem.rsplit_once('-').is_some_and(|(_, h)| h == hash)
}

/// Whether a unit's fingerprint says it completed: some `<x>.json` with its `<x>` hash file.
fn unit_completed(fingerprint: &Path) -> bool {
    let Ok(entries) = fs::read_dir(fingerprint) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.strip_suffix(".json").is_some_and(|base| {
            fs::symlink_metadata(fingerprint.join(base)).is_ok_and(|m| m.is_file())
        })
    })
}

/// Whether a file of a unit (path relative to the profile dir) is linked from the store rather
/// than copied: compiled artifacts, which cargo never rewrites in place while the unit is fresh.
fn linked(rel: &Path) -> bool {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let (Some(first), Some(second)) = (parts.next(), parts.next()) else {
        return false;
    };
    let third = parts.next();
    match (first.as_ref(), third) {
        ("deps", None) => [".rlib", ".rmeta", ".so", ".a"]
            .iter()
            .any(|ext| second.ends_with(ext)),
        ("build", Some(file)) => {
            parts.next().is_none()
                && (file.starts_with("build-script-") || file.starts_with("build_script_"))
                && !file.ends_with(".d")
        }
        _ => false,
    }
}

/// What [`populate`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Populated {
    pub(super) units: usize,
    pub(super) linked: usize,
    pub(super) copied: usize,
}

/// Puts the store's units of `packages` into `target` (see the module docs). A unit that cannot be
/// placed whole (e.g. the store is being purged) is taken out again and left to cargo.
pub(super) fn populate(
    store: &Path,
    target: &Path,
    packages: &LockPackages,
    owner: Owner,
) -> io::Result<Populated> {
    let mut done = Populated::default();
    let now = SystemTime::now();
    let units = store.join("units");
    for profile in read_dir_or_empty(&units)? {
        let profile = profile?;
        let rel_profile = PathBuf::from(profile.file_name().to_string_lossy().replace('+', "/"));
        for unit in read_dir_or_empty(&profile.path())? {
            let unit = unit?;
            let name = unit.file_name().to_string_lossy().into_owned();
            let Some((pkg, _)) = split_unit(&name) else {
                continue;
            };
            if !packages.registry.contains(pkg) {
                continue;
            }
            let dest = target.join(&rel_profile);
            let mut placed = Vec::new();
            match place_tree(&unit.path(), &dest, Path::new(""), owner, &mut placed) {
                Ok((l, c)) => {
                    done.units += 1;
                    done.linked += l;
                    done.copied += c;
                    if let Err(e) = touch(&unit.path(), now) {
                        tracing::debug!(unit = %name, error = %e, "a stored unit's use not recorded");
                    }
                }
                Err(e) => {
                    tracing::debug!(unit = %name, error = %e, "a stored unit could not be placed");
                    for p in placed.iter().rev() {
                        let _ = fs::remove_file(p);
                    }
                }
            }
        }
    }
    Ok(done)
}

/// Links or copies the files of a stored unit `src` into `dest` (same relative paths); the
/// directories it creates belong to `owner`.
fn place_tree(
    src: &Path,
    dest: &Path,
    rel: &Path,
    owner: Owner,
    placed: &mut Vec<PathBuf>,
) -> io::Result<(usize, usize)> {
    let (mut l, mut c) = (0, 0);
    make_owned_dir(dest, owner)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let ty = e.file_type()?;
        let rel = rel.join(e.file_name());
        let to = dest.join(e.file_name());
        if ty.is_dir() {
            let (l2, c2) = place_tree(&e.path(), &to, &rel, owner, placed)?;
            l += l2;
            c += c2;
        } else if ty.is_file() {
            if fs::symlink_metadata(&to).is_ok() {
                continue; // already there (another unit's file or an earlier placement)
            }
            if linked(&rel) {
                fs::hard_link(e.path(), &to)?;
                l += 1;
            } else {
                // the sandbox user may rewrite its copy (cargo rewrites fingerprints)
                let mode = (fs::symlink_metadata(e.path())?.mode() & 0o777) | 0o200;
                copy_file(&e.path(), &to, mode)?;
                std::os::unix::fs::lchown(&to, Some(owner.uid), Some(owner.gid))?;
                c += 1;
            }
            placed.push(to);
        }
    }
    Ok((l, c))
}

/// Creates `dir` (and missing parents) owned by `owner`, mode 0755.
fn make_owned_dir(dir: &Path, owner: Owner) -> io::Result<()> {
    if is_real_dir(dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_owned_dir(parent, owner)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_real_dir(dir) => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid))
}

/// Copies a regular file without following a symlink at `from` (a new file at `to`, never an
/// existing one), keeping its mtime, with `mode`.
fn copy_file(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let mut src = OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(from)?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            from.display()
        )));
    }
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.set_modified(meta.modified()?)?;
    dst.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// What [`harvest`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Harvested {
    /// Units copied into the store, as `<profile>/<package>-<hash>`.
    pub(super) stored: Vec<String>,
    /// Completed registry units the store already had (placed by [`populate`] or by another slot).
    pub(super) present: usize,
}

/// Copies every completed unit of a registry package in `target` that the store lacks into the
/// store (root's, read-only). Symlinks and other non-regular files are skipped.
pub(super) fn harvest(
    target: &Path,
    store: &Path,
    packages: &LockPackages,
) -> io::Result<Harvested> {
    let mut out = Harvested::default();
    let tmp_root = store.join("tmp");
    fs::create_dir_all(&tmp_root)?;
    for profile in profile_dirs(target)? {
        let pdir = target.join(&profile);
        let stored_profile = store.join("units").join(profile_key(&profile));
        for unit in fs::read_dir(pdir.join(".fingerprint"))? {
            let unit = unit?;
            let name = unit.file_name().to_string_lossy().into_owned();
            let Some((pkg, hash)) = split_unit(&name) else {
                continue;
            };
            if !packages.registry.contains(pkg) || !unit_completed(&unit.path()) {
                continue;
            }
            let final_dir = stored_profile.join(&name);
            if final_dir.exists() {
                out.present += 1;
                continue;
            }
            let tmp = tmp_root.join(format!(
                "{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let built = collect_unit(&pdir, &name, hash, &tmp).and_then(|()| {
                fs::create_dir_all(&stored_profile)?;
                fs::rename(&tmp, &final_dir)
            });
            match built {
                Ok(()) => out.stored.push(format!("{}/{name}", profile.display())),
                Err(_) if final_dir.exists() => out.present += 1, // another slot was first
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            }
            let _ = fs::remove_dir_all(&tmp);
        }
    }
    Ok(out)
}

/// Copies one unit's files from the profile dir `pdir` into `to` (read-only copies).
fn collect_unit(pdir: &Path, name: &str, hash: &str, to: &Path) -> io::Result<()> {
    fs::create_dir(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    for sub in [".fingerprint", "build"] {
        let from = pdir.join(sub).join(name);
        if is_real_dir(&from) {
            let dest = to.join(sub);
            store_dir(&dest)?;
            copy_tree_readonly(&from, &dest.join(name))?;
        }
    }
    let mut deps_dir = None;
    let deps = pdir.join("deps");
    if !is_real_dir(&deps) {
        return Ok(()); // none, or a symlink planted by a build script: not followed
    }
    for e in fs::read_dir(&deps)? {
        let e = e?;
        let fname = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && deps_file_of(&fname, hash) {
            let d = deps_dir.get_or_insert_with(|| to.join("deps"));
            store_dir(d)?;
            copy_readonly(&e.path(), &d.join(&fname))?;
        }
    }
    Ok(())
}

fn store_dir(dir: &Path) -> io::Result<()> {
    if !is_real_dir(dir) {
        fs::create_dir(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn copy_tree_readonly(from: &Path, to: &Path) -> io::Result<()> {
    store_dir(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree_readonly(&e.path(), &to.join(e.file_name()))?;
        } else if ty.is_file() {
            copy_readonly(&e.path(), &to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// A store copy: 0555 when the source is executable by anyone, else 0444.
fn copy_readonly(from: &Path, to: &Path) -> io::Result<()> {
    let exec = fs::symlink_metadata(from)?.mode() & 0o111 != 0;
    copy_file(from, to, if exec { 0o555 } else { 0o444 })
}

/// Records that a unit was placed at `now`: its directory's mtime, only ever moved forward (two
/// slots placing it at once cannot move it back).
fn touch(unit_dir: &Path, now: SystemTime) -> io::Result<()> {
    let dir = fs::File::open(unit_dir)?;
    if dir.metadata()?.modified()? < now {
        dir.set_modified(now)?;
    }
    Ok(())
}

/// What [`evict`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Evicted {
    pub(super) units: usize,
    pub(super) bytes: u64,
    /// What the stores hold afterwards.
    pub(super) kept_bytes: u64,
}

/// Keeps the stores under `root` (one directory per build key) within `max_bytes` of disk: when
/// they hold more, units are removed in the order they were last placed, all the units of one
/// placement together, until three quarters of `max_bytes` are left. A unit is moved out of the
/// store by one rename first, so a job placing it at that moment gets all of it or none (and
/// the files it linked stay valid: they are its own links).
pub(super) fn evict(root: &Path, max_bytes: u64) -> io::Result<Evicted> {
    let mut units = Vec::new();
    let mut total = 0u64;
    for key in read_dir_or_empty(root)? {
        let key = key?;
        if !key.file_type()?.is_dir() {
            continue;
        }
        for profile in read_dir_or_empty(&key.path().join("units"))? {
            for unit in read_dir_or_empty(&profile?.path())? {
                let path = unit?.path();
                // a unit another slot evicts meanwhile is simply not counted
                let Ok(used) = fs::metadata(&path).and_then(|m| m.modified()) else {
                    continue;
                };
                let Ok(bytes) = disk_bytes(&path) else {
                    continue;
                };
                total += bytes;
                units.push((used, bytes, path, key.path()));
            }
        }
    }
    let mut out = Evicted {
        kept_bytes: total,
        ..Evicted::default()
    };
    if total <= max_bytes {
        return Ok(out);
    }
    let low = max_bytes / 4 * 3;
    units.sort_by_key(|u| u.0);
    let mut last = None;
    for (used, bytes, path, key) in units {
        if out.kept_bytes <= low && last != Some(used) {
            break;
        }
        last = Some(used);
        let tmp_root = key.join("tmp");
        fs::create_dir_all(&tmp_root)?;
        let tmp = tmp_root.join(format!(
            "evicted-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&path, &tmp) {
            Ok(()) => {
                fs::remove_dir_all(&tmp)?;
                out.units += 1;
                out.bytes += bytes;
                out.kept_bytes -= bytes;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // evicted by another slot
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The disk blocks of the files under `dir`.
fn disk_bytes(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        n += if meta.is_dir() {
            disk_bytes(&e.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(n)
}

/// How many units `store` holds.
#[cfg(test)]
pub(super) fn unit_count(store: &Path) -> usize {
    let Ok(profiles) = fs::read_dir(store.join("units")) else {
        return 0;
    };
    profiles
        .filter_map(Result::ok)
        .map(|p| fs::read_dir(p.path()).map_or(0, |d| d.count()))
        .sum()
}

#[cfg(test)]
#[path = "depstore_tests.rs"]
mod tests;
