//! The decision: the facts of a step → its verdict.

use super::*;

impl Facts {
    pub(crate) fn decide(
        self,
        kind: StepKind,
        termination: Termination,
        pids_limit_hit: bool,
    ) -> Classification {
        use BuildFailReason as R;
        use TestFailReason as T;
        // a kill or a limit hit while test binaries ran is a test failure; during the build
        // part of the step, a build failure
        let in_tests = kind.runs_tests() && self.tests_started && !self.build_failed;
        let limit = |build: R, test: T, note: &str| {
            let outcome = if in_tests {
                Outcome::TestFail {
                    failed_tests: self.unfinished_test.iter().cloned().collect(),
                    reason: Some(test),
                }
            } else {
                Outcome::BuildFail(build)
            };
            let mut c = Classification::new(outcome);
            c.note(note);
            c
        };
        let mut c = match (kind, termination) {
            (StepKind::Fetch, t) => self.prepare_fail(t),
            _ if self.farm_denied.is_some() => {
                let evidence = self.farm_denied.as_deref().unwrap_or_default();
                let mut c = Classification::new(Outcome::Error {
                    reason: format!(
                        "the sandbox could not read a path the farm provides: {evidence}"
                    ),
                });
                c.note("permission denied on the cargo home or a toolchain: the farm's fault, never the crate's");
                c
            }
            _ if pids_limit_hit => limit(
                R::PidsLimit,
                T::PidsLimit,
                "the sandbox's pids limit was reached: a fork or thread creation failed",
            ),
            (_, Termination::Timeout) => limit(R::Timeout, T::Timeout, "step timed out"),
            (_, Termination::NoOutputTimeout) => limit(
                R::NoOutputTimeout,
                T::NoOutputTimeout,
                "step printed nothing for too long",
            ),
            (_, Termination::OomKilled) => limit(R::Oom, T::Oom, "the OOM killer killed a process"),
            (k, _) if k.runs_tests() => self.decide_test(),
            _ => self.decide_build(),
        };
        match termination {
            Termination::Exited(137) | Termination::Signalled(9) => c.note(format!(
                "step {termination} (SIGKILL), and the cgroup saw no OOM kill: not counted as out of memory"
            )),
            Termination::Signalled(sig) => c.note(format!("step killed by signal {sig}")),
            _ => {}
        }
        if let Some(e) = &self.sigkill {
            c.note(format!("a process was killed by SIGKILL: {e}"));
        }
        self.flags_and_notes(&mut c);
        c
    }

    fn prepare_fail(&self, termination: Termination) -> Classification {
        let reason = match (termination, &self.first_error) {
            (Termination::Exited(_), Some(e)) => e.clone(),
            (t, _) => format!("fetch {t}"),
        };
        Classification::new(Outcome::PrepareFail { reason })
    }

    fn with_evidence(outcome: Outcome, what: &str, evidence: &str) -> Classification {
        let mut c = Classification::new(outcome);
        c.note(format!("{what}: {evidence}"));
        c
    }

    fn decide_build(&self) -> Classification {
        use BuildFailReason as R;
        let fail = |r: R, what: &str, e: &str| Self::with_evidence(Outcome::BuildFail(r), what, e);
        if let Some(e) = &self.oom {
            return fail(R::Oom, "out of memory", e);
        }
        if let Some(e) = &self.no_space {
            return fail(R::NoSpace, "disk full", e);
        }
        if let Some(e) = &self.ice {
            return fail(R::Ice, "internal compiler error", e);
        }
        if let Some(e) = &self.network {
            return fail(R::NetworkAccess, "network access", e);
        }
        if let Some(e) = &self.link {
            return fail(R::Link, "link failure", e);
        }
        if !self.deps.is_empty() {
            return Classification::new(Outcome::BuildFail(R::DependsOn {
                crates: self.deps.iter().cloned().collect(),
            }));
        }
        if self.own_errors {
            return Classification::new(Outcome::BuildFail(R::CompilerError {
                codes: self.own_codes.iter().cloned().collect(),
            }));
        }
        let mut c = Classification::new(Outcome::BuildFail(R::Unknown));
        if let Some(e) = &self.own_build_script {
            c.note(format!("build script failed: {e}"));
        }
        if let Some(e) = &self.first_error {
            c.note(format!("first error: {e}"));
        }
        c
    }

