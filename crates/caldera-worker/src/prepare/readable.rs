//! The cargo home's dependency sources made readable by the sandbox user, once per directory cargo
//! unpacked (see "Why dependencies are fetched on the host and then made readable" in the module
//! docs of `prepare`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
