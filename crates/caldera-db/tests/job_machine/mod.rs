//! The job state machine is written twice: `caldera_core::job::transition` (the rules, table-tested
//! in core) and the SQL of `caldera_db::jobs` (what runs). This test puts one job into every state
//! the rules know, applies every event through the SQL that implements it, reads the job back and
//! compares with what `transition` says — the same outcome, or the same refusal with nothing
//! changed. Changing a transition on either side without the other fails here.

use std::time::{Duration, SystemTime};

use caldera_core::job::{JobError, JobEvent, JobPolicy, JobState, Lease, transition};
use caldera_db::jobs;
use caldera_db::testing::TestDb;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const MAX_ATTEMPTS: u32 = 3;
/// Leases are 30 s long and taken at t = 100 s, so they expire at t = 130 s.
const LEASE: Duration = Duration::from_secs(30);
const CLAIMED_AT: u64 = 100;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn utc(at: SystemTime) -> DateTime<Utc> {
    DateTime::<Utc>::from(at)
}

/// The states of the table. A running job's lease token is "a".
fn states() -> Vec<JobState> {
    let running = |attempt| JobState::Running {
        attempt,
        lease: Lease {
            token: "a".into(),
            owner: "w1".into(),
            expires: t(CLAIMED_AT) + LEASE,
        },
    };
    vec![
        JobState::Queued { attempt: 0 },
        JobState::Queued { attempt: 1 },
        running(1),
        running(2),
        running(MAX_ATTEMPTS),
        JobState::Done,
        JobState::Error {
            reason: "lease expired".into(),
        },
        JobState::Cancelled,
    ]
}

/// The events of the table, each with the time it happens: tokens "a" (the current lease's) and
/// "b" (a stale one); reaping just before, at and after the lease's expiry.
fn events() -> Vec<(JobEvent, u64)> {
    vec![
        (
            JobEvent::Claim {
                token: "b".into(),
                owner: "w1".into(),
                lease: LEASE,
            },
            120,
        ),
        (
            JobEvent::Renew {
                token: "a".into(),
                lease: LEASE,
            },
            120,
        ),
        (
            JobEvent::Renew {
                token: "b".into(),
                lease: LEASE,
            },
            120,
        ),
        (JobEvent::Complete { token: "a".into() }, 120),
        (JobEvent::Complete { token: "b".into() }, 120),
        (JobEvent::Return { token: "a".into() }, 120),
        (JobEvent::Return { token: "b".into() }, 120),
        (JobEvent::Reap, 129),
        (JobEvent::Reap, 130),
        (JobEvent::Reap, 131),
        (JobEvent::Cancel, 120),
    ]
}

/// One experiment with one job, brought into `state` through the same SQL the scheduler runs.
struct Job {
    experiment: Uuid,
    id: i64,
    /// the token of the lease "a", when the job was claimed
    token: Option<Uuid>,
    worker: Uuid,
}

impl Job {
    async fn new(db: &TestDb, n: usize, state: &JobState) -> Job {
        let name = format!("machine-{n}");
        let experiment = super::started_with_jobs(db, &name, &["a@1.0.0"]).await;
        let (id,): (i64,) = sqlx::query_as("SELECT id FROM jobs WHERE experiment_id = $1")
            .bind(experiment)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let mut job = Job {
            experiment,
            id,
            token: None,
            worker: Uuid::new_v4(),
        };
        let set = |state: &'static str, attempt: i32| {
            sqlx::query("UPDATE jobs SET state = $2, attempt = $3, last_error = 'lease expired' WHERE id = $1")
                .bind(id)
                .bind(state)
                .bind(attempt)
        };
        match state {
            JobState::Queued { attempt } => {
                set("queued", *attempt as i32)
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
            JobState::Running { attempt, .. } => {
                set("queued", *attempt as i32 - 1)
                    .execute(&db.pool)
                    .await
                    .unwrap();
                let claimed = job.claim(db, CLAIMED_AT).await;
                assert_eq!(claimed.len(), 1, "setting up {state:?}");
                job.token = Some(claimed[0].lease_token);
            }
            JobState::Done => {
                let claimed = job.claim(db, CLAIMED_AT).await;
                job.token = Some(claimed[0].lease_token);
                job.complete(db, job.token.unwrap(), CLAIMED_AT).await;
            }
            JobState::Error { .. } => {
                set("error", MAX_ATTEMPTS as i32)
                    .execute(&db.pool)
                    .await
                    .unwrap();
            }
            JobState::Cancelled => {
                job.cancel(db).await;
            }
        }
        job
    }

    async fn claim(&self, db: &TestDb, at: u64) -> Vec<jobs::Claimed> {
        jobs::claim(
            &db.pool,
            self.worker,
            &[],
            1,
            utc(t(at)),
            chrono::Duration::from_std(LEASE).unwrap(),
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.experiment_id == self.experiment)
        .collect()
    }

    async fn complete(&self, db: &TestDb, token: Uuid, at: u64) -> bool {
        let side = super::side_of(caldera_core::outcome::Outcome::TestPass, 1);
        let out = jobs::complete(
            &db.pool,
            &[jobs::Completion {
                job_id: self.id,
                lease_token: token,
                worker: self.worker,
                start: side.clone(),
                end: side,
            }],
            utc(t(at)),
            MAX_ATTEMPTS as i32,
        )
        .await
        .unwrap();
        out.accepted == [self.id]
    }

