//! Toolchains installed in a rustup home, for advertising a worker's capabilities and for mounting
//! one into the sandbox.
//!
//! rustup keeps each toolchain in `$RUSTUP_HOME/toolchains/<name>-<host triple>` (e.g.
//! `stable-x86_64-unknown-linux-gnu`, `nightly-2025-05-01-x86_64-unknown-linux-gnu`,
//! `1.95.0-x86_64-unknown-linux-gnu`, sometimes a symlink to another one). A toolchain directory is
//! self-contained: `bin/cargo` and `bin/rustc` find their sysroot relative to themselves, so the
//! directory can be bind-mounted anywhere and used without rustup.

use std::path::{Path, PathBuf};

use crate::error::{Result, SandboxError};

/// A toolchain found in a rustup home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledToolchain {
    /// Directory name under `toolchains/`, e.g. `stable-x86_64-unknown-linux-gnu`.
    pub dir_name: String,
    /// The name without the host triple, e.g. `stable`, `nightly-2025-05-01`, `1.95.0`.
    pub name: String,
    /// The host triple, when the directory name ends in the rustup home's default host triple.
    pub host: Option<String>,
    /// Canonical path of the toolchain directory (symlinks resolved), the thing to mount.
    pub path: PathBuf,
}

/// `rustc -vV` of a toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustcVersion {
    /// e.g. `1.95.0` or `1.97.0-nightly`.
    pub release: String,
    pub commit_hash: Option<String>,
    pub commit_date: Option<String>,
    pub host: String,
    /// The whole first line, e.g. `rustc 1.95.0 (abcdef123 2026-04-14)`.
    pub version_line: String,
}

/// The default rustup home: `$RUSTUP_HOME`, else `$HOME/.rustup`.
pub fn default_rustup_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("RUSTUP_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".rustup"))
}

/// Reads `default_host_triple` from `$RUSTUP_HOME/settings.toml`, if present.
async fn default_host_triple(rustup_home: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(rustup_home.join("settings.toml"))
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "default_host_triple").then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Splits `stable-x86_64-unknown-linux-gnu` into (`stable`, Some(`x86_64-unknown-linux-gnu`)) when
/// the suffix is the given host triple, or when it looks like a target triple (arch-vendor-os…).
fn split_dir_name(dir_name: &str, host: Option<&str>) -> (String, Option<String>) {
    if let Some(host) = host
        && let Some(name) = dir_name
            .strip_suffix(host)
            .and_then(|n| n.strip_suffix('-'))
        && !name.is_empty()
    {
        return (name.to_owned(), Some(host.to_owned()));
    }
    // Without settings.toml: a triple starts with an architecture and has at least three parts.
    const ARCHES: &[&str] = &[
        "x86_64",
        "aarch64",
        "i686",
        "i586",
        "arm",
        "armv7",
        "riscv64gc",
        "powerpc64le",
        "s390x",
        "loongarch64",
    ];
    let parts: Vec<&str> = dir_name.split('-').collect();
    for (i, part) in parts.iter().enumerate().skip(1) {
        if ARCHES.contains(part) && parts.len() - i >= 3 {
            return (parts[..i].join("-"), Some(parts[i..].join("-")));
        }
    }
    (dir_name.to_owned(), None)
}

