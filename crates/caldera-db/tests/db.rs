//! The database layer against a real private Postgres (one cluster per test binary, one
//! database per test).

mod cache;
mod estimate;
mod job_machine;
mod toolchains;

use caldera_core::experiment::{ExperimentEdit, ExperimentSpec};
use caldera_core::lifecycle::{ExperimentAction, ExperimentStatus};
use caldera_db::testing::TestDb;
use caldera_db::tokens::{self, Role};
use caldera_db::{DbError, crate_lists, experiments};

fn spec(name: &str) -> ExperimentSpec {
    ExperimentSpec::from_json(
        format!(r#"{{"name":"{name}","start":"stable","end":"nightly","mode":"build-and-test","crates":"serde,rand@0.8.5"}}"#)
            .as_bytes(),
    )
    .expect("valid spec")
}

async fn table_names(pool: &caldera_db::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_revert_and_reapply() {
    let db = TestDb::empty().await;
    assert!(table_names(&db.pool).await.is_empty());
    caldera_db::migrate(&db.pool).await.unwrap();
    let tables = table_names(&db.pool).await;
    assert_eq!(
        tables,
        [
            "api_tokens",
            "crate_list_entries",
            "crate_lists",
            "crates",
            "experiment_estimates",
            "experiment_toolchains",
            "experiments",
            "flakes",
            "job_counts",
            "job_queues",
            "jobs",
            "leases",
            "results",
            "triage_audit",
            "triage_marks",
            "workers"
        ]
    );
    caldera_db::migrate_down(&db.pool, 0).await.unwrap();
    assert!(
        table_names(&db.pool).await.is_empty(),
        "down migrations drop everything"
    );
    caldera_db::migrate(&db.pool).await.unwrap();
    assert_eq!(table_names(&db.pool).await, tables);
    // applying again is a no-op
    caldera_db::migrate(&db.pool).await.unwrap();
}

#[tokio::test]
async fn tokens_authenticate_by_hash_and_revoke() {
    let db = TestDb::new().await;
    let (row, secret) = tokens::create(&db.pool, "ops", Role::Operator)
        .await
        .unwrap();
    assert!(secret.starts_with(tokens::TOKEN_PREFIX));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32, "only the SHA-256 is stored");
    assert!(!String::from_utf8_lossy(&stored).contains(&secret[5..]));

    let found = tokens::authenticate(&db.pool, &secret)
        .await
        .unwrap()
        .expect("known token");
    assert_eq!((found.id, found.role), (row.id, Role::Operator));
    assert!(
        tokens::authenticate(&db.pool, "cldr_wrong")
            .await
            .unwrap()
            .is_none()
    );

    tokens::revoke(&db.pool, row.id).await.unwrap();
    assert!(
        tokens::authenticate(&db.pool, &secret)
            .await
            .unwrap()
            .is_none(),
        "revoked tokens stop working"
    );
    assert!(matches!(
        tokens::revoke(&db.pool, uuid::Uuid::new_v4()).await,
        Err(DbError::NotFound { .. })
    ));
    assert_eq!(tokens::list(&db.pool).await.unwrap().len(), 1);
}

#[tokio::test]
async fn experiments_create_list_and_reject_duplicates() {
    let db = TestDb::new().await;
    let a = experiments::create(&db.pool, &spec("alpha")).await.unwrap();
    assert_eq!(a.status, ExperimentStatus::Queued);
    assert_eq!(a.spec, spec("alpha"));
    experiments::create(&db.pool, &spec("beta")).await.unwrap();

    match experiments::create(&db.pool, &spec("alpha")).await {
        Err(DbError::Conflict {
            field: Some("name"),
            message,
        }) => assert!(message.contains("alpha"), "{message}"),
        other => panic!("expected a name conflict, got {other:?}"),
    }

    let page = experiments::list(&db.pool, None, 1, 0).await.unwrap();
    assert_eq!((page.total, page.items.len()), (2, 1));
    assert_eq!(page.items[0].name, "beta", "newest first");
    let page = experiments::list(&db.pool, None, 10, 1).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["alpha"]
    );

    experiments::apply_action(&db.pool, "alpha", ExperimentAction::Start)
        .await
        .unwrap();
    let running = experiments::list(&db.pool, Some(ExperimentStatus::Running), 10, 0)
        .await
        .unwrap();
    assert_eq!(
        running
            .items
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["alpha"]
    );
    assert_eq!(running.total, 1);
}

#[tokio::test]
async fn lifecycle_is_enforced_under_lock() {
    let db = TestDb::new().await;
    experiments::create(&db.pool, &spec("life")).await.unwrap();
    let err = experiments::apply_action(&db.pool, "life", ExperimentAction::Pause)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Conflict {
                field: Some("status"),
                ..
            }
        ),
        "{err:?}"
    );

    let started = experiments::apply_action(&db.pool, "life", ExperimentAction::Start)
        .await
        .unwrap();
    assert_eq!(started.status, ExperimentStatus::Running);
    assert!(started.started_at.is_some() && started.finished_at.is_none());
    let paused = experiments::apply_action(&db.pool, "life", ExperimentAction::Pause)
        .await
        .unwrap();
    assert_eq!(paused.status, ExperimentStatus::Paused);
    let resumed = experiments::apply_action(&db.pool, "life", ExperimentAction::Resume)
        .await
        .unwrap();
    assert_eq!(resumed.status, ExperimentStatus::Running);
    assert_eq!(
        resumed.started_at, started.started_at,
        "resuming keeps the first start time"
    );

    // running experiments can be neither edited nor deleted
    let edit = ExperimentEdit::from_json(br#"{"priority": 5}"#).unwrap();
    assert!(matches!(
        experiments::edit(&db.pool, "life", edit).await,
        Err(DbError::Conflict { .. })
    ));
    assert!(matches!(
        experiments::delete(&db.pool, "life").await,
        Err(DbError::Conflict { .. })
    ));

    let aborted = experiments::apply_action(&db.pool, "life", ExperimentAction::Abort)
        .await
        .unwrap();
    assert_eq!(aborted.status, ExperimentStatus::Aborted);
    assert!(aborted.finished_at.is_some());
    assert!(
        experiments::apply_action(&db.pool, "life", ExperimentAction::Resume)
            .await
            .is_err()
    );
    assert_eq!(
        experiments::get(&db.pool, "life").await.unwrap().status,
        ExperimentStatus::Aborted
    );
    experiments::delete(&db.pool, "life").await.unwrap();
    assert!(matches!(
        experiments::get(&db.pool, "life").await,
        Err(DbError::NotFound { .. })
    ));
}

#[tokio::test]
async fn pending_transition_rolls_back_when_dropped() {
    let db = TestDb::new().await;
    experiments::create(&db.pool, &spec("tx")).await.unwrap();
    let pending = experiments::begin_action(&db.pool, "tx", ExperimentAction::Start)
        .await
        .unwrap();
    assert_eq!(pending.next, ExperimentStatus::Running);
    drop(pending);
    assert_eq!(
        experiments::get(&db.pool, "tx").await.unwrap().status,
        ExperimentStatus::Queued
    );
}

