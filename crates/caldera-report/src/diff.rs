//! "What changed" between a crate's two logs: both logs aligned line by line after removing what
//! always differs between two runs (line stamps, colours, timestamps, paths, durations,
//! toolchain names, hashes: the normalisation of [`first_new_error`](crate::first_new_error)),
//! and the sections where they diverge, each with a few lines of context.

use std::time::{Duration, Instant};

use caldera_core::logtext::unstamped;
use similar::{Algorithm, DiffTag};

use crate::logdiff::{normalize_line, strip_ansi};

/// How a [`log_diff`] is cut to size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffOptions {
    /// Unchanged lines shown around each change.
    pub context: usize,
    /// Sections returned; the others are only counted ([`LogDiff::total_sections`]).
    pub max_sections: usize,
    /// Lines returned per section; the rest of a longer one is counted in [`Section::cut`].
    pub max_section_lines: usize,
    /// Time allowed for aligning; after it, the alignment found so far is used (coarser, still
    /// correct: unmatched lines are reported as changed).
    pub deadline: Duration,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            context: 3,
            max_sections: 20,
            max_section_lines: 200,
            deadline: Duration::from_millis(500),
        }
    }
}

/// One line of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    /// In both logs (after normalisation): its 0-based line numbers in the start and end log.
    Same {
        /// Line number in the start log.
        start: usize,
        /// Line number in the end log.
        end: usize,
        /// The end log's line.
        text: String,
    },
    /// Only in the start log.
    Removed {
        /// Line number in the start log.
        start: usize,
        /// The line.
        text: String,
    },
    /// Only in the end log.
    Added {
        /// Line number in the end log.
        end: usize,
        /// The line.
        text: String,
    },
}

impl DiffLine {
    /// The line as shown (colours and line stamp removed; paths and timings as logged).
    pub fn text(&self) -> &str {
        match self {
            DiffLine::Same { text, .. }
            | DiffLine::Removed { text, .. }
            | DiffLine::Added { text, .. } => text,
        }
    }
}

/// A run of changed lines with their context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The lines, context and changes, in log order.
    pub lines: Vec<DiffLine>,
    /// Lines of this section left out after [`DiffOptions::max_section_lines`].
    pub cut: usize,
}

impl Section {
    /// Lines only in the start log and only in the end log.
    pub fn changes(&self) -> (usize, usize) {
        self.lines.iter().fold((0, 0), |(r, a), l| match l {
            DiffLine::Removed { .. } => (r + 1, a),
            DiffLine::Added { .. } => (r, a + 1),
            DiffLine::Same { .. } => (r, a),
        })
    }
}

/// Two logs compared: the divergent sections, in log order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogDiff {
    /// The first [`DiffOptions::max_sections`] sections where the logs diverge.
    pub sections: Vec<Section>,
    /// Sections found, including those beyond [`DiffOptions::max_sections`].
    pub total_sections: usize,
    /// Lines of caldera's run header (the summary above the first `==== ` line of a `caldera
    /// build log`) left out of the comparison, per side: they name the side, its outcome and
    /// its steps, which differ by construction.
    pub header_lines: (usize, usize),
    /// The deadline passed: the alignment is coarser than it could be.
    pub timed_out: bool,
}

impl LogDiff {
    /// Nothing differs (after normalisation and without the headers).
    pub fn identical(&self) -> bool {
        self.total_sections == 0
    }
}

/// A log's lines as shown and as compared, without caldera's run header.
struct Lines {
    shown: Vec<String>,
    normalized: Vec<String>,
    /// Index in the log of `shown[0]`.
    offset: usize,
}

/// The first line of the log a worker writes (`caldera_worker::docker::log`).
const CALDERA_LOG_TITLE: &str = "caldera build log";

fn prepare(log: &str) -> Lines {
    let all: Vec<&str> = log.lines().collect();
    let offset = if all.first().map(|l| l.trim()) == Some(CALDERA_LOG_TITLE) {
        all.iter()
            .position(|l| unstamped(l).starts_with("==== "))
            .unwrap_or(0)
    } else {
        0
    };
    let (mut clean, mut norm) = (String::new(), String::new());
    let mut lines = Lines {
        shown: Vec::with_capacity(all.len() - offset),
        normalized: Vec::with_capacity(all.len() - offset),
        offset,
    };
    for line in &all[offset..] {
        strip_ansi(unstamped(line), &mut clean);
        normalize_line(&clean, &mut norm);
        lines.shown.push(clean.trim_end().to_owned());
        lines.normalized.push(norm.clone());
    }
    lines
}

/// Compares `start_log` and `end_log` (as [`caldera_core::logtext::for_reading`] shows them):
/// aligns their lines after normalisation and returns the sections where they differ, with
/// `options.context` lines of context. A line counts as the same when its normalised form is
/// (see [`first_new_error`](crate::first_new_error) for what is normalised); lines are shown
/// without colours and line stamps, otherwise as logged.
pub fn log_diff(start_log: &str, end_log: &str, options: &DiffOptions) -> LogDiff {
    let a = prepare(start_log);
    let b = prepare(end_log);
    let deadline = Instant::now() + options.deadline;
    let ops = similar::capture_diff_slices_deadline(
        Algorithm::Patience,
        &a.normalized,
        &b.normalized,
        Some(deadline),
    );
    let timed_out = Instant::now() >= deadline;
    let groups = similar::group_diff_ops(ops, options.context);
    let mut diff = LogDiff {
        sections: Vec::new(),
        total_sections: groups.len(),
        header_lines: (a.offset, b.offset),
        timed_out,
    };
    for group in groups.into_iter().take(options.max_sections) {
        let mut section = Section {
            lines: Vec::new(),
            cut: 0,
        };
        for op in group {
            let (tag, old, new) = op.as_tag_tuple();
            let lines: Vec<DiffLine> = match tag {
                DiffTag::Equal => old
                    .zip(new)
                    .map(|(i, j)| DiffLine::Same {
                        start: a.offset + i,
                        end: b.offset + j,
                        text: b.shown[j].clone(),
                    })
                    .collect(),
                _ => old
                    .map(|i| DiffLine::Removed {
                        start: a.offset + i,
                        text: a.shown[i].clone(),
                    })
                    .chain(new.map(|j| DiffLine::Added {
                        end: b.offset + j,
                        text: b.shown[j].clone(),
                    }))
                    .collect(),
            };
            let room = options
                .max_section_lines
                .saturating_sub(section.lines.len());
            section.cut += lines.len().saturating_sub(room);
            section.lines.extend(lines.into_iter().take(room));
        }
        diff.sections.push(section);
    }
    diff
}
