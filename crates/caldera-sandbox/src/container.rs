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
use crate::error::{ContainerLoss, Result, SandboxError};
use crate::log::LogCapture;
use crate::sandbox::docker_client;
use crate::spec::{StepCommand, StepResult, TimeoutKind, paths};

/// How long to wait for output still in flight after the container was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);
/// How often to ask whether the step driver exited, once its output stream has closed: quickly at
/// first (the engine registers the exit a moment after the stream closes), then less often.
const EXIT_POLL_FIRST: Duration = Duration::from_millis(2);
const EXIT_POLL_MAX: Duration = Duration::from_millis(25);
/// How long the step driver may take to exit after its last marker.
const DRIVER_EXIT_GRACE: Duration = Duration::from_secs(5);
/// Limit for the clean-up exec between steps.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the engine is given to register that a container whose step driver was killed has
/// died too (its exec's exit and its init's exit are separate events), and that a stopped one is
/// being removed; only waited for when a step ended without its marker.
const LOSS_SETTLE: Duration = Duration::from_secs(1);
const LOSS_POLL: Duration = Duration::from_millis(50);

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

type ExecOutput = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>,
            > + Send,
    >,
>;

/// A started step driver exec: its id and attached streams.
struct DriverExec {
    id: String,
    /// The toolchain whose environment it runs with.
    toolchain: String,
    output: ExecOutput,
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

impl std::fmt::Debug for DriverExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverExec")
            .field("id", &self.id)
            .field("toolchain", &self.toolchain)
            .finish_non_exhaustive()
    }
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
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
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

    /// Runs one step and reports what happened. An `Err` is always an infrastructure failure (see
    /// [`SandboxError`]); the step's own failure, timeout or OOM is an `Ok` [`StepResult`].
    pub async fn exec(&mut self, step: &StepCommand) -> Result<StepResult> {
        let mut results = self.exec_steps(std::slice::from_ref(step)).await?;
        Ok(results.pop().expect("the first step always has a result"))
    }

    /// Runs `steps` in order, stopping after the first that does not succeed, in **one** `docker
    /// exec` (each exec costs tens of milliseconds of engine work): a small shell driver runs each
    /// step, kills whatever it left running (every process of the sandbox user but PID 1), and
    /// writes an end marker with the step's exit status into the output stream. The marker carries
    /// a random nonce the driver reads from its stdin, which no step can read, so a step cannot
    /// print one by accident; it is cut out of the captured output. Timeouts, OOM kills, the pids
    /// limit and peak memory are attributed per step at the markers. The steps must share their
    /// environment, working directory and toolchain. An `Err` is always an infrastructure failure;
    /// one result per step that ran. A container removed, killed or restarted from outside while a
    /// step runs is [`SandboxError::ContainerLost`] (with the results so far), never a step that
    /// exited 137: only the cgroup's or the engine's OOM flag makes a SIGKILL an OOM kill.
    pub async fn exec_steps(&mut self, steps: &[StepCommand]) -> Result<Vec<StepResult>> {
        let Some(first) = steps.first() else {
            return Err(SandboxError::Invalid("no steps to run".into()));
        };
        for step in steps {
            step.validate()?;
            if (&step.env, &step.workdir, &step.toolchain)
                != (&first.env, &first.workdir, &first.toolchain)
            {
                return Err(SandboxError::Invalid(
                    "steps run in one exec must share their environment, working directory and \
                     toolchain"
                        .into(),
                ));
            }
        }
        if self.removed {
            return Err(self.gone("was removed"));
        }
        let toolchain = match &first.toolchain {
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

        let nonce = format!("{:032x}", rand::random::<u128>());
        let cgroup = self.cgroup.clone();
        // the driver started ahead when it fits and still waits, else one started now
        let primed = match self
            .primed
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        {
            Some(p) if p.toolchain == toolchain && first.workdir.is_none() => {
                match self.docker.inspect_exec(&p.id).await {
                    Ok(i) if i.running == Some(true) => Some(p),
                    _ => None,
                }
            }
            _ => None,
        };
        let driver = match primed {
            Some(p) => p,
            None => {
                self.start_driver(&toolchain, first.workdir.as_deref())
                    .await?
            }
        };
        let DriverExec {
            id: exec_id,
            mut output,
            mut input,
            ..
        } = driver;
        // (aborted if this returns early)
        let mut oom_watch = AbortOnDrop(if cgroup.is_none() {
            Some(self.watch_oom_events())
        } else {
            None
        });
        let mut meter = StepMeter::start(cgroup.as_ref(), first.log_cap).await;
        {
            use tokio::io::AsyncWriteExt;
            let script = driver_script(steps, &nonce);
            let sent = async {
                input.write_all(script.as_bytes()).await?;
                input.flush().await
            };
            if let Err(e) = sent.await {
                self.kill().await;
                return Err(self.gone(format!("could not hand the step driver its steps: {e}")));
            }
        }
        drop(input);

        let mut scanner = MarkerScanner::new(&nonce);
        let mut results: Vec<StepResult> = Vec::new();
        let mut events = Vec::new();
        let mut last_output = Instant::now();
        let mut stream_open = true;
        let mut timed_out = None;
        let mut exit_code = None;
        let mut exit_poll = EXIT_POLL_FIRST;
        // A step ends at its marker; after a failed one, or the last, the driver exits.
        let mut done: Option<Instant> = None;
        // However the markers come, the exec as a whole gets no more than the steps' totals.
        let exec_deadline =
            Instant::now() + steps.iter().map(|s| s.timeouts.total).sum::<Duration>();
        loop {
            let step = &steps[results.len().min(steps.len() - 1)];
            let now = Instant::now();
            let deadline = if let Some(done_at) = done {
                let exit_deadline = done_at + DRIVER_EXIT_GRACE;
                if now >= exit_deadline {
                    // something keeps the driver's output open after its last marker
                    tracing::debug!(
                        container = self.name,
                        "step driver did not exit; killing the container"
                    );
                    self.kill().await;
                    break;
                }
                exit_deadline
            } else {
                let total_deadline = (meter.start + step.timeouts.total).min(exec_deadline);
                let no_output_deadline = last_output + step.timeouts.no_output;
                if now >= total_deadline {
                    timed_out = Some(TimeoutKind::Total);
                    break;
                }
                if now >= no_output_deadline {
                    timed_out = Some(TimeoutKind::NoOutput);
                    break;
                }
                total_deadline.min(no_output_deadline)
            };
            if stream_open {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => {
                            last_output = Instant::now();
                            scanner.feed(&chunk.into_bytes(), &mut events);
                            for event in events.drain(..) {
                                match event {
                                    Event::Output(bytes) if done.is_none() => meter.capture.push(&bytes, meter.start.elapsed()),
                                    Event::Output(_) => {}
                                    Event::End { step: i, status } if done.is_none() && i == results.len() => {
                                        // this step's counters before the next step's meter resets them
                                        let counters = meter.counters().await;
                                        let next_cap = steps.get(i + 1).map_or(first.log_cap, |s| s.log_cap);
                                        let ended = std::mem::replace(
                                            &mut meter,
                                            StepMeter::start(cgroup.as_ref(), next_cap).await,
                                        );
                                        let result = ended.into_result(counters, Some(status), None);
                                        if !result.success() || i + 1 == steps.len() {
                                            done = Some(Instant::now());
                                        }
                                        results.push(result);
                                        last_output = Instant::now();
                                    }
                                    // a marker out of order is not the driver's: the step printed it
                                    Event::End { .. } => {}
                                }
                            }
                        }
                        Some(Err(e)) => {
                            if let Some(loss) = self.lost_from_outside(None).await? {
                                return Err(self.lost(loss, results, meter, &mut scanner).await);
                            }
                            self.kill().await;
                            return Err(SandboxError::Docker { operation: "read step output", source: e });
                        }
                        None => stream_open = false,
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            } else {
                // The output closed; the driver may still run (it can be made to close its stdout).
                let inspect = match self.docker.inspect_exec(&exec_id).await {
                    Ok(inspect) => inspect,
                    Err(e) => {
                        if done.is_none()
                            && let Some(loss) = self.lost_from_outside(None).await?
                        {
                            return Err(self.lost(loss, results, meter, &mut scanner).await);
                        }
                        return Err(SandboxError::Docker {
                            operation: "inspect exec",
                            source: e,
                        });
                    }
                };
                if inspect.running != Some(true) {
                    exit_code = inspect.exit_code;
                    break;
                }
                tokio::time::sleep_until((Instant::now() + exit_poll).min(deadline)).await;
                exit_poll = (exit_poll * 2).min(EXIT_POLL_MAX);
            }
        }

        if let Some(kind) = timed_out {
            tracing::debug!(
                container = self.name,
                ?kind,
                "step timed out; killing the container"
            );
            // counters first: a killed container's cgroup is gone
            let counters = meter.counters().await;
            let duration = meter.start.elapsed();
            self.kill().await;
            let drain_until = Instant::now() + DRAIN_AFTER_KILL;
            let mut tail = Vec::new();
            while stream_open {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => scanner.feed(&chunk.into_bytes(), &mut tail),
                        _ => stream_open = false,
                    },
                    _ = tokio::time::sleep_until(drain_until) => stream_open = false,
                }
            }
            for event in tail {
                if let Event::Output(bytes) = event {
                    meter.capture.push(&bytes, meter.start.elapsed());
                }
            }
            meter.capture.push(&scanner.finish(), meter.start.elapsed());
            let mut result = meter.into_result(counters, None, Some(kind));
            result.duration = duration;
            results.push(result);
        } else if done.is_none() {
            // The driver ended without the step's marker: it was killed, by the step (its exit
            // status then stands for the step's), by the OOM killer, or with the container — from
            // outside, which says nothing about the crate.
            if let Some(loss) = self.lost_from_outside(exit_code).await? {
                return Err(self.lost(loss, results, meter, &mut scanner).await);
            }
            meter.capture.push(&scanner.finish(), meter.start.elapsed());
            let code = exit_code.filter(|&c| c != 0);
            results.push(meter.finish(code, None).await);
        }
        drop(output);

        if timed_out.is_none() && !self.needs_start {
            self.clean_up_after_step().await;
        }

        let last = results.last_mut().expect("at least one step ran");
        if let Some(watch) = oom_watch.0.take() {
            if !last.success() {
                // Give the engine's event a moment to arrive after the process died.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            watch.abort();
            last.oom_killed |= watch.await.unwrap_or(false);
        }
        if last.peak_memory_bytes.is_none() {
            last.peak_memory_bytes = self.stats_max_usage().await;
        }
        if self.needs_start {
            // PID 1 itself may have been the OOM victim.
            if let Ok(inspect) = self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
                && let Some(state) = inspect.state
            {
                last.oom_killed |= state.oom_killed == Some(true) && timed_out.is_none();
            }
        }
        Ok(results)
    }

    /// After a step's driver ended without its marker (or its exec could not be followed): was
    /// the container removed, killed or restarted from outside? `driver_status` is the driver's
    /// exit status when known; only a driver that died of a signal (≥ 128) or whose status is
    /// unknown can have died with its container, and only then is the engine given
    /// [`LOSS_SETTLE`] to register the container's death. `None`: the container still runs the
    /// run the step started in (the step killed the driver), or it stopped because the OOM
    /// killer killed its init (the engine's `OOMKilled`; the caller reads it as an OOM kill).
    async fn lost_from_outside(
        &mut self,
        driver_status: Option<i64>,
    ) -> Result<Option<ContainerLoss>> {
        let settle_until = Instant::now()
            + if driver_status.is_none_or(|c| c >= 128) {
                LOSS_SETTLE
            } else {
                Duration::ZERO
            };
        let mut stopped: Option<ContainerLoss> = None;
        loop {
            let inspect = match self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => inspect,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    self.removed = true;
                    self.needs_start = true;
                    self.primed = None;
                    return Ok(Some(ContainerLoss::Removed));
                }
                Err(e) => return Err(SandboxError::docker("inspect container")(e)),
            };
            let state = inspect.state.unwrap_or_default();
            if state.running == Some(true) {
                if stopped.is_some() || state.pid.filter(|&p| p > 0) != self.init_pid {
                    // it stopped under the step and runs again: not the run the step was in
                    self.kill().await;
                    return Ok(Some(ContainerLoss::Restarted));
                }
            } else {
                self.needs_start = true;
                self.primed = None;
                if state.oom_killed == Some(true) {
                    // the OOM killer took the container's init: the memory limit, not a loss
                    return Ok(None);
                }
                // (a `docker rm -f` kills first and removes a moment later: the removal is
                // waited for a little, so that it is named as such)
                stopped = Some(ContainerLoss::Stopped {
                    exit_code: state.exit_code,
                });
            }
            if Instant::now() >= settle_until {
                return Ok(stopped);
            }
            tokio::time::sleep(LOSS_POLL).await;
        }
    }

    /// The error for a container lost from outside during the step `meter` measures, with the
    /// results of the steps that ran (the interrupted one last, with its output so far).
    async fn lost(
        &self,
        loss: ContainerLoss,
        mut results: Vec<StepResult>,
        mut meter: StepMeter,
        scanner: &mut MarkerScanner,
    ) -> SandboxError {
        meter
            .capture
            .push(&std::mem::take(&mut scanner.pending), meter.start.elapsed());
        // (the counters of a dead container's cgroup are gone; nothing is read from it)
        let interrupted = meter.into_result((false, false, None), None, None);
        results.push(interrupted);
        tracing::warn!(
            container = self.name,
            step = results.len(),
            %loss,
            "the sandbox container was lost from outside during a step"
        );
        SandboxError::ContainerLost {
            container: self.name.clone(),
            step: results.len(),
            loss,
            steps: results,
        }
    }

    /// Starts a step driver ahead of the next [`exec_steps`](Self::exec_steps) with the default
    /// working directory and `toolchain` (default: the first mounted), so that the steps do not
    /// wait for the engine to create and start an exec. It waits, doing nothing, for its script.
    pub async fn prime(&mut self, toolchain: Option<&str>) -> Result<()> {
        let toolchain = toolchain.map_or_else(|| self.toolchains[0].clone(), str::to_owned);
        if !self.toolchains.contains(&toolchain) {
            return Err(SandboxError::Invalid(format!(
                "toolchain {toolchain:?} is not mounted in this container"
            )));
        }
        self.ensure_running().await?;
        let driver = self.start_driver(&toolchain, None).await?;
        self.primed = Some(std::sync::Mutex::new(driver));
        Ok(())
    }

    /// Whether a step driver started ahead waits for the next steps.
    pub fn is_primed(&self) -> bool {
        self.primed.is_some()
    }

    /// Creates and starts a step driver exec (see [`DRIVER`]).
    async fn start_driver(&mut self, toolchain: &str, workdir: Option<&str>) -> Result<DriverExec> {
        // `env -i` drops everything the engine and image would add; the steps' own variables
        // come with the script.
        let mut cmd: Vec<String> = vec!["/usr/bin/env".into(), "-i".into()];
        cmd.extend(
            base_env(toolchain)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        cmd.extend([
            "/bin/sh".into(),
            "-c".into(),
            DRIVER.into(),
            "caldera-steps".into(),
        ]);
        let exec = self
            .docker
            .create_exec(
                &self.id,
                ExecConfig {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(cmd),
                    env: Some(vec![]),
                    user: Some(self.user()),
                    working_dir: Some(workdir.unwrap_or(paths::SOURCE).to_owned()),
                    privileged: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::docker("create exec"))?;
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
        let StartExecResults::Attached { output, input } = started else {
            return Err(self.gone("exec started detached although attached was asked for"));
        };
        Ok(DriverExec {
            id: exec.id,
            toolchain: toolchain.to_owned(),
            output,
            input,
        })
    }

    /// Kills whatever the step left running (everything of the sandbox user but PID 1). If that
    /// cannot be done or verified, the container is killed and restarted before the next step.
    async fn clean_up_after_step(&mut self) {
        // (PID 1's sleep may be being re-forked: the driver's clean-up kills it too)
        if let (Some(cg), Some(idle)) = (&self.cgroup, self.idle_tasks)
            && cg.pids_current().await.is_some_and(|n| n <= idle)
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

/// Aborts the task it holds when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<bool>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// What a step is measured with while it runs: its start, output capture, and the cgroup's
/// counters and high-water mark as they were at its start.
struct StepMeter {
    start: Instant,
    capture: LogCapture,
    cgroup: Option<ContainerCgroup>,
    oom_before: Option<u64>,
    pids_events_before: Option<u64>,
    peak: PeakMeter,
}

impl StepMeter {
    async fn start(cgroup: Option<&ContainerCgroup>, log_cap: usize) -> StepMeter {
        let (oom_before, pids_events_before, peak) = match cgroup {
            Some(cg) => (
                cg.oom_kills().await,
                cg.pids_max_events().await,
                cg.start_peak().await,
            ),
            None => (None, None, PeakMeter::None),
        };
        StepMeter {
            start: Instant::now(),
            capture: LogCapture::new(log_cap),
            cgroup: cgroup.cloned(),
            oom_before,
            pids_events_before,
            peak,
        }
    }

    /// The step's result, read before anything is killed (a killed container's cgroup is gone).
    async fn finish(
        mut self,
        exit_code: Option<i64>,
        timed_out: Option<TimeoutKind>,
    ) -> StepResult {
        let counters = self.counters().await;
        self.into_result(counters, exit_code, timed_out)
    }

    /// OOM kill, pids limit hit and peak memory since the step started.
    async fn counters(&mut self) -> (bool, bool, Option<u64>) {
        let mut oom_killed = false;
        let mut pids_limit_hit = false;
        if let Some(cg) = &self.cgroup {
            if let (Some(before), Some(after)) = (self.oom_before, cg.oom_kills().await) {
                oom_killed = after > before;
            }
            if let (Some(before), Some(after)) =
                (self.pids_events_before, cg.pids_max_events().await)
            {
                pids_limit_hit = after > before;
            }
        }
        let peak = std::mem::replace(&mut self.peak, PeakMeter::None);
        (oom_killed, pids_limit_hit, peak.read().await)
    }

    fn into_result(
        self,
        (oom_killed, pids_limit_hit, peak_memory_bytes): (bool, bool, Option<u64>),
        exit_code: Option<i64>,
        timed_out: Option<TimeoutKind>,
    ) -> StepResult {
        StepResult {
            exit_code: if timed_out.is_some() { None } else { exit_code },
            timed_out,
            oom_killed,
            pids_limit_hit,
            peak_memory_bytes,
            duration: self.start.elapsed(),
            output: self.capture.finish(),
        }
    }
}

/// Starts the marker lines of the step driver; the nonce and `<step> <status>\n` follow.
const MARKER_PREFIX: &str = "\n\u{1e}caldera-step-end ";
/// Longest `<step> <status>` after the nonce.
const MARKER_TAIL_MAX: usize = 48;

/// Quotes `s` for `sh` (single quotes; a single quote becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The step driver every exec runs (see [`Container::exec_steps`]): it reads a nonce line, then
/// its script up to a line `caldera-end-<nonce>`, from stdin — so neither is in its command line or
/// environment — gives the steps `/dev/null` as stdin, and runs the script.
const DRIVER: &str = r#"IFS= read -r caldera_nonce || exit 125
caldera_script=
while IFS= read -r caldera_line; do
  [ "$caldera_line" = "caldera-end-$caldera_nonce" ] && break
  caldera_script="$caldera_script$caldera_line
"
done
exec </dev/null
eval "$caldera_script"
"#;

/// What the driver reads: the nonce, the script and its end line. The script exports the steps'
/// variables, then runs each step with stderr merged into stdout, kills what it left behind
/// (every process of the sandbox user but PID 1 and the driver), prints the end marker, and stops
/// after a failed step.
fn driver_script(steps: &[StepCommand], nonce: &str) -> String {
    let mut script = format!("{nonce}\n");
    for (k, v) in &steps[0].env {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    let prefix = MARKER_PREFIX
        .replace('\n', "\\n")
        .replace('\u{1e}', "\\036");
    for (i, step) in steps.iter().enumerate() {
        let argv: Vec<String> = step.argv.iter().map(|a| sh_quote(a)).collect();
        script.push_str(&format!(
            "{} 2>&1\ncaldera_status=$?\nkill -KILL -1 2>/dev/null\n\
             printf '{prefix}%s {i} %d\\n' \"$caldera_nonce\" \"$caldera_status\"\n\
             [ \"$caldera_status\" -eq 0 ] || exit 0\n",
            argv.join(" ")
        ));
    }
    script.push_str(&format!("caldera-end-{nonce}\n"));
    script
}

/// What the step driver's output stream holds.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Output of the current step, exactly as written.
    Output(Vec<u8>),
    /// The driver's end marker of step `step`, with its exit status.
    End { step: usize, status: i64 },
}

/// Splits the driver's stream into step output and end markers; markers may arrive split across
/// chunks. Anything that looks like a marker but has another nonce or a malformed tail is output.
struct MarkerScanner {
    prefix: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    pending: Vec<u8>,
}

impl MarkerScanner {
    fn new(nonce: &str) -> MarkerScanner {
        let prefix = format!("{MARKER_PREFIX}{nonce} ").into_bytes();
        MarkerScanner {
            finder: memchr::memmem::Finder::new(&prefix).into_owned(),
            prefix,
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8], events: &mut Vec<Event>) {
        self.pending.extend_from_slice(chunk);
        let mut from = 0;
        loop {
            let buf = &self.pending[from..];
            let Some(at) = self.finder.find(buf) else {
                // keep what could be the start of a marker
                let keep = (1..self.prefix.len().min(buf.len() + 1))
                    .rev()
                    .find(|&n| buf.ends_with(&self.prefix[..n]))
                    .unwrap_or(0);
                push_output(events, &buf[..buf.len() - keep]);
                from += buf.len() - keep;
                break;
            };
            let tail = &buf[at + self.prefix.len()..];
            match tail.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MARKER_TAIL_MAX => {
                    push_output(events, &buf[..at]);
                    match parse_marker_tail(&tail[..nl]) {
                        Some((step, status)) => {
                            events.push(Event::End { step, status });
                            from += at + self.prefix.len() + nl + 1;
                        }
                        None => {
                            // not a marker after all: its first byte is output, go on after it
                            push_output(events, &buf[at..at + 1]);
                            from += at + 1;
                        }
                    }
                }
                None if tail.len() <= MARKER_TAIL_MAX => {
                    // the rest of the marker is still on its way
                    push_output(events, &buf[..at]);
                    from += at;
                    break;
                }
                _ => {
                    push_output(events, &buf[..=at]);
                    from += at + 1;
                }
            }
        }
        self.pending.drain(..from);
    }

    /// What is left (a partial marker that never completed is output too).
    fn finish(self) -> Vec<u8> {
        self.pending
    }
}

fn push_output(events: &mut Vec<Event>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(Event::Output(last)) = events.last_mut() {
        last.extend_from_slice(bytes);
    } else {
        events.push(Event::Output(bytes.to_vec()));
    }
}

fn parse_marker_tail(tail: &[u8]) -> Option<(usize, i64)> {
    let text = std::str::from_utf8(tail).ok()?;
    let (step, status) = text.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(step) || !digits(status) {
        return None;
    }
    Some((step.parse().ok()?, status.parse().ok()?))
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn marker(step: usize, status: i64) -> String {
        format!("{MARKER_PREFIX}{NONCE} {step} {status}\n")
    }

    fn scan_in_chunks(stream: &[u8], chunk: usize) -> Vec<Event> {
        let mut scanner = MarkerScanner::new(NONCE);
        let mut events = Vec::new();
        for part in stream.chunks(chunk.max(1)) {
            scanner.feed(part, &mut events);
        }
        let rest = scanner.finish();
        push_output(&mut events, &rest);
        // merge adjacent outputs, which chunking may split
        let mut merged: Vec<Event> = Vec::new();
        for e in events {
            match (merged.last_mut(), e) {
                (Some(Event::Output(a)), Event::Output(b)) => a.extend_from_slice(&b),
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    #[test]
    fn markers_split_the_stream_whatever_the_chunking() {
        let stream = format!(
            "compiling\nno newline at the end{}running 1 test\n{}{}",
            marker(0, 0),
            marker(1, 101),
            "after the last\n"
        );
        let want = vec![
            Event::Output(b"compiling\nno newline at the end".to_vec()),
            Event::End { step: 0, status: 0 },
            Event::Output(b"running 1 test\n".to_vec()),
            Event::End {
                step: 1,
                status: 101,
            },
            Event::Output(b"after the last\n".to_vec()),
        ];
        for chunk in [1, 2, 3, 7, 16, 64, 4096] {
            assert_eq!(
                scan_in_chunks(stream.as_bytes(), chunk),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn look_alikes_stay_output() {
        for fake in [
            // another nonce
            format!("{MARKER_PREFIX}ffffffffffffffffffffffffffffffff 0 0\n"),
            // malformed tails
            format!("{MARKER_PREFIX}{NONCE} zero 0\n"),
            format!("{MARKER_PREFIX}{NONCE} 0 -1\n"),
            format!("{MARKER_PREFIX}{NONCE} 0 0 extra\n"),
            format!("{MARKER_PREFIX}{NONCE} {}\n", "9".repeat(60)),
            // cut off at the end of the stream
            format!("{MARKER_PREFIX}{NONCE} 0"),
        ] {
            let stream = format!("a{fake}b");
            for chunk in [1, 5, 4096] {
                assert_eq!(
                    scan_in_chunks(stream.as_bytes(), chunk),
                    vec![Event::Output(stream.as_bytes().to_vec())],
                    "{fake:?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn the_driver_quotes_every_argument() {
        let steps = [
            StepCommand::new(["cargo", "build", "--features", "a b", "it's"])
                .env("RUSTFLAGS", "--cap-lints 'warn'"),
            StepCommand::new(["cargo", "test", "$HOME", "`x`"])
                .env("RUSTFLAGS", "--cap-lints 'warn'"),
        ];
        let script = driver_script(&steps, NONCE);
        assert!(
            script.starts_with(&format!(
                "{NONCE}\nexport RUSTFLAGS='--cap-lints '\\''warn'\\'''\n"
            )),
            "{script}"
        );
        assert!(
            script.contains(r"'cargo' 'build' '--features' 'a b' 'it'\''s' 2>&1"),
            "{script}"
        );
        assert!(
            script.contains(r"'cargo' 'test' '$HOME' '`x`' 2>&1"),
            "{script}"
        );
        assert_eq!(script.matches("kill -KILL -1").count(), 2);
        assert!(
            script.contains(r"printf '\n\036caldera-step-end %s 1 %d\n'"),
            "{script}"
        );
        assert!(
            script.ends_with(&format!("\ncaldera-end-{NONCE}\n")),
            "{script}"
        );
        // the end line appears once, at the end: no argument can end the script early
        assert_eq!(script.matches(&format!("caldera-end-{NONCE}")).count(), 1);
    }
}
