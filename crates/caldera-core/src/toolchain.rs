//! Toolchains: which compiler an experiment side uses, and with which flags.
//!
//! A [`Toolchain`] has a compact string form, used on command lines and as a key:
//!
//! ```text
//! nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu+patch=foo=https://x/y.git#abc
//! path:/opt/rust/custom+cargoflags=--features%2Bx
//! ```
//!
//! The first `+`-separated part is the [`ToolchainSource`]; each further part is `KEY=VALUE` with
//! `KEY` one of `rustflags`, `rustdocflags`, `cargoflags`, `target` (each at most once, in any
//! order) or `patch` (repeatable, `CRATE=GIT-URL#REV`). Inside every part a literal `+` is written
//! `%2B` and a literal `%` is written `%25`; no other escape exists. `Display` writes the parts in
//! the fixed order above, so `Display`/`FromStr` round-trip for every valid value and
//! [`Toolchain::id`] is stable.
//!
//! In JSON a toolchain is accepted either as that string or as an object (unknown fields rejected):
//!
//! ```json
//! {"toolchain": "nightly", "rustflags": "-C opt-level=3 -Zfoo",
//!  "patches": [{"crate": "foo", "git": "https://host/foo.git", "rev": "abc"}]}
//! ```
//!
//! and is always serialized as the object (absent options and empty `patches` omitted). In the
//! object, `toolchain` is the source string without escapes.

#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crates::{
    CrateNameError, GitRevError, GitUrlError, PathError, validate_abs_path, validate_crate_name,
    validate_git_rev, validate_git_url,
};
use crate::serde_util::{MapOnly, string_serde};

/// Longest value accepted for `rustflags`, `rustdocflags` and `cargoflags`.
pub const MAX_FLAGS_LEN: usize = 4096;
/// Longest target or host triple accepted.
pub const MAX_TRIPLE_LEN: usize = 128;

/// Where a toolchain comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ToolchainSource {
    /// A rustup toolchain name: `stable`, `beta`, `nightly`, a channel with a date
    /// (`nightly-2026-05-19`), a version (`1.95.0`, `1.95`), each optionally followed by a host
    /// triple (`stable-x86_64-unknown-linux-gnu`).
    Rustup(String),
    /// A toolchain installed at an absolute path (`path:/opt/rust/custom`).
    Path(String),
}

/// A `[patch]` applied to every crate built with a toolchain: compact form `CRATE=GIT-URL#REV`;
/// JSON `{"crate": …, "git": …, "rev": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// The crate being replaced (a registry crate name).
    #[serde(rename = "crate")]
    pub krate: String,
    /// The git repository providing the replacement.
    pub git: String,
    /// The revision of that repository.
    pub rev: String,
}

/// [`Patch`] as read from JSON (an object only), each field checked where it stands.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "Patch")]
struct PatchIn {
    #[serde(rename = "crate", deserialize_with = "de_patch_crate")]
    krate: String,
    #[serde(deserialize_with = "de_patch_git")]
    git: String,
    #[serde(deserialize_with = "de_patch_rev")]
    rev: String,
}

impl<'de> Deserialize<'de> for Patch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let MapOnly(p) = MapOnly::<PatchIn>::deserialize(deserializer)?;
        Ok(Patch {
            krate: p.krate,
            git: p.git,
            rev: p.rev,
        })
    }
}

/// A compiler plus the flags, target and patches to build with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Toolchain {
    /// The compiler.
    pub source: ToolchainSource,
    /// `RUSTFLAGS` for every build step.
    pub rustflags: Option<String>,
    /// `RUSTDOCFLAGS` for every doc step.
    pub rustdocflags: Option<String>,
    /// Extra arguments for every cargo invocation.
    pub cargoflags: Option<String>,
    /// `--target` triple; `None` builds for the host.
    pub target: Option<String>,
    /// Patches applied to every crate, at most one per patched crate.
    pub patches: Vec<Patch>,
}

