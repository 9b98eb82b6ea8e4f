//! The Markdown summary to paste in a GitHub issue, and the notes the pages share with it.

use caldera_core::toolchain::ToolchainIdentity;

use super::*;

/// The sentence naming the regressions of quiet crates (up to `max` of them), if there are any:
/// "2 regressions of crates marked quiet are not listed: `a 1.0.0`, `b 2.0.0`." (Markdown).
pub fn quiet_note(report: &Report, max: usize) -> Option<String> {
    let n = report.quiet.len();
    if n == 0 {
        return None;
    }
    let mut names: Vec<String> = report
        .quiet_regressions()
        .take(max)
        .map(|c| code(&label(c.krate())))
        .collect();
    if n > max {
        names.push(format!("… and {} more", n - max));
    }
    Some(format!(
        "{} of crates marked quiet {} not listed: {}.",
        plural(n, "regression", "regressions"),
        if n == 1 { "is" } else { "are" },
        names.join(", ")
    ))
}

/// The comparisons of the summary's "spurious and infrastructure results" section.
pub(crate) const SPURIOUS_SECTION: [Comparison; 4] = [
    Comparison::SpuriousRegressed,
    Comparison::SpuriousFixed,
    Comparison::Spurious,
    Comparison::Error,
];

/// The sentence on confirmation runs, when crates were re-run: "Confirmation: 3 confirmed, 1
/// flaky (listed apart), 0 pending; 8 re-runs, 4.2 min of builds."
pub fn confirmation_note(report: &Report, reruns: Option<(u64, u64)>) -> Option<String> {
    let c = report.confirmation_counts();
    if c == ConfirmationCounts::default() {
        return None;
    }
    let mut note = format!(
        "Confirmation (each regression and fix re-run from clean target dirs): {} confirmed, {} \
         flaky (listed apart, not regressions), {} pending",
        c.confirmed, c.flaky, c.pending
    );
    if c.known_flaky > 0 {
        let _ = write!(
            note,
            "; {} known flaky from earlier runs (listed apart)",
            c.known_flaky
        );
    }
    if let Some((runs, ms)) = reruns {
        let _ = write!(
            note,
            "; {} cost {:.1} min of builds",
            plural(runs as usize, "re-run", "re-runs"),
            ms as f64 / 60_000.0
        );
    }
    note.push('.');
    Some(note)
}

/// The "flaky" section: crates whose re-runs disagreed with their first run.
pub(crate) fn write_flaky(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    let n = report.flaky.len();
    if n == 0 {
        return Ok(());
    }
    writeln!(out, "## Flaky (not confirmed)\n")?;
    writeln!(
        out,
        "Their first run said `regressed` or `fixed`, but a re-run from clean target dirs \
         disagreed: not evidence either way.\n"
    )?;
    writeln!(
        out,
        "| crate | first run | start | end |\n|---|---|---|---|"
    )?;
    for c in report.flaky().take(max) {
        let known = if c.confirmation() == Some(ConfirmationStatus::KnownFlaky) {
            " (known flaky)"
        } else {
            ""
        };
        writeln!(
            out,
            "| {} | {}{known} | {} | {} |",
            code(&label(c.krate())),
            c.comparison(),
            code(&cut(c.result().start.to_string(), MAX_OUTCOME_CHARS)),
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS))
        )?;
    }
    more(out, n, max, "crates")
}

/// The "compiler output changed" section: regressions that are only a UI-test harness seeing
/// different diagnostics, below the real breakage.
pub(crate) fn write_diagnostics_changes(
    out: &mut String,
    report: &Report,
    max: usize,
) -> fmt::Result {
    let n = report.diagnostics.len();
    if n == 0 {
        return Ok(());
    }
    writeln!(out, "## Compiler output changed\n")?;
    writeln!(
        out,
        "{} only because tests that compare the compiler's diagnostics with stored \
         expectations (trybuild, ui_test, compiletest) saw them change: a diagnostics change, \
         not breakage of the crate.\n",
        plural(n, "crate regressed", "crates regressed")
    )?;
    writeln!(out, "| crate | end outcome |\n|---|---|")?;
    for c in report.diagnostics_changes().take(max) {
        writeln!(
            out,
            "| {} | {} |",
            code(&label(c.krate())),
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS))
        )?;
    }
    more(out, n, max, "crates")
}

