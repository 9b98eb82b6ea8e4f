//! Shared set-up of the Docker integration tests.
//!
//! These tests need a running Docker engine and the sandbox image. Run first (as root):
//!
//! ```text
//! scripts/ensure-docker.sh
//! scripts/build-sandbox-image.sh
//! ```
//!
//! (the project's xtask runs both before the tests). Without them the tests fail with the error of
//! `Sandbox::connect`, which says which script to run. The host's rustup home (`$RUSTUP_HOME`, else
//! `~/.rustup`) must hold a `stable` toolchain, and `nightly` for the regression test.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use caldera_sandbox::{
    Container, JobMounts, LABEL_OWNER, LABEL_SANDBOX, Limits, Sandbox, SandboxConfig, StepCommand,
    StepResult, ToolchainMount, default_rustup_home, resolve_toolchain,
};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/crates")
}

/// Host directories of one job: a copy of a fixture crate, an empty target dir and an empty cargo
/// home, all under one temporary directory removed at the end.
pub struct JobDirs {
    root: tempfile::TempDir,
    pub source: PathBuf,
    pub target: PathBuf,
    pub cargo_home: PathBuf,
}

impl JobDirs {
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "target" {
                continue;
            }
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn make_world_readable(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            make_world_readable(&entry.unwrap().path());
        }
    }
}

/// Copies fixture `name` into a fresh job directory.
pub fn job_dirs(name: &str) -> JobDirs {
    let root = tempfile::Builder::new()
        .prefix(&format!("caldera-sbx-{name}-"))
        .tempdir()
        .unwrap();
    let source = root.path().join("src");
    let target = root.path().join("target");
    let cargo_home = root.path().join("cargo-home");
    copy_tree(&fixtures_dir().join(name), &source);
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&cargo_home).unwrap();
    make_world_readable(root.path());
    JobDirs {
        root,
        source,
        target,
        cargo_home,
    }
}

pub async fn toolchain(name: &str) -> ToolchainMount {
    let home = default_rustup_home().expect("RUSTUP_HOME or HOME must be set");
    let installed = resolve_toolchain(&home, name)
        .await
        .unwrap_or_else(|e| panic!("toolchain {name}: {e}"));
    ToolchainMount::new(name, installed.path)
}

static OWNER_SEQ: AtomicU32 = AtomicU32::new(0);
static SWEPT: AtomicBool = AtomicBool::new(false);

/// Removes containers left by earlier test processes that died (their owner is
/// `test-<name>-<pid>-<seq>` and that pid is gone). Once per process.
async fn sweep_dead_test_runs() {
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let docker = bollard::Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let filters = std::collections::HashMap::from([("label", vec![LABEL_SANDBOX.to_owned()])]);
    let list = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    for summary in list {
        let owner = summary
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_OWNER))
            .cloned()
            .unwrap_or_default();
        let Some(rest) = owner.strip_prefix("test-") else {
            continue;
        };
        let mut parts = rest.rsplitn(3, '-');
        let (_seq, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = docker
                .remove_container(
                    summary.id.as_deref().unwrap_or_default(),
                    Some(
                        bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ),
                )
                .await;
        }
    }
}

/// A sandbox whose owner label is unique to this test, so the start-up sweep of one test never
/// removes another test's containers.
pub async fn sandbox(test: &str) -> Sandbox {
    sandbox_with(test, |_| {}).await
}

pub async fn sandbox_with(test: &str, tweak: impl FnOnce(&mut SandboxConfig)) -> Sandbox {
    sweep_dead_test_runs().await;
    let mut config = SandboxConfig {
        owner: format!(
            "test-{test}-{}-{}",
            std::process::id(),
            OWNER_SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        ..SandboxConfig::default()
    };
    tweak(&mut config);
    Sandbox::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn mounts(dirs: &JobDirs, toolchains: Vec<ToolchainMount>) -> JobMounts {
    JobMounts {
        source: dirs.source.clone(),
        target: dirs.target.clone(),
        cargo_home: dirs.cargo_home.clone(),
        toolchains,
    }
}

/// Limits small enough for two tests to run side by side on a 2-core machine.
pub fn test_limits() -> Limits {
    Limits {
        memory_bytes: 2 << 30,
        cpus: 1.0,
        pids: 256,
        tmp_bytes: 256 << 20,
    }
}

/// Creates a container for fixture `fixture` with the stable toolchain.
pub async fn stable_job(
    test: &str,
    fixture: &str,
    limits: Limits,
) -> (Sandbox, JobDirs, Container) {
    let sandbox = sandbox(test).await;
    let dirs = job_dirs(fixture);
    let container = sandbox
        .create(mounts(&dirs, vec![toolchain("stable").await]), limits)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (sandbox, dirs, container)
}

pub fn cargo(args: &[&str]) -> StepCommand {
    let mut argv = vec!["cargo"];
    argv.extend_from_slice(args);
    StepCommand::new(argv).timeouts(Duration::from_secs(300), Duration::from_secs(120))
}

pub async fn run(container: &mut Container, step: &StepCommand) -> StepResult {
    let result = container
        .exec(step)
        .await
        .unwrap_or_else(|e| panic!("{:?} failed in the sandbox infrastructure: {e}", step.argv));
    eprintln!(
        "--- {:?}: exit {:?}, timeout {:?}, oom {}, pids limit hit {}, peak {:?}, {:?}, log {:?}",
        step.argv,
        result.exit_code,
        result.timed_out,
        result.oom_killed,
        result.pids_limit_hit,
        result.peak_memory_bytes,
        result.duration,
        result.output
    );
    result
}

/// Prints the head and tail of a log (for a failing assertion's context).
pub fn excerpt(result: &StepResult) -> String {
    let text = result.output.text();
    if text.len() <= 6000 {
        return text.into_owned();
    }
    let head_end = text.floor_char_boundary(3000);
    let tail_start = text.ceil_char_boundary(text.len() - 3000);
    format!("{}\n…\n{}", &text[..head_end], &text[tail_start..])
}
