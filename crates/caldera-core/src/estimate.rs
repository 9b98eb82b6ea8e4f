//! What an experiment will cost: the pure estimator behind `GET …/estimate`, the create and
//! start responses and the running ETA.
//!
//! A job (one crate, both sides) costs the expected durations of the sides that will run: a
//! side the result cache settles, or an override settles (`skip`, `broken`), costs nothing.
//! A side's expected duration is, in this order:
//! 1. the median of the crate's own side durations in earlier experiments of the same mode
//!    (its *history*; a registry crate's other versions count);
//! 2. the [`Model`] fitted on the mode's history for the others ([`fit`]): a least-squares
//!    line on the crate's number of dependencies when it predicts better than the median,
//!    else the mode's median;
//! 3. nothing, when the mode has no history at all: then there is no CPU time, said plainly.
//!
//! The wall time replays the dispatcher: jobs in queue order, each to the slot free first,
//! over the slots of the workers connected now (running jobs hold their slot for what is left
//! of them). No slot, no wall time.

mod fit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use fit::{MIN_LINE_SAMPLES, Model, Sample, fit, median};

/// What happens to one side of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidePlan {
    /// It runs (or is running).
    Run,
    /// The result cache settles it without running.
    Cached,
    /// An override (`skip`, `broken`) or an earlier result settles it: no cost.
    Settled,
}

/// One job to estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInput {
    /// The history key of its crate: a registry crate's name, else its crate id.
    pub key: String,
    /// Its dependency count in the registry listing, when the listing knows it.
    pub deps: Option<u32>,
    /// Start side, end side.
    pub sides: [SidePlan; 2],
    /// How long it has been running (0 when queued): subtracted from what it costs.
    pub elapsed_ms: u64,
}

/// A crate's own history: its side durations' median and how many there were.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrateHistory {
    pub sides: u64,
    pub median_ms: f64,
}

/// The estimate of a set of jobs (an experiment before it starts, or what is left of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Estimate {
    pub jobs: u64,
    /// Sides that will run (two per job, less those settled).
    pub sides_to_run: u64,
    /// Sides the result cache settles.
    pub sides_cached: u64,
    /// Sides settled otherwise (an override's `skip` or `broken`, a result already recorded).
    pub sides_settled: u64,
    /// Expected build time of the sides to run, summed (slot time: what the workers' slots
    /// spend building), in milliseconds; absent when it cannot be estimated.
    pub cpu_ms: Option<u64>,
    /// Expected wall time on the workers connected now; absent without any slot, or without
    /// a CPU time.
    pub wall_ms: Option<u64>,
    /// Slots of the workers connected now.
    pub slots: u32,
    /// Jobs to run estimated from their crate's own history.
    pub from_history: u64,
    /// Jobs to run estimated by the model.
    pub from_model: u64,
    /// The model for crates without history.
    pub model: Model,
    /// How the estimate was made, in one plain sentence or two.
    pub method: String,
}

/// Estimates `jobs` (in queue order) on `slots` slots, from `history` (by [`JobInput::key`])
/// and `model`.
pub fn estimate(
    jobs: &[JobInput],
    history: &HashMap<String, CrateHistory>,
    model: &Model,
    slots: u32,
) -> Estimate {
    let mut out = Estimate {
        jobs: jobs.len() as u64,
        sides_to_run: 0,
        sides_cached: 0,
        sides_settled: 0,
        cpu_ms: None,
        wall_ms: None,
        slots,
        from_history: 0,
        from_model: 0,
        model: model.clone(),
        method: String::new(),
    };
    let mut costs = Vec::with_capacity(jobs.len());
    let mut unknown = 0u64;
    for job in jobs {
        let run = count_sides(job, &mut out);
        if run == 0 {
            costs.push(Some(0.0));
            continue;
        }
        let side = match history.get(&job.key) {
            Some(h) => {
                out.from_history += 1;
                Some(h.median_ms)
            }
            None => {
                let p = model.predict(job.deps);
                if p.is_some() {
                    out.from_model += 1;
                } else {
                    unknown += 1;
                }
                p
            }
        };
        costs.push(side.map(|s| (s * f64::from(run) - job.elapsed_ms as f64).max(0.0)));
    }
    if unknown == 0 {
        let costs: Vec<f64> = costs.into_iter().map(|c| c.unwrap_or(0.0)).collect();
        out.cpu_ms = Some(costs.iter().sum::<f64>().round() as u64);
        out.wall_ms = makespan(&costs, slots).map(|w| w.round() as u64);
    }
    out.method = method(&out, unknown);
    out
}

/// Counts a job's sides into `out`; returns how many run.
fn count_sides(job: &JobInput, out: &mut Estimate) -> u32 {
    let mut run = 0;
    for side in job.sides {
        match side {
            SidePlan::Run => {
                run += 1;
                out.sides_to_run += 1;
            }
            SidePlan::Cached => out.sides_cached += 1,
            SidePlan::Settled => out.sides_settled += 1,
        }
    }
    run
}

/// The dispatcher replayed: each job, in order, to the slot that frees first. `None` without
/// slots.
pub fn makespan(costs: &[f64], slots: u32) -> Option<f64> {
    if slots == 0 {
        return None;
    }
    let mut free = vec![0.0f64; slots as usize];
    for &c in costs {
        let first = free
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("at least one slot");
        *first += c;
    }
    Some(free.into_iter().fold(0.0, f64::max))
}

fn method(e: &Estimate, unknown: u64) -> String {
    let model = match &e.model {
        Model::Line {
            intercept_ms,
            per_dep_ms,
            samples,
            r2,
            ..
        } => format!(
            "the model is a line fitted on {samples} crates: {:.1} s + {:.2} s per dependency \
             (R² {r2:.2})",
            intercept_ms / 1000.0,
            per_dep_ms / 1000.0
        ),
        Model::Median {
            median_ms,
            samples,
            why,
            ..
        } => format!(
            "the model is the median side of {samples} crates, {:.1} s ({why})",
            median_ms / 1000.0
        ),
        Model::None => "this mode has no history: crates without their own cannot be \
                        estimated"
            .into(),
    };
    let mut s = format!(
        "{} job(s) from their crate's history, {} from the model; {model}.",
        e.from_history, e.from_model
    );
    if unknown > 0 {
        s.push_str(&format!(" {unknown} job(s) have no estimate: no CPU time."));
    } else if e.slots == 0 && e.sides_to_run > 0 {
        s.push_str(" No worker is connected: no wall time.");
    }
    s
}
