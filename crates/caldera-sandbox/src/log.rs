//! Bounded capture of a step's merged output.
//!
//! Output arrives in arbitrary chunks. Every line is prefixed with the time elapsed since the step
//! started (`[   1.234] `, written by [`caldera_core::logtext::stamp`], next to the code that reads
//! it back), stamped when the line's first byte arrives, so nothing waits for a newline and a
//! multi-GiB single line is as harmless as many short ones. The rendered log keeps at most `cap`
//! bytes: the first half verbatim, the last half in a ring buffer, and between them one marker line
//! saying how much was cut. Memory use is bounded by the cap whatever the step prints.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use caldera_core::logtext;

/// Default cap of a step's captured log: 5 MiB.
pub const DEFAULT_LOG_CAP: usize = 5 * 1024 * 1024;

/// Room kept inside the cap for the truncation marker.
const MARKER_RESERVE: usize = 256;
/// Smallest cap accepted; smaller requests are raised to it.
pub const MIN_LOG_CAP: usize = 2 * MARKER_RESERVE;

/// The captured output of one step: head and tail of the timestamped, merged stdout+stderr.
#[derive(Clone, PartialEq, Eq)]
pub struct CapturedLog {
    content: Vec<u8>,
    output_bytes: u64,
    lines: u64,
    omitted_bytes: u64,
    cap: usize,
}

impl CapturedLog {
    /// The log as stored: at most `cap` bytes, with a marker where the middle was cut.
    pub fn as_bytes(&self) -> &[u8] {
        &self.content
    }

    /// The log as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.content)
    }

    /// Whether the stored log contains `needle` (searched in the bytes that were kept).
    pub fn contains(&self, needle: &str) -> bool {
        let needle = needle.as_bytes();
        needle.is_empty() || self.content.windows(needle.len()).any(|w| w == needle)
    }

    /// Bytes the step wrote, before timestamps were added and before the cap.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// Lines the step wrote (a last line without a newline counts).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes of the rendered (timestamped) log that were cut out of the middle.
    pub fn omitted_bytes(&self) -> u64 {
        self.omitted_bytes
    }

    /// Whether anything was cut.
    pub fn truncated(&self) -> bool {
        self.omitted_bytes > 0
    }

    /// The cap this log was captured with.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Consumes the log, returning the stored bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.content
    }
}

impl fmt::Debug for CapturedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturedLog")
            .field("stored_bytes", &self.content.len())
            .field("output_bytes", &self.output_bytes)
            .field("lines", &self.lines)
            .field("omitted_bytes", &self.omitted_bytes)
            .field("cap", &self.cap)
            .finish()
    }
}

/// Text of the marker inserted where output was cut.
pub fn truncation_marker(omitted_bytes: u64, cap: usize) -> String {
    format!(
        "\n[caldera: log truncated: {omitted_bytes} bytes omitted here; the log keeps the first and last part within a cap of {cap} bytes]\n"
    )
}

/// Streaming builder of a [`CapturedLog`].
#[derive(Debug)]
pub struct LogCapture {
    cap: usize,
    head_budget: usize,
    head: Vec<u8>,
    tail: Ring,
    rendered_bytes: u64,
    output_bytes: u64,
    lines: u64,
    at_line_start: bool,
}

