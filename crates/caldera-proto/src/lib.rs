//! caldera's worker protocol: the generated tonic/prost code for `proto/caldera/v1/worker.proto`
//! and conversions between wire messages and caldera-core types.
//!
//! Bad wire data is rejected here, with an error naming the field, before it reaches the master's
//! scheduler or the worker's executor. This is the one place where wire and domain meet: the
//! master and the worker build and read messages through [`convert`], so a protocol change
//! touches this crate only.
//!
//! * [`v1`]: the generated messages and the `WorkerService` client and server;
//! * [`LeaseToken`] and [`Lease`]: the fencing token, parsed once where it comes off the wire;
//! * [`convert`]: the checked, domain form of each message (`Hello`, `Assign`, `JobResult`, …)
//!   and its conversions to and from [`v1`].

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("caldera.v1");
}

pub mod convert;
mod lease;

pub use convert::{
    Assign, Cancel, Heartbeat, Hello, JobOutput, JobResult, JobReturned, MAX_SLOTS, MAX_TOOLCHAINS,
    ResultAck, SideOutput, Welcome,
};
pub use lease::{Lease, LeaseToken};

/// A wire message that does not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct WireError {
    /// The field's path in the message, like `result.start.outcome` or `spec.mode`.
    pub field: String,
    pub message: String,
}

impl WireError {
    /// The same error inside the message field `parent` (`outcome` → `result.start.outcome`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

fn wire(field: &str, message: impl Into<String>) -> WireError {
    WireError {
        field: field.to_owned(),
        message: message.into(),
    }
}
