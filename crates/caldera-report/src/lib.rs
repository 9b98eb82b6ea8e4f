//! The experiment report: what regressed between the two toolchains, why, and whether to believe it.
//!
//! [`Report::build`] takes one [`CrateResult`] per crate (its start and end [`Outcome`]s and log
//! keys) and computes, in time and memory linear in the number of crates plus dependency links:
//!
//! * each crate's [`Comparison`] ([`compare`]) and the [`Counts`] per comparison;
//! * for every regression its **root causes** (below), the root regressions ordered by how many
//!   regressions they explain, and the root regressions grouped by error ([`ErrorGroupKey`]);
//! * regressions whose end outcome is `test-fail:diagnostics-change` (a UI-test harness saw the
//!   compiler's output change, [`Report::diagnostics_changes`]), kept apart from real breakage:
//!   they take no part in root-cause attribution and are listed below the regressions;
//! * the spurious results (`spurious-regressed`, `spurious-fixed`, and `spurious` when both
//!   sides failed spuriously) and infrastructure errors (`error`), kept apart from real
//!   regressions, with their reasons (the sandbox limit hit, …) counted;
//! * the [`Report::retry_list`]: regressions, diagnostics changes and spurious results, to run
//!   again.
//!
//! Crates the experiment marks `quiet` ([`Report::build_quiet`]) still count, and still explain
//! the regressions of their dependents, but are left out of the lists of regressions (and of the
//! retry list): they are named apart, as [`Report::quiet_regressions`].
//!
//! The report serializes to the JSON of `results.json` (see [`Report`]'s `Serialize`), and
//! [`summary_markdown`] renders a bounded summary to paste in a GitHub issue. [`first_new_error`]
//! finds the first error line of an end log that the start log does not have, and [`log_diff`]
//! aligns both logs and returns the sections where they diverge ("what changed"). [`pr_comment`]
//! renders the Markdown comment for a pull request, within GitHub's 65,536-character limit.
//!
//! # Root-cause attribution
//!
//! Only crates whose comparison is `regressed` take part. A regressed crate whose end outcome is
//! `build-fail:depends-on` names its failed dependencies; each name is resolved to crates of the
//! experiment:
//!
//! * a full id (`reg:foo@1.2.3`, with or without `#checksum`, `git:URL#REV`, `local:/DIR`) or a
//!   versioned name (`foo@1.2.3`, cargo's `foo v1.2.3`) matches exactly that crate version (the
//!   checksum is ignored). It never falls back to other versions of the name: another version's
//!   regression does not explain this failure;
//! * a plain name (`foo`) matches every registry crate of that name in the experiment except the
//!   failing crate itself; names compare ASCII-case-insensitively with `-` and `_` equal
//!   (`Foo_Bar` = `foo-bar`), as the registry treats them;
//! * a name that matches no crate is recorded in [`Report::unresolved_dependencies`].
//!
//! A dependency counts only if its own comparison is `regressed`. One that was already failing on
//! the start toolchain, failed spuriously, or is not in the experiment explains nothing, so the
//! crate that named it stays a root of its own (grouped under `depends-on`).
//!
//! Following those links from a crate down to crates that regressed on their own gives its roots:
//! roots(X) = union of roots(D) over the regressed dependencies D of X, or {X} when it has none.
//! A crate with several regressed dependencies can have several roots, and then counts once for
//! each. Dependency cycles cannot happen in real data; in bad data each strongly connected group is
//! treated as one node: a cycle that reaches regressed crates outside itself is attributed to
//! their roots, and a cycle that does not is its own root (every member is a root and the members'
//! roots are all the members). Members of cycles are reported in [`Report::cycles`]. Nothing
//! recurses, so long chains cannot overflow the stack.
//!
//! For a root regression, *regressions through it* counts the regressions whose roots include it —
//! itself and its *dependents*.

#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use caldera_core::confirm::ConfirmationStatus;
use caldera_core::crates::{CrateId, CrateSpec, validate_crate_name};
use caldera_core::outcome::{BuildFailReason, Comparison, Outcome, TestFailReason, compare};
use caldera_core::selection::CrateSelection;

pub use caldera_core::outcome::CrateResult;

mod attribution;
mod confirmation;
pub mod cost;
mod deps;
mod diff;
mod json;
mod logdiff;
mod pr;
mod summary;

use attribution::*;
use confirmation::*;
use deps::*;

pub use confirmation::ConfirmationCounts;

