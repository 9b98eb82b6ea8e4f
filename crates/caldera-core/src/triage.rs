//! Triage: a person's verdict on a regression, carried across experiments while its cause stays.
//!
//! A regressed crate has a **cause** ([`cause`]): a stable string computed from its end outcome,
//! e.g. `build-fail:compiler-error(E0308,E0599)` or `test-fail:tests(a::b,c)`. Lists in a cause
//! (error codes, failed tests, failed dependencies) are sorted and deduplicated, so the order in
//! which rustc or the test harness printed them does not matter. Two regressions have the same
//! cause iff their cause strings are equal.
//!
//! A **mark** ([`MarkKind`]: `expected`, `known-issue` with a link, `ignore`, plus a note) is
//! stored for a crate ([`crate_key`]: the registry name, so it follows the crate to new versions;
//! `git:URL` or `local:/DIR` for the others) and a cause. It applies to every later regression
//! of that crate with the same cause, in any experiment, until the cause changes.
//!
//! Mark request JSON (unknown fields rejected):
//!
//! ```json
//! {"kind": "known-issue", "link": "https://github.com/rust-lang/rust/issues/1", "note": "…"}
//! ```

#![warn(missing_docs)]

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::crates::CrateId;
use crate::experiment::{ValidationError, parse_json};
use crate::outcome::{BuildFailReason, Outcome};
use crate::serde_util::{MapOnly, string_enum};

/// Longest note, in characters.
pub const MAX_NOTE_CHARS: usize = 2000;
/// Longest link, in bytes.
pub const MAX_LINK_BYTES: usize = 2048;

string_enum! {
    /// What a person decided about a regression. JSON: a string.
    pub enum MarkKind / ParseMarkKindError ("mark kind") {
        /// The toolchain change breaks this crate on purpose (a deliberate language or library
        /// change); nothing to fix in the compiler.
        Expected => "expected",
        /// A known bug, tracked at the mark's link.
        KnownIssue => "known-issue",
        /// Not worth looking at (a flaky or abandoned crate…).
        Ignore => "ignore",
    }
}

/// The cause of a regression, from its end outcome: `kind[:reason][(items)]`.
///
/// | end outcome | cause |
/// | --- | --- |
/// | `build-fail` compiler error with codes E0599, E0308 | `build-fail:compiler-error(E0308,E0599)` |
/// | `build-fail` compiler error without codes | `build-fail:compiler-error` |
/// | `build-fail` depends-on y, x | `build-fail:depends-on(x,y)` |
/// | `build-fail` ice, link, unknown, oom, … | `build-fail:ice`, `build-fail:link`, … |
/// | `test-fail` tests b, a | `test-fail:tests(a,b)` |
/// | `test-fail` without named tests | `test-fail` |
/// | `test-fail` diagnostics change in test t | `test-fail:diagnostics-change(t)` |
/// | `test-fail` at a limit (timeout, …) | `test-fail:timeout(…tests)` |
/// | anything else | its kind: `test-pass`, `error`, … |
///
/// Free-text reasons (of prepare-fail, broken, error) are left out: they are not stable.
pub fn cause(end: &Outcome) -> String {
    let mut out = String::from(end.kind());
    let list: Vec<&str> = match end {
        Outcome::BuildFail(reason) => {
            out.push(':');
            out.push_str(reason.kind());
            match reason {
                BuildFailReason::CompilerError { codes } => sorted(codes),
                BuildFailReason::DependsOn { crates } => sorted(crates),
                _ => Vec::new(),
            }
        }
        Outcome::TestFail {
            failed_tests,
            reason,
        } => {
            let tests = sorted(failed_tests);
            match reason {
                Some(r) => {
                    out.push(':');
                    out.push_str(r.as_str());
                }
                None if !tests.is_empty() => out.push_str(":tests"),
                None => {}
            }
            tests
        }
        _ => Vec::new(),
    };
    if !list.is_empty() {
        let _ = write!(out, "({})", list.join(","));
    }
    out
}

