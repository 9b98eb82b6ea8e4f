//! Prometheus metrics of the master, served as text at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExperimentLabel {
    pub experiment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The master's metrics.
pub struct Metrics {
    registry: Registry,
    pub jobs_assigned: Counter,
    pub jobs_completed: Counter,
    pub jobs_requeued: Counter,
    pub jobs_errored: Counter,
    pub jobs_returned: Counter,
    pub confirmation_runs_queued: Counter,
    pub flakes_recorded: Counter,
    pub results_rejected: Family<ReasonLabel, Counter>,
    pub lease_expiries: Counter,
    pub workers_connected: Gauge,
    pub queue_depth: Family<ExperimentLabel, Gauge>,
    pub claim_latency: Histogram,
    pub claim_to_send: Histogram,
    pub db_errors: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("caldera");
        let m = Metrics {
            jobs_assigned: Counter::default(),
            jobs_completed: Counter::default(),
            jobs_requeued: Counter::default(),
            jobs_errored: Counter::default(),
            jobs_returned: Counter::default(),
            confirmation_runs_queued: Counter::default(),
            flakes_recorded: Counter::default(),
            results_rejected: Family::default(),
            lease_expiries: Counter::default(),
            workers_connected: Gauge::default(),
            queue_depth: Family::default(),
            claim_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            claim_to_send: Histogram::new(exponential_buckets(0.00001, 2.0, 20)),
            db_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "jobs_assigned",
            "Jobs handed to workers",
            m.jobs_assigned.clone(),
        );
        registry.register(
            "jobs_completed",
            "Job results accepted",
            m.jobs_completed.clone(),
        );
        registry.register(
            "jobs_requeued",
            "Jobs re-queued after their lease expired",
            m.jobs_requeued.clone(),
        );
        registry.register(
            "confirmation_runs_queued",
            "Confirmation runs queued for regressed or fixed first runs",
            m.confirmation_runs_queued.clone(),
        );
        registry.register(
            "flakes_recorded",
            "Sightings of flakes (differences between runs on the same toolchain) recorded",
            m.flakes_recorded.clone(),
        );
        registry.register(
            "jobs_errored",
            "Jobs that used up their attempts",
            m.jobs_errored.clone(),
        );
        registry.register(
            "jobs_returned",
            "Jobs handed back by workers without a result",
            m.jobs_returned.clone(),
        );
        registry.register(
            "results_rejected",
            "Results rejected (stale lease, duplicate, cancelled)",
            m.results_rejected.clone(),
        );
        registry.register(
            "lease_expiries",
            "Leases that expired",
            m.lease_expiries.clone(),
        );
        registry.register(
            "workers_connected",
            "Workers with an open session",
            m.workers_connected.clone(),
        );
        registry.register(
            "queue_depth",
            "Queued jobs per experiment",
            m.queue_depth.clone(),
        );
        registry.register(
            "claim_latency_seconds",
            "Time of one batched queue claim",
            m.claim_latency.clone(),
        );
        registry.register(
            "claim_to_send_seconds",
            "Time from the claim's commit until the assignment is on the worker's stream",
            m.claim_to_send.clone(),
        );
        registry.register(
            "db_errors",
            "Database errors in the scheduler's loops",
            m.db_errors.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
