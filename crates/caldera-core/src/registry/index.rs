//! The registry index's format: one file per crate, one JSON line per version. Read whole into a
//! listing ([`RegistryListing::add_index_file`]) or, for one crate of the live index, as its
//! versions ([`parse_index_versions`]) from which [`pick`] chooses the one a crate spec means.

use serde::Deserialize;

use super::{Candidate, CrateEntry, RegistryError, RegistryListing, normalize};
use crate::crates::{CrateId, validate_checksum, validate_crate_name};

impl RegistryListing {
    /// Adds one crate's index file (its full text: one JSON object per line, blank lines
    /// ignored). All lines must name the same crate. Adding a file again changes nothing.
    pub fn add_index_file(&mut self, text: &str) -> Result<(), RegistryError> {
        let lines = parse_lines(text)?;
        let mut candidates = Vec::new();
        for (line, entry, version) in &lines {
            let err = |message: String| RegistryError::IndexLine {
                line: *line,
                message,
            };
            let mut candidate = Candidate::new(version.clone(), Some(entry.cksum.clone()));
            index_deps(entry, &err, &mut candidate)?;
            if !entry.yanked {
                candidates.push(candidate);
            }
        }
        if let Some((_, first, _)) = lines.first() {
            let slot = self.crates.entry(first.name.clone()).or_default();
            for candidate in candidates {
                slot.offer(candidate);
            }
        }
        Ok(())
    }
}

/// One version of a crate as its index file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexVersion {
    /// The crate's name as the registry spells it.
    pub name: String,
    /// The version.
    pub version: semver::Version,
    /// The sha256 of the `.crate` file.
    pub checksum: String,
    /// Whether the version is yanked.
    pub yanked: bool,
}

/// The versions of one crate's index file (its full text), validated as
/// [`RegistryListing::add_index_file`] validates them, in file order. Dependencies are not read.
pub fn parse_index_versions(text: &str) -> Result<Vec<IndexVersion>, RegistryError> {
    Ok(parse_lines(text)?
        .into_iter()
        .map(|(_, entry, version)| IndexVersion {
            name: entry.name,
            version,
            checksum: entry.cksum,
            yanked: entry.yanked,
        })
        .collect())
}

/// Where a crate's file is in a sparse index, relative to its root: the lowercased name under
/// `1/`, `2/`, `3/{first letter}/` or `{first two}/{next two}/`, as cargo's sparse protocol says.
pub fn sparse_path(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    let prefix: String = match name.chars().count() {
        0 => String::new(),
        1 => "1/".into(),
        2 => "2/".into(),
        3 => format!("3/{}/", name.chars().next().unwrap_or_default()),
        _ => {
            let mut chars = name.chars();
            let first: String = chars.by_ref().take(2).collect();
            let second: String = chars.take(2).collect();
            format!("{first}/{second}/")
        }
    };
    format!("{prefix}{name}")
}

/// A crate spec that names no version its index file lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// An index file without a version.
    #[error("crate {name:?} has no version in the registry index")]
    Empty {
        /// The name as written.
        name: String,
    },
    /// A bare name whose versions are all yanked.
    #[error(
        "every version of crate {name:?} is yanked; write {name}@VERSION to build a yanked version"
    )]
    AllYanked {
        /// The name as written.
        name: String,
    },
    /// An exact version the index does not list.
    #[error("crate {name:?} has no version {version}{}", newest_note(.newest))]
    NoSuchVersion {
        /// The name as written.
        name: String,
        /// The version asked for.
        version: semver::Version,
        /// What a bare name would pick, if anything.
        newest: Option<semver::Version>,
    },
}

fn newest_note(newest: &Option<semver::Version>) -> String {
    match newest {
        Some(v) => format!(" (newest: {v})"),
        None => " (every version is yanked)".into(),
    }
}

