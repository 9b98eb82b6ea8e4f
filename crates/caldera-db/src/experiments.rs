//! Experiments: the spec as JSON plus the lifecycle status, changed only through
//! [`caldera_core::lifecycle::transition`] under a row lock.

use caldera_core::experiment::{ExperimentEdit, ExperimentSpec};
use caldera_core::lifecycle::{self, ExperimentAction, ExperimentStatus};
use caldera_core::selection::CrateSelection;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::{DbError, is_unique_violation};

/// An experiment as stored.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentRow {
    pub id: Uuid,
    pub name: String,
    pub status: ExperimentStatus,
    pub spec: ExperimentSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

type Raw = (
    Uuid,
    String,
    String,
    Json<ExperimentSpec>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

const COLUMNS: &str = "id, name, status, spec, created_at, updated_at, started_at, finished_at";

fn from_raw(raw: Raw) -> Result<ExperimentRow, DbError> {
    let (id, name, status, Json(spec), created_at, updated_at, started_at, finished_at) = raw;
    let status = status.parse().map_err(|e| DbError::Corrupt {
        table: "experiments",
        message: format!("status: {e}"),
    })?;
    Ok(ExperimentRow {
        id,
        name,
        status,
        spec,
        created_at,
        updated_at,
        started_at,
        finished_at,
    })
}

async fn check_crate_list(
    tx: &mut Transaction<'_, Postgres>,
    spec: &ExperimentSpec,
) -> Result<(), DbError> {
    if let CrateSelection::CrateList { name } = &spec.crates {
        let exists: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM crate_lists WHERE name = $1 FOR SHARE")
                .bind(name)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_none() {
            return Err(DbError::Invalid {
                field: "crates".into(),
                message: format!(
                    "unknown crate list {name:?}; create it first with POST /api/v1/crate-lists"
                ),
            });
        }
    }
    Ok(())
}

/// Store a new, validated experiment in status `queued`.
/// The specs of the experiments with these ids (those that exist). A spec cannot change once an
/// experiment has started, so callers may keep them for running experiments.
pub async fn specs(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, ExperimentSpec)>, DbError> {
    let rows: Vec<(Uuid, Json<ExperimentSpec>)> =
        sqlx::query_as("SELECT id, spec FROM experiments WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, Json(spec))| (id, spec))
        .collect())
}

pub async fn create(pool: &PgPool, spec: &ExperimentSpec) -> Result<ExperimentRow, DbError> {
    let mut tx = pool.begin().await?;
    check_crate_list(&mut tx, spec).await?;
    let raw: Raw = sqlx::query_as(&format!(
        "INSERT INTO experiments (id, name, status, spec, priority) VALUES ($1, $2, 'queued', $3, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(&spec.name)
    .bind(Json(spec))
    .bind(spec.priority)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DbError::conflict(Some("name"), format!("an experiment named {:?} already exists", spec.name))
        } else {
            e.into()
        }
    })?;
    tx.commit().await?;
    from_raw(raw)
}

/// One experiment by name.
pub async fn get(pool: &PgPool, name: &str) -> Result<ExperimentRow, DbError> {
    let raw: Option<Raw> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    raw.map(from_raw)
        .transpose()?
        .ok_or_else(|| DbError::not_found(format!("experiment {name:?}")))
}

/// A page of experiments.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// Experiments, newest first, optionally filtered by status.
pub async fn list(
    pool: &PgPool,
    status: Option<ExperimentStatus>,
    limit: i64,
    offset: i64,
) -> Result<Page<ExperimentRow>, DbError> {
    let status = status.map(|s| s.as_str().to_owned());
    let raws: Vec<Raw> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE ($1::text IS NULL OR status = $1)
         ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
    ))
    .bind(&status)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM experiments WHERE ($1::text IS NULL OR status = $1)")
            .bind(&status)
            .fetch_one(pool)
            .await?;
    let items = raws.into_iter().map(from_raw).collect::<Result<_, _>>()?;
    Ok(Page {
        items,
        total,
        limit,
        offset,
    })
}

