//! Completion: the results workers report, fenced by their lease tokens and written in batches,
//! one statement per batch (see [`complete`]).

use std::collections::{BTreeMap, HashSet};

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::result_rows::{SideRecord, outcome_json, steps_json};
use crate::DbError;

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
    if batch.is_empty() {
        return Ok(CompletionOutcome::default());
    }
    // A job reported twice in one batch counts once (the first); the others are rejected.
    let mut seen = HashSet::new();
    let firsts: Vec<&Completion> = batch.iter().filter(|c| seen.insert(c.job_id)).collect();
    let statement = CompletionStatement::new(&firsts, now, max_attempts);
    let finished = statement.write(conn).await?;
    Ok(tally(batch, finished))
}

/// The reason of a result's infrastructure `error`, on either side (the start's first).
fn infrastructure_error(c: &Completion) -> Option<String> {
    [&c.start, &c.end]
        .into_iter()
        .find_map(|r| match &r.outcome {
            Outcome::Error { reason } => Some(reason.clone()),
            _ => None,
        })
}

/// Whether a result is one a confirmation run would re-run (a regression or a fix): for a run 0
/// of an experiment with `confirm > 0`, the statement queues the confirmation runs.
fn needs_confirmation(c: &Completion) -> bool {
    caldera_core::confirm::needs_confirmation(caldera_core::outcome::compare(
        &c.start.outcome,
        &c.end.outcome,
    ))
}

/// What became of every completion of `batch`, from the jobs the statement finished
/// (`finished`; a job it did not finish had a stale lease, and a job reported twice counts once).
fn tally(batch: &[Completion], finished: Vec<FinishedJob>) -> CompletionOutcome {
    let mut out = CompletionOutcome::default();
    let mut accepted: BTreeMap<i64, Uuid> = BTreeMap::new();
    for (id, experiment, state, run, confirmations) in finished {
        out.confirmations = confirmations as u64;
        if state == "queued" {
            out.requeued.push(id);
        } else {
            accepted.insert(id, experiment);
            out.done.push((id, experiment, run));
        }
    }
    let mut counted = HashSet::new();
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
    out
}

/// A job the completion statement finished: its id, experiment, the state it is in now (`done`,
/// or `queued` again after an infrastructure error), its run, and how many confirmation runs the
/// statement queued in all.
type FinishedJob = (i64, Uuid, String, i16, i64);

/// The statement of [`complete`]: one round trip and one (implicit) transaction: the fenced
/// update of the jobs, then the results of those that are done and, when a run 0 that is done
/// compared as regressed or fixed, its experiment's `confirm` queued confirmation jobs (runs
/// 1..=confirm, to be avoided by the worker that ran it). The triggers on `jobs` count them and
/// keep them inside the experiment's claim range, so the experiment cannot complete first.
///
/// Its columns are those of the first report of each job of the batch.
struct CompletionStatement {
    job_ids: Vec<i64>,
    tokens: Vec<Uuid>,
    /// the infrastructure error of each result, if it has one
    errors: Vec<Option<String>>,
    /// whether each result needs confirmation runs
    confirms: Vec<bool>,
    workers: Vec<Uuid>,
    sides: SideColumns,
    now: DateTime<Utc>,
    max_attempts: i32,
}

