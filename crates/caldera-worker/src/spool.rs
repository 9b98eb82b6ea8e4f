//! The result spool: finished results that the master has not acknowledged yet, kept in an
//! append-only log.
//!
//! A result is written here, durably, *before* it is sent, and forgotten only when the master
//! acknowledges it, so neither a broken connection nor a worker restart loses finished work.
//!
//! # On disk
//!
//! The spool directory holds *segments*, `<sequence, 20 digits>.seg`, and a `LOCK` file. One
//! process at a time owns a directory: [`Spool::open`] takes an exclusive lock on `LOCK` and fails
//! if another process (or another [`Spool`] in this one) holds it.
//!
//! A segment starts with the 8 bytes `caldspl1` and is followed by records:
//!
//! ```text
//! length  u32 LE   length of the payload
//! crc     u32 LE   CRC-32 (IEEE) of the kind byte and the payload
//! kind    u8       1 = Result, 2 = Ack
//! payload          Result: the prost-encoded `caldera.v1.JobResult`
//!                  Ack:    job id (u64 LE), then the lease token (UTF-8, the rest of the payload)
//! ```
//!
//! Replaying the segments in sequence order gives the spool's content: a Result record makes
//! `(job id, lease token)` live (a later one for the same pair replaces the earlier), an Ack
//! record makes it dead.
//!
//! # Writing
//!
//! Appends go to the *active* segment, the newest. Writes are group-committed: results queued while
//! a write is in progress are encoded into one buffer by the next one, appended with one
//! `write`, then made durable by one `fdatasync`; each result is durable before its
//! [`write`](Spool::write) returns. [`remove`](Spool::remove) (on the master's acknowledgement)
//! queues an Ack record and returns at once: the Ack is written with the next batch and is *not*
//! synced on its own. An Ack lost in a crash only means the result is sent again after the restart,
//! and the master answers a duplicate with a rejection, which drops it.
//!
//! When the active segment has grown past [`SpoolOptions::segment_bytes`] (8 MiB by default), the
//! next batch starts a new one (the old one is synced first, the new one is created with its
//! header synced and the directory synced, so every segment but the newest is complete). An
//! in-memory index knows which segment holds each live result. A segment other than the active
//! one is deleted once none of its results is live any more — and once every older segment
//! that its records acknowledge or replace is gone, so that deleting it cannot bring an
//! acknowledged result back. So per result there is no file-system metadata operation at all; per
//! segment, one create and one delete.
//!
//! A write that fails (disk full, I/O error) fails every result of its batch; the segment is
//! truncated back to where the batch began and the next batch starts a new segment, so nothing is
//! ever appended after a torn write. (Should the truncation fail too, the torn bytes stay at the
//! end of a segment that is no longer the last, and the next `open` sets it aside as below — with
//! everything before them, which is everything that was reported durable, kept.)
//!
//! # Opening
//!
//! [`Spool::open`] replays every segment in order, then *compacts*: the live results are written
//! into a new segment (written, fdatasynced, directory synced), and only then are the old segments
//! deleted. What it does with damage:
//!
//! * **A torn tail in the last segment** (a crash in the middle of a write: a partial or
//!   CRC-mismatched record, a partial header): replay stops at the first bad record, and the
//!   segment is truncated there (synced) before compaction. Only bytes written after the last
//!   sync can be torn: results among them were never reported durable (their `write` had not
//!   returned), and Acks among them are simply lost (those results are sent again). A warning
//!   says how many bytes were cut.
//! * **A bad record in any other segment** (those are complete, so this is real corruption), or a
//!   file named like a segment that does not start with the header: the records before the bad one
//!   are kept, everything from the bad record to the end of that segment is lost, and the
//!   segment is renamed to `<name>.corrupt` (never deleted) with an error in the log, for an
//!   operator. Results whose Ack was in the lost part are sent again (and rejected by the master
//!   as duplicates); results whose Result record was in the lost part are lost — unless one was
//!   delivered already, its job runs again when the lease expires.
//!
//! Spools of the earlier format — one file per result, `<job id, 20 digits>-<lease token>.result`,
//! holding the prost-encoded result — are migrated by `open`: their results join the compacted
//! segment and the files are deleted after it is durable. Such a file that does not decode, or
//! whose content does not match its name, is renamed to `….corrupt`; leftover temporary files
//! (`.….tmp`) are deleted.
//!
//! [`Spool::read_dir_results`] reads a directory without owning it (another process may be
//! appending): it changes nothing, ignores a torn tail, and is a snapshot that may be momentarily
//! stale while the owner writes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use caldera_proto::v1::JobResult;
use prost::Message;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"caldspl1";
/// length, crc, kind
const RECORD_HEADER: usize = 9;
const KIND_RESULT: u8 = 1;
const KIND_ACK: u8 = 2;
/// No record is bigger (a result is a few hundred bytes; gRPC itself caps messages at 4 MiB).
const MAX_PAYLOAD: usize = 16 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
const CORRUPT_SUFFIX: &str = ".corrupt";
const LOCK_FILE: &str = "LOCK";
/// Spool files of the earlier one-file-per-result format.
const LEGACY_SUFFIX: &str = ".result";

/// Tuning of a [`Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// A batch that finds the active segment at least this big starts a new segment.
    pub segment_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 8 << 20,
        }
    }
}

/// `(job id, lease token)`
type Key = (u64, String);

