//! Triage marks and their audit trail (see [`caldera_core::triage`]).
//!
//! A mark is keyed by crate name ([`caldera_core::triage::crate_key`]) and cause; every change
//! (set, update, remove) writes one `triage_audit` row in the same transaction, with the mark
//! before and after and the token name of whoever did it. Setting a mark identical to the stored
//! one changes nothing and writes no audit row.

use std::collections::HashMap;

use caldera_core::crates::CrateId;
use caldera_core::outcome::Outcome;
use caldera_core::triage::{MarkKind, MarkRequest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::DbError;

/// A stored mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mark {
    pub crate_name: String,
    pub cause: String,
    pub kind: MarkKind,
    pub link: Option<String>,
    pub note: String,
    /// The experiment and crate id it was last set from.
    pub experiment: String,
    pub crate_id: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// What a mark says, as the audit trail records it before and after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkFields {
    pub kind: MarkKind,
    pub link: Option<String>,
    pub note: String,
}

impl From<&MarkRequest> for MarkFields {
    fn from(r: &MarkRequest) -> Self {
        MarkFields {
            kind: r.kind,
            link: r.link.clone(),
            note: r.note.clone(),
        }
    }
}

impl From<&Mark> for MarkFields {
    fn from(m: &Mark) -> Self {
        MarkFields {
            kind: m.kind,
            link: m.link.clone(),
            note: m.note.clone(),
        }
    }
}

/// One change to a mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub crate_name: String,
    pub cause: String,
    /// `set` (a new mark), `update` or `remove`.
    pub action: String,
    pub before: Option<MarkFields>,
    pub after: Option<MarkFields>,
    pub experiment: String,
    pub crate_id: String,
    /// The API token's name.
    pub actor: String,
    pub at: DateTime<Utc>,
}

/// Where a change comes from: the experiment and crate it was made on, and who made it.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub experiment: &'a str,
    pub crate_id: &'a str,
    pub actor: &'a str,
}

const MARK_COLUMNS: &str = "crate_name, cause, kind, link, note, experiment, crate_id, created_by, created_at, updated_by, updated_at";

type MarkRaw = (
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    String,
    DateTime<Utc>,
);

fn mark_from_raw(raw: MarkRaw) -> Result<Mark, DbError> {
    let (
        crate_name,
        cause,
        kind,
        link,
        note,
        experiment,
        crate_id,
        created_by,
        created_at,
        updated_by,
        updated_at,
    ) = raw;
    let kind = kind.parse().map_err(|e| DbError::Corrupt {
        table: "triage_marks",
        message: format!("{e}"),
    })?;
    Ok(Mark {
        crate_name,
        cause,
        kind,
        link,
        note,
        experiment,
        crate_id,
        created_by,
        created_at,
        updated_by,
        updated_at,
    })
}

async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    crate_name: &str,
    cause: &str,
    action: &str,
    before: Option<MarkFields>,
    after: Option<MarkFields>,
    origin: Origin<'_>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO triage_audit (crate_name, cause, action, before, after, experiment, crate_id, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(crate_name)
    .bind(cause)
    .bind(action)
    .bind(before.map(Json))
    .bind(after.map(Json))
    .bind(origin.experiment)
    .bind(origin.crate_id)
    .bind(origin.actor)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn locked(
    tx: &mut Transaction<'_, Postgres>,
    crate_name: &str,
    cause: &str,
) -> Result<Option<Mark>, DbError> {
    let raw: Option<MarkRaw> = sqlx::query_as(&format!(
        "SELECT {MARK_COLUMNS} FROM triage_marks
         WHERE crate_name = $1 AND md5(cause) = md5($2) AND cause = $2 FOR UPDATE"
    ))
    .bind(crate_name)
    .bind(cause)
    .fetch_optional(&mut **tx)
    .await?;
    raw.map(mark_from_raw).transpose()
}

/// Whether [`set`] created, changed or left the mark as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Created,
    Updated,
    Unchanged,
}