/// Why a patch is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// Not of the form `CRATE=GIT-URL#REV`.
    #[error("expected CRATE=GIT-URL#REV")]
    Format,
    /// The crate name is invalid.
    #[error(transparent)]
    Crate(#[from] CrateNameError),
    /// The git URL is invalid.
    #[error(transparent)]
    Git(#[from] GitUrlError),
    /// The revision is invalid.
    #[error(transparent)]
    Rev(#[from] GitRevError),
}

/// What is wrong with a toolchain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolchainErrorKind {
    /// Nothing names the compiler.
    #[error("toolchain name is empty")]
    Empty,
    /// Not a rustup channel, version or `path:`.
    #[error("unknown rustup toolchain name")]
    UnknownRustupName,
    /// A dated channel with an impossible or malformed date.
    #[error("invalid date {date:?} (expected YYYY-MM-DD)")]
    InvalidDate {
        /// The date as written.
        date: String,
    },
    /// A version channel that is not `MAJOR.MINOR` or `MAJOR.MINOR.PATCH`.
    #[error("invalid version {version:?} (expected MAJOR.MINOR or MAJOR.MINOR.PATCH)")]
    InvalidVersion {
        /// The version as written.
        version: String,
    },
    /// A host suffix that is not a triple like `x86_64-unknown-linux-gnu`.
    #[error("invalid host triple {host:?}")]
    InvalidHost {
        /// The host as written.
        host: String,
    },
    /// The path of a `path:` toolchain is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A stray `+` with nothing after it.
    #[error("empty option (a stray '+'; a literal '+' is written %2B)")]
    EmptyOption,
    /// An option key that does not exist.
    #[error(
        "unknown option {option:?} (expected rustflags, rustdocflags, cargoflags, target or patch)"
    )]
    UnknownOption {
        /// The key as written.
        option: String,
    },
    /// A known option without `=VALUE`.
    #[error("option {option:?} needs a value ({option}=VALUE)")]
    MissingValue {
        /// The key.
        option: &'static str,
    },
    /// A non-repeatable option given twice.
    #[error("option {option:?} is given more than once")]
    DuplicateOption {
        /// The key.
        option: &'static str,
    },
    /// An option whose value is empty or blank.
    #[error("{option} must not be empty")]
    EmptyValue {
        /// The key.
        option: &'static str,
    },
    /// An option whose value contains a control character (including newlines and tabs).
    #[error("{option} contains a control character")]
    ControlChar {
        /// The key.
        option: &'static str,
    },
    /// An option whose value is longer than [`MAX_FLAGS_LEN`].
    #[error("{option} is longer than {MAX_FLAGS_LEN} bytes")]
    TooLong {
        /// The key.
        option: &'static str,
    },
    /// A `%` not followed by `2B` or `25`.
    #[error("invalid escape {escape:?} (only %2B for '+' and %25 for '%' are recognised)")]
    InvalidEscape {
        /// The escape as written.
        escape: String,
    },
    /// A target that is not a triple like `x86_64-unknown-linux-gnu`.
    #[error("invalid target triple {target:?}")]
    InvalidTarget {
        /// The target as written.
        target: String,
    },
    /// A patch that is invalid.
    #[error("invalid patch {patch:?}: {reason}")]
    InvalidPatch {
        /// The patch in its compact form.
        patch: String,
        /// What is wrong with it.
        reason: PatchError,
    },
    /// Two patches for the same crate.
    #[error("crate {krate:?} is patched more than once")]
    DuplicatePatch {
        /// The crate.
        krate: String,
    },
}

/// An invalid toolchain: `invalid toolchain "nightlyy": unknown rustup toolchain name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ToolchainError {
    /// The text that was parsed, when the error comes from a string.
    pub input: Option<String>,
    /// What is wrong.
    pub kind: ToolchainErrorKind,
}

impl fmt::Display for ToolchainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.input {
            Some(input) => write!(f, "invalid toolchain {input:?}: {}", self.kind),
            None => write!(f, "invalid toolchain: {}", self.kind),
        }
    }
}

impl ToolchainError {
    fn new(input: &str, kind: ToolchainErrorKind) -> Self {
        ToolchainError {
            input: Some(input.to_owned()),
            kind,
        }
    }

    fn bare(kind: ToolchainErrorKind) -> Self {
        ToolchainError { input: None, kind }
    }
}

type Kind = ToolchainErrorKind;

mod check;
mod identity;

pub use identity::{MissingLine, PinVerdict, ToolchainIdentity, pin_verdict};

use check::{check_flags, check_rustup_name, check_target};

impl ToolchainSource {
    fn check(&self) -> Result<(), Kind> {
        match self {
            ToolchainSource::Rustup(name) => check_rustup_name(name),
            ToolchainSource::Path(path) => Ok(validate_abs_path(path)?),
        }
    }

    /// Checks the name or path; values built by `FromStr` and `Deserialize` always pass.
    pub fn validate(&self) -> Result<(), ToolchainError> {
        self.check()
            .map_err(|kind| ToolchainError::new(&self.to_string(), kind))
    }

    fn parse(s: &str) -> Result<Self, Kind> {
        let source = match s.strip_prefix("path:") {
            Some(path) => ToolchainSource::Path(path.to_owned()),
            None => ToolchainSource::Rustup(s.to_owned()),
        };
        source.check()?;
        Ok(source)
    }
}

impl fmt::Display for ToolchainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolchainSource::Rustup(name) => f.write_str(name),
            ToolchainSource::Path(path) => write!(f, "path:{path}"),
        }
    }
}

impl FromStr for ToolchainSource {
    type Err = ToolchainError;

    /// Parses `path:/ABS/DIR` or a rustup name. No escapes: this is the unescaped form used in the
    /// JSON object's `toolchain` field.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ToolchainSource::parse(s).map_err(|kind| ToolchainError::new(s, kind))
    }
}

string_serde!(ToolchainSource, "a rustup toolchain name or path:/ABS/DIR");

