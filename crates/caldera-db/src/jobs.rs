//! The job queue: creation on experiment start, batched claims from per-experiment cursors,
//! lease renewal, fenced completion, the reaper, hand-backs and cancellation.
//!
//! This is the SQL form of `caldera_core::job::transition`. Time is always a parameter (`now`),
//! never the database's clock, so the scheduler's clock can be injected in tests. Every statement
//! is a short transaction; nothing is held open while a job runs.
//!
//! The tables (migration `0004_queue_cursors`, ARCHITECTURE "The job queue"): no index of `jobs`
//! covers a column that changes after creation, so a claim or a completion is a HOT update of the
//! job row and touches no index. A claim scans from its experiment's cursor (`job_queues`), leases
//! the jobs it takes as one `leases` row (renewed by heartbeats, found by the reaper when it
//! expires), and per-experiment counts by state (`job_counts`) are kept by triggers on `jobs`.
//!
//! Statements that match jobs to a batch of ids drive the join from the batch (`unnest`) with no
//! condition on `state` that the planner could misjudge: `lease_token` is non-null exactly when a
//! job is running (a table constraint), so it says "running" without a filter on `state`.

use std::collections::BTreeMap;

use caldera_core::crates::CrateId;
use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{DbError, OwnConnection};

/// Insert the crates (deduplicated against the shared `crates` table) and one queued job per crate.
/// Runs on the transaction that moves the experiment to `running`. Returns the number of jobs.
pub async fn create_for_experiment(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
    crates: &[CrateId],
) -> Result<u64, DbError> {
    let mut ids = Vec::with_capacity(crates.len());
    let mut kinds = Vec::with_capacity(crates.len());
    let mut names = Vec::with_capacity(crates.len());
    let mut versions: Vec<Option<String>> = Vec::with_capacity(crates.len());
    let mut checksums: Vec<Option<String>> = Vec::with_capacity(crates.len());
    for c in crates {
        ids.push(c.to_string());
        let (kind, name, version, checksum) = match c {
            CrateId::Registry {
                name,
                version,
                checksum,
            } => (
                "registry",
                name.clone(),
                Some(version.to_string()),
                checksum.clone(),
            ),
            CrateId::Git { url, rev } => ("git", url.clone(), Some(rev.clone()), None),
            CrateId::Local { path } => ("local", path.clone(), None, None),
        };
        kinds.push(kind);
        names.push(name);
        versions.push(version);
        checksums.push(checksum);
    }
    sqlx::query(
        "INSERT INTO crates (crate_id, kind, name, version, checksum)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
         ON CONFLICT (crate_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&names)
    .bind(&versions)
    .bind(&checksums)
    .execute(&mut **tx)
    .await?;
    let done = sqlx::query(
        "INSERT INTO jobs (experiment_id, crate_id, state)
         SELECT $1, c.id, 'queued' FROM crates c JOIN unnest($2::text[]) WITH ORDINALITY AS t(cid, ord) ON c.crate_id = t.cid
         ORDER BY t.ord
         ON CONFLICT (experiment_id, crate_id, run) DO NOTHING",
    )
    .bind(experiment_id)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    // the claim cursor, at the first job; the requirements and the number of confirmation runs
    // are copied out of the spec once (a spec stored before `confirm` existed means the default)
    sqlx::query(
        "INSERT INTO job_queues (experiment_id, next_job, last_job, requirements, confirm)
         SELECT $1, coalesce(min(j.id), 1), coalesce(max(j.id), 0),
                coalesce((SELECT e.spec->'requirements' FROM experiments e WHERE e.id = $1), '[]'::jsonb),
                coalesce((SELECT (e.spec->>'confirm')::smallint FROM experiments e WHERE e.id = $1), $2)
         FROM jobs j WHERE j.experiment_id = $1
         ON CONFLICT (experiment_id) DO UPDATE SET next_job = excluded.next_job, last_job = excluded.last_job,
                                                   requirements = excluded.requirements,
                                                   confirm = excluded.confirm",
    )
    .bind(experiment_id)
    .bind(caldera_core::experiment::DEFAULT_CONFIRM as i16)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Records the requirements an experiment implies (see
/// [`caldera_core::experiment::ExperimentSpec::implied_requirements`]); runs on the start's
/// transaction.
pub async fn set_implied_requirements(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
    requirements: &[String],
) -> Result<(), DbError> {
    sqlx::query("UPDATE experiments SET implied_requirements = $2 WHERE id = $1")
        .bind(experiment_id)
        .bind(Json(requirements))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Jobs that are not to run: crates the experiment's overrides mark `skip` or `broken` get their
/// outcome for both sides at once (no worker, no log) and their job is `done`. Runs on the start's
/// transaction, after [`create_for_experiment`]. Returns how many jobs were settled.
pub async fn settle_without_running(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
    settled: &[(CrateId, Outcome)],
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    if settled.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = settled.iter().map(|(c, _)| c.to_string()).collect();
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "UPDATE jobs j SET state = 'done', updated_at = $3
         FROM crates c
         WHERE j.experiment_id = $1 AND c.id = j.crate_id AND c.crate_id = ANY($2) AND j.state = 'queued'
           AND j.run = 0
         RETURNING j.id, c.crate_id, j.crate_id",
    )
    .bind(experiment_id)
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let outcomes: BTreeMap<String, &Outcome> =
        settled.iter().map(|(c, o)| (c.to_string(), o)).collect();
    let mut cols = ResultColumns::default();
    for (job, crate_id, krate) in &rows {
        let Some(outcome) = outcomes.get(crate_id) else {
            continue;
        };
        let rec = SideRecord {
            outcome: (*outcome).clone(),
            log_key: None,
            duration_ms: 0,
            peak_memory_bytes: 0,
            steps: Vec::new(),
        };
        for side in Side::BOTH {
            cols.push((experiment_id, *krate, 0), side, Some(*job), &rec, None);
        }
    }
    cols.insert(tx, now).await?;
    Ok(rows.len() as u64)
}

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

/// One claim statement's answer: the experiment it took from (none: no experiment has queued
/// work this worker may take), its cursor afterwards, its last job id, and the claimed jobs.
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
        let lists_toolchains = capabilities.iter().any(|c| c.starts_with("toolchain:"));
        let capabilities = Json(capabilities);
        let others = Json(others);
        // experiments this claim has read to their last job and left jobs in (for other workers)
        let mut passed_over: Vec<Uuid> = Vec::new();
        let conn = self.conn.get().await?;
        let mut window = limit.max(64);
        for _ in 0..MAX_CLAIM_STATEMENTS {
            let want = limit - claimed.len() as i64;
            if want <= 0 {
                break;
            }
            let (experiment_id, experiment, start, next, last_job, ids, tokens, attempts, crates, runs): ClaimRow =
                sqlx::query_as(
                    "WITH q AS (
                         SELECT q.experiment_id, e.name, q.next_job, q.last_job,
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
                         SET next_job = least(
                                 CASE WHEN (SELECT count(*) FROM picked) = $4
                                      THEN (SELECT max(id) + 1 FROM picked) ELSE q.next_job + $3 END,
                                 (SELECT id FROM held))
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
                                FROM claimed c) c ON true",
                )
                .bind(capabilities)
                .bind(lists_toolchains)
                .bind(window)
                .bind(want)
                .bind(worker)
                .bind(now + lease)
                .bind(now)
                .bind(others)
                .bind(&passed_over)
                .fetch_one(&mut *conn)
                .await?;
            let (Some(experiment_id), Some(experiment)) = (experiment_id, experiment) else {
                break;
            };
            let ids = ids.unwrap_or_default();
            let got = ids.len() as i64;
            for ((((job_id, lease_token), attempt), crate_id), run) in ids
                .into_iter()
                .zip(tokens.unwrap_or_default())
                .zip(attempts.unwrap_or_default())
                .zip(crates.unwrap_or_default())
                .zip(runs.unwrap_or_default())
            {
                claimed.push(Claimed {
                    job_id,
                    lease_token,
                    attempt,
                    experiment_id,
                    experiment: experiment.clone(),
                    crate_id,
                    run,
                });
            }
            if got == want {
                break;
            }
            let last_job = last_job.unwrap_or(0);
            if start.unwrap_or(0).saturating_add(window) > last_job {
                // this statement read the experiment to its end: what it did not take (jobs
                // held for other workers) is not for this claim
                passed_over.push(experiment_id);
            }
            window =
                if next.unwrap_or(i64::MAX) <= last_job && !passed_over.contains(&experiment_id) {
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

/// Extend the leases of the jobs `running` (job id, lease token) that `worker` holds to
/// `now + lease`. Returns the tokens that are still current; the others were reaped, cancelled or
/// completed and the worker should stop them.
pub async fn renew(
    pool: &PgPool,
    worker: Uuid,
    running: &[(i64, Uuid)],
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<Vec<Uuid>, DbError> {
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = running.iter().map(|(id, _)| *id).collect();
    let tokens: Vec<Uuid> = running.iter().map(|(_, t)| *t).collect();
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "WITH current AS (
             SELECT j.lease_id, j.lease_token
             FROM unnest($2::bigint[], $3::uuid[]) AS t(id, token)
             JOIN jobs j ON j.id = t.id AND j.lease_token = t.token
         ), renewed AS (
             UPDATE leases SET expires_at = $4, worker = $1
             WHERE id = ANY(ARRAY(SELECT lease_id FROM current)) AND expires_at < $4
         )
         SELECT lease_token FROM current",
    )
    .bind(worker)
    .bind(&ids)
    .bind(&tokens)
    .bind(now + lease)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

/// One side's result as the worker reported it.
#[derive(Debug, Clone)]
pub struct SideRecord {
    pub outcome: Outcome,
    pub log_key: Option<String>,
    pub duration_ms: i64,
    pub peak_memory_bytes: i64,
    /// (step name, duration in ms), in order
    pub steps: Vec<(String, i64)>,
}

/// A result for a job, fenced by its lease token.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job_id: i64,
    pub lease_token: Uuid,
    pub worker: Uuid,
    pub start: SideRecord,
    pub end: SideRecord,
}

/// What became of a batch of completions.
#[derive(Debug, Default)]
pub struct CompletionOutcome {
    /// job ids whose results were recorded
    pub accepted: Vec<i64>,
    /// job ids whose lease token was not current (late, duplicate, cancelled): nothing written
    pub rejected: Vec<i64>,
    /// job ids whose result was an infrastructure `error` on a side, with attempts left: queued
    /// again (no result written; the reason kept in `jobs.last_error`)
    pub requeued: Vec<i64>,
    /// experiments that had a job finish in this batch
    pub experiments: Vec<Uuid>,
    /// confirmation runs queued for the regressed or fixed first runs of this batch
    pub confirmations: u64,
    /// (job id, experiment, run) of every job whose result was recorded
    pub done: Vec<(i64, Uuid, i16)>,
}

/// Record a batch of results in one transaction. A result is accepted only if its lease token is
/// the job's current lease (fencing); it then finishes the job and writes one row per side. A
/// rejected result writes nothing. A result with an `error` side (the infrastructure failed: the
/// engine, the image, the host's disk, storage) is not the crate's fault: while the job has had
/// fewer than `max_attempts` leases it goes back to the queue instead, and only the last attempt's
/// errors are recorded.
pub async fn complete(
    pool: &PgPool,
    batch: &[Completion],
    now: DateTime<Utc>,
    max_attempts: i32,
) -> Result<CompletionOutcome, DbError> {
    complete_on(&mut *pool.acquire().await?, batch, now, max_attempts).await
}

/// [`complete`] on a given connection (the result writer's own).
pub async fn complete_on(
    conn: &mut sqlx::PgConnection,
    batch: &[Completion],
    now: DateTime<Utc>,
    max_attempts: i32,
) -> Result<CompletionOutcome, DbError> {
    let mut out = CompletionOutcome::default();
    if batch.is_empty() {
        return Ok(out);
    }
    // A job reported twice in one batch counts once (the first); the others are rejected.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&Completion> = batch.iter().filter(|c| seen.insert(c.job_id)).collect();
    let job_ids: Vec<i64> = firsts.iter().map(|c| c.job_id).collect();
    let tokens: Vec<Uuid> = firsts.iter().map(|c| c.lease_token).collect();
    let errors: Vec<Option<String>> = firsts
        .iter()
        .map(|c| {
            [&c.start, &c.end]
                .into_iter()
                .find_map(|r| match &r.outcome {
                    Outcome::Error { reason } => Some(reason.clone()),
                    _ => None,
                })
        })
        .collect();
    // Whether each result is one a confirmation run would re-run (a regression or a fix): for a
    // run 0 of an experiment with `confirm > 0`, the statement queues the confirmation runs.
    let confirms: Vec<bool> = firsts
        .iter()
        .map(|c| {
            caldera_core::confirm::needs_confirmation(caldera_core::outcome::compare(
                &c.start.outcome,
                &c.end.outcome,
            ))
        })
        .collect();
    let workers: Vec<Uuid> = firsts.iter().map(|c| c.worker).collect();
    // Both sides of every first report, keyed by job; written only for jobs that end `done`.
    let mut sides = SideColumns::default();
    for c in &firsts {
        for (side, rec) in [(Side::Start, &c.start), (Side::End, &c.end)] {
            sides.push(c.job_id, side, rec, c.worker);
        }
    }
    let statement = CompletionStatement {
        job_ids: &job_ids,
        tokens: &tokens,
        errors: &errors,
        confirms: &confirms,
        workers: &workers,
        sides: &sides,
        now,
        max_attempts,
    };
    // A job ends `done` once, in the statement that fences its lease, and jobs are unique per
    // (experiment, crate): so its results rows cannot exist yet, and the insert goes without
    // `ON CONFLICT` (speculative insertion cost ≈ 40 % of the insert). Should that ever be
    // violated (a hand-edited database), the batch is written again keeping the rows already
    // there, rather than failing — and being retried — for ever.
    let done = match statement.run(conn, "").await {
        Err(DbError::Sqlx(e)) if crate::is_unique_violation(&e) => {
            tracing::warn!(error = %e, "a result row already exists; writing the batch without replacing it");
            statement
                .run(
                    conn,
                    "ON CONFLICT (experiment_id, crate_id, run, toolchain) DO NOTHING",
                )
                .await?
        }
        other => other?,
    };
    let mut accepted: BTreeMap<i64, Uuid> = BTreeMap::new();
    for (id, experiment, state, run, confirmations) in done {
        out.confirmations = confirmations as u64;
        if state == "queued" {
            out.requeued.push(id);
        } else {
            accepted.insert(id, experiment);
            out.done.push((id, experiment, run));
        }
    }
    let mut counted = std::collections::HashSet::new();
    for c in batch {
        if out.requeued.contains(&c.job_id) {
            continue;
        }
        match accepted.get(&c.job_id) {
            Some(&experiment) if counted.insert(c.job_id) => {
                out.accepted.push(c.job_id);
                if !out.experiments.contains(&experiment) {
                    out.experiments.push(experiment);
                }
            }
            _ => out.rejected.push(c.job_id),
        }
    }
    Ok(out)
}

/// The statement of [`complete`]: one round trip and one (implicit) transaction: the fenced
/// update of the jobs, then the results of those that are done and, when a run 0 that is done
/// compared as regressed or fixed, its experiment's `confirm` queued confirmation jobs (runs
/// 1..=confirm, to be avoided by the worker that ran it). The triggers on `jobs` count them and
/// keep them inside the experiment's claim range, so the experiment cannot complete first.
struct CompletionStatement<'a> {
    job_ids: &'a [i64],
    tokens: &'a [Uuid],
    errors: &'a [Option<String>],
    confirms: &'a [bool],
    workers: &'a [Uuid],
    sides: &'a SideColumns,
    now: DateTime<Utc>,
    max_attempts: i32,
}

impl CompletionStatement<'_> {
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        on_conflict: &str,
    ) -> Result<Vec<(i64, Uuid, String, i16, i64)>, DbError> {
        // The confirmation insert is part of the statement only when a result of the batch
        // could need it, so the usual batch runs the statement it always ran.
        let confirming = if self.confirms.contains(&true) {
            ", confirming AS (
                 INSERT INTO jobs (experiment_id, crate_id, state, run, avoid_worker, created_at, updated_at)
                 SELECT f.experiment_id, f.crate_id, 'queued', g.run, f.worker, $3, $3
                 FROM finished f
                 JOIN job_queues q ON q.experiment_id = f.experiment_id
                 CROSS JOIN LATERAL generate_series(1, q.confirm) AS g(run)
                 WHERE f.state = 'done' AND f.run = 0 AND f.confirm
                 ORDER BY f.id, g.run
                 ON CONFLICT (experiment_id, crate_id, run) DO NOTHING
                 RETURNING 1
             )"
        } else {
            ""
        };
        let confirmations = if confirming.is_empty() {
            "0::bigint"
        } else {
            "(SELECT count(*) FROM confirming)"
        };
        let sql = format!(
            "WITH finished AS (
                 UPDATE jobs j SET
                        state = CASE WHEN t.error IS NOT NULL AND j.attempt < $4 THEN 'queued' ELSE 'done' END,
                        last_error = CASE WHEN t.error IS NOT NULL THEN t.error ELSE j.last_error END,
                        lease_token = NULL, lease_owner = NULL, lease_id = NULL, updated_at = $3
                 FROM unnest($1::bigint[], $2::uuid[], $5::text[], $15::boolean[], $16::uuid[])
                      AS t(job_id, token, error, confirm, worker)
                 WHERE j.id = t.job_id AND j.lease_token = t.token
                 RETURNING j.id, j.experiment_id, j.crate_id, j.state, j.run, t.confirm, t.worker
             ), recorded AS (
                 INSERT INTO results (experiment_id, crate_id, run, toolchain, job_id, outcome, outcome_kind, log_key,
                                      duration_ms, peak_memory_bytes, steps, worker_id, created_at)
                 SELECT f.experiment_id, f.crate_id, f.run, r.s, f.id, r.o, r.k, r.l, r.d, r.m, r.st, r.w, $3
                 FROM finished f
                 JOIN unnest($6::bigint[], $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::bigint[],
                             $12::bigint[], $13::jsonb[], $14::uuid[]) AS r(j, s, o, k, l, d, m, st, w)
                   ON r.j = f.id
                 WHERE f.state = 'done'
                 {on_conflict}
             ){confirming}
             SELECT id, experiment_id, state, run, {confirmations} FROM finished"
        );
        let sides = self.sides;
        Ok(sqlx::query_as(&sql)
            .bind(self.job_ids)
            .bind(self.tokens)
            .bind(self.now)
            .bind(self.max_attempts)
            .bind(self.errors)
            .bind(&sides.job)
            .bind(&sides.side)
            .bind(&sides.outcome)
            .bind(&sides.kind)
            .bind(&sides.log_key)
            .bind(&sides.duration)
            .bind(&sides.memory)
            .bind(&sides.steps)
            .bind(&sides.worker)
            .bind(self.confirms)
            .bind(self.workers)
            .fetch_all(conn)
            .await?)
    }
}

