//! The worker's event loop: one task that owns the connection state, the running jobs and the
//! unacknowledged results, and reacts to the master, to finished jobs, to timers and to drain.
//!
//! Jobs run in their own tasks (a [`JoinSet`]); heartbeats come from a task of their own (see
//! [`crate::session`]); so neither a slow build nor a busy loop delays a lease renewal.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caldera_core::fingerprint::{Environment, SideInputs, cache_key};
use caldera_core::job::{JobSpec, Side};
use caldera_proto::v1::{self, master_message, worker_message};
use caldera_proto::{Assign, Cancel, Hello, JobReturned, Lease, ResultAck, Welcome};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::executor::{Assignment, Executor, JobOutput, SideOutput};
use crate::pending::Pending;
use crate::result_spool::ResultSpool;
use crate::session::{self, HandshakeError, Session};
use crate::{WorkerConfig, WorkerError};

/// How long to wait, when leaving, for the master to close its side of the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct RunningJob {
    cancel: CancellationToken,
    /// Cancelled jobs still hold a slot until their task ends, but not a lease.
    pub cancelled: bool,
}

/// The jobs running, by the lease each runs under.
pub(crate) type RunningJobs = BTreeMap<Lease, RunningJob>;
/// Shared with the heartbeat task, which lists the leases.
pub(crate) type Running = Arc<Mutex<RunningJobs>>;

/// What a job task reports when it ends.
struct JobDone {
    lease: Lease,
    /// `None`: the job was cancelled; nothing is reported.
    result: Option<v1::JobResult>,
}

