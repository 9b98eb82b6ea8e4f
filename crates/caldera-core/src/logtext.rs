//! Build logs as people read them.
//!
//! A job's log is the record: each output line stamped `[   1.234] ` with the seconds since its step
//! began, and cargo's machine-readable messages (`--message-format=json-diagnostic-rendered-ansi`)
//! kept as JSON because classification reads them. [`for_reading`] turns such a log into what a
//! person expects from cargo on a terminal: every `compiler-message` becomes its rendered diagnostic
//! (with its colours), the bookkeeping messages (`compiler-artifact`, `build-script-executed`,
//! `build-finished`, `timing-info`) are left out, and every other line is kept as it is.
//!
//! The stamp has one owner: [`stamp`] writes it (the sandbox's log capture calls it for every line)
//! and [`stamp_len`] reads it back, so the two cannot drift apart.

use std::time::Duration;

use serde::Deserialize;

/// Width of a stamp's seconds (`   1.234`): right-aligned, so that the stamps of a step's first
/// 9999.999 s (2 h 46 min) line up; later ones are as wide as their seconds need.
pub const STAMP_SECONDS_WIDTH: usize = 8;

/// The stamp `[   1.234] ` of a line that began `elapsed` after its step did: the seconds with three
/// decimals, right-aligned in [`STAMP_SECONDS_WIDTH`] characters, between brackets, then a space.
pub fn stamp(elapsed: Duration) -> String {
    format!("[{:>STAMP_SECONDS_WIDTH$.3}] ", elapsed.as_secs_f64())
}

/// The length of a line stamp `[   1.234] ` (as [`stamp`] writes it) when the line has one
/// (digits, spaces and one dot between brackets, then a space).
pub fn stamp_len(line: &str) -> Option<usize> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find("] ")?;
    let inner = &rest[..close];
    let digits = inner.trim_start_matches(' ');
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
        && digits.as_bytes()[0].is_ascii_digit();
    ok.then_some(close + 3)
}

/// `line` without its stamp `[   1.234] `, if it has one.
pub fn unstamped(line: &str) -> &str {
    &line[stamp_len(line).unwrap_or(0)..]
}

/// `line` without ANSI escape sequences (CSI, OSC, nF and two-character escapes; the
/// `strip-ansi-escapes` crate's terminal parser) and other control characters but tabs.
pub fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    if line.bytes().all(|b| b >= b' ' || b == b'\t') {
        std::borrow::Cow::Borrowed(line)
    } else {
        std::borrow::Cow::Owned(strip_ansi_escapes::strip_str(line))
    }
}

/// One of cargo's machine-readable messages (`--message-format=json…`), as far as caldera reads
/// them: here, for the rendered diagnostics; in `classify`, for errors, codes and packages.
#[derive(Deserialize)]
pub struct CargoMessage<'a> {
    #[serde(borrow)]
    pub reason: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    pub package_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    pub message: Option<Diagnostic>,
    #[serde(default)]
    pub success: Option<bool>,
}

/// A compiler diagnostic inside a `compiler-message`.
#[derive(Deserialize)]
pub struct Diagnostic {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: Option<DiagnosticCode>,
    #[serde(default)]
    pub level: String,
    #[serde(default)]
    pub children: Vec<Diagnostic>,
    /// The diagnostic as rustc prints it on a terminal (with colours).
    #[serde(default)]
    pub rendered: Option<String>,
}

/// A diagnostic's error code (`E0308`) or lint name.
#[derive(Deserialize)]
pub struct DiagnosticCode {
    pub code: String,
}

/// What one log line becomes for a reader.
enum Line<'a> {
    Keep,
    Drop,
    Rendered(&'a str, String),
}

fn classify(line: &str) -> Line<'_> {
    let stamp = stamp_len(line).unwrap_or(0);
    let body = &line[stamp..];
    if !body.starts_with("{\"reason\":") {
        return Line::Keep;
    }
    let Ok(msg) = serde_json::from_str::<CargoMessage>(body) else {
        return Line::Keep;
    };
    match &*msg.reason {
        "compiler-message" => match msg.message.and_then(|m| m.rendered) {
            Some(r) => Line::Rendered(&line[..stamp], r),
            None => Line::Drop,
        },
        "compiler-artifact" | "build-script-executed" | "build-finished" | "timing-info" => {
            Line::Drop
        }
        _ => Line::Keep,
    }
}

