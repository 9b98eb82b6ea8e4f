//! The registry: the whole of it, for the `all`, `top:N`, `random:N` and `rdeps:NAME` selections,
//! and one crate's index file, for resolving a name through the live (sparse) index.
//!
//! A [`RegistryListing`] is built from either of the registry's documented formats, with no I/O of
//! its own (the caller opens the files):
//!
//! * the **database dump** CSVs ([`DbDump`]): `crates.csv` (columns `id`, `name` and, when
//!   present, `downloads`) and `versions.csv` (columns `id` when present, `crate_id`, `num`,
//!   `checksum`, `yanked`); columns are found by header name and other columns are ignored. Newer
//!   dumps keep downloads in `crate_downloads.csv` (`crate_id`, `downloads`). The dependencies,
//!   for `rdeps:NAME` and for ranking `top:N` when there are no downloads, come from
//!   `dependencies.csv` (`version_id`, `crate_id`, `kind`: 0 normal, 1 build, 2 dev). Booleans are
//!   Postgres' `t`/`f` (or `true`/`false`).
//! * the **index** (sparse or git checkout): one crate's file at a time, JSON lines
//!   `{"name", "vers", "deps": [{"name", "kind", "package", "registry", ...}], "cksum", "yanked", ...}`,
//!   via [`RegistryListing::add_index_file`]. Unknown keys are ignored, as cargo does.
//!
//! For each crate only its *selected* version is kept: the greatest (semver order) non-yanked
//! version that is not a prerelease, or, when there is none, the greatest non-yanked prerelease
//! (what cargo picks for `*`). A crate whose versions are all yanked is left out.
//!
//! * [`RegistryListing::all`]: every crate's selected version, sorted by name (byte order).
//! * [`RegistryListing::top`]: most used first. When the source carried download counts, "used"
//!   means downloads; otherwise it means the number of distinct crates whose selected version
//!   depends on the crate (normal and build dependencies, optional ones included; dev
//!   dependencies, dependencies on other registries and self-dependencies excluded; a renamed
//!   dependency counts for its `package`; names compared ignoring ASCII case and `-`/`_`). Ties are
//!   broken by name.
//! * [`RegistryListing::random`]: `n` distinct crates drawn uniformly from `all()` with a ChaCha8
//!   stream seeded by the seed, returned sorted by name. The same listing and seed always give
//!   the same crates: the draw uses only the raw `rand_chacha` output (whose stream is a fixed
//!   algorithm), not `rand`'s sampling helpers, which may change between releases.
//! * [`RegistryListing::rdeps`]: the crates whose selected version depends directly on a crate,
//!   by a normal, build **or dev** dependency (an experiment builds and tests them, and a test
//!   that uses the crate is affected by it too), optional ones included, sorted by name; the
//!   crate itself, other registries' crates and transitive dependents are not included.
//!
//! Every result is a [`CrateId::Registry`] carrying the checksum when the source had one.
//!
//! For the live index, [`sparse_path`] is where a crate's file is, [`parse_index_versions`] reads
//! it, and [`pick`] chooses the version a crate spec means (see there).

#![warn(missing_docs)]

mod dump;
mod index;

use std::collections::{BTreeMap, HashMap};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::crates::CrateId;
use crate::selection::CrateSelection;

pub use dump::DbDump;
pub use index::{IndexVersion, PickError, parse_index_versions, pick, sparse_path};