/// Entries shown per section of the Markdown summary unless told otherwise.
pub const DEFAULT_MAX_ENTRIES: usize = 50;
/// Longest crate label in the summary, in characters; longer ones are cut with `…`.
pub(crate) const MAX_LABEL_CHARS: usize = 72;
/// Longest outcome text in the summary.
pub(crate) const MAX_OUTCOME_CHARS: usize = 60;
/// Crates named inline per error group.
pub(crate) const GROUP_INLINE: usize = 3;

/// What [`summary_markdown`] needs besides the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryOptions<'a> {
    /// The heading, e.g. the experiment name.
    pub title: &'a str,
    /// The start (baseline) toolchain, as written.
    pub start_toolchain: &'a str,
    /// The end (candidate) toolchain, as written.
    pub end_toolchain: &'a str,
    /// Entries shown per section before "… and N more".
    pub max_entries: usize,
    /// The confirmation runs made (finished runs, and their build time in milliseconds, both
    /// sides), when the caller knows them.
    pub reruns: Option<(u64, u64)>,
    /// The build each side ran with, when known: shown under the toolchains.
    pub toolchains: Toolchains<'a>,
}

impl<'a> SummaryOptions<'a> {
    /// Options with [`DEFAULT_MAX_ENTRIES`] entries per section.
    pub fn new(title: &'a str, start_toolchain: &'a str, end_toolchain: &'a str) -> Self {
        SummaryOptions {
            title,
            start_toolchain,
            end_toolchain,
            max_entries: DEFAULT_MAX_ENTRIES,
            reruns: None,
            toolchains: Toolchains::default(),
        }
    }
}

/// A summary of the report in GitHub-flavoured Markdown, fit to paste in an issue: the headline
/// ("412 regressions, 390 of them through `foo 1.2.3`"), a counts table, the root regressions with
/// the regressions through each, the root regressions by error, the spurious results and
/// infrastructure errors, attribution notes (unresolved dependencies, cycles) and the retry count.
///
/// Its length is bounded whatever the report's size: each section shows at most
/// `options.max_entries` entries and then "… and N more", crate labels are cut at 72 characters,
/// and each error group names at most 3 crates. With the default 50 entries it stays well under
/// GitHub's 65,536-character limit for an issue body.
pub fn summary_markdown(report: &Report, options: &SummaryOptions<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = write_summary(&mut out, report, options);
    out
}

pub(crate) fn write_summary(
    out: &mut String,
    report: &Report,
    opts: &SummaryOptions<'_>,
) -> fmt::Result {
    let max = opts.max_entries;
    let n_spurious = SPURIOUS_SECTION
        .iter()
        .map(|&c| report.counts().get(c))
        .sum::<usize>();
    write_headline(out, report, opts, n_spurious)?;
    write_counts(out, report)?;
    if !report.roots.is_empty() {
        write_roots(out, report, max)?;
    }
    write_diagnostics_changes(out, report, max)?;
    write_flaky(out, report, max)?;
    if n_spurious > 0 {
        write_spurious(out, report, max)?;
    }
    if !report.unresolved.is_empty() || !report.cycles.is_empty() {
        write_attribution_notes(out, report, max)?;
    }
    write_retry(out, report)
}

/// The title, the toolchains, the one-sentence verdict and the notes under it.
fn write_headline(
    out: &mut String,
    report: &Report,
    opts: &SummaryOptions<'_>,
    n_spurious: usize,
) -> fmt::Result {
    let max = opts.max_entries;
    // the regressions listed (quiet crates' are named apart)
    let n_regressed = report.regressions.len();
    let n_roots = report.roots.len();
    writeln!(out, "# {}\n", one_line(opts.title))?;
    writeln!(
        out,
        "{} (start) → {} (end), {}.\n",
        code(opts.start_toolchain),
        code(opts.end_toolchain),
        plural(report.len(), "crate", "crates")
    )?;
    write_builds(out, &opts.toolchains)?;
    match report.root_regressions().next() {
        None if report.quiet.is_empty() && report.diagnostics.is_empty() => {
            writeln!(out, "**No regressions.**\n")?
        }
        None => writeln!(out, "**No regressions listed.**\n")?,
        Some(top) => {
            writeln!(
                out,
                "**{}, {} of them through {}.**\n",
                plural(n_regressed, "regression", "regressions"),
                top.regressions_through(),
                code(&label(top.krate()))
            )?;
            writeln!(
                out,
                "{} regressed on their own; the other {} regressed because a dependency did.\n",
                plural(n_roots, "crate", "crates"),
                n_regressed - n_roots
            )?;
        }
    }
    if let Some(note) = quiet_note(report, max) {
        writeln!(out, "{note}\n")?;
    }
    if let Some(note) = confirmation_note(report, opts.reruns) {
        writeln!(out, "{note}\n")?;
    }
    if n_spurious > 0 {
        writeln!(
            out,
            "{} spurious or infrastructure results are listed apart and not counted as \
             regressions.\n",
            n_spurious
        )?;
    }

    Ok(())
}

