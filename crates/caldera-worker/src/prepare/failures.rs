//! What a failed host command (cargo, git) means: one table of cargo's and git's phrases
//! ([`FAILURES`]) sorts a failure into a [`PrepareError`] kind, and [`failure_reason`] takes a
//! short reason from the output.
//!
//! This is not the build classifier's table (`caldera_classify`), though some words are the same:
//! there, a network phrase is evidence that the *crate* tried to reach the network from the
//! sandbox, which has none (the `network-access` outcome, with phrases such as "--offline was
//! specified" that only an offline build prints); here the network is supposed to work, so the
//! same words mean the farm's network or a service failed, and the job is retried. Only a full
//! disk means the same in both places: those phrases are the classifier's
//! ([`caldera_classify::no_space_phrases`]).

use super::PrepareError;

/// What a failed host command's output means (see [`FAILURES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The network, a service or the host failed, not the crate: [`PrepareError::Infra`].
    Infra,
    /// The crate makes a build impossible anywhere: [`PrepareError::Broken`], the reason
    /// prefixed with this label.
    Broken(&'static str),
    /// The crate's fault, for this preparation: [`PrepareError::Crate`], the reason prefixed with
    /// this label.
    Crate(&'static str),
}

/// How [`FAILURES`] recognises a kind of failure in a command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// This phrase (lower case) appears anywhere in the output, whatever its case there.
    Phrase(&'static str),
    /// One of these phrases appears anywhere in the output, whatever its case there or here.
    AnyOf(&'static [&'static str]),
    /// cargo's rustc-style manifest error: an `error:` line whose next line is
    /// ` --> …Cargo.toml:LINE:COL` (how cargo ≥ 1.80 reports TOML syntax and type errors, without
    /// saying "failed to parse manifest").
    ManifestLocation,
}

/// The one table of failures in host command output (cargo, git), in priority order: the first
/// entry that matches decides. Infrastructure comes first, since a network failure can surface
/// under a crate-looking message (`failed to load source for dependency` … `Could not resolve
/// host`). Output matching nothing is the crate's ([`PrepareError::Crate`], unlabelled).
///
/// The `Broken` phrases are cargo's own wording for what no toolchain and no retry can fix
/// (checked against cargo 1.95 on the `prepare-*` fixtures); crater files the same messages as
/// broken crates (invalid `Cargo.toml`, yanked or missing dependencies).
const FAILURES: &[(Pattern, FailureKind)] = {
    use FailureKind::{Broken, Crate, Infra};
    use Pattern::{AnyOf, ManifestLocation, Phrase};
    &[
        // the network, a service or the host
        (Phrase("could not resolve host"), Infra),
        (Phrase("couldn't resolve host"), Infra),
        (Phrase("failed to lookup address"), Infra),
        (Phrase("failed to resolve address"), Infra),
        (Phrase("temporary failure in name resolution"), Infra),
        (Phrase("name or service not known"), Infra),
        (Phrase("network failure seems to have happened"), Infra),
        (Phrase("network is unreachable"), Infra),
        (Phrase("no route to host"), Infra),
        (Phrase("connection refused"), Infra),
        (Phrase("connection reset"), Infra),
        (Phrase("connection timed out"), Infra),
        (Phrase("operation timed out"), Infra),
        (Phrase("timeout was reached"), Infra),
        (Phrase("ssl connect error"), Infra),
        (Phrase("spurious network error"), Infra),
        (Phrase("failed to connect to"), Infra),
        (Phrase("http2 framing layer"), Infra),
        (Phrase("503 service unavailable"), Infra),
        (Phrase("502 bad gateway"), Infra),
        (Phrase("504 gateway timeout"), Infra),
        (Phrase("429 too many requests"), Infra),
        (AnyOf(caldera_classify::no_space_phrases()), Infra),
        (Phrase("read-only file system"), Infra),
        (Phrase("too many open files"), Infra),
        (Phrase("cannot allocate memory"), Infra),
        // the lockfile: what was shipped (or stored) does not fit; another lockfile could
        (
            Phrase("failed to parse lock file"),
            Crate("invalid lockfile"),
        ),
        (
            Phrase("needs to be updated but --locked was passed"),
            Crate("invalid lockfile"),
        ),
        // the manifest: no cargo can read it
        (
            Phrase("failed to parse manifest"),
            Broken("invalid manifest"),
        ),
        (
            Phrase("could not parse input as toml"),
            Broken("invalid manifest"),
        ),
        (
            Phrase("failed to load manifest for workspace member"),
            Broken("invalid manifest"),
        ),
        (ManifestLocation, Broken("invalid manifest")),
        // dependencies: none exists (any more) that fits the requirement, or only yanked ones
        (
            Phrase("failed to select a version for the requirement"),
            Broken("no usable version of a dependency"),
        ),
        (
            Phrase("no matching package named"),
            Broken("missing dependency"),
        ),
        (
            Phrase("no matching package found"),
            Broken("missing dependency"),
        ),
        (
            Phrase("failed to load source for dependency"),
            Broken("missing dependency"),
        ),
    ]
};

