//! Errors of the sandbox itself.
//!
//! A [`SandboxError`] always means the sandbox could not do its job (engine down, image missing,
//! container could not be created, a mount is unusable, …). It never describes the crate under test:
//! a step that ran and failed, timed out or was OOM-killed is a successful
//! [`StepResult`](crate::StepResult). Callers must record a `SandboxError` as an infrastructure `error`
//! outcome (retried), never as a build or test failure.

use std::path::PathBuf;

use crate::spec::StepResult;

/// Infrastructure failure of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Docker engine could not be reached or answered garbage.
    #[error(
        "Docker engine at {endpoint} is not reachable: {source}; start it with scripts/ensure-docker.sh"
    )]
    EngineUnreachable {
        endpoint: String,
        #[source]
        source: bollard::errors::Error,
    },

    /// The sandbox image is not in the local engine.
    #[error(
        "sandbox image {image} is not present in the Docker engine; build it with \
         `scripts/build-sandbox-image.sh {image}` (offline: debootstrap + docker import) or, where \
         registries can be reached, `docker build -t {image} docker/builder`"
    )]
    ImageMissing { image: String },

    /// A Docker API call failed.
    #[error("Docker {operation} failed: {source}")]
    Docker {
        operation: &'static str,
        #[source]
        source: bollard::errors::Error,
    },

    /// The container died or disappeared in a way the sandbox could not recover from.
    #[error("sandbox container {container}: {message}")]
    Container { container: String, message: String },

    /// The container was removed, killed or stopped from outside (an operator's `docker rm -f` or
    /// `docker kill`, a sweep, the engine) while step `step` (1-based, of the steps handed to
    /// [`Container::exec_steps`](crate::Container::exec_steps)) ran. Its processes died with
    /// SIGKILL, exactly as an OOM kill ends them, but the crate did nothing: this is never `oom` nor
    /// a build or test failure. `steps` holds the results of the steps that ran, the interrupted
    /// one last (its output up to the kill; its exit status is the kill's, and means nothing about
    /// the crate), for the caller's log.
    #[error("the sandbox container {container} was {loss} during step {step}")]
    ContainerLost {
        container: String,
        step: usize,
        loss: ContainerLoss,
        steps: Vec<StepResult>,
    },

    /// A host directory meant to be mounted is missing or unusable.
    #[error("mount {role} ({path}): {message}")]
    Mount {
        role: &'static str,
        path: PathBuf,
        message: String,
    },

    /// A toolchain was asked for that the rustup home does not hold.
    #[error("toolchain {name:?} is not installed in {rustup_home} (installed: {installed})")]
    ToolchainNotFound {
        name: String,
        rustup_home: PathBuf,
        installed: String,
    },

    /// The caller asked for something the sandbox refuses (empty argv, bad env name, …).
    #[error("invalid request: {0}")]
    Invalid(String),

    /// Host I/O failed (reading a rustup home, preparing a mount, …).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    /// Whether retrying the same job (here or on another worker) may succeed. Configuration problems
    /// (image or toolchain missing, invalid request) are not retryable on this worker; everything
    /// else (engine hiccups, dying containers, I/O) is.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            SandboxError::ImageMissing { .. }
                | SandboxError::ToolchainNotFound { .. }
                | SandboxError::Invalid(_)
        )
    }

    pub(crate) fn docker(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> Self {
        move |source| SandboxError::Docker { operation, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// How a container was lost from outside during a step (see [`SandboxError::ContainerLost`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerLoss {
    /// The container no longer exists (`docker rm -f`, a sweep of leftover containers).
    Removed,
    /// The container stopped (`docker kill`, `docker stop`, the engine stopping or restarting)
    /// without the engine or the cgroup counting an OOM kill. `exit_code` is the container's, as
    /// the engine reports it (137 after SIGKILL).
    Stopped { exit_code: Option<i64> },
    /// The container runs again, but not the run the step started in (`docker restart`).
    Restarted,
}

impl std::fmt::Display for ContainerLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerLoss::Removed => f.write_str("removed from outside"),
            ContainerLoss::Stopped {
                exit_code: Some(code),
            } => write!(f, "killed from outside (container exit status {code})"),
            ContainerLoss::Stopped { exit_code: None } => f.write_str("killed from outside"),
            ContainerLoss::Restarted => f.write_str("restarted from outside"),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
