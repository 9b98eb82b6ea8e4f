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

use crate::crates::CrateId;
use crate::experiment::Mode;
use crate::logtext::{CargoMessage, Diagnostic, strip_ansi};
use crate::outcome::{BuildFailReason, Outcome, TestFailReason};

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

// ---------------------------------------------------------------------------------------------
// Package ids

/// Where a package comes from, as far as a package id tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageSource {
    /// A registry (`registry+…`, `sparse+…`).
    Registry,
    /// A git repository (`git+…`).
    Git,
    /// A local directory (`path+…`).
    Path,
    /// Anything else.
    Other,
}

/// A package id from cargo's JSON messages, reduced to what identifies a package in one build:
/// name and version (cargo refuses two packages with the same name and version in one graph).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageId {
    /// Package name.
    pub name: String,
    /// Version, as cargo printed it.
    pub version: String,
    /// Source kind.
    pub source: PackageSource,
}

impl PackageId {
    /// Parses the old form `name version (source-url)` and the package-id-spec form
    /// `[kind+]url#name@version`, `url#name:version` or `url#version` (name = the URL's last path
    /// segment). `None` for anything else.
    pub fn parse(id: &str) -> Option<PackageId> {
        let id = id.trim();
        if let (Some(open), true) = (id.find(" ("), id.ends_with(')')) {
            let mut head = id[..open].split(' ');
            let (name, version) = (head.next()?, head.next()?);
            if head.next().is_some() {
                return None;
            }
            return PackageId::build(name, version, &id[open + 2..id.len() - 1]);
        }
        let (url, fragment) = id.rsplit_once('#')?;
        let (name, version) = match fragment.rsplit_once('@') {
            Some(nv) => nv,
            None => match fragment.rsplit_once(':') {
                Some(nv) => nv,
                None => {
                    let path = url.split('?').next().unwrap_or(url).trim_end_matches('/');
                    (path.rsplit('/').next()?, fragment)
                }
            },
        };
        PackageId::build(name, version, url)
    }

    fn build(name: &str, version: &str, url: &str) -> Option<PackageId> {
        let ok_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_');
        let ok_version = version.starts_with(|c: char| c.is_ascii_digit())
            && !version.contains(char::is_whitespace);
        if !ok_name || !ok_version || !url.contains(':') {
            return None;
        }
        let source = if url.starts_with("registry+") || url.starts_with("sparse+") {
            PackageSource::Registry
        } else if url.starts_with("git+") {
            PackageSource::Git
        } else if url.starts_with("path+") {
            PackageSource::Path
        } else {
            PackageSource::Other
        };
        Some(PackageId {
            name: name.to_owned(),
            version: version.to_owned(),
            source,
        })
    }

    /// How a failed dependency is named in [`BuildFailReason::DependsOn`]: the [`CrateId`]
    /// `reg:name@version` for a registry package, otherwise the package name.
    pub fn crate_label(&self) -> String {
        if self.source == PackageSource::Registry
            && let Ok(version) = semver::Version::parse(&self.version)
        {
            return CrateId::Registry {
                name: self.name.clone(),
                version,
                checksum: None,
            }
            .to_string();
        }
        self.name.clone()
    }

    fn key(&self) -> (String, String) {
        (self.name.clone(), self.version.clone())
    }
}

/// The crate's own packages, matched by name and version (or by the exact string when an id does
/// not parse).
struct Own {
    keys: HashSet<(String, String)>,
    names: HashSet<String>,
    raw: HashSet<String>,
    /// No own packages were given: `path+` packages count as own.
    path_fallback: bool,
}

impl Own {
    fn new(own: &[String]) -> Own {
        let mut o = Own {
            keys: HashSet::new(),
            names: HashSet::new(),
            raw: HashSet::new(),
            path_fallback: own.is_empty(),
        };
        for id in own {
            o.raw.insert(id.trim().to_owned());
            if let Some(p) = PackageId::parse(id) {
                o.names.insert(p.name.clone());
                o.keys.insert(p.key());
            }
        }
        o
    }

    fn contains(&self, raw: &str, parsed: Option<&PackageId>) -> bool {
        match parsed {
            Some(p) => {
                self.keys.contains(&(p.name.clone(), p.version.clone()))
                    || self.raw.contains(raw)
                    || (self.path_fallback && p.source == PackageSource::Path)
            }
            None => self.raw.contains(raw),
        }
    }

    fn has_name_version(&self, name: &str, version: Option<&str>) -> bool {
        match version {
            Some(v) => self.keys.contains(&(name.to_owned(), v.to_owned())),
            None => self.names.contains(name),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phrases

const ICE_PHRASES: &[&str] = &[
    "error: internal compiler error",
    "the compiler unexpectedly panicked",
    "query stack during panic",
    "rustc interrupted by SIGSEGV",
    "thread 'rustc' has overflowed its stack",
];

const OOM_PHRASES: &[&str] = &[
    "LLVM ERROR: out of memory",
    "virtual memory exhausted",
    "out of memory allocating",
    "Cannot allocate memory",
];

/// A process was killed by SIGKILL. Evidence only: the cgroup's OOM counter, not a SIGKILL, says
/// whether the OOM killer did it (an operator, a sweep or a dying engine kill the same way).
const SIGKILL_PHRASES: &[&str] = &[
    "(signal: 9, SIGKILL",
    "Killed signal terminated program",
    "terminated with signal 9 [Killed]",
];

/// Permission errors; with a farm path nearby, the farm's fault.
const PERMISSION_PHRASES: &[&str] = &["Permission denied", "(os error 13)"];

/// Where the sandbox mounts what the farm provides (caldera-sandbox's `paths`): the shared cargo
/// home with the registry sources, and the toolchains (`/caldera/toolchain`, `/caldera/toolchains`).
const FARM_PATHS: &[&str] = &["/caldera/cargo-home", "/caldera/toolchain"];

/// How many lines after a farm path a permission error is still taken to be about it.
const FARM_PATH_REACH: u32 = 4;

const NO_SPACE_PHRASES: &[&str] = &[
    "No space left on device",
    "Disk quota exceeded",
    "(os error 28)",
];

const NETWORK_PHRASES: &[&str] = &[
    "Could not resolve host",
    "failed to lookup address information",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "failed to download",
    "attempting to make an HTTP request, but --offline was specified",
    "attempting to make an HTTP request, but --frozen was specified",
    "can't update in the offline mode",
];

const NETWORK_ACCESS_QUALIFIERS: &[&str] = &[
    "requir",
    "denied",
    "disabled",
    "not allowed",
    "unavailable",
    "no network access",
];

const LINK_PHRASES: &[&str] = &[
    "linking with `",
    "undefined reference to `",
    "collect2: error: ld returned",
    "rust-lld: error:",
    "ld.lld: error:",
    "ld: cannot find -l",
    "cannot find -l",
    "error: linker `",
    "could not find native static library",
];

const CONTAMINATION_PHRASES: &[&str] = &[
    "multiple candidates for `rmeta` dependency",
    "multiple candidates for `rlib` dependency",
    "multiple candidates for `dylib` dependency",
    "error[E0464]",
    "multiple matching crates for `",
];

const DIAGNOSTICS_CHANGED_PHRASES: &[&str] = &[
    "TRYBUILD=overwrite",
    "actual output differed from expected",
    "differed from the expected",
    "normalized stderr",
    "--bless",
];

/// Other fixed strings whose presence gates a closer look at a line.
const TRIGGERS: &[(&str, u32)] = &[
    ("memory allocation of ", Hits::ALLOC),
    (" bytes failed", Hits::BYTES_FAILED),
    ("Connection refused", Hits::REFUSED),
    ("etwork access", Hits::NETWORK_ACCESS),
    ("process didn't exit successfully: `", Hits::PROCESS),
    ("error: test failed", Hits::BINARY_FAILED),
    ("error: doctest failed", Hits::BINARY_FAILED),
];

/// Every phrase searched in a line, with its bit in [`Hits`].
fn all_phrases() -> impl Iterator<Item = (&'static str, u32)> {
    let groups: [(&'static [&'static str], u32); 10] = [
        (ICE_PHRASES, Hits::ICE),
        (OOM_PHRASES, Hits::OOM),
        (SIGKILL_PHRASES, Hits::SIGKILL),
        (PERMISSION_PHRASES, Hits::PERMISSION),
        (FARM_PATHS, Hits::FARM_PATH),
        (NO_SPACE_PHRASES, Hits::NO_SPACE),
        (NETWORK_PHRASES, Hits::NETWORK),
        (LINK_PHRASES, Hits::LINK),
        (CONTAMINATION_PHRASES, Hits::CONTAMINATION),
        (DIAGNOSTICS_CHANGED_PHRASES, Hits::DIAGNOSTICS),
    ];
    groups
        .into_iter()
        .flat_map(|(phrases, bit)| phrases.iter().map(move |p| (*p, bit)))
        .chain(TRIGGERS.iter().copied())
}

/// Which phrases a line contains, as bits. All phrases are found in one pass over the line
/// (a bigram filter, then the phrases starting with that byte), instead of one search per phrase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hits(u32);

impl Hits {
    const ICE: u32 = 1;
    const OOM: u32 = 1 << 1;
    const NO_SPACE: u32 = 1 << 2;
    const NETWORK: u32 = 1 << 3;
    const LINK: u32 = 1 << 4;
    const CONTAMINATION: u32 = 1 << 5;
    const DIAGNOSTICS: u32 = 1 << 6;
    const ALLOC: u32 = 1 << 7;
    const BYTES_FAILED: u32 = 1 << 8;
    const REFUSED: u32 = 1 << 9;
    const NETWORK_ACCESS: u32 = 1 << 10;
    const SIGKILL: u32 = 1 << 11;
    const PROCESS: u32 = 1 << 12;
    const BINARY_FAILED: u32 = 1 << 13;
    const PERMISSION: u32 = 1 << 14;
    const FARM_PATH: u32 = 1 << 15;

    fn of(line: &str) -> Hits {
        let m = matcher();
        let b = line.as_bytes();
        let mut bits = 0;
        for i in 0..b.len().saturating_sub(1) {
            let bigram = usize::from(b[i]) << 8 | usize::from(b[i + 1]);
            if m.bigrams[bigram >> 6] & (1 << (bigram & 63)) == 0 {
                continue;
            }
            for (phrase, bit) in &m.by_first[usize::from(b[i])] {
                if b[i..].starts_with(phrase) {
                    bits |= bit;
                }
            }
        }
        Hits(bits)
    }

    const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    fn oom(self) -> bool {
        self.has(Hits::OOM) || (self.has(Hits::ALLOC) && self.has(Hits::BYTES_FAILED))
    }

    fn spurious(self, line: &str) -> Option<Spurious> {
        if self.has(Hits::NO_SPACE) {
            return Some(Spurious::NoSpace);
        }
        let network = self.has(Hits::NETWORK)
            || (self.has(Hits::REFUSED) && mentions_remote_url(line))
            || (self.has(Hits::NETWORK_ACCESS) && {
                let lower = line.to_ascii_lowercase();
                lower.contains("network access")
                    && NETWORK_ACCESS_QUALIFIERS.iter().any(|q| lower.contains(q))
            });
        network.then_some(Spurious::Network)
    }
}

struct Matcher {
    /// Phrases by first byte.
    by_first: Vec<Vec<(&'static [u8], u32)>>,
    /// Bit set of the phrases' first two bytes.
    bigrams: Vec<u64>,
}

fn matcher() -> &'static Matcher {
    static MATCHER: std::sync::OnceLock<Matcher> = std::sync::OnceLock::new();
    MATCHER.get_or_init(|| {
        let mut m = Matcher {
            by_first: vec![Vec::new(); 256],
            bigrams: vec![0; 65536 / 64],
        };
        for (phrase, bit) in all_phrases() {
            let b = phrase.as_bytes();
            debug_assert!(b.len() >= 2, "phrase {phrase:?} is too short");
            let bigram = usize::from(b[0]) << 8 | usize::from(b[1]);
            m.bigrams[bigram >> 6] |= 1 << (bigram & 63);
            m.by_first[usize::from(b[0])].push((b, bit));
        }
        m
    })
}

/// Whether the line contains a URL whose host is not the local machine.
fn mentions_remote_url(line: &str) -> bool {
    line.match_indices("://").any(|(i, _)| {
        let rest = &line[i + 3..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '"' | '\'' | '`' | ')' | ',') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        let hostport = authority.rsplit('@').next().unwrap_or(authority);
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            hostport.split(':').next().unwrap_or(hostport)
        };
        !host.is_empty()
            && host != "localhost"
            && !host.ends_with(".localhost")
            && !host.starts_with("127.")
            && host != "::1"
            && host != "0.0.0.0"
    })
}

/// `process didn't exit successfully: `CMD` (STATUS)` → (CMD, STATUS).
fn process_status(line: &str) -> Option<(&str, &str)> {
    const MARK: &str = "process didn't exit successfully: `";
    let start = line.find(MARK)? + MARK.len();
    let rest = &line[start..];
    let split = rest.rfind("` (")?;
    let status = rest[split + 3..].strip_suffix(')')?;
    Some((&rest[..split], status))
}

/// The program of a command line is a compiler (rustc, rustdoc, clippy-driver, miri as rustc).
fn is_compiler_command(cmd: &str) -> bool {
    let program = cmd.split_whitespace().next().unwrap_or("");
    let file = program.rsplit('/').next().unwrap_or(program);
    matches!(file, "rustc" | "rustdoc" | "clippy-driver")
}

/// Removes the sandbox's `[   1.234] ` prefix and a trailing `\r`.
fn strip_timestamp(line: &str) -> &str {
    crate::logtext::unstamped(line.strip_suffix('\r').unwrap_or(line))
}

fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The text between the first pair of backticks.
fn backticked(line: &str) -> Option<&str> {
    let start = line.find('`')? + 1;
    let len = line[start..].find('`')?;
    Some(&line[start..start + len])
}

// ---------------------------------------------------------------------------------------------
// JSON shapes

#[derive(Deserialize)]
struct LibtestEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Tests in the output

/// A failure reason that can be pinned on one test: printed in that test's own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Spurious {
    Network,
    NoSpace,
}