/// The version of a crate that `name` (`requested` `None`) or `name@requested` means, from its
/// index file's `versions`:
///
/// * a bare name is the greatest version that is not yanked and not a prerelease, or when there
///   is none the greatest non-yanked prerelease (as [`RegistryListing`] selects, and as cargo
///   picks for `*`);
/// * an exact version must be listed; a **yanked** version is accepted (asked for by number, as a
///   lockfile may pin one). A version written without build metadata matches a listed one that
///   differs only in build metadata.
///
/// The id carries the registry's spelling of the name and the checksum.
pub fn pick(
    name: &str,
    versions: &[IndexVersion],
    requested: Option<&semver::Version>,
) -> Result<CrateId, PickError> {
    let id = |v: &IndexVersion| CrateId::Registry {
        name: v.name.clone(),
        version: v.version.clone(),
        checksum: Some(v.checksum.clone()),
    };
    let mut entry = CrateEntry::default();
    for v in versions.iter().filter(|v| !v.yanked) {
        entry.offer(Candidate::new(v.version.clone(), Some(v.checksum.clone())));
    }
    let newest = entry.selected().map(|c| c.version.clone());
    let Some(requested) = requested else {
        let newest = newest.ok_or_else(|| match versions.is_empty() {
            true => PickError::Empty { name: name.into() },
            false => PickError::AllYanked { name: name.into() },
        })?;
        let found = versions.iter().find(|v| !v.yanked && v.version == newest);
        return Ok(found.map(id).expect("the selected version is listed"));
    };
    let exact = versions.iter().find(|v| v.version == *requested);
    let loose = || {
        versions.iter().find(|v| {
            requested.build.is_empty()
                && (
                    &v.version.major,
                    &v.version.minor,
                    &v.version.patch,
                    &v.version.pre,
                ) == (
                    &requested.major,
                    &requested.minor,
                    &requested.patch,
                    &requested.pre,
                )
        })
    };
    exact
        .or_else(loose)
        .map(id)
        .ok_or_else(|| PickError::NoSuchVersion {
            name: name.into(),
            version: requested.clone(),
            newest,
        })
}

/// Every line of an index file with its (1-based) number and version: valid names, all the same,
/// valid versions and checksums.
fn parse_lines(text: &str) -> Result<Vec<(usize, IndexLine, semver::Version)>, RegistryError> {
    let mut out: Vec<(usize, IndexLine, semver::Version)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |message: String| RegistryError::IndexLine { line, message };
        let entry: IndexLine = serde_json::from_str(raw).map_err(|e| err(e.to_string()))?;
        validate_crate_name(&entry.name).map_err(|e| err(e.to_string()))?;
        if let Some((_, first, _)) = out.first()
            && first.name != entry.name
        {
            return Err(RegistryError::IndexNameMismatch {
                line,
                expected: first.name.clone(),
                found: entry.name,
            });
        }
        let version = semver::Version::parse(&entry.vers)
            .map_err(|e| err(format!("invalid version {:?}: {e}", entry.vers)))?;
        validate_checksum(&entry.cksum).map_err(|e| err(e.to_string()))?;
        out.push((line, entry, version));
    }
    Ok(out)
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

/// Records on `candidate` the crates an index line's version depends on from the same registry
/// (see [`Candidate::add_dep`]); other registries' crates are left out.
fn index_deps(
    entry: &IndexLine,
    err: &impl Fn(String) -> RegistryError,
    candidate: &mut Candidate,
) -> Result<(), RegistryError> {
    let own = normalize(&entry.name);
    for dep in &entry.deps {
        let dev = match dep.kind.as_deref() {
            None | Some("normal") | Some("build") => false,
            Some("dev") => true,
            Some(other) => {
                return Err(err(format!(
                    "dependency {:?} has unknown kind {other:?} (expected normal, build or dev)",
                    dep.name
                )));
            }
        };
        if dep.registry.is_none() {
            candidate.add_dep(
                &own,
                normalize(dep.package.as_deref().unwrap_or(&dep.name)),
                dev,
            );
        }
    }
    Ok(())
}
