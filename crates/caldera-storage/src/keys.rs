//! The one key scheme caldera uses in object storage.
//!
//! ```text
//! experiments/{experiment}/{toolchain}/{crate}/log.zst     build/test log of one crate on one toolchain
//! experiments/{experiment}/{toolchain}/{crate}/log.run-{n}.zst       … of confirmation run n (n ≥ 1)
//! experiments/{experiment}/{toolchain}/{crate}/log[.run-{n}].end.zst … of the end side when both
//!                                                          sides are that toolchain (calibration, A/A)
//! experiments/{experiment}/lockfiles/{crate}/Cargo.lock    the lockfile both toolchains build with
//! experiments/{experiment}/report/{file}                   files of the generated report
//! ```
//!
//! Postgres stores these keys; nothing else about an object is kept in the database.
//!
//! Every `{component}` is an arbitrary string (toolchain ids such as `nightly+rustflags=-Zfoo`, crate ids
//! such as `reg:serde@1.0.0` or `git:https://host/x.git#rev`), so each is encoded into one key segment:
//!
//! * bytes of `[A-Za-z0-9._@+=-]` are kept, every other byte of the UTF-8 form becomes `%XX` (upper-case
//!   hex) — so `/`, `%`, `:`, `#`, spaces and non-ASCII text can never split or escape a segment;
//! * a component that would encode to `.` or `..` has its dots encoded (`%2E`), so no segment is a path
//!   step;
//! * a toolchain that would encode to `lockfiles` or `report` has its first letter encoded, so a log can
//!   never land in the lockfile or report area of its experiment;
//! * the empty string is refused.
//!
//! Encoding is injective and [`decode_component`] / [`parse`] invert it exactly: decoding accepts only the
//! canonical form, so one component has exactly one spelling in storage.

use crate::error::StorageError;
use crate::key::ObjectKey;

/// The first segment of every caldera key.
pub const EXPERIMENTS: &str = "experiments";
/// The segment under an experiment holding lockfiles.
pub const LOCKFILES: &str = "lockfiles";
/// The segment under an experiment holding report files.
pub const REPORT: &str = "report";
/// File name of a log object.
pub const LOG_FILE: &str = "log.zst";
/// File name of a lockfile object.
pub const LOCKFILE_FILE: &str = "Cargo.lock";

/// A key of the scheme, decoded into its components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedKey {
    /// `experiments/{experiment}/{toolchain}/{crate}/log.zst`
    Log {
        /// Experiment name.
        experiment: String,
        /// Toolchain id.
        toolchain: String,
        /// Crate id.
        krate: String,
    },
    /// `experiments/{experiment}/lockfiles/{crate}/Cargo.lock`
    Lockfile {
        /// Experiment name.
        experiment: String,
        /// Crate id.
        krate: String,
    },
    /// `experiments/{experiment}/report/{file}`
    Report {
        /// Experiment name.
        experiment: String,
        /// Report file name.
        file: String,
    },
}

fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'=' | b'-')
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

/// Encodes one component into a single key segment (see the module docs). Refuses the empty string.
pub fn encode_component(component: &str) -> Result<String, StorageError> {
    if component.is_empty() {
        return Err(StorageError::InvalidKeyComponent {
            component: String::new(),
            reason: "a key component may not be empty".to_owned(),
        });
    }
    if component == "." || component == ".." {
        return Ok("%2E".repeat(component.len()));
    }
    let mut out = String::with_capacity(component.len());
    for &b in component.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
    }
    Ok(out)
}

/// Encodes a toolchain id: like [`encode_component`], and additionally never `lockfiles` or `report`.
pub fn encode_toolchain(toolchain: &str) -> Result<String, StorageError> {
    let encoded = encode_component(toolchain)?;
    if encoded == LOCKFILES || encoded == REPORT {
        let mut out = String::with_capacity(encoded.len() + 2);
        push_escaped(&mut out, encoded.as_bytes()[0]);
        out.push_str(&encoded[1..]);
        return Ok(out);
    }
    Ok(encoded)
}

fn decode_raw(segment: &str) -> Result<String, StorageError> {
    let err = |reason: &str| StorageError::InvalidKeyComponent {
        component: crate::error::escape_for_message(segment),
        reason: reason.to_owned(),
    };
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(err("`%` must be followed by two upper-case hex digits"));
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err("the decoded bytes are not UTF-8"))
}

/// Decodes a segment produced by [`encode_component`]; anything but the canonical encoding is refused.
pub fn decode_component(segment: &str) -> Result<String, StorageError> {
    let decoded = decode_raw(segment)?;
    if encode_component(&decoded)? != segment {
        return Err(StorageError::InvalidKeyComponent {
            component: crate::error::escape_for_message(segment),
            reason: "not in canonical encoding".to_owned(),
        });
    }
    Ok(decoded)
}

