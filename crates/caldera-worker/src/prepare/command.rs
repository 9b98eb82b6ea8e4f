//! Host commands (cargo, git): run with the configured timeout and recorded in the job's log, long
//! output kept as its head and tail.

use std::fmt::Write as _;
use std::time::Instant;

use super::{PrepareError, PrepareReport, Preparer};

/// How a host command ended and what it printed.
pub(super) struct CommandOutput {
    pub(super) success: bool,
    pub(super) status: String,
    pub(super) stdout: String,
    /// stdout, then stderr
    pub(super) text: String,
}

/// Keeps the head and tail of long command output.
fn cap_output(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let half = cap / 2;
    let mut head = half;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - half;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}\n[… {} bytes of output omitted …]\n{}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

impl Preparer {
    /// Runs a host command with the configured timeout and records it in the report.
    pub(super) async fn run_logged(
        &self,
        mut cmd: tokio::process::Command,
        label: &str,
        report: &mut PrepareReport,
    ) -> Result<CommandOutput, PrepareError> {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let t0 = Instant::now();
        let timeout = self.inner.config.command_timeout;
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                report.line(format!("$ {label}\n(timed out after {timeout:?})"));
                return Err(PrepareError::Infra(format!(
                    "`{label}` timed out after {timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(PrepareError::Infra(format!("running `{label}`: {e}"))),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut text = stdout.clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&stderr);
        }
        let status = out.status.to_string();
        let _ = writeln!(
            report.log,
            "$ {label}   ({:.2} s, {status})",
            t0.elapsed().as_secs_f64()
        );
        let shown = if label.contains("metadata") && out.status.success() {
            // the JSON is long and in the stored lockfile anyway; keep the log readable
            stderr.into_owned()
        } else {
            text.clone()
        };
        let shown = cap_output(&shown, self.inner.config.command_log_cap);
        report.log.push_str(&shown);
        if !shown.is_empty() && !shown.ends_with('\n') {
            report.log.push('\n');
        }
        Ok(CommandOutput {
            success: out.status.success(),
            status,
            stdout,
            text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_output_keeps_head_and_tail() {
        let text = format!("{}{}", "a".repeat(1000), "b".repeat(1000));
        let capped = cap_output(&text, 100);
        assert!(capped.starts_with(&"a".repeat(50)));
        assert!(capped.ends_with(&"b".repeat(50)));
        assert!(capped.contains("1900 bytes of output omitted"));
        assert_eq!(cap_output("short", 100), "short");
    }
}