/// The confirmation jobs a completion queues: for every run 0 it finished `done` that needs
/// confirmation, the experiment's `confirm` runs, to be avoided by the worker that ran it.
///
/// A run 0 that ran one side only (the other settled from the result cache at the start) does not
/// build that other side again where its source experiment already re-ran it: confirmation run
/// `n` then runs the same side only (`only_side`), and the other side's row of run `n` is a copy of
/// the source's run `n` of the side it was settled from (`cached_from`, `cached_from_side`; its
/// log key is the source's). The same key means the same build, and the source's re-run of it is
/// the evidence a re-run here would give. An `error` there is no evidence: that run builds both
/// sides, as does every run the source does not have.
const CONFIRMING: &str = ", confirming AS (
         INSERT INTO jobs (experiment_id, crate_id, state, run, avoid_worker, only_side, created_at, updated_at)
         SELECT f.experiment_id, f.crate_id, 'queued', g.run, f.worker, src.only_side, $3, $3
         FROM finished f
         JOIN job_queues q ON q.experiment_id = f.experiment_id
         CROSS JOIN LATERAL generate_series(1, q.confirm) AS g(run)
         LEFT JOIN LATERAL (
             SELECT f.only_side FROM results c
             JOIN results s ON s.experiment_id = c.cached_from AND s.crate_id = c.crate_id
                           AND s.run = g.run AND s.toolchain = c.cached_from_side
                           AND s.outcome_kind <> 'error'
             WHERE c.experiment_id = f.experiment_id AND c.crate_id = f.crate_id AND c.run = 0
               AND c.toolchain <> f.only_side
         ) src ON true
         WHERE f.state = 'done' AND f.run = 0 AND f.confirm
         ORDER BY f.id, g.run
         ON CONFLICT (experiment_id, crate_id, run) DO NOTHING
         RETURNING id, experiment_id, crate_id, run, only_side
     ), confirmed_from_source AS (
         INSERT INTO results (experiment_id, crate_id, run, toolchain, job_id, outcome, outcome_kind,
                              log_key, duration_ms, peak_memory_bytes, steps, worker_id, created_at,
                              cached_from, cached_from_name, cached_from_side)
         SELECT n.experiment_id, n.crate_id, n.run, c.toolchain, n.id, s.outcome, s.outcome_kind,
                s.log_key, s.duration_ms, s.peak_memory_bytes, s.steps, s.worker_id, $3,
                c.cached_from, c.cached_from_name, c.cached_from_side
         FROM confirming n
         JOIN results c ON c.experiment_id = n.experiment_id AND c.crate_id = n.crate_id
                       AND c.run = 0 AND c.toolchain <> n.only_side
         JOIN results s ON s.experiment_id = c.cached_from AND s.crate_id = c.crate_id
                       AND s.run = n.run AND s.toolchain = c.cached_from_side
         WHERE n.only_side IS NOT NULL
     )";

impl CompletionStatement {
    /// The statement for `firsts`, the first report of each job of a batch.
    fn new(firsts: &[&Completion], now: DateTime<Utc>, max_attempts: i32) -> CompletionStatement {
        // Both sides of every first report, keyed by job; written only for jobs that end `done`.
        let mut sides = SideColumns::default();
        for c in firsts {
            for (side, rec) in [(Side::Start, &c.start), (Side::End, &c.end)] {
                sides.push(c.job_id, side, rec, c.worker);
            }
        }
        CompletionStatement {
            job_ids: firsts.iter().map(|c| c.job_id).collect(),
            tokens: firsts.iter().map(|c| c.lease_token).collect(),
            errors: firsts.iter().map(|c| infrastructure_error(c)).collect(),
            confirms: firsts.iter().map(|c| needs_confirmation(c)).collect(),
            workers: firsts.iter().map(|c| c.worker).collect(),
            sides,
            now,
            max_attempts,
        }
    }

    /// Run the statement. A job ends `done` once, in the statement that fences its lease, and
    /// jobs are unique per (experiment, crate): so its results rows cannot exist yet, and the
    /// insert goes without `ON CONFLICT` (speculative insertion cost ≈ 40 % of the insert).
    /// Should that ever be violated (a hand-edited database), the batch is written again keeping
    /// the rows already there, rather than failing — and being retried — for ever.
    async fn write(&self, conn: &mut sqlx::PgConnection) -> Result<Vec<FinishedJob>, DbError> {
        match self.run(conn, "").await {
            Err(DbError::Sqlx(e)) if crate::is_unique_violation(&e) => {
                tracing::warn!(error = %e, "a result row already exists; writing the batch without replacing it");
                self.run(
                    conn,
                    "ON CONFLICT (experiment_id, crate_id, run, toolchain) DO NOTHING",
                )
                .await
            }
            other => other,
        }
    }

