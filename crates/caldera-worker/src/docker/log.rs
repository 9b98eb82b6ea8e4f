//! A side's log: a header naming the crate, toolchain, mode and sandbox, the steps with their
//! durations and the outcome; then the preparation's output and every step's, each in a section
//! of its own.

use std::fmt::Write as _;

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use caldera_sandbox::{StepCommand, StepResult};

use super::job::JobContext;
use super::{Inner, SideRun};
use crate::prepare::PrepareReport;

/// A size as the log shows it: GiB with one decimal from 1 GiB, else whole MiB.
fn fmt_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

impl Inner {
    /// A side's log: the header (what ran where, the steps with their durations, the outcome),
    /// then the preparation's output and the side's own (its steps' sections).
    pub(super) fn compose_log(&self, job: &JobContext<'_>, side: Side, run: &SideRun) -> Vec<u8> {
        let mut head = String::new();
        let _ = writeln!(head, "caldera build log");
        self.describe_setting(&mut head, job, side);
        describe_steps(&mut head, side == job.prepared_on(), job.report, run);
        describe_outcome(&mut head, run, job.header_notes);
        let _ = writeln!(head, "\n==== prepare (shared by both sides) ====");
        head.push_str(&job.report.log);
        let mut log = head.into_bytes();
        log.extend_from_slice(&run.body);
        log
    }

    /// The header's first lines: the crate and experiment, the side and its toolchain, the mode,
    /// the sandbox's image and limits, and the lockfile.
    fn describe_setting(&self, head: &mut String, job: &JobContext<'_>, side: Side) {
        let spec = job.spec;
        let _ = writeln!(head, "crate:       {}", spec.krate);
        let _ = writeln!(head, "experiment:  {}", spec.experiment);
        let _ = writeln!(
            head,
            "side:        {side} — toolchain {}{}",
            job.toolchain_spec(side).id(),
            job.resolved(side)
                .map(|t| format!(" ({})", t.dir.display()))
                .unwrap_or_default()
        );
        let _ = writeln!(
            head,
            "mode:        {} (cap-lints {}, skip-tests {}, extra timeout {} s, extra memory {} MiB)",
            spec.mode,
            spec.cap_lints,
            spec.skip_tests,
            spec.extra_timeout_secs,
            spec.extra_memory_mib
        );
        let _ = writeln!(
            head,
            "sandbox:     image {}, memory {}, {} CPUs, {} pids, timeouts {} s / {} s no output",
            self.sandbox.config().image,
            fmt_bytes(self.config.limits.memory_bytes + (u64::from(spec.extra_memory_mib) << 20)),
            self.config.limits.cpus,
            self.config.limits.pids,
            self.config.timeouts.total.as_secs() + u64::from(spec.extra_timeout_secs),
            self.config.timeouts.no_output.as_secs() + u64::from(spec.extra_timeout_secs),
        );
        if let Ok(p) = job.prepared {
            let _ = writeln!(
                head,
                "lockfile:    {} (sha256 {}), stored as {}",
                p.lockfile.as_str(),
                p.lockfile_sha256,
                p.lockfile_key
            );
        }
    }
}

/// The header's step lines: the preparation's (`prepared_here`: on the side whose clock it ran
/// on), then the side's.
fn describe_steps(head: &mut String, prepared_here: bool, report: &PrepareReport, run: &SideRun) {
    let _ = writeln!(head, "steps:");
    for (name, d) in report.steps.iter().filter(|_| prepared_here) {
        let _ = writeln!(head, "  prepare:{name:<16} {:>8.2} s", d.as_secs_f64());
    }
    for line in &run.step_lines {
        let _ = writeln!(head, "  {line}");
    }
}

/// The header's last lines: the outcome (with its reason or failed tests), the duration and peak
/// memory, and the notes of the classification and of the job.
fn describe_outcome(head: &mut String, run: &SideRun, notes: &[String]) {
    let _ = writeln!(
        head,
        "outcome:     {}{}",
        run.outcome,
        match &run.outcome {
            Outcome::PrepareFail { reason }
            | Outcome::Broken { reason }
            | Outcome::Error { reason } => format!(" — {reason}"),
            Outcome::TestFail { failed_tests, .. } if !failed_tests.is_empty() =>
                format!(" — {}", failed_tests.join(", ")),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        head,
        "duration:    {:.2} s, peak memory {}",
        run.duration.as_secs_f64(),
        fmt_bytes(run.peak_memory_bytes)
    );
    if let Some(c) = &run.classification {
        if c.diagnostics_changed {
            let _ = writeln!(
                head,
                "note:        a UI-test harness saw diagnostics change"
            );
        }
        for note in &c.notes {
            let _ = writeln!(head, "note:        {note}");
        }
    }
    for note in notes {
        let _ = writeln!(head, "note:        {note}");
    }
}

/// `write!` into a byte log.
pub(super) struct LogText<'a>(pub(super) &'a mut Vec<u8>);

impl std::fmt::Write for LogText<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What a step's line adds to its termination: its peak memory (`with_peak`), and the limits the
/// cgroup counted it hitting: a failed fork at the pids limit, and an OOM kill in a step that
/// ended by a timeout (otherwise an OOM kill is the termination itself, "killed by the OOM
/// killer").
pub(super) fn limit_notes(result: &StepResult, with_peak: bool) -> String {
    let mut notes = String::new();
    if let Some(p) = result.peak_memory_bytes.filter(|_| with_peak) {
        let _ = write!(notes, ", peak memory {}", fmt_bytes(p));
    }
    if result.oom_killed && result.timed_out.is_some() {
        // (otherwise the termination itself says "killed by the OOM killer")
        notes.push_str(", memory limit hit (OOM kill)");
    }
    if result.pids_limit_hit {
        notes.push_str(", pids limit hit");
    }
    notes
}

/// Appends step `i`'s section to a side's log: a header with its command, its output, and a
/// footer with how it ended.
pub(super) fn write_step_output(
    body: &mut Vec<u8>,
    i: usize,
    of: usize,
    name: &str,
    cmd: &StepCommand,
    result: &StepResult,
    end: &str,
) {
    let _ = write!(
        LogText(body),
        "\n==== step {}/{of}: {name}: {} ====\n",
        i + 1,
        cmd.argv.join(" ")
    );
    body.extend_from_slice(result.output.as_bytes());
    if !result.output.as_bytes().ends_with(b"\n") {
        body.push(b'\n');
    }
    let _ = writeln!(
        LogText(body),
        "==== {name}: {end} after {:.2} s{}{} ====",
        result.duration.as_secs_f64(),
        limit_notes(result, false),
        if result.output.truncated() {
            format!(
                ", output truncated ({} of {} bytes omitted)",
                result.output.omitted_bytes(),
                result.output.output_bytes()
            )
        } else {
            String::new()
        }
    );
}
