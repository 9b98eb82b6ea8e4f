//! Sanitising a crate's tree: `.cargo/config*` and `rust-toolchain*` removed anywhere (they would
//! change what the toolchains build), everything made readable by the sandbox user.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::PrepareError;

/// [`sanitize_tree`] on `src`, on a blocking thread; returns what was removed.
pub(super) async fn sanitize(src: &Path) -> Result<Vec<PathBuf>, PrepareError> {
    let root = src.to_owned();
    tokio::task::spawn_blocking(move || sanitize_tree(&root))
        .await
        .map_err(|e| PrepareError::Infra(format!("sanitize task: {e}")))?
        .map_err(|e| PrepareError::Infra(format!("sanitizing the source tree: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
