//! Which crates an experiment covers.
//!
//! Compact string forms (what a CLI user types):
//!
//! | form | selection |
//! | --- | --- |
//! | `all` | [`CrateSelection::All`] |
//! | `top:100` | [`CrateSelection::Top`] |
//! | `random:50` | [`CrateSelection::Random`] with seed 0 |
//! | `random:50@seed=7` | [`CrateSelection::Random`] with seed 7 |
//! | `list:NAME` | [`CrateSelection::CrateList`], a list stored on the server |
//! | `rdeps:NAME` | [`CrateSelection::ReverseDeps`], the registry crates that depend on crate NAME |
//! | `serde,rand@0.8.5,git:https://x#r` | [`CrateSelection::List`], comma-separated [`CrateSpec`]s |
//! | `crates:all` | [`CrateSelection::List`] with the explicit prefix, for the one-crate list `all` |
//!
//! The seed of `random:N` defaults to **0**, so a selection written without a seed still picks the
//! same crates every time. Whitespace around list entries is ignored. A lone `all` means the whole
//! registry; a crate that happens to be named `all` is written `crates:all` (or with a version).
//!
//! In JSON a selection is either that string or a tagged object (unknown fields rejected):
//! `{"kind":"top","n":100}`, `{"kind":"random","n":5,"seed":1}` (`seed` optional, default 0),
//! `{"kind":"list","crates":["serde","rand@0.8.5"]}`, `{"kind":"crate-list","name":"x"}`,
//! `{"kind":"rdeps","crate":"serde"}`, `{"kind":"all"}`. It is always serialized as the tagged object.
//!
//! Bounds: `n >= 1`; an explicit list has 1 to [`MAX_LIST_LEN`] entries and no entry twice (two
//! entries are duplicates when they are the same spec; `serde` and `serde@1.0.0` are different specs).

#![warn(missing_docs)]

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crates::{CrateNameError, CrateSpec, CrateSpecError, validate_crate_name};

/// Most entries an explicit list may have.
pub const MAX_LIST_LEN: usize = 100_000;
/// Longest name of a stored crate list.
pub const MAX_LIST_NAME_LEN: usize = 64;

/// Which crates an experiment covers; see the module docs for the string and JSON forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CrateSelection {
    /// Exactly these crates.
    List(Vec<CrateSpec>),
    /// A named list stored on the server.
    CrateList {
        /// The list's name (see [`validate_list_name`]).
        name: String,
    },
    /// The `n` most used registry crates.
    Top {
        /// How many; at least 1.
        n: u32,
    },
    /// `n` registry crates picked at random, deterministically for a seed.
    Random {
        /// How many; at least 1.
        n: u32,
        /// The PRNG seed (default 0).
        seed: u64,
    },
    /// Every registry crate.
    All,
    /// The registry crates whose newest version depends on this crate (see
    /// [`crate::registry::RegistryListing::rdeps`]).
    ReverseDeps {
        /// The crate depended on (a valid crate name).
        krate: String,
    },
}

/// What is wrong with a selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionErrorKind {
    /// Nothing was written.
    #[error("selection is empty")]
    Empty,
    /// A count that is not a positive integer.
    #[error("count {count:?} is not a positive integer")]
    InvalidCount {
        /// The count as written.
        count: String,
    },
    /// A count of zero.
    #[error("count must be at least 1")]
    ZeroCount,
    /// A seed that is not an unsigned 64-bit integer.
    #[error("seed {seed:?} is not an unsigned 64-bit integer")]
    InvalidSeed {
        /// The seed as written.
        seed: String,
    },
    /// Something after `random:N@` other than `seed=S`.
    #[error("expected random:N or random:N@seed=S, found {found:?} after '@'")]
    RandomSuffix {
        /// What followed the `@`.
        found: String,
    },
    /// An invalid stored-list name.
    #[error(
        "invalid list name {name:?}: expected 1 to {MAX_LIST_NAME_LEN} characters of lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    InvalidListName {
        /// The name as written.
        name: String,
    },
    /// An explicit list with no entries.
    #[error("crate list is empty")]
    EmptyList,
    /// An explicit list with more than [`MAX_LIST_LEN`] entries.
    #[error("crate list has {len} entries, more than the maximum of {MAX_LIST_LEN}")]
    TooMany {
        /// How many entries were given.
        len: usize,
    },
    /// An empty entry between commas.
    #[error("entry {index} of the list is empty")]
    EmptyEntry {
        /// Zero-based position of the entry.
        index: usize,
    },
    /// An entry that is not a valid crate spec.
    #[error("entry {index} of the list: {error}")]
    Spec {
        /// Zero-based position of the entry.
        index: usize,
        /// What is wrong with it.
        error: CrateSpecError,
    },
    /// `rdeps:` followed by something that is not a crate name.
    #[error("{0}")]
    CrateName(CrateNameError),
    /// An entry given twice.
    #[error("crate {spec:?} is listed more than once")]
    Duplicate {
        /// The duplicated spec.
        spec: String,
    },
}

