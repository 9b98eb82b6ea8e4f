//! `/api/v1/tokens`: list and revoke API and worker tokens (admin only). Tokens are created with
//! `caldera token create`, on the database side, which prints the secret once; no endpoint ever
//! shows a secret or its hash.
//!
//! Revoking takes effect at once for new requests and connections: the HTTP API answers the
//! revoked token 401, and a worker presenting it cannot open a stream. A worker whose stream is
//! already open is stopped at its next heartbeat, when the master checks its token again (a few
//! seconds); the jobs it was running come back to the queue when their leases expire, and any
//! result it still sends is refused with the stream. A connection is not cut at the moment of the
//! revocation because the master does not keep a map of tokens to streams, and the heartbeat
//! bounds the delay anyway.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use caldera_db::tokens::{self, Role, TokenRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};

/// What a token may do.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleView {
    /// read experiments, reports and the farm
    Viewer,
    /// open a worker's stream; nothing on the HTTP API
    Worker,
    /// also create, edit and control experiments, crate lists and triage marks
    Operator,
    /// also list and revoke tokens
    Admin,
}

impl From<Role> for RoleView {
    fn from(r: Role) -> Self {
        match r {
            Role::Viewer => RoleView::Viewer,
            Role::Worker => RoleView::Worker,
            Role::Operator => RoleView::Operator,
            Role::Admin => RoleView::Admin,
        }
    }
}

/// A token, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    /// The name given at creation (`caldera token create --name`); not unique.
    pub name: String,
    pub role: RoleView,
    pub created_at: DateTime<Utc>,
    /// When it last authenticated an HTTP request or a worker's connection.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; `null` while it is active.
    pub revoked_at: Option<DateTime<Utc>>,
    /// `revoked_at` is `null`.
    pub active: bool,
}

impl From<TokenRow> for TokenView {
    fn from(t: TokenRow) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            role: t.role.into(),
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            active: t.revoked_at.is_none(),
            revoked_at: t.revoked_at,
        }
    }
}

/// Every token, revoked ones too, newest first.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "list_tokens",
    responses((status = 200, body = Vec<TokenView>)),
    security(("bearer" = ["admin"])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Admin,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let rows = tokens::list(&state.pool).await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// Revoke a token: from now on it authenticates nothing. A worker connected with it is stopped at
/// its next heartbeat and its running jobs go back to the queue when their leases expire.
/// Revoking a revoked token changes nothing and answers the same. The token authenticating this
/// request cannot revoke itself (use another admin token, or `caldera token revoke`).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "revoke_token",
    params(("id" = Uuid, Path, description = "the token's id (`GET /api/v1/tokens`, `caldera token list`)")),
    responses(
        (status = 200, description = "revoked (now or before)", body = TokenView),
        (status = 400, description = "`id` is not a UUID (`invalid-field`), or the path holds a NUL character (`invalid-path`)", body = ErrorBody),
        (status = 404, description = "no token has this id (`not-found`, `field`: `id`)", body = ErrorBody),
        (status = 409, description = "this is the token authenticating the request (`conflict`, `field`: `id`)", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])))]
pub async fn revoke(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request("id", format!("{id:?} is not a token id (a UUID)")))?;
    if id == caller.id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "a token cannot revoke itself: revoke it with another admin token or `caldera token revoke`",
        )
        .with_field("id"));
    }
    let row =
        tokens::revoke_returning(&state.pool, id)
            .await
            .map_err(|e| match ApiError::from(e) {
                e if e.status == StatusCode::NOT_FOUND => e.with_field("id"),
                e => e,
            })?;
    tracing::info!(token = %row.name, id = %row.id, role = %row.role, by = %caller.name, "token revoked");
    Ok(Json(row.into()))
}
