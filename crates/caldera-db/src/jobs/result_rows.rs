//! The rows of `results`, one per side of a finished job: how a side's record becomes its
//! columns, and the insert of the rows that no worker reported (settled jobs, reaped ones).

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::DbError;

/// One side's result as the worker reported it.
#[derive(Debug, Clone)]
pub struct SideRecord {
    pub outcome: Outcome,
    pub log_key: Option<String>,
    pub duration_ms: i64,
    pub peak_memory_bytes: i64,
    /// (step name, duration in ms), in order
    pub steps: Vec<(String, i64)>,
    /// The side's result-cache key as the worker computed it; recorded only when the outcome
    /// may be reused (`caldera_core::fingerprint::is_trustworthy`).
    pub cache_key: Option<String>,
}

pub(super) fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}

pub(super) fn steps_json(steps: &[(String, i64)]) -> serde_json::Value {
    serde_json::Value::Array(
        steps
            .iter()
            .map(|(name, ms)| serde_json::json!({"name": name, "duration_ms": ms}))
            .collect(),
    )
}

/// Rows of `results` for jobs that end without a worker's report, as columns, inserted in one
/// statement.
#[derive(Default)]
pub(super) struct ResultColumns {
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
    pub(super) fn push(
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
        self.kind.push(rec.outcome.kind().to_owned());
        self.log_key.push(rec.log_key.clone());
        self.duration.push(rec.duration_ms);
        self.memory.push(rec.peak_memory_bytes);
        self.steps.push(steps_json(&rec.steps));
        self.worker.push(worker);
    }

    pub(super) async fn insert(
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