/// The first entry of [`FAILURES`] that matches `output`, with what matched (for the reason).
fn failure_kind(output: &str) -> Option<(&'static str, FailureKind)> {
    let lower = output.to_ascii_lowercase();
    FAILURES.iter().find_map(|&(pattern, kind)| match pattern {
        Pattern::Phrase(p) => lower.contains(p).then_some((p, kind)),
        Pattern::AnyOf(phrases) => phrases
            .iter()
            .find(|p| lower.contains(&p.to_ascii_lowercase()))
            .map(|&p| (p, kind)),
        Pattern::ManifestLocation => {
            manifest_location(output).then_some(("--> Cargo.toml:LINE:COL", kind))
        }
    })
}

/// Whether an `error:` line of `output` is followed by a ` --> …Cargo.toml:LINE:COL` line.
fn manifest_location(output: &str) -> bool {
    let mut lines = output.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("error:") {
            continue;
        }
        let Some(loc) = lines.clone().next().and_then(|l| l.strip_prefix("--> ")) else {
            continue;
        };
        // PATH:LINE:COL, PATH ending in Cargo.toml
        let mut parts = loc.rsplitn(3, ':');
        let (col, line_no, path) = (parts.next(), parts.next(), parts.next());
        let numeric = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        if numeric(col)
            && numeric(line_no)
            && path.is_some_and(|p| p == "Cargo.toml" || p.ends_with("/Cargo.toml"))
        {
            return true;
        }
    }
    false
}

/// The [`PrepareError`] for a failed cargo command `label` that ended with `status`: its output
/// looked up in [`FAILURES`], the reason taken from it by [`failure_reason`].
pub(super) fn classify_cargo_failure(output: &str, label: &str, status: &str) -> PrepareError {
    let reason = failure_reason(output);
    match failure_kind(output) {
        Some((phrase, FailureKind::Infra)) => PrepareError::Infra(format!(
            "`{label}` failed ({status}; the output mentions {phrase:?}): {reason}"
        )),
        Some((_, FailureKind::Broken(label))) => PrepareError::Broken(format!("{label}: {reason}")),
        Some((_, FailureKind::Crate(label))) => PrepareError::Crate(format!("{label}: {reason}")),
        None => PrepareError::Crate(reason),
    }
}

/// The [`PrepareError`] for a failed git command `label`: `Infra` when its output matches an
/// infrastructure entry of [`FAILURES`], else the crate's.
pub(super) fn classify_git_failure(output: &str, label: &str) -> PrepareError {
    let reason = failure_reason(output);
    match failure_kind(output) {
        Some((phrase, FailureKind::Infra)) => PrepareError::Infra(format!(
            "`{label}` failed (the output mentions {phrase:?}): {reason}"
        )),
        // git's failures are never cargo's manifest or dependency messages: the crate's
        _ => PrepareError::Crate(format!("`{label}` failed: {reason}")),
    }
}

