//! The result spool: finished results that the master has not acknowledged yet, one file each.
//!
//! A result is written here (temp file, fsync, rename, fsync of the directory) *before* it is
//! sent, and removed only when the master acknowledges it, so neither a broken connection nor a
//! worker restart loses finished work. File names are `<job id, 20 digits>-<lease token>.result`;
//! the content is the prost-encoded `JobResult`. Temporary files start with a dot and are removed
//! on open; a file that cannot be decoded is renamed to `….corrupt` and left for an operator.
//!
//! Writes are group-committed: results finished while a write is in progress are written together by
//! the next one — every temp file written and fsynced, then all renamed, then one fsync of the
//! directory — so a busy worker pays about two journal commits per batch instead of two per result
//! (each result is still durable before its `write` returns).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use caldera_proto::v1::JobResult;
use prost::Message;

const SUFFIX: &str = ".result";
const CORRUPT_SUFFIX: &str = ".corrupt";

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    group: Arc<Mutex<Group>>,
}

type Waiter = tokio::sync::oneshot::Sender<io::Result<PathBuf>>;

/// Results waiting for the next group commit, and whether a writer is at work.
#[derive(Debug, Default)]
struct Group {
    queue: Vec<(JobResult, Waiter)>,
    writing: bool,
}

/// The spool file name for a result, or `None` when the lease token could not be part of a file
/// name (empty, too long, or other than ASCII letters, digits, `-` and `_`).
pub fn file_name(job_id: u64, lease_token: &str) -> Option<String> {
    let safe = !lease_token.is_empty()
        && lease_token.len() <= 128
        && lease_token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    safe.then(|| format!("{job_id:020}-{lease_token}{SUFFIX}"))
}

/// The `(job id, lease token)` of a spool file name; `None` for anything else (temporary files,
/// corrupt files set aside, strangers).
pub fn parse_file_name(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (id, token) = stem.split_once('-')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let job_id = id.parse().ok()?;
    (file_name(job_id, token)? == name).then(|| (job_id, token.to_owned()))
}