/// The per-side columns of reported results, keyed by job (see [`complete`]).
#[derive(Default)]
struct SideColumns {
    job: Vec<i64>,
    side: Vec<&'static str>,
    outcome: Vec<serde_json::Value>,
    kind: Vec<&'static str>,
    log_key: Vec<Option<String>>,
    duration: Vec<i64>,
    memory: Vec<i64>,
    steps: Vec<serde_json::Value>,
    worker: Vec<Uuid>,
}

impl SideColumns {
    fn push(&mut self, job: i64, side: Side, rec: &SideRecord, worker: Uuid) {
        self.job.push(job);
        self.side.push(side.as_str());
        self.outcome.push(outcome_json(&rec.outcome));
        self.kind.push(outcome_kind(&rec.outcome));
        self.log_key.push(rec.log_key.clone());
        self.duration.push(rec.duration_ms);
        self.memory.push(rec.peak_memory_bytes);
        self.steps.push(steps_json(&rec.steps));
        self.worker.push(worker);
    }
}

fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}

fn steps_json(steps: &[(String, i64)]) -> serde_json::Value {
    serde_json::Value::Array(
        steps
            .iter()
            .map(|(name, ms)| serde_json::json!({"name": name, "duration_ms": ms}))
            .collect(),
    )
}

#[derive(Default)]
struct ResultColumns {
    experiment: Vec<Uuid>,
    krate: Vec<i64>,
    run: Vec<i16>,
    side: Vec<&'static str>,
    job: Vec<Option<i64>>,
    outcome: Vec<serde_json::Value>,
    kind: Vec<String>,
    log_key: Vec<Option<String>>,
    duration: Vec<i64>,
    memory: Vec<i64>,
    steps: Vec<serde_json::Value>,
    worker: Vec<Option<Uuid>>,
}