fn key_of(r: &JobResult) -> Key {
    (r.job_id, r.lease_token.clone())
}

/// The result spool of one worker (see the module documentation). Clones share the spool.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: SpoolOptions,
    /// The queue and the index; held only briefly, never across I/O.
    state: Mutex<State>,
    /// The active segment and the segments' bookkeeping; held by the one writer at work.
    log: Mutex<Log>,
    /// Holds the directory's lock for as long as the spool is open.
    _lock: File,
}

type Waiter = tokio::sync::oneshot::Sender<io::Result<()>>;

#[derive(Debug)]
enum Op {
    /// Append a Result record and sync.
    Write(Box<JobResult>, Waiter),
    /// Append an Ack record if the result is live; no sync of its own.
    Ack(Key),
    /// Sync everything written so far.
    Flush(Waiter),
}

#[derive(Debug, Default)]
struct State {
    queue: Vec<Op>,
    /// A writer is at work (or about to be) and will take the queue.
    writing: bool,
    /// Every live result, and the segment holding its latest Result record.
    live: HashMap<Key, (u64, JobResult)>,
    /// Batches synced (for tests of the group commit).
    #[cfg(test)]
    syncs: u64,
}

#[derive(Debug)]
struct Log {
    file: File,
    seq: u64,
    len: u64,
    /// A write or sync failed: the next batch starts a new segment.
    broken: bool,
    /// Every segment on disk, the active one included.
    segments: BTreeMap<u64, Segment>,
}

#[derive(Debug, Default)]
struct Segment {
    /// Live results whose latest Result record is here.
    live: usize,
    /// Older segments holding records that this segment's records acknowledge or replace: this
    /// one may be deleted only after them.
    after: BTreeSet<u64>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The `(job id, lease token)` of a spool file of the earlier format; `None` for anything else.
fn parse_legacy_name(name: &str) -> Option<Key> {
    let stem = name.strip_suffix(LEGACY_SUFFIX)?;
    let (id, token) = stem.split_once('-')?;
    let safe_token = !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_digit()) || !safe_token {
        return None;
    }
    Some((id.parse().ok()?, token.to_owned()))
}

/// Where a damaged file is set aside.
fn corrupt_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(CORRUPT_SUFFIX);
    p.into()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies an `io::Error` (which is not `Clone`) for every waiter of a failed batch.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

// ---- records ----

fn put_record(buf: &mut Vec<u8>, kind: u8, payload: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf[start + 8] = kind;
    payload(buf);
    let len = buf.len() - start - RECORD_HEADER;
    if len > MAX_PAYLOAD {
        buf.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a spool record of {len} bytes is over the limit of {MAX_PAYLOAD}"),
        ));
    }
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_result(buf: &mut Vec<u8>, r: &JobResult) -> io::Result<()> {
    put_record(buf, KIND_RESULT, |b| {
        r.encode(b).expect("a Vec grows as needed")
    })
}

fn put_ack(buf: &mut Vec<u8>, (job_id, token): &Key) -> io::Result<()> {
    put_record(buf, KIND_ACK, |b| {
        b.extend_from_slice(&job_id.to_le_bytes());
        b.extend_from_slice(token.as_bytes());
    })
}

#[derive(Debug)]
enum Record {
    Result(Box<JobResult>),
    Ack(Key),
}

/// What a segment's bytes hold.
#[derive(Debug)]
struct Parsed {
    records: Vec<Record>,
    /// Bytes of the valid prefix: the header and every record in `records`.
    valid: usize,
    /// Why parsing stopped before the end, if it did.
    bad: Option<Bad>,
}

#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// The file is shorter than the header and what there is of it matches: a segment whose
    /// creation a crash interrupted.
    TornHeader,
    /// The file does not start with the header.
    NotASegment,
    /// A record that is incomplete, fails its checksum or does not decode.
    Record(String),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::TornHeader => f.write_str("incomplete segment header"),
            Bad::NotASegment => f.write_str("no segment header"),
            Bad::Record(why) => f.write_str(why),
        }
    }
}

fn parse_segment(data: &[u8]) -> Parsed {
    let mut out = Parsed {
        records: Vec::new(),
        valid: 0,
        bad: None,
    };
    if data.len() < MAGIC.len() {
        out.bad = Some(if MAGIC.starts_with(data) {
            Bad::TornHeader
        } else {
            Bad::NotASegment
        });
        return out;
    }
    if &data[..MAGIC.len()] != MAGIC {
        out.bad = Some(Bad::NotASegment);
        return out;
    }
    let mut pos = MAGIC.len();
    out.valid = pos;
    while pos < data.len() {
        match parse_record(&data[pos..]) {
            Ok((record, size)) => {
                out.records.push(record);
                pos += size;
                out.valid = pos;
            }
            Err(why) => {
                out.bad = Some(Bad::Record(format!("record at offset {pos}: {why}")));
                break;
            }
        }
    }
    out
}

