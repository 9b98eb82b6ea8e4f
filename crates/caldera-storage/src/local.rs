//! The local-directory backend.
//!
//! Layout under the root directory:
//!
//! ```text
//! objects/{key}     one file per object: a small header (magic, length, JSON with content type,
//!                   encoding and metadata) followed by the object's bytes
//! tmp/              files being written; renamed into objects/ once complete
//! ```
//!
//! Metadata lives in the object file's own header rather than in a sidecar file or extended attributes,
//! so one `rename` publishes data and metadata together, and no key can collide with a sidecar name.
//! Temporary files live in `tmp/` (same file system as `objects/`, so `rename` is atomic) rather than
//! next to their target, so listings never see partial files and no key can collide with a temp name.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;

use tokio::io::AsyncReadExt;

use crate::error::StorageError;
use crate::frame::{self, fsync_dir};
use crate::key::ObjectKey;
use crate::store::{
    ByteStream, GetObject, ObjectInfo, ObjectMeta, ObjectStore, PutOptions, file_stream,
};

const MAGIC: &[u8; 8] = b"CALDOBJ1";
/// Temporary files older than this found at open are left over from a crash and removed.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// The JSON header of a stored object's file.
type Header = PutOptions;

/// Objects in a directory on local disk: the embedded default backend.
///
/// Writes are atomic and durable: data goes to a temporary file, which is fsynced and renamed into place,
/// then the directory is fsynced. Several processes (a master and a worker on one machine) may share
/// the directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    objects: PathBuf,
    tmp: PathBuf,
    max_object_size: u64,
    label: String,
}

impl LocalStore {
    /// Opens (creating if needed) a store in `root`, refusing objects larger than `max_object_size` bytes.
    ///
    /// Temporary files left over from a crash more than an hour ago are removed.
    pub fn open(root: impl Into<PathBuf>, max_object_size: u64) -> Result<Self, StorageError> {
        let root = root.into();
        let label = format!("local directory `{}`", root.display());
        let objects = root.join("objects");
        let tmp = root.join("tmp");
        for dir in [&objects, &tmp] {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
                store: label.clone(),
                op: "create directory",
                key: dir.display().to_string(),
                source,
            })?;
        }
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            let now = SystemTime::now();
            for entry in entries.flatten() {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > STALE_TMP_AGE);
                if stale {
                    let path = entry.path();
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
            }
        }
        Ok(LocalStore {
            root,
            objects,
            tmp,
            max_object_size,
            label,
        })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        // Safe: an ObjectKey has no empty, `.` or `..` segments, no leading `/` and no backslash.
        self.objects.join(key.as_str())
    }

    fn io_err(&self, op: &'static str, key: &ObjectKey) -> impl FnOnce(io::Error) -> StorageError {
        StorageError::io(&self.label, op, key)
    }

    fn not_found(&self, key: &ObjectKey) -> StorageError {
        StorageError::NotFound {
            store: self.label.clone(),
            key: key.to_string(),
        }
    }

    /// Opens an object file and reads its header; the file is left positioned at the data.
    async fn open_object(
        &self,
        key: &ObjectKey,
    ) -> Result<(tokio::fs::File, ObjectMeta), StorageError> {
        let path = self.path_of(key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Err(self.not_found(key)),
            Err(e) => return Err(self.io_err("open", key)(e)),
        };
        let fs_meta = file.metadata().await.map_err(self.io_err("stat", key))?;
        if !fs_meta.is_file() {
            // A directory: the key is a prefix of other keys, not an object.
            return Err(self.not_found(key));
        }
        let mut fixed = [0u8; 12];
        file.read_exact(&mut fixed)
            .await
            .map_err(|e| self.corrupt(key, format!("cannot read the header: {e}")))?;
        let json_len = parse_fixed(&fixed).map_err(|reason| self.corrupt(key, reason))?;
        let mut json = vec![0u8; json_len as usize];
        file.read_exact(&mut json)
            .await
            .map_err(|e| self.corrupt(key, format!("cannot read the header: {e}")))?;
        let header: Header = serde_json::from_slice(&json)
            .map_err(|e| self.corrupt(key, format!("bad header: {e}")))?;
        let header_len = 12 + u64::from(json_len);
        let size = fs_meta
            .len()
            .checked_sub(header_len)
            .ok_or_else(|| self.corrupt(key, "shorter than its header".to_owned()))?;
        Ok((
            file,
            ObjectMeta {
                size,
                content_type: header.content_type,
                content_encoding: header.content_encoding,
                metadata: header.metadata,
            },
        ))
    }

    fn corrupt(&self, key: &ObjectKey, reason: String) -> StorageError {
        StorageError::Corrupt {
            store: self.label.clone(),
            key: key.to_string(),
            reason,
        }
    }

    async fn write_tmp(
        &self,
        tmp_path: &Path,
        key: &ObjectKey,
        body: ByteStream,
        options: &PutOptions,
    ) -> Result<u64, StorageError> {
        let header: &Header = options;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp_path)
            .await
            .map_err(self.io_err("create temporary file for", key))?;
        frame::write(
            &mut file,
            &frame::prefix(MAGIC, &header),
            body,
            self.max_object_size,
            &self.label,
            key,
            |op, e| self.io_err(op, key)(e),
        )
        .await
    }
}

