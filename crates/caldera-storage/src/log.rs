//! Logs: stored zstd-compressed, compressed and decompressed while streaming on blocking threads.

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::error::StorageError;
use crate::key::ObjectKey;
use crate::store::{ByteStream, ObjectBody, ObjectStore, PutOptions, open_file_stream};

/// Content type recorded for logs.
pub const LOG_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// Content encoding recorded for logs.
pub const LOG_CONTENT_ENCODING: &str = "zstd";
/// Metadata entry holding a log's uncompressed size in bytes.
pub const ORIGINAL_SIZE_METADATA: &str = "original-size";
/// zstd level for logs: fast, and logs compress well anyway.
pub(crate) const ZSTD_LEVEL: i32 = 3;
const CHUNK: usize = 128 * 1024;

/// The uncompressed bytes of a log, from memory, a stream or a file.
pub enum LogBody {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A stream of exactly `size` bytes (the size is recorded as metadata before the body is read; a
    /// stream of another length fails the put and stores nothing).
    Stream {
        /// The bytes.
        stream: ByteStream,
        /// Their total length.
        size: u64,
    },
    /// A file on local disk, read from the start.
    File(PathBuf),
}

impl std::fmt::Debug for LogBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogBody::Bytes(b) => write!(f, "LogBody::Bytes({} bytes)", b.len()),
            LogBody::Stream { size, .. } => write!(f, "LogBody::Stream({size} bytes)"),
            LogBody::File(p) => write!(f, "LogBody::File({})", p.display()),
        }
    }
}

impl From<Bytes> for LogBody {
    fn from(b: Bytes) -> Self {
        LogBody::Bytes(b)
    }
}

impl From<Vec<u8>> for LogBody {
    fn from(b: Vec<u8>) -> Self {
        LogBody::Bytes(b.into())
    }
}

impl From<String> for LogBody {
    fn from(s: String) -> Self {
        LogBody::Bytes(s.into())
    }
}

impl From<&'static str> for LogBody {
    fn from(s: &'static str) -> Self {
        LogBody::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl LogBody {
    /// The stream and its announced size.
    pub(crate) async fn open(self, key: &ObjectKey) -> Result<(ByteStream, u64), StorageError> {
        match self {
            LogBody::Bytes(b) => {
                let n = b.len() as u64;
                Ok((crate::store::bytes_stream(b), n))
            }
            LogBody::Stream { stream, size } => Ok((exact_len(stream, size), size)),
            LogBody::File(path) => {
                let (stream, size) =
                    open_file_stream(&path)
                        .await
                        .map_err(|source| StorageError::Body {
                            key: key.to_string(),
                            source: io::Error::new(
                                source.kind(),
                                format!("{}: {source}", path.display()),
                            ),
                        })?;
                // The file may grow or shrink while we read it; enforce what was announced.
                Ok((exact_len(stream, size), size))
            }
        }
    }
}

/// Sizes of a stored log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStats {
    /// Uncompressed size.
    pub original_size: u64,
    /// Size as stored (compressed).
    pub stored_size: u64,
}

/// Fails the stream if it does not yield exactly `size` bytes.
fn exact_len(stream: ByteStream, size: u64) -> ByteStream {
    let mut seen = 0u64;
    let mut done = false;
    let mut inner = stream;
    futures::stream::poll_fn(move |cx| {
        if done {
            return std::task::Poll::Ready(None);
        }
        match inner.poll_next_unpin(cx) {
            std::task::Poll::Ready(Some(Ok(chunk))) => {
                seen += chunk.len() as u64;
                if seen > size {
                    done = true;
                    return std::task::Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the body is longer than the announced {size} bytes"),
                    ))));
                }
                std::task::Poll::Ready(Some(Ok(chunk)))
            }
            std::task::Poll::Ready(None) => {
                done = true;
                if seen != size {
                    return std::task::Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body has {seen} bytes, not the announced {size}"),
                    ))));
                }
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    })
    .boxed()
}

