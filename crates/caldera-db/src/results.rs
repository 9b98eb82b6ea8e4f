//! Results as the report, the exports and the dashboard read them.
//!
//! Results are written by [`crate::jobs::complete`] and [`crate::jobs::reap`], both sides of a
//! crate in one statement, and are never updated afterwards (only deleted with their experiment).
//! So the number of result rows of an experiment ([`count`]) changes exactly when its results do,
//! which makes it a sound cache key for anything computed from them.
//!
//! * [`report_input`] reads every crate of an experiment as a [`CrateResult`] with three
//!   concurrent scans (crate ids, start results, end results) merged in memory, selecting only the
//!   columns the report needs: outcomes that are fully described by their kind (`test-pass`,
//!   `test-skipped`, `skipped`) are not even sent as JSON.
//! * [`crate_detail`] gives both sides of one crate with steps, durations, peak memory, log keys
//!   and the worker that ran them.
//! * [`outcome_counts`] counts results per side and outcome kind without reading outcomes.
//! * [`progress`] gives job counts and the finished jobs within a recent window, the inputs of
//!   progress bars, throughput and ETAs; [`finished_per_bucket`] gives finished jobs over time.
//! * [`queue`] lists the experiments that hold or may hold queued work, by priority.

use std::collections::HashMap;

use caldera_core::crates::CrateId;
use caldera_core::outcome::CrateResult;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::DbError;

/// Number of result rows of an experiment (two per finished crate). Results are append-only, so
/// this changes whenever the experiment's results change.
pub async fn count(pool: &PgPool, experiment_id: Uuid) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM results WHERE experiment_id = $1")
        .bind(experiment_id)
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// One side's results: (crate row id, outcome, log key), by crate row id.
type SideRows = Vec<(i64, Outcome, Option<String>)>;

/// The experiment's crates with their row ids, by row id.
async fn experiment_crates(
    pool: &PgPool,
    experiment_id: Uuid,
) -> Result<Vec<(i64, CrateId)>, DbError> {
    let mut crates: Vec<(i64, CrateId)> = Vec::new();
    let mut rows = sqlx::query_as::<_, (i64, String)>(
        "SELECT c.id, c.crate_id FROM jobs j JOIN crates c ON c.id = j.crate_id WHERE j.experiment_id = $1 AND j.run = 0",
    )
    .bind(experiment_id)
    .fetch(pool);
    while let Some((id, text)) = rows.try_next().await? {
        let krate = text.parse().map_err(|e| DbError::Corrupt {
            table: "crates",
            message: format!("crate id {text:?}: {e}"),
        })?;
        crates.push((id, krate));
    }
    crates.sort_unstable_by_key(|(id, _)| *id);
    Ok(crates)
}

/// One side's results of the experiment, by crate row id.
async fn side_rows(
    pool: &PgPool,
    experiment_id: Uuid,
    side: &str,
    with_logs: bool,
) -> Result<SideRows, DbError> {
    let mut out: SideRows = Vec::new();
    // Outcomes fully described by their kind are sent as a small number, not as JSON.
    let mut rows = sqlx::query_as::<_, (i64, i16, Option<Json<Outcome>>, Option<String>)>(
        "SELECT crate_id,
                CASE outcome_kind WHEN 'test-pass' THEN 1::int2 WHEN 'test-skipped' THEN 2::int2
                                  WHEN 'skipped' THEN 3::int2 ELSE 0::int2 END,
                CASE WHEN outcome_kind IN ('test-pass', 'test-skipped', 'skipped') THEN NULL ELSE outcome END,
                CASE WHEN $3 THEN log_key END
         FROM results WHERE experiment_id = $1 AND toolchain = $2 AND run = 0",
    )
    .bind(experiment_id)
    .bind(side)
    .bind(with_logs)
    .fetch(pool);
    while let Some((krate, kind, json, log)) = rows.try_next().await? {
        let outcome = match (kind, json) {
            (_, Some(Json(o))) => o,
            (1, None) => Outcome::TestPass,
            (2, None) => Outcome::TestSkipped,
            (3, None) => Outcome::Skipped,
            _ => {
                return Err(DbError::Corrupt {
                    table: "results",
                    message: format!("the {side} outcome of crate row {krate} has no JSON"),
                });
            }
        };
        out.push((krate, outcome, log));
    }
    out.sort_by_key(|(id, _, _)| *id);
    Ok(out)
}