fn parse_fixed(fixed: &[u8; frame::FIXED_LEN]) -> Result<u32, String> {
    frame::header_len(MAGIC, "a caldera object file", fixed)
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Removes a temporary file if the put did not complete (error or cancellation).
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // A single unlink; cheap enough to do inline even on a runtime thread.
            let _ = std::fs::remove_file(path);
        }
    }
}

fn tmp_name(what: &str) -> String {
    format!(
        "{what}-{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    )
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> &str {
        &self.label
    }

    fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        options.validate(key)?;
        let tmp_path = self.tmp.join(tmp_name("put"));
        let mut guard = TmpGuard(Some(tmp_path.clone()));
        let written = self.write_tmp(&tmp_path, key, body, &options).await?;
        let target = self.path_of(key);
        let parent = target
            .parent()
            .expect("object path has a parent")
            .to_owned();
        // Directories created for this object must reach the disk too: remember the topmost new one.
        let mut first_new_dir = None;
        let mut probe = parent.as_path();
        while probe != self.objects && !tokio::fs::try_exists(probe).await.unwrap_or(false) {
            first_new_dir = Some(probe.to_owned());
            probe = probe.parent().expect("inside the objects directory");
        }
        // A concurrent delete_prefix may remove the parent between create and rename: retry once.
        let mut attempt = 0;
        loop {
            tokio::fs::create_dir_all(&parent)
                .await
                .map_err(self.io_err("create directory for", key))?;
            match tokio::fs::rename(&tmp_path, &target).await {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => attempt += 1,
                Err(e) => return Err(self.io_err("rename into place", key)(e)),
            }
        }
        guard.0 = None;
        fsync_dir(&parent)
            .await
            .map_err(self.io_err("fsync directory of", key))?;
        if let Some(first_new) = first_new_dir {
            // fsync every directory from the parent up to the one holding the first new directory.
            let mut dir = parent.parent();
            while let Some(d) = dir {
                fsync_dir(d)
                    .await
                    .map_err(self.io_err("fsync directory of", key))?;
                if Some(d) == first_new.parent() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(written)
    }

    async fn get(&self, key: &ObjectKey) -> Result<GetObject, StorageError> {
        let (file, meta) = self.open_object(key).await?;
        let store = self.label.clone();
        let k = key.to_string();
        let body = file_stream(file)
            .map(move |r| {
                r.map_err(|source| StorageError::Io {
                    store: store.clone(),
                    op: "read",
                    key: k.clone(),
                    source,
                })
            })
            .boxed();
        Ok(GetObject { meta, body })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        Ok(self.open_object(key).await?.1)
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, StorageError> {
        let dir = self.path_of(prefix);
        let prefix = prefix.clone();
        let label = self.label.clone();
        let join = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &prefix, &mut out).map_err(|source| StorageError::Io {
                store: label,
                op: "list",
                key: prefix.to_string(),
                source,
            })?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await;
        join.map_err(|e| StorageError::Io {
            store: self.label.clone(),
            op: "list",
            key: String::new(),
            source: io::Error::other(e),
        })?
    }

    async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<u64, StorageError> {
        let dir = self.path_of(prefix);
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(0),
            Err(e) if is_missing(&e) => return Ok(0),
            Err(e) => return Err(self.io_err("delete", prefix)(e)),
        }
        // Move the whole subtree out of sight atomically, then remove it at leisure.
        let doomed = self.tmp.join(tmp_name("delete"));
        match tokio::fs::rename(&dir, &doomed).await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => return Ok(0),
            Err(e) => return Err(self.io_err("delete", prefix)(e)),
        }
        let parent = dir.parent().expect("has a parent").to_owned();
        let _ = fsync_dir(&parent).await;
        let objects_root = self.objects.clone();
        let join = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let count = count_files(&doomed)?;
            std::fs::remove_dir_all(&doomed)?;
            // Remove directories left empty above the prefix (fails harmlessly when not empty).
            let mut d = parent.as_path();
            while d != objects_root && std::fs::remove_dir(d).is_ok() {
                match d.parent() {
                    Some(p) => d = p,
                    None => break,
                }
            }
            Ok(count)
        })
        .await;
        join.map_err(io::Error::other)
            .and_then(|r| r)
            .map_err(self.io_err("delete", prefix))
    }
}

fn walk(dir: &Path, prefix: &ObjectKey, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if is_missing(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %entry.path().display(), "ignoring a file whose name is not UTF-8");
            continue;
        };
        let Ok(key) = prefix.join(&name) else {
            tracing::warn!(path = %entry.path().display(), "ignoring a file whose name is not a key");
            continue;
        };
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if file_type.is_file() {
            let mut file = match std::fs::File::open(entry.path()) {
                Ok(f) => f,
                // Deleted or replaced since read_dir: not part of this listing.
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            let mut fixed = [0u8; 12];
            let header = file
                .read_exact(&mut fixed)
                .ok()
                .and_then(|()| parse_fixed(&fixed).ok());
            match header {
                Some(json_len) if len >= 12 + u64::from(json_len) => out.push(ObjectInfo {
                    key,
                    size: len - 12 - u64::from(json_len),
                }),
                _ => {
                    tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a caldera object")
                }
            }
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            n += count_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}
