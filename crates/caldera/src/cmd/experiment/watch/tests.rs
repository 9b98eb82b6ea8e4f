use super::*;
use serde_json::json;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[test]
fn durations_read_short() {
    for (secs, text) in [
        (0, "0s"),
        (59, "59s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7620, "2h07m"),
        (90_000, "25h00m"),
    ] {
        assert_eq!(short_duration(s(secs)), text, "{secs}");
    }
}

#[test]
fn the_rate_and_eta_follow_the_finished_count() {
    let mut t = Tracker::default();
    assert_eq!(t.per_minute(), None, "nothing seen");
    t.record(s(0), 10);
    assert_eq!(t.per_minute(), None, "one look");
    t.record(s(30), 10);
    assert_eq!(t.per_minute(), None, "nothing finished while watching");
    t.record(s(60), 16);
    assert_eq!(t.per_minute(), Some(6.0));
    // 84 left at 6/min: 14 minutes
    assert_eq!(t.eta(84), Some(s(14 * 60)));
    assert_eq!(t.eta(0), Some(s(0)));
    // past the window, the oldest looks are forgotten: the rate is the recent one
    t.record(s(400), 16);
    t.record(s(460), 46);
    assert_eq!(t.per_minute(), Some(30.0));
    // a count that goes down (jobs re-queued) starts over
    t.record(s(470), 40);
    assert_eq!(t.per_minute(), None);
}

#[test]
fn plain_lines_say_counts_pace_and_eta() {
    let c = Counts {
        queued: 65,
        running: 3,
        done: 10,
        error: 2,
        cancelled: 0,
    };
    let mut t = Tracker::default();
    assert_eq!(
        plain_line(s(5), "running", &c, &t),
        "[5s] running: 12/80 finished (15%) · 3 running, 65 queued, 2 error, 0 cancelled"
    );
    t.record(s(0), 6);
    t.record(s(120), 12);
    assert_eq!(
        plain_line(s(185), "running", &c, &t),
        "[3m05s] running: 12/80 finished (15%) · 3 running, 65 queued, 2 error, 0 cancelled · 3.0/min · ETA 22m40s"
    );
    // the cost model's ETA (the view's `estimate.wall_ms`) next to the rate's
    t.set_model_eta(&json!({"estimate": {"wall_ms": 125_000}}));
    assert_eq!(
        plain_line(s(185), "running", &c, &t),
        "[3m05s] running: 12/80 finished (15%) · 3 running, 65 queued, 2 error, 0 cancelled · 3.0/min · ETA 22m40s · model ETA 2m05s"
    );
    // no wall time (no worker connected): no model ETA
    t.set_model_eta(&json!({"estimate": {"wall_ms": null}}));
    assert!(!plain_line(s(185), "running", &c, &t).contains("model"));
    let none = Counts::default();
    assert_eq!(
        plain_line(s(1), "queued", &none, &Tracker::default()),
        "[1s] queued: 0/0 finished (0%) · 0 running, 0 queued"
    );
}

#[test]
fn regressions_that_count_leave_out_expected_and_ignored_ones() {
    let report = json!({
        "regressions": ["reg:a@1.0.0", "reg:b@1.0.0", "reg:c@1.0.0", "local:/d"],
        "triage": {
            "reg:a@1.0.0": {"kind": "expected"},
            "reg:b@1.0.0": {"kind": "known-issue"},
            "local:/d": {"kind": "ignore"},
        },
    });
    assert_eq!(counted_regressions(&report), ["reg:b@1.0.0", "reg:c@1.0.0"]);
    assert!(counted_regressions(&json!({"regressions": []})).is_empty());
}

#[test]
fn intervals_are_bounded() {
    assert_eq!(positive_secs("2"), Ok(2.0));
    assert_eq!(positive_secs("0.5"), Ok(0.5));
    for bad in ["0", "-1", "x", "1e9", "NaN"] {
        assert!(positive_secs(bad).is_err(), "{bad}");
    }
}