/// Runs `work` on a blocking thread, reading from `input` and sending chunks of its output.
fn pipe_blocking<S, F>(input: S, work: F) -> ByteStream
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    F: FnOnce(
            SyncIoBridge<StreamReader<S, Bytes>>,
            &mut dyn FnMut(Bytes) -> bool,
        ) -> io::Result<()>
        + Send
        + 'static,
{
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let reader = SyncIoBridge::new(StreamReader::new(input));
    tokio::task::spawn_blocking(move || {
        let mut send = |chunk: Bytes| tx.blocking_send(Ok(chunk)).is_ok();
        if let Err(e) = work(reader, &mut send) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

fn read_chunks(mut reader: impl Read, send: &mut dyn FnMut(Bytes) -> bool) -> io::Result<()> {
    let mut buf = BytesMut::new();
    loop {
        buf.resize(CHUNK, 0);
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        if !send(buf.split_to(n).freeze()) {
            // The consumer is gone (its put failed or was dropped): stop working.
            return Ok(());
        }
    }
}

/// Compresses a stream with zstd (with a content checksum) on a blocking thread.
pub(crate) fn compress(input: ByteStream, level: i32) -> ByteStream {
    pipe_blocking(input, move |reader, send| {
        let mut encoder = zstd::stream::read::Encoder::new(reader, level)?;
        encoder.include_checksum(true)?;
        read_chunks(encoder, send)
    })
}

/// Decompresses a zstd stream on a blocking thread. Errors of `input` come out unchanged; bad frames,
/// and output beyond `expected` bytes or short of it, become [`StorageError::Corrupt`].
fn decompress(
    store: &str,
    key: &ObjectKey,
    input: ObjectBody,
    expected: Option<u64>,
) -> ObjectBody {
    let io_input = input.map(|r| r.map_err(io::Error::other)).boxed();
    let out = pipe_blocking(io_input, move |reader, send| {
        let decoder = zstd::stream::read::Decoder::new(reader)?;
        let mut total = 0u64;
        let mut checked = |chunk: Bytes| {
            total += chunk.len() as u64;
            send(chunk)
        };
        let limit = expected.map(|e| e + 1).unwrap_or(u64::MAX);
        read_chunks(decoder.take(limit), &mut checked)?;
        if let Some(expected) = expected
            && total != expected
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "decompressed to {}{total} bytes, but its `{ORIGINAL_SIZE_METADATA}` metadata says {expected}",
                    if total > expected { "more than " } else { "" }
                ),
            ));
        }
        Ok(())
    });
    let store = store.to_owned();
    let key = key.to_string();
    out.map(move |r| {
        r.map_err(|e| {
            // An error of the underlying object stream travels through the decoder unchanged.
            if e.get_ref().is_some_and(|inner| inner.is::<StorageError>()) {
                let inner = e.into_inner().expect("checked");
                return *inner.downcast::<StorageError>().expect("checked");
            }
            StorageError::Corrupt {
                store: store.clone(),
                key: key.clone(),
                reason: format!("not a valid zstd log: {e}"),
            }
        })
    })
    .boxed()
}

/// Stores a log under `key`, zstd-compressed, with content type [`LOG_CONTENT_TYPE`], content encoding
/// [`LOG_CONTENT_ENCODING`] and its uncompressed size as [`ORIGINAL_SIZE_METADATA`] metadata.
///
/// Compression runs on a blocking thread while the compressed bytes stream to the store. The store's
/// size cap applies to the compressed bytes; over it, nothing is stored.
pub async fn put_log(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    body: impl Into<LogBody>,
) -> Result<LogStats, StorageError> {
    let (stream, original_size) = body.into().open(key).await?;
    let stored_size = store
        .put(
            key,
            compress(stream, ZSTD_LEVEL),
            log_put_options(original_size),
        )
        .await?;
    Ok(LogStats {
        original_size,
        stored_size,
    })
}

/// A log as [`put_log`] stores it, for writers that keep it elsewhere before the store (the
/// worker's upload spool): the compressed stream, the put options, and the uncompressed size.
pub async fn compressed_log(
    key: &ObjectKey,
    body: impl Into<LogBody>,
) -> Result<(ByteStream, PutOptions, u64), StorageError> {
    let (stream, original_size) = body.into().open(key).await?;
    Ok((
        compress(stream, ZSTD_LEVEL),
        log_put_options(original_size),
        original_size,
    ))
}

pub(crate) fn log_put_options(original_size: u64) -> PutOptions {
    PutOptions {
        content_type: Some(LOG_CONTENT_TYPE.to_owned()),
        content_encoding: Some(LOG_CONTENT_ENCODING.to_owned()),
        metadata: [(ORIGINAL_SIZE_METADATA.to_owned(), original_size.to_string())].into(),
    }
}

