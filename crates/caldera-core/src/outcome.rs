//! What happened to a crate on one toolchain, and how two such outcomes compare.
//!
//! # Comparison precedence
//!
//! [`compare`]`(start, end)` is total: every pair of outcomes has an answer and nothing panics.
//! The rules, first match wins:
//!
//! 1. either side is [`Outcome::Error`] → `error` (infrastructure failed; nothing is known);
//! 2. either side is [`Outcome::PrepareFail`] → `prepare-fail`;
//! 3. either side is [`Outcome::Broken`] → `broken`;
//! 4. either side is [`Outcome::Skipped`] → `skipped`;
//! 5. both sides ran. Successes rank `test-pass` > `test-fail` > `build-fail`:
//!    * same kind on both sides → `same-test-pass`, `same-test-fail`, `same-test-skipped`
//!      (a `test-fail` for changed diagnostics is a `test-fail` like any other here);
//!    * `test-skipped` is **not ranked** against `test-pass` or `test-fail` — the build succeeded on
//!      both sides and tests ran on only one, so nothing can be said → `unknown`;
//!    * a new ICE (`build-fail:ice` on the end side, anything else but an ICE on the start side) →
//!      `regressed`, even from a spurious failure: an ICE is a compiler bug whatever came before;
//!    * a change *to* a spurious failure (a build or test failure for oom, timeout,
//!      no-output-timeout, no-space, network-access or pids-limit; see [`Outcome::is_spurious`])
//!      → `spurious-regressed`; a change *from* one → `spurious-fixed`; spurious on both sides →
//!      `spurious` (nothing is known about either side; re-run);
//!    * test-pass → test-fail, or any success → build-fail → `regressed`; the reverse → `fixed`;
//!    * build-fail on both sides (neither spurious, no new ICE) → `same-build-fail`, whatever the
//!      reasons (an ICE that becomes an ordinary error is not a fix of the crate).
//!
//! `unknown` is otherwise left for callers that lack one side's outcome.

#![warn(missing_docs)]

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::serde_util::{MapOnly, string_enum};

/// Why a build failed. JSON: `{"kind": "compiler-error", "codes": ["E0308"]}`, `{"kind": "oom"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BuildFailReason {
    /// rustc reported errors, with these error codes (like `E0308`), in order of first appearance.
    CompilerError {
        /// Error codes; may be empty when errors had none.
        #[serde(default)]
        codes: Vec<String>,
    },
    /// The compiler crashed (internal compiler error).
    Ice,
    /// The sandbox ran out of memory. Spurious.
    Oom,
    /// The build exceeded its total time limit. Spurious.
    Timeout,
    /// The build printed nothing for too long. Spurious.
    NoOutputTimeout,
    /// The disk filled up. Spurious.
    NoSpace,
    /// The build tried to use the network, which the sandbox forbids. Spurious.
    NetworkAccess,
    /// A fork or thread creation failed because the sandbox's pids limit was reached. Spurious.
    PidsLimit,
    /// Linking failed.
    Link,
    /// Dependencies failed to build.
    DependsOn {
        /// The crates that failed.
        #[serde(default)]
        crates: Vec<String>,
    },
    /// The failure was not classified.
    Unknown,
}

/// [`BuildFailReason`] as read from JSON. Every variant is a struct variant because serde lets
/// unit variants of an internally tagged enum ignore extra keys; this way `deny_unknown_fields`
/// holds for all of them.
#[derive(Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    rename = "BuildFailReason"
)]
enum BuildFailReasonIn {
    CompilerError {
        #[serde(default)]
        codes: Vec<String>,
    },
    Ice {},
    Oom {},
    Timeout {},
    NoOutputTimeout {},
    NoSpace {},
    NetworkAccess {},
    PidsLimit {},
    Link {},
    DependsOn {
        #[serde(default)]
        crates: Vec<String>,
    },
    Unknown {},
}

