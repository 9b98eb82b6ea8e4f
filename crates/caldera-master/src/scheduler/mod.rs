//! The scheduler: hands queued jobs to connected workers (pushed, no polling), renews leases on
//! heartbeats, accepts fenced results in batches, re-queues expired leases, and completes
//! experiments whose jobs are all finished.
//!
//! Three background tasks share one [`Scheduler`]:
//! * the **dispatcher** (`dispatch.rs`) claims jobs for workers with free slots whenever
//!   something changes (a worker connects or frees a slot, an experiment starts or resumes, the
//!   reaper re-queues);
//! * the **result writer** (`results.rs`) batches incoming results into one transaction per batch;
//! * the **reaper** (`reaper.rs`) re-queues jobs whose lease expired.
//!
//! The workers' streams are served by `service.rs`; what travels on them is read and written
//! through `caldera_proto`'s conversions, and lease tokens are carried as
//! [`LeaseToken`](caldera_proto::LeaseToken), turned into the database's UUIDs only at its calls.
//!
//! Postgres is the only state that matters: a master restart loses nothing but open streams, and
//! workers reconnect and deliver what they finished meanwhile.

pub mod clock;
mod dispatch;
mod pins;
mod reaper;
mod results;
mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caldera_core::lifecycle::ExperimentAction;
use caldera_db::jobs;
use caldera_db::{PgPool, experiments};
use caldera_proto::v1::{self, master_message};
use caldera_proto::{Cancel, Lease, LeaseToken};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatch::job_spec;
pub use service::WorkerServiceImpl;

use results::PendingResult;

use crate::metrics::Metrics;

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often workers send heartbeats (told to them in Welcome).
    pub heartbeat_interval: Duration,
    /// Leases a job may use up before it ends as `error`.
    pub max_attempts: i32,
    /// Most jobs claimed for one worker in one transaction.
    pub claim_batch: i64,
    /// How often the reaper looks for expired leases.
    pub reap_interval: Duration,
    /// Most results written in one transaction.
    pub result_batch: usize,
    /// The dispatcher also runs this often without being woken (a safety net).
    pub dispatch_tick: Duration,
    /// The result cache's entries older than this are not used (`--result-cache-max-age`);
    /// zero turns the cache off for every experiment.
    pub result_cache_max_age: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease: Duration::from_secs(120),
            heartbeat_interval: Duration::from_secs(15),
            max_attempts: 3,
            claim_batch: 64,
            reap_interval: Duration::from_secs(5),
            result_batch: 512,
            dispatch_tick: Duration::from_secs(2),
            result_cache_max_age: Duration::from_secs(30 * 86_400),
        }
    }
}

type Outbound = mpsc::Sender<Result<v1::MasterMessage, tonic::Status>>;

/// A connected worker's session as the scheduler sees it.
struct Session {
    session: Uuid,
    capabilities: Vec<String>,
    slots: usize,
    /// jobs assigned to this session and not yet finished, by job id → lease token
    in_flight: HashMap<i64, LeaseToken>,
    draining: bool,
    tx: Outbound,
    /// what the worker advertised that the result cache's keys need
    cache: crate::cache::Advertised,
}

pub(crate) struct Inner {
    pool: PgPool,
    config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    /// worker id → session
    sessions: Mutex<HashMap<Uuid, Session>>,
    wake: Notify,
    results: mpsc::Sender<PendingResult>,
    shutdown: CancellationToken,
    /// Called with the name of each experiment the scheduler completes (see
    /// [`Scheduler::on_experiment_completed`]).
    on_completed: Mutex<Option<CompletionHook>>,
    /// experiment id → whether it is a calibration (A/A) experiment: filled by the dispatcher
    /// as it reads specs, read by the result writer to find the runs that may show flakes
    calibration: Mutex<HashMap<Uuid, bool>>,
}

/// What to do when an experiment completes; must not block (spawn the work).
pub type CompletionHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Handle to the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    pub(crate) inner: Arc<Inner>,
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A lease as the database keeps it (`bigint` job id, `uuid` token), for the wire.
fn wire_lease(job_id: i64, token: Uuid) -> Lease {
    Lease {
        job_id: job_id as u64,
        token: token.into(),
    }
}