/// A malformed registry source. Lines are 1-based and count the header line of a CSV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The CSV itself could not be read (bad quoting, bad UTF-8, ragged rows, I/O).
    #[error("{file}: {message}")]
    Csv {
        /// Which file.
        file: &'static str,
        /// The CSV reader's description, with its position.
        message: String,
    },
    /// A required column is not in the header.
    #[error("{file}: the header has no `{column}` column")]
    MissingColumn {
        /// Which file.
        file: &'static str,
        /// The missing column.
        column: &'static str,
    },
    /// A cell that does not hold what its column should.
    #[error("{file} line {line}: invalid {column} {value:?}: {reason}")]
    InvalidValue {
        /// Which file.
        file: &'static str,
        /// 1-based line.
        line: u64,
        /// The column.
        column: &'static str,
        /// The cell as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A `crate_id` that `crates.csv` does not define.
    #[error("{file} line {line}: crate id {id:?} is not in crates.csv")]
    UnknownCrateId {
        /// Which file.
        file: &'static str,
        /// 1-based line.
        line: u64,
        /// The id.
        id: String,
    },
    /// Two rows of `crates.csv` with the same id.
    #[error("crates.csv line {line}: crate id {id:?} appears more than once")]
    DuplicateCrateId {
        /// 1-based line.
        line: u64,
        /// The id.
        id: String,
    },
    /// An index line that is not a valid entry.
    #[error("index line {line}: {message}")]
    IndexLine {
        /// 1-based line within the file.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// An index file whose lines name different crates.
    #[error("index line {line}: crate {found:?} differs from {expected:?} earlier in the file")]
    IndexNameMismatch {
        /// 1-based line within the file.
        line: usize,
        /// The name on the first line.
        expected: String,
        /// The name on this line.
        found: String,
    },
}

/// Why a whole-registry selection has no crates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// `rdeps:NAME` of a crate the listing does not have.
    #[error("crate {name:?} is not in the registry listing")]
    UnknownCrate {
        /// The name as written.
        name: String,
    },
    /// `rdeps:NAME` of a crate no crate of the listing depends on.
    #[error("no crate in the registry listing depends on {name:?}")]
    NoDependents {
        /// The name as written.
        name: String,
    },
    /// An explicit list or a stored list, which are not resolved against the listing.
    #[error("an explicit or stored crate list is not a whole-registry selection")]
    NotWholeRegistry,
}

/// One candidate version of a crate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    version: semver::Version,
    checksum: Option<String>,
    /// Normalized names of the crates this version depends on (normal and build, same registry).
    deps: Vec<String>,
    /// Normalized names of its dev-dependencies (same registry) that are not also in `deps`.
    dev_deps: Vec<String>,
    /// The version's id in the database dump (to attach `dependencies.csv` rows to it).
    dump_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CrateEntry {
    downloads: Option<u64>,
    /// Greatest non-yanked release (non-prerelease) version.
    release: Option<Candidate>,
    /// Greatest non-yanked prerelease version.
    prerelease: Option<Candidate>,
}

impl CrateEntry {
    fn offer(&mut self, candidate: Candidate) {
        let slot = if candidate.version.pre.is_empty() {
            &mut self.release
        } else {
            &mut self.prerelease
        };
        if slot
            .as_ref()
            .is_none_or(|best| candidate.version > best.version)
        {
            *slot = Some(candidate);
        }
    }

    fn selected(&self) -> Option<&Candidate> {
        self.release.as_ref().or(self.prerelease.as_ref())
    }

    fn selected_mut(&mut self) -> Option<&mut Candidate> {
        self.release.as_mut().or(self.prerelease.as_mut())
    }
}

impl Candidate {
    fn new(version: semver::Version, checksum: Option<String>) -> Candidate {
        Candidate {
            version,
            checksum,
            deps: Vec::new(),
            dev_deps: Vec::new(),
            dump_id: None,
        }
    }

    /// Records a dependency on `target` (normalized) of the crate `own` (normalized), as
    /// `index_deps` does: never on itself, a normal or build dependency once, a dev-dependency
    /// only when it is not also a normal or build one.
    fn add_dep(&mut self, own: &str, target: String, dev: bool) {
        if target == own || self.deps.contains(&target) {
            return;
        }
        if dev {
            if !self.dev_deps.contains(&target) {
                self.dev_deps.push(target);
            }
        } else {
            self.dev_deps.retain(|d| *d != target);
            self.deps.push(target);
        }
    }
}

/// Crate names are unique on the registry ignoring ASCII case and `-` vs `_`.
fn normalize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Every crate of a registry with its selected version; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryListing {
    crates: BTreeMap<String, CrateEntry>,
}

impl RegistryListing {
    /// An empty listing, to fill with [`RegistryListing::add_index_file`].
    pub fn new() -> Self {
        RegistryListing::default()
    }
    /// How many crates have a selectable version.
    pub fn len(&self) -> usize {
        self.crates
            .values()
            .filter(|e| e.selected().is_some())
            .count()
    }

    /// Whether no crate has a selectable version.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any crate carries a download count (then [`RegistryListing::top`] ranks by it).
    pub fn has_downloads(&self) -> bool {
        self.crates.values().any(|e| e.downloads.is_some())
    }

    fn id(name: &str, candidate: &Candidate) -> CrateId {
        CrateId::Registry {
            name: name.to_owned(),
            version: candidate.version.clone(),
            checksum: candidate.checksum.clone(),
        }
    }

    fn selected(&self) -> impl Iterator<Item = (&str, &CrateEntry, &Candidate)> {
        self.crates
            .iter()
            .filter_map(|(name, e)| e.selected().map(|c| (name.as_str(), e, c)))
    }

