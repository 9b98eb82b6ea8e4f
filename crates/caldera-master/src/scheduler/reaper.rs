//! The reaper: re-queues jobs whose lease expired (or gives up on them after `max_attempts`),
//! and completes experiments a master stop left running with nothing left to do.

use std::collections::HashSet;

use caldera_db::jobs;

use super::Scheduler;

impl Scheduler {
    pub(super) async fn reaper(self) {
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.inner.config.reap_interval) => {}
            }
            if let Err(e) = self.reap_now().await {
                self.inner.metrics.db_errors.inc();
                tracing::warn!(error = %e, "reaper: database error");
            }
            // Experiments are completed after the batch that finishes their last job; one whose
            // last batch committed just before the master stopped would otherwise stay running.
            match jobs::active_experiments(&self.inner.pool).await {
                Ok(active) => self.complete_finished(&active).await,
                Err(e) => tracing::warn!(error = %e, "reaper: cannot list running experiments"),
            }
        }
    }

    /// Re-queue (or give up on) jobs whose lease expired by the clock's now.
    pub async fn reap_now(&self) -> Result<jobs::Reaped, caldera_db::DbError> {
        let reaped =
            jobs::reap(&self.inner.pool, self.now(), self.inner.config.max_attempts).await?;
        let n = (reaped.requeued.len() + reaped.errored.len()) as u64;
        if n > 0 {
            self.inner.metrics.lease_expiries.inc_by(n);
            self.inner
                .metrics
                .jobs_requeued
                .inc_by(reaped.requeued.len() as u64);
            self.inner
                .metrics
                .jobs_errored
                .inc_by(reaped.errored.len() as u64);
            tracing::warn!(
                requeued = reaped.requeued.len(),
                errored = reaped.errored.len(),
                "leases expired"
            );
            let gone: HashSet<i64> = reaped
                .requeued
                .iter()
                .chain(&reaped.errored)
                .copied()
                .collect();
            {
                let mut sessions = self.inner.sessions.lock().expect("sessions lock");
                for s in sessions.values_mut() {
                    s.in_flight.retain(|id, _| !gone.contains(id));
                }
            }
            self.wake();
            self.complete_finished(&reaped.experiments).await;
        }
        Ok(reaped)
    }
}
