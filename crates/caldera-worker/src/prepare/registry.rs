//! Registry crates: the index entry (from the sparse index cargo's configuration names), the
//! `.crate` download checked against the index's sha256, and its safe unpacking.

use std::io;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tame_index::KrateName;
use tame_index::external::http;
use tame_index::index::{
    FileLock, IndexConfig, IndexEntry, IndexLocation, IndexPath, IndexUrl, SparseIndex,
};
use tokio::io::AsyncWriteExt;

use super::unpack::{UnpackError, unpack_crate};
use super::{HostToolchain, PrepareError, PrepareReport, Preparer, sha256_hex};

/// A registry crate as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCrate {
    pub checksum: String,
    pub yanked: bool,
    pub download_url: String,
}

impl Preparer {
    /// The registry index's entry for `name@version` (see the module docs).
    pub async fn registry_lookup(
        &self,
        name: &str,
        version: &semver::Version,
        cargo_version: &semver::Version,
    ) -> Result<RegistryCrate, PrepareError> {
        let index = self.open_index(cargo_version).await?;
        let index_config = self.index_config(&index).await?;
        let krate = KrateName::cargo(name)
            .map_err(|e| PrepareError::Crate(format!("crate name {name:?}: {e}")))?;
        let response = self.index_response(&index, krate).await?;
        let lock = FileLock::unlocked();
        let entry = index
            .parse_remote_response(krate, &response, false, &lock)
            .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?
            .ok_or_else(|| {
                PrepareError::Crate(format!("crate {name} is not in the registry index"))
            })?;
        find_version(&entry, name, version, index_config)
    }

    /// The registry index cargo's configuration names (found by `tame-index` from `config_root`
    /// and the cargo home), as `cargo_version` sees it. Only sparse (HTTP) indexes are read.
    async fn open_index(
        &self,
        cargo_version: &semver::Version,
    ) -> Result<SparseIndex, PrepareError> {
        let config = &self.inner.config;
        let utf8 = |p: &Path| {
            tame_index::PathBuf::from_path_buf(p.to_owned())
                .map_err(|p| PrepareError::Infra(format!("{} is not a UTF-8 path", p.display())))
        };
        let config_root = utf8(&config.config_root)?;
        let cargo_home = utf8(&config.cargo_home)?;
        let cv = cargo_version.to_string();
        let cargo_version = cargo_version.clone();
        tokio::task::spawn_blocking(move || {
            let url = IndexUrl::crates_io(Some(config_root), Some(&cargo_home), Some(&cv))
                .map_err(|e| PrepareError::Infra(format!("finding the registry index: {e}")))?;
            if !url.is_sparse() {
                return Err(PrepareError::Infra(format!(
                    "the registry index {} is not a sparse (HTTP) index; this worker reads only \
                 sparse indexes (set registries.crates-io.protocol = \"sparse\" in the cargo \
                 home's config.toml)",
                    url.as_str()
                )));
            }
            SparseIndex::new(IndexLocation {
                url,
                root: IndexPath::UserSpecified(cargo_home),
                cargo_version: Some(cargo_version),
            })
            .map_err(|e| PrepareError::Infra(format!("opening the registry index: {e}")))
        })
        .await
        .map_err(|e| PrepareError::Infra(format!("index task: {e}")))?
    }

    /// The registry's `config.json` (read once per process). A registry that requires
    /// authentication is refused.
    async fn index_config(&self, index: &SparseIndex) -> Result<&IndexConfig, PrepareError> {
        let index_config = self
            .inner
            .index_config
            .get_or_try_init(|| async {
                let url = format!("{}config.json", index.url());
                let body = self.http_get(&url, 1 << 20).await?;
                serde_json::from_slice::<IndexConfig>(&body).map_err(|e| {
                    PrepareError::Infra(format!("the registry's {url} is not valid: {e}"))
                })
            })
            .await?;
        if index_config.auth_required {
            return Err(PrepareError::Infra(
                "the registry requires authentication, which this worker does not support".into(),
            ));
        }
        Ok(index_config)
    }