/// One record from the start of `data`, and its size.
fn parse_record(data: &[u8]) -> Result<(Record, usize), String> {
    if data.len() < RECORD_HEADER {
        return Err(format!("incomplete record header ({} bytes)", data.len()));
    }
    let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(format!("impossible length {len}"));
    }
    let Some(body) = data.get(8..RECORD_HEADER + len) else {
        return Err(format!(
            "incomplete record ({} of {} bytes)",
            data.len(),
            RECORD_HEADER + len
        ));
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let (kind, payload) = (body[0], &body[1..]);
    let record = match kind {
        KIND_RESULT => Record::Result(Box::new(
            JobResult::decode(payload).map_err(|e| format!("undecodable result: {e}"))?,
        )),
        KIND_ACK if payload.len() >= 8 => {
            let job_id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let token = std::str::from_utf8(&payload[8..])
                .map_err(|_| "acknowledgement with a lease token that is not UTF-8".to_owned())?;
            Record::Ack((job_id, token.to_owned()))
        }
        KIND_ACK => return Err("acknowledgement too short".into()),
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok((record, RECORD_HEADER + len))
}

fn apply(live: &mut HashMap<Key, JobResult>, record: Record) {
    match record {
        Record::Result(r) => {
            live.insert(key_of(&r), *r);
        }
        Record::Ack(key) => {
            live.remove(&key);
        }
    }
}

fn sorted(results: impl IntoIterator<Item = JobResult>) -> Vec<JobResult> {
    let mut v: Vec<JobResult> = results.into_iter().collect();
    v.sort_by(|a, b| (a.job_id, &a.lease_token).cmp(&(b.job_id, &b.lease_token)));
    v
}

/// A result file of the earlier format, if it decodes and matches its name.
fn read_legacy(path: &Path, key: &Key) -> Result<JobResult, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let r = JobResult::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    if key_of(&r) == *key {
        Ok(r)
    } else {
        Err(format!("holds job {} lease {:?}", r.job_id, r.lease_token))
    }
}

// ---- the directory ----

#[derive(Debug, Default)]
struct Listing {
    /// By sequence.
    segments: Vec<(u64, PathBuf)>,
    /// The highest sequence in use, set-aside segments included.
    max_seq: Option<u64>,
    legacy: Vec<(Key, PathBuf)>,
    legacy_tmp: Vec<PathBuf>,
}

fn list(dir: &Path) -> io::Result<Listing> {
    let mut l = Listing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = parse_segment_name(&name) {
            l.segments.push((seq, entry.path()));
            l.max_seq = l.max_seq.max(Some(seq));
        } else if let Some(seq) = name
            .strip_suffix(CORRUPT_SUFFIX)
            .and_then(parse_segment_name)
        {
            l.max_seq = l.max_seq.max(Some(seq));
        } else if let Some(key) = parse_legacy_name(&name) {
            l.legacy.push((key, entry.path()));
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            l.legacy_tmp.push(entry.path());
        } else if name != LOCK_FILE && !name.ends_with(CORRUPT_SUFFIX) {
            tracing::warn!(file = %name, "ignoring a file in the spool directory that is not the spool's");
        }
    }
    l.segments.sort();
    Ok(l)
}

