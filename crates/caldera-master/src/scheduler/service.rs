//! The tonic `WorkerService`: one bidirectional stream per worker.
//!
//! What comes off the stream is read with `caldera_proto`'s conversions, which reject bad wire
//! data naming the field; here it becomes the database's records and the scheduler's events.

use std::collections::HashMap;
use std::time::Duration;

use caldera_db::jobs::{self, Completion, SideRecord};
use caldera_db::tokens::{self, Role};
use caldera_db::workers;
use caldera_proto::v1::{
    self, master_message, worker_message, worker_service_server::WorkerService,
};
use caldera_proto::{
    Cancel, Heartbeat, Hello, JobResult, JobReturned, Lease, LeaseToken, SideOutput, Welcome,
    WireError,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::pins::RanWith;
use super::{Outbound, Scheduler, Session, chrono_dur};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// The worker service; see the proto for the conversation.
pub struct WorkerServiceImpl {
    scheduler: Scheduler,
}

impl WorkerServiceImpl {
    pub fn new(scheduler: Scheduler) -> Self {
        WorkerServiceImpl { scheduler }
    }
}

fn msg(kind: master_message::Kind) -> Result<v1::MasterMessage, Status> {
    Ok(v1::MasterMessage { kind: Some(kind) })
}

/// Bad wire data: `field: message`, the field's path in the message.
fn invalid(e: WireError) -> Status {
    Status::invalid_argument(format!("{}: {}", e.field, e.message))
}

/// The leases a worker lists (in Hello or a heartbeat), by token (a token listed twice counts
/// once), and as (job id, token) pairs for [`jobs::renew`].
fn leases(listed: &[Lease]) -> (HashMap<LeaseToken, i64>, Vec<(i64, Uuid)>) {
    let by_token: HashMap<LeaseToken, i64> =
        listed.iter().map(|l| (l.token, l.job_id as i64)).collect();
    let pairs = by_token.iter().map(|(t, id)| (*id, (*t).into())).collect();
    (by_token, pairs)
}

/// The Cancel for a lease the worker listed that is no longer current.
fn not_current(job_id: i64, token: LeaseToken) -> Result<v1::MasterMessage, Status> {
    let lease = Lease {
        job_id: job_id as u64,
        token,
    };
    let cancel = Cancel::lease(lease, "the lease is no longer current");
    msg(master_message::Kind::Cancel(cancel.into()))
}

/// The worker token in the request's `authorization: Bearer` metadata, which must be an active
/// token of role `worker`.
async fn authenticate<T>(
    pool: &caldera_db::PgPool,
    request: &Request<T>,
) -> Result<tokens::TokenRow, Status> {
    let secret = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <worker token>` metadata")
        })?
        .trim()
        .to_owned();
    let token = tokens::authenticate(pool, &secret)
        .await
        .map_err(|e| Status::unavailable(format!("cannot check the token: {e}")))?
        .ok_or_else(|| Status::unauthenticated("unknown or revoked worker token"))?;
    if token.role != Role::Worker {
        return Err(Status::permission_denied(format!(
            "token {:?} has role {}; the worker stream needs a worker token (`caldera token create --role worker`)",
            token.name, token.role
        )));
    }
    Ok(token)
}

/// The stream's first message, which must be a valid Hello, within [`HELLO_TIMEOUT`].
async fn receive_hello(inbound: &mut Streaming<v1::WorkerMessage>) -> Result<Hello, Status> {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(v1::WorkerMessage {
            kind: Some(worker_message::Kind::Hello(h)),
        }))) => h,
        Ok(Ok(_)) => {
            return Err(Status::invalid_argument(
                "the first message on the stream must be hello",
            ));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Status::deadline_exceeded("no hello within 30 s")),
    };
    Hello::try_from(hello).map_err(invalid)
}

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    type SessionStream = ReceiverStream<Result<v1::MasterMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let s = self.scheduler.clone();
        let token = authenticate(&s.inner.pool, &request).await?;
        let mut inbound = request.into_inner();
        let hello = receive_hello(&mut inbound).await?;
        // with `toolchain-id:…` for each toolchain build it reported (what pinned experiments require)
        let capabilities = hello.all_capabilities();
        let now = s.now();
        let worker = workers::connect(
            &s.inner.pool,
            &hello.name,
            &hello.version,
            &capabilities,
            hello.slots as i32,
            token.id,
            now,
        )
        .await
        .map_err(|e| Status::unavailable(format!("cannot register the worker: {e}")))?;

        let capacity = 256 + hello.slots as usize * 4;
        let (tx, rx) = mpsc::channel(capacity);
        let in_flight = s.welcome(worker, &hello, now, &tx).await?;
        let session = Uuid::new_v4();
        tracing::info!(worker = %hello.name, id = %worker, slots = hello.slots, resumed = in_flight.len(), "worker connected");
        s.register(
            worker,
            Session {
                session,
                capabilities,
                slots: hello.slots as usize,
                in_flight,
                draining: false,
                tx: tx.clone(),
                cache: crate::cache::Advertised {
                    toolchains: hello.toolchains.clone(),
                    environment: hello.environment.clone(),
                },
            },
        );
        tokio::spawn(async move {
            let name = hello.name;
            let end = serve_stream(&s, worker, token.id, &mut inbound, &tx).await;
            match end {
                Ok(()) => tracing::info!(worker = %name, "worker disconnected"),
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "worker stream ended with an error")
                }
            }
            s.unregister(worker, session);
            if let Err(e) = workers::disconnect(&s.inner.pool, worker).await {
                tracing::debug!(error = %e, "cannot mark the worker disconnected");
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Scheduler {
    /// Welcome a worker that said `hello`. Jobs it still runs from a previous session: keep the
    /// current ones (their leases renewed), cancel the rest. Returns the jobs kept, for its
    /// session.
    async fn welcome(
        &self,
        worker: Uuid,
        hello: &Hello,
        now: chrono::DateTime<chrono::Utc>,
        tx: &Outbound,
    ) -> Result<HashMap<i64, LeaseToken>, Status> {
        let (presented, running) = leases(&hello.running);
        let current = self
            .renew(worker, &running, now)
            .await
            .map_err(|e| Status::unavailable(format!("cannot renew leases: {e}")))?;

        let welcome = Welcome {
            worker_id: worker.to_string(),
            // whole seconds, and never zero (zero says "no lease" on the wire)
            lease: Duration::from_secs(self.inner.config.lease.as_secs().max(1)),
            heartbeat_interval: self.inner.config.heartbeat_interval,
        };
        let _ = tx
            .send(msg(master_message::Kind::Welcome(welcome.into())))
            .await;
        for (token, job_id) in &presented {
            if !current.contains(token) {
                let _ = tx.send(not_current(*job_id, *token)).await;
            }
        }
        Ok(current
            .iter()
            .filter_map(|t| presented.get(t).map(|id| (*id, *t)))
            .collect())
    }

    /// Extend the leases `running` (job id, token) that `worker` holds; returns the tokens that
    /// are still current.
    async fn renew(
        &self,
        worker: Uuid,
        running: &[(i64, Uuid)],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<LeaseToken>, caldera_db::DbError> {
        let lease = chrono_dur(self.inner.config.lease);
        let current = jobs::renew(&self.inner.pool, worker, running, now, lease).await?;
        Ok(current.into_iter().map(LeaseToken::from).collect())
    }
}

/// Serve one worker's stream until it ends. Nothing the database does may stop this loop from
/// reading: results go to the result writer through a task of their own (in order; when the writer
/// is behind, its queue pushes back on that task), and heartbeats to a task that renews leases
/// (the newest heartbeat waits while one is handled; each lists every lease held). Before, a result
/// writer behind by more than a lease blocked the stream's heartbeats too, and its leases expired
/// while the worker lived (`cargo xtask bench fleet`).
async fn serve_stream(
    s: &Scheduler,
    worker: Uuid,
    token: Uuid,
    inbound: &mut Streaming<v1::WorkerMessage>,
    tx: &Outbound,
) -> Result<(), Status> {
    // at most a worker's slots of results wait here: in-flight jobs are released once written
    let (results, results_rx) = mpsc::unbounded_channel();
    tokio::spawn(submit_results(s.clone(), worker, results_rx, tx.clone()));
    let (beats, beats_rx) = watch::channel(None);
    let mut renewer = tokio::spawn(renew_leases(s.clone(), worker, token, beats_rx, tx.clone()));
    let end = read_stream(s, worker, inbound, &results, &beats, &mut renewer).await;
    renewer.abort();
    end
}

async fn read_stream(
    s: &Scheduler,
    worker: Uuid,
    inbound: &mut Streaming<v1::WorkerMessage>,
    results: &mpsc::UnboundedSender<v1::JobResult>,
    beats: &watch::Sender<Option<v1::Heartbeat>>,
    renewer: &mut tokio::task::JoinHandle<Result<(), Status>>,
) -> Result<(), Status> {
    // when the previous heartbeat on this stream came, for its lateness
    let mut last_beat: Option<std::time::Instant> = None;
    loop {
        let message = tokio::select! {
            _ = s.inner.shutdown.cancelled() => return Ok(()),
            // the renewer ends the stream when the worker's token was revoked
            end = &mut *renewer => return end.unwrap_or(Ok(())),
            m = inbound.message() => m?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        match message.kind {
            Some(worker_message::Kind::Heartbeat(hb)) => {
                let at = std::time::Instant::now();
                observe_lateness(s, last_beat.replace(at), at);
                beats.send_replace(Some(hb));
            }
            Some(worker_message::Kind::Result(r)) => {
                let _ = results.send(r);
            }
            Some(worker_message::Kind::Returned(r)) => returned(s, worker, r).await?,
            Some(worker_message::Kind::Hello(_)) => {
                return Err(Status::invalid_argument("hello sent twice"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
    }
}

/// A stream's results, in the order they came, to the result writer.
async fn submit_results(
    s: Scheduler,
    worker: Uuid,
    mut rx: mpsc::UnboundedReceiver<v1::JobResult>,
    tx: Outbound,
) {
    while let Some(r) = rx.recv().await {
        result(&s, worker, r, &tx).await;
    }
}

/// A stream's heartbeats: renew the leases the newest one lists. Ends with an error when the
/// worker's token was revoked.
async fn renew_leases(
    s: Scheduler,
    worker: Uuid,
    token: Uuid,
    mut beats: watch::Receiver<Option<v1::Heartbeat>>,
    tx: Outbound,
) -> Result<(), Status> {
    while beats.changed().await.is_ok() {
        let Some(hb) = beats.borrow_and_update().clone() else {
            continue;
        };
        let at = std::time::Instant::now();
        heartbeat(&s, worker, token, hb, &tx).await?;
        let handling = at.elapsed().as_secs_f64();
        s.inner.metrics.heartbeat_handling.observe(handling);
    }
    Ok(())
}

/// A result goes to the result writer; a malformed one is rejected at once.
async fn result(s: &Scheduler, worker: Uuid, r: v1::JobResult, tx: &Outbound) {
    let job_id = r.job_id;
    let lease_token = r.lease_token.clone();
    match completion(worker, r) {
        Ok((c, ran)) => s.submit_result(c, ran, tx.clone()).await,
        Err(status) => {
            tracing::warn!(job = job_id, error = %status.message(), "malformed result rejected");
            s.inner
                .metrics
                .results_rejected
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "malformed".into(),
                })
                .inc();
            // the lease as it came: it may be what is malformed
            let ack = v1::ResultAck {
                job_id,
                lease_token,
                accepted: false,
                reason: status.message().to_owned(),
            };
            let _ = tx.send(msg(master_message::Kind::Ack(ack))).await;
        }
    }
}

/// A job the worker gives back goes back to the queue, if its lease is still current.
async fn returned(s: &Scheduler, worker: Uuid, r: v1::JobReturned) -> Result<(), Status> {
    let r = JobReturned::try_from(r).map_err(invalid)?;
    let job_id = r.lease.job_id as i64;
    let back = jobs::hand_back(&s.inner.pool, job_id, r.lease.token.into(), s.now())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if back {
        s.inner.metrics.jobs_returned.inc();
        tracing::info!(job = r.lease.job_id, reason = %r.reason, "job handed back");
    }
    s.release(worker, [job_id]);
    Ok(())
}

/// The completion of a result, and the build each side ran with.
fn completion(worker: Uuid, r: v1::JobResult) -> Result<(Completion, RanWith), Status> {
    let job_id = i64::try_from(r.job_id)
        .map_err(|_| Status::invalid_argument("result.job_id: out of range"))?;
    let mut r = JobResult::try_from(r).map_err(invalid)?;
    let ran = [
        r.output.start.toolchain.take(),
        r.output.end.toolchain.take(),
    ];
    let completion = Completion {
        job_id,
        lease_token: r.lease.token.into(),
        worker,
        start: side_record(r.output.start),
        end: side_record(r.output.end),
    };
    Ok((completion, ran))
}

/// A side as the database records it: milliseconds and bytes as `bigint`, saturating.
fn side_record(s: SideOutput) -> SideRecord {
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    SideRecord {
        outcome: s.outcome,
        cache_key: s.cache_key,
        log_key: s.log_key,
        duration_ms: millis(s.duration),
        peak_memory_bytes: s.peak_memory_bytes.min(i64::MAX as u64) as i64,
        steps: s
            .steps
            .into_iter()
            .map(|(name, d)| (name, millis(d)))
            .collect(),
    }
}

/// How much later than the heartbeat interval this heartbeat came after the previous one on
/// its stream (the first has nothing to compare with). A late heartbeat is a lease renewed late:
/// what eats the margin between the interval and the lease.
fn observe_lateness(s: &Scheduler, previous: Option<std::time::Instant>, now: std::time::Instant) {
    if let Some(previous) = previous {
        let gap = now.saturating_duration_since(previous);
        let late = gap.saturating_sub(s.inner.config.heartbeat_interval);
        s.inner
            .metrics
            .heartbeat_lateness
            .observe(late.as_secs_f64());
    }
}

async fn heartbeat(
    s: &Scheduler,
    worker: Uuid,
    token: Uuid,
    hb: v1::Heartbeat,
    tx: &Outbound,
) -> Result<(), Status> {
    // the token is checked when the stream opens and again on every heartbeat, so revoking it
    // ends the stream within one heartbeat interval (a database error lets this one pass)
    if let Ok(false) = tokens::is_active(&s.inner.pool, token).await {
        let status = Status::unauthenticated("the worker token was revoked");
        let _ = tx.send(Err(status.clone())).await;
        return Err(status);
    }
    let hb = Heartbeat::try_from(hb).map_err(invalid)?;
    let (presented, running) = leases(&hb.running);
    let now = s.now();
    let current = match s.renew(worker, &running, now).await {
        Ok(c) => c,
        Err(e) => {
            // the database is away: the leases run on; the next heartbeat tries again
            s.inner.metrics.db_errors.inc();
            tracing::warn!(error = %e, "cannot renew leases");
            return Ok(());
        }
    };
    let _ = workers::seen(&s.inner.pool, worker, now).await;
    let stale: Vec<(i64, LeaseToken)> = presented
        .iter()
        .filter(|(t, _)| !current.contains(t))
        .map(|(t, id)| (*id, *t))
        .collect();
    if !stale.is_empty() {
        // a result for one of these may be on its way; only cancel jobs not already reported
        let reported: Vec<i64> = stale.iter().map(|(id, _)| *id).collect();
        s.release(worker, reported);
        for (job_id, token) in stale {
            let _ = tx.send(not_current(job_id, token)).await;
        }
    }
    Ok(())
}
