//! The result cache against a real Postgres: which earlier results the lookup finds (only
//! trustworthy first runs, younger than the maximum age, of crates with no known flake), how a
//! start settles sides from them, and how the completion of a one-sided job leaves the settled
//! side alone.

use caldera_core::job::Side;
use caldera_core::lifecycle::ExperimentAction;
use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_core::toolchain::ToolchainIdentity;
use caldera_db::cache::{self, Hit, Settle, Wanted};
use caldera_db::experiments;
use caldera_db::jobs::{self, Completion, SideRecord};
use caldera_db::testing::TestDb;
use caldera_db::tokens::{self, Role};
use chrono::{Duration, Utc};
use uuid::Uuid;

fn side(outcome: Outcome, key: Option<&str>) -> SideRecord {
    SideRecord {
        cache_key: key.map(str::to_owned),
        outcome,
        log_key: None,
        duration_ms: 7,
        peak_memory_bytes: 9,
        steps: vec![("build".into(), 7)],
    }
}

/// A started experiment with a queued job per crate (`reg:NAME@1.0.0`).
async fn started(db: &TestDb, name: &str, crates: &[&str]) -> Uuid {
    let row = experiments::create(&db.pool, &super::spec(name))
        .await
        .unwrap();
    experiments::apply_action(&db.pool, name, ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<caldera_core::crates::CrateId> = crates
        .iter()
        .map(|c| format!("reg:{c}@1.0.0").parse().unwrap())
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    jobs::create_for_experiment(&mut tx, row.id, &crates)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    row.id
}

async fn worker(db: &TestDb) -> Uuid {
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    caldera_db::workers::connect(&db.pool, "w1", "0", &[], 8, token.id, Utc::now())
        .await
        .unwrap()
}

/// Claim every queued job and report `outcome(crate)` for it (one attempt allowed, so an
/// `error` is recorded at once).
async fn run_all(db: &TestDb, w: Uuid, outcome: impl Fn(&str) -> (SideRecord, SideRecord)) {
    // a worker with the build a cached side pins
    let caps = ["toolchain-id:nightly=0123456789ab".to_owned()];
    let claimed = jobs::claim(&db.pool, w, &caps, 100, Utc::now(), Duration::seconds(600))
        .await
        .unwrap();
    let batch: Vec<Completion> = claimed
        .iter()
        .map(|c| {
            let (start, end) = outcome(&c.crate_id);
            Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker: w,
                start,
                end,
            }
        })
        .collect();
    let out = jobs::complete(&db.pool, &batch, Utc::now(), 1)
        .await
        .unwrap();
    assert_eq!(out.accepted.len(), batch.len());
}

fn want(krate: &str, side: Side, key: &str) -> Wanted {
    Wanted {
        krate: format!("reg:{krate}@1.0.0"),
        side,
        key: key.into(),
    }
}