impl ResultColumns {
    /// `(experiment, krate, run)`: the result's key but for the side.
    fn push(
        &mut self,
        (experiment, krate, run): (Uuid, i64, i16),
        side: Side,
        job: Option<i64>,
        rec: &SideRecord,
        worker: Option<Uuid>,
    ) {
        self.experiment.push(experiment);
        self.krate.push(krate);
        self.run.push(run);
        self.side.push(side.as_str());
        self.job.push(job);
        self.outcome.push(outcome_json(&rec.outcome));
        self.kind.push(outcome_kind(&rec.outcome).to_owned());
        self.log_key.push(rec.log_key.clone());
        self.duration.push(rec.duration_ms);
        self.memory.push(rec.peak_memory_bytes);
        self.steps.push(steps_json(&rec.steps));
        self.worker.push(worker);
    }

    async fn insert(
        self,
        tx: &mut Transaction<'_, Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        if self.experiment.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO results (experiment_id, crate_id, toolchain, job_id, outcome, outcome_kind, log_key,
                                  duration_ms, peak_memory_bytes, steps, worker_id, created_at, run)
             SELECT e, c, s, j, o, k, l, d, m, st, w, $12, r
             FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::jsonb[], $6::text[], $7::text[],
                         $8::bigint[], $9::bigint[], $10::jsonb[], $11::uuid[], $13::smallint[])
                  AS t(e, c, s, j, o, k, l, d, m, st, w, r)
             ON CONFLICT (experiment_id, crate_id, run, toolchain) DO NOTHING",
        )
        .bind(&self.experiment)
        .bind(&self.krate)
        .bind(&self.side)
        .bind(&self.job)
        .bind(&self.outcome)
        .bind(&self.kind)
        .bind(&self.log_key)
        .bind(&self.duration)
        .bind(&self.memory)
        .bind(&self.steps)
        .bind(&self.worker)
        .bind(now)
        .bind(&self.run)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// The `kind` tag of an outcome, as stored in `results.outcome_kind`.
