//! Claims: handing queued jobs to workers, from each running experiment's cursor, as one lease
//! per statement (see [`Claimer::claim`]).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::{DbError, OwnConnection};

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job_id: i64,
    pub lease_token: Uuid,
    pub attempt: i32,
    pub experiment_id: Uuid,
    pub experiment: String,
    pub crate_id: String,
    /// 0: the crate's first run; 1..: a confirmation run (run from fresh target dirs)
    pub run: i16,
}

/// Claims jobs for workers on a connection of its own (see [`Claimer::claim`]).
///
/// The connection is set up once for what claims need: `synchronous_commit = off` (a claim lost
/// in a Postgres crash is simply queued again, and the worker that got it cannot report a result
/// for it: its lease token no longer exists — fencing; completions, which workers forget once
/// acknowledged, stay synchronous) and generic plans (each claim reads a bounded
/// window of ids, so no plan can make one costly, and replanning was a visible share of its
/// time). A claim statement is a transaction of its own, so a claim round is one round trip per
/// statement, usually one. The connection is dropped on any error and opened again by the next
/// claim, so a restarted Postgres costs one failed claim.
pub struct Claimer {
    conn: OwnConnection,
}

/// One claim statement's answer: the experiment it took from and its name (none: no experiment
/// has queued work this worker may take), its cursor before and after, its last job id, and the
/// claimed jobs (ids, lease tokens, attempts, crate ids, runs).
type ClaimRow = (
    Option<Uuid>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<i64>>,
    Option<Vec<Uuid>>,
    Option<Vec<i32>>,
    Option<Vec<String>>,
    Option<Vec<i16>>,
);

/// Most statements one claim runs (each moves a cursor forward or finishes an experiment's queue);
/// whatever is left is found by the next claim.
const MAX_CLAIM_STATEMENTS: usize = 64;

/// One claim statement, its own transaction. `q`: the first running experiment, by priority then
/// age, with queued work whose requirements `$1` (the worker's capabilities) meets, and its
/// implied requirements too when `$2` (the worker lists toolchains), not one of `$9` (experiments
/// this claim passed over); its cursor row locked, one locked elsewhere skipped; `avoid` when
/// another worker (`$8`, their capability sets) could take its jobs. `picked`: up to `$4` queued
/// jobs in the window of `$3` ids from the cursor, skipping the jobs to avoid for worker `$5`.
/// `held`: the first job so skipped. `lease`: one lease for them, to `$5` until `$6`. `claimed`:
/// the jobs set running at `$7` with fresh tokens. `advance`: the cursor past what `picked` read,
/// but not past `held`, and not at all when `requeued`. One row: see [`ClaimRow`].
const CLAIM: &str = "WITH q AS (
         SELECT q.experiment_id, e.name, q.next_job, q.last_job,
                -- a job queued again after this statement's snapshot (the row locked here is
                -- the newest version; the subquery reads the snapshot's): `picked` cannot see
                -- it, so the cursor must not move (migration 0008)
                q.requeues <> (SELECT s.requeues FROM job_queues s
                               WHERE s.experiment_id = q.experiment_id) AS requeued,
                -- another connected worker could take this experiment's jobs
                EXISTS (SELECT 1 FROM jsonb_array_elements($8::jsonb) AS o(caps)
                        WHERE q.requirements <@ o.caps
                          AND (NOT jsonb_path_exists(o.caps, '$[*] ? (@ starts with \"toolchain:\")')
                               OR e.implied_requirements <@ o.caps)) AS avoid
         FROM job_queues q JOIN experiments e ON e.id = q.experiment_id
         WHERE e.status = 'running' AND q.next_job <= q.last_job
           AND q.requirements <@ $1::jsonb AND (NOT $2 OR e.implied_requirements <@ $1::jsonb)
           AND NOT (q.experiment_id = ANY($9::uuid[]))
         ORDER BY e.priority DESC, e.created_at, e.id
         LIMIT 1
         FOR UPDATE OF q SKIP LOCKED
     ), picked AS (
         SELECT id FROM jobs
         WHERE experiment_id = (SELECT experiment_id FROM q)
           AND id >= (SELECT next_job FROM q) AND id < (SELECT next_job FROM q) + $3
           AND state = 'queued'
           AND (avoid_worker IS NULL OR avoid_worker <> $5 OR NOT (SELECT avoid FROM q))
         ORDER BY id LIMIT $4
         -- never wait for a job row while holding the cursor row: a statement that queues a job
         -- again locks the job, then (its trigger) the cursor row; a job locked now is being
         -- queued again (that trigger then lowers the cursor after this claim) or finished
         FOR UPDATE SKIP LOCKED
     ), held AS (
         -- the first queued job left for another worker below where the cursor
         -- would move (the ids `picked` read): the cursor must not pass it
         SELECT min(id) AS id FROM jobs
         WHERE (SELECT avoid FROM q) AND experiment_id = (SELECT experiment_id FROM q)
           AND id >= (SELECT next_job FROM q)
           AND id < CASE WHEN (SELECT count(*) FROM picked) = $4 THEN (SELECT max(id) FROM picked)
                         ELSE (SELECT next_job FROM q) + $3 END
           AND state = 'queued' AND avoid_worker = $5
     ), lease AS (
         INSERT INTO leases (worker, expires_at, jobs)
         SELECT $5, $6, array_agg(id) FROM picked HAVING count(*) > 0
         RETURNING id
     ), claimed AS (
         UPDATE jobs j SET state = 'running', lease_id = (SELECT id FROM lease),
                lease_token = gen_random_uuid(), lease_owner = $5, attempt = j.attempt + 1,
                updated_at = $7, claimed_at = $7
         WHERE j.id = ANY(ARRAY(SELECT id FROM picked)) AND j.state = 'queued'
         RETURNING j.id, j.lease_token, j.attempt, j.crate_id, j.run
     ), advance AS (
         UPDATE job_queues jq
         SET next_job = CASE WHEN q.requeued THEN q.next_job ELSE least(
                 CASE WHEN (SELECT count(*) FROM picked) = $4
                      THEN (SELECT max(id) + 1 FROM picked) ELSE q.next_job + $3 END,
                 (SELECT id FROM held)) END
         FROM q WHERE jq.experiment_id = q.experiment_id
         RETURNING jq.next_job
     )
     SELECT q.experiment_id, q.name, q.next_job, (SELECT next_job FROM advance), q.last_job,
            c.ids, c.tokens, c.attempts, c.crates, c.runs
     FROM (SELECT 1) AS one
     LEFT JOIN q ON true
     LEFT JOIN (SELECT array_agg(c.id) AS ids, array_agg(c.lease_token) AS tokens,
                       array_agg(c.attempt) AS attempts,
                       array_agg((SELECT k.crate_id FROM crates k WHERE k.id = c.crate_id)) AS crates,
                       array_agg(c.run) AS runs
                FROM claimed c) c ON true";

