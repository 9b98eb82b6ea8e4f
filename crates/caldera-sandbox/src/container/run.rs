//! Running a side's steps through one driver exec: following its output to the end markers,
//! under the steps' timeouts, and turning what happened into one result per step that ran.

use std::ops::ControlFlow;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::Container;
use super::driver::{Event, MarkerScanner};
use super::launch::{DriverExec, ExecOutput};
use super::meter::{AbortOnDrop, StepMeter};
use crate::cgroup::ContainerCgroup;
use crate::error::{ContainerLoss, Result, SandboxError};
use crate::spec::{StepCommand, StepResult, TimeoutKind};

/// How long to wait for output still in flight after the container was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(5);
/// How often to ask whether the step driver exited, once its output stream has closed: quickly at
/// first (the engine registers the exit a moment after the stream closes), then less often.
const EXIT_POLL_FIRST: Duration = Duration::from_millis(2);
const EXIT_POLL_MAX: Duration = Duration::from_millis(25);
/// How long the step driver may take to exit after its last marker.
const DRIVER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// The steps of one exec as they run: what the driver's stream said so far, and the step being
/// measured.
pub(super) struct Run<'s> {
    steps: &'s [StepCommand],
    cgroup: Option<ContainerCgroup>,
    pub(super) scanner: MarkerScanner,
    /// Events of the chunk being read (kept to reuse the allocation).
    events: Vec<Event>,
    /// One result per step that reached its marker.
    pub(super) results: Vec<StepResult>,
    /// The step after the last marker.
    pub(super) meter: StepMeter,
    last_output: Instant,
    stream_open: bool,
    /// A step ends at its marker; after a failed one, or the last, the driver exits.
    done: Option<Instant>,
    /// However the markers come, the exec as a whole gets no more than the steps' totals.
    exec_deadline: Instant,
}

/// How following a driver exec came to an end.
enum ExecEnd {
    /// The driver exited, with this status when the engine knew it.
    Exited(Option<i64>),
    /// The step ran out of time; the container is still to be killed.
    TimedOut(TimeoutKind),
    /// Something kept the driver's output open after its last marker; the container was killed.
    Hung,
    /// The container was removed, killed or restarted from outside.
    Lost(ContainerLoss),
}

impl Container {
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
        let first = check_steps(steps)?;
        if self.removed {
            return Err(self.gone("was removed"));
        }
        let toolchain = self.step_toolchain(first)?;
        self.ensure_running().await?;

        let nonce = format!("{:032x}", rand::random::<u128>());
        let cgroup = self.cgroup.clone();
        let DriverExec {
            id: exec_id,
            mut output,
            input,
            ..
        } = self
            .driver_for(&toolchain, first.workdir.as_deref())
            .await?;
        // (aborted if this returns early)
        let mut oom_watch = AbortOnDrop(if cgroup.is_none() {
            Some(self.watch_oom_events())
        } else {
            None
        });
        let meter = StepMeter::start(cgroup.as_ref(), first.log_cap).await;
        self.hand_over(input, steps, &nonce).await?;

        let mut run = Run::new(steps, cgroup, &nonce, meter);
        let end = self.follow(&mut run, &mut output, &exec_id).await?;
        let timed_out = matches!(end, ExecEnd::TimedOut(_));
        let mut results = match end {
            ExecEnd::Lost(loss) => return Err(self.lost(loss, run).await),
            ExecEnd::TimedOut(kind) => self.finish_timed_out(run, &mut output, kind).await,
            ExecEnd::Exited(code) if run.done.is_none() => {
                self.finish_without_marker(run, code).await?
            }
            ExecEnd::Exited(_) | ExecEnd::Hung => run.results,
        };
        drop(output);

