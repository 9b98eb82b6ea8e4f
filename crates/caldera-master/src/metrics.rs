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
    pub heartbeat_lateness: Histogram,
    pub heartbeat_handling: Histogram,
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
            heartbeat_lateness: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            heartbeat_handling: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            db_errors: Counter::default(),
            registry: Registry::default(),
        };
        // in this order in the exposition
        m.register_jobs(&mut registry);
        m.register_farm(&mut registry);
        m.register_scheduler(&mut registry);
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// What happens to jobs and their results: assigned, accepted, re-queued, confirmed, given up,
    /// handed back, rejected, and leases that expired.
    fn register_jobs(&self, registry: &mut Registry) {
        let counters = [
            (
                "jobs_assigned",
                "Jobs handed to workers",
                &self.jobs_assigned,
            ),
            (
                "jobs_completed",
                "Job results accepted",
                &self.jobs_completed,
            ),
            (
                "jobs_requeued",
                "Jobs re-queued after their lease expired",
                &self.jobs_requeued,
            ),
            (
                "confirmation_runs_queued",
                "Confirmation runs queued for regressed or fixed first runs",
                &self.confirmation_runs_queued,
            ),
            (
                "flakes_recorded",
                "Sightings of flakes (differences between runs on the same toolchain) recorded",
                &self.flakes_recorded,
            ),
            (
                "jobs_errored",
                "Jobs that used up their attempts",
                &self.jobs_errored,
            ),
            (
                "jobs_returned",
                "Jobs handed back by workers without a result",
                &self.jobs_returned,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "results_rejected",
            "Results rejected (stale lease, duplicate, cancelled)",
            self.results_rejected.clone(),
        );
        registry.register(
            "lease_expiries",
            "Leases that expired",
            self.lease_expiries.clone(),
        );
    }

    /// The farm: workers connected and jobs queued.
    fn register_farm(&self, registry: &mut Registry) {
        registry.register(
            "workers_connected",
            "Workers with an open session",
            self.workers_connected.clone(),
        );
        registry.register(
            "queue_depth",
            "Queued jobs per experiment",
            self.queue_depth.clone(),
        );
    }

    /// The scheduler's loops: how long claims take and reach the worker, how late heartbeats are
    /// handled, and database errors.
    fn register_scheduler(&self, registry: &mut Registry) {
        registry.register(
            "claim_latency_seconds",
            "Time of one batched queue claim",
            self.claim_latency.clone(),
        );
        registry.register(
            "claim_to_send_seconds",
            "Time from the claim's commit until the assignment is on the worker's stream",
            self.claim_to_send.clone(),
        );
        registry.register(
            "heartbeat_lateness_seconds",
            "How much later than the heartbeat interval a worker's heartbeat was read, after \
             the previous one on its stream (0 when on time)",
            self.heartbeat_lateness.clone(),
        );
        registry.register(
            "heartbeat_handling_seconds",
            "Time to handle one heartbeat (token check, lease renewal, last seen)",
            self.heartbeat_handling.clone(),
        );
        registry.register(
            "db_errors",
            "Database errors in the scheduler's loops",
            self.db_errors.clone(),
        );
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
