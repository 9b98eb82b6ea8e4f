use anyhow::Context;
use clap::Args;

use super::DbArgs;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Revert migrations down to this version instead of applying them (`0` reverts everything).
    #[arg(long, env = "CALDERA_MIGRATE_DOWN_TO", value_name = "VERSION")]
    pub down_to: Option<i64>,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let pool = args.db.connect().await?;
    match args.down_to {
        None => {
            caldera_db::migrate(&pool)
                .await
                .context("applying migrations")?;
            println!("database is up to date");
        }
        Some(v) => {
            caldera_db::migrate_down(&pool, v)
                .await
                .context("reverting migrations")?;
            println!("reverted migrations above version {v}");
        }
    }
    Ok(())
}
