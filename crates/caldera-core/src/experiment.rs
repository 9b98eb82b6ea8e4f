//! Experiment configuration: what to build, with which toolchains, how.
//!
//! [`ExperimentSpec::from_json`] is the edge: it parses a request body with field paths on every
//! error (`start`, `crates.crates[3]`, `overrides.serde.extra_timeout_secs`), then runs the semantic
//! checks of [`ExperimentSpec::validate`]. Both steps report a [`ValidationError`] naming the field.
//! [`ExperimentEdit`] is a partial update of everything but the name, applied with
//! [`ExperimentSpec::apply`], which re-validates the result.
//!
//! JSON (unknown fields rejected everywhere; defaults in brackets):
//!
//! ```json
//! {
//!   "name": "beta-regressions",              // ^[a-z0-9][a-z0-9-]{0,63}$
//!   "start": "stable", "end": "beta",         // toolchains, string or object form
//!   "mode": "build-and-test",                 // [build-and-test]
//!   "crates": "top:100",                      // selection, string or tagged object
//!   "cap_lints": "forbid",                    // [forbid]
//!   "priority": 0,                            // -1000..=1000 [0]
//!   "requirements": ["linux", "mem:16g"],     // [] deduplicated, first occurrence kept
//!   "overrides": {"serde": {"skip_tests": true, "extra_timeout_secs": 600}},  // [{}]
//!   "confirm": 2,                             // 0..=5 [2]: re-runs of each regressed/fixed crate
//!   "calibration": false,                     // [false]: true allows start == end (an A/A run)
//!   "cache": true,                            // [true]: sides may be settled from the result cache
//!   "lockfile": "shipped"                     // [shipped] or fresh: which dependency versions
//! }
//! ```
//!
//! `confirm`: every crate whose comparison is `regressed` or `fixed` is run again, both sides,
//! `confirm` times (from fresh target dirs, on another worker when one is connected); the
//! comparison is confirmed when every run agrees, flaky otherwise (see [`crate::confirm`]).
//! `calibration`: an A/A experiment, the same toolchain on both sides, to measure the farm's own
//! noise; without it, equal toolchains are refused.
//! `cache`: when the experiment starts, a side whose fingerprint (see [`crate::fingerprint`]) has
//! a trustworthy earlier result is settled from it without running; `false` runs every side.
//! `lockfile`: see [`LockfilePolicy`].

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

use crate::crates::validate_crate_name;

mod checks;
use crate::selection::CrateSelection;
use crate::serde_util::{MapOnly, first_control_char, string_enum};
use crate::toolchain::{Toolchain, ToolchainSource};
use checks::{
    check_confirm, check_crates, check_distinct, check_miri, check_name, check_priority,
    check_toolchain,
};

/// Lowest accepted priority.
pub const MIN_PRIORITY: i32 = -1000;
/// Highest accepted priority.
pub const MAX_PRIORITY: i32 = 1000;
/// Largest `extra_timeout_secs` in an override (24 hours).
pub const MAX_EXTRA_TIMEOUT_SECS: u32 = 86_400;
/// Largest `extra_memory_mib` in an override (256 GiB).
pub const MAX_EXTRA_MEMORY_MIB: u32 = 262_144;
/// Longest `broken` reason in an override.
pub const MAX_BROKEN_REASON_LEN: usize = 1000;
/// Default number of confirmation runs of a regressed or fixed crate.
pub const DEFAULT_CONFIRM: u32 = 2;
/// Most confirmation runs of a regressed or fixed crate.
pub const MAX_CONFIRM: u32 = 5;

fn default_confirm() -> u32 {
    DEFAULT_CONFIRM
}

fn default_cache() -> bool {
    true
}

string_enum! {
    /// What to run for each crate.
    pub enum Mode / ParseModeError ("mode") {
        /// `cargo build` then `cargo test`.
        BuildAndTest => "build-and-test",
        /// `cargo build` only.
        BuildOnly => "build-only",
        /// `cargo check` only.
        CheckOnly => "check-only",
        /// `cargo clippy`.
        Clippy => "clippy",
        /// `cargo doc` (rustdoc).
        Rustdoc => "rustdoc",
        /// `cargo miri test`.
        Miri => "miri",
    }
}

impl Default for Mode {
    /// `build-and-test`.
    fn default() -> Self {
        Mode::BuildAndTest
    }
}

string_enum! {
    /// The `--cap-lints` level applied to the crates under test.
    pub enum CapLints / ParseCapLintsError ("lint cap") {
        /// `--cap-lints allow`.
        Allow => "allow",
        /// `--cap-lints warn`.
        Warn => "warn",
        /// `--cap-lints deny`.
        Deny => "deny",
        /// `--cap-lints forbid`.
        Forbid => "forbid",
    }
}

string_enum! {
    /// Which dependency versions a crate builds with (both sides build with one lockfile,
    /// settled once per experiment and crate, either way).
    pub enum LockfilePolicy / ParseLockfilePolicyError ("lockfile policy") {
        /// The crate's own `Cargo.lock` when it ships one (brought up to date the way `cargo
        /// build` would), else one generated: the versions its author tested with.
        Shipped => "shipped",
        /// Always resolved anew (`cargo generate-lockfile`), a shipped `Cargo.lock` ignored: the
        /// newest versions the crate's requirements allow, as a new user of a library gets
        /// them. Crates then share far more dependency builds (one `syn`, not a dozen).
        Fresh => "fresh",
    }
}

impl Default for LockfilePolicy {
    /// `shipped`.
    fn default() -> Self {
        LockfilePolicy::Shipped
    }
}

impl Default for CapLints {
    /// `forbid`.
    fn default() -> Self {
        CapLints::Forbid
    }
}