/// The table of crates per comparison.
fn write_counts(out: &mut String, report: &Report) -> fmt::Result {
    writeln!(out, "## Counts\n")?;
    writeln!(out, "| comparison | crates |\n|---|---:|")?;
    for (c, n) in report.counts().iter() {
        writeln!(out, "| {c} | {n} |")?;
    }
    writeln!(out, "| **total** | **{}** |\n", report.counts().total())?;

    Ok(())
}

/// The root regressions, ranked, then grouped by error.
fn write_roots(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    let n_roots = report.roots.len();
    writeln!(out, "## Root regressions\n")?;
    writeln!(
        out,
        "Crates that regressed on their own, by the regressions they explain: themselves and \
         the crates that regressed through them (a crate with several regressed dependencies \
         counts for each).\n"
    )?;
    writeln!(
        out,
        "| # | crate | end outcome | regressions through it |\n|---:|---|---|---:|"
    )?;
    for (k, c) in report.root_regressions().take(max).enumerate() {
        let cycle = if c.in_cycle() { " (cycle)" } else { "" };
        let confirmed = match c.confirmation() {
            Some(ConfirmationStatus::Confirmed) => " (confirmed)",
            Some(ConfirmationStatus::Pending) => " (confirmation pending)",
            _ => "",
        };
        writeln!(
            out,
            "| {} | {}{}{} | {} | {} |",
            k + 1,
            code(&label(c.krate())),
            cycle,
            confirmed,
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS)),
            c.regressions_through()
        )?;
    }
    more(out, n_roots, max, "root regressions")?;

    writeln!(out, "## Root regressions by error\n")?;
    writeln!(out, "| error | root regressions | crates |\n|---|---:|---|")?;
    for g in report.error_groups().take(max) {
        let mut names: Vec<String> = g
            .crates()
            .take(GROUP_INLINE)
            .map(|c| code(&label(c.krate())))
            .collect();
        if g.len() > GROUP_INLINE {
            names.push(format!("… and {} more", g.len() - GROUP_INLINE));
        }
        writeln!(
            out,
            "| {} | {} | {} |",
            code(g.key().as_str()),
            g.len(),
            names.join(", ")
        )?;
    }
    more(out, report.error_groups.len(), max, "groups")?;
    Ok(())
}

/// The spurious and infrastructure results, with their reasons, apart from the regressions.
fn write_spurious(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    let counts = report.counts();
    writeln!(out, "## Spurious and infrastructure results\n")?;
    writeln!(
        out,
        "Not regressions: these failures say nothing about the toolchain (out of memory, \
         timeouts, the pids limit, full disk, network access in the sandbox) or the \
         infrastructure failed (`error`). Retry them before believing them.\n"
    )?;
    writeln!(out, "| comparison | crates | reasons |\n|---|---:|---|")?;
    for c in SPURIOUS_SECTION {
        let reasons: Vec<String> = report
            .spurious_reasons(c)
            .iter()
            .map(|r| format!("{} {}", r.kind, r.crates))
            .collect();
        writeln!(out, "| {c} | {} | {} |", counts.get(c), reasons.join(", "))?;
    }
    writeln!(out)?;
    for (c, list) in [
        (Comparison::SpuriousRegressed, &report.spurious_regressed),
        (Comparison::SpuriousFixed, &report.spurious_fixed),
        (Comparison::Spurious, &report.spurious_both),
        (Comparison::Error, &report.errors),
    ] {
        if list.is_empty() {
            continue;
        }
        let names: Vec<String> = report
            .views(list)
            .take(max)
            .map(|c| code(&label(c.krate())))
            .collect();
        write!(out, "**{c}**: {}", names.join(", "))?;
        if list.len() > max {
            write!(out, " … and {} more", list.len() - max)?;
        }
        writeln!(out, "\n")?;
    }
    Ok(())
}

