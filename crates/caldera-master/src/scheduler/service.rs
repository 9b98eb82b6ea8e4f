//! The tonic `WorkerService`: one bidirectional stream per worker.

use std::collections::HashMap;
use std::time::Duration;

use caldera_core::outcome::Outcome;
use caldera_db::jobs::{self, Completion, SideRecord};
use caldera_db::tokens::{self, Role};
use caldera_db::workers;
use caldera_proto::v1::{
    self, master_message, worker_message, worker_service_server::WorkerService,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{Outbound, Scheduler, Session, chrono_dur};

/// Most slots one worker may announce.
pub const MAX_SLOTS: u32 = 4096;
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

fn parse_token(field: &str, s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s)
        .map_err(|_| Status::invalid_argument(format!("{field}: {s:?} is not a lease token")))
}

/// The leases a worker lists (in Hello or a heartbeat), by token (a token listed twice counts
/// once), and as (job id, token) pairs for [`jobs::renew`].
fn leases(
    field: &str,
    listed: &[v1::LeaseRef],
) -> Result<(HashMap<Uuid, i64>, Vec<(i64, Uuid)>), Status> {
    let mut by_token: HashMap<Uuid, i64> = HashMap::new();
    for r in listed {
        by_token.insert(parse_token(field, &r.lease_token)?, r.job_id as i64);
    }
    let pairs = by_token.iter().map(|(t, id)| (*id, *t)).collect();
    Ok((by_token, pairs))
}

fn validate_hello(h: &v1::Hello) -> Result<(), Status> {
    if h.name.is_empty()
        || h.name.len() > 128
        || h.name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Status::invalid_argument(format!(
            "hello.name: {:?} must be 1-128 printable characters without spaces",
            h.name
        )));
    }
    if h.slots == 0 || h.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "hello.slots: {} must be 1..={MAX_SLOTS}",
            h.slots
        )));
    }
    if let Some(bad) = h
        .capabilities
        .iter()
        .find(|c| !caldera_core::experiment::is_valid_requirement(c))
    {
        return Err(Status::invalid_argument(format!(
            "hello.capabilities: invalid capability {bad:?}"
        )));
    }
    Ok(())
}