#[tokio::test]
async fn edit_revalidates_and_changes_nothing_on_error() {
    let db = TestDb::new().await;
    experiments::create(&db.pool, &spec("ed")).await.unwrap();
    let edit = ExperimentEdit::from_json(br#"{"priority": 7, "mode": "check-only"}"#).unwrap();
    let row = experiments::edit(&db.pool, "ed", edit).await.unwrap();
    assert_eq!(row.spec.priority, 7);
    let (prio,): (i32,) = sqlx::query_as("SELECT priority FROM experiments WHERE name = 'ed'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(prio, 7, "the denormalised priority column follows the spec");

    let before = experiments::get(&db.pool, "ed").await.unwrap();
    // making end equal to start is invalid as a whole
    let edit = ExperimentEdit::from_json(br#"{"end": "stable"}"#).unwrap();
    let err = experiments::edit(&db.pool, "ed", edit).await.unwrap_err();
    assert!(matches!(&err, DbError::Invalid { .. }), "{err:?}");
    let after = experiments::get(&db.pool, "ed").await.unwrap();
    assert_eq!(
        (after.spec, after.updated_at),
        (before.spec, before.updated_at)
    );
}

#[tokio::test]
async fn crate_lists_round_trip_and_guard_their_users() {
    let db = TestDb::new().await;
    let crates: Vec<_> = ["serde", "rand@0.8.5", "anyhow"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    crate_lists::create(&db.pool, "popular", "a few", &crates)
        .await
        .unwrap();
    let got = crate_lists::get(&db.pool, "popular").await.unwrap();
    assert_eq!(got.crates, crates, "order is kept");
    assert!(matches!(
        crate_lists::create(&db.pool, "popular", "", &crates).await,
        Err(DbError::Conflict {
            field: Some("name"),
            ..
        })
    ));
    let summaries = crate_lists::list(&db.pool).await.unwrap();
    assert_eq!(
        (summaries[0].name.as_str(), summaries[0].len),
        ("popular", 3)
    );

    // an experiment may only name an existing list
    let mut s = spec("uses-list");
    s.crates = "list:missing".parse().unwrap();
    assert!(matches!(
        experiments::create(&db.pool, &s).await,
        Err(DbError::Invalid { .. })
    ));
    s.crates = "list:popular".parse().unwrap();
    experiments::create(&db.pool, &s).await.unwrap();
    let err = crate_lists::delete(&db.pool, "popular").await.unwrap_err();
    match err {
        DbError::Conflict { message, .. } => assert!(message.contains("uses-list"), "{message}"),
        other => panic!("{other:?}"),
    }
    experiments::delete(&db.pool, "uses-list").await.unwrap();
    crate_lists::delete(&db.pool, "popular").await.unwrap();
    assert!(matches!(
        crate_lists::get(&db.pool, "popular").await,
        Err(DbError::NotFound { .. })
    ));
}

#[tokio::test]
async fn progress_counts_and_hand_back_all_requeues_running_jobs() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let row = experiments::create(&db.pool, &spec("p")).await.unwrap();
    assert_eq!(
        jobs::progress_of(&db.pool, row.id).await.unwrap(),
        jobs::Progress::default(),
        "no jobs yet"
    );
    experiments::apply_action(&db.pool, "p", ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<caldera_core::crates::CrateId> = ["a@1.0.0", "b@1.0.0", "c@1.0.0"]
        .iter()
        .map(|c| format!("reg:{c}").parse().unwrap())
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        jobs::create_for_experiment(&mut tx, row.id, &crates)
            .await
            .unwrap(),
        3
    );
    tx.commit().await.unwrap();
    let now = chrono::Utc::now();
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let worker = caldera_db::workers::connect(&db.pool, "w1", "0", &[], 2, token.id, now)
        .await
        .unwrap();
    let claimed = jobs::claim(
        &db.pool,
        worker,
        &[],
        2,
        now,
        chrono::Duration::seconds(600),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.attempt == 1));
    let p = jobs::progress_of(&db.pool, row.id).await.unwrap();
    assert_eq!((p.queued, p.running, p.total()), (1, 2, 3));

    assert_eq!(jobs::hand_back_all(&db.pool, now).await.unwrap(), 2);
    let p = jobs::progress_of(&db.pool, row.id).await.unwrap();
    assert_eq!((p.queued, p.running), (3, 0));
    // the old leases are void, and no attempt was used up
    for c in &claimed {
        assert!(
            !jobs::hand_back(&db.pool, c.job_id, c.lease_token, now)
                .await
                .unwrap()
        );
    }
    let again = jobs::claim(
        &db.pool,
        worker,
        &[],
        3,
        now,
        chrono::Duration::seconds(600),
    )
    .await
    .unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.attempt == 1), "{again:?}");
    assert_eq!(jobs::hand_back_all(&db.pool, now).await.unwrap(), 3);
    assert_eq!(jobs::hand_back_all(&db.pool, now).await.unwrap(), 0);
}

