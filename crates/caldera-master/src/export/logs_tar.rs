//! `logs.tar.zst`: the logs of every crate listed in `index.html`, as `logs/{crate}/start.log` and
//! `logs/{crate}/end.log`, plus `logs/MISSING.txt` naming logs that could not be read. Each log is
//! streamed from storage into the archive, decompressed.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use caldera_report::{CrateReport, Report};
use caldera_storage::{ObjectKey, ObjectStore, StorageError, keys};
use chrono::Utc;
use futures::StreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::stream::put_streamed;
use super::{CHUNK, ExportError, ExportedFile};

/// Stores `logs.tar.zst` of the experiment `name`, with the logs of the crates `listed` (input
/// order indices of `report`). Returns the file and the logs written and missing.
pub(super) async fn write_archive(
    store: &Arc<dyn ObjectStore>,
    name: &str,
    report: &Report,
    listed: &[usize],
) -> Result<(ExportedFile, (usize, usize)), ExportError> {
    let t = Instant::now();
    let k = keys::report(name, "logs.tar.zst")?;
    let (entries, missing) = log_entries(report, listed)?;
    let handle = tokio::runtime::Handle::current();
    let log_store = store.clone();
    let counts = Arc::new(Mutex::new((0usize, 0usize)));
    let written = counts.clone();
    let n = put_streamed(&**store, &k, "logs.tar.zst", false, move |w| {
        let n = write_logs_tar(w, handle, log_store, entries, missing)?;
        *written.lock().unwrap_or_else(|p| p.into_inner()) = n;
        Ok(())
    })
    .await?;
    let counts = *counts.lock().unwrap_or_else(|p| p.into_inner());
    Ok((ExportedFile::new("logs.tar.zst", &k, n, t), counts))
}

/// The archive's entries, `(path, log key)`, of the crates `listed`; and the paths of the logs
/// that were never recorded, for `logs/MISSING.txt`.
fn log_entries(
    report: &Report,
    listed: &[usize],
) -> Result<(Vec<(String, String)>, Vec<String>), StorageError> {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let all: Vec<CrateReport<'_>> = report.crates().collect();
    for &i in listed {
        let c = all[i];
        let dir = keys::encode_component(&c.krate().to_string())?;
        for (side, log) in [
            ("start", &c.result().start_log),
            ("end", &c.result().end_log),
        ] {
            let path = format!("logs/{dir}/{side}.log");
            match log {
                Some(key) => entries.push((path, key.clone())),
                None => missing.push(format!("{path}: no log was recorded")),
            }
        }
    }
    Ok((entries, missing))
}

/// Reads exactly `left` bytes from `inner`: stops there if it has more, pads with zeros if it
/// ends or fails early (so the tar entry keeps the size its header announced).
struct Exact<R> {
    inner: R,
    left: u64,
    failed: Option<String>,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = if self.failed.is_some() {
            0
        } else {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read(buf),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    0
                }
            }
        };
        let n = if n == 0 {
            if self.failed.is_none() {
                self.failed = Some(format!("the log ended {} bytes early", self.left));
            }
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a tar of the logs (decompressed) into `w`, zstd-compressed. Returns the logs written
/// and the number missing.
fn write_logs_tar(
    w: &mut dyn Write,
    handle: tokio::runtime::Handle,
    store: Arc<dyn ObjectStore>,
    entries: Vec<(String, String)>,
    mut missing: Vec<String>,
) -> io::Result<(usize, usize)> {
    let mtime = Utc::now().timestamp().max(0) as u64;
    let encoder = zstd::Encoder::new(w, 3)?;
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(CHUNK, encoder));
    let mut written = 0;
    for (path, key) in entries {
        let (size, reader) = match open_log(&handle, &*store, &path, &key) {
            Ok(log) => log,
            Err(why) => {
                missing.push(why);
                continue;
            }
        };
        let mut exact = Exact {
            inner: reader,
            left: size,
            failed: None,
        };
        tar.append_data(&mut file_header(size, mtime), &path, &mut exact)?;
        if let Some(why) = exact.failed {
            missing.push(format!("{path}: incomplete (padded with zeros): {why}"));
        }
        written += 1;
    }
    let n_missing = missing.len();
    if !missing.is_empty() {
        let text = missing_note(&missing);
        let mut header = file_header(text.len() as u64, mtime);
        tar.append_data(&mut header, "logs/MISSING.txt", text.as_bytes())?;
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .finish()?;
    Ok((written, n_missing))
}

/// The size (decompressed) and a blocking reader of the log stored under `key`, for the archive's
/// entry `path`; or the line of `logs/MISSING.txt` saying why it cannot be read.
fn open_log(
    handle: &tokio::runtime::Handle,
    store: &dyn ObjectStore,
    path: &str,
    key: &str,
) -> Result<(u64, impl Read + use<>), String> {
    let key = ObjectKey::new(key).map_err(|e| format!("{path}: invalid key {key:?}: {e}"))?;
    let size = match handle.block_on(store.head(&key)) {
        Ok(meta) => meta
            .metadata
            .get(caldera_storage::ORIGINAL_SIZE_METADATA)
            .and_then(|s| s.parse::<u64>().ok()),
        Err(e) if e.is_not_found() => return Err(format!("{path}: not in object storage ({key})")),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let Some(size) = size else {
        return Err(format!(
            "{path}: {key} is not a log stored by caldera (no original size)"
        ));
    };
    let body = handle
        .block_on(caldera_storage::get_log(store, &key))
        .map_err(|e| format!("{path}: {e}"))?;
    let reader = SyncIoBridge::new_with_handle(
        StreamReader::new(body.map(|r| r.map_err(io::Error::other))),
        handle.clone(),
    );
    Ok((size, reader))
}

/// The header of a regular file of the archive.
fn file_header(size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// `logs/MISSING.txt`: the logs that are not in the archive, or not whole, and why.
fn missing_note(missing: &[String]) -> String {
    let mut text = String::from("Logs that are not in this archive, or not whole:\n");
    for m in missing {
        text.push_str(m);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_truncates_and_pads() {
        let mut out = Vec::new();
        Exact {
            inner: &b"hello world"[..],
            left: 5,
            failed: None,
        }
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, b"hello");
        let mut out = Vec::new();
        let mut short = Exact {
            inner: &b"hi"[..],
            left: 5,
            failed: None,
        };
        short.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"hi\0\0\0");
        assert!(short.failed.unwrap().contains("3 bytes early"));
    }
}
