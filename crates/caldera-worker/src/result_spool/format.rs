//! The result spool on disk: segment files (`<sequence, 20 digits>.seg`, starting with
//! `caldspl1`), the records in them, and the names of the other files a spool directory may hold
//! (see the spool's module documentation for the format).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use caldera_proto::v1::JobResult;
use prost::Message;

use super::Key;

/// The first bytes of every segment.
pub(super) const MAGIC: &[u8; 8] = b"caldspl1";
/// length, crc, kind
const RECORD_HEADER: usize = 9;
const KIND_RESULT: u8 = 1;
const KIND_ACK: u8 = 2;
/// No record is bigger (a result is a few hundred bytes; gRPC itself caps messages at 4 MiB).
pub(super) const MAX_PAYLOAD: usize = 16 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
pub(super) const CORRUPT_SUFFIX: &str = ".corrupt";
pub(super) const LOCK_FILE: &str = "LOCK";
/// Spool files of the earlier one-file-per-result format.
const LEGACY_SUFFIX: &str = ".result";

pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The `(job id, lease token)` of a spool file of the earlier format; `None` for anything else.
pub(super) fn parse_legacy_name(name: &str) -> Option<Key> {
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
pub(super) fn corrupt_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(CORRUPT_SUFFIX);
    p.into()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

pub(super) fn put_result(buf: &mut Vec<u8>, r: &JobResult) -> io::Result<()> {
    put_record(buf, KIND_RESULT, |b| {
        r.encode(b).expect("a Vec grows as needed")
    })
}

pub(super) fn put_ack(buf: &mut Vec<u8>, (job_id, token): &Key) -> io::Result<()> {
    put_record(buf, KIND_ACK, |b| {
        b.extend_from_slice(&job_id.to_le_bytes());
        b.extend_from_slice(token.as_bytes());
    })
}

#[derive(Debug)]
pub(super) enum Record {
    Result(Box<JobResult>),
    Ack(Key),
}

/// What a segment's bytes hold.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) records: Vec<Record>,
    /// Bytes of the valid prefix: the header and every record in `records`.
    pub(super) valid: usize,
    /// Why parsing stopped before the end, if it did.
    pub(super) bad: Option<Bad>,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Bad {
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

pub(super) fn parse_segment(data: &[u8]) -> Parsed {
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

/// Creates segment `seq` holding `content` (which starts with the header), durably: the data
/// synced, then the directory.
pub(super) fn create_segment(dir: &Path, seq: u64, content: &[u8]) -> io::Result<File> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

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
