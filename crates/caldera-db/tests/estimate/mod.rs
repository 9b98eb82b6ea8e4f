//! What the cost estimator reads: the mode's history (medians per crate, what counts as a
//! measured side), an experiment's jobs with their recorded sides, the connected slots, and
//! the estimate kept from the start with what the run cost.

use caldera_core::crates::CrateId;
use caldera_core::estimate::{Estimate, Model};
use caldera_core::experiment::{ExperimentSpec, Mode};
use caldera_core::lifecycle::ExperimentAction;
use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_db::estimate::{self, KeyHistory};
use caldera_db::testing::TestDb;
use caldera_db::{experiments, jobs};
use uuid::Uuid;

async fn started(db: &TestDb, name: &str, mode: &str, crates: &[&str]) -> Uuid {
    let spec = ExperimentSpec::from_json(
        format!(r#"{{"name":"{name}","start":"stable","end":"nightly","mode":"{mode}","confirm":0,"crates":"x@1.0.0"}}"#)
            .as_bytes(),
    )
    .unwrap();
    let row = experiments::create(&db.pool, &spec).await.unwrap();
    experiments::apply_action(&db.pool, name, ExperimentAction::Start)
        .await
        .unwrap();
    let ids: Vec<CrateId> = crates.iter().map(|c| c.parse().unwrap()).collect();
    let mut tx = db.pool.begin().await.unwrap();
    jobs::create_for_experiment(&mut tx, row.id, &ids)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    row.id
}

fn side(outcome: Outcome, ms: i64) -> jobs::SideRecord {
    jobs::SideRecord {
        cache_key: None,
        outcome,
        log_key: None,
        duration_ms: ms,
        peak_memory_bytes: 0,
        steps: Vec::new(),
    }
}

/// Claims `sides.len()` jobs (the only queued ones) and completes them with these sides; a job
/// an `error` side puts back in the queue is run again with the same sides until its last
/// attempt records them.
async fn finish(db: &TestDb, sides: Vec<(jobs::SideRecord, jobs::SideRecord)>) {
    let mut pending = sides;
    for _ in 0..5 {
        let now = chrono::Utc::now();
        let worker = Uuid::new_v4();
        let lease = chrono::Duration::hours(1);
        let mut claimed = jobs::claim(&db.pool, worker, &[], pending.len() as i64, now, lease)
            .await
            .unwrap();
        // sides are given in queue order
        claimed.sort_by_key(|c| c.job_id);
        assert_eq!(claimed.len(), pending.len());
        let batch: Vec<jobs::Completion> = claimed
            .iter()
            .zip(pending.iter().cloned())
            .map(|(c, (start, end))| jobs::Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker,
                start,
                end,
            })
            .collect();
        let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
        assert_eq!(
            out.accepted.len() + out.requeued.len(),
            batch.len(),
            "{out:?}"
        );
        pending = batch
            .iter()
            .zip(pending)
            .filter(|(c, _)| out.requeued.contains(&c.job_id))
            .map(|(_, s)| s)
            .collect();
        if pending.is_empty() {
            return;
        }
    }
    panic!("jobs still queued after five attempts");
}

fn pass(ms: i64) -> jobs::SideRecord {
    side(Outcome::TestPass, ms)
}

#[tokio::test]
async fn the_mode_history_is_the_median_of_measured_sides_per_crate() {
    let db = TestDb::new().await;
    let first = started(
        &db,
        "first",
        "build-and-test",
        &["reg:a@1.0.0", "reg:b@1.0.0"],
    )
    .await;
    finish(
        &db,
        vec![
            (pass(1000), pass(3000)),
            (pass(500), side(Outcome::Skipped, 9)),
        ],
    )
    .await;
    // a later version of `a` counts with it; an `error` side is not a measurement
    let second = started(
        &db,
        "second",
        "build-and-test",
        &["reg:a@1.1.0", "git:https://example.invalid/g.git#abc"],
    )
    .await;
    let fail = Outcome::BuildFail(BuildFailReason::Unknown);
    let error = Outcome::Error {
        reason: "engine".into(),
    };
    finish(
        &db,
        vec![
            (pass(2000), side(fail, 7000)),
            (side(error.clone(), 50), pass(400)),
        ],
    )
    .await;
    // another mode is another history
    started(&db, "check", "check-only", &["reg:a@1.0.0"]).await;
    finish(&db, vec![(pass(10), pass(20))]).await;

    let all = estimate::mode_history(&db.pool, Mode::BuildAndTest, None)
        .await
        .unwrap();
    let want = vec![
        KeyHistory {
            key: "a".into(),
            registry: true,
            sides: 4,
            median_ms: 2500.0,
        },
        KeyHistory {
            key: "b".into(),
            registry: true,
            sides: 1,
            median_ms: 500.0,
        },
        KeyHistory {
            key: "git:https://example.invalid/g.git#abc".into(),
            registry: false,
            sides: 1,
            median_ms: 400.0,
        },
    ];
    assert_eq!(all, want);
    // an experiment's own results are left out of its estimate
    let without = estimate::mode_history(&db.pool, Mode::BuildAndTest, Some(second))
        .await
        .unwrap();
    assert_eq!(
        without
            .iter()
            .map(|h| (h.key.as_str(), h.sides, h.median_ms))
            .collect::<Vec<_>>(),
        [("a", 2, 2000.0), ("b", 1, 500.0)]
    );
    let check = estimate::mode_history(&db.pool, Mode::CheckOnly, None)
        .await
        .unwrap();
    assert_eq!(check.len(), 1);
    assert_eq!((check[0].sides, check[0].median_ms), (2, 15.0));
    assert!(
        estimate::mode_history(&db.pool, Mode::Miri, None)
            .await
            .unwrap()
            .is_empty()
    );

    // what the first experiment cost: 1000 + 3000 + 500 (the skipped side is not a build)
    let a = estimate::actual(&db.pool, first).await.unwrap();
    assert_eq!((a.sides_run, a.cpu_ms), (3, 4500));
}

