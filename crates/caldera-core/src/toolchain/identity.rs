//! A toolchain's resolved identity: which build of `nightly` (or any rustup name) a worker
//! actually has — what `rustc -vV` and `cargo -V` print. Two workers whose `nightly` differ build
//! crates with different compilers; an experiment pins the identity each side ran with (the first
//! result recorded for the side) and only workers with that build get its jobs.

use serde::{Deserialize, Serialize};

use crate::experiment::is_valid_requirement;

/// How many hex digits of the commit hash a capability carries (rustc's own short hash is 9).
const SHORT_HASH: usize = 12;

/// The build of one toolchain, as `rustc -vV` and `cargo -V` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolchainIdentity {
    /// The toolchain's name where it was looked up (the rustup name, e.g. `nightly`), or its
    /// path for a toolchain given by path.
    pub toolchain: String,
    /// rustc's `commit-hash` (`unknown` for a rustc built without git information).
    pub commit_hash: String,
    /// rustc's `commit-date`, e.g. `2026-11-30`.
    pub commit_date: String,
    /// rustc's `host` triple.
    pub host: String,
    /// rustc's `release`, e.g. `1.95.0-nightly`.
    pub release: String,
    /// What `cargo -V` says after `cargo `, e.g. `1.95.0-nightly (abcdef123 2026-11-29)`.
    pub cargo: String,
}

/// Why `rustc -vV` output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rustc -vV printed no {0} line")]
pub struct MissingLine(pub &'static str);

impl ToolchainIdentity {
    /// Reads the output of `rustc -vV` and `cargo -V` for the toolchain `name`.
    pub fn parse(name: &str, rustc_vv: &str, cargo_v: &str) -> Result<Self, MissingLine> {
        let field = |key: &'static str| {
            rustc_vv
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(MissingLine(key))
        };
        let cargo = cargo_v.trim();
        Ok(ToolchainIdentity {
            toolchain: name.to_owned(),
            commit_hash: field("commit-hash")?,
            commit_date: field("commit-date").unwrap_or_else(|_| "unknown".into()),
            host: field("host")?,
            release: field("release")?,
            cargo: cargo.strip_prefix("cargo ").unwrap_or(cargo).to_owned(),
        })
    }

    /// Whether `other` is the same build (same compiler commit for the same host), whatever
    /// name it was looked up under.
    pub fn same_build(&self, other: &ToolchainIdentity) -> bool {
        self.commit_hash == other.commit_hash
            && self.host == other.host
            && self.release == other.release
    }

    /// The short form shown in reports: `1.95.0-nightly (abcdef123456 2026-11-30, x86_64-…)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} {}, {})",
            self.release,
            short_hash(&self.commit_hash),
            self.commit_date,
            self.host
        )
    }

    /// The capability a worker with this build offers and a pinned experiment requires:
    /// `toolchain-id:<name>=<short commit hash>`. `None` when that is not a valid capability (a
    /// name with characters capabilities do not allow, or too long): such a pin is enforced on
    /// the results only.
    pub fn capability(&self) -> Option<String> {
        let cap = format!(
            "toolchain-id:{}={}",
            self.toolchain,
            short_hash(&self.commit_hash).to_ascii_lowercase()
        );
        is_valid_requirement(&cap).then_some(cap)
    }

    /// Why `self` (what a worker ran) is not the pinned build, or `None` when it is.
    pub fn mismatch(&self, pinned: &ToolchainIdentity) -> Option<String> {
        (!self.same_build(pinned)).then(|| {
            format!(
                "toolchain {} on this worker is {}, the experiment pinned {}",
                self.toolchain,
                self.describe(),
                pinned.describe()
            )
        })
    }
}

/// What the master does with one side of a result, given the experiment's pin for that side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinVerdict {
    /// Record it: it ran with the pinned build, or there is nothing to compare.
    Accept,
    /// Record it, and pin this identity for the side (the first result that carries one).
    Pin(ToolchainIdentity),
    /// Do not record it as the crate's outcome: it ran with another build (or did not say which
    /// while it built with the toolchain). The reason names both builds.
    Refuse(String),
}

/// The verdict for a side that ran with `ran` (`None`: the worker did not say) against the
/// experiment's `pinned` identity for the side; `built`: whether the side's outcome came from the
/// compiler (a side that never got to build — prepare failure, broken, skipped, an infrastructure
/// error — cannot be a spurious difference, with or without an identity).
pub fn pin_verdict(
    pinned: Option<&ToolchainIdentity>,
    ran: Option<&ToolchainIdentity>,
    built: bool,
) -> PinVerdict {
    match (pinned, ran) {
        (None, Some(ran)) => PinVerdict::Pin(ran.clone()),
        (None, None) => PinVerdict::Accept,
        (Some(pin), Some(ran)) => match ran.mismatch(pin) {
            Some(why) => PinVerdict::Refuse(why),
            None => PinVerdict::Accept,
        },
        (Some(pin), None) if built => PinVerdict::Refuse(format!(
            "the worker did not say which build of toolchain {} it ran; the experiment pinned {}",
            pin.toolchain,
            pin.describe()
        )),
        (Some(_), None) => PinVerdict::Accept,
    }
}