impl<'de> Deserialize<'de> for BuildFailReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use BuildFailReasonIn as I;
        Ok(match MapOnly::<I>::deserialize(deserializer)?.0 {
            I::CompilerError { codes } => BuildFailReason::CompilerError { codes },
            I::Ice {} => BuildFailReason::Ice,
            I::Oom {} => BuildFailReason::Oom,
            I::Timeout {} => BuildFailReason::Timeout,
            I::NoOutputTimeout {} => BuildFailReason::NoOutputTimeout,
            I::NoSpace {} => BuildFailReason::NoSpace,
            I::NetworkAccess {} => BuildFailReason::NetworkAccess,
            I::PidsLimit {} => BuildFailReason::PidsLimit,
            I::Link {} => BuildFailReason::Link,
            I::DependsOn { crates } => BuildFailReason::DependsOn { crates },
            I::Unknown {} => BuildFailReason::Unknown,
        })
    }
}

impl BuildFailReason {
    /// Failures that say nothing about the toolchain: oom, timeout, no-output-timeout, no-space,
    /// network-access, pids-limit (a sandbox limit or the sandbox's lack of network).
    pub const fn is_spurious(&self) -> bool {
        matches!(
            self,
            BuildFailReason::Oom
                | BuildFailReason::Timeout
                | BuildFailReason::NoOutputTimeout
                | BuildFailReason::NoSpace
                | BuildFailReason::NetworkAccess
                | BuildFailReason::PidsLimit
        )
    }

    /// The kebab-case kind, as in the JSON tag: `compiler-error`, `ice`, `oom`, ….
    pub const fn kind(&self) -> &'static str {
        match self {
            BuildFailReason::CompilerError { .. } => "compiler-error",
            BuildFailReason::Ice => "ice",
            BuildFailReason::Oom => "oom",
            BuildFailReason::Timeout => "timeout",
            BuildFailReason::NoOutputTimeout => "no-output-timeout",
            BuildFailReason::NoSpace => "no-space",
            BuildFailReason::NetworkAccess => "network-access",
            BuildFailReason::PidsLimit => "pids-limit",
            BuildFailReason::Link => "link",
            BuildFailReason::DependsOn { .. } => "depends-on",
            BuildFailReason::Unknown => "unknown",
        }
    }
}

impl fmt::Display for BuildFailReason {
    /// The kind, with the codes or crates in parentheses when there are any:
    /// `compiler-error(E0308,E0599)`, `depends-on(openssl-sys)`, `oom`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())?;
        let list = match self {
            BuildFailReason::CompilerError { codes } => codes,
            BuildFailReason::DependsOn { crates } => crates,
            _ => return Ok(()),
        };
        if !list.is_empty() {
            write!(f, "({})", list.join(","))?;
        }
        Ok(())
    }
}

string_enum! {
    /// Why a test step failed, when it is more than "some tests failed". JSON: a string.
    pub enum TestFailReason / ParseTestFailReasonError ("test failure reason") {
        /// The failing tests compare compiler output with stored expectations (trybuild,
        /// ui_test, compiletest) and the output changed. Not spurious: the compiler's
        /// diagnostics really differ, but it is not breakage of the crate either.
        DiagnosticsChange => "diagnostics-change",
        /// The sandbox ran out of memory during the tests. Spurious.
        Oom => "oom",
        /// The tests exceeded the total time limit. Spurious.
        Timeout => "timeout",
        /// The tests printed nothing for too long. Spurious.
        NoOutputTimeout => "no-output-timeout",
        /// The disk filled up during the tests. Spurious.
        NoSpace => "no-space",
        /// Every failed test tried to use the network, which the sandbox forbids. Spurious.
        NetworkAccess => "network-access",
        /// A fork or thread creation failed at the sandbox's pids limit. Spurious.
        PidsLimit => "pids-limit",
    }
}

impl TestFailReason {
    /// A sandbox limit or the sandbox's lack of network: everything but `diagnostics-change`.
    pub const fn is_spurious(self) -> bool {
        !matches!(self, TestFailReason::DiagnosticsChange)
    }
}