/// Per-crate adjustments, keyed by crate name in [`ExperimentSpec::overrides`]. Every field is
/// optional in JSON (defaults: `false` / absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct CrateOverride {
    /// Do not run this crate at all (its outcome is `skipped`).
    pub skip: bool,
    /// Build but do not run the tests.
    pub skip_tests: bool,
    /// Leave this crate out of the report's lists of regressions.
    pub quiet: bool,
    /// The crate is known broken, for this reason; it is not run (its outcome is `broken`).
    /// Cannot be combined with `skip`.
    pub broken: Option<String>,
    /// Seconds added to the build and test timeouts (at most 86400).
    #[cfg_attr(feature = "openapi", schema(maximum = 86400))]
    pub extra_timeout_secs: Option<u32>,
    /// MiB added to the sandbox memory limit (at most 262144).
    #[cfg_attr(feature = "openapi", schema(maximum = 262144))]
    pub extra_memory_mib: Option<u32>,
}

/// [`CrateOverride`] as read from JSON (an object only).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename = "CrateOverride")]
struct CrateOverrideIn {
    skip: bool,
    skip_tests: bool,
    quiet: bool,
    broken: Option<String>,
    extra_timeout_secs: Option<u32>,
    extra_memory_mib: Option<u32>,
}

impl<'de> Deserialize<'de> for CrateOverride {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let MapOnly(o) = MapOnly::<CrateOverrideIn>::deserialize(deserializer)?;
        Ok(CrateOverride {
            skip: o.skip,
            skip_tests: o.skip_tests,
            quiet: o.quiet,
            broken: o.broken,
            extra_timeout_secs: o.extra_timeout_secs,
            extra_memory_mib: o.extra_memory_mib,
        })
    }
}

/// A complete experiment definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Unique slug: 1 to 64 characters of `[a-z0-9-]`, starting with a letter or digit.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$"))]
    pub name: String,
    /// The baseline toolchain.
    pub start: Toolchain,
    /// The candidate toolchain; must differ from `start` unless `calibration` is set.
    pub end: Toolchain,
    /// What to run (default `build-and-test`).
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub mode: Mode,
    /// Which crates to run.
    pub crates: CrateSelection,
    /// `--cap-lints` level (default `forbid`).
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub cap_lints: CapLints,
    /// Scheduling priority, -1000 to 1000, higher first (default 0).
    #[cfg_attr(
        feature = "openapi",
        schema(required = false, minimum = -1000, maximum = 1000)
    )]
    pub priority: i32,
    /// Capabilities a worker must have (`^[a-z0-9][a-z0-9._:=-]{0,63}$`), without duplicates.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub requirements: Vec<String>,
    /// Per-crate adjustments keyed by crate name.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub overrides: BTreeMap<String, CrateOverride>,
    /// How many times each crate whose comparison is regressed or fixed is run again, both
    /// sides, to confirm it (0 to 5, default 2; 0 turns confirmation off).
    #[cfg_attr(
        feature = "openapi",
        schema(required = false, minimum = 0, maximum = 5, default = 2)
    )]
    pub confirm: u32,
    /// A calibration (A/A) experiment: the same toolchain may be on both sides (default false;
    /// otherwise start and end must differ).
    #[cfg_attr(feature = "openapi", schema(required = false, default = false))]
    pub calibration: bool,
    /// Whether sides may be settled from the result cache at the start (default true; `false`
    /// runs every side).
    #[cfg_attr(feature = "openapi", schema(required = false, default = true))]
    pub cache: bool,
    /// Which dependency versions crates build with: `shipped` (default) or `fresh`.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub lockfile: LockfilePolicy,
}

/// A partial update of an [`ExperimentSpec`]: every present field replaces the spec's. The name
/// cannot be changed; a `name` key is rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExperimentEdit {
    /// New baseline toolchain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Toolchain>,
    /// New candidate toolchain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<Toolchain>,
    /// New mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// New crate selection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crates: Option<CrateSelection>,
    /// New lint cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_lints: Option<CapLints>,
    /// New priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = -1000, maximum = 1000))]
    pub priority: Option<i32>,
    /// New requirements (replaces the whole list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Vec<String>>,
    /// New overrides (replaces the whole map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<BTreeMap<String, CrateOverride>>,
    /// New number of confirmation runs (0 to 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 5))]
    pub confirm: Option<u32>,
    /// Whether the experiment is a calibration (A/A) run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<bool>,
    /// Whether sides may be settled from the result cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// New lockfile policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockfile: Option<LockfilePolicy>,
}

/// Invalid input, naming the field: Display is `field: message` (or just `message` when the whole
/// document is at fault, e.g. malformed JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Path to the offending field, like `start`, `requirements[2]` or
    /// `overrides.serde.extra_timeout_secs`; empty for the document as a whole.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl ValidationError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn join_path(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

/// Parses JSON with path tracking and turns any failure into a [`ValidationError`].
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ValidationError::new("", format!("invalid JSON: {inner}"));
        }
        let base = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        // Data errors: drop serde_json's " at line L column C" suffix, it means nothing to a
        // reader who sent the document as one line.
        let mut message = inner.to_string();
        let suffix = format!(" at line {} column {}", inner.line(), inner.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
        // serde reports a missing field at the enclosing object; name the field itself.
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            return ValidationError::new(join_path(&base, name), "missing required field");
        }
        ValidationError::new(base, message)
    })?;
    de.end()
        .map_err(|e| ValidationError::new("", format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Validates a worker capability string: 1 to 64 characters of `[a-z0-9._:=-]`, starting with a
/// lowercase letter or digit.
pub fn is_valid_requirement(req: &str) -> bool {
    req.len() <= 64
        && req
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && req.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b':' | b'=' | b'-')
        })
}

fn check_requirements(reqs: &[String]) -> Result<(), ValidationError> {
    let mut seen = HashSet::new();
    for (i, req) in reqs.iter().enumerate() {
        let field = format!("requirements[{i}]");
        if !is_valid_requirement(req) {
            return Err(ValidationError::new(
                field,
                format!(
                    "invalid requirement {req:?}: must be 1 to 64 characters of lowercase ASCII \
                     letters, digits and '.', '_', ':', '=', '-', starting with a letter or digit"
                ),
            ));
        }
        if !seen.insert(req.as_str()) {
            return Err(ValidationError::new(
                field,
                format!("duplicate requirement {req:?}"),
            ));
        }
    }
    Ok(())
}