pub use diff::{DiffLine, DiffOptions, LogDiff, Section, log_diff};
pub use json::Toolchains;
pub use logdiff::first_new_error;
pub use pr::{GITHUB_COMMENT_LIMIT, PrCommentOptions, pr_comment};
pub use summary::{
    DEFAULT_MAX_ENTRIES, SummaryOptions, confirmation_note, quiet_note, summary_markdown,
};

/// Why a report could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// More crates than the report's 32-bit indices can address.
    #[error("too many crates for one report: {count} (at most {max})")]
    TooManyCrates {
        /// Crates given.
        count: usize,
        /// Most crates a report holds.
        max: usize,
    },
}

impl ReportError {
    /// Whether a report can index `n` crates.
    fn check_size(n: usize) -> Result<(), ReportError> {
        if n >= NONE as usize {
            return Err(ReportError::TooManyCrates {
                count: n,
                max: NONE as usize - 1,
            });
        }
        Ok(())
    }
}

/// Index of a crate in the report's input order.
type Ix = u32;
/// "No index".
const NONE: Ix = Ix::MAX;

const CATEGORIES: usize = Comparison::ALL.len();

/// Number of crates per [`Comparison`]. JSON: an object with every comparison as a key, in
/// declaration order: `{"regressed": 412, "fixed": 3, ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    by: [u32; CATEGORIES],
}

impl Counts {
    fn of(comparisons: &[Comparison]) -> Counts {
        let mut counts = Counts::default();
        for &c in comparisons {
            counts.by[c as usize] += 1;
        }
        counts
    }

    /// Crates with this comparison.
    pub fn get(&self, comparison: Comparison) -> usize {
        self.by[comparison as usize] as usize
    }

    /// All crates.
    pub fn total(&self) -> usize {
        self.by.iter().map(|&n| n as usize).sum()
    }

    /// Every comparison with its count (zeros included), in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (Comparison, usize)> + '_ {
        Comparison::ALL.iter().map(|&c| (c, self.get(c)))
    }
}

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(c, n)| (c.as_str(), n)))
    }
}

/// What a group of root regressions has in common: an error code (`E0308`) from the end outcome's
/// `compiler-error` codes, or a kind: `compiler-error` (errors without a code), `ice`, `link`,
/// `unknown`, `depends-on` (failed dependencies that explain nothing, see the module docs) or
/// `test-fail`. Serializes as that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorGroupKey {
    /// A rustc error code, like `E0308`.
    Code(String),
    /// An outcome or build-failure kind, like `ice` or `test-fail`.
    Kind(&'static str),
}

impl ErrorGroupKey {
    /// The group's name: the code or the kind.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorGroupKey::Code(code) => code,
            ErrorGroupKey::Kind(kind) => kind,
        }
    }
}

impl fmt::Display for ErrorGroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorGroupKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A dependency named by `depends-on` failures of regressed crates that matches no crate of the
/// experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnresolvedDependency {
    /// The name as written in the failure (trimmed).
    pub name: String,
    /// Regressed crates that named it.
    pub dependents: usize,
}

/// How many spurious results had one failure kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// The build-failure kind: `oom`, `timeout`, `no-output-timeout`, `no-space`, `network-access`.
    pub kind: &'static str,
    /// Crates.
    pub crates: usize,
}

/// Compressed rows: row `r` is `items[off[r]..off[r + 1]]`.
#[derive(Debug, Default)]
struct Csr {
    off: Vec<usize>,
    items: Vec<Ix>,
}

impl Csr {
    fn row(&self, r: Ix) -> &[Ix] {
        let r = r as usize;
        &self.items[self.off[r]..self.off[r + 1]]
    }
}

/// `(hash, crate index)` pairs sorted by hash: a compact multimap whose hits the caller verifies.
#[derive(Debug, Default)]
struct HashIndex(Vec<(u64, Ix)>);

impl HashIndex {
    /// The index of the results' crates by id.
    fn of_ids(results: &[CrateResult]) -> HashIndex {
        let mut buf = Vec::new();
        HashIndex::new(
            results
                .iter()
                .zip(0..)
                .map(|(r, i)| (id_hash(&r.krate, &mut buf), i))
                .collect(),
        )
    }

    fn new(mut pairs: Vec<(u64, Ix)>) -> Self {
        pairs.sort_unstable();
        HashIndex(pairs)
    }

