//! Host-side cargo: the toolchain it runs from, its clean environment, and the runs preparation
//! makes (lockfile, fetch, `metadata` naming the crate's own packages, Miri's sysroot).

use std::path::{Path, PathBuf};

use caldera_core::toolchain::ToolchainIdentity;

use super::failures::classify_cargo_failure;
use super::{PrepareError, PrepareReport, Preparer};

/// A toolchain on the host, as preparation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostToolchain {
    /// The toolchain directory (with `bin/cargo` and `bin/rustc`).
    pub path: PathBuf,
    /// What `cargo -V` says, e.g. `1.95.0`.
    pub cargo_version: semver::Version,
    /// The build, from `rustc -vV` and `cargo -V` (its `toolchain` is the directory); `None`
    /// when `rustc -vV` cannot be read.
    pub identity: Option<ToolchainIdentity>,
}

impl HostToolchain {
    /// Runs `<dir>/bin/cargo -V` to learn the cargo version, and `<dir>/bin/rustc -vV` for the
    /// build's identity.
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
        let identity = rustc_identity(dir, &text).await;
        Ok(HostToolchain {
            path: dir.to_owned(),
            cargo_version: version,
            identity,
        })
    }
}

/// The identity of the toolchain in `dir` from its `rustc -vV` (and `cargo_v`, what `cargo -V`
/// printed); `None`, with a warning, when rustc cannot tell.
async fn rustc_identity(dir: &Path, cargo_v: &str) -> Option<ToolchainIdentity> {
    let rustc = dir.join("bin/rustc");
    let out = tokio::process::Command::new(&rustc)
        .arg("-vV")
        .env_remove("RUSTUP_TOOLCHAIN")
        .kill_on_drop(true)
        .output()
        .await;
    let parsed = match out {
        Ok(out) if out.status.success() => ToolchainIdentity::parse(
            &dir.display().to_string(),
            &String::from_utf8_lossy(&out.stdout),
            cargo_v,
        )
        .map_err(|e| e.to_string()),
        Ok(out) => Err(format!("exited with {}", out.status)),
        Err(e) => Err(e.to_string()),
    };
    parsed
        .inspect_err(|e| tracing::warn!(rustc = %rustc.display(), error = %e, "cannot read the toolchain's identity (rustc -vV)"))
        .ok()
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

impl Preparer {
    /// Runs host-side cargo of `tc` in `dir` with a clean environment (the worker's cargo home and
    /// the network settings passed through) and returns its stdout. A failure whose output names
    /// a network, service or host problem is `Infra`; any other is the crate's (`Crate`).
    pub(super) async fn cargo(
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

    /// The crate's own packages, as `cargo metadata --no-deps` names them (see
    /// [`parse_own_packages`]).
    pub(super) async fn own_packages(
        &self,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<Vec<String>, PrepareError> {
        let metadata = self
            .cargo(
                start,
                src,
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
        parse_own_packages(&metadata, &root_manifest)
            .map_err(|e| PrepareError::Crate(format!("cargo metadata: {e}")))
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
}
