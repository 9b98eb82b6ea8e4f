//! The clean-up between steps: whatever a step left running is killed, and the container with it
//! when that cannot be done or verified.

use std::time::Duration;

use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use futures::StreamExt;

use super::Container;
use crate::error::{Result, SandboxError};

/// Limit for the clean-up exec between steps.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Container {
    /// Kills whatever the step left running (everything of the sandbox user but PID 1). If that
    /// cannot be done or verified, the container is killed and restarted before the next step.
    pub(super) async fn clean_up_after_step(&mut self) {
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
}