impl Patch {
    fn check(&self) -> Result<(), PatchError> {
        validate_crate_name(&self.krate)?;
        validate_git_url(&self.git)?;
        validate_git_rev(&self.rev)?;
        Ok(())
    }

    /// Checks the crate name, URL and revision.
    pub fn validate(&self) -> Result<(), ToolchainError> {
        self.check().map_err(|reason| {
            ToolchainError::bare(Kind::InvalidPatch {
                patch: self.to_string(),
                reason,
            })
        })
    }

    fn parse(s: &str) -> Result<Self, PatchError> {
        let (krate, rest) = s.split_once('=').ok_or(PatchError::Format)?;
        let (git, rev) = rest.rsplit_once('#').ok_or(PatchError::Format)?;
        let patch = Patch {
            krate: krate.to_owned(),
            git: git.to_owned(),
            rev: rev.to_owned(),
        };
        patch.check()?;
        Ok(patch)
    }
}

impl fmt::Display for Patch {
    /// The compact form `CRATE=GIT-URL#REV`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}#{}", self.krate, self.git, self.rev)
    }
}

impl FromStr for Patch {
    type Err = ToolchainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Patch::parse(s).map_err(|reason| {
            ToolchainError::bare(Kind::InvalidPatch {
                patch: s.to_owned(),
                reason,
            })
        })
    }
}

/// Escapes `%` and `+` for the compact form.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '+' => out.push_str("%2B"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`]; any other `%` sequence is an error.
fn unescape(s: &str) -> Result<String, Kind> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let code: String = after.chars().take(2).collect();
        match code.as_str() {
            "2B" | "2b" => out.push('+'),
            "25" => out.push('%'),
            _ => {
                return Err(Kind::InvalidEscape {
                    escape: format!("%{code}"),
                });
            }
        }
        rest = &after[2..];
    }
    out.push_str(rest);
    Ok(out)
}

const OPTIONS: [&str; 5] = ["rustflags", "rustdocflags", "cargoflags", "target", "patch"];

impl Toolchain {
    /// A toolchain with no flags, target or patches.
    pub fn new(source: ToolchainSource) -> Self {
        Toolchain {
            source,
            rustflags: None,
            rustdocflags: None,
            cargoflags: None,
            target: None,
            patches: Vec::new(),
        }
    }

    /// A plain rustup toolchain, validated: `Toolchain::rustup("nightly")`.
    pub fn rustup(name: &str) -> Result<Self, ToolchainError> {
        check_rustup_name(name).map_err(|kind| ToolchainError::new(name, kind))?;
        Ok(Toolchain::new(ToolchainSource::Rustup(name.to_owned())))
    }

    /// A short stable key for this toolchain: its compact string form.
    pub fn id(&self) -> String {
        self.to_string()
    }

    /// Checks every field; values built by `FromStr` and `Deserialize` always pass.
    pub fn validate(&self) -> Result<(), ToolchainError> {
        self.check()
            .map_err(|kind| ToolchainError::new(&self.to_string(), kind))
    }

    fn check(&self) -> Result<(), Kind> {
        self.source.check()?;
        for (option, value) in [
            ("rustflags", &self.rustflags),
            ("rustdocflags", &self.rustdocflags),
            ("cargoflags", &self.cargoflags),
        ] {
            if let Some(value) = value {
                check_flags(option, value)?;
            }
        }
        if let Some(target) = &self.target {
            check_target(target)?;
        }
        check_patches(&self.patches)
    }

    fn parse(s: &str) -> Result<Self, Kind> {
        let mut parts = s.split('+');
        let source = unescape(parts.next().unwrap_or_default())?;
        let mut tc = Toolchain::new(ToolchainSource::parse(&source)?);
        for part in parts {
            if part.is_empty() {
                return Err(Kind::EmptyOption);
            }
            let (key, raw) = match part.split_once('=') {
                Some((key, raw)) => (key, Some(raw)),
                None => (part, None),
            };
            let Some(option) = OPTIONS.iter().copied().find(|o| *o == key) else {
                return Err(Kind::UnknownOption {
                    option: key.to_owned(),
                });
            };
            let value = unescape(raw.ok_or(Kind::MissingValue { option })?)?;
            let slot = match option {
                "rustflags" => &mut tc.rustflags,
                "rustdocflags" => &mut tc.rustdocflags,
                "cargoflags" => &mut tc.cargoflags,
                "target" => &mut tc.target,
                _ => {
                    let patch = Patch::parse(&value).map_err(|reason| Kind::InvalidPatch {
                        patch: value.clone(),
                        reason,
                    })?;
                    tc.patches.push(patch);
                    continue;
                }
            };
            if slot.is_some() {
                return Err(Kind::DuplicateOption { option });
            }
            *slot = Some(value);
        }
        tc.check()?;
        Ok(tc)
    }
}

