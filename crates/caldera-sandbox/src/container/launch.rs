//! Step driver execs: started ahead of the steps ([`Container::prime`]) or when they come, and
//! handed their script.

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;

use super::driver::{DRIVER, driver_script};
use super::{Container, base_env};
use crate::error::{Result, SandboxError};
use crate::spec::{StepCommand, paths};

/// What a driver exec writes (stdout and stderr), as the engine streams it.
pub(super) type ExecOutput = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = std::result::Result<bollard::container::LogOutput, bollard::errors::Error>,
            > + Send,
    >,
>;

/// A driver exec's stdin, where its script goes.
pub(super) type DriverInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A started step driver exec: its id and attached streams.
pub(super) struct DriverExec {
    pub(super) id: String,
    /// The toolchain whose environment it runs with.
    toolchain: String,
    pub(super) output: ExecOutput,
    pub(super) input: DriverInput,
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

    /// The driver for steps with `toolchain` and `workdir`: the one started ahead when it fits and
    /// still waits, else one started now. A primed driver that does not fit is dropped.
    pub(super) async fn driver_for(
        &mut self,
        toolchain: &str,
        workdir: Option<&str>,
    ) -> Result<DriverExec> {
        let primed = match self
            .primed
            .take()
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        {
            Some(p) if p.toolchain == toolchain && workdir.is_none() => {
                match self.docker.inspect_exec(&p.id).await {
                    Ok(i) if i.running == Some(true) => Some(p),
                    _ => None,
                }
            }
            _ => None,
        };
        match primed {
            Some(p) => Ok(p),
            None => self.start_driver(toolchain, workdir).await,
        }
    }

    /// Hands the driver its nonce and the steps' script, and closes its stdin. If that fails, the
    /// container is killed: the driver's state is unknown.
    pub(super) async fn hand_over(
        &mut self,
        mut input: DriverInput,
        steps: &[StepCommand],
        nonce: &str,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let script = driver_script(steps, nonce);
        let sent = async {
            input.write_all(script.as_bytes()).await?;
            input.flush().await
        };
        if let Err(e) = sent.await {
            self.kill().await;
            return Err(self.gone(format!("could not hand the step driver its steps: {e}")));
        }
        Ok(())
    }
}