/// Removes repeated requirements, keeping the first occurrence of each.
fn dedup_requirements(reqs: &mut Vec<String>) {
    let mut seen = HashSet::new();
    reqs.retain(|r| seen.insert(r.clone()));
}

impl CrateOverride {
    /// Checks the bounds and the `skip`/`broken` conflict. `field` is the path of this override;
    /// errors name the sub-field.
    fn check(&self, field: &str) -> Result<(), ValidationError> {
        if let Some(reason) = &self.broken {
            let at = || join_path(field, "broken");
            if reason.trim().is_empty() {
                return Err(ValidationError::new(
                    at(),
                    "the broken reason must not be empty",
                ));
            }
            if reason.len() > MAX_BROKEN_REASON_LEN {
                return Err(ValidationError::new(
                    at(),
                    format!(
                        "the broken reason must be at most {MAX_BROKEN_REASON_LEN} bytes (got {})",
                        reason.len()
                    ),
                ));
            }
            if first_control_char(reason).is_some() {
                return Err(ValidationError::new(
                    at(),
                    "the broken reason must not contain control characters",
                ));
            }
            if self.skip {
                return Err(ValidationError::new(
                    at(),
                    "a crate cannot be both skipped and marked broken",
                ));
            }
        }
        if let Some(secs) = self.extra_timeout_secs
            && secs > MAX_EXTRA_TIMEOUT_SECS
        {
            return Err(ValidationError::new(
                join_path(field, "extra_timeout_secs"),
                format!("must be at most {MAX_EXTRA_TIMEOUT_SECS} seconds (24 hours), got {secs}"),
            ));
        }
        if let Some(mib) = self.extra_memory_mib
            && mib > MAX_EXTRA_MEMORY_MIB
        {
            return Err(ValidationError::new(
                join_path(field, "extra_memory_mib"),
                format!("must be at most {MAX_EXTRA_MEMORY_MIB} MiB (256 GiB), got {mib}"),
            ));
        }
        Ok(())
    }
}

fn check_overrides(overrides: &BTreeMap<String, CrateOverride>) -> Result<(), ValidationError> {
    for (name, o) in overrides {
        let field = format!("overrides.{name}");
        validate_crate_name(name).map_err(|e| ValidationError::new(&field, e.to_string()))?;
        o.check(&field)?;
    }
    Ok(())
}

/// The spec as read from JSON, before normalization and semantic checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "ExperimentSpec")]
struct SpecIn {
    name: String,
    start: Toolchain,
    end: Toolchain,
    #[serde(default)]
    mode: Mode,
    crates: CrateSelection,
    #[serde(default)]
    cap_lints: CapLints,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    requirements: Vec<String>,
    #[serde(default)]
    overrides: BTreeMap<String, CrateOverride>,
    #[serde(default = "default_confirm")]
    confirm: u32,
    #[serde(default)]
    calibration: bool,
    #[serde(default = "default_cache")]
    cache: bool,
    #[serde(default)]
    lockfile: LockfilePolicy,
}

impl SpecIn {
    fn into_spec(self) -> Result<ExperimentSpec, ValidationError> {
        let mut spec = ExperimentSpec {
            name: self.name,
            start: self.start,
            end: self.end,
            mode: self.mode,
            crates: self.crates,
            cap_lints: self.cap_lints,
            priority: self.priority,
            requirements: self.requirements,
            overrides: self.overrides,
            confirm: self.confirm,
            calibration: self.calibration,
            cache: self.cache,
            lockfile: self.lockfile,
        };
        dedup_requirements(&mut spec.requirements);
        spec.validate()?;
        Ok(spec)
    }
}

impl ExperimentSpec {
    /// Parses and validates a JSON document (a request body). Every error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<ExperimentSpec, ValidationError> {
        parse_json::<MapOnly<SpecIn>>(bytes)?.0.into_spec()
    }

    /// Checks every semantic rule, in field order, and reports the first violation.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name(&self.name)?;
        check_toolchain("start", &self.start)?;
        check_toolchain("end", &self.end)?;
        check_distinct("end", &self.start, &self.end, self.calibration)?;
        check_miri(self.mode, &self.start, &self.end)?;
        check_crates(&self.crates)?;
        check_priority(self.priority)?;
        check_requirements(&self.requirements)?;
        check_overrides(&self.overrides)?;
        check_confirm(self.confirm)
    }

    /// The worker capabilities this experiment implies: `toolchain:<name>` for each side whose
    /// toolchain is a rustup name (a `path:` toolchain implies nothing). Workers advertise
    /// `toolchain:<name>` for every toolchain they can resolve by that name.
    pub fn implied_requirements(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for tc in [&self.start, &self.end] {
            if let ToolchainSource::Rustup(name) = &tc.source {
                let req = format!("toolchain:{name}");
                if is_valid_requirement(&req) && !out.contains(&req) {
                    out.push(req);
                }
            }
        }
        out
    }

    /// The override for a crate name, if any.
    pub fn override_for(&self, crate_name: &str) -> Option<&CrateOverride> {
        self.overrides.get(crate_name)
    }

    /// Whether the report leaves `krate` out of its lists of regressions: a registry crate whose
    /// override says `quiet` (overrides are keyed by registry crate name).
    pub fn is_quiet(&self, krate: &crate::crates::CrateId) -> bool {
        match krate {
            crate::crates::CrateId::Registry { name, .. } => {
                self.override_for(name).is_some_and(|o| o.quiet)
            }
            _ => false,
        }
    }

    /// Applies an edit and re-validates the result; `self` is unchanged either way. When the
    /// edit makes the two toolchains equal, the error names the toolchain field the edit set.
    pub fn apply(&self, edit: &ExperimentEdit) -> Result<ExperimentSpec, ValidationError> {
        let mut spec = self.clone();
        if let Some(start) = &edit.start {
            spec.start = start.clone();
        }
        if let Some(end) = &edit.end {
            spec.end = end.clone();
        }
        if let Some(mode) = edit.mode {
            spec.mode = mode;
        }
        if let Some(crates) = &edit.crates {
            spec.crates = crates.clone();
        }
        if let Some(cap_lints) = edit.cap_lints {
            spec.cap_lints = cap_lints;
        }
        if let Some(priority) = edit.priority {
            spec.priority = priority;
        }
        if let Some(requirements) = &edit.requirements {
            spec.requirements = requirements.clone();
            dedup_requirements(&mut spec.requirements);
        }
        if let Some(overrides) = &edit.overrides {
            spec.overrides = overrides.clone();
        }
        if let Some(confirm) = edit.confirm {
            spec.confirm = confirm;
        }
        if let Some(calibration) = edit.calibration {
            spec.calibration = calibration;
        }
        if let Some(cache) = edit.cache {
            spec.cache = cache;
        }
        if let Some(lockfile) = edit.lockfile {
            spec.lockfile = lockfile;
        }
        let distinct_field = if edit.end.is_none() && edit.start.is_some() {
            "start"
        } else {
            "end"
        };
        check_distinct(distinct_field, &spec.start, &spec.end, spec.calibration)?;
        spec.validate()?;
        Ok(spec)
    }
}