/// Dependencies that are not in the experiment, and dependency cycles.
fn write_attribution_notes(out: &mut String, report: &Report, max: usize) -> fmt::Result {
    writeln!(out, "## Attribution notes\n")?;
    if !report.unresolved.is_empty() {
        writeln!(
            out,
            "Dependencies named by failed builds that are not in this experiment (the crates \
             naming them are counted as roots):\n"
        )?;
        for u in report.unresolved.iter().take(max) {
            writeln!(
                out,
                "- {}: {}",
                code(&cut(u.name.clone(), MAX_LABEL_CHARS)),
                plural(u.dependents, "crate", "crates")
            )?;
        }
        more(out, report.unresolved.len(), max, "names")?;
    }
    if !report.cycles.is_empty() {
        let names: Vec<String> = report
            .cycles()
            .take(max)
            .map(|c| code(&label(c.krate())))
            .collect();
        write!(
            out,
            "{} form dependency cycles, which real data cannot have; each cycle is attributed \
             as one unit: {}",
            plural(report.cycles.len(), "crate", "crates"),
            names.join(", ")
        )?;
        if report.cycles.len() > max {
            write!(out, " … and {} more", report.cycles.len() - max)?;
        }
        writeln!(out, "\n")?;
    }
    Ok(())
}

/// How many crates the retry list holds.
fn write_retry(out: &mut String, report: &Report) -> fmt::Result {
    let retry = report.regressions.len()
        + report.spurious_regressed.len()
        + report.spurious_fixed.len()
        + report.errors.len();
    writeln!(out, "## Retry\n")?;
    if retry == 0 {
        writeln!(out, "Nothing to retry.")?;
    } else {
        writeln!(
            out,
            "**{} to retry** (regressions and spurious results): the report's retry list is an \
             explicit crate selection.",
            plural(retry, "crate", "crates")
        )?;
    }
    Ok(())
}

pub(crate) fn more(out: &mut String, len: usize, max: usize, what: &str) -> fmt::Result {
    if len > max {
        writeln!(out, "\n… and {} more {what}", len - max)?;
    }
    writeln!(out)
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `foo 1.2.3` for registry crates, the id otherwise; cut to [`MAX_LABEL_CHARS`].
pub(crate) fn label(id: &CrateId) -> String {
    let full = match id {
        CrateId::Registry { name, version, .. } => format!("{name} {version}"),
        other => other.to_string(),
    };
    cut(full, MAX_LABEL_CHARS)
}

pub(crate) fn cut(s: String, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if s.chars().count() > max => format!("{}…", &s[..at]),
        _ => s,
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split(['\r', '\n']).collect::<Vec<_>>().join(" ")
}

/// `s` as a Markdown code span that is safe in a table cell: on one line, delimited by more
/// backticks than it contains in a row, with `|` escaped.
/// The builds the sides ran with, under the toolchains: "Builds: start `1.95.0 (abc… 2026-11-30,
/// x86_64-…)`, cargo `…`; end …". Nothing when neither is known.
fn write_builds(out: &mut String, toolchains: &Toolchains<'_>) -> fmt::Result {
    if !toolchains.any() {
        return Ok(());
    }
    let side = |t: Option<&ToolchainIdentity>| match t {
        Some(t) if t.cargo.is_empty() => code(&t.describe()),
        Some(t) => format!("{}, cargo {}", code(&t.describe()), code(&t.cargo)),
        None => "not recorded".to_owned(),
    };
    writeln!(
        out,
        "Builds (every result of a side ran with this build): start {}; end {}.\n",
        side(toolchains.start),
        side(toolchains.end)
    )
}

pub(crate) fn code(s: &str) -> String {
    let s = one_line(s).replace('|', "\\|");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}
