//! One job's container and the steps run in it.
//!
//! A container lives for the whole job: PID 1 is a shell that sleeps and reaps orphans; each step is a
//! `docker exec`. Between steps every process of the sandbox user except PID 1 is killed, so nothing a
//! step left behind (daemons, fork-bomb remnants) reaches the next. When a step times out, or anything
//! about the container is in doubt, the whole container is killed (which ends every process in it at
//! once, however it forked) and restarted before the next step; mounts are host directories, so only
//! the tmpfs (`/tmp`, `$HOME`) is lost.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StatsOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;

use crate::cgroup::{ContainerCgroup, PeakMeter};
use crate::error::{Result, SandboxError};
use crate::log::LogCapture;
use crate::sandbox::docker_client;
use crate::spec::{StepCommand, StepResult, TimeoutKind, paths};

/// How long to wait for output still in flight after the container was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);
/// How often to ask whether the step's process exited, once its output stream has closed.
const EXIT_POLL: Duration = Duration::from_millis(25);
/// Limit for the clean-up exec between steps.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment every step starts from (before [`StepCommand::env`]).
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
    /// The container was killed (or is in doubt) and must be (re)started before the next step.
    needs_start: bool,
    removed: bool,
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
            needs_start: true,
            removed: false,
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
            let inspect = self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
                .map_err(SandboxError::docker("inspect container"))?;
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

    fn step_env(&self, step: &StepCommand, toolchain: &str) -> Vec<String> {
        let mut env: Vec<(String, String)> = base_env(toolchain);
        for (k, v) in &step.env {
            if let Some(slot) = env.iter_mut().find(|(name, _)| name == k) {
                slot.1 = v.clone();
            } else {
                env.push((k.clone(), v.clone()));
            }
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Runs one step and reports what happened. An `Err` is always an infrastructure failure (see
    /// [`SandboxError`]); the step's own failure, timeout or OOM is an `Ok` [`StepResult`].
    pub async fn exec(&mut self, step: &StepCommand) -> Result<StepResult> {
        step.validate()?;
        if self.removed {
            return Err(self.gone("was removed"));
        }
        let toolchain = match &step.toolchain {
            None => self.toolchains[0].clone(),
            Some(name) if self.toolchains.contains(name) => name.clone(),
            Some(name) => {
                return Err(SandboxError::Invalid(format!(
                    "toolchain {name:?} is not mounted in this container (mounted: {})",
                    self.toolchains.join(", ")
                )));
            }
        };
        self.ensure_running().await?;

        // `env -i` drops everything the engine and image would add; `sh` merges stderr into stdout at
        // the source so the log keeps the exact order of both.
        let mut cmd: Vec<String> = vec!["/usr/bin/env".into(), "-i".into()];
        cmd.extend(self.step_env(step, &toolchain));
        cmd.extend([
            "/bin/sh".into(),
            "-c".into(),
            "exec \"$@\" 2>&1".into(),
            "caldera-step".into(),
        ]);
        cmd.extend(step.argv.iter().cloned());

        let cgroup = self.cgroup.clone();
        let oom_before = match &cgroup {
            Some(cg) => cg.oom_kills().await,
            None => None,
        };
        let pids_events_before = match &cgroup {
            Some(cg) => cg.pids_max_events().await,
            None => None,
        };
        let peak = match &cgroup {
            Some(cg) => cg.start_peak().await,
            None => PeakMeter::None,
        };
        let oom_watch = if oom_before.is_none() {
            Some(self.watch_oom_events())
        } else {
            None
        };

        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    attach_stdin: Some(false),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(cmd),
                    env: Some(vec![]),
                    user: Some(self.user()),
                    working_dir: Some(step.workdir.clone().unwrap_or_else(|| paths::SOURCE.into())),
                    privileged: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::docker("create exec"))?;
        let start = Instant::now();
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(SandboxError::docker("start exec"))?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(self.gone("exec started detached although attached was asked for"));
        };
        drop(input);

        let mut capture = LogCapture::new(step.log_cap);
        let total_deadline = start + step.timeouts.total;
        let mut last_output = start;
        let mut stream_open = true;
        let mut timed_out = None;
        let mut exit_code = None;
        loop {
            let now = Instant::now();
            let no_output_deadline = last_output + step.timeouts.no_output;
            if now >= total_deadline {
                timed_out = Some(TimeoutKind::Total);
                break;
            }
            if now >= no_output_deadline {
                timed_out = Some(TimeoutKind::NoOutput);
                break;
            }
            let deadline = total_deadline.min(no_output_deadline);
            if stream_open {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => {
                            capture.push(&chunk.into_bytes(), start.elapsed());
                            last_output = Instant::now();
                        }
                        Some(Err(e)) => {
                            self.kill().await;
                            return Err(SandboxError::Docker { operation: "read step output", source: e });
                        }
                        None => stream_open = false,
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            } else {
                // The output closed; the process may still run (it can close its stdout and go on).
                let inspect = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(SandboxError::docker("inspect exec"))?;
                if inspect.running != Some(true) {
                    exit_code = inspect.exit_code;
                    break;
                }
                tokio::time::sleep_until((Instant::now() + EXIT_POLL).min(deadline)).await;
            }
        }

        let duration = start.elapsed();
        // Read the cgroup before anything is killed: a killed container's cgroup is gone.
        let mut oom_killed = false;
        let mut pids_limit_hit = false;
        if let Some(cg) = &cgroup {
            if let (Some(before), Some(after)) = (oom_before, cg.oom_kills().await) {
                oom_killed = after > before;
            }
            if let (Some(before), Some(after)) = (pids_events_before, cg.pids_max_events().await) {
                pids_limit_hit = after > before;
            }
        }
        let mut peak_memory_bytes = peak.read().await;
        if peak_memory_bytes.is_none() {
            peak_memory_bytes = self.stats_max_usage().await;
        }

        if let Some(kind) = timed_out {
            tracing::debug!(
                container = self.name,
                ?kind,
                "step timed out; killing the container"
            );
            self.kill().await;
            let drain_until = Instant::now() + DRAIN_AFTER_KILL;
            while stream_open {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => capture.push(&chunk.into_bytes(), start.elapsed()),
                        _ => stream_open = false,
                    },
                    _ = tokio::time::sleep_until(drain_until) => stream_open = false,
                }
            }
        }
        drop(output);

        if timed_out.is_none() {
            self.clean_up_after_step().await;
        }

        if let Some(watch) = oom_watch {
            if exit_code != Some(0) {
                // Give the engine's event a moment to arrive after the process died.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            watch.abort();
            oom_killed |= watch.await.unwrap_or(false);
        }
        if self.needs_start {
            // PID 1 itself may have been the OOM victim.
            if let Ok(inspect) = self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
                && let Some(state) = inspect.state
            {
                oom_killed |= state.oom_killed == Some(true) && timed_out.is_none();
            }
        }

        Ok(StepResult {
            exit_code: if timed_out.is_some() { None } else { exit_code },
            timed_out,
            oom_killed,
            pids_limit_hit,
            peak_memory_bytes,
            duration,
            output: capture.finish(),
        })
    }

    /// Kills whatever the step left running (everything of the sandbox user but PID 1). If that
    /// cannot be done or verified, the container is killed and restarted before the next step.
    async fn clean_up_after_step(&mut self) {
        if let (Some(cg), Some(idle)) = (&self.cgroup, self.idle_tasks)
            && cg.pids_current().await == Some(idle)
        {
            return; // nothing left behind
        }
        let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, self.kill_leftovers()).await;
        let verified = match cleaned {
            Ok(Ok(())) => self.only_init_left().await,
            Ok(Err(e)) => {
                tracing::debug!(container = self.name, error = %e, "clean-up exec failed");
                false
            }
            Err(_) => false,
        };
        if !verified {
            tracing::debug!(
                container = self.name,
                "leftover processes could not be cleaned; killing the container"
            );
            self.kill().await;
        }
    }

    async fn kill_leftovers(&self) -> Result<()> {
        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "kill -KILL -1 2>/dev/null; sleep 0.05; kill -KILL -1 2>/dev/null; exit 0"
                            .into(),
                    ]),
                    env: Some(vec![]),
                    user: Some(self.user()),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::docker("create clean-up exec"))?;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(SandboxError::docker("start clean-up exec"))?
        {
            while output.next().await.is_some() {}
        }
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(SandboxError::docker("inspect clean-up exec"))?;
        if inspect.exit_code != Some(0) {
            return Err(self.gone(format!("clean-up exec exited with {:?}", inspect.exit_code)));
        }
        Ok(())
    }

    /// After a clean-up: is only PID 1 (and its sleep) left?
    async fn only_init_left(&self) -> bool {
        if let (Some(cg), Some(idle)) = (&self.cgroup, self.idle_tasks) {
            // The shell re-forks its sleep; allow it a moment.
            for _ in 0..40 {
                if cg.pids_current().await.is_some_and(|n| n <= idle) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return false;
        }
        match self.docker.top_processes(&self.id, None).await {
            Ok(top) => top.processes.map(|p| p.len()).unwrap_or(usize::MAX) <= 2,
            Err(_) => false,
        }
    }

    /// Watches the engine's events for an OOM in this container (used when the cgroup is not
    /// readable from here).
    fn watch_oom_events(&self) -> tokio::task::JoinHandle<bool> {
        let docker = self.docker.clone();
        let id = self.id.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since_nanos = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
        // Sub-second precision, so an OOM of the previous step in the same second is not replayed.
        let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
        tokio::spawn(async move {
            let filters: HashMap<&str, Vec<&str>> = HashMap::from([
                ("container", vec![id.as_str()]),
                ("event", vec!["oom"]),
                ("type", vec!["container"]),
            ]);
            let mut events = docker.events(Some(
                EventsOptionsBuilder::default()
                    .since(&since)
                    .filters(&filters)
                    .build(),
            ));
            while let Some(Ok(event)) = events.next().await {
                if event.time_nano.is_none_or(|t| t >= since_nanos) {
                    return true;
                }
            }
            false
        })
    }

    /// The container's memory high-water mark from the engine's stats (cgroup v1 engines only).
    async fn stats_max_usage(&self) -> Option<u64> {
        let mut stats = self.docker.stats(
            &self.id,
            Some(
                StatsOptionsBuilder::default()
                    .stream(false)
                    .one_shot(true)
                    .build(),
            ),
        );
        let stats = stats.next().await?.ok()?;
        stats.memory_stats?.max_usage.filter(|&m| m > 0)
    }

    /// Removes the container (killing whatever runs in it).
    pub async fn remove(mut self) -> Result<()> {
        self.remove_in_place().await
    }

    pub(crate) async fn remove_in_place(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        match self
            .docker
            .remove_container(
                &self.id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(SandboxError::docker("remove container")(e)),
        }
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
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(
                                RemoveContainerOptionsBuilder::default()
                                    .force(true)
                                    .v(true)
                                    .build(),
                            ),
                        )
                        .await;
                });
            });
        if let Err(e) = spawned {
            tracing::warn!(container = self.name, error = %e, "could not remove dropped container");
        }
    }
}
