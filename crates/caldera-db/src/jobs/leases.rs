//! Leases: renewal by heartbeats, hand-backs (a job returned without a result), and the reaper,
//! which re-queues the jobs of expired leases and ends those out of attempts as `error`.

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::result_rows::{ResultColumns, SideRecord};
use crate::DbError;

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
                cache_key: None,
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
