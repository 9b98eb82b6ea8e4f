//! What the worker asks of whatever actually builds crates.

use std::time::Duration;

use caldera_core::job::JobSpec;
use caldera_core::outcome::Outcome;
use caldera_proto::v1;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// One job handed to this worker by the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: u64,
    /// The fencing token: the master accepts a result only under the job's current lease.
    pub lease_token: String,
    /// 1 for the first try, more when an earlier lease expired.
    pub attempt: u32,
    pub spec: JobSpec,
}

/// What one side (toolchain) of a job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideOutput {
    pub outcome: Outcome,
    /// Each step (fetch, build, test, …) and how long it took, in order.
    pub steps: Vec<(String, Duration)>,
    pub peak_memory_bytes: u64,
    /// Object-storage key of the side's log, once it is durably stored.
    pub log_key: Option<String>,
    pub duration: Duration,
}

impl SideOutput {
    /// A side that did not run because of an infrastructure failure (never a crate's fault).
    pub fn error(reason: impl Into<String>, duration: Duration) -> Self {
        SideOutput {
            outcome: Outcome::Error {
                reason: reason.into(),
            },
            steps: Vec::new(),
            peak_memory_bytes: 0,
            log_key: None,
            duration,
        }
    }

    fn to_wire(&self) -> v1::SideResult {
        v1::SideResult {
            outcome: Some((&self.outcome).into()),
            steps: self
                .steps
                .iter()
                .map(|(name, d)| v1::StepTiming {
                    name: name.clone(),
                    duration_ms: millis(*d),
                })
                .collect(),
            peak_memory_bytes: self.peak_memory_bytes,
            log_key: self.log_key.clone().unwrap_or_default(),
            duration_ms: millis(self.duration),
        }
    }
}

/// Both sides of one job, produced on this worker with one prepared crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    pub start: SideOutput,
    pub end: SideOutput,
}

impl JobOutput {
    /// The wire result for this output under the lease `(job_id, lease_token)`.
    pub fn to_result(&self, job_id: u64, lease_token: &str) -> v1::JobResult {
        v1::JobResult {
            job_id,
            lease_token: lease_token.to_owned(),
            start: Some(self.start.to_wire()),
            end: Some(self.end.to_wire()),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs jobs. The real one ([`DockerExecutor`](crate::docker::DockerExecutor)) prepares the crate
/// and runs cargo in the sandbox; tests use `fake::FakeExecutor` (feature `testing`).
pub trait Executor: Send + Sync + 'static {
    /// Run both sides of one job. Must stop promptly when `cancel` fires; whatever it returns
    /// after that is dropped.
    fn run(&self, job: Assignment, cancel: CancellationToken) -> BoxFuture<'static, JobOutput>;
}

#[cfg(test)]
mod tests {
    use caldera_core::outcome::BuildFailReason;

    use super::*;

    #[test]
    fn output_converts_to_the_wire_result() {
        let out = JobOutput {
            start: SideOutput {
                outcome: Outcome::TestPass,
                steps: vec![
                    ("build".into(), Duration::from_millis(1500)),
                    ("test".into(), Duration::from_micros(2500)),
                ],
                peak_memory_bytes: 42,
                log_key: Some("logs/e/c/start.log.zst".into()),
                duration: Duration::from_secs(4),
            },
            end: SideOutput::error("docker went away", Duration::MAX),
        };
        let r = out.to_result(7, "tok");
        assert_eq!((r.job_id, r.lease_token.as_str()), (7, "tok"));
        let start = r.start.unwrap();
        assert_eq!(
            Outcome::try_from(start.outcome.unwrap()).unwrap(),
            Outcome::TestPass
        );
        assert_eq!(
            start.steps,
            [
                v1::StepTiming {
                    name: "build".into(),
                    duration_ms: 1500
                },
                v1::StepTiming {
                    name: "test".into(),
                    duration_ms: 2
                }
            ]
        );
        assert_eq!(
            (
                start.peak_memory_bytes,
                start.log_key.as_str(),
                start.duration_ms
            ),
            (42, "logs/e/c/start.log.zst", 4000)
        );
        let end = r.end.unwrap();
        assert_eq!(
            Outcome::try_from(end.outcome.unwrap()).unwrap(),
            Outcome::Error {
                reason: "docker went away".into()
            }
        );
        assert_eq!(
            (end.log_key.as_str(), end.duration_ms),
            ("", u64::MAX),
            "no log is an empty key; durations saturate"
        );
        // every outcome survives the trip
        let bf = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        });
        let side = SideOutput {
            outcome: bf.clone(),
            ..SideOutput::error("", Duration::ZERO)
        };
        assert_eq!(
            Outcome::try_from(side.to_wire().outcome.unwrap()).unwrap(),
            bf
        );
    }
}
