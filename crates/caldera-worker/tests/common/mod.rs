//! A scripted master for the worker's session tests: a real tonic server on 127.0.0.1 that
//! implements `WorkerService`, records everything the worker sends, and sends what the test says.
//! (The real master is tested against the real worker end to end in caldera-master.)

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caldera_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use caldera_proto::v1::{self, master_message, worker_message};
use caldera_worker::fake::FakeExecutor;
use caldera_worker::{Backoff, WorkerConfig, WorkerError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// How long any single expectation may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);
pub const MASTER_TOKEN: &str = "worker-secret";
pub const HEARTBEAT_MS: u32 = 50;

/// What the worker did, as the master saw it.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a test double: results carry two toolchain identities inline
pub enum Event {
    Hello { session: u64, hello: v1::Hello },
    Heartbeat(v1::Heartbeat),
    Result(v1::JobResult),
    Returned(v1::JobReturned),
    Closed { session: u64 },
}

type ToWorker = mpsc::UnboundedSender<Result<v1::MasterMessage, Status>>;

struct Shared {
    token: String,
    auto_ack: AtomicBool,
    /// Session attempts, including refused ones.
    attempts: AtomicU64,
    next_session: AtomicU64,
    events: mpsc::UnboundedSender<Event>,
    sessions: Mutex<HashMap<u64, ToWorker>>,
    /// The latest session: where `send` goes.
    current: Mutex<Option<u64>>,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl WorkerService for Service {
    type SessionStream = UnboundedReceiverStream<Result<v1::MasterMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let shared = self.0.clone();
        shared.attempts.fetch_add(1, Ordering::SeqCst);
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if auth != Some(format!("Bearer {}", shared.token)) {
            return Err(Status::unauthenticated("unknown worker token"));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(v1::WorkerMessage {
                kind: Some(worker_message::Kind::Hello(h)),
            }) => h,
            other => {
                return Err(Status::invalid_argument(format!(
                    "expected Hello, got {other:?}"
                )));
            }
        };
        let session = shared.next_session.fetch_add(1, Ordering::SeqCst);
        let _ = shared.events.send(Event::Hello { session, hello });
        let (tx, rx) = mpsc::unbounded_channel();
        let welcome = v1::Welcome {
            worker_id: format!("worker-{session}"),
            lease_seconds: 30,
            heartbeat_interval_ms: HEARTBEAT_MS,
            limits: None,
        };
        tx.send(Ok(master(master_message::Kind::Welcome(welcome))))
            .unwrap();
        shared.sessions.lock().unwrap().insert(session, tx.clone());
        *shared.current.lock().unwrap() = Some(session);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let event = match message.kind {
                    Some(worker_message::Kind::Heartbeat(h)) => Event::Heartbeat(h),
                    Some(worker_message::Kind::Result(r)) => {
                        if shared.auto_ack.load(Ordering::SeqCst) {
                            let _ = tx.send(Ok(ack(r.job_id, &r.lease_token, true)));
                        }
                        Event::Result(r)
                    }
                    Some(worker_message::Kind::Returned(r)) => Event::Returned(r),
                    other => panic!("unexpected message from the worker: {other:?}"),
                };
                let _ = shared.events.send(event);
            }
            shared.sessions.lock().unwrap().remove(&session);
            let _ = shared.events.send(Event::Closed { session });
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

pub fn master(kind: master_message::Kind) -> v1::MasterMessage {
    v1::MasterMessage { kind: Some(kind) }
}

pub fn ack(job_id: u64, lease_token: &str, accepted: bool) -> v1::MasterMessage {
    let reason = if accepted {
        String::new()
    } else {
        "stale lease".to_owned()
    };
    master(master_message::Kind::Ack(v1::ResultAck {
        job_id,
        lease_token: lease_token.to_owned(),
        accepted,
        reason,
    }))
}

/// A lease token for job `n` (lease tokens are UUIDs).
pub fn token(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

pub fn spec(crate_id: &str) -> v1::JobSpec {
    v1::JobSpec {
        experiment: "exp-1".into(),
        crate_id: crate_id.into(),
        start: "stable".into(),
        end: "nightly".into(),
        mode: "build-and-test".into(),
        cap_lints: "forbid".into(),
        ..Default::default()
    }
}

pub struct TestMaster {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every event taken from the queue so far, in order.
    pub seen: Vec<Event>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestMaster {
    /// A master that accepts `MASTER_TOKEN` and acknowledges every result.
    pub async fn start() -> TestMaster {
        Self::start_with_token(MASTER_TOKEN).await
    }

    pub async fn start_with_token(token: &str) -> TestMaster {
        let (events_tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            auto_ack: AtomicBool::new(true),
            attempts: AtomicU64::new(0),
            next_session: AtomicU64::new(1),
            events: events_tx,
            sessions: Mutex::default(),
            current: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut m = TestMaster {
            addr,
            shared,
            events,
            seen: Vec::new(),
            server: None,
        };
        m.serve(listener);
        m
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = WorkerServiceServer::new(Service(self.shared.clone()));
        let handle = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
        self.server = Some((stop_tx, handle));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_auto_ack(&self, on: bool) {
        self.shared.auto_ack.store(on, Ordering::SeqCst);
    }

    pub fn session_attempts(&self) -> u64 {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// Go away like a crashed master: end every session with `Unavailable`, stop listening.
    pub async fn stop(&mut self) {
        for (_, tx) in self.shared.sessions.lock().unwrap().drain() {
            let _ = tx.send(Err(Status::unavailable("master going away")));
        }
        *self.shared.current.lock().unwrap() = None;
        let (stop, mut handle) = self.server.take().expect("running");
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(3), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Come back on the same address.
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "stop first");
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Send to the current session.
    pub fn send(&self, message: v1::MasterMessage) {
        let current = self.shared.current.lock().unwrap().expect("a session");
        let sessions = self.shared.sessions.lock().unwrap();
        sessions[&current].send(Ok(message)).expect("session open");
    }

    pub fn assign(&self, job_id: u64, crate_id: &str) {
        self.assign_raw(v1::Assign {
            job_id,
            lease_token: token(job_id),
            attempt: 1,
            spec: Some(spec(crate_id)),
        });
    }

    pub fn assign_raw(&self, assign: v1::Assign) {
        self.send(master(master_message::Kind::Assign(assign)));
    }

    pub fn cancel(&self, job_id: u64) {
        self.send(master(master_message::Kind::Cancel(v1::Cancel {
            job_id,
            lease_token: token(job_id),
            reason: "experiment aborted".into(),
        })));
    }

    pub fn ack(&self, job_id: u64, accepted: bool) {
        self.send(ack(job_id, &token(job_id), accepted));
    }

    /// Take events until `f` picks one; fails the test after `PATIENCE`.
    pub async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!("event channel closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {PATIENCE:?}; seen: {:#?}", self.seen),
            };
            self.seen.push(event.clone());
            if let Some(t) = f(&event) {
                return t;
            }
        }
    }

    pub async fn expect_hello(&mut self) -> v1::Hello {
        self.expect("Hello", |e| match e {
            Event::Hello { hello, .. } => Some(hello.clone()),
            _ => None,
        })
        .await
    }

    pub async fn expect_result(&mut self, job_id: u64) -> v1::JobResult {
        self.expect(&format!("result of job {job_id}"), |e| match e {
            Event::Result(r) if r.job_id == job_id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Results of all of `jobs`, in whatever order they come.
    pub async fn expect_results(&mut self, jobs: &[u64]) -> Vec<v1::JobResult> {
        let mut missing = jobs.to_vec();
        let mut results = Vec::new();
        while !missing.is_empty() {
            let r = self
                .expect(&format!("results of jobs {missing:?}"), |e| match e {
                    Event::Result(r) if missing.contains(&r.job_id) => Some(r.clone()),
                    _ => None,
                })
                .await;
            missing.retain(|j| *j != r.job_id);
            results.push(r);
        }
        results
    }

    pub async fn expect_returned(&mut self, job_id: u64) -> v1::JobReturned {
        self.expect(&format!("job {job_id} handed back"), |e| match e {
            Event::Returned(r) if r.job_id == job_id => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// Every event so far, including those still queued.
    pub fn all_events(&mut self) -> &[Event] {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
        &self.seen
    }

    pub fn results_for(&mut self, job_id: u64) -> usize {
        self.all_events()
            .iter()
            .filter(|e| matches!(e, Event::Result(r) if r.job_id == job_id))
            .count()
    }
}

/// A worker configuration for tests: short intervals everywhere.
pub fn config(master: &TestMaster, spool: &Path) -> WorkerConfig {
    WorkerConfig {
        capabilities: vec![
            "toolchain:stable".into(),
            "toolchain:nightly".into(),
            "arch:x86_64".into(),
        ],
        slots: 2,
        reconnect: Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            jitter: 0.5,
        },
        drain_timeout: Duration::from_secs(10),
        drain_ack_timeout: Duration::from_secs(2),
        ..WorkerConfig::new(master.url(), MASTER_TOKEN, "w1", spool)
    }
}

/// A worker running in a task; dropping it (or `drain`) starts a drain.
pub struct TestWorker {
    drain: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), WorkerError>>,
}

impl TestWorker {
    pub fn spawn(config: WorkerConfig, executor: FakeExecutor) -> TestWorker {
        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let drain = async move {
            let _ = drain_rx.await;
        };
        let handle = tokio::spawn(caldera_worker::run(config, Arc::new(executor), drain));
        TestWorker {
            drain: Some(drain_tx),
            handle,
        }
    }

    pub fn drain(&mut self) {
        if let Some(tx) = self.drain.take() {
            let _ = tx.send(());
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Wait for `run` to return (without asking it to drain).
    pub async fn join(self) -> Result<(), WorkerError> {
        let TestWorker { drain, handle } = self;
        let result = tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("the worker did not stop")
            .expect("worker task");
        drop(drain);
        result
    }

    /// Drain and wait for `run` to return.
    pub async fn drain_and_join(mut self) -> Result<(), WorkerError> {
        self.drain();
        self.join().await
    }
}

/// Poll `cond` until it holds; fails the test after `PATIENCE`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
