//! The [`ObjectStore`] trait and the types it speaks.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::io::ReaderStream;

use crate::error::StorageError;
use crate::key::ObjectKey;

/// The body of a put: a stream of chunks, failing with the caller's I/O error.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// The body of a get: a stream of chunks, failing with a [`StorageError`] naming the store and key.
pub type ObjectBody = BoxStream<'static, Result<Bytes, StorageError>>;

/// What to record with an object besides its bytes. Its JSON is the header of a framed file (a
/// local object, an upload-spool entry; see [`crate::frame`]): absent fields are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PutOptions {
    /// MIME type, e.g. `text/plain; charset=utf-8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Content encoding, e.g. `zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// User metadata. Names are lower-case `[a-z0-9-]` (S3 lower-cases them anyway), values printable
    /// ASCII; at most 2 KiB in total, as in S3.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl PutOptions {
    /// Options with just a content type.
    pub fn content_type(content_type: impl Into<String>) -> Self {
        PutOptions {
            content_type: Some(content_type.into()),
            ..PutOptions::default()
        }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Checks that every backend can store these options faithfully.
    pub fn validate(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let err = |reason: String| StorageError::InvalidMetadata {
            key: key.to_string(),
            reason,
        };
        let header_value = |v: &str| v.bytes().all(|b| (0x20..0x7f).contains(&b));
        if let Some(ct) = &self.content_type
            && (ct.is_empty() || !header_value(ct))
        {
            return Err(err(format!(
                "content type {ct:?} must be non-empty printable ASCII"
            )));
        }
        if let Some(ce) = &self.content_encoding
            && (ce.is_empty() || !header_value(ce))
        {
            return Err(err(format!(
                "content encoding {ce:?} must be non-empty printable ASCII"
            )));
        }
        let mut total = 0;
        for (name, value) in &self.metadata {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(err(format!(
                    "metadata name {name:?} must be non-empty lower-case [a-z0-9-]"
                )));
            }
            if !header_value(value) {
                return Err(err(format!(
                    "metadata value of {name:?} must be printable ASCII"
                )));
            }
            total += name.len() + value.len();
        }
        if total > 2048 {
            return Err(err(format!(
                "metadata is {total} bytes, more than the 2048 S3 allows"
            )));
        }
        Ok(())
    }
}

/// What [`ObjectStore::head`] tells about an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size of the stored bytes.
    pub size: u64,
    /// MIME type, if one was recorded.
    pub content_type: Option<String>,
    /// Content encoding, if one was recorded.
    pub content_encoding: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
}

/// One entry of [`ObjectStore::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key (relative to the store's root, like every key).
    pub key: ObjectKey,
    /// Size of the stored bytes.
    pub size: u64,
}

/// An object being read: its metadata and a stream of its bytes.
pub struct GetObject {
    /// Size, content type and metadata.
    pub meta: ObjectMeta,
    /// The bytes. Errors in the middle (connection lost, …) come as a `StorageError` item.
    pub body: ObjectBody,
}

impl fmt::Debug for GetObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetObject")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// A place to keep objects. Object-safe: use it as `Arc<dyn ObjectStore>`.
///
/// Keys are [`ObjectKey`]s, validated when they are made. Prefixes (for `list` and `delete_prefix`) are
/// keys too and match whole segments: the prefix `experiments/e1` covers `experiments/e1/a/b` but not
/// `experiments/e10/a`, nor an object named exactly `experiments/e1`.
///
/// A put is atomic: readers see the old object (or none) until the new one is complete, and a put that
/// fails (body error, over the size cap, store error) leaves nothing behind.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Names the store for messages, e.g. ``S3 bucket `logs` `` or ``local directory `/srv/objects` ``.
    fn describe(&self) -> &str;

    /// The largest object this store accepts, in bytes as stored.
    fn max_object_size(&self) -> u64;

    /// Stores `body` under `key`, replacing any object there. Returns the number of bytes stored.
    ///
    /// Fails with [`StorageError::TooLarge`] (and stores nothing) once the body exceeds
    /// [`max_object_size`](Self::max_object_size).
    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<u64, StorageError>;

    /// Opens the object for reading. Fails with [`StorageError::NotFound`] if it does not exist.
    async fn get(&self, key: &ObjectKey) -> Result<GetObject, StorageError>;

    /// Size, content type and metadata of the object. Fails with [`StorageError::NotFound`] if it does
    /// not exist.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError>;

    /// Every object under `prefix`, sorted by key. (Collected into memory: an experiment's keys, not
    /// its bytes.)
    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes every object under `prefix`; returns how many were deleted (0 if there were none).
    async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<u64, StorageError>;

    /// Stores `bytes` under `key`.
    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        self.put(key, bytes_stream(bytes), options).await
    }

    /// Reads a whole object into memory (at most [`max_object_size`](Self::max_object_size) bytes).
    async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let object = self.get(key).await?;
        collect_body(self.describe(), key, object.body, self.max_object_size()).await
    }

    /// Whether the object exists.
    async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A [`ByteStream`] of one chunk.
pub fn bytes_stream(bytes: impl Into<Bytes>) -> ByteStream {
    stream::once(futures::future::ready(Ok(bytes.into()))).boxed()
}

/// A [`ByteStream`] reading a file from its current position to the end (64 KiB chunks).
pub fn file_stream(file: tokio::fs::File) -> ByteStream {
    ReaderStream::with_capacity(file, 64 * 1024).boxed()
}

/// Opens a file as a [`ByteStream`], with its size.
pub(crate) async fn open_file_stream(path: &Path) -> io::Result<(ByteStream, u64)> {
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    Ok((file_stream(file), size))
}

/// Collects an [`ObjectBody`] into memory, failing with [`StorageError::TooLargeToRead`] past `cap` bytes.
pub async fn collect_body(
    store: &str,
    key: &ObjectKey,
    mut body: ObjectBody,
    cap: u64,
) -> Result<Bytes, StorageError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if (buf.len() + chunk.len()) as u64 > cap {
            return Err(StorageError::TooLargeToRead {
                store: store.to_owned(),
                key: key.to_string(),
                cap,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Counts the bytes of a put body and enforces the size cap.
pub(crate) struct Capped {
    pub(crate) written: u64,
    cap: u64,
}

impl Capped {
    pub(crate) fn new(cap: u64) -> Self {
        Capped { written: 0, cap }
    }

    /// Accounts for `n` more bytes; false once the cap is exceeded.
    pub(crate) fn add(&mut self, n: usize) -> bool {
        self.written += n as u64;
        self.written <= self.cap
    }
}