/// Sorted, deduplicated, trimmed, without empty entries.
fn sorted(items: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The name a mark is stored under: a registry crate's name (marks follow the crate across
/// versions), `git:URL` for a git crate (across revisions), `local:/DIR` for a local one.
pub fn crate_key(id: &CrateId) -> String {
    match id {
        CrateId::Registry { name, .. } => name.clone(),
        CrateId::Git { url, .. } => format!("git:{url}"),
        CrateId::Local { path } => format!("local:{path}"),
    }
}

/// A mark as a person sets it (validated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MarkRequest {
    /// `expected`, `known-issue` or `ignore`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "known-issue"))]
    pub kind: MarkKind,
    /// An `http(s)://` URL (an issue, a PR); required for `known-issue`.
    pub link: Option<String>,
    /// Free text, at most 2000 characters, no control characters.
    pub note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkIn {
    kind: MarkKind,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

impl MarkRequest {
    /// Parses and validates JSON; errors name the field (`kind`, `link`, `note`).
    pub fn from_json(bytes: &[u8]) -> Result<MarkRequest, ValidationError> {
        let m = parse_json::<MapOnly<MarkIn>>(bytes)?.0;
        let req = MarkRequest {
            kind: m.kind,
            link: m.link.filter(|l| !l.is_empty()),
            note: m.note.unwrap_or_default(),
        };
        req.validate()?;
        Ok(req)
    }

    /// Checks the link (present for `known-issue`, a valid URL when present) and the note.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match &self.link {
            None if self.kind == MarkKind::KnownIssue => {
                return Err(ValidationError::new(
                    "link",
                    "a known-issue mark needs a link to the issue",
                ));
            }
            None => {}
            Some(link) => check_link(link).map_err(|m| ValidationError::new("link", m))?,
        }
        let chars = self.note.chars().count();
        if chars > MAX_NOTE_CHARS {
            return Err(ValidationError::new(
                "note",
                format!("the note is {chars} characters long; at most {MAX_NOTE_CHARS} allowed"),
            ));
        }
        if let Some(c) = self.note.chars().find(|c| c.is_control()) {
            return Err(ValidationError::new(
                "note",
                format!("the note contains the control character {c:?}"),
            ));
        }
        Ok(())
    }
}

