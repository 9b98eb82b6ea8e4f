//! What the worker asks of whatever actually builds crates.

use caldera_core::job::JobSpec;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// What a job produced; they are the protocol's (`caldera_proto`), which turns them into the
/// result the master receives.
pub use caldera_proto::{JobOutput, SideOutput};

/// One job handed to this worker by the master: what the executor needs to run it. The lease it
/// runs under stays with the worker's session, which reports the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: u64,
    /// 1 for the first try, more when an earlier lease expired.
    pub attempt: u32,
    pub spec: JobSpec,
}

/// Runs jobs. The real one ([`DockerExecutor`](crate::docker::DockerExecutor)) prepares the crate
/// and runs cargo in the sandbox; tests use `fake::FakeExecutor` (feature `testing`).
pub trait Executor: Send + Sync + 'static {
    /// Run both sides of one job. Must stop promptly when `cancel` fires; whatever it returns
    /// after that is dropped.
    fn run(&self, job: Assignment, cancel: CancellationToken) -> BoxFuture<'static, JobOutput>;
}
