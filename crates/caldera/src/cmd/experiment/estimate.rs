//! `caldera experiment estimate NAME`, and the estimate lines `create` and `start` print.

use std::time::Duration;

use caldera_core::estimate::{Estimate, Model};
use caldera_master::api::estimate::EstimateView;
use reqwest::Method;
use serde_json::Value;

use super::watch::short_duration;
use crate::client::{Client, print_json, segment};

fn ms(v: u64) -> String {
    short_duration(Duration::from_millis(v))
}

/// The lines describing an estimate: jobs and sides, CPU and wall time, how it was made.
pub fn lines(e: &Estimate) -> Vec<String> {
    let cpu = match e.cpu_ms {
        Some(c) => ms(c),
        None => "unknown".into(),
    };
    let wall = match (e.wall_ms, e.slots) {
        (Some(w), slots) => format!("{} on {slots} slot(s) connected now", ms(w)),
        (None, 0) => "none: no worker is connected".into(),
        (None, _) => "unknown".into(),
    };
    let fit = match &e.model {
        Model::Line {
            r2,
            loo_mae_ms,
            median_loo_mae_ms,
            ..
        } => Some(format!(
            "model fit:   R² {r2:.2}, leave-one-out error {} per side (the median's: {})",
            ms(loo_mae_ms.round() as u64),
            ms(median_loo_mae_ms.round() as u64)
        )),
        Model::Median {
            loo_mae_ms: Some(err),
            ..
        } => Some(format!(
            "model fit:   leave-one-out error {} per side",
            ms(err.round() as u64)
        )),
        _ => None,
    };
    let mut out = vec![
        format!(
            "jobs:        {} ({} sides to run, {} settled by the cache, {} settled otherwise)",
            e.jobs, e.sides_to_run, e.sides_cached, e.sides_settled
        ),
        format!("CPU time:    {cpu}"),
        format!("wall time:   {wall}"),
        format!("method:      {}", e.method),
    ];
    out.extend(fit);
    out
}

/// Prints the `estimate` of an experiment view (create, start), when it has one.
pub fn print_of_view(v: &Value) {
    if let Some(e) = v
        .get("estimate")
        .and_then(|e| serde_json::from_value::<Estimate>(e.clone()).ok())
    {
        println!("estimate:");
        for l in lines(&e) {
            println!("  {l}");
        }
    }
}

/// "estimated 3m05s, took 4m10s" of a finished experiment, when both are known.
pub fn against_actual(view: &EstimateView) -> Vec<String> {
    let (Some(at), Some(actual)) = (&view.at_start, &view.actual) else {
        return Vec::new();
    };
    let took = |v: Option<i64>| v.map_or("?".into(), |v| ms(v.max(0) as u64));
    let est = |v: Option<u64>| v.map_or("no estimate".into(), ms);
    vec![
        format!(
            "CPU time:    estimated {}, took {} ({} of {} sides run)",
            est(at.estimate.cpu_ms),
            took(Some(actual.cpu_ms)),
            actual.sides_run,
            at.estimate.sides_to_run
        ),
        format!(
            "wall time:   estimated {}, took {}",
            est(at.estimate.wall_ms),
            took(actual.wall_ms)
        ),
    ]
}

/// `caldera experiment estimate NAME`.
pub async fn run(client: &Client, name: &str, json_out: bool) -> anyhow::Result<()> {
    let path = format!("/experiments/{}/estimate", segment(name));
    let v = client.call(Method::GET, &path, None).await?;
    if json_out {
        print_json(&v);
        return Ok(());
    }
    let view: EstimateView = serde_json::from_value(v)?;
    println!("experiment {} ({})", view.experiment, view.status);
    if let Some(e) = &view.estimate {
        let what = match view.status.as_str() {
            "queued" => "if it started now",
            _ => "what is left",
        };
        println!("estimate, {what}:");
        for l in lines(e) {
            println!("  {l}");
        }
    }
    if view.actual.is_some() {
        println!("estimate at the start against the run:");
        for l in against_actual(&view) {
            println!("  {l}");
        }
        if view.at_start.is_none() {
            println!("  no estimate was kept at its start");
        }
    } else if let Some(at) = &view.at_start {
        println!("estimate at the start ({}):", at.made_at);
        for l in lines(&at.estimate) {
            println!("  {l}");
        }
    }
    Ok(())
}
