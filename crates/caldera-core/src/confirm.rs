//! Confirmation of regressions and fixes: the pure decision.
//!
//! A crate whose first run (run 0) compares as [`Comparison::Regressed`] or
//! [`Comparison::Fixed`] is run again, both sides, `confirm` times (the experiment's
//! [`crate::ExperimentSpec::confirm`]); the scheduler does that, see ARCHITECTURE "Scheduling".
//! [`status`] decides from the comparisons of those runs whether the first one is *confirmed*
//! (every run agrees), *flaky* (a finished run disagrees) or still *pending*.

use serde::Serialize;

use crate::outcome::Comparison;

/// Whether a run-0 comparison is re-run to confirm it: regressions and fixes, nothing else
/// (spurious ones are already explained, the rest are not news).
pub fn needs_confirmation(c: Comparison) -> bool {
    matches!(c, Comparison::Regressed | Comparison::Fixed)
}

/// Where the confirmation of one crate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmationStatus {
    /// Every confirmation run finished and compared as the first run did.
    Confirmed,
    /// Some finished confirmation run compared otherwise (whatever the others say): the first
    /// run's comparison is not evidence, and the crate leaves the lists of regressions/fixes.
    Flaky,
    /// No finished run disagrees yet, but not every run has finished.
    Pending,
    /// Not re-run (or not yet decided), but the failure is one an earlier run showed to be
    /// flaky (the flaky memory): treated like `Flaky`.
    KnownFlaky,
}

impl ConfirmationStatus {
    /// The name used in JSON and reports (`confirmed`, `flaky`, `pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmationStatus::Confirmed => "confirmed",
            ConfirmationStatus::Flaky => "flaky",
            ConfirmationStatus::Pending => "pending",
            ConfirmationStatus::KnownFlaky => "known-flaky",
        }
    }
}

impl std::fmt::Display for ConfirmationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a crate whose first run compared as `first`, given its confirmation runs
/// (`None`: that run has not finished). A run that disagrees decides at once (flaky), even with
/// others pending; with no run at all (confirmation off) there is nothing to wait for and the
/// comparison stands as confirmed by nothing — callers only ask for crates that were re-run.
///
/// A confirmation run whose comparison is `error` (the infrastructure failed on every attempt)
/// disagrees like any other: it is not evidence that the first run was right.
pub fn status(first: Comparison, runs: &[Option<Comparison>]) -> ConfirmationStatus {
    if runs.iter().flatten().any(|c| *c != first) {
        ConfirmationStatus::Flaky
    } else if runs.iter().any(Option::is_none) {
        ConfirmationStatus::Pending
    } else {
        ConfirmationStatus::Confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Comparison::*;
    use ConfirmationStatus::*;

    #[test]
    fn which_comparisons_are_confirmed() {
        let yes = [Regressed, Fixed];
        for c in Comparison::ALL {
            assert_eq!(needs_confirmation(*c), yes.contains(c), "{c}");
        }
    }

    #[test]
    fn statuses() {
        let cases: &[(Comparison, &[Option<Comparison>], ConfirmationStatus)] = &[
            (Regressed, &[Some(Regressed), Some(Regressed)], Confirmed),
            (Fixed, &[Some(Fixed), Some(Fixed)], Confirmed),
            (Regressed, &[Some(Regressed)], Confirmed),
            (Regressed, &[], Confirmed),
            (Regressed, &[Some(Regressed), None], Pending),
            (Regressed, &[None, None], Pending),
            (Regressed, &[Some(SameTestPass), Some(Regressed)], Flaky),
            (Regressed, &[Some(Regressed), Some(SameTestPass)], Flaky),
            // one disagreeing run decides, whatever is still running
            (Regressed, &[Some(SameTestPass), None], Flaky),
            (Regressed, &[None, Some(SameBuildFail)], Flaky),
            (Fixed, &[Some(SameTestFail), Some(SameTestFail)], Flaky),
            // the other direction is a disagreement too
            (Regressed, &[Some(Fixed), Some(Regressed)], Flaky),
            // an infrastructure error in a confirmation run is no confirmation
            (Regressed, &[Some(Error), Some(Regressed)], Flaky),
            (
                Regressed,
                &[Some(SpuriousRegressed), Some(Regressed)],
                Flaky,
            ),
        ];
        for (first, runs, want) in cases {
            assert_eq!(status(*first, runs), *want, "{first} {runs:?}");
        }
    }

    #[test]
    fn names() {
        for (s, n) in [
            (Confirmed, "confirmed"),
            (Flaky, "flaky"),
            (Pending, "pending"),
        ] {
            assert_eq!(s.to_string(), n);
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(n));
        }
    }
}
