//! The slot's directories. Target dirs: one per slot and toolchain, reused across the crates of
//! one experiment (or, with shared dependency builds, emptied before every job and filled from
//! the dependency store) and purged on an experiment change or past the disk's high-water mark
//! (the store too); a
//! confirmation run's fresh ones, emptied before and after it. Purged contents are renamed into the
//! trash at once and deleted in the background. And the slot's source dir, into which a prepared
//! crate is moved for its steps.

use std::path::{Path, PathBuf};

use super::toolchains::{SideToolchain, toolchain_dir_key};
use super::{Inner, lock};

/// Creates `dir` (mode 0755, so the sandbox user can read what is moved in) if needed.
pub(super) async fn make_dir_for_sandbox(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).await
}

/// Moves everything in `from` into the (emptied) `to` by renaming (both are in the preparer's
/// sources dir), so the cost does not grow with the crate's size. `to` itself stays: containers
/// bind-mount it.
pub(super) async fn move_tree_contents(from: PathBuf, to: PathBuf) -> std::io::Result<()> {
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
pub(super) fn delete_trash(paths: Vec<PathBuf>) {
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

impl Inner {
    /// Empties `dir` (with `keep_subdirs`, empties its subdirectories, which spare containers
    /// mount); the contents are moved to the trash at once and deleted in the background.
    pub(super) async fn purge(&self, dir: PathBuf, keep_subdirs: bool) -> std::io::Result<()> {
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
    pub(super) fn fresh_targets(&self, slot: u32) -> PathBuf {
        self.config.targets_dir().join(format!("fresh-{slot}"))
    }

    /// The target dir a job of run `run` uses on `slot` for a side's toolchain: the slot's
    /// (reused across the crates of an experiment) for a first run, a fresh one for a
    /// confirmation run.
    pub(super) fn job_target(&self, slot: u32, tc: &SideToolchain, run: u32) -> PathBuf {
        if run == 0 {
            self.side_target(slot, tc)
        } else {
            self.fresh_targets(slot)
                .join(toolchain_dir_key(&tc.spec.id()))
        }
    }

    /// After a confirmation run: its fresh target dirs go (in the background).
    pub(super) async fn drop_fresh_targets(&self, slot: u32, run: u32) {
        if run > 0
            && let Err(e) = self.purge(self.fresh_targets(slot), false).await
        {
            tracing::warn!(error = %e, "could not remove a confirmation run's target dirs");
        }
    }

    /// The target dir of `slot` for a side's toolchain.
    pub(super) fn side_target(&self, slot: u32, tc: &SideToolchain) -> PathBuf {
        self.config
            .targets_dir()
            .join(format!("slot-{slot}"))
            .join(toolchain_dir_key(&tc.spec.id()))
    }

    /// Purges the slot's target dirs when it last served another experiment or the disk is past
    /// the high-water mark; records the experiment.
    pub(super) async fn prepare_slot(&self, slot: u32, experiment: &str) -> std::io::Result<()> {
        let dir = self.config.targets_dir().join(format!("slot-{slot}"));
        tokio::fs::create_dir_all(&dir).await?;
        let marker = dir.join(".experiment");
        let previous = tokio::fs::read_to_string(&marker).await.ok();
        if previous.as_deref().is_some_and(|p| p != experiment) {
            tracing::info!(slot, "new experiment: purging the slot's target dirs");
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_experiment_change += 1;
        }
        if self.config.shared_deps {
            // every first run starts from store files only (see `shared_deps`)
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_shared_deps += 1;
        } else if !self.config.reuse_target_dirs {
            self.purge(dir.clone(), true).await?;
            lock(&self.stats).purges_no_reuse += 1;
        }
        let kept = self.config.reuse_target_dirs || self.config.shared_deps;
        if kept
            && let Some(used) = disk_used_fraction(self.config.targets_dir()).await
            && used > self.config.disk_high_water
        {
            tracing::info!(
                slot,
                used = format!("{:.0}%", used * 100.0),
                "disk past the high-water mark: purging the slot's target dirs and the \
                 dependency store"
            );
            self.purge(dir.clone(), true).await?;
            self.purge(self.config.depstore_root(), false).await?;
            lock(&self.stats).purges_high_water += 1;
        }
        if previous.as_deref() != Some(experiment) || !tokio::fs::try_exists(&marker).await? {
            tokio::fs::write(&marker, experiment).await?;
        }
        Ok(())
    }
}