/// The log as a person reads it (see the module documentation). Lines end in `\n`; a rendered
/// diagnostic keeps its line's stamp on its first line and is indented under it on the others.
pub fn for_reading(log: &str) -> String {
    let mut out = String::with_capacity(log.len() / 2);
    for line in log.lines() {
        match classify(line) {
            Line::Keep => {
                out.push_str(line);
                out.push('\n');
            }
            Line::Drop => {}
            Line::Rendered(stamp, text) => {
                let pad = " ".repeat(stamp.len());
                for (i, l) in text.trim_end_matches('\n').split('\n').enumerate() {
                    out.push_str(if i == 0 { stamp } else { &pad });
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_recognised_and_nothing_else() {
        let cases: &[(&str, Option<usize>)] = &[
            ("[   0.133] Compiling", Some(11)),
            ("[1234.500] x", Some(11)),
            ("[0] x", Some(4)),
            ("[   0.133]x", None),
            ("[ ] x", None),
            ("[a.b] x", None),
            ("[1.2.3] x", None),
            ("[.5] x", None),
            ("no stamp", None),
            ("[E0308] x", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(stamp_len(line), *want, "{line:?}");
        }
    }

    #[test]
    fn written_stamps_are_read_back() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "[   0.000] "),
            (Duration::from_millis(250), "[   0.250] "),
            (Duration::from_micros(1_500_400), "[   1.500] "),
            (Duration::from_millis(9_999_999), "[9999.999] "),
            (Duration::from_secs(3 * 3600), "[10800.000] "),
            (Duration::from_secs(400 * 24 * 3600), "[34560000.000] "),
            (Duration::from_secs(u64::MAX), "[18446744073709551616.000] "),
        ];
        for (elapsed, want) in cases {
            let written = stamp(*elapsed);
            assert_eq!(written, *want, "{elapsed:?}");
            assert_eq!(stamp_len(&written), Some(written.len()), "{written:?}");
            let line = format!("{written}   Compiling x v0.1.0");
            assert_eq!(unstamped(&line), "   Compiling x v0.1.0", "{line:?}");
        }
    }

    #[test]
    fn cargo_messages_become_what_cargo_prints_on_a_terminal() {
        let log = concat!(
            "caldera build log\n",
            "==== step 1/3: build ====\n",
            "[   0.133] \x1b[1m\x1b[92m   Compiling\x1b[0m x v0.1.0\n",
            "[   0.507] {\"reason\":\"compiler-artifact\",\"package_id\":\"x\"}\n",
            "[   0.534] {\"reason\":\"build-script-executed\",\"package_id\":\"x\"}\n",
            "[   0.600] {\"reason\":\"compiler-message\",\"package_id\":\"x\",\"message\":{\"rendered\":\"\\u001b[91merror[E0308]\\u001b[0m: mismatched types\\n --> src/lib.rs:3:5\\n\\n\",\"level\":\"error\"}}\n",
            "[   0.601] {\"reason\":\"compiler-message\",\"message\":{\"rendered\":null}}\n",
            "[   0.606] error: could not compile `x` (lib) due to 1 previous error\n",
            "[   0.606] {\"reason\":\"build-finished\",\"success\":false}\n",
            "[   0.607] {\"reason\":\"something-new\",\"x\":1}\n",
            "[   0.608] {\"reason\": broken json\n",
            "==== build: exit status 101 after 0.62 s ====\n",
        );
        let want = concat!(
            "caldera build log\n",
            "==== step 1/3: build ====\n",
            "[   0.133] \x1b[1m\x1b[92m   Compiling\x1b[0m x v0.1.0\n",
            "[   0.600] \x1b[91merror[E0308]\x1b[0m: mismatched types\n",
            "            --> src/lib.rs:3:5\n",
            "[   0.606] error: could not compile `x` (lib) due to 1 previous error\n",
            "[   0.607] {\"reason\":\"something-new\",\"x\":1}\n",
            "[   0.608] {\"reason\": broken json\n",
            "==== build: exit status 101 after 0.62 s ====\n",
        );
        assert_eq!(for_reading(log), want);
    }

    #[test]
    fn a_log_without_cargo_messages_is_unchanged() {
        let log = "a\n[   1.000] b\n\nc\n";
        assert_eq!(for_reading(log), log);
        assert_eq!(for_reading(""), "");
        // a last line without a newline gains one
        assert_eq!(for_reading("x"), "x\n");
    }
}