enum Conn {
    /// Disconnected; try again at this instant.
    Waiting(Instant),
    Connecting(BoxFuture<'static, Result<(Box<Session>, Welcome), HandshakeError>>),
    Up(Box<Session>),
}

enum ConnEvent {
    RetryDue,
    Handshake(Result<(Box<Session>, Welcome), HandshakeError>),
    Inbound(Option<Result<v1::MasterMessage, tonic::Status>>),
}

/// Wait for whatever the connection does next.
async fn conn_event(conn: &mut Conn) -> ConnEvent {
    match conn {
        Conn::Waiting(at) => {
            tokio::time::sleep_until(*at).await;
            ConnEvent::RetryDue
        }
        Conn::Connecting(fut) => ConnEvent::Handshake(fut.await),
        Conn::Up(session) => ConnEvent::Inbound(session.inbound.next().await),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct DrainState {
    /// Running jobs are cancelled and handed back at this instant.
    deadline: Instant,
    deadline_passed: bool,
    /// Once nothing runs: give up waiting for acknowledgements at this instant.
    ack_deadline: Option<Instant>,
}

pub(crate) struct Worker {
    config: WorkerConfig,
    endpoint: crate::tls::MasterEndpoint,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    executor: Arc<dyn Executor>,
    spool: ResultSpool,
    running: Running,
    tasks: JoinSet<JobDone>,
    task_leases: HashMap<tokio::task::Id, Lease>,
    /// Finished, spooled, not yet acknowledged.
    pending: Pending,
    /// Hand-backs that could not be sent while disconnected; sent after the next Welcome.
    unsent_returns: Vec<v1::JobReturned>,
    conn: Conn,
    /// Failed connection attempts since the last Welcome.
    attempt: u32,
    drain: Option<DrainState>,
}

impl Worker {
    pub(crate) fn new(
        config: WorkerConfig,
        executor: Arc<dyn Executor>,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        let endpoint = config.endpoint()?;
        let authorization = config.authorization()?;
        let spool_error = |source| WorkerError::Spool {
            path: config.spool_dir.clone(),
            source,
        };
        let spool = ResultSpool::open(&config.spool_dir).map_err(spool_error)?;
        let pending = Pending::from_spool(&spool);
        Ok(Worker {
            config,
            endpoint,
            authorization,
            executor,
            spool,
            running: Arc::default(),
            tasks: JoinSet::new(),
            task_leases: HashMap::new(),
            pending,
            unsent_returns: Vec::new(),
            conn: Conn::Waiting(Instant::now()),
            attempt: 0,
            drain: None,
        })
    }

    pub(crate) async fn run(
        mut self,
        drain: impl Future<Output = ()> + Send,
    ) -> Result<(), WorkerError> {
        let mut drain = pin!(drain);
        let mut drain_signalled = false;
        self.conn = Conn::Connecting(self.handshake());
        loop {
            if self.drain_finished() {
                self.leave().await;
                flush_spool(&self.spool).await;
                return Ok(());
            }
            let drain_deadline = self
                .drain
                .as_ref()
                .filter(|d| !d.deadline_passed)
                .map(|d| d.deadline);
            let ack_deadline = self.drain.as_ref().and_then(|d| d.ack_deadline);
            let fatal = tokio::select! {
                () = &mut drain, if !drain_signalled => {
                    drain_signalled = true;
                    self.start_drain("asked to drain locally");
                    None
                }
                () = sleep_until_opt(drain_deadline) => {
                    self.drain_deadline_reached();
                    None
                }
                // only wakes the loop, which then sees the drain is over
                () = sleep_until_opt(ack_deadline) => None,
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.job_ended(joined);
                    None
                }
                event = conn_event(&mut self.conn) => self.on_conn_event(event).await.err(),
            };
            if let Some(fatal) = fatal {
                self.abandon_jobs().await;
                flush_spool(&self.spool).await;
                return Err(fatal);
            }
        }
    }

    fn handshake(&self) -> BoxFuture<'static, Result<(Box<Session>, Welcome), HandshakeError>> {
        let hello = Hello {
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: self.config.capabilities.clone(),
            slots: self.config.slots,
            running: Vec::new(), // filled in once connected
            toolchains: self.config.toolchains.clone(),
            environment: self.config.environment.clone(),
        };
        debug!("connecting to {}", self.config.master);
        session::handshake(
            self.endpoint.clone(),
            self.authorization.clone(),
            hello,
            self.held_leases(),
        )
        .boxed()
    }

    fn reconnect_later(&mut self) {
        let delay = self.config.reconnect.next_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        debug!(?delay, attempt = self.attempt, "reconnecting after a pause");
        self.conn = Conn::Waiting(Instant::now() + delay);
    }

    async fn on_conn_event(&mut self, event: ConnEvent) -> Result<(), WorkerError> {
        match event {
            ConnEvent::RetryDue => self.conn = Conn::Connecting(self.handshake()),
            ConnEvent::Handshake(Ok((session, welcome))) => self.welcomed(session, welcome),
            ConnEvent::Handshake(Err(HandshakeError::Fatal(e))) => return Err(e),
            ConnEvent::Handshake(Err(HandshakeError::Retry(why))) => {
                warn!(master = %self.config.master, "cannot reach the master: {why}");
                self.reconnect_later();
            }
            ConnEvent::Inbound(Some(Ok(message))) => self.on_master_message(message),
            ConnEvent::Inbound(Some(Err(status))) => {
                if session::is_auth_failure(&status) {
                    return Err(session::unauthorized(&status));
                }
                warn!(code = ?status.code(), "session with the master lost: {}", status.message());
                self.reconnect_later();
            }
            ConnEvent::Inbound(None) => {
                warn!("the master closed the session");
                self.reconnect_later();
            }
        }
        Ok(())
    }

    fn welcomed(&mut self, mut session: Box<Session>, welcome: Welcome) {
        info!(
            worker_id = %welcome.worker_id,
            lease = ?welcome.lease,
            heartbeat = ?welcome.heartbeat_interval,
            held = self.held_leases().list().len(),
            unacknowledged = self.pending.len(),
            "connected to the master",
        );
        self.attempt = 0;
        session.start_heartbeats(
            welcome.heartbeat_interval,
            self.held_leases(),
            self.config.spool_dir.clone(),
        );
        for result in self.pending.results() {
            session.send(worker_message::Kind::Result(result.clone()));
        }
        for returned in self.unsent_returns.drain(..) {
            session.send(worker_message::Kind::Returned(returned));
        }
        self.conn = Conn::Up(session);
    }

    /// Send to the master if connected; `false` if not (or the stream just broke).
    fn send(&self, kind: worker_message::Kind) -> bool {
        match &self.conn {
            Conn::Up(session) => session.send(kind),
            _ => false,
        }
    }

    fn on_master_message(&mut self, message: v1::MasterMessage) {
        match message.kind {
            Some(master_message::Kind::Assign(a)) => self.assign(a),
            Some(master_message::Kind::Cancel(c)) => match Cancel::try_from(c) {
                Ok(c) => self.cancel(c),
                Err(e) => debug!("ignoring a cancel: {e}"),
            },
            Some(master_message::Kind::Drain(d)) => {
                self.start_drain(&format!("the master asked to drain: {}", d.reason))
            }
            Some(master_message::Kind::Ack(a)) => self.acknowledged(a),
            Some(master_message::Kind::Welcome(_)) => warn!("ignoring a second Welcome"),
            None => warn!("ignoring an empty message from the master"),
        }
    }

    /// Hand a job back without a result: sent now, or after the next Welcome if disconnected.
    fn hand_back(&mut self, returned: v1::JobReturned) {
        info!(job_id = returned.job_id, reason = %returned.reason, "handing the job back");
        if !self.send(worker_message::Kind::Returned(returned.clone())) {
            self.unsent_returns.push(returned);
        }
    }

    fn return_job(&mut self, lease: &Lease, reason: String) {
        let returned = JobReturned {
            lease: *lease,
            reason,
        };
        self.hand_back(returned.into());
    }

    fn assign(&mut self, a: v1::Assign) {
        let assign = match Assign::try_from(&a) {
            Ok(assign) => assign,
            Err(e) => return self.refuse_invalid(a, e),
        };
        let lease = assign.lease;
        if self.already_has(&lease) {
            return;
        }
        if self.drain.is_some() {
            return self.return_job(&lease, "the worker is draining".into());
        }
        self.stop_stale_runs(lease.job_id);
        let busy = self.tasks.len();
        if busy >= self.config.slots as usize {
            return self.return_job(
                &lease,
                format!("no free slot ({busy} of {} busy)", self.config.slots),
            );
        }
        self.start_job(assign);
    }

    /// An Assign that does not make sense goes back naming the bad field, under the lease token
    /// it came with (which may be the bad field).
    fn refuse_invalid(&mut self, a: v1::Assign, e: caldera_proto::WireError) {
        warn!(job_id = a.job_id, "invalid assignment: {e}");
        self.hand_back(v1::JobReturned {
            job_id: a.job_id,
            lease_token: a.lease_token,
            reason: format!("invalid assignment: {e}"),
        });
    }

    /// Whether this lease is already taken care of: it runs, or it finished (then its result is
    /// sent again: the master evidently did not get it).
    fn already_has(&mut self, lease: &Lease) -> bool {
        if self.task_leases.values().any(|l| l == lease) {
            debug!(
                job_id = lease.job_id,
                "ignoring a repeated assignment of a running job"
            );
            return true;
        }
        if let Some(result) = self.pending.get(lease) {
            debug!(
                job_id = lease.job_id,
                "job already finished under this lease; sending its result again"
            );
            let result = result.clone();
            self.send(worker_message::Kind::Result(result));
            return true;
        }
        false
    }

    /// The same job under another lease: the master gave it out again, so our lease is dead.
    fn stop_stale_runs(&mut self, job_id: u64) {
        for (old, job) in self
            .lock_running()
            .iter_mut()
            .filter(|(l, j)| l.job_id == job_id && !j.cancelled)
        {
            info!(
                job_id = old.job_id,
                "the job was assigned again under a new lease; stopping the stale run"
            );
            job.cancelled = true;
            job.cancel.cancel();
        }
    }

    /// Run the job in a task of its own; it holds a slot and its lease is in `running` (so
    /// heartbeats list it) until it ends.
    fn start_job(&mut self, assign: Assign) {
        let Assign {
            lease,
            attempt,
            spec,
        } = assign;
        let span = info_span!(
            "job",
            job_id = lease.job_id,
            attempt,
            experiment = %spec.experiment,
            "crate" = %spec.krate,
        );
        let cancel = CancellationToken::new();
        self.lock_running().insert(
            lease,
            RunningJob {
                cancel: cancel.clone(),
                cancelled: false,
            },
        );
        let assignment = Assignment {
            job_id: lease.job_id,
            attempt,
            spec,
        };
        let task = run_job(
            self.executor.clone(),
            self.spool.clone(),
            self.running.clone(),
            lease,
            assignment,
            cancel,
            self.config.environment.clone(),
        );
        let handle = self.tasks.spawn(task.instrument(span));
        self.task_leases.insert(handle.id(), lease);
    }

    fn cancel(&mut self, c: Cancel) {
        let mut found = false;
        for (lease, job) in self.lock_running().iter_mut().filter(|(l, _)| c.stops(l)) {
            info!(job_id = lease.job_id, reason = %c.reason, "cancelling the job as the master asked");
            job.cancelled = true;
            job.cancel.cancel();
            found = true;
        }
        // finished but not yet delivered: drop it too
        let finished = self.pending.leases_where(|l| c.stops(l));
        for lease in finished {
            info!(job_id = lease.job_id, reason = %c.reason, "dropping the finished job's result as the master asked");
            self.pending.remove(&lease);
            unspool(&self.spool, &lease);
            found = true;
        }
        if !found {
            debug!(
                job_id = c.job_id,
                "cancel for a job this worker does not run"
            );
        }
    }

    fn acknowledged(&mut self, a: v1::ResultAck) {
        let job_id = a.job_id;
        let a = match ResultAck::try_from(a) {
            Ok(a) if self.pending.remove(&a.lease).is_some() => a,
            _ => {
                debug!(job_id, "acknowledgement of a result that is not pending");
                return;
            }
        };
        if a.accepted {
            info!(job_id, "result accepted");
        } else {
            warn!(job_id, reason = %a.reason, "result rejected by the master; dropped");
        }
        unspool(&self.spool, &a.lease);
    }

    fn job_ended(&mut self, joined: Result<(tokio::task::Id, JobDone), tokio::task::JoinError>) {
        let (lease, result) = match joined {
            Ok((id, done)) => {
                self.task_leases.remove(&id);
                (done.lease, done.result)
            }
            Err(e) => {
                let Some(lease) = self.task_leases.remove(&e.id()) else {
                    return;
                };
                error!(job_id = lease.job_id, error = %e, "job task failed; its lease will expire");
                (lease, None)
            }
        };
        self.lock_running().remove(&lease);
        if let Some(result) = result {
            self.send(worker_message::Kind::Result(result.clone()));
            self.pending.insert(lease, result);
        }
    }

    fn start_drain(&mut self, why: &str) {
        if self.drain.is_some() {
            return;
        }
        let running = self.tasks.len();
        info!(running, timeout = ?self.config.drain_timeout, "draining: {why}");
        self.drain = Some(DrainState {
            deadline: Instant::now() + self.config.drain_timeout,
            deadline_passed: false,
            ack_deadline: None,
        });
    }

    fn drain_deadline_reached(&mut self) {
        if let Some(d) = &mut self.drain {
            d.deadline_passed = true;
        }
        let mut cancelled = Vec::new();
        for (lease, job) in self.lock_running().iter_mut().filter(|(_, j)| !j.cancelled) {
            job.cancelled = true;
            job.cancel.cancel();
            cancelled.push(*lease);
        }
        for lease in cancelled {
            let reason = format!(
                "the worker is draining and the job did not finish within {:?}",
                self.config.drain_timeout
            );
            self.return_job(&lease, reason);
        }
    }

    /// Whether a drain is over: nothing runs, and every result is acknowledged or we waited long
    /// enough for that.
    fn drain_finished(&mut self) -> bool {
        let ack_timeout = self.config.drain_ack_timeout;
        let Some(d) = &mut self.drain else {
            return false;
        };
        if !self.tasks.is_empty() {
            return false;
        }
        if self.pending.is_empty() {
            return true;
        }
        let ack_deadline = *d
            .ack_deadline
            .get_or_insert_with(|| Instant::now() + ack_timeout);
        Instant::now() >= ack_deadline
    }

    /// Leave after a drain: close the stream politely and wait briefly for the master to close
    /// its side, taking any last acknowledgements.
    async fn leave(&mut self) {
        if !self.pending.is_empty() {
            warn!(
                results = self.pending.len(),
                "leaving with unacknowledged results; they stay in the spool for the next run"
            );
        }
        if !self.unsent_returns.is_empty() {
            warn!(
                jobs = self.unsent_returns.len(),
                "could not hand back every job; their leases will expire"
            );
        }
        let Conn::Up(session) = std::mem::replace(&mut self.conn, Conn::Waiting(Instant::now()))
        else {
            return;
        };
        let (mut inbound, _client) = session.close();
        let closing = async {
            while let Some(Ok(message)) = inbound.next().await {
                match message.kind {
                    Some(master_message::Kind::Ack(a)) => self.acknowledged(a),
                    other => debug!(message = ?other, "ignored while leaving"),
                }
            }
        };
        if tokio::time::timeout(CLOSE_GRACE, closing).await.is_err() {
            debug!("the master did not close the session within {CLOSE_GRACE:?}");
        }
        info!("drained; bye");
    }

    /// After a fatal error: cancel every job and wait (bounded) for the tasks to end.
    async fn abandon_jobs(&mut self) {
        if !self.tasks.is_empty() {
            warn!(
                running = self.tasks.len(),
                "stopping: cancelling the running jobs"
            );
        }
        for job in self.lock_running().values_mut() {
            job.cancelled = true;
            job.cancel.cancel();
        }
        let wait = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.drain_ack_timeout, wait)
            .await
            .is_err()
        {
            warn!("jobs did not stop after being cancelled; aborting their tasks");
            self.tasks.shutdown().await;
        }
    }

