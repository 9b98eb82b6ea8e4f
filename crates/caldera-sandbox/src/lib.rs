//! caldera-sandbox: runs untrusted cargo steps in Docker containers.
//!
//! One container per job ([`Sandbox::create`]; the worker's executor makes one per toolchain side),
//! created with a step driver exec already waiting in it; a sequence of steps runs through that
//! driver in one `docker exec` ([`Container::exec_steps`], or [`Container::exec`] for one step).
//! Every container has no network, a read-only root filesystem with tmpfs `/tmp` and `$HOME`, the
//! crate source, `CARGO_HOME` and the toolchains mounted read-only, a writable host target dir,
//! memory = memory+swap, CPU and pids limits, all capabilities dropped, `no-new-privileges`, and runs
//! as an unprivileged user. Every step gets an environment built from scratch, total and no-output
//! timeouts, OOM and pids-limit detection, peak memory, and a capped, timestamped log of its merged
//! output.
//!
//! Errors ([`SandboxError`]) are infrastructure failures only; what the crate did is a [`StepResult`].
//!
//! The image comes from `scripts/build-sandbox-image.sh` (offline) or `docker/builder/Dockerfile`;
//! the engine from `scripts/ensure-docker.sh`.

mod cgroup;
mod container;
mod error;
pub mod log;
mod sandbox;
mod spec;
pub mod toolchain;

pub use container::Container;
pub use error::{ContainerLoss, Result, SandboxError};
pub use log::{CapturedLog, DEFAULT_LOG_CAP};
pub use sandbox::{EngineInfo, Sandbox};
pub use spec::{
    DEFAULT_IMAGE, DEFAULT_PIDS, JobMounts, LABEL_OWNER, LABEL_SANDBOX, Limits, SandboxConfig,
    StepCommand, StepResult, TimeoutKind, Timeouts, ToolchainMount, paths,
};
pub use toolchain::{
    InstalledToolchain, RustcVersion, default_rustup_home, list_toolchains, resolve_toolchain,
    rustc_version,
};