/// Reads a log stored by [`put_log`] as a stream of decompressed bytes.
///
/// Fails with [`StorageError::Corrupt`] if the object is not a zstd log, and the stream fails if the
/// data does not decompress to the recorded original size.
pub async fn get_log(store: &dyn ObjectStore, key: &ObjectKey) -> Result<ObjectBody, StorageError> {
    let object = store.get(key).await?;
    if object.meta.content_encoding.as_deref() != Some(LOG_CONTENT_ENCODING) {
        return Err(StorageError::Corrupt {
            store: store.describe().to_owned(),
            key: key.to_string(),
            reason: format!(
                "content encoding is {:?}, not `{LOG_CONTENT_ENCODING}`: not a log stored by put_log",
                object.meta.content_encoding
            ),
        });
    }
    let expected = match object.meta.metadata.get(ORIGINAL_SIZE_METADATA) {
        Some(v) => Some(v.parse::<u64>().map_err(|_| StorageError::Corrupt {
            store: store.describe().to_owned(),
            key: key.to_string(),
            reason: format!("`{ORIGINAL_SIZE_METADATA}` metadata {v:?} is not a number"),
        })?),
        None => None,
    };
    Ok(decompress(store.describe(), key, object.body, expected))
}

/// Reads a whole log into memory, refusing logs whose uncompressed size exceeds `max_len`.
pub async fn read_log(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    max_len: u64,
) -> Result<Bytes, StorageError> {
    let body = get_log(store, key).await?;
    crate::store::collect_body(store.describe(), key, body, max_len).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("e/log.zst").unwrap()
    }

    async fn collect(mut body: ObjectBody) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn frame(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn body_of(chunks: Vec<Result<Bytes, StorageError>>) -> ObjectBody {
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn compress_then_decompress() {
        let data = "line\n".repeat(100_000).into_bytes();
        let compressed = compress(crate::store::bytes_stream(data.clone()), 3);
        let compressed: Vec<u8> = compressed.map(|c| c.unwrap().to_vec()).concat().await;
        assert!(compressed.len() < data.len() / 20);
        let body = body_of(vec![Ok(Bytes::from(compressed))]);
        let out = collect(decompress("store", &key(), body, Some(data.len() as u64)))
            .await
            .unwrap();
        assert!(out == data);
    }

    #[tokio::test]
    async fn errors_of_the_object_stream_pass_through_unchanged() {
        let f = frame(&vec![b'x'; 1_000_000]);
        let body = body_of(vec![
            Ok(Bytes::copy_from_slice(&f[..f.len() / 2])),
            Err(StorageError::Unavailable {
                store: "S3 bucket `logs`".into(),
                op: "read",
                key: "e/log.zst".into(),
                cause: "connection reset".into(),
            }),
        ]);
        let err = collect(decompress("S3 bucket `logs`", &key(), body, None))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn bad_data_and_wrong_sizes_are_corrupt() {
        let garbage = body_of(vec![Ok(Bytes::from_static(b"not zstd at all"))]);
        let err = collect(decompress("s", &key(), garbage, None))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");

        let truncated = frame(b"hello world, hello world");
        let body = body_of(vec![Ok(Bytes::copy_from_slice(
            &truncated[..truncated.len() - 3],
        ))]);
        let err = collect(decompress("s", &key(), body, None))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");

        for expected in [5, 100] {
            let body = body_of(vec![Ok(Bytes::from(frame(b"0123456789")))]);
            let err = collect(decompress("s", &key(), body, Some(expected)))
                .await
                .unwrap_err();
            assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("original-size"), "{err}");
        }
    }

    #[tokio::test]
    async fn announced_lengths_are_enforced() {
        for (len, announced) in [(10usize, 9u64), (10, 11)] {
            let stream = exact_len(crate::store::bytes_stream(vec![1u8; len]), announced);
            let results: Vec<_> = stream.collect().await;
            assert!(results.last().unwrap().is_err(), "{len} vs {announced}");
        }
        let ok: Vec<_> = exact_len(crate::store::bytes_stream(vec![1u8; 10]), 10)
            .collect()
            .await;
        assert!(ok.iter().all(Result::is_ok));
    }
}