    async fn cancel(&self, db: &TestDb) {
        let mut tx = db.pool.begin().await.unwrap();
        jobs::cancel_experiment(&mut tx, self.experiment)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// The token an event presents: "a" is the job's current lease, anything else a stale one.
    fn token(&self, name: &str) -> Uuid {
        match (name, self.token) {
            ("a", Some(t)) => t,
            _ => Uuid::new_v4(),
        }
    }

    /// Applies `event` at `at` through the SQL; whether the SQL accepted it.
    async fn apply(&self, db: &TestDb, event: &JobEvent, at: u64) -> bool {
        let now = utc(t(at));
        let lease = chrono::Duration::from_std(LEASE).unwrap();
        match event {
            JobEvent::Claim { .. } => !self.claim(db, at).await.is_empty(),
            JobEvent::Renew { token, .. } => {
                let token = self.token(token);
                jobs::renew(&db.pool, self.worker, &[(self.id, token)], now, lease)
                    .await
                    .unwrap()
                    == [token]
            }
            JobEvent::Complete { token } => self.complete(db, self.token(token), at).await,
            JobEvent::Return { token } => {
                jobs::hand_back(&db.pool, self.id, self.token(token), now)
                    .await
                    .unwrap()
            }
            JobEvent::Reap => {
                let reaped = jobs::reap(&db.pool, now, MAX_ATTEMPTS as i32)
                    .await
                    .unwrap();
                reaped.requeued.contains(&self.id) || reaped.errored.contains(&self.id)
            }
            JobEvent::Cancel => {
                self.cancel(db).await;
                true
            }
        }
    }

    /// The job as the rules see it: its state, attempt and lease (a current lease read back as
    /// "a" if it is the one set up, else as the claim's token "b").
    async fn read(&self, db: &TestDb) -> JobState {
        let (state, attempt, token, expires): (String, i32, Option<Uuid>, Option<DateTime<Utc>>) =
            sqlx::query_as(
                "SELECT j.state, j.attempt, j.lease_token, l.expires_at
                 FROM jobs j LEFT JOIN leases l ON l.id = j.lease_id WHERE j.id = $1",
            )
            .bind(self.id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let attempt = attempt as u32;
        match state.as_str() {
            "queued" => JobState::Queued { attempt },
            "running" => JobState::Running {
                attempt,
                lease: Lease {
                    token: if token.is_some() && token == self.token {
                        "a".into()
                    } else {
                        "b".into()
                    },
                    owner: "w1".into(),
                    expires: expires.expect("a running job has a lease").into(),
                },
            },
            "done" => JobState::Done,
            "error" => JobState::Error {
                reason: "lease expired".into(),
            },
            "cancelled" => JobState::Cancelled,
            other => panic!("unknown job state {other:?}"),
        }
    }
}

/// Error reasons are prose on both sides (the rules' "lease expired 3 times; giving up", the
/// database's `last_error`): the state is what must agree.
fn comparable(state: JobState) -> JobState {
    match state {
        JobState::Error { .. } => JobState::Error {
            reason: "lease expired".into(),
        },
        other => other,
    }
}

#[tokio::test]
async fn every_transition_of_the_rules_is_what_the_sql_does() {
    let db = TestDb::new().await;
    let policy = JobPolicy {
        max_attempts: MAX_ATTEMPTS,
    };
    let mut n = 0;
    let mut disagreements = Vec::new();
    for state in states() {
        for (event, at) in events() {
            n += 1;
            let job = Job::new(&db, n, &state).await;
            let before = job.read(&db).await;
            assert_eq!(before, comparable(state.clone()), "setting up {state:?}");
            let expected = transition(&state, &event, t(at), policy);
            let accepted = job.apply(&db, &event, at).await;
            let after = job.read(&db).await;
            let agrees = match &expected {
                // a refusal changes nothing, and the SQL refused too
                Err(_) => !accepted && after == before,
                // an event the rules accept without change (reaping a live lease, cancelling
                // a finished job) may be a no-op in SQL
                Ok(next) if *next == state => after == before,
                Ok(next) => accepted && after == comparable(next.clone()),
            };
            if !agrees {
                disagreements.push(format!(
                    "{state:?} + {event:?} at t={at}: rules say {expected:?}; SQL {} and left {after:?}",
                    if accepted { "accepted" } else { "refused" }
                ));
            }
            // nothing of this case stays queued for the next cases' claims
            job.cancel(&db).await;
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {n} transitions disagree:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // the table covered every kind of refusal too
    let refusals: Vec<JobError> = states()
        .iter()
        .flat_map(|s| {
            events()
                .into_iter()
                .filter_map(|(e, at)| transition(s, &e, t(at), policy).err())
                .collect::<Vec<_>>()
        })
        .collect();
    for kind in ["StaleLease", "NotRunning", "NotQueued", "Finished"] {
        assert!(
            refusals.iter().any(|e| format!("{e:?}").starts_with(kind)),
            "no {kind} in the table"
        );
    }
}
