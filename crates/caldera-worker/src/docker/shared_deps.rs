//! Shared dependency builds (see docs/ARCHITECTURE.md, "Shared dependency builds"): before a
//! first run's steps, the side's emptied target dir gets the [`depstore`](super::depstore)'s
//! units of the crate's registry packages; a *deps-only build* then runs the mode's compiling
//! steps on a stub of the crate (its manifests and lockfile, every `.rs` file an empty `main`),
//! so that no code of the crate under test runs; the registry units it completed are copied into
//! the store; and the target dir is emptied and filled from the store once more, so the crate's
//! real steps start from store files only (nothing the deps-only build left, no stub unit).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use caldera_classify::{StepKind, Termination};
use caldera_core::experiment::Mode;
use caldera_core::job::JobSpec;
use caldera_core::toolchain::Toolchain;
use caldera_sandbox::{Container, StepCommand, StepResult, paths};
use sha2::{Digest, Sha256};

use super::depstore::{self, LockPackages, Owner, Populated};
use super::log::{LogText, write_step_output};
use super::steps::{fresh_tmp_dir, plan_steps};
use super::toolchains::{SideToolchain, toolchain_dir_key};
use super::{Inner, lock, sandbox_reason};

/// Where the stub of the crate is written, inside the target dir (root's, read-only to the
/// sandbox user).
pub(super) const STUB_DIR: &str = ".caldera-deps-src";

/// Every `.rs` file of the stub: compiles as any kind of target, does nothing.
const STUB: &str = "#![allow(warnings)]\nfn main() {}\n";

/// A side's deps-only build, planned by [`Inner::plan_deps_build`].
pub(super) struct DepsPlan {
    store: PathBuf,
    packages: LockPackages,
    commands: Vec<StepCommand>,
    /// What the first filling of the target dir placed.
    populated: Populated,
}

impl Inner {
    /// Before the clean re-run after a [`store_conflict`]: the target dir is emptied, and the log
    /// says why.
    pub(super) async fn purge_store_conflict(
        &self,
        target: &Path,
        body: &mut Vec<u8>,
    ) -> Result<(), String> {
        let _ = writeln!(
            LogText(body),
            "\n==== a dependency linked from the dependency store was rebuilt and could not be \
             replaced; re-running this side in a clean target dir without the store ===="
        );
        self.purge(target.to_owned(), false)
            .await
            .map_err(|e| format!("emptying the target dir: {e}"))?;
        lock(&self.stats).store_conflict_reruns += 1;
        Ok(())
    }

    /// The store of one build key: the toolchain (its id and resolved dir) and every variable the
    /// steps get (flags, cap-lints, the operator's environment).
    fn depstore_dir(&self, tc: &SideToolchain, env: &[(String, String)]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(tc.spec.id().as_bytes());
        h.update([0]);
        h.update(tc.dir.as_os_str().as_encoded_bytes());
        for (k, v) in env {
            h.update([0]);
            h.update(k.as_bytes());
            h.update([b'=']);
            h.update(v.as_bytes());
        }
        let hash = hex::encode(&h.finalize()[..8]);
        self.config
            .depstore_root()
            .join(format!("{}-{hash}", toolchain_dir_key(&tc.spec.id())))
    }

    fn sandbox_owner(&self) -> Owner {
        let c = self.sandbox.config();
        Owner {
            uid: c.uid,
            gid: c.gid,
        }
    }

    /// Plans a side's deps-only build, when the store is on, for a first run (a confirmation run
    /// never uses the store) of a mode other than Miri: fills the (empty) target dir from the
    /// store and writes the stub. `None` (with a note in the log) when the crate has no usable
    /// lockfile, no registry package, or the stub cannot be written: the side then builds
    /// everything itself.
    pub(super) async fn plan_deps_build(
        &self,
        spec: &JobSpec,
        tc: &SideToolchain,
        source: &Path,
        target: &Path,
        template: &StepCommand,
        body: &mut Vec<u8>,
    ) -> Option<DepsPlan> {
        if !self.config.shared_deps || spec.run > 0 || spec.mode == Mode::Miri {
            return None;
        }
        let env: Vec<(String, String)> = template
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let store = self.depstore_dir(tc, &env);
        let (source, target2, store2) = (source.to_owned(), target.to_owned(), store.clone());
        let owner = self.sandbox_owner();
        let prepared = tokio::task::spawn_blocking(move || {
            let lockfile = std::fs::read_to_string(source.join("Cargo.lock"))
                .map_err(|e| format!("reading Cargo.lock: {e}"))?;
            let packages = depstore::lock_packages(&lockfile)?;
            if packages.registry.is_empty() {
                return Err("the lockfile has no registry package".to_owned());
            }
            let populated = depstore::populate(&store2, &target2, &packages, owner)
                .map_err(|e| format!("filling the target dir from the store: {e}"))?;
            write_stub(&source, &target2.join(STUB_DIR))
                .map_err(|e| format!("writing the crate's stub: {e}"))?;
            Ok::<_, String>((packages, populated))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (packages, populated) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(LogText(body), "==== shared dependencies not used: {e} ====");
                return None;
            }
        };
        let commands = deps_commands(spec.mode, &tc.spec, template);
        Some(DepsPlan {
            store,
            packages,
            commands,
            populated,
        })
    }