/// Decodes a segment produced by [`encode_toolchain`].
pub fn decode_toolchain(segment: &str) -> Result<String, StorageError> {
    let decoded = decode_raw(segment)?;
    if encode_toolchain(&decoded)? != segment {
        return Err(StorageError::InvalidKeyComponent {
            component: crate::error::escape_for_message(segment),
            reason: "not in canonical toolchain encoding".to_owned(),
        });
    }
    Ok(decoded)
}

/// `experiments/{experiment}`: the prefix holding everything of one experiment (for listing or
/// [`ObjectStore::delete_prefix`](crate::ObjectStore::delete_prefix)).
pub fn experiment_prefix(experiment: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([EXPERIMENTS, &encode_component(experiment)?])
}

/// `experiments/{experiment}/{toolchain}`: all logs of one toolchain in an experiment.
pub fn toolchain_prefix(experiment: &str, toolchain: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([
        EXPERIMENTS,
        &encode_component(experiment)?,
        &encode_toolchain(toolchain)?,
    ])
}

/// `experiments/{experiment}/{toolchain}/{crate}/log.zst`: the (zstd-compressed) log of one crate.
pub fn log(experiment: &str, toolchain: &str, krate: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([
        EXPERIMENTS,
        &encode_component(experiment)?,
        &encode_toolchain(toolchain)?,
        &encode_component(krate)?,
        LOG_FILE,
    ])
}

/// The log of one side of one run of a crate: [`log`] for a crate's first run (`run` 0), else
/// `log.run-{run}.zst` in the same place; with `same_toolchain_end` (the end side of an
/// experiment whose two sides are the same toolchain, a calibration run) `.end` is added before
/// `.zst`, so that the two sides' logs never share a key.
pub fn run_log(
    experiment: &str,
    toolchain: &str,
    krate: &str,
    run: u32,
    same_toolchain_end: bool,
) -> Result<ObjectKey, StorageError> {
    let file = match (run, same_toolchain_end) {
        (0, false) => LOG_FILE.to_owned(),
        (0, true) => "log.end.zst".to_owned(),
        (n, false) => format!("log.run-{n}.zst"),
        (n, true) => format!("log.run-{n}.end.zst"),
    };
    ObjectKey::from_segments([
        EXPERIMENTS,
        &encode_component(experiment)?,
        &encode_toolchain(toolchain)?,
        &encode_component(krate)?,
        &file,
    ])
}

/// `experiments/{experiment}/lockfiles/{crate}/Cargo.lock`: the lockfile of one crate.
pub fn lockfile(experiment: &str, krate: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([
        EXPERIMENTS,
        &encode_component(experiment)?,
        LOCKFILES,
        &encode_component(krate)?,
        LOCKFILE_FILE,
    ])
}

/// `experiments/{experiment}/lockfiles`: all lockfiles of an experiment.
pub fn lockfiles_prefix(experiment: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([EXPERIMENTS, &encode_component(experiment)?, LOCKFILES])
}

/// `experiments/{experiment}/report/{file}`: one file of an experiment's report.
pub fn report(experiment: &str, file: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([
        EXPERIMENTS,
        &encode_component(experiment)?,
        REPORT,
        &encode_component(file)?,
    ])
}

/// `experiments/{experiment}/report`: all report files of an experiment.
pub fn report_prefix(experiment: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_segments([EXPERIMENTS, &encode_component(experiment)?, REPORT])
}