    fn candidates(&self, hash: u64) -> impl Iterator<Item = Ix> + '_ {
        let start = self.0.partition_point(|&(h, _)| h < hash);
        self.0[start..]
            .iter()
            .take_while(move |&&(h, _)| h == hash)
            .map(|&(_, i)| i)
    }
}

#[derive(Debug)]
struct GroupData {
    key: ErrorGroupKey,
    crates: Vec<Ix>,
}

/// The report over one experiment's results. Build it with [`Report::build`]; read it through the
/// accessors, serialize it for `results.json`, render it with [`summary_markdown`].
///
/// JSON (crates are named by their id string; lists are in the order of the accessors):
///
/// ```text
/// {
///   "total": 1000,
///   "counts": {"regressed": 5, "fixed": 1, ...},
///   "regressions": ["reg:a@1.0.0", ...],                  // roots first; no quiet crates
///   "quiet_regressions": ["reg:q@1.0.0", ...],            // regressions of quiet crates, by id
///   "diagnostics_changes": ["reg:u@1.0.0", ...],          // regressed only in compiler output, by id
///   "flaky": ["reg:f@1.0.0", ...],                        // re-runs disagreed; in no other list
///   "confirmation": {"confirmed": 3, "flaky": 1, "pending": 0},
///   "root_regressions": [{"crate": "reg:a@1.0.0", "end": {...}, "regressions": 3,
///                         "dependents": 2, "in_cycle": false}, ...],
///   "error_groups": [{"group": "E0308", "crates": ["reg:a@1.0.0", ...]}, ...],
///   "spurious": {"spurious-regressed": {"reasons": {"oom": 2}, "crates": [...]},
///                "spurious-fixed": {"reasons": {...}, "crates": [...]},
///                "spurious": {"reasons": {...}, "crates": [...]},   // both sides spurious
///                "error": {"crates": [...]}},
///   "unresolved_dependencies": [{"name": "openssl-sys", "dependents": 4}],
///   "cycles": ["reg:x@1.0.0", ...],
///   "crates": [{"crate": "...", "comparison": "regressed",
///               "confirmation": "confirmed",     // regressed/fixed crates that were re-run
///               "start": {...}, "end": {...},
///               "start_log": "...", "end_log": "...",
///               "root_causes": ["..."],          // regressions only
///               "root": true, "in_cycle": true   // only when true
///              }, ...]                              // input order
/// }
/// ```
pub struct Report {
    results: Vec<CrateResult>,
    comparisons: Vec<Comparison>,
    counts: Counts,
    id_index: HashIndex,
    /// Crate indices of the regressions, ascending; a regression's position here is its "position".
    regressed: Vec<Ix>,
    /// Per position: its strongly connected component.
    scc_of: Vec<Ix>,
    /// Per component: its roots (crate indices, ascending).
    scc_roots: Csr,
    /// Per position: regressions whose roots include it; non-zero exactly for root regressions.
    impact: Vec<u32>,
    /// Root regressions: most regressions through them first, then by id.
    roots: Vec<Ix>,
    /// Roots, then the other regressions by id; without quiet crates.
    regressions: Vec<Ix>,
    /// Regressions of quiet crates, by id (not in `roots` nor `regressions`).
    quiet: Vec<Ix>,
    /// Regressions whose end outcome is a diagnostics change, by id (not in `roots`,
    /// `regressions` nor `quiet`).
    diagnostics: Vec<Ix>,
    /// Regressed or fixed crates whose confirmation runs disagreed, by id (in no other list).
    flaky: Vec<Ix>,
    /// Per crate, its confirmation status when it was re-run; empty when nothing was.
    confirmations: Vec<Option<ConfirmationStatus>>,
    /// Crates in dependency cycles, ascending index.
    cycles: Vec<Ix>,
    /// The same, by id.
    cycles_by_id: Vec<Ix>,
    error_groups: Vec<GroupData>,
    spurious_regressed: Vec<Ix>,
    spurious_fixed: Vec<Ix>,
    /// Both sides spurious.
    spurious_both: Vec<Ix>,
    errors: Vec<Ix>,
    spurious_regressed_reasons: Vec<ReasonCount>,
    spurious_fixed_reasons: Vec<ReasonCount>,
    spurious_both_reasons: Vec<ReasonCount>,
    unresolved: Vec<UnresolvedDependency>,
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("crates", &self.results.len())
            .field("counts", &self.counts)
            .field("root_regressions", &self.roots.len())
            .field("quiet_regressions", &self.quiet.len())
            .field("diagnostics_changes", &self.diagnostics.len())
            .field("error_groups", &self.error_groups.len())
            .field("cycles", &self.cycles.len())
            .field("unresolved_dependencies", &self.unresolved.len())
            .finish_non_exhaustive()
    }
}

