//! The experiment page's "Crates by category": every comparison with crates, the first of them
//! by name (linked to their pages), and a link to the paginated list of all of them.

use caldera_core::outcome::Comparison;
use caldera_report::{CrateReport, Report};
use maud::{Markup, html};

use super::filters::Filters;
use crate::dashboard::views::{comparison_badge, crate_href, crate_label};

/// Crates named per category.
const NAMED: usize = 12;

/// Whether a crate is in the report's lists: regressions of quiet crates, diagnostics changes and
/// flaky crates are named apart (under the headline and in their own sections).
fn listed(c: CrateReport<'_>) -> bool {
    use caldera_core::confirm::ConfirmationStatus as S;
    !matches!(c.confirmation(), Some(S::Flaky | S::KnownFlaky))
}

/// The first [`NAMED`] crates of each comparison, in report order (the regressions as the
/// report lists them, roots first), from one pass over the report that stops once every
/// comparison with crates has its names.
fn first_by_category(report: &Report) -> Vec<(Comparison, usize, Vec<CrateReport<'_>>)> {
    let counts = report.counts();
    let mut out: Vec<(Comparison, usize, Vec<CrateReport<'_>>)> = counts
        .iter()
        .map(|(c, n)| match c {
            Comparison::Regressed => (c, report.regressions().len(), Vec::new()),
            _ => (c, n, Vec::new()),
        })
        .filter(|&(_, n, _)| n > 0)
        .collect();
    if let Some((_, _, names)) = out.iter_mut().find(|(c, _, _)| *c == Comparison::Regressed) {
        names.extend(report.regressions().take(NAMED));
    }
    let mut missing: usize = out
        .iter()
        .map(|(_, n, names)| (*n).min(NAMED) - names.len())
        .sum();
    for c in report.crates() {
        if missing == 0 {
            break;
        }
        if c.comparison() == Comparison::Regressed || !listed(c) {
            continue;
        }
        if let Some((_, _, names)) = out.iter_mut().find(|(k, _, _)| *k == c.comparison())
            && names.len() < NAMED
        {
            names.push(c);
            missing -= 1;
        }
    }
    out
}

pub(super) fn section(report: &Report, experiment: &str) -> Markup {
    let lists = first_by_category(report);
    html! {
        @if !lists.is_empty() {
            h2 #by-category { "Crates by category" }
            div.lists {
                @for (c, n, names) in &lists {
                    h3 id=(format!("list-{}", c.as_str())) { (comparison_badge(*c)) " " (n) " " (if *n == 1 { "crate" } else { "crates" }) }
                    p {
                        @for (i, k) in names.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href=(crate_href(experiment, k.krate())) { (crate_label(k.krate())) }
                            @if matches!(c, Comparison::Regressed | Comparison::Fixed) {
                                " (" a href=(format!("{}/diff", crate_href(experiment, k.krate()))) aria-label=(format!("what changed in {}", crate_label(k.krate()))) { "diff" } ")"
                            }
                        }
                        @if *n > names.len() { " … " }
                        " " a href=(Filters { category: Some(*c), ..Filters::default() }.href(experiment, 1)) { "all " (n) " →" }
                    }
                }
            }
        }
    }
}
