//! The result cache's rows (migration `0010_result_cache`): the lookup of earlier results by
//! their side's key ([`lookup`]), and the settling of a starting experiment's sides from them
//! ([`settle`], on the start's transaction).
//!
//! What is a trustworthy source is decided in three places: the completion records a side's
//! `cache_key` only for an outcome `caldera_core::fingerprint::is_trustworthy` accepts (never
//! `error`, `skipped`, `prepare-fail`, `broken` or a spurious outcome); [`lookup`] takes only
//! first runs younger than the operator's maximum age, of crates the flake memory does not know;
//! rows settled from the cache carry no key, so every source is an original run.
//!
//! A confirmation run's copy of a source's re-run names the source's log until the source is
//! deleted; then [`borrowed_logs`] finds it and [`own_log`] points it at its own copy.

use caldera_core::experiment::ExperimentSpec;
use caldera_core::job::Side;
use caldera_core::toolchain::{Toolchain, ToolchainIdentity};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::DbError;

/// A side the cache is asked about: the crate (its id text) and the side's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub krate: String,
    pub side: Side,
    pub key: String,
}

/// The newest trustworthy earlier result for a [`Wanted`] side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub krate: String,
    pub side: Side,
    /// The experiment the result comes from, and its name.
    pub source: Uuid,
    pub source_name: String,
    /// The source row's side (`start` or `end`: the key does not depend on the side, only on
    /// its toolchain, so an earlier end side can settle a start side).
    pub source_side: Side,
    /// The source row's log key, if it has one.
    pub log_key: Option<String>,
    pub outcome_kind: String,
}

/// For each wanted side, the newest first-run result with the same key recorded at or after
/// `oldest`, of a crate with no known flake. One round trip.
pub async fn lookup(
    pool: &PgPool,
    wanted: &[Wanted],
    oldest: DateTime<Utc>,
) -> Result<Vec<Hit>, DbError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let crates: Vec<&str> = wanted.iter().map(|w| w.krate.as_str()).collect();
    let keys: Vec<&str> = wanted.iter().map(|w| w.key.as_str()).collect();
    let rows: Vec<(i64, Uuid, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (w.i) w.i, r.experiment_id, e.name, r.toolchain, r.log_key, r.outcome_kind
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(krate, key, i)
         JOIN crates c ON c.crate_id = w.krate
         JOIN results r ON r.cache_key = w.key AND r.run = 0 AND r.crate_id = c.id
         JOIN experiments e ON e.id = r.experiment_id
         WHERE r.created_at >= $3
           AND NOT EXISTS (SELECT 1 FROM flakes f WHERE f.crate_id = c.id)
         ORDER BY w.i, r.created_at DESC",
    )
    .bind(&crates)
    .bind(&keys)
    .bind(oldest)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(i, source, source_name, source_side, log_key, outcome_kind)| {
                let w = wanted.get(usize::try_from(i - 1).ok()?)?;
                Some(Hit {
                    krate: w.krate.clone(),
                    side: w.side,
                    source,
                    source_name,
                    source_side: side_of(&source_side)?,
                    log_key,
                    outcome_kind,
                })
            },
        )
        .collect())
}

fn side_of(s: &str) -> Option<Side> {
    Side::BOTH.into_iter().find(|side| side.as_str() == s)
}

/// A side to settle from its source: the [`Hit`] and the log key of the copy in the new
/// experiment's prefix (`None`: the source had no log).
#[derive(Debug, Clone)]
pub struct Settle {
    pub hit: Hit,
    pub log_key: Option<String>,
}

/// What [`settle`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Sides settled (results rows written).
    pub sides: u64,
    /// Jobs with both sides settled: done at the start.
    pub jobs_done: u64,
    /// Jobs left to run one side only (`jobs.only_side`).
    pub jobs_one_side: u64,
}

