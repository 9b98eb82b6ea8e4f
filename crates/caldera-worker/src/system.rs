//! What the worker knows about its machine: free disk (for heartbeats, and to tell a full host
//! disk from a sandbox limit) and load average.

use std::path::PathBuf;

use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};

/// Bytes available to unprivileged users on the filesystem holding `dir`; 0 when unknown.
pub(crate) async fn free_disk_bytes(dir: PathBuf) -> u64 {
    free_bytes(dir).await.unwrap_or(0)
}

/// Bytes available to unprivileged users on the filesystem holding `dir`, if known.
pub(crate) async fn free_bytes(dir: PathBuf) -> Option<u64> {
    let path = dir.clone();
    let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&path)).await;
    match stat {
        Ok(Ok(s)) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, dir = %dir.display(), "statvfs failed");
            None
        }
        Err(_) => None,
    }
}

/// Below this much free space on the filesystem of the target dirs, the worker's disk is full.
pub(crate) const HOST_DISK_FULL_BYTES: u64 = 1 << 30;

/// A side that ran out of space (`no-space`) while the worker's own disk — the one holding the
/// target dirs, `free` bytes available now — is full ran out of the farm's disk, not of a sandbox
/// limit (the sandbox's `/tmp` is a tmpfs of its own): that is `error`, retried as
/// infrastructure, never the crate's outcome: returns that error's reason. Any other outcome is
/// kept (`None`).
pub(crate) fn host_disk_full(outcome: &Outcome, free: u64) -> Option<String> {
    let no_space = matches!(
        outcome,
        Outcome::BuildFail(BuildFailReason::NoSpace)
            | Outcome::TestFail {
                reason: Some(TestFailReason::NoSpace),
                ..
            }
    );
    (no_space && free < HOST_DISK_FULL_BYTES).then(|| {
        format!(
            "the worker's disk is full ({} MiB free where the target dirs are): the side ran out \
             of space there, not in the sandbox",
            free >> 20
        )
    })
}

/// The 1-minute load average from `/proc/loadavg`; 0 when unknown (not Linux).
pub(crate) async fn load_average() -> f64 {
    tokio::fs::read_to_string("/proc/loadavg")
        .await
        .ok()
        .as_deref()
        .and_then(parse_loadavg)
        .unwrap_or(0.0)
}

/// The first field of `/proc/loadavg` (`"0.52 0.58 0.59 1/467 12345"`).
fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|l: &f64| l.is_finite() && *l >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_parses_the_first_field() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg("12 1 1 1/1 1"), Some(12.0));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("x 1 1"), None);
        assert_eq!(parse_loadavg("NaN 1 1"), None);
        assert_eq!(parse_loadavg("-1 1 1"), None);
    }

    #[test]
    fn running_out_of_space_on_a_full_host_disk_is_an_error() {
        let build = Outcome::BuildFail(BuildFailReason::NoSpace);
        let test = Outcome::TestFail {
            failed_tests: vec!["t".into()],
            reason: Some(TestFailReason::NoSpace),
        };
        let full = HOST_DISK_FULL_BYTES - 1;
        let roomy = 50 << 30;
        let cases: &[(&Outcome, u64, bool)] = &[
            (&build, 0, true),
            (&build, full, true),
            (&test, 100 << 20, true),
            // a sandbox limit (its /tmp) while the host has room: the crate's side keeps it
            (&build, roomy, false),
            (&test, HOST_DISK_FULL_BYTES, false),
            // other outcomes are never touched
            (&Outcome::TestPass, 0, false),
            (&Outcome::BuildFail(BuildFailReason::Oom), 0, false),
            (
                &Outcome::TestFail {
                    failed_tests: vec![],
                    reason: None,
                },
                0,
                false,
            ),
        ];
        for (outcome, free, error) in cases {
            let got = host_disk_full(outcome, *free);
            assert_eq!(got.is_some(), *error, "{outcome} with {free} bytes free");
            if let Some(reason) = got {
                assert!(reason.starts_with("the worker's disk is full"), "{reason}");
            }
        }
    }

    #[tokio::test]
    async fn free_disk_of_a_real_directory_is_positive() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_disk_bytes(dir.path().to_owned()).await > 0);
        assert_eq!(free_disk_bytes(dir.path().join("missing")).await, 0);
    }
}
