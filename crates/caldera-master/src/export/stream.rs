//! Streaming into the object store: a report file is produced on a blocking thread while the
//! store's `put` uploads it, through a bounded channel, so no file is built whole in memory.

use std::io::{self, Read, Write};

use bytes::Bytes;
use caldera_storage::{ByteStream, ObjectBody, ObjectKey, ObjectStore, PutOptions};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{CHUNK, ExportError, ZSTD_LEVEL, content_type};

/// A `Write` that hands chunks to an async consumer through a bounded channel. Blocking: use it
/// on a blocking thread only.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the object store stopped reading",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stores what `produce` writes (zstd-compressed if `compress`) under `key` while it is written.
/// A failure of either side stores nothing.
pub(super) async fn put_streamed(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    file: &'static str,
    compress: bool,
    produce: impl FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
) -> Result<u64, ExportError> {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let fail = tx.clone();
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let result = (|| {
            if compress {
                let mut z = zstd::Encoder::new(&mut w, ZSTD_LEVEL)?;
                produce(&mut z)?;
                z.finish()?;
            } else {
                produce(&mut w)?;
            }
            w.send()
        })();
        if let Err(e) = &result {
            // Fail the upload so nothing half-written is stored.
            let _ = fail.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    });
    let body: ByteStream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    let mut options = PutOptions::content_type(content_type(file));
    if compress {
        options.content_encoding = Some("zstd".into());
    }
    let (put, produced) = tokio::join!(store.put(key, body, options), producer);
    let produced = produced.map_err(|e| ExportError::Task(e.to_string()))?;
    match (put, produced) {
        (Ok(n), Ok(())) => Ok(n),
        // The producer's error explains the failed put better than the put's echo of it.
        (_, Err(source)) if source.kind() != io::ErrorKind::BrokenPipe => {
            Err(ExportError::Write { file, source })
        }
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(source)) => Err(ExportError::Write { file, source }),
    }
}

/// A stored object's body, decompressed from zstd while it streams (on a blocking thread).
pub fn decompress(body: ObjectBody) -> ByteStream {
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let reader =
            SyncIoBridge::new(StreamReader::new(body.map(|r| r.map_err(io::Error::other))));
        let mut decoder = match zstd::Decoder::new(reader) {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