impl<'de> Deserialize<'de> for ExperimentSpec {
    /// Deserializes and validates; the error text is the [`ValidationError`]'s `field: message`.
    /// Prefer [`ExperimentSpec::from_json`] at an edge, which keeps the field separate.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MapOnly::<SpecIn>::deserialize(deserializer)?
            .0
            .into_spec()
            .map_err(de::Error::custom)
    }
}

/// Rejects any value for `name` in an edit, at the path `name`.
fn de_reject_name<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    IgnoredAny::deserialize(d)?;
    Err(de::Error::custom("the experiment name cannot be changed"))
}

/// The edit as read from JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "ExperimentEdit")]
struct EditIn {
    #[serde(default, deserialize_with = "de_reject_name")]
    name: (),
    #[serde(default)]
    start: Option<Toolchain>,
    #[serde(default)]
    end: Option<Toolchain>,
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    crates: Option<CrateSelection>,
    #[serde(default)]
    cap_lints: Option<CapLints>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    requirements: Option<Vec<String>>,
    #[serde(default)]
    overrides: Option<BTreeMap<String, CrateOverride>>,
    #[serde(default)]
    confirm: Option<u32>,
    #[serde(default)]
    calibration: Option<bool>,
    #[serde(default)]
    cache: Option<bool>,
    #[serde(default)]
    lockfile: Option<LockfilePolicy>,
}

impl EditIn {
    fn into_edit(self) -> Result<ExperimentEdit, ValidationError> {
        let EditIn {
            name: (),
            start,
            end,
            mode,
            crates,
            cap_lints,
            priority,
            requirements,
            overrides,
            confirm,
            calibration,
            cache,
            lockfile,
        } = self;
        let mut edit = ExperimentEdit {
            start,
            end,
            mode,
            crates,
            cap_lints,
            priority,
            requirements,
            overrides,
            confirm,
            calibration,
            cache,
            lockfile,
        };
        if let Some(reqs) = &mut edit.requirements {
            dedup_requirements(reqs);
        }
        edit.validate()?;
        Ok(edit)
    }
}

impl ExperimentEdit {
    /// Parses a JSON edit and checks each present field on its own (rules that involve two fields,
    /// like distinct toolchains, are checked by [`ExperimentSpec::apply`]).
    pub fn from_json(bytes: &[u8]) -> Result<ExperimentEdit, ValidationError> {
        parse_json::<MapOnly<EditIn>>(bytes)?.0.into_edit()
    }

    /// Checks each present field on its own.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(start) = &self.start {
            check_toolchain("start", start)?;
        }
        if let Some(end) = &self.end {
            check_toolchain("end", end)?;
        }
        if let (Some(start), Some(end)) = (&self.start, &self.end) {
            check_distinct("end", start, end, self.calibration.unwrap_or(false))?;
        }
        if let Some(crates) = &self.crates {
            check_crates(crates)?;
        }
        if let Some(priority) = self.priority {
            check_priority(priority)?;
        }
        if let Some(reqs) = &self.requirements {
            check_requirements(reqs)?;
        }
        if let Some(overrides) = &self.overrides {
            check_overrides(overrides)?;
        }
        if let Some(confirm) = self.confirm {
            check_confirm(confirm)?;
        }
        Ok(())
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ExperimentEdit::default()
    }
}

