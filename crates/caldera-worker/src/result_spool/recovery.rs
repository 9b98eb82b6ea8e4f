//! Opening a result spool: replaying its segments, cutting a torn tail, setting damaged files
//! aside, migrating files of the earlier one-file-per-result format, and compacting what is live
//! into one new segment (see the spool's module documentation for what is done with damage).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use caldera_proto::v1::JobResult;
use prost::Message;

use super::format::{
    Bad, CORRUPT_SUFFIX, LOCK_FILE, MAGIC, Record, corrupt_path, create_segment, parse_legacy_name,
    parse_segment, parse_segment_name, put_result, sync_dir,
};
use super::{Key, key_of};

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

pub(super) fn sorted(results: impl IntoIterator<Item = JobResult>) -> Vec<JobResult> {
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

/// Takes the exclusive lock on the spool directory's `LOCK` file, held for as long as the file
/// stays open.
pub(super) fn lock_dir(dir: &Path) -> io::Result<File> {
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "another process (or another spool in this one) has this spool directory open",
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// What [`recover`] leaves: one compacted segment, the active one, holding every live result.
pub(super) struct Recovered {
    pub(super) file: File,
    pub(super) seq: u64,
    /// The segment's length in bytes.
    pub(super) len: u64,
    /// The live results, sorted.
    pub(super) results: Vec<JobResult>,
}

/// Replays the locked spool directory `dir`, repairs or sets aside what is damaged, migrates
/// files of the earlier format, then compacts: every live result into a new segment, durably,
/// before anything old goes.
pub(super) fn recover(dir: &Path) -> io::Result<Recovered> {
    let listing = list(dir)?;
    for tmp in &listing.legacy_tmp {
        fs::remove_file(tmp)?;
        tracing::debug!(file = %tmp.display(), "removed a temporary spool file left by an earlier run");
    }
    let mut live = HashMap::new();
    let legacy = read_legacy_files(&listing, &mut live);
    let set_aside = replay_segments(&listing, &mut live)?;

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
    let mut file = create_segment(dir, seq, &content)?;
    file.seek(SeekFrom::End(0))?;
    clear_replaced(dir, &listing, &set_aside, legacy)?;
    Ok(Recovered {
        file,
        seq,
        len: content.len() as u64,
        results,
    })
}

/// The result files of the earlier format in a listing: those read into `live` (to delete once
/// compacted) and those that do not decode or match their name (to set aside).
struct LegacyFiles<'a> {
    migrated: Vec<&'a PathBuf>,
    corrupt: Vec<&'a PathBuf>,
}

/// Reads the result files of the earlier format into `live`.
fn read_legacy_files<'a>(
    listing: &'a Listing,
    live: &mut HashMap<Key, JobResult>,
) -> LegacyFiles<'a> {
    let mut files = LegacyFiles {
        migrated: Vec::new(),
        corrupt: Vec::new(),
    };
    for (key, path) in &listing.legacy {
        match read_legacy(path, key) {
            Ok(r) => {
                live.insert(key.clone(), r);
                files.migrated.push(path);
            }
            Err(why) => {
                tracing::error!(file = %path.display(), %why, "corrupt spooled result (earlier format) set aside as ….corrupt");
                files.corrupt.push(path);
            }
        }
    }
    files
}

/// Replays every segment in order into `live`. A bad record in the last segment is a torn tail
/// and is cut off there; anywhere else it is corruption, and the segment's sequence is returned,
/// to be set aside.
fn replay_segments(
    listing: &Listing,
    live: &mut HashMap<Key, JobResult>,
) -> io::Result<HashSet<u64>> {
    let last = listing.segments.last().map(|(seq, _)| *seq);
    let mut set_aside = HashSet::new();
    for (seq, path) in &listing.segments {
        let data = fs::read(path)?;
        let parsed = parse_segment(&data);
        for record in parsed.records {
            apply(live, record);
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
    Ok(set_aside)
}

/// Once the compacted segment is durable: deletes the segments and migrated files it replaces,
/// renames the damaged ones to `….corrupt`, and syncs the directory.
fn clear_replaced(
    dir: &Path,
    listing: &Listing,
    set_aside: &HashSet<u64>,
    legacy: LegacyFiles<'_>,
) -> io::Result<()> {
    for (old, path) in &listing.segments {
        if set_aside.contains(old) {
            fs::rename(path, corrupt_path(path))?;
        } else {
            fs::remove_file(path)?;
        }
    }
    let migrated_files = legacy.migrated.len();
    for path in legacy.migrated {
        fs::remove_file(path)?;
    }
    for path in legacy.corrupt {
        fs::rename(path, corrupt_path(path))?;
    }
    sync_dir(dir)?;
    if migrated_files > 0 {
        tracing::info!(
            files = migrated_files,
            "migrated result spool files of the earlier format into the log"
        );
    }
    Ok(())
}

/// The live results in spool directory `dir`, read without owning it (see
/// [`ResultSpool::read_dir_results`](super::ResultSpool::read_dir_results)).
pub(super) fn read_live(dir: &Path) -> io::Result<Vec<JobResult>> {
    let listing = list(dir)?;
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