/// One crate of a [`Report`], with what the report knows about it.
#[derive(Clone, Copy)]
pub struct CrateReport<'a> {
    report: &'a Report,
    index: Ix,
}

impl fmt::Debug for CrateReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrateReport")
            .field("crate", &self.krate().to_string())
            .field("comparison", &self.comparison())
            .finish_non_exhaustive()
    }
}

impl<'a> CrateReport<'a> {
    /// The crate's input.
    pub fn result(self) -> &'a CrateResult {
        &self.report.results[self.index as usize]
    }

    /// The crate.
    pub fn krate(self) -> &'a CrateId {
        &self.result().krate
    }

    /// How its end outcome compares with its start outcome.
    pub fn comparison(self) -> Comparison {
        self.report.comparisons[self.index as usize]
    }

    /// Whether re-runs confirmed its comparison (regressed and fixed crates that were re-run).
    pub fn confirmation(self) -> Option<ConfirmationStatus> {
        self.report
            .confirmations
            .get(self.index as usize)
            .copied()
            .flatten()
    }

    /// Its position among the regressions, when it is one.
    fn position(self) -> Option<usize> {
        if self.comparison() != Comparison::Regressed {
            return None;
        }
        self.report.regressed.binary_search(&self.index).ok()
    }

    /// The root regressions this regression is attributed to (itself when it regressed on its
    /// own), ordered by input position; empty when it is not a regression.
    pub fn root_causes(self) -> impl ExactSizeIterator<Item = &'a CrateId> + 'a {
        let report = self.report;
        let roots: &'a [Ix] = match self.position() {
            Some(p) => report.scc_roots.row(report.scc_of[p]),
            None => &[],
        };
        roots
            .iter()
            .map(move |&i| &report.results[i as usize].krate)
    }

    /// A regression that is a root: it regressed on its own, not through a regressed dependency.
    pub fn is_root(self) -> bool {
        self.regressions_through() > 0
    }

    /// For a root regression, the regressions attributed to it: itself and its dependents. 0 for
    /// other crates.
    pub fn regressions_through(self) -> usize {
        self.position()
            .map_or(0, |p| self.report.impact[p] as usize)
    }

    /// For a root regression, the other regressions attributed to it. 0 for other crates.
    pub fn dependents(self) -> usize {
        self.regressions_through().saturating_sub(1)
    }

    /// The crate is part of a dependency cycle (bad data; see the module docs).
    pub fn in_cycle(self) -> bool {
        self.report.cycles.binary_search(&self.index).is_ok()
    }
}

/// Root regressions with the same error; see [`ErrorGroupKey`].
#[derive(Clone, Copy)]
pub struct ErrorGroup<'a> {
    report: &'a Report,
    data: &'a GroupData,
}

impl fmt::Debug for ErrorGroup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorGroup")
            .field("key", self.key())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<'a> ErrorGroup<'a> {
    /// The error code or kind.
    pub fn key(self) -> &'a ErrorGroupKey {
        &self.data.key
    }

    /// Root regressions in the group.
    pub fn len(self) -> usize {
        self.data.crates.len()
    }

    /// Never true: a group exists because a crate is in it.
    pub fn is_empty(self) -> bool {
        self.data.crates.is_empty()
    }

    /// The root regressions, most regressions through them first.
    pub fn crates(self) -> impl ExactSizeIterator<Item = CrateReport<'a>> + 'a {
        self.report.views(&self.data.crates)
    }
}

impl Report {
    /// Computes the report; see the module docs. The results are kept, in input order, and given
    /// back by [`Report::into_results`].
    pub fn build(results: Vec<CrateResult>) -> Result<Report, ReportError> {
        Self::build_quiet(results, |_| false)
    }

    /// [`Report::build`], with the crates for which `is_quiet` holds (the experiment's `quiet`
    /// overrides) left out of the lists of regressions: root regressions, regressions, error
    /// groups and the retry list. They stay in the counts and in root-cause attribution (a
    /// dependent's root cause can be a quiet crate), and are listed apart
    /// ([`Report::quiet_regressions`]).
    pub fn build_quiet(
        results: Vec<CrateResult>,
        is_quiet: impl Fn(&CrateId) -> bool,
    ) -> Result<Report, ReportError> {
        Self::build_with(results, is_quiet, |_, _| None)
    }

