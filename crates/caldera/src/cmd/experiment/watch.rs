//! `caldera experiment watch`: follow an experiment until it ends.
//!
//! It polls `GET /api/v1/experiments/{name}` (the job counts), draws a progress bar on a terminal
//! (plain lines otherwise, on every change and at least once a minute), and when the experiment
//! completes waits for the report the master exports, prints its counts, regressions and address,
//! and with `--fail-on-regression` exits 1 if the report lists regressions. Ctrl-C stops watching
//! (the experiment goes on) with exit status 130.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Client, segment};
use crate::cmd::Exit;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The experiment.
    pub name: String,
    /// Seconds between two looks at the experiment.
    #[arg(long, default_value_t = 2.0, env = "CALDERA_WATCH_INTERVAL",
        value_parser = positive_secs)]
    pub interval: f64,
    /// Exit with status 1 when the report lists regressions: those the re-runs confirmed (all of
    /// them when the experiment has `confirm: 0`), not those shown flaky, not spurious results,
    /// not quiet crates, and not those triaged `expected` or `ignore` (and when the report could
    /// not be read within --report-timeout).
    #[arg(long, env = "CALDERA_WATCH_FAIL_ON_REGRESSION")]
    pub fail_on_regression: bool,
    /// Plain progress lines even on a terminal (no bar).
    #[arg(long)]
    pub plain: bool,
    /// Seconds to wait, once the experiment completed, for the master to export its report.
    #[arg(long, default_value_t = 120.0, value_parser = positive_secs)]
    pub report_timeout: f64,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.05..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0.05 and 86400"
        )),
    }
}

/// The job counts of one look at the experiment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub error: i64,
    pub cancelled: i64,
}

impl Counts {
    fn of(progress: &Value) -> Counts {
        let n = |k: &str| progress[k].as_i64().unwrap_or(0);
        Counts {
            queued: n("queued"),
            running: n("running"),
            done: n("done"),
            error: n("error"),
            cancelled: n("cancelled"),
        }
    }

    pub fn finished(&self) -> i64 {
        self.done + self.error + self.cancelled
    }

    pub fn total(&self) -> i64 {
        self.finished() + self.running + self.queued
    }
}

/// How far the watched experiment is, and how fast it goes: the rate is over the last
/// [`Tracker::WINDOW`] of looks, so it follows the farm's current pace.
#[derive(Debug, Default)]
pub struct Tracker {
    /// (time since watching began, jobs finished)
    samples: VecDeque<(Duration, i64)>,
    /// The cost model's wall time for what is left (the view's `estimate`), when it has one.
    model_eta: Option<Duration>,
}

impl Tracker {
    pub const WINDOW: Duration = Duration::from_secs(300);

