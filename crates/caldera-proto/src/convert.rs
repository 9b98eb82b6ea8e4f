//! Wire ↔ domain: the checked form of each message, and the conversions both ways.
//!
//! Reading a message (`TryFrom<v1::…>`) checks everything the receiver relies on and names the
//! bad field in the [`WireError`](crate::WireError), with its path in the message
//! (`result.start.outcome.build_fail`). Writing one (`From<…> for v1::…`) cannot fail.
//!
//! Worker → master: [`Hello`], [`Heartbeat`], [`JobResult`] (with [`JobOutput`] and
//! [`SideOutput`]), [`JobReturned`]. Master → worker: [`Welcome`], [`Assign`] (with its
//! `JobSpec`), [`Cancel`], [`ResultAck`]. Both ways: a toolchain's resolved identity
//! (`caldera_core::toolchain::ToolchainIdentity`, in `identity`).

mod identity;
mod job;
mod outcome;
mod result;
mod session;

pub use job::Assign;
pub use result::{JobOutput, JobResult, JobReturned, ResultAck, SideOutput};
pub use session::{Cancel, Heartbeat, Hello, MAX_SLOTS, MAX_TOOLCHAINS, Welcome};