#[derive(Debug, Default)]
enum TestState {
    /// Between test binaries (cargo's lines, build output).
    #[default]
    Idle,
    /// A binary is running its tests (after `running N tests`, or libtest JSON's suite start).
    Running,
    /// After a `failures:` header: captured outputs or the list of names follow.
    Failures,
    /// Inside `---- NAME stdout ----`.
    Captured(String),
}

#[derive(Debug, Default)]
struct Section {
    label: String,
    /// `test result:` (or the JSON suite end) was seen.
    completed: bool,
    /// cargo said this binary failed (`error: test failed, to rerun pass …`).
    failed: bool,
    status: Option<String>,
    names_found: usize,
    /// Single-threaded libtest printed `test NAME ... ` without a result.
    pending: Option<String>,
    /// libtest JSON tests started and not finished.
    in_flight: BTreeSet<String>,
    /// A spurious signal printed in this binary's run outside any test's captured output.
    signal: Option<Spurious>,
    /// A UI-test harness reported changed compiler output during this binary's run.
    diagnostics: bool,
    /// The failed tests named in this binary's run.
    failed_names: Vec<String>,
}

#[derive(Debug, Default)]
struct TestTracker {
    state: TestState,
    section: Option<Section>,
    failed: BTreeSet<String>,
    attributed: BTreeMap<String, Spurious>,
    /// Failed tests whose own output, or whose binary's run, showed a UI-test harness reporting
    /// changed compiler output.
    diagnostics: BTreeSet<String>,
}

fn running_header(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// `test NAME ... TAIL` → (NAME without ` - should panic`, TAIL).
fn test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, tail) = rest.split_once(" ... ")?;
    let name = name.strip_suffix(" - should panic").unwrap_or(name);
    (!name.is_empty()).then_some((name, tail.trim()))
}

fn captured_header(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("---- ")?;
    rest.strip_suffix(" stdout ----")
        .or_else(|| rest.strip_suffix(" stderr ----"))
}

/// `     Running unittests src/lib.rs (/t/debug/deps/x-0123456789abcdef)` → `unittests src/lib.rs`;
/// `     Running target/debug/deps/x-0123456789abcdef` → `target/debug/deps/x`;
/// `   Doc-tests x` → `doctests x`.
fn section_label(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("   Doc-tests ") {
        return Some(format!("doctests {}", rest.trim()));
    }
    let rest = line.strip_prefix("     Running ")?.trim();
    let rest = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    let stem_end = rest.len().saturating_sub(17);
    let hashed = rest.len() > 17
        && rest.as_bytes()[stem_end] == b'-'
        && rest[stem_end + 1..].chars().all(|c| c.is_ascii_hexdigit());
    Some(if hashed { &rest[..stem_end] } else { rest }.to_owned())
}

impl TestTracker {
    fn start_section(&mut self, label: String) {
        self.end_section();
        self.section = Some(Section {
            label,
            ..Section::default()
        });
        self.state = TestState::Idle;
    }

    fn end_section(&mut self) {
        let Some(s) = self.section.take() else {
            return;
        };
        if !s.failed {
            return;
        }
        let status = s.status.as_deref().unwrap_or("failed");
        let synthetic = || format!("<{}>: {}", s.label, status);
        let culprit = if s.completed {
            (s.names_found == 0).then(synthetic)
        } else {
            let single = (s.in_flight.len() == 1)
                .then(|| s.in_flight.first().cloned())
                .flatten();
            Some(s.pending.clone().or(single).unwrap_or_else(synthetic))
        };
        if let Some(name) = culprit {
            if let Some(sig) = s.signal {
                self.attribute(&name, sig);
            }
            if s.diagnostics {
                self.diagnostics.insert(name.clone());
            }
            self.failed.insert(name);
        }
        if s.diagnostics {
            self.diagnostics.extend(s.failed_names);
        }
    }

    /// The test that was running when the output ended, if the binary had not finished.
    fn unfinished_test(&self) -> Option<String> {
        let s = self.section.as_ref().filter(|s| !s.completed)?;
        s.pending
            .clone()
            .or_else(|| (s.in_flight.len() == 1).then(|| s.in_flight.first().cloned())?)
    }

    /// A UI-test harness reported changed compiler output: pinned on the test whose captured
    /// output it is in, else on the running binary.
    fn diagnostics_seen(&mut self) {
        if let TestState::Captured(name) = &self.state {
            let name = name.clone();
            self.diagnostics.insert(name);
        } else if let Some(s) = &mut self.section {
            s.diagnostics = true;
        }
    }

    fn section(&mut self) -> &mut Section {
        self.section.get_or_insert_with(|| Section {
            label: "test binary".into(),
            ..Section::default()
        })
    }

    fn add_failed(&mut self, name: &str) {
        let s = self.section();
        s.names_found += 1;
        s.failed_names.push(name.to_owned());
        self.failed.insert(name.to_owned());
    }

    fn attribute(&mut self, name: &str, sig: Spurious) {
        let e = self.attributed.entry(name.to_owned()).or_insert(sig);
        *e = (*e).max(sig);
    }

    /// Routes a spurious signal from a plain line: to the test whose captured output it is in
    /// (returns true), or to the step (returns false; also remembered for the running binary).
    fn route(&mut self, sig: Spurious) -> bool {
        if let TestState::Captured(name) = &self.state {
            let name = name.clone();
            self.attribute(&name, sig);
            return true;
        }
        if let Some(s) = &mut self.section {
            s.signal = Some(s.signal.map_or(sig, |old| old.max(sig)));
        }
        false
    }

    fn on_text(&mut self, line: &str, hits: Hits) {
        let t = line.trim_end();
        if !matches!(self.state, TestState::Captured(_))
            && let Some(label) = section_label(t)
        {
            self.start_section(label);
            return;
        }
        match &self.state {
            TestState::Idle => {
                if running_header(t) {
                    self.state = TestState::Running;
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                } else if hits.has(Hits::BINARY_FAILED) {
                    self.section().failed = true;
                } else if let Some((_, status)) =
                    process_status(t).filter(|_| hits.has(Hits::PROCESS))
                {
                    let s = self.section();
                    if s.failed && s.status.is_none() {
                        s.status = Some(status.to_owned());
                    }
                }
            }
            TestState::Running => {
                if let Some((name, tail)) = test_line(t) {
                    if tail.starts_with("FAILED") {
                        self.add_failed(name);
                        self.section().pending = None;
                    } else if tail == "ok"
                        || tail.starts_with("ok ")
                        || tail.starts_with("ignored")
                        || tail.starts_with("bench:")
                    {
                        self.section().pending = None;
                    } else {
                        self.section().pending = Some(name.to_owned());
                    }
                }
                if t == "failures:" {
                    self.state = TestState::Failures;
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                    self.state = TestState::Idle;
                } else if hits.has(Hits::BINARY_FAILED) {
                    self.section().failed = true;
                    self.state = TestState::Idle;
                }
            }
            TestState::Failures => {
                if let Some(name) = captured_header(t) {
                    self.state = TestState::Captured(name.to_owned());
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                    self.state = TestState::Idle;
                } else if let Some(name) = t.strip_prefix("    ")
                    && !name.is_empty()
                    && !name.starts_with(' ')
                {
                    self.add_failed(name);
                }
            }
            TestState::Captured(_) => {
                if let Some(name) = captured_header(t) {
                    self.state = TestState::Captured(name.to_owned());
                } else if t == "failures:" {
                    self.state = TestState::Failures;
                }
            }
        }
    }

