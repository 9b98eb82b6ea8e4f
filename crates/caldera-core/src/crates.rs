//! Crate names, specs and ids.
//!
//! * [`CrateSpec`] is what a user writes in a crate list: `serde`, `rand@0.8.5`,
//!   `git:https://host/repo.git#rev` (the `#rev` is optional) or `path:/abs/dir`.
//! * [`CrateId`] is a resolved identity with a stable string form: `reg:serde@1.0.0` (optionally
//!   followed by `#<sha256>` when the registry checksum is known), `git:https://host/repo.git#rev`
//!   (the rev is required) or `local:/abs/dir`.
//!
//! * [`CrateRef`] is how a user names a crate of an experiment: an exact crate, or a bare
//!   registry name.
//!
//! **One spelling in, one spelling out.** Every parser accepts both forms of an exact crate: the
//! user's (`rand@0.8.5`, `git:URL#rev`, `path:/dir`) and the id's (`reg:rand@0.8.5[#sha256]`,
//! `git:URL#rev`, `local:/dir`), so whatever caldera printed or the user typed can be pasted
//! anywhere a crate is taken. What is printed is the id form (`Display` of [`CrateId`]): it is
//! what Postgres, object keys, `results.json` and the API hold, it says its kind, and it can carry
//! the registry checksum.
//!
//! Both serialize as their string form, and `Display`/`FromStr` round-trip for every valid value.
//! The validators used here ([`validate_crate_name`], [`validate_git_url`], [`validate_git_rev`],
//! [`validate_abs_path`], [`validate_checksum`]) are public so other layers apply the same rules.

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use crate::serde_util::{first_control_char, string_serde};

mod reference;

pub use reference::CrateRef;

/// Longest crate name the registry accepts.
pub const MAX_CRATE_NAME_LEN: usize = 64;
/// Longest git URL accepted.
pub const MAX_GIT_URL_LEN: usize = 2048;
/// Longest git revision (commit, tag or branch name) accepted.
pub const MAX_GIT_REV_LEN: usize = 255;
/// Longest filesystem path accepted.
pub const MAX_PATH_LEN: usize = 4096;

/// Git URL schemes accepted in specs and ids.
pub const GIT_URL_SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];

/// Why a crate name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrateNameError {
    /// The name is empty.
    #[error("crate name is empty")]
    Empty,
    /// The name is longer than [`MAX_CRATE_NAME_LEN`].
    #[error("invalid crate name {name:?}: longer than {MAX_CRATE_NAME_LEN} characters")]
    TooLong {
        /// The offending name.
        name: String,
    },
    /// The name does not start with an ASCII letter.
    #[error("invalid crate name {name:?}: must start with an ASCII letter")]
    BadStart {
        /// The offending name.
        name: String,
    },
    /// The name contains a character other than ASCII alphanumerics, `-` and `_`.
    #[error(
        "invalid crate name {name:?}: character {ch:?} is not allowed (only ASCII letters, digits, '-' and '_')"
    )]
    BadChar {
        /// The offending name.
        name: String,
        /// The first disallowed character.
        ch: char,
    },
}

