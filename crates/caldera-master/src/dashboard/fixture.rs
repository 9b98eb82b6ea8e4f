//! A small completed experiment with regressions and logs, made through the database layer and
//! object storage exactly as the scheduler and workers make them (feature `testing`).
//!
//! | crate | start | end | comparison |
//! | --- | --- | --- | --- |
//! | `root-a 1.0.0` | test-pass | build-fail: E0308 | regressed (root) |
//! | `dep-b 2.0.0` | test-pass | depends-on `root-a` | regressed through root-a |
//! | `dep-c 1.1.0` | test-pass | depends-on `reg:root-a@1.0.0` | regressed through root-a |
//! | `ice-d 0.3.0` | test-pass | build-fail: ice | regressed (root) |
//! | `tests-i 1.0.0` | test-pass | test-fail (a test named with `<script>`) | regressed (root) |
//! | `flaky-e 1.0.0` | test-pass | build-fail: oom | spurious-regressed |
//! | `fixed-f 1.0.0` | test-fail | test-pass | fixed |
//! | `same-g 1.0.0` | test-pass | test-pass | same-test-pass |
//! | `infra-h 1.0.0` | error | test-pass | error |
//!
//! So: 5 regressions, 3 of them through `root-a 1.0.0`; 3 root regressions; the retry list is the
//! 5 regressions, `flaky-e` and `infra-h`. Every side has a log; `root-a`'s logs are coloured and
//! its end log has one error the start log lacks (after normalising paths and timings); `tests-i`'s
//! end log contains `<script>` tags.

use std::sync::Arc;

use caldera_core::crates::CrateId;
use caldera_core::experiment::ExperimentSpec;
use caldera_core::lifecycle::ExperimentAction;
use caldera_core::outcome::{BuildFailReason, Outcome};
use caldera_db::jobs::{self, Completion, SideRecord};
use caldera_db::tokens::{self, Role};
use caldera_db::{PgPool, experiments, workers};
use caldera_storage::{ObjectStore, keys};
use uuid::Uuid;

/// The root regression most regressions go through.
pub const ROOT: &str = "reg:root-a@1.0.0";
/// Regressions through [`ROOT`].
pub const THROUGH_ROOT: &[&str] = &["reg:dep-b@2.0.0", "reg:dep-c@1.1.0"];
/// The other root regressions.
pub const OTHER_ROOTS: &[&str] = &["reg:ice-d@0.3.0", "reg:tests-i@1.0.0"];
pub const SPURIOUS: &str = "reg:flaky-e@1.0.0";
pub const FIXED: &str = "reg:fixed-f@1.0.0";
pub const SAME: &str = "reg:same-g@1.0.0";
pub const ERROR: &str = "reg:infra-h@1.0.0";
/// The failed test name of `tests-i`, which tries to inject a script.
pub const XSS_TEST: &str = "tests::<script>alert('xss')</script>";
/// The line of `root-a`'s end log that only the end log has.
pub const NEW_ERROR: &str = "error[E0308]: mismatched types";
/// A line both of `root-a`'s logs have (machine-specific parts differ and are normalised).
pub const OLD_ERROR: &str = "error: could not compile `root-a` (lib) due to 1 previous error";
/// A warning of ~240 characters in both of `root-a`'s logs, as long lines are in real logs:
/// the crate page must keep both logs on screen anyway.
pub const LONG_LINE: &str = "warning: unused variable: `configuration_value_that_nobody_reads` --> src/configuration/loaders/environment/variables/with/a/deeply/nested/module/path/and_a_long_file_name_for_wide_logs.rs:123:45 (prefix it with an underscore: `_configuration_value_that_nobody_reads`)";

/// Every crate of the fixture, in the order given to the experiment.
pub fn crates() -> Vec<&'static str> {
    let mut all = vec![ROOT];
    all.extend_from_slice(THROUGH_ROOT);
    all.extend_from_slice(OTHER_ROOTS);
    all.extend_from_slice(&[SPURIOUS, FIXED, SAME, ERROR]);
    all
}

/// The retry list, in report order.
pub fn retry() -> Vec<&'static str> {
    vec![
        ROOT,
        OTHER_ROOTS[0],
        OTHER_ROOTS[1],
        THROUGH_ROOT[0],
        THROUGH_ROOT[1],
        SPURIOUS,
        ERROR,
    ]
}

fn ce(code: &str) -> Outcome {
    Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec![code.into()],
    })
}

/// (start, end, start log, end log) of one crate.
type Script = (Outcome, Outcome, String, String);