pub fn outcome_kind(o: &Outcome) -> &'static str {
    match o {
        Outcome::TestPass => "test-pass",
        Outcome::TestFail { .. } => "test-fail",
        Outcome::TestSkipped => "test-skipped",
        Outcome::BuildFail(_) => "build-fail",
        Outcome::PrepareFail { .. } => "prepare-fail",
        Outcome::Broken { .. } => "broken",
        Outcome::Skipped => "skipped",
        Outcome::Error { .. } => "error",
    }
}

/// The worker gives a job back without a result: it returns to the queue without using up an attempt.
pub async fn hand_back(
    pool: &PgPool,
    job_id: i64,
    token: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_token = NULL, lease_owner = NULL, lease_id = NULL,
                attempt = greatest(attempt - 1, 0), updated_at = $3
         WHERE id = $1 AND lease_token = $2",
    )
    .bind(job_id)
    .bind(token)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What the reaper did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// jobs whose lease expired and that went back to the queue
    pub requeued: Vec<i64>,
    /// jobs that used up their attempts and ended as `error` (with an error result per side)
    pub errored: Vec<i64>,
    pub experiments: Vec<Uuid>,
}

/// Re-queue jobs whose lease expired by `now` (a lease is over at its expiry, as
/// `caldera_core::job::transition` says); a job that has had `max_attempts` leases ends
/// as `error` with an `error` result for both sides, so it is never lost from the report.
pub async fn reap(pool: &PgPool, now: DateTime<Utc>, max_attempts: i32) -> Result<Reaped, DbError> {
    let mut tx = pool.begin().await?;
    // An expired lease is removed with whatever it still holds: its jobs that still run under it
    // go back to the queue (or end as `error`); the others finished or were handed back already.
    let rows: Vec<(i64, String, Uuid, i64, i32, i16)> = sqlx::query_as(
        "WITH expired AS (
             DELETE FROM leases WHERE id = ANY(ARRAY(
                 SELECT id FROM leases WHERE expires_at <= $1 ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED))
             RETURNING id, jobs
         ), held AS (
             SELECT e.id AS lease_id, t.job_id FROM expired e, unnest(e.jobs) AS t(job_id)
         )
         UPDATE jobs j SET state = CASE WHEN j.attempt >= $2 THEN 'error' ELSE 'queued' END,
                lease_token = NULL, lease_owner = NULL, lease_id = NULL,
                last_error = 'lease expired', updated_at = $1
         FROM held WHERE j.id = held.job_id AND j.lease_id = held.lease_id AND j.lease_token IS NOT NULL
         RETURNING j.id, j.state, j.experiment_id, j.crate_id, j.attempt, j.run",
    )
    .bind(now)
    .bind(max_attempts)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Reaped::default();
    let mut cols = ResultColumns::default();
    for (id, state, experiment, krate, attempt, run) in rows {
        if state == "error" {
            out.errored.push(id);
            let rec = SideRecord {
                outcome: Outcome::Error {
                    reason: format!("no result after {attempt} attempts (leases expired)"),
                },
                log_key: None,
                duration_ms: 0,
                peak_memory_bytes: 0,
                steps: Vec::new(),
            };
            for side in Side::BOTH {
                cols.push((experiment, krate, run), side, Some(id), &rec, None);
            }
        } else {
            out.requeued.push(id);
        }
        if !out.experiments.contains(&experiment) {
            out.experiments.push(experiment);
        }
    }
    cols.insert(&mut tx, now).await?;
    tx.commit().await?;
    Ok(out)
}

