//! Bearer-token authentication for the HTTP API. Roles: viewer reads; operator and admin also
//! mutate; worker tokens are for the worker stream only and can do nothing here.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use caldera_db::tokens::{self, Role, TokenRow};

use crate::AppState;
use crate::error::ApiError;

/// A caller allowed to read.
#[derive(Debug, Clone)]
pub struct Reader(pub TokenRow);

/// A caller allowed to change experiments and crate lists.
#[derive(Debug, Clone)]
pub struct Writer(pub TokenRow);

async fn authenticate(parts: &Parts, state: &AppState) -> Result<TokenRow, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing bearer token: send `Authorization: Bearer <token>` (create one with `caldera token create`)")
    })?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        // the scheme is case-insensitive (RFC 9110 §11.1)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("malformed Authorization header: expected `Bearer <token>`")
        })?;
    let token = tokens::authenticate(&state.pool, secret)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
    if token.role == Role::Worker {
        return Err(ApiError::forbidden(
            "a worker token cannot use the HTTP API; use an operator, admin or viewer token",
        ));
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = authenticate(parts, state).await?;
        debug_assert!(token.role.can_read());
        Ok(Reader(token))
    }
}

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = authenticate(parts, state).await?;
        if !token.role.can_mutate() {
            return Err(ApiError::forbidden(format!(
                "token {:?} has role {}; this request needs an operator or admin token",
                token.name, token.role
            )));
        }
        Ok(Writer(token))
    }
}

/// A caller allowed to administer the installation (tokens): an admin token.
#[derive(Debug, Clone)]
pub struct Admin(pub TokenRow);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = authenticate(parts, state).await?;
        if token.role != Role::Admin {
            return Err(ApiError::forbidden(format!(
                "token {:?} has role {}; this request needs an admin token",
                token.name, token.role
            )));
        }
        Ok(Admin(token))
    }
}
