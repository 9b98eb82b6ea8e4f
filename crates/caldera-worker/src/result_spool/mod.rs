//! The result spool: finished results that the master has not acknowledged yet, kept in an
//! append-only log.
//!
//! A result is written here, durably, *before* it is sent, and forgotten only when the master
//! acknowledges it, so neither a broken connection nor a worker restart loses finished work.
//!
//! Not to be confused with the [upload spool](crate::upload_spool). This one holds the small job
//! results on their way to the *master* and forgets one once the master acknowledges it; the
//! upload spool holds bulk bytes (the sides' logs) on their way to the *object store* and forgets
//! one once the store has it. A result is written here only after the logs it names are in the
//! store.
//!
//! The code is split by job: `format` is the on-disk format (segments, records, file names),
//! `recovery` what [`ResultSpool::open`] does with what it finds (replay, repair, migration,
//! compaction), and `writer` the group-committing writer and the deletion of spent segments.
//!
//! # On disk
//!
//! The spool directory holds *segments*, `<sequence, 20 digits>.seg`, and a `LOCK` file. One
//! process at a time owns a directory: [`ResultSpool::open`] takes an exclusive lock on `LOCK`
//! and fails if another process (or another [`ResultSpool`] in this one) holds it.
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
//! [`write`](ResultSpool::write) returns. [`remove`](ResultSpool::remove) (on the master's
//! acknowledgement) queues an Ack record and returns at once: the Ack is written with the next
//! batch and is *not* synced on its own. An Ack lost in a crash only means the result is sent
//! again after the restart, and the master answers a duplicate with a rejection, which drops it.
//!
//! When the active segment has grown past [`ResultSpoolOptions::segment_bytes`] (8 MiB by
//! default), the next batch starts a new one (the old one is synced first, the new one is created
//! with its header synced and the directory synced, so every segment but the newest is complete).
//! An in-memory index knows which segment holds each live result. A segment other than the active
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
//! [`ResultSpool::open`] replays every segment in order, then *compacts*: the live results are
//! written into a new segment (written, fdatasynced, directory synced), and only then are the old
//! segments deleted. What it does with damage:
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
//! [`ResultSpool::read_dir_results`] reads a directory without owning it (another process may be
//! appending): it changes nothing, ignores a torn tail, and is a snapshot that may be momentarily
//! stale while the owner writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use caldera_proto::v1::JobResult;

use recovery::{Recovered, lock_dir, read_live, recover, sorted};
use writer::{Log, Op, Segment};

mod format;
mod recovery;
mod writer;

/// Tuning of a [`ResultSpool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSpoolOptions {
    /// A batch that finds the active segment at least this big starts a new segment.
    pub segment_bytes: u64,
}