/// A lease that was running when its job was cancelled.
#[derive(Debug, Clone)]
pub struct CancelledLease {
    pub job_id: i64,
    pub lease_token: Uuid,
    pub owner: Option<Uuid>,
}

/// Cancel every unfinished job of an experiment (on abort). Runs on the abort's transaction.
pub async fn cancel_experiment(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
) -> Result<Vec<CancelledLease>, DbError> {
    let rows: Vec<(i64, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "WITH c AS (SELECT id, lease_token, lease_owner FROM jobs
                    WHERE experiment_id = $1 AND state IN ('queued', 'running') FOR UPDATE)
         UPDATE jobs j SET state = 'cancelled', lease_token = NULL, lease_owner = NULL, lease_id = NULL
         FROM c WHERE j.id = c.id
         RETURNING j.id, c.lease_token, c.lease_owner",
    )
    .bind(experiment_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(job_id, token, owner)| {
            token.map(|lease_token| CancelledLease {
                job_id,
                lease_token,
                owner,
            })
        })
        .collect())
}

/// The running and paused experiments (those that can still complete).
pub async fn active_experiments(pool: &PgPool) -> Result<Vec<Uuid>, DbError> {
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT id FROM experiments WHERE status IN ('running', 'paused')")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Of `experiments`, those that are running or paused and have no unfinished job left.
pub async fn finished_experiments<'c>(
    db: impl sqlx::PgExecutor<'c>,
    experiments: &[Uuid],
) -> Result<Vec<String>, DbError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT e.name FROM experiments e
         WHERE e.id = ANY($1) AND e.status IN ('running', 'paused')
           AND (SELECT coalesce(sum(c.queued + c.running), 0) FROM job_counts c WHERE c.experiment_id = e.id) = 0",
    )
    .bind(experiments)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// Job counts per state of one experiment (all zero when it has no jobs).
