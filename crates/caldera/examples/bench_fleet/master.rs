//! The master under test: `caldera master` as a process of its own (so its memory is its own, read
//! from `/proc/PID/status`), and what its `/metrics` say.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::Options;

pub struct MasterProcess {
    child: Child,
    pub http: String,
    pub grpc: String,
    log: PathBuf,
}

/// A port nobody listens on now (the master binds it a moment later).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl MasterProcess {
    /// Start `caldera master` on free loopback ports with the bench's lease and heartbeat, and wait
    /// until `/healthz` answers.
    pub async fn spawn(bin: &Path, database_url: &str, dir: &Path, o: &Options) -> Result<Self> {
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        let log = dir.join("master.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("master")
            .args(["--listen", &format!("127.0.0.1:{http_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--database-url", database_url])
            .arg("--storage")
            .arg(format!("local:{}", dir.join("objects").display()))
            .args(["--registry-url", "none"])
            .args(["--lease-secs", &o.lease_secs.to_string()])
            .args(["--heartbeat-ms", &o.heartbeat_ms.to_string()])
            .args(["--reap-interval-ms", &o.reap_ms.to_string()])
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut m = MasterProcess {
            child,
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
            log,
        };
        m.wait_healthy().await?;
        Ok(m)
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("caldera master exited ({status}):\n{}", self.log_tail());
            }
            let url = format!("{}/healthz", self.http);
            if client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "caldera master did not answer /healthz within 60 s:\n{}",
            self.log_tail()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the master's log (warnings and errors only).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Lines of the master's log that are warnings or errors.
    pub fn log_problems(&self) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count()
    }

    /// SIGTERM (a graceful shutdown), then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name (which is in parentheses): utime and stime are 14 and 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    (field(11) + field(12)) as f64 / 100.0
}

/// The master's memory as sampled: resident now, the peak of the samples, and the kernel's
/// high-water mark.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub max_rss_kib: u64,
    pub hwm_kib: u64,
}

/// Samples the master's memory every 500 ms until `stop`.
pub fn sample_memory(pid: u32, stop: CancellationToken) -> Arc<Mutex<Memory>> {
    let memory = Arc::new(Mutex::new(Memory::default()));
    let m = memory.clone();
    tokio::spawn(async move {
        loop {
            let (rss, hwm) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"));
            {
                let mut m = m.lock().unwrap();
                m.rss_kib = rss.unwrap_or(m.rss_kib);
                m.max_rss_kib = m.max_rss_kib.max(m.rss_kib);
                m.hwm_kib = hwm.unwrap_or(m.hwm_kib);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    memory
}

/// The master's `/metrics` samples, by name with labels (`caldera_x_bucket{le="0.5"}`).
pub struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    pub async fn fetch(http: &str) -> Result<Self> {
        let text = reqwest::get(format!("{http}/metrics"))
            .await?
            .text()
            .await?;
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(key, v)| Some((key.to_owned(), v.trim().parse().ok()?)))
            .collect();
        Ok(Metrics(samples))
    }

    /// What happened between `before` and these: every sample less its value then (counters and
    /// histograms only grow).
    pub fn since(self, before: &Metrics) -> Metrics {
        let diff = self
            .0
            .into_iter()
            .map(|(k, v)| {
                let then = before.0.get(&k).copied().unwrap_or(0.0);
                (k, v - then)
            })
            .collect();
        Metrics(diff)
    }

    /// The sum of every sample of `name` (any labels); 0 when there is none.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .fold(0.0, |sum, (_, v)| sum + v)
    }

    /// The histogram `name`'s buckets: (upper bound, cumulative count), in order.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter_map(|(key, count)| {
                let le = key.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The upper bound of the bucket that holds quantile `q` of histogram `name` (an upper bound
    /// of the true quantile); NaN when the histogram is empty.
    pub fn quantile_bound(&self, name: &str, q: f64) -> f64 {
        let buckets = self.buckets(name);
        let total = buckets.last().map_or(0.0, |b| b.1);
        if total == 0.0 {
            return f64::NAN;
        }
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or(f64::INFINITY, |(le, _)| *le)
    }

    /// Observations of histogram `name` above `bound` seconds.
    pub fn above(&self, name: &str, bound: f64) -> f64 {
        let buckets = self.buckets(name);
        let total = buckets.last().map_or(0.0, |b| b.1);
        let at_most = buckets
            .iter()
            .filter(|(le, _)| *le <= bound)
            .map(|b| b.1)
            .fold(0.0, f64::max);
        total - at_most
    }
}