/// What happened to one crate on one toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Built, and every test passed.
    TestPass,
    /// Built, and some tests failed.
    TestFail {
        /// Names of the failed tests, when known.
        failed_tests: Vec<String>,
        /// Why, when it is more than "these tests failed": changed diagnostics, or a sandbox
        /// limit the tests hit.
        reason: Option<TestFailReason>,
    },
    /// Built; tests were not run (mode or override).
    TestSkipped,
    /// The build failed.
    BuildFail(BuildFailReason),
    /// Preparing the crate (fetching it, generating its lockfile, fetching dependencies) failed.
    PrepareFail {
        /// Why.
        reason: String,
    },
    /// The crate is known broken (by override); it was not run.
    Broken {
        /// Why.
        reason: String,
    },
    /// The crate was skipped by configuration.
    Skipped,
    /// Infrastructure failed (worker lost, Docker error, attempts exhausted…).
    Error {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The kebab-case kind, as in the JSON tag: `test-pass`, `build-fail`, ….
    pub const fn kind(&self) -> &'static str {
        match self {
            Outcome::TestPass => "test-pass",
            Outcome::TestFail { .. } => "test-fail",
            Outcome::TestSkipped => "test-skipped",
            Outcome::BuildFail(_) => "build-fail",
            Outcome::PrepareFail { .. } => "prepare-fail",
            Outcome::Broken { .. } => "broken",
            Outcome::Skipped => "skipped",
            Outcome::Error { .. } => "error",
        }
    }

    /// A build or test failure for a spurious reason (see [`BuildFailReason::is_spurious`] and
    /// [`TestFailReason::is_spurious`]): a sandbox limit, not the toolchain, decided it.
    pub const fn is_spurious(&self) -> bool {
        match self {
            Outcome::BuildFail(r) => r.is_spurious(),
            Outcome::TestFail {
                reason: Some(r), ..
            } => r.is_spurious(),
            _ => false,
        }
    }

    /// The limit or reason of a failure as one word (`oom`, `diagnostics-change`,
    /// `compiler-error`), for grouping: a build failure's reason kind, a test failure's reason;
    /// `None` for other outcomes and for test failures without a reason.
    pub fn reason_kind(&self) -> Option<&'static str> {
        match self {
            Outcome::BuildFail(r) => Some(r.kind()),
            Outcome::TestFail { reason, .. } => reason.map(TestFailReason::as_str),
            _ => None,
        }
    }

    /// The crate built (test-pass, test-fail or test-skipped).
    pub const fn built(&self) -> bool {
        matches!(
            self,
            Outcome::TestPass | Outcome::TestFail { .. } | Outcome::TestSkipped
        )
    }
}

impl fmt::Display for Outcome {
    /// Compact: `test-pass`, `test-fail(2)` (number of failed tests, omitted when none are
    /// known), `test-fail:diagnostics-change(1)`, `test-fail:timeout`,
    /// `build-fail:compiler-error(E0308,E0599)`, `prepare-fail`, …. Free-text reasons (of
    /// prepare-fail, broken, error) are left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::TestFail {
                failed_tests,
                reason,
            } if !failed_tests.is_empty() || reason.is_some() => {
                f.write_str("test-fail")?;
                if let Some(r) = reason {
                    write!(f, ":{r}")?;
                }
                if !failed_tests.is_empty() {
                    write!(f, "({})", failed_tests.len())?;
                }
                Ok(())
            }
            Outcome::BuildFail(reason) => write!(f, "build-fail:{reason}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// What happened to one crate on one toolchain, tagged by `kind`.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
enum OutcomeWire {
    TestPass,
    TestFail {
        #[serde(default)]
        failed_tests: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(inline))]
        reason: Option<TestFailReason>,
    },
    TestSkipped,
    BuildFail {
        #[cfg_attr(feature = "openapi", schema(inline))]
        reason: BuildFailReason,
    },
    PrepareFail {
        reason: String,
    },
    Broken {
        reason: String,
    },
    Skipped,
    Error {
        reason: String,
    },
}

impl From<Outcome> for OutcomeWire {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::TestPass => OutcomeWire::TestPass,
            Outcome::TestFail {
                failed_tests,
                reason,
            } => OutcomeWire::TestFail {
                failed_tests,
                reason,
            },
            Outcome::TestSkipped => OutcomeWire::TestSkipped,
            Outcome::BuildFail(reason) => OutcomeWire::BuildFail { reason },
            Outcome::PrepareFail { reason } => OutcomeWire::PrepareFail { reason },
            Outcome::Broken { reason } => OutcomeWire::Broken { reason },
            Outcome::Skipped => OutcomeWire::Skipped,
            Outcome::Error { reason } => OutcomeWire::Error { reason },
        }
    }
}

