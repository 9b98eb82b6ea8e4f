//! Flaky memory: what differed between two runs of a crate that should have agreed, and whether
//! a failure is explained by what is already known to be flaky.
//!
//! Two outcomes *should agree* when they come from the same crate on the **same toolchain**: a
//! first run's side and the same side of one of its confirmation runs, or the start and end
//! sides of a calibration (A/A) experiment. Whatever differs between them is a *subject* of
//! flakiness, named by a string:
//!
//! * `test:NAME` — a test that failed on one side and not on the other (both sides ran their
//!   tests, and the failing side names its failed tests);
//! * otherwise the failure kind that appeared or disappeared: `build-fail:oom`,
//!   `build-fail:compiler-error` (the kind, without the error codes), `test-fail:timeout`,
//!   `test-fail` (tests failed, none named), `prepare-fail`, …;
//! * when the two outcomes differ but neither fails in a way of its own (`test-pass` against
//!   `test-skipped`), or they fail the same way with different details (other error codes), the
//!   outcomes themselves as [`Outcome`]'s `Display` writes them (`test-pass`,
//!   `build-fail:compiler-error(E0308)`).
//!
//! An `error` side (the infrastructure failed) is never evidence of anything: no subject.

use std::collections::BTreeSet;

use crate::outcome::Outcome;

/// The subjects a failing outcome fails on (empty for a success): the failed tests as
/// `test:NAME` for a test failure without a reason that names them, else its failure kind.
fn failure_subjects(o: &Outcome) -> BTreeSet<String> {
    match o {
        Outcome::TestPass | Outcome::TestSkipped | Outcome::Error { .. } => BTreeSet::new(),
        Outcome::TestFail {
            failed_tests,
            reason: None,
        } if !failed_tests.is_empty() => failed_tests.iter().map(|t| format!("test:{t}")).collect(),
        Outcome::TestFail { reason: None, .. } => BTreeSet::from(["test-fail".to_owned()]),
        Outcome::TestFail {
            reason: Some(r), ..
        } => BTreeSet::from([format!("test-fail:{r}")]),
        Outcome::BuildFail(r) => BTreeSet::from([format!("build-fail:{}", r.kind())]),
        other => BTreeSet::from([other.kind().to_owned()]),
    }
}

/// The subjects that differ between two outcomes of one crate on the same toolchain that should
/// have agreed (see the module documentation), in order; empty when they are equal or either is
/// an `error`.
pub fn subjects(a: &Outcome, b: &Outcome) -> Vec<String> {
    if a == b || matches!(a, Outcome::Error { .. }) || matches!(b, Outcome::Error { .. }) {
        return Vec::new();
    }
    let (fa, fb) = (failure_subjects(a), failure_subjects(b));
    let differ: Vec<String> = fa.symmetric_difference(&fb).cloned().collect();
    if !differ.is_empty() {
        return differ;
    }
    // same failure subjects (or none): the outcomes' details differ
    let (da, db) = (a.to_string(), b.to_string());
    if da == db {
        // only free text differs (a prepare-fail's reason): nothing to name
        return Vec::new();
    }
    let mut both = vec![da, db];
    both.sort();
    both
}