/// A short reason from cargo's (or git's) output: the first `error:`/`fatal:` line, followed by the
/// first line of the last `Caused by:` entry when there is one.
pub fn failure_reason(output: &str) -> String {
    let lines: Vec<&str> = output.lines().map(str::trim_end).collect();
    let first = lines.iter().position(|l| {
        let l = l.trim_start();
        l.starts_with("error:") || l.starts_with("fatal:") || l.starts_with("error[")
    });
    let mut reason = match first {
        Some(i) => lines[i].trim().to_owned(),
        None => lines
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .unwrap_or_default(),
    };
    // rustc-style location of a manifest error: ` --> Cargo.toml:7:6`
    if let Some(loc) = first
        .and_then(|i| lines.get(i + 1))
        .and_then(|l| l.trim_start().strip_prefix("--> "))
    {
        reason.push_str(&format!(" (at {})", loc.trim()));
    }
    if let Some(start) = first
        && let Some(caused) = lines[start..]
            .iter()
            .rposition(|l| l.trim() == "Caused by:")
        && let Some(cause) = lines[start + caused + 1..]
            .iter()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
    {
        reason.push_str(": ");
        reason.push_str(cause);
    }
    clip(&reason, 500)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_name_the_error_and_its_cause() {
        let out = "    Updating index\nerror: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  TOML parse error at line 3, column 1\n    |\n";
        assert_eq!(
            failure_reason(out),
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`: TOML parse error at line 3, column 1"
        );
        assert_eq!(
            failure_reason(
                "error: no matching package named `x` found\nlocation searched: index\n"
            ),
            "error: no matching package named `x` found"
        );
        assert_eq!(failure_reason("just text\n\n"), "just text");
        assert_eq!(
            failure_reason("error: key with no value, expected `=`\n --> Cargo.toml:7:6\n  |\n"),
            "error: key with no value, expected `=` (at Cargo.toml:7:6)"
        );
    }

    /// A full disk is the host's: the classifier's phrases, whatever their case in the output.
    #[test]
    fn a_full_disk_is_infrastructure() {
        for out in [
            "error: failed to write /x/Cargo.lock: No space left on device (os error 28)\n",
            "error: failed to unpack package `foo v1.0.0`\n\nCaused by:\n  DISK QUOTA EXCEEDED\n",
        ] {
            match classify_cargo_failure(out, "cargo fetch --locked", "exit status: 101") {
                PrepareError::Infra(reason) => {
                    assert!(reason.contains("the output mentions"), "{reason}")
                }
                other => panic!("{out}: {other:?}"),
            }
        }
    }

    /// cargo's real output (1.95) for the `prepare-*` fixtures and its other unfixable messages,
    /// and what each becomes.
    #[test]
    fn failures_are_sorted_by_one_table() {
        let kind = |out: &str| classify_cargo_failure(out, "cargo x", "exit status: 101");
        let broken = |out: &str, want: &str| match kind(out) {
            PrepareError::Broken(reason) => assert_eq!(reason, want, "{out}"),
            other => panic!("{out}: {other:?}"),
        };
        // prepare-bad-manifest: cargo ≥ 1.80 reports TOML errors rustc-style, with a location
        broken(
            "error: key with no value, expected `=`\n --> Cargo.toml:7:6\n  |\n7 | this line is not toml\n  |      ^\n",
            "invalid manifest: error: key with no value, expected `=` (at Cargo.toml:7:6)",
        );
        // a workspace member's
        broken(
            "error: invalid type: integer `3`, expected a version string\n --> m/Cargo.toml:5:7\n  |\nerror: failed to load manifest for workspace member `/x/m`\n",
            "invalid manifest: error: invalid type: integer `3`, expected a version string (at m/Cargo.toml:5:7)",
        );
        broken(
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  missing field `package.name`\n",
            "invalid manifest: error: failed to parse manifest at `/caldera/src/Cargo.toml`: missing field `package.name`",
        );
        broken(
            "error: failed to parse manifest at `/caldera/src/Cargo.toml`\n\nCaused by:\n  can't find `gone` example at `examples/gone.rs` or `examples/gone/main.rs`.\n",
            "invalid manifest: error: failed to parse manifest at `/caldera/src/Cargo.toml`: can't find `gone` example at `examples/gone.rs` or `examples/gone/main.rs`.",
        );
        // prepare-missing-dep
        broken(
            "    Updating crates.io index\nerror: no matching package named `caldera-fixture-no-such-crate-7f3a9` found\nlocation searched: crates.io index\n",
            "missing dependency: error: no matching package named `caldera-fixture-no-such-crate-7f3a9` found",
        );
        // only yanked (or no) versions match
        broken(
            "error: failed to select a version for the requirement `fnv = \"=1.0.9\"`\ncandidate versions found which didn't match: 1.0.7, 1.0.6\n",
            "no usable version of a dependency: error: failed to select a version for the requirement `fnv = \"=1.0.9\"`",
        );
        // prepare-bad-lockfile: another lockfile would do, so the crate is not broken
        assert_eq!(
            kind("error: failed to parse lock file at: /caldera/src/Cargo.lock\n\nCaused by:\n  TOML parse error at line 1, column 6\n"),
            PrepareError::Crate(
                "invalid lockfile: error: failed to parse lock file at: /caldera/src/Cargo.lock: TOML parse error at line 1, column 6".into()
            )
        );
        // the network first, even under a crate-looking message
        let out = "error: failed to get `x` as a dependency\n\nCaused by:\n  failed to load source for dependency `x`\n\nCaused by:\n  failed to resolve address for github.com: Name or service not known; class=Net (12)\n";
        match kind(out) {
            PrepareError::Infra(reason) => assert!(
                reason.starts_with("`cargo x` failed (exit status: 101; the output mentions \"failed to resolve address\"): error: failed to get `x`"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            kind("error: failed to download\nCaused by:\n  [6] Could not resolve host: example"),
            PrepareError::Infra(_)
        ));
        // without a known phrase: the crate's, as the preparation found it
        assert_eq!(
            kind("error: something new\n"),
            PrepareError::Crate("error: something new".into())
        );
        // a location that is not a manifest's is no manifest error
        assert!(!manifest_location("error: x\n --> src/lib.rs:1:1\n"));
        assert!(!manifest_location("warning: x\n --> Cargo.toml:1:1\n"));
        assert!(!manifest_location("error: x\n --> Cargo.toml\n"));
        assert!(manifest_location("error: x\n  --> sub/Cargo.toml:12:3\n"));
    }
}