/// (crate, side, source name, source side) of hits, sorted.
fn summary(hits: &[Hit]) -> Vec<(String, Side, String, Side)> {
    let mut v: Vec<_> = hits
        .iter()
        .map(|h| {
            (
                h.krate.clone(),
                h.side,
                h.source_name.clone(),
                h.source_side,
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn the_lookup_finds_only_trustworthy_recent_first_runs_of_crates_without_flakes() {
    let db = TestDb::new().await;
    let w = worker(&db).await;
    started(
        &db,
        "src",
        &["pass", "error", "oom", "fails", "flaky", "nokey"],
    )
    .await;
    let pass = Outcome::TestPass;
    let fails = Outcome::TestFail {
        failed_tests: vec!["t".into()],
        reason: None,
    };
    run_all(&db, w, |krate| {
        let name = krate.trim_start_matches("reg:").split('@').next().unwrap();
        let key = |s: &str| Some(format!("k-{name}-{s}"));
        let (start, end) = match name {
            "pass" | "flaky" => (pass.clone(), pass.clone()),
            "error" => (
                Outcome::Error {
                    reason: "engine".into(),
                },
                pass.clone(),
            ),
            "oom" => (Outcome::BuildFail(BuildFailReason::Oom), pass.clone()),
            "fails" => (pass.clone(), fails.clone()),
            _ => return (side(pass.clone(), None), side(pass.clone(), None)),
        };
        (
            side(start, key("s").as_deref()),
            side(end, key("e").as_deref()),
        )
    })
    .await;
    // the flake memory knows `flaky`
    sqlx::query(
        "INSERT INTO flakes (crate_id, subject, count, first_seen, last_seen, experiment, source, run, side)
         SELECT id, 'test:t', 1, now(), now(), 'src', 'confirmation', 1, 'end' FROM crates
         WHERE crate_id = 'reg:flaky@1.0.0'",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let wanted = [
        want("pass", Side::Start, "k-pass-s"),
        want("pass", Side::End, "k-pass-e"),
        // an earlier start side settles a later end side with the same key
        want("fails", Side::Start, "k-fails-e"),
        want("error", Side::Start, "k-error-s"),
        want("error", Side::End, "k-error-e"),
        want("oom", Side::Start, "k-oom-s"),
        want("flaky", Side::Start, "k-flaky-s"),
        want("pass", Side::Start, "k-other"),
        want("nokey", Side::Start, ""),
        // a key of another crate is not this crate's
        want("fails", Side::End, "k-pass-e"),
    ];
    let hour_ago = Utc::now() - Duration::hours(1);
    let hits = cache::lookup(&db.pool, &wanted, hour_ago).await.unwrap();
    let src = || "src".to_owned();
    assert_eq!(
        summary(&hits),
        [
            // the end side of `error` passed: only the infrastructure error is not reused
            ("reg:error@1.0.0".into(), Side::End, src(), Side::End),
            ("reg:fails@1.0.0".into(), Side::Start, src(), Side::End),
            ("reg:pass@1.0.0".into(), Side::Start, src(), Side::Start),
            ("reg:pass@1.0.0".into(), Side::End, src(), Side::End),
        ],
        "error, spurious (oom), flaky and unknown keys are not found"
    );
    let fails = hits.iter().find(|h| h.krate == "reg:fails@1.0.0").unwrap();
    assert_eq!(fails.outcome_kind, "test-fail");

    // older than the maximum age: nothing
    let later = Utc::now() + Duration::seconds(1);
    assert!(
        cache::lookup(&db.pool, &wanted, later)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        cache::lookup(&db.pool, &[], hour_ago)
            .await
            .unwrap()
            .is_empty()
    );

    // the newest source wins
    started(&db, "src2", &["pass"]).await;
    run_all(&db, w, |_| {
        (
            side(Outcome::TestPass, Some("k-pass-s")),
            side(Outcome::TestPass, None),
        )
    })
    .await;
    let hits = cache::lookup(&db.pool, &wanted[..2], hour_ago)
        .await
        .unwrap();
    assert_eq!(
        summary(&hits),
        [
            (
                "reg:pass@1.0.0".into(),
                Side::Start,
                "src2".into(),
                Side::Start
            ),
            ("reg:pass@1.0.0".into(), Side::End, src(), Side::End),
        ]
    );
}

fn nightly() -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: "nightly".into(),
        commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: "1.95.0-nightly".into(),
        cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
    }
}

#[tokio::test]
async fn a_start_settles_sides_and_a_one_sided_job_records_only_the_side_it_ran() {
    let db = TestDb::new().await;
    let w = worker(&db).await;
    started(&db, "src", &["both", "one"]).await;
    run_all(&db, w, |_| {
        (
            side(Outcome::TestPass, Some("ks")),
            side(Outcome::TestPass, Some("ke")),
        )
    })
    .await;
    let next = started(&db, "next", &["both", "one", "none"]).await;
    let hits = cache::lookup(
        &db.pool,
        &[
            want("both", Side::Start, "ks"),
            want("both", Side::End, "ke"),
            want("one", Side::Start, "ks"),
        ],
        Utc::now() - Duration::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(hits.len(), 3);
    let sides: Vec<Settle> = hits
        .into_iter()
        .map(|hit| Settle {
            log_key: Some(format!("copied-{}-{}", hit.krate, hit.side)),
            hit,
        })
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    let settled = cache::settle(&mut tx, next, &sides, Utc::now())
        .await
        .unwrap();
    let n = nightly();
    cache::pin_cached_sides(&mut tx, next, &[(Side::Start, &n)], Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        settled,
        cache::Settled {
            sides: 3,
            jobs_done: 1,
            jobs_one_side: 1
        }
    );
    let rows: Vec<(
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    )> = sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.outcome_kind, r.log_key, r.cached_from_name, r.cache_key
             FROM results r JOIN crates c ON c.id = r.crate_id WHERE r.experiment_id = $1
             ORDER BY 1, 2 DESC",
    )
    .bind(next)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let row = |k: &str, s: &str| {
        (
            format!("reg:{k}@1.0.0"),
            s.to_owned(),
            "test-pass".to_owned(),
            Some(format!("copied-reg:{k}@1.0.0-{s}")),
            Some("src".to_owned()),
            None,
        )
    };
    assert_eq!(
        rows,
        [
            row("both", "start"),
            row("both", "end"),
            row("one", "start")
        ],
        "copies name their source and carry no key"
    );
    let jobs_state: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT c.crate_id, j.state, j.only_side FROM jobs j JOIN crates c ON c.id = j.crate_id
         WHERE j.experiment_id = $1 ORDER BY 1",
    )
    .bind(next)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        jobs_state,
        [
            ("reg:both@1.0.0".into(), "done".into(), None),
            ("reg:none@1.0.0".into(), "queued".into(), None),
            ("reg:one@1.0.0".into(), "queued".into(), Some("end".into())),
        ]
    );
    let one_sided = cache::one_sided_jobs(&db.pool, next).await.unwrap();
    assert_eq!(one_sided.len(), 1);
    assert_eq!(one_sided[0].1, Side::End);
    // the cached side's build is pinned and required
    let caps: sqlx::types::Json<Vec<String>> =
        sqlx::query_scalar("SELECT requirements FROM job_queues WHERE experiment_id = $1")
            .bind(next)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        caps.0
            .contains(&"toolchain-id:nightly=0123456789ab".to_owned()),
        "{caps:?}"
    );

    // the one-sided job reports a placeholder for its settled side: only the end is recorded,
    // the cached start side stays as it was
    run_all(&db, w, |krate| match krate {
        "reg:one@1.0.0" => (
            side(Outcome::Skipped, None),
            side(
                Outcome::TestFail {
                    failed_tests: vec![],
                    reason: None,
                },
                Some("ke2"),
            ),
        ),
        _ => (side(Outcome::TestPass, None), side(Outcome::TestPass, None)),
    })
    .await;
    let one: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT r.toolchain, r.outcome_kind, r.cached_from_name FROM results r
         JOIN crates c ON c.id = r.crate_id WHERE r.experiment_id = $1 AND c.crate_id = 'reg:one@1.0.0'
         ORDER BY 1 DESC",
    )
    .bind(next)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        one,
        [
            ("start".into(), "test-pass".into(), Some("src".into())),
            ("end".into(), "test-fail".into(), None),
        ]
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM results WHERE experiment_id = $1")
        .bind(next)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 6, "three crates, two sides each");
    assert_eq!(
        cache::settle(&mut db.pool.begin().await.unwrap(), next, &[], Utc::now())
            .await
            .unwrap(),
        cache::Settled::default()
    );
}