impl LogCapture {
    /// A capture keeping at most `cap` bytes (raised to [`MIN_LOG_CAP`] if smaller).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(MIN_LOG_CAP);
        let budget = cap - MARKER_RESERVE;
        let head_budget = budget / 2;
        Self {
            cap,
            head_budget,
            head: Vec::new(),
            tail: Ring::new(budget - head_budget),
            rendered_bytes: 0,
            output_bytes: 0,
            lines: 0,
            at_line_start: true,
        }
    }

    /// Appends a chunk of output that arrived `elapsed` after the step started.
    pub fn push(&mut self, chunk: &[u8], elapsed: Duration) {
        self.output_bytes += chunk.len() as u64;
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.at_line_start {
                let stamp = logtext::stamp(elapsed);
                self.emit(stamp.as_bytes());
                self.lines += 1;
                self.at_line_start = false;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.emit(&rest[..=i]);
                    self.at_line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    self.emit(rest);
                    rest = &[];
                }
            }
        }
    }

    fn emit(&mut self, mut bytes: &[u8]) {
        self.rendered_bytes += bytes.len() as u64;
        if self.head.len() < self.head_budget {
            let take = bytes.len().min(self.head_budget - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if !bytes.is_empty() {
            self.tail.push(bytes);
        }
    }

    /// Finishes the capture. A last line without a newline gets one, so the log always ends in `\n`.
    pub fn finish(mut self) -> CapturedLog {
        if !self.at_line_start {
            self.emit(b"\n");
        }
        let kept = self.head.len() as u64 + self.tail.len as u64;
        let omitted_bytes = self.rendered_bytes - kept;
        let mut content = self.head;
        if omitted_bytes > 0 {
            content.extend_from_slice(truncation_marker(omitted_bytes, self.cap).as_bytes());
        }
        self.tail.append_to(&mut content);
        debug_assert!(content.len() <= self.cap);
        CapturedLog {
            content,
            output_bytes: self.output_bytes,
            lines: self.lines,
            omitted_bytes,
            cap: self.cap,
        }
    }
}

/// Fixed-size ring keeping the last `cap` bytes pushed; copies whole slices (no per-byte work).
#[derive(Debug)]
struct Ring {
    buf: Vec<u8>,
    cap: usize,
    start: usize,
    len: usize,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            start: 0,
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.cap == 0 {
            return;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; self.cap];
        }
        if bytes.len() >= self.cap {
            self.buf.copy_from_slice(&bytes[bytes.len() - self.cap..]);
            self.start = 0;
            self.len = self.cap;
            return;
        }
        let write = (self.start + self.len) % self.cap;
        let first = bytes.len().min(self.cap - write);
        self.buf[write..write + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        let len = self.len + bytes.len();
        if len > self.cap {
            self.start = (self.start + len - self.cap) % self.cap;
            self.len = self.cap;
        } else {
            self.len = len;
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        let first = self.len.min(self.cap - self.start);
        out.extend_from_slice(&self.buf[self.start..self.start + first]);
        out.extend_from_slice(&self.buf[..self.len - first]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lines_are_stamped_when_they_start() {
        let mut c = LogCapture::new(DEFAULT_LOG_CAP);
        c.push(b"hello\nwor", ms(1500));
        c.push(b"ld\n", ms(2500));
        c.push(b"tail without newline", ms(12_345));
        let log = c.finish();
        assert_eq!(
            log.text(),
            "[   1.500] hello\n[   1.500] world\n[  12.345] tail without newline\n"
        );
        assert_eq!(log.lines(), 3);
        assert_eq!(log.output_bytes(), 6 + 3 + 3 + 20);
        assert!(!log.truncated());
    }

    #[test]
    fn empty_output_gives_empty_log() {
        let log = LogCapture::new(1024).finish();
        assert!(log.as_bytes().is_empty());
        assert_eq!(log.lines(), 0);
    }

    #[test]
    fn flood_keeps_head_and_tail_within_cap() {
        let cap = 4096;
        let mut c = LogCapture::new(cap);
        c.push(b"FIRST LINE\n", ms(0));
        let filler = vec![b'x'; 10_000];
        for _ in 0..1000 {
            c.push(&filler, ms(1));
        }
        c.push(b"\nLAST LINE\n", ms(2));
        let log = c.finish();
        assert!(
            log.as_bytes().len() <= cap,
            "{} > {cap}",
            log.as_bytes().len()
        );
        assert!(log.truncated());
        let text = log.text();
        assert!(text.starts_with("[   0.000] FIRST LINE\n"));
        assert!(text.ends_with("[   0.002] LAST LINE\n"));
        let marker_start = text.find("[caldera: log truncated: ").expect("marker");
        let omitted: u64 = text[marker_start..]
            .trim_start_matches("[caldera: log truncated: ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(omitted, log.omitted_bytes());
        // Everything rendered is either kept or counted as omitted.
        let marker_len = truncation_marker(omitted, cap).len() as u64;
        let rendered = 11 + 11 + 10_000_000 + 1 + 11 + 10 + 11;
        assert_eq!(
            log.as_bytes().len() as u64 - marker_len + omitted,
            rendered as u64
        );
    }

    #[test]
    fn output_exactly_at_budget_is_not_truncated() {
        let cap = 1024;
        let budget = cap - MARKER_RESERVE;
        let mut c = LogCapture::new(cap);
        // One line: stamp (11 bytes) + payload + newline == budget.
        let payload = vec![b'y'; budget - 11 - 1];
        c.push(&payload, ms(0));
        c.push(b"\n", ms(0));
        let log = c.finish();
        assert!(!log.truncated());
        assert_eq!(log.as_bytes().len(), budget);
        let mut c = LogCapture::new(cap);
        c.push(&payload, ms(0));
        c.push(b"z\n", ms(0));
        let log = c.finish();
        assert!(log.truncated());
        assert_eq!(log.omitted_bytes(), 1);
    }

    #[test]
    fn ring_keeps_the_last_bytes() {
        let mut ring = Ring::new(5);
        let mut all = Vec::new();
        for chunk in [&b"ab"[..], b"cde", b"f", b"", b"ghij", b"klmnopq", b"r"] {
            ring.push(chunk);
            all.extend_from_slice(chunk);
            let mut out = Vec::new();
            ring.append_to(&mut out);
            let keep = all.len().min(5);
            assert_eq!(out, all[all.len() - keep..], "after {chunk:?}");
        }
    }

    #[test]
    fn tiny_caps_are_raised() {
        let mut c = LogCapture::new(1);
        c.push(&[b'a'; 10_000], ms(0));
        let log = c.finish();
        assert_eq!(log.cap(), MIN_LOG_CAP);
        assert!(log.as_bytes().len() <= MIN_LOG_CAP);
    }
}
