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
//! finds the first error line of an end log that the start log does not have.
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
use serde::{Deserialize, Serialize, Serializer};

use crate::confirm::ConfirmationStatus;
use crate::crates::{CrateId, CrateSpec, validate_crate_name};
use crate::outcome::{BuildFailReason, Comparison, Outcome, TestFailReason, compare};
use crate::selection::CrateSelection;

/// One crate's results on both toolchains, as the report reads them.
/// JSON: `{"crate": "reg:foo@1.0.0", "start": {...}, "end": {...}, "start_log": "...", "end_log": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateResult {
    /// The crate.
    #[serde(rename = "crate")]
    pub krate: CrateId,
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
        if n >= NONE as usize {
            return Err(ReportError::TooManyCrates {
                count: n,
                max: NONE as usize - 1,
            });
        }
        let comparisons: Vec<Comparison> =
            results.iter().map(|r| compare(&r.start, &r.end)).collect();
        let mut counts = Counts::default();
        for &c in &comparisons {
            counts.by[c as usize] += 1;
        }
        let of_kind = |kind: Comparison| -> Vec<Ix> {
            (0..n as Ix)
                .filter(|&i| comparisons[i as usize] == kind)
                .collect()
        };
        let regressed = of_kind(Comparison::Regressed);
        let (confirmations, flaky) = confirmation_statuses(&results, &comparisons, confirmation);
        let regressed: Vec<Ix> = regressed
            .into_iter()
            .filter(|&i| {
                !confirmations
                    .get(i as usize)
                    .copied()
                    .flatten()
                    .is_some_and(is_flaky)
            })
            .collect();
        // a changed diagnostic breaks no dependent: such crates are no one's root cause
        let (diagnostics, regressed): (Vec<Ix>, Vec<Ix>) = regressed.into_iter().partition(|&i| {
            matches!(
                results[i as usize].end,
                Outcome::TestFail {
                    reason: Some(TestFailReason::DiagnosticsChange),
                    ..
                }
            )
        });

        let mut buf = Vec::new();
        let id_index = HashIndex::new(
            results
                .iter()
                .zip(0..)
                .map(|(r, i)| (id_hash(&r.krate, &mut buf), i))
                .collect(),
        );
        let mut pos_of = vec![NONE; n];
        for (p, &i) in (0..).zip(&regressed) {
            pos_of[i as usize] = p;
        }

        let (edges, unresolved) = resolve_dependencies(&results, &regressed, &pos_of, &id_index);
        let Attribution {
            scc_of,
            scc_roots,
            mut cycles,
        } = attribute(&regressed, &edges);
        drop(edges);

        let mut impact = vec![0u32; regressed.len()];
        for &scc in &scc_of {
            for &root in scc_roots.row(scc) {
                impact[pos_of[root as usize] as usize] += 1;
            }
        }
        let by_id = |a: &Ix, b: &Ix| results[*a as usize].krate.cmp(&results[*b as usize].krate);
        let (mut roots, mut others): (Vec<Ix>, Vec<Ix>) = regressed
            .iter()
            .partition(|&&i| impact[pos_of[i as usize] as usize] > 0);
        roots.sort_by(|a, b| {
            let (ia, ib) = (
                impact[pos_of[*a as usize] as usize],
                impact[pos_of[*b as usize] as usize],
            );
            ib.cmp(&ia).then_with(|| by_id(a, b))
        });
        others.sort_by(by_id);
        let mut quiet: Vec<Ix> = regressed
            .iter()
            .chain(&diagnostics)
            .copied()
            .filter(|&i| is_quiet(&results[i as usize].krate))
            .collect();
        let mut diagnostics = diagnostics;
        diagnostics.retain(|&i| !is_quiet(&results[i as usize].krate));
        diagnostics.sort_by(by_id);
        let mut flaky = flaky;
        flaky.sort_by(by_id);
        if !quiet.is_empty() {
            quiet.sort_by(by_id);
            let q: HashSet<Ix> = quiet.iter().copied().collect();
            roots.retain(|i| !q.contains(i));
            others.retain(|i| !q.contains(i));
        }
        drop(pos_of);
        let mut regressions = Vec::with_capacity(regressed.len());
        regressions.extend_from_slice(&roots);
        regressions.extend_from_slice(&others);
        drop(others);

        cycles.sort_unstable();
        let mut cycles_by_id = cycles.clone();
        cycles_by_id.sort_by(by_id);

        let error_groups = group_by_error(&results, &roots);

        let mut spurious_regressed = of_kind(Comparison::SpuriousRegressed);
        let mut spurious_fixed = of_kind(Comparison::SpuriousFixed);
        let mut spurious_both = of_kind(Comparison::Spurious);
        let mut errors = of_kind(Comparison::Error);
        spurious_regressed.sort_by(by_id);
        spurious_fixed.sort_by(by_id);
        spurious_both.sort_by(by_id);
        errors.sort_by(by_id);
        let spurious_regressed_reasons =
            reason_counts(spurious_regressed.iter().map(|&i| &results[i as usize].end));
        let spurious_fixed_reasons =
            reason_counts(spurious_fixed.iter().map(|&i| &results[i as usize].start));
        let spurious_both_reasons = reason_counts(spurious_both.iter().flat_map(|&i| {
            let r = &results[i as usize];
            [&r.start, &r.end]
        }));

        Ok(Report {
            results,
            comparisons,
            counts,
            id_index,
            regressed,
            scc_of,
            scc_roots,
            impact,
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
            unresolved,
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
            .map(|i| spec_of(&self.results[i as usize].krate))
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
fn is_flaky(s: ConfirmationStatus) -> bool {
    matches!(
        s,
        ConfirmationStatus::Flaky | ConfirmationStatus::KnownFlaky
    )
}

/// The confirmation status of every regressed or fixed crate (an empty vector when none was
/// re-run), and the flaky ones.
fn confirmation_statuses(
    results: &[CrateResult],
    comparisons: &[Comparison],
    confirmation: impl Fn(&CrateResult, Comparison) -> Option<ConfirmationStatus>,
) -> (Vec<Option<ConfirmationStatus>>, Vec<Ix>) {
    let mut statuses = Vec::new();
    let mut flaky = Vec::new();
    for (i, (r, &c)) in (0..).zip(results.iter().zip(comparisons)) {
        if !crate::confirm::needs_confirmation(c) {
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

/// A `CrateId` as the spec that selects exactly it.
fn spec_of(id: &CrateId) -> CrateSpec {
    match id {
        CrateId::Registry { name, version, .. } => CrateSpec::Registry {
            name: name.clone(),
            version: Some(version.clone()),
        },
        CrateId::Git { url, rev } => CrateSpec::Git {
            url: url.clone(),
            rev: Some(rev.clone()),
        },
        CrateId::Local { path } => CrateSpec::Local { path: path.clone() },
    }
}

// ---------------------------------------------------------------------------------------------
// Dependency resolution

/// How a `depends-on` entry names a crate.
enum DepRef<'s> {
    /// An exact crate version (or git revision, or directory).
    Id(CrateId),
    /// A registry crate name, any version.
    Name(&'s str),
    /// Neither; matches nothing.
    Invalid,
}

fn parse_dep(s: &str) -> DepRef<'_> {
    let s = s.trim();
    if ["reg:", "git:", "local:"].iter().any(|p| s.starts_with(p)) {
        return s.parse().map_or(DepRef::Invalid, DepRef::Id);
    }
    let versioned = s.split_once('@').or_else(|| {
        let mut words = s.split_whitespace();
        let name = words.next()?;
        let version = words.next()?.strip_prefix('v')?;
        Some((name, version))
    });
    if let Some((name, version)) = versioned {
        return match (validate_crate_name(name), semver::Version::parse(version)) {
            (Ok(()), Ok(version)) => DepRef::Id(CrateId::Registry {
                name: name.to_owned(),
                version,
                checksum: None,
            }),
            _ => DepRef::Invalid,
        };
    }
    if validate_crate_name(s).is_ok() {
        DepRef::Name(s)
    } else {
        DepRef::Invalid
    }
}

/// A crate-name byte as the registry compares it: ASCII case folded, `_` as `-`.
fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

fn names_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

fn folded<'b>(name: &str, buf: &'b mut Vec<u8>) -> &'b [u8] {
    buf.clear();
    buf.extend(name.bytes().map(fold));
    buf
}

fn name_hash(name: &str, buf: &mut Vec<u8>) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(folded(name, buf));
    h.finish()
}

/// Hash of an id that agrees with [`same_crate`]: no checksum, folded registry name.
fn id_hash(id: &CrateId, buf: &mut Vec<u8>) -> u64 {
    let mut h = DefaultHasher::new();
    match id {
        CrateId::Registry { name, version, .. } => {
            h.write_u8(0);
            h.write(folded(name, buf));
            version.hash(&mut h);
        }
        CrateId::Git { url, rev } => {
            h.write_u8(1);
            url.hash(&mut h);
            rev.hash(&mut h);
        }
        CrateId::Local { path } => {
            h.write_u8(2);
            path.hash(&mut h);
        }
    }
    h.finish()
}

/// The same crate version, ignoring checksums and registry-name spelling.
fn same_crate(a: &CrateId, b: &CrateId) -> bool {
    match (a, b) {
        (
            CrateId::Registry {
                name: na,
                version: va,
                ..
            },
            CrateId::Registry {
                name: nb,
                version: vb,
                ..
            },
        ) => va == vb && names_match(na, nb),
        (CrateId::Git { url: ua, rev: ra }, CrateId::Git { url: ub, rev: rb }) => {
            ua == ub && ra == rb
        }
        (CrateId::Local { path: pa }, CrateId::Local { path: pb }) => pa == pb,
        _ => false,
    }
}

/// For every regression (by position), the positions of the regressed crates its `depends-on`
/// failure names; and the names that match no crate of the experiment.
fn resolve_dependencies(
    results: &[CrateResult],
    regressed: &[Ix],
    pos_of: &[Ix],
    id_index: &HashIndex,
) -> (Csr, Vec<UnresolvedDependency>) {
    let depends_on = |i: Ix| match &results[i as usize].end {
        Outcome::BuildFail(BuildFailReason::DependsOn { crates }) => Some(crates),
        _ => None,
    };
    let mut buf = Vec::new();
    let name_index = if regressed.iter().any(|&i| depends_on(i).is_some()) {
        HashIndex::new(
            results
                .iter()
                .zip(0..)
                .filter_map(|(r, i)| Some((name_hash(r.krate.registry_name()?, &mut buf), i)))
                .collect(),
        )
    } else {
        HashIndex::default()
    };

    let mut edges = Csr {
        off: Vec::with_capacity(regressed.len() + 1),
        items: Vec::new(),
    };
    edges.off.push(0);
    // name → (regressed crates naming it, last position counted)
    let mut unresolved: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut row = Vec::new();
    for (p, &i) in regressed.iter().enumerate() {
        if let Some(deps) = depends_on(i) {
            row.clear();
            for dep in deps {
                let mut found = false;
                let mut add = |c: Ix| {
                    found = true;
                    if pos_of[c as usize] != NONE {
                        row.push(pos_of[c as usize]);
                    }
                };
                match parse_dep(dep) {
                    DepRef::Id(id) => id_index
                        .candidates(id_hash(&id, &mut buf))
                        .filter(|&c| same_crate(&results[c as usize].krate, &id))
                        .for_each(&mut add),
                    DepRef::Name(name) => name_index
                        .candidates(name_hash(name, &mut buf))
                        .filter(|&c| {
                            c != i
                                && results[c as usize]
                                    .krate
                                    .registry_name()
                                    .is_some_and(|n| names_match(n, name))
                        })
                        .for_each(&mut add),
                    DepRef::Invalid => {}
                }
                if !found {
                    let entry = unresolved.entry(dep.trim()).or_insert((0, usize::MAX));
                    if entry.1 != p {
                        *entry = (entry.0 + 1, p);
                    }
                }
            }
            row.sort_unstable();
            row.dedup();
            edges.items.extend_from_slice(&row);
        }
        edges.off.push(edges.items.len());
    }
    let mut unresolved: Vec<UnresolvedDependency> = unresolved
        .into_iter()
        .map(|(name, (dependents, _))| UnresolvedDependency {
            name: name.to_owned(),
            dependents,
        })
        .collect();
    unresolved.sort_by(|a, b| b.dependents.cmp(&a.dependents).then(a.name.cmp(&b.name)));
    (edges, unresolved)
}

// ---------------------------------------------------------------------------------------------
// Attribution

struct Attribution {
    scc_of: Vec<Ix>,
    scc_roots: Csr,
    /// Crate indices of cycle members.
    cycles: Vec<Ix>,
}

/// Tarjan's strongly connected components over the regressions' dependency links, iteratively.
/// Tarjan emits a component only after every component it reaches, so each component's roots are
/// computed from finished ones: the union of its successors' roots, or its own members when it
/// has no successor.
fn attribute(regressed: &[Ix], edges: &Csr) -> Attribution {
    let r = regressed.len();
    let mut order = vec![NONE; r];
    let mut low = vec![0 as Ix; r];
    let mut on_stack = vec![false; r];
    let mut stack: Vec<Ix> = Vec::new();
    let mut frames: Vec<(Ix, usize)> = Vec::new();
    let mut next: Ix = 0;
    let mut scc_of = vec![NONE; r];
    let mut scc_roots = Csr {
        off: vec![0],
        items: Vec::new(),
    };
    let mut scc_count: Ix = 0;
    let mut cycles = Vec::new();
    let mut members = Vec::new();
    let mut found = Vec::new();

    for start in 0..r as Ix {
        if order[start as usize] != NONE {
            continue;
        }
        order[start as usize] = next;
        low[start as usize] = next;
        next += 1;
        stack.push(start);
        on_stack[start as usize] = true;
        frames.push((start, edges.off[start as usize]));

        while let Some(frame) = frames.last_mut() {
            let v = frame.0;
            if frame.1 < edges.off[v as usize + 1] {
                let w = edges.items[frame.1];
                frame.1 += 1;
                if order[w as usize] == NONE {
                    order[w as usize] = next;
                    low[w as usize] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w as usize] = true;
                    frames.push((w, edges.off[w as usize]));
                } else if on_stack[w as usize] {
                    low[v as usize] = low[v as usize].min(order[w as usize]);
                }
                continue;
            }
            frames.pop();
            if let Some(&(u, _)) = frames.last() {
                low[u as usize] = low[u as usize].min(low[v as usize]);
            }
            if low[v as usize] != order[v as usize] {
                continue;
            }
            // v is the head of a component: pop it.
            let scc = scc_count;
            scc_count += 1;
            members.clear();
            while let Some(w) = stack.pop() {
                on_stack[w as usize] = false;
                scc_of[w as usize] = scc;
                members.push(w);
                if w == v {
                    break;
                }
            }
            found.clear();
            let mut self_link = false;
            for &m in &members {
                for &w in edges.row(m) {
                    let s = scc_of[w as usize];
                    if s == scc {
                        self_link = true;
                    } else {
                        found.extend_from_slice(scc_roots.row(s));
                    }
                }
            }
            if found.is_empty() {
                found.extend(members.iter().map(|&m| regressed[m as usize]));
            }
            found.sort_unstable();
            found.dedup();
            scc_roots.items.extend_from_slice(&found);
            scc_roots.off.push(scc_roots.items.len());
            if self_link {
                cycles.extend(members.iter().map(|&m| regressed[m as usize]));
            }
        }
    }
    Attribution {
        scc_of,
        scc_roots,
        cycles,
    }
}