#[tokio::test]
async fn infrastructure_errors_are_retried_until_the_attempt_cap() {
    use caldera_core::outcome::Outcome;
    use caldera_db::jobs::{self, Completion, SideRecord};
    let db = TestDb::new().await;
    let row = experiments::create(&db.pool, &spec("infra")).await.unwrap();
    experiments::apply_action(&db.pool, "infra", ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<caldera_core::crates::CrateId> = ["reg:a@1.0.0", "reg:b@1.0.0"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    jobs::create_for_experiment(&mut tx, row.id, &crates)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = chrono::Utc::now();
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let worker = caldera_db::workers::connect(&db.pool, "w1", "0", &[], 2, token.id, now)
        .await
        .unwrap();
    let side = |outcome: Outcome| SideRecord {
        cache_key: None,
        outcome,
        log_key: None,
        duration_ms: 1,
        peak_memory_bytes: 0,
        steps: Vec::new(),
    };
    let engine_down = || Outcome::Error {
        reason: "the Docker engine is not reachable".into(),
    };
    let results = |pool: caldera_db::PgPool| async move {
        sqlx::query_as::<_, (String, String)>(
            "SELECT c.crate_id, r.outcome_kind FROM results r JOIN crates c ON c.id = r.crate_id ORDER BY 1, r.toolchain",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    const MAX: i32 = 2;
    for attempt in 1..=MAX {
        let claimed = jobs::claim(
            &db.pool,
            worker,
            &[],
            2,
            now,
            chrono::Duration::seconds(600),
        )
        .await
        .unwrap();
        assert_eq!(
            claimed.len(),
            if attempt == 1 { 2 } else { 1 },
            "{claimed:?}"
        );
        let batch: Vec<Completion> = claimed
            .iter()
            .map(|c| Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker,
                // a: the engine was down on the end side; b: a real result
                start: side(Outcome::TestPass),
                end: side(if c.crate_id == "reg:a@1.0.0" {
                    engine_down()
                } else {
                    Outcome::TestPass
                }),
            })
            .collect();
        let out = jobs::complete(&db.pool, &batch, now, MAX).await.unwrap();
        let a = claimed
            .iter()
            .find(|c| c.crate_id == "reg:a@1.0.0")
            .unwrap();
        assert_eq!(a.attempt, attempt);
        if attempt < MAX {
            assert_eq!(out.requeued, vec![a.job_id], "{out:?}");
            assert_eq!(out.accepted.len(), 1, "b is recorded: {out:?}");
            let last_error: Option<String> =
                sqlx::query_scalar("SELECT last_error FROM jobs WHERE id = $1")
                    .bind(a.job_id)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(
                last_error.as_deref(),
                Some("the Docker engine is not reachable")
            );
            assert_eq!(
                results(db.pool.clone()).await,
                vec![
                    ("reg:b@1.0.0".to_owned(), "test-pass".to_owned()),
                    ("reg:b@1.0.0".to_owned(), "test-pass".to_owned())
                ],
                "nothing recorded for a yet"
            );
        } else {
            // the last attempt: the error is the result
            assert!(out.requeued.is_empty(), "{out:?}");
            assert_eq!(out.accepted, vec![a.job_id]);
        }
    }
    assert_eq!(
        results(db.pool.clone()).await,
        vec![
            ("reg:a@1.0.0".to_owned(), "error".to_owned()),
            ("reg:a@1.0.0".to_owned(), "test-pass".to_owned()),
            ("reg:b@1.0.0".to_owned(), "test-pass".to_owned()),
            ("reg:b@1.0.0".to_owned(), "test-pass".to_owned())
        ]
    );
    let p = jobs::progress_of(&db.pool, row.id).await.unwrap();
    assert_eq!((p.done, p.queued, p.running), (2, 0, 0));
}

#[tokio::test]
async fn workers_listing_toolchains_get_only_jobs_they_can_build() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    // stable vs nightly (see `spec`)
    let row = experiments::create(&db.pool, &spec("tc")).await.unwrap();
    let mut pending = experiments::begin_action(&db.pool, "tc", ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<caldera_core::crates::CrateId> = (0..4)
        .map(|i| format!("reg:c{i}@1.0.0").parse().unwrap())
        .collect();
    jobs::create_for_experiment(&mut pending.tx, row.id, &crates)
        .await
        .unwrap();
    jobs::set_implied_requirements(
        &mut pending.tx,
        row.id,
        &pending.current.spec.implied_requirements(),
    )
    .await
    .unwrap();
    pending.commit().await.unwrap();
    let now = chrono::Utc::now();
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let claim = async |name: &str, caps: &[&str]| {
        let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
        let worker = caldera_db::workers::connect(&db.pool, name, "0", &caps, 1, token.id, now)
            .await
            .unwrap();
        jobs::claim(
            &db.pool,
            worker,
            &caps,
            1,
            now,
            chrono::Duration::seconds(60),
        )
        .await
        .unwrap()
        .len()
    };
    // has stable only: nothing
    assert_eq!(
        claim("stable-only", &["docker", "toolchain:stable"]).await,
        0
    );
    assert_eq!(claim("nightly-only", &["toolchain:nightly"]).await, 0);
    // has both
    assert_eq!(
        claim("both", &["docker", "toolchain:stable", "toolchain:nightly"]).await,
        1
    );
    // lists no toolchain at all (an executor that provides them its own way): not filtered
    assert_eq!(claim("no-list", &["docker"]).await, 1);
    assert_eq!(claim("nothing", &[]).await, 1);
}

/// The queue's mechanics at the SQL level: claims follow priority then age and continue into the
/// next experiment; renewals keep leases alive; the reaper re-queues the jobs of expired leases
/// below the claim cursor, where the next claim finds them; the kept counts stay exact.
#[tokio::test]
async fn claims_follow_priority_and_expired_leases_come_back_below_the_cursor() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let start = async |name: &str, priority: i32, n: usize, requirements: &str| {
        let spec = ExperimentSpec::from_json(
            format!(
                r#"{{"name":"{name}","start":"stable","end":"nightly","priority":{priority},"requirements":{requirements},"crates":"x"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let row = experiments::create(&db.pool, &spec).await.unwrap();
        let mut pending = experiments::begin_action(&db.pool, name, ExperimentAction::Start)
            .await
            .unwrap();
        let crates: Vec<caldera_core::crates::CrateId> = (0..n)
            .map(|i| format!("reg:{name}{i}@1.0.0").parse().unwrap())
            .collect();
        jobs::create_for_experiment(&mut pending.tx, row.id, &crates)
            .await
            .unwrap();
        pending.commit().await.unwrap();
        row.id
    };
    let low = start("low", 0, 3, "[]").await;
    let high = start("high", 5, 2, "[]").await;
    let later = start("later", 0, 2, "[]").await;
    let special = start("special", 9, 2, r#"["gpu"]"#).await;
    let t0 = chrono::Utc::now();
    let lease = chrono::Duration::seconds(60);
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let w1 = caldera_db::workers::connect(&db.pool, "w1", "0", &[], 8, token.id, t0)
        .await
        .unwrap();
    let w2 = caldera_db::workers::connect(&db.pool, "w2", "0", &[], 8, token.id, t0)
        .await
        .unwrap();

    // w1 (no gpu) takes high's two jobs, then low's first two: priority, then age, one claim
    let first = jobs::claim(&db.pool, w1, &[], 4, t0, lease).await.unwrap();
    let names: Vec<&str> = first.iter().map(|c| c.experiment.as_str()).collect();
    assert_eq!(
        names,
        ["low", "low", "high", "high"],
        "sorted by job id: {first:?}"
    );
    assert!(first.iter().all(|c| c.attempt == 1));
    // w2 takes the rest of low, then later's
    let second = jobs::claim(&db.pool, w2, &[], 8, t0, lease).await.unwrap();
    let names: Vec<&str> = second.iter().map(|c| c.experiment.as_str()).collect();
    assert_eq!(names, ["low", "later", "later"]);
    // nothing left for a worker without a gpu; special waits for one
    assert!(
        jobs::claim(&db.pool, w2, &[], 8, t0, lease)
            .await
            .unwrap()
            .is_empty()
    );
    let p = jobs::progress_of(&db.pool, special).await.unwrap();
    assert_eq!((p.queued, p.running), (2, 0));

    // w1 renews its leases at t0 + 50 s; w2 does not. At t0 + 90 s only w2's jobs expire.
    let t1 = t0 + chrono::Duration::seconds(50);
    let held: Vec<(i64, uuid::Uuid)> = first.iter().map(|c| (c.job_id, c.lease_token)).collect();
    let mut bogus = held.clone();
    bogus.push((second[0].job_id, uuid::Uuid::new_v4()));
    let current = jobs::renew(&db.pool, w1, &bogus, t1, lease).await.unwrap();
    assert_eq!(current.len(), 4, "the made-up token is not current");
    let t2 = t0 + chrono::Duration::seconds(90);
    let reaped = jobs::reap(&db.pool, t2, 3).await.unwrap();
    let mut expected: Vec<i64> = second.iter().map(|c| c.job_id).collect();
    expected.sort();
    let mut requeued = reaped.requeued.clone();
    requeued.sort();
    assert_eq!(requeued, expected);
    assert!(reaped.errored.is_empty());
    assert!(
        jobs::reap(&db.pool, t2, 3)
            .await
            .unwrap()
            .requeued
            .is_empty(),
        "a lease is reaped once"
    );
    let p = jobs::progress_of(&db.pool, low).await.unwrap();
    assert_eq!((p.queued, p.running), (1, 2));

    // the re-queued jobs are below low's and later's cursors, and are found again, attempt 2
    let again = jobs::claim(&db.pool, w1, &[], 8, t2, lease).await.unwrap();
    let got: Vec<(i64, i32)> = again.iter().map(|c| (c.job_id, c.attempt)).collect();
    let want: Vec<(i64, i32)> = expected.iter().map(|id| (*id, 2)).collect();
    assert_eq!(got, want);
    // the old tokens are void
    let stale: Vec<(i64, uuid::Uuid)> = second.iter().map(|c| (c.job_id, c.lease_token)).collect();
    assert!(
        jobs::renew(&db.pool, w2, &stale, t2, lease)
            .await
            .unwrap()
            .is_empty()
    );

    // a gpu worker gets special's jobs
    let gpu = jobs::claim(&db.pool, w2, &["gpu".to_owned()], 8, t2, lease)
        .await
        .unwrap();
    assert_eq!(gpu.len(), 2);
    assert!(gpu.iter().all(|c| c.experiment == "special"));
    for id in [low, high, later, special] {
        let p = jobs::progress_of(&db.pool, id).await.unwrap();
        assert_eq!(p.queued, 0, "{p:?}");
    }
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    // the workers list counts running jobs through the leases
    let listed = caldera_db::workers::list(&db.pool).await.unwrap();
    let running: Vec<(String, i64)> = listed.iter().map(|w| (w.name.clone(), w.running)).collect();
    assert_eq!(running, [("w1".to_owned(), 7), ("w2".to_owned(), 2)]);

    // one of low's jobs finishes; then low is aborted and deleted: its jobs, results, cursor and
    // counts all go (results and jobs have no foreign key to cascade along)
    let c = &first[0];
    assert_eq!(c.experiment, "low");
    let done = jobs::complete(
        &db.pool,
        &[jobs::Completion {
            job_id: c.job_id,
            lease_token: c.lease_token,
            worker: w1,
            start: side(),
            end: side(),
        }],
        t2,
        3,
    )
    .await
    .unwrap();
    assert_eq!(done.accepted, [c.job_id]);
    let mut pending = experiments::begin_action(&db.pool, "low", ExperimentAction::Abort)
        .await
        .unwrap();
    jobs::cancel_experiment(&mut pending.tx, low).await.unwrap();
    pending.commit().await.unwrap();
    experiments::delete(&db.pool, "low").await.unwrap();
    for table in ["jobs", "results", "job_queues", "job_counts"] {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE experiment_id = $1"
        ))
        .bind(low)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}

/// A claim's id windows skip what is not the experiment's or not queued: jobs of two experiments
/// interleaved id by id (concurrent starts), and a long run of finished jobs behind a lowered
/// cursor, are walked in doubling windows and nothing queued is missed or taken twice.
#[tokio::test]
async fn claim_windows_walk_over_gaps_and_finished_runs() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for (name, priority) in [("first", 1), ("second", 0)] {
        let spec = ExperimentSpec::from_json(
            format!(r#"{{"name":"{name}","start":"stable","end":"nightly","priority":{priority},"crates":"x"}}"#)
                .as_bytes(),
        )
        .unwrap();
        let row = experiments::create(&db.pool, &spec).await.unwrap();
        experiments::apply_action(&db.pool, name, ExperimentAction::Start)
            .await
            .unwrap();
        ids.push(row.id);
    }
    // 300 jobs each, interleaved: first gets the odd ids, second the even ones
    sqlx::query(
        "INSERT INTO crates (crate_id, kind, name, version)
         SELECT 'reg:k' || i || '@1.0.0', 'registry', 'k' || i, '1.0.0' FROM generate_series(1, 600) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (experiment_id, crate_id, state)
         SELECT CASE WHEN c.id % 2 = 1 THEN $1 ELSE $2 END, c.id, 'queued' FROM crates c ORDER BY c.id",
    )
    .bind(ids[0])
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_queues (experiment_id, next_job, last_job)
         SELECT experiment_id, min(id), max(id) FROM jobs GROUP BY experiment_id",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let lease = chrono::Duration::seconds(60);
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let w = caldera_db::workers::connect(&db.pool, "w", "0", &[], 1000, token.id, now)
        .await
        .unwrap();
    // 250 of first's 300, across the gaps
    let a = jobs::claim(&db.pool, w, &[], 250, now, lease)
        .await
        .unwrap();
    assert_eq!(a.len(), 250);
    assert!(a.iter().all(|c| c.experiment == "first"));
    // the rest: first's last 50, then second's 300 (priority), each once
    let b = jobs::claim(&db.pool, w, &[], 1000, now, lease)
        .await
        .unwrap();
    assert_eq!(b.len(), 350);
    assert_eq!(b.iter().filter(|c| c.experiment == "first").count(), 50);
    let mut all: Vec<i64> = a.iter().chain(&b).map(|c| c.job_id).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 600, "every job once");

    // first's jobs all finish but one, far behind, which comes back: the cursor drops to it and
    // the next claim walks over the 299 finished ones to find it
    let back = a[0].clone();
    let finished: Vec<jobs::Completion> = a
        .iter()
        .chain(b.iter().filter(|c| c.experiment == "first"))
        .filter(|c| c.job_id != back.job_id)
        .map(|c| jobs::Completion {
            job_id: c.job_id,
            lease_token: c.lease_token,
            worker: w,
            start: side(),
            end: side(),
        })
        .collect();
    assert_eq!(
        jobs::complete(&db.pool, &finished, now, 3)
            .await
            .unwrap()
            .accepted
            .len(),
        299
    );
    assert!(
        jobs::hand_back(&db.pool, back.job_id, back.lease_token, now)
            .await
            .unwrap()
    );
    let again = jobs::claim(&db.pool, w, &[], 10, now, lease).await.unwrap();
    let got: Vec<(i64, i32)> = again.iter().map(|c| (c.job_id, c.attempt)).collect();
    assert_eq!(got, [(back.job_id, 1)], "handed back: the same attempt");
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}

/// A passing side, as a worker reports it.
fn side() -> caldera_db::jobs::SideRecord {
    caldera_db::jobs::SideRecord {
        cache_key: None,
        outcome: caldera_core::outcome::Outcome::TestPass,
        log_key: None,
        duration_ms: 1,
        peak_memory_bytes: 0,
        steps: Vec::new(),
    }
}

/// A results row that already exists for a running job (which the schema's invariants rule out;
/// a hand-edited database) does not make its batch fail for ever: the batch is written again
/// keeping the row that was there, and the other jobs of the batch complete normally.
#[tokio::test]
async fn a_result_row_that_already_exists_is_kept_and_the_batch_still_completes() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let experiment = started_with_jobs(&db, "dup", &["a@1.0.0", "b@1.0.0"]).await;
    let now = chrono::Utc::now();
    let worker = uuid::Uuid::new_v4();
    let claimed = jobs::claim(&db.pool, worker, &[], 2, now, chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    // a stray row for the first job's start side
    sqlx::query(
        "INSERT INTO results (experiment_id, crate_id, toolchain, job_id, outcome, outcome_kind)
         SELECT experiment_id, crate_id, 'start', id, '{\"kind\": \"skipped\"}', 'skipped'
         FROM jobs WHERE id = $1",
    )
    .bind(claimed[0].job_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let batch: Vec<jobs::Completion> = claimed
        .iter()
        .map(|c| jobs::Completion {
            job_id: c.job_id,
            lease_token: c.lease_token,
            worker,
            start: side(),
            end: side(),
        })
        .collect();
    let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
    assert_eq!(out.accepted.len(), 2, "{out:?}");
    assert!(
        out.rejected.is_empty() && out.requeued.is_empty(),
        "{out:?}"
    );
    let kinds: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT job_id, toolchain, outcome_kind FROM results ORDER BY job_id, toolchain DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let (a, b) = (claimed[0].job_id, claimed[1].job_id);
    let expected: Vec<(i64, String, String)> = [
        (a, "start", "skipped"),
        (a, "end", "test-pass"),
        (b, "start", "test-pass"),
        (b, "end", "test-pass"),
    ]
    .into_iter()
    .map(|(j, s, k)| (j, s.to_owned(), k.to_owned()))
    .collect();
    assert_eq!(kinds, expected, "the row that was there is kept");
    let p = jobs::progress_of(&db.pool, experiment).await.unwrap();
    assert_eq!((p.done, p.running, p.queued), (2, 0, 0));
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}

/// The claimer keeps one connection; when that connection dies (a Postgres restart, an operator's
/// `pg_terminate_backend`), one claim fails and the next opens a new connection and works.
#[tokio::test]
async fn the_claimer_reconnects_after_its_connection_is_killed() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let experiment = started_with_jobs(&db, "rc", &["a@1.0.0", "b@1.0.0", "c@1.0.0"]).await;
    let now = chrono::Utc::now();
    let worker = uuid::Uuid::new_v4();
    let lease = chrono::Duration::hours(1);
    let mut claimer = jobs::Claimer::new(&db.pool);
    assert_eq!(
        claimer
            .claim(worker, &[], 1, now, lease)
            .await
            .unwrap()
            .len(),
        1
    );
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'caldera-claims' AND datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "the claimer's own connection");
    let err = claimer.claim(worker, &[], 1, now, lease).await.unwrap_err();
    assert!(err.to_string().contains("database error"), "{err}");
    let p = jobs::progress_of(&db.pool, experiment).await.unwrap();
    assert_eq!(
        (p.queued, p.running),
        (2, 1),
        "the failed claim took nothing"
    );
    let again = claimer.claim(worker, &[], 2, now, lease).await.unwrap();
    assert_eq!(again.len(), 2);
    let p = jobs::progress_of(&db.pool, experiment).await.unwrap();
    assert_eq!((p.queued, p.running), (0, 3));
}

/// A started experiment with one queued job per crate (`name@version`); returns its id.
async fn started_with_jobs(db: &TestDb, name: &str, crates: &[&str]) -> uuid::Uuid {
    let row = experiments::create(&db.pool, &spec(name)).await.unwrap();
    experiments::apply_action(&db.pool, name, ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<caldera_core::crates::CrateId> = crates
        .iter()
        .map(|c| format!("reg:{c}").parse().unwrap())
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    caldera_db::jobs::create_for_experiment(&mut tx, row.id, &crates)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    row.id
}

/// A side with this outcome, taking `ms`.
fn side_of(outcome: caldera_core::outcome::Outcome, ms: i64) -> caldera_db::jobs::SideRecord {
    caldera_db::jobs::SideRecord {
        cache_key: None,
        outcome,
        log_key: Some(format!("log-{ms}")),
        duration_ms: ms,
        peak_memory_bytes: 0,
        steps: Vec::new(),
    }
}

/// (crate, run, state, avoid_worker) of every job, by crate and run.
async fn job_runs(
    pool: &caldera_db::PgPool,
    experiment: uuid::Uuid,
) -> Vec<(String, i16, String, Option<uuid::Uuid>)> {
    sqlx::query_as(
        "SELECT c.crate_id, j.run, j.state, j.avoid_worker FROM jobs j JOIN crates c ON c.id = j.crate_id
         WHERE j.experiment_id = $1 ORDER BY 1, 2",
    )
    .bind(experiment)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A regressed or fixed first run queues `confirm` confirmation runs in the statement that
/// records it (none for other comparisons, none for the confirmation runs themselves); the
/// experiment cannot complete before they finish; the worker that ran the first run does not get
/// them while another worker that could take them is connected; the statuses come out of the
/// runs' comparisons, and the report still reads run 0 only.
#[tokio::test]
async fn regressions_and_fixes_are_confirmed_by_more_runs() {
    use caldera_core::confirm::ConfirmationStatus;
    use caldera_core::outcome::{BuildFailReason, Comparison, Outcome};
    use caldera_db::jobs::{self, Completion};
    let db = TestDb::new().await;
    let experiment = started_with_jobs(&db, "conf", &["a@1.0.0", "b@1.0.0", "c@1.0.0"]).await;
    let now = chrono::Utc::now();
    let lease = chrono::Duration::hours(1);
    let (w1, w2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let broken = || {
        Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        })
    };
    // a regression: builds on start, not on end
    let fail = broken;
    let mut claimer = jobs::Claimer::new(&db.pool);
    let first = claimer.claim(w1, &[], 3, now, lease).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|c| c.run == 0));
    // a regresses, b passes on both, c is fixed
    let batch: Vec<Completion> = first
        .iter()
        .map(|c| {
            let (start, end) = match c.crate_id.as_str() {
                "reg:a@1.0.0" => (Outcome::TestPass, fail()),
                "reg:b@1.0.0" => (Outcome::TestPass, Outcome::TestPass),
                _ => (broken(), Outcome::TestPass),
            };
            Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker: w1,
                start: side_of(start, 10),
                end: side_of(end, 10),
            }
        })
        .collect();
    let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
    assert_eq!(out.accepted.len(), 3, "{out:?}");
    assert_eq!(out.confirmations, 4, "{out:?}");
    let queued = |c: &str, run: i16| (format!("reg:{c}"), run, "queued".to_owned(), Some(w1));
    let done = |c: &str, run: i16| (format!("reg:{c}"), run, "done".to_owned(), None);
    assert_eq!(
        job_runs(&db.pool, experiment).await,
        vec![
            done("a@1.0.0", 0),
            queued("a@1.0.0", 1),
            queued("a@1.0.0", 2),
            done("b@1.0.0", 0),
            done("c@1.0.0", 0),
            queued("c@1.0.0", 1),
            queued("c@1.0.0", 2),
        ]
    );
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    let p = jobs::progress_of(&db.pool, experiment).await.unwrap();
    assert_eq!((p.queued, p.done), (4, 3));
    assert!(
        jobs::finished_experiments(&db.pool, &[experiment])
            .await
            .unwrap()
            .is_empty(),
        "not finished while confirmation runs are queued"
    );
    let c = caldera_db::confirmations::of_experiment(&db.pool, experiment)
        .await
        .unwrap();
    assert_eq!((c.pending, c.runs_created, c.runs_finished), (2, 4, 0));

    // w1 ran the first runs: while a worker that could take them is connected, it gets none
    let got = claimer
        .claim_among(w1, &[], &[vec![]], 10, now, lease)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    // … but when the other worker cannot build these toolchains, w1 takes one
    let mut tx = db.pool.begin().await.unwrap();
    jobs::set_implied_requirements(
        &mut tx,
        experiment,
        &["toolchain:stable".into(), "toolchain:nightly".into()],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let other = vec!["toolchain:beta".to_owned()];
    let got = claimer
        .claim_among(w1, &[], &[other], 1, now, lease)
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|c| (c.crate_id.as_str(), c.run))
            .collect::<Vec<_>>(),
        [("reg:a@1.0.0", 1)]
    );
    let a1 = got[0].clone();
    // the other worker finds the rest below the cursor the first claim did not pass
    let got = claimer
        .claim_among(w2, &[], &[vec![]], 10, now, lease)
        .await
        .unwrap();
    assert_eq!(
        got.iter()
            .map(|c| (c.crate_id.as_str(), c.run))
            .collect::<Vec<_>>(),
        [("reg:a@1.0.0", 2), ("reg:c@1.0.0", 1), ("reg:c@1.0.0", 2)]
    );
    let find = |k: &str, run: i16| {
        got.iter()
            .find(|c| c.crate_id == k && c.run == run)
            .unwrap()
    };
    let (a2, c1, c2) = (
        find("reg:a@1.0.0", 2).clone(),
        find("reg:c@1.0.0", 1).clone(),
        find("reg:c@1.0.0", 2).clone(),
    );
    let completion = |c: &jobs::Claimed, worker, start, end| Completion {
        job_id: c.job_id,
        lease_token: c.lease_token,
        worker,
        start: side_of(start, 100),
        end: side_of(end, 100),
    };
    // a's first confirmation agrees, c's too: pending both
    let out = jobs::complete(
        &db.pool,
        &[
            completion(&a1, w1, Outcome::TestPass, fail()),
            completion(&c1, w2, broken(), Outcome::TestPass),
        ],
        now,
        3,
    )
    .await
    .unwrap();
    assert_eq!(out.accepted.len(), 2, "{out:?}");
    assert_eq!(
        out.confirmations, 0,
        "confirmation runs are not confirmed again"
    );
    let c = caldera_db::confirmations::of_experiment(&db.pool, experiment)
        .await
        .unwrap();
    assert_eq!((c.pending, c.confirmed, c.flaky), (2, 0, 0), "{c:#?}");
    assert_eq!(c.runs_finished, 2);
    // a's second agrees (confirmed); c's second passes on both sides (flaky)
    jobs::complete(
        &db.pool,
        &[
            completion(&a2, w2, Outcome::TestPass, fail()),
            completion(&c2, w2, Outcome::TestPass, Outcome::TestPass),
        ],
        now,
        3,
    )
    .await
    .unwrap();
    assert_eq!(
        job_runs(&db.pool, experiment).await.len(),
        7,
        "confirmation runs are not confirmed again"
    );
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
    assert_eq!(
        jobs::finished_experiments(&db.pool, &[experiment])
            .await
            .unwrap(),
        ["conf"]
    );
    let c = caldera_db::confirmations::of_experiment(&db.pool, experiment)
        .await
        .unwrap();
    assert_eq!((c.confirmed, c.flaky, c.pending), (1, 1, 0), "{c:#?}");
    assert_eq!((c.runs_created, c.runs_finished), (4, 4));
    assert_eq!(c.duration_ms, 4 * 2 * 100, "both sides of 4 runs");
    assert_eq!(
        c.status_of("reg:a@1.0.0"),
        Some(ConfirmationStatus::Confirmed)
    );
    assert_eq!(c.status_of("reg:b@1.0.0"), None, "b was not re-run");
    let flaky = &c.crates[1];
    assert_eq!(
        (flaky.krate.as_str(), flaky.comparison, flaky.status),
        ("reg:c@1.0.0", Comparison::Fixed, ConfirmationStatus::Flaky)
    );
    let per_run: Vec<(i16, Option<Comparison>, Option<String>)> = flaky
        .runs
        .iter()
        .map(|r| {
            (
                r.run,
                r.comparison,
                r.end.as_ref().and_then(|s| s.log_key.clone()),
            )
        })
        .collect();
    assert_eq!(
        per_run,
        [
            (0, Some(Comparison::Fixed), Some("log-10".to_owned())),
            (1, Some(Comparison::Fixed), Some("log-100".to_owned())),
            (
                2,
                Some(Comparison::SameTestPass),
                Some("log-100".to_owned())
            ),
        ]
    );
    // the report reads the first runs only
    let report = caldera_db::results::report_input(&db.pool, experiment, true)
        .await
        .unwrap();
    assert_eq!(report.len(), 3);
    assert_eq!(report[0].end, fail());
    assert_eq!(report[0].end_log.as_deref(), Some("log-10"));
}

