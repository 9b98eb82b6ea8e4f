//! The job queue: creation on experiment start, batched claims from per-experiment cursors,
//! lease renewal, fenced completion, the reaper, hand-backs and cancellation.
//!
//! This is the SQL form of `caldera_core::job::transition`. Time is always a parameter (`now`),
//! never the database's clock, so the scheduler's clock can be injected in tests. Every statement
//! is a short transaction; nothing is held open while a job runs.
//!
//! The tables (migration `0004_queue_cursors`, ARCHITECTURE "The job queue"): no index of `jobs`
//! covers a column that changes after creation, so a claim or a completion is a HOT update of the
//! job row and touches no index. A claim scans from its experiment's cursor (`job_queues`), leases
//! the jobs it takes as one `leases` row (renewed by heartbeats, found by the reaper when it
//! expires), and per-experiment counts by state (`job_counts`) are kept by triggers on `jobs`.
//!
//! Statements that match jobs to a batch of ids drive the join from the batch (`unnest`) with no
//! condition on `state` that the planner could misjudge: `lease_token` is non-null exactly when a
//! job is running (a table constraint), so it says "running" without a filter on `state`.
//!
//! One module per job of the queue: `lifecycle` (the jobs side of starting and aborting an
//! experiment), `claims` (handing queued jobs to workers), `leases` (renewal, hand-backs, the
//! reaper), `completion` (fenced, batched results), `result_rows` (the columns of `results`
//! rows) and `progress` (counts and finished experiments).

mod claims;
mod completion;
mod leases;
mod lifecycle;
mod progress;
mod result_rows;

pub use claims::{Claimed, Claimer, claim};
pub use completion::{Completion, CompletionOutcome, complete, complete_on};
pub use leases::{Reaped, hand_back, hand_back_all, reap, renew};
pub use lifecycle::{
    CancelledLease, cancel_experiment, create_for_experiment, set_implied_requirements,
    settle_without_running,
};
pub use progress::{
    Progress, active_experiments, count_drift, finished_experiments, progress, progress_of,
};
pub use result_rows::SideRecord;