impl Default for ResultSpoolOptions {
    fn default() -> Self {
        ResultSpoolOptions {
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
pub struct ResultSpool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: ResultSpoolOptions,
    /// The queue and the index; held only briefly, never across I/O.
    state: Mutex<State>,
    /// The active segment and the segments' bookkeeping; held by the one writer at work.
    log: Mutex<Log>,
    /// Holds the directory's lock for as long as the spool is open.
    _lock: File,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ResultSpool {
    /// Open the spool in `dir` (created if missing) with the default options.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<ResultSpool> {
        ResultSpool::open_with(dir, ResultSpoolOptions::default())
    }

    /// Open the spool in `dir`: lock it, replay it, migrate files of the earlier format, compact
    /// (see the module documentation).
    pub fn open_with(
        dir: impl Into<PathBuf>,
        options: ResultSpoolOptions,
    ) -> io::Result<ResultSpool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let lock_file = lock_dir(&dir)?;
        let Recovered {
            file,
            seq,
            len,
            results,
        } = recover(&dir)?;
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
        Ok(ResultSpool {
            inner: Arc::new(Inner {
                dir,
                options,
                state: Mutex::new(state),
                log: Mutex::new(Log {
                    file,
                    seq,
                    len,
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
        read_live(dir.as_ref())
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
        self.inner.enqueue(Op::Write(Box::new(result.clone()), tx));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer went away")))
    }

    /// Forget the result of `(job_id, lease_token)` (the master acknowledged it). Returns at once:
    /// the Ack record is written in the background, unsynced (see the module documentation);
    /// a failure to write it is logged there. Forgetting a result the spool does not hold does
    /// nothing.
    pub fn remove(&self, job_id: u64, lease_token: &str) {
        self.inner
            .enqueue(Op::Ack((job_id, lease_token.to_owned())));
    }

    /// Make everything queued so far durable, Acks included (e.g. before the worker exits).
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.enqueue(Op::Flush(tx));
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
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use prost::Message;

    use super::format::{
        CORRUPT_SUFFIX, LOCK_FILE, MAGIC, MAX_PAYLOAD, parse_segment_name, put_ack, put_result,
        segment_name,
    };
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
    fn write_together(spool: &ResultSpool, results: &[JobResult]) {
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
    async fn close(spool: ResultSpool) -> PathBuf {
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
        let spool = ResultSpool::open(dir.path()).unwrap();
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
        assert_eq!(ResultSpool::read_dir_results(dir.path()).unwrap(), all);

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
        let reopened = ResultSpool::open(&dir).unwrap();
        let mut want = odd;
        want.push(t(999));
        assert_eq!(reopened.scan(), want);
        assert_eq!(segments(&dir).len(), 1, "compacted: {:?}", names(&dir));
    }

    #[test]
    fn write_remove_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let spool = ResultSpool::open(&path).unwrap();
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

        let spool = ResultSpool::open(&path).unwrap();
        assert_eq!(spool.scan(), vec![result(5, "five"), r7.clone()]);
        assert_eq!(segments(&path).len(), 1);
        spool.remove(5, "five");
        drop(spool); // no flush: the Ack was written (unsynced), which a live system keeps

        let spool = ResultSpool::open(&path).unwrap();
        assert_eq!(spool.scan(), vec![r7.clone()]);
        spool.remove(7, TOKEN);
        drop(spool);
        assert!(ResultSpool::open(&path).unwrap().scan().is_empty());
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
            let spool = ResultSpool::open(dir.path()).unwrap();
            for id in 1..=3 {
                spool.write_blocking(&t(id)).unwrap();
            }
            spool.remove(2, "t2");
            drop(spool);
            append(&last_segment(dir.path()), &tear);

            let spool = ResultSpool::open(dir.path()).unwrap();
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
                ResultSpool::open(dir.path()).unwrap().scan(),
                vec![t(1), t(3), t(4)],
                "{what}"
            );
        }

        // a crash while a new segment was created: its header is incomplete (or missing)
        for header in [&b""[..], &MAGIC[..3]] {
            let dir = tempfile::tempdir().unwrap();
            let spool = ResultSpool::open(dir.path()).unwrap();
            spool.write_blocking(&t(1)).unwrap();
            drop(spool);
            let next = segments(dir.path()).last().unwrap() + 1;
            fs::write(dir.path().join(segment_name(next)), header).unwrap();
            let spool = ResultSpool::open(dir.path()).unwrap();
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

        let spool = ResultSpool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![t(1), t(4)]);
        let aside = dir
            .path()
            .join(format!("{}{CORRUPT_SUFFIX}", segment_name(5)));
        assert_eq!(fs::read(&aside).unwrap(), damaged, "set aside untouched");
        assert_eq!(segments(dir.path()), [7]);
        drop(spool);

        // a file named like a segment that is not one, even the last, is set aside too
        fs::write(dir.path().join(segment_name(100)), b"not a segment at all").unwrap();
        let spool = ResultSpool::open(dir.path()).unwrap();
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
        let spool =
            ResultSpool::open_with(dir.path(), ResultSpoolOptions { segment_bytes: 1 }).unwrap();
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
        assert_eq!(
            ResultSpool::read_dir_results(dir.path()).unwrap(),
            vec![t(4)]
        );
        drop(spool);

        let spool = ResultSpool::open(dir.path()).unwrap();
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
        let spool = ResultSpool::open(dir.path()).unwrap();
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
        let spool = ResultSpool::open(dir.path()).unwrap();
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
            ResultSpool::read_dir_results(dir.path()).unwrap(),
            vec![result(1, "a"), two.clone()]
        );

        let spool = ResultSpool::open(dir.path()).unwrap();
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
        let spool = ResultSpool::open(dir.path()).unwrap();
        assert_eq!(spool.scan(), vec![two]);
    }

    #[test]
    fn a_reader_changes_nothing_while_the_owner_appends() {
        let dir = tempfile::tempdir().unwrap();
        // small segments: rotations and deletions happen while the reader reads
        let owner =
            ResultSpool::open_with(dir.path(), ResultSpoolOptions { segment_bytes: 256 }).unwrap();
        assert_eq!(
            ResultSpool::open(dir.path()).unwrap_err().kind(),
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
            for r in ResultSpool::read_dir_results(dir.path()).unwrap() {
                assert_eq!(r, t(r.job_id));
            }
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
        let odd: Vec<JobResult> = (0..300).filter(|id| id % 2 == 1).map(t).collect();
        assert_eq!(owner.scan(), odd);
        let before = snapshot(dir.path());
        assert_eq!(ResultSpool::read_dir_results(dir.path()).unwrap(), odd);
        assert_eq!(snapshot(dir.path()), before);

        // a torn tail is ignored, not truncated
        append(&last_segment(dir.path()), &result_record(&t(1000))[..12]);
        let before = snapshot(dir.path());
        assert_eq!(ResultSpool::read_dir_results(dir.path()).unwrap(), odd);
        assert_eq!(snapshot(dir.path()), before);
    }
}
