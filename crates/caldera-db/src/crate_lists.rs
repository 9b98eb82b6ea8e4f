//! Named crate lists: reusable crate selections (`"crates": "list:NAME"`).

use caldera_core::crates::CrateSpec;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{DbError, is_unique_violation};

/// A crate list with its entries.
#[derive(Debug, Clone, Serialize)]
pub struct CrateList {
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub crates: Vec<CrateSpec>,
}

/// A crate list without its entries.
#[derive(Debug, Clone, Serialize)]
pub struct CrateListSummary {
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub len: i64,
}

/// Store a new list. The specs must already be validated and free of duplicates.
pub async fn create(
    pool: &PgPool,
    name: &str,
    description: &str,
    crates: &[CrateSpec],
) -> Result<CrateList, DbError> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let (created_at,): (DateTime<Utc>,) = sqlx::query_as(
        "INSERT INTO crate_lists (id, name, description) VALUES ($1, $2, $3) RETURNING created_at",
    )
    .bind(id)
    .bind(name)
    .bind(description)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DbError::conflict(
                Some("name"),
                format!("a crate list named {name:?} already exists"),
            )
        } else {
            e.into()
        }
    })?;
    let specs: Vec<String> = crates.iter().map(ToString::to_string).collect();
    sqlx::query(
        "INSERT INTO crate_list_entries (list_id, position, spec)
         SELECT $1, ord::int, spec FROM unnest($2::text[]) WITH ORDINALITY AS t(spec, ord)",
    )
    .bind(id)
    .bind(&specs)
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            DbError::Invalid {
                field: "crates".into(),
                message: "the list contains duplicate crates".into(),
            }
        } else {
            e.into()
        }
    })?;
    tx.commit().await?;
    Ok(CrateList {
        name: name.to_owned(),
        description: description.to_owned(),
        created_at,
        crates: crates.to_vec(),
    })
}

/// One list with its entries in order.
pub async fn get(pool: &PgPool, name: &str) -> Result<CrateList, DbError> {
    let head: Option<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, description, created_at FROM crate_lists WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let (id, description, created_at) =
        head.ok_or_else(|| DbError::not_found(format!("crate list {name:?}")))?;
    let specs: Vec<(String,)> =
        sqlx::query_as("SELECT spec FROM crate_list_entries WHERE list_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(pool)
            .await?;
    let crates = specs
        .into_iter()
        .map(|(s,)| {
            s.parse::<CrateSpec>().map_err(|e| DbError::Corrupt {
                table: "crate_list_entries",
                message: format!("{s:?}: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CrateList {
        name: name.to_owned(),
        description,
        created_at,
        crates,
    })
}

/// All lists, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<CrateListSummary>, DbError> {
    let rows: Vec<(String, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT l.name, l.description, l.created_at, count(e.spec)
         FROM crate_lists l LEFT JOIN crate_list_entries e ON e.list_id = l.id
         GROUP BY l.id ORDER BY l.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, description, created_at, len)| CrateListSummary {
            name,
            description,
            created_at,
            len,
        })
        .collect())
}

/// Delete a list unless a queued experiment still refers to it (running ones hold their own copy).
pub async fn delete(pool: &PgPool, name: &str) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let id: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM crate_lists WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let (id,) = id.ok_or_else(|| DbError::not_found(format!("crate list {name:?}")))?;
    let users: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM experiments
         WHERE status = 'queued' AND spec->'crates'->>'kind' = 'crate-list' AND spec->'crates'->>'name' = $1
         ORDER BY name",
    )
    .bind(name)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let names: Vec<String> = users.into_iter().map(|(n,)| n).collect();
        return Err(DbError::conflict(
            Some("name"),
            format!(
                "crate list {name:?} is used by queued experiment(s) {}",
                names.join(", ")
            ),
        ));
    }
    sqlx::query("DELETE FROM crate_lists WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
