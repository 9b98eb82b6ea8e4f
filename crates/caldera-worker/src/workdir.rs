//! The worker's claim on its work dir, taken before anything else (before any Docker call): one
//! process per work dir, and the work dir's *instance id*, which labels its sandbox containers.
//!
//! * **The lock** is an exclusive `flock` on `<work dir>/worker.lock`, held for the life of the
//!   process (the kernel drops it when the process dies, however it dies). The holder writes its
//!   pid into the file, so a second process can name it. A second process on the same work dir
//!   fails at once with [`WorkDirError::Busy`] and has touched nothing: no container, no spool.
//! * **The instance id** is stored in `<work dir>/instance-id`, made once (the host name at that
//!   time and 48 random bits, e.g. `build-01-3f9a0c41d2e7`) and read back on every later start.
//!   Sandbox containers carry it as their owner label (`org.caldera.sandbox.owner`), and a worker
//!   sweeps at start only the containers with its own id: the leftovers of its own earlier run
//!   (after a crash), never those of another worker on the same engine. Stored rather than derived
//!   from the path or the host name, it stays the same when the host is renamed or the work dir is
//!   reached by another path (a container's bind mount), and two work dirs never share one unless
//!   the file is copied. It is read and made only under the lock, so two processes cannot make
//!   two.
//!
//! Containers made by versions before the instance id (owner `<host>-<8 hex digits>`, derived from
//! the work dir's path) never match one (12 hex digits) and are never swept: remove them by hand
//! once no older worker runs (docs/operator-guide.md).

use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file in the work dir.
pub const LOCK_FILE: &str = "worker.lock";
/// The file holding the work dir's instance id.
pub const INSTANCE_FILE: &str = "instance-id";

/// Why the work dir could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    /// Another live process holds the lock.
    #[error(
        "the work dir {} is in use by another caldera process{}",
        dir.display(),
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    Busy {
        dir: PathBuf,
        /// What the holder wrote into the lock file (`pid 1234`), when it could be read.
        holder: Option<String>,
    },
    #[error("the work dir {}: {context}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        context: String,
        source: io::Error,
    },
    #[error(
        "{}: {reason}; it names this work dir's sandbox containers — restore it, or delete it \
         (leftover containers of earlier runs are then no longer cleaned up)",
        path.display()
    )]
    BadInstance { path: PathBuf, reason: String },
}

/// A locked work dir; the lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct WorkDirLock {
    dir: PathBuf,
    instance: String,
    _file: File,
}

impl WorkDirLock {
    /// Creates `dir` if needed, locks it (failing at once if another process has it), records
    /// this process's pid in the lock file, and reads (or makes, the first time) the instance id.
    pub fn acquire(dir: &Path) -> Result<WorkDirLock, WorkDirError> {
        let io_err = |context: &str| {
            let dir = dir.to_owned();
            let context = context.to_owned();
            move |source| WorkDirError::Io {
                dir,
                context,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io_err("creating it"))?;
        let dir = dir.canonicalize().map_err(io_err("resolving its path"))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening worker.lock"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(WorkDirError::Busy {
                    holder: read_holder(&mut file),
                    dir,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("locking worker.lock")(e)),
        }
        write_holder(&mut file).map_err(io_err("writing worker.lock"))?;
        let instance = instance_id(&dir)?;
        Ok(WorkDirLock {
            dir,
            instance,
            _file: file,
        })
    }

    /// The work dir, canonical.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The work dir's instance id (see the module docs): the owner label of its containers.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

fn write_holder(file: &mut File) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "pid {}", std::process::id())?;
    file.flush()
}

/// What the lock's holder wrote: its first line, if it looks like ours.
fn read_holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(256).read_to_string(&mut text).ok()?;
    let line = text.lines().next()?.trim();
    let pid = line.strip_prefix("pid ")?;
    pid.parse::<u32>().ok().map(|_| line.to_owned())
}