impl Claimer {
    pub fn new(pool: &PgPool) -> Claimer {
        Claimer {
            conn: OwnConnection::new(
                pool,
                "caldera-claims",
                &[
                    ("synchronous_commit", "off"),
                    ("plan_cache_mode", "force_generic_plan"),
                ],
            ),
        }
    }

    /// Claim up to `limit` queued jobs of running experiments whose requirements are all among
    /// `capabilities`, highest priority first, then oldest; lease them to `worker` until
    /// `now + lease`. A worker that lists toolchains (`toolchain:…` capabilities) gets only jobs
    /// whose experiment's implied requirements (its rustup toolchains, set at the start) it
    /// meets; one that lists none (an executor that provides toolchains its own way) is not
    /// filtered by toolchain. Sorted by job id.
    ///
    /// The experiments' specs are not part of the claim (a spec can hold a million crate names):
    /// the dispatcher fetches each once with [`crate::experiments::specs`].
    ///
    /// Each statement takes the first experiment in that order with queued work (locking its
    /// cursor row; one that something else holds is skipped) and, from its cursor on, the queued
    /// jobs in a bounded window of ids `[cursor, cursor + window)`, as one lease, and moves the
    /// cursor past what it read. So no plan can make a statement read more than its window. When
    /// a statement comes back short the next one continues: with a doubled window if the
    /// experiment has ids left (other experiments' ids in between, jobs running or done below a
    /// lowered cursor), else with the next experiment.
    pub async fn claim(
        &mut self,
        worker: Uuid,
        capabilities: &[String],
        limit: i64,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        self.claim_among(worker, capabilities, &[], limit, now, lease)
            .await
    }

    /// [`Claimer::claim`], knowing the capabilities of the other workers connected now
    /// (`others`, one entry per distinct set). A confirmation run is not given to the worker that
    /// ran the crate's first run (`jobs.avoid_worker`) while one of `others` could take it (its
    /// capabilities meet the experiment's requirements as they would for its own claim); the
    /// experiment's cursor then stays at the first such job, so that the other worker's claim
    /// finds it. With no such worker connected, the job runs where it can.
    pub async fn claim_among(
        &mut self,
        worker: Uuid,
        capabilities: &[String],
        others: &[Vec<String>],
        limit: i64,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        let result = self
            .claim_on(worker, capabilities, others, limit, now, lease)
            .await;
        if result.is_err() {
            self.conn.reset();
        }
        result
    }

