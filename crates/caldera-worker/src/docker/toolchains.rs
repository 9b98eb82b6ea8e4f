//! The toolchains a side runs with: resolved in the worker's rustup home (or a path), probed once
//! on the host, mounted read-only into the side's container under a tame name; Miri's sysroot is
//! built once per toolchain; and the capabilities and toolchain builds (identities) a worker
//! announces for what it has.

use std::path::{Path, PathBuf};

use caldera_core::experiment::Mode;
use caldera_core::toolchain::{Toolchain, ToolchainIdentity, ToolchainSource};
use caldera_sandbox::{SandboxError, paths, resolve_toolchain};
use sha2::{Digest, Sha256};

use super::Inner;
use crate::prepare::{HostToolchain, PrepareError, PrepareReport};

/// A resolved side: the toolchain spec, where it is on the host, and its mount name.
#[derive(Debug, Clone)]
pub(super) struct SideToolchain {
    pub(super) spec: Toolchain,
    pub(super) dir: PathBuf,
    pub(super) mount_name: String,
}

/// A directory name for a toolchain id: readable prefix plus a hash, so ids differing only in
/// characters that are not kept still get different dirs.
pub(super) fn toolchain_dir_key(id: &str) -> String {
    let readable: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let hash = hex::encode(&Sha256::digest(id.as_bytes())[..6]);
    format!("{readable}-{hash}")
}

fn mount_name(source: &ToolchainSource) -> String {
    match source {
        ToolchainSource::Rustup(name)
            if name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
        {
            name.clone()
        }
        _ => "toolchain".into(),
    }
}

/// What a worker with this rustup home offers: `docker`, `arch:<arch>`, and for each installed
/// toolchain `toolchain:<name>` (e.g. `toolchain:stable`) and `toolchain:<dir name>` (with the host
/// triple), plus `miri:<name>` when it has Miri. Names that are not valid capabilities are left
/// out.
pub async fn capabilities(rustup_home: &Path) -> Result<Vec<String>, SandboxError> {
    let mut caps = vec![
        "docker".to_owned(),
        format!("arch:{}", std::env::consts::ARCH),
    ];
    for tc in caldera_sandbox::list_toolchains(rustup_home).await? {
        caps.push(format!("toolchain:{}", tc.name));
        caps.push(format!("toolchain:{}", tc.dir_name));
        if tokio::fs::try_exists(tc.path.join("bin/cargo-miri"))
            .await
            .unwrap_or(false)
        {
            caps.push(format!("miri:{}", tc.name));
        }
    }
    let mut seen = std::collections::HashSet::new();
    caps.retain(|c| caldera_core::experiment::is_valid_requirement(c) && seen.insert(c.clone()));
    Ok(caps)
}

/// The build of each installed toolchain that has a `rustc` (see [`HostToolchain::probe`]), under
/// both names a job may use for it: `<name>` and `<dir name>` (e.g. `nightly` and
/// `nightly-x86_64-unknown-linux-gnu`). What the worker reports in Hello; resolved once, when it
/// starts. A toolchain whose `rustc -vV` cannot be read is left out (a pinned experiment then
/// does not come to this worker).
pub async fn toolchain_identities(
    rustup_home: &Path,
) -> Result<Vec<ToolchainIdentity>, SandboxError> {
    let mut identities = Vec::new();
    for tc in caldera_sandbox::list_toolchains(rustup_home).await? {
        let Some(identity) = HostToolchain::probe(&tc.path)
            .await
            .ok()
            .and_then(|h| h.identity)
        else {
            continue;
        };
        for name in [&tc.name, &tc.dir_name] {
            if !identities
                .iter()
                .any(|i: &ToolchainIdentity| &i.toolchain == name)
            {
                identities.push(ToolchainIdentity {
                    toolchain: name.clone(),
                    ..identity.clone()
                });
            }
        }
    }
    Ok(identities)
}

