//! Dependency resolution: which crates of the experiment a `depends-on` entry names.

use super::*;

/// How a `depends-on` entry names a crate.
pub(crate) enum DepRef<'s> {
    /// An exact crate version (or git revision, or directory).
    Id(CrateId),
    /// A registry crate name, any version.
    Name(&'s str),
    /// Neither; matches nothing.
    Invalid,
}

pub(crate) fn parse_dep(s: &str) -> DepRef<'_> {
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
        return match (
            validate_crate_name(name),
            caldera_core::semver::Version::parse(version),
        ) {
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
pub(crate) fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

pub(crate) fn names_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

pub(crate) fn folded<'b>(name: &str, buf: &'b mut Vec<u8>) -> &'b [u8] {
    buf.clear();
    buf.extend(name.bytes().map(fold));
    buf
}

pub(crate) fn name_hash(name: &str, buf: &mut Vec<u8>) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(folded(name, buf));
    h.finish()
}

/// Hash of an id that agrees with [`same_crate`]: no checksum, folded registry name.
pub(crate) fn id_hash(id: &CrateId, buf: &mut Vec<u8>) -> u64 {
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
pub(crate) fn same_crate(a: &CrateId, b: &CrateId) -> bool {
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
pub(crate) fn resolve_dependencies(
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
                for_each_named(results, (id_index, &name_index), i, dep, &mut buf, &mut add);
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
    let unresolved = by_dependents(unresolved);
    (edges, unresolved)
}

/// Calls `f` with every crate of the experiment that the `depends-on` entry `dep` of crate `i`
/// names, looked up in the indices by id and by registry name.
fn for_each_named(
    results: &[CrateResult],
    (id_index, name_index): (&HashIndex, &HashIndex),
    i: Ix,
    dep: &str,
    buf: &mut Vec<u8>,
    f: &mut impl FnMut(Ix),
) {
    match parse_dep(dep) {
        DepRef::Id(id) => id_index
            .candidates(id_hash(&id, buf))
            .filter(|&c| same_crate(&results[c as usize].krate, &id))
            .for_each(f),
        DepRef::Name(name) => name_index
            .candidates(name_hash(name, buf))
            .filter(|&c| {
                c != i
                    && results[c as usize]
                        .krate
                        .registry_name()
                        .is_some_and(|n| names_match(n, name))
            })
            .for_each(f),
        DepRef::Invalid => {}
    }
}

/// The unresolved names, by crates naming them (most first), then by name.
fn by_dependents(unresolved: HashMap<&str, (usize, usize)>) -> Vec<UnresolvedDependency> {
    let mut unresolved: Vec<UnresolvedDependency> = unresolved
        .into_iter()
        .map(|(name, (dependents, _))| UnresolvedDependency {
            name: name.to_owned(),
            dependents,
        })
        .collect();
    unresolved.sort_by(|a, b| b.dependents.cmp(&a.dependents).then(a.name.cmp(&b.name)));
    unresolved
}
