//! Triage marks in reports: which stored mark applies to each regression of a report (same crate
//! name, same cause; see [`caldera_core::triage`]), and how the exports and the dashboard show it.

use std::collections::HashMap;
use std::fmt::Write as _;

use caldera_core::crates::CrateId;
use caldera_core::outcome::{Comparison, Outcome};
use caldera_core::triage::{MarkKind, cause, crate_key};
use caldera_db::triage::{self, Mark};
use caldera_db::{DbError, PgPool};
use caldera_report::Report;
use maud::{Markup, html};

/// The marks that apply to the regressions of `report`, by crate id.
pub async fn marks_for_report(
    pool: &PgPool,
    report: &Report,
) -> Result<HashMap<CrateId, Mark>, DbError> {
    marks_for(
        pool,
        report
            .crates()
            .filter(|c| c.comparison() == Comparison::Regressed)
            .map(|c| (c.krate(), &c.result().end)),
    )
    .await
}

/// The marks that apply to these regressions (crate and end outcome), by crate id.
pub async fn marks_for<'a>(
    pool: &PgPool,
    regressions: impl Iterator<Item = (&'a CrateId, &'a Outcome)>,
) -> Result<HashMap<CrateId, Mark>, DbError> {
    let keyed: Vec<(&CrateId, (String, String))> = regressions
        .map(|(id, end)| (id, (crate_key(id), cause(end))))
        .collect();
    let pairs: Vec<(String, String)> = keyed.iter().map(|(_, k)| k.clone()).collect();
    let found = triage::applicable(pool, &pairs).await?;
    Ok(keyed
        .into_iter()
        .filter_map(|(id, key)| found.get(&key).map(|m| (id.clone(), m.clone())))
        .collect())
}

/// The words for a mark kind: `expected`, `known issue`, `ignored`.
pub fn kind_label(kind: MarkKind) -> &'static str {
    match kind {
        MarkKind::Expected => "expected",
        MarkKind::KnownIssue => "known issue",
        MarkKind::Ignore => "ignored",
    }
}

/// A small badge naming the mark, linking to its issue when it has one.
pub fn badge(mark: &Mark) -> Markup {
    let title = if mark.note.is_empty() {
        format!("marked by {} ({})", mark.updated_by, mark.cause)
    } else {
        format!("{} — {} ({})", mark.note, mark.updated_by, mark.cause)
    };
    let class = format!("badge triage triage-{}", mark.kind.as_str());
    html! {
        @if let Some(link) = &mark.link {
            a class=(class) href=(link) title=(title) rel="noopener noreferrer" { (kind_label(mark.kind)) }
        } @else {
            span class=(class) title=(title) { (kind_label(mark.kind)) }
        }
    }
}

/// Most marks listed in the Markdown summary.
const MAX_SUMMARY_MARKS: usize = 50;
/// Longest note quoted in the Markdown summary, in characters.
const MAX_SUMMARY_NOTE: usize = 120;

/// The "Triage" section of `summary.md`: the regressions that carry a mark, with the mark. Bounded
/// (at most 50 rows, notes cut at 120 characters); empty when no regression is marked.
pub fn summary_section(report: &Report, marks: &HashMap<CrateId, Mark>) -> String {
    if marks.is_empty() {
        return String::new();
    }
    let mut rows: Vec<(&CrateId, &Mark)> = report
        .crates()
        .filter_map(|c| marks.get_key_value(c.krate()))
        .collect();
    rows.sort_by_key(|(id, _)| id.to_string());
    let n_regressed = report.counts().get(Comparison::Regressed);
    let mut out = String::new();
    let _ = writeln!(out, "## Triage\n");
    let _ = writeln!(
        out,
        "{} of {} regressions carry a triage mark (set on an earlier or this experiment for the \
         same crate and cause).\n",
        rows.len(),
        n_regressed
    );
    let _ = writeln!(
        out,
        "| crate | cause | mark | note | by |\n|---|---|---|---|---|"
    );
    for (id, m) in rows.iter().take(MAX_SUMMARY_MARKS) {
        let mark = match &m.link {
            Some(link) => format!("[{}]({})", kind_label(m.kind), md_url(link)),
            None => kind_label(m.kind).to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            md_code(&crate_label(id)),
            md_code(&cut(&m.cause, 60)),
            mark,
            md_text(&cut(&m.note, MAX_SUMMARY_NOTE)),
            md_text(&m.updated_by),
        );
    }
    if rows.len() > MAX_SUMMARY_MARKS {
        let _ = writeln!(out, "\n… and {} more.", rows.len() - MAX_SUMMARY_MARKS);
    }
    out.push('\n');
    out
}

fn crate_label(id: &CrateId) -> String {
    match id {
        CrateId::Registry { name, version, .. } => format!("{name} {version}"),
        other => other.to_string(),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Inline code that cannot be closed early (backticks replaced) nor break the table.
fn md_code(s: &str) -> String {
    format!("`{}`", s.replace('`', "'").replace('|', "\\|"))
}

/// Text in a table cell: Markdown and HTML metacharacters escaped.
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '['
                | ']'
                | '<'
                | '>'
                | '|'
                | '#'
                | '!'
                | '('
                | ')'
                | '~'
                | '&'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A validated link in Markdown link syntax: parentheses and spaces percent-encoded.
fn md_url(s: &str) -> String {
    s.replace('(', "%28")
        .replace(')', "%29")
        .replace(' ', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_escapes() {
        assert_eq!(md_text("a|b <x> *y*"), "a\\|b \\<x\\> \\*y\\*");
        assert_eq!(md_code("a`b|c"), "`a'b\\|c`");
        assert_eq!(md_url("https://x/(a)"), "https://x/%28a%29");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
