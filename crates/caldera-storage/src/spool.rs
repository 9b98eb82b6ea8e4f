//! The worker's durable upload spool.
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
//! An entry is written to `tmp/`, fsynced and renamed into `pending/`: once [`Spool::enqueue`] returns,
//! the object survives a crash. Entries are uploaded in order by a background task, retried with
//! exponential backoff and jitter while the error is transient, and deleted once the store has them.
//! A crash between the store accepting an object and the entry's deletion uploads it again after the
//! restart; puts are idempotent, so the store still ends up with one object.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::TryLockError;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::StorageError;
use crate::frame::{self, fsync_dir};
use crate::key::ObjectKey;
use crate::log::{LogBody, LogStats, ZSTD_LEVEL, compress, log_put_options};
use crate::store::{ByteStream, ObjectStore, PutOptions, bytes_stream, file_stream};

const MAGIC: &[u8; 8] = b"CALDSPL1";
/// Outcomes remembered for [`Spool::wait_durable`]; beyond this, successful ones are forgotten (and
/// `wait_durable` asks the store instead).
const MAX_OUTCOMES: usize = 10_000;

/// How a [`Spool`] behaves.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// The spool directory (on local disk, ideally the same file system as the files enqueued).
    pub dir: PathBuf,
    /// First retry delay after a transient failure.
    pub min_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
    /// How many uploads run at once.
    pub concurrency: usize,
}

impl SpoolConfig {
    /// Defaults: backoff from 1 s to 2 min, two concurrent uploads.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(120),
            concurrency: 2,
        }
    }
}

/// The bytes of an object to enqueue.
pub enum SpoolBody {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file, copied into the spool (so the caller may delete it as soon as `enqueue` returns).
    File(PathBuf),
    /// A stream, written into the spool.
    Stream(ByteStream),
}

impl std::fmt::Debug for SpoolBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolBody::Bytes(b) => write!(f, "SpoolBody::Bytes({} bytes)", b.len()),
            SpoolBody::File(p) => write!(f, "SpoolBody::File({})", p.display()),
            SpoolBody::Stream(_) => f.write_str("SpoolBody::Stream"),
        }
    }
}

impl From<Bytes> for SpoolBody {
    fn from(b: Bytes) -> Self {
        SpoolBody::Bytes(b)
    }
}

impl From<Vec<u8>> for SpoolBody {
    fn from(b: Vec<u8>) -> Self {
        SpoolBody::Bytes(b.into())
    }
}

