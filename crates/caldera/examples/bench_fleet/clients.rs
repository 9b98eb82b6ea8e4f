//! Dashboard and API clients: each one reads a page, waits its think time, reads the next, until
//! the bench ends; latencies are kept per endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What the clients read, in turn: (name, path); `{crate}` is a crate of the experiment.
const ENDPOINTS: &[(&str, &str)] = &[
    ("api_dashboard_experiment", "/experiments/{experiment}"),
    ("api_experiment", "/api/v1/experiments/{experiment}"),
    (
        "api_dashboard_crate",
        "/experiments/{experiment}/crates/{crate}",
    ),
    ("api_workers", "/api/v1/workers"),
    ("api_metrics", "/metrics"),
];

/// One endpoint's latencies (milliseconds) and failures (a status other than 200, or no answer).
#[derive(Debug, Default)]
pub struct Observed {
    pub millis: Vec<f64>,
    pub failures: usize,
    pub first_failure: Option<String>,
}

pub type Latencies = Arc<Mutex<BTreeMap<&'static str, Observed>>>;

pub struct Clients {
    pub http: String,
    pub token: String,
    pub experiment: String,
    pub crates: Vec<String>,
    pub think: Duration,
}

impl Clients {
    /// Start `n` clients; they stop when `stop` fires.
    pub fn start(self, n: usize, stop: CancellationToken) -> Latencies {
        let latencies = Latencies::default();
        let this = Arc::new(self);
        for client in 0..n {
            let (this, latencies, stop) = (this.clone(), latencies.clone(), stop.clone());
            tokio::spawn(async move { this.client(client, &latencies, &stop).await });
        }
        latencies
    }

    async fn client(&self, client: usize, latencies: &Latencies, stop: &CancellationToken) {
        let http = reqwest::Client::new();
        // clients start spread over one think time, each at another endpoint
        let spread = self.think.mul_f64((client * 37 % 100) as f64 / 100.0);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(spread) => {}
        }
        for i in client.. {
            let (name, path) = ENDPOINTS[i % ENDPOINTS.len()];
            let krate = &self.crates[i.wrapping_mul(7919) % self.crates.len()];
            let path = path
                .replace("{experiment}", &self.experiment)
                .replace("{crate}", krate);
            let t0 = Instant::now();
            let answer = http
                .get(format!("{}{path}", self.http))
                .bearer_auth(&self.token)
                .send()
                .await;
            let failure = match answer {
                Ok(r) if r.status().is_success() => r.bytes().await.err().map(|e| e.to_string()),
                Ok(r) => Some(format!("GET {path}: {}", r.status())),
                Err(e) => Some(format!("GET {path}: {e}")),
            };
            let millis = t0.elapsed().as_secs_f64() * 1000.0;
            {
                let mut all = latencies.lock().unwrap();
                let o = all.entry(name).or_default();
                o.millis.push(millis);
                if let Some(f) = failure {
                    o.failures += 1;
                    o.first_failure.get_or_insert(f);
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.think) => {}
            }
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
