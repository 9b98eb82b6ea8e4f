//! `caldera triage`: mark regressions (expected, known issue, ignore) through a running master.
//! A mark follows the crate and its cause into later experiments until the cause changes.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Client, ServerArgs, print_json, segment};

#[derive(Debug, Args)]
pub struct TriageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: TriageCommand,
}

#[derive(Debug, Subcommand)]
pub enum TriageCommand {
    /// Mark a crate's regression in an experiment; the server computes its cause (error codes,
    /// failed tests…) and the mark applies wherever the crate regresses with that cause.
    Mark(MarkArgs),
    /// Remove the mark that applies to a crate's regression in an experiment.
    Unmark(TargetArgs),
    /// List marks with their history (or, with --experiment, that experiment's regressions with
    /// their causes and marks).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The experiment.
    pub experiment: String,
    /// The crate: a registry name (`serde`), or the crate as written in a list or as printed
    /// (`serde@1.0.0`, `reg:serde@1.0.0`, `git:URL#REV`, `path:/DIR`, `local:/DIR`).
    #[arg(name = "CRATE")]
    pub krate: String,
}

#[derive(Debug, Args)]
pub struct MarkArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// What the regression is.
    #[arg(long, env = "CALDERA_TRIAGE_KIND", value_parser = ["expected", "known-issue", "ignore"])]
    pub kind: String,
    /// An http(s) URL (the issue); required for `known-issue`.
    #[arg(long, env = "CALDERA_TRIAGE_LINK")]
    pub link: Option<String>,
    /// A note (at most 2000 characters).
    #[arg(long, env = "CALDERA_TRIAGE_NOTE")]
    pub note: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the marks of this crate (registry name, `git:URL` or `local:/DIR`).
    #[arg(
        long = "crate",
        env = "CALDERA_TRIAGE_CRATE",
        conflicts_with = "experiment"
    )]
    pub krate: Option<String>,
    /// Instead: this experiment's regressions, each with its cause and the mark that applies.
    #[arg(long, env = "CALDERA_TRIAGE_EXPERIMENT")]
    pub experiment: Option<String>,
}

fn path(t: &TargetArgs) -> String {
    format!(
        "/experiments/{}/triage/{}",
        segment(&t.experiment),
        segment(&t.krate)
    )
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// `known-issue https://… "note" (by alice, 2026-…)`
fn describe(m: &Value) -> String {
    let mut out = s(&m["kind"]).to_owned();
    if let Some(link) = m["link"].as_str() {
        out.push(' ');
        out.push_str(link);
    }
    if !s(&m["note"]).is_empty() {
        out.push_str(&format!(" {:?}", s(&m["note"])));
    }
    out.push_str(&format!(
        " (by {}, {})",
        s(&m["updated_by"]),
        s(&m["updated_at"])
    ));
    out
}

pub async fn run(args: TriageArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let json_out = args.server.json;
    match args.command {
        TriageCommand::Mark(m) => mark(&client, &m, json_out).await,
        TriageCommand::Unmark(t) => unmark(&client, &t, json_out).await,
        TriageCommand::List(l) => match &l.experiment {
            Some(e) => list_experiment(&client, e, json_out).await,
            None => list_marks(&client, l.krate.as_deref(), json_out).await,
        },
    }
}

/// `caldera triage mark`: prints the mark with the cause the server computed.
async fn mark(client: &Client, m: &MarkArgs, json_out: bool) -> anyhow::Result<()> {
    let mut body = json!({"kind": m.kind});
    if let Some(link) = &m.link {
        body["link"] = json!(link);
    }
    if let Some(note) = &m.note {
        body["note"] = json!(note);
    }
    let v = client
        .call(Method::PUT, &path(&m.target), Some(body))
        .await?;
    if json_out {
        print_json(&v);
    } else {
        println!(
            "marked {} ({}): {}",
            s(&v["crate_name"]),
            s(&v["cause"]),
            describe(&v)
        );
    }
    Ok(())
}

/// `caldera triage unmark`.
async fn unmark(client: &Client, t: &TargetArgs, json_out: bool) -> anyhow::Result<()> {
    client.call(Method::DELETE, &path(t), None).await?;
    if !json_out {
        println!(
            "removed the mark of {} in experiment {}",
            t.krate, t.experiment
        );
    }
    Ok(())
}

/// The experiment's regressions, each with its cause and the mark that applies.
async fn list_experiment(client: &Client, experiment: &str, json_out: bool) -> anyhow::Result<()> {
    let v = client
        .call(
            Method::GET,
            &format!("/experiments/{}/triage", segment(experiment)),
            None,
        )
        .await?;
    if json_out {
        print_json(&v);
    } else {
        for r in v["regressions"].as_array().into_iter().flatten() {
            let mark = if r["mark"].is_null() {
                "not triaged".to_owned()
            } else {
                describe(&r["mark"])
            };
            println!("{}  {}  {}", s(&r["crate"]), s(&r["cause"]), mark);
        }
    }
    Ok(())
}

/// The marks (of one crate, with `krate`), each with its history.
async fn list_marks(client: &Client, krate: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let query = krate
        .map(|k| format!("?crate={}", segment(k)))
        .unwrap_or_default();
    let v = client
        .call(Method::GET, &format!("/triage{query}"), None)
        .await?;
    if json_out {
        print_json(&v);
    } else {
        for m in v["marks"].as_array().into_iter().flatten() {
            println!(
                "{}  {}  {}",
                s(&m["crate_name"]),
                s(&m["cause"]),
                describe(m)
            );
            for h in m["history"].as_array().into_iter().flatten() {
                println!(
                    "    {} {} by {} on {}",
                    s(&h["at"]),
                    s(&h["action"]),
                    s(&h["actor"]),
                    s(&h["experiment"])
                );
            }
        }
    }
    Ok(())
}
