//! The first new error: the first error line of the end log that the start log does not have.

use super::*;
use caldera_core::logtext::unstamped;

/// The first error line of `end_log` whose normalised text is not an error line of `start_log`:
/// its 0-based index in `end_log.lines()` and its text (ANSI escapes removed, trimmed).
///
/// Logs are compared as [`caldera_core::logtext::for_reading`] shows them; line stamps (`[   1.234] `) are
/// ignored. Error lines are rustc/cargo errors (`error: …`, `error[E0308]: …`), C compiler errors
/// (`…: error: …`, `fatal error`), internal compiler errors, panics (`thread '…' panicked`),
/// `Error: …` and failed tests (`test foo ... FAILED`). Before comparing, a line loses its ANSI
/// escapes and anything before a carriage return (terminal overwrites), is trimmed, and:
///
/// * absolute paths lose their machine-specific prefix: registry sources
///   (`…/registry/src/<index>/` → `$REGISTRY/`), git checkouts (`$GIT/`), rustup toolchains
///   (`$TOOLCHAIN/`), target directories (`…/target/` → `$TARGET/`), `/tmp/<dir>` and
///   `/var/tmp/<dir>` (`$TMP`), home directories (`/home/<user>`, `/Users/<user>`, `/root` →
///   `$HOME`);
/// * hex hashes of 8 or more digits with at least one decimal digit (`foo-1a2b3c4d5e6f7a8b`,
///   `/rustc/<commit>/`) become `$HASH`, symbol hashes `h<16 hex>` become `h$HASH`, and `0x`
///   addresses of 6 or more digits become `0x$HEX`;
/// * durations (`1.23s`, `[2.3s]`, `150ms`, `2min`, `0.62 s`) become `$DUR`;
/// * dates and times (`2026-12-06`, `2026-12-06T19:25:00.123Z`, `19:25:00`) become `$DATE` and
///   `$TIME`;
/// * toolchain names (`stable`, `beta`, `nightly`, `nightly-2026-01-01`,
///   `1.95.0-x86_64-unknown-linux-gnu`, with or without a target triple) become `$TOOLCHAIN`, and
///   the version after a tool's name (`rustc 1.95.0-nightly`, `cargo 1.95.0`) `$VERSION`.
pub fn first_new_error(start_log: &str, end_log: &str) -> Option<(usize, String)> {
    let mut clean = String::new();
    let mut norm = String::new();
    let mut seen: HashSet<String> = HashSet::new();
    for line in start_log.lines() {
        strip_ansi(unstamped(line), &mut clean);
        normalize_line(&clean, &mut norm);
        if is_error_line(&norm) && !seen.contains(norm.as_str()) {
            seen.insert(norm.clone());
        }
    }
    for (index, line) in end_log.lines().enumerate() {
        strip_ansi(unstamped(line), &mut clean);
        normalize_line(&clean, &mut norm);
        if is_error_line(&norm) && !seen.contains(norm.as_str()) {
            return Some((index, clean.trim().to_owned()));
        }
    }
    None
}

pub(crate) fn is_error_line(l: &str) -> bool {
    l.strip_prefix("error")
        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('['))
        || l.starts_with("Error:")
        || l.starts_with("fatal error")
        || l.contains(": error:")
        || l.contains(": error[")
        || l.contains(": fatal error:")
        || l.contains("internal compiler error")
        || (l.starts_with("thread '") && l.contains("panicked"))
        || (l.starts_with("test ") && l.ends_with(" FAILED"))
}

/// `line` without ANSI escape sequences ([`caldera_core::logtext::strip_ansi`]) and without anything up
/// to its last carriage return (what a terminal shows of a progress line).
pub(crate) fn strip_ansi(line: &str, out: &mut String) {
    out.clear();
    let line = line.trim_end_matches('\r');
    let line = line.rsplit('\r').next().unwrap_or(line);
    out.push_str(&caldera_core::logtext::strip_ansi(line));
}

pub(crate) fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b'~' | b'+' | b'@' | b'%')
}

pub(crate) fn is_alnum_at(b: &[u8], at: usize) -> bool {
    b.get(at).is_some_and(u8::is_ascii_alphanumeric)
}

