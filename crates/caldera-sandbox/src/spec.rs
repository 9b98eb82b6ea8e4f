//! What the caller asks for: the sandbox configuration, a job's mounts and limits, and a step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, SandboxError};
use crate::log::{CapturedLog, DEFAULT_LOG_CAP};

/// Default sandbox image, built by `scripts/build-sandbox-image.sh` or `docker/builder/Dockerfile`.
pub const DEFAULT_IMAGE: &str = "caldera-builder:latest";

/// Where things are inside the container. The image's `PATH` and `WORKDIR` use the same layout.
pub mod paths {
    /// The crate source (read-only).
    pub const SOURCE: &str = "/caldera/src";
    /// The target directory (writable, a host directory).
    pub const TARGET: &str = "/caldera/target";
    /// `CARGO_HOME` (read-only).
    pub const CARGO_HOME: &str = "/caldera/cargo-home";
    /// The job's first toolchain, also mounted here so the image's default `PATH` finds it.
    pub const DEFAULT_TOOLCHAIN: &str = "/caldera/toolchain";
    /// Every mounted toolchain is at `TOOLCHAINS/<name>`.
    pub const TOOLCHAINS: &str = "/caldera/toolchains";
    /// `HOME` of the sandbox user (a tmpfs).
    pub const HOME: &str = "/home/caldera";
}

/// Label put on every sandbox container.
pub const LABEL_SANDBOX: &str = "org.caldera.sandbox";
/// Label naming the [`SandboxConfig::owner`] of a container, used by the start-up sweep.
pub const LABEL_OWNER: &str = "org.caldera.sandbox.owner";

/// How to reach the engine and which image to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`, …). `None`: `DOCKER_HOST`,
    /// else the local default socket.
    pub docker_host: Option<String>,
    /// The sandbox image.
    pub image: String,
    /// Who owns the containers this sandbox creates (`caldera worker` and `caldera local` pass
    /// their work dir's instance id). Containers are labelled with it, and
    /// [`Sandbox::connect`](crate::Sandbox::connect) removes leftovers with the same owner when
    /// `sweep_on_connect` is set, and no others. Two processes sharing one engine need different
    /// owners, and a sweeping process must be the only one with its owner (the worker holds its
    /// work dir's lock before it connects).
    pub owner: String,
    /// Remove this owner's leftover containers (from a crash) when connecting.
    pub sweep_on_connect: bool,
    /// Numeric user and group the steps run as (the image's `caldera` user is 1000:1000).
    pub uid: u32,
    pub gid: u32,
    /// Read OOM kills, pids-limit hits and peak memory from the container's cgroup on this host. When
    /// off (or when the cgroup cannot be found, e.g. with a remote engine), the engine's events and
    /// stats are used instead.
    pub use_host_cgroups: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            docker_host: None,
            image: DEFAULT_IMAGE.to_owned(),
            owner: "default".to_owned(),
            sweep_on_connect: true,
            uid: 1000,
            gid: 1000,
            use_host_cgroups: true,
        }
    }
}

/// A toolchain directory (e.g. from [`resolve_toolchain`](crate::resolve_toolchain)) and the name it
/// gets inside the container (`/caldera/toolchains/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainMount {
    pub name: String,
    pub path: PathBuf,
}

impl ToolchainMount {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
        }
    }
}

/// Host directories of one job. All must exist. `source`, `cargo_home` and the toolchains are mounted
/// read-only and must be readable by the sandbox user (world-readable, or owned by it); `target` is
/// mounted writable and is handed to the sandbox user if it belongs to someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMounts {
    pub source: PathBuf,
    pub target: PathBuf,
    pub cargo_home: PathBuf,
    /// At least one. The first is the default for steps that name none.
    pub toolchains: Vec<ToolchainMount>,
}

/// Resource limits of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit; swap is set equal, so the container cannot swap.
    pub memory_bytes: u64,
    /// CPUs (may be fractional).
    pub cpus: f64,
    /// Maximum number of tasks (processes and threads); default [`DEFAULT_PIDS`].
    pub pids: u32,
    /// Size of the tmpfs at `/tmp` (counts against the memory limit when used).
    pub tmp_bytes: u64,
}

/// The default pids limit (tasks: processes and threads) of a sandbox container.
///
/// Set from what real builds need, measured as the container's `pids.peak` (docs/benchmarks.md,
/// "Sandbox pids limit"): a test that starts 1,000 threads meeting at a barrier (the
/// `many-threads` fixture) peaks at 1,005 tasks, so it failed under the former default of 512;
/// building caldera-sandbox's tests from scratch (105 crates) peaks at 23 tasks with cargo's
/// default 2 jobs and at 102 with `-j16`; building and running caldera-core's tests, 22. crater
/// sets no limit at all, but a fork bomb must still be stopped. 4096 leaves room for four such
/// thousand-thread tests at once (libtest runs one test per CPU) and a wide build beside them,
/// and still stops the `canary-fork-bomb` fixture within about 2 s of its start, at 716 MiB
/// (512: 0.3 s, 120 MiB; 8192: 7.9 s, 1,062 MiB) — well inside the default 4 GiB of memory, so a
/// bomb ends as `pids-limit`, not `oom`.
pub const DEFAULT_PIDS: u32 = 4096;

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 4 << 30,
            cpus: 2.0,
            pids: DEFAULT_PIDS,
            tmp_bytes: 1 << 30,
        }
    }
}