impl<'de> Deserialize<'de> for ExperimentEdit {
    /// Deserializes and validates; see [`ExperimentEdit::from_json`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MapOnly::<EditIn>::deserialize(deserializer)?
            .0
            .into_edit()
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolchain::ToolchainSource;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "name": "beta-run",
            "start": "stable",
            "end": "beta",
            "crates": "top:10"
        })
    }

    fn with(patch: Value) -> Vec<u8> {
        let mut doc = base();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                doc.as_object_mut().unwrap().remove(k);
            } else {
                doc[k] = v.clone();
            }
        }
        serde_json::to_vec(&doc).unwrap()
    }

    fn tc(s: &str) -> Toolchain {
        s.parse().unwrap()
    }

    #[test]
    fn miri_takes_nightly_and_path_toolchains() {
        for (start, end) in [
            ("nightly", "nightly-2026-05-19"),
            (
                "nightly-2026-05-19-x86_64-unknown-linux-gnu",
                "nightly+rustflags=-Zrandomize-layout",
            ),
            ("path:/opt/rust/custom", "nightly"),
        ] {
            let spec = ExperimentSpec::from_json(&with(
                json!({"mode": "miri", "start": start, "end": end}),
            ));
            assert!(spec.is_ok(), "{start} / {end}: {spec:?}");
        }
        // an edit that makes a miri experiment impossible is refused, naming the toolchain
        let spec = ExperimentSpec::from_json(&with(
            json!({"mode": "miri", "start": "nightly", "end": "nightly-2026-05-19"}),
        ))
        .unwrap();
        let edit = ExperimentEdit::from_json(br#"{"end": "stable"}"#).unwrap();
        let e = spec.apply(&edit).unwrap_err();
        assert_eq!(e.field, "end");
        assert!(e.message.contains(r#""stable" is not one"#), "{e:?}");
    }

    #[test]
    fn implied_requirements_name_the_rustup_toolchains() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "stable",
                "nightly",
                &["toolchain:stable", "toolchain:nightly"],
            ),
            (
                "stable",
                "stable+rustflags=-Dwarnings",
                &["toolchain:stable"],
            ),
            (
                "1.95.0",
                "nightly-2026-05-19-x86_64-unknown-linux-gnu",
                &[
                    "toolchain:1.95.0",
                    "toolchain:nightly-2026-05-19-x86_64-unknown-linux-gnu",
                ],
            ),
            ("path:/opt/rust/custom", "beta", &["toolchain:beta"]),
        ];
        for (start, end, want) in cases {
            let spec =
                ExperimentSpec::from_json(&with(json!({"start": start, "end": end}))).unwrap();
            assert_eq!(spec.implied_requirements(), *want, "{start} / {end}");
        }
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        assert_eq!(
            spec,
            ExperimentSpec {
                name: "beta-run".into(),
                start: tc("stable"),
                end: tc("beta"),
                mode: Mode::BuildAndTest,
                crates: CrateSelection::Top { n: 10 },
                cap_lints: CapLints::Forbid,
                priority: 0,
                requirements: vec![],
                overrides: BTreeMap::new(),
                confirm: 2,
                calibration: false,
                cache: true,
                lockfile: LockfilePolicy::Shipped,
            }
        );
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({
                "name": "beta-run",
                "start": {"toolchain": "stable"},
                "end": {"toolchain": "beta"},
                "mode": "build-and-test",
                "crates": {"kind": "top", "n": 10},
                "cap_lints": "forbid",
                "priority": 0,
                "requirements": [],
                "overrides": {},
                "confirm": 2,
                "calibration": false,
                "cache": true,
                "lockfile": "shipped"
            })
        );
    }

    #[test]
    fn full_spec_round_trips() {
        let doc = json!({
            "name": "0x-full",
            "start": {"toolchain": "nightly", "rustflags": "-C opt-level=3 -Zfoo",
                      "patches": [{"crate": "foo", "git": "https://h/foo.git", "rev": "abc"}]},
            "end": "nightly+rustflags=-C opt-level=3 -Zfoo -Zbar",
            "mode": "clippy",
            "crates": {"kind": "list", "crates": ["serde", "rand@0.8.5"]},
            "cap_lints": "warn",
            "priority": -1000,
            "requirements": ["linux", "mem:16g", "linux", "arch=x86_64"],
            "overrides": {"serde": {"skip_tests": true, "extra_timeout_secs": 86400},
                          "rand": {"broken": "needs network", "extra_memory_mib": 262144}}
        });
        let spec = ExperimentSpec::from_json(doc.to_string().as_bytes()).unwrap();
        assert_eq!(spec.mode, Mode::Clippy);
        assert_eq!(spec.cap_lints, CapLints::Warn);
        assert_eq!(spec.requirements, ["linux", "mem:16g", "arch=x86_64"]);
        assert!(spec.override_for("serde").unwrap().skip_tests);
        assert_eq!(
            spec.override_for("rand").unwrap().broken.as_deref(),
            Some("needs network")
        );
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(ExperimentSpec::from_json(&json).unwrap(), spec);
        // The plain Deserialize impl validates too.
        assert_eq!(
            serde_json::from_slice::<ExperimentSpec>(&json).unwrap(),
            spec
        );
    }

    #[test]
    fn mode_and_cap_lints_strings() {
        let modes = [
            ("build-and-test", Mode::BuildAndTest),
            ("build-only", Mode::BuildOnly),
            ("check-only", Mode::CheckOnly),
            ("clippy", Mode::Clippy),
            ("rustdoc", Mode::Rustdoc),
            ("miri", Mode::Miri),
        ];
        assert_eq!(Mode::ALL.len(), modes.len());
        for (s, m) in modes {
            assert_eq!(s.parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string(), s);
            assert_eq!(serde_json::to_value(m).unwrap(), json!(s));
            assert_eq!(serde_json::from_value::<Mode>(json!(s)).unwrap(), m);
        }
        assert_eq!(
            "build".parse::<Mode>().unwrap_err().to_string(),
            r#"unknown mode "build" (expected build-and-test, build-only, check-only, clippy, rustdoc or miri)"#
        );
        let caps = [
            ("allow", CapLints::Allow),
            ("warn", CapLints::Warn),
            ("deny", CapLints::Deny),
            ("forbid", CapLints::Forbid),
        ];
        assert_eq!(CapLints::ALL.len(), caps.len());
        for (s, c) in caps {
            assert_eq!(s.parse::<CapLints>().unwrap(), c);
            assert_eq!(c.as_str(), s);
        }
        assert_eq!(
            "Forbid".parse::<CapLints>().unwrap_err().to_string(),
            r#"unknown lint cap "Forbid" (expected allow, warn, deny or forbid)"#
        );
    }

    /// Every invalid input, with the exact field and message.
    #[test]
    fn invalid_specs() {
        let long_name = "a".repeat(65);
        let long_message = format!(
            "invalid experiment name {long_name:?}: must be 1 to 64 characters of lowercase ASCII letters, digits and '-', starting with a letter or digit"
        );
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!({"name": null}), "name", "missing required field"),
            (json!({"start": null}), "start", "missing required field"),
            (json!({"crates": null}), "crates", "missing required field"),
            (
                json!({"nme": "x"}),
                "nme",
                "unknown field `nme`, expected one of `name`, `start`, `end`, `mode`, `crates`, `cap_lints`, `priority`, `requirements`, `overrides`, `confirm`, `calibration`, `cache`, `lockfile`",
            ),
            (
                json!({"name": "Beta"}),
                "name",
                r#"invalid experiment name "Beta": must be 1 to 64 characters of lowercase ASCII letters, digits and '-', starting with a letter or digit"#,
            ),
            (
                json!({"name": "-x"}),
                "name",
                r#"invalid experiment name "-x": must be 1 to 64 characters of lowercase ASCII letters, digits and '-', starting with a letter or digit"#,
            ),
            (json!({"name": long_name}), "name", &long_message),
            (
                json!({"name": 5}),
                "name",
                "invalid type: integer `5`, expected a string",
            ),
            (
                json!({"start": "nightlyy"}),
                "start",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                json!({"start": {"toolchain": "nightlyy"}}),
                "start.toolchain",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                json!({"end": {"toolchain": "beta", "rustflags": 3}}),
                "end.rustflags",
                "invalid type: integer `3`, expected a string",
            ),
            (
                json!({"end": {"toolchain": "beta", "flags": "x"}}),
                "end.flags",
                "unknown field `flags`, expected one of `toolchain`, `rustflags`, `rustdocflags`, `cargoflags`, `target`, `patches`",
            ),
            (
                json!({"end": {"rustflags": "x"}}),
                "end.toolchain",
                "missing required field",
            ),
            (
                json!({"end": "stable"}),
                "end",
                r#"the start and end toolchains must differ (both are "stable")"#,
            ),
            (
                json!({"mode": "miri"}),
                "start",
                r#"miri runs only on nightly toolchains, and "stable" is not one (use nightly or nightly-YYYY-MM-DD, or another mode)"#,
            ),
            (
                json!({"mode": "miri", "start": "nightly-2026-05-19"}),
                "end",
                r#"miri runs only on nightly toolchains, and "beta" is not one (use nightly or nightly-YYYY-MM-DD, or another mode)"#,
            ),
            (
                json!({"end": {"toolchain": "stable"}}),
                "end",
                r#"the start and end toolchains must differ (both are "stable")"#,
            ),
            (
                json!({"mode": "build"}),
                "mode",
                r#"unknown mode "build" (expected build-and-test, build-only, check-only, clippy, rustdoc or miri)"#,
            ),
            (
                json!({"cap_lints": "none"}),
                "cap_lints",
                r#"unknown lint cap "none" (expected allow, warn, deny or forbid)"#,
            ),
            (
                json!({"crates": "top:0"}),
                "crates",
                r#"invalid crate selection "top:0": count must be at least 1"#,
            ),
            (
                json!({"crates": {"kind": "list", "crates": ["serde", "1x"]}}),
                "crates.crates[1]",
                r#"invalid crate spec "1x": invalid crate name "1x": must start with an ASCII letter"#,
            ),
            (
                json!({"crates": {"kind": "top"}}),
                "crates",
                "invalid crate selection: kind \"top\" requires field `n`",
            ),
            (
                json!({"priority": 1001}),
                "priority",
                "must be between -1000 and 1000 (got 1001)",
            ),
            (
                json!({"priority": -1001}),
                "priority",
                "must be between -1000 and 1000 (got -1001)",
            ),
            (
                json!({"priority": 1.5}),
                "priority",
                "invalid type: floating point `1.5`, expected i32",
            ),
            (
                json!({"requirements": ["linux", "Linux"]}),
                "requirements[1]",
                r#"invalid requirement "Linux": must be 1 to 64 characters of lowercase ASCII letters, digits and '.', '_', ':', '=', '-', starting with a letter or digit"#,
            ),
            (
                json!({"requirements": [""]}),
                "requirements[0]",
                r#"invalid requirement "": must be 1 to 64 characters of lowercase ASCII letters, digits and '.', '_', ':', '=', '-', starting with a letter or digit"#,
            ),
            (
                json!({"overrides": {"1serde": {}}}),
                "overrides.1serde",
                r#"invalid crate name "1serde": must start with an ASCII letter"#,
            ),
            (
                json!({"overrides": {"serde": {"extra_timeout_secs": 86401}}}),
                "overrides.serde.extra_timeout_secs",
                "must be at most 86400 seconds (24 hours), got 86401",
            ),
            (
                json!({"overrides": {"serde": {"extra_timeout_secs": "1h"}}}),
                "overrides.serde.extra_timeout_secs",
                r#"invalid type: string "1h", expected u32"#,
            ),
            (
                json!({"overrides": {"serde": {"extra_memory_mib": 262145}}}),
                "overrides.serde.extra_memory_mib",
                "must be at most 262144 MiB (256 GiB), got 262145",
            ),
            (
                json!({"overrides": {"serde": {"skip": true, "broken": "x"}}}),
                "overrides.serde.broken",
                "a crate cannot be both skipped and marked broken",
            ),
            (
                json!({"overrides": {"serde": {"broken": " "}}}),
                "overrides.serde.broken",
                "the broken reason must not be empty",
            ),
            (
                json!({"overrides": {"serde": [true]}}),
                "overrides.serde",
                "invalid type: sequence, expected a JSON object",
            ),
            (
                json!({"overrides": {"serde": {"skip_test": true}}}),
                "overrides.serde.skip_test",
                "unknown field `skip_test`, expected one of `skip`, `skip_tests`, `quiet`, `broken`, `extra_timeout_secs`, `extra_memory_mib`",
            ),
        ];
        for (patch, field, message) in cases {
            let doc = with(patch.clone());
            let err = ExperimentSpec::from_json(&doc).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.message.as_str()),
                (field, message),
                "{patch}"
            );
            assert_eq!(err.to_string(), format!("{field}: {message}"));
        }
    }

    #[test]
    fn malformed_documents() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"",
                "invalid JSON: EOF while parsing a value at line 1 column 0",
            ),
            (
                b"{",
                "invalid JSON: EOF while parsing an object at line 1 column 1",
            ),
            (
                b"{\"name\": }",
                "invalid JSON: expected value at line 1 column 10",
            ),
            (b"[]", "invalid type: sequence, expected a JSON object"),
            (
                br#"["a", "stable", "beta", "build-only", "all", "forbid", 0, [], {}]"#,
                "invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"name":"a","start":"stable","end":"beta","crates":"all"} x"#,
                "invalid JSON: trailing characters at line 1 column 59",
            ),
        ];
        for (input, message) in cases {
            let err = ExperimentSpec::from_json(input).unwrap_err();
            assert_eq!(err.field, "", "{input:?}");
            assert_eq!(err.message, *message);
            assert_eq!(err.to_string(), *message);
        }
    }

    #[test]
    fn validate_constructed_spec() {
        let mut spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        spec.requirements = vec!["a".into(), "a".into()];
        assert_eq!(
            spec.validate().unwrap_err(),
            ValidationError::new("requirements[1]", r#"duplicate requirement "a""#)
        );
        spec.requirements.clear();
        spec.start = Toolchain::new(ToolchainSource::Rustup("x".into()));
        assert_eq!(
            spec.validate().unwrap_err(),
            ValidationError::new(
                "start",
                r#"invalid toolchain "x": unknown rustup toolchain name"#
            )
        );
    }

    #[test]
    fn edits() {
        let spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();

        let edit = ExperimentEdit::from_json(br#"{}"#).unwrap();
        assert!(edit.is_empty());
        assert_eq!(spec.apply(&edit).unwrap(), spec);

        let edit = ExperimentEdit::from_json(
            br#"{"end": "nightly", "priority": 5, "requirements": ["b", "a", "b"],
                 "overrides": {"serde": {"quiet": true}}, "mode": null}"#,
        )
        .unwrap();
        assert_eq!(
            edit.requirements.as_deref(),
            Some(&["b".to_owned(), "a".to_owned()][..])
        );
        let edited = spec.apply(&edit).unwrap();
        assert_eq!(edited.name, spec.name);
        assert_eq!(edited.start, spec.start);
        assert_eq!(edited.end, tc("nightly"));
        assert_eq!(edited.priority, 5);
        assert_eq!(edited.mode, spec.mode);
        assert_eq!(edited.requirements, ["b", "a"]);
        assert!(edited.overrides["serde"].quiet);
        // Serialized edits omit absent fields and read back the same.
        let json = serde_json::to_vec(&edit).unwrap();
        assert_eq!(ExperimentEdit::from_json(&json).unwrap(), edit);
        assert_eq!(
            serde_json::from_slice::<ExperimentEdit>(&json).unwrap(),
            edit
        );
    }

    #[test]
    fn invalid_edits() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"name": "other"}"#,
                "name",
                "the experiment name cannot be changed",
            ),
            (
                r#"{"priority": 1, "name": null}"#,
                "name",
                "the experiment name cannot be changed",
            ),
            (
                r#"{"colour": "red"}"#,
                "colour",
                "unknown field `colour`, expected one of `name`, `start`, `end`, `mode`, `crates`, `cap_lints`, `priority`, `requirements`, `overrides`, `confirm`, `calibration`, `cache`, `lockfile`",
            ),
            (
                r#"{"priority": 2000}"#,
                "priority",
                "must be between -1000 and 1000 (got 2000)",
            ),
            (
                r#"{"start": "nightlyy"}"#,
                "start",
                r#"invalid toolchain "nightlyy": unknown rustup toolchain name"#,
            ),
            (
                r#"{"start": "nightly", "end": "nightly"}"#,
                "end",
                r#"the start and end toolchains must differ (both are "nightly")"#,
            ),
            (
                r#"{"crates": {"kind": "random", "n": 0}}"#,
                "crates.n",
                "invalid crate selection: count must be at least 1",
            ),
            (
                r#"{"overrides": {"x": {"extra_timeout_secs": 100000}}}"#,
                "overrides.x.extra_timeout_secs",
                "must be at most 86400 seconds (24 hours), got 100000",
            ),
        ];
        for (input, field, message) in cases {
            let err = ExperimentEdit::from_json(input.as_bytes()).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.message.as_str()),
                (*field, *message),
                "{input}"
            );
        }
    }

    #[test]
    fn confirm_and_calibration() {
        // defaults, and a stored spec from before the fields existed still loads
        let old = json!({"name": "x", "start": "stable", "end": "beta", "crates": "top:1",
                         "mode": "build-and-test", "cap_lints": "forbid", "priority": 0,
                         "requirements": [], "overrides": {}});
        let spec: ExperimentSpec = serde_json::from_value(old).unwrap();
        assert_eq!((spec.confirm, spec.calibration), (DEFAULT_CONFIRM, false));
        for n in 0..=MAX_CONFIRM {
            let spec = ExperimentSpec::from_json(&with(json!({"confirm": n}))).unwrap();
            assert_eq!(spec.confirm, n);
        }
        let cases: &[(Value, &str, &str)] = &[
            (
                json!({"confirm": 6}),
                "confirm",
                "must be between 0 and 5 (got 6)",
            ),
            (
                json!({"confirm": 1000}),
                "confirm",
                "must be between 0 and 5 (got 1000)",
            ),
            (
                json!({"confirm": -1}),
                "confirm",
                "invalid value: integer `-1`, expected u32",
            ),
            (
                json!({"confirm": true}),
                "confirm",
                "invalid type: boolean `true`, expected u32",
            ),
            (
                json!({"calibration": "yes"}),
                "calibration",
                r#"invalid type: string "yes", expected a boolean"#,
            ),
            // without calibration, start == end stays an error
            (
                json!({"end": "stable"}),
                "end",
                r#"the start and end toolchains must differ (both are "stable")"#,
            ),
            (
                json!({"end": "stable", "calibration": false}),
                "end",
                r#"the start and end toolchains must differ (both are "stable")"#,
            ),
        ];
        for (patch, field, message) in cases {
            let err = ExperimentSpec::from_json(&with(patch.clone())).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.message.as_str()),
                (*field, *message),
                "{patch}"
            );
        }
        // an A/A experiment
        let spec = ExperimentSpec::from_json(&with(json!({"end": "stable", "calibration": true})))
            .unwrap();
        assert_eq!(spec.start, spec.end);
        assert!(spec.calibration);
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(ExperimentSpec::from_json(&json).unwrap(), spec);
        // edits
        let edit = ExperimentEdit::from_json(br#"{"confirm": 9}"#).unwrap_err();
        assert_eq!(
            (edit.field.as_str(), edit.message.as_str()),
            ("confirm", "must be between 0 and 5 (got 9)")
        );
        let base = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        let edit = ExperimentEdit::from_json(br#"{"confirm": 0}"#).unwrap();
        assert_eq!(base.apply(&edit).unwrap().confirm, 0);
        let edit = ExperimentEdit::from_json(br#"{"end": "stable"}"#).unwrap();
        assert_eq!(base.apply(&edit).unwrap_err().field, "end");
        let edit = ExperimentEdit::from_json(br#"{"end": "stable", "calibration": true}"#).unwrap();
        let aa = base.apply(&edit).unwrap();
        assert!(aa.calibration && aa.start == aa.end);
        // turning calibration off again while the sides are equal is refused
        let edit = ExperimentEdit::from_json(br#"{"calibration": false}"#).unwrap();
        assert_eq!(aa.apply(&edit).unwrap_err().field, "end");
    }

    #[test]
    fn cache_defaults_to_on_and_can_be_turned_off_and_edited() {
        let spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        assert!(spec.cache, "on by default");
        let off = ExperimentSpec::from_json(&with(json!({"cache": false}))).unwrap();
        assert!(!off.cache);
        let json = serde_json::to_vec(&off).unwrap();
        assert_eq!(ExperimentSpec::from_json(&json).unwrap(), off, "round trip");
        for (patch, message) in [
            (
                json!({"cache": "no"}),
                r#"invalid type: string "no", expected a boolean"#,
            ),
            (
                json!({"cache": 0}),
                "invalid type: integer `0`, expected a boolean",
            ),
        ] {
            let err = ExperimentSpec::from_json(&with(patch.clone())).unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.message.as_str()),
                ("cache", message),
                "{patch}"
            );
        }
        let edit = ExperimentEdit::from_json(br#"{"cache": false}"#).unwrap();
        assert!(!spec.apply(&edit).unwrap().cache);
        let edit = ExperimentEdit::from_json(br#"{"cache": true}"#).unwrap();
        assert!(off.apply(&edit).unwrap().cache);
        let err = ExperimentEdit::from_json(br#"{"cache": null}"#);
        assert!(
            err.is_ok_and(|e| e.cache.is_none()),
            "null leaves it as it is"
        );
        let err = ExperimentEdit::from_json(br#"{"cache": []}"#).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("cache", "invalid type: sequence, expected a boolean")
        );
    }

    #[test]
    fn the_lockfile_policy_defaults_to_shipped_and_can_be_fresh_and_edited() {
        let spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        assert_eq!(spec.lockfile, LockfilePolicy::Shipped);
        let fresh = ExperimentSpec::from_json(&with(json!({"lockfile": "fresh"}))).unwrap();
        assert_eq!(fresh.lockfile, LockfilePolicy::Fresh);
        let json = serde_json::to_vec(&fresh).unwrap();
        assert_eq!(
            ExperimentSpec::from_json(&json).unwrap(),
            fresh,
            "round trip"
        );
        let err = ExperimentSpec::from_json(&with(json!({"lockfile": "newest"}))).unwrap_err();
        assert_eq!(err.field, "lockfile");
        assert!(
            err.message.contains("newest") && err.message.contains("fresh"),
            "{err}"
        );
        let edit = ExperimentEdit::from_json(br#"{"lockfile": "fresh"}"#).unwrap();
        assert_eq!(spec.apply(&edit).unwrap().lockfile, LockfilePolicy::Fresh);
        let edit = ExperimentEdit::from_json(br#"{"lockfile": "shipped"}"#).unwrap();
        assert_eq!(
            fresh.apply(&edit).unwrap().lockfile,
            LockfilePolicy::Shipped
        );
        let err = ExperimentEdit::from_json(br#"{"lockfile": true}"#).unwrap_err();
        assert_eq!(err.field, "lockfile");
        // a spec stored before the field existed reads as `shipped`
        let mut old = serde_json::to_value(&spec).unwrap();
        old.as_object_mut().unwrap().remove("lockfile");
        let old: ExperimentSpec = serde_json::from_value(old).unwrap();
        assert_eq!(old.lockfile, LockfilePolicy::Shipped);
    }

    #[test]
    fn apply_revalidates() {
        let spec = ExperimentSpec::from_json(&with(json!({}))).unwrap();
        // Making start equal to the existing end names the field the edit touched.
        let edit = ExperimentEdit::from_json(br#"{"start": "beta"}"#).unwrap();
        assert_eq!(
            spec.apply(&edit).unwrap_err(),
            ValidationError::new(
                "start",
                r#"the start and end toolchains must differ (both are "beta")"#
            )
        );
        let edit = ExperimentEdit::from_json(br#"{"end": {"toolchain": "stable"}}"#).unwrap();
        assert_eq!(spec.apply(&edit).unwrap_err().field, "end");
        // Swapping both is fine.
        let edit = ExperimentEdit::from_json(br#"{"start": "beta", "end": "stable"}"#).unwrap();
        let swapped = spec.apply(&edit).unwrap();
        assert_eq!((swapped.start, swapped.end), (tc("beta"), tc("stable")));
        // An edit built in code is validated too.
        let edit = ExperimentEdit {
            priority: Some(-5000),
            ..ExperimentEdit::default()
        };
        assert_eq!(spec.apply(&edit).unwrap_err().field, "priority");
    }
}
