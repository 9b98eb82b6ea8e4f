pub mod cert;
pub mod crate_list;
pub mod experiment;
pub mod local;
pub mod master;
pub mod migrate;
pub mod report;
mod storage_args;
pub mod token;
pub mod triage;
pub mod worker;

use anyhow::Context;
use clap::Args;

/// Ends the program with this exit status and no further message (the command printed what it
/// had to say): `caldera experiment watch --fail-on-regression` found regressions (1), or was
/// interrupted (130).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// How to reach Postgres.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres connection URL (`postgres://user:password@host:port/database`). `DATABASE_URL` is
    /// honoured when this is not set.
    #[arg(long, env = "CALDERA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Most connections in the pool (`caldera master` also holds two of its own, for claims and
    /// for results).
    #[arg(long, env = "CALDERA_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
}

impl DbArgs {
    pub fn url(&self) -> anyhow::Result<String> {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .context(
                "no database: pass --database-url or set CALDERA_DATABASE_URL (or DATABASE_URL)",
            )
    }

    pub async fn connect(&self) -> anyhow::Result<caldera_db::PgPool> {
        let url = self.url()?;
        caldera_db::connect(&url, self.db_max_connections)
            .await
            .with_context(|| format!("connecting to Postgres at {}", redact(&url)))
    }
}

/// Hide the password of a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