impl Scheduler {
    /// Start the scheduler's background tasks. They stop when `shutdown` is cancelled.
    pub fn start(
        pool: PgPool,
        config: SchedulerConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Scheduler {
        let (results, results_rx) = mpsc::channel(config.result_batch * 8);
        let inner = Arc::new(Inner {
            pool,
            config,
            clock,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            results,
            shutdown,
            on_completed: Mutex::new(None),
            calibration: Mutex::new(HashMap::new()),
        });
        let s = Scheduler { inner };
        tokio::spawn(s.clone().dispatcher());
        tokio::spawn(s.clone().result_writer(results_rx));
        tokio::spawn(s.clone().reaper());
        s.wake();
        s
    }

    /// The gRPC service for workers.
    pub fn service(&self) -> v1::worker_service_server::WorkerServiceServer<WorkerServiceImpl> {
        v1::worker_service_server::WorkerServiceServer::new(WorkerServiceImpl::new(self.clone()))
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Call `hook` with the name of every experiment this scheduler completes (replacing any
    /// previous hook). It runs on the result writer: it must spawn its work, not do it.
    pub fn on_experiment_completed(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.inner.on_completed.lock().expect("hook lock") = Some(Arc::new(hook));
    }

    /// Something changed that may let the dispatcher hand out jobs.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.inner.clock.now()
    }

    /// Tell workers to stop leases that were cancelled (experiment aborted).
    pub fn cancel_leases(&self, leases: &[jobs::CancelledLease], reason: &str) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        for lease in leases {
            for s in sessions.values_mut() {
                if s.in_flight.remove(&lease.job_id).is_some() {
                    let cancel = Cancel::lease(wire_lease(lease.job_id, lease.lease_token), reason);
                    let msg = master_message::Kind::Cancel(cancel.into());
                    let _ = s.tx.try_send(Ok(v1::MasterMessage { kind: Some(msg) }));
                }
            }
        }
        drop(sessions);
        self.wake();
    }

    /// Ask every connected worker to drain (finish what it runs, take nothing new).
    pub fn drain_all(&self, reason: &str) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        for s in sessions.values_mut() {
            s.draining = true;
            let msg = master_message::Kind::Drain(v1::Drain {
                reason: reason.to_owned(),
            });
            let _ = s.tx.try_send(Ok(v1::MasterMessage { kind: Some(msg) }));
        }
    }

    /// Number of open worker sessions.
    pub fn connected_workers(&self) -> usize {
        self.inner.sessions.lock().expect("sessions lock").len()
    }

    // ------------------------------------------------------------------ sessions

    /// What every connected worker that takes jobs (not draining) advertised for the result
    /// cache's keys.
    pub fn advertised(&self) -> Vec<crate::cache::Advertised> {
        let sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions
            .values()
            .filter(|s| !s.draining)
            .map(|s| s.cache.clone())
            .collect()
    }

    fn register(&self, worker: Uuid, session: Session) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        // a newer session of the same worker replaces the old one (dropping its sender ends it)
        sessions.insert(worker, session);
        self.inner
            .metrics
            .workers_connected
            .set(sessions.len() as i64);
        drop(sessions);
        self.wake();
    }

    fn unregister(&self, worker: Uuid, session: Uuid) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        if sessions.get(&worker).is_some_and(|s| s.session == session) {
            sessions.remove(&worker);
        }
        self.inner
            .metrics
            .workers_connected
            .set(sessions.len() as i64);
    }

    /// Jobs `worker` no longer runs (finished, returned, cancelled, or not renewed).
    fn release(&self, worker: Uuid, job_ids: impl IntoIterator<Item = i64>) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        if let Some(s) = sessions.get_mut(&worker) {
            for id in job_ids {
                s.in_flight.remove(&id);
            }
        }
        drop(sessions);
        self.wake();
    }

    // ------------------------------------------------------------------ experiments

    /// Move experiments with no unfinished job to `completed`.
    /// Completes the experiment if all its jobs are terminal (after a start that settled every
    /// job without running it).
    pub async fn check_finished(&self, experiment: Uuid) {
        self.complete_finished(&[experiment]).await;
    }

    async fn complete_finished(&self, experiments: &[Uuid]) {
        if experiments.is_empty() {
            return;
        }
        match jobs::finished_experiments(&self.inner.pool, experiments).await {
            Ok(names) => self.complete_named(names).await,
            Err(e) => tracing::warn!(error = %e, "cannot check for finished experiments"),
        }
    }

    /// Move the experiments named (which have no unfinished job) to `completed`.
    async fn complete_named(&self, names: Vec<String>) {
        for name in names {
            match experiments::apply_action(&self.inner.pool, &name, ExperimentAction::Complete)
                .await
            {
                Ok(_) => {
                    tracing::info!(experiment = %name, "experiment completed");
                    let hook = self.inner.on_completed.lock().expect("hook lock").clone();
                    if let Some(hook) = hook {
                        hook(&name);
                    }
                }
                Err(e) => tracing::debug!(experiment = %name, error = %e, "not completed"),
            }
        }
    }
}
