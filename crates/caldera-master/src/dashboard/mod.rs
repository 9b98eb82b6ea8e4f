//! The dashboard: server-rendered HTML pages (maud) that work without JavaScript.
//!
//! | page | what it shows |
//! | --- | --- |
//! | `/` | experiments with status, toolchains, mode, progress bar, throughput and ETA |
//! | `/experiments/{name}` | counts per comparison, regressions grouped by root cause, error groups, spurious results; filters `category`, `code`, `q` (crate name), `root`, `page` |
//! | `/experiments/{name}/crates/{crate}` | both runs side by side (outcome, reason, steps, durations, peak memory) and both logs with ANSI colours, the first error only in the end log highlighted; the crate's history across experiments |
//! | `/experiments/{name}/crates/{crate}/diff` | what changed between the two logs: the divergent sections after normalisation |
//! | `/experiments/{name}/pr-comment` | the pull-request comment with a copy button |
//! | `/assets/dashboard.js` | the pages' one script (row filter, copy button) |
//! | `/workers` | workers, slots, running jobs, last heartbeat |
//! | `/queue` | queued, running and paused experiments by priority, with queued job counts |
//!
//! Every value that comes from outside (crate names, outcomes, test names, logs, toolchains) goes
//! through maud's escaping or `ansi-to-html`'s (which escapes before converting); nothing is
//! inserted raw.
//!
//! # Access
//!
//! The dashboard reads, with one exception: on the page of a regressed crate, a caller whose
//! request carries an operator or admin token (bearer header, or the `/login` cookie, which is
//! `SameSite=Strict` so other sites cannot post with it) gets a form to set or remove the crate's
//! triage mark; everyone else sees the mark and the `caldera triage` command to set it.
//! [`DashboardAuth::Open`] (the default) serves it to anyone who can
//! reach the master's HTTP port, like crater's public reports. [`DashboardAuth::Token`]
//! (`caldera master --dashboard-auth token`) requires an API token of any reading role (viewer,
//! operator or admin; not worker): sent as `Authorization: Bearer …`, or entered once at
//! `/login`, which keeps it in an `HttpOnly`, `SameSite=Strict` cookie.
//!
//! # Speed
//!
//! The experiment and crate pages read the experiment's [`Report`](caldera_report::Report)
//! from a [`cache::ReportCache`], keyed by experiment and its number of result rows (results are
//! append-only, so the count changes exactly when they do). See the cache for staleness bounds.

pub mod cache;
mod logview;
mod pages;
mod triage;
pub mod views;

#[cfg(feature = "testing")]
pub mod fixture;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use caldera_db::tokens::{self, Role};
use maud::html;
use serde::Deserialize;

use crate::AppState;

/// Who may read the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DashboardAuth {
    /// Anyone who reaches the HTTP port.
    #[default]
    Open,
    /// Callers with a token of a reading role (bearer header or the `/login` cookie).
    Token,
}

impl std::str::FromStr for DashboardAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(DashboardAuth::Open),
            "token" => Ok(DashboardAuth::Token),
            other => Err(format!(
                "unknown dashboard auth {other:?}; expected `open` or `token`"
            )),
        }
    }
}

/// Settings of the dashboard.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub auth: DashboardAuth,
    /// How the experiment reports are cached.
    pub cache: cache::CacheConfig,
    /// Throughput is measured over this window (and ETAs derived from it).
    pub throughput_window: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            auth: DashboardAuth::Open,
            cache: cache::CacheConfig::default(),
            throughput_window: Duration::from_secs(15 * 60),
        }
    }
}

/// What the dashboard's handlers share besides [`AppState`].
pub struct Dashboard {
    pub config: DashboardConfig,
    pub cache: Arc<cache::ReportCache>,
    /// Job counts per experiment with when they were read; reused for
    /// [`cache::CacheConfig::revalidate`] (counting a big experiment's jobs takes tens of ms).
    progress: std::sync::Mutex<
        std::collections::HashMap<
            uuid::Uuid,
            (std::time::Instant, caldera_db::results::ExperimentProgress),
        >,
    >,
}

impl Dashboard {
    pub fn new(config: DashboardConfig) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            cache: cache::ReportCache::new(config.cache.clone()),
            config,
            progress: Default::default(),
        })
    }

    /// The job counts of one experiment, at most [`cache::CacheConfig::revalidate`] old.
    pub async fn progress(
        &self,
        pool: &caldera_db::PgPool,
        experiment: uuid::Uuid,
    ) -> Result<caldera_db::results::ExperimentProgress, caldera_db::DbError> {
        let fresh = self.config.cache.revalidate;
        if let Some((at, p)) = self
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&experiment)
            && at.elapsed() < fresh
        {
            return Ok(p.clone());
        }
        let window = chrono::Duration::from_std(self.config.throughput_window)
            .unwrap_or(chrono::Duration::MAX);
        let p = caldera_db::results::progress(pool, &[experiment], chrono::Utc::now() - window)
            .await?
            .remove(&experiment)
            .unwrap_or_default();
        let mut map = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < fresh);
        map.insert(experiment, (std::time::Instant::now(), p.clone()));
        Ok(p)
    }
}

/// The name of the cookie holding the dashboard token.
pub const COOKIE_NAME: &str = "caldera_dashboard";