    /// The index file of `krate`, fetched the way cargo's sparse protocol does. A server error or
    /// a rate limit is `Infra`; any other answer is for the index to read.
    async fn index_response(
        &self,
        index: &SparseIndex,
        krate: KrateName<'_>,
    ) -> Result<http::Response<Vec<u8>>, PrepareError> {
        let url = index.crate_url(krate);
        let response = self
            .inner
            .http
            .get(&url)
            .header("cargo-protocol", "version=1")
            .header("accept", "text/plain")
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("registry index request {url}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(PrepareError::Infra(format!(
                "registry index request {url}: {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| PrepareError::Infra(format!("registry index response {url}: {e}")))?;
        let mut http_response = http::Response::new(body.to_vec());
        *http_response.status_mut() = http::StatusCode::from_u16(status.as_u16())
            .map_err(|e| PrepareError::Infra(format!("registry index status {status}: {e}")))?;
        Ok(http_response)
    }

    /// GETs `url`, refusing more than `cap` bytes; any failure is `Infra`.
    async fn http_get(&self, url: &str, cap: u64) -> Result<Vec<u8>, PrepareError> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("GET {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(PrepareError::Infra(format!(
                "GET {url}: {}",
                response.status()
            )));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PrepareError::Infra(format!("GET {url}: {e}")))?;
            body.extend_from_slice(&chunk);
            if body.len() as u64 > cap {
                return Err(PrepareError::Infra(format!(
                    "GET {url}: more than {cap} bytes"
                )));
            }
        }
        Ok(body)
    }

    /// Downloads (or reuses) the verified `.crate` file of `name@version`; returns its path.
    async fn download_crate(
        &self,
        name: &str,
        version: &semver::Version,
        entry: &RegistryCrate,
        report: &mut PrepareReport,
    ) -> Result<PathBuf, PrepareError> {
        let config = &self.inner.config;
        let file = format!("{name}-{version}.crate");
        let path = config.downloads_dir.join(&file);
        if reuse_download(&path, &file, &entry.checksum, report).await? {
            return Ok(path);
        }
        let url = &entry.download_url;
        report.line(format!("downloading {url}"));
        let what = format!("{name} {version}");
        let response = self.request_download(url, &what).await?;
        let tmp = config
            .downloads_dir
            .join(format!(".{name}-{version}.{:x}.tmp", rand::random::<u64>()));
        let result = async {
            self.save_download(response, &tmp, &what, &entry.checksum, report)
                .await?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| PrepareError::Infra(format!("moving {}: {e}", tmp.display())))
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result.map(|()| path)
    }

    /// Asks the registry for the `.crate` file of `what` (`NAME VERSION`). A 404 or 410 is the
    /// crate's (the registry does not have it); any other failure is `Infra`.
    async fn request_download(
        &self,
        url: &str,
        what: &str,
    ) -> Result<reqwest::Response, PrepareError> {
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| PrepareError::Infra(format!("downloading {what}: {e}")))?;
        let status = response.status();
        if status.as_u16() == 404 || status.as_u16() == 410 {
            return Err(PrepareError::Crate(format!(
                "downloading {what}: the registry answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(PrepareError::Infra(format!(
                "downloading {what}: the registry answered {status}"
            )));
        }
        Ok(response)
    }

    /// Writes the download into `tmp`, refusing more than the configured size, and checks its
    /// sha256 against `checksum`, the index's.
    async fn save_download(
        &self,
        response: reqwest::Response,
        tmp: &Path,
        what: &str,
        checksum: &str,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let max_download_bytes = self.inner.config.max_download_bytes;
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| PrepareError::Infra(format!("creating {}: {e}", tmp.display())))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| PrepareError::Infra(format!("downloading {what}: {e}")))?;
            size += chunk.len() as u64;
            if size > max_download_bytes {
                return Err(PrepareError::Crate(format!(
                    "{what}: the .crate file is larger than {max_download_bytes} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PrepareError::Infra(format!("writing {}: {e}", tmp.display())))?;
        }
        file.sync_all()
            .await
            .map_err(|e| PrepareError::Infra(format!("writing {}: {e}", tmp.display())))?;
        let sum = hex::encode(hasher.finalize());
        if sum != checksum {
            return Err(PrepareError::Crate(format!(
                "checksum mismatch for {what}: the download has sha256 {sum}, the registry index \
                 says {checksum}"
            )));
        }
        report.line(format!("downloaded {size} bytes, sha256 {sum} verified"));
        Ok(())
    }

    /// Puts the registry crate `name@version` into `src`: looked up in the index (and checked
    /// against the crate id's checksum, `expected`, when it has one), downloaded and unpacked.
    pub(super) async fn fetch_registry_crate(
        &self,
        name: &str,
        version: &semver::Version,
        expected: Option<&str>,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let entry = self
            .registry_lookup(name, version, &start.cargo_version)
            .await?;
        report.line(format!(
            "registry index: {name} {version} sha256 {}{}",
            entry.checksum,
            if entry.yanked { " (yanked)" } else { "" }
        ));
        if let Some(expected) = expected
            && expected != entry.checksum
        {
            return Err(PrepareError::Crate(format!(
                "checksum mismatch for {name} {version}: the crate id says {expected}, the \
                 registry index says {}",
                entry.checksum
            )));
        }
        let archive = self.download_crate(name, version, &entry, report).await?;
        let prefix = format!("{name}-{version}");
        let limits = self.inner.config.unpack_limits;
        let dest = src.to_owned();
        let stats = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&archive)?;
            Ok::<_, io::Error>(unpack_crate(
                io::BufReader::new(file),
                &dest,
                &prefix,
                &limits,
            ))
        })
        .await
        .map_err(|e| PrepareError::Infra(format!("unpack task: {e}")))?
        .map_err(|e| PrepareError::Infra(format!("opening the downloaded crate: {e}")))?
        .map_err(|e| match e {
            UnpackError::Invalid(reason) => {
                PrepareError::Crate(format!("unsafe or corrupt .crate archive: {reason}"))
            }
            e @ UnpackError::Io { .. } => PrepareError::Infra(format!("unpacking: {e}")),
        })?;
        report.line(format!(
            "unpacked {} files, {} directories, {} symlinks, {} bytes",
            stats.files, stats.dirs, stats.symlinks, stats.bytes
        ));
        Ok(())
    }
}