/// An invalid selection: `invalid crate selection "top:0": count must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SelectionError {
    /// The text that was parsed, when the error comes from a string.
    pub input: Option<String>,
    /// What is wrong.
    pub kind: SelectionErrorKind,
}

impl fmt::Display for SelectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.input {
            Some(input) => write!(f, "invalid crate selection {input:?}: {}", self.kind),
            None => write!(f, "invalid crate selection: {}", self.kind),
        }
    }
}

type Kind = SelectionErrorKind;

/// Validates the name of a stored crate list: 1 to 64 characters of `[a-z0-9._-]`, starting with a
/// lowercase letter or digit.
pub fn validate_list_name(name: &str) -> Result<(), SelectionErrorKind> {
    let ok = name.len() <= MAX_LIST_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Kind::InvalidListName {
            name: name.to_owned(),
        })
    }
}

fn check_count(n: u32) -> Result<(), Kind> {
    if n == 0 { Err(Kind::ZeroCount) } else { Ok(()) }
}

fn parse_count(s: &str) -> Result<u32, Kind> {
    if !s.bytes().all(|b| b.is_ascii_digit()) || s.is_empty() {
        return Err(Kind::InvalidCount {
            count: s.to_owned(),
        });
    }
    let n: u32 = s.parse().map_err(|_| Kind::InvalidCount {
        count: s.to_owned(),
    })?;
    check_count(n)?;
    Ok(n)
}

/// Checks an explicit list: non-empty, at most [`MAX_LIST_LEN`], valid entries, no duplicates.
fn check_list(specs: &[CrateSpec]) -> Result<(), Kind> {
    if specs.is_empty() {
        return Err(Kind::EmptyList);
    }
    if specs.len() > MAX_LIST_LEN {
        return Err(Kind::TooMany { len: specs.len() });
    }
    let mut seen = HashSet::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        spec.validate()
            .map_err(|error| Kind::Spec { index, error })?;
        if !seen.insert(spec) {
            return Err(Kind::Duplicate {
                spec: spec.to_string(),
            });
        }
    }
    Ok(())
}

fn parse_list(s: &str) -> Result<Vec<CrateSpec>, Kind> {
    let entries: Vec<&str> = s.split(',').map(str::trim).collect();
    if entries.len() > MAX_LIST_LEN {
        return Err(Kind::TooMany { len: entries.len() });
    }
    let specs = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            if entry.is_empty() {
                return Err(Kind::EmptyEntry { index });
            }
            entry.parse().map_err(|error| Kind::Spec { index, error })
        })
        .collect::<Result<Vec<CrateSpec>, Kind>>()?;
    check_list(&specs)?;
    Ok(specs)
}

impl CrateSelection {
    /// Checks bounds and entries; values built by `FromStr` and `Deserialize` always pass.
    pub fn validate(&self) -> Result<(), SelectionError> {
        self.check()
            .map_err(|kind| SelectionError { input: None, kind })
    }

    fn check(&self) -> Result<(), Kind> {
        match self {
            CrateSelection::List(specs) => check_list(specs),
            CrateSelection::CrateList { name } => validate_list_name(name),
            CrateSelection::Top { n } | CrateSelection::Random { n, .. } => check_count(*n),
            CrateSelection::All => Ok(()),
            CrateSelection::ReverseDeps { krate } => {
                validate_crate_name(krate).map_err(Kind::CrateName)
            }
        }
    }