/// The tagged JSON form of an [`Outcome`], as read (struct variants only; see
/// [`BuildFailReasonIn`]).
#[derive(Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    rename = "Outcome"
)]
enum OutcomeIn {
    TestPass {},
    TestFail {
        #[serde(default)]
        failed_tests: Vec<String>,
        #[serde(default)]
        reason: Option<TestFailReason>,
    },
    TestSkipped {},
    BuildFail {
        reason: BuildFailReason,
    },
    PrepareFail {
        reason: String,
    },
    Broken {
        reason: String,
    },
    Skipped {},
    Error {
        reason: String,
    },
}

impl From<OutcomeIn> for Outcome {
    fn from(o: OutcomeIn) -> Self {
        match o {
            OutcomeIn::TestPass {} => Outcome::TestPass,
            OutcomeIn::TestFail {
                failed_tests,
                reason,
            } => Outcome::TestFail {
                failed_tests,
                reason,
            },
            OutcomeIn::TestSkipped {} => Outcome::TestSkipped,
            OutcomeIn::BuildFail { reason } => Outcome::BuildFail(reason),
            OutcomeIn::PrepareFail { reason } => Outcome::PrepareFail { reason },
            OutcomeIn::Broken { reason } => Outcome::Broken { reason },
            OutcomeIn::Skipped {} => Outcome::Skipped,
            OutcomeIn::Error { reason } => Outcome::Error { reason },
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        OutcomeWire::from(self.clone()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MapOnly::<OutcomeIn>::deserialize(deserializer).map(|o| Outcome::from(o.0))
    }
}

string_enum! {
    /// How a crate's end outcome compares with its start outcome; see the module docs.
    pub enum Comparison / ParseComparisonError ("comparison") {
        /// Worse on the end toolchain.
        Regressed => "regressed",
        /// Better on the end toolchain.
        Fixed => "fixed",
        /// Worse, but the end failure is spurious: re-run before believing it.
        SpuriousRegressed => "spurious-regressed",
        /// Better, but the start failure was spurious.
        SpuriousFixed => "spurious-fixed",
        /// Failed for spurious reasons on both sides: nothing is known; re-run.
        Spurious => "spurious",
        /// Failed to build on both.
        SameBuildFail => "same-build-fail",
        /// Tests failed on both.
        SameTestFail => "same-test-fail",
        /// Built on both, tests skipped on both.
        SameTestSkipped => "same-test-skipped",
        /// Tests passed on both.
        SameTestPass => "same-test-pass",
        /// Skipped by configuration.
        Skipped => "skipped",
        /// Known broken.
        Broken => "broken",
        /// Preparing the crate failed.
        PrepareFail => "prepare-fail",
        /// Infrastructure failed on at least one side.
        Error => "error",
        /// The outcomes cannot be compared (or one is missing).
        Unknown => "unknown",
    }
}

/// Compares the start outcome with the end outcome; see the module docs for the precedence.
pub fn compare(start: &Outcome, end: &Outcome) -> Comparison {
    use BuildFailReason as R;
    use Comparison as C;
    use Outcome as O;

    match (start, end) {
        (O::Error { .. }, _) | (_, O::Error { .. }) => return C::Error,
        (O::PrepareFail { .. }, _) | (_, O::PrepareFail { .. }) => return C::PrepareFail,
        (O::Broken { .. }, _) | (_, O::Broken { .. }) => return C::Broken,
        (O::Skipped, _) | (_, O::Skipped) => return C::Skipped,
        (O::BuildFail(R::Ice), O::BuildFail(R::Ice)) => return C::SameBuildFail,
        (_, O::BuildFail(R::Ice)) => return C::Regressed,
        _ => {}
    }
    match (start.is_spurious(), end.is_spurious()) {
        (true, true) => return C::Spurious,
        (false, true) => return C::SpuriousRegressed,
        (true, false) => return C::SpuriousFixed,
        (false, false) => {}
    }
    match (start, end) {
        (O::TestPass, O::TestPass) => C::SameTestPass,
        (O::TestFail { .. }, O::TestFail { .. }) => C::SameTestFail,
        (O::TestSkipped, O::TestSkipped) => C::SameTestSkipped,
        (O::TestPass, O::TestFail { .. }) => C::Regressed,
        (O::TestFail { .. }, O::TestPass) => C::Fixed,
        (O::TestSkipped, O::TestPass | O::TestFail { .. })
        | (O::TestPass | O::TestFail { .. }, O::TestSkipped) => C::Unknown,
        (O::BuildFail(_), O::BuildFail(_)) => C::SameBuildFail,
        (_, O::BuildFail(_)) => C::Regressed,
        (O::BuildFail(_), _) => C::Fixed,
        // the first match above returned for every other outcome
        _ => C::Unknown,
    }
}

#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::{RefOr, Schema};
    use utoipa::{PartialSchema, ToSchema};

    impl PartialSchema for super::Outcome {
        fn schema() -> RefOr<Schema> {
            <super::OutcomeWire as PartialSchema>::schema()
        }
    }

    impl ToSchema for super::Outcome {}
}

/// One crate's results on both toolchains, as the report reads them.
/// JSON: `{"crate": "reg:foo@1.0.0", "start": {...}, "end": {...}, "start_log": "...", "end_log": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateResult {
    /// The crate.
    #[serde(rename = "crate")]
    pub krate: crate::crates::CrateId,
    /// Outcome on the start (baseline) toolchain.
    pub start: Outcome,
    /// Outcome on the end (candidate) toolchain.
    pub end: Outcome,
    /// Object-storage key of the start log, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_log: Option<String>,
    /// Object-storage key of the end log, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_log: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use BuildFailReason as R;
    use Comparison as C;
    use serde_json::json;