/// Decodes a key of the scheme back into its components. Keys outside the scheme, or with components
/// not in canonical encoding, are refused with an error naming the key.
pub fn parse(key: &ObjectKey) -> Result<ParsedKey, StorageError> {
    let not_ours = || StorageError::InvalidKey {
        key: key.to_string(),
        reason: "not a key of the caldera key scheme".to_owned(),
    };
    let segments: Vec<&str> = key.segments().collect();
    match segments.as_slice() {
        [EXPERIMENTS, experiment, LOCKFILES, krate, LOCKFILE_FILE] => Ok(ParsedKey::Lockfile {
            experiment: decode_component(experiment)?,
            krate: decode_component(krate)?,
        }),
        [EXPERIMENTS, experiment, toolchain, krate, LOG_FILE] => Ok(ParsedKey::Log {
            experiment: decode_component(experiment)?,
            toolchain: decode_toolchain(toolchain)?,
            krate: decode_component(krate)?,
        }),
        [EXPERIMENTS, experiment, REPORT, file] => Ok(ParsedKey::Report {
            experiment: decode_component(experiment)?,
            file: decode_component(file)?,
        }),
        _ => Err(not_ours()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWKWARD: &[&str] = &[
        "stable",
        "nightly-2024-01-01",
        "nightly+rustflags=-Zfoo",
        "reg:serde@1.0.0",
        "git:https://host/x.git#0123abcd",
        "path with spaces/and/slashes",
        "100%",
        "%2E",
        ".",
        "..",
        "...",
        ".hidden",
        "lockfiles",
        "report",
        "Report",
        "log.zst",
        "Cargo.lock",
        "日本語",
        "tab\there",
        "back\\slash",
        "a?b&c=d",
        "~user",
    ];

    #[test]
    fn run_logs_have_keys_of_their_own() {
        let k = |run, end| {
            run_log("e", "stable", "reg:a@1.0.0", run, end)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            k(0, false),
            log("e", "stable", "reg:a@1.0.0").unwrap().to_string()
        );
        assert_eq!(k(0, true), "experiments/e/stable/reg%3Aa@1.0.0/log.end.zst");
        assert_eq!(
            k(2, false),
            "experiments/e/stable/reg%3Aa@1.0.0/log.run-2.zst"
        );
        assert_eq!(
            k(2, true),
            "experiments/e/stable/reg%3Aa@1.0.0/log.run-2.end.zst"
        );
    }

    #[test]
    fn components_round_trip_and_stay_one_segment() {
        for &c in AWKWARD {
            let enc = encode_component(c).unwrap();
            assert!(!enc.contains('/'), "{c:?} -> {enc}");
            assert_ne!(enc, ".");
            assert_ne!(enc, "..");
            assert!(enc.bytes().all(|b| keep(b) || b == b'%'), "{enc}");
            assert_eq!(decode_component(&enc).unwrap(), c);
            let tc = encode_toolchain(c).unwrap();
            assert_eq!(decode_toolchain(&tc).unwrap(), c);
        }
    }

    #[test]
    fn documented_examples() {
        assert_eq!(
            log("exp-1", "nightly+rustflags=-Zfoo", "reg:serde@1.0.0")
                .unwrap()
                .as_str(),
            "experiments/exp-1/nightly+rustflags=-Zfoo/reg%3Aserde@1.0.0/log.zst"
        );
        assert_eq!(
            lockfile("exp-1", "git:https://host/x.git#rev")
                .unwrap()
                .as_str(),
            "experiments/exp-1/lockfiles/git%3Ahttps%3A%2F%2Fhost%2Fx.git%23rev/Cargo.lock"
        );
        assert_eq!(
            report("exp-1", "index.html").unwrap().as_str(),
            "experiments/exp-1/report/index.html"
        );
        assert_eq!(encode_component("..").unwrap(), "%2E%2E");
        assert_eq!(encode_toolchain("lockfiles").unwrap(), "%6Cockfiles");
        assert_eq!(encode_toolchain("report").unwrap(), "%72eport");
    }

    #[test]
    fn every_key_parses_back() {
        for &e in AWKWARD {
            for &t in AWKWARD {
                for &c in AWKWARD {
                    let k = log(e, t, c).unwrap();
                    assert_eq!(
                        parse(&k).unwrap(),
                        ParsedKey::Log {
                            experiment: e.into(),
                            toolchain: t.into(),
                            krate: c.into()
                        },
                        "{k}"
                    );
                    assert!(k.is_under(&experiment_prefix(e).unwrap()));
                    assert!(k.is_under(&toolchain_prefix(e, t).unwrap()));
                    assert!(!k.is_under(&lockfiles_prefix(e).unwrap()), "{k}");
                    assert!(!k.is_under(&report_prefix(e).unwrap()), "{k}");
                }
                let l = lockfile(e, t).unwrap();
                assert_eq!(
                    parse(&l).unwrap(),
                    ParsedKey::Lockfile {
                        experiment: e.into(),
                        krate: t.into()
                    }
                );
                assert!(l.is_under(&lockfiles_prefix(e).unwrap()));
                let r = report(e, t).unwrap();
                assert_eq!(
                    parse(&r).unwrap(),
                    ParsedKey::Report {
                        experiment: e.into(),
                        file: t.into()
                    }
                );
                assert!(r.is_under(&report_prefix(e).unwrap()));
            }
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(encode_component("").is_err());
        assert!(log("e", "", "c").is_err());
        for bad in ["%2e", "%2", "%ZZ", "a%2Fb%", "%3a", "%FF", "a b", "%41"] {
            assert!(decode_component(bad).is_err(), "{bad}");
        }
        assert!(decode_toolchain("lockfiles").is_err());
        for k in [
            "foo/bar",
            "experiments/e/stable/c/other.txt",
            "experiments/e/report/a/b",
        ] {
            let err = parse(&ObjectKey::new(k).unwrap()).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
        // A component too long for one segment is refused with an error, not truncated.
        let err = log("e", "stable", &":".repeat(100)).unwrap_err();
        assert!(err.to_string().contains("255"), "{err}");
    }
}