/// Validates a crate name the way the registry does: 1 to 64 characters, ASCII alphanumerics, `-`
/// and `_`, starting with an ASCII letter.
pub fn validate_crate_name(name: &str) -> Result<(), CrateNameError> {
    let Some(first) = name.chars().next() else {
        return Err(CrateNameError::Empty);
    };
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(CrateNameError::BadChar {
            name: name.to_owned(),
            ch,
        });
    }
    if !first.is_ascii_alphabetic() {
        return Err(CrateNameError::BadStart {
            name: name.to_owned(),
        });
    }
    if name.len() > MAX_CRATE_NAME_LEN {
        return Err(CrateNameError::TooLong {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Why a git URL is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitUrlError {
    /// The URL is empty.
    #[error("git URL is empty")]
    Empty,
    /// The URL is longer than [`MAX_GIT_URL_LEN`].
    #[error("git URL is longer than {MAX_GIT_URL_LEN} bytes")]
    TooLong,
    /// The URL has no supported scheme.
    #[error("git URL {url:?} must start with https://, http://, ssh://, git:// or file://")]
    Scheme {
        /// The offending URL.
        url: String,
    },
    /// Nothing follows the scheme.
    #[error("git URL {url:?} has nothing after the scheme")]
    NoHost {
        /// The offending URL.
        url: String,
    },
    /// The URL contains a character that cannot appear (whitespace, control, `#` or `,`).
    #[error(
        "git URL {url:?} contains {ch:?}, which is not allowed (no whitespace, control characters, '#' or ',')"
    )]
    BadChar {
        /// The offending URL.
        url: String,
        /// The first disallowed character.
        ch: char,
    },
}

/// Validates a git URL: a scheme from [`GIT_URL_SCHEMES`], something after it, at most
/// [`MAX_GIT_URL_LEN`] bytes, and no whitespace, control characters, `#` (which introduces the
/// revision) or `,` (which separates list entries).
pub fn validate_git_url(url: &str) -> Result<(), GitUrlError> {
    if url.is_empty() {
        return Err(GitUrlError::Empty);
    }
    if url.len() > MAX_GIT_URL_LEN {
        return Err(GitUrlError::TooLong);
    }
    if let Some(ch) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '#' || *c == ',')
    {
        return Err(GitUrlError::BadChar {
            url: url.to_owned(),
            ch,
        });
    }
    let Some(rest) = GIT_URL_SCHEMES.iter().find_map(|s| url.strip_prefix(s)) else {
        return Err(GitUrlError::Scheme {
            url: url.to_owned(),
        });
    };
    if rest.is_empty() || (rest.starts_with('/') && !url.starts_with("file://")) {
        return Err(GitUrlError::NoHost {
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// Why a git revision is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitRevError {
    /// The revision is empty.
    #[error("git revision is empty")]
    Empty,
    /// The revision is longer than [`MAX_GIT_REV_LEN`].
    #[error("git revision is longer than {MAX_GIT_REV_LEN} bytes")]
    TooLong,
    /// The revision starts with `-` (it would read as a command-line option).
    #[error("git revision {rev:?} must not start with '-'")]
    LeadingDash {
        /// The offending revision.
        rev: String,
    },
    /// The revision contains `..`.
    #[error("git revision {rev:?} must not contain \"..\"")]
    DotDot {
        /// The offending revision.
        rev: String,
    },
    /// The revision contains a character outside `[A-Za-z0-9._/-]`.
    #[error(
        "git revision {rev:?} contains {ch:?}, which is not allowed (only ASCII letters, digits, '.', '_', '/' and '-')"
    )]
    BadChar {
        /// The offending revision.
        rev: String,
        /// The first disallowed character.
        ch: char,
    },
}

/// Validates a git revision (commit hash, tag or branch name): 1 to 255 characters of
/// `[A-Za-z0-9._/-]`, not starting with `-` and without `..`.
pub fn validate_git_rev(rev: &str) -> Result<(), GitRevError> {
    if rev.is_empty() {
        return Err(GitRevError::Empty);
    }
    if rev.len() > MAX_GIT_REV_LEN {
        return Err(GitRevError::TooLong);
    }
    if let Some(ch) = rev
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(GitRevError::BadChar {
            rev: rev.to_owned(),
            ch,
        });
    }
    if rev.starts_with('-') {
        return Err(GitRevError::LeadingDash {
            rev: rev.to_owned(),
        });
    }
    if rev.contains("..") {
        return Err(GitRevError::DotDot {
            rev: rev.to_owned(),
        });
    }
    Ok(())
}

/// Why a filesystem path is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path does not start with `/`.
    #[error("path {path:?} is not absolute")]
    NotAbsolute {
        /// The offending path.
        path: String,
    },
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// The path has a `..` component.
    #[error("path {path:?} must not contain a \"..\" component")]
    ParentComponent {
        /// The offending path.
        path: String,
    },
    /// The path contains a control character.
    #[error("path {path:?} contains a control character")]
    ControlChar {
        /// The offending path.
        path: String,
    },
    /// The path ends with whitespace.
    #[error("path {path:?} must not end with whitespace")]
    TrailingWhitespace {
        /// The offending path.
        path: String,
    },
}