fn check_patches(patches: &[Patch]) -> Result<(), Kind> {
    let mut seen = BTreeSet::new();
    for patch in patches {
        patch.check().map_err(|reason| Kind::InvalidPatch {
            patch: patch.to_string(),
            reason,
        })?;
        if !seen.insert(patch.krate.as_str()) {
            return Err(Kind::DuplicatePatch {
                krate: patch.krate.clone(),
            });
        }
    }
    Ok(())
}

impl fmt::Display for Toolchain {
    /// The compact form; see the module docs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.source.to_string()))?;
        for (key, value) in [
            ("rustflags", &self.rustflags),
            ("rustdocflags", &self.rustdocflags),
            ("cargoflags", &self.cargoflags),
            ("target", &self.target),
        ] {
            if let Some(value) = value {
                write!(f, "+{key}={}", escape(value))?;
            }
        }
        for patch in &self.patches {
            write!(f, "+patch={}", escape(&patch.to_string()))?;
        }
        Ok(())
    }
}

impl FromStr for Toolchain {
    type Err = ToolchainError;

    /// Parses the compact form; see the module docs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Toolchain::parse(s).map_err(|kind| ToolchainError::new(s, kind))
    }
}

/// The structured JSON form of a [`Toolchain`].
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
struct ToolchainObject {
    /// The compiler: a rustup name (`nightly`, `1.95.0`, `nightly-2026-05-19`, optionally with a
    /// host suffix) or `path:/ABS/DIR`. No escapes here.
    #[cfg_attr(feature = "openapi", schema(inline))]
    toolchain: ToolchainSource,
    /// `RUSTFLAGS` for every build step.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_rustflags"
    )]
    rustflags: Option<String>,
    /// `RUSTDOCFLAGS` for every doc step.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_rustdocflags"
    )]
    rustdocflags: Option<String>,
    /// Extra arguments for every cargo invocation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_cargoflags"
    )]
    cargoflags: Option<String>,
    /// `--target` triple.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_target"
    )]
    target: Option<String>,
    /// Patches applied to every crate, at most one per crate.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "de_patches"
    )]
    #[cfg_attr(feature = "openapi", schema(inline))]
    patches: Vec<Patch>,
}

fn de_checked<'de, D, T>(d: D, check: impl FnOnce(&T) -> Result<(), Kind>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let value = T::deserialize(d)?;
    check(&value).map_err(|kind| de::Error::custom(ToolchainError::bare(kind)))?;
    Ok(value)
}

fn de_flags<'de, D: Deserializer<'de>>(
    d: D,
    option: &'static str,
) -> Result<Option<String>, D::Error> {
    de_checked(d, |v: &Option<String>| match v {
        Some(v) => check_flags(option, v),
        None => Ok(()),
    })
}

fn de_rustflags<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_flags(d, "rustflags")
}

fn de_rustdocflags<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_flags(d, "rustdocflags")
}

fn de_cargoflags<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_flags(d, "cargoflags")
}

fn de_target<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_checked(d, |v: &Option<String>| match v {
        Some(v) => check_target(v),
        None => Ok(()),
    })
}

fn de_patches<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Patch>, D::Error> {
    de_checked(d, |v: &Vec<Patch>| check_patches(v))
}

fn de_string_checked<'de, D, E>(d: D, check: fn(&str) -> Result<(), E>) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let value = String::deserialize(d)?;
    check(&value).map_err(de::Error::custom)?;
    Ok(value)
}

fn de_patch_crate<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_string_checked(d, validate_crate_name)
}

fn de_patch_git<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_string_checked(d, validate_git_url)
}

fn de_patch_rev<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    de_string_checked(d, validate_git_rev)
}

impl From<ToolchainObject> for Toolchain {
    fn from(o: ToolchainObject) -> Self {
        Toolchain {
            source: o.toolchain,
            rustflags: o.rustflags,
            rustdocflags: o.rustdocflags,
            cargoflags: o.cargoflags,
            target: o.target,
            patches: o.patches,
        }
    }
}

