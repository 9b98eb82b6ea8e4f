//! API tokens: random 256-bit secrets, stored only as their SHA-256, each with one role.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::DbError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read experiments, reports and workers.
    Viewer,
    /// A worker agent: may only open the worker stream, nothing on the HTTP API.
    Worker,
    /// Create, edit and control experiments and crate lists.
    Operator,
    /// Everything an operator can do, plus administration.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Worker, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Viewer => "viewer",
        }
    }

    /// May this role read the HTTP API?
    pub fn can_read(self) -> bool {
        matches!(self, Role::Viewer | Role::Operator | Role::Admin)
    }

    /// May this role change experiments and crate lists?
    pub fn can_mutate(self) -> bool {
        matches!(self, Role::Operator | Role::Admin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}; expected one of admin, operator, worker, viewer")
            })
    }
}

/// A stored token (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Prefix of every secret, so leaked tokens are recognisable by secret scanners.
pub const TOKEN_PREFIX: &str = "cldr_";

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

type Raw = (
    Uuid,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn from_raw(
    (id, name, role, created_at, last_used_at, revoked_at): Raw,
) -> Result<TokenRow, DbError> {
    let role = role.parse().map_err(|message| DbError::Corrupt {
        table: "api_tokens",
        message,
    })?;
    Ok(TokenRow {
        id,
        name,
        role,
        created_at,
        last_used_at,
        revoked_at,
    })
}

/// Create a token; returns the row and the secret (shown once, never stored).
pub async fn create(pool: &PgPool, name: &str, role: Role) -> Result<(TokenRow, String), DbError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let raw: Raw = sqlx::query_as(
        "INSERT INTO api_tokens (id, name, role, token_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, name, role, created_at, last_used_at, revoked_at",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(role.as_str())
    .bind(hash(&secret))
    .fetch_one(pool)
    .await?;
    Ok((from_raw(raw)?, secret))
}

/// Look up a presented secret; `None` when unknown or revoked.
pub async fn authenticate(pool: &PgPool, secret: &str) -> Result<Option<TokenRow>, DbError> {
    let raw: Option<Raw> = sqlx::query_as(
        "UPDATE api_tokens SET last_used_at = now()
         WHERE token_hash = $1 AND revoked_at IS NULL
         RETURNING id, name, role, created_at, last_used_at, revoked_at",
    )
    .bind(hash(secret))
    .fetch_optional(pool)
    .await?;
    raw.map(from_raw).transpose()
}

/// Whether the token `id` exists and is not revoked (open worker streams check this on each
/// heartbeat, so revoking a worker's token ends its stream).
pub async fn is_active(pool: &PgPool, id: Uuid) -> Result<bool, DbError> {
    let active: Option<bool> =
        sqlx::query_scalar("SELECT revoked_at IS NULL FROM api_tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(active == Some(true))
}

/// All tokens, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenRow>, DbError> {
    let raws: Vec<Raw> = sqlx::query_as(
        "SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await?;
    raws.into_iter().map(from_raw).collect()
}

/// Revoke a token by id; revoking twice is a no-op.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<(), DbError> {
    let done =
        sqlx::query("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::not_found(format!("token {id}")));
    }
    Ok(())
}

/// Revoke a token by id and return it (as it is now: revoked). Revoking twice keeps the first
/// revocation's time. `NotFound` for an unknown id.
pub async fn revoke_returning(pool: &PgPool, id: Uuid) -> Result<TokenRow, DbError> {
    let raw: Option<Raw> = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
         RETURNING id, name, role, created_at, last_used_at, revoked_at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    from_raw(raw.ok_or_else(|| DbError::not_found(format!("token {id}")))?)
}