    /// One representative of every outcome variant, every build-fail reason included. The match
    /// in `index_of` has no wildcard, so a new variant fails to compile until it is added here.
    fn samples() -> Vec<Outcome> {
        vec![
            Outcome::TestPass,
            Outcome::TestFail {
                failed_tests: vec!["a::b".into()],
                reason: None,
            },
            Outcome::TestFail {
                failed_tests: vec!["ui".into()],
                reason: Some(TestFailReason::DiagnosticsChange),
            },
            Outcome::TestFail {
                failed_tests: vec![],
                reason: Some(TestFailReason::Timeout),
            },
            Outcome::TestSkipped,
            Outcome::BuildFail(R::CompilerError {
                codes: vec!["E0308".into()],
            }),
            Outcome::BuildFail(R::Ice),
            Outcome::BuildFail(R::Oom),
            Outcome::BuildFail(R::Timeout),
            Outcome::BuildFail(R::NoOutputTimeout),
            Outcome::BuildFail(R::NoSpace),
            Outcome::BuildFail(R::NetworkAccess),
            Outcome::BuildFail(R::PidsLimit),
            Outcome::BuildFail(R::Link),
            Outcome::BuildFail(R::DependsOn {
                crates: vec!["openssl-sys".into()],
            }),
            Outcome::BuildFail(R::Unknown),
            Outcome::PrepareFail {
                reason: "fetch failed".into(),
            },
            Outcome::Broken {
                reason: "known".into(),
            },
            Outcome::Skipped,
            Outcome::Error {
                reason: "worker lost".into(),
            },
        ]
    }

    fn index_of(o: &Outcome) -> usize {
        use TestFailReason as T;
        match o {
            Outcome::TestPass => 0,
            Outcome::TestFail { reason: None, .. } => 1,
            Outcome::TestFail {
                reason: Some(T::DiagnosticsChange),
                ..
            } => 2,
            Outcome::TestFail {
                reason:
                    Some(
                        T::Timeout
                        | T::Oom
                        | T::NoOutputTimeout
                        | T::NoSpace
                        | T::NetworkAccess
                        | T::PidsLimit,
                    ),
                ..
            } => 3,
            Outcome::TestSkipped => 4,
            Outcome::BuildFail(r) => match r {
                R::CompilerError { .. } => 5,
                R::Ice => 6,
                R::Oom => 7,
                R::Timeout => 8,
                R::NoOutputTimeout => 9,
                R::NoSpace => 10,
                R::NetworkAccess => 11,
                R::PidsLimit => 12,
                R::Link => 13,
                R::DependsOn { .. } => 14,
                R::Unknown => 15,
            },
            Outcome::PrepareFail { .. } => 16,
            Outcome::Broken { .. } => 17,
            Outcome::Skipped => 18,
            Outcome::Error { .. } => 19,
        }
    }