    /// Runs a planned deps-only build in the side's container (before any of the crate's own
    /// steps), stores the registry units it completed, and refills the target dir from the store
    /// alone. Its failures are not the crate's: they only cost the sharing. `Err` is an
    /// infrastructure failure (the container is gone).
    pub(super) async fn run_deps_build(
        &self,
        container: &mut Container,
        target: &Path,
        plan: DepsPlan,
        body: &mut Vec<u8>,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        fresh_tmp_dir(target)
            .await
            .map_err(|e| format!("preparing the step temp dir: {e}"))?;
        let n = plan.commands.len();
        for (i, cmd) in plan.commands.iter().enumerate() {
            let result = match container.exec_steps(std::slice::from_ref(cmd)).await {
                Ok(mut r) if !r.is_empty() => r.remove(0),
                Ok(_) => return Err("the deps-only build ran no step".into()),
                Err(e) => return Err(sandbox_reason(&e)),
            };
            let end = match result.exit_code {
                Some(0) => "ok".to_owned(),
                Some(c) => format!("exit {c} (ignored: only the sharing is lost)"),
                None => "no exit status (ignored)".to_owned(),
            };
            write_step_output(body, i, n, "deps-only build", cmd, &result, &end);
        }
        let build_time = t0.elapsed();
        let (store, packages, owner) = (
            plan.store.clone(),
            plan.packages.clone(),
            self.sandbox_owner(),
        );
        let target2 = target.to_owned();
        let harvested = tokio::task::spawn_blocking(move || {
            remove_tree(&target2.join(STUB_DIR))?;
            depstore::harvest(&target2, &store, &packages)
        })
        .await
        .map_err(|e| e.to_string())?;
        // only store files from here on: nothing the deps-only build left behind stays
        self.purge(target.to_owned(), false)
            .await
            .map_err(|e| format!("emptying the target dir after the deps-only build: {e}"))?;
        let (store, packages, target2) =
            (plan.store.clone(), plan.packages.clone(), target.to_owned());
        let refilled = tokio::task::spawn_blocking(move || {
            depstore::populate(&store, &target2, &packages, owner)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("filling the target dir from the store: {e}"))?;
        let stored = match &harvested {
            Ok(h) => h.stored.len(),
            Err(e) => {
                let _ = writeln!(
                    LogText(body),
                    "\n==== storing dependency units failed: {e} ===="
                );
                0
            }
        };
        if stored > 0 {
            self.evict_store().await;
        }
        let _ = writeln!(
            LogText(body),
            "\n==== shared dependencies: {} units from the store before the deps-only build \
             ({:.2} s), {stored} units stored by it, {} units ({} linked, {} copied files) for \
             the crate's steps ====",
            plan.populated.units,
            build_time.as_secs_f64(),
            refilled.units,
            refilled.linked,
            refilled.copied,
        );
        let mut stats = lock(&self.stats);
        stats.deps_builds += 1;
        stats.deps_units_reused += plan.populated.units as u64;
        stats.deps_units_stored += stored as u64;
        Ok(())
    }
}

impl Inner {
    /// Keeps the dependency store within its size (after it grew; the units this job placed
    /// were placed last, so they go last). A failure costs only sharing.
    async fn evict_store(&self) {
        let (root, max) = (
            self.config.depstore_root(),
            self.config.shared_deps_max_bytes,
        );
        match tokio::task::spawn_blocking(move || depstore::evict(&root, max)).await {
            Ok(Ok(e)) if e.units > 0 => {
                tracing::info!(
                    units = e.units,
                    freed_mib = e.bytes >> 20,
                    kept_mib = e.kept_bytes >> 20,
                    "dependency store past its size: evicted the units placed longest ago"
                );
                lock(&self.stats).deps_units_evicted += e.units as u64;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "evicting from the dependency store"),
            Err(e) => tracing::warn!(error = %e, "evicting from the dependency store"),
        }
    }
}

/// What rustc and cargo say when they must rewrite an output that is a read-only store file.
const STORE_CONFLICT: [&str; 2] = ["-- check its permissions", "error writing dependencies to"];

/// Whether a side's steps failed because cargo rebuilt a unit whose files are linked from the
/// store (a unit the deps-only build left fresh but the crate's steps see as dirty): rustc will
/// not replace a read-only output. The side then runs once more from a clean target dir.
pub(super) fn store_conflict(results: &[(StepKind, Termination, StepResult)]) -> bool {
    results.iter().any(|(_, term, r)| {
        !term.success() && {
            let text = r.output.text();
            STORE_CONFLICT.iter().any(|p| text.contains(p))
        }
    })
}

/// The deps-only build's commands: the mode's compiling steps without running tests, with
/// `--keep-going` (`--no-fail-fast` for `cargo test`: a failing stub or dependency does not stop
/// the other units), run in the stub.
fn deps_commands(mode: Mode, toolchain: &Toolchain, template: &StepCommand) -> Vec<StepCommand> {
    plan_steps(mode, true, toolchain)
        .into_iter()
        .filter(|p| p.kind != StepKind::Test)
        .map(|p| {
            let mut argv: Vec<String> = p
                .argv
                .into_iter()
                .filter(|a| !a.starts_with("--message-format"))
                .collect();
            let at = argv
                .iter()
                .position(|a| a == "--offline")
                .map_or(argv.len(), |i| i + 1);
            // `cargo test` keeps going with `--no-fail-fast` (it has no `--keep-going`)
            let keep_going = if argv.get(1).is_some_and(|a| a == "test") {
                "--no-fail-fast"
            } else {
                "--keep-going"
            };
            argv.insert(at, keep_going.into());
            let mut cmd = template.clone();
            cmd.argv = argv;
            cmd.workdir = Some(format!("{}/{STUB_DIR}", paths::TARGET));
            cmd
        })
        .collect()
}

/// Writes the stub of the crate at `source` into `stub`: the same directories, `Cargo.toml` and
/// `Cargo.lock` files copied, every `.rs` file (or symlink named so) replaced by [`STUB`];
/// nothing else, and no symlink followed. Root's, readable by everyone.
pub(super) fn write_stub(source: &Path, stub: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(stub)?;
    std::fs::set_permissions(stub, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(source)? {
        let e = e?;
        let ty = e.file_type()?;
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        let to = stub.join(&name);
        if ty.is_dir() {
            write_stub(&e.path(), &to)?;
        } else if name_s.ends_with(".rs") {
            std::fs::write(&to, STUB)?;
        } else if ty.is_file() && (name_s == "Cargo.toml" || name_s == "Cargo.lock") {
            let text = std::fs::read(e.path())?;
            std::fs::write(&to, text)?;
        } else {
            continue;
        }
        if !ty.is_dir() {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deps_only_build_compiles_without_running_anything() {
        let template = StepCommand::new(["cargo", "x"])
            .env("RUSTFLAGS", "--cap-lints=warn")
            .toolchain("tc");
        let argvs = |mode, tc: &str| -> Vec<String> {
            deps_commands(mode, &tc.parse().unwrap(), &template)
                .into_iter()
                .map(|c| {
                    assert_eq!(
                        c.workdir.as_deref(),
                        Some("/caldera/target/.caldera-deps-src")
                    );
                    assert_eq!(c.env, template.env);
                    assert_eq!(c.toolchain.as_deref(), Some("tc"));
                    c.argv.join(" ")
                })
                .collect()
        };
        assert_eq!(
            argvs(Mode::BuildAndTest, "stable"),
            [
                "cargo build --locked --offline --keep-going",
                "cargo test --no-run --locked --offline --no-fail-fast"
            ]
        );
        assert_eq!(
            argvs(Mode::CheckOnly, "nightly+cargoflags=--release"),
            ["cargo check --all-targets --locked --offline --keep-going --release"]
        );
        assert_eq!(
            argvs(Mode::Rustdoc, "stable"),
            ["cargo doc --no-deps --locked --offline --keep-going"]
        );
    }

    #[test]
    fn the_stub_keeps_manifests_and_layout_and_no_code() {
        let dir = tempfile::tempdir().unwrap();
        let (src, stub) = (dir.path().join("src"), dir.path().join("stub"));
        let w = |p: &str, t: &str| {
            let p = src.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w("Cargo.toml", "[package]\nname = \"x\"\n");
        w("Cargo.lock", "version = 4\n");
        w("build.rs", "fn main() { evil() }");
        w("src/lib.rs", "compile_error!(\"real code\");");
        w("tests/t.rs", "#[test] fn t() {}");
        w("member/Cargo.toml", "[package]\nname = \"m\"\n");
        w("member/src/main.rs", "fn main() { evil() }");
        w("data/fixture.txt", "not copied");
        std::os::unix::fs::symlink("/etc/passwd", src.join("src/link.rs")).unwrap();
        std::os::unix::fs::symlink("/etc", src.join("etc")).unwrap();
        write_stub(&src, &stub).unwrap();
        let read = |p: &str| std::fs::read_to_string(stub.join(p)).unwrap();
        assert_eq!(read("Cargo.toml"), "[package]\nname = \"x\"\n");
        assert_eq!(read("Cargo.lock"), "version = 4\n");
        assert_eq!(read("member/Cargo.toml"), "[package]\nname = \"m\"\n");
        for rs in [
            "build.rs",
            "src/lib.rs",
            "tests/t.rs",
            "member/src/main.rs",
            "src/link.rs",
        ] {
            assert_eq!(read(rs), STUB, "{rs}");
            let meta = std::fs::symlink_metadata(stub.join(rs)).unwrap();
            assert!(meta.is_file(), "{rs} is a regular file");
        }
        assert!(!stub.join("data/fixture.txt").exists());
        assert!(
            !stub.join("etc").exists(),
            "a symlinked dir is not followed"
        );
        // a stub is written once: an existing one is an error, not merged into
        let e = write_stub(&src, &stub).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
