//! The registry's database dump (CSV files) read into a [`RegistryListing`].

use std::collections::HashMap;
use std::io::Read;

use super::{Candidate, CrateEntry, RegistryError, RegistryListing, normalize};
use crate::crates::{validate_checksum, validate_crate_name};

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

/// The files of a database dump to read (the dump's `data/` folder): `crates.csv` and
/// `versions.csv`, and when present `crate_downloads.csv` and `dependencies.csv`.
#[derive(Debug)]
pub struct DbDump<R> {
    /// `crates.csv`.
    pub crates: R,
    /// `versions.csv`.
    pub versions: R,
    /// `crate_downloads.csv`: downloads, replacing those of `crates.csv` (a crate it does not
    /// mention has 0).
    pub crate_downloads: Option<R>,
    /// `dependencies.csv`: what each selected version depends on (for `rdeps:NAME`, and for
    /// `top:N` when there are no downloads).
    pub dependencies: Option<R>,
}

impl RegistryListing {
    /// Reads the database dump's `crates.csv` and `versions.csv`. Downloads come from the
    /// `downloads` column of `crates.csv` when it has one.
    pub fn from_db_dump(
        crates_csv: impl Read,
        versions_csv: impl Read,
    ) -> Result<Self, RegistryError> {
        Self::from_dump(DbDump::<Box<dyn Read + '_>> {
            crates: Box::new(crates_csv),
            versions: Box::new(versions_csv),
            crate_downloads: None,
            dependencies: None,
        })
    }

    /// Like [`RegistryListing::from_db_dump`], with downloads read from `crate_downloads.csv`
    /// (`crate_id`, `downloads`), as in dumps where `crates.csv` no longer has them. A crate that
    /// file does not mention has 0 downloads.
    pub fn from_db_dump_with_downloads(
        crates_csv: impl Read,
        versions_csv: impl Read,
        crate_downloads_csv: impl Read,
    ) -> Result<Self, RegistryError> {
        Self::from_dump(DbDump::<Box<dyn Read + '_>> {
            crates: Box::new(crates_csv),
            versions: Box::new(versions_csv),
            crate_downloads: Some(Box::new(crate_downloads_csv)),
            dependencies: None,
        })
    }

    /// Reads a database dump's files (see [`DbDump`]).
    pub fn from_dump(dump: DbDump<impl Read>) -> Result<Self, RegistryError> {
        let mut listing = RegistryListing::new();
        let names = listing.read_crates_csv(dump.crates)?;
        if let Some(reader) = dump.crate_downloads {
            listing.read_downloads_csv(reader, &names)?;
        }
        listing.read_versions_csv(dump.versions, &names)?;
        if let Some(reader) = dump.dependencies {
            listing.read_dependencies_csv(reader, &names)?;
        }
        Ok(listing)
    }

    /// Reads `dependencies.csv`: the dependencies of every selected version (rows of other
    /// versions are skipped). `kind` is 0 (normal), 1 (build) or 2 (dev).
    fn read_dependencies_csv(
        &mut self,
        reader: impl Read,
        names: &HashMap<String, String>,
    ) -> Result<(), RegistryError> {
        const DEPENDENCIES: &str = "dependencies.csv";
        // The crate of every selected version, by the version's id.
        let by_version: HashMap<String, String> = self
            .crates
            .iter()
            .filter_map(|(name, e)| Some((e.selected()?.dump_id.clone()?, name.clone())))
            .collect();
        let mut found: Vec<(String, String, bool)> = Vec::new();
        CsvTable::open(
            DEPENDENCIES,
            reader,
            &["version_id", "crate_id", "kind"],
            &[],
        )?
        .for_each(|line, cells| {
            let kind = cells[2].unwrap_or_default();
            let dev = match kind.trim() {
                "0" | "1" => false,
                "2" => true,
                _ => {
                    return Err(invalid(
                        DEPENDENCIES,
                        line,
                        "kind",
                        kind,
                        "expected 0 (normal), 1 (build) or 2 (dev)",
                    ));
                }
            };
            let Some(dependent) = by_version.get(cells[0].unwrap_or_default()) else {
                return Ok(());
            };
            let id = cells[1].unwrap_or_default();
            let target = names.get(id).ok_or_else(|| RegistryError::UnknownCrateId {
                file: DEPENDENCIES,
                line,
                id: id.to_owned(),
            })?;
            found.push((dependent.clone(), normalize(target), dev));
            Ok(())
        })?;
        for (dependent, target, dev) in found {
            let Some(candidate) = self
                .crates
                .get_mut(&dependent)
                .and_then(CrateEntry::selected_mut)
            else {
                continue;
            };
            candidate.add_dep(&normalize(&dependent), target, dev);
        }
        Ok(())
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
            &["id"],
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
                let mut candidate = Candidate::new(version, checksum);
                candidate.dump_id = cells[4].map(str::to_owned);
                entry.offer(candidate);
            }
            Ok(())
        })?;
        Ok(())
    }
}
