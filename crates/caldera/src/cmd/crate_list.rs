use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::client::{Client, ServerArgs, print_json, segment};

#[derive(Debug, Args)]
pub struct CrateListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: CrateListCommand,
}

#[derive(Debug, Subcommand)]
pub enum CrateListCommand {
    /// Create a crate list from --crates and/or --file (one crate spec per line, `#` comments).
    Create(CreateArgs),
    /// List crate lists.
    List,
    /// Show a crate list's entries.
    Show(NameArg),
    /// Delete a crate list (refused while a queued experiment uses it).
    Delete(NameArg),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The list's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The list's name: lowercase letters, digits and `-`, 1–64 characters.
    pub name: String,
    /// Comma-separated crate specs: `name`, `name@version`, `git:URL#rev`, `path:/dir`.
    #[arg(long, env = "CALDERA_CRATE_LIST_CRATES", value_delimiter = ',')]
    pub crates: Vec<String>,
    /// A file with one crate spec per line (`-` for stdin).
    #[arg(long, env = "CALDERA_CRATE_LIST_FILE")]
    pub file: Option<String>,
    /// A description.
    #[arg(long, env = "CALDERA_CRATE_LIST_DESCRIPTION", default_value = "")]
    pub description: String,
}

pub async fn run(args: CrateListArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let json_out = args.server.json;
    match args.command {
        CrateListCommand::Create(c) => create(&client, c, json_out).await,
        CrateListCommand::List => list(&client, json_out).await,
        CrateListCommand::Show(n) => show(&client, &n.name, json_out).await,
        CrateListCommand::Delete(n) => delete(&client, &n.name, json_out).await,
    }
}

/// The crate specs of --crates and --file, in that order (blank lines and `#` comments dropped).
fn crate_specs(c: &CreateArgs) -> anyhow::Result<Vec<String>> {
    let mut crates: Vec<String> = c
        .crates
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(file) = &c.file {
        let text = if file == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        };
        crates.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    Ok(crates)
}

/// `caldera crate-list create`: prints the list's name and size.
async fn create(client: &Client, c: CreateArgs, json_out: bool) -> anyhow::Result<()> {
    let crates = crate_specs(&c)?;
    let body = json!({"name": c.name, "description": c.description, "crates": crates});
    let v = client
        .call(Method::POST, "/crate-lists", Some(body))
        .await?;
    if json_out {
        print_json(&v);
    } else {
        println!(
            "created crate list {} with {} crates",
            c.name,
            v["crates"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(())
}

/// `caldera crate-list list`: a table of the lists.
async fn list(client: &Client, json_out: bool) -> anyhow::Result<()> {
    let v = client.call(Method::GET, "/crate-lists", None).await?;
    if json_out {
        print_json(&v);
    } else {
        println!("{:<32}  {:>8}  description", "name", "crates");
        for l in v.as_array().into_iter().flatten() {
            println!(
                "{:<32}  {:>8}  {}",
                l["name"].as_str().unwrap_or("?"),
                l["len"],
                l["description"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `caldera crate-list show`: one crate spec a line.
async fn show(client: &Client, name: &str, json_out: bool) -> anyhow::Result<()> {
    let v = client
        .call(
            Method::GET,
            &format!("/crate-lists/{}", segment(name)),
            None,
        )
        .await?;
    if json_out {
        print_json(&v);
    } else {
        for c in v["crates"].as_array().into_iter().flatten() {
            println!(
                "{}",
                c.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| c.to_string())
            );
        }
    }
    Ok(())
}

/// `caldera crate-list delete`.
async fn delete(client: &Client, name: &str, json_out: bool) -> anyhow::Result<()> {
    client
        .call(
            Method::DELETE,
            &format!("/crate-lists/{}", segment(name)),
            None,
        )
        .await?;
    if !json_out {
        println!("deleted crate list {name}");
    }
    Ok(())
}
