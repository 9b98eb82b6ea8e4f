//! The checks of a toolchain's parts: rustup names, dates, versions, host and target triples,
//! flags.

use super::{Kind, MAX_FLAGS_LEN, MAX_TRIPLE_LEN};
use crate::serde_util::first_control_char;

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn check_date(date: &str) -> Result<(), Kind> {
    let bad = || Kind::InvalidDate {
        date: date.to_owned(),
    };
    let b = date.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |s: &str| -> Result<u32, Kind> {
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(&date[..4])?, num(&date[5..7])?, num(&date[8..])?);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day == 0 || day > days {
        return Err(bad());
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), Kind> {
    let parts: Vec<&str> = version.split('.').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 9
                && p.bytes().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        });
    if ok {
        Ok(())
    } else {
        Err(Kind::InvalidVersion {
            version: version.to_owned(),
        })
    }
}

/// A target triple: at least `min_parts` non-empty `-`-separated parts of `[a-z0-9_.]`.
fn is_triple(s: &str, min_parts: usize) -> bool {
    s.len() <= MAX_TRIPLE_LEN
        && s.split('-').count() >= min_parts
        && s.split('-').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
        })
}

fn check_host(host: &str) -> Result<(), Kind> {
    if is_triple(host, 3) {
        Ok(())
    } else {
        Err(Kind::InvalidHost {
            host: host.to_owned(),
        })
    }
}

pub(super) fn check_target(target: &str) -> Result<(), Kind> {
    if is_triple(target, 2) {
        Ok(())
    } else {
        Err(Kind::InvalidTarget {
            target: target.to_owned(),
        })
    }
}

/// Validates a rustup toolchain name (see [`ToolchainSource::Rustup`]).
pub(super) fn check_rustup_name(name: &str) -> Result<(), Kind> {
    if name.is_empty() {
        return Err(Kind::Empty);
    }
    let (channel, rest) = match name.split_once('-') {
        Some((c, r)) => (c, Some(r)),
        None => (name, None),
    };
    let host = match channel {
        "stable" | "beta" | "nightly" => match rest {
            None => None,
            Some(rest) => {
                let first = rest.split('-').next().unwrap_or_default();
                if !first.is_empty() && first.bytes().all(|c| c.is_ascii_digit()) {
                    // A date, maybe followed by a host.
                    match rest.get(10..11) {
                        Some("-") => {
                            check_date(&rest[..10])?;
                            Some(&rest[11..])
                        }
                        _ => {
                            check_date(rest)?;
                            None
                        }
                    }
                } else {
                    Some(rest)
                }
            }
        },
        c if c.starts_with(|ch: char| ch.is_ascii_digit()) => {
            check_version(c)?;
            rest
        }
        _ => return Err(Kind::UnknownRustupName),
    };
    match host {
        Some(host) => check_host(host),
        None => Ok(()),
    }
}

pub(super) fn check_flags(option: &'static str, value: &str) -> Result<(), Kind> {
    if value.trim().is_empty() {
        return Err(Kind::EmptyValue { option });
    }
    if first_control_char(value).is_some() {
        return Err(Kind::ControlChar { option });
    }
    if value.len() > MAX_FLAGS_LEN {
        return Err(Kind::TooLong { option });
    }
    Ok(())
}
