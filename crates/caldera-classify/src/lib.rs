//! Classification of what a cargo step printed into an [`Outcome`].
//!
//! The worker runs a crate's steps (fetch, build, `test --no-run`, test, check, clippy, doc, miri)
//! in the sandbox and hands each step's merged stdout+stderr, how the step ended ([`Termination`])
//! and which package ids are the crate's own ([`StepRun::own_packages`]) to [`classify_step`];
//! [`classify_job`] turns the steps of one side of a job into that side's final [`Classification`].
//! Nothing here does I/O.
//!
//! # What is read
//!
//! The output is read line by line, once. A line may carry the sandbox's timestamp prefix
//! (`[   1.234] `) and ANSI colours; both are ignored. Structure is preferred to English:
//!
//! * lines starting with `{"reason":` are cargo's JSON messages (`--message-format=json…`):
//!   `compiler-message` gives each diagnostic's level, code and package id; `compiler-artifact` and
//!   `build-script-executed` tell which package ids exist; `build-finished` says whether the build
//!   part of the step succeeded;
//! * lines starting with `{"type":` (or `{ "type":`) are libtest's JSON events (`--format json`);
//! * everything else is plain text: cargo's own `error:` lines, build script output, libtest's
//!   human output, panics, linker output.
//!
//! Phrases are matched only in plain text, in the messages of error-level JSON diagnostics (never
//! in warnings, nor in the rendered source snippets), and in the output of failed libtest JSON
//! events — all phrases in one pass per line.
//!
//! Package ids are compared by name and version ([`PackageId`]), so the old form
//! (`foo 0.1.0 (path+file:///src)`) and the spec form (`path+file:///src#foo@0.1.0`,
//! `registry+https://…#foo@1.2.3`) match each other. When `own_packages` is empty, `path+` packages
//! are taken to be the crate's own (the crate under test is always built from a local directory).
//!
//! # How a failed step is classified
//!
//! A step passed when it exited with status 0 ([`Termination::success`]); nothing else is looked
//! at then. For a failed step, first match wins:
//!
//! | # | evidence | build-ish step (build, test-no-run, check, clippy, doc) | test step (test, miri) |
//! |---|----------|------------------------|-----------|
//! | 0 | `Permission denied` / `(os error 13)` on a line naming a path the farm provides (`/caldera/cargo-home`, `/caldera/toolchain*`), or up to 4 lines after one | `error` (the farm's fault: retried as infrastructure, never the crate's outcome) | same |
//! | 1 | the cgroup counted a pids-limit hit during the step ([`StepRun::pids_limit_hit`]) | `pids-limit` | `test-fail:pids-limit` once test binaries ran, else as a build step |
//! | 2 | [`Termination::Timeout`] / [`NoOutputTimeout`](Termination::NoOutputTimeout) / [`OomKilled`](Termination::OomKilled) (the cgroup's OOM counter) | `timeout` / `no-output-timeout` / `oom` | `test-fail:timeout` / `…:no-output-timeout` / `…:oom` (naming the test in flight when known) once test binaries ran, else as a build step |
//! | — | exit status 137, killed by signal 9, or a process reported `(signal: 9, SIGKILL…)`, without the cgroup counting an OOM kill | never `oom` by itself (an operator, a sweep or a dying engine kill the same way; the worker turns a container that died into `error`): a note, then the rows below | same |
//! | 3 | `memory allocation of N bytes failed`, `LLVM ERROR: out of memory`, `virtual memory exhausted`, … | `oom` | ignored (a test allocating absurdly is a test bug) unless the build part failed |
//! | 4 | `No space left on device`, `Disk quota exceeded`, `(os error 28)` | `no-space` | `test-fail:no-space` when printed outside the failed tests' captured output, or when every failed test printed it (see 7); before any test binary ran, as a build step |
//! | 5 | a diagnostic of level `error: internal compiler error`, `the compiler unexpectedly panicked`, `query stack during panic`, rustc killed by SIGSEGV/SIGILL/SIGBUS/SIGABRT | `ice` (in any package) | same |
//! | 6 | the build part of a test step failed (`build-finished` false, errors in JSON diagnostics, a failed build script, `could not compile`) before the first test binary ran (after that, cargo JSON and `error:` lines are a test's output) | — | classified like a build-ish step (rows 7–11, left column) |
//! | 7 | network access (`Could not resolve host`, `failed to lookup address information`, `Temporary failure in name resolution`, `Name or service not known`, `Network is unreachable`, `No route to host`, `Connection refused` naming a non-local URL, cargo's `failed to download` / `attempting to make an HTTP request, but --offline was specified`, "requires network access") | `network-access` | `test-fail:network-access` only when **every** failed test printed such a line (or a no-space one) in its own captured output (or no test is named and the step printed one); otherwise `test-fail` and a note naming the tests that did |
//! | 8 | linker failure (``linking with `cc` failed``, `undefined reference to`, `collect2: error: ld returned`, `rust-lld: error:`, `cannot find -l…`, `could not find native static library`, ``linker `cc` not found``) | `link` | — (a doctest's link error is a test failure) |
//! | 9 | errors in JSON diagnostics of packages that are not the crate's own, or a dependency's failed build script / `could not compile` | `depends-on` with `reg:name@version` for registry packages, else the package name; sorted, deduplicated | — |
//! | 10 | errors in JSON diagnostics of the crate's own packages | `compiler-error` with the codes sorted and deduplicated: rustc codes (`E0308`) and, for denied lints, the lint name (`unused_imports`, `clippy::needless_return`); empty when no error had a code (`compile_error!`, many edition errors). rustc's `aborting due to …` summary is not an error | — |
//! | 11 | nothing of the above | `unknown` (plain cargo `error: …` lines alone, such as `could not compile`, end here; the first one is kept as a note) | `test-fail` with the failed tests; `test-fail:diagnostics-change` when **every** failed test showed a UI-test harness reporting changed compiler output (see below) — in its captured output, or in its test binary's run |
//!
//! Failed tests ([`failed_tests`]) come from libtest: `test NAME ... FAILED` lines of a test
//! binary's run, the `failures:` list at its end, and JSON `{"type":"test","event":"failed"}`
//! events. A test's captured output (`---- NAME stdout ----`) never contributes names, so a panic
//! message that looks like a result line is not mistaken for one. `NAME - should panic` is reported
//! as `NAME`. A test binary that failed without naming a failed test — it crashed (SIGSEGV, abort),
//! called `process::exit`, or has a custom harness — is reported as
//! `<LABEL>: STATUS`, e.g. `<unittests src/lib.rs>: signal: 11, SIGSEGV: invalid memory reference`,
//! where LABEL is what cargo printed after `Running` (`unittests src/lib.rs`, `tests/ui.rs`) or
//! `doctests NAME`, and STATUS what cargo printed in `process didn't exit successfully`. When the
//! binary ran its tests on one thread (or libtest JSON shows exactly one test in flight), the test
//! that was running when it crashed is named instead. Test names of different binaries are not
//! qualified; the list is sorted and deduplicated.
//!
//! Two flags ride along with any failed step:
//!
//! * [`Classification::diagnostics_changed`] — a UI-test harness reported that compiler output
//!   differs from its expectation (it decides the outcome only as in row 11): trybuild's `test … ... mismatch`, `EXPECTED:` followed by
//!   `ACTUAL OUTPUT:`, `TRYBUILD=overwrite`; compiletest/ui_test's `actual output differed from
//!   expected`, `The actual stderr differed from the expected stderr`, `normalized stderr`,
//!   `--bless`. (trybuild's `wip` — no `.stderr` file yet — is not a change.)
//! * [`Classification::contaminated_target_dir`] — E0464 (``multiple candidates for `rmeta`
//!   dependency``, or `rlib`/`dylib`, or the older ``multiple matching crates for `…` ``)
//!   appeared, as a JSON diagnostic or as text printed by a test that runs rustc. The worker must
//!   re-run the crate in a clean target dir before reporting anything.
//!
//! # The verdict of one side of a job
//!
//! [`classify_job`] looks at the steps in order; the first failed step decides and later steps are
//! ignored. A failed [`StepKind::Fetch`] is `prepare-fail` (with cargo's first error line, or the
//! termination, as the reason); a passed one never decides anything. When every step passed:
//!
//! | mode | steps passed | outcome |
//! |------|--------------|---------|
//! | build-and-test | a test step ran | `test-pass` |
//! | build-and-test | `skip_tests`, or no test step ran | `test-skipped` |
//! | build-only | any | `test-skipped` |
//! | check-only, clippy, rustdoc | any | `test-pass` |
//! | miri | a miri step ran | `test-pass` |
//! | miri | `skip_tests`, or no miri step ran | `test-skipped` |
//! | any | no step other than fetch | `error` (nothing was built, so nothing is known) |
//!
//! This is crater's mapping: build-only cannot say anything about tests, while check, clippy and
//! rustdoc runs are complete when they succeed. With `skip_tests`, test and miri steps in `steps`
//! are ignored (with a note).
//!
//! # Termination
//!
//! The worker maps the sandbox's facts to one [`Termination`]; when several apply, a timeout
//! (total, then no-output) comes first, then an OOM kill, then the exit status or signal.