    /// Handles a libtest JSON event; returns the name of a failed test and its output to scan.
    fn on_event(&mut self, ev: LibtestEvent) -> Option<(String, String)> {
        match (ev.kind.as_str(), ev.event.as_str()) {
            ("suite", "started") => {
                self.state = TestState::Running;
                None
            }
            ("suite", _) => {
                self.section().completed = true;
                self.state = TestState::Idle;
                None
            }
            ("test" | "bench", event) => {
                let name = ev.name?;
                match event {
                    "started" => {
                        self.section().in_flight.insert(name);
                        None
                    }
                    "failed" => {
                        self.section().in_flight.remove(&name);
                        self.add_failed(&name);
                        let mut text = ev.stdout.unwrap_or_default();
                        if let Some(m) = ev.message {
                            text.push('\n');
                            text.push_str(&m);
                        }
                        Some((name, text))
                    }
                    "timeout" => None,
                    _ => {
                        self.section().in_flight.remove(&name);
                        None
                    }
                }
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scan

/// Everything one pass over a step's output found.
struct Scan {
    kind: StepKind,
    own: Own,
    /// Packages named in JSON messages, by (name, version).
    packages: HashMap<(String, String), PackageId>,
    tests: TestTracker,
    facts: Facts,
    saw_expected_header: bool,
    /// Lines since the last one naming a farm-provided path (see `farm_permissions`).
    lines_since_farm_path: Option<u32>,
}

/// Evidence gathered from one output; evidence strings are the first line that showed it.
#[derive(Debug, Default)]
struct Facts {
    build_failed: bool,
    own_errors: bool,
    own_codes: BTreeSet<String>,
    deps: BTreeSet<String>,
    /// Dependencies named only in plain text: (name, version), resolved at the end.
    dep_names: Vec<(String, Option<String>)>,
    own_build_script: Option<String>,
    ice: Option<String>,
    sigkill: Option<String>,
    oom: Option<String>,
    no_space: Option<String>,
    network: Option<String>,
    link: Option<String>,
    contaminated: Option<String>,
    diagnostics_changed: Option<String>,
    first_error: Option<String>,
    truncated: Option<String>,
    path_fallback: bool,
    failed_tests: BTreeSet<String>,
    attributed: BTreeMap<String, Spurious>,
    /// Spurious evidence seen in failed tests' own output, for notes.
    attributed_evidence: Option<String>,
    /// Failed tests that showed changed compiler output (see `TestTracker::diagnostics`).
    diagnostics_tests: BTreeSet<String>,
    /// Test binaries had started running when the output ended (so a kill hit the tests, not
    /// the build part of the step).
    tests_started: bool,
    /// The test that was running when the output ended, when known.
    unfinished_test: Option<String>,
    /// A farm-provided path (cargo home, toolchains) could not be read: the farm's fault.
    farm_denied: Option<String>,
}

fn set(slot: &mut Option<String>, evidence: &str) {
    if slot.is_none() {
        *slot = Some(clip(evidence, 200));
    }
}

impl Scan {
    fn new(kind: StepKind, own: &[String]) -> Scan {
        let own = Own::new(own);
        let facts = Facts {
            path_fallback: own.path_fallback,
            ..Facts::default()
        };
        Scan {
            kind,
            own,
            packages: HashMap::new(),
            tests: TestTracker::default(),
            facts,
            saw_expected_header: false,
            lines_since_farm_path: None,
        }
    }

    fn feed(&mut self, output: &str) {
        for raw in output.split('\n') {
            let line = strip_timestamp(raw);
            // cargo prints `reason` first; other key orders are accepted all the same.
            if line.starts_with("{\"reason\":")
                || (line.starts_with('{') && line.contains("\"reason\":\""))
            {
                if self.cargo_json(line) {
                    continue;
                }
            } else if (line.starts_with("{\"type\":") || line.starts_with("{ \"type\":"))
                && self.libtest_json(line)
            {
                continue;
            }
            let clean = strip_ansi(line);
            self.text(&clean);
        }
    }

    fn record_package(&mut self, raw: &str) -> Option<PackageId> {
        let p = PackageId::parse(raw)?;
        self.packages.entry(p.key()).or_insert_with(|| p.clone());
        Some(p)
    }

    /// Test binaries are running: cargo has built everything, so what follows is test output
    /// (and cargo's reports on the binaries), never a build.
    fn in_test_run(&self) -> bool {
        self.kind.runs_tests()
            && (self.tests.section.is_some() || !matches!(self.tests.state, TestState::Idle))
    }

    /// Handles a cargo JSON message; false when the line is not one.
    fn cargo_json(&mut self, line: &str) -> bool {
        let Ok(msg) = serde_json::from_str::<CargoMessage<'_>>(line) else {
            return false;
        };
        if self.in_test_run() {
            // Printed by a test (say, a harness driving cargo), not by this step's build.
            return true;
        }
        let package = msg.package_id.as_deref().map(str::to_owned);
        let parsed = package.as_deref().and_then(|p| self.record_package(p));
        match msg.reason.as_ref() {
            "compiler-message" => {
                if let Some(diag) = msg.message {
                    self.diagnostic(&diag, package.as_deref().unwrap_or(""), parsed.as_ref());
                }
            }
            "build-finished" if msg.success == Some(false) => self.facts.build_failed = true,
            _ => {}
        }
        true
    }

    fn diagnostic(&mut self, diag: &Diagnostic, package: &str, parsed: Option<&PackageId>) {
        let ice = diag.level.starts_with("error: internal compiler error");
        let error = diag.level == "error";
        if !ice && !error {
            return;
        }
        let code = diag.code.as_ref().map(|c| c.code.as_str());
        if code == Some("E0464") {
            set(&mut self.facts.contaminated, &diag.message);
        }
        if ice {
            set(
                &mut self.facts.ice,
                &format!("{}: {}", diag.level, diag.message),
            );
        }
        self.diagnostic_text(diag);
        if diag.message.starts_with("aborting due to") {
            return;
        }
        self.facts.build_failed = true;
        if self.own.contains(package, parsed) {
            self.facts.own_errors = true;
            if let (Some(code), false) = (code, ice) {
                self.facts.own_codes.insert(code.to_owned());
            }
        } else {
            let label = match parsed {
                Some(p) => p.crate_label(),
                None if package.is_empty() => return,
                None => package.to_owned(),
            };
            self.facts.deps.insert(label);
        }
    }

    /// Looks for spurious, ICE, link and contamination phrases in an error diagnostic's texts.
    fn diagnostic_text(&mut self, diag: &Diagnostic) {
        for line in diag.message.lines() {
            self.phrases(line, Hits::of(line), false);
        }
        for child in &diag.children {
            self.diagnostic_text(child);
        }
    }

    /// Handles a libtest JSON event; false when the line is not one.
    fn libtest_json(&mut self, line: &str) -> bool {
        let Ok(ev) = serde_json::from_str::<LibtestEvent>(line) else {
            return false;
        };
        if !self.kind.runs_tests() {
            return true;
        }
        if let Some((name, text)) = self.tests.on_event(ev) {
            for l in text.lines() {
                let l = strip_ansi(l);
                let hits = Hits::of(&l);
                if self.diagnostics_phrases(&l, hits) {
                    self.tests.diagnostics.insert(name.clone());
                }
                if hits.has(Hits::ICE) {
                    set(&mut self.facts.ice, &l);
                }
                if let Some(sig) = hits.spurious(&l) {
                    self.tests.attribute(&name, sig);
                    set(&mut self.facts.attributed_evidence, &format!("{name}: {l}"));
                }
            }
        }
        true
    }

    fn text(&mut self, line: &str) {
        if line.starts_with("[caldera: log truncated") {
            set(&mut self.facts.truncated, line);
            return;
        }
        let hits = Hits::of(line);
        if self.kind.runs_tests() {
            self.tests.on_text(line, hits);
        }
        let in_test_run = self.in_test_run();
        self.phrases(line, hits, true);
        self.cargo_lines(line, hits, in_test_run);
    }

    /// Phrase matching shared by plain lines (`plain`) and diagnostic texts.
    fn phrases(&mut self, line: &str, hits: Hits, plain: bool) {
        if hits.0 == 0 {
            if plain {
                self.plain_diagnostics(line, hits);
            }
            if let Some(n) = &mut self.lines_since_farm_path {
                *n += 1;
                if *n > FARM_PATH_REACH {
                    self.lines_since_farm_path = None;
                }
            }
            return;
        }
        self.farm_permissions(line, hits);
        if hits.has(Hits::ICE) {
            set(&mut self.facts.ice, line);
        }
        if hits.has(Hits::SIGKILL) {
            set(&mut self.facts.sigkill, line);
        }
        if hits.oom() {
            set(&mut self.facts.oom, line);
        }
        if hits.has(Hits::LINK) {
            set(&mut self.facts.link, line);
        }
        if hits.has(Hits::CONTAMINATION) {
            set(&mut self.facts.contaminated, line);
        }
        if let Some(sig) = hits.spurious(line) {
            let attributed = plain && self.kind.runs_tests() && self.tests.route(sig);
            if attributed {
                if let TestState::Captured(name) = &self.tests.state {
                    let evidence = format!("{name}: {line}");
                    set(&mut self.facts.attributed_evidence, &evidence);
                }
            } else {
                match sig {
                    Spurious::NoSpace => set(&mut self.facts.no_space, line),
                    Spurious::Network => set(&mut self.facts.network, line),
                }
            }
        }
        if plain {
            self.plain_diagnostics(line, hits);
        }
    }

    fn plain_diagnostics(&mut self, line: &str, hits: Hits) {
        if self.diagnostics_phrases(line, hits) && self.kind.runs_tests() {
            self.tests.diagnostics_seen();
        }
    }

    /// Looks for a UI-test harness reporting changed compiler output; true when the line is
    /// such evidence.
    fn diagnostics_phrases(&mut self, line: &str, hits: Hits) -> bool {
        let t = line.trim();
        if t == "EXPECTED:" {
            self.saw_expected_header = true;
        }
        let changed = (t == "ACTUAL OUTPUT:" && self.saw_expected_header)
            || (t.starts_with("test ") && t.ends_with(" ... mismatch"))
            || hits.has(Hits::DIAGNOSTICS);
        if changed {
            set(&mut self.facts.diagnostics_changed, t);
        }
        changed
    }

    /// Permission denied on a path the farm provides: on the line naming the path, or within a
    /// few lines after it (cargo's `Caused by:` chains).
    fn farm_permissions(&mut self, line: &str, hits: Hits) {
        if hits.has(Hits::FARM_PATH) {
            self.lines_since_farm_path = Some(0);
        } else if let Some(n) = &mut self.lines_since_farm_path {
            *n += 1;
            if *n > FARM_PATH_REACH {
                self.lines_since_farm_path = None;
            }
        }
        if hits.has(Hits::PERMISSION) && self.lines_since_farm_path.is_some() {
            set(&mut self.facts.farm_denied, line.trim());
        }
    }

    /// cargo's own error lines (and process statuses) outside test output.
    fn cargo_lines(&mut self, line: &str, hits: Hits, in_test_run: bool) {
        if hits.has(Hits::PROCESS)
            && let Some((cmd, status)) = process_status(line)
            && is_compiler_command(cmd)
            && ["SIGSEGV", "SIGILL", "SIGBUS", "SIGABRT"]
                .iter()
                .any(|s| status.contains(s))
        {
            set(&mut self.facts.ice, &format!("compiler crashed: {status}"));
        }
        if in_test_run {
            return;
        }
        if line.starts_with("error") && self.facts.first_error.is_none() {
            set(&mut self.facts.first_error, line);
        }
        if let Some(rest) = line.strip_prefix("error: failed to run custom build command for ") {
            self.facts.build_failed = true;
            let Some(inner) = backticked(rest) else {
                return;
            };
            let inner = match inner.find(" (") {
                Some(i) => &inner[..i],
                None => inner,
            };
            let (name, version) = match inner.rsplit_once(" v") {
                Some((n, v)) => (n, Some(v)),
                None => (inner, None),
            };
            if self.own.has_name_version(name, version) {
                set(&mut self.facts.own_build_script, line);
            } else {
                self.facts
                    .dep_names
                    .push((name.to_owned(), version.map(str::to_owned)));
            }
        } else if let Some(rest) = line.strip_prefix("error: could not compile ") {
            self.facts.build_failed = true;
            if let Some(name) = backticked(rest)
                && !self.own.has_name_version(name, None)
            {
                self.facts.dep_names.push((name.to_owned(), None));
            }
        }
    }

    fn finish(mut self) -> Facts {
        self.facts.tests_started = self.in_test_run();
        self.facts.unfinished_test = self.tests.unfinished_test();
        self.tests.end_section();
        let mut facts = self.facts;
        facts.failed_tests = std::mem::take(&mut self.tests.failed);
        facts.attributed = std::mem::take(&mut self.tests.attributed);
        facts.diagnostics_tests = std::mem::take(&mut self.tests.diagnostics);
        // Dependencies named only in text: a JSON-known package gives its crate label, except
        // when it is the crate's own under the path fallback (its JSON errors already count).
        for (name, version) in std::mem::take(&mut facts.dep_names) {
            let known: Vec<&PackageId> = match &version {
                Some(v) => self
                    .packages
                    .get(&(name.clone(), v.clone()))
                    .into_iter()
                    .collect(),
                None => self.packages.values().filter(|p| p.name == name).collect(),
            };
            if known.iter().any(|p| {
                self.own
                    .contains(&format!("{} {}", p.name, p.version), Some(p))
            }) {
                continue;
            }
            match known.as_slice() {
                [one] => facts.deps.insert(one.crate_label()),
                _ => facts.deps.insert(name),
            };
        }
        facts
    }
}

// ---------------------------------------------------------------------------------------------
// The decision

impl Facts {
    fn decide(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The own package id of the fixtures under `tests/data/classify`.
    fn own(name: &str) -> Vec<String> {
        vec![format!("path+file:///build/{name}#0.1.0")]
    }

    fn fixture(name: &str) -> &'static str {
        match name {
            "build_own_errors" => include_str!("../tests/data/classify/build_own_errors.log"),
            "build_dep_error" => include_str!("../tests/data/classify/build_dep_error.log"),
            "build_dep_build_script_network" => {
                include_str!("../tests/data/classify/build_dep_build_script_network.log")
            }
            "build_link" => include_str!("../tests/data/classify/build_link.log"),
            "build_deny_lint" => include_str!("../tests/data/classify/build_deny_lint.log"),
            "build_ice" => include_str!("../tests/data/classify/build_ice.log"),
            "test_failures" => include_str!("../tests/data/classify/test_failures.log"),
            "test_failures_libtest_json" => {
                include_str!("../tests/data/classify/test_failures_libtest_json.log")
            }
            "test_crashes" => include_str!("../tests/data/classify/test_crashes.log"),
            "test_crash_single_thread" => {
                include_str!("../tests/data/classify/test_crash_single_thread.log")
            }
            "test_doctests" => include_str!("../tests/data/classify/test_doctests.log"),
            "test_trybuild_mismatch" => {
                include_str!("../tests/data/classify/test_trybuild_mismatch.log")
            }
            other => panic!("no fixture {other}"),
        }
    }

    fn failed(kind: StepKind, output: &str, own: &[String]) -> Classification {
        failed_with(kind, Termination::Exited(101), output, own)
    }

    fn failed_with(
        kind: StepKind,
        termination: Termination,
        output: &str,
        own: &[String],
    ) -> Classification {
        let run = StepRun {
            kind,
            termination,
            output,
            own_packages: own,
            pids_limit_hit: false,
        };
        match classify_step(&run) {
            StepVerdict::Failed(c) => c,
            StepVerdict::Passed => panic!("{kind} step with {termination} passed"),
        }
    }

    fn bf(reason: BuildFailReason) -> Outcome {
        Outcome::BuildFail(reason)
    }

    fn codes(c: &[&str]) -> Outcome {
        bf(BuildFailReason::CompilerError {
            codes: c.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn deps(c: &[&str]) -> Outcome {
        bf(BuildFailReason::DependsOn {
            crates: c.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn test_fail(names: &[&str]) -> Outcome {
        Outcome::TestFail {
            failed_tests: names.iter().map(|s| s.to_string()).collect(),
            reason: None,
        }
    }

    fn test_fail_because(names: &[&str], reason: TestFailReason) -> Outcome {
        Outcome::TestFail {
            failed_tests: names.iter().map(|s| s.to_string()).collect(),
            reason: Some(reason),
        }
    }

    /// A cargo `compiler-message` line, in the shape cargo 1.95 prints (key order included;
    /// explanation, spans and rendered text shortened).
    fn compiler_message(
        package_id: &str,
        level: &str,
        code: Option<&str>,
        message: &str,
    ) -> String {
        let code = match code {
            Some(c) => serde_json::json!({"code": c, "explanation": null}),
            None => serde_json::Value::Null,
        };
        let diagnostic = serde_json::json!({
            "$message_type": "diagnostic", "message": message, "code": code, "level": level,
            "spans": [], "children": [],
            "rendered": format!("\u{1b}[1m\u{1b}[91m{level}\u{1b}[0m: {message}\n")
        });
        format!(
            "{{\"reason\":\"compiler-message\",\"package_id\":{},\"manifest_path\":\"/build/x/Cargo.toml\",\"target\":{{\"kind\":[\"lib\"],\"crate_types\":[\"lib\"],\"name\":\"x\",\"src_path\":\"/build/x/src/lib.rs\",\"edition\":\"2021\",\"doc\":true,\"doctest\":true,\"test\":true}},\"message\":{diagnostic}}}",
            serde_json::Value::from(package_id)
        )
    }

    const REG: &str = "registry+https://github.com/rust-lang/crates.io-index";

    // -----------------------------------------------------------------------------------------
    // Package ids

    /// Name, version and source a package id parses to.
    type Parsed = Option<(&'static str, &'static str, PackageSource)>;

    #[test]
    fn package_ids() {
        use PackageSource::*;
        let cases: &[(&str, Parsed, &str)] = &[
            (
                "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.197",
                Some(("serde", "1.0.197", Registry)),
                "reg:serde@1.0.197",
            ),
            (
                "serde 1.0.197 (registry+https://github.com/rust-lang/crates.io-index)",
                Some(("serde", "1.0.197", Registry)),
                "reg:serde@1.0.197",
            ),
            (
                "sparse+https://my.registry/index/#foo-bar@0.1.0-alpha.1",
                Some(("foo-bar", "0.1.0-alpha.1", Registry)),
                "reg:foo-bar@0.1.0-alpha.1",
            ),
            (
                "registry+sparse+https://my.registry/index/#foo_bar@2.0.0+build.5",
                Some(("foo_bar", "2.0.0+build.5", Registry)),
                "reg:foo_bar@2.0.0+build.5",
            ),
            (
                "path+file:///build/own_err#0.1.0",
                Some(("own_err", "0.1.0", Path)),
                "own_err",
            ),
            (
                "path+file:///build/dir#my-crate@0.1.0",
                Some(("my-crate", "0.1.0", Path)),
                "my-crate",
            ),
            (
                "my-crate 0.1.0 (path+file:///build/dir)",
                Some(("my-crate", "0.1.0", Path)),
                "my-crate",
            ),
            (
                "git+https://github.com/rust-lang/regex?branch=main#regex@1.4.3",
                Some(("regex", "1.4.3", Git)),
                "regex",
            ),
            (
                "git+https://github.com/rust-lang/regex#1.4.3",
                Some(("regex", "1.4.3", Git)),
                "regex",
            ),
            (
                "regex 1.4.3 (git+https://github.com/rust-lang/regex?branch=main#0123456789abcdef0123456789abcdef01234567)",
                Some(("regex", "1.4.3", Git)),
                "regex",
            ),
            (
                "https://github.com/rust-lang/crates.io-index#regex:1.4.3",
                Some(("regex", "1.4.3", Other)),
                "regex",
            ),
            ("serde", None, ""),
            ("serde@1.0.0", None, ""),
            ("serde 1.0.0", None, ""),
            ("path+file:///build/x#", None, ""),
            ("path+file:///build/x#name@", None, ""),
            ("a b c (registry+x)", None, ""),
            ("", None, ""),
        ];
        for (input, expected, label) in cases {
            let got = PackageId::parse(input);
            let want = expected.map(|(n, v, s)| PackageId {
                name: n.into(),
                version: v.into(),
                source: s,
            });
            assert_eq!(got, want, "{input}");
            if let Some(p) = got {
                assert_eq!(p.crate_label(), *label, "{input}");
            }
        }
    }

    #[test]
    fn old_and_new_package_id_forms_match_each_other() {
        let old = vec!["my-crate 0.1.0 (path+file:///build/dir)".to_owned()];
        let new = vec!["path+file:///build/dir#my-crate@0.1.0".to_owned()];
        let line_new = compiler_message(&new[0], "error", Some("E0308"), "mismatched types");
        let line_old = compiler_message(&old[0], "error", Some("E0308"), "mismatched types");
        for own in [&old, &new] {
            for line in [&line_new, &line_old] {
                let c = failed(StepKind::Build, line, own);
                assert_eq!(c.outcome, codes(&["E0308"]), "{own:?} {line}");
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Build-ish steps on real output

    #[test]
    fn build_fixtures() {
        use BuildFailReason as R;
        let cases: &[(&str, StepKind, &str, Outcome)] = &[
            (
                "build_own_errors",
                StepKind::Build,
                "own_err",
                codes(&["E0308", "E0425"]),
            ),
            (
                "build_dep_error",
                StepKind::Build,
                "dep_err",
                deps(&["reg:brokendep@1.2.3"]),
            ),
            (
                "build_dep_build_script_network",
                StepKind::Build,
                "dep_net",
                bf(R::NetworkAccess),
            ),
            ("build_link", StepKind::Build, "link_err", bf(R::Link)),
            (
                "build_deny_lint",
                StepKind::Check,
                "lint_err",
                codes(&["unused_imports"]),
            ),
            ("build_ice", StepKind::Build, "ice", bf(R::Ice)),
            ("build_ice", StepKind::Clippy, "ice", bf(R::Ice)),
            (
                "build_own_errors",
                StepKind::TestNoRun,
                "own_err",
                codes(&["E0308", "E0425"]),
            ),
            // The build part of a test step failed: classified like a build.
            (
                "build_own_errors",
                StepKind::Test,
                "own_err",
                codes(&["E0308", "E0425"]),
            ),
            (
                "build_dep_error",
                StepKind::Miri,
                "dep_err",
                deps(&["reg:brokendep@1.2.3"]),
            ),
        ];
        for (name, kind, pkg, expected) in cases {
            let c = failed(*kind, fixture(name), &own(pkg));
            assert_eq!(&c.outcome, expected, "{name} as {kind}: {:?}", c.notes);
            assert!(!c.diagnostics_changed, "{name}");
            assert!(!c.contaminated_target_dir, "{name}");
        }
    }

    #[test]
    fn dependency_build_script_failure_without_network_is_depends_on() {
        // The same real output with the build script's network error replaced by a missing
        // system library, as openssl-sys reports it when the image lacks libssl-dev.
        let out = fixture("build_dep_build_script_network").replace(
            "failed to download the bundled library: failed to lookup address information: Name or service not known",
            "Could not find directory of OpenSSL installation",
        );
        let c = failed(StepKind::Build, &out, &own("dep_net"));
        assert_eq!(c.outcome, deps(&["reg:netdep@0.4.1"]), "{:?}", c.notes);
    }

    #[test]
    fn own_build_script_failure_is_unknown_with_a_note() {
        let out = "   Compiling mine v0.3.0 (/build/mine)\n\
            error: failed to run custom build command for `mine v0.3.0 (/build/mine)`\n\n\
            Caused by:\n  process didn't exit successfully: `/build/target/debug/build/mine-0123456789abcdef/build-script-build` (exit status: 1)\n\
            \x20 --- stderr\n  cc: error: missing.c: No such file or directory\n\
            {\"reason\":\"build-finished\",\"success\":false}\n";
        let c = failed(
            StepKind::Build,
            out,
            &["path+file:///build/mine#0.3.0".into()],
        );
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
        assert!(
            c.notes.iter().any(|n| n.starts_with("build script failed")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn compiler_errors_codes_sorted_deduped_and_codeless_errors() {
        let me = "path+file:///build/me#0.1.0";
        let dep = format!("{REG}#dep@2.0.0");
        let cases: Vec<(Vec<String>, Outcome)> = vec![
            (
                vec![
                    compiler_message(me, "error", Some("E0599"), "no method"),
                    compiler_message(me, "error", Some("E0308"), "mismatched types"),
                    compiler_message(me, "error", Some("E0599"), "no method"),
                    compiler_message(me, "warning", Some("unused_variables"), "unused"),
                ],
                codes(&["E0308", "E0599"]),
            ),
            // Errors without codes are still compiler errors of the crate.
            (
                vec![compiler_message(
                    me,
                    "error",
                    None,
                    "extern blocks must be unsafe",
                )],
                codes(&[]),
            ),
            // Only rustc's summary, and cargo's plain `could not compile`: nothing is known.
            (
                vec![
                    compiler_message(me, "error", None, "aborting due to 2 previous errors"),
                    "error: could not compile `me` (lib) due to 2 previous errors".into(),
                ],
                bf(BuildFailReason::Unknown),
            ),
            (
                vec!["error: could not compile `me` (lib) due to 1 previous error".into()],
                bf(BuildFailReason::Unknown),
            ),
            // Warnings alone never make a compiler error.
            (
                vec![compiler_message(
                    me,
                    "warning",
                    Some("dead_code"),
                    "never used",
                )],
                bf(BuildFailReason::Unknown),
            ),
            // A dependency's error wins over the crate's own (which cannot build without it).
            (
                vec![
                    compiler_message(me, "error", Some("E0432"), "unresolved import"),
                    compiler_message(&dep, "error", Some("E0308"), "mismatched types"),
                ],
                deps(&["reg:dep@2.0.0"]),
            ),
            // Clippy lints denied in the crate.
            (
                vec![
                    compiler_message(me, "error", Some("clippy::needless_return"), "unneeded"),
                    compiler_message(me, "error", Some("clippy::all"), "x"),
                ],
                codes(&["clippy::all", "clippy::needless_return"]),
            ),
            // `could not compile` naming a dependency known from JSON messages.
            (
                vec![
                    format!(
                        "{{\"reason\":\"compiler-artifact\",\"package_id\":\"{dep}\",\"fresh\":true}}"
                    ),
                    "error: could not compile `dep` (lib)".into(),
                ],
                deps(&["reg:dep@2.0.0"]),
            ),
            // … or unknown: its name.
            (
                vec!["error: could not compile `mystery` (lib)".into()],
                deps(&["mystery"]),
            ),
        ];
        for (lines, expected) in cases {
            let out = lines.join("\n");
            let c = failed(StepKind::Build, &out, &[me.to_owned()]);
            assert_eq!(c.outcome, expected, "{out}");
        }
    }

    #[test]
    fn ice_takes_precedence_over_errors_and_is_found_in_any_form() {
        let me = "path+file:///build/me#0.1.0";
        let dep = format!("{REG}#dep@2.0.0");
        let e0308 = compiler_message(me, "error", Some("E0308"), "mismatched types");
        let cases = [
            compiler_message(me, "error: internal compiler error", None, "unexpected panic"),
            // An ICE in a dependency is still an ICE.
            compiler_message(&dep, "error: internal compiler error", Some("E0308"), "x"),
            "error: the compiler unexpectedly panicked. this is a bug.".into(),
            "note: the compiler unexpectedly panicked. this is a bug.".into(),
            "query stack during panic:\n#0 [typeck] type-checking `a`\nend of query stack".into(),
            "error: internal compiler error: compiler/rustc_middle/src/ty/mod.rs:1: oops".into(),
            "error: rustc interrupted by SIGSEGV, printing backtrace".into(),
            "\nthread 'rustc' has overflowed its stack\nfatal runtime error: stack overflow".into(),
            "error: could not compile `me` (lib)\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/toolchains/nightly/bin/rustc --crate-name me --edition=2021 src/lib.rs` (signal: 11, SIGSEGV: invalid memory reference)".into(),
        ];
        for ice in cases {
            let out =
                format!("{e0308}\n{ice}\n{{\"reason\":\"build-finished\",\"success\":false}}");
            for kind in [
                StepKind::Build,
                StepKind::Check,
                StepKind::Doc,
                StepKind::Test,
            ] {
                let c = failed(kind, &out, &[me.to_owned()]);
                assert_eq!(c.outcome, bf(BuildFailReason::Ice), "{kind}: {ice}");
            }
        }
        // A test binary (not a compiler) dying of SIGSEGV is not an ICE.
        let c = failed(StepKind::Test, fixture("test_crashes"), &own("crash"));
        assert!(
            matches!(c.outcome, Outcome::TestFail { .. }),
            "{:?}",
            c.outcome
        );
    }

    #[test]
    fn linker_failures() {
        let me = "path+file:///build/me#0.1.0";
        let lines = [
            "error: linking with `cc` failed: exit status: 1",
            "  = note: /usr/bin/ld: /build/target/debug/deps/me.o: in function `me::main': undefined reference to `SSL_new'",
            "          collect2: error: ld returned 1 exit status",
            "  = note: /usr/bin/ld: cannot find -lsqlite3: No such file or directory",
            "error: linker `cc` not found",
            "rust-lld: error: undefined symbol: caldera_missing_symbol",
        ];
        for line in lines {
            let out = format!(
                "{line}\nerror: could not compile `me` (bin \"me\") due to 1 previous error"
            );
            let c = failed(StepKind::Build, &out, &[me.to_owned()]);
            assert_eq!(c.outcome, bf(BuildFailReason::Link), "{line}");
        }
        // Structured: the linker's output in the children of the JSON diagnostic.
        let mut v: serde_json::Value = serde_json::from_str(&compiler_message(
            me,
            "error",
            None,
            "could not find native static library `foo`, perhaps an -L flag is missing?",
        ))
        .unwrap();
        v["message"]["children"] = serde_json::json!([{"message": "/usr/bin/ld: cannot find -lfoo", "code": null, "level": "note", "spans": [], "children": [], "rendered": null}]);
        let c = failed(StepKind::Build, &v.to_string(), &[me.to_owned()]);
        assert_eq!(c.outcome, bf(BuildFailReason::Link));
        // JSON lines are not searched as text: a warning quoting linker (or disk, or network)
        // messages is just a warning.
        let quoting = compiler_message(
            me,
            "warning",
            Some("dead_code"),
            "undefined reference to `x` / No space left on device / Could not resolve host",
        );
        let c = failed(StepKind::Build, &quoting, &[me.to_owned()]);
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
        // A doctest that fails to link is a failed test, not a link failure of the crate.
        let doctest = "   Doc-tests me\n\nrunning 1 test\ntest src/lib.rs - f (line 3) ... FAILED\n\nfailures:\n\n---- src/lib.rs - f (line 3) stdout ----\nerror: linking with `cc` failed: exit status: 1\n  = note: undefined reference to `f'\nCouldn't compile the test.\n\nfailures:\n    src/lib.rs - f (line 3)\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\nerror: doctest failed, to rerun pass `--doc`\n";
        let c = failed(StepKind::Test, doctest, &[me.to_owned()]);
        assert_eq!(c.outcome, test_fail(&["src/lib.rs - f (line 3)"]));
    }

    // -----------------------------------------------------------------------------------------
    // Terminations and spurious failures

    #[test]
    fn termination_wins_over_output() {
        use BuildFailReason as R;
        use TestFailReason as T;
        let cases = [
            (Termination::Timeout, R::Timeout, T::Timeout),
            (
                Termination::NoOutputTimeout,
                R::NoOutputTimeout,
                T::NoOutputTimeout,
            ),
            (Termination::OomKilled, R::Oom, T::Oom),
        ];
        let outputs = [
            (fixture("build_own_errors"), "own_err"),
            (fixture("build_ice"), "ice"),
            (fixture("test_failures"), "tests_fail"),
            ("", "x"),
        ];
        for (termination, build, test) in cases {
            for kind in [
                StepKind::Build,
                StepKind::Test,
                StepKind::Clippy,
                StepKind::Miri,
            ] {
                for (out, pkg) in outputs {
                    let c = failed_with(kind, termination, out, &own(pkg));
                    // the outcome follows the part of the step that was killed: test binaries
                    // had run only in the test_failures output
                    if kind.runs_tests() && pkg == "tests_fail" {
                        assert!(
                            matches!(&c.outcome, Outcome::TestFail { reason: Some(r), .. } if *r == test),
                            "{kind} {termination}: {}",
                            c.outcome
                        );
                    } else {
                        assert_eq!(c.outcome, bf(build.clone()), "{kind} {termination}");
                    }
                }
            }
        }
    }

    #[test]
    fn pids_limit_is_named_whatever_else_happened() {
        let outputs = [
            (fixture("build_own_errors"), "own_err", false),
            (fixture("test_failures"), "tests_fail", true),
            ("", "x", false),
        ];
        for termination in [
            Termination::Exited(101),
            Termination::NoOutputTimeout,
            Termination::Timeout,
            Termination::Signalled(9),
        ] {
            for (out, pkg, tests_ran) in outputs {
                for kind in [StepKind::Build, StepKind::Test] {
                    let own = own(pkg);
                    let run = StepRun {
                        kind,
                        termination,
                        output: out,
                        own_packages: &own,
                        pids_limit_hit: true,
                    };
                    let StepVerdict::Failed(c) = classify_step(&run) else {
                        panic!("passed");
                    };
                    let expected_test = kind.runs_tests() && tests_ran;
                    match &c.outcome {
                        Outcome::TestFail {
                            reason: Some(TestFailReason::PidsLimit),
                            ..
                        } => assert!(expected_test, "{kind} {pkg}"),
                        Outcome::BuildFail(BuildFailReason::PidsLimit) => {
                            assert!(!expected_test, "{kind} {pkg}")
                        }
                        other => panic!("{kind} {termination} {pkg}: {other}"),
                    }
                    assert!(c.outcome.is_spurious());
                    assert!(
                        c.notes.iter().any(|n| n.contains("pids limit")),
                        "{:?}",
                        c.notes
                    );
                }
            }
        }
    }

    #[test]
    fn sigkill_without_the_cgroup_saying_oom_is_not_oom() {
        for termination in [Termination::Exited(137), Termination::Signalled(9)] {
            let c = failed_with(
                StepKind::Build,
                termination,
                fixture("build_own_errors"),
                &own("own_err"),
            );
            assert_eq!(c.outcome, codes(&["E0308", "E0425"]), "{termination}");
            assert!(
                c.notes.iter().any(|n| n.contains("no OOM kill")),
                "{:?}",
                c.notes
            );
            let c = failed_with(StepKind::Build, termination, "", &own("x"));
            assert_eq!(c.outcome, bf(BuildFailReason::Unknown), "{termination}");
            let c = failed_with(
                StepKind::Test,
                termination,
                fixture("test_failures"),
                &own("tests_fail"),
            );
            assert!(
                matches!(c.outcome, Outcome::TestFail { reason: None, .. }),
                "{}",
                c.outcome
            );
        }
        // rustc (or a linker) reported killed by SIGKILL: evidence, not a verdict
        for line in [
            "error: could not compile `syn` (lib)\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/toolchains/stable/bin/rustc --crate-name syn --edition=2021 /cargo/registry/src/syn-2.0.0/src/lib.rs` (signal: 9, SIGKILL: kill)",
            "collect2: fatal error: ld terminated with signal 9 [Killed]",
        ] {
            let c = failed(StepKind::Build, line, &own("x"));
            assert!(!c.outcome.is_spurious(), "{line}: {}", c.outcome);
            assert!(
                c.notes.iter().any(|n| n.contains("SIGKILL")),
                "{line}: {:?}",
                c.notes
            );
        }
    }

    #[test]
    fn permission_denied_on_farm_paths_is_the_farms_error() {
        let me = "path+file:///build/me#0.1.0";
        let dep = "registry+https://github.com/rust-lang/crates.io-index#pin-utils@0.1.0";
        let farm = [
            compiler_message(
                dep,
                "error",
                None,
                "couldn't read `/caldera/cargo-home/registry/src/index.crates.io-1949cf8c6b5b557f/pin-utils-0.1.0/src/lib.rs`: Permission denied (os error 13)",
            ),
            "error: failed to read `/caldera/cargo-home/registry/src/index/fnv-1.0.7/Cargo.toml`\n\nCaused by:\n  Permission denied (os error 13)".to_owned(),
            "error: could not execute process `/caldera/toolchain/bin/rustc -vV` (never executed)\n\nCaused by:\n  Permission denied (os error 13)".to_owned(),
        ];
        for out in &farm {
            for kind in [StepKind::Build, StepKind::Test, StepKind::Check] {
                let c = failed(kind, out, &[me.to_owned()]);
                assert!(
                    matches!(&c.outcome, Outcome::Error { reason } if reason.contains("Permission denied")),
                    "{kind}: {out}: {}",
                    c.outcome
                );
            }
        }
        // the crate's own paths (its source is read-only by design) and permission errors far
        // from any farm path stay the crate's
        let own_path = [
            "error: failed to run custom build command for `me v0.1.0 (/caldera/src)`\n\nCaused by:\n  process didn't exit successfully: `/caldera/target/debug/build/me-1/build-script-build` (exit status: 101)\n  --- stderr\n  thread 'main' panicked at build.rs:3:5:\n  could not write /caldera/src/generated.rs: Permission denied (os error 13)",
            "/caldera/cargo-home/registry/src/x/y\na\nb\nc\nd\ne\nf\nPermission denied (os error 13)",
        ];
        for out in own_path {
            let c = failed(StepKind::Build, out, &[me.to_owned()]);
            assert!(
                !matches!(c.outcome, Outcome::Error { .. }),
                "{out}: {}",
                c.outcome
            );
        }
    }

    #[test]
    fn other_terminations_fall_back_to_the_output() {
        let c = failed_with(
            StepKind::Build,
            Termination::Signalled(15),
            fixture("build_own_errors"),
            &own("own_err"),
        );
        assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
        assert!(
            c.notes.iter().any(|n| n == "step killed by signal 15"),
            "{:?}",
            c.notes
        );
        let c = failed_with(StepKind::Build, Termination::Exited(1), "", &own("x"));
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
        let c = failed_with(StepKind::Test, Termination::Exited(101), "", &own("x"));
        assert_eq!(c.outcome, test_fail(&[]));
    }

    #[test]
    fn out_of_memory_in_output() {
        let me = "path+file:///build/me#0.1.0";
        let e0308 = compiler_message(me, "error", Some("E0308"), "mismatched types");
        let cases = [
            "memory allocation of 4294967296 bytes failed\nerror: could not compile `me` (lib)\n\nCaused by:\n  process didn't exit successfully: `rustc --crate-name me` (signal: 6, SIGABRT: process abort signal)",
            "LLVM ERROR: out of memory",
            "cc1plus: out of memory allocating 65536 bytes after a total of 123456 bytes",
            "virtual memory exhausted: Cannot allocate memory",
        ];
        for oom in cases {
            // Out of memory beats the ICE-looking abort and the compiler errors.
            let out = format!(
                "{e0308}\n{oom}\nerror: the compiler unexpectedly panicked. this is a bug."
            );
            let c = failed(StepKind::Build, &out, &[me.to_owned()]);
            assert_eq!(c.outcome, bf(BuildFailReason::Oom), "{oom}");
        }
        // A test binary killed by SIGKILL without the cgroup counting an OOM kill: a test
        // failure (the OOM verdict comes from the termination, see
        // `sigkill_without_the_cgroup_saying_oom_is_not_oom`).
        let killed = fixture("test_crashes").replace(
            "(signal: 11, SIGSEGV: invalid memory reference)",
            "(signal: 9, SIGKILL: kill)",
        );
        let c = failed(StepKind::Test, &killed, &own("crash"));
        assert!(
            matches!(c.outcome, Outcome::TestFail { reason: None, .. }),
            "{}",
            c.outcome
        );
        // But a test aborting on an absurd allocation is the test's bug.
        let c = failed(StepKind::Test, fixture("test_crashes"), &own("crash"));
        assert!(matches!(c.outcome, Outcome::TestFail { .. }));
    }

    #[test]
    fn no_space_left() {
        let me = "path+file:///build/me#0.1.0";
        let cases = [
            compiler_message(
                me,
                "error",
                None,
                "failed to write /build/target/debug/deps/me.o: No space left on device (os error 28)",
            ),
            "error: failed to write `/build/target/debug/.fingerprint/me/lib-me`\n\nCaused by:\n  No space left on device (os error 28)".into(),
            "  = note: /usr/bin/ld: final link failed: No space left on device\n          collect2: error: ld returned 1 exit status".into(),
            "error: could not write output: Disk quota exceeded".into(),
        ];
        for out in &cases {
            for kind in [StepKind::Build, StepKind::Doc, StepKind::Test] {
                let c = failed(kind, out, &[me.to_owned()]);
                assert_eq!(c.outcome, bf(BuildFailReason::NoSpace), "{kind}: {out}");
            }
        }
    }

    #[test]
    fn network_access_phrases() {
        let positive = [
            "fatal: unable to access 'https://github.com/x/y/': Could not resolve host: github.com",
            "  failed to download the bundled library: failed to lookup address information: Temporary failure in name resolution",
            "Error: reqwest::Error { kind: Request, url: \"https://example.com/\", source: hyper_util::client::legacy::Error(Connect, ConnectError(\"dns error\", Custom { kind: Uncategorized, error: \"failed to lookup address information: Name or service not known\" })) }",
            "Error: Os { code: 101, kind: NetworkUnreachable, message: \"Network is unreachable\" }",
            "curl: (7) Failed to connect to 93.184.216.34 port 443: No route to host",
            "error sending request for url (https://static.rust-lang.org/dist/x.tar.gz): error trying to connect: tcp connect error: Connection refused (os error 111)",
            "error: failed to download `serde v1.0.0`\n\nCaused by:\n  attempting to make an HTTP request, but --offline was specified",
            "error: failed to get `rand` as a dependency of package `x v0.1.0`\n\nCaused by:\n  attempting to make an HTTP request, but --frozen was specified",
            "  thread 'main' panicked at build.rs:9:5:\n  this build script requires network access to fetch the SDK",
            "error: Network access is disabled in this environment",
        ];
        for line in positive {
            let out = format!("{line}\n{{\"reason\":\"build-finished\",\"success\":false}}");
            let c = failed(StepKind::Build, &out, &own("x"));
            assert_eq!(c.outcome, bf(BuildFailReason::NetworkAccess), "{line}");
        }
        let negative = [
            "Error: Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
            "error sending request for url (http://127.0.0.1:8080/): Connection refused (os error 111)",
            "error sending request for url (http://localhost:3000/x): Connection refused",
            "error sending request for url (http://[::1]:3000/x): Connection refused",
            "note: this test needs network access",
            "test network_access_is_mocked ... FAILED",
        ];
        for line in negative {
            let out = format!("{line}\n{{\"reason\":\"build-finished\",\"success\":false}}");
            let c = failed(StepKind::Build, &out, &own("x"));
            assert_eq!(c.outcome, bf(BuildFailReason::Unknown), "{line}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Test steps

    #[test]
    fn failed_tests_from_real_output() {
        let cases: &[(&str, &[&str])] = &[
            (
                "test_failures",
                &[
                    "integ_fails",
                    "tests::network",
                    "tests::should_panic_but_doesnt",
                    "tests::wrong_sum",
                ],
            ),
            (
                "test_failures_libtest_json",
                &[
                    "integ_fails",
                    "tests::network",
                    "tests::should_panic_but_doesnt",
                    "tests::wrong_sum",
                ],
            ),
            (
                "test_crashes",
                &[
                    "<tests/alloc.rs>: signal: 6, SIGABRT: process abort signal",
                    "<tests/exit.rs>: exit status: 3",
                    "<unittests src/lib.rs>: signal: 11, SIGSEGV: invalid memory reference",
                ],
            ),
            ("test_crash_single_thread", &["tests::segv"]),
            (
                "test_doctests",
                &["src/lib.rs - add (line 3)", "src/lib.rs - add (line 8)"],
            ),
            ("test_trybuild_mismatch", &["ui"]),
            ("build_own_errors", &[]),
        ];
        for (name, expected) in cases {
            assert_eq!(failed_tests(fixture(name)), *expected, "{name}");
        }
    }

    #[test]
    fn test_step_outcomes_on_real_output() {
        let cases: &[(&str, &str, Outcome, bool)] = &[
            // One of the four failed tests tried the network: the others are real failures.
            (
                "test_failures",
                "tests_fail",
                test_fail(&[
                    "integ_fails",
                    "tests::network",
                    "tests::should_panic_but_doesnt",
                    "tests::wrong_sum",
                ]),
                false,
            ),
            (
                "test_failures_libtest_json",
                "tests_fail",
                test_fail(&[
                    "integ_fails",
                    "tests::network",
                    "tests::should_panic_but_doesnt",
                    "tests::wrong_sum",
                ]),
                false,
            ),
            (
                "test_doctests",
                "doctest_fail",
                test_fail(&["src/lib.rs - add (line 3)", "src/lib.rs - add (line 8)"]),
                false,
            ),
            (
                "test_trybuild_mismatch",
                "tb",
                test_fail_because(&["ui"], TestFailReason::DiagnosticsChange),
                true,
            ),
            (
                "test_crash_single_thread",
                "crash",
                test_fail(&["tests::segv"]),
                false,
            ),
        ];
        for (name, pkg, expected, diag) in cases {
            for kind in [StepKind::Test, StepKind::Miri] {
                let c = failed(kind, fixture(name), &own(pkg));
                assert_eq!(&c.outcome, expected, "{name}: {:?}", c.notes);
                assert_eq!(c.diagnostics_changed, *diag, "{name}");
                assert!(!c.contaminated_target_dir, "{name}");
            }
        }
        let c = failed(StepKind::Test, fixture("test_failures"), &own("tests_fail"));
        assert!(
            c.notes
                .iter()
                .any(|n| n.ends_with("hit the sandbox (network or disk): tests::network")),
            "{:?}",
            c.notes
        );
    }

    /// Keeps only the lines of libtest's human output that belong to the given test names (and
    /// the framing), turning `test_failures.log` into a run where only those tests failed.
    fn only_failing(names: &[&str]) -> String {
        let all = fixture("test_failures");
        let src = &all[..all.find("     Running tests/integ.rs").unwrap()];
        let mut out = String::new();
        let mut skip = false;
        for line in src.lines() {
            let failed_line = line.starts_with("test ") && line.ends_with("FAILED");
            let list_entry = line.starts_with("    ") && !line.starts_with("     ");
            if let Some(n) = captured_header(line) {
                skip = !names.contains(&n);
            } else if line == "failures:" || line.starts_with("test result:") {
                skip = false;
            }
            let name = if failed_line {
                test_line(line).map(|(n, _)| n)
            } else if list_entry {
                Some(line.trim())
            } else {
                None
            };
            if skip || name.is_some_and(|n| !names.contains(&n)) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    #[test]
    fn network_only_when_every_failed_test_hit_it() {
        let out = only_failing(&["tests::network"]);
        assert_eq!(failed_tests(&out), ["tests::network"]);
        let c = failed(StepKind::Test, &out, &own("tests_fail"));
        assert_eq!(
            c.outcome,
            test_fail_because(&["tests::network"], TestFailReason::NetworkAccess),
            "{out}"
        );
        let out = only_failing(&["tests::network", "tests::wrong_sum"]);
        let c = failed(StepKind::Test, &out, &own("tests_fail"));
        assert_eq!(
            c.outcome,
            test_fail(&["tests::network", "tests::wrong_sum"])
        );
        // libtest JSON: the failed event's stdout carries the evidence.
        let json = "{ \"type\": \"suite\", \"event\": \"started\", \"test_count\": 1 }\n\
            { \"type\": \"test\", \"event\": \"started\", \"name\": \"net::fetch\" }\n\
            { \"type\": \"test\", \"name\": \"net::fetch\", \"event\": \"failed\", \"stdout\": \"thread 'net::fetch' panicked at src/net.rs:4:5:\\nCould not resolve host: example.com\\n\" }\n\
            { \"type\": \"suite\", \"event\": \"failed\", \"passed\": 0, \"failed\": 1, \"ignored\": 0, \"measured\": 0, \"filtered_out\": 0, \"exec_time\": 0.01 }\n\
            error: test failed, to rerun pass `--lib`\n";
        let c = failed(StepKind::Test, json, &own("x"));
        assert_eq!(
            c.outcome,
            test_fail_because(&["net::fetch"], TestFailReason::NetworkAccess)
        );
        // A crashed binary whose own output tried the network.
        let crash = "     Running tests/net.rs (/build/target/debug/deps/net-0123456789abcdef)\n\
            Error: Os { code: 101, kind: NetworkUnreachable, message: \"Network is unreachable\" }\n\
            error: test failed, to rerun pass `--test net`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/net-0123456789abcdef` (exit status: 1)\n";
        assert_eq!(failed_tests(crash), ["<tests/net.rs>: exit status: 1"]);
        let c = failed(StepKind::Test, crash, &own("x"));
        assert_eq!(
            c.outcome,
            test_fail_because(
                &["<tests/net.rs>: exit status: 1"],
                TestFailReason::NetworkAccess
            )
        );
    }

    #[test]
    fn libtest_text_edge_cases() {
        let cases: &[(&str, &[&str])] = &[
            // Result lines printed inside a test's captured output are ignored.
            (
                "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\ntest c ... FAILED\nfailures:\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
                &["b"],
            ),
            // Terse output: names come from the failures list only.
            (
                "running 3 tests\n.F.\nfailures:\n\n---- m::t stdout ----\npanicked\n\nfailures:\n    m::t\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
                &["m::t"],
            ),
            // Old cargo: `Running target/…/name-hash`, quotes instead of backticks.
            (
                "     Running target/debug/deps/foo-0123456789abcdef\n\nrunning 1 test\nerror: test failed, to rerun pass '--lib'\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/foo-0123456789abcdef` (signal: 11, SIGSEGV: invalid memory reference)\n",
                &["<target/debug/deps/foo>: signal: 11, SIGSEGV: invalid memory reference"],
            ),
            // A binary that completed but failed without naming a test (custom harness).
            (
                "     Running tests/ui.rs (/build/target/debug/deps/ui-0123456789abcdef)\ntest result: FAIL. 3 tests failed\nerror: test failed, to rerun pass `--test ui`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/ui-0123456789abcdef` (exit status: 1)\n",
                &["<tests/ui.rs>: exit status: 1"],
            ),
            // Miri aborting single-threaded inside a test.
            (
                "     Running unittests src/lib.rs (/build/target/miri/debug/deps/m-0123456789abcdef)\n\nrunning 2 tests\ntest a ... ok\ntest ub ... error: Undefined Behavior: out-of-bounds pointer use\n  --> src/lib.rs:9:5\nerror: test failed, to rerun pass `--lib`\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/bin/cargo-miri runner /build/target/miri/debug/deps/m-0123456789abcdef` (exit status: 1)\n",
                &["ub"],
            ),
            // JSON with exactly one test in flight when the binary died.
            (
                "     Running unittests src/lib.rs (/build/target/debug/deps/j-0123456789abcdef)\n{ \"type\": \"suite\", \"event\": \"started\", \"test_count\": 2 }\n{ \"type\": \"test\", \"event\": \"started\", \"name\": \"ok_one\" }\n{ \"type\": \"test\", \"name\": \"ok_one\", \"event\": \"ok\" }\n{ \"type\": \"test\", \"event\": \"started\", \"name\": \"boom\" }\nerror: test failed, to rerun pass `--lib`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/j-0123456789abcdef --format json` (signal: 11, SIGSEGV: invalid memory reference)\n",
                &["boom"],
            ),
            // The same test name failing in two binaries: no synthetic name for the second.
            (
                "     Running unittests src/lib.rs (/b/deps/x-0123456789abcdef)\n\nrunning 1 test\ntest it_works ... FAILED\n\nfailures:\n\nfailures:\n    it_works\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\nerror: test failed, to rerun pass `--lib`\n     Running tests/it.rs (/b/deps/it-0123456789abcdef)\n\nrunning 1 test\ntest it_works ... FAILED\n\nfailures:\n\nfailures:\n    it_works\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\nerror: test failed, to rerun pass `--test it`\n",
                &["it_works"],
            ),
            // All passing binaries: nothing.
            (
                "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
                &[],
            ),
        ];
        for (out, expected) in cases {
            assert_eq!(failed_tests(out), *expected, "{out}");
        }
    }

    #[test]
    fn build_messages_printed_by_tests_are_test_output() {
        // A custom-harness test binary that drives cargo and echoes what it printed.
        let me = "path+file:///build/me#0.1.0";
        let echoed = compiler_message(me, "error", Some("E0308"), "mismatched types");
        let out = format!(
            "{{\"reason\":\"build-finished\",\"success\":true}}\n     Running tests/compile.rs (/build/target/debug/deps/compile-0123456789abcdef)\n{echoed}\nerror: could not compile `fixture-crate` (lib) due to 1 previous error\nerror: failed to run custom build command for `fixture-sys v0.1.0`\nerror: test failed, to rerun pass `--test compile`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/compile-0123456789abcdef` (exit status: 1)\n"
        );
        let c = failed(StepKind::Test, &out, &[me.to_owned()]);
        assert_eq!(
            c.outcome,
            test_fail(&["<tests/compile.rs>: exit status: 1"])
        );
        // The same lines before any test binary ran are the step's own build failing.
        let before = format!("{echoed}\n{{\"reason\":\"build-finished\",\"success\":false}}\n");
        let c = failed(StepKind::Test, &before, &[me.to_owned()]);
        assert_eq!(c.outcome, codes(&["E0308"]));
    }

    // -----------------------------------------------------------------------------------------
    // Flags

    #[test]
    fn diagnostics_changed_in_any_step() {
        let samples = [
            // trybuild, as in the real fixture but alone.
            "test tests/ui/x.rs ... mismatch\n\nEXPECTED:\n┈┈┈┈\nerror[E0308]: mismatched types\n┈┈┈┈\n\nACTUAL OUTPUT:\n┈┈┈┈\nerror[E0308]: mismatched types\n┈┈┈┈\n",
            "note: If the actual output is the correct output you can bless it by rerunning\n      your test with the environment variable TRYBUILD=overwrite",
            // ui_test
            "FAILED TEST: tests/ui/bad.rs\ncommand: \"rustc\" \"tests/ui/bad.rs\"\n\nactual output differed from expected\nExecute `cargo test --bless` to update `tests/ui/bad.stderr` to the actual output\n--- tests/ui/bad.stderr\n+++ <stderr output>\n",
            // compiletest-rs
            "\nThe actual stderr differed from the expected stderr.\nActual stderr saved to /build/target/debug/ui/x.stderr\nTo update references, rerun the tests and pass the `--bless` flag\n",
            "normalized stderr:\nerror[E0277]: the trait bound `X: Y` is not satisfied\n",
        ];
        for sample in samples {
            let out = format!(
                "running 1 test\ntest ui ... FAILED\n\nfailures:\n\n---- ui stdout ----\n{sample}\n\nfailures:\n    ui\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n"
            );
            for kind in StepKind::ALL {
                if kind == StepKind::Fetch {
                    continue;
                }
                let c = failed(kind, &out, &own("x"));
                assert!(c.diagnostics_changed, "{kind}: {sample}");
                if kind.runs_tests() {
                    assert_eq!(
                        c.outcome,
                        test_fail_because(&["ui"], TestFailReason::DiagnosticsChange),
                        "{sample}"
                    );
                }
            }
        }
        // trybuild's `wip` (no expected file yet) and EXPECTED: alone are not changes.
        let wip = "test tests/ui/new.rs ... wip\n\nNOTE: writing the following output to `wip/new.stderr`.\nMove this file to `tests/ui/new.stderr` to accept it as correct.\nEXPECTED:\n";
        let c = failed(StepKind::Test, wip, &own("x"));
        assert!(!c.diagnostics_changed);
    }

    #[test]
    fn contaminated_target_dir() {
        let me = "path+file:///build/me#0.1.0";
        let rustc_text = "error[E0464]: multiple candidates for `rlib` dependency `okdep` found\n --> user.rs:1:1\n  |\n1 | extern crate okdep;\n  | ^^^^^^^^^^^^^^^^^^^\n  |\n  = note: candidate #1: deps/libokdep-aaaa.rlib\n  = note: candidate #2: deps/libokdep-bbbb.rlib\n\nerror: aborting due to 1 previous error\n";
        let cases: Vec<(StepKind, String, Outcome)> = vec![
            (
                StepKind::Build,
                compiler_message(
                    me,
                    "error",
                    Some("E0464"),
                    "multiple candidates for `rmeta` dependency `serde` found",
                ),
                codes(&["E0464"]),
            ),
            // Printed by a doctest (rustdoc compiling against the shared target dir).
            (
                StepKind::Test,
                format!(
                    "   Doc-tests me\n\nrunning 1 test\ntest src/lib.rs - f (line 3) ... FAILED\n\nfailures:\n\n---- src/lib.rs - f (line 3) stdout ----\n{rustc_text}Couldn't compile the test.\n\nfailures:\n    src/lib.rs - f (line 3)\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\nerror: doctest failed, to rerun pass `--doc`\n"
                ),
                test_fail(&["src/lib.rs - f (line 3)"]),
            ),
            // Older wording, coloured, from a test that runs rustc itself.
            (
                StepKind::Test,
                "running 1 test\ntest compile ... FAILED\n\nfailures:\n\n---- compile stdout ----\n\x1b[0m\x1b[1m\x1b[38;5;9merror[E0464]\x1b[0m\x1b[0m\x1b[1m: multiple matching crates for `log`\x1b[0m\n\nfailures:\n    compile\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n".into(),
                test_fail(&["compile"]),
            ),
        ];
        for (kind, out, expected) in cases {
            let c = failed(kind, &out, &[me.to_owned()]);
            assert_eq!(c.outcome, expected, "{out}");
            assert!(c.contaminated_target_dir, "{out}");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Robustness

    #[test]
    fn timestamps_colours_and_crlf_are_ignored() {
        let stamped: String = fixture("build_own_errors")
            .lines()
            .enumerate()
            .map(|(i, l)| format!("[{:>8.3}] {l}\r\n", i as f64 * 0.25))
            .collect();
        let c = failed(StepKind::Build, &stamped, &own("own_err"));
        assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
        let stamped: String = fixture("test_failures")
            .lines()
            .map(|l| format!("[  12.500] {l}\n"))
            .collect();
        assert_eq!(failed_tests(&stamped).len(), 4);
        // Brackets that are not a timestamp are left alone.
        assert_eq!(strip_timestamp("[abc] x"), "[abc] x");
        assert_eq!(strip_timestamp("[1.5] x"), "x");
        assert_eq!(
            strip_ansi("\x1b[1m\x1b[38;5;9merror\x1b[0m: x\x1b]8;;http://x\x07y"),
            "error: xy"
        );
    }

    #[test]
    fn own_packages_unknown_falls_back_to_path_packages() {
        let c = failed(StepKind::Build, fixture("build_own_errors"), &[]);
        assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
        assert!(
            c.notes
                .iter()
                .any(|n| n.starts_with("own packages unknown"))
        );
        let c = failed(StepKind::Build, fixture("build_dep_error"), &[]);
        assert_eq!(c.outcome, deps(&["reg:brokendep@1.2.3"]));
        // With own packages given, a path package that is not among them is a dependency.
        let c = failed(
            StepKind::Build,
            fixture("build_own_errors"),
            &["path+file:///build/other#0.1.0".into()],
        );
        assert_eq!(c.outcome, deps(&["own_err"]));
    }

    #[test]
    fn truncated_log_is_noted() {
        let out = format!(
            "{}\n[caldera: log truncated: 1234 bytes omitted here; the log keeps the first and last part within a cap of 5242880 bytes]\n",
            fixture("build_own_errors")
        );
        let c = failed(StepKind::Build, &out, &own("own_err"));
        assert!(
            c.notes.iter().any(|n| n.contains("log was truncated")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn malformed_json_lines_are_text() {
        let out = "{\"reason\":\"compiler-message\",\"package_id\":\n{\"reason\": 5}\n{ \"type\": \"test\"\nerror: could not compile `x` (lib)\n";
        let c = failed(StepKind::Build, out, &own("x"));
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
    }

    #[test]
    fn one_pass_matcher_agrees_with_naive_search() {
        let naive = |line: &str| {
            Hits(
                all_phrases()
                    .filter(|(p, _)| line.contains(p))
                    .fold(0, |bits, (_, bit)| bits | bit),
            )
        };
        let mut corpus: Vec<String> = [
            "",
            "e",
            "--",
            "--bless",
            "x--bless",
            "error: linking with `",
            "No space left on device",
            "éNo space left on deviceé",
            "memory allocation of 12 bytes failed",
            "error: test failed, to rerun pass `--lib` error: doctest failed",
            "query stack during panicquery stack during panic",
            "Could not resolve hos",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every phrase alone, at the end of a line, cut short, and around multi-byte text.
        for (p, _) in all_phrases() {
            corpus.push(p.to_owned());
            corpus.push(format!("ab{p}"));
            corpus.push(p[..p.len() - 1].to_owned());
            corpus.push(format!("┈{p}┈"));
        }
        for name in [
            "build_own_errors",
            "build_dep_error",
            "build_dep_build_script_network",
            "build_link",
            "build_deny_lint",
            "build_ice",
            "test_failures",
            "test_failures_libtest_json",
            "test_crashes",
            "test_crash_single_thread",
            "test_doctests",
            "test_trybuild_mismatch",
        ] {
            corpus.extend(fixture(name).lines().map(|l| strip_ansi(l).into_owned()));
        }
        let mut matched = 0;
        for line in &corpus {
            let hits = Hits::of(line);
            assert_eq!(hits, naive(line), "{line:?}");
            matched += usize::from(hits.0 != 0);
        }
        assert!(matched > 100, "only {matched} lines matched anything");
    }

    #[test]
    fn notes_are_bounded() {
        let long = "x".repeat(10_000);
        let mut c = Classification::new(Outcome::TestPass);
        for i in 0..100 {
            c.note(format!("{i} {long}"));
        }
        assert_eq!(c.notes.len(), MAX_NOTES);
        assert!(
            c.notes
                .iter()
                .all(|n| n.len() <= MAX_NOTE_LEN && n.ends_with('…'))
        );
        // Cut at a character boundary: byte 4 is inside the second `é`.
        assert_eq!(clip("aéééé", 7), "aé…");
    }

    #[test]
    fn five_mebibytes_of_output() {
        // A long, realistic log (a big dependency tree's artifacts, warnings and test results)
        // with the failures at the end: every line is looked at once.
        let artifact = format!(
            "{{\"reason\":\"compiler-artifact\",\"package_id\":\"{REG}#dep@1.0.0\",\"manifest_path\":\"/cargo/registry/src/dep-1.0.0/Cargo.toml\",\"target\":{{\"kind\":[\"lib\"],\"crate_types\":[\"lib\"],\"name\":\"dep\",\"src_path\":\"/cargo/registry/src/dep-1.0.0/src/lib.rs\",\"edition\":\"2021\",\"doc\":true,\"doctest\":true,\"test\":true}},\"profile\":{{\"opt_level\":\"0\",\"debuginfo\":2,\"debug_assertions\":true,\"overflow_checks\":true,\"test\":false}},\"features\":[],\"filenames\":[\"/build/target/debug/deps/libdep-0123456789abcdef.rlib\"],\"executable\":null,\"fresh\":false}}\n"
        );
        let warning = compiler_message(
            "path+file:///build/big#0.1.0",
            "warning",
            Some("dead_code"),
            "function `f` is never used",
        ) + "\n";
        let mut out = String::from("running 100000 tests\n");
        while out.len() < 5 * 1024 * 1024 {
            out.push_str(&artifact);
            out.push_str(&warning);
            out.push_str("test some::module::a_rather_long_test_name ... ok\n");
        }
        out.push_str("test some::module::broken ... FAILED\n\nfailures:\n\nfailures:\n    some::module::broken\n\ntest result: FAILED. 99999 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s\n");
        let c = failed(StepKind::Test, &out, &own("big"));
        assert_eq!(c.outcome, test_fail(&["some::module::broken"]));
    }

    // -----------------------------------------------------------------------------------------
    // Jobs

    fn step(kind: StepKind, termination: Termination, output: &'static str) -> StepRun<'static> {
        static OWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        StepRun {
            kind,
            termination,
            output,
            own_packages: OWN.get_or_init(|| own("own_err")),
            pids_limit_hit: false,
        }
    }

    #[test]
    fn job_mapping() {
        use StepKind as K;
        let ok = Termination::Exited(0);
        let bad = Termination::Exited(101);
        let errors = fixture("build_own_errors");
        let tests = fixture("test_failures");
        let e = codes(&["E0308", "E0425"]);
        let tf = test_fail(&[
            "integ_fails",
            "tests::network",
            "tests::should_panic_but_doesnt",
            "tests::wrong_sum",
        ]);
        let fetch = step(K::Fetch, ok, "");
        let build = step(K::Build, ok, "");
        let no_run = step(K::TestNoRun, ok, "");
        let test = step(K::Test, ok, "");
        let error = || Outcome::Error {
            reason: "no build step ran".into(),
        };
        #[rustfmt::skip]
        let cases: Vec<(Mode, Vec<StepRun<'static>>, bool, Outcome)> = vec![
            (Mode::BuildAndTest, vec![fetch, build, no_run, test], false, Outcome::TestPass),
            (Mode::BuildAndTest, vec![fetch, build, no_run], true, Outcome::TestSkipped),
            (Mode::BuildAndTest, vec![fetch, build, no_run], false, Outcome::TestSkipped),
            // skip_tests: a test step that ran anyway is ignored.
            (Mode::BuildAndTest, vec![build, step(K::Test, bad, tests)], true, Outcome::TestSkipped),
            (Mode::BuildAndTest, vec![fetch, step(K::Build, bad, errors), no_run, test], false, e.clone()),
            (Mode::BuildAndTest, vec![build, step(K::TestNoRun, bad, errors)], false, e.clone()),
            (Mode::BuildAndTest, vec![build, no_run, step(K::Test, bad, tests)], false, tf.clone()),
            // The first failure decides; later steps are ignored.
            (Mode::BuildAndTest, vec![step(K::Build, bad, errors), step(K::Test, bad, tests)], false, e.clone()),
            (Mode::BuildOnly, vec![fetch, build], false, Outcome::TestSkipped),
            (Mode::BuildOnly, vec![fetch, step(K::Build, bad, errors)], false, e.clone()),
            (Mode::CheckOnly, vec![fetch, step(K::Check, ok, "")], false, Outcome::TestPass),
            (Mode::CheckOnly, vec![step(K::Check, bad, errors)], false, e.clone()),
            (Mode::Clippy, vec![step(K::Clippy, ok, "")], false, Outcome::TestPass),
            (Mode::Clippy, vec![step(K::Clippy, bad, errors)], false, e.clone()),
            (Mode::Rustdoc, vec![step(K::Doc, ok, "")], true, Outcome::TestPass),
            (Mode::Rustdoc, vec![step(K::Doc, Termination::Timeout, errors)], false, bf(BuildFailReason::Timeout)),
            (Mode::Miri, vec![fetch, step(K::Miri, ok, "")], false, Outcome::TestPass),
            (Mode::Miri, vec![fetch, build], true, Outcome::TestSkipped),
            (Mode::Miri, vec![fetch, step(K::Miri, bad, tests)], false, tf.clone()),
            (Mode::BuildAndTest, vec![step(K::Fetch, bad, "error: failed to get `foo` as a dependency of package `x v0.1.0`\n\nCaused by:\n  no matching package named `foo` found\n")], false,
                Outcome::PrepareFail { reason: "error: failed to get `foo` as a dependency of package `x v0.1.0`".into() }),
            (Mode::BuildAndTest, vec![step(K::Fetch, Termination::Timeout, "")], false,
                Outcome::PrepareFail { reason: "fetch timed out".into() }),
            (Mode::BuildAndTest, vec![], false, error()),
            (Mode::CheckOnly, vec![fetch], false, error()),
            (Mode::BuildAndTest, vec![step(K::Test, ok, "")], true, error()),
        ];
        for (mode, steps, skip, expected) in cases {
            let kinds: Vec<_> = steps.iter().map(|s| (s.kind, s.termination)).collect();
            let c = classify_job(mode, &steps, skip);
            assert_eq!(
                c.outcome, expected,
                "{mode} {kinds:?} skip={skip}: {:?}",
                c.notes
            );
        }
    }

    #[test]
    fn job_carries_flags_of_the_deciding_step() {
        let trybuild = fixture("test_trybuild_mismatch");
        let tb_own = own("tb");
        let steps = [
            StepRun {
                kind: StepKind::Build,
                termination: Termination::Exited(0),
                output: "",
                own_packages: &tb_own,
                pids_limit_hit: false,
            },
            StepRun {
                kind: StepKind::Test,
                termination: Termination::Exited(101),
                output: trybuild,
                own_packages: &tb_own,
                pids_limit_hit: false,
            },
        ];
        let c = classify_job(Mode::BuildAndTest, &steps, false);
        assert_eq!(
            c.outcome,
            test_fail_because(&["ui"], TestFailReason::DiagnosticsChange)
        );
        assert!(c.diagnostics_changed);
        assert!(
            c.notes.iter().any(|n| n == "decided by step 2 (test)"),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn passed_steps_are_passed_whatever_they_print() {
        for kind in StepKind::ALL {
            let run = StepRun {
                kind,
                termination: Termination::Exited(0),
                output: fixture("build_ice"),
                own_packages: &[],
                pids_limit_hit: false,
            };
            assert_eq!(classify_step(&run), StepVerdict::Passed);
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(
            error_codes(fixture("build_own_errors"), &own("own_err")),
            ["E0308", "E0425"]
        );
        assert_eq!(
            error_codes(fixture("build_dep_error"), &own("dep_err")),
            Vec::<String>::new()
        );
        assert_eq!(
            StepKind::ALL.map(StepKind::as_str),
            [
                "fetch",
                "build",
                "test-no-run",
                "test",
                "check",
                "clippy",
                "doc",
                "miri"
            ]
        );
        assert_eq!(
            section_label("     Running unittests src/lib.rs (/t/debug/deps/x-0123456789abcdef)"),
            Some("unittests src/lib.rs".into())
        );
        assert_eq!(section_label("   Doc-tests x"), Some("doctests x".into()));
        assert_eq!(section_label("Running x"), None);
        assert!(running_header("running 1 test"));
        assert!(running_header("running 12 tests"));
        assert!(!running_header("running tests"));
        assert_eq!(
            process_status("  process didn't exit successfully: `a b` (exit status: 3)"),
            Some(("a b", "exit status: 3"))
        );
    }
}