// ---------------------------------------------------------------------------------------------
// Grouping

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Code(&'a str),
    Kind(&'static str),
}

fn group_by_error<'a>(results: &'a [CrateResult], roots: &[Ix]) -> Vec<GroupData> {
    let mut index: HashMap<KeyRef<'a>, usize> = HashMap::new();
    let mut groups: Vec<(KeyRef<'a>, Vec<Ix>)> = Vec::new();
    let mut add = |key: KeyRef<'a>, i: Ix| {
        let g = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    };
    for &i in roots {
        match &results[i as usize].end {
            Outcome::BuildFail(BuildFailReason::CompilerError { codes }) if !codes.is_empty() => {
                for (k, code) in codes.iter().enumerate() {
                    if !codes[..k].contains(code) {
                        add(KeyRef::Code(code), i);
                    }
                }
            }
            Outcome::BuildFail(BuildFailReason::CompilerError { .. }) => {
                add(KeyRef::Kind("compiler-error"), i);
            }
            Outcome::BuildFail(reason) => add(KeyRef::Kind(reason.kind()), i),
            other => add(KeyRef::Kind(other.kind()), i),
        }
    }
    let mut groups: Vec<GroupData> = groups
        .into_iter()
        .map(|(key, crates)| GroupData {
            key: match key {
                KeyRef::Code(code) => ErrorGroupKey::Code(code.to_owned()),
                KeyRef::Kind(kind) => ErrorGroupKey::Kind(kind),
            },
            crates,
        })
        .collect();
    groups.sort_by(|a, b| {
        b.crates
            .len()
            .cmp(&a.crates.len())
            .then_with(|| a.key.as_str().cmp(b.key.as_str()))
    });
    groups
}

fn reason_counts<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<ReasonCount> {
    let mut counts: Vec<ReasonCount> = Vec::new();
    for outcome in outcomes {
        let kind = outcome.reason_kind().unwrap_or_else(|| outcome.kind());
        match counts.iter_mut().find(|c| c.kind == kind) {
            Some(c) => c.crates += 1,
            None => counts.push(ReasonCount { kind, crates: 1 }),
        }
    }
    counts.sort_by(|a, b| b.crates.cmp(&a.crates).then(a.kind.cmp(b.kind)));
    counts
}

// ---------------------------------------------------------------------------------------------
// JSON

struct IdList<'a>(&'a Report, &'a [Ix]);

impl Serialize for IdList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().map(|&i| &self.0.results[i as usize].krate))
    }
}

struct RootJson<'a>(CrateReport<'a>);

impl Serialize for RootJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("crate", c.krate())?;
        map.serialize_entry("end", &c.result().end)?;
        map.serialize_entry("regressions", &c.regressions_through())?;
        map.serialize_entry("dependents", &c.dependents())?;
        map.serialize_entry("in_cycle", &c.in_cycle())?;
        if let Some(s) = c.confirmation() {
            map.serialize_entry("confirmation", &s)?;
        }
        map.end()
    }
}

struct GroupJson<'a>(ErrorGroup<'a>);

impl Serialize for GroupJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let g = self.0;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("group", g.key())?;
        map.serialize_entry("crates", &IdList(g.report, &g.data.crates))?;
        map.end()
    }
}

struct ReasonsJson<'a>(&'a [ReasonCount]);

impl Serialize for ReasonsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|r| (r.kind, r.crates)))
    }
}

struct SpuriousSide<'a>(&'a Report, Option<&'a [ReasonCount]>, &'a [Ix]);

impl Serialize for SpuriousSide<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(reasons) = self.1 {
            map.serialize_entry("reasons", &ReasonsJson(reasons))?;
        }
        map.serialize_entry("crates", &IdList(self.0, self.2))?;
        map.end()
    }
}

struct SpuriousJson<'a>(&'a Report);

impl Serialize for SpuriousJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry(
            Comparison::SpuriousRegressed.as_str(),
            &SpuriousSide(
                r,
                Some(&r.spurious_regressed_reasons),
                &r.spurious_regressed,
            ),
        )?;
        map.serialize_entry(
            Comparison::SpuriousFixed.as_str(),
            &SpuriousSide(r, Some(&r.spurious_fixed_reasons), &r.spurious_fixed),
        )?;
        map.serialize_entry(
            Comparison::Spurious.as_str(),
            &SpuriousSide(r, Some(&r.spurious_both_reasons), &r.spurious_both),
        )?;
        map.serialize_entry(
            Comparison::Error.as_str(),
            &SpuriousSide(r, None, &r.errors),
        )?;
        map.end()
    }
}

struct CrateJson<'a>(CrateReport<'a>);

impl Serialize for CrateJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let r = c.result();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("crate", &r.krate)?;
        map.serialize_entry("comparison", &c.comparison())?;
        if let Some(s) = c.confirmation() {
            map.serialize_entry("confirmation", &s)?;
        }
        map.serialize_entry("start", &r.start)?;
        map.serialize_entry("end", &r.end)?;
        if let Some(key) = &r.start_log {
            map.serialize_entry("start_log", key)?;
        }
        if let Some(key) = &r.end_log {
            map.serialize_entry("end_log", key)?;
        }
        if let Some(p) = c.position() {
            let report = c.report;
            map.serialize_entry(
                "root_causes",
                &IdList(report, report.scc_roots.row(report.scc_of[p])),
            )?;
            if report.impact[p] > 0 {
                map.serialize_entry("root", &true)?;
            }
            if c.in_cycle() {
                map.serialize_entry("in_cycle", &true)?;
            }
        }
        map.end()
    }
}

struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.take().into_iter().flatten())
    }
}

fn seq<I: Iterator<Item = T>, T: Serialize>(iter: I) -> Seq<I> {
    Seq(std::cell::Cell::new(Some(iter)))
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(14))?;
        map.serialize_entry("total", &self.len())?;
        map.serialize_entry("counts", &self.counts)?;
        map.serialize_entry("regressions", &IdList(self, &self.regressions))?;
        map.serialize_entry("quiet_regressions", &IdList(self, &self.quiet))?;
        map.serialize_entry("diagnostics_changes", &IdList(self, &self.diagnostics))?;
        map.serialize_entry("flaky", &IdList(self, &self.flaky))?;
        map.serialize_entry("confirmation", &self.confirmation_counts())?;
        map.serialize_entry(
            "root_regressions",
            &seq(self.root_regressions().map(RootJson)),
        )?;
        map.serialize_entry("error_groups", &seq(self.error_groups().map(GroupJson)))?;
        map.serialize_entry("spurious", &SpuriousJson(self))?;
        map.serialize_entry("unresolved_dependencies", &self.unresolved)?;
        map.serialize_entry("cycles", &IdList(self, &self.cycles_by_id))?;
        map.serialize_entry("crates", &seq(self.crates().map(CrateJson)))?;
        map.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown summary

/// The sentence naming the regressions of quiet crates (up to `max` of them), if there are any:
/// "2 regressions of crates marked quiet are not listed: `a 1.0.0`, `b 2.0.0`." (Markdown).
pub fn quiet_note(report: &Report, max: usize) -> Option<String> {
    let n = report.quiet.len();
    if n == 0 {
        return None;
    }
    let mut names: Vec<String> = report
        .quiet_regressions()
        .take(max)
        .map(|c| code(&label(c.krate())))
        .collect();
    if n > max {
        names.push(format!("… and {} more", n - max));
    }
    Some(format!(
        "{} of crates marked quiet {} not listed: {}.",
        plural(n, "regression", "regressions"),
        if n == 1 { "is" } else { "are" },
        names.join(", ")
    ))
}

/// The comparisons of the summary's "spurious and infrastructure results" section.
const SPURIOUS_SECTION: [Comparison; 4] = [
    Comparison::SpuriousRegressed,
    Comparison::SpuriousFixed,
    Comparison::Spurious,
    Comparison::Error,
];

/// The sentence on confirmation runs, when crates were re-run: "Confirmation: 3 confirmed, 1
/// flaky (listed apart), 0 pending; 8 re-runs, 4.2 min of builds."
pub fn confirmation_note(report: &Report, reruns: Option<(u64, u64)>) -> Option<String> {
    let c = report.confirmation_counts();
    if c == ConfirmationCounts::default() {
        return None;
    }
    let mut note = format!(
        "Confirmation (each regression and fix re-run from clean target dirs): {} confirmed, {} \
         flaky (listed apart, not regressions), {} pending",
        c.confirmed, c.flaky, c.pending
    );
    if c.known_flaky > 0 {
        let _ = write!(
            note,
            "; {} known flaky from earlier runs (listed apart)",
            c.known_flaky
        );
    }
    if let Some((runs, ms)) = reruns {
        let _ = write!(
            note,
            "; {} cost {:.1} min of builds",
            plural(runs as usize, "re-run", "re-runs"),
            ms as f64 / 60_000.0
        );
    }
    note.push('.');
    Some(note)
}

/// The "flaky" section: crates whose re-runs disagreed with their first run.
fn write_flaky(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    let n = report.flaky.len();
    if n == 0 {
        return Ok(());
    }
    writeln!(out, "## Flaky (not confirmed)\n")?;
    writeln!(
        out,
        "Their first run said `regressed` or `fixed`, but a re-run from clean target dirs \
         disagreed: not evidence either way.\n"
    )?;
    writeln!(
        out,
        "| crate | first run | start | end |\n|---|---|---|---|"
    )?;
    for c in report.flaky().take(max) {
        let known = if c.confirmation() == Some(ConfirmationStatus::KnownFlaky) {
            " (known flaky)"
        } else {
            ""
        };
        writeln!(
            out,
            "| {} | {}{known} | {} | {} |",
            code(&label(c.krate())),
            c.comparison(),
            code(&cut(c.result().start.to_string(), MAX_OUTCOME_CHARS)),
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS))
        )?;
    }
    more(out, n, max, "crates")
}

/// The "compiler output changed" section: regressions that are only a UI-test harness seeing
/// different diagnostics, below the real breakage.
fn write_diagnostics_changes(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    let n = report.diagnostics.len();
    if n == 0 {
        return Ok(());
    }
    writeln!(out, "## Compiler output changed\n")?;
    writeln!(
        out,
        "{} only because tests that compare the compiler's diagnostics with stored \
         expectations (trybuild, ui_test, compiletest) saw them change: a diagnostics change, \
         not breakage of the crate.\n",
        plural(n, "crate regressed", "crates regressed")
    )?;
    writeln!(out, "| crate | end outcome |\n|---|---|")?;
    for c in report.diagnostics_changes().take(max) {
        writeln!(
            out,
            "| {} | {} |",
            code(&label(c.krate())),
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS))
        )?;
    }
    more(out, n, max, "crates")
}

/// Entries shown per section of the Markdown summary unless told otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 50;
/// Longest crate label in the summary, in characters; longer ones are cut with `…`.
const MAX_LABEL_CHARS: usize = 72;
/// Longest outcome text in the summary.
const MAX_OUTCOME_CHARS: usize = 60;
/// Crates named inline per error group.
const GROUP_INLINE: usize = 3;

/// What [`summary_markdown`] needs besides the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryOptions<'a> {
    /// The heading, e.g. the experiment name.
    pub title: &'a str,
    /// The start (baseline) toolchain, as written.
    pub start_toolchain: &'a str,
    /// The end (candidate) toolchain, as written.
    pub end_toolchain: &'a str,
    /// Entries shown per section before "… and N more".
    pub max_entries: usize,
    /// The confirmation runs made (finished runs, and their build time in milliseconds, both
    /// sides), when the caller knows them.
    pub reruns: Option<(u64, u64)>,
}

impl<'a> SummaryOptions<'a> {
    /// Options with [`DEFAULT_MAX_ENTRIES`] entries per section.
    pub fn new(title: &'a str, start_toolchain: &'a str, end_toolchain: &'a str) -> Self {
        SummaryOptions {
            title,
            start_toolchain,
            end_toolchain,
            max_entries: DEFAULT_MAX_ENTRIES,
            reruns: None,
        }
    }
}

