//! Results: what a job produced on the worker ([`JobOutput`], one [`SideOutput`] per toolchain),
//! reported under its lease ([`JobResult`]) and acknowledged by the master ([`ResultAck`]); or the
//! job handed back without one ([`JobReturned`]).

use std::time::Duration;

use caldera_core::outcome::Outcome;
use caldera_core::toolchain::ToolchainIdentity;

use crate::lease::Lease;
use crate::v1;
use crate::{WireError, wire};

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
    /// The build of the toolchain the side ran with, when the executor knows it.
    pub toolchain: Option<ToolchainIdentity>,
    /// The side's result-cache key (`caldera_core::fingerprint::cache_key`), filled by the
    /// worker from the job, this build and its environment; `None` when it has none.
    pub cache_key: Option<String>,
}

impl SideOutput {
    /// The side a job with `JobSpec::only` did not run: it was settled from the result cache
    /// when the experiment started, and the master does not record this placeholder.
    pub fn not_run() -> Self {
        SideOutput {
            outcome: Outcome::Skipped,
            ..SideOutput::error("", Duration::ZERO)
        }
    }

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
            toolchain: None,
            cache_key: None,
        }
    }
}

/// Both sides of one job, produced on one worker with one prepared crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    pub start: SideOutput,
    pub end: SideOutput,
}

impl JobOutput {
    /// The wire result for this output under `lease`.
    pub fn to_result(&self, lease: &Lease) -> v1::JobResult {
        v1::JobResult {
            job_id: lease.job_id,
            lease_token: lease.token.to_string(),
            start: Some((&self.start).into()),
            end: Some((&self.end).into()),
        }
    }
}

/// Durations travel as whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&SideOutput> for v1::SideResult {
    fn from(s: &SideOutput) -> Self {
        v1::SideResult {
            outcome: Some((&s.outcome).into()),
            steps: s
                .steps
                .iter()
                .map(|(name, d)| v1::StepTiming {
                    name: name.clone(),
                    duration_ms: millis(*d),
                })
                .collect(),
            peak_memory_bytes: s.peak_memory_bytes,
            log_key: s.log_key.clone().unwrap_or_default(),
            duration_ms: millis(s.duration),
            toolchain: s.toolchain.as_ref().map(Into::into),
            cache_key: s.cache_key.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<v1::SideResult> for SideOutput {
    type Error = WireError;
    /// An empty log key is no log.
    fn try_from(s: v1::SideResult) -> Result<Self, WireError> {
        let outcome = s.outcome.ok_or_else(|| wire("outcome", "missing"))?;
        Ok(SideOutput {
            outcome: Outcome::try_from(outcome)?,
            steps: s
                .steps
                .into_iter()
                .map(|t| (t.name, Duration::from_millis(t.duration_ms)))
                .collect(),
            peak_memory_bytes: s.peak_memory_bytes,
            log_key: (!s.log_key.is_empty()).then_some(s.log_key),
            duration: Duration::from_millis(s.duration_ms),
            toolchain: s
                .toolchain
                .map(|t| ToolchainIdentity::try_from(t).map_err(|e| e.within("toolchain")))
                .transpose()?,
            cache_key: match s.cache_key {
                k if k.is_empty() => None,
                k if k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()) => Some(k),
                k => return Err(wire("cache_key", format!("{k:?} is not a cache key"))),
            },
        })
    }
}

/// A job's result as the master receives it: the lease it ran under and what it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    pub lease: Lease,
    pub output: JobOutput,
}

/// The side in `field` of a result, which must be there.
fn side(field: &str, s: Option<v1::SideResult>) -> Result<SideOutput, WireError> {
    let s = s.ok_or_else(|| wire(field, "missing"))?;
    SideOutput::try_from(s).map_err(|e| e.within(field))
}

impl TryFrom<v1::JobResult> for JobResult {
    type Error = WireError;
    fn try_from(r: v1::JobResult) -> Result<Self, WireError> {
        Ok(JobResult {
            lease: Lease::from_wire(r.job_id, "result.lease_token", &r.lease_token)?,
            output: JobOutput {
                start: side("result.start", r.start)?,
                end: side("result.end", r.end)?,
            },
        })
    }
}

/// The master's answer to a result. Accepted or not, the worker may forget the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultAck {
    pub lease: Lease,
    pub accepted: bool,
    /// Why it was rejected; empty when accepted.
    pub reason: String,
}

impl From<ResultAck> for v1::ResultAck {
    fn from(a: ResultAck) -> Self {
        v1::ResultAck {
            job_id: a.lease.job_id,
            lease_token: a.lease.token.to_string(),
            accepted: a.accepted,
            reason: a.reason,
        }
    }
}

impl TryFrom<v1::ResultAck> for ResultAck {
    type Error = WireError;
    fn try_from(a: v1::ResultAck) -> Result<Self, WireError> {
        Ok(ResultAck {
            lease: Lease::from_wire(a.job_id, "ack.lease_token", &a.lease_token)?,
            accepted: a.accepted,
            reason: a.reason,
        })
    }
}

