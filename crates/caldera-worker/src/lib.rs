//! # caldera-worker
//!
//! The worker agent. It keeps one long-lived gRPC stream to the master (`WorkerService.Session`,
//! see `proto/caldera/v1/worker.proto` — the only contract between the two), runs the jobs the
//! master assigns on an [`Executor`], and reports their results. It knows nothing of the master's
//! database.
//!
//! ## Behaviour
//!
//! * **Session.** Connect (TLS for `https://`, see [`tls`]; HTTP/2 keepalive every 20 s, also
//!   while idle), open the stream with
//!   `authorization: Bearer <token>`, send Hello (name, version, capabilities, slots, the build of
//!   each toolchain (`WorkerConfig::toolchains`), and the leases
//!   of jobs still running from before a reconnect), wait for Welcome. Refused credentials
//!   (`Unauthenticated`, `PermissionDenied`) end [`run`] with [`WorkerError::Unauthorized`].
//! * **Heartbeats** come from a task of their own every `heartbeat_interval_ms`, listing the
//!   running jobs' leases, the spool filesystem's free space and the load average.
//! * **Jobs.** Assign starts the job on the executor, never more than `slots` at once (one too many
//!   is answered with JobReturned). Cancel fires the job's cancellation token and drops its result.
//!   An invalid Assign is handed back with the bad field named.
//! * **Results** are written durably to the result spool ([`result_spool`], an append-only log in
//!   the spool directory, group-committed) before they are sent, and dropped from it only when
//!   the master acknowledges them (accepted or rejected: a rejected result is logged and dropped,
//!   never retried). After every Welcome every spooled result is sent again — including those of
//!   an earlier process, so a restart loses no finished work. One worker owns a spool directory at
//!   a time (a lock file); a second one fails to start with [`WorkerError::Spool`]. The logs a
//!   result names went to object storage before it, through the other spool, the upload spool
//!   ([`upload_spool`]).
//! * **Reconnects.** When the stream breaks, jobs keep running; the worker reconnects with
//!   exponential backoff and jitter ([`Backoff`]).
//! * **Drain** (the `drain` future resolves, or the master sends Drain): no new jobs (Assign is
//!   answered with JobReturned), running jobs get `drain_timeout` to finish, their results are
//!   delivered and acknowledged (waiting at most `drain_ack_timeout`), what still runs at the
//!   timeout is cancelled and handed back; then [`run`] returns `Ok`.
//!
//! Tracing: everything runs in a `worker` span (field `worker`); each job in a `job` span
//! (`job_id`, `attempt`, `experiment`, `crate`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

mod config;
pub mod docker;
mod executor;
#[cfg(feature = "testing")]
pub mod fake;
mod pending;
pub mod prepare;
pub mod result_spool;
mod session;
mod system;
pub mod tls;
pub mod upload_spool;
pub mod workdir;
mod worker;

/// The classifier's version this worker classifies with (part of its result-cache environment).
pub use caldera_classify::CLASSIFIER_VERSION;
pub use config::{
    Backoff, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
    WorkerConfig,
};
pub use executor::{Assignment, Executor, JobOutput, SideOutput};

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration value is unusable.
    #[error("invalid worker configuration: {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// The spool directory cannot be created or read.
    #[error("result spool {}: {source}", path.display())]
    Spool {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The master refused this worker's credentials. Retrying cannot help.
    #[error(
        "the master refused this worker's token ({code}: {message}); check the worker token the master issued"
    )]
    Unauthorized { code: String, message: String },
    /// The master's certificate does not verify against the roots this worker trusts (the
    /// system's, or its CA file). Nothing was sent to it; retrying cannot help.
    #[error(
        "the master's TLS certificate for {host} does not verify ({message}); check the master's certificate and this worker's --ca-file"
    )]
    Certificate { host: String, message: String },
}

/// Run the worker until it has drained (`Ok`) or cannot go on (`Err`). `drain` resolving starts a
/// drain, as a Drain message from the master does.
pub async fn run(
    config: WorkerConfig,
    executor: Arc<dyn Executor>,
    drain: impl Future<Output = ()> + Send,
) -> Result<(), WorkerError> {
    let span = tracing::info_span!("worker", worker = %config.name);
    async move {
        // errors are returned, not logged: the caller handles (and logs) them
        worker::Worker::new(config, executor)?.run(drain).await
    }
    .instrument(span)
    .await
}