/// The name a toolchain's identity goes by: its rustup name, or its path.
fn identity_name(tc: &Toolchain) -> &str {
    match &tc.source {
        ToolchainSource::Rustup(name) => name,
        ToolchainSource::Path(path) => path,
    }
}

impl Inner {
    /// The build a side runs with, under the name the job gives its toolchain; `None` when the
    /// toolchain did not resolve or rustc cannot tell.
    pub(super) async fn side_identity(
        &self,
        side: &Result<SideToolchain, String>,
    ) -> Option<ToolchainIdentity> {
        let tc = side.as_ref().ok()?;
        let host = self.host_toolchain(&tc.dir).await.ok()?;
        Some(ToolchainIdentity {
            toolchain: identity_name(&tc.spec).to_owned(),
            ..host.identity?
        })
    }

    pub(super) async fn resolve_side(
        &self,
        tc: &Toolchain,
        mode: Mode,
    ) -> Result<SideToolchain, String> {
        if !tc.patches.is_empty() {
            return Err(format!(
                "toolchain {}: [patch] overrides are not supported by the Docker executor",
                tc.id()
            ));
        }
        let dir = match &tc.source {
            ToolchainSource::Rustup(name) => {
                resolve_toolchain(&self.config.rustup_home, name)
                    .await
                    .map_err(|e| e.to_string())?
                    .path
            }
            ToolchainSource::Path(path) => PathBuf::from(path),
        };
        for tool in ["bin/cargo", "bin/rustc"] {
            if !tokio::fs::try_exists(dir.join(tool)).await.unwrap_or(false) {
                return Err(format!(
                    "toolchain {} at {} has no {tool}",
                    tc.id(),
                    dir.display()
                ));
            }
        }
        if mode == Mode::Miri
            && !tokio::fs::try_exists(dir.join("bin/cargo-miri"))
                .await
                .unwrap_or(false)
        {
            return Err(format!(
                "toolchain {} has no miri (no bin/cargo-miri in {}); install the `miri` and \
                 `rust-src` components or do not send miri jobs to this worker",
                tc.id(),
                dir.display()
            ));
        }
        Ok(SideToolchain {
            spec: tc.clone(),
            mount_name: mount_name(&tc.source),
            dir,
        })
    }

    pub(super) async fn host_toolchain(&self, dir: &Path) -> Result<HostToolchain, PrepareError> {
        let mut cache = self.host_toolchains.lock().await;
        if let Some(tc) = cache.get(dir) {
            return Ok(tc.clone());
        }
        let tc = HostToolchain::probe(dir).await?;
        cache.insert(dir.to_owned(), tc.clone());
        Ok(tc)
    }

