//! The cost estimate through a running master: a seeded history and a registry listing give
//! the numbers of the create and start responses, the view while running, and the estimate
//! against what the run cost afterwards; an unknown experiment is a 404, a selection that
//! cannot be resolved a 422 (and no estimate in the create response).

use std::collections::HashMap;
use std::sync::Arc;

use caldera_core::lifecycle::ExperimentAction;
use caldera_core::outcome::Outcome;
use caldera_core::registry::RegistryListing;
use caldera_db::jobs;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::common::{Setup, TestMaster};

/// An index line of `name@vers` with `deps` normal dependencies.
fn index_line(name: &str, vers: &str, deps: usize) -> String {
    let deps: Vec<String> = (0..deps)
        .map(|i| {
            format!(
                r#"{{"name":"dep{i}","req":"^1","features":[],"optional":false,"default_features":true,"target":null,"kind":"normal"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"name":"{name}","vers":"{vers}","deps":[{}],"cksum":"{}","features":{{}},"yanked":false,"v":2}}"#,
        deps.join(","),
        "c".repeat(64)
    )
}

/// p0..p5 with 0..5 dependencies, `fresh` with 8; `h` is not listed.
fn listing() -> Arc<RegistryListing> {
    let mut l = RegistryListing::new();
    for d in 0..6 {
        l.add_index_file(&index_line(&format!("p{d}"), "1.0.0", d))
            .unwrap();
    }
    l.add_index_file(&index_line("fresh", "1.0.0", 8)).unwrap();
    Arc::new(l)
}

fn side(ms: i64) -> jobs::SideRecord {
    jobs::SideRecord {
        outcome: Outcome::TestPass,
        log_key: None,
        duration_ms: ms,
        peak_memory_bytes: 0,
        steps: Vec::new(),
        cache_key: None,
    }
}

/// Runs every queued job through the database as a worker would report it: each crate's sides
/// take `ms[crate id]`.
async fn run_all(m: &TestMaster, ms: &HashMap<&str, (i64, i64)>) {
    let now = chrono::Utc::now();
    let worker = Uuid::new_v4();
    let claimed = jobs::claim(
        &m.db.pool,
        worker,
        &[],
        100,
        now,
        chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), ms.len());
    let batch: Vec<jobs::Completion> = claimed
        .iter()
        .map(|c| {
            let (s, e) = ms[c.crate_id.as_str()];
            jobs::Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker,
                start: side(s),
                end: side(e),
            }
        })
        .collect();
    let out = jobs::complete(&m.db.pool, &batch, now, 3).await.unwrap();
    assert_eq!(out.accepted.len(), batch.len(), "{out:?}");
}

async fn post(m: &TestMaster, path: &str, body: Option<&str>) -> Value {
    let (status, v) = m.call(Method::POST, path, Some(&m.operator), body).await;
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// The past: p0..p5 take 1 s + 0.5 s per dependency a side (an exact line), `h` 7 s.
async fn seed_history(m: &TestMaster) {
    let crates: Vec<String> = (0..6)
        .map(|d| format!("p{d}@1.0.0"))
        .chain(["h@1.0.0".into()])
        .collect();
    let spec = format!(
        r#"{{"name":"past","start":"stable","end":"nightly","confirm":0,"crates":"{}"}}"#,
        crates.join(",")
    );
    post(m, "/api/v1/experiments", Some(&spec)).await;
    post(m, "/api/v1/experiments/past/start", None).await;
    let ids: Vec<String> = crates.iter().map(|c| format!("reg:{c}")).collect();
    let mut ms: HashMap<&str, (i64, i64)> = HashMap::new();
    for (d, id) in ids.iter().enumerate().take(6) {
        let side = 1000 + 500 * d as i64;
        ms.insert(id, (side, side));
    }
    ms.insert(&ids[6], (6000, 8000));
    run_all(m, &ms).await;
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6)
}