    const RG: C = C::Regressed;
    const FX: C = C::Fixed;
    const SR: C = C::SpuriousRegressed;
    const SF: C = C::SpuriousFixed;
    const SP: C = C::Spurious;
    const SBF: C = C::SameBuildFail;
    const STF: C = C::SameTestFail;
    const STS: C = C::SameTestSkipped;
    const STP: C = C::SameTestPass;
    const SK: C = C::Skipped;
    const BR: C = C::Broken;
    const PF: C = C::PrepareFail;
    const ER: C = C::Error;
    const UN: C = C::Unknown;

    /// `TABLE[start][end]`, written out by hand. Columns (end), in `samples()` order:
    /// pass fail fail:diagnostics fail:timeout skip | CE ICE OOM TO NOTO NOSP NET PIDS LINK DEP
    /// UNK | PREP BRKN SKIP ERR
    #[rustfmt::skip]
    const TABLE: [[C; 20]; 20] = [
        /* test-pass    */ [STP, RG,  RG,  SR,  UN,  RG,  RG,  SR,  SR,  SR,  SR,  SR,  SR,  RG,  RG,  RG,  PF, BR, SK, ER],
        /* test-fail    */ [FX,  STF, STF, SR,  UN,  RG,  RG,  SR,  SR,  SR,  SR,  SR,  SR,  RG,  RG,  RG,  PF, BR, SK, ER],
        /* tf:diagnostic*/ [FX,  STF, STF, SR,  UN,  RG,  RG,  SR,  SR,  SR,  SR,  SR,  SR,  RG,  RG,  RG,  PF, BR, SK, ER],
        /* tf:timeout   */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* test-skipped */ [UN,  UN,  UN,  SR,  STS, RG,  RG,  SR,  SR,  SR,  SR,  SR,  SR,  RG,  RG,  RG,  PF, BR, SK, ER],
        /* bf:compiler  */ [FX,  FX,  FX,  SR,  FX,  SBF, RG,  SR,  SR,  SR,  SR,  SR,  SR,  SBF, SBF, SBF, PF, BR, SK, ER],
        /* bf:ice       */ [FX,  FX,  FX,  SR,  FX,  SBF, SBF, SR,  SR,  SR,  SR,  SR,  SR,  SBF, SBF, SBF, PF, BR, SK, ER],
        /* bf:oom       */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:timeout   */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:no-output */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:no-space  */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:network   */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:pids      */ [SF,  SF,  SF,  SP,  SF,  SF,  RG,  SP,  SP,  SP,  SP,  SP,  SP,  SF,  SF,  SF,  PF, BR, SK, ER],
        /* bf:link      */ [FX,  FX,  FX,  SR,  FX,  SBF, RG,  SR,  SR,  SR,  SR,  SR,  SR,  SBF, SBF, SBF, PF, BR, SK, ER],
        /* bf:depends   */ [FX,  FX,  FX,  SR,  FX,  SBF, RG,  SR,  SR,  SR,  SR,  SR,  SR,  SBF, SBF, SBF, PF, BR, SK, ER],
        /* bf:unknown   */ [FX,  FX,  FX,  SR,  FX,  SBF, RG,  SR,  SR,  SR,  SR,  SR,  SR,  SBF, SBF, SBF, PF, BR, SK, ER],
        /* prepare-fail */ [PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF,  PF, PF, PF, ER],
        /* broken       */ [BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  BR,  PF, BR, BR, ER],
        /* skipped      */ [SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  SK,  PF, BR, SK, ER],
        /* error        */ [ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER,  ER, ER, ER, ER],
    ];

    #[test]
    fn comparison_table_covers_every_pair() {
        let samples = samples();
        // The samples are exactly one of each variant, in index order.
        let indices: Vec<usize> = samples.iter().map(index_of).collect();
        assert_eq!(indices, (0..20).collect::<Vec<_>>());
        assert_eq!(TABLE.len(), samples.len());
        let mut checked = 0;
        for (i, start) in samples.iter().enumerate() {
            assert_eq!(TABLE[i].len(), samples.len());
            for (j, end) in samples.iter().enumerate() {
                assert_eq!(compare(start, end), TABLE[i][j], "compare({start}, {end})");
                checked += 1;
            }
        }
        assert_eq!(checked, 20 * 20);
        // Every comparison but `unknown`-by-absence shows up somewhere in the table.
        for c in Comparison::ALL {
            assert!(TABLE.iter().flatten().any(|t| t == c), "{c} never produced");
        }
    }

