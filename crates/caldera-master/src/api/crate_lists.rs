//! `/api/v1/crate-lists`: named, reusable crate selections.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use caldera_core::crates::CrateSpec;
use caldera_db::crate_lists::{self, CrateList, CrateListSummary};
use serde::Deserialize;
use utoipa::ToSchema;

use super::parse_body;
use crate::AppState;
use crate::auth::{Reader, Writer};
use crate::error::{ApiError, ErrorBody};

/// Most entries a crate list may hold.
pub const MAX_LIST_LEN: usize = 100_000;

/// A new crate list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCrateList {
    /// Slug: lowercase letters, digits and `-`, 1–64 characters, starting with a letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    pub name: String,
    /// At most 4096 bytes.
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    /// Crate specs: `name`, `name@version`, `git:URL#rev` or `path:/abs/dir`; 1 to 100,000, no
    /// duplicates.
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 100_000)]
    pub crates: Vec<CrateSpec>,
}

/// Is `name` a slug (`^[a-z0-9][a-z0-9-]{0,63}$`)?
pub(crate) fn is_slug(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// A crate list with its entries.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CrateListView {
    pub name: String,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[schema(value_type = Vec<String>)]
    pub crates: Vec<CrateSpec>,
}

impl From<CrateList> for CrateListView {
    fn from(l: CrateList) -> Self {
        CrateListView {
            name: l.name,
            description: l.description,
            created_at: l.created_at,
            crates: l.crates,
        }
    }
}

/// A crate list without its entries.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CrateListSummaryView {
    pub name: String,
    pub description: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// number of crates
    pub len: i64,
}

impl From<CrateListSummary> for CrateListSummaryView {
    fn from(s: CrateListSummary) -> Self {
        CrateListSummaryView {
            name: s.name,
            description: s.description,
            created_at: s.created_at,
            len: s.len,
        }
    }
}

/// Create a crate list.
#[utoipa::path(post, path = "/api/v1/crate-lists", tag = "crate-lists", operation_id = "create_crate_list",
    request_body = NewCrateList,
    responses((status = 201, body = CrateListView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Writer(caller): Writer,
    body: Bytes,
) -> Result<(StatusCode, Json<CrateListView>), ApiError> {
    let new: NewCrateList = parse_body(&body)?;
    if !is_slug(&new.name) {
        return Err(ApiError::invalid(
            "name",
            format!(
                "invalid crate list name {:?}: use 1-64 lowercase letters, digits and '-', not starting with '-'",
                new.name
            ),
        ));
    }
    if new.crates.is_empty() || new.crates.len() > MAX_LIST_LEN {
        return Err(ApiError::invalid(
            "crates",
            format!(
                "a crate list holds 1 to {MAX_LIST_LEN} crates, got {}",
                new.crates.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    if let Some((i, dup)) = new
        .crates
        .iter()
        .enumerate()
        .find(|(_, c)| !seen.insert(c.to_string()))
    {
        return Err(ApiError::invalid(
            format!("crates[{i}]"),
            format!("duplicate crate {dup}"),
        ));
    }
    if new.description.len() > 4096 {
        return Err(ApiError::invalid(
            "description",
            "description is longer than 4096 bytes",
        ));
    }
    // every registry entry must name a crate (and version) the live index lists
    crate::resolve::check_specs(state.index.as_deref(), &new.crates).await?;
    let list = crate_lists::create(&state.pool, &new.name, &new.description, &new.crates).await?;
    tracing::info!(list = %list.name, len = list.crates.len(), token = %caller.name, "crate list created");
    Ok((StatusCode::CREATED, Json(list.into())))
}

/// All crate lists.
#[utoipa::path(get, path = "/api/v1/crate-lists", tag = "crate-lists", operation_id = "list_crate_lists",
    responses((status = 200, body = Vec<CrateListSummaryView>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Reader,
) -> Result<Json<Vec<CrateListSummaryView>>, ApiError> {
    Ok(Json(
        crate_lists::list(&state.pool)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// One crate list with its entries.
#[utoipa::path(get, path = "/api/v1/crate-lists/{name}", tag = "crate-lists", operation_id = "get_crate_list",
    params(("name" = String, Path, description = "the crate list's name")),
    responses((status = 200, body = CrateListView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Reader,
    Path(name): Path<String>,
) -> Result<Json<CrateListView>, ApiError> {
    Ok(Json(crate_lists::get(&state.pool, &name).await?.into()))
}

/// Delete a crate list no queued experiment refers to.
#[utoipa::path(delete, path = "/api/v1/crate-lists/{name}", tag = "crate-lists", operation_id = "delete_crate_list",
    params(("name" = String, Path, description = "the crate list's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Writer(caller): Writer,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate_lists::delete(&state.pool, &name).await?;
    tracing::info!(list = %name, token = %caller.name, "crate list deleted");
    Ok(StatusCode::NO_CONTENT)
}
