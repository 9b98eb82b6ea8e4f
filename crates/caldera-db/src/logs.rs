//! Finding the object-storage key of one result's log (`GET …/results/{crate}/{toolchain}/log`).
//!
//! The key is whatever the worker reported with the result (`results.log_key`); this module only
//! finds the row and says precisely what is missing when there is none.

use caldera_core::crates::CrateId;
use caldera_core::job::Side;
use sqlx::PgPool;
use uuid::Uuid;

use crate::DbError;

/// What [`find`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLookup {
    /// No experiment has this name.
    NoExperiment,
    /// The experiment has no job for this crate.
    NoCrate,
    /// The id names a registry crate without its checksum, and the experiment holds more than one
    /// checksummed crate of that name and version (never the case for experiments resolved the usual
    /// way); the caller must give the checksum. Holds (some of) the matching ids.
    Ambiguous { candidates: Vec<String> },
    /// The crate is in the experiment but has no result for this side yet.
    NoResult { crate_id: String },
    /// The side has a result, but no log was stored with it (e.g. an infrastructure error before
    /// anything ran).
    NoLog {
        crate_id: String,
        outcome_kind: String,
    },
    /// The result and its log's key.
    Found { crate_id: String, log_key: String },
}

/// Looks up the log key of `side` of crate `krate` in experiment `experiment`.
///
/// The crate matches by its exact id; a registry id given without a checksum (`reg:serde@1.0.0`) also
/// matches the experiment's crate of that name and version when it was resolved with a checksum
/// (`reg:serde@1.0.0#…`).
pub async fn find(
    pool: &PgPool,
    experiment: &str,
    krate: &CrateId,
    side: Side,
) -> Result<LogLookup, DbError> {
    let Some((experiment_id,)) =
        sqlx::query_as::<_, (Uuid,)>("SELECT id FROM experiments WHERE name = $1")
            .bind(experiment)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(LogLookup::NoExperiment);
    };
    let exact: Option<(i64, String)> = sqlx::query_as(
        "SELECT c.id, c.crate_id FROM crates c
         JOIN jobs j ON j.crate_id = c.id AND j.experiment_id = $1 AND j.run = 0
         WHERE c.crate_id = $2",
    )
    .bind(experiment_id)
    .bind(krate.to_string())
    .fetch_optional(pool)
    .await?;
    let (crate_row, crate_id) = match (exact, krate) {
        (Some(found), _) => found,
        (
            None,
            CrateId::Registry {
                name,
                version,
                checksum: None,
            },
        ) => {
            let mut candidates: Vec<(i64, String)> = sqlx::query_as(
                "SELECT c.id, c.crate_id FROM crates c
                 JOIN jobs j ON j.crate_id = c.id AND j.experiment_id = $1 AND j.run = 0
                 WHERE c.kind = 'registry' AND c.name = $2 AND c.version = $3
                 ORDER BY c.crate_id
                 LIMIT 5",
            )
            .bind(experiment_id)
            .bind(name)
            .bind(version.to_string())
            .fetch_all(pool)
            .await?;
            match candidates.len() {
                0 => return Ok(LogLookup::NoCrate),
                1 => candidates.remove(0),
                _ => {
                    return Ok(LogLookup::Ambiguous {
                        candidates: candidates.into_iter().map(|(_, id)| id).collect(),
                    });
                }
            }
        }
        (None, _) => return Ok(LogLookup::NoCrate),
    };
    let result: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT log_key, outcome_kind FROM results
         WHERE experiment_id = $1 AND crate_id = $2 AND toolchain = $3 AND run = 0",
    )
    .bind(experiment_id)
    .bind(crate_row)
    .bind(side.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(match result {
        None => LogLookup::NoResult { crate_id },
        Some((None, outcome_kind)) => LogLookup::NoLog {
            crate_id,
            outcome_kind,
        },
        Some((Some(log_key), _)) => LogLookup::Found { crate_id, log_key },
    })
}