/// Every crate of the experiment that has results on both sides, as the report reads it, ordered
/// by the crate's row id (the order crates were first seen). With `with_logs` false, the log
/// keys are left out (the dashboard does not need them, and they are a third of the bytes).
///
/// Three plain scans, run at once on separate connections, instead of a join (which costs
/// Postgres several times more on wide rows): the experiment's crate ids (its jobs joined with the
/// narrow `crates` table) and each side's result rows, streamed and merged in memory by crate row
/// id. Outcomes described by their kind alone are not sent as JSON. A crate with a result on one
/// side only (which the writers never produce) is left out, and so would be results of a crate
/// without a job.
pub async fn report_input(
    pool: &PgPool,
    experiment_id: Uuid,
    with_logs: bool,
) -> Result<Vec<CrateResult>, DbError> {
    let (crates, starts, ends) = futures::try_join!(
        experiment_crates(pool, experiment_id),
        side_rows(pool, experiment_id, "start", with_logs),
        side_rows(pool, experiment_id, "end", with_logs),
    )?;
    let mut out = Vec::with_capacity(crates.len());
    let mut starts = starts.into_iter().peekable();
    let mut ends = ends.into_iter().peekable();
    let mut unmatched = 0usize;
    for (id, krate) in crates {
        let mut take =
            |side: &mut std::iter::Peekable<std::vec::IntoIter<(i64, Outcome, Option<String>)>>| {
                while side.next_if(|(k, _, _)| *k < id).is_some() {
                    unmatched += 1;
                }
                side.next_if(|(k, _, _)| *k == id).map(|(_, o, l)| (o, l))
            };
        let start = take(&mut starts);
        let end = take(&mut ends);
        if let (Some((start, start_log)), Some((end, end_log))) = (start, end) {
            out.push(CrateResult {
                krate,
                start,
                end,
                start_log,
                end_log,
            });
        }
    }
    unmatched += starts.count() + ends.count();
    if unmatched > 0 {
        tracing::warn!(experiment = %experiment_id, results = unmatched, "results of crates without a job are left out of the report");
    }
    Ok(out)
}

/// One step of a run (`build`, `test`, …) and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    pub duration_ms: i64,
}

/// One side of a crate's results, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideDetail {
    pub outcome: Outcome,
    pub log_key: Option<String>,
    pub duration_ms: Option<i64>,
    pub peak_memory_bytes: Option<i64>,
    pub steps: Vec<Step>,
    /// Name of the worker that ran it, when known.
    pub worker: Option<String>,
    pub recorded_at: DateTime<Utc>,
    /// The experiment the side was settled from by the result cache (not run here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_from: Option<String>,
}

/// Both sides of one crate of an experiment, and its job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrateDetail {
    pub crate_id: String,
    pub start: Option<SideDetail>,
    pub end: Option<SideDetail>,
    /// `queued`, `running`, `done`, `error` or `cancelled`.
    pub job_state: Option<String>,
    pub attempt: Option<i32>,
}

/// Both sides of `crate_id` (its id string as stored, e.g. `reg:foo@1.0.0#…`) in the experiment;
/// `None` when the experiment has no such crate (neither a job nor a result).
pub async fn crate_detail(
    pool: &PgPool,
    experiment_id: Uuid,
    crate_id: &str,
) -> Result<Option<CrateDetail>, DbError> {
    type Row = (
        String,
        Json<Outcome>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Json<Vec<Step>>,
        Option<String>,
        DateTime<Utc>,
        Option<String>,
    );
    let job: Option<(String, i32)> = sqlx::query_as(
        "SELECT j.state, j.attempt FROM jobs j JOIN crates c ON c.id = j.crate_id
         WHERE j.experiment_id = $1 AND c.crate_id = $2 AND j.run = 0",
    )
    .bind(experiment_id)
    .bind(crate_id)
    .fetch_optional(pool)
    .await?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.toolchain, r.outcome, r.log_key, r.duration_ms, r.peak_memory_bytes, r.steps, w.name, r.created_at,
                r.cached_from_name
         FROM results r JOIN crates c ON c.id = r.crate_id
         LEFT JOIN workers w ON w.id = r.worker_id
         WHERE r.experiment_id = $1 AND c.crate_id = $2 AND r.run = 0",
    )
    .bind(experiment_id)
    .bind(crate_id)
    .fetch_all(pool)
    .await?;
    if job.is_none() && rows.is_empty() {
        return Ok(None);
    }
    let mut detail = CrateDetail {
        crate_id: crate_id.to_owned(),
        start: None,
        end: None,
        job_state: job.as_ref().map(|(s, _)| s.clone()),
        attempt: job.map(|(_, a)| a),
    };
    for (
        side,
        Json(outcome),
        log_key,
        duration_ms,
        peak,
        Json(steps),
        worker,
        recorded_at,
        cached_from,
    ) in rows
    {
        let d = SideDetail {
            outcome,
            log_key,
            duration_ms,
            peak_memory_bytes: peak,
            steps,
            worker,
            recorded_at,
            cached_from,
        };
        match side.as_str() {
            "start" => detail.start = Some(d),
            _ => detail.end = Some(d),
        }
    }
    Ok(Some(detail))
}

/// Result rows per side and outcome kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// (outcome kind, rows) of the start side, most first.
    pub start: Vec<(String, i64)>,
    /// (outcome kind, rows) of the end side, most first.
    pub end: Vec<(String, i64)>,
}

