//! Jobs: what a worker is asked to do, and the job state machine.
//!
//! One job is one crate of one experiment, run with **both** toolchains on one worker: the crate is
//! prepared once (one lockfile, one source tree, one image), then built with the start toolchain
//! and with the end toolchain. The result therefore carries two outcomes.
//!
//! The state machine below is the model the scheduler's SQL implements; its table test pins every
//! transition, including the fencing rule (only the current lease token may complete a job).

use std::time::{Duration, SystemTime};

use crate::crates::CrateId;
use crate::experiment::{CapLints, LockfilePolicy, Mode};
use crate::toolchain::Toolchain;

/// Everything a worker needs to run one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub experiment: String,
    pub krate: CrateId,
    pub start: Toolchain,
    pub end: Toolchain,
    pub mode: Mode,
    pub cap_lints: CapLints,
    pub skip_tests: bool,
    pub quiet: bool,
    pub extra_timeout_secs: u32,
    pub extra_memory_mib: u32,
    /// Which dependency versions the crate builds with (the lockfile is settled once per
    /// experiment and crate: the first preparation decides, every later one reuses it).
    pub lockfile: LockfilePolicy,
    /// 0 for a crate's first run; 1.. for the runs that confirm a regression or fix, which the
    /// worker runs from fresh target dirs (never a slot's reused ones).
    pub run: u32,
    /// `Some(side)`: run only that side; the other was settled from the result cache when the
    /// experiment started (the worker reports it as `skipped`, and the master does not record
    /// it). `None` (every confirmation run, every job of an experiment with `"cache": false`):
    /// both sides.
    pub only: Option<Side>,
}

/// Which toolchain of an experiment a result belongs to (`"start"` or `"end"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Start,
    End,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Start, Side::End];
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Start => "start",
            Side::End => "end",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lease: who runs the job, under which fencing token, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub owner: String,
    pub expires: SystemTime,
}

/// The state of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Queued {
        attempt: u32,
    },
    Running {
        attempt: u32,
        lease: Lease,
    },
    Done,
    /// Gave up after too many attempts (infrastructure), or failed permanently.
    Error {
        reason: String,
    },
    Cancelled,
}

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The scheduler hands the job to `owner` under a fresh `token`.
    Claim {
        token: String,
        owner: String,
        lease: Duration,
    },
    /// A heartbeat from the lease holder renews the lease.
    Renew { token: String, lease: Duration },
    /// A result arrives under `token`.
    Complete { token: String },
    /// The worker hands the job back without a result (draining, cannot run it).
    Return { token: String },
    /// The reaper looks at the job at `now`.
    Reap,
    /// The experiment was aborted.
    Cancel,
}

/// Why an event was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("stale lease: the job's current lease is not {presented}")]
    StaleLease { presented: String },
    #[error("the job is not running")]
    NotRunning,
    #[error("the job is not queued")]
    NotQueued,
    #[error("the job is already finished")]
    Finished,
}

/// Limits of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    /// After this many attempts whose lease expired, the job ends as `Error`.
    pub max_attempts: u32,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy { max_attempts: 3 }
    }
}

