//! `caldera experiment retry`: the follow-up experiment of a finished one, over its retry list.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{ApiError, Client, print_json, segment};

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The experiment whose report names the crates to retry.
    pub name: String,
    /// Only its regressions (default: the whole retry list: regressions, diagnostics changes,
    /// spurious results, flaky crates and errors).
    #[arg(long, conflicts_with = "spurious")]
    pub regressed: bool,
    /// Only its spurious results (spurious-regressed, spurious-fixed, spurious on both sides),
    /// flaky crates and errors.
    #[arg(long)]
    pub spurious: bool,
    /// The new experiment's name [default: NAME-retry, or NAME-retry-2, … when taken].
    #[arg(long = "name", value_name = "NEW")]
    pub new_name: Option<String>,
    /// Start the new experiment too.
    #[arg(long)]
    pub start: bool,
}

/// The fields of an experiment's view that are not part of its spec.
const VIEW_ONLY: &[&str] = &[
    "id",
    "status",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "progress",
];

/// Which crates of the report to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    All,
    Regressed,
    Spurious,
}

/// The crate ids of `report` (`results.json`) to retry, in the report's order, each once.
pub fn crates_to_retry(report: &Value, which: Which) -> Vec<String> {
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let spurious = &report["spurious"];
    let regressed = || list(&report["regressions"]);
    let flukes = || {
        let mut out = Vec::new();
        for kind in ["spurious-regressed", "spurious-fixed", "spurious"] {
            out.extend(list(&spurious[kind]["crates"]));
        }
        out.extend(list(&report["flaky"]));
        out.extend(list(&spurious["error"]["crates"]));
        out
    };
    let mut ids = match which {
        Which::Regressed => regressed(),
        Which::Spurious => flukes(),
        Which::All => {
            let mut all = regressed();
            all.extend(list(&report["diagnostics_changes"]));
            all.extend(flukes());
            all
        }
    };
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    ids
}

/// The spec of the follow-up experiment: `view`'s spec under `name`, over `crates`.
pub fn follow_up(view: &Value, name: &str, crates: &[String]) -> Value {
    let mut body: Map<String, Value> = view.as_object().cloned().unwrap_or_default();
    for k in VIEW_ONLY {
        body.remove(*k);
    }
    body.insert("name".into(), name.into());
    // the ids as printed: a crate selection reads them as the exact crates they name
    body.insert("crates".into(), json!({"kind": "list", "crates": crates}));
    Value::Object(body)
}

/// `NAME-retry`, shortened to fit the 64 characters of a name, with `-N` from the second try.
pub fn default_name(base: &str, attempt: u32) -> String {
    let suffix = match attempt {
        1 => "-retry".to_owned(),
        n => format!("-retry-{n}"),
    };
    let keep = 64usize.saturating_sub(suffix.len()).min(base.len());
    format!("{}{suffix}", base[..keep].trim_end_matches('-'))
}

pub async fn run(client: &Client, args: RetryArgs, json_out: bool) -> anyhow::Result<()> {
    let view = client
        .call(
            Method::GET,
            &format!("/experiments/{}", segment(&args.name)),
            None,
        )
        .await?;
    let resp = client
        .get_raw(&format!(
            "/experiments/{}/report/results.json",
            segment(&args.name)
        ))
        .await
        .with_context(|| format!("reading the report of {}", args.name))?;
    let report: Value = serde_json::from_slice(&resp.bytes().await?)
        .with_context(|| format!("the report of {} is not JSON", args.name))?;
    let which = match (args.regressed, args.spurious) {
        (true, _) => Which::Regressed,
        (_, true) => Which::Spurious,
        _ => Which::All,
    };
    let crates = crates_to_retry(&report, which);
    if crates.is_empty() {
        let what = match which {
            Which::All => "nothing to retry (no regressions, spurious results or errors)",
            Which::Regressed => "no regressions to retry",
            Which::Spurious => "no spurious results, flaky crates or errors to retry",
        };
        bail!("experiment {} has {what}; no experiment created", args.name);
    }
    let created = create(client, &view, &args, &crates).await?;
    let new = created["name"].as_str().unwrap_or("?").to_owned();
    let started = if args.start {
        let path = format!("/experiments/{}/start", segment(&new));
        Some(client.call(Method::POST, &path, None).await?)
    } else {
        None
    };
    if json_out {
        print_json(started.as_ref().unwrap_or(&created));
    } else {
        println!(
            "created experiment {new} over {} crate{} of {}'s report",
            crates.len(),
            if crates.len() == 1 { "" } else { "s" },
            args.name
        );
        match started {
            Some(_) => println!("started {new}; follow it with `caldera experiment watch {new}`"),
            None => println!("start it with `caldera experiment start {new}`"),
        }
    }
    Ok(())
}

