//! The jobs side of an experiment's lifecycle transitions, on the transition's own transaction:
//! starting creates the queue (one job per crate, the claim cursor) and settles the jobs that are
//! not to run; aborting cancels every unfinished job.

use std::collections::BTreeMap;

use caldera_core::crates::CrateId;
use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::result_rows::{ResultColumns, SideRecord};
use crate::DbError;

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
                                                   -- keeping the toolchain builds pinned (0009)
                                                   requirements = excluded.requirements || coalesce(
                                                       (SELECT jsonb_agg(t.capability) FROM experiment_toolchains t
                                                        WHERE t.experiment_id = $1 AND t.capability IS NOT NULL),
                                                       '[]'::jsonb),
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
            cache_key: None,
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