    fn decide_test(&self) -> Classification {
        use TestFailReason as T;
        if let Some(e) = &self.ice {
            let outcome = Outcome::BuildFail(BuildFailReason::Ice);
            return Self::with_evidence(outcome, "internal compiler error", e);
        }
        // evidence printed before any test binary ran belongs to the step's build part
        let build_evidence = [&self.no_space, &self.network, &self.oom, &self.link]
            .iter()
            .any(|e| e.is_some());
        if self.build_failed
            || self.own_errors
            || !self.deps.is_empty()
            || (!self.tests_started && build_evidence)
        {
            let mut c = self.decide_build();
            c.note("the build part of the test step failed");
            return c;
        }
        let failed: Vec<String> = self.failed_tests.iter().cloned().collect();
        let test_fail = |reason: Option<T>| Outcome::TestFail {
            failed_tests: failed.clone(),
            reason,
        };
        if let Some(e) = &self.no_space {
            return Self::with_evidence(test_fail(Some(T::NoSpace)), "disk full", e);
        }
        let all_attributed =
            !failed.is_empty() && failed.iter().all(|t| self.attributed.contains_key(t));
        if all_attributed {
            let worst = failed.iter().filter_map(|t| self.attributed.get(t)).max();
            let reason = match worst {
                Some(Spurious::NoSpace) => T::NoSpace,
                _ => T::NetworkAccess,
            };
            let mut c = Classification::new(test_fail(Some(reason)));
            c.note(format!("every failed test hit this: {}", failed.join(", ")));
            if let Some(e) = &self.attributed_evidence {
                c.note(e.clone());
            }
            return c;
        }
        if failed.is_empty()
            && let Some(e) = &self.network
        {
            return Self::with_evidence(test_fail(Some(T::NetworkAccess)), "network access", e);
        }
        self.decide_test_failures(failed)
    }

    /// The verdict of a test step whose failures are the tests' own (or unnamed): plain
    /// `test-fail`, or `test-fail:diagnostics-change` when every failed test saw compiler output
    /// change, with notes naming the tests that saw a change or hit the sandbox.
    fn decide_test_failures(&self, failed: Vec<String>) -> Classification {
        use TestFailReason as T;
        let test_fail = |reason: Option<T>| Outcome::TestFail {
            failed_tests: failed.clone(),
            reason,
        };
        let diagnostics = if failed.is_empty() {
            self.diagnostics_changed.is_some()
        } else {
            failed.iter().all(|t| self.diagnostics_tests.contains(t))
        };
        let mut c = Classification::new(test_fail(diagnostics.then_some(T::DiagnosticsChange)));
        if diagnostics {
            c.note("every failed test compares compiler output with stored expectations");
        } else if !self.diagnostics_tests.is_empty() {
            let ui: Vec<&str> = failed
                .iter()
                .filter(|t| self.diagnostics_tests.contains(*t))
                .map(String::as_str)
                .collect();
            c.note(format!(
                "failed tests that saw compiler output change: {} (others failed otherwise)",
                ui.join(", ")
            ));
        }
        let spurious: Vec<&str> = failed
            .iter()
            .filter(|t| self.attributed.contains_key(*t))
            .map(String::as_str)
            .collect();
        if !spurious.is_empty() {
            c.note(format!(
                "failed tests that hit the sandbox (network or disk): {}",
                spurious.join(", ")
            ));
        }
        if failed.is_empty()
            && let Some(e) = &self.first_error
        {
            c.note(format!("no failed test named; first error: {e}"));
        }
        c
    }

    fn flags_and_notes(&self, c: &mut Classification) {
        if let Some(e) = &self.diagnostics_changed {
            c.diagnostics_changed = true;
            c.note(format!("diagnostics changed: {e}"));
        }
        if let Some(e) = &self.contaminated {
            c.contaminated_target_dir = true;
            c.note(format!("target dir contaminated (E0464): {e}"));
        }
        if let Some(e) = &self.truncated {
            c.note(format!(
                "the log was truncated, evidence may be missing: {e}"
            ));
        }
        if self.path_fallback {
            c.note("own packages unknown: path packages were taken as the crate's own");
        }
    }
}
