//! The result spool's writer: operations are queued, and whichever caller finds no writer at work
//! becomes it ([`Leader`]), writing batch after batch until the queue is empty. A batch is one
//! `write` and at most one `fdatasync` (the group commit), after which the in-memory index follows
//! what is on disk and spent segments are deleted.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

use caldera_proto::v1::JobResult;

use super::format::{MAGIC, create_segment, put_ack, put_result, segment_name, sync_dir};
use super::{Inner, Key, key_of, lock};

pub(super) type Waiter = tokio::sync::oneshot::Sender<io::Result<()>>;

#[derive(Debug)]
pub(super) enum Op {
    /// Append a Result record and sync.
    Write(Box<JobResult>, Waiter),
    /// Append an Ack record if the result is live; no sync of its own.
    Ack(Key),
    /// Sync everything written so far.
    Flush(Waiter),
}

/// The active segment and the segments' bookkeeping.
#[derive(Debug)]
pub(super) struct Log {
    pub(super) file: File,
    pub(super) seq: u64,
    pub(super) len: u64,
    /// A write or sync failed: the next batch starts a new segment.
    pub(super) broken: bool,
    /// Every segment on disk, the active one included.
    pub(super) segments: BTreeMap<u64, Segment>,
}

#[derive(Debug, Default)]
pub(super) struct Segment {
    /// Live results whose latest Result record is here.
    pub(super) live: usize,
    /// Older segments holding records that this segment's records acknowledge or replace: this
    /// one may be deleted only after them.
    pub(super) after: BTreeSet<u64>,
}

/// Copies an `io::Error` (which is not `Clone`) for every waiter of a failed batch.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
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

/// The records of a batch of ops, in one buffer, and what follows once they are written.
struct Batch {
    buf: Vec<u8>,
    effects: Vec<Effect>,
    waiters: Vec<Waiter>,
    /// Some op needs the batch synced.
    sync: bool,
}

impl Batch {
    /// The write failed: every waiter hears it; the Acks in the batch are lost (logged).
    fn fail(self, e: &io::Error) {
        let acks = self
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Ack(_)))
            .count();
        if acks > 0 {
            tracing::error!(error = %e, acks, "could not record acknowledgements in the spool; those results are sent again after a restart");
        }
        for w in self.waiters {
            let _ = w.send(Err(copy_error(e)));
        }
    }
}

impl Inner {
    /// Queues `op`; starts a writer if none is at work: on the blocking pool inside a Tokio
    /// runtime, else right here.
    pub(super) fn enqueue(self: &Arc<Self>, op: Op) {
        let lead = {
            let mut state = lock(&self.state);
            state.queue.push(op);
            !std::mem::replace(&mut state.writing, true)
        };
        if !lead {
            return;
        }
        let leader = Leader {
            inner: self.clone(),
            done: false,
        };
        match tokio::runtime::Handle::try_current() {
            // a task of its own, so that a caller dropped mid-write cannot stall the others
            Ok(rt) => drop(rt.spawn_blocking(move || leader.run())),
            Err(_) => leader.run(),
        }
    }

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
    pub(super) fn write_batch(&self, log: &mut Log, ops: Vec<Op>) {
        let batch = self.encode(ops);
        if batch.buf.is_empty() && !batch.sync {
            return;
        }
        if let Err(e) = self.append(log, &batch.buf, batch.sync) {
            batch.fail(&e);
            return;
        }
        #[cfg(test)]
        if batch.sync {
            lock(&self.state).syncs += 1;
        }
        self.follow(log, batch.effects);
        for w in batch.waiters {
            let _ = w.send(Ok(()));
        }
        self.collect_garbage(log);
    }

    /// Encodes the records of `ops`. A result too big for a record fails alone, at once; an Ack
    /// is written only for a result that is live (or written in the same batch).
    fn encode(&self, ops: Vec<Op>) -> Batch {
        let live_acks: Vec<bool> = {
            let state = lock(&self.state);
            ops.iter()
                .map(|op| matches!(op, Op::Ack(key) if state.live.contains_key(key)))
                .collect()
        };
        let mut batch = Batch {
            buf: Vec::new(),
            effects: Vec::new(),
            waiters: Vec::new(),
            sync: false,
        };
        let mut in_batch = HashSet::new();
        for (op, live) in ops.into_iter().zip(live_acks) {
            match op {
                Op::Write(result, waiter) => match put_result(&mut batch.buf, &result) {
                    Ok(()) => {
                        in_batch.insert(key_of(&result));
                        batch.effects.push(Effect::Result(result));
                        batch.waiters.push(waiter);
                        batch.sync = true;
                    }
                    Err(e) => drop(waiter.send(Err(e))),
                },
                Op::Ack(key) => {
                    if (live || in_batch.contains(&key)) && put_ack(&mut batch.buf, &key).is_ok() {
                        batch.effects.push(Effect::Ack(key));
                    }
                }
                Op::Flush(waiter) => {
                    batch.waiters.push(waiter);
                    batch.sync = true;
                }
            }
        }
        batch
    }

    /// Makes the index follow what is now on disk: which results are live, in which segment, and
    /// which older segments each segment depends on.
    fn follow(&self, log: &mut Log, effects: Vec<Effect>) {
        let seq = log.seq;
        let mut moved = Vec::new();
        {
            let mut state = lock(&self.state);
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
