//! Workers: registered on their first hello, marked connected while a session is open.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::DbError;

/// A worker as stored.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub capabilities: Vec<String>,
    pub slots: i32,
    pub connected: bool,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// jobs currently leased to it
    pub running: i64,
}

/// Register (or refresh) a worker by name on hello; returns its id.
pub async fn connect(
    pool: &PgPool,
    name: &str,
    version: &str,
    capabilities: &[String],
    slots: i32,
    token: Uuid,
    now: DateTime<Utc>,
) -> Result<Uuid, DbError> {
    let (id,): (Uuid,) = sqlx::query_as(
        "INSERT INTO workers (id, name, version, capabilities, slots, token_id, connected, first_seen_at, last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, true, $7, $7)
         ON CONFLICT (name) DO UPDATE SET version = $3, capabilities = $4, slots = $5, token_id = $6,
             connected = true, last_seen_at = $7
         RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(version)
    .bind(Json(capabilities))
    .bind(slots)
    .bind(token)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Note a sign of life.
pub async fn seen(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<(), DbError> {
    sqlx::query("UPDATE workers SET last_seen_at = $2, connected = true WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

/// Mark a worker's session closed. Its leases stay until they expire or the worker reconnects.
pub async fn disconnect(pool: &PgPool, id: Uuid) -> Result<(), DbError> {
    sqlx::query("UPDATE workers SET connected = false WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Mark every worker disconnected (master startup: no session survives a master restart).
pub async fn disconnect_all(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("UPDATE workers SET connected = false WHERE connected")
        .execute(pool)
        .await?;
    Ok(())
}

/// All workers, connected first, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<WorkerRow>, DbError> {
    type Raw = (
        Uuid,
        String,
        String,
        Json<Vec<String>>,
        i32,
        bool,
        DateTime<Utc>,
        DateTime<Utc>,
        i64,
    );
    let rows: Vec<Raw> = sqlx::query_as(
        "SELECT w.id, w.name, w.version, w.capabilities, w.slots, w.connected, w.first_seen_at, w.last_seen_at,
                (SELECT count(*) FROM leases l, jobs j
                 WHERE l.worker = w.id AND j.id = ANY(l.jobs) AND j.lease_id = l.id AND j.lease_token IS NOT NULL)
         FROM workers w ORDER BY w.connected DESC, w.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                id,
                name,
                version,
                Json(capabilities),
                slots,
                connected,
                first_seen_at,
                last_seen_at,
                running,
            )| WorkerRow {
                id,
                name,
                version,
                capabilities,
                slots,
                connected,
                first_seen_at,
                last_seen_at,
                running,
            },
        )
        .collect())
}
