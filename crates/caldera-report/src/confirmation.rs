//! Which regressions and fixes to believe: their re-runs' confirmation statuses.

use super::*;

/// Confirmed, flaky and pending crates of a report ([`Report::confirmation_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ConfirmationCounts {
    /// Every re-run agreed with the first run.
    pub confirmed: usize,
    /// Some re-run disagreed.
    pub flaky: usize,
    /// Re-runs still to finish.
    pub pending: usize,
    /// Failures the flaky memory explains (not re-run, or not yet decided).
    pub known_flaky: usize,
}

/// Flaky by the re-runs or by the flaky memory.
pub(crate) fn is_flaky(s: ConfirmationStatus) -> bool {
    matches!(
        s,
        ConfirmationStatus::Flaky | ConfirmationStatus::KnownFlaky
    )
}

/// The confirmation status of every regressed or fixed crate (an empty vector when none was
/// re-run), and the flaky ones.
pub(crate) fn confirmation_statuses(
    results: &[CrateResult],
    comparisons: &[Comparison],
    confirmation: impl Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus>,
) -> (Vec<Option<ConfirmationStatus>>, Vec<Ix>) {
    let mut statuses = Vec::new();
    let mut flaky = Vec::new();
    for (i, (r, &c)) in (0..).zip(results.iter().zip(comparisons)) {
        if !caldera_core::confirm::needs_confirmation(c) {
            continue;
        }
        let Some(status) = confirmation(r, c) else {
            continue;
        };
        if statuses.is_empty() {
            statuses = vec![None; results.len()];
        }
        statuses[i as usize] = Some(status);
        if is_flaky(status) {
            flaky.push(i);
        }
    }
    (statuses, flaky)
}

/// The regressions to believe, split into real breakage and changed diagnostics: re-runs that
/// found a regression flaky take it out, and a changed diagnostic breaks no dependent, so such
/// crates are no one's root cause.
pub(crate) fn believed_regressions(
    results: &[CrateResult],
    regressed: Vec<Ix>,
    confirmations: &[Option<ConfirmationStatus>],
) -> (Vec<Ix>, Vec<Ix>) {
    let (diagnostics, regressed): (Vec<Ix>, Vec<Ix>) = regressed
        .into_iter()
        .filter(|&i| {
            !confirmations
                .get(i as usize)
                .copied()
                .flatten()
                .is_some_and(is_flaky)
        })
        .partition(|&i| {
            matches!(
                results[i as usize].end,
                Outcome::TestFail {
                    reason: Some(TestFailReason::DiagnosticsChange),
                    ..
                }
            )
        });
    (regressed, diagnostics)
}