fn side(field: &'static str, s: Option<v1::SideResult>) -> Result<SideRecord, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument(format!("{field}: missing")))?;
    let outcome: Outcome = s
        .outcome
        .ok_or_else(|| Status::invalid_argument(format!("{field}.outcome: missing")))?
        .try_into()
        .map_err(|e: caldera_proto::WireError| Status::invalid_argument(format!("{field}.{e}")))?;
    Ok(SideRecord {
        outcome,
        log_key: (!s.log_key.is_empty()).then_some(s.log_key),
        duration_ms: s.duration_ms.min(i64::MAX as u64) as i64,
        peak_memory_bytes: s.peak_memory_bytes.min(i64::MAX as u64) as i64,
        steps: s
            .steps
            .into_iter()
            .map(|t| (t.name, t.duration_ms.min(i64::MAX as u64) as i64))
            .collect(),
    })
}

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    type SessionStream = ReceiverStream<Result<v1::MasterMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let pool = self.scheduler.inner.pool.clone();
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
        let token = tokens::authenticate(&pool, &secret)
            .await
            .map_err(|e| Status::unavailable(format!("cannot check the token: {e}")))?
            .ok_or_else(|| Status::unauthenticated("unknown or revoked worker token"))?;
        if token.role != Role::Worker {
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; the worker stream needs a worker token (`caldera token create --role worker`)",
                token.name, token.role
            )));
        }
        let mut inbound = request.into_inner();
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
        validate_hello(&hello)?;
        let s = self.scheduler.clone();
        let now = s.now();
        let worker = workers::connect(
            &pool,
            &hello.name,
            &hello.version,
            &hello.capabilities,
            hello.slots as i32,
            token.id,
            now,
        )
        .await
        .map_err(|e| Status::unavailable(format!("cannot register the worker: {e}")))?;

        // Jobs the worker still runs from a previous session: keep the current ones, cancel the rest.
        let (presented, running) = leases("hello.running.lease_token", &hello.running)?;
        let current = jobs::renew(
            &pool,
            worker,
            &running,
            now,
            chrono_dur(s.inner.config.lease),
        )
        .await
        .map_err(|e| Status::unavailable(format!("cannot renew leases: {e}")))?;

        let capacity = 256 + hello.slots as usize * 4;
        let (tx, rx) = mpsc::channel(capacity);
        let welcome = v1::Welcome {
            worker_id: worker.to_string(),
            lease_seconds: s.inner.config.lease.as_secs().max(1) as u32,
            heartbeat_interval_ms: s.inner.config.heartbeat_interval.as_millis() as u32,
            limits: None,
        };
        let _ = tx.send(msg(master_message::Kind::Welcome(welcome))).await;
        for (token, job_id) in &presented {
            if !current.contains(token) {
                let _ = tx
                    .send(msg(master_message::Kind::Cancel(v1::Cancel {
                        job_id: *job_id as u64,
                        lease_token: token.to_string(),
                        reason: "the lease is no longer current".into(),
                    })))
                    .await;
            }
        }
        let session = Uuid::new_v4();
        let in_flight = current
            .iter()
            .filter_map(|t| presented.get(t).map(|id| (*id, *t)))
            .collect();
        tracing::info!(worker = %hello.name, id = %worker, slots = hello.slots, resumed = current.len(), "worker connected");
        s.register(
            worker,
            Session {
                session,
                capabilities: hello.capabilities.clone(),
                slots: hello.slots as usize,
                in_flight,
                draining: false,
                tx: tx.clone(),
            },
        );
        tokio::spawn(async move {
            let name = hello.name.clone();
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

async fn serve_stream(
    s: &Scheduler,
    worker: Uuid,
    token: Uuid,
    inbound: &mut Streaming<v1::WorkerMessage>,
    tx: &Outbound,
) -> Result<(), Status> {
    loop {
        let message = tokio::select! {
            _ = s.inner.shutdown.cancelled() => return Ok(()),
            m = inbound.message() => m?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        match message.kind {
            Some(worker_message::Kind::Heartbeat(hb)) => {
                heartbeat(s, worker, token, hb, tx).await?
            }
            Some(worker_message::Kind::Result(r)) => {
                let job_id = r.job_id;
                let lease_token = r.lease_token.clone();
                match completion(worker, r) {
                    Ok(c) => s.submit_result(c, tx.clone()).await,
                    Err(status) => {
                        tracing::warn!(job = job_id, error = %status.message(), "malformed result rejected");
                        s.inner
                            .metrics
                            .results_rejected
                            .get_or_create(&crate::metrics::ReasonLabel {
                                reason: "malformed".into(),
                            })
                            .inc();
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
            Some(worker_message::Kind::Returned(r)) => {
                let token = parse_token("returned.lease_token", &r.lease_token)?;
                let back = jobs::hand_back(&s.inner.pool, r.job_id as i64, token, s.now())
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                if back {
                    s.inner.metrics.jobs_returned.inc();
                    tracing::info!(job = r.job_id, reason = %r.reason, "job handed back");
                }
                s.release(worker, [r.job_id as i64]);
            }
            Some(worker_message::Kind::Hello(_)) => {
                return Err(Status::invalid_argument("hello sent twice"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        }
    }
}

fn completion(worker: Uuid, r: v1::JobResult) -> Result<Completion, Status> {
    Ok(Completion {
        job_id: i64::try_from(r.job_id)
            .map_err(|_| Status::invalid_argument("result.job_id: out of range"))?,
        lease_token: parse_token("result.lease_token", &r.lease_token)?,
        worker,
        start: side("result.start", r.start)?,
        end: side("result.end", r.end)?,
    })
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
    let (presented, running) = leases("heartbeat.running.lease_token", &hb.running)?;
    let now = s.now();
    let current = match jobs::renew(
        &s.inner.pool,
        worker,
        &running,
        now,
        chrono_dur(s.inner.config.lease),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            // the database is away: the leases run on; the next heartbeat tries again
            s.inner.metrics.db_errors.inc();
            tracing::warn!(error = %e, "cannot renew leases");
            return Ok(());
        }
    };
    let _ = workers::seen(&s.inner.pool, worker, now).await;
    let stale: Vec<(i64, Uuid)> = presented
        .iter()
        .filter(|(t, _)| !current.contains(t))
        .map(|(t, id)| (*id, *t))
        .collect();
    if !stale.is_empty() {
        // a result for one of these may be on its way; only cancel jobs not already reported
        let reported: Vec<i64> = stale.iter().map(|(id, _)| *id).collect();
        s.release(worker, reported);
        for (job_id, token) in stale {
            let cancel = v1::Cancel {
                job_id: job_id as u64,
                lease_token: token.to_string(),
                reason: "the lease is no longer current".into(),
            };
            let _ = tx.send(msg(master_message::Kind::Cancel(cancel))).await;
        }
    }
    Ok(())
}