fn short_hash(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUSTC: &str = "rustc 1.95.0-nightly (0123456789ab 2026-11-30)\nbinary: rustc\n\
        commit-hash: 0123456789abcdef0123456789abcdef01234567\ncommit-date: 2026-11-30\n\
        host: x86_64-unknown-linux-gnu\nrelease: 1.95.0-nightly\nLLVM version: 21.1.0\n";

    fn nightly() -> ToolchainIdentity {
        ToolchainIdentity::parse(
            "nightly",
            RUSTC,
            "cargo 1.95.0-nightly (fedcba987 2026-11-29)\n",
        )
        .unwrap()
    }

    #[test]
    fn parses_rustc_and_cargo_versions() {
        assert_eq!(
            nightly(),
            ToolchainIdentity {
                toolchain: "nightly".into(),
                commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
                commit_date: "2026-11-30".into(),
                host: "x86_64-unknown-linux-gnu".into(),
                release: "1.95.0-nightly".into(),
                cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
            }
        );
        assert_eq!(
            nightly().describe(),
            "1.95.0-nightly (0123456789ab 2026-11-30, x86_64-unknown-linux-gnu)"
        );
    }

    #[test]
    fn rejects_output_without_the_needed_lines() {
        for (text, missing) in [
            ("", "commit-hash"),
            ("commit-hash: abc\nrelease: 1.0.0\n", "host"),
            ("commit-hash: abc\nhost: x\n", "release"),
            ("commit-hash:   \nhost: x\nrelease: 1\n", "commit-hash"),
        ] {
            assert_eq!(
                ToolchainIdentity::parse("stable", text, "cargo 1.0.0"),
                Err(MissingLine(missing)),
                "{text:?}"
            );
        }
        // a rustc built without git information still has an identity
        let local = ToolchainIdentity::parse(
            "dev",
            "commit-hash: unknown\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0-dev\n",
            "",
        )
        .unwrap();
        assert_eq!(
            (local.commit_date.as_str(), local.cargo.as_str()),
            ("unknown", "")
        );
    }

    #[test]
    fn builds_match_on_commit_host_and_release_not_name() {
        let a = nightly();
        let renamed = ToolchainIdentity {
            toolchain: "nightly-x86_64-unknown-linux-gnu".into(),
            ..a.clone()
        };
        assert!(a.same_build(&renamed));
        assert_eq!(a.mismatch(&renamed), None);
        let table = [
            (
                "commit_hash",
                ToolchainIdentity {
                    commit_hash: "ffff".into(),
                    ..a.clone()
                },
            ),
            (
                "host",
                ToolchainIdentity {
                    host: "aarch64-unknown-linux-gnu".into(),
                    ..a.clone()
                },
            ),
            (
                "release",
                ToolchainIdentity {
                    release: "1.96.0-nightly".into(),
                    ..a.clone()
                },
            ),
        ];
        for (what, other) in table {
            assert!(!a.same_build(&other), "{what}");
            let why = other.mismatch(&a).unwrap();
            assert!(
                why.starts_with("toolchain nightly on this worker is "),
                "{why}"
            );
            assert!(
                why.contains("the experiment pinned 1.95.0-nightly (0123456789ab"),
                "{why}"
            );
        }
    }

    #[test]
    fn verdicts_pin_the_first_identity_and_refuse_other_builds() {
        let pin = nightly();
        let other = ToolchainIdentity {
            commit_hash: "fedcba9876543210".into(),
            ..nightly()
        };
        let refused = |v: PinVerdict| match v {
            PinVerdict::Refuse(why) => why,
            v => panic!("{v:?}"),
        };
        assert_eq!(
            pin_verdict(None, Some(&pin), true),
            PinVerdict::Pin(pin.clone())
        );
        assert_eq!(
            pin_verdict(None, Some(&pin), false),
            PinVerdict::Pin(pin.clone())
        );
        assert_eq!(pin_verdict(None, None, true), PinVerdict::Accept);
        assert_eq!(
            pin_verdict(Some(&pin), Some(&pin), true),
            PinVerdict::Accept
        );
        let why = refused(pin_verdict(Some(&pin), Some(&other), true));
        assert!(why.contains("(fedcba987654 2026-11-30"), "{why}");
        // a different build is refused even when the side did not build: its identity is known
        assert!(matches!(
            pin_verdict(Some(&pin), Some(&other), false),
            PinVerdict::Refuse(_)
        ));
        let why = refused(pin_verdict(Some(&pin), None, true));
        assert!(
            why.starts_with("the worker did not say which build of toolchain nightly"),
            "{why}"
        );
        assert_eq!(pin_verdict(Some(&pin), None, false), PinVerdict::Accept);
    }

    #[test]
    fn capabilities_carry_the_short_hash_when_valid() {
        assert_eq!(
            nightly().capability().as_deref(),
            Some("toolchain-id:nightly=0123456789ab")
        );
        let odd = ToolchainIdentity {
            toolchain: "/opt/My Rust".into(),
            ..nightly()
        };
        assert_eq!(odd.capability(), None);
        let long = ToolchainIdentity {
            toolchain: "n".repeat(60),
            ..nightly()
        };
        assert_eq!(long.capability(), None);
    }
}
