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
            let before = caldera_db::applied_migrations(&pool)
                .await
                .context("reading the applied migrations")?;
            caldera_db::migrate(&pool)
                .await
                .context("applying migrations")?;
            let after = caldera_db::applied_migrations(&pool)
                .await
                .context("reading the applied migrations")?;
            match after - before {
                0 => println!("database is up to date ({after} migrations applied before)"),
                1 => println!("applied 1 migration; the database is up to date ({after} in all)"),
                n => {
                    println!("applied {n} migrations; the database is up to date ({after} in all)")
                }
            }
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