    /// The Miri sysroot of a toolchain, built on the host once, inside the shared cargo home (so
    /// the sandbox sees it read-only). Returns its path inside the container.
    pub(super) async fn miri_sysroot(
        &self,
        tc: &SideToolchain,
        body: &mut Vec<u8>,
    ) -> Result<String, String> {
        let key = toolchain_dir_key(&tc.dir.display().to_string());
        let rel = format!("miri-sysroots/{key}");
        let host_dir = self.config.prepare.cargo_home.join(&rel);
        let ready = host_dir.join(".caldera-ready");
        let _guard = self.miri_setup.lock().await;
        if !tokio::fs::try_exists(&ready).await.unwrap_or(false) {
            let host = self
                .host_toolchain(&tc.dir)
                .await
                .map_err(|e| e.to_string())?;
            let mut report = PrepareReport::default();
            let result = self
                .preparer
                .miri_setup(&host, &host_dir, &mut report)
                .await;
            body.extend_from_slice(report.log.as_bytes());
            result.map_err(|e| e.to_string())?;
            tokio::fs::write(&ready, b"")
                .await
                .map_err(|e| format!("marking the miri sysroot ready: {e}"))?;
        }
        Ok(format!("{}/{rel}", paths::CARGO_HOME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capabilities_name_the_installed_toolchains() {
        let home = tempfile::tempdir().unwrap();
        let tc = |dir: &str, tools: &[&str]| {
            let bin = home.path().join("toolchains").join(dir).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            for t in tools {
                std::fs::write(bin.join(t), "").unwrap();
            }
        };
        std::fs::write(
            home.path().join("settings.toml"),
            "default_host_triple = \"x86_64-unknown-linux-gnu\"\n",
        )
        .unwrap();
        tc("stable-x86_64-unknown-linux-gnu", &["cargo", "rustc"]);
        tc(
            "nightly-x86_64-unknown-linux-gnu",
            &["cargo", "rustc", "cargo-miri"],
        );
        tc("broken-x86_64-unknown-linux-gnu", &["cargo"]);
        tc("Weird Name", &["cargo", "rustc"]);
        let caps = capabilities(home.path()).await.unwrap();
        assert_eq!(
            caps,
            [
                "docker".to_owned(),
                format!("arch:{}", std::env::consts::ARCH),
                "toolchain:nightly".into(),
                "toolchain:nightly-x86_64-unknown-linux-gnu".into(),
                "miri:nightly".into(),
                "toolchain:stable".into(),
                "toolchain:stable-x86_64-unknown-linux-gnu".into(),
            ]
        );
    }

    #[tokio::test]
    async fn identities_are_read_from_rustc_and_cargo_under_both_names() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("settings.toml"),
            "default_host_triple = \"x86_64-unknown-linux-gnu\"\n",
        )
        .unwrap();
        let script = |dir: &str, tool: &str, body: &str| {
            let bin = home.path().join("toolchains").join(dir).join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let path = bin.join(tool);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let nightly = "nightly-x86_64-unknown-linux-gnu";
        script(
            nightly,
            "cargo",
            "echo 'cargo 1.95.0-nightly (fedcba987 2026-11-29)'",
        );
        script(
            nightly,
            "rustc",
            "printf 'rustc 1.95.0-nightly\\ncommit-hash: 0123456789abcdef\\ncommit-date: \
             2026-11-30\\nhost: x86_64-unknown-linux-gnu\\nrelease: 1.95.0-nightly\\n'",
        );
        // a rustc that cannot tell: left out, the worker still starts
        script(
            "stable-x86_64-unknown-linux-gnu",
            "cargo",
            "echo 'cargo 1.95.0 (x 2026-11-01)'",
        );
        script("stable-x86_64-unknown-linux-gnu", "rustc", "exit 1");
        let ids = toolchain_identities(home.path()).await.unwrap();
        let names: Vec<&str> = ids.iter().map(|i| i.toolchain.as_str()).collect();
        assert_eq!(names, ["nightly", nightly]);
        assert_eq!(ids[0].commit_hash, "0123456789abcdef");
        assert_eq!(ids[0].cargo, "1.95.0-nightly (fedcba987 2026-11-29)");
        assert!(ids[0].same_build(&ids[1]));
        assert_eq!(
            ids[0].capability().as_deref(),
            Some("toolchain-id:nightly=0123456789ab")
        );
    }

    #[test]
    fn toolchain_dir_keys_are_distinct_and_tame() {
        let a = toolchain_dir_key("stable");
        let b = toolchain_dir_key("stable+rustflags=-Dwarnings");
        let c = toolchain_dir_key("stable+rustflags=-Dwarnings/");
        assert!(a.starts_with("stable-"));
        assert_ne!(b, c);
        for k in [&a, &b, &c] {
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
                "{k}"
            );
        }
        assert_eq!(
            mount_name(&ToolchainSource::Rustup("nightly".into())),
            "nightly"
        );
        assert_eq!(
            mount_name(&ToolchainSource::Path("/opt/rust".into())),
            "toolchain"
        );
    }
}
