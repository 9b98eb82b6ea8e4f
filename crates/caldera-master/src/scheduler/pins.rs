//! Toolchain identity on the result path: each result's sides are checked against the build its
//! experiment pinned (`caldera_db::toolchains`), pinning the sides not pinned yet, before the
//! batch is recorded. A result of another build becomes an infrastructure `error` on both sides,
//! so the completion queues its job again (while attempts are left) for a worker with the
//! pinned build — which, from the pin on, are the only ones that claim the experiment's jobs.

use std::time::Duration;

use caldera_core::outcome::Outcome;
use caldera_core::toolchain::ToolchainIdentity;
use caldera_db::OwnConnection;
use caldera_db::jobs::Completion;
use caldera_db::toolchains::{self, ResultCheck, SideCheck};

use super::Scheduler;

/// The build each side of a result ran with (start, end), as the worker reported it.
pub(crate) type RanWith = [Option<ToolchainIdentity>; 2];

/// Whether a side's outcome came from building with its toolchain (what a different build
/// could change), as opposed to never getting there.
fn built(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::TestPass | Outcome::TestFail { .. } | Outcome::TestSkipped | Outcome::BuildFail(_)
    )
}

/// The completion of a result refused for `why`: an infrastructure error on both sides.
fn refuse(c: &mut Completion, why: &str) {
    let reason = format!("toolchain build differs from the experiment's pin: {why}");
    for side in [&mut c.start, &mut c.end] {
        side.outcome = Outcome::Error {
            reason: reason.clone(),
        };
    }
}

impl Scheduler {
    /// Check the batch's results against their experiments' pins (pinning what is not pinned
    /// yet) and turn the refused ones into infrastructure errors. Retries while Postgres is
    /// away; `false` when the scheduler shuts down first.
    pub(super) async fn check_pins(
        &self,
        db: &mut OwnConnection,
        completions: &mut [Completion],
        ran: &[&RanWith],
    ) -> bool {
        let verdicts = loop {
            let checks: Vec<ResultCheck<'_>> = completions
                .iter()
                .zip(ran)
                .map(|(c, [start, end])| ResultCheck {
                    job_id: c.job_id,
                    lease_token: c.lease_token,
                    worker: c.worker,
                    start: SideCheck {
                        identity: start.as_ref(),
                        built: built(&c.start.outcome),
                    },
                    end: SideCheck {
                        identity: end.as_ref(),
                        built: built(&c.end.outcome),
                    },
                })
                .collect();
            let checked = match db.get().await {
                Ok(conn) => toolchains::check_results(conn, &checks, self.now()).await,
                Err(e) => Err(e),
            };
            match checked {
                Ok(v) => break v,
                Err(e) => {
                    db.reset();
                    self.inner.metrics.db_errors.inc();
                    tracing::warn!(error = %e, "cannot check results against the toolchain pins; retrying");
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        };
        for (c, why) in completions.iter_mut().zip(verdicts) {
            if let Some(why) = why {
                tracing::warn!(job = c.job_id, worker = %c.worker, reason = %why, "a result ran with another toolchain build than the experiment's pin: not recorded");
                refuse(c, &why);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use caldera_core::outcome::BuildFailReason;

    use super::*;

    #[test]
    fn only_outcomes_of_a_build_depend_on_the_build() {
        let reason = || "x".to_owned();
        for (outcome, expected) in [
            (Outcome::TestPass, true),
            (Outcome::TestSkipped, true),
            (Outcome::BuildFail(BuildFailReason::Unknown), true),
            (Outcome::PrepareFail { reason: reason() }, false),
            (Outcome::Broken { reason: reason() }, false),
            (Outcome::Skipped, false),
            (Outcome::Error { reason: reason() }, false),
        ] {
            assert_eq!(built(&outcome), expected, "{outcome:?}");
        }
    }
}
