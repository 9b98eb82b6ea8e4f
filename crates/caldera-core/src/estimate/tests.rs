use std::collections::HashMap;

use super::*;

use SidePlan::{Cached, Run, Settled};

fn job(key: &str, deps: Option<u32>, sides: [SidePlan; 2]) -> JobInput {
    JobInput {
        key: key.into(),
        deps,
        sides,
        elapsed_ms: 0,
    }
}

fn history(entries: &[(&str, f64)]) -> HashMap<String, CrateHistory> {
    entries
        .iter()
        .map(|(k, ms)| {
            (
                k.to_string(),
                CrateHistory {
                    sides: 2,
                    median_ms: *ms,
                },
            )
        })
        .collect()
}

fn median_model(ms: f64) -> Model {
    Model::Median {
        median_ms: ms,
        samples: 3,
        loo_mae_ms: Some(0.0),
        why: "test".into(),
    }
}

/// (case, jobs, history, model, slots) → (to run, cached, settled, cpu, wall, from history,
/// from model)
#[test]
fn estimates_follow_history_model_cache_and_slots() {
    let line = Model::Line {
        intercept_ms: 1000.0,
        per_dep_ms: 500.0,
        median_ms: 4000.0,
        samples: 10,
        r2: 0.9,
        loo_mae_ms: 10.0,
        median_loo_mae_ms: 20.0,
    };
    type Case = (
        &'static str,
        Vec<JobInput>,
        Vec<(&'static str, f64)>,
        Model,
        u32,
        (u64, u64, u64, Option<u64>, Option<u64>, u64, u64),
    );
    let cases: Vec<Case> = vec![
        (
            "history only, one slot: wall = cpu",
            vec![job("a", None, [Run, Run]), job("b", None, [Run, Run])],
            vec![("a", 1000.0), ("b", 3000.0)],
            Model::None,
            1,
            (4, 0, 0, Some(8000), Some(8000), 2, 0),
        ),
        (
            "history, two slots: the longer job sets the wall",
            vec![job("a", None, [Run, Run]), job("b", None, [Run, Run])],
            vec![("a", 1000.0), ("b", 3000.0)],
            Model::None,
            2,
            (4, 0, 0, Some(8000), Some(6000), 2, 0),
        ),
        (
            "model line on dependencies, listing-less crate gets the median",
            vec![job("x", Some(4), [Run, Run]), job("y", None, [Run, Run])],
            vec![],
            line.clone(),
            4,
            (4, 0, 0, Some(2 * 3000 + 2 * 4000), Some(8000), 0, 2),
        ),
        (
            "history wins over the model",
            vec![job("a", Some(100), [Run, Run])],
            vec![("a", 500.0)],
            line.clone(),
            1,
            (2, 0, 0, Some(1000), Some(1000), 1, 0),
        ),
        (
            "no workers: CPU time, no wall time",
            vec![job("a", None, [Run, Run])],
            vec![("a", 1000.0)],
            Model::None,
            0,
            (2, 0, 0, Some(2000), None, 1, 0),
        ),
        (
            "cache-settled sides cost nothing",
            vec![
                job("a", None, [Cached, Run]),
                job("b", None, [Cached, Cached]),
            ],
            vec![("a", 1000.0), ("b", 9000.0)],
            Model::None,
            1,
            (1, 3, 0, Some(1000), Some(1000), 1, 0),
        ),
        (
            "override-settled jobs cost nothing and need no estimate",
            vec![job("skipped", None, [Settled, Settled])],
            vec![],
            Model::None,
            1,
            (0, 0, 2, Some(0), Some(0), 0, 0),
        ),
        (
            "no history in the mode: no CPU time, no wall time",
            vec![job("a", Some(3), [Run, Run]), job("b", None, [Run, Run])],
            vec![("a", 1000.0)],
            Model::None,
            2,
            (4, 0, 0, None, None, 1, 0),
        ),
        (
            "median model",
            vec![job("a", None, [Run, Run])],
            vec![],
            median_model(2500.0),
            1,
            (2, 0, 0, Some(5000), Some(5000), 0, 1),
        ),
    ];
    for (case, jobs, hist, model, slots, want) in cases {
        let e = estimate(&jobs, &history(&hist), &model, slots);
        let got = (
            e.sides_to_run,
            e.sides_cached,
            e.sides_settled,
            e.cpu_ms,
            e.wall_ms,
            e.from_history,
            e.from_model,
        );
        assert_eq!(got, want, "{case}: {e:?}");
        assert_eq!(e.jobs, jobs.len() as u64, "{case}");
    }
}

#[test]
fn a_running_job_costs_what_is_left_of_it() {
    let mut running = job("a", None, [Run, Run]);
    running.elapsed_ms = 1500;
    let mut overdue = job("b", None, [Run, Run]);
    overdue.elapsed_ms = 60_000;
    let e = estimate(
        &[running, overdue],
        &history(&[("a", 1000.0), ("b", 1000.0)]),
        &Model::None,
        2,
    );
    assert_eq!(e.cpu_ms, Some(500));
    assert_eq!(e.wall_ms, Some(500));
}

#[test]
fn the_method_says_what_is_missing() {
    let e = estimate(
        &[job("a", None, [Run, Run])],
        &history(&[]),
        &Model::None,
        3,
    );
    assert!(
        e.method.contains("1 job(s) have no estimate: no CPU time"),
        "{}",
        e.method
    );
    let e = estimate(
        &[job("a", None, [Run, Run])],
        &history(&[("a", 1.0)]),
        &Model::None,
        0,
    );
    assert!(
        e.method.contains("No worker is connected: no wall time"),
        "{}",
        e.method
    );
    assert!(
        e.method
            .starts_with("1 job(s) from their crate's history, 0 from the model")
    );
}

#[test]
fn makespan_replays_the_queue_in_order() {
    // slot 1: 5, then 1 → 6; slot 2: 3, then 3 → 6
    assert_eq!(makespan(&[5.0, 3.0, 3.0, 1.0], 2), Some(6.0));
    assert_eq!(makespan(&[5.0, 3.0], 0), None);
    assert_eq!(makespan(&[], 4), Some(0.0));
}

fn sample(deps: Option<u32>, side_ms: f64) -> Sample {
    Sample { deps, side_ms }
}

#[test]
fn the_fit_is_a_line_when_duration_follows_dependencies() {
    // 2 s + 0.5 s per dependency, with a little noise
    let samples: Vec<Sample> = (0..12u32)
        .map(|d| {
            let noise = if d % 2 == 0 { 50.0 } else { -50.0 };
            sample(Some(d * 3), 2000.0 + 500.0 * f64::from(d * 3) + noise)
        })
        .collect();
    match fit(&samples) {
        Model::Line {
            intercept_ms,
            per_dep_ms,
            samples,
            r2,
            loo_mae_ms,
            median_loo_mae_ms,
            ..
        } => {
            assert!((per_dep_ms - 500.0).abs() < 10.0, "{per_dep_ms}");
            assert!((intercept_ms - 2000.0).abs() < 150.0, "{intercept_ms}");
            assert_eq!(samples, 12);
            assert!(r2 > 0.99, "{r2}");
            assert!(loo_mae_ms < median_loo_mae_ms);
        }
        other => panic!("expected a line, got {other:?}"),
    }
}

#[test]
fn the_fit_falls_back_to_the_median() {
    // too few crates with a dependency count
    let few = [
        sample(Some(1), 1000.0),
        sample(Some(2), 2000.0),
        sample(None, 3000.0),
    ];
    match fit(&few) {
        Model::Median {
            median_ms,
            samples,
            why,
            ..
        } => {
            assert_eq!((median_ms, samples), (2000.0, 3));
            assert!(why.contains("2 crate(s)"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // durations unrelated to dependencies: the line loses to the median
    let noise: Vec<Sample> = [
        9000.0, 1000.0, 1000.0, 9000.0, 1000.0, 1000.0, 9000.0, 1000.0,
    ]
    .iter()
    .enumerate()
    .map(|(i, ms)| sample(Some(i as u32), *ms))
    .collect();
    match fit(&noise) {
        Model::Median { median_ms, why, .. } => {
            assert_eq!(median_ms, 1000.0);
            assert!(why.contains("predicts no better than the median"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // one dependency count for all: no line
    let flat: Vec<Sample> = (0..6)
        .map(|i| sample(Some(4), 1000.0 * f64::from(i)))
        .collect();
    assert!(
        matches!(fit(&flat), Model::Median { why, .. } if why.contains("same dependency count"))
    );
    assert_eq!(fit(&[]), Model::None);
}

#[test]
fn the_model_never_predicts_a_negative_duration() {
    let line = Model::Line {
        intercept_ms: -5000.0,
        per_dep_ms: 100.0,
        median_ms: 1.0,
        samples: 5,
        r2: 0.5,
        loo_mae_ms: 1.0,
        median_loo_mae_ms: 2.0,
    };
    assert_eq!(line.predict(Some(0)), Some(0.0));
    assert_eq!(line.predict(None), Some(1.0));
    assert_eq!(Model::None.predict(Some(3)), None);
}

#[test]
fn an_estimate_round_trips_through_json() {
    let e = estimate(
        &[job("a", Some(2), [Run, Cached])],
        &history(&[]),
        &median_model(1000.0),
        2,
    );
    let text = serde_json::to_string(&e).unwrap();
    assert!(text.contains(r#""model":{"kind":"median""#), "{text}");
    let back: Estimate = serde_json::from_str(&text).unwrap();
    assert_eq!(back, e);
}
