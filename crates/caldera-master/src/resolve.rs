//! Turning an experiment's crate selection into concrete crate identities when it starts.
//!
//! Explicit versions, git repositories and local paths resolve on their own. Unversioned registry
//! names and the whole-registry selections (`top:N`, `random:N`, `all`) need a listing of the
//! registry: the registry's database dump (`--registry-dump DIR` holding `crates.csv` and
//! `versions.csv`) or a checkout of its index (`--registry-index DIR`), loaded at startup.

use std::path::Path;

use caldera_core::crates::{CrateId, CrateSpec};
use caldera_core::experiment::ExperimentSpec;
use caldera_core::registry::RegistryListing;
use caldera_core::selection::CrateSelection;
use caldera_db::{PgPool, crate_lists};

use crate::error::ApiError;

/// Resolve the selection of `spec` to crate ids (deduplicated, in selection order).
pub async fn resolve(
    pool: &PgPool,
    registry: Option<&RegistryListing>,
    spec: &ExperimentSpec,
) -> Result<Vec<CrateId>, ApiError> {
    let specs: Vec<CrateSpec> = match &spec.crates {
        CrateSelection::List(specs) => specs.clone(),
        CrateSelection::CrateList { name } => {
            crate_lists::get(pool, name)
                .await
                .map_err(|e| ApiError::invalid("crates", format!("crate list {name:?}: {e}")))?
                .crates
        }
        whole => {
            let registry = registry.ok_or_else(|| {
                ApiError::invalid(
                    "crates",
                    format!(
                        "`{}` needs a listing of the whole registry; start the master with --registry-dump DIR or --registry-index DIR",
                        whole.kind()
                    ),
                )
            })?;
            return registry.select(whole).ok_or_else(|| {
                ApiError::invalid("crates", "the registry listing cannot serve this selection")
            });
        }
    };
    let mut out = Vec::with_capacity(specs.len());
    let mut seen = std::collections::HashSet::new();
    for s in specs {
        let id = match s {
            // the worker verifies the archive against the index checksum when it prepares the crate
            CrateSpec::Registry { name, version: Some(version) } => CrateId::Registry { name, version, checksum: None },
            CrateSpec::Registry { name, version: None } => registry.and_then(|r| r.latest(&name)).ok_or_else(|| match registry {
                Some(_) => ApiError::invalid("crates", format!("crate {name:?} is not in the registry listing")),
                None => ApiError::invalid(
                    "crates",
                    format!("crate {name:?} has no version: write {name}@VERSION, or start the master with a registry listing (--registry-dump / --registry-index) to pick the latest"),
                ),
            })?,
            CrateSpec::Git { url, rev } => CrateId::Git { url, rev: rev.unwrap_or_else(|| "HEAD".into()) },
            CrateSpec::Local { path } => CrateId::Local { path },
        };
        if seen.insert(id.to_string()) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Load a registry listing from a database dump directory (`crates.csv`, `versions.csv`, as in
/// the dump's `data/` folder).
pub fn load_db_dump(dir: &Path) -> Result<RegistryListing, String> {
    let open = |name: &str| {
        std::fs::File::open(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    RegistryListing::from_db_dump(
        std::io::BufReader::new(open("crates.csv")?),
        std::io::BufReader::new(open("versions.csv")?),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Load a registry listing from an index checkout (one file of JSON lines per crate).
pub fn load_index(dir: &Path) -> Result<RegistryListing, String> {
    let mut listing = RegistryListing::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", d.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "config.json" {
                continue;
            }
            let path = entry.path();
            let ty = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                listing
                    .add_index_file(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    Ok(listing)
}
