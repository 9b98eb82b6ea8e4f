//! The bench's figures: printed as `<name>: <value> <unit>` lines, then checked.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use caldera_worker::fake::FakeStats;

use crate::Options;
use crate::clients::{Observed, percentile};
use crate::master::{Memory, Metrics};

pub struct Figures<'a> {
    pub o: &'a Options,
    pub elapsed: Duration,
    /// (seconds since the start, jobs done)
    pub timeline: Vec<(f64, i64)>,
    pub metrics: Metrics,
    pub master_cpu_secs: f64,
    /// The master's memory with the fleet connected, before the start.
    pub idle: Memory,
    pub memory: Memory,
    pub latencies: BTreeMap<&'static str, Observed>,
    pub fake: FakeStats,
    pub retried_jobs: i64,
    pub results: i64,
    pub log_problems: usize,
}

const LATENESS: &str = "caldera_heartbeat_lateness_seconds";
const HANDLING: &str = "caldera_heartbeat_handling_seconds";

/// Jobs per second between 10 % and 90 % of the jobs done: the fleet at full speed, without the
/// ramp-up and the tail.
fn steady_rate(timeline: &[(f64, i64)], jobs: usize) -> f64 {
    let at = |share: f64| {
        timeline
            .iter()
            .find(|(_, done)| *done as f64 >= share * jobs as f64)
            .copied()
    };
    match (at(0.1), at(0.9)) {
        (Some((t1, d1)), Some((t2, d2))) if t2 > t1 => (d2 - d1) as f64 / (t2 - t1),
        _ => f64::NAN,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Figures<'_> {
    pub fn print(&self) {
        let o = self.o;
        let secs = self.elapsed.as_secs_f64();
        println!(
            "# {} jobs of {}–{} ms, {} workers x {} slots, {} API clients every {} ms, heartbeat {} ms, lease {} s",
            o.jobs,
            o.min_ms,
            o.max_ms,
            o.workers,
            o.slots,
            o.clients,
            o.think_ms,
            o.heartbeat_ms,
            o.lease_secs
        );
        println!("duration: {secs:.1} s");
        println!("jobs_per_sec: {:.1} jobs/s", o.jobs as f64 / secs);
        println!(
            "jobs_per_sec_steady: {:.1} jobs/s (10 %–90 % of the jobs)",
            steady_rate(&self.timeline, o.jobs)
        );
        println!(
            "fleet_capacity: {:.1} jobs/s (slots / mean job time)",
            o.capacity()
        );
        self.print_heartbeats(secs);
        self.print_leases();
        self.print_api();
        println!(
            "master_rss_idle: {:.0} MiB (fleet connected, before the start)",
            mib(self.idle.rss_kib)
        );
        println!(
            "master_rss_peak: {:.0} MiB (VmHWM; sampled peak {:.0} MiB)",
            mib(self.memory.hwm_kib),
            mib(self.memory.max_rss_kib)
        );
        println!("master_rss_end: {:.0} MiB", mib(self.memory.rss_kib));
        println!(
            "master_cpu: {:.1} s ({:.0} % of one core; {:.0} µs per job)",
            self.master_cpu_secs,
            self.master_cpu_secs / secs * 100.0,
            self.master_cpu_secs / o.jobs as f64 * 1e6
        );
        println!(
            "master_log_warnings: {} (lines of WARN or ERROR)",
            self.log_problems
        );
    }

    fn print_heartbeats(&self, secs: f64) {
        let m = &self.metrics;
        let expected = self.o.workers as f64 * secs / (self.o.heartbeat_ms as f64 / 1000.0);
        println!(
            "heartbeats: {:.0} handled (≈ {expected:.0} expected over the run)",
            m.sum(&format!("{HANDLING}_count"))
        );
        let ms = |s: f64| s * 1000.0;
        println!(
            "heartbeat_lateness_p50: ≤ {:.0} ms (bucket bound; after the interval)",
            ms(m.quantile_bound(LATENESS, 0.5))
        );
        println!(
            "heartbeat_lateness_p99: ≤ {:.0} ms",
            ms(m.quantile_bound(LATENESS, 0.99))
        );
        println!(
            "heartbeat_lateness_max: ≤ {:.0} ms",
            ms(m.quantile_bound(LATENESS, 1.0))
        );
        println!("heartbeats_late_over_1s: {:.0}", m.above(LATENESS, 1.0));
        println!(
            "heartbeat_handling_p99: ≤ {:.1} ms (token, lease renewal, last seen)",
            ms(m.quantile_bound(HANDLING, 0.99))
        );
    }

    fn print_leases(&self) {
        let m = &self.metrics;
        println!(
            "lease_expiries: {:.0} (goal 0: every worker lives)",
            m.sum("caldera_lease_expiries_total")
        );
        println!("jobs_requeued: {:.0}", m.sum("caldera_jobs_requeued_total"));
        println!(
            "results_rejected: {:.0}",
            m.sum("caldera_results_rejected_total")
        );
        println!("jobs_retried: {} (attempt > 1)", self.retried_jobs);
        println!(
            "runs_cancelled: {} (a lease the master no longer held)",
            self.fake.cancelled
        );
    }

    fn print_api(&self) {
        let mut all = Vec::new();
        for (name, o) in &self.latencies {
            let mut ms = o.millis.clone();
            ms.sort_by(f64::total_cmp);
            println!(
                "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} requests, {} failed",
                percentile(&ms, 0.5),
                percentile(&ms, 0.99),
                ms.last().copied().unwrap_or(f64::NAN),
                ms.len(),
                o.failures
            );
            all.extend(ms);
        }
        all.sort_by(f64::total_cmp);
        println!(
            "api_all: p50 {:.1} ms, p99 {:.1} ms over {} requests ({:.1} requests/s)",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.len(),
            all.len() as f64 / self.elapsed.as_secs_f64()
        );
    }

    /// Fails on what must not happen while every worker lives.
    pub fn check(&self) -> Result<()> {
        let m = &self.metrics;
        let mut problems = Vec::new();
        if self.results != 2 * self.o.jobs as i64 {
            problems.push(format!(
                "{} results, expected {}",
                self.results,
                2 * self.o.jobs
            ));
        }
        for (what, n) in [
            ("leases expired", m.sum("caldera_lease_expiries_total")),
            ("jobs re-queued", m.sum("caldera_jobs_requeued_total")),
            ("results rejected", m.sum("caldera_results_rejected_total")),
            ("jobs retried", self.retried_jobs as f64),
            ("runs cancelled", self.fake.cancelled as f64),
        ] {
            if n > 0.0 {
                problems.push(format!("{n} {what}"));
            }
        }
        for (name, o) in &self.latencies {
            if let Some(first) = &o.first_failure {
                problems.push(format!("{} {name} requests failed: {first}", o.failures));
            }
        }
        if self.latencies.is_empty() {
            problems.push("no API request was made".into());
        }
        if !problems.is_empty() {
            bail!("the fleet bench failed: {}", problems.join("; "));
        }
        Ok(())
    }
}