    /// The statement's text, its results insert ending with `on_conflict`.
    fn sql(&self, on_conflict: &str) -> String {
        // The confirmation insert is part of the statement only when a result of the batch
        // could need it, so the usual batch runs the statement it always ran.
        let confirming = if self.confirms.contains(&true) {
            CONFIRMING
        } else {
            ""
        };
        let confirmations = if confirming.is_empty() {
            "0::bigint"
        } else {
            "(SELECT count(*) FROM confirming)"
        };
        format!(
            "WITH finished AS (
                 UPDATE jobs j SET
                        state = CASE WHEN t.error IS NOT NULL AND j.attempt < $4 THEN 'queued' ELSE 'done' END,
                        last_error = CASE WHEN t.error IS NOT NULL THEN t.error ELSE j.last_error END,
                        lease_token = NULL, lease_owner = NULL, lease_id = NULL, updated_at = $3
                 FROM unnest($1::bigint[], $2::uuid[], $5::text[], $15::boolean[], $16::uuid[])
                      AS t(job_id, token, error, confirm, worker)
                 WHERE j.id = t.job_id AND j.lease_token = t.token
                 RETURNING j.id, j.experiment_id, j.crate_id, j.state, j.run, t.confirm, t.worker, j.only_side
             ), recorded AS (
                 INSERT INTO results (experiment_id, crate_id, run, toolchain, job_id, outcome, outcome_kind, log_key,
                                      duration_ms, peak_memory_bytes, steps, worker_id, created_at, cache_key)
                 SELECT f.experiment_id, f.crate_id, f.run, r.s, f.id, r.o, r.k, r.l, r.d, r.m, r.st, r.w, $3, r.ck
                 FROM finished f
                 JOIN unnest($6::bigint[], $7::text[], $8::jsonb[], $9::text[], $10::text[], $11::bigint[],
                             $12::bigint[], $13::jsonb[], $14::uuid[], $17::text[]) AS r(j, s, o, k, l, d, m, st, w, ck)
                   ON r.j = f.id
                 -- a job's side settled from the result cache at the start has its row already
                 WHERE f.state = 'done' AND (f.only_side IS NULL OR f.only_side = r.s)
                 {on_conflict}
             ){confirming}
             SELECT id, experiment_id, state, run, {confirmations} FROM finished"
        )
    }

    /// Run the statement once, its results insert ending with `on_conflict`.
    async fn run(
        &self,
        conn: &mut sqlx::PgConnection,
        on_conflict: &str,
    ) -> Result<Vec<FinishedJob>, DbError> {
        let sides = &self.sides;
        Ok(sqlx::query_as(&self.sql(on_conflict))
            .bind(&self.job_ids)
            .bind(&self.tokens)
            .bind(self.now)
            .bind(self.max_attempts)
            .bind(&self.errors)
            .bind(&sides.job)
            .bind(&sides.side)
            .bind(&sides.outcome)
            .bind(&sides.kind)
            .bind(&sides.log_key)
            .bind(&sides.duration)
            .bind(&sides.memory)
            .bind(&sides.steps)
            .bind(&sides.worker)
            .bind(&self.confirms)
            .bind(&self.workers)
            .bind(&sides.cache_key)
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
    cache_key: Vec<Option<String>>,
}

impl SideColumns {
    fn push(&mut self, job: i64, side: Side, rec: &SideRecord, worker: Uuid) {
        self.job.push(job);
        self.side.push(side.as_str());
        self.outcome.push(outcome_json(&rec.outcome));
        self.kind.push(rec.outcome.kind());
        self.log_key.push(rec.log_key.clone());
        self.duration.push(rec.duration_ms);
        self.memory.push(rec.peak_memory_bytes);
        self.steps.push(steps_json(&rec.steps));
        self.worker.push(worker);
        // only outcomes that may settle a later side are found by the cache's lookup
        self.cache_key.push(
            rec.cache_key
                .clone()
                .filter(|_| caldera_core::fingerprint::is_trustworthy(&rec.outcome)),
        );
    }
}