async fn lock(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<ExperimentRow, DbError> {
    let raw: Option<Raw> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM experiments WHERE name = $1 FOR UPDATE"
    ))
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    raw.map(from_raw)
        .transpose()?
        .ok_or_else(|| DbError::not_found(format!("experiment {name:?}")))
}

/// Apply an edit to a queued experiment; anything else is a conflict and changes nothing.
pub async fn edit(
    pool: &PgPool,
    name: &str,
    edit: ExperimentEdit,
) -> Result<ExperimentRow, DbError> {
    let mut tx = pool.begin().await?;
    let current = lock(&mut tx, name).await?;
    if !current.status.is_editable() {
        return Err(DbError::conflict(
            Some("status"),
            format!(
                "experiment {name:?} is {}; only queued experiments can be edited",
                current.status
            ),
        ));
    }
    let spec = current.spec.apply(&edit).map_err(|e| DbError::Invalid {
        field: e.field.clone(),
        message: e.message.clone(),
    })?;
    check_crate_list(&mut tx, &spec).await?;
    let raw: Raw = sqlx::query_as(&format!(
        "UPDATE experiments SET spec = $2, priority = $3, updated_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(current.id)
    .bind(Json(&spec))
    .bind(spec.priority)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    from_raw(raw)
}

/// A lifecycle action that passed the status check and holds the experiment's row lock.
///
/// Side effects that must commit or roll back together with the status change (creating jobs on
/// start, cancelling them on abort) run on [`PendingTransition::tx`] before [`PendingTransition::commit`].
/// Dropping it without committing changes nothing.
pub struct PendingTransition {
    pub tx: Transaction<'static, Postgres>,
    pub current: ExperimentRow,
    pub next: ExperimentStatus,
}

/// Check `action` against the current status under a row lock (a conflict changes nothing).
pub async fn begin_action(
    pool: &PgPool,
    name: &str,
    action: ExperimentAction,
) -> Result<PendingTransition, DbError> {
    let mut tx = pool.begin().await?;
    let current = lock(&mut tx, name).await?;
    let next = lifecycle::transition(current.status, action)
        .map_err(|e| DbError::conflict(Some("status"), e.to_string()))?;
    Ok(PendingTransition { tx, current, next })
}

impl PendingTransition {
    /// Write the new status (and start/finish times) and commit.
    pub async fn commit(mut self) -> Result<ExperimentRow, DbError> {
        let raw: Raw = sqlx::query_as(&format!(
            "UPDATE experiments SET status = $2, updated_at = now(),
                 started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
                 finished_at = CASE WHEN $2 IN ('completed', 'aborted') THEN now() ELSE finished_at END
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(self.current.id)
        .bind(self.next.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        from_raw(raw)
    }
}

/// Run a lifecycle action with no side effects.
pub async fn apply_action(
    pool: &PgPool,
    name: &str,
    action: ExperimentAction,
) -> Result<ExperimentRow, DbError> {
    begin_action(pool, name, action).await?.commit().await
}

/// Delete an experiment (and, by cascade, its jobs and results). Running or paused experiments
/// must be aborted first.
pub async fn delete(pool: &PgPool, name: &str) -> Result<ExperimentRow, DbError> {
    let mut tx = pool.begin().await?;
    let current = lock(&mut tx, name).await?;
    if matches!(
        current.status,
        ExperimentStatus::Running | ExperimentStatus::Paused
    ) {
        return Err(DbError::conflict(
            Some("status"),
            format!(
                "experiment {name:?} is {}; abort it before deleting it",
                current.status
            ),
        ));
    }
    // results and jobs carry no foreign key (migration 0004: too costly per row), so they go
    // first, explicitly; the experiment's queue and counts go with it by cascade
    for statement in [
        "DELETE FROM results WHERE experiment_id = $1",
        "DELETE FROM experiments WHERE id = $1",
        "DELETE FROM jobs WHERE experiment_id = $1",
    ] {
        sqlx::query(statement)
            .bind(current.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(current)
}
