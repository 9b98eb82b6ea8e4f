//! What the cost estimator (`caldera_core::estimate`) reads: the mode's history of side
//! durations, an experiment's jobs and what is settled of them, the connected slots; and the
//! estimate stored at the start with what the run then cost.

use caldera_core::estimate::Estimate;
use caldera_core::experiment::Mode;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{DbError, PgPool};

/// How many of the mode's newest experiments the history reads.
pub const HISTORY_EXPERIMENTS: i64 = 20;

/// Result rows whose duration is not a build: settled without running (`skipped`, `broken`,
/// a copy from the result cache) or the farm's fault (`error`). On a row aliased `r`.
const MEASURED: &str =
    "r.outcome_kind NOT IN ('skipped', 'broken', 'error') AND r.cached_from IS NULL";

/// One crate's side durations in the mode's history.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyHistory {
    /// A registry crate's name, else its crate id (`git:…`, `path:…`).
    pub key: String,
    /// Whether the key is a registry name (then the listing may know its dependencies).
    pub registry: bool,
    /// Side durations measured.
    pub sides: i64,
    /// Their median, in milliseconds.
    pub median_ms: f64,
}

/// The side durations of every crate built in the [`HISTORY_EXPERIMENTS`] newest experiments
/// of `mode` (other than `exclude`), per crate: first runs only, sides that built (see
/// `MEASURED`). A registry crate's versions count together.
///
/// The experiments are read newest first through `experiments_created_idx`, each one's
/// results through the results' primary key (experiment, crate, run, side), the crates
/// through theirs.
pub async fn mode_history(
    pool: &PgPool,
    mode: Mode,
    exclude: Option<Uuid>,
) -> Result<Vec<KeyHistory>, DbError> {
    let rows: Vec<(String, bool, i64, f64)> = sqlx::query_as(&format!(
        "WITH e AS (
             SELECT id FROM experiments
             WHERE spec->>'mode' = $1 AND id IS DISTINCT FROM $2
             ORDER BY created_at DESC LIMIT $3
         )
         SELECT CASE WHEN c.kind = 'registry' THEN c.name ELSE c.crate_id END,
                c.kind = 'registry', count(*),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY r.duration_ms)
         FROM e JOIN results r ON r.experiment_id = e.id
         JOIN crates c ON c.id = r.crate_id
         WHERE r.run = 0 AND r.duration_ms IS NOT NULL AND {MEASURED}
         GROUP BY 1, 2
         ORDER BY 1"
    ))
    .bind(mode.as_str())
    .bind(exclude)
    .bind(HISTORY_EXPERIMENTS)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, registry, sides, median_ms)| KeyHistory {
            key,
            registry,
            sides,
            median_ms,
        })
        .collect())
}

/// One job of a started experiment, as the estimator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    /// See [`KeyHistory::key`].
    pub key: String,
    pub registry: bool,
    /// `queued`, `running`, `done`, `error` or `cancelled`.
    pub state: String,
    pub run: i16,
    /// When its current lease was handed out (running jobs).
    pub claimed_at: Option<DateTime<Utc>>,
    /// What is already recorded for each side (start, end), if anything.
    pub recorded: [Option<Recorded>; 2],
}

/// A side's result recorded before it ran, or since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub outcome_kind: String,
    /// Copied from an earlier experiment by the result cache.
    pub cached: bool,
}

/// Every job of an experiment (confirmation runs included), in queue order, with the sides
/// already recorded (on a pool, or on the transaction that starts it). Reads the jobs through `jobs_experiment_id_idx`, their results through
/// the results' primary key.
pub async fn jobs_of(
    db: impl sqlx::PgExecutor<'_>,
    experiment: Uuid,
) -> Result<Vec<PlannedJob>, DbError> {
    type Row = (
        String,
        bool,
        String,
        i16,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<bool>,
        Option<String>,
        Option<bool>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT CASE WHEN c.kind = 'registry' THEN c.name ELSE c.crate_id END,
                c.kind = 'registry', j.state, j.run, j.claimed_at,
                s.outcome_kind, s.cached_from IS NOT NULL, e.outcome_kind, e.cached_from IS NOT NULL
         FROM jobs j JOIN crates c ON c.id = j.crate_id
         LEFT JOIN results s ON s.experiment_id = j.experiment_id AND s.crate_id = j.crate_id
              AND s.run = j.run AND s.toolchain = 'start'
         LEFT JOIN results e ON e.experiment_id = j.experiment_id AND e.crate_id = j.crate_id
              AND e.run = j.run AND e.toolchain = 'end'
         WHERE j.experiment_id = $1
         ORDER BY j.id",
    )
    .bind(experiment)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(key, registry, state, run, claimed_at, s, s_cached, e, e_cached)| PlannedJob {
                key,
                registry,
                state,
                run,
                claimed_at,
                recorded: [recorded(s, s_cached), recorded(e, e_cached)],
            },
        )
        .collect())
}

fn recorded(kind: Option<String>, cached: Option<bool>) -> Option<Recorded> {
    kind.map(|outcome_kind| Recorded {
        outcome_kind,
        cached: cached.unwrap_or(false),
    })
}

/// The slots of the workers connected now.
pub async fn connected_slots(pool: &PgPool) -> Result<u32, DbError> {
    let slots: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(slots), 0)::int8 FROM workers WHERE connected")
            .fetch_one(pool)
            .await?;
    Ok(u32::try_from(slots).unwrap_or(u32::MAX))
}

/// An estimate kept from an experiment's start.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEstimate {
    pub made_at: DateTime<Utc>,
    pub estimate: Estimate,
}

/// Keeps the estimate made when `experiment` started (replacing one kept before).
pub async fn store(
    db: impl sqlx::PgExecutor<'_>,
    experiment: Uuid,
    estimate: &Estimate,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO experiment_estimates (experiment_id, made_at, estimate) VALUES ($1, $2, $3)
         ON CONFLICT (experiment_id) DO UPDATE SET made_at = $2, estimate = $3",
    )
    .bind(experiment)
    .bind(now)
    .bind(Json(estimate))
    .execute(db)
    .await?;
    Ok(())
}

/// The estimate kept from the start of `experiment`, if one was.
pub async fn stored(pool: &PgPool, experiment: Uuid) -> Result<Option<StoredEstimate>, DbError> {
    let row: Option<(DateTime<Utc>, Json<Estimate>)> = sqlx::query_as(
        "SELECT made_at, estimate FROM experiment_estimates WHERE experiment_id = $1",
    )
    .bind(experiment)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(made_at, Json(estimate))| StoredEstimate { made_at, estimate }))
}

/// What a run cost: its first runs' sides that built, and their durations summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actual {
    pub sides_run: i64,
    pub cpu_ms: i64,
}

/// The first runs' measured sides of `experiment` (as the estimate counts them: settled and
/// `error` sides left out).
pub async fn actual(pool: &PgPool, experiment: Uuid) -> Result<Actual, DbError> {
    let (sides_run, cpu_ms): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(r.duration_ms), 0)::int8 FROM results r
         WHERE r.experiment_id = $1 AND r.run = 0 AND r.duration_ms IS NOT NULL AND {MEASURED}"
    ))
    .bind(experiment)
    .fetch_one(pool)
    .await?;
    Ok(Actual { sides_run, cpu_ms })
}
