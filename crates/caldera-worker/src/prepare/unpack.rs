//! Safe unpacking of a registry crate's `.crate` archive: no absolute paths, no `..`, no links
//! leaving the tree, no device files, size and file-count caps.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

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

/// Makes room for an entry at `out`: creates its parent directories and removes what is there.
fn make_room_for(out: &Path) -> Result<(), UnpackError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    clear_path(out)
}

/// The target a link entry names; `what` ("symlink", "hard link") is for the message.
fn link_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    what: &str,
    rel: &Path,
) -> Result<PathBuf, UnpackError> {
    Ok(entry
        .link_name()
        .map_err(|e| invalid(format!("corrupt link in archive: {e}")))?
        .ok_or_else(|| invalid(format!("{what} {} has no target", rel.display())))?
        .into_owned())
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
    let mut unpacker = Unpacker {
        dest,
        prefix,
        limits,
        stats: UnpackStats::default(),
        files_written: HashSet::new(),
    };
    let mut entries_seen = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("corrupt archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("corrupt archive: {e}")))?;
        entries_seen += 1;
        if entries_seen > limits.max_entries {
            return Err(invalid(format!(
                "the archive has more than {} entries",
                limits.max_entries
            )));
        }
        unpacker.entry(entry)?;
    }
    Ok(unpacker.stats)
}

/// One archive being unpacked into `dest`: its limits, and what was written so far.
struct Unpacker<'a> {
    dest: &'a Path,
    prefix: &'a str,
    limits: &'a UnpackLimits,
    stats: UnpackStats,
    /// The files written so far (relative to `dest`): the only targets a hard link may copy.
    files_written: HashSet<PathBuf>,
}

impl Unpacker<'_> {
    /// Checks where one entry would go and writes it by its kind; pax headers are skipped, and
    /// any other kind (devices, FIFOs) is refused.
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry
            .path()
            .map_err(|e| invalid(format!("corrupt archive entry name: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let rel = entry_rel_path(&raw_path, self.prefix)?;
        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                return Ok(());
            }
            return Err(invalid(format!(
                "archive entry {} replaces the crate's directory",
                raw_path.display()
            )));
        }
        check_no_symlink_ancestor(self.dest, &rel)?;
        let out = self.dest.join(&rel);
        match kind {
            tar::EntryType::Directory => self.directory(&rel, &out),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&mut entry, rel, &out)
            }
            tar::EntryType::Symlink => self.symlink(&entry, &rel, &out),
            tar::EntryType::Link => self.hard_link(&entry, rel, &out),
            other => Err(invalid(format!(
                "archive entry {} has a refused type ({other:?}): only files, directories \
                 and links are allowed",
                rel.display()
            ))),
        }
    }

    /// Refuses `size` more bytes of files when they would take the archive past its cap.
    fn check_total(&self, size: u64) -> Result<(), UnpackError> {
        if self.stats.bytes.saturating_add(size) > self.limits.max_total_bytes {
            return Err(invalid(format!(
                "the archive's files add up to more than {} bytes",
                self.limits.max_total_bytes
            )));
        }
        Ok(())
    }

    /// A directory, mode 0755; never over a file.
    fn directory(&mut self, rel: &Path, out: &Path) -> Result<(), UnpackError> {
        if std::fs::symlink_metadata(out).is_ok_and(|m| !m.is_dir()) {
            return Err(invalid(format!(
                "archive entry {} is a directory over a file",
                rel.display()
            )));
        }
        std::fs::create_dir_all(out).map_err(io_at(out))?;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))
            .map_err(io_at(out))?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// A regular file, mode 0644 (0755 when executable). Its header's size is checked against the
    /// cap before anything is written, and a file shorter than its header says is refused.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: PathBuf,
        out: &Path,
    ) -> Result<(), UnpackError> {
        let size = entry.header().size().unwrap_or(u64::MAX);
        self.check_total(size)?;
        make_room_for(out)?;
        let executable = entry.header().mode().unwrap_or(0o644) & 0o111 != 0;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(out)
            .map_err(io_at(out))?;
        let mut limited = (&mut *entry).take(size);
        let written = copy_split_errors(&mut limited, &mut file, out)?;
        if written != size {
            return Err(invalid(format!(
                "archive entry {} is truncated ({written} of {size} bytes)",
                rel.display()
            )));
        }
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode)).map_err(io_at(out))?;
        self.stats.bytes += written;
        self.stats.files += 1;
        self.files_written.insert(rel);
        Ok(())
    }

    /// A symlink, when its target stays inside the tree.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        out: &Path,
    ) -> Result<(), UnpackError> {
        let target = link_target(entry, "symlink", rel)?;
        if !link_stays_inside(rel, &target) {
            return Err(invalid(format!(
                "symlink {} -> {} points outside the crate",
                rel.display(),
                target.display()
            )));
        }
        make_room_for(out)?;
        std::os::unix::fs::symlink(&target, out).map_err(io_at(out))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// A hard link to an earlier file of the archive, written as a copy of that file.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: PathBuf,
        out: &Path,
    ) -> Result<(), UnpackError> {
        let target = link_target(entry, "hard link", &rel)?;
        let target_rel = entry_rel_path(&target, self.prefix).map_err(|_| {
            invalid(format!(
                "hard link {} -> {} points outside the crate",
                rel.display(),
                target.display()
            ))
        })?;
        if !self.files_written.contains(&target_rel) {
            return Err(invalid(format!(
                "hard link {} -> {} does not point at an earlier file of the archive",
                rel.display(),
                target.display()
            )));
        }
        let from = self.dest.join(&target_rel);
        let size = std::fs::metadata(&from).map_err(io_at(&from))?.len();
        self.check_total(size)?;
        make_room_for(out)?;
        // a copy, never a real link: the link could not leave the tree, but a copy cannot
        // be changed through its twin either
        std::fs::copy(&from, out).map_err(io_at(out))?;
        self.stats.bytes += size;
        self.stats.files += 1;
        self.files_written.insert(rel);
        Ok(())
    }
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
}