/// A summary of the report in GitHub-flavoured Markdown, fit to paste in an issue: the headline
/// ("412 regressions, 390 of them through `foo 1.2.3`"), a counts table, the root regressions with
/// the regressions through each, the root regressions by error, the spurious results and
/// infrastructure errors, attribution notes (unresolved dependencies, cycles) and the retry count.
///
/// Its length is bounded whatever the report's size: each section shows at most
/// `options.max_entries` entries and then "… and N more", crate labels are cut at 72 characters,
/// and each error group names at most 3 crates. With the default 50 entries it stays well under
/// GitHub's 65,536-character limit for an issue body.
pub fn summary_markdown(report: &Report, options: &SummaryOptions<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write_summary(&mut out, report, options);
    out
}

fn write_summary(out: &mut String, report: &Report, opts: &SummaryOptions<'_>) -> fmt::Result {
    let max = opts.max_entries;
    let counts = report.counts();
    // the regressions listed (quiet crates' are named apart)
    let n_regressed = report.regressions.len();
    let n_roots = report.roots.len();
    let n_spurious = SPURIOUS_SECTION
        .iter()
        .map(|&c| counts.get(c))
        .sum::<usize>();

    writeln!(out, "# {}\n", one_line(opts.title))?;
    writeln!(
        out,
        "{} (start) → {} (end), {}.\n",
        code(opts.start_toolchain),
        code(opts.end_toolchain),
        plural(report.len(), "crate", "crates")
    )?;
    match report.root_regressions().next() {
        None if report.quiet.is_empty() && report.diagnostics.is_empty() => {
            writeln!(out, "**No regressions.**\n")?
        }
        None => writeln!(out, "**No regressions listed.**\n")?,
        Some(top) => {
            writeln!(
                out,
                "**{}, {} of them through {}.**\n",
                plural(n_regressed, "regression", "regressions"),
                top.regressions_through(),
                code(&label(top.krate()))
            )?;
            writeln!(
                out,
                "{} regressed on their own; the other {} regressed because a dependency did.\n",
                plural(n_roots, "crate", "crates"),
                n_regressed - n_roots
            )?;
        }
    }
    if let Some(note) = quiet_note(report, max) {
        writeln!(out, "{note}\n")?;
    }
    if let Some(note) = confirmation_note(report, opts.reruns) {
        writeln!(out, "{note}\n")?;
    }
    if n_spurious > 0 {
        writeln!(
            out,
            "{} spurious or infrastructure results are listed apart and not counted as \
             regressions.\n",
            n_spurious
        )?;
    }

    writeln!(out, "## Counts\n")?;
    writeln!(out, "| comparison | crates |\n|---|---:|")?;
    for (c, n) in counts.iter() {
        writeln!(out, "| {c} | {n} |")?;
    }
    writeln!(out, "| **total** | **{}** |\n", counts.total())?;

    if n_roots > 0 {
        writeln!(out, "## Root regressions\n")?;
        writeln!(
            out,
            "Crates that regressed on their own, by the regressions they explain: themselves and \
             the crates that regressed through them (a crate with several regressed dependencies \
             counts for each).\n"
        )?;
        writeln!(
            out,
            "| # | crate | end outcome | regressions through it |\n|---:|---|---|---:|"
        )?;
        for (k, c) in report.root_regressions().take(max).enumerate() {
            let cycle = if c.in_cycle() { " (cycle)" } else { "" };
            let confirmed = match c.confirmation() {
                Some(ConfirmationStatus::Confirmed) => " (confirmed)",
                Some(ConfirmationStatus::Pending) => " (confirmation pending)",
                _ => "",
            };
            writeln!(
                out,
                "| {} | {}{}{} | {} | {} |",
                k + 1,
                code(&label(c.krate())),
                cycle,
                confirmed,
                code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS)),
                c.regressions_through()
            )?;
        }
        more(out, n_roots, max, "root regressions")?;

        writeln!(out, "## Root regressions by error\n")?;
        writeln!(out, "| error | root regressions | crates |\n|---|---:|---|")?;
        for g in report.error_groups().take(max) {
            let mut names: Vec<String> = g
                .crates()
                .take(GROUP_INLINE)
                .map(|c| code(&label(c.krate())))
                .collect();
            if g.len() > GROUP_INLINE {
                names.push(format!("… and {} more", g.len() - GROUP_INLINE));
            }
            writeln!(
                out,
                "| {} | {} | {} |",
                code(g.key().as_str()),
                g.len(),
                names.join(", ")
            )?;
        }
        more(out, report.error_groups.len(), max, "groups")?;
    }

    write_diagnostics_changes(out, report, max)?;
    write_flaky(out, report, max)?;

    if n_spurious > 0 {
        writeln!(out, "## Spurious and infrastructure results\n")?;
        writeln!(
            out,
            "Not regressions: these failures say nothing about the toolchain (out of memory, \
             timeouts, the pids limit, full disk, network access in the sandbox) or the \
             infrastructure failed (`error`). Retry them before believing them.\n"
        )?;
        writeln!(out, "| comparison | crates | reasons |\n|---|---:|---|")?;
        for c in SPURIOUS_SECTION {
            let reasons: Vec<String> = report
                .spurious_reasons(c)
                .iter()
                .map(|r| format!("{} {}", r.kind, r.crates))
                .collect();
            writeln!(out, "| {c} | {} | {} |", counts.get(c), reasons.join(", "))?;
        }
        writeln!(out)?;
        for (c, list) in [
            (Comparison::SpuriousRegressed, &report.spurious_regressed),
            (Comparison::SpuriousFixed, &report.spurious_fixed),
            (Comparison::Spurious, &report.spurious_both),
            (Comparison::Error, &report.errors),
        ] {
            if list.is_empty() {
                continue;
            }
            let names: Vec<String> = report
                .views(list)
                .take(max)
                .map(|c| code(&label(c.krate())))
                .collect();
            write!(out, "**{c}**: {}", names.join(", "))?;
            if list.len() > max {
                write!(out, " … and {} more", list.len() - max)?;
            }
            writeln!(out, "\n")?;
        }
    }

    if !report.unresolved.is_empty() || !report.cycles.is_empty() {
        writeln!(out, "## Attribution notes\n")?;
        if !report.unresolved.is_empty() {
            writeln!(
                out,
                "Dependencies named by failed builds that are not in this experiment (the crates \
                 naming them are counted as roots):\n"
            )?;
            for u in report.unresolved.iter().take(max) {
                writeln!(
                    out,
                    "- {}: {}",
                    code(&cut(u.name.clone(), MAX_LABEL_CHARS)),
                    plural(u.dependents, "crate", "crates")
                )?;
            }
            more(out, report.unresolved.len(), max, "names")?;
        }
        if !report.cycles.is_empty() {
            let names: Vec<String> = report
                .cycles()
                .take(max)
                .map(|c| code(&label(c.krate())))
                .collect();
            write!(
                out,
                "{} form dependency cycles, which real data cannot have; each cycle is attributed \
                 as one unit: {}",
                plural(report.cycles.len(), "crate", "crates"),
                names.join(", ")
            )?;
            if report.cycles.len() > max {
                write!(out, " … and {} more", report.cycles.len() - max)?;
            }
            writeln!(out, "\n")?;
        }
    }

    let retry = report.regressions.len()
        + report.spurious_regressed.len()
        + report.spurious_fixed.len()
        + report.errors.len();
    writeln!(out, "## Retry\n")?;
    if retry == 0 {
        writeln!(out, "Nothing to retry.")?;
    } else {
        writeln!(
            out,
            "**{} to retry** (regressions and spurious results): the report's retry list is an \
             explicit crate selection.",
            plural(retry, "crate", "crates")
        )?;
    }
    Ok(())
}

fn more(out: &mut String, len: usize, max: usize, what: &str) -> fmt::Result {
    if len > max {
        writeln!(out, "\n… and {} more {what}", len - max)?;
    }
    writeln!(out)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `foo 1.2.3` for registry crates, the id otherwise; cut to [`MAX_LABEL_CHARS`].
fn label(id: &CrateId) -> String {
    let full = match id {
        CrateId::Registry { name, version, .. } => format!("{name} {version}"),
        other => other.to_string(),
    };
    cut(full, MAX_LABEL_CHARS)
}

fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if s.chars().count() > max => format!("{}…", &s[..at]),
        _ => s,
    }
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n']).collect::<Vec<_>>().join(" ")
}

/// `s` as a Markdown code span that is safe in a table cell: on one line, delimited by more
/// backticks than it contains in a row, with `|` escaped.
fn code(s: &str) -> String {
    let s = one_line(s).replace('|', "\\|");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

// ---------------------------------------------------------------------------------------------
// First new error

/// The first error line of `end_log` whose normalised text is not an error line of `start_log`:
/// its 0-based index in `end_log.lines()` and its text (ANSI escapes removed, trimmed).
///
/// Logs are compared as [`crate::logtext::for_reading`] shows them; line stamps (`[   1.234] `) are
/// ignored. Error lines are rustc/cargo errors (`error: …`, `error[E0308]: …`), C compiler errors
/// (`…: error: …`, `fatal error`), internal compiler errors, panics (`thread '…' panicked`),
/// `Error: …` and failed tests (`test foo ... FAILED`). Before comparing, a line loses its ANSI
/// escapes and anything before a carriage return (terminal overwrites), is trimmed, and:
///
/// * absolute paths lose their machine-specific prefix: registry sources
///   (`…/registry/src/<index>/` → `$REGISTRY/`), git checkouts (`$GIT/`), rustup toolchains
///   (`$TOOLCHAIN/`), target directories (`…/target/` → `$TARGET/`), `/tmp/<dir>` and
///   `/var/tmp/<dir>` (`$TMP`), home directories (`/home/<user>`, `/Users/<user>`, `/root` →
///   `$HOME`);
/// * hex hashes of 8 or more digits with at least one decimal digit (`foo-1a2b3c4d5e6f7a8b`,
///   `/rustc/<commit>/`) become `$HASH`, symbol hashes `h<16 hex>` become `h$HASH`, and `0x`
///   addresses of 6 or more digits become `0x$HEX`;
/// * durations (`1.23s`, `[2.3s]`, `150ms`, `2min`) become `$DUR`.
pub fn first_new_error(start_log: &str, end_log: &str) -> Option<(usize, String)> {
    let mut clean = String::new();
    let mut norm = String::new();
    let mut seen: HashSet<String> = HashSet::new();
    for line in start_log.lines() {
        strip_ansi(unstamped(line), &mut clean);
        normalize_line(&clean, &mut norm);
        if is_error_line(&norm) && !seen.contains(norm.as_str()) {
            seen.insert(norm.clone());
        }
    }
    for (index, line) in end_log.lines().enumerate() {
        strip_ansi(unstamped(line), &mut clean);
        normalize_line(&clean, &mut norm);
        if is_error_line(&norm) && !seen.contains(norm.as_str()) {
            return Some((index, clean.trim().to_owned()));
        }
    }
    None
}

/// `line` without the sandbox's `[   1.234] ` stamp.
use crate::logtext::unstamped;

fn is_error_line(l: &str) -> bool {
    l.strip_prefix("error")
        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('['))
        || l.starts_with("Error:")
        || l.starts_with("fatal error")
        || l.contains(": error:")
        || l.contains(": error[")
        || l.contains(": fatal error:")
        || l.contains("internal compiler error")
        || (l.starts_with("thread '") && l.contains("panicked"))
        || (l.starts_with("test ") && l.ends_with(" FAILED"))
}

/// `line` without ANSI escape sequences ([`crate::logtext::strip_ansi`]) and without anything up
/// to its last carriage return (what a terminal shows of a progress line).
fn strip_ansi(line: &str, out: &mut String) {
    out.clear();
    let line = line.trim_end_matches('\r');
    let line = line.rsplit('\r').next().unwrap_or(line);
    out.push_str(&crate::logtext::strip_ansi(line));
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'~' | b'+' | b'@' | b'%')
}

fn is_alnum_at(b: &[u8], at: usize) -> bool {
    b.get(at).is_some_and(u8::is_ascii_alphanumeric)
}