    #[test]
    fn comparison_ignores_payloads() {
        // The details inside a variant never change the comparison.
        let pairs = [
            (
                Outcome::TestFail {
                    failed_tests: vec![],
                    reason: None,
                },
                Outcome::TestFail {
                    failed_tests: vec!["x".into(), "y".into()],
                    reason: None,
                },
                C::SameTestFail,
            ),
            (
                Outcome::BuildFail(R::CompilerError { codes: vec![] }),
                Outcome::BuildFail(R::CompilerError {
                    codes: vec!["E0599".into()],
                }),
                C::SameBuildFail,
            ),
            (
                Outcome::Error {
                    reason: String::new(),
                },
                Outcome::TestPass,
                C::Error,
            ),
        ];
        for (a, b, expected) in pairs {
            assert_eq!(compare(&a, &b), expected);
        }
    }

    /// Outside the new-ICE rule, swapping the sides mirrors the answer.
    #[test]
    fn comparison_mirrors() {
        let mirror = |c: C| match c {
            C::Regressed => C::Fixed,
            C::Fixed => C::Regressed,
            C::SpuriousRegressed => C::SpuriousFixed,
            C::SpuriousFixed => C::SpuriousRegressed,
            other => other,
        };
        let samples = samples();
        for a in &samples {
            for b in &samples {
                let ice = |o: &Outcome| matches!(o, Outcome::BuildFail(R::Ice));
                if ice(a) || ice(b) {
                    continue;
                }
                assert_eq!(compare(b, a), mirror(compare(a, b)), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn spurious_reasons() {
        let expected = [
            (R::CompilerError { codes: vec![] }, false),
            (R::Ice, false),
            (R::Oom, true),
            (R::Timeout, true),
            (R::NoOutputTimeout, true),
            (R::NoSpace, true),
            (R::NetworkAccess, true),
            (R::PidsLimit, true),
            (R::Link, false),
            (R::DependsOn { crates: vec![] }, false),
            (R::Unknown, false),
        ];
        for (r, spurious) in expected {
            assert_eq!(r.is_spurious(), spurious, "{r}");
            assert_eq!(Outcome::BuildFail(r).is_spurious(), spurious);
        }
        for r in TestFailReason::ALL {
            let spurious = *r != TestFailReason::DiagnosticsChange;
            assert_eq!(r.is_spurious(), spurious, "{r}");
            let o = Outcome::TestFail {
                failed_tests: vec![],
                reason: Some(*r),
            };
            assert_eq!(o.is_spurious(), spurious, "{o}");
        }
        let plain = Outcome::TestFail {
            failed_tests: vec!["t".into()],
            reason: None,
        };
        assert!(!plain.is_spurious());
    }

    #[test]
    fn display() {
        let cases = [
            (Outcome::TestPass, "test-pass"),
            (
                Outcome::TestFail {
                    failed_tests: vec!["a".into(), "b".into()],
                    reason: None,
                },
                "test-fail(2)",
            ),
            (
                Outcome::TestFail {
                    failed_tests: vec![],
                    reason: None,
                },
                "test-fail",
            ),
            (
                Outcome::TestFail {
                    failed_tests: vec!["ui".into()],
                    reason: Some(TestFailReason::DiagnosticsChange),
                },
                "test-fail:diagnostics-change(1)",
            ),
            (
                Outcome::TestFail {
                    failed_tests: vec![],
                    reason: Some(TestFailReason::PidsLimit),
                },
                "test-fail:pids-limit",
            ),
            (Outcome::BuildFail(R::PidsLimit), "build-fail:pids-limit"),
            (Outcome::TestSkipped, "test-skipped"),
            (
                Outcome::BuildFail(R::CompilerError {
                    codes: vec!["E0308".into(), "E0599".into()],
                }),
                "build-fail:compiler-error(E0308,E0599)",
            ),
            (
                Outcome::BuildFail(R::CompilerError { codes: vec![] }),
                "build-fail:compiler-error",
            ),
            (Outcome::BuildFail(R::Ice), "build-fail:ice"),
            (
                Outcome::BuildFail(R::NoOutputTimeout),
                "build-fail:no-output-timeout",
            ),
            (
                Outcome::BuildFail(R::DependsOn {
                    crates: vec!["a".into(), "b".into()],
                }),
                "build-fail:depends-on(a,b)",
            ),
            (Outcome::PrepareFail { reason: "x".into() }, "prepare-fail"),
            (Outcome::Broken { reason: "x".into() }, "broken"),
            (Outcome::Skipped, "skipped"),
            (Outcome::Error { reason: "x".into() }, "error"),
        ];
        for (o, s) in cases {
            assert_eq!(o.to_string(), s);
        }
    }

    #[test]
    fn json_round_trip_every_variant() {
        for o in samples() {
            let v = serde_json::to_value(&o).unwrap();
            assert_eq!(v["kind"], json!(o.kind()));
            assert_eq!(serde_json::from_value::<Outcome>(v).unwrap(), o);
        }
        assert_eq!(
            serde_json::to_value(Outcome::BuildFail(R::CompilerError {
                codes: vec!["E0308".into()]
            }))
            .unwrap(),
            json!({"kind": "build-fail", "reason": {"kind": "compiler-error", "codes": ["E0308"]}})
        );
        assert_eq!(
            serde_json::to_value(Outcome::TestFail {
                failed_tests: vec!["t".into()],
                reason: None,
            })
            .unwrap(),
            json!({"kind": "test-fail", "failed_tests": ["t"]})
        );
        assert_eq!(
            serde_json::to_value(Outcome::TestFail {
                failed_tests: vec!["ui".into()],
                reason: Some(TestFailReason::DiagnosticsChange),
            })
            .unwrap(),
            json!({"kind": "test-fail", "failed_tests": ["ui"], "reason": "diagnostics-change"})
        );
        assert_eq!(
            serde_json::to_value(Outcome::BuildFail(R::Oom)).unwrap(),
            json!({"kind": "build-fail", "reason": {"kind": "oom"}})
        );
        assert_eq!(
            serde_json::from_value::<Outcome>(json!({"kind": "test-fail"})).unwrap(),
            Outcome::TestFail {
                failed_tests: vec![],
                reason: None,
            }
        );
    }

    #[test]
    fn json_errors() {
        let cases = [
            (json!({"kind": "pass"}), "unknown variant `pass`"),
            (
                json!({"kind": "build-fail", "reason": {"kind": "oom", "x": 1}}),
                "unknown field `x`",
            ),
            (json!({"kind": "build-fail"}), "missing field `reason`"),
            (json!({"kind": "error"}), "missing field `reason`"),
            (
                json!({"kind": "test-fail", "failed": []}),
                "unknown field `failed`",
            ),
            (json!({"kind": "test-pass", "x": 1}), "unknown field `x`"),
            (
                json!({"kind": "test-fail", "reason": "flaky"}),
                "unknown test failure reason \"flaky\"",
            ),
            (
                json!({"kind": "skipped", "reason": "x"}),
                "unknown field `reason`",
            ),
            (
                json!(["test-pass"]),
                "invalid type: sequence, expected a JSON object",
            ),
            (
                json!({"kind": "build-fail", "reason": ["oom"]}),
                "invalid type: sequence, expected a JSON object",
            ),
            (json!("test-pass"), "invalid type: string \"test-pass\""),
        ];
        for (v, msg) in cases {
            let err = serde_json::from_value::<Outcome>(v.clone())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(msg), "{v}: {err}");
        }
    }

    #[test]
    fn comparison_strings() {
        let names = [
            "regressed",
            "fixed",
            "spurious-regressed",
            "spurious-fixed",
            "spurious",
            "same-build-fail",
            "same-test-fail",
            "same-test-skipped",
            "same-test-pass",
            "skipped",
            "broken",
            "prepare-fail",
            "error",
            "unknown",
        ];
        assert_eq!(Comparison::ALL.len(), names.len());
        for (c, name) in Comparison::ALL.iter().zip(names) {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(name.parse::<Comparison>().unwrap(), *c);
            assert_eq!(serde_json::to_value(c).unwrap(), json!(name));
        }
        assert!("regression".parse::<Comparison>().is_err());
    }
}