fn name_taken(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiError>().is_some_and(|a| {
        a.status == reqwest::StatusCode::CONFLICT && a.field.as_deref() == Some("name")
    })
}

/// Creates the follow-up experiment; without `--name`, tries `NAME-retry`, `NAME-retry-2`, …
/// while the name is taken.
async fn create(
    client: &Client,
    view: &Value,
    args: &RetryArgs,
    crates: &[String],
) -> anyhow::Result<Value> {
    if let Some(name) = &args.new_name {
        let body = follow_up(view, name, crates);
        return client.call(Method::POST, "/experiments", Some(body)).await;
    }
    for attempt in 1..=20 {
        let name = default_name(&args.name, attempt);
        let body = follow_up(view, &name, crates);
        match client.call(Method::POST, "/experiments", Some(body)).await {
            Err(e) if name_taken(&e) => continue,
            other => return other,
        }
    }
    bail!(
        "{} to {} are all taken; give one with --name",
        default_name(&args.name, 1),
        default_name(&args.name, 20)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        json!({
            "regressions": ["reg:a@1.0.0", "local:/b"],
            "diagnostics_changes": ["reg:d@1.0.0"],
            "flaky": ["reg:f@1.0.0"],
            "spurious": {
                "spurious-regressed": {"reasons": [], "crates": ["reg:s@1.0.0"]},
                "spurious-fixed": {"reasons": [], "crates": []},
                "spurious": {"reasons": [], "crates": ["git:https://h/r#abc"]},
                "error": {"crates": ["reg:e@1.0.0", "reg:a@1.0.0"]},
            },
        })
    }

    #[test]
    fn the_retry_list_and_its_parts() {
        let r = report();
        assert_eq!(
            crates_to_retry(&r, Which::All),
            [
                "reg:a@1.0.0",
                "local:/b",
                "reg:d@1.0.0",
                "reg:s@1.0.0",
                "git:https://h/r#abc",
                "reg:f@1.0.0",
                "reg:e@1.0.0"
            ]
        );
        assert_eq!(
            crates_to_retry(&r, Which::Regressed),
            ["reg:a@1.0.0", "local:/b"]
        );
        assert_eq!(
            crates_to_retry(&r, Which::Spurious),
            [
                "reg:s@1.0.0",
                "git:https://h/r#abc",
                "reg:f@1.0.0",
                "reg:e@1.0.0",
                "reg:a@1.0.0"
            ]
        );
        assert!(crates_to_retry(&json!({}), Which::All).is_empty());
    }

    #[test]
    fn the_follow_up_keeps_the_spec_and_drops_the_state() {
        let view = json!({
            "id": "x", "status": "completed", "name": "old", "start": "stable",
            "end": {"toolchain": "nightly", "rustflags": "-Zx"}, "mode": "check-only",
            "crates": "top:100", "confirm": 0, "progress": {"total": 100},
            "created_at": "t", "updated_at": "t", "started_at": "t", "finished_at": "t",
        });
        assert_eq!(
            follow_up(&view, "old-retry", &["reg:a@1.0.0".into()]),
            json!({
                "name": "old-retry", "start": "stable",
                "end": {"toolchain": "nightly", "rustflags": "-Zx"}, "mode": "check-only",
                "crates": {"kind": "list", "crates": ["reg:a@1.0.0"]}, "confirm": 0,
            })
        );
    }

    #[test]
    fn default_names_fit() {
        assert_eq!(default_name("nightly-check", 1), "nightly-check-retry");
        assert_eq!(default_name("nightly-check", 3), "nightly-check-retry-3");
        let long = "a".repeat(64);
        assert_eq!(default_name(&long, 1).len(), 64);
        assert_eq!(default_name(&long, 12).len(), 64);
        assert!(default_name(&long, 12).ends_with("a-retry-12"));
        assert_eq!(default_name("ab-", 1), "ab-retry");
    }
}
