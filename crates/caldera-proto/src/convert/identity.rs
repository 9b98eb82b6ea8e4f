//! A toolchain's resolved identity ([`ToolchainIdentity`]) on the wire: in `Hello` (every
//! toolchain a worker has) and in each side of a result (the build the side ran with).

use caldera_core::toolchain::ToolchainIdentity;

use crate::v1;
use crate::{WireError, wire};

/// Longest value of one identity field.
const MAX_FIELD: usize = 256;

impl From<&ToolchainIdentity> for v1::ToolchainIdentity {
    fn from(t: &ToolchainIdentity) -> Self {
        v1::ToolchainIdentity {
            toolchain: t.toolchain.clone(),
            commit_hash: t.commit_hash.clone(),
            commit_date: t.commit_date.clone(),
            host: t.host.clone(),
            release: t.release.clone(),
            cargo: t.cargo.clone(),
        }
    }
}

impl TryFrom<v1::ToolchainIdentity> for ToolchainIdentity {
    type Error = WireError;
    /// Every field printable and at most 256 bytes; `toolchain`, `commit_hash`, `host` and
    /// `release` (what a build is matched on) not empty.
    fn try_from(t: v1::ToolchainIdentity) -> Result<Self, WireError> {
        let fields = [
            ("toolchain", &t.toolchain, true),
            ("commit_hash", &t.commit_hash, true),
            ("commit_date", &t.commit_date, false),
            ("host", &t.host, true),
            ("release", &t.release, true),
            ("cargo", &t.cargo, false),
        ];
        for (name, value, required) in fields {
            if required && value.trim().is_empty() {
                return Err(wire(name, "missing"));
            }
            if value.len() > MAX_FIELD || value.chars().any(char::is_control) {
                return Err(wire(
                    name,
                    format!("{value:?} must be at most {MAX_FIELD} printable characters"),
                ));
            }
        }
        Ok(ToolchainIdentity {
            toolchain: t.toolchain,
            commit_hash: t.commit_hash,
            commit_date: t.commit_date,
            host: t.host,
            release: t.release,
            cargo: t.cargo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn nightly() -> ToolchainIdentity {
        ToolchainIdentity {
            toolchain: "nightly".into(),
            commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
            commit_date: "2026-11-30".into(),
            host: "x86_64-unknown-linux-gnu".into(),
            release: "1.95.0-nightly".into(),
            cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
        }
    }

    #[test]
    fn identity_round_trips() {
        let wire = v1::ToolchainIdentity::from(&nightly());
        assert_eq!(ToolchainIdentity::try_from(wire).unwrap(), nightly());
    }

    #[test]
    fn bad_identities_name_their_field() {
        type Edit = fn(&mut v1::ToolchainIdentity);
        let table: [(Edit, &str, &str); 6] = [
            (|t| t.toolchain.clear(), "toolchain", "missing"),
            (|t| t.commit_hash = " ".into(), "commit_hash", "missing"),
            (|t| t.host.clear(), "host", "missing"),
            (|t| t.release.clear(), "release", "missing"),
            (|t| t.cargo = "a\nb".into(), "cargo", "printable"),
            (
                |t| t.commit_date = "9".repeat(257),
                "commit_date",
                "at most 256",
            ),
        ];
        for (edit, field, message) in table {
            let mut wire = v1::ToolchainIdentity::from(&nightly());
            edit(&mut wire);
            let err = ToolchainIdentity::try_from(wire).unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.message.contains(message), "{field}: {}", err.message);
        }
        // optional fields may be empty
        let mut wire = v1::ToolchainIdentity::from(&nightly());
        wire.commit_date.clear();
        wire.cargo.clear();
        assert!(ToolchainIdentity::try_from(wire).is_ok());
    }
}
