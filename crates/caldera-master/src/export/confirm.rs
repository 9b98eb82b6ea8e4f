//! What the report needs besides the results: the confirmation status of each regressed or fixed
//! crate (its re-runs' verdict, or the flaky memory's), and the known flakes that explain the
//! crates called known-flaky.

use std::collections::{BTreeMap, HashMap};

use caldera_core::confirm::ConfirmationStatus;
use caldera_core::outcome::Comparison;
use caldera_db::confirmations::Confirmations;
use caldera_db::flakes::{Flake, KnownFlakes};
use caldera_db::{DbError, PgPool};
use caldera_report::{CrateResult, Report};

/// The status the report gives a regressed or fixed crate: its re-runs' verdict when they
/// confirmed it or found it flaky; otherwise `known-flaky` when its failing side is explained by
/// the flaky memory (`known`); otherwise its re-runs' status (pending) if it has any.
pub fn confirmation_lookup(
    confirmations: &Confirmations,
    known: KnownFlakes,
) -> impl Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus> + Send + 'static {
    let by_id: HashMap<String, ConfirmationStatus> = confirmations
        .crates
        .iter()
        .map(|c| (c.krate.clone(), c.status))
        .collect();
    move |r: &CrateResult, comparison: Comparison| {
        let id = r.krate.to_string();
        let rerun = by_id
            .get(&id)
            .or_else(|| by_id.get(&r.krate.without_checksum().to_string()))
            .copied();
        if matches!(
            rerun,
            Some(ConfirmationStatus::Confirmed | ConfirmationStatus::Flaky)
        ) {
            return rerun;
        }
        let failing = match comparison {
            Comparison::Regressed => &r.end,
            _ => &r.start,
        };
        if known.explains(&id, failing) {
            return Some(ConfirmationStatus::KnownFlaky);
        }
        rerun
    }
}

/// What the report needs besides the results: the confirmation statuses (re-runs and the flaky
/// memory), the re-runs' count and cost, and the known flakes of the crates called known-flaky.
pub struct Confirmation {
    pub status: Box<dyn Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus> + Send>,
    pub reruns: Option<(u64, u64)>,
    pub known: KnownFlakes,
}

/// Reads an experiment's confirmation runs and its crates' known flakes.
pub async fn confirmation(
    pool: &PgPool,
    experiment_id: uuid::Uuid,
) -> Result<Confirmation, DbError> {
    let (confirmations, known) = futures::try_join!(
        caldera_db::confirmations::of_experiment(pool, experiment_id),
        caldera_db::flakes::known_subjects(pool, experiment_id)
    )?;
    let reruns = (confirmations.runs_finished > 0).then(|| {
        (
            confirmations.runs_finished.max(0) as u64,
            confirmations.duration_ms.max(0) as u64,
        )
    });
    Ok(Confirmation {
        status: Box::new(confirmation_lookup(&confirmations, known.clone())),
        reruns,
        known,
    })
}

/// The known flakes of the crates the report calls known-flaky, by crate id (the evidence).
pub(super) fn known_flakes_of(
    report: &Report,
    known: &KnownFlakes,
) -> BTreeMap<String, Vec<Flake>> {
    report
        .flaky()
        .filter(|c| c.confirmation() == Some(ConfirmationStatus::KnownFlaky))
        .filter_map(|c| {
            let id = c.krate().to_string();
            known.crates.get(&id).map(|f| (id, f.clone()))
        })
        .collect()
}