pub async fn progress_of(pool: &PgPool, experiment_id: Uuid) -> Result<Progress, DbError> {
    let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sum(queued)::bigint, sum(running)::bigint, sum(done)::bigint, sum(error)::bigint, sum(cancelled)::bigint
         FROM job_counts WHERE experiment_id = $1 GROUP BY experiment_id",
    )
    .bind(experiment_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Progress::from).unwrap_or_default())
}

/// Every running job goes back to the queue, as if its worker had handed it back (no attempt is
/// used up). Only for a master that knows no worker is running anything — `caldera local` when it
/// starts, whose single in-process worker died with the previous run. Returns how many went back.
pub async fn hand_back_all(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, DbError> {
    let done = sqlx::query(
        "WITH gone AS (DELETE FROM leases)
         UPDATE jobs SET state = 'queued', lease_token = NULL, lease_owner = NULL, lease_id = NULL,
                attempt = greatest(attempt - 1, 0), updated_at = $1
         WHERE state = 'running'",
    )
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Job counts per state for one experiment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub error: i64,
    pub cancelled: i64,
}

impl From<(i64, i64, i64, i64, i64)> for Progress {
    /// From `job_counts` sums: (queued, running, done, error, cancelled).
    fn from((queued, running, done, error, cancelled): (i64, i64, i64, i64, i64)) -> Self {
        Progress {
            queued,
            running,
            done,
            error,
            cancelled,
        }
    }
}

impl Progress {
    pub fn total(&self) -> i64 {
        self.queued + self.running + self.done + self.error + self.cancelled
    }
}

/// Job counts per state, per experiment name, for experiments that have jobs.
pub async fn progress(pool: &PgPool) -> Result<BTreeMap<String, Progress>, DbError> {
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT e.name, sum(c.queued)::bigint, sum(c.running)::bigint, sum(c.done)::bigint,
                sum(c.error)::bigint, sum(c.cancelled)::bigint
         FROM job_counts c JOIN experiments e ON e.id = c.experiment_id
         GROUP BY e.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, q, r, d, e, x)| (name, Progress::from((q, r, d, e, x))))
        .collect())
}