/// Creates segment `seq` holding `content` (which starts with the header), durably: the data
/// synced, then the directory.
fn create_segment(dir: &Path, seq: u64, content: &[u8]) -> io::Result<File> {
    let path = dir.join(segment_name(seq));
    let mut file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    let written = file.write_all(content).and_then(|()| file.sync_data());
    if let Err(e) = written.and_then(|()| sync_dir(dir)) {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

impl Spool {
    /// Open the spool in `dir` (created if missing) with the default options.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Spool> {
        Spool::open_with(dir, SpoolOptions::default())
    }

    /// Open the spool in `dir`: lock it, replay it, migrate files of the earlier format, compact
    /// (see the module documentation).
    pub fn open_with(dir: impl Into<PathBuf>, options: SpoolOptions) -> io::Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "another process (or another spool in this one) has this spool directory open",
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }

        let listing = list(&dir)?;
        for tmp in &listing.legacy_tmp {
            fs::remove_file(tmp)?;
            tracing::debug!(file = %tmp.display(), "removed a temporary spool file left by an earlier run");
        }
        let mut live = HashMap::new();
        let mut migrated = Vec::new();
        let mut legacy_corrupt = Vec::new();
        for (key, path) in &listing.legacy {
            match read_legacy(path, key) {
                Ok(r) => {
                    live.insert(key.clone(), r);
                    migrated.push(path);
                }
                Err(why) => {
                    tracing::error!(file = %path.display(), %why, "corrupt spooled result (earlier format) set aside as ….corrupt");
                    legacy_corrupt.push(path);
                }
            }
        }
        let last = listing.segments.last().map(|(seq, _)| *seq);
        let mut set_aside = HashSet::new();
        for (seq, path) in &listing.segments {
            let data = fs::read(path)?;
            let parsed = parse_segment(&data);
            for record in parsed.records {
                apply(&mut live, record);
            }
            let Some(bad) = parsed.bad else { continue };
            let torn = Some(*seq) == last && bad != Bad::NotASegment;
            if torn {
                tracing::warn!(
                    segment = %path.display(),
                    why = %bad,
                    cut_bytes = data.len() - parsed.valid,
                    "truncating the torn tail of the spool's last segment (a write interrupted when the worker last stopped)"
                );
                let file = File::options().write(true).open(path)?;
                file.set_len(parsed.valid as u64)?;
                file.sync_all()?;
            } else {
                tracing::error!(
                    segment = %path.display(),
                    why = %bad,
                    lost_bytes = data.len() - parsed.valid,
                    "corrupt spool segment: what follows the damage is lost (results in it run again); set aside as ….corrupt"
                );
                set_aside.insert(*seq);
            }
        }

        // compact: every live result into a new segment, durably, before anything old goes
        let seq = match listing.max_seq {
            None => 0,
            Some(max) => max
                .checked_add(1)
                .ok_or_else(|| io::Error::other("spool segment numbers exhausted"))?,
        };
        let results = sorted(live.into_values());
        let mut content = MAGIC.to_vec();
        for r in &results {
            put_result(&mut content, r)?;
        }
        let mut file = create_segment(&dir, seq, &content)?;
        file.seek(SeekFrom::End(0))?;
        for (old, path) in &listing.segments {
            if set_aside.contains(old) {
                fs::rename(path, corrupt_path(path))?;
            } else {
                fs::remove_file(path)?;
            }
        }
        let migrated_files = migrated.len();
        for path in migrated {
            fs::remove_file(path)?;
        }
        for path in legacy_corrupt {
            fs::rename(path, corrupt_path(path))?;
        }
        sync_dir(&dir)?;
        if migrated_files > 0 {
            tracing::info!(
                files = migrated_files,
                "migrated result spool files of the earlier format into the log"
            );
        }

        let segments = BTreeMap::from([(
            seq,
            Segment {
                live: results.len(),
                after: BTreeSet::new(),
            },
        )]);
        let state = State {
            live: results
                .into_iter()
                .map(|r| (key_of(&r), (seq, r)))
                .collect(),
            ..State::default()
        };
        Ok(Spool {
            inner: Arc::new(Inner {
                dir,
                options,
                state: Mutex::new(state),
                log: Mutex::new(Log {
                    file,
                    seq,
                    len: content.len() as u64,
                    broken: false,
                    segments,
                }),
                _lock: lock_file,
            }),
        })
    }

    /// The live results in spool directory `dir` without opening it: nothing is locked, written,
    /// truncated or deleted, so the directory may belong to a running worker. A torn or bad
    /// record ends that segment's contribution. Results of the earlier one-file format count too.
    /// A snapshot: while the owner writes, it may be momentarily stale.
    pub fn read_dir_results(dir: impl AsRef<Path>) -> io::Result<Vec<JobResult>> {
        let listing = list(dir.as_ref())?;
        let mut live = HashMap::new();
        for (key, path) in &listing.legacy {
            if let Ok(r) = read_legacy(path, key) {
                live.insert(key.clone(), r);
            }
        }
        for (_, path) in &listing.segments {
            let data = match fs::read(path) {
                Ok(data) => data,
                // deleted by the owner meanwhile
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for record in parse_segment(&data).records {
                apply(&mut live, record);
            }
        }
        Ok(sorted(live.into_values()))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Write `result` durably. Blocks; group-committed with concurrent [`write`](Self::write)s
    /// only if one is already at work.
    pub fn write_blocking(&self, result: &JobResult) -> io::Result<()> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut log = lock(&self.inner.log);
        self.inner
            .write_batch(&mut log, vec![Op::Write(Box::new(result.clone()), tx)]);
        rx.try_recv()
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer went away")))
    }

    /// Write `result` durably, on the blocking pool, group-committed with the writes of other
    /// tasks (see the module documentation).
    pub async fn write(&self, result: &JobResult) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Op::Write(Box::new(result.clone()), tx));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer went away")))
    }

    /// Forget the result of `(job_id, lease_token)` (the master acknowledged it). Returns at once:
    /// the Ack record is written in the background, unsynced (see the module documentation);
    /// a failure to write it is logged there. Forgetting a result the spool does not hold does
    /// nothing.
    pub fn remove(&self, job_id: u64, lease_token: &str) {
        self.enqueue(Op::Ack((job_id, lease_token.to_owned())));
    }

    /// Make everything queued so far durable, Acks included (e.g. before the worker exits).
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Op::Flush(tx));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer went away")))
    }

    /// Every live result, by job id (then lease token).
    pub fn scan(&self) -> Vec<JobResult> {
        sorted(
            lock(&self.inner.state)
                .live
                .values()
                .map(|(_, r)| r.clone()),
        )
    }

    /// Whether the result of `(job_id, lease_token)` is live: written and not yet removed (an
    /// Ack still queued counts as not yet removed).
    pub fn contains(&self, job_id: u64, lease_token: &str) -> bool {
        lock(&self.inner.state)
            .live
            .contains_key(&(job_id, lease_token.to_owned()))
    }

    /// Queues `op`; starts a writer if none is at work: on the blocking pool inside a Tokio
    /// runtime, else right here.
    fn enqueue(&self, op: Op) {
        let lead = {
            let mut state = lock(&self.inner.state);
            state.queue.push(op);
            !std::mem::replace(&mut state.writing, true)
        };
        if !lead {
            return;
        }
        let leader = Leader {
            inner: self.inner.clone(),
            done: false,
        };
        match tokio::runtime::Handle::try_current() {
            // a task of its own, so that a caller dropped mid-write cannot stall the others
            Ok(rt) => drop(rt.spawn_blocking(move || leader.run())),
            Err(_) => leader.run(),
        }
    }
}

/// The writer at work. If it never runs (its runtime shut down) or panics, dropping it lets the
/// next `enqueue` start another.
struct Leader {
    inner: Arc<Inner>,
    done: bool,
}

impl Leader {
    fn run(mut self) {
        self.inner.drain();
        self.done = true;
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.inner.state).writing = false;
        }
    }
}

