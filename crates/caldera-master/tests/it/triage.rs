//! Triage marks through a running master: the API (statuses, JSON errors, nothing changed on bad
//! input, audit rows naming the token), the carry-over rule across experiments, the report files
//! and the dashboard.

use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_master::dashboard::fixture;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Setup, TestMaster};

/// The test's master ([`TestMaster`]) and what these tests do with it.
struct Master(TestMaster);

impl std::ops::Deref for Master {
    type Target = TestMaster;
    fn deref(&self) -> &TestMaster {
        &self.0
    }
}

impl Master {
    async fn start() -> Master {
        Master(TestMaster::start(Setup::default()).await)
    }

    async fn experiment(&self, name: &str, crates: &[(&str, Outcome, Outcome)]) {
        fixture::create_with(&self.db.pool, &self.store, name, crates).await;
    }

    /// The triage tables and what triage reads, as one comparable value.
    async fn snapshot(&self) -> Value {
        self.snapshot_of(&["triage_marks", "triage_audit", "experiments", "results"])
            .await
    }

    /// Exports the experiment's report and returns results.json, summary.md and index.html.
    async fn export(&self, name: &str) -> (Value, String, String) {
        let (s, body) = self
            .call(
                Method::POST,
                &format!("/api/v1/experiments/{name}/report"),
                Some(&self.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let file = |f: &'static str| {
            let name = name.to_owned();
            async move {
                self.text(
                    &format!("/api/v1/experiments/{name}/report/{f}"),
                    Some(&self.viewer),
                )
                .await
                .1
            }
        };
        let json = serde_json::from_str(&file("results.json").await).unwrap();
        (json, file("summary.md").await, file("index.html").await)
    }
}

fn ce(codes: &[&str]) -> Outcome {
    Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: codes.iter().map(|c| (*c).to_owned()).collect(),
    })
}

fn tf(tests: &[&str]) -> Outcome {
    Outcome::TestFail {
        failed_tests: tests.iter().map(|c| (*c).to_owned()).collect(),
        reason: None,
    }
}

const PASS: Outcome = Outcome::TestPass;

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: &str, has: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(has), "{message:?} should mention {has:?}");
}

