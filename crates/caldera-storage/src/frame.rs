//! The on-disk framing shared by the local store's objects and the upload spool's entries: an
//! 8-byte magic naming the kind of file, the JSON header's length (`u32`, little endian), the
//! JSON header, then the body.

use std::io;
use std::path::Path;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::StorageError;
use crate::key::ObjectKey;
use crate::store::{ByteStream, Capped};

/// The magic and header length before the JSON header.
pub const FIXED_LEN: usize = 12;
/// A longer header is corruption, not a header.
const MAX_HEADER_JSON: u32 = 64 * 1024;

/// The bytes before the body: magic, header length, header.
pub fn prefix(magic: &[u8; 8], header: &impl serde::Serialize) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("header serializes");
    let mut prefix = Vec::with_capacity(FIXED_LEN + json.len());
    prefix.extend_from_slice(magic);
    prefix.extend_from_slice(&(json.len() as u32).to_le_bytes());
    prefix.extend_from_slice(&json);
    prefix
}

/// The JSON header's length, from the first [`FIXED_LEN`] bytes of a file that must start with
/// `magic`; `what` names the kind of file in the error.
pub fn header_len(magic: &[u8; 8], what: &str, fixed: &[u8; FIXED_LEN]) -> Result<u32, String> {
    if &fixed[..8] != magic {
        return Err(format!("not {what} (bad magic)"));
    }
    let len = u32::from_le_bytes(fixed[8..].try_into().expect("4 bytes"));
    if len > MAX_HEADER_JSON {
        return Err(format!("header length {len} is implausible"));
    }
    Ok(len)
}

/// Writes `prefix`, then at most `cap` bytes of `body`, to `file` and syncs it; returns the body's
/// length. `io` turns an I/O failure of `"write"` or `"fsync"` into the caller's error; `store`
/// names the store in a [`StorageError::TooLarge`].
pub async fn write(
    file: &mut tokio::fs::File,
    prefix: &[u8],
    mut body: ByteStream,
    cap: u64,
    store: &str,
    key: &ObjectKey,
    io: impl Fn(&'static str, io::Error) -> StorageError,
) -> Result<u64, StorageError> {
    file.write_all(prefix).await.map_err(|e| io("write", e))?;
    let mut capped = Capped::new(cap);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| StorageError::Body {
            key: key.to_string(),
            source,
        })?;
        if !capped.add(chunk.len()) {
            return Err(StorageError::TooLarge {
                store: store.to_owned(),
                key: key.to_string(),
                cap,
            });
        }
        file.write_all(&chunk).await.map_err(|e| io("write", e))?;
    }
    file.flush().await.map_err(|e| io("write", e))?;
    file.sync_all().await.map_err(|e| io("fsync", e))?;
    Ok(capped.written)
}

/// Makes a directory's entries (a rename, a new file) durable.
pub async fn fsync_dir(dir: &Path) -> io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}