/// Normalises one ANSI-free line for comparison; see [`first_new_error`].
fn normalize_line(line: &str, out: &mut String) {
    out.clear();
    let s = line.trim();
    let b = s.as_bytes();
    // Every position where copying stops or resumes holds an ASCII byte (or is the end), so the
    // slices below always fall on character boundaries.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let prev = i.checked_sub(1).map(|p| b[p]);
        let starts_path = b[i] == b'/' || (b[i] == b'~' && b.get(i + 1) == Some(&b'/'));
        if starts_path
            && prev.is_none_or(|p| !is_path_byte(p))
            && let Some((len, replacement)) = path_prefix(&s[i..])
        {
            out.push_str(&s[copied..i]);
            out.push_str(replacement);
            i += len;
            copied = i;
            continue;
        }
        if b[i].is_ascii_alphanumeric() && prev.is_none_or(|p| !p.is_ascii_alphanumeric()) {
            if let Some((len, replacement)) = volatile_token(&b[i..]) {
                out.push_str(&s[copied..i]);
                out.push_str(replacement);
                i += len;
                copied = i;
                continue;
            }
            // Rules only start where a word starts.
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
}

/// For an absolute path at the start of `s`: how many bytes of machine-specific prefix to replace,
/// and with what. The prefix ends before a `/` or at the end of the path.
fn path_prefix(s: &str) -> Option<(usize, &'static str)> {
    let end = s
        .bytes()
        .position(|c| {
            c.is_ascii_whitespace()
                || matches!(
                    c,
                    b'\''
                        | b'"'
                        | b'`'
                        | b'('
                        | b')'
                        | b'['
                        | b']'
                        | b'{'
                        | b'}'
                        | b'<'
                        | b'>'
                        | b','
                        | b';'
                )
        })
        .unwrap_or(s.len());
    let path = &s[..end];
    // The prefix through `at` (the index of a '/'), plus `segments` more path segments.
    let through = |at: usize, segments: usize| -> usize {
        let mut end = at;
        for _ in 0..segments {
            match path[end + 1..].find('/') {
                Some(k) => end += 1 + k,
                None => return path.len(),
            }
        }
        end
    };
    const MARKERS: &[(&str, usize, &str)] = &[
        ("/registry/src/", 1, "$REGISTRY"),
        ("/git/checkouts/", 2, "$GIT"),
        ("/toolchains/", 1, "$TOOLCHAIN"),
        ("/target/", 0, "$TARGET"),
    ];
    for &(marker, segments, replacement) in MARKERS {
        if let Some(at) = path.find(marker) {
            return Some((through(at + marker.len() - 1, segments), replacement));
        }
    }
    const PREFIXES: &[(&str, &str)] = &[
        ("/tmp/", "$TMP"),
        ("/var/tmp/", "$TMP"),
        ("/home/", "$HOME"),
        ("/Users/", "$HOME"),
    ];
    for &(prefix, replacement) in PREFIXES {
        if path.starts_with(prefix) {
            return Some((through(prefix.len() - 1, 1), replacement));
        }
    }
    if path == "/root" || path.starts_with("/root/") {
        return Some(("/root".len(), "$HOME"));
    }
    None
}

fn hex_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_hexdigit()).count()
}