/// (start, end) outcome and (start, end) log of a fixture crate.
fn script(krate: &str) -> Script {
    let pass_log = |name: &str| {
        format!(
            "   Compiling {name} v1.0.0 (/tmp/.tmpQ1w2e3/{name})\n    Finished `test` profile in 1.52s\n     Running unittests src/lib.rs\n\ntest result: ok. 3 passed; 0 failed\n"
        )
    };
    match krate {
        ROOT => (
            Outcome::TestPass,
            ce("E0308"),
            format!(
                "\x1b[1m\x1b[32m   Compiling\x1b[0m root-a v1.0.0 (/tmp/.tmpAAA111/root-a)\nwarning: unused import\n{LONG_LINE}\n{OLD_ERROR}\nnote: an old, known failure of a build script at /home/alice/x (2.3s)\n\x1b[1m\x1b[32m    Finished\x1b[0m `test` profile in 4.10s\ntest result: ok. 12 passed; 0 failed\n"
            ),
            format!(
                "\x1b[1m\x1b[32m   Compiling\x1b[0m root-a v1.0.0 (/tmp/.tmpBBB222/root-a)\nwarning: unused import\n{LONG_LINE}\n\x1b[1m\x1b[31merror[E0308]\x1b[0m\x1b[1m: mismatched types\x1b[0m\n  --> src/lib.rs:3:5\n{OLD_ERROR}\n"
            ),
        ),
        "reg:dep-b@2.0.0" => (
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["root-a".into()],
            }),
            pass_log("dep-b"),
            "error: failed to build dependency `root-a`\n".into(),
        ),
        "reg:dep-c@1.1.0" => (
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec![ROOT.into()],
            }),
            pass_log("dep-c"),
            "error: failed to build dependency `root-a v1.0.0`\n".into(),
        ),
        "reg:ice-d@0.3.0" => (
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::Ice),
            pass_log("ice-d"),
            "error: internal compiler error: unexpected panic\nthread 'rustc' panicked at compiler/rustc_middle/src/ty/mod.rs:1:1\n".into(),
        ),
        "reg:tests-i@1.0.0" => (
            Outcome::TestPass,
            Outcome::TestFail {
                failed_tests: vec![XSS_TEST.into()],
                reason: None,
            },
            pass_log("tests-i"),
            "running 1 test\n<script>alert(1)</script>\ntest tests::injected ... FAILED\n".into(),
        ),
        SPURIOUS => (
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::Oom),
            pass_log("flaky-e"),
            "error: the build was killed: out of memory\n".into(),
        ),
        FIXED => (
            Outcome::TestFail {
                failed_tests: vec!["t::a".into()],
                reason: None,
            },
            Outcome::TestPass,
            "test t::a ... FAILED\n".into(),
            pass_log("fixed-f"),
        ),
        ERROR => (
            Outcome::Error {
                reason: "the Docker daemon went away".into(),
            },
            Outcome::TestPass,
            "caldera: Docker error: connection reset\n".into(),
            pass_log("infra-h"),
        ),
        _ => (
            Outcome::TestPass,
            Outcome::TestPass,
            pass_log("same-g"),
            pass_log("same-g"),
        ),
    }
}

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub id: Uuid,
    pub worker: String,
}

/// Creates the experiment `name` (stable → nightly) over the fixture crates, runs it to
/// completion through the job queue with one worker, and stores both logs of every crate.
pub async fn create(pool: &PgPool, store: &Arc<dyn ObjectStore>, name: &str) -> Fixture {
    let rows = crates()
        .into_iter()
        .map(|c| {
            let (start, end, start_log, end_log) = script(c);
            (c.to_owned(), start, end, start_log, end_log)
        })
        .collect();
    run(pool, store, name, rows).await
}

/// Like [`create`], over the given registry crates (`reg:NAME@VERSION`) with the given start and
/// end outcomes; each log is one line naming its outcome.
pub async fn create_with(
    pool: &PgPool,
    store: &Arc<dyn ObjectStore>,
    name: &str,
    crates: &[(&str, Outcome, Outcome)],
) -> Fixture {
    let rows = crates
        .iter()
        .map(|(c, start, end)| {
            (
                (*c).to_owned(),
                start.clone(),
                end.clone(),
                format!("outcome: {start}\n"),
                format!("outcome: {end}\n"),
            )
        })
        .collect();
    run(pool, store, name, rows).await
}

/// (crate id, start, end, start log, end log)
type Row = (String, Outcome, Outcome, String, String);

