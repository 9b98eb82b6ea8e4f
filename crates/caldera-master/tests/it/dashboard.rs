//! The dashboard pages and the report exports over HTTP (real TCP, real Postgres, local object
//! storage), checked against the content of a fixture experiment with regressions
//! (`caldera_master::dashboard::fixture`).

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use caldera_core::selection::CrateSelection;
use caldera_master::dashboard::{DashboardAuth, DashboardConfig, fixture};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, LOCATION, SET_COOKIE};
use serde_json::Value;

use crate::common::{Setup, TestMaster};

/// The test's master ([`TestMaster`]) over the fixture experiment, and what these tests read
/// from it.
struct Master {
    inner: TestMaster,
    name: String,
}

impl std::ops::Deref for Master {
    type Target = TestMaster;
    fn deref(&self) -> &TestMaster {
        &self.inner
    }
}

impl Master {
    async fn start(config: DashboardConfig) -> Master {
        let name = "beta-fx";
        let inner = TestMaster::start(Setup {
            dashboard: config,
            fixture: Some(name),
            ..Setup::default()
        })
        .await;
        Master {
            inner,
            name: name.to_owned(),
        }
    }

    async fn page(&self, path: &str) -> (StatusCode, String) {
        self.text(path, None).await
    }

    async fn ok_page(&self, path: &str) -> String {
        let (status, body) = self.page(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    async fn export(&self) -> Value {
        let resp = self
            .http
            .post(format!(
                "{}/api/v1/experiments/{}/report",
                self.base, self.name
            ))
            .bearer_auth(&self.operator)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn file(&self, file: &str) -> reqwest::Response {
        self.http
            .get(format!(
                "{}/api/v1/experiments/{}/report/{file}",
                self.base, self.name
            ))
            .bearer_auth(&self.viewer)
            .send()
            .await
            .unwrap()
    }

    async fn file_bytes(&self, file: &str) -> Vec<u8> {
        let resp = self.file(file).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        resp.bytes().await.unwrap().to_vec()
    }
}

/// The `<table id="crates">` of a page (the filtered list).
fn crates_table(page: &str) -> &str {
    let t = &page[page.find("id=\"crates\"").expect("a crate table")..];
    &t[..t.find("</table>").unwrap()]
}

fn short(id: &str) -> &str {
    id.strip_prefix("reg:").unwrap()
}

/// Percent-decodes a URL path (for checking the bundle's relative links against the archive).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A crate the experiment marks `quiet` is in no list of regressions — the regressed filter, error
/// groups, summary.md, retry.txt — and is named apart under the headline; it still counts.
#[tokio::test]
async fn quiet_crates_are_named_apart_and_listed_nowhere() {
    let m = Master::start(DashboardConfig::default()).await;
    // before anything reads the report (a spec cannot be edited after the start through the API)
    sqlx::query(
        "UPDATE experiments SET spec = jsonb_set(spec, '{overrides}', '{\"ice-d\": {\"quiet\": true}}')
         WHERE name = $1",
    )
    .bind(&m.name)
    .execute(&m.db.pool)
    .await
    .unwrap();
    let quiet = short(fixture::OTHER_ROOTS[0]);
    assert_eq!(quiet, "ice-d@0.3.0");

    let page = m.ok_page("/experiments/beta-fx").await;
    assert!(
        page.contains("4 regressions, 3 of them through <code>root-a 1.0.0</code>."),
        "{page}"
    );
    assert!(
        page.contains(
            "1 regression of crates marked quiet is not listed: <code>ice-d 0.3.0</code>."
        ),
        "{page}"
    );
    let regressed = m.ok_page("/experiments/beta-fx?category=regressed").await;
    let table = crates_table(&regressed);
    assert!(!table.contains("ice-d"), "{table}");
    assert!(table.contains("tests-i"), "{table}");

    let summary = m.export().await;
    assert_eq!(summary["regressions"], 5, "still counted: {summary}");
    let md = String::from_utf8(m.file_bytes("summary.md").await).unwrap();
    assert!(
        md.contains("1 regression of crates marked quiet is not listed: `ice-d 0.3.0`."),
        "{md}"
    );
    assert!(md.contains("| regressed | 5 |"), "{md}");
    assert!(!md.contains("| `ice` |"), "no error group for it: {md}");
    let retry = String::from_utf8(m.file_bytes("retry.txt").await).unwrap();
    assert!(!retry.lines().any(|l| l == quiet), "{retry}");
    assert_eq!(retry.lines().count(), fixture::retry().len() - 1, "{retry}");
    let json: Value = serde_json::from_slice(&m.file_bytes("results.json").await).unwrap();
    assert_eq!(
        json["quiet_regressions"],
        serde_json::json!([fixture::OTHER_ROOTS[0]])
    );
    let html = String::from_utf8(m.file_bytes("index.html").await).unwrap();
    assert!(
        html.contains("1 regression of crates marked quiet is not listed"),
        "{html}"
    );
}

#[tokio::test]
async fn exports_have_the_report_content() {
    let m = Master::start(DashboardConfig::default()).await;

    // Not generated yet.
    let resp = m.file("summary.md").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("POST /api/v1/experiments/beta-fx/report")
    );

    let summary = m.export().await;
    assert_eq!(summary["crates"], 9, "{summary}");
    assert_eq!(summary["regressions"], 5, "{summary}");
    assert_eq!(
        summary["logs"], 16,
        "8 crates that changed, 2 logs each: {summary}"
    );
    assert_eq!(summary["missing_logs"], 0, "{summary}");
    let written: Vec<&str> = summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(written, caldera_master::export::FILES);

    // The listing shows them all.
    let resp = m
        .http
        .get(format!("{}/api/v1/experiments/beta-fx/report", m.base))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    let listing: Value = resp.json().await.unwrap();
    assert_eq!(listing["files"].as_array().unwrap().len(), 5, "{listing}");

    // summary.md: headline and counts table.
    let md = String::from_utf8(m.file_bytes("summary.md").await).unwrap();
    assert!(
        md.contains("**5 regressions, 3 of them through `root-a 1.0.0`.**"),
        "{md}"
    );
    assert!(md.contains("| comparison | crates |"), "{md}");
    for line in [
        "| regressed | 5 |",
        "| fixed | 1 |",
        "| spurious-regressed | 1 |",
        "| error | 1 |",
        "| same-test-pass | 1 |",
        "| **total** | **9** |",
    ] {
        assert!(md.contains(line), "{line} in {md}");
    }
    assert!(md.contains("`stable` (start) → `nightly` (end)"), "{md}");

    // retry.txt: exactly the regressions and the spurious and error crates, as crate ids.
    let retry = String::from_utf8(m.file_bytes("retry.txt").await).unwrap();
    let lines: Vec<&str> = retry.lines().collect();
    let want: Vec<&str> = fixture::retry().into_iter().collect();
    assert_eq!(lines, want);
    // accepted back as a crate selection and as a crate list
    let selection: CrateSelection = lines.join(",").parse().unwrap();
    assert!(matches!(&selection, CrateSelection::List(specs) if specs.len() == 7));
    let resp = m
        .http
        .post(format!("{}/api/v1/crate-lists", m.base))
        .bearer_auth(&m.operator)
        .json(&serde_json::json!({"name": "retry-beta-fx", "crates": lines}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "{}",
        resp.text().await.unwrap()
    );

    // results.json: every crate, both outcomes, comparison, log keys, root causes.
    let plain = m.file_bytes("results.json").await;
    let json: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(json["total"], 9);
    assert_eq!(json["counts"]["regressed"], 5);
    assert_eq!(
        json["lockfile"], "shipped",
        "the experiment's lockfile policy"
    );
    let crates = json["crates"].as_array().unwrap();
    let ids: BTreeSet<&str> = crates
        .iter()
        .map(|c| c["crate"].as_str().unwrap())
        .collect();
    assert_eq!(ids, fixture::crates().into_iter().collect::<BTreeSet<_>>());
    let by_id = |id: &str| crates.iter().find(|c| c["crate"] == id).unwrap();
    let root = by_id(fixture::ROOT);
    assert_eq!(root["comparison"], "regressed");
    assert_eq!(root["root"], true);
    assert_eq!(root["end"]["kind"], "build-fail");
    assert!(root["start_log"].as_str().unwrap().ends_with("/log.zst"));
    assert!(root["end_log"].as_str().unwrap().contains("nightly"));
    for dep in fixture::THROUGH_ROOT {
        assert_eq!(
            by_id(dep)["root_causes"],
            serde_json::json!([fixture::ROOT])
        );
    }
    assert_eq!(by_id(fixture::SPURIOUS)["comparison"], "spurious-regressed");
    assert_eq!(json["regressions"][0], fixture::ROOT);
    // The same bytes zstd-encoded for clients that accept zstd.
    let resp = m
        .http
        .get(format!(
            "{}/api/v1/experiments/beta-fx/report/results.json",
            m.base
        ))
        .bearer_auth(&m.viewer)
        .header(ACCEPT_ENCODING, "gzip, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()[CONTENT_ENCODING], "zstd");
    let compressed = resp.bytes().await.unwrap();
    assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), plain);

    // index.html: a standalone page listing the regressed crates with their comparison and logs.
    let html = String::from_utf8(m.file_bytes("index.html").await).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{}", &html[..100]);
    assert!(html.trim_end().ends_with("</html>"));
    assert!(html.contains("5 regressions, 3 of them through <code>root-a 1.0.0</code>"));
    assert!(
        html.contains("<th>lockfiles</th><td>shipped</td>"),
        "{html}"
    );
    let row_start = html
        .find("<tr id=\"c-reg%3Aroot-a%401.0.0\">")
        .expect("root-a row");
    let row = &html[row_start..row_start + html[row_start..].find("</tr>").unwrap()];
    assert!(row.contains("regressed"), "{row}");
    assert!(row.contains("test-pass"), "{row}");
    assert!(row.contains("build-fail:compiler-error(E0308)"), "{row}");
    assert!(row.contains("root: 3 through it"), "{row}");
    assert!(
        row.contains("href=\"logs/reg%253Aroot-a@1.0.0/end.log\""),
        "{row}"
    );
    let dep = &html[html
        .find("<tr id=\"c-reg%3Adep-b%402.0.0\">")
        .expect("dep-b row")..];
    assert!(
        dep[..dep.find("</tr>").unwrap()]
            .contains("through <a href=\"#c-reg%3Aroot-a%401.0.0\">root-a 1.0.0</a>")
    );
    assert!(
        !html.contains("c-reg%3Asame-g"),
        "unchanged crates are not listed"
    );
    assert!(
        html.contains("tests::&lt;script&gt;alert('xss')&lt;/script&gt;")
            || html.contains("tests::&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;")
    );
    assert!(!html.contains("<script>alert"), "a test name is escaped");

    // logs.tar.zst: both logs of every changed crate, with their content; the bundle's log links
    // resolve against the extracted archive.
    let archive = m.file_bytes("logs.tar.zst").await;
    let tar_bytes = zstd::decode_all(&archive[..]).unwrap();
    let mut tar = tar::Archive::new(&tar_bytes[..]);
    let mut files = std::collections::BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        files.insert(path, text);
    }
    assert_eq!(files.len(), 16, "{:?}", files.keys());
    let root_end = &files["logs/reg%3Aroot-a@1.0.0/end.log"];
    assert!(
        root_end.contains("\x1b[1m\x1b[31merror[E0308]"),
        "{root_end}"
    );
    assert!(files["logs/reg%3Aroot-a@1.0.0/start.log"].contains("test result: ok"));
    assert!(!files.keys().any(|k| k.contains("same-g")));
    let mut links = 0;
    for href in html.split("href=\"logs/").skip(1) {
        let href = &href[..href.find('"').unwrap()];
        let path = format!("logs/{}", url_decode(href));
        assert!(
            files.contains_key(&path),
            "link {href} -> {path} not in the archive"
        );
        links += 1;
    }
    assert_eq!(links, 16);

    // Errors: unknown file and experiment, roles.
    assert_eq!(m.file("secrets.txt").await.status(), StatusCode::NOT_FOUND);
    let resp = m
        .http
        .get(format!(
            "{}/api/v1/experiments/nope/report/summary.md",
            m.base
        ))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = m
        .http
        .post(format!("{}/api/v1/experiments/beta-fx/report", m.base))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = m
        .http
        .get(format!(
            "{}/api/v1/experiments/beta-fx/report/summary.md",
            m.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The dashboard serves the same files.
    let (status, md2) = m.page("/experiments/beta-fx/report/summary.md").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(md2, md);

    // The OpenAPI document has the routes.
    let resp = m
        .http
        .get(format!("{}/api/v1/openapi.json", m.base))
        .send()
        .await
        .unwrap();
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/experiments/{name}/report/{file}"]["get"].is_object());
    assert!(doc["paths"]["/api/v1/experiments/{name}/report"]["post"].is_object());
}

#[tokio::test]
async fn dashboard_pages_show_experiments_regressions_and_logs() {
    let m = Master::start(DashboardConfig::default()).await;
    // Two queued experiments for the queue page, in priority order.
    for (name, priority) in [("low-prio", 1), ("high-prio", 5)] {
        let resp = m
            .http
            .post(format!("{}/api/v1/experiments", m.base))
            .bearer_auth(&m.operator)
            .json(&serde_json::json!({"name": name, "start": "stable", "end": "nightly", "priority": priority,
                "crates": {"kind": "list", "crates": ["serde@1.0.0"]}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    // Home: experiments with status, toolchains, mode and progress.
    let home = m.ok_page("/").await;
    assert!(
        home.contains("<a href=\"/experiments/beta-fx\">beta-fx</a>"),
        "{home}"
    );
    let row = &home[home.find("/experiments/beta-fx\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    for want in [
        "completed",
        "<code>stable</code>",
        "<code>nightly</code>",
        "build-and-test",
        "9 / 9 (100.0%)",
        "role=\"progressbar\"",
    ] {
        assert!(row.contains(want), "{want} in {row}");
    }
    assert!(home.contains("high-prio") && home.contains("queued"));

    // Experiment: counts, headline, root causes, error groups, spurious results.
    let page = m.ok_page("/experiments/beta-fx").await;
    assert!(
        page.contains("5 regressions, 3 of them through <code>root-a 1.0.0</code>."),
        "{page}"
    );
    let counts = &page[page.find("id=\"counts\"").unwrap()..];
    let counts = &counts[..counts.find("</table>").unwrap()];
    assert!(
        counts.contains("href=\"/experiments/beta-fx?category=regressed\""),
        "{counts}"
    );
    assert!(counts.contains("<td class=\"num\">5</td>"), "{counts}");
    assert!(counts.contains("<th class=\"num\">9</th>"), "{counts}");
    let roots = &page[page.find("<ol class=\"roots\"").unwrap()..];
    let roots = &roots[..roots.find("</ol>").unwrap()];
    let first = &roots[..roots.find("</li>").unwrap()];
    assert!(
        first.contains("root-a 1.0.0") && first.contains("3 regressions"),
        "{first}"
    );
    assert!(
        first.contains("href=\"/experiments/beta-fx/crates/reg%3Adep-b%402.0.0\""),
        "{first}"
    );
    assert!(first.contains("dep-c 1.1.0"), "{first}");
    assert!(roots.contains("ice-d 0.3.0") && roots.contains("tests-i 1.0.0"));
    assert!(
        roots.find("root-a").unwrap() < roots.find("ice-d").unwrap(),
        "root crates first, biggest first"
    );
    assert!(page.contains("<code>E0308</code>") && page.contains("<code>ice</code>"));
    assert!(page.contains("oom 1"), "spurious reasons");
    assert!(!page.contains("<script>alert"), "escaped");

    // Filters by category, error code, crate name and root; a bad category is refused.
    let fixed = m.ok_page("/experiments/beta-fx?category=fixed").await;
    assert!(fixed.contains("1 matching crate"), "{fixed}");
    assert!(
        crates_table(&fixed).contains("fixed-f 1.0.0") && !crates_table(&fixed).contains("root-a")
    );
    let e0308 = m
        .ok_page("/experiments/beta-fx?category=regressed&code=E0308")
        .await;
    assert!(
        e0308.contains("1 matching crate") && crates_table(&e0308).contains(">root-a 1.0.0<"),
        "{e0308}"
    );
    let named = m.ok_page("/experiments/beta-fx?q=DEP").await;
    let table = crates_table(&named);
    assert!(
        named.contains("2 matching crates")
            && table.contains(">dep-b 2.0.0<")
            && table.contains(">dep-c 1.1.0<"),
        "{named}"
    );
    let through = m
        .ok_page("/experiments/beta-fx?root=reg%3Aroot-a%401.0.0")
        .await;
    assert!(through.contains("3 matching crates"), "{through}");
    assert!(
        through.contains(
            "through <a href=\"/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0\">root-a 1.0.0</a>"
        ),
        "{through}"
    );
    let (status, bad) = m.page("/experiments/beta-fx?category=worse").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("unknown category"), "{bad}");
    assert_eq!(m.page("/experiments/nope").await.0, StatusCode::NOT_FOUND);

    // Crate: both runs side by side, both logs with colours, the new error marked.
    let krate = m
        .ok_page("/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0")
        .await;
    let runs = &krate[krate.find("id=\"runs\"").unwrap()..];
    let runs = &runs[..runs.find("</table>").unwrap()];
    for want in [
        "<code>test-pass</code>",
        "<code>build-fail:compiler-error(E0308)</code>",
        "error codes: E0308",
        "build: ",
        "test: ",
        "peak memory",
        " MiB",
        "fixture-worker-",
    ] {
        assert!(runs.contains(want), "{want} in {runs}");
    }
    assert!(krate.contains("id=\"log-start\"") && krate.contains("id=\"log-end\""));
    assert!(krate.contains("<span style="), "ANSI colours become HTML");
    assert!(!krate.contains('\x1b'));
    let mark = &krate[krate
        .find("<mark id=\"first-new-error\">")
        .expect("the new error is marked")..];
    let mark = &mark[..mark.find("</mark>").unwrap()];
    assert!(mark.contains("mismatched types"), "{mark}");
    assert!(krate.contains("First error only in the end log"));
    assert!(krate.contains(fixture::NEW_ERROR));
    assert!(krate.contains("3 regressions through it"), "{krate}");
    // A regression through root-a links to it.
    let dep = m
        .ok_page("/experiments/beta-fx/crates/reg%3Adep-b%402.0.0")
        .await;
    assert!(dep.contains("Regressed because a dependency did: <a href=\"/experiments/beta-fx/crates/reg%3Aroot-a%401.0.0\">root-a 1.0.0</a>"), "{dep}");
    // XSS: a test name and a log line with script tags are escaped.
    let xss = m
        .ok_page("/experiments/beta-fx/crates/reg%3Atests-i%401.0.0")
        .await;
    assert!(!xss.contains("<script>alert"), "{xss}");
    assert!(
        xss.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "log escaped: {xss}"
    );
    assert!(
        xss.contains("tests::&lt;script&gt;alert("),
        "test name escaped"
    );
    assert_eq!(
        m.page("/experiments/beta-fx/crates/reg%3Anope%401.0.0")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        m.page("/experiments/beta-fx/crates/not-an-id").await.0,
        StatusCode::NOT_FOUND
    );

    // Workers and queue.
    let workers = m.ok_page("/workers").await;
    assert!(workers.contains("fixture-worker-"), "{workers}");
    assert!(
        workers.contains("<td class=\"num\">4</td>"),
        "slots: {workers}"
    );
    let queue = m.ok_page("/queue").await;
    let (hi, lo) = (
        queue.find("high-prio").unwrap(),
        queue.find("low-prio").unwrap(),
    );
    assert!(hi < lo, "higher priority first: {queue}");
    assert!(
        !queue.contains(">beta-fx<"),
        "a completed experiment is not queued"
    );
    assert!(queue.contains("0 jobs queued in 2 experiments"), "{queue}");
}

#[tokio::test]
async fn token_mode_requires_a_reading_token() {
    let m = Master::start(DashboardConfig {
        auth: DashboardAuth::Token,
        ..Default::default()
    })
    .await;
    let (status, _) = m.page("/experiments/beta-fx").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let resp = m
        .http
        .get(format!("{}/experiments/beta-fx?q=a", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[LOCATION],
        "/login?next=%2Fexperiments%2Fbeta-fx%3Fq%3Da"
    );
    let login = m.ok_page("/login?next=/queue").await;
    assert!(login.contains("name=\"token\""));

    let post = |token: String| {
        let m = &m;
        async move {
            m.http
                .post(format!("{}/login", m.base))
                .form(&[("token", token.as_str()), ("next", "/queue")])
                .send()
                .await
                .unwrap()
        }
    };
    for bad in ["nope".to_owned(), m.worker.clone()] {
        let resp = post(bad).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert!(
            resp.headers()[LOCATION]
                .to_str()
                .unwrap()
                .starts_with("/login?error=1")
        );
        assert!(resp.headers().get(SET_COOKIE).is_none());
    }
    let resp = post(m.viewer.clone()).await;
    assert_eq!(resp.headers()[LOCATION], "/queue");
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let resp = m
        .http
        .get(format!("{}/experiments/beta-fx", m.base))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = m
        .http
        .get(format!("{}/workers", m.base))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = m
        .http
        .get(format!("{}/workers", m.base))
        .bearer_auth(&m.worker)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_report_cache_follows_new_results() {
    let m = Master::start(DashboardConfig::default()).await;
    let cache = caldera_master::dashboard::cache::ReportCache::new(
        caldera_master::dashboard::cache::CacheConfig {
            revalidate: Duration::ZERO,
            min_rebuild: Duration::ZERO,
            max_crates: 1_000,
        },
    );
    let id = caldera_db::experiments::get(&m.db.pool, &m.name)
        .await
        .unwrap()
        .id;
    let first = cache.get(&m.db.pool, id).await.unwrap();
    assert_eq!(first.report.len(), 9);
    assert_eq!(first.results, 18);
    // Unchanged results: the same snapshot.
    let again = cache.get(&m.db.pool, id).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    // A new crate (with its job) and results on both sides.
    sqlx::query("INSERT INTO crates (crate_id, kind, name, version) VALUES ('reg:late-z@1.0.0', 'registry', 'late-z', '1.0.0')")
        .execute(&m.db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (experiment_id, crate_id, state) SELECT $1, id, 'done' FROM crates WHERE crate_id = 'reg:late-z@1.0.0'",
    )
    .bind(id)
    .execute(&m.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO results (experiment_id, crate_id, toolchain, outcome, outcome_kind)
         SELECT $1, c.id, t, '{\"kind\":\"test-pass\"}', 'test-pass' FROM crates c, unnest(ARRAY['start', 'end']) AS t
         WHERE c.crate_id = 'reg:late-z@1.0.0'",
    )
    .bind(id)
    .execute(&m.db.pool)
    .await
    .unwrap();
    // The stale snapshot is served while the rebuild runs; then the new one.
    let t0 = std::time::Instant::now();
    loop {
        let s = cache.get(&m.db.pool, id).await.unwrap();
        if s.report.len() == 10 {
            assert_eq!(s.results, 20);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the cache never saw the new results"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The crate budget evicts other experiments' snapshots, never the one just built.
    assert_eq!(cache.crates(), 10);
}

#[tokio::test]
async fn results_queries_answer_for_the_fixture() {
    use caldera_db::results;
    let m = Master::start(DashboardConfig::default()).await;
    let id = caldera_db::experiments::get(&m.db.pool, &m.name)
        .await
        .unwrap()
        .id;
    assert_eq!(results::count(&m.db.pool, id).await.unwrap(), 18);

    let counts = results::outcome_counts(&m.db.pool, id).await.unwrap();
    let kind = |side: &[(String, i64)], k: &str| {
        side.iter()
            .find(|(kind, _)| kind == k)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(kind(&counts.start, "test-pass"), 7);
    assert_eq!(kind(&counts.start, "error"), 1);
    assert_eq!(kind(&counts.end, "build-fail"), 5);
    assert_eq!(kind(&counts.end, "test-fail"), 1);

    let now = chrono::Utc::now();
    let progress = results::progress(&m.db.pool, &[id], now - chrono::Duration::minutes(10))
        .await
        .unwrap();
    let p = &progress[&id];
    assert_eq!((p.done, p.queued, p.running, p.total()), (9, 0, 0, 9));
    assert_eq!(p.finished_in_window, 9);
    let old = results::progress(&m.db.pool, &[id], now + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(old[&id].finished_in_window, 0);

    let buckets = results::finished_per_bucket(
        &m.db.pool,
        id,
        now - chrono::Duration::minutes(10),
        now + chrono::Duration::seconds(30),
        60,
    )
    .await
    .unwrap();
    assert_eq!(buckets.len(), 11);
    assert_eq!(buckets.iter().sum::<i64>(), 9);
    assert_eq!(buckets[..9].iter().sum::<i64>(), 0, "{buckets:?}");

    let detail = results::crate_detail(&m.db.pool, id, fixture::ROOT)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.job_state.as_deref(), Some("done"));
    let (start, end) = (detail.start.unwrap(), detail.end.unwrap());
    assert_eq!(start.steps.len(), 2);
    assert_eq!(end.steps.len(), 1);
    assert!(start.peak_memory_bytes.unwrap() > 300 << 20);
    assert!(
        end.log_key
            .unwrap()
            .starts_with("experiments/beta-fx/nightly/")
    );
    assert!(
        results::crate_detail(&m.db.pool, id, "reg:nope@1.0.0")
            .await
            .unwrap()
            .is_none()
    );

    let input = results::report_input(&m.db.pool, id, false).await.unwrap();
    assert_eq!(input.len(), 9);
    assert!(
        input
            .iter()
            .all(|c| c.start_log.is_none() && c.end_log.is_none())
    );
    let input = results::report_input(&m.db.pool, id, true).await.unwrap();
    let ids: Vec<String> = input.iter().map(|c| c.krate.to_string()).collect();
    assert_eq!(ids, fixture::crates(), "in the order crates were added");
    assert!(
        input
            .iter()
            .all(|c| c.start_log.is_some() && c.end_log.is_some())
    );

    assert!(results::queue(&m.db.pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_page_carries_the_security_headers() {
    let m = Master::start(DashboardConfig::default()).await;
    let name = m.name.clone();
    for path in [
        "/".to_owned(),
        format!("/experiments/{name}"),
        format!("/experiments/{name}/crates/reg:nope@1.0.0"),
        "/workers".to_owned(),
        "/login".to_owned(),
    ] {
        let resp = m
            .http
            .get(format!("{}{path}", m.base))
            .send()
            .await
            .unwrap();
        for (header, value) in caldera_master::edge::DASHBOARD_HEADERS {
            assert_eq!(
                resp.headers().get(header).map(|v| v.to_str().unwrap()),
                Some(value),
                "{path} ({})",
                resp.status()
            );
        }
    }
}
