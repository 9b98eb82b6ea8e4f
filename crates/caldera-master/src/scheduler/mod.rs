//! The scheduler: hands queued jobs to connected workers (pushed, no polling), renews leases on
//! heartbeats, accepts fenced results in batches, re-queues expired leases, and completes
//! experiments whose jobs are all finished.
//!
//! Three background tasks share one [`Scheduler`]:
//! * the **dispatcher** claims jobs for workers with free slots whenever something changes
//!   (a worker connects or frees a slot, an experiment starts or resumes, the reaper re-queues);
//! * the **result writer** batches incoming results into one transaction per batch;
//! * the **reaper** re-queues jobs whose lease expired.
//!
//! Postgres is the only state that matters: a master restart loses nothing but open streams, and
//! workers reconnect and deliver what they finished meanwhile.

pub mod clock;
mod service;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_core::experiment::ExperimentSpec;
use caldera_core::job::JobSpec;
use caldera_core::lifecycle::ExperimentAction;
use caldera_db::jobs::{self, Claimed, Completion};
use caldera_db::{OwnConnection, PgPool, experiments};
use caldera_proto::v1::{self, master_message};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use clock::{Clock, ManualClock, SystemClock};
pub use service::WorkerServiceImpl;

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
    in_flight: HashMap<i64, Uuid>,
    draining: bool,
    tx: Outbound,
}

/// A result waiting for the result writer.
struct PendingResult {
    completion: Completion,
    tx: Outbound,
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
                    let msg = master_message::Kind::Cancel(v1::Cancel {
                        job_id: lease.job_id as u64,
                        lease_token: lease.lease_token.to_string(),
                        reason: reason.to_owned(),
                    });
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

    // ------------------------------------------------------------------ dispatcher

