//! A crate's history: its outcomes in every experiment that ran it, newest first.

use caldera_core::outcome::Outcome;
use caldera_core::toolchain::Toolchain;
use chrono::{DateTime, Utc};
use sqlx::types::Json;

use crate::{DbError, PgPool};

/// One experiment's results of a crate (its first run; re-runs counted).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub experiment: String,
    /// The experiment's status (`running`, `completed`, …).
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// The crate id as stored (`reg:foo@1.2.3#…`): other versions of a registry crate are
    /// part of its history too.
    pub crate_id: String,
    pub start_toolchain: Toolchain,
    pub end_toolchain: Toolchain,
    pub start: Option<Outcome>,
    pub end: Option<Outcome>,
    /// Confirmation runs recorded for the crate (each both sides).
    pub reruns: i64,
    /// Confirmation runs whose end outcome differed from the first run's.
    pub reruns_differing: i64,
}

/// Most entries returned.
pub const HISTORY_LIMIT: i64 = 100;

/// The history of a crate: for a registry crate (`name` given) every version of that name, else
/// the crate id `crate_id` exactly; newest experiment first, at most [`HISTORY_LIMIT`] entries.
///
/// Each experiment's results are read through the results' primary key (experiment, crate,
/// run, side). Finding a registry crate's versions reads the `crates` table by name: a
/// sequential scan of that table (tens of milliseconds at a million crates) until it has an index
/// on `name`.
pub async fn crate_history(
    pool: &PgPool,
    crate_id: &str,
    name: Option<&str>,
) -> Result<Vec<HistoryEntry>, DbError> {
    type Row = (
        String,
        String,
        DateTime<Utc>,
        String,
        Json<Toolchain>,
        Json<Toolchain>,
        Option<Json<Outcome>>,
        Option<Json<Outcome>>,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH c AS (
             SELECT id, crate_id FROM crates
             WHERE ($2::text IS NULL AND crate_id = $1)
                OR ($2::text IS NOT NULL AND kind = 'registry' AND name = $2)
         )
         SELECT e.name, e.status, e.created_at, c.crate_id, e.spec->'start', e.spec->'end',
                s.outcome, en.outcome,
                (SELECT count(*) FROM results r WHERE r.experiment_id = e.id
                   AND r.crate_id = c.id AND r.run > 0 AND r.toolchain = 'end'),
                (SELECT count(*) FROM results r WHERE r.experiment_id = e.id
                   AND r.crate_id = c.id AND r.run > 0 AND r.toolchain = 'end'
                   AND en.outcome IS NOT NULL AND r.outcome <> en.outcome)
         FROM c CROSS JOIN experiments e
         LEFT JOIN results s ON s.experiment_id = e.id AND s.crate_id = c.id
              AND s.run = 0 AND s.toolchain = 'start'
         LEFT JOIN results en ON en.experiment_id = e.id AND en.crate_id = c.id
              AND en.run = 0 AND en.toolchain = 'end'
         WHERE s.outcome IS NOT NULL OR en.outcome IS NOT NULL
         ORDER BY e.created_at DESC, c.crate_id
         LIMIT $3",
    )
    .bind(crate_id)
    .bind(name)
    .bind(HISTORY_LIMIT)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(experiment, status, created_at, crate_id, start_tc, end_tc, s, en, reruns, diff)| {
                HistoryEntry {
                    experiment,
                    status,
                    created_at,
                    crate_id,
                    start_toolchain: start_tc.0,
                    end_toolchain: end_tc.0,
                    start: s.map(|j| j.0),
                    end: en.map(|j| j.0),
                    reruns,
                    reruns_differing: diff,
                }
            },
        )
        .collect())
}
