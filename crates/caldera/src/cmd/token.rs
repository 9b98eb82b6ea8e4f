use anyhow::Context;
use caldera_db::tokens::{self, Role};
use clap::{Args, Subcommand};

use super::DbArgs;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List(ListArgs),
    /// Revoke a token by id.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Role: admin, operator (create and control experiments), viewer (read) or worker (worker agents).
    #[arg(long, env = "CALDERA_TOKEN_ROLE", value_parser = ["admin", "operator", "viewer", "worker"])]
    pub role: String,
    /// A name to recognise the token by.
    #[arg(long, env = "CALDERA_TOKEN_NAME", default_value = "cli")]
    pub name: String,
    /// Print only the secret (for scripts).
    #[arg(long, env = "CALDERA_QUIET")]
    pub quiet: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long, env = "CALDERA_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Token id (see `caldera token list`).
    pub id: uuid::Uuid,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => {
            let pool = args.db.connect().await?;
            let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
            let (row, secret) = tokens::create(&pool, &args.name, role)
                .await
                .context("creating the token")?;
            if args.quiet {
                println!("{secret}");
            } else {
                println!("created {} token {:?} (id {})", row.role, row.name, row.id);
                println!("secret (shown only now): {secret}");
            }
        }
        TokenCommand::List(args) => {
            let pool = args.db.connect().await?;
            let rows = tokens::list(&pool).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<36}  {:<8}  {:<20}  {:<8}  created",
                    "id", "role", "name", "state"
                );
                for r in rows {
                    let state = if r.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<36}  {:<8}  {:<20}  {:<8}  {}",
                        r.id,
                        // padded: `Role`'s Display ignores the width
                        r.role.to_string(),
                        r.name,
                        state,
                        r.created_at.format("%Y-%m-%d %H:%M")
                    );
                }
            }
        }
        TokenCommand::Revoke(args) => {
            let pool = args.db.connect().await?;
            tokens::revoke(&pool, args.id).await?;
            println!("revoked {}", args.id);
        }
    }
    Ok(())
}