/// Apply `event` to `state` at `now`. Pure; time comes in as a parameter.
///
/// The rules the SQL of `caldera_db::jobs` implements; `caldera-db`'s `job_machine` test runs
/// every state and event of its table through that SQL and compares.
pub fn transition(
    state: &JobState,
    event: &JobEvent,
    now: SystemTime,
    policy: JobPolicy,
) -> Result<JobState, JobError> {
    use JobEvent as E;
    use JobState as S;
    match (state, event) {
        (S::Done | S::Error { .. } | S::Cancelled, E::Cancel | E::Reap) => Ok(state.clone()),
        (S::Done | S::Error { .. } | S::Cancelled, _) => Err(JobError::Finished),
        (
            S::Queued { attempt },
            E::Claim {
                token,
                owner,
                lease,
            },
        ) => Ok(S::Running {
            attempt: attempt + 1,
            lease: Lease {
                token: token.clone(),
                owner: owner.clone(),
                expires: now + *lease,
            },
        }),
        (S::Queued { .. }, E::Reap) => Ok(state.clone()),
        (S::Queued { .. }, E::Cancel) => Ok(S::Cancelled),
        (S::Queued { .. }, E::Renew { .. } | E::Complete { .. } | E::Return { .. }) => {
            Err(JobError::NotRunning)
        }
        (S::Running { .. }, E::Claim { .. }) => Err(JobError::NotQueued),
        (S::Running { attempt, lease }, E::Renew { token, lease: d }) => {
            if *token != lease.token {
                return Err(JobError::StaleLease {
                    presented: token.clone(),
                });
            }
            Ok(S::Running {
                attempt: *attempt,
                lease: Lease {
                    expires: now + *d,
                    ..lease.clone()
                },
            })
        }
        (S::Running { lease, .. }, E::Complete { token }) => {
            if *token != lease.token {
                return Err(JobError::StaleLease {
                    presented: token.clone(),
                });
            }
            Ok(S::Done)
        }
        (S::Running { attempt, lease }, E::Return { token }) => {
            if *token != lease.token {
                return Err(JobError::StaleLease {
                    presented: token.clone(),
                });
            }
            // a returned job was not the crate's fault: it does not use up an attempt
            Ok(S::Queued {
                attempt: attempt.saturating_sub(1),
            })
        }
        (S::Running { attempt, lease }, E::Reap) => {
            if now < lease.expires {
                Ok(state.clone())
            } else if *attempt >= policy.max_attempts {
                Ok(S::Error {
                    reason: format!("lease expired {attempt} times; giving up"),
                })
            } else {
                Ok(S::Queued { attempt: *attempt })
            }
        }
        (S::Running { .. }, E::Cancel) => Ok(S::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }
    fn running(attempt: u32, token: &str, expires: u64) -> JobState {
        JobState::Running {
            attempt,
            lease: Lease {
                token: token.into(),
                owner: "w1".into(),
                expires: t(expires),
            },
        }
    }
    fn claim(token: &str) -> JobEvent {
        JobEvent::Claim {
            token: token.into(),
            owner: "w1".into(),
            lease: Duration::from_secs(30),
        }
    }

    #[test]
    fn transitions_table() {
        let policy = JobPolicy { max_attempts: 3 };
        let renew = |tok: &str| JobEvent::Renew {
            token: tok.into(),
            lease: Duration::from_secs(30),
        };
        let complete = |tok: &str| JobEvent::Complete { token: tok.into() };
        let ret = |tok: &str| JobEvent::Return { token: tok.into() };
        let stale = |tok: &str| {
            Err(JobError::StaleLease {
                presented: tok.into(),
            })
        };
        let err = JobState::Error { reason: "x".into() };
        let cases: Vec<(JobState, JobEvent, u64, Result<JobState, JobError>)> = vec![
            (
                JobState::Queued { attempt: 0 },
                claim("a"),
                100,
                Ok(running(1, "a", 130)),
            ),
            (
                JobState::Queued { attempt: 1 },
                claim("b"),
                100,
                Ok(running(2, "b", 130)),
            ),
            (
                JobState::Queued { attempt: 0 },
                JobEvent::Reap,
                100,
                Ok(JobState::Queued { attempt: 0 }),
            ),
            (
                JobState::Queued { attempt: 0 },
                JobEvent::Cancel,
                100,
                Ok(JobState::Cancelled),
            ),
            (
                JobState::Queued { attempt: 0 },
                renew("a"),
                100,
                Err(JobError::NotRunning),
            ),
            (
                JobState::Queued { attempt: 0 },
                complete("a"),
                100,
                Err(JobError::NotRunning),
            ),
            (
                JobState::Queued { attempt: 0 },
                ret("a"),
                100,
                Err(JobError::NotRunning),
            ),
            (
                running(1, "a", 130),
                claim("b"),
                100,
                Err(JobError::NotQueued),
            ),
            (
                running(1, "a", 130),
                renew("a"),
                120,
                Ok(running(1, "a", 150)),
            ),
            (running(1, "a", 130), renew("b"), 120, stale("b")),
            (running(1, "a", 130), complete("a"), 120, Ok(JobState::Done)),
            (running(1, "a", 130), complete("old"), 120, stale("old")),
            (
                running(2, "a", 130),
                ret("a"),
                120,
                Ok(JobState::Queued { attempt: 1 }),
            ),
            (running(1, "a", 130), ret("b"), 120, stale("b")),
            (
                running(1, "a", 130),
                JobEvent::Reap,
                129,
                Ok(running(1, "a", 130)),
            ),
            (
                running(1, "a", 130),
                JobEvent::Reap,
                130,
                Ok(JobState::Queued { attempt: 1 }),
            ),
            (
                running(2, "a", 130),
                JobEvent::Reap,
                131,
                Ok(JobState::Queued { attempt: 2 }),
            ),
            (
                running(3, "a", 130),
                JobEvent::Reap,
                131,
                Ok(JobState::Error {
                    reason: "lease expired 3 times; giving up".into(),
                }),
            ),
            (
                running(1, "a", 130),
                JobEvent::Cancel,
                120,
                Ok(JobState::Cancelled),
            ),
            (JobState::Done, complete("a"), 120, Err(JobError::Finished)),
            (JobState::Done, claim("a"), 120, Err(JobError::Finished)),
            (JobState::Done, JobEvent::Reap, 120, Ok(JobState::Done)),
            (JobState::Done, JobEvent::Cancel, 120, Ok(JobState::Done)),
            (
                JobState::Cancelled,
                complete("a"),
                120,
                Err(JobError::Finished),
            ),
            (err.clone(), renew("a"), 120, Err(JobError::Finished)),
            (err.clone(), JobEvent::Reap, 120, Ok(err.clone())),
        ];
        for (state, event, now, want) in cases {
            assert_eq!(
                transition(&state, &event, t(now), policy),
                want,
                "{state:?} + {event:?} at {now}"
            );
        }
    }

    #[test]
    fn a_result_is_accepted_once_and_a_late_one_is_refused() {
        let policy = JobPolicy::default();
        let s = transition(
            &JobState::Queued { attempt: 0 },
            &claim("first"),
            t(0),
            policy,
        )
        .unwrap();
        // the lease expires; the reaper re-queues; someone else claims it
        let s = transition(&s, &JobEvent::Reap, t(31), policy).unwrap();
        let s = transition(&s, &claim("second"), t(32), policy).unwrap();
        // the first worker's late result is refused, the second's accepted, a duplicate refused
        assert!(matches!(
            transition(
                &s,
                &JobEvent::Complete {
                    token: "first".into()
                },
                t(33),
                policy
            ),
            Err(JobError::StaleLease { .. })
        ));
        let done = transition(
            &s,
            &JobEvent::Complete {
                token: "second".into(),
            },
            t(34),
            policy,
        )
        .unwrap();
        assert_eq!(done, JobState::Done);
        assert_eq!(
            transition(
                &done,
                &JobEvent::Complete {
                    token: "second".into()
                },
                t(35),
                policy
            ),
            Err(JobError::Finished)
        );
    }
}