/// The dashboard's page of the experiment `next`.
async fn dashboard(m: &TestMaster) -> String {
    let (status, page) = m.text("/experiments/next", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

#[tokio::test]
async fn create_start_running_and_after_carry_the_estimate() {
    let m = TestMaster::start(Setup {
        registry: Some(listing()),
        ..Setup::default()
    })
    .await;
    seed_history(&m).await;

    let spec = r#"{"name":"next","start":"stable","end":"nightly","confirm":0,
        "crates":"h@2.0.0,fresh@1.0.0,s@1.0.0","overrides":{"s":{"skip":true}}}"#;
    let v = post(&m, "/api/v1/experiments", Some(spec)).await;
    let e = &v["estimate"];
    // h: its own history (median of 6 s and 8 s) × 2 sides; fresh: the line, 1 s + 8 × 0.5 s,
    // × 2; s: skipped. No worker connected: no wall time.
    assert_eq!(
        (
            &e["jobs"],
            &e["sides_to_run"],
            &e["sides_cached"],
            &e["sides_settled"]
        ),
        (
            &Value::from(3),
            &Value::from(4),
            &Value::from(0),
            &Value::from(2)
        ),
        "{e}"
    );
    assert_eq!(e["cpu_ms"], 24_000, "{e}");
    assert_eq!(e["wall_ms"], Value::Null, "{e}");
    assert_eq!(
        (&e["from_history"], &e["from_model"]),
        (&Value::from(1), &Value::from(1))
    );
    assert_eq!(e["model"]["kind"], "line", "{e}");
    assert!(close(&e["model"]["per_dep_ms"], 500.0), "{e}");
    assert!(close(&e["model"]["intercept_ms"], 1000.0), "{e}");
    assert!(close(&e["model"]["r2"], 1.0), "{e}");
    assert_eq!(e["model"]["samples"], 6, "h has no dependency count: {e}");
    let method = e["method"].as_str().unwrap();
    assert!(
        method.contains("No worker is connected: no wall time."),
        "{method}"
    );
    let page = dashboard(&m).await;
    assert!(
        page.contains(
            "Cost: if it started now, CPU time 24s, wall time none (no worker connected)."
        ),
        "{page}"
    );

    // two workers' slots: h (14 s) on one, fresh (10 s) on the other
    let now = chrono::Utc::now();
    for (name, slots) in [("w1", 1), ("w2", 1)] {
        caldera_db::workers::connect(&m.db.pool, name, "0", &[], slots, m.worker_token_id, now)
            .await
            .unwrap();
    }
    let v = post(&m, "/api/v1/experiments/next/start", None).await;
    let e = &v["estimate"];
    assert_eq!(
        (&e["cpu_ms"], &e["wall_ms"], &e["slots"]),
        (&Value::from(24_000), &Value::from(14_000), &Value::from(2)),
        "{e}"
    );
    assert_eq!(e["sides_settled"], 2, "{e}");

    // while running, the view carries what is left (the skipped job is done)
    let (status, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/next",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&v["estimate"]["jobs"], &v["estimate"]["cpu_ms"]),
        (&Value::from(2), &Value::from(24_000)),
        "{v}"
    );
    let (status, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/next/estimate",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "running");
    assert_eq!(v["at_start"]["cpu_ms"], 24_000, "{v}");
    assert_eq!(v["at_start"]["wall_ms"], 14_000, "{v}");
    assert_eq!(v["actual"], Value::Null);
    let page = dashboard(&m).await;
    assert!(
        page.contains("Cost: left: CPU time 24s, wall time 14s on 2 slots connected now; estimated at the start: CPU time 24s, wall time 14s on 2 slots connected now"),
        "{page}"
    );

    let ms = HashMap::from([
        ("reg:h@2.0.0", (9000, 9000)),
        ("reg:fresh@1.0.0", (4000, 5000)),
    ]);
    run_all(&m, &ms).await;
    caldera_db::experiments::apply_action(&m.db.pool, "next", ExperimentAction::Complete)
        .await
        .unwrap();
    let (status, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/next/estimate",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["estimate"], Value::Null, "{v}");
    assert_eq!(
        (&v["actual"]["sides_run"], &v["actual"]["cpu_ms"]),
        (&Value::from(4), &Value::from(27_000)),
        "{v}"
    );
    assert!(
        v["actual"]["wall_ms"].as_i64().is_some_and(|w| w >= 0),
        "{v}"
    );
    assert_eq!(v["at_start"]["cpu_ms"], 24_000, "kept from the start: {v}");
    let page = dashboard(&m).await;
    assert!(
        page.contains("Cost: CPU time: estimated 24s, took 27s (1.12×)"),
        "{page}"
    );

    // the report sets the estimate against what the run cost
    post(&m, "/api/v1/experiments/next/report", None).await;
    let (status, md) = m
        .text(
            "/api/v1/experiments/next/report/summary.md",
            Some(&m.viewer),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{md}");
    assert!(md.contains("## Cost"), "{md}");
    assert!(md.contains("| CPU time | 24s | 27s | 1.12× |"), "{md}");
    assert!(md.contains("| sides run | 4 | 4 | |"), "{md}");
    let (_, j) = m
        .call(
            Method::GET,
            "/api/v1/experiments/next/report/results.json",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(
        (&j["cost"]["estimated_cpu_ms"], &j["cost"]["cpu_ms"]),
        (&Value::from(24_000), &Value::from(27_000)),
        "{}",
        j["cost"]
    );
    assert_eq!(j["cost"]["estimated_wall_ms"], 14_000);
    let (_, page) = m
        .text(
            "/api/v1/experiments/next/report/index.html",
            Some(&m.viewer),
        )
        .await;
    assert!(
        page.contains("CPU time: estimated 24s, took 27s (1.12×)"),
        "{page}"
    );
}

#[tokio::test]
async fn unknown_experiments_and_unresolvable_selections_are_refused() {
    let m = TestMaster::start(Setup::default()).await;
    let (status, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/nope/estimate",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        v["error"]["message"], r#"experiment "nope" not found"#,
        "{v}"
    );

    // `top:5` needs a registry listing: the create still succeeds, without an estimate; the
    // estimate says why, as the start would
    let v = post(
        &m,
        "/api/v1/experiments",
        Some(r#"{"name":"top","start":"stable","end":"nightly","crates":"top:5"}"#),
    )
    .await;
    assert!(v.get("estimate").is_none(), "{v}");
    let (status, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/top/estimate",
            Some(&m.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "crates", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs a listing of the whole registry"),
        "{v}"
    );

    // no history in the mode at all: no CPU time, said plainly
    let v = post(
        &m,
        "/api/v1/experiments",
        Some(r#"{"name":"cold","start":"stable","end":"nightly","mode":"check-only","crates":"fnv@1.0.7"}"#),
    )
    .await;
    let e = &v["estimate"];
    assert_eq!(
        (&e["cpu_ms"], &e["model"]["kind"]),
        (&Value::Null, &Value::from("none")),
        "{e}"
    );
    assert!(
        e["method"]
            .as_str()
            .unwrap()
            .contains("1 job(s) have no estimate: no CPU time."),
        "{e}"
    );
}
