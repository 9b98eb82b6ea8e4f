//! Telling a container lost from outside (removed, killed or restarted by an operator, a sweep or
//! the engine) from a step that died: the first is [`SandboxError::ContainerLost`], never a
//! result of the crate's.

use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use tokio::time::Instant;

use super::Container;
use super::run::Run;
use crate::error::{ContainerLoss, Result, SandboxError};
use crate::sandbox::is_not_found;

/// How long the engine is given to register that a container whose step driver was killed has
/// died too (its exec's exit and its init's exit are separate events), and that a stopped one is
/// being removed; only waited for when a step ended without its marker.
const LOSS_SETTLE: Duration = Duration::from_secs(1);
const LOSS_POLL: Duration = Duration::from_millis(50);

impl Container {
    /// After a step's driver ended without its marker (or its exec could not be followed): was
    /// the container removed, killed or restarted from outside? `driver_status` is the driver's
    /// exit status when known; only a driver that died of a signal (≥ 128) or whose status is
    /// unknown can have died with its container, and only then is the engine given
    /// [`LOSS_SETTLE`] to register the container's death. `None`: the container still runs the
    /// run the step started in (the step killed the driver), or it stopped because the OOM
    /// killer killed its init (the engine's `OOMKilled`; the caller reads it as an OOM kill).
    pub(super) async fn lost_from_outside(
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
                Err(e) if is_not_found(&e) => {
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

    /// The error for a container lost from outside during the step `run` measures, with the
    /// results of the steps that ran (the interrupted one last, with its output so far).
    pub(super) async fn lost(&self, loss: ContainerLoss, run: Run<'_>) -> SandboxError {
        let Run {
            mut results,
            mut meter,
            scanner,
            ..
        } = run;
        meter.capture.push(&scanner.finish(), meter.start.elapsed());
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
}
