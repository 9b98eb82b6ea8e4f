//! What people triaging regressions read, over HTTP through a real master: the log diff page,
//! a crate's history across experiments, the crates of every category by name on the experiment
//! page, and the pull-request comment (API, dashboard page, static script).

use caldera_core::outcome::Outcome;
use caldera_master::dashboard::{DashboardConfig, fixture};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::common::{Setup, TestMaster};

async fn master() -> TestMaster {
    TestMaster::start(Setup {
        dashboard: DashboardConfig::default(),
        fixture: Some("beta-fx"),
        ..Setup::default()
    })
    .await
}

async fn ok_page(m: &TestMaster, path: &str) -> String {
    let (status, body) = m.text(path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// The part of `page` from `from` to the next `to` (or the end).
fn between<'a>(page: &'a str, from: &str, to: &str) -> &'a str {
    let at = page
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not in {page}"));
    let rest = &page[at..];
    &rest[..rest[from.len()..]
        .find(to)
        .map_or(rest.len(), |k| k + from.len())]
}

const ROOT_PAGE: &str = "/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0";

#[tokio::test]
async fn the_diff_page_shows_what_changed_and_not_what_always_differs() {
    let m = master().await;
    let page = ok_page(&m, &format!("{ROOT_PAGE}/diff")).await;
    assert!(page.contains("What changed: root-a 1.0.0"), "{page}");
    let first = between(&page, "id=\"section-1\"", "id=\"section-2\"");
    let added: Vec<&str> = first
        .split("<tr class=\"add\"")
        .skip(1)
        .map(|r| &r[..r.find("</tr>").unwrap()])
        .collect();
    assert!(
        added.iter().any(|r| r.contains(fixture::NEW_ERROR)),
        "{first}"
    );
    // the Compiling lines differ only in their temporary paths, the Finished lines in their
    // durations: no difference
    for row in page.split("<tr class=\"").skip(1) {
        let row = &row[..row.find("</tr>").unwrap()];
        if row.starts_with("add") || row.starts_with("del") {
            assert!(!row.contains("Compiling"), "{row}");
            assert!(!row.contains(".tmpAAA111"), "{row}");
        }
    }
    // lines only the start log has are shown as removed, with their start line number
    let removed = between(&page, "<tr class=\"del\"", "</tr>");
    assert!(removed.contains("an old, known failure"), "{removed}");
    // the crate page links to the diff, the regressed and fixed rows of the experiment page too
    let krate = ok_page(&m, ROOT_PAGE).await;
    assert!(
        krate.contains(&format!("id=\"diff-link\" href=\"{ROOT_PAGE}/diff\"")),
        "{krate}"
    );
    let list = ok_page(&m, "/experiments/beta-fx?category=regressed").await;
    for c in ["root-a%401.0.0", "dep-b%402.0.0", "tests-i%401.0.0"] {
        assert!(list.contains(&format!("crates/reg%3A{c}/diff")), "{c}");
    }
    let fixed = ok_page(&m, "/experiments/beta-fx?category=fixed").await;
    assert!(
        fixed.contains("crates/reg%3Afixed-f%401.0.0/diff"),
        "{fixed}"
    );
    // an identical pair of logs
    let same = ok_page(&m, "/experiments/beta-fx/crates/reg%3Asame-g%401.0.0/diff").await;
    assert!(same.contains("id=\"identical\""), "{same}");
    // what cannot be diffed
    for (path, status, message) in [
        (
            "/experiments/beta-fx/crates/reg%3Anope%401.0.0/diff",
            StatusCode::NOT_FOUND,
            "crate \"reg:nope@1.0.0\" is not in experiment \"beta-fx\"",
        ),
        (
            "/experiments/beta-fx/crates/not%20an%20id/diff",
            StatusCode::NOT_FOUND,
            "is not a crate id",
        ),
        (
            "/experiments/nope/crates/reg%3Aroot-a%401.0.0/diff",
            StatusCode::NOT_FOUND,
            "not found",
        ),
    ] {
        let (got, body) = m.text(path, None).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body.contains(&message.replace('"', "&quot;")),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn a_crate_page_lists_its_history_across_experiments() {
    let m = master().await;
    // the same crates again, and another version of root-a, and a crate seen once
    fixture::create(&m.db.pool, &m.store, "beta-fx2").await;
    fixture::create_with(
        &m.db.pool,
        &m.store,
        "newer",
        &[
            ("reg:root-a@2.0.0", Outcome::TestPass, Outcome::TestPass),
            ("reg:lonely@0.1.0", Outcome::TestPass, Outcome::TestPass),
        ],
    )
    .await;
    let page = ok_page(&m, "/experiments/beta-fx2/crates/reg%3Aroot-a%401.0.0").await;
    let table = between(&page, "id=\"history-table\"", "</table>");
    let rows: Vec<&str> = table.split("<tr").skip(2).collect();
    assert_eq!(rows.len(), 3, "{table}");
    // newest first: the other version, then this page, then the first experiment
    assert!(rows[0].contains("/experiments/newer/crates/reg%3Aroot-a%402.0.0"));
    assert!(rows[0].contains("root-a 2.0.0") && rows[0].contains("same-test-pass"));
    assert!(rows[1].contains("aria-current=\"page\"") && rows[1].contains("beta-fx2"));
    assert!(rows[2].contains("/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0"));
    for r in &rows[1..] {
        assert!(r.contains("build-fail:compiler-error(E0308)") && r.contains("regressed"));
        assert!(r.contains("stable") && r.contains("nightly"), "{r}");
    }
    assert!(!page.contains("id=\"history-none\""));
    let lonely = ok_page(&m, "/experiments/newer/crates/reg%3Alonely%400.1.0").await;
    assert!(lonely.contains("id=\"history-none\""), "{lonely}");
    // links out: crates.io and docs.rs of this version
    assert!(page.contains("https://crates.io/crates/root-a/1.0.0"));
    assert!(page.contains("https://docs.rs/root-a/1.0.0"));
}

#[tokio::test]
async fn every_category_is_listed_by_name() {
    let m = master().await;
    let page = ok_page(&m, "/experiments/beta-fx").await;
    let lists = between(&page, "id=\"by-category\"", "</div>");
    for (category, krate) in [
        ("regressed", "root-a%401.0.0"),
        ("fixed", "fixed-f%401.0.0"),
        ("spurious-regressed", "flaky-e%401.0.0"),
        ("error", "infra-h%401.0.0"),
        ("same-test-pass", "same-g%401.0.0"),
    ] {
        let list = between(lists, &format!("id=\"list-{category}\""), "</p>");
        assert!(
            list.contains(&format!("/experiments/beta-fx/crates/reg%3A{krate}\"")),
            "{category}: {list}"
        );
        assert!(
            list.contains(&format!("/experiments/beta-fx?category={category}\"")),
            "{category}: {list}"
        );
    }
    assert!(
        !lists.contains("id=\"list-broken\""),
        "empty categories are left out"
    );
    // the full lists link out and say how to retry
    let list = ok_page(&m, "/experiments/beta-fx?category=spurious-regressed").await;
    assert!(
        list.contains("https://crates.io/crates/flaky-e/1.0.0"),
        "{list}"
    );
    assert!(
        list.contains("/experiments/beta-fx/report/retry.txt"),
        "{list}"
    );
}

#[tokio::test]
async fn the_pull_request_comment_from_the_api_and_the_page() {
    let m = master().await;
    let api = "/api/v1/experiments/beta-fx/pr-comment";
    let resp = m
        .http
        .get(format!("{}{api}?base_url=https://caldera.example/", m.base))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/markdown; charset=utf-8");
    let md = resp.text().await.unwrap();
    let exp = "https://caldera.example/experiments/beta-fx";
    assert!(
        md.starts_with(&format!(
            "### [caldera]({exp}) `beta-fx`: 5 regressions (3 root causes)\n"
        )),
        "{md}"
    );
    assert!(
        md.contains("`stable` → `nightly`, 9 crates tested."),
        "{md}"
    );
    let root = format!("{exp}/crates/reg%3Aroot-a%401.0.0");
    assert!(
        md.contains(&format!(
            "| `root-a 1.0.0` | `build-fail:compiler-error(E0308)` | 3 | [end log]({root}#log-end) · [diff]({root}/diff) · [through it]({exp}?root=reg%3Aroot-a%401.0.0"
        )),
        "{md}"
    );
    assert!(md.contains("#### Fixed (1)"), "{md}");
    assert!(md.contains("Retry 7 crates"), "{md}");
    assert!(md.len() <= 65_536);
    // the links it gives open on this master
    let (status, _) = m
        .text(
            "/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0/diff",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // without base_url: the address the caller used
    let (status, md) = m.text(api, Some(&m.viewer)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        md.contains(&format!("[caldera]({}/experiments/beta-fx)", m.base)),
        "{md}"
    );

    // refused: who may not read, bad input, unknown experiment
    for (query, token, status, field, message) in [
        (
            "",
            None,
            StatusCode::UNAUTHORIZED,
            None,
            "missing bearer token",
        ),
        (
            "?base_url=ftp://x",
            Some(&m.viewer),
            StatusCode::BAD_REQUEST,
            Some("base_url"),
            "base_url must start with http:// or https://",
        ),
        (
            "?base_url=https://x/)%5Bp%5D(javascript:1",
            Some(&m.viewer),
            StatusCode::BAD_REQUEST,
            Some("base_url"),
            "base_url must be a plain URL",
        ),
        (
            "?limit=3",
            Some(&m.viewer),
            StatusCode::BAD_REQUEST,
            Some("limit"),
            "unknown query parameter \"limit\"",
        ),
    ] {
        let before = m
            .snapshot_of(&["experiments", "results", "triage_marks"])
            .await;
        let (got, body) = m
            .call(
                reqwest::Method::GET,
                &format!("{api}{query}"),
                token.map(String::as_str),
                None,
            )
            .await;
        assert_eq!(got, status, "{query}: {body}");
        let err = &body["error"];
        assert!(
            err["message"].as_str().unwrap().contains(message),
            "{query}: {body}"
        );
        if let Some(field) = field {
            assert_eq!(err["field"], field, "{query}: {body}");
        }
        assert_eq!(
            m.snapshot_of(&["experiments", "results", "triage_marks"])
                .await,
            before
        );
    }
    let (got, body) = m
        .call(
            reqwest::Method::GET,
            "/api/v1/experiments/nope/pr-comment",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(got, StatusCode::NOT_FOUND, "{body}");

    // the dashboard page: the text escaped in a text box, the copy button, the static script
    let page = ok_page(&m, "/experiments/beta-fx/pr-comment").await;
    assert!(page.contains("data-copy=\"pr-comment\""), "{page}");
    let area = between(&page, "<textarea", "</textarea>");
    assert!(area.contains("#### Regressions by root cause"), "{area}");
    assert!(area.contains("`root-a 1.0.0`"), "{area}");
    assert!(!area.contains("<script"), "{area}");
    assert!(
        page.contains("<script src=\"/assets/dashboard.js\" defer>"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "no inline script: {page}");
    let resp = m
        .http
        .get(format!("{}/assets/dashboard.js", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = resp.text().await.unwrap();
    assert!(
        js.contains("data-copy") && js.contains("data-filter-rows"),
        "{js}"
    );
    let experiment = ok_page(&m, "/experiments/beta-fx").await;
    assert!(
        experiment.contains("href=\"/experiments/beta-fx/pr-comment\""),
        "{experiment}"
    );
}
