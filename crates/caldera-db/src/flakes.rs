//! Flaky memory across experiments (table `flakes`, migration `0007_flakes`): every difference
//! between two outcomes of a crate on the same toolchain that should have agreed, counted per
//! (crate, subject) with the evidence of its last sighting. What differs is decided by
//! [`caldera_core::flaky::subjects`]; whether a later failure is explained by known flakes by
//! [`caldera_core::flaky::explained_by_known`].
//!
//! Sightings come from the result writer ([`record_finished`]), only for batches that finish a
//! confirmation run (compared, side by side, with the crate's run 0) or a job of a calibration
//! experiment (its start compared with its end). A flake belongs to a resolved crate (`crates.id`:
//! one registry version, one git revision, one local path).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use caldera_core::flaky;
use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::DbError;

/// Where a sighting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A confirmation run's side differed from the same side of the crate's run 0.
    Confirmation,
    /// A calibration (A/A) experiment's end side differed from its start side.
    Calibration,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Confirmation => "confirmation",
            Source::Calibration => "calibration",
        }
    }
}

/// One difference seen once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// `crates.id`
    pub crate_id: i64,
    pub subject: String,
    /// the experiment's name
    pub experiment: String,
    pub source: Source,
    pub run: i16,
    /// for a calibration: the end side (compared with the start)
    pub side: Side,
    /// the log of the run compared against (run 0's side, or the calibration's start)
    pub log_key: Option<String>,
    /// the log of the run that differed
    pub other_log_key: Option<String>,
}

/// Add sightings to the memory: one upsert, each (crate, subject) counted once per sighting;
/// the last sighting of a (crate, subject) in `sightings` becomes its evidence.
pub async fn record(
    conn: &mut sqlx::PgConnection,
    sightings: &[Sighting],
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    if sightings.is_empty() {
        return Ok(0);
    }
    // an upsert may not touch a row twice: one row per (crate, subject), with its count
    let mut merged: BTreeMap<(i64, &str), (i64, &Sighting)> = BTreeMap::new();
    for s in sightings {
        let e = merged.entry((s.crate_id, &s.subject)).or_insert((0, s));
        e.0 += 1;
        e.1 = s;
    }
    let mut crate_ids = Vec::new();
    let mut subjects = Vec::new();
    let mut counts = Vec::new();
    let mut experiments = Vec::new();
    let mut sources = Vec::new();
    let mut runs = Vec::new();
    let mut sides = Vec::new();
    let mut logs = Vec::new();
    let mut other_logs = Vec::new();
    for ((crate_id, subject), (n, s)) in &merged {
        crate_ids.push(*crate_id);
        subjects.push(*subject);
        counts.push(*n);
        experiments.push(s.experiment.as_str());
        sources.push(s.source.as_str());
        runs.push(s.run);
        sides.push(s.side.as_str());
        logs.push(s.log_key.clone());
        other_logs.push(s.other_log_key.clone());
    }
    sqlx::query(
        "INSERT INTO flakes AS f (crate_id, subject, count, first_seen, last_seen, experiment, source, run,
                                  side, log_key, other_log_key)
         SELECT c, s, n, $10, $10, e, src, r, sd, l, ol
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::smallint[],
                     $7::text[], $8::text[], $9::text[]) AS t(c, s, n, e, src, r, sd, l, ol)
         ON CONFLICT (crate_id, subject) DO UPDATE SET
             count = f.count + excluded.count, last_seen = excluded.last_seen,
             experiment = excluded.experiment, source = excluded.source, run = excluded.run,
             side = excluded.side, log_key = excluded.log_key, other_log_key = excluded.other_log_key",
    )
    .bind(&crate_ids)
    .bind(&subjects)
    .bind(&counts)
    .bind(&experiments)
    .bind(&sources)
    .bind(&runs)
    .bind(&sides)
    .bind(&logs)
    .bind(&other_logs)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(sightings.len() as u64)
}

/// A run that just finished and may show a flake: a confirmation run (`run > 0`), or any run of
/// a calibration experiment.
#[derive(Debug, Clone)]
pub struct FinishedRun<'a> {
    pub job_id: i64,
    pub run: i16,
    pub calibration: bool,
    pub start: (&'a Outcome, Option<&'a str>),
    pub end: (&'a Outcome, Option<&'a str>),
}

/// For each job of `$1`: its crate, its experiment's name and, for a confirmation run, one row per
/// side of its crate's run 0 (that side, its outcome and log key).
const FINISHED_RUNS: &str = "SELECT j.id, j.crate_id, e.name, r.toolchain, r.outcome, r.log_key
     FROM unnest($1::bigint[]) AS t(id)
     JOIN jobs j ON j.id = t.id
     JOIN experiments e ON e.id = j.experiment_id
     LEFT JOIN results r ON j.run > 0 AND r.experiment_id = j.experiment_id
                        AND r.crate_id = j.crate_id AND r.run = 0";

