//! The lockfile, once per (experiment, crate): the stored one when object storage holds it, else
//! the shipped one (brought up to date) or a generated one — or, under the `fresh` policy, always
//! a generated one — stored before anything is built, so both sides, and any retry of the job,
//! build the same dependency versions.

use std::path::Path;

use bytes::Bytes;
use caldera_core::experiment::LockfilePolicy;
use caldera_storage::{ObjectKey, PutOptions, StorageError};

use super::{HostToolchain, PrepareError, PrepareReport, Preparer, sha256_hex};

/// Where the lockfile a job builds with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockfileOrigin {
    /// Object storage already held one for this experiment and crate.
    Stored,
    /// The crate shipped one (brought up to date the way `cargo build` would); now stored.
    Shipped,
    /// Generated with `cargo generate-lockfile` by the start toolchain; now stored.
    Generated,
    /// Generated the same way although the crate shipped one (the `fresh` policy); now stored.
    Fresh,
}

impl LockfileOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            LockfileOrigin::Stored => "stored",
            LockfileOrigin::Shipped => "shipped",
            LockfileOrigin::Generated => "generated",
            LockfileOrigin::Fresh => "fresh",
        }
    }
}

fn storage_infra(what: &str, e: &StorageError) -> PrepareError {
    PrepareError::Infra(format!("{what}: {e}"))
}

impl Preparer {
    /// Puts the lockfile both sides build with into `src`, and into object storage as `key` when
    /// it was not there yet. Returns where it came from and its sha256.
    pub(super) async fn settle_lockfile(
        &self,
        key: &ObjectKey,
        policy: LockfilePolicy,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(LockfileOrigin, String), PrepareError> {
        let lock_path = src.join("Cargo.lock");
        let origin = self
            .obtain_lockfile(key, policy, start, src, report)
            .await?;
        let lock_bytes = tokio::fs::read(&lock_path).await.map_err(|e| {
            PrepareError::Crate(format!("no Cargo.lock after lockfile generation: {e}"))
        })?;
        let lockfile_sha256 = sha256_hex(&lock_bytes);
        if origin != LockfileOrigin::Stored {
            self.inner
                .store
                .put_bytes(
                    key,
                    Bytes::from(lock_bytes),
                    PutOptions::content_type("text/plain; charset=utf-8"),
                )
                .await
                .map_err(|e| storage_infra("storing the lockfile", &e))?;
            report.line(format!("stored the {} lockfile as {key}", origin.as_str()));
        }
        report.line(format!(
            "lockfile: {} (sha256 {lockfile_sha256})",
            origin.as_str()
        ));
        Ok((origin, lockfile_sha256))
    }

    /// Writes `src/Cargo.lock`: the stored lockfile `key` when there is one; else the shipped one,
    /// brought up to date, or one generated with `start`'s cargo (always, under `fresh`).
    async fn obtain_lockfile(
        &self,
        key: &ObjectKey,
        policy: LockfilePolicy,
        start: &HostToolchain,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<LockfileOrigin, PrepareError> {
        let lock_path = src.join("Cargo.lock");
        match self.inner.store.get_bytes(key).await {
            Ok(bytes) => {
                tokio::fs::write(&lock_path, &bytes)
                    .await
                    .map_err(|e| PrepareError::Infra(format!("writing Cargo.lock: {e}")))?;
                report.line(format!("using the stored lockfile {key}"));
                Ok(LockfileOrigin::Stored)
            }
            Err(e) if e.is_not_found() => {
                let shipped = tokio::fs::try_exists(&lock_path).await.unwrap_or(false);
                if shipped && policy == LockfilePolicy::Fresh {
                    tokio::fs::remove_file(&lock_path).await.map_err(|e| {
                        PrepareError::Infra(format!("removing the shipped Cargo.lock: {e}"))
                    })?;
                    report.line("lockfile policy fresh: the shipped Cargo.lock is not used");
                    self.cargo(start, src, &["generate-lockfile"], report)
                        .await?;
                    Ok(LockfileOrigin::Fresh)
                } else if shipped {
                    // `cargo metadata` brings a stale shipped lockfile up to date minimally, as
                    // `cargo build` would for a user
                    self.cargo(start, src, &["metadata", "--format-version", "1"], report)
                        .await?;
                    Ok(LockfileOrigin::Shipped)
                } else {
                    self.cargo(start, src, &["generate-lockfile"], report)
                        .await?;
                    Ok(LockfileOrigin::Generated)
                }
            }
            Err(e) => Err(storage_infra("reading the stored lockfile", &e)),
        }
    }
}
