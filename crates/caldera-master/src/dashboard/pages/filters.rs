//! The experiment page's filters (`category`, `code`, `q`, `root`, `page`) and the crates they
//! select.

use std::collections::HashMap;

use caldera_core::crates::CrateId;
use caldera_core::outcome::{BuildFailReason, Comparison, Outcome};
use caldera_report::CrateReport;

use crate::dashboard::PageError;
use crate::dashboard::cache::Snapshot;
use crate::dashboard::views::{experiment_href, query_encode};

/// The experiment page's filters.
#[derive(Debug, Default, Clone)]
pub(super) struct Filters {
    pub(super) category: Option<Comparison>,
    pub(super) code: Option<String>,
    /// lower-cased
    pub(super) q: Option<String>,
    pub(super) root: Option<CrateId>,
    pub(super) page: usize,
}

impl Filters {
    pub(super) fn parse(query: &HashMap<String, String>) -> Result<Filters, PageError> {
        let get = |k: &str| query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let category = get("category")
            .map(|c| {
                c.parse::<Comparison>().map_err(|_| {
                    PageError::bad_request(format!(
                        "unknown category {c:?}; expected one of {}",
                        Comparison::ALL
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .transpose()?;
        let root = get("root")
            .map(|r| {
                r.parse::<CrateId>()
                    .map_err(|e| PageError::bad_request(format!("root: {e}")))
            })
            .transpose()?;
        let page = match get("page") {
            None => 1,
            Some(p) => p.parse::<usize>().ok().filter(|&p| p >= 1).ok_or_else(|| {
                PageError::bad_request(format!("page must be a positive integer, got {p:?}"))
            })?,
        };
        Ok(Filters {
            category,
            code: get("code").map(str::to_owned),
            q: get("q").map(str::to_ascii_lowercase),
            root,
            page,
        })
    }

    pub(super) fn any(&self) -> bool {
        self.category.is_some() || self.code.is_some() || self.q.is_some() || self.root.is_some()
    }

    /// The query string of these filters on another page.
    pub(super) fn href(&self, experiment: &str, page: usize) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.category {
            parts.push(format!("category={}", c.as_str()));
        }
        if let Some(c) = &self.code {
            parts.push(format!("code={}", query_encode(c)));
        }
        if let Some(q) = &self.q {
            parts.push(format!("q={}", query_encode(q)));
        }
        if let Some(r) = &self.root {
            parts.push(format!("root={}", query_encode(&r.to_string())));
        }
        if page > 1 {
            parts.push(format!("page={page}"));
        }
        let base = experiment_href(experiment);
        if parts.is_empty() {
            base
        } else {
            format!("{base}?{}", parts.join("&"))
        }
    }
}

/// Does the end outcome belong to the error group `code` (an error code or a kind)?
fn matches_code(o: &Outcome, code: &str) -> bool {
    match o {
        Outcome::BuildFail(BuildFailReason::CompilerError { codes }) => {
            codes.iter().any(|c| c == code) || (codes.is_empty() && code == "compiler-error")
        }
        Outcome::BuildFail(r) => r.kind() == code,
        other => other.kind() == code,
    }
}

/// ASCII-case-insensitive substring test; `needle` is lower-case.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

fn name_matches(id: &CrateId, q: &str) -> bool {
    match id {
        CrateId::Registry { name, version, .. } => {
            contains_ci(name, q)
                || (q.as_bytes()[0].is_ascii_digit() && version.to_string().contains(q))
        }
        CrateId::Git { url, rev } => contains_ci(url, q) || contains_ci(rev, q),
        CrateId::Local { path } => contains_ci(path, q),
    }
}

/// The crates the filters select, in a meaningful order: regressions roots first, spurious and
/// error lists by id, everything else in input order.
pub(super) fn select<'a>(snap: &'a Snapshot, f: &Filters) -> Vec<CrateReport<'a>> {
    let report = &snap.report;
    let base: Box<dyn Iterator<Item = CrateReport<'a>> + 'a> = if let Some(root) = &f.root {
        let root_view = report.get(root);
        let deps = root_view
            .and_then(|r| snap.dependents.get(r.krate()))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        Box::new(
            root_view
                .into_iter()
                .chain(deps.iter().filter_map(|d| report.get(d))),
        )
    } else {
        match f.category {
            Some(Comparison::Regressed) => Box::new(report.regressions()),
            Some(Comparison::SpuriousRegressed) => Box::new(report.spurious_regressed()),
            Some(Comparison::SpuriousFixed) => Box::new(report.spurious_fixed()),
            Some(Comparison::Spurious) => Box::new(report.spurious_both()),
            Some(Comparison::Error) => Box::new(report.errors()),
            _ => Box::new(report.crates()),
        }
    };
    base.filter(|c| f.category.is_none_or(|cat| c.comparison() == cat))
        .filter(|c| {
            f.code
                .as_deref()
                .is_none_or(|code| matches_code(&c.result().end, code))
        })
        .filter(|c| f.q.as_deref().is_none_or(|q| name_matches(c.krate(), q)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_groups() {
        let ce = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into(), "E0599".into()],
        });
        assert!(matches_code(&ce, "E0599"));
        assert!(!matches_code(&ce, "E0277"));
        assert!(!matches_code(&ce, "compiler-error"));
        let bare = Outcome::BuildFail(BuildFailReason::CompilerError { codes: vec![] });
        assert!(matches_code(&bare, "compiler-error"));
        assert!(matches_code(
            &Outcome::BuildFail(BuildFailReason::Ice),
            "ice"
        ));
        assert!(matches_code(
            &Outcome::TestFail {
                failed_tests: vec![],
                reason: None,
            },
            "test-fail"
        ));
        assert!(!matches_code(&Outcome::TestPass, "ice"));
    }

    #[test]
    fn names_match_case_insensitively() {
        let id: CrateId = "reg:Serde_Json@1.0.3".parse().unwrap();
        assert!(name_matches(&id, "serde_j"));
        assert!(name_matches(&id, "1.0.3"));
        assert!(!name_matches(&id, "tokio"));
        assert!(contains_ci("abc", ""));
    }

    #[test]
    fn filters_parse_and_round_trip() {
        let q: HashMap<String, String> = [
            ("category", "regressed"),
            ("code", "E0308"),
            ("q", "Foo"),
            ("page", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let f = Filters::parse(&q).unwrap();
        assert_eq!(f.category, Some(Comparison::Regressed));
        assert_eq!(f.q.as_deref(), Some("foo"));
        assert_eq!(
            f.href("e", 3),
            "/experiments/e?category=regressed&code=E0308&q=foo&page=3"
        );
        let bad: HashMap<String, String> = [("category".to_owned(), "worse".to_owned())].into();
        assert_eq!(
            Filters::parse(&bad).unwrap_err().status,
            axum::http::StatusCode::BAD_REQUEST
        );
        let bad: HashMap<String, String> = [("page".to_owned(), "0".to_owned())].into();
        assert!(Filters::parse(&bad).is_err());
    }
}