async fn run(pool: &PgPool, store: &Arc<dyn ObjectStore>, name: &str, rows: Vec<Row>) -> Fixture {
    let (spec, id, ids) = start_experiment(pool, name, &rows).await;
    let mut scripts: std::collections::HashMap<String, Script> = rows
        .into_iter()
        .map(|(c, a, b, la, lb)| (c, (a, b, la, lb)))
        .collect();
    let worker_name = format!("fixture-worker-{}", &id.simple().to_string()[..8]);
    let (token, _) = tokens::create(pool, &worker_name, Role::Worker)
        .await
        .expect("worker token");
    let now = chrono::Utc::now();
    let worker = workers::connect(pool, &worker_name, "fixture", &[], 4, token.id, now)
        .await
        .expect("register the worker");
    let claimed = jobs::claim(pool, worker, &[], 100, now, chrono::Duration::hours(1))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), ids.len(), "every fixture job is claimed");
    let mut completions = Vec::new();
    for (n, c) in claimed.iter().enumerate() {
        let script = scripts
            .remove(&c.crate_id)
            .expect("a claimed crate of the fixture");
        let (start, end) = record_sides(store, name, &spec, &c.crate_id, script, n).await;
        completions.push(Completion {
            job_id: c.job_id,
            lease_token: c.lease_token,
            worker,
            start,
            end,
        });
    }
    let out = jobs::complete(pool, &completions, chrono::Utc::now(), 1)
        .await
        .expect("record results");
    assert_eq!(
        out.accepted.len(),
        ids.len(),
        "every fixture result is accepted"
    );
    experiments::apply_action(pool, name, ExperimentAction::Complete)
        .await
        .expect("complete the fixture experiment");
    Fixture {
        name: name.to_owned(),
        id,
        worker: worker_name,
    }
}

/// Creates the experiment `name` (stable → nightly, no confirmation runs) over the crates of
/// `rows` and starts it, which queues one job per crate. Returns its spec, id and crate ids.
async fn start_experiment(
    pool: &PgPool,
    name: &str,
    rows: &[Row],
) -> (ExperimentSpec, Uuid, Vec<CrateId>) {
    let specs: Vec<String> = rows
        .iter()
        .map(|r| r.0.strip_prefix("reg:").expect("registry crate").to_owned())
        .collect();
    let body = serde_json::json!({
        "name": name, "start": "stable", "end": "nightly",
        "crates": {"kind": "list", "crates": specs},
        // completed by its one run per crate: no confirmation runs
        "confirm": 0,
    });
    let spec = ExperimentSpec::from_json(body.to_string().as_bytes()).expect("fixture spec");
    let row = experiments::create(pool, &spec)
        .await
        .expect("create the fixture experiment");
    let ids: Vec<CrateId> = rows
        .iter()
        .map(|r| r.0.parse().expect("crate id"))
        .collect();
    let mut pending = experiments::begin_action(pool, name, ExperimentAction::Start)
        .await
        .expect("start the fixture experiment");
    jobs::create_for_experiment(&mut pending.tx, row.id, &ids)
        .await
        .expect("create jobs");
    pending.commit().await.expect("commit start");
    (spec, row.id, ids)
}

/// Stores both logs of the `n`th claimed crate and makes up the record of each side: durations
/// and peak memory that differ by side and crate, and a test step when it built.
async fn record_sides(
    store: &Arc<dyn ObjectStore>,
    name: &str,
    spec: &ExperimentSpec,
    krate: &str,
    script: Script,
    n: usize,
) -> (SideRecord, SideRecord) {
    let (start, end, start_log, end_log) = script;
    let mut sides = Vec::new();
    for (toolchain, outcome, log, k) in [
        (spec.start.id(), start, start_log, 1),
        (spec.end.id(), end, end_log, 2),
    ] {
        let key = keys::log(name, &toolchain, krate).expect("log key");
        caldera_storage::put_log(&**store, &key, log)
            .await
            .expect("store the log");
        let build_ms = 1_000 * k + 37 * n as i64;
        let test_ms = if outcome.built() {
            2_500 + 11 * n as i64
        } else {
            0
        };
        let mut steps = vec![("build".to_owned(), build_ms)];
        if test_ms > 0 {
            steps.push(("test".to_owned(), test_ms));
        }
        sides.push(SideRecord {
            cache_key: None,
            outcome,
            log_key: Some(key.to_string()),
            duration_ms: build_ms + test_ms,
            peak_memory_bytes: (300 + 50 * k + n as i64) << 20,
            steps,
        });
    }
    let end = sides.pop().expect("end side");
    let start = sides.pop().expect("start side");
    (start, end)
}
