//! Outcomes: what one side of a job ended with.

use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};

use crate::v1::{self, build_fail, outcome};
use crate::{WireError, wire};

fn test_fail_reason(r: TestFailReason) -> v1::TestFailReason {
    use v1::TestFailReason as W;
    match r {
        TestFailReason::DiagnosticsChange => W::DiagnosticsChange,
        TestFailReason::Oom => W::Oom,
        TestFailReason::Timeout => W::Timeout,
        TestFailReason::NoOutputTimeout => W::NoOutputTimeout,
        TestFailReason::NoSpace => W::NoSpace,
        TestFailReason::NetworkAccess => W::NetworkAccess,
        TestFailReason::PidsLimit => W::PidsLimit,
    }
}

/// The domain reason of a wire reason; `Unspecified` means none.
fn from_test_fail_reason(r: v1::TestFailReason) -> Option<TestFailReason> {
    use v1::TestFailReason as W;
    Some(match r {
        W::Unspecified => return None,
        W::DiagnosticsChange => TestFailReason::DiagnosticsChange,
        W::Oom => TestFailReason::Oom,
        W::Timeout => TestFailReason::Timeout,
        W::NoOutputTimeout => TestFailReason::NoOutputTimeout,
        W::NoSpace => TestFailReason::NoSpace,
        W::NetworkAccess => TestFailReason::NetworkAccess,
        W::PidsLimit => TestFailReason::PidsLimit,
    })
}

impl From<&Outcome> for v1::Outcome {
    fn from(o: &Outcome) -> Self {
        let e = v1::Empty {};
        let kind = match o {
            Outcome::TestPass => outcome::Kind::TestPass(e),
            Outcome::TestFail {
                failed_tests,
                reason,
            } => outcome::Kind::TestFail(v1::TestFail {
                failed_tests: failed_tests.clone(),
                reason: reason.map_or(v1::TestFailReason::Unspecified, test_fail_reason) as i32,
            }),
            Outcome::TestSkipped => outcome::Kind::TestSkipped(e),
            Outcome::BuildFail(reason) => {
                let r = match reason {
                    BuildFailReason::CompilerError { codes } => {
                        build_fail::Reason::CompilerError(v1::CompilerError {
                            codes: codes.clone(),
                        })
                    }
                    BuildFailReason::Ice => build_fail::Reason::Ice(e),
                    BuildFailReason::Oom => build_fail::Reason::Oom(e),
                    BuildFailReason::Timeout => build_fail::Reason::Timeout(e),
                    BuildFailReason::NoOutputTimeout => build_fail::Reason::NoOutputTimeout(e),
                    BuildFailReason::NoSpace => build_fail::Reason::NoSpace(e),
                    BuildFailReason::NetworkAccess => build_fail::Reason::NetworkAccess(e),
                    BuildFailReason::PidsLimit => build_fail::Reason::PidsLimit(e),
                    BuildFailReason::Link => build_fail::Reason::Link(e),
                    BuildFailReason::DependsOn { crates } => {
                        build_fail::Reason::DependsOn(v1::DependsOn {
                            crates: crates.clone(),
                        })
                    }
                    BuildFailReason::Unknown => build_fail::Reason::Unknown(e),
                };
                outcome::Kind::BuildFail(v1::BuildFail { reason: Some(r) })
            }
            Outcome::PrepareFail { reason } => outcome::Kind::PrepareFail(v1::Reason {
                reason: reason.clone(),
            }),
            Outcome::Broken { reason } => outcome::Kind::Broken(v1::Reason {
                reason: reason.clone(),
            }),
            Outcome::Skipped => outcome::Kind::Skipped(e),
            Outcome::Error { reason } => outcome::Kind::Error(v1::Reason {
                reason: reason.clone(),
            }),
        };
        v1::Outcome { kind: Some(kind) }
    }
}