    /// [`Claimer::claim_among`] on the claimer's connection: claim statements, one after the
    /// other, until `limit` jobs are claimed or no experiment has more for this worker.
    async fn claim_on(
        &mut self,
        worker: Uuid,
        capabilities: &[String],
        others: &[Vec<String>],
        limit: i64,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<Claimed>, DbError> {
        let mut claimed: Vec<Claimed> = Vec::new();
        if limit <= 0 {
            return Ok(claimed);
        }
        let request = ClaimRequest {
            worker,
            capabilities: Json(capabilities),
            lists_toolchains: capabilities.iter().any(|c| c.starts_with("toolchain:")),
            others: Json(others),
            now,
            expires: now + lease,
        };
        // experiments this claim has read to their last job and left jobs in (for other workers)
        let mut passed_over: Vec<Uuid> = Vec::new();
        let conn = self.conn.get().await?;
        let mut window = limit.max(64);
        for _ in 0..MAX_CLAIM_STATEMENTS {
            let want = limit - claimed.len() as i64;
            if want <= 0 {
                break;
            }
            let row = request.run(conn, window, want, &passed_over).await?;
            let Some(mut taken) = Taken::from_row(row) else {
                break;
            };
            let got = taken.jobs.len() as i64;
            claimed.append(&mut taken.jobs);
            if got == want {
                break;
            }
            if taken.read_to_the_end(window) {
                // this statement read the experiment to its end: what it did not take (jobs
                // held for other workers) is not for this claim
                passed_over.push(taken.experiment_id);
            }
            window = if taken.ids_left() && !passed_over.contains(&taken.experiment_id) {
                // ids left in this experiment: look further at once
                window.saturating_mul(2).min(1 << 20)
            } else {
                // the experiment's queue is empty; the next one starts afresh
                (limit - claimed.len() as i64).max(64)
            };
        }
        claimed.sort_by_key(|c| c.job_id);
        Ok(claimed)
    }
}

/// What every statement of one claim binds alike: who claims, what it can build, who else could.
struct ClaimRequest<'a> {
    worker: Uuid,
    capabilities: Json<&'a [String]>,
    /// whether `capabilities` name toolchains (else the experiment's implied ones are not asked)
    lists_toolchains: bool,
    /// the capabilities of the other connected workers, one entry per distinct set
    others: Json<&'a [Vec<String>]>,
    now: DateTime<Utc>,
    /// when the claim's leases expire
    expires: DateTime<Utc>,
}

impl ClaimRequest<'_> {
    /// One [`CLAIM`] statement: up to `want` jobs from a window of `window` ids, leaving the
    /// experiments in `passed_over` alone.
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        window: i64,
        want: i64,
        passed_over: &[Uuid],
    ) -> Result<ClaimRow, DbError> {
        Ok(sqlx::query_as(CLAIM)
            .bind(self.capabilities)
            .bind(self.lists_toolchains)
            .bind(window)
            .bind(want)
            .bind(self.worker)
            .bind(self.expires)
            .bind(self.now)
            .bind(self.others)
            .bind(passed_over)
            .fetch_one(&mut *conn)
            .await?)
    }
}

/// One claim statement's answer, for the experiment it took from.
struct Taken {
    experiment_id: Uuid,
    /// the experiment's cursor before the statement
    start: i64,
    /// its cursor afterwards
    next: i64,
    /// its last job id
    last_job: i64,
    /// the jobs claimed, in id order
    jobs: Vec<Claimed>,
}

impl Taken {
    /// The answer in `row`; none when no experiment has queued work this worker may take.
    fn from_row(row: ClaimRow) -> Option<Taken> {
        let (experiment_id, experiment, start, next, last_job, ids, tokens, attempts, crates, runs) =
            row;
        let (Some(experiment_id), Some(experiment)) = (experiment_id, experiment) else {
            return None;
        };
        let jobs = ids
            .unwrap_or_default()
            .into_iter()
            .zip(tokens.unwrap_or_default())
            .zip(attempts.unwrap_or_default())
            .zip(crates.unwrap_or_default())
            .zip(runs.unwrap_or_default())
            .map(
                |((((job_id, lease_token), attempt), crate_id), run)| Claimed {
                    job_id,
                    lease_token,
                    attempt,
                    experiment_id,
                    experiment: experiment.clone(),
                    crate_id,
                    run,
                },
            )
            .collect();
        Some(Taken {
            experiment_id,
            start: start.unwrap_or(0),
            next: next.unwrap_or(i64::MAX),
            last_job: last_job.unwrap_or(0),
            jobs,
        })
    }

    /// Whether the statement's window, `window` ids from its cursor, reached past the
    /// experiment's last job.
    fn read_to_the_end(&self, window: i64) -> bool {
        self.start.saturating_add(window) > self.last_job
    }

    /// Whether the experiment has ids left at or after its cursor.
    fn ids_left(&self) -> bool {
        self.next <= self.last_job
    }
}

/// [`Claimer::claim`] on a connection opened for this one claim (tests, one-off tools).
pub async fn claim(
    pool: &PgPool,
    worker: Uuid,
    capabilities: &[String],
    limit: i64,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<Vec<Claimed>, DbError> {
    Claimer::new(pool)
        .claim(worker, capabilities, limit, now, lease)
        .await
}
