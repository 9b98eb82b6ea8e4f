//! The HTTP API through a running master (real TCP, real Postgres).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Setup, TestMaster};

/// The test's master ([`TestMaster`]) and what these tests read from it.
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

    /// Everything an API call could change, as one comparable value.
    async fn snapshot(&self) -> Value {
        self.snapshot_of(&[
            "experiments",
            "crate_lists",
            "crate_list_entries",
            "jobs",
            "results",
        ])
        .await
    }
}

const VALID: &str = r#"{"name":"stable-vs-nightly","start":"stable","end":"nightly","mode":"build-and-test","crates":"serde@1.0.219,rand@0.8.5"}"#;

fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: StatusCode,
    want_field: &str,
    message_has: &str,
) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["field"], want_field, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(message_has),
        "message {message:?} should mention {message_has:?}"
    );
    assert!(body["error"]["code"].is_string(), "{body}");
}

#[tokio::test]
async fn create_returns_201_and_lists_it() {
    let m = Master::start().await;
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(VALID),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "stable-vs-nightly");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["mode"], "build-and-test");

    let (status, list) = m
        .call(Method::GET, "/api/v1/experiments", Some(&m.viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["name"], "stable-vs-nightly");

    let (status, one) = m
        .call(
            Method::GET,
            "/api/v1/experiments/stable-vs-nightly",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], body["id"]);
    assert_eq!(one["lockfile"], "shipped", "the default lockfile policy");

    // the lockfile policy is kept as given
    let mut fresh: Value = serde_json::from_str(VALID).unwrap();
    fresh["name"] = json!("fresh-lockfiles");
    fresh["lockfile"] = json!("fresh");
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(&fresh.to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["lockfile"], "fresh");
}