/// Validates an absolute filesystem path: starts with `/`, at most [`MAX_PATH_LEN`] bytes, no `..`
/// component, no control characters and no trailing whitespace.
pub fn validate_abs_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if first_control_char(path).is_some() {
        return Err(PathError::ControlChar {
            path: path.to_owned(),
        });
    }
    if path.split('/').any(|c| c == "..") {
        return Err(PathError::ParentComponent {
            path: path.to_owned(),
        });
    }
    if path.ends_with(char::is_whitespace) {
        return Err(PathError::TrailingWhitespace {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Why a registry checksum is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checksum {checksum:?} is not 64 lowercase hex digits (sha256)")]
pub struct ChecksumError {
    /// The offending checksum.
    pub checksum: String,
}

/// Validates a registry checksum: a sha256 digest written as 64 lowercase hex digits.
pub fn validate_checksum(checksum: &str) -> Result<(), ChecksumError> {
    if checksum.len() == 64
        && checksum
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ChecksumError {
            checksum: checksum.to_owned(),
        })
    }
}

fn parse_version(version: &str) -> Result<semver::Version, String> {
    if version.is_empty() {
        return Err("version is empty".to_owned());
    }
    semver::Version::parse(version).map_err(|e| format!("invalid version {version:?}: {e}"))
}

/// What a user writes in a crate list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrateSpec {
    /// A crate from the registry: `serde` (latest version) or `rand@0.8.5` (exact version).
    Registry {
        /// Crate name (validated by [`validate_crate_name`]).
        name: String,
        /// Exact version, or `None` for the latest.
        version: Option<semver::Version>,
    },
    /// A git repository: `git:https://host/repo.git` or `git:https://host/repo.git#rev`.
    Git {
        /// Repository URL (validated by [`validate_git_url`]).
        url: String,
        /// Revision to build, or `None` for the default branch's head.
        rev: Option<String>,
    },
    /// A directory on the worker: `path:/abs/dir`.
    Local {
        /// Absolute path (validated by [`validate_abs_path`], and without `,`).
        path: String,
    },
}

/// Why a [`CrateSpec`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrateSpecErrorKind {
    /// Nothing was written.
    #[error("crate spec is empty")]
    Empty,
    /// A `prefix:` other than `git:` and `path:`.
    #[error(
        "unknown prefix {prefix:?} (expected NAME, NAME@VERSION, git:URL[#REV] or path:/ABS/DIR)"
    )]
    UnknownPrefix {
        /// The prefix, without the colon.
        prefix: String,
    },
    /// The crate name is invalid.
    #[error(transparent)]
    Name(#[from] CrateNameError),
    /// The version after `@` is not a semver version.
    #[error("{0}")]
    Version(String),
    /// The git URL is invalid.
    #[error(transparent)]
    GitUrl(#[from] GitUrlError),
    /// The git revision is invalid.
    #[error(transparent)]
    GitRev(#[from] GitRevError),
    /// The path is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The path contains `,`, which separates list entries.
    #[error("path must not contain ','")]
    PathComma,
    /// A crate id (`reg:…`) that does not parse.
    #[error(transparent)]
    Id(CrateIdErrorKind),
}

/// A [`CrateSpec`] that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid crate spec {input:?}: {kind}")]
pub struct CrateSpecError {
    /// The text that was parsed (or the spec's display form).
    pub input: String,
    /// What is wrong.
    pub kind: CrateSpecErrorKind,
}

impl CrateSpec {
    /// A registry crate at its latest version.
    pub fn registry(name: impl Into<String>) -> Self {
        CrateSpec::Registry {
            name: name.into(),
            version: None,
        }
    }

    /// Checks every field; values built by `FromStr` and `Deserialize` always pass.
    pub fn validate(&self) -> Result<(), CrateSpecError> {
        self.check().map_err(|kind| CrateSpecError {
            input: self.to_string(),
            kind,
        })
    }

    fn check(&self) -> Result<(), CrateSpecErrorKind> {
        match self {
            CrateSpec::Registry { name, .. } => validate_crate_name(name)?,
            CrateSpec::Git { url, rev } => {
                validate_git_url(url)?;
                if let Some(rev) = rev {
                    validate_git_rev(rev)?;
                }
            }
            CrateSpec::Local { path } => {
                validate_abs_path(path)?;
                if path.contains(',') {
                    return Err(CrateSpecErrorKind::PathComma);
                }
            }
        }
        Ok(())
    }

    /// The spec that selects exactly `id`: its version, its revision, its directory.
    pub fn exact(id: &CrateId) -> CrateSpec {
        match id {
            CrateId::Registry { name, version, .. } => CrateSpec::Registry {
                name: name.clone(),
                version: Some(version.clone()),
            },
            CrateId::Git { url, rev } => CrateSpec::Git {
                url: url.clone(),
                rev: Some(rev.clone()),
            },
            CrateId::Local { path } => CrateSpec::Local { path: path.clone() },
        }
    }

    /// The registry crate name, for registry specs.
    pub fn registry_name(&self) -> Option<&str> {
        match self {
            CrateSpec::Registry { name, .. } => Some(name),
            _ => None,
        }
    }

    fn parse(s: &str) -> Result<Self, CrateSpecErrorKind> {
        if s.is_empty() {
            return Err(CrateSpecErrorKind::Empty);
        }
        let spec = if let Some(rest) = s.strip_prefix("git:") {
            let (url, rev) = match rest.rsplit_once('#') {
                Some((url, rev)) => (url, Some(rev.to_owned())),
                None => (rest, None),
            };
            CrateSpec::Git {
                url: url.to_owned(),
                rev,
            }
        } else if let Some(path) = s.strip_prefix("path:").or_else(|| s.strip_prefix("local:")) {
            CrateSpec::Local {
                path: path.to_owned(),
            }
        } else if s.starts_with("reg:") {
            // an id as printed (`reg:NAME@VERSION[#SHA256]`) selects exactly that version; the
            // checksum is the registry's own for that version, which preparation verifies anyway
            return CrateId::parse(s)
                .map(|id| CrateSpec::exact(&id))
                .map_err(CrateSpecErrorKind::Id);
        } else if let Some((prefix, _)) = s
            .split_once(':')
            .filter(|(p, _)| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(CrateSpecErrorKind::UnknownPrefix {
                prefix: prefix.to_owned(),
            });
        } else if s.contains('#') {
            // `NAME@VERSION#SHA256`, as the id's spelling without its `reg:`
            return CrateId::parse(s)
                .map(|id| CrateSpec::exact(&id))
                .map_err(CrateSpecErrorKind::Id);
        } else {
            let (name, version) = match s.split_once('@') {
                Some((name, version)) => (
                    name,
                    Some(parse_version(version).map_err(CrateSpecErrorKind::Version)?),
                ),
                None => (s, None),
            };
            CrateSpec::Registry {
                name: name.to_owned(),
                version,
            }
        };
        spec.check()?;
        Ok(spec)
    }
}

impl fmt::Display for CrateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrateSpec::Registry {
                name,
                version: None,
            } => f.write_str(name),
            CrateSpec::Registry {
                name,
                version: Some(v),
            } => write!(f, "{name}@{v}"),
            CrateSpec::Git { url, rev: None } => write!(f, "git:{url}"),
            CrateSpec::Git {
                url,
                rev: Some(rev),
            } => write!(f, "git:{url}#{rev}"),
            CrateSpec::Local { path } => write!(f, "path:{path}"),
        }
    }
}