    pub fn record(&mut self, at: Duration, finished: i64) {
        // a job finished count that goes down (re-queued confirmation runs): start over
        if self.samples.back().is_some_and(|&(_, f)| f > finished) {
            self.samples.clear();
        }
        self.samples.push_back((at, finished));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|&(t, _)| at.saturating_sub(t) > Self::WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Keeps the model's ETA of the experiment view `v` (`estimate.wall_ms`), if any.
    pub fn set_model_eta(&mut self, v: &Value) {
        self.model_eta = v["estimate"]["wall_ms"].as_u64().map(Duration::from_millis);
    }

    /// Jobs finished per minute, once some finished while watching.
    pub fn per_minute(&self) -> Option<f64> {
        let (&(t0, f0), &(t1, f1)) = (self.samples.front()?, self.samples.back()?);
        let secs = t1.saturating_sub(t0).as_secs_f64();
        (f1 > f0 && secs >= 1.0).then(|| (f1 - f0) as f64 * 60.0 / secs)
    }

    /// Time left at the current rate.
    pub fn eta(&self, remaining: i64) -> Option<Duration> {
        let rate = self.per_minute()?;
        Some(Duration::from_secs_f64(
            (remaining.max(0) as f64 / rate * 60.0).min(1e9),
        ))
    }
}

/// `42s`, `3m05s`, `2h07m`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The part of a progress line after the counts: what runs, what waits, the pace and the ETA.
pub fn pace(c: &Counts, t: &Tracker) -> String {
    let mut out = format!("{} running, {} queued", c.running, c.queued);
    if c.error + c.cancelled > 0 {
        out.push_str(&format!(", {} error, {} cancelled", c.error, c.cancelled));
    }
    if let Some(rate) = t.per_minute() {
        out.push_str(&format!(" · {rate:.1}/min"));
        let remaining = c.total() - c.finished();
        if let Some(eta) = t.eta(remaining).filter(|_| remaining > 0) {
            out.push_str(&format!(" · ETA {}", short_duration(eta)));
        }
    }
    if let Some(eta) = t.model_eta.filter(|_| c.total() > c.finished()) {
        out.push_str(&format!(" · model ETA {}", short_duration(eta)));
    }
    out
}

/// One plain progress line: `[3m05s] running: 12/80 finished (15%) · 3 running, 65 queued · …`.
pub fn plain_line(elapsed: Duration, status: &str, c: &Counts, t: &Tracker) -> String {
    let total = c.total();
    let pct = if total > 0 {
        c.finished() * 100 / total
    } else {
        0
    };
    format!(
        "[{}] {status}: {}/{total} finished ({pct}%) · {}",
        short_duration(elapsed),
        c.finished(),
        pace(c, t)
    )
}

/// How the progress is shown: a bar for a person at a terminal, lines for a log.
enum Display {
    Bar(indicatif::ProgressBar),
    Lines {
        last: Option<(String, Counts)>,
        printed: Instant,
    },
}

impl Display {
    fn new(plain: bool) -> Display {
        if plain || !std::io::stdout().is_terminal() {
            return Display::Lines {
                last: None,
                printed: Instant::now(),
            };
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stdout(),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed}] {prefix:9} [{bar:32}] {pos}/{len} ({percent}%) {wide_msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Display::Bar(bar)
    }

    fn show(&mut self, elapsed: Duration, status: &str, c: &Counts, t: &Tracker) {
        match self {
            Display::Bar(bar) => {
                bar.set_length(c.total().max(0) as u64);
                bar.set_position(c.finished().max(0) as u64);
                bar.set_prefix(status.to_owned());
                bar.set_message(pace(c, t));
            }
            Display::Lines { last, printed } => {
                let changed = last.as_ref() != Some(&(status.to_owned(), *c));
                if changed || printed.elapsed() >= Duration::from_secs(60) {
                    println!("{}", plain_line(elapsed, status, c, t));
                    *last = Some((status.to_owned(), *c));
                    *printed = Instant::now();
                }
            }
        }
    }

    /// Ends the bar, leaving the last state as a plain line.
    fn finish(&mut self, elapsed: Duration, status: &str, c: &Counts, t: &Tracker) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
            println!("{}", plain_line(elapsed, status, c, t));
        } else {
            self.show(elapsed, status, c, t);
        }
    }

    fn note(&self, text: &str) {
        match self {
            Display::Bar(bar) => bar.println(text),
            Display::Lines { .. } => println!("{text}"),
        }
    }
}

/// A failure to reach the master (worth retrying), as opposed to an answer refusing the request.
fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<reqwest::Error>().is_some()
}

