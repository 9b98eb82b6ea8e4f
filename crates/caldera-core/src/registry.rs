//! The whole registry, for the `all`, `top:N` and `random:N` selections.
//!
//! A [`RegistryListing`] is built from either of the registry's documented formats, with no I/O of
//! its own (the caller opens the files):
//!
//! * the **database dump** CSVs: `crates.csv` (columns `id`, `name` and, when present, `downloads`)
//!   and `versions.csv` (columns `crate_id`, `num`, `checksum`, `yanked`); columns are found by
//!   header name and other columns are ignored. Newer dumps keep downloads in
//!   `crate_downloads.csv` (`crate_id`, `downloads`), accepted by
//!   [`RegistryListing::from_db_dump_with_downloads`]. Booleans are Postgres' `t`/`f` (or
//!   `true`/`false`).
//! * the **index** (sparse or git checkout): one crate's file at a time, JSON lines
//!   `{"name", "vers", "deps": [{"name", "kind", "package", "registry", ...}], "cksum", "yanked", ...}`,
//!   via [`RegistryListing::add_index_file`]. Unknown keys are ignored, as cargo does.
//!
//! For each crate only its *selected* version is kept: the greatest (semver order) non-yanked
//! version that is not a prerelease, or, when there is none, the greatest non-yanked prerelease.
//! A crate whose versions are all yanked is left out.
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
//!
//! Every result is a [`CrateId::Registry`] carrying the checksum when the source had one.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Deserialize;

use crate::crates::{CrateId, validate_checksum, validate_crate_name};
use crate::selection::CrateSelection;

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

/// One candidate version of a crate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    version: semver::Version,
    checksum: Option<String>,
    /// Normalized names of the crates this version depends on (normal and build, same registry).
    deps: Vec<String>,
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

fn csv_error(file: &'static str, e: csv::Error) -> RegistryError {
    RegistryError::Csv {
        file,
        message: e.to_string(),
    }
}

/// A CSV reader plus the positions of the wanted columns.
struct CsvTable<R: Read> {
    file: &'static str,
    reader: csv::Reader<R>,
    columns: Vec<Option<usize>>,
}

