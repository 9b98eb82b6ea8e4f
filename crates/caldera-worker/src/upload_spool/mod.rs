//! The upload spool: objects (the sides' build logs) waiting for object storage, kept on the
//! worker's disk until the store has them.
//!
//! Not to be confused with the [result spool](crate::result_spool). This one holds bulk bytes on
//! their way to the *object store* and forgets an object once the store has it; the result spool
//! holds the small job results on their way to the *master* and forgets one once the master
//! acknowledges it. A side's log goes through this spool first: the result naming its key is sent
//! only once the log is durable ([`UploadSpool::wait_durable`]).
//!
//! Layout of the spool directory:
//!
//! ```text
//! lock                  held (flock) by the one process using the spool
//! tmp/                  entries being written
//! pending/{seq}.entry   one object waiting for upload: header (key, content type, encoding,
//!                       metadata as JSON) followed by the bytes to store
//! failed/{seq}.entry    objects the store refused permanently, with {seq}.error saying why
//! ```
//!
//! An entry (module `entry`) is written to `tmp/`, fsynced and renamed into `pending/`: once
//! [`UploadSpool::enqueue`] returns, the object survives a crash. Entries are uploaded in order
//! by a background task (module `upload`), retried with exponential backoff and jitter while the
//! error is transient, and deleted once the store has them. A crash between the store accepting
//! an object and the entry's deletion uploads it again after the restart; puts are idempotent,
//! so the store still ends up with one object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use caldera_storage::frame::fsync_dir;
use caldera_storage::{
    ByteStream, LogBody, LogStats, ObjectKey, ObjectStore, PutOptions, StorageError, bytes_stream,
    compressed_log, file_stream,
};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use entry::{Entry, entry_name, scan, write_entry};
use upload::dispatch;

mod entry;
mod upload;

/// Outcomes remembered for [`UploadSpool::wait_durable`]; beyond this, successful ones are forgotten (and
/// `wait_durable` asks the store instead).
const MAX_OUTCOMES: usize = 10_000;

/// How an [`UploadSpool`] behaves.
#[derive(Clone, Debug)]
pub struct UploadSpoolConfig {
    /// The spool directory (on local disk, ideally the same file system as the files enqueued).
    pub dir: PathBuf,
    /// First retry delay after a transient failure.
    pub min_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
    /// How many uploads run at once.
    pub concurrency: usize,
}

impl UploadSpoolConfig {
    /// Defaults: backoff from 1 s to 2 min, two concurrent uploads.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        UploadSpoolConfig {
            dir: dir.into(),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
            concurrency: 2,
        }
    }
}

/// The bytes of an object to enqueue.
pub enum UploadBody {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file, copied into the spool (so the caller may delete it as soon as `enqueue` returns).
    File(PathBuf),
    /// A stream, written into the spool.
    Stream(ByteStream),
}

impl std::fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadBody::Bytes(b) => write!(f, "UploadBody::Bytes({} bytes)", b.len()),
            UploadBody::File(p) => write!(f, "UploadBody::File({})", p.display()),
            UploadBody::Stream(_) => f.write_str("UploadBody::Stream"),
        }
    }
}

impl From<Bytes> for UploadBody {
    fn from(b: Bytes) -> Self {
        UploadBody::Bytes(b)
    }
}

impl From<Vec<u8>> for UploadBody {
    fn from(b: Vec<u8>) -> Self {
        UploadBody::Bytes(b.into())
    }
}

/// What happened to a spooled object; see [`UploadSpool::subscribe`].
#[derive(Clone, Debug)]
pub enum UploadEvent {
    /// The object is in the store and its spool entry is gone.
    Durable {
        /// The key.
        key: ObjectKey,
    },
    /// An upload attempt failed with a transient error; the next attempt follows after `delay`.
    Retrying {
        /// The key.
        key: ObjectKey,
        /// How many attempts have failed so far.
        attempt: u32,
        /// Why the attempt failed (the error's message).
        error: String,
        /// Delay before the next attempt.
        delay: Duration,
    },
    /// The store refused the object permanently; its entry moved to `failed/`.
    Failed {
        /// The key.
        key: ObjectKey,
        /// Why.
        error: Arc<StorageError>,
    },
}