#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::Deserialize;

use caldera_core::crates::CrateId;
use caldera_core::experiment::Mode;
use caldera_core::logtext::{CargoMessage, Diagnostic, strip_ansi};
use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};

/// The classifier's version, part of every result-cache fingerprint
/// (`caldera_core::fingerprint::Environment::classifier`): **bump it when a change can change an
/// outcome** (a new phrase, a changed rule in `decide`, a new outcome kind), so that results
/// classified by the old rules are no longer reused. Workers advertise it in `Hello`.
pub const CLASSIFIER_VERSION: u32 = 1;

mod decide;
mod package;
mod phrases;
mod scan;
mod tests_seen;

use package::Own;
use phrases::*;
use scan::*;
use tests_seen::*;

pub use package::{PackageId, PackageSource};
pub use phrases::no_space_phrases;

/// Which cargo step produced an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepKind {
    /// `cargo fetch` (or any preparation step): its failure is `prepare-fail`.
    Fetch,
    /// `cargo build`.
    Build,
    /// `cargo test --no-run`: builds the tests; its failure is a build failure.
    TestNoRun,
    /// `cargo test`: runs the tests.
    Test,
    /// `cargo check`.
    Check,
    /// `cargo clippy`.
    Clippy,
    /// `cargo doc` / `cargo rustdoc`.
    Doc,
    /// `cargo miri test`: builds and runs the tests under Miri.
    Miri,
}