/// Settle `sides` of the starting experiment from their sources, on the start's transaction
/// (after `jobs::create_for_experiment`): one results row per side, a copy of the source's
/// outcome, timings and worker with the log key of the copy, `cached_from` the source (and
/// `cached_from_side` its side), and no cache key (a copy is never a source). A job with both
/// sides settled is `done`; a job with one runs only the other (`only_side`). A side is settled
/// only on a queued first run. One statement.
pub async fn settle(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
    sides: &[Settle],
    now: DateTime<Utc>,
) -> Result<Settled, DbError> {
    if sides.is_empty() {
        return Ok(Settled::default());
    }
    let crates: Vec<&str> = sides.iter().map(|s| s.hit.krate.as_str()).collect();
    let side: Vec<&str> = sides.iter().map(|s| s.hit.side.as_str()).collect();
    let sources: Vec<Uuid> = sides.iter().map(|s| s.hit.source).collect();
    let source_sides: Vec<&str> = sides.iter().map(|s| s.hit.source_side.as_str()).collect();
    let logs: Vec<Option<&str>> = sides.iter().map(|s| s.log_key.as_deref()).collect();
    let rows: Vec<(i64,)> = sqlx::query_as(
        "WITH s AS (
             SELECT * FROM unnest($2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[])
                 AS s(krate, side, src, src_side, log)
         ), copied AS (
             INSERT INTO results (experiment_id, crate_id, run, toolchain, job_id, outcome, outcome_kind,
                                  log_key, duration_ms, peak_memory_bytes, steps, worker_id, created_at,
                                  cached_from, cached_from_name, cached_from_side)
             SELECT $1, c.id, 0, s.side, j.id, r.outcome, r.outcome_kind, s.log, r.duration_ms,
                    r.peak_memory_bytes, r.steps, r.worker_id, $7, r.experiment_id, e.name, s.src_side
             FROM s
             JOIN crates c ON c.crate_id = s.krate
             JOIN jobs j ON j.experiment_id = $1 AND j.crate_id = c.id AND j.run = 0 AND j.state = 'queued'
             JOIN results r ON r.experiment_id = s.src AND r.crate_id = c.id AND r.run = 0
                           AND r.toolchain = s.src_side
             JOIN experiments e ON e.id = s.src
             RETURNING job_id, toolchain
         ), per_job AS (
             SELECT job_id, count(*) AS n, min(toolchain) AS side FROM copied GROUP BY job_id
         )
         UPDATE jobs j SET
             state = CASE WHEN p.n = 2 THEN 'done' ELSE j.state END,
             only_side = CASE WHEN p.n = 1 THEN CASE p.side WHEN 'start' THEN 'end' ELSE 'start' END END,
             updated_at = $7
         FROM per_job p
         WHERE j.id = p.job_id
         RETURNING p.n",
    )
    .bind(experiment_id)
    .bind(&crates)
    .bind(&side)
    .bind(&sources)
    .bind(&source_sides)
    .bind(&logs)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Settled::default();
    for (n,) in rows {
        out.sides += n as u64;
        match n {
            2 => out.jobs_done += 1,
            _ => out.jobs_one_side += 1,
        }
    }
    Ok(out)
}

/// Pin the build of each side settled from the cache (the build its key was computed with),
/// on the start's transaction, and require it of the workers that claim the experiment's jobs:
/// the side's jobs that still run then run with the build the cached ones assumed. The other
/// sides are pinned by their first result, as always.
pub async fn pin_cached_sides(
    tx: &mut Transaction<'static, Postgres>,
    experiment_id: Uuid,
    pins: &[(Side, &ToolchainIdentity)],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    for (side, identity) in pins {
        let capability = identity.capability();
        sqlx::query(
            "WITH pinned AS (
                 INSERT INTO experiment_toolchains (experiment_id, side, identity, capability, worker_id, pinned_at)
                 VALUES ($1, $2, $3, $4, NULL, $5)
                 ON CONFLICT (experiment_id, side) DO NOTHING
                 RETURNING capability
             )
             UPDATE job_queues q SET requirements = q.requirements || jsonb_build_array(p.capability)
             FROM pinned p
             WHERE q.experiment_id = $1 AND p.capability IS NOT NULL
               AND NOT q.requirements @> jsonb_build_array(p.capability)",
        )
        .bind(experiment_id)
        .bind(side.as_str())
        .bind(Json(identity))
        .bind(capability)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The job ids of an experiment that run one side only, with that side (read once per
/// experiment by the dispatcher, like its spec: they are decided at the start).
pub async fn one_sided_jobs(
    pool: &PgPool,
    experiment_id: Uuid,
) -> Result<Vec<(i64, Side)>, DbError> {
    let rows = sqlx::query_as(
        "SELECT id, only_side FROM jobs WHERE experiment_id = $1 AND only_side IS NOT NULL",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    Ok(with_sides(rows))
}

/// The jobs among `job_ids` that run one side only, with that side: the confirmation runs whose
/// other side was taken from the source experiment (queued after the start, so not among
/// [`one_sided_jobs`] as the dispatcher read them).
pub async fn one_sided_among(pool: &PgPool, job_ids: &[i64]) -> Result<Vec<(i64, Side)>, DbError> {
    let rows = sqlx::query_as(
        "SELECT id, only_side FROM jobs WHERE id = ANY($1) AND only_side IS NOT NULL",
    )
    .bind(job_ids)
    .fetch_all(pool)
    .await?;
    Ok(with_sides(rows))
}

/// (job id, `only_side`) rows with their side parsed (a row with another text is dropped).
fn with_sides(rows: Vec<(i64, String)>) -> Vec<(i64, Side)> {
    (rows.into_iter())
        .filter_map(|(id, side)| Some((id, side_of(&side)?)))
        .collect()
}

/// The sides of an experiment's first runs that were settled from the cache: crate id → side →
/// the source experiment's name (for the report and the dashboard).
pub type CachedSides = std::collections::BTreeMap<String, std::collections::BTreeMap<Side, String>>;

/// [`CachedSides`] of an experiment. One round trip.
pub async fn of_experiment(pool: &PgPool, experiment_id: Uuid) -> Result<CachedSides, DbError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.cached_from_name FROM results r
         JOIN crates c ON c.id = r.crate_id
         WHERE r.experiment_id = $1 AND r.run = 0 AND r.cached_from_name IS NOT NULL",
    )
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    let mut out = CachedSides::new();
    for (krate, side, source) in rows {
        if let Some(side) = side_of(&side) {
            out.entry(krate).or_default().insert(side, source);
        }
    }
    Ok(out)
}

/// The settled side of each one-sided job among `job_ids`: (job, side, outcome) of the row the
/// start copied. The result writer puts it in place of the placeholder the worker reports for
/// that side, so that the comparison that decides confirmation runs sees both real outcomes
/// (the placeholder is not recorded). Jobs that run both sides are not returned.
pub async fn settled_sides(
    conn: &mut sqlx::PgConnection,
    job_ids: &[i64],
) -> Result<Vec<(i64, Side, caldera_core::outcome::Outcome)>, DbError> {
    if job_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String, Json<caldera_core::outcome::Outcome>)> = sqlx::query_as(
        "SELECT j.id, r.toolchain, r.outcome FROM jobs j
         JOIN results r ON r.experiment_id = j.experiment_id AND r.crate_id = j.crate_id
                       AND r.run = 0 AND r.toolchain <> j.only_side
         WHERE j.id = ANY($1) AND j.only_side IS NOT NULL AND j.run = 0",
    )
    .bind(job_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, side, Json(outcome))| Some((id, side_of(&side)?, outcome)))
        .collect())
}