/// The dashboard's routes, to merge into the master's router.
pub fn routes(dashboard: Arc<Dashboard>) -> Router<AppState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/experiments/{name}", get(pages::experiment))
        .route("/experiments/{name}/crates/{crate}", get(pages::krate))
        .route(
            "/experiments/{name}/crates/{crate}/triage",
            axum::routing::post(triage::submit),
        )
        .route("/experiments/{name}/report/{file}", get(pages::report_file))
        .route("/experiments/{name}/crates/{crate}/diff", get(pages::diff))
        .route("/experiments/{name}/pr-comment", get(pages::pr_comment))
        .route(views::SCRIPT_PATH, get(script))
        .route("/workers", get(pages::workers))
        .route("/queue", get(pages::queue))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .layer(axum::Extension(dashboard))
        .layer(axum::middleware::from_fn(crate::edge::dashboard_headers))
}

/// The dashboard's script (static; no token needed: it holds no data).
async fn script() -> impl IntoResponse {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        views::script(),
    )
}

/// An error page.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn not_found(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<caldera_db::DbError> for PageError {
    fn from(e: caldera_db::DbError) -> Self {
        match e {
            caldera_db::DbError::NotFound { what } => {
                PageError::not_found(format!("{what} not found"))
            }
            other => {
                tracing::error!(error = %other, "database error while rendering a dashboard page");
                PageError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the database is unavailable; retry later".into(),
                }
            }
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("error").to_owned();
        let page = views::layout(
            &title,
            None,
            html! {
                h1 { (self.status.as_u16()) " " (title) }
                p.error { (self.message) }
                p { a href="/" { "Back to the experiments" } }
            },
        );
        (self.status, page).into_response()
    }
}

/// A caller allowed to read the dashboard (always, when it is open).
pub struct Viewer;

fn bearer(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(AUTHORIZATION)?.to_str().ok()?;
    Some(h.strip_prefix("Bearer ")?.trim().to_owned()).filter(|s| !s.is_empty())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

async fn token_can_read(state: &AppState, secret: &str) -> Result<bool, PageError> {
    Ok(tokens::authenticate(&state.pool, secret)
        .await?
        .is_some_and(|t| t.role != Role::Worker && t.role.can_read()))
}

/// The token name of a caller who may change things (an operator or admin token, sent as a
/// bearer header or kept in the `/login` cookie), whatever the dashboard's access mode.
pub(crate) async fn operator(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<String>, PageError> {
    let Some(secret) = bearer(headers).or_else(|| cookie(headers, COOKIE_NAME)) else {
        return Ok(None);
    };
    Ok(tokens::authenticate(&state.pool, &secret)
        .await?
        .filter(|t| t.role.can_mutate())
        .map(|t| t.name))
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let dashboard = parts
            .extensions
            .get::<Arc<Dashboard>>()
            .cloned()
            .ok_or_else(|| PageError::not_found("no dashboard").into_response())?;
        if dashboard.config.auth == DashboardAuth::Open {
            return Ok(Viewer);
        }
        let secret = bearer(&parts.headers).or_else(|| cookie(&parts.headers, COOKIE_NAME));
        if let Some(secret) = secret
            && token_can_read(state, &secret)
                .await
                .map_err(IntoResponse::into_response)?
        {
            return Ok(Viewer);
        }
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = format!("/login?next={}", views::query_encode(next));
        Err((
            StatusCode::SEE_OTHER,
            [(
                LOCATION,
                HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/login")),
            )],
        )
            .into_response())
    }
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

/// Only same-site paths: `/x`, never `//host` or `/\host`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n,
        _ => "/",
    }
}

async fn login_form(Query(q): Query<LoginQuery>) -> maud::Markup {
    let next = safe_next(q.next.as_deref());
    views::layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in to the dashboard" }
            @if q.error.is_some() {
                p.error { "That token is unknown, revoked, or cannot read (worker tokens cannot)." }
            }
            p { "This dashboard needs an API token of a reading role (viewer, operator or admin). Create one with "
                code { "caldera token create --role viewer" } "." }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "Token " input type="password" name="token" autocomplete="off" required; }
                " "
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let token = form.token.trim();
    let ok = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        && match token_can_read(&state, token).await {
            Ok(ok) => ok,
            Err(e) => return e.into_response(),
        };
    if !ok {
        let location = format!("/login?error=1&next={}", views::query_encode(&next));
        return (
            StatusCode::SEE_OTHER,
            [(
                LOCATION,
                HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/login")),
            )],
        )
            .into_response();
    }
    let cookie =
        format!("{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
    match (HeaderValue::from_str(&cookie), HeaderValue::from_str(&next)) {
        (Ok(cookie), Ok(next)) => (
            StatusCode::SEE_OTHER,
            [(SET_COOKIE, cookie), (LOCATION, next)],
        )
            .into_response(),
        _ => {
            PageError::bad_request("token or next path is not a valid header value").into_response()
        }
    }
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (
                SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("static cookie"),
            ),
            (LOCATION, HeaderValue::from_static("/")),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_paths_stay_on_the_site() {
        assert_eq!(safe_next(Some("/experiments/x?q=1")), "/experiments/x?q=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn cookies_and_bearer_are_read() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; caldera_dashboard=s3cret; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE_NAME).as_deref(), Some("s3cret"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer  tok "));
        assert_eq!(bearer(&h).as_deref(), Some("tok"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn auth_modes_parse() {
        assert_eq!("open".parse::<DashboardAuth>(), Ok(DashboardAuth::Open));
        assert_eq!("token".parse::<DashboardAuth>(), Ok(DashboardAuth::Token));
        assert!("none".parse::<DashboardAuth>().is_err());
    }
}
