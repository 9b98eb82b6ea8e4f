//! The checks of an experiment's fields that need no other field's value (but `end`, checked
//! against `start`): each error names its field.

use super::{MAX_CONFIRM, MAX_PRIORITY, MIN_PRIORITY, Mode, ValidationError};
use crate::selection::CrateSelection;
use crate::toolchain::{Toolchain, ToolchainSource};

pub(super) fn check_name(name: &str) -> Result<(), ValidationError> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "name",
            format!(
                "invalid experiment name {name:?}: must be 1 to 64 characters of lowercase ASCII \
                 letters, digits and '-', starting with a letter or digit"
            ),
        ))
    }
}

pub(super) fn check_toolchain(field: &str, toolchain: &Toolchain) -> Result<(), ValidationError> {
    toolchain
        .validate()
        .map_err(|e| ValidationError::new(field, e.to_string()))
}

pub(super) fn check_distinct(
    field: &str,
    start: &Toolchain,
    end: &Toolchain,
    calibration: bool,
) -> Result<(), ValidationError> {
    if start == end && !calibration {
        Err(ValidationError::new(
            field,
            format!(
                "the start and end toolchains must differ (both are {:?})",
                start.id()
            ),
        ))
    } else {
        Ok(())
    }
}

/// Miri ships only with nightly toolchains: a miri experiment whose rustup toolchain is another
/// channel could never run, so it is refused when it is defined (a `path:` toolchain may have
/// Miri; workers advertise `miri:<name>` for the toolchains that do).
pub(super) fn check_miri(
    mode: Mode,
    start: &Toolchain,
    end: &Toolchain,
) -> Result<(), ValidationError> {
    if mode != Mode::Miri {
        return Ok(());
    }
    for (field, tc) in [("start", start), ("end", end)] {
        if let ToolchainSource::Rustup(name) = &tc.source
            && !name.starts_with("nightly")
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "miri runs only on nightly toolchains, and {name:?} is not one \
                     (use nightly or nightly-YYYY-MM-DD, or another mode)"
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_crates(crates: &CrateSelection) -> Result<(), ValidationError> {
    crates
        .validate()
        .map_err(|e| ValidationError::new("crates", e.to_string()))
}

pub(super) fn check_confirm(confirm: u32) -> Result<(), ValidationError> {
    if confirm <= MAX_CONFIRM {
        Ok(())
    } else {
        Err(ValidationError::new(
            "confirm",
            format!("must be between 0 and {MAX_CONFIRM} (got {confirm})"),
        ))
    }
}

pub(super) fn check_priority(priority: i32) -> Result<(), ValidationError> {
    if (MIN_PRIORITY..=MAX_PRIORITY).contains(&priority) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "priority",
            format!("must be between {MIN_PRIORITY} and {MAX_PRIORITY} (got {priority})"),
        ))
    }
}