    async fn dispatcher(self) {
        let mut specs: HashMap<Uuid, Arc<ExperimentSpec>> = HashMap::new();
        let mut claimer = jobs::Claimer::new(&self.inner.pool);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.dispatch_tick) => {}
            }
            if let Err(e) = self.dispatch_round(&mut claimer, &mut specs).await {
                self.inner.metrics.db_errors.inc();
                tracing::warn!(error = %e, "dispatcher: database error; retrying shortly");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Claim for every worker with free slots until nothing more can be handed out.
    async fn dispatch_round(
        &self,
        claimer: &mut jobs::Claimer,
        specs: &mut HashMap<Uuid, Arc<ExperimentSpec>>,
    ) -> Result<(), caldera_db::DbError> {
        let mut exhausted: HashSet<Uuid> = HashSet::new();
        loop {
            // the workers with free slots, and every connected worker that takes jobs (a
            // confirmation run goes to another worker than its first run's when one could take it)
            let (candidates, connected): (
                Vec<(Uuid, Vec<String>, usize)>,
                Vec<(Uuid, Vec<String>)>,
            ) = {
                let sessions = self.inner.sessions.lock().expect("sessions lock");
                (
                    sessions
                        .iter()
                        .filter(|(id, s)| {
                            !s.draining && s.in_flight.len() < s.slots && !exhausted.contains(id)
                        })
                        .map(|(id, s)| (*id, s.capabilities.clone(), s.slots - s.in_flight.len()))
                        .collect(),
                    sessions
                        .iter()
                        .filter(|(_, s)| !s.draining && s.slots > 0)
                        .map(|(id, s)| (*id, s.capabilities.clone()))
                        .collect(),
                )
            };
            if candidates.is_empty() {
                return Ok(());
            }
            for (worker, caps, free) in candidates {
                let limit = (free as i64).min(self.inner.config.claim_batch);
                let mut others: Vec<Vec<String>> = connected
                    .iter()
                    .filter(|(id, _)| *id != worker)
                    .map(|(_, caps)| caps.clone())
                    .collect();
                others.sort_unstable();
                others.dedup();
                let started = Instant::now();
                let claimed = claimer
                    .claim_among(
                        worker,
                        &caps,
                        &others,
                        limit,
                        self.now(),
                        chrono_dur(self.inner.config.lease),
                    )
                    .await?;
                self.inner
                    .metrics
                    .claim_latency
                    .observe(started.elapsed().as_secs_f64());
                if (claimed.len() as i64) < limit {
                    exhausted.insert(worker);
                }
                if claimed.is_empty() {
                    continue;
                }
                let sent_at = Instant::now();
                self.assign(worker, claimed, specs).await?;
                self.inner
                    .metrics
                    .claim_to_send
                    .observe(sent_at.elapsed().as_secs_f64());
            }
        }
    }

    async fn assign(
        &self,
        worker: Uuid,
        claimed: Vec<Claimed>,
        specs: &mut HashMap<Uuid, Arc<ExperimentSpec>>,
    ) -> Result<(), caldera_db::DbError> {
        let mut messages = Vec::with_capacity(claimed.len());
        let mut unsendable = Vec::new();
        // each experiment's spec is read once (specs do not change after the start)
        let mut unknown: Vec<Uuid> = claimed
            .iter()
            .map(|c| c.experiment_id)
            .filter(|id| !specs.contains_key(id))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            if specs.len() > 256 {
                specs.clear();
            }
            let read = caldera_db::experiments::specs(&self.inner.pool, &unknown).await?;
            self.remember_calibration(read.iter().map(|(id, spec)| (*id, spec.calibration)));
            for (id, spec) in read {
                specs.insert(id, Arc::new(spec));
            }
        }
        for c in &claimed {
            let Some(spec) = specs.get(&c.experiment_id).cloned() else {
                tracing::error!(experiment = %c.experiment, "the experiment of a claimed job is gone");
                unsendable.push(c);
                continue;
            };
            match job_spec(&spec, c) {
                Ok(job) => messages.push((
                    c.job_id,
                    c.lease_token,
                    v1::Assign {
                        job_id: c.job_id as u64,
                        lease_token: c.lease_token.to_string(),
                        attempt: c.attempt as u32,
                        spec: Some((&job).into()),
                    },
                )),
                Err(e) => {
                    tracing::error!(experiment = %c.experiment, krate = %c.crate_id, error = %e, "cannot build the job spec");
                    unsendable.push(c);
                }
            }
        }
        let tx = {
            let mut sessions = self.inner.sessions.lock().expect("sessions lock");
            match sessions.get_mut(&worker) {
                Some(s) => {
                    for (id, token, _) in &messages {
                        s.in_flight.insert(*id, *token);
                    }
                    Some(s.tx.clone())
                }
                None => None,
            }
        };
        let mut give_back: Vec<(i64, Uuid)> = unsendable
            .iter()
            .map(|c| (c.job_id, c.lease_token))
            .collect();
        match tx {
            Some(tx) => {
                for (id, token, assign) in messages {
                    tracing::debug!(job = id, worker = %worker, "assign");
                    let msg = v1::MasterMessage {
                        kind: Some(master_message::Kind::Assign(assign)),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        give_back.push((id, token));
                    } else {
                        self.inner.metrics.jobs_assigned.inc();
                    }
                }
            }
            None => give_back.extend(messages.iter().map(|(id, token, _)| (*id, *token))),
        }
        if !give_back.is_empty() {
            self.release(worker, give_back.iter().map(|(id, _)| *id));
            for (id, token) in give_back {
                jobs::hand_back(&self.inner.pool, id, token, self.now()).await?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ results

    pub(crate) async fn submit_result(&self, completion: Completion, tx: Outbound) {
        if self
            .inner
            .results
            .send(PendingResult { completion, tx })
            .await
            .is_err()
        {
            tracing::warn!("result writer stopped; result dropped (the worker keeps it spooled)");
        }
    }

    async fn result_writer(self, mut rx: mpsc::Receiver<PendingResult>) {
        let max = self.inner.config.result_batch;
        // its own connection: one round trip per batch instead of three (see `OwnConnection`)
        let mut db = OwnConnection::new(&self.inner.pool, "caldera-results", &[]);
        loop {
            let first = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let completions: Vec<Completion> = batch.iter().map(|p| p.completion.clone()).collect();
            let out = loop {
                let written = match db.get().await {
                    Ok(conn) => {
                        jobs::complete_on(
                            conn,
                            &completions,
                            self.now(),
                            self.inner.config.max_attempts,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match written {
                    Ok(out) => break out,
                    Err(e) => {
                        db.reset();
                        self.inner.metrics.db_errors.inc();
                        tracing::warn!(error = %e, results = completions.len(), "cannot record results; retrying");
                        tokio::select! {
                            _ = self.inner.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                    }
                }
            };
            if out.confirmations > 0 {
                self.inner
                    .metrics
                    .confirmation_runs_queued
                    .inc_by(out.confirmations);
                tracing::info!(
                    runs = out.confirmations,
                    "regressions or fixes: confirmation runs queued"
                );
            }
            let accepted: HashSet<i64> = out.accepted.iter().copied().collect();
            let requeued: HashSet<i64> = out.requeued.iter().copied().collect();
            if !requeued.is_empty() {
                self.inner
                    .metrics
                    .jobs_requeued
                    .inc_by(requeued.len() as u64);
                tracing::info!(jobs = ?out.requeued, "infrastructure errors: jobs queued again for another attempt");
            }
            let mut by_worker: HashMap<Uuid, Vec<i64>> = HashMap::new();
            for p in &batch {
                let c = &p.completion;
                let ok = accepted.contains(&c.job_id) || requeued.contains(&c.job_id);
                if accepted.contains(&c.job_id) {
                    self.inner.metrics.jobs_completed.inc();
                } else if ok {
                    // received, and queued again: the worker may forget it
                } else {
                    self.inner
                        .metrics
                        .results_rejected
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "stale-lease".into(),
                        })
                        .inc();
                    tracing::warn!(job = c.job_id, lease = %c.lease_token, worker = %c.worker, "rejected a result: its lease is not current");
                }
                by_worker.entry(c.worker).or_default().push(c.job_id);
                let ack = v1::ResultAck {
                    job_id: c.job_id as u64,
                    lease_token: c.lease_token.to_string(),
                    accepted: ok,
                    reason: if ok {
                        String::new()
                    } else {
                        "the lease is not current (expired, reassigned, cancelled or already reported)".into()
                    },
                };
                let _ =
                    p.tx.send(Ok(v1::MasterMessage {
                        kind: Some(master_message::Kind::Ack(ack)),
                    }))
                    .await;
            }
            for (worker, ids) in by_worker {
                self.release(worker, ids);
            }
            self.record_flakes(&mut db, &completions, &out).await;
            if !out.experiments.is_empty() {
                let finished = match db.get().await {
                    Ok(conn) => jobs::finished_experiments(conn, &out.experiments).await,
                    Err(e) => Err(e),
                };
                match finished {
                    Ok(names) => self.complete_named(names).await,
                    Err(e) => {
                        // the reaper's sweep completes them later
                        db.reset();
                        tracing::warn!(error = %e, "cannot check for finished experiments");
                    }
                }
            }
        }
    }

    fn remember_calibration(&self, experiments: impl IntoIterator<Item = (Uuid, bool)>) {
        let mut known = self.inner.calibration.lock().unwrap();
        if known.len() > 4096 {
            known.clear();
        }
        known.extend(experiments);
    }

    /// Flaky memory (`caldera_db::flakes`): for the confirmation runs (run > 0) and the runs of
    /// calibration experiments this batch recorded, what differed from what should have agreed.
    /// Nothing is read or written for a batch with neither: whether an experiment is a
    /// calibration is known from the dispatcher's reading of its spec (or read once here, for
    /// jobs claimed before a restart of the master).
    async fn record_flakes(
        &self,
        db: &mut OwnConnection,
        batch: &[Completion],
        out: &jobs::CompletionOutcome,
    ) {
        if out.done.is_empty() {
            return;
        }
        let mut unknown: Vec<Uuid> = {
            let known = self.inner.calibration.lock().unwrap();
            out.done
                .iter()
                .map(|(_, e, _)| *e)
                .filter(|e| !known.contains_key(e))
                .collect()
        };
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            match caldera_db::experiments::specs(&self.inner.pool, &unknown).await {
                Ok(read) => {
                    let mut found: HashMap<Uuid, bool> =
                        unknown.iter().map(|e| (*e, false)).collect();
                    found.extend(read.iter().map(|(id, spec)| (*id, spec.calibration)));
                    self.remember_calibration(found);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read specs; flakes of this batch's calibration runs are not recorded");
                }
            }
        }
        let finished: Vec<caldera_db::flakes::FinishedRun> = {
            let known = self.inner.calibration.lock().unwrap();
            out.done
                .iter()
                .filter_map(|(id, experiment, run)| {
                    let calibration = known.get(experiment).copied().unwrap_or(false);
                    if *run == 0 && !calibration {
                        return None;
                    }
                    // the first report of the job in the batch is the one recorded
                    let c = batch.iter().find(|c| c.job_id == *id)?;
                    Some(caldera_db::flakes::FinishedRun {
                        job_id: *id,
                        run: *run,
                        calibration,
                        start: (&c.start.outcome, c.start.log_key.as_deref()),
                        end: (&c.end.outcome, c.end.log_key.as_deref()),
                    })
                })
                .collect()
        };
        if finished.is_empty() {
            return;
        }
        // The results are written (and acknowledged) already: a failure here loses these
        // sightings only, so a few attempts, then a warning.
        for attempt in 1..=3 {
            let recorded = match db.get().await {
                Ok(conn) => caldera_db::flakes::record_finished(conn, &finished, self.now()).await,
                Err(e) => Err(e),
            };
            match recorded {
                Ok(n) => {
                    if n > 0 {
                        self.inner.metrics.flakes_recorded.inc_by(n);
                        tracing::info!(sightings = n, "flakes recorded");
                    }
                    return;
                }
                Err(e) => {
                    db.reset();
                    tracing::warn!(error = %e, attempt, "cannot record flakes");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

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

    // ------------------------------------------------------------------ reaper

    async fn reaper(self) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.inner.config.reap_interval) => {}
            }
            if let Err(e) = self.reap_now().await {
                self.inner.metrics.db_errors.inc();
                tracing::warn!(error = %e, "reaper: database error");
            }
            // Experiments are completed after the batch that finishes their last job; one whose
            // last batch committed just before the master stopped would otherwise stay running.
            match jobs::active_experiments(&self.inner.pool).await {
                Ok(active) => self.complete_finished(&active).await,
                Err(e) => tracing::warn!(error = %e, "reaper: cannot list running experiments"),
            }
        }
    }

    /// Re-queue (or give up on) jobs whose lease expired by the clock's now.
    pub async fn reap_now(&self) -> Result<jobs::Reaped, caldera_db::DbError> {
        let reaped =
            jobs::reap(&self.inner.pool, self.now(), self.inner.config.max_attempts).await?;
        let n = (reaped.requeued.len() + reaped.errored.len()) as u64;
        if n > 0 {
            self.inner.metrics.lease_expiries.inc_by(n);
            self.inner
                .metrics
                .jobs_requeued
                .inc_by(reaped.requeued.len() as u64);
            self.inner
                .metrics
                .jobs_errored
                .inc_by(reaped.errored.len() as u64);
            tracing::warn!(
                requeued = reaped.requeued.len(),
                errored = reaped.errored.len(),
                "leases expired"
            );
            let gone: HashSet<i64> = reaped
                .requeued
                .iter()
                .chain(&reaped.errored)
                .copied()
                .collect();
            {
                let mut sessions = self.inner.sessions.lock().expect("sessions lock");
                for s in sessions.values_mut() {
                    s.in_flight.retain(|id, _| !gone.contains(id));
                }
            }
            self.wake();
            self.complete_finished(&reaped.experiments).await;
        }
        Ok(reaped)
    }
}

/// The job a worker runs for a claimed row.
pub fn job_spec(spec: &ExperimentSpec, c: &Claimed) -> Result<JobSpec, String> {
    let krate: CrateId = c
        .crate_id
        .parse()
        .map_err(|e| format!("crate id {:?}: {e}", c.crate_id))?;
    let name = match &krate {
        CrateId::Registry { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let ov = name.and_then(|n| spec.override_for(n));
    Ok(JobSpec {
        experiment: c.experiment.clone(),
        krate,
        start: spec.start.clone(),
        end: spec.end.clone(),
        mode: spec.mode,
        cap_lints: spec.cap_lints,
        skip_tests: ov.is_some_and(|o| o.skip_tests),
        quiet: ov.is_some_and(|o| o.quiet),
        extra_timeout_secs: ov.and_then(|o| o.extra_timeout_secs).unwrap_or(0),
        extra_memory_mib: ov.and_then(|o| o.extra_memory_mib).unwrap_or(0),
        run: u32::try_from(c.run).unwrap_or(0),
    })
}
