//! Turning crate selections into concrete crates.
//!
//! **At create** (an experiment, an edit of its crates, a crate list), with the live index
//! (`--registry-url`, [`SparseIndex`]): every registry entry of an explicit list is looked up. An
//! exact version must be listed (a yanked one is accepted); a bare name must have a version that
//! is not yanked. A bad entry is a 422 naming it (`crates[1]`) and nothing is stored; an index
//! that cannot answer is a 503. An experiment's list is then stored **pinned** ([`pin_selection`]):
//! `serde` becomes `serde@1.0.228` (the registry's spelling of the name, duplicates dropped), so
//! the experiment says what it builds and starting it needs no lookup. A crate list is stored as
//! written ([`check_specs`]): it is reused, and its bare names mean the newest version when an
//! experiment using it starts.
//!
//! **At start** ([`resolve`]): explicit versions, git repositories (without a revision, at
//! `HEAD`) and local paths resolve on their own. A bare name left (from a crate list, or an
//! experiment created while the live index was off) is looked up in the live index, or without
//! one in the registry listing. The whole-registry selections (`top:N`, `random:N`, `all`,
//! `rdeps:NAME`) need the listing: the registry's database dump (`--registry-dump DIR`) or a
//! checkout of its index (`--registry-index DIR`), loaded at startup ([`load`]).

pub mod load;

use std::collections::{HashMap, HashSet};

use caldera_core::crates::{CrateId, CrateSpec};
use caldera_core::experiment::ExperimentSpec;
use caldera_core::registry::{RegistryListing, pick};
use caldera_core::selection::CrateSelection;
use caldera_db::{PgPool, crate_lists};
use futures::StreamExt;

use crate::error::ApiError;
use crate::sparse::SparseIndex;

pub use load::{load_db_dump, load_index};

/// The code of a 503 when the live index cannot answer.
pub const REGISTRY_UNAVAILABLE: &str = "registry-unavailable";
/// Most invalid entries a 422 names besides the first.
const MORE_NAMED: usize = 10;

/// What the master resolves crate names against.
#[derive(Clone, Copy, Default)]
pub struct Registry<'a> {
    /// The listing of the whole registry (`--registry-dump` / `--registry-index`).
    pub listing: Option<&'a RegistryListing>,
    /// The live index (`--registry-url`).
    pub index: Option<&'a SparseIndex>,
}

