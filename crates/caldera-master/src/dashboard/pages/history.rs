//! The history section of a crate's page: its outcomes in every experiment that ran it (every
//! version, for a registry crate), with confirmation re-runs, linking to each experiment's page
//! of the crate.

use caldera_core::crates::CrateId;
use caldera_core::outcome::compare;
use caldera_db::history::{self, HISTORY_LIMIT, HistoryEntry};
use caldera_db::{DbError, PgPool};
use maud::{Markup, html};

use crate::dashboard::views::{self, comparison_badge, crate_label, experiment_href, path_encode};

/// The history of the crate `id` (stored as `stored`).
pub(super) async fn load(
    pool: &PgPool,
    id: &CrateId,
    stored: &str,
) -> Result<Vec<HistoryEntry>, DbError> {
    let name = match id {
        CrateId::Registry { name, .. } => Some(name.as_str()),
        _ => None,
    };
    history::crate_history(pool, stored, name).await
}

/// The table; the row of the experiment shown (`current`, same crate id) is marked.
pub(super) fn section(entries: &[HistoryEntry], current: &str, stored: &str) -> Markup {
    html! {
        h2 #history { "History" }
        @if entries.iter().all(|h| h.experiment == current && h.crate_id == stored) {
            p.small #history-none { "No other experiment ran this crate" @if stored.starts_with("reg:") { " (any version)" } "." }
        }
        @if !entries.is_empty() {
            p.small { "Every experiment that ran this crate"
                @if stored.starts_with("reg:") { ", any version" }
                ", newest first"
                @if entries.len() as i64 >= HISTORY_LIMIT { " (the latest " (HISTORY_LIMIT) ")" }
                ". Re-runs are the confirmation runs of a regression or fix." }
            table #history-table {
                thead { tr { th { "experiment" } th { "crate" } th { "toolchains" } th { "start" } th { "end" } th { "comparison" } th.num { "re-runs" } th { "when" } } }
                tbody {
                    @for h in entries { (row(h, current, stored)) }
                }
            }
        }
    }
}

fn row(h: &HistoryEntry, current: &str, stored: &str) -> Markup {
    let here = h.experiment == current && h.crate_id == stored;
    let label = h
        .crate_id
        .parse::<CrateId>()
        .map(|id| crate_label(&id))
        .unwrap_or_else(|_| h.crate_id.clone());
    let href = format!(
        "{}/crates/{}",
        experiment_href(&h.experiment),
        path_encode(&h.crate_id)
    );
    let outcome = |o: &Option<caldera_core::outcome::Outcome>| match o {
        Some(o) => html! { code { (o.to_string()) } },
        None => html! { span.muted { "—" } },
    };
    html! {
        tr class=[here.then_some("current")] aria-current=[here.then_some("page")] {
            td { a href=(href) { (h.experiment) } @if here { " " span.badge.same { "this page" } } " " span.small { (h.status) } }
            td { (label) }
            td.small { code { (h.start_toolchain.to_string()) } " → " code { (h.end_toolchain.to_string()) } }
            td { (outcome(&h.start)) }
            td { (outcome(&h.end)) }
            td { @if let (Some(s), Some(e)) = (&h.start, &h.end) { (comparison_badge(compare(s, e))) } }
            td.num { @if h.reruns > 0 { (h.reruns) @if h.reruns_differing > 0 { " (" (h.reruns_differing) " differed)" } } }
            td.small { (views::timestamp(h.created_at)) }
        }
    }
}
