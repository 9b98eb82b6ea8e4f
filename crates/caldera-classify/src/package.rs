//! Package ids: cargo's two spellings of them, and which packages are the crate's own.

use super::*;

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
            && let Ok(version) = caldera_core::semver::Version::parse(&self.version)
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

    pub(crate) fn key(&self) -> (String, String) {
        (self.name.clone(), self.version.clone())
    }
}

/// The crate's own packages, matched by name and version (or by the exact string when an id does
/// not parse).
pub(crate) struct Own {
    pub(crate) keys: HashSet<(String, String)>,
    pub(crate) names: HashSet<String>,
    pub(crate) raw: HashSet<String>,
    /// No own packages were given: `path+` packages count as own.
    pub(crate) path_fallback: bool,
}

impl Own {
    pub(crate) fn new(own: &[String]) -> Own {
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

    pub(crate) fn contains(&self, raw: &str, parsed: Option<&PackageId>) -> bool {
        match parsed {
            Some(p) => {
                self.keys.contains(&(p.name.clone(), p.version.clone()))
                    || self.raw.contains(raw)
                    || (self.path_fallback && p.source == PackageSource::Path)
            }
            None => self.raw.contains(raw),
        }
    }

    pub(crate) fn has_name_version(&self, name: &str, version: Option<&str>) -> bool {
        match version {
            Some(v) => self.keys.contains(&(name.to_owned(), v.to_owned())),
            None => self.names.contains(name),
        }
    }
}