impl StepKind {
    /// Every kind, in declaration order.
    pub const ALL: [StepKind; 8] = [
        StepKind::Fetch,
        StepKind::Build,
        StepKind::TestNoRun,
        StepKind::Test,
        StepKind::Check,
        StepKind::Clippy,
        StepKind::Doc,
        StepKind::Miri,
    ];

    /// Kebab-case name: `fetch`, `build`, `test-no-run`, `test`, `check`, `clippy`, `doc`, `miri`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StepKind::Fetch => "fetch",
            StepKind::Build => "build",
            StepKind::TestNoRun => "test-no-run",
            StepKind::Test => "test",
            StepKind::Check => "check",
            StepKind::Clippy => "clippy",
            StepKind::Doc => "doc",
            StepKind::Miri => "miri",
        }
    }

    /// The step runs tests (test, miri), so a failure that is not a build failure is `test-fail`.
    pub const fn runs_tests(self) -> bool {
        matches!(self, StepKind::Test | StepKind::Miri)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Exited by itself with this status.
    Exited(i32),
    /// Killed by this signal (not by the sandbox's timeouts).
    Signalled(i32),
    /// Killed for exceeding the total time limit.
    Timeout,
    /// Killed for printing nothing for too long.
    NoOutputTimeout,
    /// The kernel's OOM killer killed a process of the sandbox.
    OomKilled,
}

impl Termination {
    /// Exited with status 0.
    pub const fn success(self) -> bool {
        matches!(self, Termination::Exited(0))
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Termination::Exited(code) => write!(f, "exit status {code}"),
            Termination::Signalled(sig) => write!(f, "killed by signal {sig}"),
            Termination::Timeout => f.write_str("timed out"),
            Termination::NoOutputTimeout => f.write_str("no output for too long"),
            Termination::OomKilled => f.write_str("killed by the OOM killer"),
        }
    }
}

/// One step as it ran.
#[derive(Debug, Clone, Copy)]
pub struct StepRun<'a> {
    /// Which step.
    pub kind: StepKind,
    /// How it ended.
    pub termination: Termination,
    /// Merged stdout+stderr: cargo's `--message-format=json-diagnostic-rendered-ansi` JSON lines
    /// interleaved with plain text (see the module docs). The sandbox's timestamp prefixes may
    /// be left on.
    pub output: &'a str,
    /// Package ids (cargo's JSON `package_id`, old or spec form) of the crate's own packages — its
    /// workspace members. Everything else is a dependency.
    pub own_packages: &'a [String],
    /// A fork or thread creation failed during the step because the sandbox's pids limit was
    /// reached (the cgroup's `pids.events`).
    pub pids_limit_hit: bool,
}