impl Drop for Inner {
    /// Acks still queued when the last handle goes are written now.
    fn drop(&mut self) {
        let ops = std::mem::take(&mut lock(&self.state).queue);
        if !ops.is_empty() {
            let mut log = lock(&self.log);
            self.write_batch(&mut log, ops);
        }
    }
}

/// How a written record changes the index.
enum Effect {
    Result(Box<JobResult>),
    Ack(Key),
}

impl Inner {
    /// Writes batches until the queue is empty.
    fn drain(&self) {
        let mut log = lock(&self.log);
        loop {
            let ops = {
                let mut state = lock(&self.state);
                if state.queue.is_empty() {
                    state.writing = false;
                    return;
                }
                std::mem::take(&mut state.queue)
            };
            self.write_batch(&mut log, ops);
        }
    }

    /// Appends the records of `ops` with one write, syncs once if any op needs it, updates the
    /// index, answers the waiters and deletes segments no longer needed.
    fn write_batch(&self, log: &mut Log, ops: Vec<Op>) {
        let live_acks: Vec<bool> = {
            let state = lock(&self.state);
            ops.iter()
                .map(|op| matches!(op, Op::Ack(key) if state.live.contains_key(key)))
                .collect()
        };
        let mut buf = Vec::new();
        let mut effects = Vec::new();
        let mut waiters = Vec::new();
        let mut sync = false;
        let mut in_batch = HashSet::new();
        for (op, live) in ops.into_iter().zip(live_acks) {
            match op {
                Op::Write(result, waiter) => match put_result(&mut buf, &result) {
                    Ok(()) => {
                        in_batch.insert(key_of(&result));
                        effects.push(Effect::Result(result));
                        waiters.push(waiter);
                        sync = true;
                    }
                    Err(e) => drop(waiter.send(Err(e))),
                },
                Op::Ack(key) => {
                    if (live || in_batch.contains(&key)) && put_ack(&mut buf, &key).is_ok() {
                        effects.push(Effect::Ack(key));
                    }
                }
                Op::Flush(waiter) => {
                    waiters.push(waiter);
                    sync = true;
                }
            }
        }
        if buf.is_empty() && !sync {
            return;
        }

        let written = self.append(log, &buf, sync);
        if let Err(e) = written {
            let acks = effects
                .iter()
                .filter(|e| matches!(e, Effect::Ack(_)))
                .count();
            if acks > 0 {
                tracing::error!(error = %e, acks, "could not record acknowledgements in the spool; those results are sent again after a restart");
            }
            for w in waiters {
                let _ = w.send(Err(copy_error(&e)));
            }
            return;
        }

        // the index follows what is now on disk
        let seq = log.seq;
        let mut moved = Vec::new();
        {
            let mut state = lock(&self.state);
            #[cfg(test)]
            if sync {
                state.syncs += 1;
            }
            for effect in effects {
                match effect {
                    Effect::Result(r) => {
                        moved.push((state.live.insert(key_of(&r), (seq, *r)).map(|o| o.0), true));
                    }
                    Effect::Ack(key) => {
                        moved.push((state.live.remove(&key).map(|o| o.0), false));
                    }
                }
            }
        }
        for (old, added) in moved {
            if let Some(old) = old {
                if let Some(s) = log.segments.get_mut(&old) {
                    debug_assert!(s.live > 0, "segment {old} counted no live result");
                    s.live = s.live.saturating_sub(1);
                }
                if old != seq {
                    log.active().after.insert(old);
                }
            }
            if added {
                log.active().live += 1;
            }
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        self.collect_garbage(log);
    }

    /// Appends `buf` to the active segment (a new one if due) and syncs if asked. On failure the
    /// segment is cut back to where it was and marked broken.
    fn append(&self, log: &mut Log, buf: &[u8], sync: bool) -> io::Result<()> {
        let due = log.len >= self.options.segment_bytes && log.len > MAGIC.len() as u64;
        if log.broken || (due && !buf.is_empty()) {
            self.rotate(log)?;
        }
        let outcome = log
            .file
            .write_all(buf)
            .and_then(|()| if sync { log.file.sync_data() } else { Ok(()) });
        match outcome {
            Ok(()) => {
                log.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                log.broken = true;
                let cut = log
                    .file
                    .set_len(log.len)
                    .and_then(|()| log.file.seek(SeekFrom::Start(log.len)));
                if let Err(cut) = cut {
                    // never appended to again; if the garbage stays, `open` sets the segment aside
                    tracing::warn!(error = %cut, segment = log.seq, "could not cut a failed write off the spool segment");
                }
                Err(e)
            }
        }
    }

    /// Starts a new active segment. The old one is synced first (its unsynced Acks), so that
    /// every segment but the last is complete.
    fn rotate(&self, log: &mut Log) -> io::Result<()> {
        if !log.broken {
            log.file.sync_data()?;
        }
        let seq = log
            .seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("spool segment numbers exhausted"))?;
        let mut file = create_segment(&self.dir, seq, MAGIC)?;
        file.seek(SeekFrom::End(0))?;
        log.file = file;
        log.seq = seq;
        log.len = MAGIC.len() as u64;
        log.broken = false;
        log.segments.insert(seq, Segment::default());
        Ok(())
    }

