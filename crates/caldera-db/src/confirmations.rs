//! Confirmation runs of regressions and fixes, as read back: per crate that was re-run, each
//! run's outcomes and logs and where its confirmation stands
//! ([`caldera_core::confirm::status`]), plus what the extra runs cost.
//!
//! Confirmation jobs (`jobs.run > 0`) are created by [`crate::jobs::complete`] when it records a
//! regressed or fixed run 0 of an experiment whose `confirm` is above 0; see ARCHITECTURE
//! "Scheduling".

use std::collections::BTreeMap;

use caldera_core::confirm::{self, ConfirmationStatus};
use caldera_core::outcome::{Comparison, Outcome, compare};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::DbError;

/// One side of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSide {
    pub outcome: Outcome,
    /// the side's log in object storage (none for an `error` without a log)
    pub log_key: Option<String>,
    pub duration_ms: Option<i64>,
}

/// One run of a crate: run 0 (the first) or a confirmation run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub run: i16,
    /// the job's state: `queued`, `running`, `done`, `error` or `cancelled`
    pub state: String,
    /// the worker that ran it (its name), once finished
    pub worker: Option<String>,
    /// both sides, once the run finished
    pub start: Option<RunSide>,
    pub end: Option<RunSide>,
    /// `compare(start, end)`, once the run finished
    pub comparison: Option<Comparison>,
}

/// A crate whose run 0 was regressed or fixed and that was re-run to confirm it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrateConfirmation {
    /// the crate id (`reg:name@version`, …)
    #[serde(rename = "crate")]
    pub krate: String,
    /// run 0's comparison (`regressed` or `fixed`)
    pub comparison: Comparison,
    pub status: ConfirmationStatus,
    /// every run, run 0 first
    pub runs: Vec<Run>,
}

/// The confirmations of one experiment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Confirmations {
    /// crates confirmed, flaky, pending
    pub confirmed: usize,
    pub flaky: usize,
    pub pending: usize,
    /// confirmation runs created (queued, running or finished)
    pub runs_created: i64,
    /// confirmation runs finished (with a result)
    pub runs_finished: i64,
    /// their total build time, both sides (the sum of their results' `duration_ms`)
    pub duration_ms: i64,
    /// by crate id
    pub crates: Vec<CrateConfirmation>,
}

impl Confirmations {
    /// The status of a crate id, if it was re-run.
    pub fn status_of(&self, krate: &str) -> Option<ConfirmationStatus> {
        self.crates
            .iter()
            .find(|c| c.krate == krate)
            .map(|c| c.status)
    }
}

type Row = (
    String,
    i16,
    String,
    Option<String>,
    Option<Json<Outcome>>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Every job of the crates of experiment `$1` that have confirmation runs, one row per result
/// side (one row with no side for a job without results): crate id, run, job state, side,
/// outcome, log key, duration, worker name.
const RERUN_CRATES: &str = "WITH rerun AS (
         SELECT DISTINCT crate_id FROM jobs WHERE experiment_id = $1 AND run > 0
     )
     SELECT c.crate_id, j.run, j.state, r.toolchain, r.outcome, r.log_key, r.duration_ms, w.name
     FROM rerun
     JOIN jobs j ON j.experiment_id = $1 AND j.crate_id = rerun.crate_id
     JOIN crates c ON c.id = j.crate_id
     LEFT JOIN results r ON r.experiment_id = $1 AND r.crate_id = j.crate_id AND r.run = j.run
     LEFT JOIN workers w ON w.id = r.worker_id
     ORDER BY c.crate_id, j.run, r.toolchain";

/// Every crate of the experiment that has confirmation runs, with all its runs. Reads the
/// experiment's jobs once (to find the crates re-run), then those crates' jobs and results.
pub async fn of_experiment(pool: &PgPool, experiment_id: Uuid) -> Result<Confirmations, DbError> {
    let rows: Vec<Row> = sqlx::query_as(RERUN_CRATES)
        .bind(experiment_id)
        .fetch_all(pool)
        .await?;
    let mut out = Confirmations::default();
    for (krate, runs) in runs_by_crate(rows) {
        let mut runs: Vec<Run> = runs.into_values().collect();
        for r in &mut runs {
            if let (Some(s), Some(e)) = (&r.start, &r.end) {
                r.comparison = Some(compare(&s.outcome, &e.outcome));
            }
        }
        out.add(krate, runs);
    }
    Ok(out)
}

/// The rows of [`RERUN_CRATES`] as runs, by crate id and run, each with the sides it has.
fn runs_by_crate(rows: Vec<Row>) -> BTreeMap<String, BTreeMap<i16, Run>> {
    let mut by_crate: BTreeMap<String, BTreeMap<i16, Run>> = BTreeMap::new();
    for (krate, run, state, side, outcome, log_key, duration_ms, worker) in rows {
        let entry = by_crate
            .entry(krate)
            .or_default()
            .entry(run)
            .or_insert_with(|| Run {
                run,
                state,
                worker: None,
                start: None,
                end: None,
                comparison: None,
            });
        let (Some(side), Some(Json(outcome))) = (side, outcome) else {
            continue;
        };
        if entry.worker.is_none() {
            entry.worker = worker;
        }
        let rec = RunSide {
            outcome,
            log_key,
            duration_ms,
        };
        match side.as_str() {
            "start" => entry.start = Some(rec),
            _ => entry.end = Some(rec),
        }
    }
    by_crate
}

impl Confirmations {
    /// Count a crate's runs (run 0 first, each compared once finished) and where its
    /// confirmation stands, and list it.
    fn add(&mut self, krate: String, runs: Vec<Run>) {
        let Some(first) = runs
            .first()
            .filter(|r| r.run == 0)
            .and_then(|r| r.comparison)
        else {
            // run 0 without a result cannot have confirmation runs; a hand-edited database
            return;
        };
        let later: Vec<Option<Comparison>> = runs
            .iter()
            .filter(|r| r.run > 0)
            .map(|r| r.comparison)
            .collect();
        for r in runs.iter().filter(|r| r.run > 0) {
            self.runs_created += 1;
            if r.comparison.is_some() {
                self.runs_finished += 1;
            }
            self.duration_ms += [&r.start, &r.end]
                .into_iter()
                .flatten()
                .filter_map(|s| s.duration_ms)
                .sum::<i64>();
        }
        let status = confirm::status(first, &later);
        match status {
            ConfirmationStatus::Confirmed => self.confirmed += 1,
            ConfirmationStatus::Flaky | ConfirmationStatus::KnownFlaky => self.flaky += 1,
            ConfirmationStatus::Pending => self.pending += 1,
        }
        self.crates.push(CrateConfirmation {
            krate,
            comparison: first,
            status,
            runs,
        });
    }
}
