//! caldera's Postgres layer. Only the master talks to Postgres.
//!
//! * [`MIGRATOR`] embeds `migrations/` (reversible `NNNN_name.{up,down}.sql`).
//! * One module per aggregate: [`experiments`], [`crate_lists`], [`tokens`], [`triage`],
//!   [`toolchains`] (the build each side of an experiment is pinned to);
//!   [`confirmations`] reads back the runs that confirm regressions and fixes; [`estimate`]
//!   what the cost estimator reads (history, jobs, slots) and the estimate kept from the start.
//! * [`embedded`] starts a private Postgres cluster from the system binaries (tests, `caldera local`).
//!
//! Queries are plain `sqlx::query*` calls checked by the integration tests against a real
//! Postgres (see `tests/`), not the compile-time macros: this keeps builds free of a database
//! or a committed `.sqlx/` cache; every query in this crate is exercised by a test.

pub mod cache;
pub mod confirmations;
pub mod crate_lists;
pub mod embedded;
pub mod estimate;
pub mod experiments;
pub mod flakes;
pub mod history;
pub mod jobs;
pub mod logs;
pub mod results;
pub mod tokens;
pub mod toolchains;
pub mod triage;
pub mod workers;

#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

pub use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Errors of the database layer. Callers map them to HTTP statuses / gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The named thing does not exist.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The operation conflicts with the current state (duplicate name, wrong status, …).
    #[error("{message}")]
    Conflict {
        field: Option<&'static str>,
        message: String,
    },
    /// The input is invalid (a semantic check that needs the database, e.g. an unknown crate list).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Stored data could not be decoded (a bug or a manual edit of the database).
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Postgres refused text because of its characters (`character_not_in_repertoire`, e.g. a NUL;
    /// `untranslatable_character`): the input's fault, not an outage.
    pub fn is_unstorable_text(&self) -> bool {
        let DbError::Sqlx(e) = self else {
            return false;
        };
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|code| code == "22021" || code == "22P05")
    }

    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        DbError::NotFound { what: what.into() }
    }
    pub(crate) fn conflict(field: Option<&'static str>, message: impl Into<String>) -> Self {
        DbError::Conflict {
            field,
            message: message.into(),
        }
    }
}

/// Is this error a unique-constraint violation (SQLSTATE 23505)?
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// How long opening a connection may take (the pool's acquire timeout, and [`OwnConnection`]'s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect a pool to `url` (a `postgres://` URL).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// A connection of one long-running task's own, outside the pool, opened on first use and again
/// after [`OwnConnection::reset`] (call it after any error: the connection may be dead, e.g. after a
/// Postgres restart).
///
/// For a task that runs one short statement after another (the dispatcher's claims, the result
/// writer): a pooled query costs two more round trips than the statement (sqlx pings a connection
/// when it leaves the pool and when it comes back), and session settings can be made once, which
/// on a pooled connection would leak to its next user.
pub struct OwnConnection {
    pool: PgPool,
    /// `application_name` of the connection (shows in `pg_stat_activity`)
    name: &'static str,
    /// session settings made once after connecting: (name, value)
    settings: &'static [(&'static str, &'static str)],
    conn: Option<sqlx::PgConnection>,
}

impl OwnConnection {
    /// A connection to `pool`'s database, named `name`, with `settings` made for the session.
    pub fn new(
        pool: &PgPool,
        name: &'static str,
        settings: &'static [(&'static str, &'static str)],
    ) -> OwnConnection {
        OwnConnection {
            pool: pool.clone(),
            name,
            settings,
            conn: None,
        }
    }

    /// The connection, opened (and set up) if there is none.
    pub async fn get(&mut self) -> Result<&mut sqlx::PgConnection, DbError> {
        if self.conn.is_none() {
            use sqlx::ConnectOptions;
            let options = self
                .pool
                .connect_options()
                .as_ref()
                .clone()
                .application_name(self.name);
            // as long as the pool waits for a connection
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            for (name, value) in self.settings {
                sqlx::query("SELECT set_config($1, $2, false)")
                    .bind(name)
                    .bind(value)
                    .execute(&mut conn)
                    .await?;
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Drop the connection (after an error); the next [`get`](Self::get) opens a new one.
    pub fn reset(&mut self) {
        self.conn = None;
    }
}

/// Apply all pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// How many migrations the database has applied (0 for an empty database).
pub async fn applied_migrations(pool: &PgPool) -> Result<i64, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}

/// Revert applied migrations down to (but not including) `target` version; `0` reverts all.
pub async fn migrate_down(pool: &PgPool, target: i64) -> Result<(), DbError> {
    MIGRATOR.undo(pool, target).await?;
    Ok(())
}

/// Check the database answers (used by `/healthz`).
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}