/// Experiments whose kept job counts (`job_counts`, maintained by triggers) differ from a count of
/// their jobs, as (experiment, kept, counted). Empty unless something bypassed or broke the
/// triggers; the tests check it after every scenario. Reads every job: not for hot paths.
pub async fn count_drift(pool: &PgPool) -> Result<Vec<(Uuid, Progress, Progress)>, DbError> {
    type Row = (Uuid, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH kept AS (
             SELECT experiment_id, sum(queued)::bigint AS q, sum(running)::bigint AS r, sum(done)::bigint AS d,
                    sum(error)::bigint AS e, sum(cancelled)::bigint AS x
             FROM job_counts GROUP BY experiment_id
         ), counted AS (
             SELECT experiment_id, count(*) FILTER (WHERE state = 'queued') AS q,
                    count(*) FILTER (WHERE state = 'running') AS r, count(*) FILTER (WHERE state = 'done') AS d,
                    count(*) FILTER (WHERE state = 'error') AS e, count(*) FILTER (WHERE state = 'cancelled') AS x
             FROM jobs GROUP BY experiment_id
         )
         SELECT coalesce(k.experiment_id, c.experiment_id),
                coalesce(k.q, 0), coalesce(k.r, 0), coalesce(k.d, 0), coalesce(k.e, 0), coalesce(k.x, 0),
                coalesce(c.q, 0), coalesce(c.r, 0), coalesce(c.d, 0), coalesce(c.e, 0), coalesce(c.x, 0)
         FROM kept k FULL JOIN counted c ON c.experiment_id = k.experiment_id
         WHERE (coalesce(k.q, 0), coalesce(k.r, 0), coalesce(k.d, 0), coalesce(k.e, 0), coalesce(k.x, 0))
               IS DISTINCT FROM (coalesce(c.q, 0), coalesce(c.r, 0), coalesce(c.d, 0), coalesce(c.e, 0), coalesce(c.x, 0))",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, kq, kr, kd, ke, kx, cq, cr, cd, ce, cx)| {
            (
                id,
                Progress::from((kq, kr, kd, ke, kx)),
                Progress::from((cq, cr, cd, ce, cx)),
            )
        })
        .collect())
}
