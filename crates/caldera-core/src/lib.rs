//! # caldera-core
//!
//! The pure domain of caldera: what an experiment is, how toolchains and crates are named, which crates
//! a selection covers, how an experiment moves through its lifecycle, what a crate's outcome can be and
//! how two outcomes compare. No I/O happens here: parsers take text or `impl std::io::Read`, and every
//! value that comes from outside has a validating constructor (`FromStr`, `Deserialize`, `from_json`)
//! whose error names what is wrong.
//!
//! Modules:
//! * [`toolchain`] — [`Toolchain`]: a rustup name or a local path, plus flags, a target and patches.
//! * [`crates`] — [`CrateSpec`] (what a user writes) and [`CrateId`] (a resolved, stable identity).
//! * [`selection`] — [`CrateSelection`]: an explicit list, a stored list, `top:N`, `random:N`, `all`.
//! * [`registry`] — [`RegistryListing`]: the whole registry from a database dump or index files, and
//!   the `all` / `top` / `random` listings computed from it.
//! * [`experiment`] — [`ExperimentSpec`] and [`ExperimentEdit`], parsed from JSON with field paths.
//! * [`lifecycle`] — [`ExperimentStatus`], [`ExperimentAction`] and [`transition`].
//! * [`outcome`] — [`Outcome`], [`BuildFailReason`], [`Comparison`] and [`compare`].
//! * [`confirm`] — whether a regression or fix was confirmed by its re-runs ([`confirm::status`]).
//! * [`estimate`] — what an experiment will cost (CPU and wall time) from history and a fitted model.
//! * [`triage`] — the cause of a regression and the marks people put on it.
//! * [`flaky`] — what differed between two runs that should have agreed, and whether a failure is
//!   explained by known flaky subjects.
//!
//! With the `openapi` feature, every type used in an HTTP body implements `utoipa::ToSchema`.

pub mod confirm;
pub mod crates;
pub mod estimate;
pub mod experiment;
pub mod fingerprint;
pub mod flaky;
pub mod job;
pub mod lifecycle;
pub mod logtext;
pub mod outcome;
pub mod registry;
pub mod selection;
pub mod toolchain;
pub mod triage;

mod serde_util;

#[cfg(all(test, feature = "openapi"))]
mod openapi_tests;

pub use crates::{CrateId, CrateSpec};
pub use experiment::{
    CapLints, CrateOverride, ExperimentEdit, ExperimentSpec, LockfilePolicy, Mode, ValidationError,
};
pub use lifecycle::{ExperimentAction, ExperimentStatus, TransitionError, transition};
pub use outcome::{BuildFailReason, Comparison, Outcome, compare};
pub use registry::RegistryListing;
pub use selection::CrateSelection;
pub use toolchain::{Patch, Toolchain, ToolchainSource};

/// The `semver` crate, re-exported because [`CrateSpec`] and [`CrateId`] carry `semver::Version`s.
pub use semver;