    /// The kind as used in the JSON tag: `list`, `crate-list`, `top`, `random` or `all`.
    pub fn kind(&self) -> &'static str {
        match self {
            CrateSelection::List(_) => "list",
            CrateSelection::CrateList { .. } => "crate-list",
            CrateSelection::Top { .. } => "top",
            CrateSelection::Random { .. } => "random",
            CrateSelection::All => "all",
            CrateSelection::ReverseDeps { .. } => "rdeps",
        }
    }

    fn parse(s: &str) -> Result<Self, Kind> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Kind::Empty);
        }
        if s == "all" {
            return Ok(CrateSelection::All);
        }
        if let Some(n) = s.strip_prefix("top:") {
            return Ok(CrateSelection::Top { n: parse_count(n)? });
        }
        if let Some(rest) = s.strip_prefix("random:") {
            let (n, seed) = match rest.split_once('@') {
                None => (rest, 0),
                Some((n, suffix)) => {
                    let seed = suffix.strip_prefix("seed=").ok_or(Kind::RandomSuffix {
                        found: suffix.to_owned(),
                    })?;
                    let parsed = seed
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| seed.parse::<u64>().ok())
                        .flatten()
                        .ok_or(Kind::InvalidSeed {
                            seed: seed.to_owned(),
                        })?;
                    (n, parsed)
                }
            };
            return Ok(CrateSelection::Random {
                n: parse_count(n)?,
                seed,
            });
        }
        if let Some(name) = s.strip_prefix("rdeps:") {
            validate_crate_name(name).map_err(Kind::CrateName)?;
            return Ok(CrateSelection::ReverseDeps {
                krate: name.to_owned(),
            });
        }
        if let Some(name) = s.strip_prefix("list:") {
            validate_list_name(name)?;
            return Ok(CrateSelection::CrateList {
                name: name.to_owned(),
            });
        }
        let list = s.strip_prefix("crates:").unwrap_or(s);
        Ok(CrateSelection::List(parse_list(list)?))
    }
}

impl fmt::Display for CrateSelection {
    /// The compact form; see the module docs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrateSelection::All => f.write_str("all"),
            CrateSelection::Top { n } => write!(f, "top:{n}"),
            CrateSelection::Random { n, seed: 0 } => write!(f, "random:{n}"),
            CrateSelection::Random { n, seed } => write!(f, "random:{n}@seed={seed}"),
            CrateSelection::CrateList { name } => write!(f, "list:{name}"),
            CrateSelection::ReverseDeps { krate } => write!(f, "rdeps:{krate}"),
            CrateSelection::List(specs) => {
                let ambiguous = matches!(specs.as_slice(), [CrateSpec::Registry { name, version: None }] if name == "all");
                if ambiguous {
                    f.write_str("crates:")?;
                }
                for (i, spec) in specs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{spec}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for CrateSelection {
    type Err = SelectionError;

    /// Parses the compact form; see the module docs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrateSelection::parse(s).map_err(|kind| SelectionError {
            input: Some(s.to_owned()),
            kind,
        })
    }
}

/// Which variant a tagged JSON object names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SelectionKind {
    List,
    CrateList,
    Top,
    Random,
    All,
    Rdeps,
}

/// The tagged JSON object as read: every field optional, checked against the kind afterwards so
/// that each field's errors carry its own path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionObjectIn {
    kind: SelectionKind,
    #[serde(default, deserialize_with = "de_count")]
    n: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default, deserialize_with = "de_list")]
    crates: Option<Vec<CrateSpec>>,
    #[serde(default, deserialize_with = "de_list_name")]
    name: Option<String>,
    #[serde(default, rename = "crate", deserialize_with = "de_crate_name")]
    krate: Option<String>,
}

fn bare(kind: Kind) -> SelectionError {
    SelectionError { input: None, kind }
}

fn de_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = Option::<u32>::deserialize(d)?;
    if let Some(n) = n {
        check_count(n).map_err(|k| de::Error::custom(bare(k)))?;
    }
    Ok(n)
}

fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<CrateSpec>>, D::Error> {
    let list = Option::<Vec<CrateSpec>>::deserialize(d)?;
    if let Some(list) = &list {
        check_list(list).map_err(|k| de::Error::custom(bare(k)))?;
    }
    Ok(list)
}

fn de_list_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    if let Some(name) = &name {
        validate_list_name(name).map_err(|k| de::Error::custom(bare(k)))?;
    }
    Ok(name)
}