    /// The selected version of one crate (exact name).
    pub fn latest(&self, name: &str) -> Option<CrateId> {
        let candidate = self.crates.get(name)?.selected()?;
        Some(Self::id(name, candidate))
    }

    /// How many crates the selected version of `name` (exact name) depends on directly (normal and build,
    /// plus dev-dependencies when `dev`): the feature of the cost model (`crate::estimate`).
    pub fn dependency_count(&self, name: &str, dev: bool) -> Option<usize> {
        let c = self.crates.get(name)?.selected()?;
        Some(c.deps.len() + if dev { c.dev_deps.len() } else { 0 })
    }

    /// Every crate's selected version, sorted by name.
    pub fn all(&self) -> Vec<CrateId> {
        self.selected().map(|(n, _, c)| Self::id(n, c)).collect()
    }

    /// For each normalized crate name, how many distinct crates' selected versions depend on it.
    fn reverse_dependency_counts(&self) -> HashMap<&str, u64> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for (_, _, candidate) in self.selected() {
            for dep in &candidate.deps {
                *counts.entry(dep.as_str()).or_default() += 1;
            }
        }
        counts
    }

    /// The `n` most used crates, most used first (see the module docs).
    pub fn top(&self, n: usize) -> Vec<CrateId> {
        let mut ranked: Vec<(u64, &str, &Candidate)> = if self.has_downloads() {
            self.selected()
                .map(|(name, e, c)| (e.downloads.unwrap_or(0), name, c))
                .collect()
        } else {
            let counts = self.reverse_dependency_counts();
            self.selected()
                .map(|(name, _, c)| {
                    let count = counts.get(normalize(name).as_str()).copied();
                    (count.unwrap_or(0), name, c)
                })
                .collect()
        };
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        ranked
            .into_iter()
            .take(n)
            .map(|(_, name, c)| Self::id(name, c))
            .collect()
    }

    /// `n` distinct crates picked uniformly at random, deterministically for `seed`, sorted by
    /// name. With `n` at least [`RegistryListing::len`], every crate.
    pub fn random(&self, n: usize, seed: u64) -> Vec<CrateId> {
        let mut all = self.all();
        if n >= all.len() {
            return all;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Partial Fisher–Yates: the first n slots end up a uniform sample without replacement.
        for i in 0..n {
            let remaining = (all.len() - i) as u64;
            let j = i + uniform_below(&mut rng, remaining) as usize;
            all.swap(i, j);
        }
        all.truncate(n);
        all.sort();
        all
    }

    /// The crates whose selected version depends directly on `name` (see the module docs),
    /// sorted by name; `None` when the listing has no crate of that name (compared ignoring ASCII
    /// case and `-`/`_`), so an unknown name is told apart from a crate nothing depends on.
    pub fn rdeps(&self, name: &str) -> Option<Vec<CrateId>> {
        let target = normalize(name);
        if !self.crates.keys().any(|n| normalize(n) == target) {
            return None;
        }
        Some(
            self.selected()
                .filter(|(_, _, c)| c.deps.contains(&target) || c.dev_deps.contains(&target))
                .map(|(n, _, c)| Self::id(n, c))
                .collect(),
        )
    }

    /// The crates of a whole-registry selection (`all`, `top`, `random`, `rdeps`).
    pub fn select(&self, selection: &CrateSelection) -> Result<Vec<CrateId>, SelectError> {
        match selection {
            CrateSelection::All => Ok(self.all()),
            CrateSelection::Top { n } => Ok(self.top(*n as usize)),
            CrateSelection::Random { n, seed } => Ok(self.random(*n as usize, *seed)),
            CrateSelection::ReverseDeps { krate } => match self.rdeps(krate) {
                None => Err(SelectError::UnknownCrate {
                    name: krate.clone(),
                }),
                Some(ids) if ids.is_empty() => Err(SelectError::NoDependents {
                    name: krate.clone(),
                }),
                Some(ids) => Ok(ids),
            },
            CrateSelection::List(_) | CrateSelection::CrateList { .. } => {
                Err(SelectError::NotWholeRegistry)
            }
        }
    }

    /// Names of crates known to the listing that no selectable version covers (every version
    /// yanked, or no version at all).
    pub fn unselectable(&self) -> Vec<&str> {
        self.crates
            .iter()
            .filter(|(_, e)| e.selected().is_none())
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// A uniform integer in `0..bound` (`bound > 0`) from raw 64-bit outputs, by rejection of the
/// biased top range. Depends only on the generator's stream, so it never changes.
fn uniform_below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    let zone = (u64::MAX / bound) * bound;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests;