/// One side of a run 0, as a confirmation run is compared with it: its outcome and log key.
type FirstSide = (Outcome, Option<String>);

/// What a finished run is compared against: its crate (`crates.id`), its experiment's name, and
/// for a confirmation run its crate's run 0 (start, end).
struct Context {
    krate: i64,
    experiment: String,
    first_start: Option<FirstSide>,
    first_end: Option<FirstSide>,
}

/// Record what the finished runs show: each confirmation run's sides against the same sides of
/// the crate's run 0, and each calibration run's start against its end. One query reads the
/// crates, experiments and (for confirmation runs) run 0's results of all of them, one upsert
/// writes the sightings. Returns the number of sightings.
pub async fn record_finished(
    conn: &mut sqlx::PgConnection,
    finished: &[FinishedRun<'_>],
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    if finished.is_empty() {
        return Ok(0);
    }
    let contexts = contexts(conn, finished).await?;
    let mut sightings = Vec::new();
    for f in finished {
        if let Some(context) = contexts.get(&f.job_id) {
            sightings.extend(context.sightings(f));
        }
    }
    record(conn, &sightings, now).await
}

/// The [`Context`] of every finished run, by job id, in one query ([`FINISHED_RUNS`]).
async fn contexts(
    conn: &mut sqlx::PgConnection,
    finished: &[FinishedRun<'_>],
) -> Result<HashMap<i64, Context>, DbError> {
    let ids: Vec<i64> = finished.iter().map(|f| f.job_id).collect();
    type Row = (
        i64,
        i64,
        String,
        Option<String>,
        Option<Json<Outcome>>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(FINISHED_RUNS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut jobs: HashMap<i64, Context> = HashMap::new();
    for (job, krate, experiment, side, outcome, log_key) in rows {
        let e = jobs.entry(job).or_insert_with(|| Context {
            krate,
            experiment,
            first_start: None,
            first_end: None,
        });
        if let (Some(side), Some(Json(o))) = (side, outcome) {
            if side == "start" {
                e.first_start = Some((o, log_key));
            } else {
                e.first_end = Some((o, log_key));
            }
        }
    }
    Ok(jobs)
}

impl Context {
    /// What run `f` shows: for a confirmation run, each side's differences from the same side
    /// of run 0; for a calibration run, its end's differences from its start.
    fn sightings(&self, f: &FinishedRun<'_>) -> Vec<Sighting> {
        let mut sightings = Vec::new();
        let mut add = |subjects: Vec<String>,
                       source: Source,
                       side: Side,
                       log: Option<&str>,
                       other: Option<&str>| {
            for subject in subjects {
                sightings.push(Sighting {
                    crate_id: self.krate,
                    subject,
                    experiment: self.experiment.clone(),
                    source,
                    run: f.run,
                    side,
                    log_key: log.map(str::to_owned),
                    other_log_key: other.map(str::to_owned),
                });
            }
        };
        let placeholder = |o: &Outcome| matches!(o, Outcome::Skipped);
        if f.run > 0 {
            for (side, first, now_) in [
                (Side::Start, &self.first_start, f.start),
                (Side::End, &self.first_end, f.end),
            ] {
                // a side this run did not build (its row is the source experiment's re-run,
                // whose sightings the source recorded) reports a `skipped` placeholder
                if placeholder(now_.0) {
                    continue;
                }
                if let Some((o, log)) = first {
                    add(
                        flaky::subjects(o, now_.0),
                        Source::Confirmation,
                        side,
                        log.as_deref(),
                        now_.1,
                    );
                }
            }
        }
        if f.calibration && !placeholder(f.start.0) && !placeholder(f.end.0) {
            add(
                flaky::subjects(f.start.0, f.end.0),
                Source::Calibration,
                Side::End,
                f.start.1,
                f.end.1,
            );
        }
        sightings
    }
}

/// The evidence of a flake's last sighting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// the experiment's name
    pub experiment: String,
    pub source: Source,
    pub run: i16,
    /// `start` or `end` (for a calibration: `end`, compared with the start)
    pub side: String,
    /// the log of the run compared against (run 0's side, or the calibration's start)
    pub log_key: Option<String>,
    /// the log of the run that differed
    pub other_log_key: Option<String>,
}

/// A known flake of one crate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flake {
    /// the crate id (`reg:name@version`, …)
    #[serde(rename = "crate")]
    pub krate: String,
    pub name: String,
    pub version: Option<String>,
    /// `test:NAME` or a failure kind (`build-fail:oom`, …)
    pub subject: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last: Evidence,
}

type FlakeRow = (
    String,
    String,
    Option<String>,
    String,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
    String,
    i16,
    String,
    Option<String>,
    Option<String>,
);

const FLAKE_COLUMNS: &str =
    "c.crate_id, c.name, c.version, f.subject, f.count, f.first_seen, f.last_seen,
     f.experiment, f.source, f.run, f.side, f.log_key, f.other_log_key";

fn flake(row: FlakeRow) -> Flake {
    let (krate, name, version, subject, count, first_seen, last_seen, experiment, source, run) = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9,
    );
    Flake {
        krate,
        name,
        version,
        subject,
        count,
        first_seen,
        last_seen,
        last: Evidence {
            experiment,
            source: if source == "calibration" {
                Source::Calibration
            } else {
                Source::Confirmation
            },
            run,
            side: row.10,
            log_key: row.11,
            other_log_key: row.12,
        },
    }
}

/// The known flakes of every crate named `name` (of `version` only, when given; for a git or
/// local crate the version is the one its manifest had, if known), by crate id, most seen first.
pub async fn of_crate(
    pool: &PgPool,
    name: &str,
    version: Option<&str>,
) -> Result<Vec<Flake>, DbError> {
    let rows: Vec<FlakeRow> = sqlx::query_as(&format!(
        "SELECT {FLAKE_COLUMNS}
         FROM crates c JOIN flakes f ON f.crate_id = c.id
         WHERE c.name = $1 AND ($2::text IS NULL OR c.version = $2)
         ORDER BY c.crate_id, f.count DESC, f.subject"
    ))
    .bind(name)
    .bind(version)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(flake).collect())
}