/// Lists the toolchains under `$rustup_home/toolchains`, sorted by directory name. Directories without
/// `bin/cargo` and `bin/rustc` (partial installs) are skipped.
pub async fn list_toolchains(rustup_home: &Path) -> Result<Vec<InstalledToolchain>> {
    let dir = rustup_home.join("toolchains");
    let host = default_host_triple(rustup_home).await;
    let mut entries = tokio::fs::read_dir(&dir)
        .await
        .map_err(SandboxError::io(format!("reading {}", dir.display())))?;
    let mut found = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(SandboxError::io(format!("reading {}", dir.display())))?
    {
        let Ok(dir_name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(path) = tokio::fs::canonicalize(entry.path()).await else {
            continue; // dangling symlink
        };
        let complete = tokio::fs::metadata(path.join("bin/cargo")).await.is_ok()
            && tokio::fs::metadata(path.join("bin/rustc")).await.is_ok();
        if !complete {
            continue;
        }
        let (name, host) = split_dir_name(&dir_name, host.as_deref());
        found.push(InstalledToolchain {
            dir_name,
            name,
            host,
            path,
        });
    }
    found.sort_by(|a, b| a.dir_name.cmp(&b.dir_name));
    Ok(found)
}

/// Resolves a toolchain name as a user writes it (`stable`, `nightly`, `1.95.0`,
/// `nightly-2025-05-01`, or a full directory name) to an installed toolchain.
///
/// A bare name matches `<name>-<host triple>`; when several host triples are installed, the rustup
/// home's default host wins.
pub async fn resolve_toolchain(rustup_home: &Path, name: &str) -> Result<InstalledToolchain> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(SandboxError::Invalid(format!(
            "toolchain name {name:?} is not a toolchain name"
        )));
    }
    let installed = list_toolchains(rustup_home).await?;
    if let Some(exact) = installed.iter().find(|t| t.dir_name == name) {
        return Ok(exact.clone());
    }
    let default_host = default_host_triple(rustup_home).await;
    let mut candidates: Vec<&InstalledToolchain> =
        installed.iter().filter(|t| t.name == name).collect();
    if candidates.len() > 1
        && let Some(host) = default_host.as_deref()
    {
        candidates.retain(|t| t.host.as_deref() == Some(host));
    }
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(SandboxError::ToolchainNotFound {
            name: name.to_owned(),
            rustup_home: rustup_home.to_owned(),
            installed: installed
                .iter()
                .map(|t| t.dir_name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Runs `<toolchain>/bin/rustc -vV` (on the host; the toolchain is trusted) and parses it.
pub async fn rustc_version(toolchain_dir: &Path) -> Result<RustcVersion> {
    let rustc = toolchain_dir.join("bin/rustc");
    let out = tokio::process::Command::new(&rustc)
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(SandboxError::io(format!("running {} -vV", rustc.display())))?;
    if !out.status.success() {
        return Err(SandboxError::Io {
            context: format!("{} -vV", rustc.display()),
            source: std::io::Error::other(format!(
                "exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    parse_rustc_vv(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| SandboxError::Io {
        context: format!("{} -vV", rustc.display()),
        source: std::io::Error::other("unexpected output"),
    })
}

fn parse_rustc_vv(text: &str) -> Option<RustcVersion> {
    let version_line = text.lines().next()?.trim().to_owned();
    let field = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        })
    };
    Some(RustcVersion {
        release: field("release")?,
        commit_hash: field("commit-hash").filter(|v| v != "unknown"),
        commit_date: field("commit-date").filter(|v| v != "unknown"),
        host: field("host")?,
        version_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_dir_names() {
        let host = Some("x86_64-unknown-linux-gnu");
        assert_eq!(
            split_dir_name("stable-x86_64-unknown-linux-gnu", host),
            ("stable".into(), Some("x86_64-unknown-linux-gnu".into()))
        );
        assert_eq!(
            split_dir_name("nightly-2025-05-01-x86_64-unknown-linux-gnu", None),
            (
                "nightly-2025-05-01".into(),
                Some("x86_64-unknown-linux-gnu".into())
            )
        );
        assert_eq!(
            split_dir_name("1.95.0-aarch64-unknown-linux-gnu", host),
            ("1.95.0".into(), Some("aarch64-unknown-linux-gnu".into()))
        );
        assert_eq!(
            split_dir_name("my-custom", host),
            ("my-custom".into(), None)
        );
    }

    #[test]
    fn parses_rustc_vv() {
        let text = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\ncommit-hash: 59807616e\n\
                    commit-date: 2026-04-14\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n\
                    LLVM version: 20.1.8\n";
        let v = parse_rustc_vv(text).unwrap();
        assert_eq!(v.release, "1.95.0");
        assert_eq!(v.host, "x86_64-unknown-linux-gnu");
        assert_eq!(v.commit_hash.as_deref(), Some("59807616e"));
        assert_eq!(v.version_line, "rustc 1.95.0 (59807616e 2026-04-14)");
    }

    async fn fake_rustup_home() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        let tc = home.path().join("toolchains");
        for dir in [
            "stable-x86_64-unknown-linux-gnu",
            "nightly-x86_64-unknown-linux-gnu",
            "stable-aarch64-unknown-linux-gnu",
        ] {
            std::fs::create_dir_all(tc.join(dir).join("bin")).unwrap();
            std::fs::write(tc.join(dir).join("bin/cargo"), "").unwrap();
            std::fs::write(tc.join(dir).join("bin/rustc"), "").unwrap();
        }
        std::fs::create_dir_all(tc.join("partial-x86_64-unknown-linux-gnu/bin")).unwrap();
        std::os::unix::fs::symlink(
            tc.join("stable-x86_64-unknown-linux-gnu"),
            tc.join("1.95.0-x86_64-unknown-linux-gnu"),
        )
        .unwrap();
        std::fs::write(
            home.path().join("settings.toml"),
            "default_host_triple = \"x86_64-unknown-linux-gnu\"\nversion = \"12\"\n",
        )
        .unwrap();
        home
    }

    #[tokio::test]
    async fn lists_and_resolves() {
        let home = fake_rustup_home().await;
        let all = list_toolchains(home.path()).await.unwrap();
        let names: Vec<_> = all.iter().map(|t| t.dir_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "1.95.0-x86_64-unknown-linux-gnu",
                "nightly-x86_64-unknown-linux-gnu",
                "stable-aarch64-unknown-linux-gnu",
                "stable-x86_64-unknown-linux-gnu",
            ]
        );
        let stable = resolve_toolchain(home.path(), "stable").await.unwrap();
        assert_eq!(stable.dir_name, "stable-x86_64-unknown-linux-gnu");
        let pinned = resolve_toolchain(home.path(), "1.95.0").await.unwrap();
        assert_eq!(pinned.name, "1.95.0");
        assert_eq!(
            pinned.path, stable.path,
            "symlinked toolchain resolves to its target"
        );
        let full = resolve_toolchain(home.path(), "stable-aarch64-unknown-linux-gnu")
            .await
            .unwrap();
        assert_eq!(full.host.as_deref(), Some("aarch64-unknown-linux-gnu"));
        let err = resolve_toolchain(home.path(), "beta").await.unwrap_err();
        assert!(
            matches!(err, SandboxError::ToolchainNotFound { .. }),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("nightly-x86_64-unknown-linux-gnu"));
        let err = resolve_toolchain(home.path(), "partial").await.unwrap_err();
        assert!(matches!(err, SandboxError::ToolchainNotFound { .. }));
        assert!(matches!(
            resolve_toolchain(home.path(), "../x").await,
            Err(SandboxError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn host_rustup_home_has_a_working_stable_toolchain() {
        // The machines caldera is developed on have rustup with a stable toolchain.
        let home = default_rustup_home().expect("RUSTUP_HOME or HOME is set");
        let stable = resolve_toolchain(&home, "stable").await.unwrap();
        let version = rustc_version(&stable.path).await.unwrap();
        assert!(
            version.release.chars().next().unwrap().is_ascii_digit(),
            "{version:?}"
        );
        assert!(!version.release.contains("nightly"), "{version:?}");
    }
}
