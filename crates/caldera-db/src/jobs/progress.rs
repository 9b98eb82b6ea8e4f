//! Progress: job counts per experiment and state (kept in `job_counts` by triggers on `jobs`),
//! the experiments that can still complete and those that have nothing left to run.

use std::collections::BTreeMap;

use sqlx::PgPool;
use uuid::Uuid;

use crate::DbError;

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