    /// [`Report::build_quiet`], with the confirmation status of each regressed or fixed crate
    /// (`confirmation` is asked about those crates only, with their comparison; `None` = not
    /// re-run and not known flaky). Flaky and known-flaky crates leave every list of
    /// regressions and take no part in root-cause attribution: they are listed apart
    /// ([`Report::flaky`]), and stay in the counts under their first run's comparison.
    pub fn build_with(
        results: Vec<CrateResult>,
        is_quiet: impl Fn(&CrateId) -> bool,
        confirmation: impl Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus>,
    ) -> Result<Report, ReportError> {
        let n = results.len();
        ReportError::check_size(n)?;
        let comparisons: Vec<Comparison> =
            results.iter().map(|r| compare(&r.start, &r.end)).collect();
        let counts = Counts::of(&comparisons);
        let of_kind = |kind: Comparison| -> Vec<Ix> {
            (0..n as Ix)
                .filter(|&i| comparisons[i as usize] == kind)
                .collect()
        };
        let (confirmations, flaky) = confirmation_statuses(&results, &comparisons, confirmation);
        let (regressed, diagnostics) =
            believed_regressions(&results, of_kind(Comparison::Regressed), &confirmations);
        let by_id = |a: &Ix, b: &Ix| results[*a as usize].krate.cmp(&results[*b as usize].krate);

        let id_index = HashIndex::of_ids(&results);
        let mut ranked = rank_regressions(&results, &regressed, &id_index);
        let Listed {
            roots,
            regressions,
            quiet,
            diagnostics,
        } = list_regressions(&results, &regressed, diagnostics, &mut ranked, is_quiet);
        let mut flaky = flaky;
        flaky.sort_by(by_id);

        let mut cycles = ranked.cycles;
        cycles.sort_unstable();
        let mut cycles_by_id = cycles.clone();
        cycles_by_id.sort_by(by_id);
        let error_groups = group_by_error(&results, &roots);
        let sorted_of_kind = |kind| {
            let mut v = of_kind(kind);
            v.sort_by(by_id);
            v
        };
        let spurious_regressed = sorted_of_kind(Comparison::SpuriousRegressed);
        let spurious_fixed = sorted_of_kind(Comparison::SpuriousFixed);
        let spurious_both = sorted_of_kind(Comparison::Spurious);
        let errors = sorted_of_kind(Comparison::Error);
        let (spurious_regressed_reasons, spurious_fixed_reasons, spurious_both_reasons) =
            spurious_reasons(
                &results,
                [&spurious_regressed, &spurious_fixed, &spurious_both],
            );

        Ok(Report {
            results,
            comparisons,
            counts,
            id_index,
            regressed,
            scc_of: ranked.scc_of,
            scc_roots: ranked.scc_roots,
            impact: ranked.impact,
            roots,
            regressions,
            quiet,
            diagnostics,
            flaky,
            confirmations,
            cycles,
            cycles_by_id,
            error_groups,
            spurious_regressed,
            spurious_fixed,
            spurious_both,
            errors,
            spurious_regressed_reasons,
            spurious_fixed_reasons,
            spurious_both_reasons,
            unresolved: ranked.unresolved,
        })
    }