/// Reads the instance id, or makes and stores one (atomically: a crash leaves none or all of it).
fn instance_id(dir: &Path) -> Result<String, WorkDirError> {
    let path = dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            check_instance(id).map_err(|reason| WorkDirError::BadInstance {
                path: path.clone(),
                reason,
            })?;
            Ok(id.to_owned())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = new_instance_id(&host_name(), rand::random());
            let tmp = dir.join(format!("{INSTANCE_FILE}.tmp"));
            let write = || -> io::Result<()> {
                let mut f = File::create(&tmp)?;
                writeln!(f, "{id}")?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                File::open(dir)?.sync_all()
            };
            write().map_err(|source| WorkDirError::Io {
                dir: dir.to_owned(),
                context: format!("writing {INSTANCE_FILE}"),
                source,
            })?;
            tracing::info!(instance = id, dir = %dir.display(), "new worker instance id for this work dir");
            Ok(id)
        }
        Err(source) => Err(WorkDirError::Io {
            dir: dir.to_owned(),
            context: format!("reading {INSTANCE_FILE}"),
            source,
        }),
    }
}

/// `<host>-<12 hex digits>`: the host part sanitised (letters, digits, `-`) and at most 40 long.
fn new_instance_id(host: &str, random: u64) -> String {
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let host = host.trim_matches('-');
    let host = if host.is_empty() { "worker" } else { host };
    format!("{host}-{:012x}", random & 0xffff_ffff_ffff)
}

/// A stored instance id must be what [`new_instance_id`] makes: it goes into container labels
/// and names.
fn check_instance(id: &str) -> Result<(), String> {
    let Some((host, random)) = id.rsplit_once('-') else {
        return Err(format!(
            "{id:?} is not an instance id (<host>-<12 hex digits>)"
        ));
    };
    let ok = !host.is_empty()
        && host.len() <= 40
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && random.len() == 12
        && random.chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not an instance id (<host>-<12 hex digits>)"
        ))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_made_and_checked() {
        for (host, random, want) in [
            ("build-01", 0x3f9a_0c41_d2e7, "build-01-3f9a0c41d2e7"),
            ("a.b_c", 1, "a-b-c-000000000001"),
            ("", 0xffff_0000_0000_0001, "worker-000000000001"),
            ("--", 2, "worker-000000000002"),
        ] {
            let id = new_instance_id(host, random);
            assert_eq!(id, want);
            assert_eq!(check_instance(&id), Ok(()));
        }
        let long = new_instance_id(&"h".repeat(100), 3);
        assert_eq!(long.len(), 40 + 13);
        assert_eq!(check_instance(&long), Ok(()));
        // the owners of older versions (`<host>-<8 hex>`) and anything else are no instance id
        for bad in [
            "",
            "build-01-3f9a0c41",
            "build-01",
            "-3f9a0c41d2e7",
            "a b-3f9a0c41d2e7",
            "x-3f9a0c41d2eg",
        ] {
            assert!(check_instance(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_process_per_work_dir_and_the_id_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("work");
        let first = WorkDirLock::acquire(&dir).unwrap();
        let id = first.instance().to_owned();
        check_instance(&id).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            format!("pid {}\n", std::process::id())
        );
        let files = |d: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let before = files(&dir);

        // a second claim (another open file: flock treats it as another process) fails at once,
        // naming the dir and the holder, and changes nothing
        let err = WorkDirLock::acquire(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WorkDirError::Busy { .. }), "{msg}");
        assert!(
            msg.contains(&dir.canonicalize().unwrap().display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        assert_eq!(files(&dir), before);
        assert_eq!(
            std::fs::read_to_string(dir.join(INSTANCE_FILE)).unwrap(),
            format!("{id}\n")
        );

        // released on drop; a restart keeps the id; another work dir has another
        drop(first);
        let again = WorkDirLock::acquire(&dir).unwrap();
        assert_eq!(again.instance(), id);
        let other = WorkDirLock::acquire(&root.path().join("other")).unwrap();
        assert_ne!(other.instance(), id);
    }

    #[test]
    fn a_damaged_instance_id_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_FILE), "not an id\n").unwrap();
        let err = WorkDirLock::acquire(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WorkDirError::BadInstance { .. }), "{msg}");
        assert!(
            msg.contains("instance-id") && msg.contains("not an id"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(INSTANCE_FILE)).unwrap(),
            "not an id\n"
        );
    }
}
