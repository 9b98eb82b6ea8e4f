//! One session with the master: the handshake (connect, open the stream, Hello → Welcome) and
//! the heartbeat task.

use std::path::PathBuf;
use std::time::Duration;

use caldera_proto::v1::worker_service_client::WorkerServiceClient;
use caldera_proto::v1::{self, master_message, worker_message};
use caldera_proto::{Heartbeat, Hello, Lease, Welcome};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::task::AbortOnDropHandle;
use tonic::Streaming;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::WorkerError;
use crate::config::HANDSHAKE_TIMEOUT;
use crate::pending::Unacknowledged;
use crate::tls::MasterEndpoint;
use crate::worker::Running;

/// An established session.
pub(crate) struct Session {
    /// Messages to the master, in order.
    pub tx: mpsc::UnboundedSender<v1::WorkerMessage>,
    pub inbound: Streaming<v1::MasterMessage>,
    /// Kept so that the connection lives exactly as long as the session.
    client: WorkerServiceClient<Channel>,
    heartbeat: Option<AbortOnDropHandle<()>>,
}

impl Session {
    /// Send a message; `false` when the stream is gone (the inbound side will say why).
    pub fn send(&self, kind: worker_message::Kind) -> bool {
        self.tx.send(v1::WorkerMessage { kind: Some(kind) }).is_ok()
    }

    /// Start sending heartbeats every `interval`, listing the leases `held`.
    pub fn start_heartbeats(&mut self, interval: Duration, held: HeldLeases, spool_dir: PathBuf) {
        let tx = self.tx.clone();
        let task =
            heartbeat_loop(tx, interval, held, spool_dir).instrument(tracing::Span::current());
        self.heartbeat = Some(AbortOnDropHandle::new(tokio::spawn(task)));
    }

    /// End the session politely: stop heartbeats and close our side of the stream, so the master
    /// ends its side. Returns the inbound stream, to read what the master still sends, and the
    /// client that keeps the connection.
    pub fn close(self: Box<Self>) -> (Streaming<v1::MasterMessage>, WorkerServiceClient<Channel>) {
        let Session {
            tx,
            inbound,
            client,
            heartbeat,
        } = *self;
        drop(heartbeat);
        drop(tx);
        (inbound, client)
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// Retrying cannot help (the master refused our credentials).
    Fatal(WorkerError),
    /// The master is unreachable, restarting, or said something odd: try again later.
    Retry(String),
}

/// Whether a status from the master means our credentials are refused.
pub(crate) fn is_auth_failure(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

pub(crate) fn unauthorized(status: &tonic::Status) -> WorkerError {
    WorkerError::Unauthorized {
        code: format!("{:?}", status.code()),
        message: status.message().to_owned(),
    }
}

fn status_error(what: &str, status: tonic::Status) -> HandshakeError {
    if is_auth_failure(&status) {
        HandshakeError::Fatal(unauthorized(&status))
    } else {
        HandshakeError::Retry(format!("{what}: {:?}: {}", status.code(), status.message()))
    }
}

/// Connect, open the stream with our credentials, send `hello` and wait for Welcome. Hello's
/// `running` is filled from `running` once connected, so it is as fresh as it can be.
pub(crate) async fn handshake(
    endpoint: MasterEndpoint,
    authorization: MetadataValue<Ascii>,
    hello: Hello,
    held: HeldLeases,
) -> Result<(Box<Session>, Welcome), HandshakeError> {
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake_inner(endpoint, authorization, hello, held),
    )
    .await
    .unwrap_or_else(|_| {
        Err(HandshakeError::Retry(format!(
            "no Welcome within {HANDSHAKE_TIMEOUT:?}"
        )))
    })
}

async fn handshake_inner(
    endpoint: MasterEndpoint,
    authorization: MetadataValue<Ascii>,
    mut hello: Hello,
    held: HeldLeases,
) -> Result<(Box<Session>, Welcome), HandshakeError> {
    let channel = endpoint.connect().await.map_err(connect_error)?;
    hello.running = held.list();
    tracing::debug!(running = hello.running.len(), "connected; sending Hello");
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(v1::WorkerMessage {
        kind: Some(worker_message::Kind::Hello(hello.into())),
    })
    .expect("the receiver is alive: it is right here");
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", authorization);
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| status_error("open session", s))?
        .into_inner();
    let first = match inbound.next().await {
        Some(Ok(m)) => m,
        Some(Err(s)) => return Err(status_error("session", s)),
        None => {
            return Err(HandshakeError::Retry(
                "the master closed the session before Welcome".into(),
            ));
        }
    };
    let welcome = match first.kind {
        Some(master_message::Kind::Welcome(w)) => {
            Welcome::try_from(w).map_err(|e| HandshakeError::Retry(e.to_string()))?
        }
        other => {
            return Err(HandshakeError::Retry(format!(
                "expected Welcome, got {other:?}"
            )));
        }
    };
    Ok((
        Box::new(Session {
            tx,
            inbound,
            client,
            heartbeat: None,
        }),
        welcome,
    ))
}

/// Every `interval` (the first at once), tell the master which leases we hold and how the machine
/// is doing. Independent of job execution: nothing a build does delays it.
async fn heartbeat_loop(
    tx: mpsc::UnboundedSender<v1::WorkerMessage>,
    interval: Duration,
    held: HeldLeases,
    spool_dir: PathBuf,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (free_disk_bytes, load_average) = tokio::join!(
            crate::system::free_disk_bytes(spool_dir.clone()),
            crate::system::load_average()
        );
        let running = held.list();
        tracing::trace!(held = running.len(), "heartbeat");
        let beat = Heartbeat {
            running,
            free_disk_bytes,
            load_average,
        };
        if tx
            .send(v1::WorkerMessage {
                kind: Some(worker_message::Kind::Heartbeat(beat.into())),
            })
            .is_err()
        {
            return;
        }
    }
}

/// The leases a worker holds, as Hello and every heartbeat list them: its running jobs' (cancelled
/// ones are not ours any more) and its unacknowledged results' (see [`crate::pending`]).
#[derive(Clone)]
pub(crate) struct HeldLeases {
    pub running: Running,
    pub unacknowledged: Unacknowledged,
}

impl HeldLeases {
    pub fn list(&self) -> Vec<Lease> {
        let mut leases: std::collections::BTreeSet<Lease> = {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running
                .iter()
                .filter(|(_, job)| !job.cancelled)
                .map(|(lease, _)| *lease)
                .collect()
        };
        let unacknowledged = self
            .unacknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        leases.extend(unacknowledged.iter());
        leases.into_iter().collect()
    }
}

/// A certificate that does not verify is fatal (retrying cannot help, and the worker must not
/// send its token to whoever answered); anything else is tried again.
fn connect_error(e: tonic::transport::Error) -> HandshakeError {
    match crate::tls::certificate_rejected(&e) {
        Some(rejected) => HandshakeError::Fatal(WorkerError::Certificate {
            host: rejected.host.clone(),
            message: rejected.cause.to_string(),
        }),
        None => HandshakeError::Retry(format!("connect: {}", error_chain(&e))),
    }
}

/// `error: cause: cause`, since tonic's transport errors hide the useful part in their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