    /// The leases heartbeats list: running jobs' and unacknowledged results'.
    fn held_leases(&self) -> session::HeldLeases {
        session::HeldLeases {
            running: self.running.clone(),
            unacknowledged: self.pending.leases(),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, RunningJobs> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Before leaving: make the spool's last acknowledgements durable, so that a restart does not
/// send those results again. (A free function: holding `&Worker` across an await would need
/// `Worker: Sync`.)
async fn flush_spool(spool: &ResultSpool) {
    if let Err(e) = spool.flush().await {
        warn!(error = %e, "could not sync the result spool; acknowledged results may be sent again after a restart");
    }
}

/// Forget the spooled result of `lease` (acknowledged, or cancelled). The spool keys results by
/// the token's text, as the result carries it.
fn unspool(spool: &ResultSpool, lease: &Lease) {
    spool.remove(lease.job_id, &lease.token.to_string());
}

/// One job, in its own task: run it, then — unless it was cancelled — spool the result.
/// The job leaves `running` (heartbeats, Hello) as soon as the executor is done with it.
async fn run_job(
    executor: Arc<dyn Executor>,
    spool: ResultSpool,
    running: Running,
    lease: Lease,
    assignment: Assignment,
    cancel: CancellationToken,
    environment: Option<Environment>,
) -> JobDone {
    info!("job started");
    let spec = assignment.spec.clone();
    let started = Instant::now();
    let run = AssertUnwindSafe(async { executor.run(assignment, cancel.clone()).await })
        .catch_unwind()
        .await;
    running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&lease);
    if cancel.is_cancelled() {
        info!("job stopped after being cancelled; its result is dropped");
        return JobDone {
            lease,
            result: None,
        };
    }
    let output = run.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".into());
        error!(panic = %what, "the executor panicked; reporting the job as an error");
        let side = SideOutput::error(
            format!("worker executor panicked: {what}"),
            started.elapsed(),
        );
        JobOutput {
            start: side.clone(),
            end: side,
        }
    });
    let mut output = output;
    if let Some(env) = environment.filter(Environment::is_complete) {
        add_cache_keys(&spec, &env, &mut output);
    }
    let result = output.to_result(&lease);
    if let Err(e) = spool.write(&result).await {
        // still sent: this connection may well deliver it; only a restart before the ack loses it
        error!(error = %e, "could not spool the result");
    }
    info!(start = %output.start.outcome, end = %output.end.outcome, "job finished");
    JobDone {
        lease,
        result: Some(result),
    }
}

/// Each side's result-cache key, from the job, the build it ran with and this worker's
/// environment: only for a side that ran (not the one `spec.only` left out) and whose build the
/// executor knows.
fn add_cache_keys(spec: &JobSpec, env: &Environment, output: &mut JobOutput) {
    for (side, out) in [
        (Side::Start, &mut output.start),
        (Side::End, &mut output.end),
    ] {
        if spec.only.is_some_and(|only| only != side) {
            continue;
        }
        if let Some(identity) = &out.toolchain {
            out.cache_key = cache_key(&SideInputs::of_job(spec, side, identity, env));
        }
    }
}