/// Whether a side's failure is explained by the crate's known flaky subjects: it fails, and every
/// subject it fails on is known (every failed test of a test failure without a reason is a known
/// flaky test; or its failure kind — `build-fail:oom`, `test-fail:timeout` — is itself known).
/// A success, an `error` or a failure with an unknown subject is not explained.
pub fn explained_by_known(outcome: &Outcome, known: &BTreeSet<String>) -> bool {
    let subjects = failure_subjects(outcome);
    !subjects.is_empty() && subjects.iter().all(|s| known.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{BuildFailReason, TestFailReason};

    fn tf(tests: &[&str]) -> Outcome {
        Outcome::TestFail {
            failed_tests: tests.iter().map(|t| t.to_string()).collect(),
            reason: None,
        }
    }

    fn tf_reason(tests: &[&str], r: TestFailReason) -> Outcome {
        Outcome::TestFail {
            failed_tests: tests.iter().map(|t| t.to_string()).collect(),
            reason: Some(r),
        }
    }

    fn ce(codes: &[&str]) -> Outcome {
        Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: codes.iter().map(|c| c.to_string()).collect(),
        })
    }

    fn err() -> Outcome {
        Outcome::Error {
            reason: "docker".into(),
        }
    }

    #[test]
    fn subjects_table() {
        let oom = Outcome::BuildFail(BuildFailReason::Oom);
        let cases: Vec<(Outcome, Outcome, &[&str])> = vec![
            // equal: nothing
            (Outcome::TestPass, Outcome::TestPass, &[]),
            (tf(&["a"]), tf(&["a"]), &[]),
            (oom.clone(), oom.clone(), &[]),
            // a test that failed once
            (Outcome::TestPass, tf(&["a"]), &["test:a"]),
            (tf(&["a"]), Outcome::TestPass, &["test:a"]),
            // each test failing on one side only, whatever the order
            (tf(&["a", "b"]), tf(&["b", "c"]), &["test:a", "test:c"]),
            (tf(&["b", "a"]), tf(&["a", "b"]), &[]),
            // unnamed test failure
            (Outcome::TestPass, tf(&[]), &["test-fail"]),
            // a limit the tests hit: the kind, not the test names
            (
                Outcome::TestPass,
                tf_reason(&["a"], TestFailReason::Timeout),
                &["test-fail:timeout"],
            ),
            (
                tf(&["a"]),
                tf_reason(&["a"], TestFailReason::Oom),
                &["test-fail:oom", "test:a"],
            ),
            // build failures: the kind appeared or disappeared
            (Outcome::TestPass, oom.clone(), &["build-fail:oom"]),
            (oom.clone(), tf(&["x"]), &["build-fail:oom", "test:x"]),
            (
                ce(&["E0308"]),
                Outcome::BuildFail(BuildFailReason::Ice),
                &["build-fail:compiler-error", "build-fail:ice"],
            ),
            // same kind, other details: the outcomes themselves
            (
                ce(&["E0308"]),
                ce(&["E0599"]),
                &[
                    "build-fail:compiler-error(E0308)",
                    "build-fail:compiler-error(E0599)",
                ],
            ),
            (
                Outcome::TestPass,
                Outcome::TestSkipped,
                &["test-pass", "test-skipped"],
            ),
            (
                Outcome::PrepareFail { reason: "x".into() },
                Outcome::TestPass,
                &["prepare-fail"],
            ),
            // free text only: nothing to name
            (
                Outcome::PrepareFail { reason: "x".into() },
                Outcome::PrepareFail { reason: "y".into() },
                &[],
            ),
            // infrastructure is never evidence
            (err(), Outcome::TestPass, &[]),
            (tf(&["a"]), err(), &[]),
            (err(), err(), &[]),
        ];
        for (a, b, want) in cases {
            assert_eq!(subjects(&a, &b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn explained_table() {
        let known: BTreeSet<String> = ["test:a", "test:b", "build-fail:oom", "test-fail:timeout"]
            .into_iter()
            .map(String::from)
            .collect();
        let cases: Vec<(Outcome, bool)> = vec![
            (tf(&["a"]), true),
            (tf(&["a", "b"]), true),
            (tf(&["a", "c"]), false),
            (tf(&[]), false),
            (tf_reason(&["z"], TestFailReason::Timeout), true),
            (tf_reason(&[], TestFailReason::Oom), false),
            (Outcome::BuildFail(BuildFailReason::Oom), true),
            (ce(&[]), false),
            (Outcome::TestPass, false),
            (Outcome::TestSkipped, false),
            (err(), false),
        ];
        for (o, want) in cases {
            assert_eq!(explained_by_known(&o, &known), want, "{o}");
        }
        assert!(!explained_by_known(&tf(&["a"]), &BTreeSet::new()));
    }
}