/// An absolute `http://` or `https://` URL with a host, without whitespace, control characters
/// or `"<>\``, at most [`MAX_LINK_BYTES`] bytes.
fn check_link(link: &str) -> Result<(), String> {
    if link.len() > MAX_LINK_BYTES {
        return Err(format!(
            "the link is {} bytes long; at most {MAX_LINK_BYTES} allowed",
            link.len()
        ));
    }
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"))
        .ok_or_else(|| format!("invalid link {link:?}: must start with https:// or http://"))?;
    if let Some(c) = link
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '`' | '\\'))
    {
        return Err(format!("invalid link {link:?}: contains {c:?}"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some((_, "")) => host.trim_end_matches(':'),
        _ => host,
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    if !host_ok {
        return Err(format!("invalid link {link:?}: no valid host name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TestFailReason;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn causes() {
        let bf = |r| Outcome::BuildFail(r);
        let tf = |t: &[&str], reason| Outcome::TestFail {
            failed_tests: s(t),
            reason,
        };
        let table: Vec<(Outcome, &str)> = vec![
            (
                bf(BuildFailReason::CompilerError {
                    codes: s(&["E0599", "E0308", "E0599"]),
                }),
                "build-fail:compiler-error(E0308,E0599)",
            ),
            (
                bf(BuildFailReason::CompilerError { codes: vec![] }),
                "build-fail:compiler-error",
            ),
            (bf(BuildFailReason::Ice), "build-fail:ice"),
            (bf(BuildFailReason::Link), "build-fail:link"),
            (bf(BuildFailReason::Unknown), "build-fail:unknown"),
            (bf(BuildFailReason::Oom), "build-fail:oom"),
            (
                bf(BuildFailReason::DependsOn {
                    crates: s(&["y", "x"]),
                }),
                "build-fail:depends-on(x,y)",
            ),
            (
                bf(BuildFailReason::DependsOn { crates: vec![] }),
                "build-fail:depends-on",
            ),
            (tf(&["c", "a::b", " c "], None), "test-fail:tests(a::b,c)"),
            (tf(&[], None), "test-fail"),
            (
                tf(&["ui"], Some(TestFailReason::DiagnosticsChange)),
                "test-fail:diagnostics-change(ui)",
            ),
            (
                tf(&[], Some(TestFailReason::DiagnosticsChange)),
                "test-fail:diagnostics-change",
            ),
            (
                tf(&["t"], Some(TestFailReason::Timeout)),
                "test-fail:timeout(t)",
            ),
            (Outcome::TestPass, "test-pass"),
            (
                Outcome::Error {
                    reason: "docker died".into(),
                },
                "error",
            ),
            (Outcome::PrepareFail { reason: "x".into() }, "prepare-fail"),
        ];
        for (outcome, want) in table {
            assert_eq!(cause(&outcome), want, "{outcome:?}");
        }
    }

    #[test]
    fn same_cause_iff_same_codes_or_tests() {
        let a = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: s(&["E0308", "E0599"]),
        });
        let b = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: s(&["E0599", "E0308"]),
        });
        let c = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: s(&["E0308"]),
        });
        assert_eq!(cause(&a), cause(&b));
        assert_ne!(cause(&a), cause(&c));
        // a test failure with the same names is not a build failure
        let t = Outcome::TestFail {
            failed_tests: s(&["E0308"]),
            reason: None,
        };
        assert_ne!(cause(&t), cause(&c));
    }

    #[test]
    fn crate_keys() {
        let k = |s: &str| crate_key(&s.parse().unwrap());
        assert_eq!(k("reg:serde@1.0.0"), "serde");
        assert_eq!(k("reg:serde@1.0.1"), "serde");
        assert_eq!(
            k("git:https://example.com/x.git#abc123"),
            "git:https://example.com/x.git"
        );
        assert_eq!(k("local:/src/x"), "local:/src/x");
    }

    #[test]
    fn mark_requests() {
        let ok = |j: &str| MarkRequest::from_json(j.as_bytes()).unwrap();
        let err = |j: &str| MarkRequest::from_json(j.as_bytes()).unwrap_err();
        assert_eq!(
            ok(r#"{"kind": "expected"}"#),
            MarkRequest {
                kind: MarkKind::Expected,
                link: None,
                note: String::new()
            }
        );
        let m = ok(
            r#"{"kind": "known-issue", "link": "https://github.com/rust-lang/rust/issues/1", "note": "tracked"}"#,
        );
        assert_eq!(m.kind, MarkKind::KnownIssue);
        assert_eq!(m.note, "tracked");
        ok(r#"{"kind": "ignore", "link": "http://host:8080/x?y#z", "note": "flaky — ünïcode"}"#);
        ok(r#"{"kind": "ignore", "link": ""}"#);

        let table: Vec<(String, &str, &str)> = vec![
            (r#"{"kind": "known-issue"}"#.into(), "link", "needs a link"),
            (
                r#"{"kind": "known-issue", "link": "ftp://x/y"}"#.into(),
                "link",
                "https://",
            ),
            (
                r#"{"kind": "known-issue", "link": "https:///path"}"#.into(),
                "link",
                "host",
            ),
            (
                r#"{"kind": "known-issue", "link": "https://a b/"}"#.into(),
                "link",
                "contains",
            ),
            (
                r#"{"kind": "known-issue", "link": "javascript:alert(1)"}"#.into(),
                "link",
                "https://",
            ),
            (
                format!(
                    r#"{{"kind": "ignore", "link": "https://h/{}"}}"#,
                    "a".repeat(MAX_LINK_BYTES)
                ),
                "link",
                "bytes",
            ),
            (r#"{"kind": "maybe"}"#.into(), "kind", "unknown mark kind"),
            (r#"{"note": "x"}"#.into(), "kind", "missing"),
            (
                r#"{"kind": "ignore", "note": "a\u0007b"}"#.into(),
                "note",
                "control",
            ),
            (
                r#"{"kind": "ignore", "note": "a\nb"}"#.into(),
                "note",
                "control",
            ),
            (
                format!(
                    r#"{{"kind": "ignore", "note": "{}"}}"#,
                    "é".repeat(MAX_NOTE_CHARS + 1)
                ),
                "note",
                "at most",
            ),
            (r#"{"kind": "ignore", "note": 3}"#.into(), "note", ""),
            (
                r#"{"kind": "ignore", "who": "me"}"#.into(),
                "who",
                "unknown field",
            ),
            (r#"["ignore"]"#.into(), "", "JSON object"),
        ];
        for (json, field, msg) in table {
            let e = err(&json);
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(e.message.contains(msg), "{json}: {e}");
        }
    }
}