/// What happened to a spooled object; see [`Spool::subscribe`].
#[derive(Clone, Debug)]
pub enum SpoolEvent {
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

#[derive(Serialize, Deserialize)]
struct EntryHeader {
    key: ObjectKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

impl EntryHeader {
    fn options(&self) -> PutOptions {
        PutOptions {
            content_type: self.content_type.clone(),
            content_encoding: self.content_encoding.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    key: ObjectKey,
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
    config: SpoolConfig,
    label: String,
    pending_dir: PathBuf,
    failed_dir: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    wake: Notify,
    events: broadcast::Sender<SpoolEvent>,
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
        let store = self.label.clone();
        let key = key.to_string();
        move |source| StorageError::Io {
            store,
            op,
            key,
            source,
        }
    }
}

fn entry_name(seq: u64) -> String {
    format!("{seq:020}.entry")
}

/// A durable upload queue in front of an [`ObjectStore`], for workers.
///
/// [`enqueue`](Spool::enqueue) writes the object to the spool directory (atomically, fsynced) and
/// returns; a background task uploads it, retrying transient failures (unreachable store, timeouts,
/// 5xx) with exponential backoff and jitter for as long as it takes. [`wait_durable`](Spool::wait_durable)
/// resolves once the object is in the store; [`subscribe`](Spool::subscribe) reports every upload,
/// retry and failure. Entries still pending when the process stops are uploaded by the next
/// [`Spool::open`] of the same directory. Only one process may use a spool directory at a time.
pub struct Spool {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.config.dir)
            .field("store", &self.shared.store.describe())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens the spool directory (creating it if needed), queues every entry left pending by an earlier
    /// process, and starts uploading. Fails if another process holds the spool.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        config: SpoolConfig,
    ) -> Result<Spool, StorageError> {
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
        Ok(Spool {
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
        body: impl Into<SpoolBody>,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        options.validate(&key)?;
        let stream = match body.into() {
            SpoolBody::Bytes(b) => bytes_stream(b),
            SpoolBody::Stream(s) => s,
            SpoolBody::File(path) => {
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

    /// Compresses a log (like [`put_log`](crate::put_log)) into the spool; it is uploaded in the
    /// background.
    pub async fn enqueue_log(
        &self,
        key: ObjectKey,
        body: impl Into<LogBody>,
    ) -> Result<LogStats, StorageError> {
        let (stream, original_size) = body.into().open(&key).await?;
        let stored_size = self
            .enqueue_stream(
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

    /// A receiver of every [`SpoolEvent`] from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SpoolEvent> {
        self.shared.events.subscribe()
    }

    /// Stops uploading (cancelling uploads under way) and releases the directory. Pending entries stay
    /// on disk for the next [`Spool::open`].
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

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn write_entry(
    shared: &Shared,
    tmp: &Path,
    key: &ObjectKey,
    body: ByteStream,
    options: PutOptions,
) -> Result<u64, StorageError> {
    let header = EntryHeader {
        key: key.clone(),
        content_type: options.content_type,
        content_encoding: options.content_encoding,
        metadata: options.metadata,
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

/// Opens the spool directory: takes the lock, clears `tmp/`, reads the pending entries.
fn scan(dir: &Path, label: &str) -> Result<(std::fs::File, Vec<Entry>, u64), StorageError> {
    let io_err = |op: &'static str, path: &Path| {
        let store = label.to_owned();
        let key = path.display().to_string();
        move |source| StorageError::Io {
            store,
            op,
            key,
            source,
        }
    };
    let pending = dir.join("pending");
    let failed = dir.join("failed");
    let tmp = dir.join("tmp");
    for d in [&pending, &failed, &tmp] {
        std::fs::create_dir_all(d).map_err(io_err("create directory", d))?;
    }
    let lock_path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err("open lock file", &lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StorageError::Io {
                store: label.to_owned(),
                op: "lock",
                key: lock_path.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "another process is using this spool directory",
                ),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
    }
    // We hold the lock: anything in tmp/ is a leftover of a crashed enqueue.
    for entry in std::fs::read_dir(&tmp)
        .map_err(io_err("read", &tmp))?
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    let mut entries = Vec::new();
    let mut max_seq = 0;
    for entry in std::fs::read_dir(&pending).map_err(io_err("read", &pending))? {
        let entry = entry.map_err(io_err("read", &pending))?;
        let path = entry.path();
        let seq = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".entry"))
            .and_then(|n| n.parse::<u64>().ok());
        let Some(seq) = seq else {
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
    // Failed entries keep their numbers too, so new entries never reuse them.
    for entry in std::fs::read_dir(&failed).map_err(io_err("read", &failed))? {
        let entry = entry.map_err(io_err("read", &failed))?;
        if let Some(seq) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".entry"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            max_seq = max_seq.max(seq);
        }
    }
    entries.sort_by_key(|e| e.seq);
    Ok((lock, entries, max_seq))
}

/// The background task: starts uploads while slots are free.
async fn dispatch(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < shared.config.concurrency.max(1) {
            let next = {
                let mut state = shared.state();
                let seq = state
                    .queue
                    .values()
                    .find(|e| !state.busy.contains(&e.key))
                    .map(|e| e.seq);
                seq.and_then(|seq| state.queue.remove(&seq)).inspect(|e| {
                    state.busy.insert(e.key.clone());
                })
            };
            let Some(entry) = next else { break };
            tasks.spawn(upload(shared.clone(), entry));
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = shared.wake.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

async fn upload_once(shared: &Shared, entry: &Entry) -> Result<(), StorageError> {
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
    shared
        .store
        .put(&header.key, file_stream(file), header.options())
        .await?;
    Ok(())
}

async fn upload(shared: Arc<Shared>, entry: Entry) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(shared.config.min_backoff)
        .with_max_delay(shared.config.max_backoff)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut attempt = 0u32;
    let result = (|| upload_once(&shared, &entry))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &StorageError| e.is_transient())
        .notify(|e: &StorageError, delay: Duration| {
            attempt += 1;
            tracing::warn!(
                spool = %shared.label,
                key = %entry.key,
                attempt,
                retry_in = ?delay,
                error = %e,
                "upload failed; will retry"
            );
            let _ = shared.events.send(SpoolEvent::Retrying {
                key: entry.key.clone(),
                attempt,
                error: e.to_string(),
                delay,
            });
        })
        .await;
    let outcome = match result {
        Ok(()) => {
            let path = shared.entry_path(entry.seq);
            if let Err(e) = tokio::fs::remove_file(&path).await {
                // The object is in the store; at worst it is uploaded once more after a restart.
                tracing::error!(spool = %shared.label, key = %entry.key, error = %e, "could not remove an uploaded spool entry");
            } else if let Err(e) = fsync_dir(&shared.pending_dir).await {
                tracing::warn!(spool = %shared.label, error = %e, "could not fsync the spool directory");
            }
            let _ = shared.events.send(SpoolEvent::Durable {
                key: entry.key.clone(),
            });
            Ok(())
        }
        Err(e) => {
            tracing::error!(spool = %shared.label, key = %entry.key, error = %e, "upload failed permanently; moving the entry to failed/");
            let name = entry_name(entry.seq);
            let _ = tokio::fs::rename(shared.entry_path(entry.seq), shared.failed_dir.join(&name))
                .await;
            let _ = tokio::fs::write(
                shared.failed_dir.join(format!("{name}.error")),
                e.to_string(),
            )
            .await;
            let error = Arc::new(e);
            let _ = shared.events.send(SpoolEvent::Failed {
                key: entry.key.clone(),
                error: error.clone(),
            });
            Err(error)
        }
    };
    {
        let mut state = shared.state();
        state.busy.remove(&entry.key);
        if let Some(n) = state.pending.get_mut(&entry.key) {
            *n -= 1;
            if *n == 0 {
                state.pending.remove(&entry.key);
            }
        }
        if state.outcomes.len() >= MAX_OUTCOMES {
            state.outcomes.retain(|_, o| o.is_err());
        }
        state.outcomes.insert(entry.key.clone(), outcome);
    }
    shared.bump();
    shared.wake.notify_one();
}