/// A confirmation run's row of another experiment that names a log of an experiment being
/// deleted: a copy `CONFIRMING` (`jobs/completion.rs`) made of the source's re-run of a
/// cached side, whose log key is the source's.
#[derive(Debug, Clone)]
pub struct BorrowedLog {
    /// The row's experiment (the borrower), its name and its two toolchains (its log keys
    /// depend on them).
    pub experiment_id: Uuid,
    pub experiment: String,
    pub start: Toolchain,
    pub end: Toolchain,
    /// The crate's id text and its row.
    pub krate: String,
    pub crate_row: i64,
    pub run: i16,
    pub side: Side,
    /// The source's key the row names.
    pub log_key: String,
}

/// The rows of other experiments that name a log of the experiment named `source` (under
/// `source_prefix`, which ends with `/`): deleting the source's objects would leave them
/// pointing at nothing. By name, so that it finds them after the source's rows are deleted
/// (when no new ones can appear). One round trip on `results_borrowed_logs_idx`.
pub async fn borrowed_logs(
    pool: &PgPool,
    source: &str,
    source_prefix: &str,
) -> Result<Vec<BorrowedLog>, DbError> {
    type Row = (
        Uuid,
        String,
        Json<ExperimentSpec>,
        String,
        i64,
        i16,
        String,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.experiment_id, e.name, e.spec, c.crate_id, r.crate_id, r.run, r.toolchain, r.log_key
         FROM results r
         JOIN experiments e ON e.id = r.experiment_id
         JOIN crates c ON c.id = r.crate_id
         WHERE r.cached_from_name = $1 AND r.run > 0 AND r.cached_from IS NOT NULL
           AND starts_with(r.log_key, $2)
         ORDER BY 1, 4, 6, 7",
    )
    .bind(source)
    .bind(source_prefix)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(id, name, Json(spec), krate, crate_row, run, side, log_key)| {
                Some(BorrowedLog {
                    experiment_id: id,
                    experiment: name,
                    start: spec.start,
                    end: spec.end,
                    krate,
                    crate_row,
                    run,
                    side: side_of(&side)?,
                    log_key,
                })
            },
        )
        .collect())
}

/// Point a [`BorrowedLog`]'s row at `own_key` (its copy in the borrower's prefix; `None`: the
/// source's object was gone, the row keeps no log), if it still names the source's key.
pub async fn own_log(
    pool: &PgPool,
    borrowed: &BorrowedLog,
    own_key: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE results SET log_key = $5
         WHERE experiment_id = $1 AND crate_id = $2 AND run = $3 AND toolchain = $4 AND log_key = $6",
    )
    .bind(borrowed.experiment_id)
    .bind(borrowed.crate_row)
    .bind(borrowed.run)
    .bind(borrowed.side.as_str())
    .bind(own_key)
    .bind(&borrowed.log_key)
    .execute(pool)
    .await?;
    Ok(())
}