/// What a failed step (or a whole side of a job) amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The outcome.
    pub outcome: Outcome,
    /// A UI-test harness saw compiler output differ from its expectation (see the module docs).
    /// The outcome is unaffected; reports show this as its own reason.
    pub diagnostics_changed: bool,
    /// E0464 was seen: the shared target dir held two builds of a dependency. Re-run the crate in
    /// a clean target dir before believing the outcome.
    pub contaminated_target_dir: bool,
    /// Human-readable evidence, at most [`MAX_NOTES`] lines of at most [`MAX_NOTE_LEN`] bytes each.
    pub notes: Vec<String>,
}

/// Most notes a [`Classification`] carries.
pub const MAX_NOTES: usize = 16;
/// Longest note, in bytes (longer evidence is cut at a character boundary and ends in `…`).
pub const MAX_NOTE_LEN: usize = 300;

impl Classification {
    /// A classification with this outcome, no flags and no notes.
    pub fn new(outcome: Outcome) -> Self {
        Classification {
            outcome,
            diagnostics_changed: false,
            contaminated_target_dir: false,
            notes: Vec::new(),
        }
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = clip(&note.into(), MAX_NOTE_LEN);
        if self.notes.len() < MAX_NOTES && !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }
}

/// The verdict on one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepVerdict {
    /// The step exited with status 0.
    Passed,
    /// The step failed, and this is why.
    Failed(Classification),
}

/// Classifies one step; see the module docs for the rules and their precedence.
pub fn classify_step(run: &StepRun<'_>) -> StepVerdict {
    if run.termination.success() {
        return StepVerdict::Passed;
    }
    let mut scan = Scan::new(run.kind, run.own_packages);
    scan.feed(run.output);
    let facts = scan.finish();
    StepVerdict::Failed(facts.decide(run.kind, run.termination, run.pids_limit_hit))
}

/// The final verdict of one side of a job (one toolchain), from its steps in the order they ran;
/// see the module docs for the mapping.
pub fn classify_job(mode: Mode, steps: &[StepRun<'_>], skip_tests: bool) -> Classification {
    let mut ignored_tests = 0usize;
    let mut built = false;
    let mut tests_ran = false;
    for (i, step) in steps.iter().enumerate() {
        if skip_tests && step.kind.runs_tests() {
            ignored_tests += 1;
            continue;
        }
        if let StepVerdict::Failed(mut c) = classify_step(step) {
            c.note(format!("decided by step {} ({})", i + 1, step.kind));
            if ignored_tests > 0 {
                c.note("test steps were ignored because tests are skipped");
            }
            return c;
        }
        built |= step.kind != StepKind::Fetch;
        tests_ran |= step.kind.runs_tests();
    }
    if !built {
        let mut c = Classification::new(Outcome::Error {
            reason: "no build step ran".into(),
        });
        c.note("a job needs at least one step besides fetch");
        return c;
    }
    let outcome = match mode {
        Mode::BuildAndTest | Mode::Miri if tests_ran => Outcome::TestPass,
        Mode::BuildAndTest | Mode::Miri | Mode::BuildOnly => Outcome::TestSkipped,
        Mode::CheckOnly | Mode::Clippy | Mode::Rustdoc => Outcome::TestPass,
    };
    let mut c = Classification::new(outcome);
    if ignored_tests > 0 {
        c.note("test steps were ignored because tests are skipped");
    }
    c
}

/// Failed tests named in a test step's output (libtest text or JSON), sorted and deduplicated,
/// including the synthetic `<LABEL>: STATUS` names of test binaries that failed without naming a
/// test; see the module docs.
pub fn failed_tests(output: &str) -> Vec<String> {
    let mut scan = Scan::new(StepKind::Test, &[]);
    scan.feed(output);
    scan.finish().failed_tests.into_iter().collect()
}

/// Codes of the errors rustc reported (as JSON diagnostics) in the given own packages, sorted and
/// deduplicated: rustc error codes and, for denied lints, the lint name.
pub fn error_codes(output: &str, own_packages: &[String]) -> Vec<String> {
    let mut scan = Scan::new(StepKind::Build, own_packages);
    scan.feed(output);
    scan.finish().own_codes.into_iter().collect()
}

#[cfg(test)]
mod tests;