/// Normalises one ANSI-free line for comparison; see [`first_new_error`].
pub(crate) fn normalize_line(line: &str, out: &mut String) {
    out.clear();
    let s = line.trim();
    let b = s.as_bytes();
    // Every position where copying stops or resumes holds an ASCII byte (or is the end), so the
    // slices below always fall on character boundaries.
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let prev = i.checked_sub(1).map(|p| b[p]);
        let starts_path = b[i] == b'/' || (b[i] == b'~' && b.get(i + 1) == Some(&b'/'));
        if starts_path
            && prev.is_none_or(|p| !is_path_byte(p))
            && let Some((len, replacement)) = path_prefix(&s[i..])
        {
            out.push_str(&s[copied..i]);
            out.push_str(replacement);
            i += len;
            copied = i;
            continue;
        }
        if b[i].is_ascii_alphanumeric() && prev.is_none_or(|p| !p.is_ascii_alphanumeric()) {
            if let Some((len, replacement)) =
                tool_version(&b[i..]).or_else(|| volatile_token(&b[i..]))
            {
                out.push_str(&s[copied..i]);
                out.push_str(replacement);
                i += len;
                copied = i;
                continue;
            }
            // Rules only start where a word starts.
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
}

/// For an absolute path at the start of `s`: how many bytes of machine-specific prefix to replace,
/// and with what. The prefix ends before a `/` or at the end of the path.
pub(crate) fn path_prefix(s: &str) -> Option<(usize, &'static str)> {
    let end = s
        .bytes()
        .position(|c| {
            c.is_ascii_whitespace()
                || matches!(
                    c,
                    b'\''
                        | b'"'
                        | b'`'
                        | b'('
                        | b')'
                        | b'['
                        | b']'
                        | b'{'
                        | b'}'
                        | b'<'
                        | b'>'
                        | b','
                        | b';'
                )
        })
        .unwrap_or(s.len());
    let path = &s[..end];
    // The prefix through `at` (the index of a '/'), plus `segments` more path segments.
    let through = |at: usize, segments: usize| -> usize {
        let mut end = at;
        for _ in 0..segments {
            match path[end + 1..].find('/') {
                Some(k) => end += 1 + k,
                None => return path.len(),
            }
        }
        end
    };
    const MARKERS: &[(&str, usize, &str)] = &[
        ("/registry/src/", 1, "$REGISTRY"),
        ("/git/checkouts/", 2, "$GIT"),
        ("/toolchains/", 1, "$TOOLCHAIN"),
        ("/target/", 0, "$TARGET"),
    ];
    for &(marker, segments, replacement) in MARKERS {
        if let Some(at) = path.find(marker) {
            return Some((through(at + marker.len() - 1, segments), replacement));
        }
    }
    const PREFIXES: &[(&str, &str)] = &[
        ("/tmp/", "$TMP"),
        ("/var/tmp/", "$TMP"),
        ("/home/", "$HOME"),
        ("/Users/", "$HOME"),
    ];
    for &(prefix, replacement) in PREFIXES {
        if path.starts_with(prefix) {
            return Some((through(prefix.len() - 1, 1), replacement));
        }
    }
    if path == "/root" || path.starts_with("/root/") {
        return Some(("/root".len(), "$HOME"));
    }
    None
}

pub(crate) fn hex_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_hexdigit()).count()
}

