//! `/api/v1/workers`, `/api/v1/queue` and `/api/v1/tokens` through a running master.

use caldera_db::tokens::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Setup, TestMaster};

fn assert_error(got: &(StatusCode, Value), status: StatusCode, field: &str, message_has: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(message_has),
        "{message:?} should mention {message_has:?}"
    );
}

/// What a token call could change: ids and revocations (`last_used_at` moves with every
/// authenticated request, so it is left out).
async fn tokens_state(m: &TestMaster) -> Value {
    sqlx::query_scalar(
        "SELECT json_agg(json_build_array(id, name, role, revoked_at) ORDER BY id) FROM api_tokens",
    )
    .fetch_one(&m.db.pool)
    .await
    .unwrap()
}

async fn create(m: &TestMaster, name: &str, priority: i32, crates: &[&str]) {
    let body = json!({"name": name, "start": "stable", "end": "nightly", "priority": priority,
        "crates": {"kind": "list", "crates": crates}});
    let (status, v) = m
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn workers_and_queue_show_the_farm() {
    let m = TestMaster::start(Setup::default()).await;
    let (status, empty) = m
        .call(Method::GET, "/api/v1/workers", Some(&m.viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(
        empty,
        json!({"connected": 0, "slots": 0, "busy": 0, "workers": []})
    );

    // two workers registered as the worker service registers them; one leaves
    let now = chrono::Utc::now();
    let caps = [
        "toolchain:stable".to_owned(),
        "toolchain:nightly".to_owned(),
        "gpu".to_owned(),
    ];
    let a = caldera_db::workers::connect(
        &m.db.pool,
        "alpha",
        "1.2.3",
        &caps,
        3,
        m.worker_token_id,
        now,
    )
    .await
    .unwrap();
    let b =
        caldera_db::workers::connect(&m.db.pool, "beta", "1.2.3", &[], 2, m.worker_token_id, now)
            .await
            .unwrap();
    caldera_db::workers::disconnect(&m.db.pool, b)
        .await
        .unwrap();

    // a running experiment with one job leased to alpha, and a queued one of higher priority
    create(
        &m,
        "running-one",
        1,
        &["serde@1.0.0", "rand@0.8.5", "fnv@1.0.7"],
    )
    .await;
    let (status, v) = m
        .call(
            Method::POST,
            "/api/v1/experiments/running-one/start",
            Some(&m.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    create(&m, "waiting-one", 7, &["serde@1.0.0"]).await;
    let claimed = caldera_db::jobs::claim(&m.db.pool, a, &caps, 1, now, chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let (status, farm) = m
        .call(Method::GET, "/api/v1/workers", Some(&m.viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{farm}");
    assert_eq!(
        (&farm["connected"], &farm["slots"], &farm["busy"]),
        (&json!(1), &json!(3), &json!(1))
    );
    let workers = farm["workers"].as_array().unwrap();
    let names: Vec<&str> = workers
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"], "connected first");
    let alpha = &workers[0];
    assert_eq!(alpha["connected"], true);
    assert_eq!(alpha["slots"], 3);
    assert_eq!(alpha["busy"], 1);
    assert_eq!(alpha["toolchains"], json!(["stable", "nightly"]));
    assert_eq!(alpha["capabilities"], json!(caps));
    assert_eq!(alpha["version"], "1.2.3");
    assert!(
        alpha["last_heartbeat_at"].as_str().unwrap().ends_with('Z'),
        "{alpha}"
    );
    assert_eq!(
        (&workers[1]["connected"], &workers[1]["busy"]),
        (&json!(false), &json!(0))
    );

    let (status, queue) = m
        .call(Method::GET, "/api/v1/queue", Some(&m.viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{queue}");
    assert_eq!(
        (&queue["queued"], &queue["running"]),
        (&json!(2), &json!(1)),
        "{queue}"
    );
    let order: Vec<(&str, &str, i64)> = queue["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["experiment"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["queued"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [("waiting-one", "queued", 0), ("running-one", "running", 2)],
        "highest priority first"
    );

    // who may read: readers yes, worker tokens and no token no
    for path in ["/api/v1/workers", "/api/v1/queue"] {
        let got = m.call(Method::GET, path, Some(&m.worker), None).await;
        assert_error(&got, StatusCode::FORBIDDEN, "authorization", "worker token");
        let got = m.call(Method::GET, path, None, None).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "authorization", "bearer");
        let got = m.call(Method::POST, path, Some(&m.admin), None).await;
        assert_error(
            &got,
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "not allowed",
        );
    }
}

#[tokio::test]
async fn tokens_are_listed_without_secrets_and_revoked_by_admins() {
    let m = TestMaster::start(Setup::default()).await;
    let (status, list) = m
        .call(Method::GET, "/api/v1/tokens", Some(&m.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let rows = list.as_array().unwrap();
    let mut roles: Vec<&str> = rows.iter().map(|t| t["role"].as_str().unwrap()).collect();
    roles.sort_unstable();
    assert_eq!(roles, ["admin", "operator", "viewer", "worker"]);
    let text = list.to_string();
    for secret in [&m.admin, &m.operator, &m.viewer, &m.worker] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret is listed: {text}"
        );
    }
    for t in rows {
        let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "active",
                "created_at",
                "id",
                "last_used_at",
                "name",
                "revoked_at",
                "role"
            ]
        );
        assert_eq!(t["active"], true);
    }
    let admin = rows.iter().find(|t| t["role"] == "admin").unwrap();
    assert!(
        admin["last_used_at"].is_string(),
        "this request used it: {admin}"
    );
    let viewer_id = rows.iter().find(|t| t["role"] == "viewer").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // bad input changes nothing
    let before = tokens_state(&m).await;
    let unknown = uuid::Uuid::new_v4();
    let admin_id = admin["id"].as_str().unwrap();
    for (token, path, status, field, says) in [
        (
            Some(&m.operator),
            format!("/api/v1/tokens/{viewer_id}"),
            StatusCode::FORBIDDEN,
            "authorization",
            "needs an admin token",
        ),
        (
            Some(&m.viewer),
            format!("/api/v1/tokens/{viewer_id}"),
            StatusCode::FORBIDDEN,
            "authorization",
            "needs an admin token",
        ),
        (
            Some(&m.worker),
            format!("/api/v1/tokens/{viewer_id}"),
            StatusCode::FORBIDDEN,
            "authorization",
            "worker token",
        ),
        (
            None,
            format!("/api/v1/tokens/{viewer_id}"),
            StatusCode::UNAUTHORIZED,
            "authorization",
            "bearer",
        ),
        (
            Some(&m.admin),
            format!("/api/v1/tokens/{unknown}"),
            StatusCode::NOT_FOUND,
            "id",
            &unknown.to_string(),
        ),
        (
            Some(&m.admin),
            "/api/v1/tokens/not-a-uuid".to_owned(),
            StatusCode::BAD_REQUEST,
            "id",
            "not a token id",
        ),
        (
            Some(&m.admin),
            format!("/api/v1/tokens/{admin_id}"),
            StatusCode::CONFLICT,
            "id",
            "cannot revoke itself",
        ),
    ] {
        let got = m
            .call(Method::DELETE, &path, token.map(String::as_str), None)
            .await;
        assert_error(&got, status, field, says);
        assert_eq!(
            tokens_state(&m).await,
            before,
            "DELETE {path} changed the tokens"
        );
    }
    for token in [&m.operator, &m.viewer] {
        let got = m
            .call(Method::GET, "/api/v1/tokens", Some(token), None)
            .await;
        assert_error(
            &got,
            StatusCode::FORBIDDEN,
            "authorization",
            "needs an admin token",
        );
    }

    // revoke the viewer token: it authenticates nothing from now on
    let (status, revoked) = m
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{viewer_id}"),
            Some(&m.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(
        (&revoked["id"], &revoked["role"], &revoked["active"]),
        (&json!(viewer_id), &json!("viewer"), &json!(false))
    );
    let at = revoked["revoked_at"].as_str().unwrap().to_owned();
    let got = m
        .call(Method::GET, "/api/v1/experiments", Some(&m.viewer), None)
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "authorization", "revoked");
    // again: the same answer, the first revocation's time kept
    let (status, again) = m
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{viewer_id}"),
            Some(&m.admin),
            None,
        )
        .await;
    assert_eq!(
        (status, again["revoked_at"].as_str()),
        (StatusCode::OK, Some(at.as_str()))
    );
    let (_, list) = m
        .call(Method::GET, "/api/v1/tokens", Some(&m.admin), None)
        .await;
    let states: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().to_owned(),
                t["active"].as_bool().unwrap(),
            )
        })
        .filter(|(_, active)| !active)
        .collect();
    assert_eq!(
        states,
        [(Role::Viewer.as_str().to_owned(), false)],
        "only the viewer token is revoked"
    );
}