/// Sets the mark of (`crate_name`, `cause`), creating or replacing it, and audits the change.
/// The request must be validated ([`MarkRequest::validate`]).
pub async fn set(
    pool: &PgPool,
    crate_name: &str,
    cause: &str,
    mark: &MarkRequest,
    origin: Origin<'_>,
) -> Result<(Mark, SetOutcome), DbError> {
    let after = MarkFields::from(mark);
    // Two attempts: a concurrent first mark of the same key makes the insert find a row.
    for _ in 0..2 {
        let mut tx = pool.begin().await?;
        match locked(&mut tx, crate_name, cause).await? {
            Some(old) if MarkFields::from(&old) == after => {
                tx.commit().await?;
                return Ok((old, SetOutcome::Unchanged));
            }
            Some(old) => {
                let raw: MarkRaw = sqlx::query_as(&format!(
                    "UPDATE triage_marks SET kind = $3, link = $4, note = $5, experiment = $6,
                            crate_id = $7, updated_by = $8, updated_at = now()
                     WHERE crate_name = $1 AND md5(cause) = md5($2) AND cause = $2
                     RETURNING {MARK_COLUMNS}"
                ))
                .bind(crate_name)
                .bind(cause)
                .bind(mark.kind.as_str())
                .bind(&mark.link)
                .bind(&mark.note)
                .bind(origin.experiment)
                .bind(origin.crate_id)
                .bind(origin.actor)
                .fetch_one(&mut *tx)
                .await?;
                let new = mark_from_raw(raw)?;
                audit(
                    &mut tx,
                    crate_name,
                    cause,
                    "update",
                    Some(MarkFields::from(&old)),
                    Some(after),
                    origin,
                )
                .await?;
                tx.commit().await?;
                return Ok((new, SetOutcome::Updated));
            }
            None => {
                let raw: Option<MarkRaw> = sqlx::query_as(&format!(
                    "INSERT INTO triage_marks (crate_name, cause, kind, link, note, experiment, crate_id, created_by, updated_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                     ON CONFLICT (crate_name, md5(cause)) DO NOTHING
                     RETURNING {MARK_COLUMNS}"
                ))
                .bind(crate_name)
                .bind(cause)
                .bind(mark.kind.as_str())
                .bind(&mark.link)
                .bind(&mark.note)
                .bind(origin.experiment)
                .bind(origin.crate_id)
                .bind(origin.actor)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(raw) = raw else {
                    tx.rollback().await?;
                    continue;
                };
                let new = mark_from_raw(raw)?;
                audit(&mut tx, crate_name, cause, "set", None, Some(after), origin).await?;
                tx.commit().await?;
                return Ok((new, SetOutcome::Created));
            }
        }
    }
    Err(DbError::conflict(
        None,
        format!("the mark of {crate_name} ({cause}) is being changed concurrently; retry"),
    ))
}

/// Removes the mark of (`crate_name`, `cause`) and audits it; returns the mark removed.
pub async fn remove(
    pool: &PgPool,
    crate_name: &str,
    cause: &str,
    origin: Origin<'_>,
) -> Result<Mark, DbError> {
    let mut tx = pool.begin().await?;
    let raw: Option<MarkRaw> = sqlx::query_as(&format!(
        "DELETE FROM triage_marks WHERE crate_name = $1 AND md5(cause) = md5($2) AND cause = $2
         RETURNING {MARK_COLUMNS}"
    ))
    .bind(crate_name)
    .bind(cause)
    .fetch_optional(&mut *tx)
    .await?;
    let old = raw.map(mark_from_raw).transpose()?.ok_or_else(|| {
        DbError::not_found(format!("triage mark of {crate_name:?} for cause {cause:?}"))
    })?;
    audit(
        &mut tx,
        crate_name,
        cause,
        "remove",
        Some(MarkFields::from(&old)),
        None,
        origin,
    )
    .await?;
    tx.commit().await?;
    Ok(old)
}