impl<'a> Registry<'a> {
    /// The registry of the master whose state this is.
    pub fn of(state: &'a crate::AppState) -> Registry<'a> {
        Registry {
            listing: state.registry.as_deref(),
            index: state.index.as_deref(),
        }
    }
}

/// At create: an explicit list's registry entries checked and pinned through the live index (see
/// the module docs); other selections, or no live index, unchanged.
pub async fn pin_selection(
    index: Option<&SparseIndex>,
    selection: &mut CrateSelection,
) -> Result<(), ApiError> {
    if let (Some(index), CrateSelection::List(specs)) = (index, &mut *selection) {
        let ids = lookup_all(index, specs, Only::Registry).await?;
        let ids = entries_or_422(ids, |i| format!("crates[{i}]"))?;
        let mut seen = HashSet::new();
        let pinned = specs
            .iter()
            .zip(ids)
            .map(|(spec, id)| match id {
                Some(CrateId::Registry { name, version, .. }) => CrateSpec::Registry {
                    name,
                    version: Some(version),
                },
                _ => spec.clone(),
            })
            .filter(|spec| seen.insert(spec.clone()))
            .collect();
        *specs = pinned;
    }
    Ok(())
}

/// At the creation of a crate list: every registry entry must exist in the live index (see the
/// module docs). Nothing is checked without one.
pub async fn check_specs(index: Option<&SparseIndex>, specs: &[CrateSpec]) -> Result<(), ApiError> {
    if let Some(index) = index {
        let ids = lookup_all(index, specs, Only::Registry).await?;
        entries_or_422(ids, |i| format!("crates[{i}]"))?;
    }
    Ok(())
}

/// At start: the selection of `spec` as crate ids (deduplicated, in selection order).
pub async fn resolve(
    pool: &PgPool,
    registry: Registry<'_>,
    spec: &ExperimentSpec,
) -> Result<Vec<CrateId>, ApiError> {
    let (specs, list) = match &spec.crates {
        CrateSelection::List(specs) => (specs.clone(), None),
        CrateSelection::CrateList { name } => {
            let list = crate_lists::get(pool, name)
                .await
                .map_err(|e| ApiError::invalid("crates", format!("crate list {name:?}: {e}")))?;
            (list.crates, Some(name))
        }
        whole => return select_whole(registry.listing, whole),
    };
    // Bare names through the live index when there is one (explicit entries need no lookup).
    let looked_up = match registry.index {
        Some(index) => {
            let ids = lookup_all(index, &specs, Only::BareNames).await?;
            entries_or_422(ids, |i| match list {
                Some(name) => format!("crates (crate list {name:?}, crates[{i}])"),
                None => format!("crates[{i}]"),
            })?
        }
        None => vec![None; specs.len()],
    };
    let mut out = Vec::with_capacity(specs.len());
    let mut seen = HashSet::new();
    for (s, found) in specs.into_iter().zip(looked_up) {
        let id = match (s, found) {
            (_, Some(id)) => id,
            // the worker verifies the archive against the index checksum when it prepares the crate
            (
                CrateSpec::Registry {
                    name,
                    version: Some(version),
                },
                None,
            ) => CrateId::Registry {
                name,
                version,
                checksum: None,
            },
            (
                CrateSpec::Registry {
                    name,
                    version: None,
                },
                None,
            ) => latest(registry.listing, &name)?,
            (CrateSpec::Git { url, rev }, None) => CrateId::Git {
                url,
                rev: rev.unwrap_or_else(|| "HEAD".into()),
            },
            (CrateSpec::Local { path }, None) => CrateId::Local { path },
        };
        if seen.insert(id.to_string()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// A bare name's version from the listing, without a live index.
fn latest(listing: Option<&RegistryListing>, name: &str) -> Result<CrateId, ApiError> {
    let listing = listing.ok_or_else(|| {
        ApiError::invalid(
            "crates",
            format!(
                "crate {name:?} has no version: write {name}@VERSION, or start the master with \
                 the live index (--registry-url) or a registry listing (--registry-dump / \
                 --registry-index) to pick the newest"
            ),
        )
    })?;
    listing.latest(name).ok_or_else(|| {
        ApiError::invalid(
            "crates",
            format!("crate {name:?} is not in the registry listing"),
        )
    })
}

/// `top:N`, `random:N`, `all` and `rdeps:NAME`, from the listing.
fn select_whole(
    listing: Option<&RegistryListing>,
    whole: &CrateSelection,
) -> Result<Vec<CrateId>, ApiError> {
    let listing = listing.ok_or_else(|| {
        ApiError::invalid(
            "crates",
            format!(
                "`{}` needs a listing of the whole registry; start the master with --registry-dump DIR or --registry-index DIR",
                whole.kind()
            ),
        )
    })?;
    listing
        .select(whole)
        .map_err(|e| ApiError::invalid("crates", e.to_string()))
}

/// Which entries [`lookup_all`] looks up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    /// Every registry entry.
    Registry,
    /// Registry entries without a version.
    BareNames,
}

impl Only {
    /// The registry name and version of `spec`, when it is to be looked up.
    fn wants(self, spec: &CrateSpec) -> Option<(&str, Option<&semver::Version>)> {
        match spec {
            CrateSpec::Registry { name, version }
                if self == Only::Registry || version.is_none() =>
            {
                Some((name, version.as_ref()))
            }
            _ => None,
        }
    }
}

/// Each entry of `specs` that `only` wants looked up in the index (others `None`): its id, or why
/// it names nothing. Distinct names are fetched concurrently (the index bounds the requests in
/// flight); an index that cannot answer is a 503.
async fn lookup_all(
    index: &SparseIndex,
    specs: &[CrateSpec],
    only: Only,
) -> Result<Vec<Option<Result<CrateId, String>>>, ApiError> {
    // lowercased: the index's paths ignore ASCII case
    let mut names: Vec<String> = specs
        .iter()
        .filter_map(|s| only.wants(s).map(|(name, _)| name.to_ascii_lowercase()))
        .collect();
    names.sort();
    names.dedup();
    let mut files = HashMap::with_capacity(names.len());
    let mut fetches = futures::stream::iter(names)
        .map(|key: String| async move {
            let file = index.versions(&key).await;
            (key, file)
        })
        .buffer_unordered(crate::sparse::DEFAULT_CONCURRENCY * 4);
    while let Some((key, file)) = fetches.next().await {
        let file = file.map_err(|e| {
            tracing::warn!(error = %e, "registry index lookup failed");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                REGISTRY_UNAVAILABLE,
                e.to_string(),
            )
            .with_field("crates")
        })?;
        files.insert(key, file);
    }
    Ok(specs
        .iter()
        .map(|s| {
            let (name, version) = only.wants(s)?;
            Some(match &files[&name.to_ascii_lowercase()] {
                None => Err(format!(
                    "crate {name:?} is not in the registry index at {}",
                    index.url()
                )),
                Some(versions) => pick(name, versions, version).map_err(|e| e.to_string()),
            })
        })
        .collect())
}

/// The ids, or a 422 naming the first bad entry (by `field(i)`) and up to [`MORE_NAMED`] others.
fn entries_or_422(
    looked_up: Vec<Option<Result<CrateId, String>>>,
    field: impl Fn(usize) -> String,
) -> Result<Vec<Option<CrateId>>, ApiError> {
    let bad: Vec<(usize, &String)> = looked_up
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            Some(Err(message)) => Some((i, message)),
            _ => None,
        })
        .collect();
    if let Some(&(first, message)) = bad.first() {
        let mut message = message.clone();
        if bad.len() > 1 {
            let others: Vec<String> = bad[1..]
                .iter()
                .take(MORE_NAMED)
                .map(|(i, m)| format!("{}: {m}", field(*i)))
                .collect();
            let more = bad.len() - 1 - others.len();
            message.push_str(&format!(
                "; {} more invalid: {}{}",
                bad.len() - 1,
                others.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        return Err(ApiError::invalid(field(first), message));
    }
    Ok(looked_up
        .into_iter()
        .map(|r| r.and_then(Result::ok))
        .collect())
}