pub(crate) fn digit_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `rustc 1.95.0-nightly` (a tool's name, a space and its version) at the start of `b`: its length
/// and replacement.
pub(crate) fn tool_version(b: &[u8]) -> Option<(usize, &'static str)> {
    const TOOLS: &[(&str, &str)] = &[
        ("rustc ", "rustc $VERSION"),
        ("cargo ", "cargo $VERSION"),
        ("rustdoc ", "rustdoc $VERSION"),
        ("clippy ", "clippy $VERSION"),
        ("rustfmt ", "rustfmt $VERSION"),
        ("rustup ", "rustup $VERSION"),
    ];
    let &(tool, replacement) = TOOLS.iter().find(|(t, _)| b.starts_with(t.as_bytes()))?;
    let n = version_len(&b[tool.len()..])?;
    Some((tool.len() + n, replacement))
}

/// The length of a Rust release version (`1.95.0`, `1.96.0-nightly`, `1.95.0-beta.3`) at the
/// start of `b`: three dotted numbers and an optional pre-release of letters, digits and dots.
fn version_len(b: &[u8]) -> Option<usize> {
    let mut n = version_core_len(b)?;
    if b.get(n) == Some(&b'-') && is_alnum_at(b, n + 1) {
        n += 1 + b[n + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'.')
            .count();
    }
    (!is_alnum_at(b, n)).then_some(n)
}

/// The length of three dotted numbers (`1.95.0`) at the start of `b`.
fn version_core_len(b: &[u8]) -> Option<usize> {
    let mut n = 0;
    for part in 0..3 {
        let d = digit_run(&b[n..]);
        if d == 0 {
            return None;
        }
        n += d;
        if part < 2 {
            if b.get(n) != Some(&b'.') {
                return None;
            }
            n += 1;
        }
    }
    Some(n)
}

/// `YYYY-MM-DD` at the start of `b`.
fn is_date(b: &[u8]) -> bool {
    b.len() >= 10
        && digit_run(b) == 4
        && b[4] == b'-'
        && digit_run(&b[5..]) == 2
        && b[7] == b'-'
        && digit_run(&b[8..]) == 2
}

/// `HH:MM:SS` with optional fraction at the start of `b`: its length.
fn time_len(b: &[u8]) -> Option<usize> {
    let ok = b.len() >= 8
        && digit_run(b) == 2
        && b[2] == b':'
        && digit_run(&b[3..]) == 2
        && b[5] == b':'
        && digit_run(&b[6..]) == 2;
    if !ok {
        return None;
    }
    let mut n = 8;
    if b.get(n) == Some(&b'.') && digit_run(&b[n + 1..]) > 0 {
        n += 1 + digit_run(&b[n + 1..]);
    }
    Some(n)
}

/// A date with an optional time and zone (`2026-12-06`, `2026-12-06T19:25:00.5Z`,
/// `2026-12-06 19:25:00+01:00`) at the start of `b`: its length.
fn date_time_len(b: &[u8]) -> Option<usize> {
    if !is_date(b) {
        return None;
    }
    let mut n = 10;
    if matches!(b.get(n), Some(b'T' | b' '))
        && let Some(t) = time_len(&b[n + 1..])
    {
        n += 1 + t;
        if b.get(n) == Some(&b'Z') {
            n += 1;
        } else if matches!(b.get(n), Some(b'+' | b'-')) && digit_run(&b[n + 1..]) == 2 {
            let zone = &b[n + 3..];
            n += 3 + match zone {
                [b':', ..] if digit_run(&zone[1..]) == 2 => 3,
                _ if digit_run(zone) == 2 => 2,
                _ => 0,
            };
        }
    }
    Some(n)
}

/// A target triple after a toolchain name (`-x86_64-unknown-linux-gnu`) at the start of `b`:
/// its length, when the word has at least two more dashes and names a vendor or system.
fn triple_len(b: &[u8]) -> usize {
    if b.first() != Some(&b'-') || !is_alnum_at(b, 1) {
        return 0;
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        .count();
    let word = &b[..n];
    let dashes = word.iter().filter(|c| **c == b'-').count();
    const SYSTEMS: &[&str] = &[
        "-unknown", "-linux", "-apple", "-pc-", "-windows", "-darwin", "-none", "-wasi",
    ];
    let named = SYSTEMS
        .iter()
        .any(|s| word.windows(s.len()).any(|w| w == s.as_bytes()));
    if dashes >= 2 && named { n } else { 0 }
}

/// A toolchain name at the start of `b` (`nightly`, `beta`, `stable`, each with an optional
/// `-YYYY-MM-DD` and target triple; `1.95.0-x86_64-unknown-linux-gnu`): its length.
fn toolchain_len(b: &[u8]) -> Option<usize> {
    for channel in ["nightly", "stable", "beta"] {
        if let Some(rest) = b.strip_prefix(channel.as_bytes()) {
            let mut n = channel.len();
            if rest.first() == Some(&b'-') && is_date(&rest[1..]) {
                n += 11;
            }
            n += triple_len(&b[n..]);
            return (!is_alnum_at(b, n)).then_some(n);
        }
    }
    let core = version_core_len(b)?;
    match triple_len(&b[core..]) {
        0 => {
            let v = version_len(b)?;
            let t = triple_len(&b[v..]);
            (t > 0).then_some(v + t)
        }
        t => Some(core + t),
    }
}

/// For a word at the start of `b`: a hash, an address, a date, a time, a toolchain or a duration
/// to replace, its length and replacement.
pub(crate) fn volatile_token(b: &[u8]) -> Option<(usize, &'static str)> {
    if let Some(n) = toolchain_len(b) {
        return Some((n, "$TOOLCHAIN"));
    }
    if let Some(n) = date_time_len(b) {
        return Some((n, "$DATE"));
    }
    if let Some(n) = time_len(b) {
        return Some((n, "$TIME"));
    }
    if let Some(rest) = b.strip_prefix(b"0x") {
        let n = hex_run(rest);
        if n >= 6 && !is_alnum_at(b, 2 + n) {
            return Some((2 + n, "0x$HEX"));
        }
    }
    if let Some(rest) = b.strip_prefix(b"h")
        && hex_run(rest) == 16
        && !is_alnum_at(b, 17)
    {
        return Some((17, "h$HASH"));
    }
    let n = hex_run(b);
    if n >= 8 && !is_alnum_at(b, n) && b[..n].iter().any(u8::is_ascii_digit) {
        return Some((n, "$HASH"));
    }
    let mut n = digit_run(b);
    if n == 0 {
        return None;
    }
    if b.get(n) == Some(&b'.') {
        let fraction = digit_run(&b[n + 1..]);
        if fraction > 0 {
            n += 1 + fraction;
        }
    }
    const UNITS: &[&str] = &[
        "seconds", "minutes", "secs", "mins", "sec", "min", "ms", "us", "ns", "µs", "μs", "s", "m",
        "h",
    ];
    if let Some(u) = UNITS
        .iter()
        .find(|u| b[n..].starts_with(u.as_bytes()) && !is_alnum_at(b, n + u.len()))
    {
        return Some((n + u.len(), "$DUR"));
    }
    // `0.62 s`: a space before the unit, for the units that cannot be a word of their own
    const SPACED: &[&str] = &[
        "seconds", "minutes", "secs", "mins", "sec", "min", "ms", "us", "ns", "µs", "μs", "s",
    ];
    let rest = b[n..].strip_prefix(b" ")?;
    SPACED
        .iter()
        .find(|u| rest.starts_with(u.as_bytes()) && !is_alnum_at(rest, u.len()))
        .map(|u| (n + 1 + u.len(), "$DUR"))
}