#[tokio::test]
async fn jobs_slots_and_the_stored_estimate_read_back() {
    let db = TestDb::new().await;
    let id = started(
        &db,
        "run",
        "build-and-test",
        &["reg:a@1.0.0", "reg:b@1.0.0", "reg:c@1.0.0"],
    )
    .await;
    finish(&db, vec![(pass(10), pass(20))]).await;
    let now = chrono::Utc::now();
    let claimed = jobs::claim(
        &db.pool,
        Uuid::new_v4(),
        &[],
        1,
        now,
        chrono::Duration::hours(1),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    // a side the result cache copied from an earlier experiment
    sqlx::query("UPDATE results SET cached_from = gen_random_uuid() WHERE toolchain = 'end'")
        .execute(&db.pool)
        .await
        .unwrap();
    let planned = estimate::jobs_of(&db.pool, id).await.unwrap();
    let seen: Vec<(&str, &str, bool, [Option<(String, bool)>; 2])> = planned
        .iter()
        .map(|j| {
            (
                j.key.as_str(),
                j.state.as_str(),
                j.claimed_at.is_some(),
                j.recorded
                    .clone()
                    .map(|r| r.map(|r| (r.outcome_kind, r.cached))),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "a",
                "done",
                true,
                [
                    Some(("test-pass".into(), false)),
                    Some(("test-pass".into(), true))
                ]
            ),
            ("b", "running", true, [None, None]),
            ("c", "queued", false, [None, None]),
        ]
    );
    assert!(planned.iter().all(|j| j.registry && j.run == 0));
    // a copied side is not a build: neither history nor cost
    let h = estimate::mode_history(&db.pool, Mode::BuildAndTest, None)
        .await
        .unwrap();
    assert_eq!((h.len(), h[0].sides, h[0].median_ms), (1, 1, 10.0));
    let a = estimate::actual(&db.pool, id).await.unwrap();
    assert_eq!((a.sides_run, a.cpu_ms), (1, 10));

    assert_eq!(estimate::connected_slots(&db.pool).await.unwrap(), 0);
    let (token, _) = caldera_db::tokens::create(&db.pool, "w", caldera_db::tokens::Role::Worker)
        .await
        .unwrap();
    for (name, slots) in [("w1", 2), ("w2", 3)] {
        caldera_db::workers::connect(&db.pool, name, "0", &[], slots, token.id, now)
            .await
            .unwrap();
    }
    let w3 = caldera_db::workers::connect(&db.pool, "w3", "0", &[], 7, token.id, now)
        .await
        .unwrap();
    caldera_db::workers::disconnect(&db.pool, w3).await.unwrap();
    assert_eq!(estimate::connected_slots(&db.pool).await.unwrap(), 5);

    assert_eq!(estimate::stored(&db.pool, id).await.unwrap(), None);
    let e = caldera_core::estimate::estimate(&[], &Default::default(), &Model::None, 5);
    estimate::store(&db.pool, id, &e, now).await.unwrap();
    let mut later = e.clone();
    later.slots = 9;
    estimate::store(&db.pool, id, &later, now).await.unwrap();
    let back = estimate::stored(&db.pool, id).await.unwrap().unwrap();
    let back: Estimate = back.estimate;
    assert_eq!(back, later, "storing again replaces");
    experiments::apply_action(&db.pool, "run", ExperimentAction::Abort)
        .await
        .unwrap();
    experiments::delete(&db.pool, "run").await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM experiment_estimates")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "deleted with its experiment");
}