#[derive(Default)]
struct State {
    /// Entries waiting for an upload slot, by sequence number.
    queue: BTreeMap<u64, Entry>,
    /// Entries per key, queued or being uploaded.
    pending: HashMap<ObjectKey, usize>,
    /// Keys with an upload under way (one at a time per key, so the last enqueued wins).
    busy: HashSet<ObjectKey>,
    /// The outcome of the last upload of each key.
    outcomes: HashMap<ObjectKey, Result<(), Arc<StorageError>>>,
    closed: bool,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    config: UploadSpoolConfig,
    label: String,
    pending_dir: PathBuf,
    failed_dir: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    wake: Notify,
    events: broadcast::Sender<UploadEvent>,
    next_seq: AtomicU64,
    _lock: std::fs::File,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn entry_path(&self, seq: u64) -> PathBuf {
        self.pending_dir.join(entry_name(seq))
    }

    fn io_err(&self, op: &'static str, key: &ObjectKey) -> impl FnOnce(io::Error) -> StorageError {
        StorageError::io(&self.label, op, key)
    }
}

/// A durable upload queue in front of an [`ObjectStore`], for workers.
///
/// [`enqueue`](UploadSpool::enqueue) writes the object to the spool directory (atomically, fsynced) and
/// returns; a background task uploads it, retrying transient failures (unreachable store, timeouts,
/// 5xx) with exponential backoff and jitter for as long as it takes. [`wait_durable`](UploadSpool::wait_durable)
/// resolves once the object is in the store; [`subscribe`](UploadSpool::subscribe) reports every upload,
/// retry and failure. Entries still pending when the process stops are uploaded by the next
/// [`UploadSpool::open`] of the same directory. Only one process may use a spool directory at a time.
pub struct UploadSpool {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for UploadSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSpool")
            .field("dir", &self.shared.config.dir)
            .field("store", &self.shared.store.describe())
            .finish_non_exhaustive()
    }
}

