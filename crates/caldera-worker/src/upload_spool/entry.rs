//! Spool entries on disk: one object waiting for upload per file, in the storage crate's framing
//! (magic `CALDSPL1`, the JSON [`EntryHeader`], then the bytes to store), and reading back the
//! directory an earlier process left.

use std::fs::TryLockError;
use std::io;
use std::path::Path;

use caldera_storage::frame;
use caldera_storage::{ByteStream, ObjectKey, PutOptions, StorageError};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::Shared;

const MAGIC: &[u8; 8] = b"CALDSPL1";

/// What an entry says about its object, before the bytes.
#[derive(Serialize, Deserialize)]
pub(super) struct EntryHeader {
    pub(super) key: ObjectKey,
    /// Recorded with the object (the same JSON fields as a local object's header).
    #[serde(flatten)]
    pub(super) options: PutOptions,
}

/// An entry waiting in `pending/`: its sequence number (its file name) and the key it stores.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) key: ObjectKey,
}

pub(super) fn entry_name(seq: u64) -> String {
    format!("{seq:020}.entry")
}

/// The sequence number of an entry's file name (`{seq}.entry`); `None` for anything else.
fn entry_seq(name: &std::ffi::OsStr) -> Option<u64> {
    name.to_str()
        .and_then(|n| n.strip_suffix(".entry"))
        .and_then(|n| n.parse::<u64>().ok())
}

pub(super) async fn write_entry(
    shared: &Shared,
    tmp: &Path,
    key: &ObjectKey,
    body: ByteStream,
    options: PutOptions,
) -> Result<u64, StorageError> {
    let header = EntryHeader {
        key: key.clone(),
        options,
    };
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(shared.io_err("create an entry for", key))?;
    frame::write(
        &mut file,
        &frame::prefix(MAGIC, &header),
        body,
        shared.store.max_object_size(),
        shared.store.describe(),
        key,
        |op, e| {
            let op = if op == "fsync" {
                "fsync an entry for"
            } else {
                "write an entry for"
            };
            shared.io_err(op, key)(e)
        },
    )
    .await
}

/// Opens a pending entry for its upload: its header, and the file positioned at the bytes to
/// store.
pub(super) async fn open_entry(
    shared: &Shared,
    entry: &Entry,
) -> Result<(EntryHeader, tokio::fs::File), StorageError> {
    let path = shared.entry_path(entry.seq);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(shared.io_err("open the entry for", &entry.key))?;
    let mut fixed = [0u8; 12];
    file.read_exact(&mut fixed)
        .await
        .map_err(shared.io_err("read the entry for", &entry.key))?;
    let len = parse_fixed(&fixed).map_err(|reason| StorageError::Corrupt {
        store: shared.label.clone(),
        key: entry.key.to_string(),
        reason,
    })?;
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json)
        .await
        .map_err(shared.io_err("read the entry for", &entry.key))?;
    let header: EntryHeader = serde_json::from_slice(&json).map_err(|e| StorageError::Corrupt {
        store: shared.label.clone(),
        key: entry.key.to_string(),
        reason: e.to_string(),
    })?;
    Ok((header, file))
}

fn read_header_sync(path: &Path) -> Result<EntryHeader, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut fixed = [0u8; 12];
    file.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    let len = parse_fixed(&fixed)?;
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| format!("bad entry header: {e}"))
}

fn parse_fixed(fixed: &[u8; frame::FIXED_LEN]) -> Result<u32, String> {
    frame::header_len(MAGIC, "a spool entry", fixed)
}

/// An I/O error on `path` while the spool directory is opened.
fn dir_err(
    label: &str,
    op: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> StorageError + use<> {
    let store = label.to_owned();
    let key = path.display().to_string();
    move |source| StorageError::Io {
        store,
        op,
        key,
        source,
    }
}

/// Opens the spool directory: takes the lock, clears `tmp/`, reads the pending entries.
pub(super) fn scan(
    dir: &Path,
    label: &str,
) -> Result<(std::fs::File, Vec<Entry>, u64), StorageError> {
    let pending = dir.join("pending");
    let failed = dir.join("failed");
    let tmp = dir.join("tmp");
    for d in [&pending, &failed, &tmp] {
        std::fs::create_dir_all(d).map_err(dir_err(label, "create directory", d))?;
    }
    let lock = lock_dir(dir, label)?;
    // We hold the lock: anything in tmp/ is a leftover of a crashed enqueue.
    for entry in std::fs::read_dir(&tmp)
        .map_err(dir_err(label, "read", &tmp))?
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    let (mut entries, pending_max) = read_pending(&pending, &failed, label)?;
    // Failed entries keep their numbers too, so new entries never reuse them.
    let max_seq = pending_max.max(max_failed_seq(&failed, label)?);
    entries.sort_by_key(|e| e.seq);
    Ok((lock, entries, max_seq))
}

/// Takes the spool directory's lock: one process at a time.
fn lock_dir(dir: &Path, label: &str) -> Result<std::fs::File, StorageError> {
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(dir_err(label, "open lock file", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(StorageError::Io {
            store: label.to_owned(),
            op: "lock",
            key: lock_path.display().to_string(),
            source: io::Error::new(
                io::ErrorKind::ResourceBusy,
                "another process is using this spool directory",
            ),
        }),
        Err(TryLockError::Error(e)) => Err(dir_err(label, "lock", &lock_path)(e)),
    }
}

/// The entries in `pending/` and the highest sequence number there. An entry whose header cannot
/// be read moves to `failed/`, with why.
fn read_pending(
    pending: &Path,
    failed: &Path,
    label: &str,
) -> Result<(Vec<Entry>, u64), StorageError> {
    let mut entries = Vec::new();
    let mut max_seq = 0;
    for entry in std::fs::read_dir(pending).map_err(dir_err(label, "read", pending))? {
        let entry = entry.map_err(dir_err(label, "read", pending))?;
        let path = entry.path();
        let Some(seq) = entry_seq(&entry.file_name()) else {
            tracing::warn!(spool = label, path = %path.display(), "ignoring a file that is not a spool entry");
            continue;
        };
        max_seq = max_seq.max(seq);
        match read_header_sync(&path) {
            Ok(header) => entries.push(Entry {
                seq,
                key: header.key,
            }),
            Err(reason) => {
                tracing::error!(spool = label, path = %path.display(), %reason, "moving an unreadable spool entry to failed/");
                let name = entry_name(seq);
                let _ = std::fs::rename(&path, failed.join(&name));
                let _ = std::fs::write(failed.join(format!("{name}.error")), reason);
            }
        }
    }
    Ok((entries, max_seq))
}

/// The highest sequence number in `failed/` (0 if none).
fn max_failed_seq(failed: &Path, label: &str) -> Result<u64, StorageError> {
    let mut max_seq = 0;
    for entry in std::fs::read_dir(failed).map_err(dir_err(label, "read", failed))? {
        let entry = entry.map_err(dir_err(label, "read", failed))?;
        if let Some(seq) = entry_seq(&entry.file_name()) {
            max_seq = max_seq.max(seq);
        }
    }
    Ok(max_seq)
}