impl FromStr for CrateSpec {
    type Err = CrateSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrateSpec::parse(s).map_err(|kind| CrateSpecError {
            input: s.to_owned(),
            kind,
        })
    }
}

string_serde!(
    CrateSpec,
    "a crate spec: NAME, NAME@VERSION, git:URL[#REV] or path:/ABS/DIR"
);

/// A resolved crate identity with a stable string form (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrateId {
    /// A registry crate at an exact version: `reg:serde@1.0.0` or `reg:serde@1.0.0#<sha256>`.
    Registry {
        /// Crate name.
        name: String,
        /// Exact version.
        version: semver::Version,
        /// The `.crate` file's sha256 from the registry index, when known.
        checksum: Option<String>,
    },
    /// A git repository at a revision: `git:https://host/repo.git#rev`.
    Git {
        /// Repository URL.
        url: String,
        /// Resolved revision.
        rev: String,
    },
    /// A directory on the worker: `local:/abs/dir`.
    Local {
        /// Absolute path.
        path: String,
    },
}

/// Why a [`CrateId`] is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrateIdErrorKind {
    /// The id is none of the forms below.
    #[error(
        "expected NAME@VERSION, git:URL#REV or path:/ABS/DIR (or the id forms reg:NAME@VERSION[#SHA256] and local:/ABS/DIR)"
    )]
    UnknownKind,
    /// A registry id without `@VERSION`.
    #[error("registry id needs NAME@VERSION")]
    MissingVersion,
    /// A git id without `#REV`.
    #[error("git id needs URL#REV")]
    MissingRev,
    /// The crate name is invalid.
    #[error(transparent)]
    Name(#[from] CrateNameError),
    /// The version is not a semver version.
    #[error("{0}")]
    Version(String),
    /// The checksum is invalid.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    /// The git URL is invalid.
    #[error(transparent)]
    GitUrl(#[from] GitUrlError),
    /// The git revision is invalid.
    #[error(transparent)]
    GitRev(#[from] GitRevError),
    /// The path is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A [`CrateId`] that failed to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid crate id {input:?}: {kind}")]
pub struct CrateIdError {
    /// The text that was parsed (or the id's display form).
    pub input: String,
    /// What is wrong.
    pub kind: CrateIdErrorKind,
}

impl CrateId {
    /// Checks every field; values built by `FromStr` and `Deserialize` always pass.
    pub fn validate(&self) -> Result<(), CrateIdError> {
        self.check().map_err(|kind| CrateIdError {
            input: self.to_string(),
            kind,
        })
    }

    fn check(&self) -> Result<(), CrateIdErrorKind> {
        match self {
            CrateId::Registry { name, checksum, .. } => {
                validate_crate_name(name)?;
                if let Some(c) = checksum {
                    validate_checksum(c)?;
                }
            }
            CrateId::Git { url, rev } => {
                validate_git_url(url)?;
                validate_git_rev(rev)?;
            }
            CrateId::Local { path } => validate_abs_path(path)?,
        }
        Ok(())
    }

    /// The registry crate name, for registry ids.
    pub fn registry_name(&self) -> Option<&str> {
        match self {
            CrateId::Registry { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The same identity without the checksum: two ids naming the same crate version compare equal
    /// after this, whether or not the checksum was known when each was made.
    pub fn without_checksum(&self) -> CrateId {
        match self {
            CrateId::Registry { name, version, .. } => CrateId::Registry {
                name: name.clone(),
                version: version.clone(),
                checksum: None,
            },
            other => other.clone(),
        }
    }

    fn parse(s: &str) -> Result<Self, CrateIdErrorKind> {
        let id = if let Some(rest) = s.strip_prefix("reg:") {
            let (rest, checksum) = match rest.split_once('#') {
                Some((rest, c)) => (rest, Some(c.to_owned())),
                None => (rest, None),
            };
            let (name, version) = rest
                .split_once('@')
                .ok_or(CrateIdErrorKind::MissingVersion)?;
            validate_crate_name(name)?;
            CrateId::Registry {
                name: name.to_owned(),
                version: parse_version(version).map_err(CrateIdErrorKind::Version)?,
                checksum,
            }
        } else if let Some(rest) = s.strip_prefix("git:") {
            let (url, rev) = rest.rsplit_once('#').ok_or(CrateIdErrorKind::MissingRev)?;
            CrateId::Git {
                url: url.to_owned(),
                rev: rev.to_owned(),
            }
        } else if let Some(path) = s.strip_prefix("local:").or_else(|| s.strip_prefix("path:")) {
            CrateId::Local {
                path: path.to_owned(),
            }
        } else if s.contains('@') && !s.split('@').next().is_some_and(|n| n.contains(':')) {
            // the user's spelling of a registry crate: `NAME@VERSION[#SHA256]`
            return CrateId::parse(&format!("reg:{s}"));
        } else {
            return Err(CrateIdErrorKind::UnknownKind);
        };
        id.check()?;
        Ok(id)
    }
}

impl fmt::Display for CrateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrateId::Registry {
                name,
                version,
                checksum,
            } => {
                write!(f, "reg:{name}@{version}")?;
                if let Some(c) = checksum {
                    write!(f, "#{c}")?;
                }
                Ok(())
            }
            CrateId::Git { url, rev } => write!(f, "git:{url}#{rev}"),
            CrateId::Local { path } => write!(f, "local:{path}"),
        }
    }
}

impl FromStr for CrateId {
    type Err = CrateIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrateId::parse(s).map_err(|kind| CrateIdError {
            input: s.to_owned(),
            kind,
        })
    }
}

string_serde!(
    CrateId,
    "a crate id: reg:NAME@VERSION[#SHA256], git:URL#REV or local:/ABS/DIR"
);

#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{RefOr, Schema};

    fn string_schema(description: &str, example: &str, pattern: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(description))
            .pattern(Some(pattern))
            .examples([serde_json::json!(example)])
            .into()
    }

    impl utoipa::PartialSchema for super::CrateSpec {
        fn schema() -> RefOr<Schema> {
            string_schema(
                "A crate as written in a list: NAME (latest registry version), NAME@VERSION (exact \
                 semver version), git:URL[#REV] (URL scheme https, http, ssh, git or file) or \
                 path:/ABS/DIR.",
                "rand@0.8.5",
                r"^([A-Za-z][A-Za-z0-9_-]{0,63}(@\S+)?|git:\S+|path:/.*)$",
            )
        }
    }

    impl utoipa::ToSchema for super::CrateSpec {}

    impl utoipa::PartialSchema for super::CrateId {
        fn schema() -> RefOr<Schema> {
            string_schema(
                "A resolved crate identity: reg:NAME@VERSION[#SHA256], git:URL#REV or local:/ABS/DIR.",
                "reg:serde@1.0.0",
                r"^(reg:[A-Za-z][A-Za-z0-9_-]{0,63}@[^#]+(#[0-9a-f]{64})?|git:\S+#\S+|local:/.*)$",
            )
        }
    }

    impl utoipa::ToSchema for super::CrateId {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    const CKSUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn crate_names() {
        let long = "a".repeat(64);
        let too_long = "a".repeat(65);
        for ok in [
            "serde",
            "a",
            "serde_json",
            "tokio-util",
            "A1",
            long.as_str(),
        ] {
            assert_eq!(validate_crate_name(ok), Ok(()), "{ok}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "crate name is empty"),
            (
                "1abc",
                r#"invalid crate name "1abc": must start with an ASCII letter"#,
            ),
            (
                "_abc",
                r#"invalid crate name "_abc": must start with an ASCII letter"#,
            ),
            (
                "foo.bar",
                r#"invalid crate name "foo.bar": character '.' is not allowed (only ASCII letters, digits, '-' and '_')"#,
            ),
            (
                "sérde",
                r#"invalid crate name "sérde": character 'é' is not allowed (only ASCII letters, digits, '-' and '_')"#,
            ),
            (
                "foo bar",
                r#"invalid crate name "foo bar": character ' ' is not allowed (only ASCII letters, digits, '-' and '_')"#,
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(validate_crate_name(input).unwrap_err().to_string(), *msg);
        }
        assert_eq!(
            validate_crate_name(&too_long).unwrap_err(),
            CrateNameError::TooLong { name: too_long }
        );
    }

    #[test]
    fn git_urls_and_revs() {
        for ok in [
            "https://x",
            "https://github.com/rust-lang/rust.git",
            "ssh://git@host/repo",
            "git://host/r",
            "file:///srv/git/repo",
            "http://h:8080/a/b",
        ] {
            assert_eq!(validate_git_url(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "git URL is empty"),
            (
                "github.com/x/y",
                r#"git URL "github.com/x/y" must start with https://, http://, ssh://, git:// or file://"#,
            ),
            (
                "https://",
                r#"git URL "https://" has nothing after the scheme"#,
            ),
            (
                "https:///x",
                r#"git URL "https:///x" has nothing after the scheme"#,
            ),
            (
                "https://x/a b",
                r#"git URL "https://x/a b" contains ' ', which is not allowed (no whitespace, control characters, '#' or ',')"#,
            ),
            (
                "https://x/a,b",
                r#"git URL "https://x/a,b" contains ',', which is not allowed (no whitespace, control characters, '#' or ',')"#,
            ),
        ];
        for (input, msg) in bad {
            assert_eq!(validate_git_url(input).unwrap_err().to_string(), *msg);
        }
        for ok in ["abc123", "v1.0.0", "feature/x", "main", "0123456789abcdef"] {
            assert_eq!(validate_git_rev(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "git revision is empty"),
            ("-x", r#"git revision "-x" must not start with '-'"#),
            ("a..b", r#"git revision "a..b" must not contain "..""#),
            (
                "a b",
                r#"git revision "a b" contains ' ', which is not allowed (only ASCII letters, digits, '.', '_', '/' and '-')"#,
            ),
            (
                "a#b",
                r#"git revision "a#b" contains '#', which is not allowed (only ASCII letters, digits, '.', '_', '/' and '-')"#,
            ),
        ];
        for (input, msg) in bad {
            assert_eq!(validate_git_rev(input).unwrap_err().to_string(), *msg);
        }
        assert_eq!(
            validate_git_rev(&"a".repeat(256)),
            Err(GitRevError::TooLong)
        );
    }

    #[test]
    fn paths() {
        for ok in ["/", "/abs/dir", "/a b/c", "/x/.hidden", "/x/a..b"] {
            assert_eq!(validate_abs_path(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "path is empty"),
            ("rel/dir", r#"path "rel/dir" is not absolute"#),
            (
                "/a/../b",
                r#"path "/a/../b" must not contain a ".." component"#,
            ),
            ("/a/..", r#"path "/a/.." must not contain a ".." component"#),
            ("/a\nb", r#"path "/a\nb" contains a control character"#),
            ("/a ", r#"path "/a " must not end with whitespace"#),
        ];
        for (input, msg) in bad {
            assert_eq!(validate_abs_path(input).unwrap_err().to_string(), *msg);
        }
    }

    #[test]
    fn checksums() {
        assert_eq!(validate_checksum(CKSUM), Ok(()));
        for bad in [
            "",
            "abc",
            &CKSUM.to_uppercase(),
            &format!("{CKSUM}0"),
            &CKSUM.replace('a', "g"),
        ] {
            assert!(validate_checksum(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn crate_spec_parse_valid() {
        let cases = vec![
            ("serde", CrateSpec::registry("serde")),
            (
                "rand@0.8.5",
                CrateSpec::Registry {
                    name: "rand".into(),
                    version: Some(v("0.8.5")),
                },
            ),
            (
                "foo@1.0.0-alpha.1+build.5",
                CrateSpec::Registry {
                    name: "foo".into(),
                    version: Some(v("1.0.0-alpha.1+build.5")),
                },
            ),
            (
                "git:https://host/repo.git#abc",
                CrateSpec::Git {
                    url: "https://host/repo.git".into(),
                    rev: Some("abc".into()),
                },
            ),
            (
                "git:https://x",
                CrateSpec::Git {
                    url: "https://x".into(),
                    rev: None,
                },
            ),
            (
                "path:/abs/dir",
                CrateSpec::Local {
                    path: "/abs/dir".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            let parsed: CrateSpec = input.parse().unwrap();
            assert_eq!(parsed, expected, "{input}");
            assert_eq!(parsed.to_string(), input);
            assert_eq!(
                serde_json::to_value(&parsed).unwrap(),
                serde_json::json!(input)
            );
            let back: CrateSpec = serde_json::from_value(serde_json::json!(input)).unwrap();
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn crate_spec_parse_invalid() {
        let cases: &[(&str, &str)] = &[
            ("", r#"invalid crate spec "": crate spec is empty"#),
            (
                "1serde",
                r#"invalid crate spec "1serde": invalid crate name "1serde": must start with an ASCII letter"#,
            ),
            (
                "rand@0.8",
                r#"invalid crate spec "rand@0.8": invalid version "0.8": unexpected end of input while parsing minor version number"#,
            ),
            ("rand@", r#"invalid crate spec "rand@": version is empty"#),
            (
                "@1.0.0",
                r#"invalid crate spec "@1.0.0": crate name is empty"#,
            ),
            (
                "crates:serde@1.0.0",
                r#"invalid crate spec "crates:serde@1.0.0": unknown prefix "crates" (expected NAME, NAME@VERSION, git:URL[#REV] or path:/ABS/DIR)"#,
            ),
            (
                "git:https://x#",
                r#"invalid crate spec "git:https://x#": git revision is empty"#,
            ),
            (
                "git:host/x",
                r#"invalid crate spec "git:host/x": git URL "host/x" must start with https://, http://, ssh://, git:// or file://"#,
            ),
            (
                "path:rel",
                r#"invalid crate spec "path:rel": path "rel" is not absolute"#,
            ),
            (
                "path:/a,b",
                r#"invalid crate spec "path:/a,b": path must not contain ','"#,
            ),
        ];
        for (input, msg) in cases {
            let err = input.parse::<CrateSpec>().unwrap_err();
            assert_eq!(err.to_string(), *msg, "{input}");
            let serde_err =
                serde_json::from_value::<CrateSpec>(serde_json::json!(input)).unwrap_err();
            assert_eq!(serde_err.to_string(), *msg);
        }
    }

    #[test]
    fn crate_id_parse_valid_and_round_trip() {
        let cases = vec![
            (
                "reg:serde@1.0.0".to_owned(),
                CrateId::Registry {
                    name: "serde".into(),
                    version: v("1.0.0"),
                    checksum: None,
                },
            ),
            (
                format!("reg:serde@1.0.0+meta.1#{CKSUM}"),
                CrateId::Registry {
                    name: "serde".into(),
                    version: v("1.0.0+meta.1"),
                    checksum: Some(CKSUM.into()),
                },
            ),
            (
                "git:https://host/r.git#0123abc".to_owned(),
                CrateId::Git {
                    url: "https://host/r.git".into(),
                    rev: "0123abc".into(),
                },
            ),
            (
                "local:/path/to/x".to_owned(),
                CrateId::Local {
                    path: "/path/to/x".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            let parsed: CrateId = input.parse().unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), input);
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{input}\""));
            assert_eq!(serde_json::from_str::<CrateId>(&json).unwrap(), expected);
        }
    }

    #[test]
    fn crate_id_parse_invalid() {
        let cases: &[(&str, &str)] = &[
            (
                "serde",
                r#"invalid crate id "serde": expected NAME@VERSION, git:URL#REV or path:/ABS/DIR (or the id forms reg:NAME@VERSION[#SHA256] and local:/ABS/DIR)"#,
            ),
            (
                "reg:serde",
                r#"invalid crate id "reg:serde": registry id needs NAME@VERSION"#,
            ),
            (
                "reg:serde@1.0.0#ABC",
                r#"invalid crate id "reg:serde@1.0.0#ABC": checksum "ABC" is not 64 lowercase hex digits (sha256)"#,
            ),
            (
                "reg:serde@x",
                r#"invalid crate id "reg:serde@x": invalid version "x": unexpected character 'x' while parsing major version number"#,
            ),
            (
                "git:https://x",
                r#"invalid crate id "git:https://x": git id needs URL#REV"#,
            ),
            (
                "local:x",
                r#"invalid crate id "local:x": path "x" is not absolute"#,
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(input.parse::<CrateId>().unwrap_err().to_string(), *msg);
        }
    }

    /// Round trip over a generated set of specs and ids: every valid value survives Display/FromStr.
    #[test]
    fn round_trip_many() {
        let names = ["a", "serde", "Inflector", "foo-bar_baz", "x1"];
        let versions = [
            "0.0.0",
            "1.2.3",
            "10.20.30-rc.1",
            "1.0.0+build",
            "2.0.0-a.b+c.d",
        ];
        let mut n = 0;
        for name in names {
            for ver in versions {
                for ck in [None, Some(CKSUM)] {
                    let id = CrateId::Registry {
                        name: name.into(),
                        version: v(ver),
                        checksum: ck.map(Into::into),
                    };
                    assert_eq!(id.to_string().parse::<CrateId>().unwrap(), id);
                    n += 1;
                }
                let spec = CrateSpec::Registry {
                    name: name.into(),
                    version: Some(v(ver)),
                };
                assert_eq!(spec.to_string().parse::<CrateSpec>().unwrap(), spec);
            }
        }
        for url in ["https://h/a.git", "ssh://git@h:22/a", "file:///srv/a"] {
            for rev in ["main", "v1.0", "release/1.x", "deadbeef"] {
                let id = CrateId::Git {
                    url: url.into(),
                    rev: rev.into(),
                };
                assert_eq!(id.to_string().parse::<CrateId>().unwrap(), id);
                let spec = CrateSpec::Git {
                    url: url.into(),
                    rev: Some(rev.into()),
                };
                assert_eq!(spec.to_string().parse::<CrateSpec>().unwrap(), spec);
                n += 1;
            }
        }
        for path in ["/", "/a b", "/x/y#z", "/x@y", "/git:x"] {
            let id = CrateId::Local { path: path.into() };
            assert_eq!(id.to_string().parse::<CrateId>().unwrap(), id);
            let spec = CrateSpec::Local { path: path.into() };
            assert_eq!(spec.to_string().parse::<CrateSpec>().unwrap(), spec);
            n += 1;
        }
        assert_eq!(n, 50 + 12 + 5);
    }

    #[test]
    fn validate_constructed_values() {
        let bad = CrateId::Registry {
            name: "9x".into(),
            version: v("1.0.0"),
            checksum: None,
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            r#"invalid crate id "reg:9x@1.0.0": invalid crate name "9x": must start with an ASCII letter"#
        );
        let bad = CrateSpec::Git {
            url: "https://x".into(),
            rev: Some("-rf".into()),
        };
        assert_eq!(
            bad.validate().unwrap_err().kind,
            CrateSpecErrorKind::GitRev(GitRevError::LeadingDash { rev: "-rf".into() })
        );
        let with = CrateId::Registry {
            name: "a".into(),
            version: v("1.0.0"),
            checksum: Some(CKSUM.into()),
        };
        assert_eq!(with.without_checksum().to_string(), "reg:a@1.0.0");
        assert_eq!(with.registry_name(), Some("a"));
    }
}
