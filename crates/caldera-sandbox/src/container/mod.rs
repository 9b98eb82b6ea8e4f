//! One job's container and the steps run in it.
//!
//! A container serves one side of one job: PID 1 is a shell that sleeps and reaps orphans; the
//! steps run by `docker exec` — all of a side's steps in one exec ([`Container::exec_steps`]),
//! through a small shell driver that marks where each step ends, because every exec costs the
//! engine tens of milliseconds. After each step every process of the sandbox user except PID 1 is
//! killed, so nothing a step left behind (daemons, fork-bomb remnants) reaches the next. When a
//! step times out, or anything about the container is in doubt, the whole container is killed
//! (which ends every process in it at once, however it forked) and restarted before the next
//! exec; mounts are host directories, so only the tmpfs (`/tmp`, `$HOME`) is lost.
//!
//! The modules, by job: [`launch`] starts step driver execs and hands them their script (see
//! [`driver`] for the script and its end markers), [`run`] follows a driver's output through the
//! steps' timeouts to one result per step, [`meter`] measures each step, [`cleanup`] kills what a
//! step left behind, and [`loss`] tells a container lost from outside from a step that died.

mod cleanup;
mod driver;
mod launch;
mod loss;
mod meter;
mod run;

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, StartContainerOptions,
};

use crate::cgroup::ContainerCgroup;
use crate::error::{Result, SandboxError};
use crate::sandbox::{docker_client, force_remove, is_not_found};
use crate::spec::paths;
use launch::DriverExec;

/// The environment every step starts from (before [`StepCommand::env`](crate::StepCommand::env)).
pub(crate) fn base_env(toolchain: &str) -> Vec<(String, String)> {
    [
        (
            "PATH",
            format!(
                "{}/{toolchain}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                paths::TOOLCHAINS
            ),
        ),
        ("HOME", paths::HOME.to_owned()),
        ("USER", "caldera".to_owned()),
        ("CARGO_HOME", paths::CARGO_HOME.to_owned()),
        ("CARGO_TARGET_DIR", paths::TARGET.to_owned()),
        ("CARGO_TERM_COLOR", "never".to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A running sandbox container of one job.
#[derive(Debug)]
pub struct Container {
    docker: Docker,
    /// Where the engine is, for removing the container from `Drop` with a client of its own.
    docker_host: Option<String>,
    id: String,
    name: String,
    uid: u32,
    gid: u32,
    toolchains: Vec<String>,
    use_host_cgroups: bool,
    cgroup: Option<ContainerCgroup>,
    /// Tasks in the container's pids cgroup when only PID 1 and its sleep run.
    idle_tasks: Option<u64>,
    /// The host pid of the container's init in the run the steps started in (another pid means
    /// it was restarted from outside).
    init_pid: Option<i64>,
    /// The container was killed (or is in doubt) and must be (re)started before the next step.
    needs_start: bool,
    removed: bool,
    /// A step driver started ahead ([`Container::prime`]), waiting for its script. (In a mutex
    /// only so that `Container` is `Sync`: the streams are not.)
    primed: Option<std::sync::Mutex<DriverExec>>,
}

impl Container {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        docker: Docker,
        docker_host: Option<String>,
        id: String,
        name: String,
        uid: u32,
        gid: u32,
        toolchains: Vec<String>,
        use_host_cgroups: bool,
    ) -> Self {
        Self {
            docker,
            docker_host,
            id,
            name,
            uid,
            gid,
            toolchains,
            use_host_cgroups,
            cgroup: None,
            idle_tasks: None,
            init_pid: None,
            needs_start: true,
            removed: false,
            primed: None,
        }
    }

    /// The engine's id of the container.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's name (`caldera-<owner>-…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names of the mounted toolchains; the first is the default.
    pub fn toolchains(&self) -> &[String] {
        &self.toolchains
    }

    /// Whether host cgroup files are used for OOM, pids and peak-memory facts (else engine events
    /// and stats).
    pub fn reads_host_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    fn user(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    fn gone(&self, message: impl Into<String>) -> SandboxError {
        SandboxError::Container {
            container: self.name.clone(),
            message: message.into(),
        }
    }

    /// Starts the (created or killed) container and finds its cgroup.
    pub(crate) async fn start(&mut self) -> Result<()> {
        self.docker
            .start_container(&self.id, None::<StartContainerOptions>)
            .await
            .map_err(SandboxError::docker("start container"))?;
        let inspect = self
            .docker
            .inspect_container(&self.id, None::<InspectContainerOptions>)
            .await
            .map_err(SandboxError::docker("inspect container"))?;
        let state = inspect.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(self.gone(format!(
                "did not keep running after start (exit code {:?}, error {:?})",
                state.exit_code, state.error
            )));
        }
        self.init_pid = state.pid.filter(|&p| p > 0);
        self.cgroup = if self.use_host_cgroups {
            ContainerCgroup::locate(state.pid.unwrap_or(0), &self.id).await
        } else {
            None
        };
        self.idle_tasks = None;
        if let Some(cg) = &self.cgroup {
            // PID 1 and its sleep; give the shell a moment to fork it.
            for _ in 0..40 {
                if cg.pids_current().await == Some(2) {
                    self.idle_tasks = Some(2);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.needs_start = false;
        Ok(())
    }

    /// Makes sure the container runs before a step: restarts it if it was killed or died.
    async fn ensure_running(&mut self) -> Result<()> {
        if !self.needs_start {
            let inspect = match self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => inspect,
                Err(e) if is_not_found(&e) => {
                    self.removed = true;
                    self.primed = None;
                    return Err(self.gone("was removed from outside before its steps"));
                }
                Err(e) => return Err(SandboxError::docker("inspect container")(e)),
            };
            if inspect.state.and_then(|s| s.running) == Some(true) {
                return Ok(());
            }
            tracing::warn!(
                container = self.name,
                "sandbox container stopped; restarting it"
            );
        }
        self.start().await
    }

    async fn kill(&mut self) {
        self.needs_start = true;
        self.primed = None;
        if let Err(e) = self
            .docker
            .kill_container(
                &self.id,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("KILL")
                        .build(),
                ),
            )
            .await
        {
            // 409: not running any more, which is what we want.
            tracing::debug!(container = self.name, error = %e, "kill container");
        }
    }

    /// Removes the container (killing whatever runs in it).
    pub async fn remove(mut self) -> Result<()> {
        self.remove_in_place().await
    }

    pub(crate) async fn remove_in_place(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        force_remove(&self.docker, &self.id)
            .await
            .map_err(SandboxError::docker("remove container"))?;
        self.removed = true;
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Best effort, from a thread of its own with its own client: the caller's runtime may be
        // shutting down (a panicking test, a worker exiting), and tasks spawned on it would be
        // dropped. Whatever is still missed is swept by the next `Sandbox::connect` of the same
        // owner.
        let docker_host = self.docker_host.clone();
        let id = std::mem::take(&mut self.id);
        let spawned = std::thread::Builder::new()
            .name("caldera-sandbox-drop".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok(docker) = docker_client(docker_host.as_deref()) else {
                        return;
                    };
                    let Ok(docker) = docker.negotiate_version().await else {
                        return;
                    };
                    let _ = force_remove(&docker, &id).await;
                });
            });
        if let Err(e) = spawned {
            tracing::warn!(container = self.name, error = %e, "could not remove dropped container");
        }
    }
}