/// With `confirm: 0` nothing is re-run.
#[tokio::test]
async fn confirm_zero_queues_no_confirmation_runs() {
    use caldera_core::outcome::Outcome;
    use caldera_db::jobs::{self, Completion};
    let db = TestDb::new().await;
    let mut s = spec("noconf");
    s.confirm = 0;
    let row = experiments::create(&db.pool, &s).await.unwrap();
    experiments::apply_action(&db.pool, "noconf", ExperimentAction::Start)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    jobs::create_for_experiment(&mut tx, row.id, &["reg:a@1.0.0".parse().unwrap()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = chrono::Utc::now();
    let w = uuid::Uuid::new_v4();
    let got = jobs::claim(&db.pool, w, &[], 1, now, chrono::Duration::hours(1))
        .await
        .unwrap();
    let out = jobs::complete(
        &db.pool,
        &[Completion {
            job_id: got[0].job_id,
            lease_token: got[0].lease_token,
            worker: w,
            start: side_of(Outcome::TestPass, 1),
            end: side_of(
                Outcome::BuildFail(caldera_core::outcome::BuildFailReason::CompilerError {
                    codes: vec![],
                }),
                1,
            ),
        }],
        now,
        3,
    )
    .await
    .unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(job_runs(&db.pool, row.id).await.len(), 1);
    assert_eq!(
        jobs::finished_experiments(&db.pool, &[row.id])
            .await
            .unwrap(),
        ["noconf"]
    );
    let c = caldera_db::confirmations::of_experiment(&db.pool, row.id)
        .await
        .unwrap();
    assert!(c.crates.is_empty() && c.runs_created == 0, "{c:?}");
}

/// A full claim batch that skips jobs kept for another worker leaves the cursor at the first of
/// them, so that the other worker's claim still finds them.
#[tokio::test]
async fn a_full_claim_does_not_move_the_cursor_past_jobs_it_left() {
    use caldera_core::outcome::{BuildFailReason, Outcome};
    use caldera_db::jobs::{self, Completion};
    let db = TestDb::new().await;
    let experiment = started_with_jobs(&db, "held", &["a@1.0.0", "b@1.0.0"]).await;
    let now = chrono::Utc::now();
    let lease = chrono::Duration::hours(1);
    let (w1, w2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let regressed = |c: &jobs::Claimed, worker| Completion {
        job_id: c.job_id,
        lease_token: c.lease_token,
        worker,
        start: side_of(Outcome::TestPass, 1),
        end: side_of(
            Outcome::BuildFail(BuildFailReason::CompilerError { codes: vec![] }),
            1,
        ),
    };
    // w1 runs a, w2 runs b: a's re-runs are for w2, b's for w1 (ids: a1, a2, b1, b2)
    let a = jobs::claim(&db.pool, w1, &[], 1, now, lease).await.unwrap();
    let b = jobs::claim(&db.pool, w2, &[], 1, now, lease).await.unwrap();
    jobs::complete(
        &db.pool,
        &[regressed(&a[0], w1), regressed(&b[0], w2)],
        now,
        3,
    )
    .await
    .unwrap();
    let mut claimer = jobs::Claimer::new(&db.pool);
    let got = claimer
        .claim_among(w1, &[], &[vec![]], 2, now, lease)
        .await
        .unwrap();
    let runs = |got: &[jobs::Claimed]| -> Vec<(String, i16)> {
        got.iter().map(|c| (c.crate_id.clone(), c.run)).collect()
    };
    assert_eq!(
        runs(&got),
        [("reg:b@1.0.0".to_owned(), 1), ("reg:b@1.0.0".to_owned(), 2)]
    );
    let got = claimer
        .claim_among(w2, &[], &[vec![]], 2, now, lease)
        .await
        .unwrap();
    assert_eq!(
        runs(&got),
        [("reg:a@1.0.0".to_owned(), 1), ("reg:a@1.0.0".to_owned(), 2)]
    );
    let p = jobs::progress_of(&db.pool, experiment).await.unwrap();
    assert_eq!((p.queued, p.running, p.done), (0, 4, 2));
    let drift = jobs::count_drift(&db.pool).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");
}

mod triage {
    use caldera_core::triage::{MarkKind, MarkRequest};
    use caldera_db::DbError;
    use caldera_db::testing::TestDb;
    use caldera_db::triage::{self, CrateRef, Origin, SetOutcome, Target};

    fn req(kind: MarkKind, link: Option<&str>, note: &str) -> MarkRequest {
        MarkRequest {
            kind,
            link: link.map(str::to_owned),
            note: note.to_owned(),
        }
    }

    fn origin<'a>(experiment: &'a str, actor: &'a str) -> Origin<'a> {
        Origin {
            experiment,
            crate_id: "reg:foo@1.0.0",
            actor,
        }
    }

    const E0308: &str = "build-fail:compiler-error(E0308)";

    #[tokio::test]
    async fn set_update_remove_are_audited() {
        let db = TestDb::new().await;
        let p = &db.pool;
        let (m, how) = triage::set(
            p,
            "foo",
            E0308,
            &req(MarkKind::Expected, None, "lang change"),
            origin("e1", "alice"),
        )
        .await
        .unwrap();
        assert_eq!(how, SetOutcome::Created);
        assert_eq!(
            (m.kind, m.created_by.as_str(), m.updated_by.as_str()),
            (MarkKind::Expected, "alice", "alice")
        );
        // the same mark again changes nothing and is not audited
        let (_, how) = triage::set(
            p,
            "foo",
            E0308,
            &req(MarkKind::Expected, None, "lang change"),
            origin("e2", "bob"),
        )
        .await
        .unwrap();
        assert_eq!(how, SetOutcome::Unchanged);
        let link = "https://github.com/rust-lang/rust/issues/1";
        let (m, how) = triage::set(
            p,
            "foo",
            E0308,
            &req(MarkKind::KnownIssue, Some(link), "tracked"),
            origin("e2", "bob"),
        )
        .await
        .unwrap();
        assert_eq!(how, SetOutcome::Updated);
        assert_eq!(
            (
                m.created_by.as_str(),
                m.updated_by.as_str(),
                m.experiment.as_str()
            ),
            ("alice", "bob", "e2")
        );
        assert_eq!(m.link.as_deref(), Some(link));
        // another cause of the same crate is another mark
        triage::set(
            p,
            "foo",
            "test-fail:tests(a)",
            &req(MarkKind::Ignore, None, ""),
            origin("e2", "bob"),
        )
        .await
        .unwrap();
        assert_eq!(triage::list(p, Some("foo")).await.unwrap().len(), 2);
        assert_eq!(triage::list(p, Some("bar")).await.unwrap().len(), 0);
        assert_eq!(triage::list(p, None).await.unwrap().len(), 2);

        let found = triage::applicable(
            p,
            &[
                ("foo".into(), E0308.into()),
                ("foo".into(), "build-fail:compiler-error(E0599)".into()),
                ("bar".into(), E0308.into()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[&("foo".to_owned(), E0308.to_owned())].kind,
            MarkKind::KnownIssue
        );

        let removed = triage::remove(p, "foo", E0308, origin("e3", "carol"))
            .await
            .unwrap();
        assert_eq!(removed.kind, MarkKind::KnownIssue);
        let err = triage::remove(p, "foo", E0308, origin("e3", "carol"))
            .await
            .unwrap_err();
        assert!(matches!(err, DbError::NotFound { .. }), "{err}");

        let trail = triage::audit_trail(p, Some("foo"), 100).await.unwrap();
        let actions: Vec<(&str, &str, &str)> = trail
            .iter()
            .map(|a| (a.action.as_str(), a.actor.as_str(), a.cause.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("set", "alice", E0308),
                ("update", "bob", E0308),
                ("set", "bob", "test-fail:tests(a)"),
                ("remove", "carol", E0308),
            ]
        );
        assert_eq!(trail[1].before.as_ref().unwrap().kind, MarkKind::Expected);
        assert_eq!(trail[1].after.as_ref().unwrap().kind, MarkKind::KnownIssue);
        assert!(trail[3].after.is_none());
        assert_eq!(trail[3].before.as_ref().unwrap().note, "tracked");
        assert_eq!(trail[3].experiment, "e3");
        let h = triage::history(p, &[("foo".into(), "test-fail:tests(a)".into())])
            .await
            .unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].id, trail[2].id);
        // the newest entries when limited, still oldest first
        let last = triage::audit_trail(p, None, 2).await.unwrap();
        assert_eq!(
            last.iter().map(|a| a.id).collect::<Vec<_>>(),
            [trail[2].id, trail[3].id]
        );
    }

    #[tokio::test]
    async fn long_causes_fit_the_key_and_the_schema_checks_known_issue_links() {
        let db = TestDb::new().await;
        let tests: Vec<String> = (0..2000).map(|i| format!("tests::case_{i:05}")).collect();
        let cause = format!("test-fail:tests({})", tests.join(","));
        assert!(cause.len() > 30_000);
        triage::set(
            &db.pool,
            "foo",
            &cause,
            &req(MarkKind::Ignore, None, ""),
            origin("e", "a"),
        )
        .await
        .unwrap();
        let found = triage::applicable(&db.pool, &[("foo".into(), cause.clone())])
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        // the database refuses a known-issue without a link even if a caller skipped validation
        let err = triage::set(
            &db.pool,
            "foo",
            E0308,
            &req(MarkKind::KnownIssue, None, ""),
            origin("e", "a"),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("check"), "{err}");
        assert_eq!(
            triage::audit_trail(&db.pool, None, 10).await.unwrap().len(),
            1
        );
    }

    #[tokio::test]
    async fn concurrent_first_marks_of_one_key_make_one_mark() {
        let db = TestDb::new().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let pool = db.pool.clone();
            tasks.push(tokio::spawn(async move {
                let actor = format!("t{i}");
                triage::set(
                    &pool,
                    "foo",
                    E0308,
                    &req(MarkKind::Ignore, None, &actor),
                    Origin {
                        experiment: "e",
                        crate_id: "reg:foo@1.0.0",
                        actor: &actor,
                    },
                )
                .await
                .map(|(_, how)| how)
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == SetOutcome::Created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        assert_eq!(triage::list(&db.pool, None).await.unwrap().len(), 1);
        let trail = triage::audit_trail(&db.pool, None, 100).await.unwrap();
        assert_eq!(trail.iter().filter(|a| a.action == "set").count(), 1);
    }

    #[tokio::test]
    async fn find_crate_names_what_is_missing() {
        let db = TestDb::new().await;
        let name = CrateRef::Name("serde".into());
        assert_eq!(
            triage::find_crate(&db.pool, "nope", &name).await.unwrap(),
            Target::NoExperiment
        );
        caldera_db::experiments::create(&db.pool, &super::spec("e1"))
            .await
            .unwrap();
        assert_eq!(
            triage::find_crate(&db.pool, "e1", &name).await.unwrap(),
            Target::NoCrate
        );
    }
}

/// A confirmation run that differs from run 0 on a side records what differed (per crate version,
/// counted across experiments, with the last sighting's evidence); a calibration run's start
/// against its end too; `error` sides and agreeing runs record nothing.
#[tokio::test]
async fn flakes_are_recorded_counted_and_read_back() {
    use caldera_core::outcome::Outcome;
    use caldera_db::flakes::{self, FinishedRun, Source};
    use caldera_db::jobs::{self, Completion};
    let db = TestDb::new().await;
    let tf = |t: &[&str]| Outcome::TestFail {
        failed_tests: t.iter().map(|s| s.to_string()).collect(),
        reason: None,
    };
    let now = chrono::Utc::now();
    let lease = chrono::Duration::hours(1);
    let w = uuid::Uuid::new_v4();
    let mut claimer = jobs::Claimer::new(&db.pool);
    for (round, name) in ["one", "two"].into_iter().enumerate() {
        let experiment = started_with_jobs(&db, name, &["a@1.0.0", "b@1.0.0"]).await;
        // a regresses (test `x` fails on end); b passes
        let first = claimer.claim(w, &[], 2, now, lease).await.unwrap();
        let batch: Vec<Completion> = first
            .iter()
            .map(|c| {
                let end = if c.crate_id == "reg:a@1.0.0" {
                    tf(&["x"])
                } else {
                    Outcome::TestPass
                };
                Completion {
                    job_id: c.job_id,
                    lease_token: c.lease_token,
                    worker: w,
                    start: side_of(Outcome::TestPass, 1),
                    end: side_of(end, 2),
                }
            })
            .collect();
        let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
        assert_eq!(out.done.len(), 2);
        assert!(
            out.done
                .iter()
                .all(|(_, e, run)| *e == experiment && *run == 0)
        );
        // a's confirmation runs: run 1 passes on end (x flaked), run 2 agrees with run 0
        let reruns = claimer.claim(w, &[], 2, now, lease).await.unwrap();
        assert_eq!(reruns.len(), 2);
        let batch: Vec<Completion> = reruns
            .iter()
            .map(|c| Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker: w,
                start: side_of(Outcome::TestPass, 10 + c.run as i64),
                end: side_of(
                    if c.run == 1 {
                        Outcome::TestPass
                    } else {
                        tf(&["x"])
                    },
                    20 + c.run as i64,
                ),
            })
            .collect();
        let out = jobs::complete(&db.pool, &batch, now, 3).await.unwrap();
        assert_eq!(out.done.len(), 2);
        let finished: Vec<FinishedRun> = out
            .done
            .iter()
            .map(|(id, _, run)| {
                let c = batch.iter().find(|c| c.job_id == *id).unwrap();
                FinishedRun {
                    job_id: *id,
                    run: *run,
                    calibration: false,
                    start: (&c.start.outcome, c.start.log_key.as_deref()),
                    end: (&c.end.outcome, c.end.log_key.as_deref()),
                }
            })
            .collect();
        let mut conn = db.pool.acquire().await.unwrap();
        let n = flakes::record_finished(&mut conn, &finished, now)
            .await
            .unwrap();
        assert_eq!(n, 1, "one side of one run differed");
        let found = flakes::of_crate(&db.pool, "a", None).await.unwrap();
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(
            (f.krate.as_str(), f.subject.as_str(), f.count),
            ("reg:a@1.0.0", "test:x", round as i64 + 1)
        );
        assert_eq!(f.last.experiment, name);
        assert_eq!(
            (f.last.source, f.last.run, f.last.side.as_str()),
            (Source::Confirmation, 1, "end")
        );
        assert_eq!(
            (f.last.log_key.as_deref(), f.last.other_log_key.as_deref()),
            (Some("log-2"), Some("log-21"))
        );
        let known = flakes::known_subjects(&db.pool, experiment).await.unwrap();
        assert_eq!(known.crates.len(), 1, "{known:#?}");
        assert!(known.explains("reg:a@1.0.0", &tf(&["x"])));
        assert!(!known.explains("reg:a@1.0.0", &tf(&["x", "y"])));
        assert!(!known.explains("reg:b@1.0.0", &tf(&["x"])));
    }
    assert!(
        flakes::of_crate(&db.pool, "a", Some("2.0.0"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        flakes::of_crate(&db.pool, "a", Some("1.0.0"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        flakes::of_crate(&db.pool, "b", None)
            .await
            .unwrap()
            .is_empty()
    );

    // a calibration run: start against end; duplicates in one call are counted, the last one
    // becomes the evidence; an error side records nothing
    let crate_b: i64 = sqlx::query_scalar("SELECT id FROM crates WHERE crate_id = 'reg:b@1.0.0'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let sighting = |run: i16| flakes::Sighting {
        crate_id: crate_b,
        subject: "build-fail:oom".into(),
        experiment: "aa".into(),
        source: Source::Calibration,
        run,
        side: caldera_core::job::Side::End,
        log_key: Some(format!("s{run}")),
        other_log_key: Some(format!("e{run}")),
    };
    let mut conn = db.pool.acquire().await.unwrap();
    flakes::record(&mut conn, &[sighting(0), sighting(3)], now)
        .await
        .unwrap();
    let b = flakes::of_crate(&db.pool, "b", None).await.unwrap();
    assert_eq!((b[0].count, b[0].last.run), (2, 3), "{b:#?}");
    assert_eq!(b[0].last.log_key.as_deref(), Some("s3"));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM flakes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

/// Jobs handed back to the queue while other claims run are never stranded behind the claim
/// cursor: a claim whose snapshot predates a hand-back must not move the cursor past the job.
/// (A race of this kind left two jobs queued forever after a Postgres restart in
/// `pg_restart::postgres_restart_mid_experiment`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_handed_back_during_claims_are_never_stranded() {
    use caldera_db::jobs;
    let db = TestDb::new().await;
    let names: Vec<String> = (0..300).map(|i| format!("c{i}@1.0.0")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let experiment = started_with_jobs(&db, "race", &refs).await;
    let lease = chrono::Duration::hours(1);
    let mut tasks = Vec::new();
    for claimer_no in 0..4 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let worker = uuid::Uuid::new_v4();
            let mut claimer = jobs::Claimer::new(&pool);
            let mut handed_back = 0;
            for round in 0..150 {
                let claimed = claimer
                    .claim(worker, &[], 3, chrono::Utc::now(), lease)
                    .await
                    .unwrap();
                // hand back most of what was claimed, racing the other claimers' cursor moves
                for (i, c) in claimed.iter().enumerate() {
                    if (i + round + claimer_no) % 4 != 0 {
                        jobs::hand_back(&pool, c.job_id, c.lease_token, chrono::Utc::now())
                            .await
                            .unwrap();
                        handed_back += 1;
                    }
                }
            }
            handed_back
        }));
    }
    let mut handed_back = 0;
    for t in tasks {
        handed_back += t.await.unwrap();
    }
    assert!(
        handed_back > 100,
        "the test raced hand-backs: {handed_back}"
    );
    let stranded: Vec<i64> = sqlx::query_scalar(
        "SELECT j.id FROM jobs j JOIN job_queues q USING (experiment_id)
         WHERE j.experiment_id = $1 AND j.state = 'queued' AND j.id < q.next_job ORDER BY 1",
    )
    .bind(experiment)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        stranded.is_empty(),
        "queued jobs behind the cursor: {stranded:?}"
    );
}