    /// Deletes every segment but the active one that holds no live result and acknowledges or
    /// replaces nothing in an older segment still on disk. Those are deleted in rounds, with the
    /// directory synced after each, so a segment never goes before the older ones it depends on.
    fn collect_garbage(&self, log: &mut Log) {
        loop {
            let dead: Vec<u64> = log
                .segments
                .iter()
                .filter(|(seq, s)| {
                    **seq != log.seq
                        && s.live == 0
                        && s.after.iter().all(|a| !log.segments.contains_key(a))
                })
                .map(|(seq, _)| *seq)
                .collect();
            if dead.is_empty() {
                return;
            }
            for seq in dead {
                log.segments.remove(&seq);
                let path = self.dir.join(segment_name(seq));
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(segment = %path.display(), "deleted a spool segment with nothing live");
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // it comes back at the next open, which compacts it away
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "could not delete a spent spool segment");
                    }
                }
            }
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not sync the spool directory");
            }
        }
    }
}

impl Log {
    fn active(&mut self) -> &mut Segment {
        self.segments.entry(self.seq).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn result(job_id: u64, token: &str) -> JobResult {
        JobResult {
            job_id,
            lease_token: token.into(),
            ..Default::default()
        }
    }

    fn t(job_id: u64) -> JobResult {
        result(job_id, &format!("t{job_id}"))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The sequence numbers of the segments in `dir`.
    fn segments(dir: &Path) -> Vec<u64> {
        names(dir)
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        dir.join(segment_name(*segments(dir).last().unwrap()))
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = File::options().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    fn result_record(r: &JobResult) -> Vec<u8> {
        let mut buf = Vec::new();
        put_result(&mut buf, r).unwrap();
        buf
    }

    fn ack_record(job_id: u64, token: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        put_ack(&mut buf, &(job_id, token.to_owned())).unwrap();
        buf
    }

    /// Every file's name and content.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        names(dir)
            .into_iter()
            .map(|n| {
                let bytes = fs::read(dir.join(&n)).unwrap();
                (n, bytes)
            })
            .collect()
    }

    /// Writes `results` in one batch, as a group commit does.
    fn write_together(spool: &Spool, results: &[JobResult]) {
        let (ops, mut rxs): (Vec<Op>, Vec<_>) = results
            .iter()
            .map(|r| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Op::Write(Box::new(r.clone()), tx), rx)
            })
            .unzip();
        spool.inner.write_batch(&mut lock(&spool.inner.log), ops);
        for rx in &mut rxs {
            rx.try_recv().unwrap().unwrap();
        }
    }