/// Results per side and outcome kind (an index-only count; outcomes are not read).
pub async fn outcome_counts(pool: &PgPool, experiment_id: Uuid) -> Result<OutcomeCounts, DbError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT toolchain, outcome_kind, count(*) FROM results WHERE experiment_id = $1 AND run = 0
         GROUP BY toolchain, outcome_kind ORDER BY 3 DESC, 2",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    let mut out = OutcomeCounts::default();
    for (side, kind, n) in rows {
        match side.as_str() {
            "start" => out.start.push((kind, n)),
            _ => out.end.push((kind, n)),
        }
    }
    Ok(out)
}

/// Job counts of one experiment, with what finished recently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExperimentProgress {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub error: i64,
    pub cancelled: i64,
    /// Jobs that finished (`done` or `error`) at or after the window start.
    pub finished_in_window: i64,
    /// When the first and the last finished job finished.
    pub first_finished_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
}

impl ExperimentProgress {
    /// All jobs.
    pub fn total(&self) -> i64 {
        self.queued + self.running + self.done + self.error + self.cancelled
    }

    /// Jobs that will not run again.
    pub fn finished(&self) -> i64 {
        self.done + self.error + self.cancelled
    }
}

/// Progress of each of `experiments` that has jobs; finished jobs are counted in the window from
/// `window_start` on (time is a parameter, never the database's clock).
pub async fn progress(
    pool: &PgPool,
    experiments: &[Uuid],
    window_start: DateTime<Utc>,
) -> Result<HashMap<Uuid, ExperimentProgress>, DbError> {
    type Row = (
        Uuid,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    if experiments.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT experiment_id,
                count(*) FILTER (WHERE state = 'queued'),
                count(*) FILTER (WHERE state = 'running'),
                count(*) FILTER (WHERE state = 'done'),
                count(*) FILTER (WHERE state = 'error'),
                count(*) FILTER (WHERE state = 'cancelled'),
                count(*) FILTER (WHERE state IN ('done', 'error') AND updated_at >= $2),
                min(updated_at) FILTER (WHERE state IN ('done', 'error')),
                max(updated_at) FILTER (WHERE state IN ('done', 'error'))
         FROM jobs WHERE experiment_id = ANY($1) GROUP BY experiment_id",
    )
    .bind(experiments)
    .bind(window_start)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, queued, running, done, error, cancelled, recent, first, last)| {
                (
                    id,
                    ExperimentProgress {
                        queued,
                        running,
                        done,
                        error,
                        cancelled,
                        finished_in_window: recent,
                        first_finished_at: first,
                        last_finished_at: last,
                    },
                )
            },
        )
        .collect())
}

/// Finished jobs (`done` or `error`) of the experiment per time bucket of `bucket_secs` seconds,
/// from `since` to `until`: one count per bucket, oldest first, zeros included.
pub async fn finished_per_bucket(
    pool: &PgPool,
    experiment_id: Uuid,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<i64>, DbError> {
    let bucket_secs = bucket_secs.max(1);
    let buckets = ((until - since).num_seconds().max(0) / bucket_secs + 1) as usize;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT floor(extract(epoch FROM (updated_at - $2)) / $4)::bigint AS b, count(*)
         FROM jobs WHERE experiment_id = $1 AND state IN ('done', 'error')
           AND updated_at >= $2 AND updated_at <= $3
         GROUP BY b",
    )
    .bind(experiment_id)
    .bind(since)
    .bind(until)
    .bind(bucket_secs as f64)
    .fetch_all(pool)
    .await?;
    let mut out = vec![0; buckets];
    for (b, n) in rows {
        if let Some(slot) = usize::try_from(b).ok().and_then(|b| out.get_mut(b)) {
            *slot += n;
        }
    }
    Ok(out)
}

/// An experiment as the queue shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueEntry {
    pub name: String,
    pub status: String,
    pub priority: i32,
    pub queued: i64,
    pub running: i64,
    pub created_at: DateTime<Utc>,
}

/// Queued, running and paused experiments in the order the dispatcher serves them: highest
/// priority first, then oldest; with their queued and running job counts.
pub async fn queue(pool: &PgPool) -> Result<Vec<QueueEntry>, DbError> {
    let rows: Vec<(String, String, i32, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT e.name, e.status, e.priority,
                coalesce((SELECT sum(c.queued) FROM job_counts c WHERE c.experiment_id = e.id), 0)::bigint,
                coalesce((SELECT sum(c.running) FROM job_counts c WHERE c.experiment_id = e.id), 0)::bigint,
                e.created_at
         FROM experiments e WHERE e.status IN ('queued', 'running', 'paused')
         ORDER BY e.priority DESC, e.created_at, e.id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(name, status, priority, queued, running, created_at)| QueueEntry {
                name,
                status,
                priority,
                queued,
                running,
                created_at,
            },
        )
        .collect())
}