        if !timed_out && !self.needs_start {
            self.clean_up_after_step().await;
        }
        let last = results.last_mut().expect("at least one step ran");
        self.add_late_facts(last, &mut oom_watch, timed_out).await;
        Ok(results)
    }

    /// The toolchain the steps run with: the one they name, which must be mounted, else the
    /// default (the first mounted).
    fn step_toolchain(&self, first: &StepCommand) -> Result<String> {
        match &first.toolchain {
            None => Ok(self.toolchains[0].clone()),
            Some(name) if self.toolchains.contains(name) => Ok(name.clone()),
            Some(name) => Err(SandboxError::Invalid(format!(
                "toolchain {name:?} is not mounted in this container (mounted: {})",
                self.toolchains.join(", ")
            ))),
        }
    }

    /// Reads the driver's output up to its end: its exit, a timeout, or the container's loss. An
    /// `Err` is an engine failure.
    async fn follow(
        &mut self,
        run: &mut Run<'_>,
        output: &mut ExecOutput,
        exec_id: &str,
    ) -> Result<ExecEnd> {
        let mut exit_poll = EXIT_POLL_FIRST;
        loop {
            let deadline = match self.next_deadline(run).await {
                ControlFlow::Continue(deadline) => deadline,
                ControlFlow::Break(end) => return Ok(end),
            };
            if run.stream_open {
                tokio::select! {
                    item = output.next() => match item {
                        Some(Ok(chunk)) => run.take_chunk(&chunk.into_bytes()).await,
                        Some(Err(e)) => return self.output_failed(e).await,
                        None => run.stream_open = false,
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            } else {
                // The output closed; the driver may still run (it can be made to close its stdout).
                if let Some(end) = self.driver_exit(exec_id, run.done.is_none()).await? {
                    return Ok(end);
                }
                tokio::time::sleep_until((Instant::now() + exit_poll).min(deadline)).await;
                exit_poll = (exit_poll * 2).min(EXIT_POLL_MAX);
            }
        }
    }

    /// When to look again at the run (`Continue`), or how it ends because a deadline passed
    /// (`Break`): a step's total or no-output timeout, or a driver that did not exit after its
    /// last marker (the container is then killed).
    async fn next_deadline(&mut self, run: &Run<'_>) -> ControlFlow<ExecEnd, Instant> {
        let now = Instant::now();
        let Some(done_at) = run.done else {
            return run.step_deadline(now);
        };
        let exit_deadline = done_at + DRIVER_EXIT_GRACE;
        if now >= exit_deadline {
            // something keeps the driver's output open after its last marker
            tracing::debug!(
                container = self.name,
                "step driver did not exit; killing the container"
            );
            self.kill().await;
            return ControlFlow::Break(ExecEnd::Hung);
        }
        ControlFlow::Continue(exit_deadline)
    }

    /// The driver's output could not be read: the container was lost from outside, or the engine
    /// failed (the container is then killed).
    async fn output_failed(&mut self, e: bollard::errors::Error) -> Result<ExecEnd> {
        if let Some(loss) = self.lost_from_outside(None).await? {
            return Ok(ExecEnd::Lost(loss));
        }
        self.kill().await;
        Err(SandboxError::Docker {
            operation: "read step output",
            source: e,
        })
    }

    /// Once the output closed: how the driver ended, or `None` while it still runs. When its exec
    /// cannot be inspected before its last marker (`markers_pending`), the container may have
    /// been lost from outside.
    async fn driver_exit(
        &mut self,
        exec_id: &str,
        markers_pending: bool,
    ) -> Result<Option<ExecEnd>> {
        let inspect = match self.docker.inspect_exec(exec_id).await {
            Ok(inspect) => inspect,
            Err(e) => {
                if markers_pending && let Some(loss) = self.lost_from_outside(None).await? {
                    return Ok(Some(ExecEnd::Lost(loss)));
                }
                return Err(SandboxError::Docker {
                    operation: "inspect exec",
                    source: e,
                });
            }
        };
        Ok((inspect.running != Some(true)).then_some(ExecEnd::Exited(inspect.exit_code)))
    }

    /// Ends a run whose step timed out: the counters are read and the container is killed (which
    /// ends every process in it), then what was still in flight is kept as the step's output.
    async fn finish_timed_out(
        &mut self,
        mut run: Run<'_>,
        output: &mut ExecOutput,
        kind: TimeoutKind,
    ) -> Vec<StepResult> {
        tracing::debug!(
            container = self.name,
            ?kind,
            "step timed out; killing the container"
        );
        // counters first: a killed container's cgroup is gone
        let counters = run.meter.counters().await;
        let duration = run.meter.start.elapsed();
        self.kill().await;
        let tail = run.drain_after_kill(output).await;
        let Run {
            mut results,
            mut meter,
            scanner,
            ..
        } = run;
        for event in tail {
            if let Event::Output(bytes) = event {
                meter.capture.push(&bytes, meter.start.elapsed());
            }
        }
        meter.capture.push(&scanner.finish(), meter.start.elapsed());
        let mut result = meter.into_result(counters, None, Some(kind));
        result.duration = duration;
        results.push(result);
        results
    }

    /// Ends a run whose driver ended without the step's marker: it was killed, by the step (its
    /// exit status then stands for the step's), by the OOM killer, or with the container — from
    /// outside, which says nothing about the crate.
    async fn finish_without_marker(
        &mut self,
        run: Run<'_>,
        exit_code: Option<i64>,
    ) -> Result<Vec<StepResult>> {
        if let Some(loss) = self.lost_from_outside(exit_code).await? {
            return Err(self.lost(loss, run).await);
        }
        let Run {
            mut results,
            mut meter,
            scanner,
            ..
        } = run;
        meter.capture.push(&scanner.finish(), meter.start.elapsed());
        let code = exit_code.filter(|&c| c != 0);
        results.push(meter.finish(code, None).await);
        Ok(results)
    }
}

/// The first step, once every step is valid and all share their environment, working directory
/// and toolchain (one exec runs them all).
fn check_steps(steps: &[StepCommand]) -> Result<&StepCommand> {
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
    Ok(first)
}

impl<'s> Run<'s> {
    /// A run whose driver was just handed its script; `meter` measures the first step.
    fn new(
        steps: &'s [StepCommand],
        cgroup: Option<ContainerCgroup>,
        nonce: &str,
        meter: StepMeter,
    ) -> Self {
        Run {
            steps,
            cgroup,
            scanner: MarkerScanner::new(nonce),
            events: Vec::new(),
            results: Vec::new(),
            meter,
            last_output: Instant::now(),
            stream_open: true,
            done: None,
            exec_deadline: Instant::now()
                + steps.iter().map(|s| s.timeouts.total).sum::<Duration>(),
        }
    }

    /// The current step's next deadline (`Continue`), or the timeout it ran into (`Break`).
    fn step_deadline(&self, now: Instant) -> ControlFlow<ExecEnd, Instant> {
        let step = &self.steps[self.results.len().min(self.steps.len() - 1)];
        let total_deadline = (self.meter.start + step.timeouts.total).min(self.exec_deadline);
        let no_output_deadline = self.last_output + step.timeouts.no_output;
        if now >= total_deadline {
            return ControlFlow::Break(ExecEnd::TimedOut(TimeoutKind::Total));
        }
        if now >= no_output_deadline {
            return ControlFlow::Break(ExecEnd::TimedOut(TimeoutKind::NoOutput));
        }
        ControlFlow::Continue(total_deadline.min(no_output_deadline))
    }

    /// Takes a chunk of the driver's output: the current step's output is captured, and its end
    /// marker ends it. Once the driver is done (after a failed step's marker, or the last one),
    /// output is dropped; so are markers out of order.
    async fn take_chunk(&mut self, chunk: &[u8]) {
        self.last_output = Instant::now();
        let mut events = std::mem::take(&mut self.events);
        self.scanner.feed(chunk, &mut events);
        for event in events.drain(..) {
            match event {
                Event::Output(bytes) if self.done.is_none() => {
                    self.meter.capture.push(&bytes, self.meter.start.elapsed())
                }
                Event::Output(_) => {}
                Event::End { step, status }
                    if self.done.is_none() && step == self.results.len() =>
                {
                    self.step_ended(status).await
                }
                // a marker out of order is not the driver's: the step printed it
                Event::End { .. } => {}
            }
        }
        self.events = events;
    }

    /// The current step reached its marker with `status`: its result is recorded and the next
    /// step's meter started. After a failed step, or the last, the driver is done.
    async fn step_ended(&mut self, status: i64) {
        let i = self.results.len();
        // this step's counters before the next step's meter resets them
        let counters = self.meter.counters().await;
        let next_cap = self
            .steps
            .get(i + 1)
            .map_or(self.steps[0].log_cap, |s| s.log_cap);
        let ended = std::mem::replace(
            &mut self.meter,
            StepMeter::start(self.cgroup.as_ref(), next_cap).await,
        );
        let result = ended.into_result(counters, Some(status), None);
        if !result.success() || i + 1 == self.steps.len() {
            self.done = Some(Instant::now());
        }
        self.results.push(result);
        self.last_output = Instant::now();
    }

    /// What the driver still wrote after its container was killed, read for at most
    /// [`DRAIN_AFTER_KILL`].
    async fn drain_after_kill(&mut self, output: &mut ExecOutput) -> Vec<Event> {
        let drain_until = Instant::now() + DRAIN_AFTER_KILL;
        let mut tail = Vec::new();
        while self.stream_open {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(chunk)) => self.scanner.feed(&chunk.into_bytes(), &mut tail),
                    _ => self.stream_open = false,
                },
                _ = tokio::time::sleep_until(drain_until) => self.stream_open = false,
            }
        }
        tail
    }
}