/// The marks of (crate name, cause) pairs, for a report: only the pairs that have one.
pub async fn applicable(
    pool: &PgPool,
    pairs: &[(String, String)],
) -> Result<HashMap<(String, String), Mark>, DbError> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (names, causes): (Vec<&str>, Vec<&str>) =
        pairs.iter().map(|(n, c)| (n.as_str(), c.as_str())).unzip();
    let cols = MARK_COLUMNS
        .split(", ")
        .map(|c| format!("m.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let raws: Vec<MarkRaw> = sqlx::query_as(&format!(
        "SELECT DISTINCT {cols} FROM triage_marks m
         JOIN unnest($1::text[], $2::text[]) AS t(n, c)
           ON m.crate_name = t.n AND md5(m.cause) = md5(t.c) AND m.cause = t.c"
    ))
    .bind(&names)
    .bind(&causes)
    .fetch_all(pool)
    .await?;
    raws.into_iter()
        .map(|raw| {
            let m = mark_from_raw(raw)?;
            Ok(((m.crate_name.clone(), m.cause.clone()), m))
        })
        .collect()
}

/// Every mark (of one crate name, when given), by crate name and cause.
pub async fn list(pool: &PgPool, crate_name: Option<&str>) -> Result<Vec<Mark>, DbError> {
    let raws: Vec<MarkRaw> = sqlx::query_as(&format!(
        "SELECT {MARK_COLUMNS} FROM triage_marks WHERE $1::text IS NULL OR crate_name = $1
         ORDER BY crate_name, cause"
    ))
    .bind(crate_name)
    .fetch_all(pool)
    .await?;
    raws.into_iter().map(mark_from_raw).collect()
}

type AuditRaw = (
    i64,
    String,
    String,
    String,
    Option<Json<MarkFields>>,
    Option<Json<MarkFields>>,
    String,
    String,
    String,
    DateTime<Utc>,
);

const AUDIT_COLUMNS: &str = "a.id, a.crate_name, a.cause, a.action, a.before, a.after, a.experiment, a.crate_id, a.actor, a.at";

/// The audit trail (of one crate name, when given), oldest first, at most `limit` entries (the
/// newest).
pub async fn audit_trail(
    pool: &PgPool,
    crate_name: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEntry>, DbError> {
    let mut raws: Vec<AuditRaw> = sqlx::query_as(&format!(
        "SELECT {AUDIT_COLUMNS} FROM triage_audit a WHERE $1::text IS NULL OR a.crate_name = $1
         ORDER BY a.id DESC LIMIT $2"
    ))
    .bind(crate_name)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    raws.reverse();
    Ok(audit_from_raws(raws))
}

/// Every change of these (crate name, cause) pairs, oldest first.
pub async fn history(
    pool: &PgPool,
    pairs: &[(String, String)],
) -> Result<Vec<AuditEntry>, DbError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let (names, causes): (Vec<&str>, Vec<&str>) =
        pairs.iter().map(|(n, c)| (n.as_str(), c.as_str())).unzip();
    let raws: Vec<AuditRaw> = sqlx::query_as(&format!(
        "SELECT {AUDIT_COLUMNS} FROM triage_audit a
         WHERE (a.crate_name, a.cause) IN (SELECT * FROM unnest($1::text[], $2::text[]))
         ORDER BY a.id"
    ))
    .bind(&names)
    .bind(&causes)
    .fetch_all(pool)
    .await?;
    Ok(audit_from_raws(raws))
}

fn audit_from_raws(raws: Vec<AuditRaw>) -> Vec<AuditEntry> {
    raws.into_iter()
        .map(
            |(id, crate_name, cause, action, before, after, experiment, crate_id, actor, at)| {
                AuditEntry {
                    id,
                    crate_name,
                    cause,
                    action,
                    before: before.map(|j| j.0),
                    after: after.map(|j| j.0),
                    experiment,
                    crate_id,
                    actor,
                    at,
                }
            },
        )
        .collect()
}

/// How a crate of an experiment is named in a request (parsed once, in caldera-core).
pub use caldera_core::crates::CrateRef;

/// What [`find_crate`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    NoExperiment,
    NoCrate,
    /// Several crates match (several versions of a name); holds (some of) their ids.
    Ambiguous {
        candidates: Vec<String>,
    },
    /// The crate, with its outcomes (`None` for a side without a result yet).
    Found {
        crate_id: CrateId,
        start: Option<Outcome>,
        end: Option<Outcome>,
    },
}