fn digit_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// For a word at the start of `b`: a hash, an address or a duration to replace, its length and
/// replacement.
fn volatile_token(b: &[u8]) -> Option<(usize, &'static str)> {
    if let Some(rest) = b.strip_prefix(b"0x") {
        let n = hex_run(rest);
        if n >= 6 && !is_alnum_at(b, 2 + n) {
            return Some((2 + n, "0x$HEX"));
        }
    }
    if let Some(rest) = b.strip_prefix(b"h")
        && hex_run(rest) == 16
        && !is_alnum_at(b, 17)
    {
        return Some((17, "h$HASH"));
    }
    let n = hex_run(b);
    if n >= 8 && !is_alnum_at(b, n) && b[..n].iter().any(u8::is_ascii_digit) {
        return Some((n, "$HASH"));
    }
    let mut n = digit_run(b);
    if n == 0 {
        return None;
    }
    if b.get(n) == Some(&b'.') {
        let fraction = digit_run(&b[n + 1..]);
        if fraction > 0 {
            n += 1 + fraction;
        }
    }
    const UNITS: &[&str] = &[
        "seconds", "minutes", "secs", "mins", "sec", "min", "ms", "us", "ns", "µs", "μs", "s", "m",
        "h",
    ];
    UNITS
        .iter()
        .find(|u| b[n..].starts_with(u.as_bytes()) && !is_alnum_at(b, n + u.len()))
        .map(|u| (n + u.len(), "$DUR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use BuildFailReason as R;
    use serde_json::json;

    const CKSUM: &str = "a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1";

    fn id(s: &str) -> CrateId {
        s.parse().unwrap()
    }

    fn res(krate: &str, start: Outcome, end: Outcome) -> CrateResult {
        CrateResult {
            krate: id(krate),
            start,
            end,
            start_log: None,
            end_log: None,
        }
    }

    fn ce(codes: &[&str]) -> Outcome {
        Outcome::BuildFail(R::CompilerError {
            codes: codes.iter().map(|c| c.to_string()).collect(),
        })
    }

    fn dep(crates: &[&str]) -> Outcome {
        Outcome::BuildFail(R::DependsOn {
            crates: crates.iter().map(|c| c.to_string()).collect(),
        })
    }

    fn bf(reason: BuildFailReason) -> Outcome {
        Outcome::BuildFail(reason)
    }

    fn test_fail() -> Outcome {
        Outcome::TestFail {
            failed_tests: vec!["t".into()],
            reason: None,
        }
    }

    fn error() -> Outcome {
        Outcome::Error {
            reason: "worker lost".into(),
        }
    }

    const PASS: Outcome = Outcome::TestPass;

    /// A regression from test-pass to `end`.
    fn reg(krate: &str, end: Outcome) -> CrateResult {
        res(krate, PASS, end)
    }

    fn build(results: Vec<CrateResult>) -> Report {
        Report::build(results).unwrap()
    }

    fn ids<'a>(it: impl Iterator<Item = CrateReport<'a>>) -> Vec<String> {
        it.map(|c| c.krate().to_string()).collect()
    }

    fn roots_of(report: &Report, krate: &str) -> Vec<String> {
        report
            .get(&id(krate))
            .unwrap_or_else(|| panic!("{krate} not in report"))
            .root_causes()
            .map(ToString::to_string)
            .collect()
    }

    struct Case {
        name: &'static str,
        results: Vec<CrateResult>,
        /// (crate, its roots)
        roots: &'static [(&'static str, &'static [&'static str])],
        /// root regressions in order, with regressions through each
        ranking: &'static [(&'static str, usize)],
        cycles: &'static [&'static str],
        unresolved: &'static [(&'static str, usize)],
    }

    fn attribution_cases() -> Vec<Case> {
        let ck_a2 = format!("reg:a@2.0.0#{CKSUM}");
        vec![
            Case {
                name: "chain a <- b <- c",
                results: vec![
                    reg("reg:c@1.0.0", dep(&["reg:b@1.0.0"])),
                    reg("reg:a@1.0.0", ce(&["E0308"])),
                    reg("reg:b@1.0.0", dep(&["reg:a@1.0.0"])),
                    res("reg:z@1.0.0", PASS, PASS),
                ],
                roots: &[
                    ("reg:a@1.0.0", &["reg:a@1.0.0"]),
                    ("reg:b@1.0.0", &["reg:a@1.0.0"]),
                    ("reg:c@1.0.0", &["reg:a@1.0.0"]),
                    ("reg:z@1.0.0", &[]),
                ],
                ranking: &[("reg:a@1.0.0", 3)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "several roots for one crate, inherited down the chain",
                results: vec![
                    reg("reg:a@1.0.0", ce(&["E0308"])),
                    reg("reg:b@1.0.0", bf(R::Ice)),
                    reg("reg:c@1.0.0", dep(&["reg:a@1.0.0", "reg:b@1.0.0"])),
                    reg("reg:d@1.0.0", dep(&["reg:c@1.0.0"])),
                    reg("reg:e@1.0.0", dep(&["reg:a@1.0.0"])),
                ],
                roots: &[
                    ("reg:c@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                    ("reg:d@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                    ("reg:e@1.0.0", &["reg:a@1.0.0"]),
                ],
                ranking: &[("reg:a@1.0.0", 4), ("reg:b@1.0.0", 3)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "a dependency already failing on start is not a root",
                results: vec![
                    res("reg:a@1.0.0", ce(&["E0425"]), ce(&["E0425"])),
                    reg("reg:x@1.0.0", dep(&["reg:a@1.0.0"])),
                    reg("reg:y@1.0.0", dep(&["reg:x@1.0.0"])),
                ],
                roots: &[
                    ("reg:a@1.0.0", &[]),
                    ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                    ("reg:y@1.0.0", &["reg:x@1.0.0"]),
                ],
                ranking: &[("reg:x@1.0.0", 2)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "a spuriously failing dependency is not a root",
                results: vec![
                    reg("reg:s@1.0.0", bf(R::Oom)),
                    reg("reg:x@1.0.0", dep(&["reg:s@1.0.0"])),
                ],
                roots: &[("reg:s@1.0.0", &[]), ("reg:x@1.0.0", &["reg:x@1.0.0"])],
                ranking: &[("reg:x@1.0.0", 1)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "a dependency that regressed in its tests still explains the failure",
                results: vec![
                    reg("reg:t@1.0.0", test_fail()),
                    reg("reg:x@1.0.0", dep(&["t"])),
                ],
                roots: &[("reg:x@1.0.0", &["reg:t@1.0.0"])],
                ranking: &[("reg:t@1.0.0", 2)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "dependencies not in the experiment",
                results: vec![
                    reg("reg:x@1.0.0", dep(&["openssl-sys", "reg:nope@1.0.0"])),
                    reg("reg:y@1.0.0", dep(&["openssl-sys", " openssl-sys "])),
                    reg("reg:w@1.0.0", dep(&["not a crate!"])),
                    reg("reg:a@1.0.0", ce(&[])),
                    reg("reg:v@1.0.0", dep(&["a", "openssl-sys"])),
                ],
                roots: &[
                    ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                    ("reg:y@1.0.0", &["reg:y@1.0.0"]),
                    ("reg:w@1.0.0", &["reg:w@1.0.0"]),
                    ("reg:v@1.0.0", &["reg:a@1.0.0"]),
                ],
                ranking: &[
                    ("reg:a@1.0.0", 2),
                    ("reg:w@1.0.0", 1),
                    ("reg:x@1.0.0", 1),
                    ("reg:y@1.0.0", 1),
                ],
                cycles: &[],
                unresolved: &[
                    ("openssl-sys", 3),
                    ("not a crate!", 1),
                    ("reg:nope@1.0.0", 1),
                ],
            },
            Case {
                name: "matching by name, versioned name and id; names fold case and - _",
                results: vec![
                    reg("reg:foo-bar@1.0.0", ce(&["E0277"])),
                    reg("reg:p@1.0.0", dep(&["foo-bar"])),
                    reg("reg:q@1.0.0", dep(&["Foo_Bar"])),
                    reg("reg:r@1.0.0", dep(&["foo_bar@1.0.0"])),
                    reg("reg:s@1.0.0", dep(&["foo-bar v1.0.0 (registry+https://x)"])),
                    reg("reg:t@1.0.0", dep(&[&format!("reg:foo-bar@1.0.0#{CKSUM}")])),
                ],
                roots: &[
                    ("reg:p@1.0.0", &["reg:foo-bar@1.0.0"]),
                    ("reg:q@1.0.0", &["reg:foo-bar@1.0.0"]),
                    ("reg:r@1.0.0", &["reg:foo-bar@1.0.0"]),
                    ("reg:s@1.0.0", &["reg:foo-bar@1.0.0"]),
                    ("reg:t@1.0.0", &["reg:foo-bar@1.0.0"]),
                ],
                ranking: &[("reg:foo-bar@1.0.0", 6)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "an exact id never falls back to another version; a name takes any",
                results: vec![
                    res("reg:a@1.0.0", PASS, PASS),
                    CrateResult {
                        krate: id(&ck_a2),
                        start: PASS,
                        end: ce(&["E0308"]),
                        start_log: None,
                        end_log: None,
                    },
                    reg("reg:x@1.0.0", dep(&["reg:a@1.0.0"])),
                    reg("reg:y@1.0.0", dep(&["a"])),
                    reg("reg:z@1.0.0", dep(&["reg:a@2.0.0"])),
                    reg("reg:a@3.0.0", dep(&["a"])),
                ],
                roots: &[
                    ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                    (
                        "reg:y@1.0.0",
                        &[
                            "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                        ],
                    ),
                    (
                        "reg:z@1.0.0",
                        &[
                            "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                        ],
                    ),
                    (
                        "reg:a@3.0.0",
                        &[
                            "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                        ],
                    ),
                ],
                ranking: &[
                    (
                        "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                        4,
                    ),
                    ("reg:x@1.0.0", 1),
                ],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "git and local ids match exactly",
                results: vec![
                    reg("git:https://h/r.git#abc", bf(R::Link)),
                    reg("local:/src/l", ce(&["E0433"])),
                    reg(
                        "reg:x@1.0.0",
                        dep(&[
                            "git:https://h/r.git#abc",
                            "local:/src/l",
                            "git:https://h/r.git#def",
                        ]),
                    ),
                ],
                roots: &[("reg:x@1.0.0", &["git:https://h/r.git#abc", "local:/src/l"])],
                ranking: &[("git:https://h/r.git#abc", 2), ("local:/src/l", 2)],
                cycles: &[],
                unresolved: &[("git:https://h/r.git#def", 1)],
            },
            Case {
                name: "a cycle in bad data is its own root",
                results: vec![
                    reg("reg:a@1.0.0", dep(&["reg:b@1.0.0"])),
                    reg("reg:b@1.0.0", dep(&["a"])),
                    reg("reg:c@1.0.0", dep(&["reg:a@1.0.0"])),
                ],
                roots: &[
                    ("reg:a@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                    ("reg:b@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                    ("reg:c@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                ],
                ranking: &[("reg:a@1.0.0", 3), ("reg:b@1.0.0", 3)],
                cycles: &["reg:a@1.0.0", "reg:b@1.0.0"],
                unresolved: &[],
            },
            Case {
                name: "a cycle that reaches a real root is attributed to it",
                results: vec![
                    reg("reg:a@1.0.0", dep(&["reg:b@1.0.0", "reg:r@1.0.0"])),
                    reg("reg:b@1.0.0", dep(&["reg:c@1.0.0"])),
                    reg("reg:c@1.0.0", dep(&["reg:a@1.0.0"])),
                    reg("reg:r@1.0.0", ce(&["E0599"])),
                ],
                roots: &[
                    ("reg:a@1.0.0", &["reg:r@1.0.0"]),
                    ("reg:b@1.0.0", &["reg:r@1.0.0"]),
                    ("reg:c@1.0.0", &["reg:r@1.0.0"]),
                ],
                ranking: &[("reg:r@1.0.0", 4)],
                cycles: &["reg:a@1.0.0", "reg:b@1.0.0", "reg:c@1.0.0"],
                unresolved: &[],
            },
            Case {
                name: "a crate naming itself: by id it is a cycle, by name it is skipped",
                results: vec![
                    reg("reg:a@1.0.0", dep(&["reg:a@1.0.0"])),
                    reg("reg:b@1.0.0", dep(&["b"])),
                ],
                roots: &[
                    ("reg:a@1.0.0", &["reg:a@1.0.0"]),
                    ("reg:b@1.0.0", &["reg:b@1.0.0"]),
                ],
                ranking: &[("reg:a@1.0.0", 1), ("reg:b@1.0.0", 1)],
                cycles: &["reg:a@1.0.0"],
                unresolved: &[("b", 1)],
            },
            Case {
                name: "a dependency named several ways counts once",
                results: vec![
                    reg("reg:a@1.0.0", ce(&["E0308"])),
                    reg("reg:x@1.0.0", dep(&["a", "reg:a@1.0.0", "a@1.0.0", "a"])),
                ],
                roots: &[("reg:x@1.0.0", &["reg:a@1.0.0"])],
                ranking: &[("reg:a@1.0.0", 2)],
                cycles: &[],
                unresolved: &[],
            },
            Case {
                name: "depends-on in crates that did not regress is ignored",
                results: vec![
                    reg("reg:a@1.0.0", ce(&["E0308"])),
                    res("reg:x@1.0.0", dep(&["a"]), dep(&["a"])),
                    res("reg:y@1.0.0", dep(&["missing"]), PASS),
                ],
                roots: &[("reg:x@1.0.0", &[]), ("reg:y@1.0.0", &[])],
                ranking: &[("reg:a@1.0.0", 1)],
                cycles: &[],
                unresolved: &[],
            },
        ]
    }

    /// Quiet crates count and explain their dependents, but are in no list of regressions (nor
    /// the retry list); they are named apart, in the JSON and in the summary.
    #[test]
    fn quiet_crates_are_left_out_of_the_lists_of_regressions() {
        let results = vec![
            reg("reg:q@1.0.0", ce(&["E0308"])),
            reg("reg:d@1.0.0", dep(&["q"])),
            reg("reg:c@1.0.0", ce(&["E0599"])),
            reg("reg:r@1.0.0", bf(R::Oom)),
            res("reg:p@1.0.0", PASS, PASS),
        ];
        let is_quiet = |k: &CrateId| matches!(k, CrateId::Registry { name, .. } if name == "q");
        let plain = build(results.clone());
        let quiet = Report::build_quiet(results, is_quiet).unwrap();
        assert_eq!(
            ids(plain.root_regressions()),
            ["reg:q@1.0.0", "reg:c@1.0.0"]
        );

        // counts and attribution are the same as without quiet crates
        assert_eq!(quiet.counts(), plain.counts());
        assert_eq!(quiet.counts().get(Comparison::Regressed), 3);
        assert_eq!(roots_of(&quiet, "reg:d@1.0.0"), ["reg:q@1.0.0"]);
        // the lists leave the quiet crate out
        assert_eq!(ids(quiet.quiet_regressions()), ["reg:q@1.0.0"]);
        assert_eq!(ids(quiet.root_regressions()), ["reg:c@1.0.0"]);
        assert_eq!(ids(quiet.regressions()), ["reg:c@1.0.0", "reg:d@1.0.0"]);
        let groups: Vec<(String, Vec<String>)> = quiet
            .error_groups()
            .map(|g| (g.key().to_string(), ids(g.crates())))
            .collect();
        assert_eq!(
            groups,
            [("E0599".to_owned(), vec!["reg:c@1.0.0".to_owned()])]
        );
        let retry: Vec<String> = quiet.retry_list().iter().map(ToString::to_string).collect();
        assert_eq!(retry, ["reg:c@1.0.0", "reg:d@1.0.0", "reg:r@1.0.0"]);
        assert_eq!(ids(plain.quiet_regressions()), Vec::<String>::new());

        let json = serde_json::to_value(&quiet).unwrap();
        assert_eq!(
            json["quiet_regressions"],
            serde_json::json!(["reg:q@1.0.0"])
        );
        assert_eq!(
            json["regressions"],
            serde_json::json!(["reg:c@1.0.0", "reg:d@1.0.0"])
        );
        let md = summary_markdown(&quiet, &SummaryOptions::new("x", "stable", "beta"));
        assert!(
            md.contains("**2 regressions, 1 of them through `c 1.0.0`.**"),
            "{md}"
        );
        assert!(
            md.contains("the other 1 regressed because a dependency did"),
            "{md}"
        );
        assert!(
            md.contains("1 regression of crates marked quiet is not listed: `q 1.0.0`."),
            "{md}"
        );

        // only quiet regressions: none listed, and the summary says so
        let only = Report::build_quiet(vec![reg("reg:q@1.0.0", ce(&["E0308"]))], is_quiet).unwrap();
        assert_eq!(only.regressions().len(), 0);
        assert_eq!(only.error_groups().len(), 0);
        assert!(only.retry_list().is_empty());
        let md = summary_markdown(&only, &SummaryOptions::new("x", "stable", "beta"));
        assert!(md.contains("**No regressions listed.**"), "{md}");
        assert!(!md.contains("## Root regressions"), "{md}");
    }

    #[test]
    fn root_cause_attribution() {
        for case in attribution_cases() {
            let name = case.name;
            let report = build(case.results);
            for (krate, expected) in case.roots {
                assert_eq!(
                    roots_of(&report, krate),
                    *expected,
                    "{name}: roots of {krate}"
                );
            }
            let ranking: Vec<(String, usize)> = report
                .root_regressions()
                .map(|c| (c.krate().to_string(), c.regressions_through()))
                .collect();
            let expected: Vec<(String, usize)> = case
                .ranking
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect();
            assert_eq!(ranking, expected, "{name}: ranking");
            for c in report.root_regressions() {
                assert!(c.is_root(), "{name}");
                assert_eq!(c.dependents(), c.regressions_through() - 1, "{name}");
                assert!(c.root_causes().any(|r| r == c.krate()), "{name}");
            }
            assert_eq!(ids(report.cycles()), case.cycles, "{name}: cycles");
            for c in report.crates() {
                assert_eq!(
                    c.in_cycle(),
                    case.cycles.contains(&c.krate().to_string().as_str())
                );
            }
            let unresolved: Vec<(&str, usize)> = report
                .unresolved_dependencies()
                .iter()
                .map(|u| (u.name.as_str(), u.dependents))
                .collect();
            assert_eq!(unresolved, case.unresolved, "{name}: unresolved");
            // Roots first, then the rest by id; every regression exactly once.
            let regressions = ids(report.regressions());
            let roots = ids(report.root_regressions());
            assert_eq!(regressions[..roots.len()], roots[..], "{name}");
            let rest = &regressions[roots.len()..];
            let mut sorted = rest.to_vec();
            sorted.sort_by_key(|s| id(s));
            assert_eq!(rest, &sorted[..], "{name}");
            assert_eq!(
                regressions.len(),
                report.counts().get(Comparison::Regressed),
                "{name}"
            );
        }
    }

    /// Attribution agrees with a direct recursive definition on random acyclic experiments, and
    /// keeps its invariants on random graphs with cycles.
    #[test]
    fn attribution_matches_reference_on_random_graphs() {
        let mut rng = SplitMix(7);
        for round in 0..300 {
            let n = 2 + rng.below(40) as usize;
            let acyclic = round % 2 == 0;
            let mut results = Vec::new();
            let mut deps: Vec<Vec<usize>> = Vec::new();
            for i in 0..n {
                let name = format!("reg:c{i}@1.0.0");
                let mut d = Vec::new();
                if rng.below(3) > 0 && (i > 0 || !acyclic) {
                    for _ in 0..1 + rng.below(3) {
                        let bound = if acyclic { i } else { n };
                        d.push(rng.below(bound as u64) as usize);
                    }
                }
                let (start, end) = match (rng.below(6), d.is_empty()) {
                    (0, _) => (ce(&["E0001"]), ce(&["E0001"])),
                    (1, _) => (PASS, PASS),
                    (_, true) => (PASS, ce(&["E0002"])),
                    (_, false) => {
                        let names: Vec<String> = d
                            .iter()
                            .map(|&k| {
                                if rng.below(2) == 0 {
                                    format!("c{k}")
                                } else {
                                    format!("reg:c{k}@1.0.0")
                                }
                            })
                            .collect();
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        (PASS, dep(&names))
                    }
                };
                results.push(res(&name, start, end));
                deps.push(d);
            }
            let regressed: Vec<bool> = results
                .iter()
                .map(|r| compare(&r.start, &r.end) == Comparison::Regressed)
                .collect();
            let report = build(results.clone());
            let total: usize = report.regressions().map(|c| c.root_causes().len()).sum();
            let through: usize = report
                .root_regressions()
                .map(|c| c.regressions_through())
                .sum();
            assert_eq!(total, through, "round {round}");
            for (i, c) in report.crates().enumerate() {
                if !regressed[i] {
                    assert_eq!(c.root_causes().len(), 0);
                    continue;
                }
                assert!(c.root_causes().len() > 0, "round {round}");
                for r in c.root_causes() {
                    assert!(report.get(r).unwrap().is_root(), "round {round}");
                }
                if acyclic {
                    let expected = reference_roots(i, &deps, &regressed, &results);
                    let got: Vec<usize> = c
                        .root_causes()
                        .map(|r| r.registry_name().unwrap()[1..].parse().unwrap())
                        .collect();
                    assert_eq!(got, expected, "round {round} crate {i}");
                }
            }
            if acyclic {
                assert_eq!(report.cycles().len(), 0);
            }
        }
    }

    fn reference_roots(
        i: usize,
        deps: &[Vec<usize>],
        regressed: &[bool],
        results: &[CrateResult],
    ) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        if matches!(results[i].end, Outcome::BuildFail(R::DependsOn { .. })) {
            for &d in &deps[i] {
                if regressed[d] {
                    out.extend(reference_roots(d, deps, regressed, results));
                }
            }
        }
        if out.is_empty() {
            out.push(i);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A chain far deeper than any recursion could take.
    #[test]
    fn very_long_chain_does_not_recurse() {
        let n = 200_000;
        let mut results = vec![reg("reg:c0@1.0.0", ce(&["E0308"]))];
        for i in 1..n {
            let prev = format!("reg:c{}@1.0.0", i - 1);
            results.push(reg(&format!("reg:c{i}@1.0.0"), dep(&[&prev])));
        }
        let report = build(results);
        let top = report.root_regressions().next().unwrap();
        assert_eq!(top.krate().to_string(), "reg:c0@1.0.0");
        assert_eq!(top.regressions_through(), n);
        assert_eq!(report.root_regressions().len(), 1);
        assert_eq!(roots_of(&report, "reg:c199999@1.0.0"), ["reg:c0@1.0.0"]);
    }

    /// One crate per comparison (with the number of crates given), to test counts.
    fn one_of_each() -> Vec<CrateResult> {
        vec![
            reg("reg:regressed@1.0.0", ce(&["E0308"])),
            res("reg:fixed@1.0.0", ce(&["E0308"]), PASS),
            reg("reg:sr@1.0.0", bf(R::Timeout)),
            res("reg:sf@1.0.0", bf(R::NoSpace), PASS),
            res("reg:spurious@1.0.0", bf(R::PidsLimit), bf(R::Timeout)),
            res("reg:sbf@1.0.0", bf(R::Link), ce(&[])),
            res("reg:stf@1.0.0", test_fail(), test_fail()),
            res("reg:sts@1.0.0", Outcome::TestSkipped, Outcome::TestSkipped),
            res("reg:stp@1.0.0", PASS, PASS),
            res("reg:stp@2.0.0", PASS, PASS),
            res("reg:skipped@1.0.0", Outcome::Skipped, Outcome::Skipped),
            res(
                "reg:broken@1.0.0",
                Outcome::Broken { reason: "x".into() },
                Outcome::Broken { reason: "x".into() },
            ),
            res(
                "reg:pf@1.0.0",
                PASS,
                Outcome::PrepareFail { reason: "x".into() },
            ),
            res("reg:error@1.0.0", error(), PASS),
            res("reg:unknown@1.0.0", Outcome::TestSkipped, PASS),
        ]
    }

    #[test]
    fn counts_per_comparison() {
        let report = build(one_of_each());
        let expected = [
            (Comparison::Regressed, 1),
            (Comparison::Fixed, 1),
            (Comparison::SpuriousRegressed, 1),
            (Comparison::SpuriousFixed, 1),
            (Comparison::Spurious, 1),
            (Comparison::SameBuildFail, 1),
            (Comparison::SameTestFail, 1),
            (Comparison::SameTestSkipped, 1),
            (Comparison::SameTestPass, 2),
            (Comparison::Skipped, 1),
            (Comparison::Broken, 1),
            (Comparison::PrepareFail, 1),
            (Comparison::Error, 1),
            (Comparison::Unknown, 1),
        ];
        assert_eq!(report.counts().iter().collect::<Vec<_>>(), expected);
        assert_eq!(report.counts().total(), 15);
        assert_eq!(report.len(), 15);
        let json = serde_json::to_value(report.counts()).unwrap();
        assert_eq!(
            json,
            json!({
                "regressed": 1, "fixed": 1, "spurious-regressed": 1, "spurious-fixed": 1,
                "spurious": 1, "same-build-fail": 1, "same-test-fail": 1, "same-test-skipped": 1,
                "same-test-pass": 2, "skipped": 1, "broken": 1, "prepare-fail": 1, "error": 1,
                "unknown": 1
            })
        );
        let empty = build(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.counts().total(), 0);
        assert_eq!(empty.root_regressions().len(), 0);
    }

    #[test]
    fn error_code_grouping() {
        let report = build(vec![
            reg("reg:a@1.0.0", ce(&["E0308", "E0599"])),
            reg("reg:b@1.0.0", ce(&["E0308"])),
            reg("reg:c@1.0.0", ce(&["E0308", "E0308"])),
            reg("reg:d@1.0.0", bf(R::Ice)),
            res("reg:d2@1.0.0", bf(R::Oom), bf(R::Ice)),
            reg("reg:e@1.0.0", bf(R::Link)),
            reg("reg:f@1.0.0", bf(R::Unknown)),
            reg("reg:g@1.0.0", test_fail()),
            reg("reg:h@1.0.0", ce(&[])),
            reg("reg:i@1.0.0", dep(&["missing"])),
            reg("reg:j@1.0.0", dep(&["c"])),
            reg("reg:k@1.0.0", dep(&["c"])),
            res("reg:l@1.0.0", ce(&["E0001"]), ce(&["E0001"])),
        ]);
        let groups: Vec<(String, Vec<String>)> = report
            .error_groups()
            .map(|g| (g.key().to_string(), ids(g.crates())))
            .collect();
        let expected: Vec<(&str, Vec<&str>)> = vec![
            // c first: two regressions through it (j, k); then by id
            ("E0308", vec!["reg:c@1.0.0", "reg:a@1.0.0", "reg:b@1.0.0"]),
            ("ice", vec!["reg:d@1.0.0", "reg:d2@1.0.0"]),
            ("E0599", vec!["reg:a@1.0.0"]),
            ("compiler-error", vec!["reg:h@1.0.0"]),
            ("depends-on", vec!["reg:i@1.0.0"]),
            ("link", vec!["reg:e@1.0.0"]),
            ("test-fail", vec!["reg:g@1.0.0"]),
            ("unknown", vec!["reg:f@1.0.0"]),
        ];
        let expected: Vec<(String, Vec<String>)> = expected
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
            .collect();
        assert_eq!(groups, expected);
        let first = report.error_groups().next().unwrap();
        assert_eq!(first.key(), &ErrorGroupKey::Code("E0308".into()));
        assert_eq!(first.len(), 3);
        assert!(!first.is_empty());
        assert_eq!(
            report.error_groups().nth(1).unwrap().key(),
            &ErrorGroupKey::Kind("ice")
        );
    }

    #[test]
    fn spurious_results_are_kept_apart() {
        let report = build(vec![
            reg("reg:r@1.0.0", ce(&["E0308"])),
            reg("reg:oom@1.0.0", bf(R::Oom)),
            reg("reg:t1@1.0.0", bf(R::Timeout)),
            res("reg:t2@1.0.0", ce(&["E0308"]), bf(R::Timeout)),
            reg("reg:noout@1.0.0", bf(R::NoOutputTimeout)),
            res("reg:net@1.0.0", bf(R::NetworkAccess), PASS),
            res("reg:space@1.0.0", bf(R::NoSpace), ce(&["E0308"])),
            res("reg:err1@1.0.0", PASS, error()),
            res("reg:err0@1.0.0", error(), ce(&["E0308"])),
            res("reg:same@1.0.0", bf(R::Oom), bf(R::Timeout)),
        ]);
        assert_eq!(ids(report.regressions()), ["reg:r@1.0.0"]);
        assert_eq!(
            ids(report.spurious_regressed()),
            [
                "reg:noout@1.0.0",
                "reg:oom@1.0.0",
                "reg:t1@1.0.0",
                "reg:t2@1.0.0"
            ]
        );
        assert_eq!(
            ids(report.spurious_fixed()),
            ["reg:net@1.0.0", "reg:space@1.0.0"]
        );
        assert_eq!(ids(report.errors()), ["reg:err0@1.0.0", "reg:err1@1.0.0"]);
        let reasons = |c| -> Vec<(&str, usize)> {
            report
                .spurious_reasons(c)
                .iter()
                .map(|r| (r.kind, r.crates))
                .collect()
        };
        assert_eq!(
            reasons(Comparison::SpuriousRegressed),
            [("timeout", 2), ("no-output-timeout", 1), ("oom", 1)]
        );
        assert_eq!(
            reasons(Comparison::SpuriousFixed),
            [("network-access", 1), ("no-space", 1)]
        );
        assert!(reasons(Comparison::Regressed).is_empty());
        // spurious on both sides: a comparison of its own, listed and retried with the others
        assert_eq!(report.counts().get(Comparison::SameBuildFail), 0);
        assert_eq!(report.counts().get(Comparison::Spurious), 1);
        assert_eq!(ids(report.spurious_both()), ["reg:same@1.0.0"]);
        assert_eq!(reasons(Comparison::Spurious), [("oom", 1), ("timeout", 1)]);
        assert!(
            report
                .retry_list()
                .iter()
                .any(|k| k.to_string() == "reg:same@1.0.0")
        );
        let md = summary_markdown(&report, &SummaryOptions::new("x", "stable", "beta"));
        assert!(md.contains("| spurious | 1 | oom 1, timeout 1 |"), "{md}");
        assert!(md.contains("**spurious**: `same 1.0.0`"), "{md}");
        for c in report.spurious_regressed().chain(report.errors()) {
            assert!(!c.is_root());
            assert_eq!(c.root_causes().len(), 0);
        }
        let error_groups: Vec<String> =
            report.error_groups().map(|g| g.key().to_string()).collect();
        assert_eq!(error_groups, ["E0308"]);
    }

    #[test]
    fn diagnostics_changes_are_kept_apart_from_breakage() {
        let ui = Outcome::TestFail {
            failed_tests: vec!["ui".into()],
            reason: Some(TestFailReason::DiagnosticsChange),
        };
        let report = build(vec![
            reg("reg:ui@1.0.0", ui.clone()),
            reg("reg:real@1.0.0", test_fail()),
            reg("reg:dep@1.0.0", dep(&["ui"])),
            res("reg:both@1.0.0", ui.clone(), ui.clone()),
        ]);
        // counted as regressed, but in no list of regressions and no one's root cause
        assert_eq!(report.counts().get(Comparison::Regressed), 3);
        assert_eq!(ids(report.diagnostics_changes()), ["reg:ui@1.0.0"]);
        assert_eq!(
            ids(report.regressions()),
            ["reg:dep@1.0.0", "reg:real@1.0.0"]
        );
        assert!(!ids(report.root_regressions()).contains(&"reg:ui@1.0.0".to_owned()));
        let dep = report.get(&"reg:dep@1.0.0".parse().unwrap()).unwrap();
        assert!(dep.is_root(), "a diagnostics change explains no dependent");
        // retried after the regressions
        let retry: Vec<String> = report
            .retry_list()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(retry, ["reg:dep@1.0.0", "reg:real@1.0.0", "reg:ui@1.0.0"]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["diagnostics_changes"], json!(["reg:ui@1.0.0"]));
        let md = summary_markdown(&report, &SummaryOptions::new("x", "stable", "beta"));
        let changed = md.find("## Compiler output changed").expect(&md);
        assert!(md.find("## Root regressions").unwrap() < changed, "{md}");
        assert!(
            md.contains("1 crate regressed only because tests that compare"),
            "{md}"
        );
        assert!(
            md.contains("| `ui 1.0.0` | `test-fail:diagnostics-change(1)` |"),
            "{md}"
        );
        // only diagnostics changes: the headline does not say "no regressions"
        let only = build(vec![reg("reg:ui@1.0.0", ui)]);
        let md = summary_markdown(&only, &SummaryOptions::new("x", "stable", "beta"));
        assert!(!md.contains("**No regressions.**"), "{md}");
    }

    #[test]
    fn flaky_crates_leave_the_lists_and_confirmed_ones_say_so() {
        use crate::confirm::ConfirmationStatus as S;
        let results = vec![
            reg("reg:conf@1.0.0", ce(&["E0308"])),
            reg("reg:flaky@1.0.0", ce(&["E0599"])),
            reg("reg:dep@1.0.0", dep(&["flaky"])),
            reg("reg:wait@1.0.0", test_fail()),
            res("reg:fixflaky@1.0.0", ce(&[]), PASS),
            res("reg:pass@1.0.0", PASS, PASS),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let status = |r: &CrateResult, _: Comparison| {
            let k = &r.krate;
            asked.borrow_mut().push(k.to_string());
            match k.to_string().as_str() {
                "reg:conf@1.0.0" => Some(S::Confirmed),
                "reg:flaky@1.0.0" | "reg:fixflaky@1.0.0" => Some(S::Flaky),
                "reg:wait@1.0.0" => Some(S::Pending),
                "reg:pass@1.0.0" => Some(S::Confirmed), // never asked: not regressed or fixed
                _ => None,
            }
        };
        let report = Report::build_with(results, |_| false, status).unwrap();
        assert!(!asked.borrow().contains(&"reg:pass@1.0.0".to_owned()));
        // counts keep the first run's comparison; the lists leave the flaky crates out
        assert_eq!(report.counts().get(Comparison::Regressed), 4);
        assert_eq!(
            ids(report.flaky()),
            ["reg:fixflaky@1.0.0", "reg:flaky@1.0.0"]
        );
        assert_eq!(
            ids(report.regressions()),
            ["reg:conf@1.0.0", "reg:dep@1.0.0", "reg:wait@1.0.0"]
        );
        // a flaky dependency explains nothing: its dependent is a root of its own
        assert!(
            report
                .get(&"reg:dep@1.0.0".parse().unwrap())
                .unwrap()
                .is_root()
        );
        assert_eq!(
            report.confirmation_counts(),
            ConfirmationCounts {
                confirmed: 1,
                flaky: 2,
                pending: 1,
                known_flaky: 0,
            }
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["flaky"],
            json!(["reg:fixflaky@1.0.0", "reg:flaky@1.0.0"])
        );
        assert_eq!(
            json["confirmation"],
            json!({"confirmed": 1, "flaky": 2, "pending": 1, "known_flaky": 0})
        );
        let by_id = |id: &str| {
            json["crates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["crate"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(by_id("reg:conf@1.0.0")["confirmation"], "confirmed");
        assert_eq!(by_id("reg:flaky@1.0.0")["confirmation"], "flaky");
        assert!(by_id("reg:dep@1.0.0").get("confirmation").is_none());
        let opts = SummaryOptions {
            reruns: Some((8, 252_000)),
            ..SummaryOptions::new("x", "stable", "beta")
        };
        let md = summary_markdown(&report, &opts);
        assert!(
            md.contains("1 confirmed, 2 flaky (listed apart, not regressions), 1 pending; 8 re-runs cost 4.2 min of builds."),
            "{md}"
        );
        assert!(md.contains("`conf 1.0.0` (confirmed)"), "{md}");
        assert!(
            md.contains("`wait 1.0.0` (confirmation pending)") || !md.contains("`wait 1.0.0` |"),
            "{md}"
        );
        assert!(md.contains("## Flaky (not confirmed)"), "{md}");
        assert!(
            md.contains(
                "| `flaky 1.0.0` | regressed | `test-pass` | `build-fail:compiler-error(E0599)` |"
            ),
            "{md}"
        );
        // without re-runs, nothing about confirmation is said
        let plain = build(vec![reg("reg:a@1.0.0", ce(&["E0308"]))]);
        let md = summary_markdown(&plain, &SummaryOptions::new("x", "a", "b"));
        assert!(!md.contains("onfirm"), "{md}");
        assert!(!md.contains("Flaky"), "{md}");
    }

    #[test]
    fn retry_list_and_selection() {
        let report = build(vec![
            reg("reg:c@1.0.0", dep(&["a"])),
            reg("reg:a@1.0.0", ce(&["E0308"])),
            reg("reg:b@1.0.0", test_fail()),
            reg("reg:s@1.0.0", bf(R::Oom)),
            res("reg:f@1.0.0", bf(R::Oom), PASS),
            res("git:https://h/r.git#abc", error(), PASS),
            res("reg:fixed@1.0.0", ce(&[]), PASS),
            res("reg:same@1.0.0", ce(&[]), ce(&[])),
            res("reg:pass@1.0.0", PASS, PASS),
            res(
                "local:/x",
                PASS,
                Outcome::PrepareFail { reason: "x".into() },
            ),
        ]);
        let retry: Vec<String> = report
            .retry_list()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            retry,
            [
                "reg:a@1.0.0",
                "reg:b@1.0.0",
                "reg:c@1.0.0",
                "reg:s@1.0.0",
                "reg:f@1.0.0",
                "git:https://h/r.git#abc"
            ]
        );
        let selection = report.retry_selection().unwrap();
        selection.validate().unwrap();
        let CrateSelection::List(specs) = &selection else {
            panic!("not a list: {selection:?}");
        };
        let specs: Vec<String> = specs.iter().map(ToString::to_string).collect();
        assert_eq!(
            specs,
            [
                "a@1.0.0",
                "b@1.0.0",
                "c@1.0.0",
                "s@1.0.0",
                "f@1.0.0",
                "git:https://h/r.git#abc"
            ]
        );
        // The selection survives its own string form, as an operator would paste it back.
        let back: CrateSelection = selection.to_string().parse().unwrap();
        assert_eq!(back, selection);

        let quiet = build(vec![res("reg:pass@1.0.0", PASS, PASS)]);
        assert!(quiet.retry_list().is_empty());
        assert_eq!(quiet.retry_selection(), None);
    }

    #[test]
    fn lookup_ignores_checksum_and_keeps_input() {
        let results = vec![
            CrateResult {
                krate: id(&format!("reg:a@1.0.0#{CKSUM}")),
                start: PASS,
                end: ce(&["E0308"]),
                start_log: Some("experiments/e/stable/reg%3Aa@1.0.0/log.zst".into()),
                end_log: Some("experiments/e/beta/reg%3Aa@1.0.0/log.zst".into()),
            },
            res("reg:b@1.0.0", PASS, PASS),
        ];
        let report = build(results.clone());
        let a = report.get(&id("reg:a@1.0.0")).unwrap();
        assert_eq!(a.result(), &results[0]);
        assert_eq!(a.comparison(), Comparison::Regressed);
        assert!(report.get(&id("reg:a@1.0.1")).is_none());
        assert!(report.get(&id("reg:c@1.0.0")).is_none());
        assert_eq!(report.into_results(), results);
    }

    #[test]
    fn json_shape() {
        let report = build(vec![
            CrateResult {
                krate: id("reg:a@1.0.0"),
                start: PASS,
                end: ce(&["E0308"]),
                start_log: Some("s/a".into()),
                end_log: Some("e/a".into()),
            },
            reg("reg:b@1.0.0", dep(&["a", "ghost"])),
            reg("reg:x@1.0.0", dep(&["reg:y@1.0.0"])),
            reg("reg:y@1.0.0", dep(&["reg:x@1.0.0"])),
            reg("reg:s@1.0.0", bf(R::Oom)),
            res("reg:p@1.0.0", PASS, PASS),
        ]);
        let json = serde_json::to_value(&report).unwrap();
        let oom = json!({"kind": "build-fail", "reason": {"kind": "oom"}});
        let e0308 =
            json!({"kind": "build-fail", "reason": {"kind": "compiler-error", "codes": ["E0308"]}});
        let dep_xy = |d: &str| json!({"kind": "build-fail", "reason": {"kind": "depends-on", "crates": [d]}});
        let mut counts = serde_json::to_value(report.counts()).unwrap();
        counts["regressed"] = json!(4);
        assert_eq!(
            json,
            json!({
                "total": 6,
                "counts": counts,
                "regressions": ["reg:a@1.0.0", "reg:x@1.0.0", "reg:y@1.0.0", "reg:b@1.0.0"],
                "quiet_regressions": [],
                "diagnostics_changes": [],
                "flaky": [],
                "confirmation": {"confirmed": 0, "flaky": 0, "pending": 0, "known_flaky": 0},
                "root_regressions": [
                    {"crate": "reg:a@1.0.0", "end": e0308, "regressions": 2, "dependents": 1, "in_cycle": false},
                    {"crate": "reg:x@1.0.0", "end": dep_xy("reg:y@1.0.0"), "regressions": 2, "dependents": 1, "in_cycle": true},
                    {"crate": "reg:y@1.0.0", "end": dep_xy("reg:x@1.0.0"), "regressions": 2, "dependents": 1, "in_cycle": true},
                ],
                "error_groups": [
                    {"group": "depends-on", "crates": ["reg:x@1.0.0", "reg:y@1.0.0"]},
                    {"group": "E0308", "crates": ["reg:a@1.0.0"]},
                ],
                "spurious": {
                    "spurious-regressed": {"reasons": {"oom": 1}, "crates": ["reg:s@1.0.0"]},
                    "spurious-fixed": {"reasons": {}, "crates": []},
                    "spurious": {"reasons": {}, "crates": []},
                    "error": {"crates": []},
                },
                "unresolved_dependencies": [{"name": "ghost", "dependents": 1}],
                "cycles": ["reg:x@1.0.0", "reg:y@1.0.0"],
                "crates": [
                    {"crate": "reg:a@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                     "end": e0308, "start_log": "s/a", "end_log": "e/a",
                     "root_causes": ["reg:a@1.0.0"], "root": true},
                    {"crate": "reg:b@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                     "end": {"kind": "build-fail", "reason": {"kind": "depends-on", "crates": ["a", "ghost"]}},
                     "root_causes": ["reg:a@1.0.0"]},
                    {"crate": "reg:x@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                     "end": dep_xy("reg:y@1.0.0"), "root_causes": ["reg:x@1.0.0", "reg:y@1.0.0"],
                     "root": true, "in_cycle": true},
                    {"crate": "reg:y@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                     "end": dep_xy("reg:x@1.0.0"), "root_causes": ["reg:x@1.0.0", "reg:y@1.0.0"],
                     "root": true, "in_cycle": true},
                    {"crate": "reg:s@1.0.0", "comparison": "spurious-regressed", "start": {"kind": "test-pass"},
                     "end": oom},
                    {"crate": "reg:p@1.0.0", "comparison": "same-test-pass", "start": {"kind": "test-pass"},
                     "end": {"kind": "test-pass"}},
                ],
            })
        );
        // CrateResult round-trips through its own JSON.
        let r = reg("reg:a@1.0.0", ce(&["E0308"]));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<CrateResult>(&text).unwrap(), r);
    }

    /// 5 regressions: foo (root) with two crates through it, bar (root) with one; a spurious
    /// result, an error, an unresolved dependency.
    fn summary_report() -> Report {
        build(vec![
            reg("reg:foo@1.2.3", ce(&["E0308", "E0599"])),
            reg("reg:u1@1.0.0", dep(&["foo"])),
            reg("reg:u2@0.1.0", dep(&["reg:u1@1.0.0"])),
            reg("reg:bar@0.4.0", bf(R::Ice)),
            reg("reg:v1@2.0.0", dep(&["bar", "libgit2-sys"])),
            reg("reg:sp@1.0.0", bf(R::Oom)),
            res("reg:er@1.0.0", error(), PASS),
            res("reg:fx@1.0.0", ce(&["E0308"]), PASS),
            res("reg:ok@1.0.0", PASS, PASS),
            res("reg:ok@2.0.0", PASS, PASS),
        ])
    }

    #[test]
    fn markdown_summary_content() {
        let report = summary_report();
        let md = summary_markdown(
            &report,
            &SummaryOptions::new("beta-2026-05", "stable", "beta"),
        );
        let expected_lines = [
            "# beta-2026-05",
            "`stable` (start) → `beta` (end), 10 crates.",
            "**5 regressions, 3 of them through `foo 1.2.3`.**",
            "2 crates regressed on their own; the other 3 regressed because a dependency did.",
            "2 spurious or infrastructure results are listed apart and not counted as regressions.",
            "## Counts",
            "| regressed | 5 |",
            "| fixed | 1 |",
            "| spurious-regressed | 1 |",
            "| same-test-pass | 2 |",
            "| error | 1 |",
            "| unknown | 0 |",
            "| **total** | **10** |",
            "## Root regressions",
            "| 1 | `foo 1.2.3` | `build-fail:compiler-error(E0308,E0599)` | 3 |",
            "| 2 | `bar 0.4.0` | `build-fail:ice` | 2 |",
            "## Root regressions by error",
            "| `E0308` | 1 | `foo 1.2.3` |",
            "| `E0599` | 1 | `foo 1.2.3` |",
            "| `ice` | 1 | `bar 0.4.0` |",
            "## Spurious and infrastructure results",
            "| spurious-regressed | 1 | oom 1 |",
            "| spurious-fixed | 0 |  |",
            "| error | 1 |  |",
            "**spurious-regressed**: `sp 1.0.0`",
            "**error**: `er 1.0.0`",
            "## Attribution notes",
            "- `libgit2-sys`: 1 crate",
            "## Retry",
            "**7 crates to retry** (regressions and spurious results): the report's retry list is an explicit crate selection.",
        ];
        let lines: Vec<&str> = md.lines().collect();
        let mut at = 0;
        for expected in expected_lines {
            match lines[at..].iter().position(|l| *l == expected) {
                Some(k) => at += k + 1,
                None => panic!("missing or out of order: {expected:?}\n---\n{md}"),
            }
        }
        assert!(!md.contains("… and"), "{md}");
        assert!(!md.contains("**spurious-fixed**"), "{md}");
        assert!(!md.contains("cycle"), "{md}");

        let small = SummaryOptions {
            max_entries: 1,
            ..SummaryOptions::new("t", "a", "b")
        };
        let md = summary_markdown(&report, &small);
        assert!(md.contains("| 1 | `foo 1.2.3` |"), "{md}");
        assert!(!md.contains("| 2 | `bar 0.4.0` |"), "{md}");
        assert!(md.contains("… and 1 more root regressions"), "{md}");
        assert!(md.contains("… and 2 more groups"), "{md}");
    }

    #[test]
    fn markdown_summary_without_regressions() {
        let report = build(vec![res("reg:ok@1.0.0", PASS, PASS)]);
        let md = summary_markdown(&report, &SummaryOptions::new("t\nx", "a|b", "`c`"));
        assert!(md.starts_with("# t x\n"), "{md}");
        assert!(
            md.contains("`a\\|b` (start) → `` `c` `` (end), 1 crate."),
            "{md}"
        );
        assert!(md.contains("**No regressions.**"), "{md}");
        assert!(md.contains("Nothing to retry."), "{md}");
        assert!(!md.contains("## Root regressions"), "{md}");
        assert!(!md.contains("## Spurious"), "{md}");
    }

    #[test]
    fn markdown_summary_is_bounded() {
        // 5,000 roots with 2 KiB git URLs and many codes, 5,000 spurious, 5,000 unresolved names,
        // a cycle of 1,000: still fits a GitHub issue.
        let long = "x".repeat(1900);
        let mut results = Vec::new();
        for i in 0..5000 {
            let codes: Vec<String> = (0..20).map(|k| format!("E{:04}", i * 7 + k)).collect();
            let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
            results.push(reg(
                &format!("git:https://h/{long}{i}.git#r{i}"),
                ce(&codes),
            ));
            results.push(reg(&format!("reg:s{i}@1.0.0"), bf(R::Timeout)));
            let ghost = format!("ghost-{i}-{}", "y".repeat(50));
            results.push(reg(&format!("reg:d{i}@1.0.0"), dep(&[&ghost])));
        }
        for i in 0..1000 {
            let next = format!("reg:cy{}@1.0.0", (i + 1) % 1000);
            results.push(reg(&format!("reg:cy{i}@1.0.0"), dep(&[&next])));
        }
        let report = build(results);
        assert_eq!(report.cycles().len(), 1000);
        let md = summary_markdown(&report, &SummaryOptions::new("big", "a", "b"));
        assert!(md.len() < 65_536, "{} bytes", md.len());
        // 5,000 + 5,000 + 1,000 cycle members, all roots; 50 shown.
        assert!(
            md.contains("… and 10950 more root regressions"),
            "{}",
            &md[..2000]
        );
        assert!(md.contains("… and 4950 more"));
        assert!(md.contains("…` |"), "labels are cut");
    }

    #[test]
    fn markdown_code_spans() {
        assert_eq!(code("foo 1.2.3"), "`foo 1.2.3`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`a``"), "``` `a`` ```");
        assert_eq!(code("a|b\nc"), "`a\\|b c`");
        assert_eq!(cut("abcdef".into(), 4), "abc…");
        assert_eq!(cut("abcd".into(), 4), "abcd");
        assert_eq!(cut("ääää€".into(), 4), "äää…");
    }

    #[test]
    fn normalisation() {
        let cases = [
            (
                "/home/alice/.cargo/registry/src/index.crates.io-6f17d22bba15001f/serde-1.0.0/src/de.rs:10:5",
                "$REGISTRY/serde-1.0.0/src/de.rs:10:5",
            ),
            (
                "--> /root/.cargo/git/checkouts/foo-1a2b3c4d5e6f7a8b/0123abc/src/lib.rs",
                "--> $GIT/src/lib.rs",
            ),
            (
                "at /opt/rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/core/src/ops.rs:7",
                "at $TOOLCHAIN/lib/rustlib/src/rust/library/core/src/ops.rs:7",
            ),
            ("(/tmp/.tmpAbC123/foo/src/lib.rs)", "($TMP/foo/src/lib.rs)"),
            ("'/var/tmp/x1/y'", "'$TMP/y'"),
            ("/home/bob/proj/src/lib.rs", "$HOME/proj/src/lib.rs"),
            ("/Users/bob/p", "$HOME/p"),
            ("/root/x and /root", "$HOME/x and $HOME"),
            (
                "/opt/ci/target/debug/deps/libfoo-1a2b3c4d5e6f7a8b.rlib",
                "$TARGET/debug/deps/libfoo-$HASH.rlib",
            ),
            (
                "~/.cargo/registry/src/idx-0123/x-1.0.0/lib.rs",
                "$REGISTRY/x-1.0.0/lib.rs",
            ),
            (
                "Running target/debug/deps/foo-1a2b3c4d5e6f7a8b",
                "Running target/debug/deps/foo-$HASH",
            ),
            (
                "panicked at /rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/panicking.rs",
                "panicked at /rustc/$HASH/library/std/src/panicking.rs",
            ),
            ("finished in 1.23s", "finished in $DUR"),
            ("[2.3s] ok", "[$DUR] ok"),
            (
                "took 150ms, 2min, 3µs, 12seconds",
                "took $DUR, $DUR, $DUR, $DUR",
            ),
            (
                "1.2.3 E0308 12 items a.rs:12:5",
                "1.2.3 E0308 12 items a.rs:12:5",
            ),
            ("deadbeef cafebabe abc1234", "deadbeef cafebabe abc1234"),
            (
                "x-1a2b3c4d x-1a2b3c4 x-12345678",
                "x-$HASH x-1a2b3c4 x-$HASH",
            ),
            ("at 0x7ffd5e3c1a20 0x10", "at 0x$HEX 0x10"),
            ("foo::bar::h0123456789abcdef", "foo::bar::h$HASH"),
            ("src/lib.rs and a/tmp/b", "src/lib.rs and a/tmp/b"),
            ("ünï /tmp/é/x — 1.5s ✓", "ünï $TMP/x — $DUR ✓"),
            ("  trimmed \t", "trimmed"),
            ("/usr/lib/x.so", "/usr/lib/x.so"),
        ];
        let mut out = String::new();
        for (input, expected) in cases {
            normalize_line(input, &mut out);
            assert_eq!(out, expected, "{input}");
        }
        let mut clean = String::new();
        for (input, expected) in [
            ("\x1b[1m\x1b[31merror[E0308]\x1b[0m: x", "error[E0308]: x"),
            ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x07!", "link!"),
            ("progress 1/3\rprogress 2/3\rerror: boom\r", "error: boom"),
            ("a\x1b(Bb\x1b", "ab"),
        ] {
            strip_ansi(input, &mut clean);
            assert_eq!(clean, expected, "{input:?}");
        }
    }

    #[test]
    fn first_new_error_cases() {
        let start = "\
   Compiling foo v0.1.0 (/tmp/.tmpAAA111/foo)
error[E0308]: mismatched types
 --> /home/alice/.cargo/registry/src/index.crates.io-6f17d22bba15001f/bar-1.0.0/src/lib.rs:3:5
error: test timed out after 12.5s [2.3s]
thread 'main' panicked at /rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/core/src/x.rs:1:1:
error: could not link /work/target/debug/deps/libfoo-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20
";
        let same_after_normalising = "\
   Compiling foo v0.1.0 (/tmp/.tmpBBB222/foo)
\x1b[1m\x1b[31merror[E0308]\x1b[0m\x1b[1m: mismatched types\x1b[0m
 --> /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bar-1.0.0/src/lib.rs:3:5
error: test timed out after 3.1s [0.4s]
thread 'main' panicked at /rustc/0123456789abcdef0123456789abcdef01234567/library/core/src/x.rs:1:1:
error: could not link /srv/x/target/debug/deps/libfoo-0f0e0d0c0b0a0908.rlib at 0x55d1c0ffee00
warning: something new that is not an error
";
        assert_eq!(first_new_error(start, same_after_normalising), None);

        let cases: &[(&str, Option<(usize, &str)>)] = &[
            (
                "line 0\nerror[E0308]: mismatched types\nwarning: x\nerror[E0599]: no method named `x`\nerror[E0425]: y",
                Some((3, "error[E0599]: no method named `x`")),
            ),
            (
                "\x1b[31merror\x1b[0m: new and coloured  \r\n",
                Some((0, "error: new and coloured")),
            ),
            (
                "ok\r\nok\r\n  test a::b ... FAILED",
                Some((2, "test a::b ... FAILED")),
            ),
            (
                "thread 'other' panicked at src/main.rs:2:5:",
                Some((0, "thread 'other' panicked at src/main.rs:2:5:")),
            ),
            (
                "foo.c:1:10: fatal error: openssl/ssl.h: No such file or directory",
                Some((
                    0,
                    "foo.c:1:10: fatal error: openssl/ssl.h: No such file or directory",
                )),
            ),
            (
                "error: internal compiler error: unexpected panic",
                Some((0, "error: internal compiler error: unexpected panic")),
            ),
            (
                "Error: Os { code: 13 }",
                Some((0, "Error: Os { code: 13 }")),
            ),
            // A different file is a different error, normalisation or not.
            (
                "error[E0308]: mismatched types\n --> src/main.rs:3:5\nerror: could not link /work/target/debug/deps/libbar-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20",
                Some((
                    2,
                    "error: could not link /work/target/debug/deps/libbar-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20",
                )),
            ),
            ("warning: unused\nnote: x\nerrors: not an error line", None),
            ("", None),
            // Line stamps of the sandbox are not part of the line.
            (
                "[   0.100] error[E0308]: mismatched types\n[  12.500] error[E0599]: new",
                Some((1, "error[E0599]: new")),
            ),
            (
                "[   3.000] \x1b[31merror[E0308]\x1b[0m: mismatched types",
                None,
            ),
        ];
        for (end, expected) in cases {
            let got = first_new_error(start, end);
            let got = got.as_ref().map(|(i, s)| (*i, s.as_str()));
            assert_eq!(got, *expected, "{end:?}");
        }
        // Nothing in start: the first error line of end.
        assert_eq!(
            first_new_error("", "a\nerror: x"),
            Some((1, "error: x".to_owned()))
        );
    }

    /// Random text (multi-byte characters, escapes, paths, digits) never makes the log functions
    /// panic.
    #[test]
    fn log_functions_never_panic() {
        const PIECES: &[&str] = &[
            "/",
            "~",
            "/tmp/",
            "/home/",
            "/root",
            "/target/",
            "/registry/src/",
            "/toolchains/",
            "/git/checkouts/",
            "0x",
            "h",
            "deadbeef1",
            "1.5",
            "s",
            "ms",
            "µs",
            "μ",
            "é",
            "€",
            "✓",
            "\x1b",
            "[",
            "]",
            "\r",
            "\n",
            " ",
            ":",
            "error",
            "error:",
            "test ",
            " FAILED",
            "1",
            "a",
            "-",
            ".",
            "'",
            "\\",
            "\x07",
            "0123456789abcdef",
        ];
        let mut rng = SplitMix(99);
        let mut out = String::new();
        for _ in 0..3000 {
            let mut a = String::new();
            let mut b = String::new();
            for _ in 0..rng.below(30) {
                a.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
                b.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
            }
            normalize_line(&a, &mut out);
            if let Some((i, line)) = first_new_error(&a, &b) {
                assert!(i < b.lines().count());
                assert!(!line.contains('\x1b'));
            }
        }
    }

    /// SplitMix64: a small deterministic generator for tests.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    // -----------------------------------------------------------------------------------------
    // 1M benchmark

    /// The synthetic experiment: its results and the number of regressions planted.
    fn synthetic(n: usize, seed: u64) -> (Vec<CrateResult>, usize) {
        const CODES: &[&str] = &[
            "E0308", "E0599", "E0277", "E0425", "E0433", "E0412", "E0432", "E0061", "E0282",
            "E0106", "E0382", "E0502", "E0499", "E0505", "E0507", "E0597", "E0716", "E0658",
            "E0554", "E0034", "E0119", "E0201", "E0252", "E0283", "E0310", "E0369", "E0392",
            "E0404", "E0405", "E0407", "E0423", "E0424", "E0428", "E0434", "E0435", "E0449",
            "E0493", "E0515", "E0560", "E0609",
        ];
        struct Planted {
            name: String,
            version: semver::Version,
            checksum: String,
        }
        let mut rng = SplitMix(seed);
        let mut results = Vec::with_capacity(n);
        let mut regressed: Vec<Planted> = Vec::new();
        let mut failing: Vec<String> = Vec::new();
        let mut planted = 0;
        let cycles = 3;
        for i in 0..n - 2 * cycles {
            let name = format!("crate-{i}");
            let version = semver::Version::new(i as u64 % 4, i as u64 % 23, i as u64 % 7);
            let checksum = format!(
                "{:016x}{:016x}{:016x}{:016x}",
                rng.next(),
                rng.next(),
                rng.next(),
                rng.next()
            );
            let roll = rng.below(10_000);
            let (start, end) = if roll < 40 {
                // a root regression
                let end = match rng.below(100) {
                    0..70 => {
                        let k = (CODES.len() as f64 * rng.unit().powi(2)) as usize;
                        let mut codes = vec![CODES[k]];
                        if rng.below(5) == 0 {
                            codes.push(CODES[rng.below(CODES.len() as u64) as usize]);
                        }
                        ce(&codes)
                    }
                    70..75 => bf(R::Ice),
                    75..80 => bf(R::Link),
                    80..95 => test_fail(),
                    _ => bf(R::Unknown),
                };
                (PASS, end)
            } else if roll < 290 && !regressed.is_empty() {
                // a regression through 1-3 regressed crates, popular (early) ones more often
                let mut deps = Vec::new();
                let k = match rng.below(20) {
                    0 => 3,
                    1..4 => 2,
                    _ => 1,
                };
                for _ in 0..k {
                    let d = &regressed[(regressed.len() as f64 * rng.unit().powi(3)) as usize];
                    deps.push(match rng.below(20) {
                        0..10 => format!("reg:{}@{}#{}", d.name, d.version, d.checksum),
                        10..14 => format!("reg:{}@{}", d.name, d.version),
                        14..18 => d.name.clone(),
                        _ => format!("{} v{}", d.name, d.version),
                    });
                }
                if rng.below(20) == 0 {
                    deps.push(format!("sys-{}", rng.below(500)));
                }
                (
                    PASS,
                    dep(&deps.iter().map(String::as_str).collect::<Vec<_>>()),
                )
            } else if roll < 300 && !failing.is_empty() {
                // depends on a crate that already failed on start: its own root
                let d = failing[rng.below(failing.len() as u64) as usize].clone();
                (PASS, dep(&[&d]))
            } else if roll < 310 {
                let r = [R::Oom, R::Timeout, R::NoOutputTimeout][rng.below(3) as usize].clone();
                (PASS, bf(r))
            } else if roll < 315 {
                (bf(R::Timeout), PASS)
            } else if roll < 320 {
                (error(), PASS)
            } else if roll < 380 {
                (ce(&["E0308"]), PASS)
            } else if roll < 2400 {
                failing.push(name.clone());
                if rng.below(10) < 3 {
                    let d = format!("crate-{}", rng.below(i as u64 + 1));
                    (dep(&[&d]), dep(&[&d]))
                } else {
                    (ce(&["E0425"]), ce(&["E0425"]))
                }
            } else if roll < 3200 {
                (test_fail(), test_fail())
            } else if roll < 3500 {
                (Outcome::TestSkipped, Outcome::TestSkipped)
            } else if roll < 3700 {
                (
                    Outcome::PrepareFail {
                        reason: "yanked".into(),
                    },
                    Outcome::PrepareFail {
                        reason: "yanked".into(),
                    },
                )
            } else if roll < 3750 {
                (
                    Outcome::Broken {
                        reason: "known".into(),
                    },
                    Outcome::Broken {
                        reason: "known".into(),
                    },
                )
            } else if roll < 3800 {
                (Outcome::Skipped, Outcome::Skipped)
            } else {
                (PASS, PASS)
            };
            if compare(&start, &end) == Comparison::Regressed {
                planted += 1;
                regressed.push(Planted {
                    name: name.clone(),
                    version: version.clone(),
                    checksum: checksum.clone(),
                });
            }
            let key = |tc: &str| {
                format!("experiments/beta-1m/{tc}/reg%3A{name}@{version}%23{checksum}/log.zst")
            };
            results.push(CrateResult {
                start_log: Some(key("stable")),
                end_log: Some(key("beta-2026-05-01")),
                krate: CrateId::Registry {
                    name,
                    version,
                    checksum: Some(checksum),
                },
                start,
                end,
            });
        }
        // Bad data: a few two-crate cycles.
        for k in 0..cycles {
            let (a, b) = (format!("reg:cyc-a{k}@1.0.0"), format!("reg:cyc-b{k}@1.0.0"));
            results.push(reg(&a, dep(&[&b])));
            results.push(reg(&b, dep(&[&a])));
            planted += 2;
        }
        (results, planted)
    }

    fn proc_status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    struct CountingSink(usize);

    impl std::io::Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// `cargo test --release -p caldera-core report::tests::bench_1m -- --ignored --nocapture`
    /// (run it alone: peak memory is the whole process's). Builds the report over 1,000,000
    /// synthetic results with dependency chains, renders the summary and serializes the JSON.
    #[test]
    #[ignore = "benchmark: run explicitly, in release"]
    fn bench_1m() {
        use std::time::Instant;
        let n = 1_000_000;
        let t = Instant::now();
        let (results, planted) = synthetic(n, 42);
        let generate = t.elapsed().as_secs_f64();
        let input_mib = proc_status_kib("VmRSS:") as f64 / 1024.0;

        let t = Instant::now();
        let report = Report::build(results).unwrap();
        let build_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let md = summary_markdown(&report, &SummaryOptions::new("beta-1m", "stable", "beta"));
        let summary_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut sink = CountingSink(0);
        serde_json::to_writer(&mut sink, &report).unwrap();
        let json_s = t.elapsed().as_secs_f64();
        let peak_mib = proc_status_kib("VmHWM:") as f64 / 1024.0;

        assert_eq!(report.len(), n);
        assert_eq!(report.counts().get(Comparison::Regressed), planted);
        assert_eq!(report.cycles().len(), 6);
        assert!(md.len() < 65_536);
        let (mut links, mut widest) = (0, 0);
        for c in report.regressions() {
            let k = c.root_causes().len();
            assert!(k > 0);
            links += k;
            widest = widest.max(k);
        }
        let top = report.root_regressions().next().unwrap();
        eprintln!(
            "{} regressions ({links} root links, at most {widest} roots per crate), {} roots, top root {} with {} through it; {} error groups; {} unresolved names; summary {} bytes",
            planted,
            report.root_regressions().len(),
            top.krate(),
            top.regressions_through(),
            report.error_groups().len(),
            report.unresolved_dependencies().len(),
            md.len()
        );
        eprintln!("report_1m_generate: {generate:.2} s");
        eprintln!("report_1m_build: {build_s:.2} s");
        eprintln!("report_1m_summary: {summary_s:.3} s");
        eprintln!("report_1m_json: {json_s:.2} s");
        eprintln!("report_1m_json_size: {:.0} MiB", sink.0 as f64 / 1048576.0);
        eprintln!("report_1m_input: {input_mib:.0} MiB");
        println!("report_1m: {:.2} s", build_s + summary_s + json_s);
        println!("report_1m_peak: {peak_mib:.0} MiB");
    }
}