/// The known flakes of an experiment's crates, by crate id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KnownFlakes {
    pub crates: BTreeMap<String, Vec<Flake>>,
}

impl KnownFlakes {
    /// The known flaky subjects of a crate id (empty if none), for
    /// [`caldera_core::flaky::explained_by_known`].
    pub fn subjects(&self, krate: &str) -> BTreeSet<String> {
        self.crates
            .get(krate)
            .map(|fs| fs.iter().map(|f| f.subject.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether this outcome of this crate is explained by its known flakes.
    pub fn explains(&self, krate: &str, outcome: &Outcome) -> bool {
        flaky::explained_by_known(outcome, &self.subjects(krate))
    }
}

/// The known flakes of all the crates of an experiment, in one query (its crates through its
/// first-run jobs, by the `(experiment_id, crate_id)` index).
pub async fn known_subjects(pool: &PgPool, experiment_id: Uuid) -> Result<KnownFlakes, DbError> {
    let rows: Vec<FlakeRow> = sqlx::query_as(&format!(
        "SELECT {FLAKE_COLUMNS}
         FROM jobs j
         JOIN flakes f ON f.crate_id = j.crate_id
         JOIN crates c ON c.id = j.crate_id
         WHERE j.experiment_id = $1 AND j.run = 0
         ORDER BY c.crate_id, f.count DESC, f.subject"
    ))
    .bind(experiment_id)
    .fetch_all(pool)
    .await?;
    let mut out = KnownFlakes::default();
    for f in rows.into_iter().map(flake) {
        out.crates.entry(f.krate.clone()).or_default().push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(test: &str) -> Outcome {
        Outcome::TestFail {
            failed_tests: vec![test.into()],
            reason: None,
        }
    }

    /// Which subjects a finished run shows against run 0 (`test-pass` on both sides): a side this
    /// run left out (`skipped`, the placeholder of a side copied from another experiment) shows
    /// nothing, in a confirmation run or a calibration run.
    #[test]
    fn a_placeholder_side_is_never_a_sighting() {
        let context = Context {
            krate: 1,
            experiment: "e".into(),
            first_start: Some((Outcome::TestPass, None)),
            first_end: Some((Outcome::TestPass, None)),
        };
        let (pass, skipped, flaky) = (Outcome::TestPass, Outcome::Skipped, fail("t"));
        for (run, calibration, start, end, want) in [
            (1, false, &pass, &flaky, vec!["test:t"]),
            (1, false, &flaky, &flaky, vec!["test:t", "test:t"]),
            (1, false, &skipped, &flaky, vec!["test:t"]),
            (1, false, &skipped, &pass, vec![]),
            (1, false, &pass, &skipped, vec![]),
            (0, true, &pass, &flaky, vec!["test:t"]),
            (0, true, &skipped, &flaky, vec![]),
            (1, true, &skipped, &flaky, vec!["test:t"]),
        ] {
            let f = FinishedRun {
                job_id: 7,
                run,
                calibration,
                start: (start, None),
                end: (end, None),
            };
            let got: Vec<String> = context
                .sightings(&f)
                .into_iter()
                .map(|s| s.subject)
                .collect();
            assert_eq!(
                got, want,
                "run {run}, calibration {calibration}: {start} / {end}"
            );
        }
    }
}