fn de_crate_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?;
    if let Some(name) = &name {
        validate_crate_name(name).map_err(|e| de::Error::custom(bare(Kind::CrateName(e))))?;
    }
    Ok(name)
}

impl SelectionObjectIn {
    fn into_selection(self) -> Result<CrateSelection, String> {
        let kind = match self.kind {
            SelectionKind::List => "list",
            SelectionKind::CrateList => "crate-list",
            SelectionKind::Top => "top",
            SelectionKind::Random => "random",
            SelectionKind::All => "all",
            SelectionKind::Rdeps => "rdeps",
        };
        let allowed: &[&str] = match self.kind {
            SelectionKind::List => &["crates"],
            SelectionKind::CrateList => &["name"],
            SelectionKind::Top => &["n"],
            SelectionKind::Random => &["n", "seed"],
            SelectionKind::All => &[],
            SelectionKind::Rdeps => &["crate"],
        };
        for (field, present) in [
            ("n", self.n.is_some()),
            ("seed", self.seed.is_some()),
            ("crates", self.crates.is_some()),
            ("name", self.name.is_some()),
            ("crate", self.krate.is_some()),
        ] {
            if present && !allowed.contains(&field) {
                return Err(format!(
                    "field `{field}` is not allowed for kind \"{kind}\""
                ));
            }
        }
        let missing = |field: &str| format!("kind \"{kind}\" requires field `{field}`");
        Ok(match self.kind {
            SelectionKind::List => {
                CrateSelection::List(self.crates.ok_or_else(|| missing("crates"))?)
            }
            SelectionKind::CrateList => CrateSelection::CrateList {
                name: self.name.ok_or_else(|| missing("name"))?,
            },
            SelectionKind::Top => CrateSelection::Top {
                n: self.n.ok_or_else(|| missing("n"))?,
            },
            SelectionKind::Random => CrateSelection::Random {
                n: self.n.ok_or_else(|| missing("n"))?,
                seed: self.seed.unwrap_or(0),
            },
            SelectionKind::All => CrateSelection::All,
            SelectionKind::Rdeps => CrateSelection::ReverseDeps {
                krate: self.krate.ok_or_else(|| missing("crate"))?,
            },
        })
    }
}

/// A crate selection as an object tagged by `kind`.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum SelectionObjectOut<'a> {
    /// Exactly these crates (1 to 100000 distinct specs).
    List {
        #[cfg_attr(feature = "openapi", schema(inline, min_items = 1, max_items = 100000))]
        crates: &'a [CrateSpec],
    },
    /// A named list stored on the server.
    CrateList {
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$"))]
        name: &'a str,
    },
    /// The n most used registry crates.
    Top {
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        n: u32,
    },
    /// n registry crates picked at random, deterministically for the seed.
    Random {
        #[cfg_attr(feature = "openapi", schema(minimum = 1))]
        n: u32,
        /// Defaults to 0 when absent.
        #[cfg_attr(feature = "openapi", schema(required = false))]
        seed: u64,
    },
    /// Every registry crate.
    All,
    /// The registry crates whose newest version depends on this crate (normal, build or dev
    /// dependency); needs the master's registry listing.
    Rdeps {
        #[serde(rename = "crate")]
        krate: &'a str,
    },
}