impl UploadSpool {
    /// Opens the spool directory (creating it if needed), queues every entry left pending by an earlier
    /// process, and starts uploading. Fails if another process holds the spool.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        config: UploadSpoolConfig,
    ) -> Result<UploadSpool, StorageError> {
        let label = format!("upload spool `{}`", config.dir.display());
        let dir = config.dir.clone();
        let label2 = label.clone();
        let (lock, entries, max_seq) = tokio::task::spawn_blocking(move || scan(&dir, &label2))
            .await
            .map_err(|e| StorageError::Io {
                store: label.clone(),
                op: "open",
                key: String::new(),
                source: io::Error::other(e),
            })??;
        let (changed, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let mut state = State::default();
        for entry in entries {
            *state.pending.entry(entry.key.clone()).or_default() += 1;
            state.queue.insert(entry.seq, entry);
        }
        if !state.queue.is_empty() {
            tracing::info!(spool = %label, pending = state.queue.len(), "resuming uploads left pending by an earlier run");
        }
        let shared = Arc::new(Shared {
            store,
            pending_dir: config.dir.join("pending"),
            failed_dir: config.dir.join("failed"),
            tmp_dir: config.dir.join("tmp"),
            config,
            label,
            state: Mutex::new(state),
            changed,
            wake: Notify::new(),
            events,
            next_seq: AtomicU64::new(max_seq + 1),
            _lock: lock,
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(dispatch(shared.clone(), cancel.clone()));
        Ok(UploadSpool {
            shared,
            cancel,
            task: Some(task),
        })
    }

    /// The store uploads go to.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.store
    }

    /// Writes an object to the spool and returns its size; it is uploaded in the background. Once this
    /// returns the object survives a crash of the process. Objects over the store's size cap are
    /// refused here, leaving nothing behind.
    pub async fn enqueue(
        &self,
        key: ObjectKey,
        body: impl Into<UploadBody>,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        options.validate(&key)?;
        let stream = match body.into() {
            UploadBody::Bytes(b) => bytes_stream(b),
            UploadBody::Stream(s) => s,
            UploadBody::File(path) => {
                let file =
                    tokio::fs::File::open(&path)
                        .await
                        .map_err(|source| StorageError::Body {
                            key: key.to_string(),
                            source: io::Error::new(
                                source.kind(),
                                format!("{}: {source}", path.display()),
                            ),
                        })?;
                file_stream(file)
            }
        };
        self.enqueue_stream(key, stream, options).await
    }

    /// Compresses a log (like [`put_log`](caldera_storage::put_log)) into the spool; it is uploaded in the
    /// background.
    pub async fn enqueue_log(
        &self,
        key: ObjectKey,
        body: impl Into<LogBody>,
    ) -> Result<LogStats, StorageError> {
        let (stream, options, original_size) = compressed_log(&key, body).await?;
        let stored_size = self.enqueue_stream(key, stream, options).await?;
        Ok(LogStats {
            original_size,
            stored_size,
        })
    }

    async fn enqueue_stream(
        &self,
        key: ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        let shared = &self.shared;
        if shared.state().closed {
            return Err(StorageError::SpoolClosed {
                spool: shared.label.clone(),
                key: key.to_string(),
            });
        }
        let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
        let tmp = shared.tmp_dir.join(format!("{seq:020}.tmp"));
        let written = match write_entry(shared, &tmp, &key, body, options).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let path = shared.entry_path(seq);
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(shared.io_err("move into the queue", &key)(e));
        }
        fsync_dir(&shared.pending_dir)
            .await
            .map_err(shared.io_err("fsync the queue for", &key))?;
        {
            let mut state = shared.state();
            *state.pending.entry(key.clone()).or_default() += 1;
            state.outcomes.remove(&key);
            state.queue.insert(seq, Entry { seq, key });
        }
        shared.bump();
        shared.wake.notify_one();
        Ok(written)
    }

    /// Resolves once `key` is in the store: immediately if its last upload already succeeded, else
    /// when the upload of its last enqueued entry does. Fails with [`StorageError::UploadFailed`] if
    /// the store refused it permanently, [`StorageError::SpoolClosed`] if the spool shuts down first,
    /// and [`StorageError::NotSpooled`] for a key this spool never held that is not in the store either.
    pub async fn wait_durable(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let shared = &self.shared;
        let mut rx = shared.changed.subscribe();
        loop {
            {
                let state = shared.state();
                if state.pending.get(key).copied().unwrap_or(0) == 0 {
                    match state.outcomes.get(key) {
                        Some(Ok(())) => return Ok(()),
                        Some(Err(e)) => {
                            return Err(StorageError::UploadFailed {
                                key: key.to_string(),
                                source: e.clone(),
                            });
                        }
                        None => break,
                    }
                }
                if state.closed {
                    return Err(StorageError::SpoolClosed {
                        spool: shared.label.clone(),
                        key: key.to_string(),
                    });
                }
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::SpoolClosed {
                    spool: shared.label.clone(),
                    key: key.to_string(),
                });
            }
        }
        // Not held by this spool (uploaded by an earlier run, or forgotten): ask the store.
        match shared.store.head(key).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Err(StorageError::NotSpooled {
                spool: shared.label.clone(),
                store: shared.store.describe().to_owned(),
                key: key.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Resolves once nothing is pending.
    pub async fn wait_idle(&self) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            {
                let state = self.shared.state();
                if state.pending.is_empty() || state.closed {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keys with an entry waiting or being uploaded.
    pub fn pending(&self) -> Vec<ObjectKey> {
        let mut keys: Vec<_> = self.shared.state().pending.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// A receiver of every [`UploadEvent`] from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<UploadEvent> {
        self.shared.events.subscribe()
    }

    /// Stops uploading (cancelling uploads under way) and releases the directory. Pending entries stay
    /// on disk for the next [`UploadSpool::open`].
    pub async fn shutdown(mut self) {
        self.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn close(&self) {
        self.cancel.cancel();
        self.shared.state().closed = true;
        self.shared.bump();
    }
}

impl Drop for UploadSpool {
    fn drop(&mut self) {
        self.close();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
