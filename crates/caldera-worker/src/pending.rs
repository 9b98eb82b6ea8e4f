//! Results finished and spooled but not yet acknowledged by the master, by lease.
//!
//! Their leases stay in every heartbeat until the acknowledgement comes: as far as the master's
//! reaper knows, such a job still runs until its result is written, and a result writer that falls
//! behind by more than a lease must not see the lease expire under a result it already holds
//! (that ran the job a second time). Once the result is written the lease is no longer current;
//! the master then answers the heartbeat with a `Cancel`, which drops the result here (it was
//! delivered).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use caldera_proto::Lease;
use caldera_proto::v1;
use tracing::{info, warn};

use crate::result_spool::ResultSpool;

/// The unacknowledged results' leases, shared with the heartbeat task.
pub(crate) type Unacknowledged = Arc<Mutex<BTreeSet<Lease>>>;

/// Finished results waiting for their acknowledgement; the lease set mirrors the map.
#[derive(Default)]
pub(crate) struct Pending {
    results: BTreeMap<Lease, v1::JobResult>,
    leases: Unacknowledged,
}

impl Pending {
    /// The results an earlier run left in the spool; they are sent once connected. One whose
    /// lease token does not parse could never be accepted: it is dropped.
    pub fn from_spool(spool: &ResultSpool) -> Pending {
        let mut pending = Pending::default();
        for r in spool.scan() {
            match Lease::from_wire(r.job_id, "result.lease_token", &r.lease_token) {
                Ok(lease) => pending.insert(lease, r),
                Err(e) => {
                    warn!(
                        job_id = r.job_id,
                        "dropping a spooled result the master cannot accept: {e}"
                    );
                    spool.remove(r.job_id, &r.lease_token);
                }
            }
        }
        if !pending.is_empty() {
            info!(
                results = pending.len(),
                "found results of an earlier run in the spool; they are sent once connected"
            );
        }
        pending
    }

    /// The lease set, for the heartbeat task.
    pub fn leases(&self) -> Unacknowledged {
        self.leases.clone()
    }

    pub fn insert(&mut self, lease: Lease, result: v1::JobResult) {
        self.results.insert(lease, result);
        self.lock().insert(lease);
    }

    pub fn remove(&mut self, lease: &Lease) -> Option<v1::JobResult> {
        self.lock().remove(lease);
        self.results.remove(lease)
    }

    pub fn get(&self, lease: &Lease) -> Option<&v1::JobResult> {
        self.results.get(lease)
    }

    pub fn leases_where(&self, mut f: impl FnMut(&Lease) -> bool) -> Vec<Lease> {
        self.results.keys().filter(|l| f(l)).copied().collect()
    }

    pub fn results(&self) -> impl Iterator<Item = &v1::JobResult> {
        self.results.values()
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}