impl Spool {
    /// Open (create) the spool directory and remove temporary files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(entry.path())?;
                tracing::debug!(file = %name, "removed a temporary spool file left by an earlier run");
            }
        }
        Ok(Spool {
            dir,
            group: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the result of `(job_id, lease_token)` is spooled.
    pub fn path(&self, job_id: u64, lease_token: &str) -> Option<PathBuf> {
        file_name(job_id, lease_token).map(|n| self.dir.join(n))
    }

    /// Write `result` durably and atomically (a reader sees the old state or the whole file).
    pub fn write_blocking(&self, result: &JobResult) -> io::Result<PathBuf> {
        self.write_batch_blocking(std::slice::from_ref(result))
            .pop()
            .expect("one outcome per result")
    }

    /// Writes every result durably and atomically: temp files written and fsynced, renamed, then
    /// one fsync of the directory for all the renames. One outcome per result, in order.
    fn write_batch_blocking(&self, results: &[JobResult]) -> Vec<io::Result<PathBuf>> {
        let mut out: Vec<io::Result<(PathBuf, PathBuf)>> = results
            .iter()
            .map(|result| {
                let name = file_name(result.job_id, &result.lease_token).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "lease token {:?} cannot name a spool file",
                            result.lease_token
                        ),
                    )
                })?;
                let path = self.dir.join(&name);
                let tmp = self.dir.join(format!(".{name}.tmp"));
                let write = || -> io::Result<()> {
                    let mut f = fs::File::create(&tmp)?;
                    f.write_all(&result.encode_to_vec())?;
                    f.sync_all()
                };
                write().inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                })?;
                Ok((tmp, path))
            })
            .collect();
        for r in &mut out {
            if let Ok((tmp, path)) = r
                && let Err(e) = fs::rename(&*tmp, &*path)
            {
                let _ = fs::remove_file(&*tmp);
                *r = Err(e);
            }
        }
        // make the renames themselves durable
        if out.iter().any(Result::is_ok)
            && let Err(e) = fs::File::open(&self.dir).and_then(|d| d.sync_all())
        {
            let kind = e.kind();
            let msg = e.to_string();
            for r in &mut out {
                if r.is_ok() {
                    *r = Err(io::Error::new(
                        kind,
                        format!("syncing the spool directory: {msg}"),
                    ));
                }
            }
        }
        out.into_iter().map(|r| r.map(|(_, path)| path)).collect()
    }

    /// [`write_blocking`](Self::write_blocking) on the blocking pool, group-committed with the
    /// writes of other tasks (see the module documentation).
    pub async fn write(&self, result: &JobResult) -> io::Result<PathBuf> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut g = self.group.lock().unwrap_or_else(|p| p.into_inner());
            g.queue.push((result.clone(), tx));
            !std::mem::replace(&mut g.writing, true)
        };
        if lead {
            // a task of its own, so that a caller dropped mid-write cannot stall the others
            tokio::spawn(self.clone().write_queued());
        }
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the spool writer went away")))
    }

    /// Writes batches of queued results until the queue is empty.
    async fn write_queued(self) {
        loop {
            let batch = {
                let mut g = self.group.lock().unwrap_or_else(|p| p.into_inner());
                if g.queue.is_empty() {
                    g.writing = false;
                    return;
                }
                std::mem::take(&mut g.queue)
            };
            let (results, waiters): (Vec<JobResult>, Vec<Waiter>) = batch.into_iter().unzip();
            let spool = self.clone();
            let outcomes =
                tokio::task::spawn_blocking(move || spool.write_batch_blocking(&results))
                    .await
                    .unwrap_or_else(|e| {
                        let msg = e.to_string();
                        waiters
                            .iter()
                            .map(|_| Err(io::Error::other(msg.clone())))
                            .collect()
                    });
            for (w, o) in waiters.into_iter().zip(outcomes) {
                let _ = w.send(o);
            }
        }
    }

    /// Remove the spooled result of `(job_id, lease_token)`; removing a missing one is not an error.
    pub async fn remove(&self, job_id: u64, lease_token: &str) -> io::Result<()> {
        let Some(path) = self.path(job_id, lease_token) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every spooled result, by job id. A file that does not decode, or whose content does not
    /// match its name, is renamed to `….corrupt` and skipped.
    pub fn scan(&self) -> io::Result<Vec<JobResult>> {
        let mut results = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some((job_id, token)) = parse_file_name(&name) else {
                if !name.starts_with('.') && !name.ends_with(CORRUPT_SUFFIX) {
                    tracing::warn!(file = %name, "ignoring a file in the spool directory that is not a spooled result");
                }
                continue;
            };
            let decoded = fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let r = JobResult::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
                    if (r.job_id, r.lease_token.as_str()) == (job_id, token.as_str()) {
                        Ok(r)
                    } else {
                        Err(format!("holds job {} lease {:?}", r.job_id, r.lease_token))
                    }
                });
            match decoded {
                Ok(r) => results.push(r),
                Err(why) => {
                    let aside = self.dir.join(format!("{name}{CORRUPT_SUFFIX}"));
                    tracing::error!(file = %name, %why, aside = %aside.display(), "corrupt spooled result set aside");
                    fs::rename(entry.path(), aside)?;
                }
            }
        }
        results.sort_by_key(|r| r.job_id);
        Ok(results)
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

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_are_group_committed_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for id in 0..200u64 {
            let spool = spool.clone();
            // every 50th has a token that cannot name a file: only that one fails
            let token = if id % 50 == 7 {
                "bad token".to_owned()
            } else {
                format!("t{id}")
            };
            tasks.push(tokio::spawn(async move {
                (id, spool.write(&result(id, &token)).await)
            }));
        }
        let mut failed = Vec::new();
        for t in tasks {
            let (id, r) = t.await.unwrap();
            match r {
                Ok(path) => assert_eq!(path, spool.path(id, &format!("t{id}")).unwrap()),
                Err(e) => {
                    assert!(e.to_string().contains("cannot name a spool file"), "{e}");
                    failed.push(id);
                }
            }
        }
        assert_eq!(failed, vec![7, 57, 107, 157]);
        let scanned = spool.scan().unwrap();
        assert_eq!(scanned.len(), 196);
        assert!(
            scanned
                .iter()
                .all(|r| r.lease_token == format!("t{}", r.job_id))
        );
        assert!(
            names(dir.path()).iter().all(|n| !n.starts_with('.')),
            "no temporary file is left"
        );
        // the queue is idle again: a later write goes through on its own
        spool.write(&result(999, "late")).await.unwrap();
        assert_eq!(spool.scan().unwrap().len(), 197);
    }

    #[test]
    fn file_names_round_trip_and_reject_unsafe_tokens() {
        let name = file_name(42, TOKEN).unwrap();
        assert_eq!(name, format!("00000000000000000042-{TOKEN}.result"));
        assert_eq!(parse_file_name(&name), Some((42, TOKEN.to_owned())));
        assert_eq!(
            parse_file_name(&file_name(u64::MAX, "t_1").unwrap()),
            Some((u64::MAX, "t_1".to_owned()))
        );
        for bad in ["", "../x", "a/b", "a b", "tök", &"x".repeat(129)] {
            assert_eq!(file_name(1, bad), None, "{bad:?}");
        }
        for stranger in [
            "notes.txt",
            ".00000000000000000042-tok.result.tmp",
            "00000000000000000042-tok.result.corrupt",
            "42-tok.result", // not zero-padded: not ours
            "-tok.result",
            "00000000000000000042.result",
            "0000000000000000004x-tok.result",
            "99999999999999999999-tok.result", // overflows u64
        ] {
            assert_eq!(parse_file_name(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn write_scan_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let mut r = result(7, TOKEN);
        r.start = Some(caldera_proto::v1::SideResult {
            peak_memory_bytes: 9,
            ..Default::default()
        });
        let path = spool.write_blocking(&r).unwrap();
        assert_eq!(path, spool.path(7, TOKEN).unwrap());
        spool.write_blocking(&result(3, "other")).unwrap();
        // overwriting is fine (same lease, same result)
        spool.write_blocking(&r).unwrap();
        assert_eq!(
            names(spool.dir()).len(),
            2,
            "no temporary file left behind: {:?}",
            names(spool.dir())
        );
        assert_eq!(spool.scan().unwrap(), vec![result(3, "other"), r.clone()]);
        assert!(spool.write_blocking(&result(1, "../escape")).is_err());

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            spool.remove(7, TOKEN).await.unwrap();
            spool.remove(7, TOKEN).await.unwrap(); // already gone: fine
            spool.remove(1, "../escape").await.unwrap(); // never a path outside the spool
        });
        assert_eq!(spool.scan().unwrap(), vec![result(3, "other")]);
    }

    #[test]
    fn open_removes_temporaries_and_scan_sets_corrupt_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        let good = file_name(1, "a").unwrap();
        let garbage = file_name(2, "b").unwrap();
        let mismatched = file_name(3, "c").unwrap();
        fs::write(dir.path().join(format!(".{good}.tmp")), b"half a write").unwrap();
        fs::write(dir.path().join(&good), result(1, "a").encode_to_vec()).unwrap();
        fs::write(dir.path().join(&garbage), b"\xff\xff\xff").unwrap();
        fs::write(dir.path().join(&mismatched), result(4, "c").encode_to_vec()).unwrap();
        fs::write(dir.path().join("README"), b"hello").unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.scan().unwrap(), vec![result(1, "a")]);
        let mut want = vec![
            "README".to_owned(),
            good.clone(),
            format!("{garbage}.corrupt"),
            format!("{mismatched}.corrupt"),
        ];
        want.sort();
        assert_eq!(names(dir.path()), want);
        // a second scan finds the same and moves nothing
        assert_eq!(spool.scan().unwrap(), vec![result(1, "a")]);
        assert_eq!(names(dir.path()), want);
    }
}