impl TryFrom<v1::Outcome> for Outcome {
    type Error = WireError;
    fn try_from(o: v1::Outcome) -> Result<Self, WireError> {
        Ok(match o.kind.ok_or_else(|| wire("outcome", "missing"))? {
            outcome::Kind::TestPass(_) => Outcome::TestPass,
            outcome::Kind::TestFail(t) => Outcome::TestFail {
                reason: match v1::TestFailReason::try_from(t.reason) {
                    Ok(r) => from_test_fail_reason(r),
                    Err(_) => {
                        return Err(wire(
                            "outcome.test_fail.reason",
                            format!("unknown reason {}", t.reason),
                        ));
                    }
                },
                failed_tests: t.failed_tests,
            },
            outcome::Kind::TestSkipped(_) => Outcome::TestSkipped,
            outcome::Kind::BuildFail(b) => Outcome::BuildFail(
                match b
                    .reason
                    .ok_or_else(|| wire("outcome.build_fail", "missing reason"))?
                {
                    build_fail::Reason::CompilerError(c) => {
                        BuildFailReason::CompilerError { codes: c.codes }
                    }
                    build_fail::Reason::Ice(_) => BuildFailReason::Ice,
                    build_fail::Reason::Oom(_) => BuildFailReason::Oom,
                    build_fail::Reason::Timeout(_) => BuildFailReason::Timeout,
                    build_fail::Reason::NoOutputTimeout(_) => BuildFailReason::NoOutputTimeout,
                    build_fail::Reason::NoSpace(_) => BuildFailReason::NoSpace,
                    build_fail::Reason::NetworkAccess(_) => BuildFailReason::NetworkAccess,
                    build_fail::Reason::PidsLimit(_) => BuildFailReason::PidsLimit,
                    build_fail::Reason::Link(_) => BuildFailReason::Link,
                    build_fail::Reason::DependsOn(d) => {
                        BuildFailReason::DependsOn { crates: d.crates }
                    }
                    build_fail::Reason::Unknown(_) => BuildFailReason::Unknown,
                },
            ),
            outcome::Kind::PrepareFail(r) => Outcome::PrepareFail { reason: r.reason },
            outcome::Kind::Broken(r) => Outcome::Broken { reason: r.reason },
            outcome::Kind::Skipped(_) => Outcome::Skipped,
            outcome::Kind::Error(r) => Outcome::Error { reason: r.reason },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_the_wire() {
        let all = vec![
            Outcome::TestPass,
            Outcome::TestFail {
                failed_tests: vec!["a::b".into(), "c".into()],
                reason: None,
            },
            Outcome::TestFail {
                failed_tests: vec!["ui".into()],
                reason: Some(TestFailReason::DiagnosticsChange),
            },
            Outcome::TestFail {
                failed_tests: vec![],
                reason: Some(TestFailReason::PidsLimit),
            },
            Outcome::BuildFail(BuildFailReason::PidsLimit),
            Outcome::TestSkipped,
            Outcome::BuildFail(BuildFailReason::CompilerError {
                codes: vec!["E0308".into()],
            }),
            Outcome::BuildFail(BuildFailReason::Ice),
            Outcome::BuildFail(BuildFailReason::Oom),
            Outcome::BuildFail(BuildFailReason::Timeout),
            Outcome::BuildFail(BuildFailReason::NoOutputTimeout),
            Outcome::BuildFail(BuildFailReason::NoSpace),
            Outcome::BuildFail(BuildFailReason::NetworkAccess),
            Outcome::BuildFail(BuildFailReason::Link),
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["reg:foo@1.0.0".into()],
            }),
            Outcome::BuildFail(BuildFailReason::Unknown),
            Outcome::PrepareFail {
                reason: "bad manifest".into(),
            },
            Outcome::Broken { reason: "x".into() },
            Outcome::Skipped,
            Outcome::Error {
                reason: "docker".into(),
            },
        ];
        for o in all {
            let w: v1::Outcome = (&o).into();
            assert_eq!(Outcome::try_from(w).unwrap(), o);
        }
    }

    #[test]
    fn bad_wire_data_names_the_field() {
        assert_eq!(
            Outcome::try_from(v1::Outcome { kind: None })
                .unwrap_err()
                .field,
            "outcome"
        );
        let bf = v1::Outcome {
            kind: Some(outcome::Kind::BuildFail(v1::BuildFail { reason: None })),
        };
        assert_eq!(
            Outcome::try_from(bf).unwrap_err().field,
            "outcome.build_fail"
        );
    }
}