pub async fn run(client: &Client, args: WatchArgs) -> anyhow::Result<()> {
    let path = format!("/experiments/{}", segment(&args.name));
    // Ctrl-C is ours from here on, before anything is shown (`ctrl_c()` would only take the signal
    // once first polled, and a Ctrl-C right after the first line would kill the process)
    let mut ctrl_c = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot take Ctrl-C")?;
    // the first look refuses an unknown experiment at once
    let first = client.call(Method::GET, &path, None).await?;
    let before = match first["status"].as_str() {
        Some("completed") => None,
        _ => report_bytes(client, &args.name).await,
    };
    let t0 = Instant::now();
    let mut tracker = Tracker::default();
    let mut display = Display::new(args.plain);
    let mut v = first;
    let mut interval = tokio::time::interval(Duration::from_secs_f64(args.interval));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let status = v["status"].as_str().unwrap_or("?").to_owned();
        let counts = Counts::of(&v["progress"]);
        tracker.record(t0.elapsed(), counts.finished());
        tracker.set_model_eta(&v);
        if matches!(status.as_str(), "completed" | "aborted") {
            display.finish(t0.elapsed(), &status, &counts, &tracker);
            break;
        }
        display.show(t0.elapsed(), &status, &counts, &tracker);
        tokio::select! {
            _ = ctrl_c.recv() => {
                display.finish(t0.elapsed(), &status, &counts, &tracker);
                println!("stopped watching {} (it goes on; `caldera experiment watch {}` to follow it again)", args.name, args.name);
                return Err(Exit(130).into());
            }
            _ = interval.tick() => {}
        }
        match client.call(Method::GET, &path, None).await {
            Ok(next) => {
                v = next;
                warned = false;
            }
            Err(e) if unreachable(&e) => {
                if !warned {
                    display.note(&format!("{e:#}; still trying"));
                    warned = true;
                }
            }
            Err(e) => return Err(e),
        }
    }
    if v["status"] == "aborted" {
        return Err(anyhow!("experiment {} was aborted", args.name));
    }
    let report = tokio::select! {
        r = final_report(client, &args.name, before, Duration::from_secs_f64(args.report_timeout)) => r,
        _ = ctrl_c.recv() => return Err(Exit(130).into()),
    };
    let regressions = print_summary(client, &args.name, &v, report.as_ref());
    if args.fail_on_regression && regressions.is_none_or(|n| n > 0) {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// The bytes of the experiment's `results.json`, if it has been exported.
async fn report_bytes(client: &Client, name: &str) -> Option<Vec<u8>> {
    let path = format!("/experiments/{}/report/results.json", segment(name));
    let resp = client.get_raw(&path).await.ok()?;
    Some(resp.bytes().await.ok()?.to_vec())
}

/// The report exported on completion: `results.json` once it exists and differs from the one
/// there was before (an export asked for mid-run), or `None` after `timeout`.
async fn final_report(
    client: &Client,
    name: &str,
    before: Option<Vec<u8>>,
    timeout: Duration,
) -> Option<Value> {
    let t0 = Instant::now();
    loop {
        if let Some(bytes) = report_bytes(client, name).await
            && Some(&bytes) != before.as_ref()
        {
            return serde_json::from_slice(&bytes).ok();
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The regressions that count for `--fail-on-regression` (see its help).
pub fn counted_regressions(report: &Value) -> Vec<String> {
    let triage = &report["triage"];
    report["regressions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|id| !matches!(triage[*id]["kind"].as_str(), Some("expected" | "ignore")))
        .map(str::to_owned)
        .collect()
}

/// Prints the summary and where the report is; returns how many regressions count (`None`
/// without a report).
fn print_summary(client: &Client, name: &str, v: &Value, report: Option<&Value>) -> Option<usize> {
    let took = match (v["started_at"].as_str(), v["finished_at"].as_str()) {
        (Some(a), Some(b)) => match (
            chrono::DateTime::parse_from_rfc3339(a),
            chrono::DateTime::parse_from_rfc3339(b),
        ) {
            (Ok(a), Ok(b)) => (b - a)
                .to_std()
                .map(|d| format!(" in {}", short_duration(d)))
                .unwrap_or_default(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    let dashboard = format!("{}/experiments/{}", client.base(), segment(name));
    let Some(report) = report else {
        println!("experiment {name} completed{took}; its report is not exported yet");
        println!("report: {dashboard}  (later: `caldera report {name}`)");
        return None;
    };
    let mut counts: Vec<(&str, i64)> = report["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| Some((k.as_str(), n.as_i64()?)).filter(|(_, n)| *n > 0))
        .collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "experiment {name} completed{took}: {} crates: {}",
        report["total"],
        counts.join(", ")
    );
    let regressions = counted_regressions(report);
    match regressions.len() {
        0 => println!("no regressions"),
        n => {
            println!("{n} regression{}:", if n == 1 { "" } else { "s" });
            for id in regressions.iter().take(20) {
                println!("  {id}");
            }
            if n > 20 {
                println!("  … and {} more (`caldera report {name}`)", n - 20);
            }
        }
    }
    println!("report: {dashboard}  (or `caldera report {name} --format md|json|html`)");
    Some(regressions.len())
}

#[cfg(test)]
mod tests;