/// A job the worker gives back without a result (draining, or it cannot run it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReturned {
    pub lease: Lease,
    pub reason: String,
}

impl From<JobReturned> for v1::JobReturned {
    fn from(r: JobReturned) -> Self {
        v1::JobReturned {
            job_id: r.lease.job_id,
            lease_token: r.lease.token.to_string(),
            reason: r.reason,
        }
    }
}

impl TryFrom<v1::JobReturned> for JobReturned {
    type Error = WireError;
    fn try_from(r: v1::JobReturned) -> Result<Self, WireError> {
        Ok(JobReturned {
            lease: Lease::from_wire(r.job_id, "returned.lease_token", &r.lease_token)?,
            reason: r.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use caldera_core::outcome::BuildFailReason;

    use super::*;
    use crate::v1::outcome;

    const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn lease(job_id: u64) -> Lease {
        Lease::from_wire(job_id, "lease_token", TOKEN).unwrap()
    }

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
                toolchain: None,
                cache_key: None,
            },
            end: SideOutput::error("docker went away", Duration::MAX),
        };
        let r = out.to_result(&lease(7));
        assert_eq!((r.job_id, r.lease_token.as_str()), (7, TOKEN));
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
            Outcome::try_from(v1::SideResult::from(&side).outcome.unwrap()).unwrap(),
            bf
        );
    }

    #[test]
    fn results_are_read_back_naming_the_bad_field() {
        let out = JobOutput {
            start: SideOutput {
                outcome: Outcome::TestPass,
                steps: vec![("build".into(), Duration::from_millis(1500))],
                peak_memory_bytes: 42,
                log_key: Some("logs/e/c/start.log.zst".into()),
                duration: Duration::from_secs(4),
                toolchain: Some(ToolchainIdentity {
                    toolchain: "nightly".into(),
                    commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
                    commit_date: "2026-11-30".into(),
                    host: "x86_64-unknown-linux-gnu".into(),
                    release: "1.95.0-nightly".into(),
                    cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
                }),
                cache_key: Some(format!("v1:{}", "ab".repeat(32))),
            },
            end: SideOutput::error("docker went away", Duration::from_millis(3)),
        };
        let wire = out.to_result(&lease(7));
        let back = JobResult::try_from(wire.clone()).unwrap();
        assert_eq!(back.lease, lease(7));
        assert_eq!(back.output, out, "what travels in milliseconds comes back");

        let broken_outcome = Some(v1::Outcome {
            kind: Some(outcome::Kind::BuildFail(v1::BuildFail { reason: None })),
        });
        for (field, r) in [
            (
                "result.lease_token",
                v1::JobResult {
                    lease_token: "not-a-token".into(),
                    ..wire.clone()
                },
            ),
            (
                "result.start",
                v1::JobResult {
                    start: None,
                    ..wire.clone()
                },
            ),
            (
                "result.end.outcome",
                v1::JobResult {
                    end: Some(v1::SideResult::default()),
                    ..wire.clone()
                },
            ),
            (
                "result.start.outcome.build_fail",
                v1::JobResult {
                    start: Some(v1::SideResult {
                        outcome: broken_outcome,
                        ..Default::default()
                    }),
                    ..wire.clone()
                },
            ),
            (
                "result.end.cache_key",
                v1::JobResult {
                    end: wire.end.clone().map(|s| v1::SideResult {
                        cache_key: "bad key".into(),
                        ..s
                    }),
                    ..wire.clone()
                },
            ),
            (
                "result.start.toolchain.host",
                v1::JobResult {
                    start: wire.start.clone().map(|s| v1::SideResult {
                        toolchain: s.toolchain.map(|t| v1::ToolchainIdentity {
                            host: String::new(),
                            ..t
                        }),
                        ..s
                    }),
                    ..wire.clone()
                },
            ),
        ] {
            assert_eq!(JobResult::try_from(r).unwrap_err().field, field);
        }
    }

    #[test]
    fn acks_and_hand_backs_carry_the_lease() {
        let ack = ResultAck {
            lease: lease(3),
            accepted: false,
            reason: "stale".into(),
        };
        let wire = v1::ResultAck::from(ack.clone());
        assert_eq!((wire.job_id, wire.lease_token.as_str()), (3, TOKEN));
        assert_eq!(ResultAck::try_from(wire.clone()).unwrap(), ack);
        let bad = v1::ResultAck {
            lease_token: String::new(),
            ..wire
        };
        assert_eq!(
            ResultAck::try_from(bad).unwrap_err().field,
            "ack.lease_token"
        );

        let returned = JobReturned {
            lease: lease(4),
            reason: "draining".into(),
        };
        let wire = v1::JobReturned::from(returned.clone());
        assert_eq!(JobReturned::try_from(wire.clone()).unwrap(), returned);
        let bad = v1::JobReturned {
            lease_token: "x".into(),
            ..wire
        };
        assert_eq!(
            JobReturned::try_from(bad).unwrap_err().field,
            "returned.lease_token"
        );
    }
}