impl Serialize for Toolchain {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ToolchainObject {
            toolchain: self.source.clone(),
            rustflags: self.rustflags.clone(),
            rustdocflags: self.rustdocflags.clone(),
            cargoflags: self.cargoflags.clone(),
            target: self.target.clone(),
            patches: self.patches.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Toolchain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Toolchain;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a toolchain string like \"nightly+rustflags=-Zfoo\" or an object with a \"toolchain\" field",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Toolchain, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Toolchain, A::Error> {
                let object =
                    ToolchainObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let tc = Toolchain::from(object);
                tc.validate().map_err(de::Error::custom)?;
                Ok(tc)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    use utoipa::openapi::{RefOr, Schema};
    use utoipa::{PartialSchema, ToSchema};

    impl PartialSchema for super::ToolchainSource {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "A rustup toolchain name (stable, beta, nightly, nightly-YYYY-MM-DD, \
                     beta-YYYY-MM-DD, 1.95.0, 1.95, optionally followed by -HOST-TRIPLE) or \
                     path:/ABS/DIR.",
                ))
                .examples([serde_json::json!("nightly-2026-05-19")])
                .into()
        }
    }

    impl ToSchema for super::ToolchainSource {}

    impl PartialSchema for super::Toolchain {
        fn schema() -> RefOr<Schema> {
            let compact = ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "Compact form: SOURCE[+rustflags=V][+rustdocflags=V][+cargoflags=V]\
                     [+target=TRIPLE][+patch=CRATE=GIT-URL#REV]...; inside values '+' is \
                     written %2B and '%' is written %25.",
                ))
                .examples([serde_json::json!(
                    "nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu"
                )]);
            OneOfBuilder::new()
                .description(Some(
                    "A toolchain, as a compact string or a structured object. Always serialized \
                     as the object.",
                ))
                .item(compact)
                .item(<super::ToolchainObject as PartialSchema>::schema())
                .into()
        }
    }

    impl ToSchema for super::Toolchain {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use serde_json::json;

    fn rustup(name: &str) -> Toolchain {
        Toolchain::new(ToolchainSource::Rustup(name.into()))
    }

    #[test]
    fn rustup_names_valid() {
        for name in [
            "stable",
            "beta",
            "nightly",
            "nightly-2026-05-19",
            "beta-2026-05-19",
            "stable-2024-02-29",
            "1.95.0",
            "1.95",
            "1.0.0",
            "stable-x86_64-unknown-linux-gnu",
            "nightly-2026-05-19-aarch64-apple-darwin",
            "1.95.0-x86_64-pc-windows-msvc",
        ] {
            assert_eq!(check_rustup_name(name), Ok(()), "{name}");
            let tc: Toolchain = name.parse().unwrap();
            assert_eq!(tc, rustup(name));
            assert_eq!(tc.to_string(), name);
            assert_eq!(Toolchain::rustup(name).unwrap(), tc);
        }
    }

    #[test]
    fn rustup_names_invalid() {
        let cases: &[(&str, &str)] = &[
            ("", r#"invalid toolchain "": toolchain name is empty"#),
            (
                "nightlyy",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                "Nightly",
                r#"invalid toolchain "Nightly": unknown rustup toolchain name"#,
            ),
            (
                "my-toolchain",
                r#"invalid toolchain "my-toolchain": unknown rustup toolchain name"#,
            ),
            (
                "nightly-2026-13-01",
                r#"invalid toolchain "nightly-2026-13-01": invalid date "2026-13-01" (expected YYYY-MM-DD)"#,
            ),
            (
                "nightly-2026-02-29",
                r#"invalid toolchain "nightly-2026-02-29": invalid date "2026-02-29" (expected YYYY-MM-DD)"#,
            ),
            (
                "nightly-20260519",
                r#"invalid toolchain "nightly-20260519": invalid date "20260519" (expected YYYY-MM-DD)"#,
            ),
            (
                "nightly-2026-05-19x",
                r#"invalid toolchain "nightly-2026-05-19x": invalid date "2026-05-19x" (expected YYYY-MM-DD)"#,
            ),
            (
                "1",
                r#"invalid toolchain "1": invalid version "1" (expected MAJOR.MINOR or MAJOR.MINOR.PATCH)"#,
            ),
            (
                "1.95.0.1",
                r#"invalid toolchain "1.95.0.1": invalid version "1.95.0.1" (expected MAJOR.MINOR or MAJOR.MINOR.PATCH)"#,
            ),
            (
                "1.095",
                r#"invalid toolchain "1.095": invalid version "1.095" (expected MAJOR.MINOR or MAJOR.MINOR.PATCH)"#,
            ),
            (
                "stable-x86_64",
                r#"invalid toolchain "stable-x86_64": invalid host triple "x86_64""#,
            ),
            (
                "stable-",
                r#"invalid toolchain "stable-": invalid host triple """#,
            ),
            (
                "stable-X86_64-unknown-linux-gnu",
                r#"invalid toolchain "stable-X86_64-unknown-linux-gnu": invalid host triple "X86_64-unknown-linux-gnu""#,
            ),
            (
                "path:relative",
                r#"invalid toolchain "path:relative": path "relative" is not absolute"#,
            ),
            (
                "path:/opt/../etc",
                r#"invalid toolchain "path:/opt/../etc": path "/opt/../etc" must not contain a ".." component"#,
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                input.parse::<Toolchain>().unwrap_err().to_string(),
                *msg,
                "{input}"
            );
        }
    }

    #[test]
    fn compact_form_valid() {
        let full = Toolchain {
            source: ToolchainSource::Rustup("nightly".into()),
            rustflags: Some("-Zfoo".into()),
            rustdocflags: None,
            cargoflags: None,
            target: Some("x86_64-unknown-linux-gnu".into()),
            patches: vec![Patch {
                krate: "foo".into(),
                git: "https://x/y.git".into(),
                rev: "abc".into(),
            }],
        };
        let cases: Vec<(&str, Toolchain, &str)> = vec![
            (
                "nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu+patch=foo=https://x/y.git#abc",
                full.clone(),
                "nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu+patch=foo=https://x/y.git#abc",
            ),
            // Options in another order are accepted; Display uses the canonical order.
            (
                "nightly+patch=foo=https://x/y.git#abc+target=x86_64-unknown-linux-gnu+rustflags=-Zfoo",
                full,
                "nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu+patch=foo=https://x/y.git#abc",
            ),
            (
                "path:/opt/rust/custom",
                Toolchain::new(ToolchainSource::Path("/opt/rust/custom".into())),
                "path:/opt/rust/custom",
            ),
            (
                "path:/opt/c%2B%2B/rust%25x+cargoflags=--features=a%2Bb",
                Toolchain {
                    cargoflags: Some("--features=a+b".into()),
                    ..Toolchain::new(ToolchainSource::Path("/opt/c++/rust%x".into()))
                },
                "path:/opt/c%2B%2B/rust%25x+cargoflags=--features=a%2Bb",
            ),
            (
                "stable+rustflags=-C opt-level=3 -Zfoo+rustdocflags=--cfg docsrs",
                Toolchain {
                    rustflags: Some("-C opt-level=3 -Zfoo".into()),
                    rustdocflags: Some("--cfg docsrs".into()),
                    ..rustup("stable")
                },
                "stable+rustflags=-C opt-level=3 -Zfoo+rustdocflags=--cfg docsrs",
            ),
            // Lowercase escapes decode too; Display writes uppercase.
            (
                "beta+rustflags=a%2bb",
                Toolchain {
                    rustflags: Some("a+b".into()),
                    ..rustup("beta")
                },
                "beta+rustflags=a%2Bb",
            ),
            (
                "nightly+patch=a=https://h/a#r1+patch=b=https://h/b#r2",
                Toolchain {
                    patches: vec![
                        Patch {
                            krate: "a".into(),
                            git: "https://h/a".into(),
                            rev: "r1".into(),
                        },
                        Patch {
                            krate: "b".into(),
                            git: "https://h/b".into(),
                            rev: "r2".into(),
                        },
                    ],
                    ..rustup("nightly")
                },
                "nightly+patch=a=https://h/a#r1+patch=b=https://h/b#r2",
            ),
        ];
        for (input, expected, display) in cases {
            let tc: Toolchain = input.parse().unwrap();
            assert_eq!(tc, expected, "{input}");
            assert_eq!(tc.to_string(), display);
            assert_eq!(tc.id(), display);
            assert_eq!(display.parse::<Toolchain>().unwrap(), expected);
        }
    }

    #[test]
    fn compact_form_invalid() {
        let cases: &[(&str, &str)] = &[
            (
                "nightly+",
                r#"invalid toolchain "nightly+": empty option (a stray '+'; a literal '+' is written %2B)"#,
            ),
            (
                "path:/opt/c++/rust",
                r#"invalid toolchain "path:/opt/c++/rust": empty option (a stray '+'; a literal '+' is written %2B)"#,
            ),
            (
                "nightly+rustflag=-Zfoo",
                r#"invalid toolchain "nightly+rustflag=-Zfoo": unknown option "rustflag" (expected rustflags, rustdocflags, cargoflags, target or patch)"#,
            ),
            (
                "nightly+rustflags",
                r#"invalid toolchain "nightly+rustflags": option "rustflags" needs a value (rustflags=VALUE)"#,
            ),
            (
                "nightly+rustflags=",
                r#"invalid toolchain "nightly+rustflags=": rustflags must not be empty"#,
            ),
            (
                "nightly+cargoflags=  ",
                r#"invalid toolchain "nightly+cargoflags=  ": cargoflags must not be empty"#,
            ),
            (
                "nightly+rustflags=a+rustflags=b",
                r#"invalid toolchain "nightly+rustflags=a+rustflags=b": option "rustflags" is given more than once"#,
            ),
            (
                "nightly+rustflags=a%20b",
                r#"invalid toolchain "nightly+rustflags=a%20b": invalid escape "%20" (only %2B for '+' and %25 for '%' are recognised)"#,
            ),
            (
                "nightly+rustflags=50%",
                r#"invalid toolchain "nightly+rustflags=50%": invalid escape "%" (only %2B for '+' and %25 for '%' are recognised)"#,
            ),
            (
                "nightly+rustflags=a\tb",
                r#"invalid toolchain "nightly+rustflags=a\tb": rustflags contains a control character"#,
            ),
            (
                "nightly+target=x86_64",
                r#"invalid toolchain "nightly+target=x86_64": invalid target triple "x86_64""#,
            ),
            (
                "nightly+patch=foo",
                r#"invalid toolchain "nightly+patch=foo": invalid patch "foo": expected CRATE=GIT-URL#REV"#,
            ),
            (
                "nightly+patch=foo=https://x/y",
                r#"invalid toolchain "nightly+patch=foo=https://x/y": invalid patch "foo=https://x/y": expected CRATE=GIT-URL#REV"#,
            ),
            (
                "nightly+patch=9foo=https://x/y#r",
                r#"invalid toolchain "nightly+patch=9foo=https://x/y#r": invalid patch "9foo=https://x/y#r": invalid crate name "9foo": must start with an ASCII letter"#,
            ),
            (
                "nightly+patch=foo=x/y#r",
                r#"invalid toolchain "nightly+patch=foo=x/y#r": invalid patch "foo=x/y#r": git URL "x/y" must start with https://, http://, ssh://, git:// or file://"#,
            ),
            (
                "nightly+patch=a=https://h/a#r+patch=a=https://h/b#r",
                r#"invalid toolchain "nightly+patch=a=https://h/a#r+patch=a=https://h/b#r": crate "a" is patched more than once"#,
            ),
            (
                "nightlyy+rustflags=-Zfoo",
                r#"invalid toolchain "nightlyy+rustflags=-Zfoo": unknown rustup toolchain name"#,
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                input.parse::<Toolchain>().unwrap_err().to_string(),
                *msg,
                "{input}"
            );
        }
        let long = format!("nightly+rustflags={}", "x".repeat(MAX_FLAGS_LEN + 1));
        assert_eq!(
            long.parse::<Toolchain>().unwrap_err().kind,
            Kind::TooLong {
                option: "rustflags"
            }
        );
    }

    /// Pick one element of `items` with the test RNG.
    fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
        &items[rng.next_u32() as usize % items.len()]
    }

    fn random_value(rng: &mut ChaCha8Rng) -> String {
        const PIECES: &[&str] = &[
            "+",
            "%",
            "%2B",
            "%25",
            "=",
            "#",
            " ",
            "-Z",
            "foo",
            "2B",
            "25",
            "é",
            "\"",
            "\\",
            ",",
            "@",
            ":",
            "path:",
            "opt-level=3",
            "%%",
            "++",
        ];
        loop {
            let len = 1 + rng.next_u32() as usize % 6;
            let s: String = (0..len).map(|_| *pick(rng, PIECES)).collect();
            if !s.trim().is_empty() {
                return s;
            }
        }
    }

    fn random_toolchain(rng: &mut ChaCha8Rng) -> Toolchain {
        const SOURCES: &[&str] = &[
            "stable",
            "nightly-2026-05-19",
            "1.95",
            "beta-x86_64-unknown-linux-gnu",
            "path:/opt/rust",
            "path:/opt/a+b%c/d=e#f",
            "path:/x/%2B",
        ];
        let source: &str = pick::<&str>(rng, SOURCES);
        let source = ToolchainSource::parse(source).unwrap();
        let opt = |rng: &mut ChaCha8Rng| {
            if rng.next_u32().is_multiple_of(2) {
                Some(random_value(rng))
            } else {
                None
            }
        };
        let rustflags = opt(rng);
        let rustdocflags = opt(rng);
        let cargoflags = opt(rng);
        let target = if rng.next_u32().is_multiple_of(2) {
            Some(pick(rng, &["x86_64-unknown-linux-gnu", "wasm32-wasip1"]).to_string())
        } else {
            None
        };
        let n_patches = rng.next_u32() as usize % 3;
        let patches = (0..n_patches)
            .map(|i| Patch {
                krate: format!("crate{i}"),
                git: pick(
                    rng,
                    &["https://h/x.git", "ssh://git@h/a+b", "file:///r/%25"],
                )
                .to_string(),
                rev: pick(rng, &["abc", "v1.0", "release/x"]).to_string(),
            })
            .collect();
        Toolchain {
            source,
            rustflags,
            rustdocflags,
            cargoflags,
            target,
            patches,
        }
    }

    #[test]
    fn round_trip_property() {
        let mut rng = ChaCha8Rng::seed_from_u64(0xCA1DE7A);
        for _ in 0..2000 {
            let tc = random_toolchain(&mut rng);
            tc.validate().unwrap();
            let s = tc.to_string();
            let back: Toolchain = s
                .parse()
                .unwrap_or_else(|e| panic!("{s:?} does not parse: {e}"));
            assert_eq!(back, tc, "{s}");
            // JSON: the object form round-trips, and the compact string is accepted too.
            let json = serde_json::to_value(&tc).unwrap();
            assert_eq!(serde_json::from_value::<Toolchain>(json).unwrap(), tc);
            assert_eq!(serde_json::from_value::<Toolchain>(json!(s)).unwrap(), tc);
        }
    }

    #[test]
    fn json_forms() {
        let tc: Toolchain = serde_json::from_value(json!({
            "toolchain": "nightly",
            "rustflags": "-C opt-level=3 -Zfoo",
            "patches": [{"crate": "foo", "git": "https://h/foo.git", "rev": "abc"}]
        }))
        .unwrap();
        assert_eq!(
            tc,
            Toolchain {
                rustflags: Some("-C opt-level=3 -Zfoo".into()),
                patches: vec![Patch {
                    krate: "foo".into(),
                    git: "https://h/foo.git".into(),
                    rev: "abc".into()
                }],
                ..rustup("nightly")
            }
        );
        assert_eq!(
            serde_json::to_value(&tc).unwrap(),
            json!({
                "toolchain": "nightly",
                "rustflags": "-C opt-level=3 -Zfoo",
                "patches": [{"crate": "foo", "git": "https://h/foo.git", "rev": "abc"}]
            })
        );
        assert_eq!(
            serde_json::to_value(rustup("stable")).unwrap(),
            json!({"toolchain": "stable"})
        );
        // In the object, the path is written without escapes.
        let tc: Toolchain = serde_json::from_value(json!({"toolchain": "path:/opt/a+b"})).unwrap();
        assert_eq!(tc.source, ToolchainSource::Path("/opt/a+b".into()));
        assert_eq!(tc.to_string(), "path:/opt/a%2Bb");
    }

    /// JSON errors carry the path to the offending field and a readable message.
    #[test]
    fn json_errors_name_the_field() {
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (
                json!("nightlyy"),
                ".",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                json!({"toolchain": "nightlyy"}),
                "toolchain",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                json!({"toolchain": "nightly", "rustflag": "x"}),
                "rustflag",
                "unknown field `rustflag`, expected one of `toolchain`, `rustflags`, `rustdocflags`, `cargoflags`, `target`, `patches`",
            ),
            (
                json!({"toolchain": "nightly", "rustflags": ""}),
                "rustflags",
                "invalid toolchain: rustflags must not be empty",
            ),
            (
                json!({"toolchain": "nightly", "target": "x"}),
                "target",
                r#"invalid toolchain: invalid target triple "x""#,
            ),
            (
                json!({"toolchain": "nightly", "patches": [{"crate": "1a", "git": "https://h/x", "rev": "r"}]}),
                "patches[0].crate",
                r#"invalid crate name "1a": must start with an ASCII letter"#,
            ),
            (
                json!({"toolchain": "nightly", "patches": [{"crate": "a", "git": "https://h/x", "rev": "r", "x": 1}]}),
                "patches[0].x",
                "unknown field `x`, expected one of `crate`, `git`, `rev`",
            ),
            (
                json!({"toolchain": "nightly", "patches": [
                    {"crate": "a", "git": "https://h/x", "rev": "r"},
                    {"crate": "a", "git": "https://h/y", "rev": "r"}]}),
                "patches",
                r#"invalid toolchain: crate "a" is patched more than once"#,
            ),
            (
                json!({"toolchain": "nightly", "patches": [["a", "https://h/x", "r"]]}),
                "patches[0]",
                "invalid type: sequence, expected a JSON object",
            ),
            (json!({"rustflags": "x"}), ".", "missing field `toolchain`"),
            (
                json!(5),
                ".",
                "invalid type: integer `5`, expected a toolchain string like \"nightly+rustflags=-Zfoo\" or an object with a \"toolchain\" field",
            ),
        ];
        for (value, path, msg) in cases {
            let text = value.to_string();
            let de = &mut serde_json::Deserializer::from_str(&text);
            let err = serde_path_to_error::deserialize::<_, Toolchain>(de).unwrap_err();
            assert_eq!(err.path().to_string(), path, "{text}");
            let inner = err.inner().to_string();
            assert!(
                inner.starts_with(msg),
                "{text}: got {inner:?}, expected {msg:?}"
            );
        }
    }

    #[test]
    fn validate_constructed() {
        let mut tc = rustup("nightly");
        tc.rustflags = Some("\n".into());
        assert_eq!(
            tc.validate().unwrap_err().to_string(),
            "invalid toolchain \"nightly+rustflags=\\n\": rustflags must not be empty"
        );
        let tc = rustup("nightly-foo");
        assert_eq!(
            tc.validate().unwrap_err().kind,
            Kind::InvalidHost { host: "foo".into() }
        );
        let p: Patch = "foo=https://x/y.git#abc".parse().unwrap();
        assert_eq!(p.to_string(), "foo=https://x/y.git#abc");
        assert_eq!(
            "foo".parse::<Patch>().unwrap_err().to_string(),
            r#"invalid toolchain: invalid patch "foo": expected CRATE=GIT-URL#REV"#
        );
    }

    #[test]
    fn ids_distinguish_every_field() {
        let base = rustup("nightly");
        let variants = [
            base.clone(),
            Toolchain {
                rustflags: Some("-Zx".into()),
                ..base.clone()
            },
            Toolchain {
                rustdocflags: Some("-Zx".into()),
                ..base.clone()
            },
            Toolchain {
                cargoflags: Some("-Zx".into()),
                ..base.clone()
            },
            Toolchain {
                target: Some("wasm32-wasip1".into()),
                ..base.clone()
            },
            rustup("stable"),
        ];
        let ids: BTreeSet<String> = variants.iter().map(Toolchain::id).collect();
        assert_eq!(ids.len(), variants.len());
    }
}
