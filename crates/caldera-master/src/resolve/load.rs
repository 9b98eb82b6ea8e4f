//! Loading a listing of the whole registry at startup: the registry's database dump
//! (`--registry-dump DIR`) or a checkout of its index (`--registry-index DIR`).

use std::io::BufReader;
use std::path::Path;

use caldera_core::registry::{DbDump, RegistryListing};

/// Load a registry listing from a database dump directory (as in the dump's `data/` folder):
/// `crates.csv` and `versions.csv`, and `crate_downloads.csv` and `dependencies.csv` when the
/// directory has them (see [`DbDump`]).
pub fn load_db_dump(dir: &Path) -> Result<RegistryListing, String> {
    let open = |name: &str| {
        std::fs::File::open(dir.join(name))
            .map(BufReader::new)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let optional = |name: &str| match dir.join(name).exists() {
        true => open(name).map(Some),
        false => Ok(None),
    };
    RegistryListing::from_dump(DbDump {
        crates: open("crates.csv")?,
        versions: open("versions.csv")?,
        crate_downloads: optional("crate_downloads.csv")?,
        dependencies: optional("dependencies.csv")?,
    })
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
