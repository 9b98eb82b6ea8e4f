//! The state directory of `caldera local`, kept between runs: the private Postgres cluster, the
//! object store and the worker's files, and the API tokens of this directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use caldera_db::PgPool;
use caldera_db::embedded::{ClusterOptions, PrivatePostgres};
use caldera_db::tokens::{self, Role};
use serde_json::json;

use super::say;

fn default_state_dir() -> PathBuf {
    if caldera_db::embedded::running_as_root() {
        // the private cluster runs as the `postgres` user, who cannot enter /root
        PathBuf::from("/var/lib/caldera/local")
    } else {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("caldera")
    }
}

/// The state directory (--state-dir, else the default), created if missing, as an absolute path.
pub(super) fn state_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let state = given.map(Path::to_owned).unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state directory {}", state.display()))?;
    let state = state.canonicalize()?;
    say(format_args!("state directory {}", state.display()));
    Ok(state)
}

/// The object store under the state directory.
pub(super) fn open_store(state: &Path) -> anyhow::Result<Arc<dyn caldera_storage::ObjectStore>> {
    Ok(Arc::new(
        caldera_storage::LocalStore::open(state.join("objects"), 1 << 30)
            .context("opening the object store")?,
    ))
}

/// Tokens of this state directory, created once and kept (mode 0600).
pub(super) async fn local_tokens(pool: &PgPool, state: &Path) -> anyhow::Result<(String, String)> {
    let path = state.join("tokens.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let (Some(a), Some(w)) = (v["admin"].as_str(), v["worker"].as_str())
            && tokens::authenticate(pool, a).await?.is_some()
            && tokens::authenticate(pool, w).await?.is_some()
        {
            return Ok((a.to_owned(), w.to_owned()));
        }
    }
    let admin = tokens::create(pool, "caldera-local", Role::Admin).await?.1;
    let worker = tokens::create(pool, "caldera-local-worker", Role::Worker)
        .await?
        .1;
    std::fs::write(&path, json!({"admin": admin, "worker": worker}).to_string())?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((admin, worker))
}

pub(super) async fn start_postgres(state: &Path) -> anyhow::Result<(PrivatePostgres, PgPool)> {
    let pg = PrivatePostgres::start(ClusterOptions {
        dir: state.join("postgres"),
        port: 0,
        ephemeral: false,
        unsafe_fast: false,
        statement_stats: false,
    })
    .await
    .context("starting the private Postgres cluster")?;
    let admin = caldera_db::connect(&pg.url("postgres"), 1).await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'caldera'")
            .fetch_optional(&admin)
            .await?;
    if exists.is_none() {
        sqlx::query("CREATE DATABASE caldera")
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let pool = caldera_db::connect(&pg.url("caldera"), 20).await?;
    caldera_db::migrate(&pool)
        .await
        .context("applying migrations")?;
    say(format_args!(
        "postgres: private cluster in {} (port {})",
        pg.dir().display(),
        pg.port()
    ));
    Ok((pg, pool))
}

/// The only worker of this state directory is ours: whatever the previous run was running died
/// with it, so it goes back to the queue now rather than after its lease expires.
pub(super) async fn forget_previous_run(pool: &PgPool) -> anyhow::Result<()> {
    caldera_db::workers::disconnect_all(pool).await?;
    let orphans = caldera_db::jobs::hand_back_all(pool, chrono::Utc::now()).await?;
    if orphans > 0 {
        say(format_args!(
            "{orphans} job(s) the previous run left running are queued again"
        ));
    }
    Ok(())
}