    /// Drops the spool once no background writer holds it any more (which releases the lock).
    async fn close(spool: Spool) -> PathBuf {
        let dir = spool.dir().to_owned();
        while Arc::strong_count(&spool.inner) > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        drop(spool);
        dir
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_are_group_committed_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let spawn_writers = |ids: std::ops::Range<u64>| {
            ids.map(|id| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.write(&t(id)).await })
            })
            .collect::<Vec<_>>()
        };

        // hold the writer back until all 200 are queued: they go in one write and one sync
        let held = lock(&spool.inner.log);
        let tasks = spawn_writers(0..200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while lock(&spool.inner.state).queue.len() < 200 {
            assert!(std::time::Instant::now() < deadline, "writers never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(lock(&spool.inner.state).syncs, 1, "one group commit");

        // free-running: however they group, every write is durable when it returns
        for task in spawn_writers(200..400) {
            task.await.unwrap().unwrap();
        }
        let all: Vec<JobResult> = (0..400).map(t).collect();
        assert_eq!(spool.scan(), all);
        assert_eq!(Spool::read_dir_results(dir.path()).unwrap(), all);

        // removals go in the background; flush makes them durable
        for id in (0..400).step_by(2) {
            spool.remove(id, &format!("t{id}"));
        }
        spool.flush().await.unwrap();
        let odd: Vec<JobResult> = (0..400).filter(|id| id % 2 == 1).map(t).collect();
        assert_eq!(spool.scan(), odd);
        // the queue is idle again: a later write goes through on its own
        spool.write(&t(999)).await.unwrap();

        let dir = close(spool).await;
        let reopened = Spool::open(&dir).unwrap();
        let mut want = odd;
        want.push(t(999));
        assert_eq!(reopened.scan(), want);
        assert_eq!(segments(&dir).len(), 1, "compacted: {:?}", names(&dir));
    }

    #[test]
    fn write_remove_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = Spool::open(&path).unwrap();
        let mut r7 = result(7, TOKEN);
        r7.start = Some(caldera_proto::v1::SideResult {
            peak_memory_bytes: 9,
            ..Default::default()
        });
        spool.write_blocking(&r7).unwrap();
        spool.write_blocking(&result(3, "other")).unwrap();
        // writing the same result again is fine (same lease, same result)
        spool.write_blocking(&r7).unwrap();
        spool.write_blocking(&result(5, "five")).unwrap();
        assert_eq!(
            spool.scan(),
            vec![result(3, "other"), result(5, "five"), r7.clone()]
        );
        // a record over the size limit fails alone
        let huge = result(8, &"x".repeat(MAX_PAYLOAD + 1));
        let e = spool.write_blocking(&huge).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert!(!spool.contains(8, &huge.lease_token));

        // no runtime here: a removal is written before `remove` returns
        spool.remove(3, "other");
        spool.remove(3, "other"); // already gone: nothing happens
        spool.remove(1, "never-written");
        assert!(!spool.contains(3, "other"));
        assert!(spool.contains(7, TOKEN));
        assert_eq!(spool.scan(), vec![result(5, "five"), r7.clone()]);
        drop(spool);

        let spool = Spool::open(&path).unwrap();
        assert_eq!(spool.scan(), vec![result(5, "five"), r7.clone()]);
        assert_eq!(segments(&path).len(), 1);
        spool.remove(5, "five");
        drop(spool); // no flush: the Ack was written (unsynced), which a live system keeps

        let spool = Spool::open(&path).unwrap();
        assert_eq!(spool.scan(), vec![r7.clone()]);
        spool.remove(7, TOKEN);
        drop(spool);
        assert!(Spool::open(&path).unwrap().scan().is_empty());
        let mut left = names(&path);
        left.retain(|n| n != LOCK_FILE);
        assert_eq!(left.len(), 1, "one (empty) segment: {left:?}");
    }

    #[test]
    fn a_torn_tail_of_the_last_segment_is_truncated_on_open() {
        let half = {
            let r = result_record(&t(9));
            r[..r.len() / 2].to_vec()
        };
        let bad_crc = {
            let mut r = result_record(&t(9));
            r[5] ^= 0xff;
            r
        };
        let tears: [(&str, Vec<u8>); 5] = [
            ("half a record", half),
            ("a record with a wrong checksum", bad_crc),
            ("half a record header", vec![40, 0, 0]),
            ("zeros", vec![0; 100]),
            (
                "garbage",
                b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5".to_vec(),
            ),
        ];
        for (what, tear) in tears {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            for id in 1..=3 {
                spool.write_blocking(&t(id)).unwrap();
            }
            spool.remove(2, "t2");
            drop(spool);
            append(&last_segment(dir.path()), &tear);

            let spool = Spool::open(dir.path()).unwrap();
            assert_eq!(spool.scan(), vec![t(1), t(3)], "{what}");
            assert!(
                names(dir.path())
                    .iter()
                    .all(|n| !n.ends_with(CORRUPT_SUFFIX)),
                "{what}: nothing set aside: {:?}",
                names(dir.path())
            );
            spool.write_blocking(&t(4)).unwrap();
            drop(spool);
            assert_eq!(
                Spool::open(dir.path()).unwrap().scan(),
                vec![t(1), t(3), t(4)],
                "{what}"
            );
        }

        // a crash while a new segment was created: its header is incomplete (or missing)
        for header in [&b""[..], &MAGIC[..3]] {
            let dir = tempfile::tempdir().unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            spool.write_blocking(&t(1)).unwrap();
            drop(spool);
            let next = segments(dir.path()).last().unwrap() + 1;
            fs::write(dir.path().join(segment_name(next)), header).unwrap();
            let spool = Spool::open(dir.path()).unwrap();
            assert_eq!(spool.scan(), vec![t(1)]);
            assert_eq!(segments(dir.path()), [next + 1]);
        }
    }

    #[test]
    fn a_bad_record_in_an_older_segment_sets_it_aside_and_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = MAGIC.to_vec();
        damaged.extend(result_record(&t(1)));
        let mut r2 = result_record(&t(2));
        let at = r2.len() - 2;
        r2[at] ^= 0x55; // in the payload: the checksum no longer matches
        damaged.extend(r2);
        damaged.extend(result_record(&t(3))); // after the damage: lost
        fs::write(dir.path().join(segment_name(5)), &damaged).unwrap();
        let mut fine = MAGIC.to_vec();
        fine.extend(result_record(&t(4)));
        fine.extend(result_record(&t(6)));
        fine.extend(ack_record(6, "t6"));
        fs::write(dir.path().join(segment_name(6)), &fine).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![t(1), t(4)]);
        let aside = dir
            .path()
            .join(format!("{}{CORRUPT_SUFFIX}", segment_name(5)));
        assert_eq!(fs::read(&aside).unwrap(), damaged, "set aside untouched");
        assert_eq!(segments(dir.path()), [7]);
        drop(spool);

        // a file named like a segment that is not one, even the last, is set aside too
        fs::write(dir.path().join(segment_name(100)), b"not a segment at all").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![t(1), t(4)]);
        let stranger = dir
            .path()
            .join(format!("{}{CORRUPT_SUFFIX}", segment_name(100)));
        assert_eq!(fs::read(&stranger).unwrap(), b"not a segment at all");
        assert!(aside.exists());
        // new numbers go past the set-aside ones: nothing is ever overwritten
        assert_eq!(segments(dir.path()), [101]);
    }

    #[test]
    fn segments_rotate_and_spent_ones_are_deleted_once_nothing_older_needs_them() {
        let dir = tempfile::tempdir().unwrap();
        // every batch that finds something in the active segment starts a new one
        let spool = Spool::open_with(dir.path(), SpoolOptions { segment_bytes: 1 }).unwrap();
        let segs = || segments(dir.path());
        assert_eq!(segs(), [0]);
        write_together(&spool, &[t(1), t(2)]);
        assert_eq!(segs(), [0]);
        spool.write_blocking(&t(3)).unwrap();
        assert_eq!(segs(), [0, 1]);
        // segment 2 holds only the Ack of 1: nothing live, but it must outlive segment 0
        spool.remove(1, "t1");
        assert_eq!(segs(), [0, 1, 2]);
        spool.write_blocking(&t(4)).unwrap();
        assert_eq!(segs(), [0, 1, 2, 3], "segment 2 stays while segment 0 does");
        // 3 acknowledged: segment 1 is spent (its Ack is in the active segment 4)
        spool.remove(3, "t3");
        assert_eq!(segs(), [0, 2, 3, 4]);
        // 2 acknowledged: segment 0 is spent, then 2 and 4 (whose Acks pointed at 0 and 1)
        spool.remove(2, "t2");
        assert_eq!(segs(), [3, 5]);
        assert_eq!(spool.scan(), vec![t(4)]);
        assert_eq!(Spool::read_dir_results(dir.path()).unwrap(), vec![t(4)]);
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![t(4)]);
        assert_eq!(segs(), [6]);
        // the default threshold: no rotation for small writes
        for id in 10..20 {
            spool.write_blocking(&t(id)).unwrap();
        }
        assert_eq!(segs(), [6]);
    }

    #[test]
    fn a_failed_write_fails_its_batch_and_the_next_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.write_blocking(&t(1)).unwrap();
        // the active segment can no longer be written (as if the disk failed)
        let read_only = File::open(last_segment(dir.path())).unwrap();
        lock(&spool.inner.log).file = read_only;
        assert!(spool.write_blocking(&t(2)).is_err());
        assert!(!spool.contains(2, "t2"));
        spool.write_blocking(&t(3)).unwrap();
        assert_eq!(segments(dir.path()).len(), 2, "a new segment");
        assert_eq!(spool.scan(), vec![t(1), t(3)]);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![t(1), t(3)]);
        assert!(
            names(dir.path())
                .iter()
                .all(|n| !n.ends_with(CORRUPT_SUFFIX))
        );
    }

    #[test]
    fn files_of_the_earlier_format_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = |job_id: u64, token: &str| format!("{job_id:020}-{token}.result");
        let mut two = result(2, "b");
        two.end = Some(caldera_proto::v1::SideResult {
            duration_ms: 12,
            ..Default::default()
        });
        fs::write(
            dir.path().join(legacy(1, "a")),
            result(1, "a").encode_to_vec(),
        )
        .unwrap();
        fs::write(dir.path().join(legacy(2, "b")), two.encode_to_vec()).unwrap();
        fs::write(dir.path().join(legacy(3, "c")), b"\xff\xff\xff").unwrap();
        fs::write(
            dir.path().join(legacy(4, "d")),
            result(5, "d").encode_to_vec(),
        )
        .unwrap();
        fs::write(dir.path().join(format!(".{}.tmp", legacy(6, "e"))), b"half").unwrap();
        fs::write(dir.path().join("README"), b"hello").unwrap();
        // readable before the upgraded worker first opens it
        assert_eq!(
            Spool::read_dir_results(dir.path()).unwrap(),
            vec![result(1, "a"), two.clone()]
        );

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![result(1, "a"), two.clone()]);
        let seg = segment_name(0);
        let mut want = vec![
            LOCK_FILE.to_owned(),
            "README".to_owned(),
            seg.clone(),
            format!("{}{CORRUPT_SUFFIX}", legacy(3, "c")),
            format!("{}{CORRUPT_SUFFIX}", legacy(4, "d")),
        ];
        want.sort();
        assert_eq!(names(dir.path()), want);
        spool.remove(1, "a");
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![two]);
    }

    #[test]
    fn a_reader_changes_nothing_while_the_owner_appends() {
        let dir = tempfile::tempdir().unwrap();
        // small segments: rotations and deletions happen while the reader reads
        let owner = Spool::open_with(dir.path(), SpoolOptions { segment_bytes: 256 }).unwrap();
        assert_eq!(
            Spool::open(dir.path()).unwrap_err().kind(),
            io::ErrorKind::ResourceBusy,
            "one owner per directory"
        );
        let writer = {
            let owner = owner.clone();
            std::thread::spawn(move || {
                for id in 0..300 {
                    owner.write_blocking(&t(id)).unwrap();
                    if id % 2 == 1 {
                        owner.remove(id - 1, &format!("t{}", id - 1));
                    }
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() {
            for r in Spool::read_dir_results(dir.path()).unwrap() {
                assert_eq!(r, t(r.job_id));
            }
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
        let odd: Vec<JobResult> = (0..300).filter(|id| id % 2 == 1).map(t).collect();
        assert_eq!(owner.scan(), odd);
        let before = snapshot(dir.path());
        assert_eq!(Spool::read_dir_results(dir.path()).unwrap(), odd);
        assert_eq!(snapshot(dir.path()), before);

        // a torn tail is ignored, not truncated
        append(&last_segment(dir.path()), &result_record(&t(1000))[..12]);
        let before = snapshot(dir.path());
        assert_eq!(Spool::read_dir_results(dir.path()).unwrap(), odd);
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for stranger in [
            "42.seg",
            "00000000000000000042.seg.corrupt",
            "0000000000000000004x.seg",
            "99999999999999999999.seg", // overflows u64
            "00000000000000000042-tok.result",
        ] {
            assert_eq!(parse_segment_name(stranger), None, "{stranger}");
        }
        assert_eq!(
            parse_legacy_name(&format!("00000000000000000042-{TOKEN}.result")),
            Some((42, TOKEN.to_owned()))
        );
        for stranger in [
            "notes.txt",
            ".00000000000000000042-tok.result.tmp",
            "00000000000000000042-tok.result.corrupt",
            "42-tok.result",
            "-tok.result",
            "00000000000000000042-.result",
            "00000000000000000042-a b.result",
            "99999999999999999999-tok.result",
        ] {
            assert_eq!(parse_legacy_name(stranger), None, "{stranger}");
        }
    }
}