/// Each bad request gets the right status and a message naming the field, and changes nothing.
#[tokio::test]
async fn rejected_creates_change_nothing() {
    let m = Master::start().await;
    // a pre-existing experiment, so "duplicate name" has something to collide with
    let (status, _) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.admin),
            Some(VALID),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = m.snapshot().await;

    let with = |key: &str, value: Value| {
        let mut v: Value = serde_json::from_str(VALID).unwrap();
        v["name"] = json!("other");
        v[key] = value;
        v.to_string()
    };
    let cases: Vec<(&str, Option<&str>, String, StatusCode, &str, &str)> = vec![
        (
            "invalid toolchain",
            Some(&m.operator),
            with("start", json!("nightlyy")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "start",
            "nightlyy",
        ),
        (
            "unknown mode",
            Some(&m.operator),
            with("mode", json!("fuzz")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "mode",
            "fuzz",
        ),
        (
            "unknown lockfile policy",
            Some(&m.operator),
            with("lockfile", json!("newest")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "lockfile",
            "newest",
        ),
        (
            "same toolchains",
            Some(&m.operator),
            with("end", json!("stable")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "end",
            "",
        ),
        (
            "unknown field",
            Some(&m.operator),
            with("colour", json!("red")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
            "colour",
        ),
        (
            "bad name",
            Some(&m.operator),
            with("name", json!("Not A Slug")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
            "",
        ),
        (
            "unknown crate list",
            Some(&m.operator),
            with("crates", json!("list:nope")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "crates",
            "nope",
        ),
        (
            "not json",
            Some(&m.operator),
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "body",
            "JSON",
        ),
        (
            "duplicate name",
            Some(&m.operator),
            VALID.into(),
            StatusCode::CONFLICT,
            "name",
            "stable-vs-nightly",
        ),
        (
            "missing token",
            None,
            with("priority", json!(1)),
            StatusCode::UNAUTHORIZED,
            "authorization",
            "bearer",
        ),
        (
            "unknown token",
            Some("cldr_nope"),
            with("priority", json!(1)),
            StatusCode::UNAUTHORIZED,
            "authorization",
            "unknown",
        ),
        (
            "viewer token",
            Some(&m.viewer),
            with("priority", json!(1)),
            StatusCode::FORBIDDEN,
            "authorization",
            "viewer",
        ),
        (
            "worker token",
            Some(&m.worker),
            with("priority", json!(1)),
            StatusCode::FORBIDDEN,
            "authorization",
            "worker",
        ),
    ];
    for (what, token, body, status_want, field, message_has) in cases {
        let (status, resp) = m
            .call(Method::POST, "/api/v1/experiments", token, Some(&body))
            .await;
        println!("{what}: {status} {resp}");
        assert_error(status, &resp, status_want, field, message_has);
        assert_eq!(m.snapshot().await, before, "{what} changed the database");
    }
}

#[tokio::test]
async fn worker_and_missing_tokens_cannot_read() {
    let m = Master::start().await;
    let (status, body) = m
        .call(Method::GET, "/api/v1/experiments", Some(&m.worker), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "authorization",
        "worker",
    );
    let (status, body) = m.call(Method::GET, "/api/v1/experiments", None, None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authorization",
        "bearer",
    );
    let (status, body) = m
        .call(Method::GET, "/api/v1/experiments", Some("Basic abc"), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "authorization", "");
}

#[tokio::test]
async fn list_filters_paginates_and_validates_query() {
    let m = Master::start().await;
    for name in ["a1", "a2", "a3"] {
        let body = VALID.replace("stable-vs-nightly", name);
        assert_eq!(
            m.call(
                Method::POST,
                "/api/v1/experiments",
                Some(&m.operator),
                Some(&body)
            )
            .await
            .0,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        m.call(
            Method::POST,
            "/api/v1/experiments/a2/start",
            Some(&m.operator),
            None
        )
        .await
        .0,
        StatusCode::OK
    );

    let (_, page) = m
        .call(
            Method::GET,
            "/api/v1/experiments?limit=2&offset=0",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(3), 2)
    );
    let (_, page) = m
        .call(
            Method::GET,
            "/api/v1/experiments?limit=2&offset=2",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["name"], "a1");
    let (_, page) = m
        .call(
            Method::GET,
            "/api/v1/experiments?status=running",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["name"], "a2");

    for (query, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("offset=-1", "offset"),
        ("sort=name", "sort"),
    ] {
        let (status, body) = m
            .call(
                Method::GET,
                &format!("/api/v1/experiments?{query}"),
                Some(&m.viewer),
                None,
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, field, "");
    }
}

#[tokio::test]
async fn edit_only_while_queued() {
    let m = Master::start().await;
    m.call(
        Method::POST,
        "/api/v1/experiments",
        Some(&m.operator),
        Some(VALID),
    )
    .await;
    let path = "/api/v1/experiments/stable-vs-nightly";
    let (status, body) = m
        .call(
            Method::PATCH,
            path,
            Some(&m.operator),
            Some(r#"{"mode":"check-only","priority":3}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["mode"].as_str(), body["priority"].as_i64()),
        (Some("check-only"), Some(3))
    );

    let before = m.snapshot().await;
    for (body, status_want, field) in [
        (
            r#"{"name":"renamed"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            r#"{"priority":5000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "priority",
        ),
        (
            r#"{"end":"stable"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "end",
        ),
    ] {
        let (status, resp) = m
            .call(Method::PATCH, path, Some(&m.operator), Some(body))
            .await;
        assert_error(status, &resp, status_want, field, "");
        assert_eq!(m.snapshot().await, before, "{body} changed the database");
    }
    let (status, resp) = m
        .call(
            Method::PATCH,
            path,
            Some(&m.viewer),
            Some(r#"{"priority":1}"#),
        )
        .await;
    assert_error(
        status,
        &resp,
        StatusCode::FORBIDDEN,
        "authorization",
        "viewer",
    );

    m.call(
        Method::POST,
        &format!("{path}/start"),
        Some(&m.operator),
        None,
    )
    .await;
    let before = m.snapshot().await;
    let (status, resp) = m
        .call(
            Method::PATCH,
            path,
            Some(&m.operator),
            Some(r#"{"priority":1}"#),
        )
        .await;
    assert_error(status, &resp, StatusCode::CONFLICT, "status", "running");
    assert_eq!(m.snapshot().await, before);
    let (status, resp) = m
        .call(
            Method::PATCH,
            "/api/v1/experiments/nope",
            Some(&m.operator),
            Some(r#"{"priority":1}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
}

#[tokio::test]
async fn lifecycle_actions_and_delete() {
    let m = Master::start().await;
    m.call(
        Method::POST,
        "/api/v1/experiments",
        Some(&m.operator),
        Some(VALID),
    )
    .await;
    let path = "/api/v1/experiments/stable-vs-nightly";
    let m = &m;
    let step = |verb: &'static str| async move {
        m.call(
            Method::POST,
            &format!("{path}/{verb}"),
            Some(&m.operator),
            None,
        )
        .await
    };

    let (status, body) = step("pause").await;
    assert_error(status, &body, StatusCode::CONFLICT, "status", "queued");
    let (_, body) = m.call(Method::GET, path, Some(&m.viewer), None).await;
    assert_eq!(
        body["progress"],
        json!({"queued": 0, "running": 0, "done": 0, "error": 0, "cancelled": 0, "total": 0}),
        "no jobs before the start: {body}"
    );
    for (verb, want) in [
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
    ] {
        let (status, body) = step(verb).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some(want)),
            "{verb}: {body}"
        );
    }
    let (_, body) = m.call(Method::GET, path, Some(&m.viewer), None).await;
    assert_eq!(
        body["progress"],
        json!({"queued": 2, "running": 0, "done": 0, "error": 0, "cancelled": 0, "total": 2}),
        "one queued job per crate: {body}"
    );
    let before = m.snapshot().await;
    let (status, body) = m.call(Method::DELETE, path, Some(&m.operator), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "status", "abort");
    assert_eq!(m.snapshot().await, before);
    let (status, body) = step("abort").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("aborted"))
    );
    let (status, body) = step("start").await;
    assert_error(status, &body, StatusCode::CONFLICT, "status", "aborted");

    let (status, _) = m.call(Method::DELETE, path, Some(&m.viewer), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = m.call(Method::DELETE, path, Some(&m.operator), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = m.call(Method::GET, path, Some(&m.viewer), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not-found");
}

#[tokio::test]
async fn crate_lists_crud_and_validation() {
    let m = Master::start().await;
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/crate-lists",
            Some(&m.operator),
            Some(r#"{"name":"small","crates":["serde","rand@0.8.5"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["crates"], json!(["serde", "rand@0.8.5"]));

    let before = m.snapshot().await;
    for (body, status_want, field) in [
        (
            r#"{"name":"small","crates":["serde"]}"#,
            StatusCode::CONFLICT,
            "name",
        ),
        (
            r#"{"name":"Bad Name","crates":["serde"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            r#"{"name":"empty","crates":[]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "crates",
        ),
        (
            r#"{"name":"dup","crates":["serde","serde"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "crates[1]",
        ),
        (
            r#"{"name":"bad","crates":["serde","not a crate!"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "crates[1]",
        ),
        (
            r#"{"name":"x","crates":["serde"],"extra":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "extra",
        ),
    ] {
        let (status, resp) = m
            .call(
                Method::POST,
                "/api/v1/crate-lists",
                Some(&m.operator),
                Some(body),
            )
            .await;
        assert_error(status, &resp, status_want, field, "");
        assert_eq!(m.snapshot().await, before, "{body} changed the database");
    }
    let (status, resp) = m
        .call(
            Method::POST,
            "/api/v1/crate-lists",
            Some(&m.viewer),
            Some(r#"{"name":"v","crates":["serde"]}"#),
        )
        .await;
    assert_error(status, &resp, StatusCode::FORBIDDEN, "authorization", "");

    let (_, all) = m
        .call(Method::GET, "/api/v1/crate-lists", Some(&m.viewer), None)
        .await;
    assert_eq!(all[0]["name"], "small");
    assert_eq!(all[0]["len"], 2);
    let (status, one) = m
        .call(
            Method::GET,
            "/api/v1/crate-lists/small",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(
        (status, &one["crates"]),
        (StatusCode::OK, &json!(["serde", "rand@0.8.5"]))
    );

    // an experiment over the list; the list cannot go while the experiment is queued
    let exp = VALID.replace(r#""serde@1.0.219,rand@0.8.5""#, r#""list:small""#);
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(&exp),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = m
        .call(
            Method::DELETE,
            "/api/v1/crate-lists/small",
            Some(&m.operator),
            None,
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "name",
        "stable-vs-nightly",
    );
    m.call(
        Method::DELETE,
        "/api/v1/experiments/stable-vs-nightly",
        Some(&m.operator),
        None,
    )
    .await;
    let (status, _) = m
        .call(
            Method::DELETE,
            "/api/v1/crate-lists/small",
            Some(&m.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = m
        .call(
            Method::GET,
            "/api/v1/crate-lists/small",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn healthz_and_openapi_document() {
    let m = Master::start().await;
    let (status, body) = m.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str(), body["database"].as_str()),
        (StatusCode::OK, Some("ok"), Some("ok"))
    );

    let (status, doc) = m
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/experiments",
        "/api/v1/experiments/{name}",
        "/api/v1/experiments/{name}/start",
        "/api/v1/experiments/{name}/abort",
        "/api/v1/crate-lists",
        "/api/v1/crate-lists/{name}",
        "/healthz",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    assert!(doc["paths"]["/api/v1/experiments"]["post"]["requestBody"].is_object());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in ["ExperimentSpec", "ExperimentView", "ErrorBody", "Mode"] {
        assert!(schemas.contains_key(s), "OpenAPI lacks schema {s}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let (status, body) = m
        .call(Method::GET, "/api/v1/nope", Some(&m.viewer), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not-found");
}

#[tokio::test]
async fn skipped_and_broken_crates_are_settled_at_the_start_without_running() {
    let m = Master::start().await;
    let spec = r#"{"name":"ov","start":"stable","end":"nightly","crates":"fnv@1.0.7,itoa@1.0.11,hex@0.4.3",
        "overrides":{"fnv":{"skip":true},"itoa":{"broken":"needs a GPU"}}}"#;
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(spec),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments/ov/start",
            Some(&m.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = m
        .call(Method::GET, "/api/v1/experiments/ov", Some(&m.viewer), None)
        .await;
    assert_eq!(body["status"], "running", "hex still has to run: {body}");
    assert_eq!(
        body["progress"],
        json!({"queued": 1, "running": 0, "done": 2, "error": 0, "cancelled": 0, "total": 3}),
        "{body}"
    );
    let rows: Vec<(String, String, String, Value)> = sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.outcome_kind, r.outcome FROM results r JOIN crates c ON c.id = r.crate_id ORDER BY 1, 2",
    )
    .fetch_all(&m.db.pool)
    .await
    .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|(c, t, k, _)| (c.clone(), t.clone(), k.clone()))
        .collect();
    let want = [
        ("reg:fnv@1.0.7", "end", "skipped"),
        ("reg:fnv@1.0.7", "start", "skipped"),
        ("reg:itoa@1.0.11", "end", "broken"),
        ("reg:itoa@1.0.11", "start", "broken"),
    ]
    .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
    assert_eq!(got, want);
    assert!(
        rows[2].3.to_string().contains("needs a GPU"),
        "{:?}",
        rows[2]
    );

    // every crate settled: the experiment completes at once
    let spec = r#"{"name":"ov-all","start":"stable","end":"nightly","crates":"fnv@1.0.7",
        "overrides":{"fnv":{"skip":true}}}"#;
    m.call(
        Method::POST,
        "/api/v1/experiments",
        Some(&m.operator),
        Some(spec),
    )
    .await;
    let (status, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments/ov-all/start",
            Some(&m.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = m
        .call(
            Method::GET,
            "/api/v1/experiments/ov-all",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(body["status"], "completed", "{body}");
}

/// One raw request: what the framework answers matters here, so nothing is added for the caller.
async fn raw(
    m: &Master,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut req = m
        .http
        .request(method, format!("{}{path}", m.base))
        .bearer_auth(&m.operator)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, json)
}

#[tokio::test]
async fn edge_errors_are_json_and_change_nothing() {
    let m = Master::start().await;
    let (status, _) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.admin),
            Some(VALID),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = m.snapshot().await;
    let with = |key: &str, value: Value| {
        let mut v: Value = serde_json::from_str(VALID).unwrap();
        v["name"] = json!("other");
        v[key] = value;
        v.to_string().into_bytes()
    };
    let json_ct = Some("application/json");
    let huge = {
        let mut v = with("description", json!(""));
        v.truncate(v.len() - 2);
        v.extend(std::iter::repeat_n(
            b'a',
            caldera_master::edge::MAX_BODY_BYTES,
        ));
        v.extend(b"\"}");
        v
    };
    type Case<'a> = (&'a str, Method, &'a str, Option<&'a str>, Vec<u8>);
    let cases: Vec<(Case, StatusCode, &str, Option<&str>, &str)> = vec![
        (
            (
                "NUL in a field",
                Method::POST,
                "/api/v1/experiments",
                json_ct,
                with("description", json!("a\u{0}b")),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            Some("description"),
            "NUL character",
        ),
        (
            (
                "NUL in a list entry",
                Method::POST,
                "/api/v1/experiments",
                json_ct,
                with("crates", json!(["serde@1.0.219", "r\u{0}"])),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            Some("crates[1]"),
            "NUL character",
        ),
        (
            (
                "NUL in a path segment",
                Method::GET,
                "/api/v1/experiments/a%00b",
                None,
                Vec::new(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            Some("path"),
            "NUL character (%00)",
        ),
        (
            (
                "NUL in a path segment, then a write",
                Method::POST,
                "/api/v1/experiments/stable-vs-nightly%00/start",
                None,
                Vec::new(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            Some("path"),
            "NUL character (%00)",
        ),
        (
            (
                "NUL in the query",
                Method::GET,
                "/api/v1/triage?crate=a%00",
                None,
                Vec::new(),
            ),
            StatusCode::BAD_REQUEST,
            "invalid-path",
            Some("query"),
            "NUL character (%00)",
        ),
        (
            (
                "not JSON by its content type",
                Method::POST,
                "/api/v1/experiments",
                Some("text/plain"),
                with("name", json!("other")),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            Some("content-type"),
            "`text/plain`",
        ),
        (
            (
                "no content type",
                Method::POST,
                "/api/v1/crate-lists",
                None,
                br#"{"name":"l","crates":["serde@1.0.219"]}"#.to_vec(),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            Some("content-type"),
            "got none",
        ),
        (
            (
                "a method the route does not have",
                Method::PUT,
                "/api/v1/experiments",
                json_ct,
                with("name", json!("other")),
            ),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            Some("method"),
            "Allow header",
        ),
        (
            (
                "a body over the limit",
                Method::POST,
                "/api/v1/experiments",
                json_ct,
                huge,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            Some("body"),
            "larger than",
        ),
        (
            (
                "no such route",
                Method::GET,
                "/api/v1/nothing-here",
                None,
                Vec::new(),
            ),
            StatusCode::NOT_FOUND,
            "not-found",
            None,
            "no such route",
        ),
    ];
    for ((what, method, path, ct, body), status, code, field, message) in cases {
        let (got, headers, v) = raw(&m, method, path, ct, body).await;
        assert_eq!(got, status, "{what}: {v}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}: {headers:?}"
        );
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{what}: {v}");
        let text = v["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{what}: {text}");
        if got == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key("allow"), "{what}: {headers:?}");
        }
        assert_eq!(m.snapshot().await, before, "{what} changed something");
    }
}

#[tokio::test]
async fn the_auth_scheme_is_case_insensitive_and_large_lists_fit() {
    let m = Master::start().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let resp = m
            .http
            .get(format!("{}/api/v1/experiments", m.base))
            .header("authorization", format!("{scheme} {}", m.viewer))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
    // the documented maximum of a crate list: 100,000 entries
    let crates: Vec<String> = (0..100_000).map(|i| format!("crate-{i}@1.0.{i}")).collect();
    let body = json!({"name": "big", "crates": crates}).to_string();
    assert!(body.len() > 2 * 1024 * 1024, "over axum's default limit");
    let (status, v) = m
        .call(
            Method::POST,
            "/api/v1/crate-lists",
            Some(&m.operator),
            Some(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn metrics_say_they_are_openmetrics() {
    let m = Master::start().await;
    let resp = m
        .http
        .get(format!("{}/metrics", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}
