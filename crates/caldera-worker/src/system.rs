//! What heartbeats report about the machine: free disk and load average.

use std::path::PathBuf;

/// Bytes available to unprivileged users on the filesystem holding `dir`; 0 when unknown.
pub(crate) async fn free_disk_bytes(dir: PathBuf) -> u64 {
    let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir)).await;
    match stat {
        Ok(Ok(s)) => s.f_bavail.saturating_mul(s.f_frsize),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "statvfs of the spool directory failed");
            0
        }
        Err(_) => 0,
    }
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

    #[tokio::test]
    async fn free_disk_of_a_real_directory_is_positive() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_disk_bytes(dir.path().to_owned()).await > 0);
        assert_eq!(free_disk_bytes(dir.path().join("missing")).await, 0);
    }
}
