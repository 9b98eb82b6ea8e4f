//! The pull-request comment: a Markdown summary of a report sized for a GitHub comment (at most
//! [`GITHUB_COMMENT_LIMIT`] bytes, so at most as many characters), with links into the
//! dashboard: the counts, the regressions by root cause with links to each root's logs and log
//! diff, the fixed crates, and the commands that retry what is worth retrying.

use super::*;
use crate::summary::{MAX_OUTCOME_CHARS, SPURIOUS_SECTION, code, cut, label, one_line, plural};

/// GitHub's limit on the body of an issue or pull-request comment, in characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// What [`pr_comment`] needs besides the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrCommentOptions<'a> {
    /// The experiment's name.
    pub experiment: &'a str,
    /// The start (baseline) toolchain, as written.
    pub start_toolchain: &'a str,
    /// The end (candidate) toolchain, as written.
    pub end_toolchain: &'a str,
    /// The dashboard's address as readers reach it (`https://caldera.example`), without a
    /// trailing slash: the links start with it.
    pub dashboard_url: &'a str,
    /// Entries per list before "… and N more"; lowered as needed to fit the limit.
    pub max_entries: usize,
}

impl<'a> PrCommentOptions<'a> {
    /// Options listing up to 50 entries per section.
    pub fn new(
        experiment: &'a str,
        start_toolchain: &'a str,
        end_toolchain: &'a str,
        dashboard_url: &'a str,
    ) -> Self {
        PrCommentOptions {
            experiment,
            start_toolchain,
            end_toolchain,
            dashboard_url,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// The comment, at most [`GITHUB_COMMENT_LIMIT`] bytes whatever the report's size: lists are
/// shortened (halving the entries shown) until it fits, each ending in "… and N more, see
/// <link>" to the dashboard's full list.
pub fn pr_comment(report: &Report, options: &PrCommentOptions<'_>) -> String {
    let mut max = options.max_entries;
    loop {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = write_comment(&mut out, report, options, max);
        if out.len() <= GITHUB_COMMENT_LIMIT {
            return out;
        }
        if max == 0 {
            // only an absurdly long name or address can get here
            let mut at = GITHUB_COMMENT_LIMIT - 8;
            while !out.is_char_boundary(at) {
                at -= 1;
            }
            out.truncate(at);
            out.push_str("\n\n… (cut)");
            return out;
        }
        max /= 2;
    }
}

/// `s` as one percent-encoded URL path segment or query value (unreserved characters kept).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The dashboard links of one experiment.
struct Links<'a> {
    base: String,
    experiment: &'a str,
}

impl Links<'_> {
    fn experiment(&self) -> String {
        self.base.clone()
    }
    fn category(&self, c: Comparison) -> String {
        format!("{}?category={}", self.base, c.as_str())
    }
    /// A crate's page; registry crates without their checksum (the page finds them).
    fn krate(&self, id: &CrateId) -> String {
        let id = match id {
            CrateId::Registry { name, version, .. } => format!("reg:{name}@{version}"),
            other => other.to_string(),
        };
        format!("{}/crates/{}", self.base, url_encode(&id))
    }
    fn root(&self, id: &CrateId) -> String {
        format!("{}?root={}", self.base, url_encode(&id.to_string()))
    }
}

fn write_comment(
    out: &mut String,
    report: &Report,
    opts: &PrCommentOptions<'_>,
    max: usize,
) -> fmt::Result {
    let links = Links {
        base: format!(
            "{}/experiments/{}",
            opts.dashboard_url.trim_end_matches('/'),
            url_encode(opts.experiment)
        ),
        experiment: opts.experiment,
    };
    write_head(out, report, opts, &links)?;
    write_roots(out, report, &links, max)?;
    write_fixed(out, report, &links, max)?;
    write_apart(out, report, &links)?;
    write_retry(out, report, opts, &links)
}

/// The title, the toolchains, the verdict and the counts that matter.
fn write_head(
    out: &mut String,
    report: &Report,
    opts: &PrCommentOptions<'_>,
    links: &Links<'_>,
) -> fmt::Result {
    let counts = report.counts();
    let n = report.regressions.len();
    writeln!(
        out,
        "### [caldera]({}) {}: {}\n",
        links.experiment(),
        code(&cut(one_line(opts.experiment), 100)),
        if n == 0 {
            "no regressions".to_owned()
        } else {
            format!(
                "{} ({} root {})",
                plural(n, "regression", "regressions"),
                report.roots.len(),
                if report.roots.len() == 1 {
                    "cause"
                } else {
                    "causes"
                }
            )
        }
    )?;
    writeln!(
        out,
        "{} → {}, {} tested.\n",
        code(&cut(one_line(opts.start_toolchain), 200)),
        code(&cut(one_line(opts.end_toolchain), 200)),
        plural(report.len(), "crate", "crates")
    )?;
    writeln!(out, "| comparison | crates |\n|---|---:|")?;
    for (c, k) in counts.iter().filter(|&(_, k)| k > 0) {
        writeln!(out, "| [{c}]({}) | {k} |", links.category(c))?;
    }
    writeln!(out, "| **total** | **{}** |\n", counts.total())?;
    if let Some(note) = quiet_note(report, 5) {
        writeln!(out, "{note}\n")?;
    }
    if let Some(note) = confirmation_note(report, None) {
        writeln!(out, "{note}\n")?;
    }
    Ok(())
}

/// The regressions by root cause: each root, its end outcome, how many regressions it explains,
/// and links to its page (both logs), its log diff and the regressions through it.
fn write_roots(out: &mut String, report: &Report, links: &Links<'_>, max: usize) -> fmt::Result {
    let n = report.roots.len();
    if n == 0 {
        return Ok(());
    }
    writeln!(out, "#### Regressions by root cause\n")?;
    writeln!(
        out,
        "| root cause | end outcome | regressions through it | logs |\n|---|---|---:|---|"
    )?;
    for c in report.root_regressions().take(max) {
        let status = match c.confirmation() {
            Some(ConfirmationStatus::Confirmed) => " (confirmed)",
            Some(ConfirmationStatus::Pending) => " (confirming)",
            _ => "",
        };
        let page = links.krate(c.krate());
        write!(
            out,
            "| {}{status} | {} | {} | [end log]({page}#log-end) · [diff]({page}/diff)",
            code(&label(c.krate())),
            code(&cut(c.result().end.to_string(), MAX_OUTCOME_CHARS)),
            c.regressions_through(),
        )?;
        if c.dependents() > 0 {
            write!(out, " · [through it]({})", links.root(c.krate()))?;
        }
        writeln!(out, " |")?;
    }
    more(out, n, max, &links.category(Comparison::Regressed))
}

/// "… and N more, see <link>" after a shortened list, and the blank line ending it.
fn more(out: &mut String, len: usize, max: usize, link: &str) -> fmt::Result {
    if len > max {
        writeln!(out, "\n… and {} more, see {link}", len - max)?;
    }
    writeln!(out)
}

/// The fixed crates by name.
fn write_fixed(out: &mut String, report: &Report, links: &Links<'_>, max: usize) -> fmt::Result {
    // flaky fixes are counted apart
    let fixed = || {
        report.crates().filter(|c| {
            c.comparison() == Comparison::Fixed
                && !matches!(
                    c.confirmation(),
                    Some(ConfirmationStatus::Flaky | ConfirmationStatus::KnownFlaky)
                )
        })
    };
    let n = fixed().count();
    if n == 0 {
        return Ok(());
    }
    let names: Vec<String> = fixed()
        .take(max)
        .map(|c| format!("[{}]({})", code(&label(c.krate())), links.krate(c.krate())))
        .collect();
    writeln!(out, "#### Fixed ({n})\n")?;
    if !names.is_empty() {
        writeln!(out, "{}", names.join(", "))?;
    }
    more(out, n, max, &links.category(Comparison::Fixed))
}

/// What is not counted as a regression: flaky, diagnostics changes, spurious, errors.
fn write_apart(out: &mut String, report: &Report, links: &Links<'_>) -> fmt::Result {
    let counts = report.counts();
    let mut parts = Vec::new();
    if !report.flaky.is_empty() {
        parts.push(format!(
            "{} (a re-run disagreed)",
            plural(report.flaky.len(), "flaky crate", "flaky crates")
        ));
    }
    if !report.diagnostics.is_empty() {
        parts.push(plural(
            report.diagnostics.len(),
            "diagnostics change",
            "diagnostics changes",
        ));
    }
    for c in SPURIOUS_SECTION {
        if counts.get(c) > 0 {
            parts.push(format!("[{} {c}]({})", counts.get(c), links.category(c)));
        }
    }
    if !parts.is_empty() {
        writeln!(out, "Not counted as regressions: {}.\n", parts.join(", "))?;
    }
    Ok(())
}

/// The commands that run the regressions, spurious results and errors again.
fn write_retry(
    out: &mut String,
    report: &Report,
    opts: &PrCommentOptions<'_>,
    links: &Links<'_>,
) -> fmt::Result {
    let retry = report.regressions.len()
        + report.spurious_regressed.len()
        + report.spurious_fixed.len()
        + report.errors.len();
    if retry == 0 {
        return Ok(());
    }
    let api = format!(
        "{}/api/v1/experiments/{}/report/retry.txt",
        opts.dashboard_url.trim_end_matches('/'),
        url_encode(links.experiment)
    );
    let retry_name = format!("{}-retry", one_line(links.experiment));
    writeln!(
        out,
        "<details><summary>Retry {} (regressions, spurious results and errors)</summary>\n",
        plural(retry, "crate", "crates")
    )?;
    writeln!(out, "```sh")?;
    writeln!(
        out,
        "curl -s -H \"Authorization: Bearer $CALDERA_TOKEN\" '{api}' > retry.txt"
    )?;
    writeln!(
        out,
        "caldera crate-list create '{retry_name}' --file retry.txt"
    )?;
    writeln!(
        out,
        "caldera experiment create '{retry_name}' --start '{}' --end '{}' --crates 'list:{retry_name}'",
        one_line(opts.start_toolchain),
        one_line(opts.end_toolchain)
    )?;
    writeln!(out, "caldera experiment start '{retry_name}'")?;
    writeln!(out, "```\n\n</details>")
}