/// Finds a crate of an experiment with its outcomes.
pub async fn find_crate(
    pool: &PgPool,
    experiment: &str,
    krate: &CrateRef,
) -> Result<Target, DbError> {
    let Some((experiment_id,)) =
        sqlx::query_as::<_, (Uuid,)>("SELECT id FROM experiments WHERE name = $1")
            .bind(experiment)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(Target::NoExperiment);
    };
    let mut candidates = candidates(pool, experiment_id, krate).await?;
    let (row, text) = match candidates.len() {
        0 => return Ok(Target::NoCrate),
        1 => candidates.remove(0),
        _ => {
            return Ok(Target::Ambiguous {
                candidates: candidates.into_iter().map(|(_, id)| id).collect(),
            });
        }
    };
    let crate_id: CrateId = text.parse().map_err(|e| DbError::Corrupt {
        table: "crates",
        message: format!("crate id {text:?}: {e}"),
    })?;
    let (start, end) = outcomes(pool, experiment_id, row).await?;
    Ok(Target::Found {
        crate_id,
        start,
        end,
    })
}

/// The experiment's crates (`$1`) with exactly the crate id `$2`, as (`crates.id`, crate id).
const CRATE_BY_ID: &str = "SELECT c.id, c.crate_id FROM crates c
     JOIN jobs j ON j.crate_id = c.id AND j.experiment_id = $1
     WHERE c.crate_id = $2";

/// The experiment's (`$1`) registry crates named `$2` (of version `$3`, when given), as
/// (`crates.id`, crate id), at most five.
const CRATES_BY_NAME: &str = "SELECT c.id, c.crate_id FROM crates c
     JOIN jobs j ON j.crate_id = c.id AND j.experiment_id = $1
     WHERE c.kind = 'registry' AND c.name = $2 AND ($3::text IS NULL OR c.version = $3)
     ORDER BY c.crate_id LIMIT 5";

/// The crates of the experiment that `krate` may mean, as (`crates.id`, crate id): the crate of
/// that id, else for a registry id without checksum the crates of its name and version (one
/// resolved with a checksum); for a name, the registry crates of that name.
async fn candidates(
    pool: &PgPool,
    experiment_id: Uuid,
    krate: &CrateRef,
) -> Result<Vec<(i64, String)>, DbError> {
    let by_name = |name: &str, version: Option<String>| {
        sqlx::query_as::<_, (i64, String)>(CRATES_BY_NAME)
            .bind(experiment_id)
            .bind(name.to_owned())
            .bind(version)
            .fetch_all(pool)
    };
    Ok(match krate {
        CrateRef::Id(id) => {
            let exact: Option<(i64, String)> = sqlx::query_as(CRATE_BY_ID)
                .bind(experiment_id)
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            match (exact, id) {
                (Some(found), _) => vec![found],
                (
                    None,
                    CrateId::Registry {
                        name,
                        version,
                        checksum: None,
                    },
                ) => by_name(name, Some(version.to_string())).await?,
                (None, _) => Vec::new(),
            }
        }
        CrateRef::Name(name) => by_name(name, None).await?,
    })
}

/// The outcomes of a crate (`crates.id`) in an experiment: (start, end), `None` for a side
/// without a result yet.
async fn outcomes(
    pool: &PgPool,
    experiment_id: Uuid,
    krate: i64,
) -> Result<(Option<Outcome>, Option<Outcome>), DbError> {
    let rows: Vec<(String, Json<Outcome>)> = sqlx::query_as(
        "SELECT toolchain, outcome FROM results WHERE experiment_id = $1 AND crate_id = $2",
    )
    .bind(experiment_id)
    .bind(krate)
    .fetch_all(pool)
    .await?;
    let (mut start, mut end) = (None, None);
    for (side, Json(outcome)) in rows {
        match side.as_str() {
            "start" => start = Some(outcome),
            _ => end = Some(outcome),
        }
    }
    Ok((start, end))
}