    fn view(&self, index: Ix) -> CrateReport<'_> {
        CrateReport {
            report: self,
            index,
        }
    }

    fn views<'a>(&'a self, ix: &'a [Ix]) -> impl ExactSizeIterator<Item = CrateReport<'a>> + 'a {
        ix.iter().map(move |&i| self.view(i))
    }

    /// Number of crates.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// No crates at all.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Every crate, in input order.
    pub fn crates(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        (0..self.results.len() as Ix).map(move |i| self.view(i))
    }

    /// The crate with this id (the checksum is ignored), if it is in the report.
    pub fn get(&self, id: &CrateId) -> Option<CrateReport<'_>> {
        let mut buf = Vec::new();
        self.id_index
            .candidates(id_hash(id, &mut buf))
            .find(|&i| same_crate(&self.results[i as usize].krate, id))
            .map(|i| self.view(i))
    }

    /// Crates per comparison.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Every regression: the root regressions first (as [`Report::root_regressions`]), then the
    /// regressions through them, by id.
    pub fn regressions(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.regressions)
    }

    /// Regressions of crates marked quiet ([`Report::build_quiet`]), by id. They are in no other
    /// list of regressions.
    pub fn quiet_regressions(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.quiet)
    }

    /// Regressions whose end outcome is `test-fail:diagnostics-change`: a UI-test harness saw
    /// the compiler's output change. By id; in no other list of regressions.
    pub fn diagnostics_changes(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.diagnostics)
    }

    /// Regressed or fixed crates whose confirmation runs disagreed with the first run, by id.
    /// They are in no list of regressions.
    pub fn flaky(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.flaky)
    }

    /// How many listed regressions (and, apart, quiet ones and diagnostics changes) are
    /// confirmed, flaky or still pending; all zero when nothing was re-run.
    pub fn confirmation_counts(&self) -> ConfirmationCounts {
        let mut c = ConfirmationCounts::default();
        for s in self.confirmations.iter().flatten() {
            match s {
                ConfirmationStatus::Confirmed => c.confirmed += 1,
                ConfirmationStatus::Flaky => c.flaky += 1,
                ConfirmationStatus::KnownFlaky => c.known_flaky += 1,
                ConfirmationStatus::Pending => c.pending += 1,
            }
        }
        c
    }

    /// The root regressions, most regressions through them first, then by id.
    pub fn root_regressions(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.roots)
    }

    /// Root regressions grouped by error, largest group first, then by name. A crate with several
    /// error codes is in each of their groups.
    pub fn error_groups(&self) -> impl ExactSizeIterator<Item = ErrorGroup<'_>> {
        self.error_groups
            .iter()
            .map(move |data| ErrorGroup { report: self, data })
    }

    /// Crates whose end build failed spuriously, by id. Not regressions.
    pub fn spurious_regressed(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.spurious_regressed)
    }

    /// Crates whose start build had failed spuriously, by id. Not fixes.
    pub fn spurious_fixed(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.spurious_fixed)
    }

    /// Crates that failed spuriously on both sides (`spurious`), by id.
    pub fn spurious_both(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.spurious_both)
    }

    /// Crates where the infrastructure failed on either side, by id.
    pub fn errors(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.errors)
    }

    /// Failure kinds of the spurious side of `spurious-regressed` (end) or `spurious-fixed`
    /// (start) crates, or of both sides of `spurious` ones (each side counted), most frequent
    /// first; empty for other comparisons.
    pub fn spurious_reasons(&self, comparison: Comparison) -> &[ReasonCount] {
        match comparison {
            Comparison::SpuriousRegressed => &self.spurious_regressed_reasons,
            Comparison::SpuriousFixed => &self.spurious_fixed_reasons,
            Comparison::Spurious => &self.spurious_both_reasons,
            _ => &[],
        }
    }

    /// Dependency names of regressions that match no crate of the experiment, most named first.
    pub fn unresolved_dependencies(&self) -> &[UnresolvedDependency] {
        &self.unresolved
    }

    /// Crates in dependency cycles (bad data), by id.
    pub fn cycles(&self) -> impl ExactSizeIterator<Item = CrateReport<'_>> {
        self.views(&self.cycles_by_id)
    }

    /// The crates worth running again: the regressions (in [`Report::regressions`] order), the
    /// diagnostics changes, then the spurious-regressed, spurious-fixed, spurious and error
    /// crates (each by id).
    pub fn retry_list(&self) -> Vec<CrateId> {
        self.retry_indices()
            .map(|i| self.results[i as usize].krate.clone())
            .collect()
    }

    /// [`Report::retry_list`] as an explicit crate selection (exact versions and revisions), or
    /// `None` when there is nothing to retry.
    pub fn retry_selection(&self) -> Option<CrateSelection> {
        let specs: Vec<CrateSpec> = self
            .retry_indices()
            .map(|i| CrateSpec::exact(&self.results[i as usize].krate))
            .collect();
        (!specs.is_empty()).then_some(CrateSelection::List(specs))
    }

    fn retry_indices(&self) -> impl Iterator<Item = Ix> + '_ {
        self.regressions
            .iter()
            .chain(&self.diagnostics)
            .chain(&self.spurious_regressed)
            .chain(&self.spurious_fixed)
            .chain(&self.spurious_both)
            .chain(&self.flaky)
            .chain(&self.errors)
            .copied()
    }

    /// Gives the results back, in input order.
    pub fn into_results(self) -> Vec<CrateResult> {
        self.results
    }
}

#[cfg(test)]
mod diff_tests;
#[cfg(test)]
mod tests;