impl<R: Read> CsvTable<R> {
    /// Opens `reader`; `required` columns must be present, `optional` ones may be missing.
    fn open(
        file: &'static str,
        reader: R,
        required: &[&'static str],
        optional: &[&'static str],
    ) -> Result<Self, RegistryError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(reader);
        let headers = reader.headers().map_err(|e| csv_error(file, e))?.clone();
        let find = |column: &str| headers.iter().position(|h| h.trim() == column);
        let mut columns = Vec::new();
        for column in required {
            columns.push(Some(
                find(column).ok_or(RegistryError::MissingColumn { file, column })?,
            ));
        }
        for column in optional {
            columns.push(find(column));
        }
        Ok(CsvTable {
            file,
            reader,
            columns,
        })
    }

    /// Calls `f(line, cells)` for each row, `cells[i]` being the i-th wanted column.
    fn for_each(
        mut self,
        mut f: impl FnMut(u64, &[Option<&str>]) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let mut record = csv::StringRecord::new();
        while self
            .reader
            .read_record(&mut record)
            .map_err(|e| csv_error(self.file, e))?
        {
            let line = record.position().map_or(0, |p| p.line());
            let cells: Vec<Option<&str>> = self
                .columns
                .iter()
                .map(|c| c.and_then(|i| record.get(i)))
                .collect();
            f(line, &cells)?;
        }
        Ok(())
    }
}

fn invalid(
    file: &'static str,
    line: u64,
    column: &'static str,
    value: &str,
    reason: impl ToString,
) -> RegistryError {
    RegistryError::InvalidValue {
        file,
        line,
        column,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

fn parse_downloads(file: &'static str, line: u64, value: &str) -> Result<u64, RegistryError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(file, line, "downloads", value, "not a non-negative integer"))
}

fn parse_bool(file: &'static str, line: u64, value: &str) -> Result<bool, RegistryError> {
    match value.trim() {
        "t" | "true" | "TRUE" | "True" => Ok(true),
        "f" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(invalid(file, line, "yanked", value, "expected t or f")),
    }
}

impl RegistryListing {
    /// An empty listing, to fill with [`RegistryListing::add_index_file`].
    pub fn new() -> Self {
        RegistryListing::default()
    }

    /// Reads the database dump's `crates.csv` and `versions.csv`. Downloads come from the
    /// `downloads` column of `crates.csv` when it has one.
    pub fn from_db_dump(
        crates_csv: impl Read,
        versions_csv: impl Read,
    ) -> Result<Self, RegistryError> {
        Self::read_db_dump(crates_csv, versions_csv, None::<&[u8]>)
    }

    /// Like [`RegistryListing::from_db_dump`], with downloads read from `crate_downloads.csv`
    /// (`crate_id`, `downloads`), as in dumps where `crates.csv` no longer has them. A crate that
    /// file does not mention has 0 downloads.
    pub fn from_db_dump_with_downloads(
        crates_csv: impl Read,
        versions_csv: impl Read,
        crate_downloads_csv: impl Read,
    ) -> Result<Self, RegistryError> {
        Self::read_db_dump(crates_csv, versions_csv, Some(crate_downloads_csv))
    }

    fn read_db_dump(
        crates_csv: impl Read,
        versions_csv: impl Read,
        downloads_csv: Option<impl Read>,
    ) -> Result<Self, RegistryError> {
        let mut listing = RegistryListing::new();
        let names = listing.read_crates_csv(crates_csv)?;
        if let Some(reader) = downloads_csv {
            listing.read_downloads_csv(reader, &names)?;
        }
        listing.read_versions_csv(versions_csv, &names)?;
        Ok(listing)
    }

    /// Reads `crates.csv`: every crate with its downloads. Returns the names by crate id.
    fn read_crates_csv(
        &mut self,
        crates_csv: impl Read,
    ) -> Result<HashMap<String, String>, RegistryError> {
        const CRATES: &str = "crates.csv";
        let listing = self;
        let mut names: HashMap<String, String> = HashMap::new();
        CsvTable::open(CRATES, crates_csv, &["id", "name"], &["downloads"])?.for_each(
            |line, cells| {
                let (id, name) = (cells[0].unwrap_or_default(), cells[1].unwrap_or_default());
                validate_crate_name(name).map_err(|e| invalid(CRATES, line, "name", name, e))?;
                let downloads = cells[2]
                    .map(|d| parse_downloads(CRATES, line, d))
                    .transpose()?;
                if names.insert(id.to_owned(), name.to_owned()).is_some() {
                    return Err(RegistryError::DuplicateCrateId {
                        line,
                        id: id.to_owned(),
                    });
                }
                listing.crates.entry(name.to_owned()).or_default().downloads = downloads;
                Ok(())
            },
        )?;
        Ok(names)
    }

    /// Reads `crate_downloads.csv`: the downloads of every crate, which then replace those of
    /// `crates.csv` (a crate it does not name has none).
    fn read_downloads_csv(
        &mut self,
        reader: impl Read,
        names: &HashMap<String, String>,
    ) -> Result<(), RegistryError> {
        const DOWNLOADS: &str = "crate_downloads.csv";
        let listing = self;
        for entry in listing.crates.values_mut() {
            entry.downloads = Some(0);
        }
        CsvTable::open(DOWNLOADS, reader, &["crate_id", "downloads"], &[])?.for_each(
            |line, cells| {
                let id = cells[0].unwrap_or_default();
                let name = names.get(id).ok_or_else(|| RegistryError::UnknownCrateId {
                    file: DOWNLOADS,
                    line,
                    id: id.to_owned(),
                })?;
                let downloads = parse_downloads(DOWNLOADS, line, cells[1].unwrap_or_default())?;
                if let Some(entry) = listing.crates.get_mut(name) {
                    entry.downloads = Some(downloads);
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Reads `versions.csv`: every version that is not yanked, with its checksum.
    fn read_versions_csv(
        &mut self,
        versions_csv: impl Read,
        names: &HashMap<String, String>,
    ) -> Result<(), RegistryError> {
        const VERSIONS: &str = "versions.csv";
        let listing = self;
        CsvTable::open(
            VERSIONS,
            versions_csv,
            &["crate_id", "num", "checksum", "yanked"],
            &[],
        )?
        .for_each(|line, cells| {
            let id = cells[0].unwrap_or_default();
            let name = names.get(id).ok_or_else(|| RegistryError::UnknownCrateId {
                file: VERSIONS,
                line,
                id: id.to_owned(),
            })?;
            let num = cells[1].unwrap_or_default();
            let version =
                semver::Version::parse(num).map_err(|e| invalid(VERSIONS, line, "num", num, e))?;
            let checksum = match cells[2].unwrap_or_default() {
                "" => None,
                c => {
                    validate_checksum(c).map_err(|e| invalid(VERSIONS, line, "checksum", c, e))?;
                    Some(c.to_owned())
                }
            };
            if parse_bool(VERSIONS, line, cells[3].unwrap_or_default())? {
                return Ok(());
            }
            if let Some(entry) = listing.crates.get_mut(name) {
                entry.offer(Candidate {
                    version,
                    checksum,
                    deps: Vec::new(),
                });
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Adds one crate's index file (its full text: one JSON object per line, blank lines
    /// ignored). All lines must name the same crate. Adding a file again changes nothing.
    pub fn add_index_file(&mut self, text: &str) -> Result<(), RegistryError> {
        let mut first_name: Option<String> = None;
        let mut candidates = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let err = |message: String| RegistryError::IndexLine { line, message };
            let entry: IndexLine = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
            validate_crate_name(&entry.name).map_err(|e| err(e.to_string()))?;
            match &first_name {
                None => first_name = Some(entry.name.clone()),
                Some(expected) if *expected != entry.name => {
                    return Err(RegistryError::IndexNameMismatch {
                        line,
                        expected: expected.clone(),
                        found: entry.name,
                    });
                }
                Some(_) => {}
            }
            let version = semver::Version::parse(&entry.vers)
                .map_err(|e| err(format!("invalid version {:?}: {e}", entry.vers)))?;
            validate_checksum(&entry.cksum).map_err(|e| err(e.to_string()))?;
            let deps = index_deps(&entry, &err)?;
            if !entry.yanked {
                candidates.push(Candidate {
                    version,
                    checksum: Some(entry.cksum),
                    deps,
                });
            }
        }
        if let Some(name) = first_name {
            let slot = self.crates.entry(name).or_default();
            for candidate in candidates {
                slot.offer(candidate);
            }
        }
        Ok(())
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

    /// The crates of a whole-registry selection (`all`, `top`, `random`); `None` for an explicit
    /// list or a stored list, which are not resolved against the registry here.
    pub fn select(&self, selection: &CrateSelection) -> Option<Vec<CrateId>> {
        match selection {
            CrateSelection::All => Some(self.all()),
            CrateSelection::Top { n } => Some(self.top(*n as usize)),
            CrateSelection::Random { n, seed } => Some(self.random(*n as usize, *seed)),
            CrateSelection::List(_) | CrateSelection::CrateList { .. } => None,
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

/// One line of an index file: one version of a crate.
#[derive(Deserialize)]
struct IndexLine {
    name: String,
    vers: String,
    #[serde(default)]
    deps: Vec<IndexDep>,
    cksum: String,
    #[serde(default)]
    yanked: bool,
}
/// A dependency of an index line.
#[derive(Deserialize)]
struct IndexDep {
    name: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    package: Option<String>,
    #[serde(default)]
    registry: Option<String>,
}

/// The normalised names of the crates an index line's version depends on to build (its normal and
/// build dependencies from crates.io; dev-dependencies and other registries' crates left out).
fn index_deps(
    entry: &IndexLine,
    err: &impl Fn(String) -> RegistryError,
) -> Result<Vec<String>, RegistryError> {
    let own = normalize(&entry.name);
    let mut deps = Vec::new();
    for dep in &entry.deps {
        match dep.kind.as_deref() {
            None | Some("normal") | Some("build") => {}
            Some("dev") => continue,
            Some(other) => {
                return Err(err(format!(
                    "dependency {:?} has unknown kind {other:?} (expected normal, build or dev)",
                    dep.name
                )));
            }
        }
        if dep.registry.is_some() {
            continue;
        }
        let target = normalize(dep.package.as_deref().unwrap_or(&dep.name));
        if target != own && !deps.contains(&target) {
            deps.push(target);
        }
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn registry_names(ids: &[CrateId]) -> HashSet<&str> {
        ids.iter().filter_map(CrateId::registry_name).collect()
    }

    fn ck(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn names(ids: &[CrateId]) -> Vec<String> {
        ids.iter()
            .map(|id| match id {
                CrateId::Registry { name, version, .. } => format!("{name}@{version}"),
                other => panic!("not a registry id: {other}"),
            })
            .collect()
    }

    /// A small dump in the real layout: extra columns, columns in another order, quoted cells
    /// with commas and newlines.
    fn dump() -> (String, String) {
        let crates = "\
created_at,description,downloads,id,name,repository
2015-01-01,\"Serialization, for \"\"Rust\"\"\",1000,1,serde,https://x
2015-01-01,\"multi
line\",5000,2,rand,
2015-01-01,,1000,3,anyhow,
2015-01-01,,99999,4,gone,
2015-01-01,,7,5,pre-only,
2015-01-01,,1000,6,Zebra,
";
        let versions = format!(
            "\
id,crate_id,num,checksum,yanked,license
10,1,1.0.0,{a},f,MIT
11,1,1.0.10,{b},f,MIT
12,1,1.0.9,{a},f,MIT
13,1,2.0.0-rc.1,{a},f,MIT
20,2,0.8.5,{c},f,MIT
21,2,0.9.0,{c},t,MIT
30,3,1.0.0,,f,MIT
40,4,1.0.0,{a},t,MIT
50,5,0.1.0-alpha.1,{a},f,MIT
51,5,0.1.0-alpha.2,{b},f,MIT
52,5,0.1.0-beta.1,{a},t,MIT
60,6,0.1.0,{a},false,MIT
",
            a = ck('a'),
            b = ck('b'),
            c = ck('c'),
        );
        (crates.to_owned(), versions)
    }

    fn dump_listing() -> RegistryListing {
        let (c, v) = dump();
        RegistryListing::from_db_dump(c.as_bytes(), v.as_bytes()).unwrap()
    }

    #[test]
    fn db_dump_all() {
        let listing = dump_listing();
        let all = listing.all();
        // Byte order puts the capitalised name first.
        assert_eq!(
            names(&all),
            [
                "Zebra@0.1.0",
                "anyhow@1.0.0",
                "pre-only@0.1.0-alpha.2",
                "rand@0.8.5",
                "serde@1.0.10"
            ]
        );
        assert_eq!(
            all[4],
            CrateId::Registry {
                name: "serde".into(),
                version: "1.0.10".parse().unwrap(),
                checksum: Some(ck('b')),
            }
        );
        assert_eq!(
            all[1],
            CrateId::Registry {
                name: "anyhow".into(),
                version: "1.0.0".parse().unwrap(),
                checksum: None,
            }
        );
        assert_eq!(listing.len(), 5);
        assert_eq!(listing.unselectable(), ["gone"]);
        assert_eq!(
            listing.latest("rand").unwrap().to_string(),
            format!("reg:rand@0.8.5#{}", ck('c'))
        );
        assert_eq!(listing.latest("gone"), None);
    }

    #[test]
    fn db_dump_top_by_downloads() {
        let listing = dump_listing();
        assert!(listing.has_downloads());
        // 5000 rand; 1000 each for Zebra, anyhow, serde (ties by name); 7 pre-only. `gone` has the
        // most downloads but no selectable version.
        assert_eq!(
            names(&listing.top(10)),
            [
                "rand@0.8.5",
                "Zebra@0.1.0",
                "anyhow@1.0.0",
                "serde@1.0.10",
                "pre-only@0.1.0-alpha.2"
            ]
        );
        assert_eq!(names(&listing.top(2)), ["rand@0.8.5", "Zebra@0.1.0"]);
        assert!(listing.top(0).is_empty());
    }

    #[test]
    fn db_dump_separate_downloads_file() {
        // Drop the downloads column by reading a crates.csv without it.
        let crates = "id,name\n1,serde\n2,rand\n3,anyhow\n";
        let downloads = "crate_id,downloads\n3,50\n1,10\n";
        let listing = RegistryListing::from_db_dump_with_downloads(
            crates.as_bytes(),
            "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,0.8.5,,f\n3,1.0.0,,f\n".as_bytes(),
            downloads.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            names(&listing.top(3)),
            ["anyhow@1.0.0", "serde@1.0.0", "rand@0.8.5"]
        );
        // Without downloads at all, the dump has no dependency data: every count is 0, so the
        // order is by name.
        let listing = RegistryListing::from_db_dump(
            crates.as_bytes(),
            "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,0.8.5,,f\n3,1.0.0,,f\n".as_bytes(),
        )
        .unwrap();
        assert!(!listing.has_downloads());
        assert_eq!(
            names(&listing.top(3)),
            ["anyhow@1.0.0", "rand@0.8.5", "serde@1.0.0"]
        );
    }

    #[test]
    fn db_dump_errors() {
        let (crates, versions) = dump();
        let cases: Vec<(String, String, &str)> = vec![
            (
                "id,title\n1,x\n".into(),
                versions.clone(),
                "crates.csv: the header has no `name` column",
            ),
            (
                crates.clone(),
                "crate_id,num,yanked\n1,1.0.0,f\n".into(),
                "versions.csv: the header has no `checksum` column",
            ),
            (
                "id,name,downloads\n1,serde,many\n".into(),
                versions.clone(),
                r#"crates.csv line 2: invalid downloads "many": not a non-negative integer"#,
            ),
            (
                "id,name\n1,serde\n2,9lives\n".into(),
                versions.clone(),
                r#"crates.csv line 3: invalid name "9lives": invalid crate name "9lives": must start with an ASCII letter"#,
            ),
            (
                "id,name\n1,serde\n1,rand\n".into(),
                versions.clone(),
                r#"crates.csv line 3: crate id "1" appears more than once"#,
            ),
            (
                "id,name\n1,serde\n".into(),
                "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,1.0.0,,f\n".into(),
                r#"versions.csv line 3: crate id "2" is not in crates.csv"#,
            ),
            (
                "id,name\n1,serde\n".into(),
                "crate_id,num,checksum,yanked\n1,1.0,,f\n".into(),
                r#"versions.csv line 2: invalid num "1.0": unexpected end of input while parsing minor version number"#,
            ),
            (
                "id,name\n1,serde\n".into(),
                "crate_id,num,checksum,yanked\n1,1.0.0,xyz,f\n".into(),
                r#"versions.csv line 2: invalid checksum "xyz": checksum "xyz" is not 64 lowercase hex digits (sha256)"#,
            ),
            (
                "id,name\n1,serde\n".into(),
                "crate_id,num,checksum,yanked\n1,1.0.0,,maybe\n".into(),
                r#"versions.csv line 2: invalid yanked "maybe": expected t or f"#,
            ),
        ];
        for (c, v, msg) in cases {
            let err = RegistryListing::from_db_dump(c.as_bytes(), v.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), msg);
        }
        // A ragged row is reported by the CSV reader with its position.
        let err = RegistryListing::from_db_dump(
            "id,name\n1,serde,extra\n".as_bytes(),
            versions.as_bytes(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, RegistryError::Csv { file: "crates.csv", message } if message.contains("(line: 2,")),
            "{err}"
        );
    }

    fn line(name: &str, vers: &str, deps: &str, yanked: bool) -> String {
        format!(
            r#"{{"name":"{name}","vers":"{vers}","deps":[{deps}],"cksum":"{}","features":{{}},"yanked":{yanked},"v":2}}"#,
            ck('d')
        )
    }

    fn dep(name: &str, kind: &str) -> String {
        format!(
            r#"{{"name":"{name}","req":"^1","features":[],"optional":false,"default_features":true,"target":null,"kind":"{kind}"}}"#
        )
    }

    /// A synthetic index: dependency counts decide `top`.
    fn index_listing() -> RegistryListing {
        let files = [
            // serde: depended on by app1 (normal), app2 (build, renamed), app3 (as serde_derive's
            // dep, see below) — but not by `tester` (dev only).
            [
                line("serde", "1.0.0", "", false),
                line("serde", "1.0.1", "", false),
            ]
            .join("\n"),
            // app1's older version depends on `log`; only the latest version counts.
            [
                line("app1", "0.1.0", &dep("log", "normal"), false),
                line(
                    "app1",
                    "0.2.0",
                    &[dep("serde", "normal"), dep("libc", "normal")].join(","),
                    false,
                ),
            ]
            .join("\n"),
            line(
                "app2",
                "1.0.0",
                r#"{"name":"s","package":"serde","req":"^1","kind":"build"},{"name":"libc","req":"^0.2"}"#,
                false,
            ),
            // app3's latest version is yanked; its previous version depends on serde and libc twice.
            [
                line(
                    "app3",
                    "1.0.0",
                    &[
                        dep("serde", "normal"),
                        dep("libc", "normal"),
                        dep("libc", "build"),
                    ]
                    .join(","),
                    false,
                ),
                line("app3", "2.0.0", &dep("log", "normal"), true),
            ]
            .join("\n"),
            line(
                "tester",
                "1.0.0",
                &[dep("serde", "dev"), dep("log", "dev")].join(","),
                false,
            ),
            // A dependency on another registry does not count; a self-dependency does not count.
            line(
                "log",
                "0.4.0",
                r#"{"name":"libc","req":"^1","kind":"normal","registry":"https://example.invalid/index"},{"name":"log","req":"^0.4"}"#,
                false,
            ),
            // `Lib_C` style: names compare ignoring case and -/_.
            line("libc", "0.2.0", "", false),
            line("uses-libc", "1.0.0", &dep("LIBC", "normal"), false),
        ];
        let mut listing = RegistryListing::new();
        for f in &files {
            listing.add_index_file(f).unwrap();
        }
        listing
    }

    #[test]
    fn index_all_and_top_by_dependents() {
        let listing = index_listing();
        assert!(!listing.has_downloads());
        assert_eq!(
            names(&listing.all()),
            [
                "app1@0.2.0",
                "app2@1.0.0",
                "app3@1.0.0",
                "libc@0.2.0",
                "log@0.4.0",
                "serde@1.0.1",
                "tester@1.0.0",
                "uses-libc@1.0.0"
            ]
        );
        // libc: app1, app2, app3, uses-libc = 4; serde: app1, app2, app3 = 3; log: 0 (app1's old
        // version, app3's yanked one and tester's dev dep do not count); the rest 0, by name.
        assert_eq!(
            names(&listing.top(4)),
            ["libc@0.2.0", "serde@1.0.1", "app1@0.2.0", "app2@1.0.0"]
        );
        let counts = listing.reverse_dependency_counts();
        assert_eq!(counts.get("libc"), Some(&4));
        assert_eq!(counts.get("serde"), Some(&3));
        assert_eq!(counts.get("log"), None);
        assert_eq!(
            listing.latest("serde"),
            Some(CrateId::Registry {
                name: "serde".into(),
                version: "1.0.1".parse().unwrap(),
                checksum: Some(ck('d')),
            })
        );
    }

    #[test]
    fn index_version_selection() {
        let mut listing = RegistryListing::new();
        let file = [
            line("x", "1.0.0", "", false),
            line("x", "1.10.0", "", false),
            line("x", "1.9.0", "", false),
            line("x", "2.0.0-beta.1", "", false),
            line("x", "1.11.0", "", true),
            "".to_owned(),
        ]
        .join("\n");
        listing.add_index_file(&file).unwrap();
        // Idempotent.
        listing.add_index_file(&file).unwrap();
        listing
            .add_index_file(
                &[
                    line("y", "0.1.0-a", "", false),
                    line("y", "0.1.0-b", "", false),
                ]
                .join("\n"),
            )
            .unwrap();
        listing
            .add_index_file(&[line("z", "1.0.0", "", true)].join("\n"))
            .unwrap();
        assert_eq!(names(&listing.all()), ["x@1.10.0", "y@0.1.0-b"]);
        assert_eq!(listing.unselectable(), ["z"]);
        // An empty file adds nothing.
        listing.add_index_file("\n\n").unwrap();
        assert_eq!(listing.len(), 2);
    }

    #[test]
    fn index_errors() {
        let cases: Vec<(String, &str)> = vec![
            (
                "{not json".into(),
                "index line 1: key must be a string at line 1 column 2",
            ),
            (
                format!(
                    "{}\n{}",
                    line("a", "1.0.0", "", false),
                    line("b", "1.0.0", "", false)
                ),
                r#"index line 2: crate "b" differs from "a" earlier in the file"#,
            ),
            (
                line("a", "1.0", "", false),
                r#"index line 1: invalid version "1.0": unexpected end of input while parsing minor version number"#,
            ),
            (
                line("a", "1.0.0", &dep("b", "peer"), false),
                r#"index line 1: dependency "b" has unknown kind "peer" (expected normal, build or dev)"#,
            ),
            (
                r#"{"name":"a","vers":"1.0.0","deps":[],"cksum":"00"}"#.into(),
                r#"index line 1: checksum "00" is not 64 lowercase hex digits (sha256)"#,
            ),
            (
                r#"{"name":"a","vers":"1.0.0","deps":[]}"#.into(),
                "index line 1: missing field `cksum` at line 1 column 37",
            ),
            (
                line("_a", "1.0.0", "", false),
                r#"index line 1: invalid crate name "_a": must start with an ASCII letter"#,
            ),
        ];
        for (text, msg) in cases {
            let mut listing = RegistryListing::new();
            assert_eq!(listing.add_index_file(&text).unwrap_err().to_string(), msg);
            // A failed file adds nothing.
            assert!(listing.is_empty());
        }
    }

    fn numbered(n: usize) -> RegistryListing {
        let mut listing = RegistryListing::new();
        for i in 0..n {
            listing
                .add_index_file(&line(&format!("c{i:03}"), "1.0.0", "", false))
                .unwrap();
        }
        listing
    }

    #[test]
    fn random_is_deterministic_and_uniformish() {
        let listing = numbered(100);
        let a = listing.random(10, 7);
        assert_eq!(a, listing.random(10, 7));
        assert_eq!(a.len(), 10);
        assert_eq!(registry_names(&a).len(), 10);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(a, sorted);
        assert_ne!(a, listing.random(10, 8));
        // Pinned: the stream of ChaCha8 for seed 7 must keep selecting these.
        assert_eq!(
            names(&a)
                .iter()
                .map(|s| s.trim_end_matches("@1.0.0"))
                .collect::<Vec<_>>(),
            PINNED_SEED_7
        );
        // n at or above the size gives everything.
        assert_eq!(listing.random(100, 1), listing.all());
        assert_eq!(listing.random(1000, 1), listing.all());
        assert!(listing.random(0, 1).is_empty());
        // Every crate is about equally likely: 4000 draws of 1 among 4.
        let small = numbered(4);
        let mut hits: HashMap<String, u32> = HashMap::new();
        for seed in 0..4000 {
            let pick = small.random(1, seed);
            *hits.entry(pick[0].to_string()).or_default() += 1;
        }
        assert_eq!(hits.len(), 4);
        for (name, count) in hits {
            assert!((850..=1150).contains(&count), "{name}: {count}");
        }
    }

    const PINNED_SEED_7: [&str; 10] = [
        "c001", "c006", "c007", "c023", "c027", "c035", "c044", "c057", "c076", "c090",
    ];

    #[test]
    fn select_dispatches() {
        let listing = numbered(5);
        assert_eq!(listing.select(&CrateSelection::All), Some(listing.all()));
        assert_eq!(
            listing.select(&CrateSelection::Top { n: 2 }),
            Some(listing.top(2))
        );
        assert_eq!(
            listing.select(&CrateSelection::Random { n: 2, seed: 3 }),
            Some(listing.random(2, 3))
        );
        assert_eq!(
            listing.select(&CrateSelection::CrateList { name: "x".into() }),
            None
        );
        assert_eq!(listing.select(&"serde".parse().unwrap()), None);
    }
}