impl Serialize for CrateSelection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CrateSelection::List(crates) => SelectionObjectOut::List { crates },
            CrateSelection::CrateList { name } => SelectionObjectOut::CrateList { name },
            CrateSelection::Top { n } => SelectionObjectOut::Top { n: *n },
            CrateSelection::Random { n, seed } => SelectionObjectOut::Random { n: *n, seed: *seed },
            CrateSelection::All => SelectionObjectOut::All,
            CrateSelection::ReverseDeps { krate } => SelectionObjectOut::Rdeps { krate },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CrateSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CrateSelection;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a crate selection string (all, top:N, random:N[@seed=S], list:NAME, rdeps:NAME or a comma-separated crate list) or an object with a \"kind\" field",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CrateSelection, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CrateSelection, A::Error> {
                let object =
                    SelectionObjectIn::deserialize(de::value::MapAccessDeserializer::new(map))?;
                object.into_selection().map_err(|message| {
                    de::Error::custom(format_args!("invalid crate selection: {message}"))
                })
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

    impl PartialSchema for super::CrateSelection {
        fn schema() -> RefOr<Schema> {
            let compact = ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "Compact form: all, top:N, random:N, random:N@seed=S (seed defaults to 0), \
                     list:NAME, rdeps:NAME (the crates depending on crate NAME), or a comma-separated list of crate specs (optionally prefixed \
                     with crates:).",
                ))
                .examples([serde_json::json!("top:100")]);
            OneOfBuilder::new()
                .description(Some(
                    "Which crates an experiment covers, as a compact string or a tagged object. \
                     Always serialized as the tagged object.",
                ))
                .item(compact)
                .item(<super::SelectionObjectOut<'static> as PartialSchema>::schema())
                .into()
        }
    }

    impl ToSchema for super::CrateSelection {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(name: &str) -> CrateSpec {
        CrateSpec::registry(name)
    }

    #[test]
    fn compact_valid() {
        let cases: Vec<(&str, CrateSelection, &str)> = vec![
            ("all", CrateSelection::All, "all"),
            (" all ", CrateSelection::All, "all"),
            ("top:100", CrateSelection::Top { n: 100 }, "top:100"),
            (
                "top:4294967295",
                CrateSelection::Top { n: u32::MAX },
                "top:4294967295",
            ),
            (
                "random:50",
                CrateSelection::Random { n: 50, seed: 0 },
                "random:50",
            ),
            (
                "random:50@seed=0",
                CrateSelection::Random { n: 50, seed: 0 },
                "random:50",
            ),
            (
                "random:50@seed=7",
                CrateSelection::Random { n: 50, seed: 7 },
                "random:50@seed=7",
            ),
            (
                "random:1@seed=18446744073709551615",
                CrateSelection::Random {
                    n: 1,
                    seed: u64::MAX,
                },
                "random:1@seed=18446744073709551615",
            ),
            (
                "list:my-list.v2",
                CrateSelection::CrateList {
                    name: "my-list.v2".into(),
                },
                "list:my-list.v2",
            ),
            (
                "rdeps:serde_json",
                CrateSelection::ReverseDeps {
                    krate: "serde_json".into(),
                },
                "rdeps:serde_json",
            ),
            (
                " rdeps:Inflector ",
                CrateSelection::ReverseDeps {
                    krate: "Inflector".into(),
                },
                "rdeps:Inflector",
            ),
            ("serde", CrateSelection::List(vec![reg("serde")]), "serde"),
            (
                "serde, rand@0.8.5 ,git:https://x#r,path:/a b",
                CrateSelection::List(vec![
                    reg("serde"),
                    "rand@0.8.5".parse().unwrap(),
                    "git:https://x#r".parse().unwrap(),
                    "path:/a b".parse().unwrap(),
                ]),
                "serde,rand@0.8.5,git:https://x#r,path:/a b",
            ),
            (
                "crates:all",
                CrateSelection::List(vec![reg("all")]),
                "crates:all",
            ),
            (
                "crates:serde",
                CrateSelection::List(vec![reg("serde")]),
                "serde",
            ),
            (
                "all,serde",
                CrateSelection::List(vec![reg("all"), reg("serde")]),
                "all,serde",
            ),
            (
                "serde,serde@1.0.0",
                CrateSelection::List(vec![reg("serde"), "serde@1.0.0".parse().unwrap()]),
                "serde,serde@1.0.0",
            ),
        ];
        for (input, expected, display) in cases {
            let parsed: CrateSelection = input.parse().unwrap();
            assert_eq!(parsed, expected, "{input}");
            assert_eq!(parsed.to_string(), display);
            assert_eq!(display.parse::<CrateSelection>().unwrap(), expected);
            // Accepted as a JSON string too, and round-trips through the tagged object.
            let from_json: CrateSelection = serde_json::from_value(json!(input)).unwrap();
            assert_eq!(from_json, expected);
            let object = serde_json::to_value(&expected).unwrap();
            assert_eq!(
                serde_json::from_value::<CrateSelection>(object).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn compact_invalid() {
        let cases: &[(&str, &str)] = &[
            ("", r#"invalid crate selection "": selection is empty"#),
            ("  ", r#"invalid crate selection "  ": selection is empty"#),
            (
                "top:0",
                r#"invalid crate selection "top:0": count must be at least 1"#,
            ),
            (
                "top:",
                r#"invalid crate selection "top:": count "" is not a positive integer"#,
            ),
            (
                "top:-1",
                r#"invalid crate selection "top:-1": count "-1" is not a positive integer"#,
            ),
            (
                "top:+5",
                r#"invalid crate selection "top:+5": count "+5" is not a positive integer"#,
            ),
            (
                "top:4294967296",
                r#"invalid crate selection "top:4294967296": count "4294967296" is not a positive integer"#,
            ),
            (
                "random:0@seed=1",
                r#"invalid crate selection "random:0@seed=1": count must be at least 1"#,
            ),
            (
                "random:5@7",
                r#"invalid crate selection "random:5@7": expected random:N or random:N@seed=S, found "7" after '@'"#,
            ),
            (
                "random:5@seed=x",
                r#"invalid crate selection "random:5@seed=x": seed "x" is not an unsigned 64-bit integer"#,
            ),
            (
                "list:My List",
                r#"invalid crate selection "list:My List": invalid list name "My List": expected 1 to 64 characters of lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"#,
            ),
            (
                "list:",
                r#"invalid crate selection "list:": invalid list name "": expected 1 to 64 characters of lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"#,
            ),
            (
                "rdeps:",
                r#"invalid crate selection "rdeps:": crate name is empty"#,
            ),
            (
                "rdeps:serde,rand",
                r#"invalid crate selection "rdeps:serde,rand": invalid crate name "serde,rand": character ',' is not allowed (only ASCII letters, digits, '-' and '_')"#,
            ),
            (
                "serde,,rand",
                r#"invalid crate selection "serde,,rand": entry 1 of the list is empty"#,
            ),
            (
                "serde,",
                r#"invalid crate selection "serde,": entry 1 of the list is empty"#,
            ),
            (
                "serde,1rand",
                r#"invalid crate selection "serde,1rand": entry 1 of the list: invalid crate spec "1rand": invalid crate name "1rand": must start with an ASCII letter"#,
            ),
            (
                "serde,rand,serde",
                r#"invalid crate selection "serde,rand,serde": crate "serde" is listed more than once"#,
            ),
            (
                "bottom:5",
                r#"invalid crate selection "bottom:5": entry 0 of the list: invalid crate spec "bottom:5": unknown prefix "bottom" (expected NAME, NAME@VERSION, git:URL[#REV] or path:/ABS/DIR)"#,
            ),
            (
                "crates:",
                r#"invalid crate selection "crates:": entry 0 of the list is empty"#,
            ),
        ];
        for (input, msg) in cases {
            assert_eq!(
                input.parse::<CrateSelection>().unwrap_err().to_string(),
                *msg,
                "{input}"
            );
        }
    }

    #[test]
    fn list_bounds() {
        let max: Vec<String> = (0..MAX_LIST_LEN).map(|i| format!("c{i}")).collect();
        let parsed: CrateSelection = max.join(",").parse().unwrap();
        assert!(matches!(&parsed, CrateSelection::List(l) if l.len() == MAX_LIST_LEN));
        let over = format!("{},extra", max.join(","));
        assert_eq!(
            over.parse::<CrateSelection>().unwrap_err().kind,
            Kind::TooMany {
                len: MAX_LIST_LEN + 1
            }
        );
        assert_eq!(
            CrateSelection::List(vec![])
                .validate()
                .unwrap_err()
                .to_string(),
            "invalid crate selection: crate list is empty"
        );
        assert_eq!(
            CrateSelection::Top { n: 0 }
                .validate()
                .unwrap_err()
                .to_string(),
            "invalid crate selection: count must be at least 1"
        );
    }

    #[test]
    fn tagged_objects() {
        let cases: Vec<(serde_json::Value, CrateSelection, serde_json::Value)> = vec![
            (
                json!({"kind": "top", "n": 100}),
                CrateSelection::Top { n: 100 },
                json!({"kind": "top", "n": 100}),
            ),
            (
                json!({"kind": "random", "n": 5, "seed": 1}),
                CrateSelection::Random { n: 5, seed: 1 },
                json!({"kind": "random", "n": 5, "seed": 1}),
            ),
            (
                json!({"kind": "random", "n": 5}),
                CrateSelection::Random { n: 5, seed: 0 },
                json!({"kind": "random", "n": 5, "seed": 0}),
            ),
            (
                json!({"kind": "list", "crates": ["serde", "rand@0.8.5"]}),
                CrateSelection::List(vec![reg("serde"), "rand@0.8.5".parse().unwrap()]),
                json!({"kind": "list", "crates": ["serde", "rand@0.8.5"]}),
            ),
            (
                json!({"crates": ["all"], "kind": "list"}),
                CrateSelection::List(vec![reg("all")]),
                json!({"kind": "list", "crates": ["all"]}),
            ),
            (
                json!({"kind": "crate-list", "name": "x"}),
                CrateSelection::CrateList { name: "x".into() },
                json!({"kind": "crate-list", "name": "x"}),
            ),
            (
                json!({"kind": "all"}),
                CrateSelection::All,
                json!({"kind": "all"}),
            ),
            (
                json!({"kind": "rdeps", "crate": "serde"}),
                CrateSelection::ReverseDeps {
                    krate: "serde".into(),
                },
                json!({"kind": "rdeps", "crate": "serde"}),
            ),
        ];
        for (input, expected, serialized) in cases {
            let parsed: CrateSelection = serde_json::from_value(input.clone()).unwrap();
            assert_eq!(parsed, expected, "{input}");
            assert_eq!(serde_json::to_value(&parsed).unwrap(), serialized);
        }
    }

    #[test]
    fn tagged_object_errors_name_the_field() {
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (
                json!({"kind": "top", "n": 0}),
                "n",
                "invalid crate selection: count must be at least 1",
            ),
            (
                json!({"kind": "top", "n": -3}),
                "n",
                "invalid value: integer `-3`, expected u32",
            ),
            (
                json!({"kind": "top"}),
                ".",
                "invalid crate selection: kind \"top\" requires field `n`",
            ),
            (
                json!({"kind": "top", "n": 1, "seed": 2}),
                ".",
                "invalid crate selection: field `seed` is not allowed for kind \"top\"",
            ),
            (
                json!({"kind": "all", "n": 1}),
                ".",
                "invalid crate selection: field `n` is not allowed for kind \"all\"",
            ),
            (
                json!({"kind": "everything"}),
                "kind",
                "unknown variant `everything`, expected one of `list`, `crate-list`, `top`, `random`, `all`, `rdeps`",
            ),
            (
                json!({"kind": "top", "n": 1, "extra": true}),
                "extra",
                "unknown field `extra`, expected one of `kind`, `n`, `seed`, `crates`, `name`, `crate`",
            ),
            (
                json!({"kind": "list", "crates": ["serde", "9x"]}),
                "crates[1]",
                r#"invalid crate spec "9x": invalid crate name "9x": must start with an ASCII letter"#,
            ),
            (
                json!({"kind": "rdeps", "crate": "9x"}),
                "crate",
                r#"invalid crate selection: invalid crate name "9x": must start with an ASCII letter"#,
            ),
            (
                json!({"kind": "rdeps"}),
                ".",
                "invalid crate selection: kind \"rdeps\" requires field `crate`",
            ),
            (
                json!({"kind": "rdeps", "crate": "a", "name": "b"}),
                ".",
                "invalid crate selection: field `name` is not allowed for kind \"rdeps\"",
            ),
            (
                json!({"kind": "list", "crates": []}),
                "crates",
                "invalid crate selection: crate list is empty",
            ),
            (
                json!({"kind": "list", "crates": ["a", "a"]}),
                "crates",
                r#"invalid crate selection: crate "a" is listed more than once"#,
            ),
            (
                json!({"kind": "crate-list", "name": "A"}),
                "name",
                r#"invalid crate selection: invalid list name "A""#,
            ),
            (json!({"n": 1}), ".", "missing field `kind`"),
            (
                json!("top:0"),
                ".",
                r#"invalid crate selection "top:0": count must be at least 1"#,
            ),
        ];
        for (value, path, msg) in cases {
            let text = value.to_string();
            let de = &mut serde_json::Deserializer::from_str(&text);
            let err = serde_path_to_error::deserialize::<_, CrateSelection>(de).unwrap_err();
            assert_eq!(err.path().to_string(), path, "{text}");
            let inner = err.inner().to_string();
            assert!(
                inner.starts_with(msg),
                "{text}: got {inner:?}, expected {msg:?}"
            );
        }
    }
}