/// Whether the `.crate` file already at `path` (named `file`) can be used: its sha256 is still
/// `checksum`, the index's. One that is not is removed, to be downloaded again.
async fn reuse_download(
    path: &Path,
    file: &str,
    checksum: &str,
    report: &mut PrepareReport,
) -> Result<bool, PrepareError> {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return Ok(false);
    };
    let sum = tokio::task::spawn_blocking(move || sha256_hex(&bytes))
        .await
        .map_err(|e| PrepareError::Infra(format!("checksum task: {e}")))?;
    if sum == checksum {
        report.line(format!(
            "reusing the downloaded {file} (sha256 {sum} verified)"
        ));
        return Ok(true);
    }
    let _ = tokio::fs::remove_file(path).await;
    Ok(false)
}

/// `version` of crate `name` in its index entry, with the download URL the index's `config.json`
/// gives it.
fn find_version(
    entry: &IndexEntry<'_, '_>,
    name: &str,
    version: &semver::Version,
    index_config: &IndexConfig,
) -> Result<RegistryCrate, PrepareError> {
    let wanted = version.to_string();
    let iter = entry
        .iter()
        .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?;
    for v in iter {
        let v = v
            .deserialize()
            .map_err(|e| PrepareError::Infra(format!("registry index entry of {name}: {e}")))?;
        if v.version.as_str() == wanted {
            let download_url = v.download_url(index_config).ok_or_else(|| {
                PrepareError::Infra(format!("no download URL for {name} {wanted}"))
            })?;
            return Ok(RegistryCrate {
                checksum: hex::encode(v.checksum.0),
                yanked: v.yanked,
                download_url,
            });
        }
    }
    Err(PrepareError::Crate(format!(
        "version {wanted} of crate {name} is not in the registry index"
    )))
}