#[tokio::test]
async fn a_mark_follows_the_crate_and_its_cause_until_the_cause_changes() {
    let m = Master::start().await;
    // experiment 1: foo regresses with E0308 (and bar with failing tests)
    m.experiment(
        "e1",
        &[
            ("reg:foo@1.0.0", PASS, ce(&["E0308"])),
            ("reg:bar@1.0.0", PASS, tf(&["b", "a"])),
            ("reg:same@1.0.0", PASS, PASS),
        ],
    )
    .await;
    let body = json!({"kind": "known-issue", "link": "https://github.com/rust-lang/rust/issues/123", "note": "inference change"}).to_string();
    let (s, mark) = m
        .call(
            Method::PUT,
            "/api/v1/experiments/e1/triage/foo",
            Some(&m.operator),
            Some(&body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{mark}");
    assert_eq!(mark["crate_name"], "foo");
    assert_eq!(mark["cause"], "build-fail:compiler-error(E0308)");
    assert_eq!(mark["kind"], "known-issue");
    assert_eq!(mark["created_by"], "operator");
    assert_eq!(mark["crate_id"], "reg:foo@1.0.0");
    // a full crate id works too; the same mark again is 200 and changes nothing
    let (s, _) = m
        .call(
            Method::PUT,
            "/api/v1/experiments/e1/triage/reg%3Afoo%401.0.0",
            Some(&m.admin),
            Some(&body),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // experiment 2: a new version of foo, same cause (codes in another order count the same)
    m.experiment(
        "e2",
        &[
            ("reg:foo@1.1.0", PASS, ce(&["E0308", "E0308"])),
            ("reg:bar@1.0.0", PASS, tf(&["a", "b"])),
        ],
    )
    .await;
    let (s, t) = m
        .call(
            Method::GET,
            "/api/v1/experiments/e2/triage",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    let regressions = t["regressions"].as_array().unwrap();
    assert_eq!(regressions.len(), 2, "{t}");
    assert_eq!(regressions[0]["crate"], "reg:bar@1.0.0");
    assert_eq!(regressions[0]["cause"], "test-fail:tests(a,b)");
    assert!(regressions[0]["mark"].is_null());
    assert_eq!(regressions[1]["crate"], "reg:foo@1.1.0");
    assert_eq!(regressions[1]["mark"]["kind"], "known-issue");
    assert_eq!(regressions[1]["mark"]["experiment"], "e1");

    let (json, summary, index) = m.export("e2").await;
    assert_eq!(
        json["triage"]["reg:foo@1.1.0"]["kind"], "known-issue",
        "{}",
        json["triage"]
    );
    assert_eq!(json["triage"].as_object().unwrap().len(), 1);
    assert_eq!(json["total"], 2, "the report's own fields are still there");
    assert!(summary.contains("## Triage"), "{summary}");
    assert!(
        summary.contains("| `foo 1.1.0` | `build-fail:compiler-error(E0308)` | [known issue](https://github.com/rust-lang/rust/issues/123) | inference change | operator |"),
        "{summary}"
    );
    assert!(
        index.contains("triage-known-issue"),
        "the bundle shows the mark"
    );
    let (s, page) = m.text("/experiments/e2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("badge triage triage-known-issue"), "{page}");
    assert!(page.contains("1 of 2 regressions carry a triage mark"));

    // experiment 3: foo regresses with another error: the mark does not apply
    m.experiment("e3", &[("reg:foo@1.2.0", PASS, ce(&["E0308", "E0599"]))])
        .await;
    let (_, t) = m
        .call(
            Method::GET,
            "/api/v1/experiments/e3/triage",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(
        t["regressions"][0]["cause"],
        "build-fail:compiler-error(E0308,E0599)"
    );
    assert!(t["regressions"][0]["mark"].is_null(), "{t}");
    let (json, summary, index) = m.export("e3").await;
    assert_eq!(json["triage"], json!({}));
    assert!(!summary.contains("## Triage"));
    assert!(!index.contains("triage-known-issue"));
    let (_, page) = m.text("/experiments/e3", None).await;
    assert!(!page.contains("badge triage"));
    let (_, page) = m
        .text("/experiments/e3/crates/reg%3Afoo%401.2.0", None)
        .await;
    assert!(page.contains("Not triaged."), "{page}");
    assert!(
        page.contains("caldera triage mark e3 reg:foo@1.2.0"),
        "{page}"
    );

    // marking it there is a second mark of foo, for the new cause
    let (s, _) = m
        .call(
            Method::PUT,
            "/api/v1/experiments/e3/triage/foo",
            Some(&m.operator),
            Some(r#"{"kind": "expected"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, all) = m
        .call(
            Method::GET,
            "/api/v1/triage?crate=foo",
            Some(&m.viewer),
            None,
        )
        .await;
    let causes: Vec<&str> = all["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["cause"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "build-fail:compiler-error(E0308)",
            "build-fail:compiler-error(E0308,E0599)"
        ]
    );
    // e2 still shows the first one
    let (_, t) = m
        .call(
            Method::GET,
            "/api/v1/experiments/e2/triage",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(t["regressions"][1]["mark"]["kind"], "known-issue");
}

#[tokio::test]
async fn changes_are_audited_with_the_tokens_name() {
    let m = Master::start().await;
    m.experiment("e1", &[("reg:foo@1.0.0", PASS, tf(&["t1"]))])
        .await;
    let path = "/api/v1/experiments/e1/triage/foo";
    let (s, _) = m
        .call(
            Method::PUT,
            path,
            Some(&m.operator),
            Some(r#"{"kind": "ignore", "note": "flaky"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = m
        .call(
            Method::PUT,
            path,
            Some(&m.admin),
            Some(r#"{"kind": "expected"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["created_by"].as_str(), v["updated_by"].as_str()),
        (Some("operator"), Some("admin"))
    );
    let (_, all) = m
        .call(Method::GET, "/api/v1/triage", Some(&m.viewer), None)
        .await;
    let history = all["marks"][0]["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0]["action"].as_str(), history[0]["actor"].as_str()),
        (Some("set"), Some("operator"))
    );
    assert_eq!(history[1]["before"]["kind"], "ignore");
    assert_eq!(history[1]["after"]["kind"], "expected");
    assert_eq!(history[1]["actor"], "admin");

    let (s, v) = m.call(Method::DELETE, path, Some(&m.operator), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, all) = m
        .call(
            Method::GET,
            "/api/v1/triage?crate=foo&limit=2",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(all["marks"], json!([]));
    let audit = all["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 2, "the newest two");
    assert_eq!(audit[1]["action"], "remove");
    assert_eq!(audit[1]["actor"], "operator");
    assert_eq!(audit[1]["before"]["kind"], "expected");
    assert!(audit[1]["after"].is_null());
    assert!(audit[1]["at"].is_string());
    // the rows themselves
    let actors: Vec<(String, String)> =
        sqlx::query_as("SELECT action, actor FROM triage_audit ORDER BY id")
            .fetch_all(&m.db.pool)
            .await
            .unwrap();
    let actors: Vec<(&str, &str)> = actors
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("set", "operator"),
            ("update", "admin"),
            ("remove", "operator")
        ]
    );
}

#[tokio::test]
async fn bad_requests_say_which_field_and_change_nothing() {
    let m = Master::start().await;
    m.experiment(
        "e1",
        &[
            ("reg:foo@1.0.0", PASS, ce(&["E0308"])),
            ("reg:same@1.0.0", PASS, PASS),
            ("reg:fixed@1.0.0", ce(&["E0308"]), PASS),
        ],
    )
    .await;
    // one mark exists, so that changes to it would show
    let (s, _) = m
        .call(
            Method::PUT,
            "/api/v1/experiments/e1/triage/foo",
            Some(&m.operator),
            Some(r#"{"kind": "ignore"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let op = Some(m.operator.as_str());
    let foo = "/api/v1/experiments/e1/triage/foo";
    let good = Some(r#"{"kind": "expected"}"#);
    let mut cases: Vec<(
        Method,
        &str,
        Option<&str>,
        Option<&str>,
        StatusCode,
        &str,
        &str,
    )> = vec![
        (
            Method::PUT,
            foo,
            None,
            good,
            StatusCode::UNAUTHORIZED,
            "authorization",
            "token",
        ),
        (
            Method::PUT,
            foo,
            Some(&m.viewer),
            good,
            StatusCode::FORBIDDEN,
            "authorization",
            "operator",
        ),
        (
            Method::DELETE,
            foo,
            Some(&m.viewer),
            None,
            StatusCode::FORBIDDEN,
            "authorization",
            "operator",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "body",
            "not valid JSON",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"kind": "maybe"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind",
            "unknown mark kind",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"note": "x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind",
            "missing",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"kind": "known-issue"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "link",
            "needs a link",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"kind": "known-issue", "link": "javascript:alert(1)"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "link",
            "https://",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"kind": "ignore", "note": "a\u0000b"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "note",
            "control",
        ),
        (
            Method::PUT,
            foo,
            op,
            Some(r#"{"kind": "ignore", "by": "me"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "by",
            "unknown field",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/nope/triage/foo",
            op,
            good,
            StatusCode::NOT_FOUND,
            "name",
            "nope",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/bar",
            op,
            good,
            StatusCode::NOT_FOUND,
            "crate",
            "not part of",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/reg%3Afoo%409.9.9",
            op,
            good,
            StatusCode::NOT_FOUND,
            "crate",
            "not part of",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/reg%3Afoo",
            op,
            good,
            StatusCode::BAD_REQUEST,
            "crate",
            "VERSION",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/f%20oo",
            op,
            good,
            StatusCode::BAD_REQUEST,
            "crate",
            "crate id",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/same",
            op,
            good,
            StatusCode::CONFLICT,
            "crate",
            "same-test-pass",
        ),
        (
            Method::PUT,
            "/api/v1/experiments/e1/triage/fixed",
            op,
            good,
            StatusCode::CONFLICT,
            "crate",
            "fixed",
        ),
        (
            Method::DELETE,
            "/api/v1/experiments/e1/triage/same",
            op,
            None,
            StatusCode::CONFLICT,
            "crate",
            "only regressions",
        ),
        (
            Method::DELETE,
            "/api/v1/experiments/nope/triage/foo",
            op,
            None,
            StatusCode::NOT_FOUND,
            "name",
            "nope",
        ),
        (
            Method::GET,
            "/api/v1/triage?crate=foo&who=x",
            Some(&m.viewer),
            None,
            StatusCode::BAD_REQUEST,
            "who",
            "unknown query parameter",
        ),
        (
            Method::GET,
            "/api/v1/triage?limit=0",
            Some(&m.viewer),
            None,
            StatusCode::BAD_REQUEST,
            "limit",
            "1 to 1000",
        ),
        (
            Method::GET,
            "/api/v1/triage?crate=",
            Some(&m.viewer),
            None,
            StatusCode::BAD_REQUEST,
            "crate",
            "registry crate name",
        ),
        (
            Method::GET,
            "/api/v1/triage",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "authorization",
            "token",
        ),
        (
            Method::GET,
            "/api/v1/experiments/nope/triage",
            Some(&m.viewer),
            None,
            StatusCode::NOT_FOUND,
            "name",
            "nope",
        ),
    ];
    // two versions of one crate in one experiment: the name alone is ambiguous, the id is not
    m.experiment(
        "e2",
        &[
            ("reg:dup@1.0.0", PASS, ce(&["E0308"])),
            ("reg:dup@2.0.0", PASS, ce(&["E0308"])),
        ],
    )
    .await;
    let before = m.snapshot().await;
    cases.push((
        Method::PUT,
        "/api/v1/experiments/e2/triage/dup",
        op,
        good,
        StatusCode::BAD_REQUEST,
        "crate",
        "reg:dup@1.0.0, reg:dup@2.0.0",
    ));
    for (method, path, token, body, status, field, has) in cases {
        let what = format!("{method} {path} {body:?}");
        let (s, v) = m.call(method, path, token, body).await;
        assert_error(s, &v, status, field, has);
        assert_eq!(m.snapshot().await, before, "{what} changed the database");
    }
    // removing twice: the second time there is no mark (404 on `mark`), and nothing changes
    let (s, _) = m.call(Method::DELETE, foo, op, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let before = m.snapshot().await;
    let (s, v) = m.call(Method::DELETE, foo, op, None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "mark", "no triage mark");
    assert_eq!(m.snapshot().await, before);
}

#[tokio::test]
async fn the_crate_page_shows_the_mark_and_lets_operators_set_it() {
    let m = Master::start().await;
    m.experiment(
        "e1",
        &[
            ("reg:foo@1.0.0", PASS, ce(&["E0308"])),
            ("reg:same@1.0.0", PASS, PASS),
        ],
    )
    .await;
    let page_path = "/experiments/e1/crates/reg%3Afoo%401.0.0";
    // anonymous (open dashboard): the cause and the command, no form
    let (_, page) = m.text(page_path, None).await;
    assert!(page.contains("build-fail:compiler-error(E0308)"));
    assert!(page.contains("caldera triage mark e1 reg:foo@1.0.0"));
    assert!(!page.contains("<form class=\"triage\""));
    // an operator: the form
    let (_, page) = m.text(page_path, Some(&m.operator)).await;
    assert!(page.contains("<form class=\"triage\""), "{page}");
    // a crate that did not regress has no triage section
    let (_, page) = m
        .text(
            "/experiments/e1/crates/reg%3Asame%401.0.0",
            Some(&m.operator),
        )
        .await;
    assert!(!page.contains("id=\"triage\""));

    let post = |token: Option<String>, form: Vec<(&'static str, &'static str)>| {
        let mut req = m
            .http
            .post(format!("{}{page_path}/triage", m.base))
            .form(&form);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let before = m.snapshot().await;
    let (s, _) = post(None, vec![("action", "set"), ("kind", "expected")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = post(
        Some(m.viewer.clone()),
        vec![("action", "set"), ("kind", "expected")],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = post(
        Some(m.operator.clone()),
        vec![("action", "set"), ("kind", "known-issue"), ("link", "")],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("link: a known-issue mark needs a link"),
        "{body}"
    );
    assert_eq!(m.snapshot().await, before);

    let (s, _) = post(
        Some(m.operator.clone()),
        vec![
            ("action", "set"),
            ("kind", "known-issue"),
            ("link", "https://example.com/i/1"),
            ("note", "<b>tracked</b>"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, page) = m.text(page_path, None).await;
    assert!(page.contains("badge triage triage-known-issue"), "{page}");
    assert!(page.contains("href=\"https://example.com/i/1\""));
    assert!(
        page.contains("&lt;b&gt;tracked&lt;/b&gt;"),
        "the note is escaped"
    );
    assert!(page.contains("operator"));
    let (s, _) = post(Some(m.operator.clone()), vec![("action", "remove")]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (_, page) = m.text(page_path, None).await;
    assert!(page.contains("Not triaged."));
}
