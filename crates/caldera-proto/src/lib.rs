//! caldera's worker protocol: the generated tonic/prost code for `proto/caldera/v1/worker.proto`
//! and conversions between wire messages and caldera-core types.
//!
//! Bad wire data is rejected here, with an error naming the field, before it reaches the master's
//! scheduler or the worker's executor.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("caldera.v1");
}

use caldera_core::crates::CrateId;
use caldera_core::job::JobSpec;
use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};
use caldera_core::toolchain::Toolchain;
use v1::{build_fail, outcome};

/// A wire message that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct WireError {
    pub field: &'static str,
    pub message: String,
}

fn wire(field: &'static str, message: impl Into<String>) -> WireError {
    WireError {
        field,
        message: message.into(),
    }
}

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

impl From<&JobSpec> for v1::JobSpec {
    fn from(j: &JobSpec) -> Self {
        v1::JobSpec {
            experiment: j.experiment.clone(),
            crate_id: j.krate.to_string(),
            start: j.start.to_string(),
            end: j.end.to_string(),
            mode: j.mode.to_string(),
            cap_lints: j.cap_lints.to_string(),
            skip_tests: j.skip_tests,
            quiet: j.quiet,
            extra_timeout_secs: j.extra_timeout_secs,
            extra_memory_mib: j.extra_memory_mib,
            run: j.run,
        }
    }
}

impl TryFrom<v1::JobSpec> for JobSpec {
    type Error = WireError;
    fn try_from(j: v1::JobSpec) -> Result<Self, WireError> {
        if j.experiment.is_empty() {
            return Err(wire("spec.experiment", "empty"));
        }
        let toolchain = |field, s: &str| {
            s.parse::<Toolchain>()
                .map_err(|e| wire(field, format!("{s:?}: {e}")))
        };
        Ok(JobSpec {
            krate: j
                .crate_id
                .parse::<CrateId>()
                .map_err(|e| wire("spec.crate_id", format!("{:?}: {e}", j.crate_id)))?,
            start: toolchain("spec.start", &j.start)?,
            end: toolchain("spec.end", &j.end)?,
            mode: j
                .mode
                .parse()
                .map_err(|e| wire("spec.mode", format!("{:?}: {e}", j.mode)))?,
            cap_lints: j
                .cap_lints
                .parse()
                .map_err(|e| wire("spec.cap_lints", format!("{:?}: {e}", j.cap_lints)))?,
            experiment: j.experiment,
            skip_tests: j.skip_tests,
            quiet: j.quiet,
            extra_timeout_secs: j.extra_timeout_secs,
            extra_memory_mib: j.extra_memory_mib,
            run: j.run,
        })
    }
}

/// Parse a lease token (a UUID in its hyphenated form).
pub fn parse_lease_token(field: &'static str, s: &str) -> Result<uuid_like::LeaseToken, WireError> {
    uuid_like::LeaseToken::parse(s)
        .ok_or_else(|| wire(field, format!("{s:?} is not a lease token")))
}

/// Lease tokens are UUIDs; this crate checks their shape without depending on the uuid crate.
pub mod uuid_like {
    /// A syntactically valid lease token (36-character hyphenated UUID, lowercase).
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct LeaseToken(pub String);

    impl LeaseToken {
        pub fn parse(s: &str) -> Option<LeaseToken> {
            let ok = s.len() == 36
                && s.bytes().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => b == b'-',
                    _ => b.is_ascii_hexdigit(),
                });
            ok.then(|| LeaseToken(s.to_ascii_lowercase()))
        }
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

        let good = v1::JobSpec {
            experiment: "e".into(),
            crate_id: "reg:serde@1.0.0".into(),
            start: "stable".into(),
            end: "nightly".into(),
            mode: "build-and-test".into(),
            cap_lints: "forbid".into(),
            ..Default::default()
        };
        let spec = JobSpec::try_from(good.clone()).unwrap();
        assert_eq!(v1::JobSpec::from(&spec), good, "round trip");
        for (field, mutate) in [
            (
                "spec.experiment",
                Box::new(|j: &mut v1::JobSpec| j.experiment.clear())
                    as Box<dyn Fn(&mut v1::JobSpec)>,
            ),
            (
                "spec.crate_id",
                Box::new(|j: &mut v1::JobSpec| j.crate_id = "nope".into()),
            ),
            (
                "spec.start",
                Box::new(|j: &mut v1::JobSpec| j.start = "".into()),
            ),
            (
                "spec.end",
                Box::new(|j: &mut v1::JobSpec| j.end = "nightlyy".into()),
            ),
            (
                "spec.mode",
                Box::new(|j: &mut v1::JobSpec| j.mode = "fuzz".into()),
            ),
            (
                "spec.cap_lints",
                Box::new(|j: &mut v1::JobSpec| j.cap_lints = "loud".into()),
            ),
        ] {
            let mut j = good.clone();
            mutate(&mut j);
            assert_eq!(JobSpec::try_from(j).unwrap_err().field, field);
        }
        assert!(parse_lease_token("lease_token", "0f8fad5b-d9cb-469f-a165-70867728950e").is_ok());
        assert_eq!(
            parse_lease_token("lease_token", "x").unwrap_err().field,
            "lease_token"
        );
    }
}