impl Limits {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.memory_bytes < 16 << 20 {
            return Err(SandboxError::Invalid(format!(
                "memory limit {} bytes is below 16 MiB",
                self.memory_bytes
            )));
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01) {
            return Err(SandboxError::Invalid(format!(
                "cpus {} is not a positive number",
                self.cpus
            )));
        }
        if self.pids < 8 {
            return Err(SandboxError::Invalid(format!(
                "pids limit {} is too small to run anything",
                self.pids
            )));
        }
        if self.tmp_bytes == 0 {
            return Err(SandboxError::Invalid("tmp_bytes must not be 0".into()));
        }
        Ok(())
    }
}

/// Total and no-output timeouts of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Wall-clock limit of the whole step.
    pub total: Duration,
    /// Limit on the time without any output.
    pub no_output: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            total: Duration::from_secs(15 * 60),
            no_output: Duration::from_secs(5 * 60),
        }
    }
}

/// Which timeout ended a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Total,
    NoOutput,
}

/// One command to run in the container.
///
/// The environment is built from scratch: `PATH` (the chosen toolchain's `bin` first), `HOME`,
/// `USER`, `CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_TERM_COLOR=never`, `LANG`, `TMPDIR`, then
/// [`StepCommand::env`] on top. Nothing of the caller's own environment reaches the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCommand {
    pub argv: Vec<String>,
    /// Extra variables; they override the base environment.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the container; default [`paths::SOURCE`].
    pub workdir: Option<String>,
    /// Name of a mounted toolchain to put on `PATH`; default: the job's first.
    pub toolchain: Option<String>,
    pub timeouts: Timeouts,
    /// Cap of the captured log, in bytes.
    pub log_cap: usize,
}

impl StepCommand {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: None,
            toolchain: None,
            timeouts: Timeouts::default(),
            log_cap: DEFAULT_LOG_CAP,
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    pub fn toolchain(mut self, name: impl Into<String>) -> Self {
        self.toolchain = Some(name.into());
        self
    }

    pub fn timeouts(mut self, total: Duration, no_output: Duration) -> Self {
        self.timeouts = Timeouts { total, no_output };
        self
    }

    pub fn log_cap(mut self, bytes: usize) -> Self {
        self.log_cap = bytes;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let Some(program) = self.argv.first() else {
            return Err(SandboxError::Invalid("argv is empty".into()));
        };
        if program.is_empty() || program.contains('=') {
            return Err(SandboxError::Invalid(format!(
                "program {program:?} must be non-empty and contain no '='"
            )));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(SandboxError::Invalid("argv contains a NUL byte".into()));
        }
        for (key, value) in &self.env {
            if !valid_env_name(key) {
                return Err(SandboxError::Invalid(format!(
                    "environment variable name {key:?} is not a valid name"
                )));
            }
            if value.contains('\0') {
                return Err(SandboxError::Invalid(format!(
                    "environment variable {key} contains a NUL byte"
                )));
            }
        }
        if let Some(dir) = &self.workdir
            && !dir.starts_with('/')
        {
            return Err(SandboxError::Invalid(format!(
                "workdir {dir:?} must be an absolute path inside the container"
            )));
        }
        if self.timeouts.total.is_zero() || self.timeouts.no_output.is_zero() {
            return Err(SandboxError::Invalid("timeouts must be non-zero".into()));
        }
        Ok(())
    }
}

pub(crate) fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

pub(crate) fn valid_toolchain_mount_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What happened to one step. These are raw facts for the caller to classify; none of them is an
/// infrastructure error.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Exit code of the step's process; `None` when it was killed for a timeout or the container died
    /// under it.
    pub exit_code: Option<i64>,
    /// Which timeout ended the step, if one did.
    pub timed_out: Option<TimeoutKind>,
    /// The kernel's OOM killer killed a process of the container during the step.
    pub oom_killed: bool,
    /// A fork failed during the step because the pids limit was reached.
    pub pids_limit_hit: bool,
    /// Peak memory of the container during the step (or, where the kernel cannot reset the
    /// high-water mark, since the container started). `None` when unknown.
    pub peak_memory_bytes: Option<u64>,
    pub duration: Duration,
    /// Merged stdout and stderr, timestamped and capped.
    pub output: CapturedLog,
}

impl StepResult {
    /// Exited 0 by itself, within its limits.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.timed_out.is_none() && !self.oom_killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_validation() {
        assert!(StepCommand::new(["cargo", "build"]).validate().is_ok());
        assert!(StepCommand::new(Vec::<String>::new()).validate().is_err());
        assert!(StepCommand::new(["A=b", "x"]).validate().is_err());
        assert!(StepCommand::new(["x"]).env("1BAD", "v").validate().is_err());
        assert!(StepCommand::new(["x"]).env("OK_1", "v").validate().is_ok());
        assert!(StepCommand::new(["x"]).env("A=B", "v").validate().is_err());
        assert!(StepCommand::new(["x"]).workdir("rel").validate().is_err());
        assert!(
            StepCommand::new(["x"])
                .timeouts(Duration::ZERO, Duration::from_secs(1))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn limits_validation() {
        assert!(Limits::default().validate().is_ok());
        let small = Limits {
            pids: 2,
            ..Limits::default()
        };
        assert!(small.validate().is_err());
        let nan = Limits {
            cpus: f64::NAN,
            ..Limits::default()
        };
        assert!(nan.validate().is_err());
    }

    #[test]
    fn toolchain_mount_names() {
        assert!(valid_toolchain_mount_name(
            "stable-x86_64-unknown-linux-gnu"
        ));
        assert!(valid_toolchain_mount_name("1.95.0"));
        assert!(!valid_toolchain_mount_name(".."));
        assert!(!valid_toolchain_mount_name("a/b"));
        assert!(!valid_toolchain_mount_name(""));
    }
}
