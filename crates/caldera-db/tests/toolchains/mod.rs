//! Toolchain identity: the first result that carries a side's build pins it, its capability
//! joins the experiment's queue requirements, and results of another build are refused.

use caldera_core::crates::CrateId;
use caldera_core::lifecycle::ExperimentAction;
use caldera_core::toolchain::ToolchainIdentity;
use caldera_db::experiments;
use caldera_db::jobs;
use caldera_db::testing::TestDb;
use caldera_db::tokens::{self, Role};
use caldera_db::toolchains::{self, Pins, ResultCheck, SideCheck};
use uuid::Uuid;

fn build(name: &str, hash: &str) -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: name.into(),
        commit_hash: hash.into(),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: "1.95.0-nightly".into(),
        cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
    }
}

fn check<'a>(
    c: &jobs::Claimed,
    worker: Uuid,
    start: Option<&'a ToolchainIdentity>,
    end: Option<&'a ToolchainIdentity>,
    built: bool,
) -> ResultCheck<'a> {
    ResultCheck {
        job_id: c.job_id,
        lease_token: c.lease_token,
        worker,
        start: SideCheck {
            identity: start,
            built,
        },
        end: SideCheck {
            identity: end,
            built,
        },
    }
}

async fn requirements(pool: &caldera_db::PgPool, experiment: Uuid) -> Vec<String> {
    let v: sqlx::types::Json<Vec<String>> =
        sqlx::query_scalar("SELECT requirements FROM job_queues WHERE experiment_id = $1")
            .bind(experiment)
            .fetch_one(pool)
            .await
            .unwrap();
    v.0
}

#[tokio::test]
async fn the_first_build_reported_pins_each_side_and_other_builds_are_refused() {
    let db = TestDb::new().await;
    let spec = super::spec("pins");
    let row = experiments::create(&db.pool, &spec).await.unwrap();
    experiments::apply_action(&db.pool, "pins", ExperimentAction::Start)
        .await
        .unwrap();
    let crates: Vec<CrateId> = ["reg:a@1.0.0", "reg:b@1.0.0", "reg:c@1.0.0"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    jobs::create_for_experiment(&mut tx, row.id, &crates)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        toolchains::of_experiment(&db.pool, row.id).await.unwrap(),
        Pins::default(),
        "nothing pinned before a result"
    );
    let now = chrono::Utc::now();
    let lease = chrono::Duration::seconds(600);
    let (token, _) = tokens::create(&db.pool, "w", Role::Worker).await.unwrap();
    let w1 = caldera_db::workers::connect(&db.pool, "w1", "0", &[], 1, token.id, now)
        .await
        .unwrap();
    let w2 = caldera_db::workers::connect(&db.pool, "w2", "0", &[], 1, token.id, now)
        .await
        .unwrap();
    // both claimed before anything is pinned
    let a = jobs::claim(&db.pool, w1, &[], 1, now, lease).await.unwrap();
    let b = jobs::claim(&db.pool, w2, &[], 1, now, lease).await.unwrap();
    let (a, b) = (&a[0], &b[0]);
    let stable = build("stable", "1111111111111111111111111111111111111111");
    let n1 = build("nightly", "0123456789abcdef0123456789abcdef01234567");
    let n2 = build("nightly", "fedcba9876543210fedcba9876543210fedcba98");

    // a stale lease pins nothing and is not looked at
    let stale = jobs::Claimed {
        lease_token: Uuid::new_v4(),
        ..a.clone()
    };
    let mut conn = db.pool.acquire().await.unwrap();
    let v = toolchains::check_results(
        &mut conn,
        &[check(&stale, w1, Some(&stable), Some(&n2), true)],
        now,
    )
    .await
    .unwrap();
    assert_eq!(v, [None]);
    assert_eq!(
        toolchains::of_experiment(&db.pool, row.id).await.unwrap(),
        Pins::default()
    );

    // the pins become queue requirements only when the pinning worker advertises the builds
    sqlx::query("UPDATE workers SET capabilities = capabilities || $2 WHERE id = $1")
        .bind(w1)
        .bind(serde_json::json!([
            "toolchain-id:stable=111111111111",
            "toolchain-id:nightly=0123456789ab"
        ]))
        .execute(&db.pool)
        .await
        .unwrap();
    // one batch: a (w1, nightly n1) pins; b (w2, nightly n2) is refused on its end side
    let v = toolchains::check_results(
        &mut conn,
        &[
            check(a, w1, Some(&stable), Some(&n1), true),
            check(b, w2, Some(&stable), Some(&n2), true),
        ],
        now,
    )
    .await
    .unwrap();
    assert_eq!(v[0], None);
    let why = v[1].as_deref().unwrap();
    assert!(
        why.starts_with("end: toolchain nightly on this worker is 1.95.0-nightly (fedcba987654")
            && why.contains("the experiment pinned 1.95.0-nightly (0123456789ab"),
        "{why}"
    );
    let pins = toolchains::of_experiment(&db.pool, row.id).await.unwrap();
    assert_eq!(
        pins,
        Pins {
            start: Some(stable.clone()),
            end: Some(n1.clone())
        }
    );
    let pinned_by: Vec<Option<Uuid>> =
        sqlx::query_scalar("SELECT worker_id FROM experiment_toolchains WHERE experiment_id = $1")
            .bind(row.id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(pinned_by, [Some(w1), Some(w1)]);
    let reqs = requirements(&db.pool, row.id).await;
    assert!(
        reqs.contains(&"toolchain-id:stable=111111111111".to_owned())
            && reqs.contains(&"toolchain-id:nightly=0123456789ab".to_owned()),
        "{reqs:?}"
    );

    // later results: the pin stays; no identity from a side that built is refused, from one
    // that never built is accepted
    let v = toolchains::check_results(
        &mut conn,
        &[
            check(b, w2, Some(&stable), Some(&n2), true),
            check(a, w1, None, None, true),
            check(a, w1, None, None, false),
        ],
        now,
    )
    .await
    .unwrap();
    assert!(v[0].is_some() && v[1].is_some() && v[2].is_none(), "{v:?}");
    assert!(
        v[1].as_deref()
            .unwrap()
            .starts_with("start: the worker did not say which build"),
        "{v:?}"
    );
    assert_eq!(
        toolchains::of_experiment(&db.pool, row.id).await.unwrap(),
        pins
    );
    assert_eq!(requirements(&db.pool, row.id).await, reqs, "added once");

    // the queue now wants the pinned builds: w2's nightly gets nothing, w1's gets c
    let caps = |n: &ToolchainIdentity| vec![stable.capability().unwrap(), n.capability().unwrap()];
    let none = jobs::claim(&db.pool, w2, &caps(&n2), 1, now, lease)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let c = jobs::claim(&db.pool, w1, &caps(&n1), 1, now, lease)
        .await
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].crate_id, "reg:c@1.0.0");
}
