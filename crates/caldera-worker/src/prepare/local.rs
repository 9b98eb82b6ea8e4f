//! Local crates: a directory of the worker's host, copied.

use std::io;
use std::path::{Path, PathBuf};

use super::{PrepareError, PrepareReport};

/// Copies the local crate at `path` into `src`, on a blocking thread. A directory this worker
/// does not have is the crate's fault.
pub(super) async fn copy_local(
    path: &str,
    src: &Path,
    report: &mut PrepareReport,
) -> Result<(), PrepareError> {
    let from = PathBuf::from(path);
    let to = src.to_owned();
    report.line(format!("copying local crate {path}"));
    tokio::task::spawn_blocking(move || {
        if !from.is_dir() {
            return Err(PrepareError::Crate(format!(
                "local crate directory {} does not exist on this worker",
                from.display()
            )));
        }
        copy_tree(&from, &to, true)
            .map_err(|e| PrepareError::Infra(format!("copying {}: {e}", from.display())))
    })
    .await
    .map_err(|e| PrepareError::Infra(format!("copy task: {e}")))?
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
