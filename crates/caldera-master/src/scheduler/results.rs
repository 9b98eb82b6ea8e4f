//! The result writer: results from every session, batched into one statement per batch
//! (fenced by lease token), acknowledged to their workers; then the flakes they show and the
//! experiments they finish.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use caldera_db::OwnConnection;
use caldera_db::jobs::{self, Completion, CompletionOutcome};
use caldera_proto::ResultAck;
use caldera_proto::v1::{self, master_message};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::pins::RanWith;
use super::{Outbound, Scheduler, wire_lease};

/// A result waiting for the result writer.
pub(super) struct PendingResult {
    completion: Completion,
    /// the build each side ran with, checked against the experiment's pin (`pins`)
    ran: RanWith,
    tx: Outbound,
}

/// Wait for the next result, then take whatever else is waiting, up to `max`. `None` when the
/// channel closed.
async fn next_batch(
    rx: &mut mpsc::Receiver<PendingResult>,
    max: usize,
) -> Option<Vec<PendingResult>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    Some(batch)
}

impl Scheduler {
    pub(crate) async fn submit_result(&self, completion: Completion, ran: RanWith, tx: Outbound) {
        if self
            .inner
            .results
            .send(PendingResult {
                completion,
                ran,
                tx,
            })
            .await
            .is_err()
        {
            tracing::warn!("result writer stopped; result dropped (the worker keeps it spooled)");
        }
    }

    /// Take the results in batches of up to `result_batch` and record each batch in one
    /// statement; then answer them and finish what the batch finished.
    pub(super) async fn result_writer(self, mut rx: mpsc::Receiver<PendingResult>) {
        let max = self.inner.config.result_batch;
        // its own connection: one round trip per batch instead of three (see `OwnConnection`)
        let mut db = OwnConnection::new(&self.inner.pool, "caldera-results", &[]);
        loop {
            let batch = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                b = next_batch(&mut rx, max) => match b { Some(b) => b, None => return },
            };
            let mut completions: Vec<Completion> =
                batch.iter().map(|p| p.completion.clone()).collect();
            let ran: Vec<&RanWith> = batch.iter().map(|p| &p.ran).collect();
            if !self.check_pins(&mut db, &mut completions, &ran).await {
                return;
            }
            self.fill_settled_sides(&mut db, &mut completions).await;
            let Some(out) = self.write_batch(&mut db, &completions).await else {
                return;
            };
            self.count_requeues(&out);
            self.acknowledge(&batch, &out).await;
            self.record_flakes(&mut db, &completions, &out).await;
            self.complete_batch_experiments(&mut db, &out.experiments)
                .await;
        }
    }

    /// A job whose other side was settled from the result cache reports a `skipped`
    /// placeholder for it (not recorded: the completion writes only the side that ran). Put the
    /// settled outcome in its place, so that the comparison that decides confirmation runs sees
    /// both real outcomes. Only batches with a `skipped` side look (one round trip); should the
    /// read fail, those results are recorded all the same, without confirmation runs.
    async fn fill_settled_sides(&self, db: &mut OwnConnection, completions: &mut [Completion]) {
        let skipped = |c: &Completion| {
            matches!(c.start.outcome, Outcome::Skipped) || matches!(c.end.outcome, Outcome::Skipped)
        };
        let ids: Vec<i64> = completions
            .iter()
            .filter(|c| skipped(c))
            .map(|c| c.job_id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let settled = match db.get().await {
            Ok(conn) => caldera_db::cache::settled_sides(conn, &ids).await,
            Err(e) => Err(e),
        };
        match settled {
            Ok(settled) => {
                for (job, side, outcome) in settled {
                    for c in completions.iter_mut().filter(|c| c.job_id == job) {
                        match side {
                            Side::Start => c.start.outcome = outcome.clone(),
                            Side::End => c.end.outcome = outcome.clone(),
                        }
                    }
                }
            }
            Err(e) => {
                db.reset();
                tracing::warn!(error = %e, "cannot read the settled sides of one-sided jobs; their confirmation runs are not queued");
            }
        }
    }

    /// Record a batch, retrying while Postgres is away (the workers keep their results spooled
    /// meanwhile). `None` when the scheduler shuts down first.
    async fn write_batch(
        &self,
        db: &mut OwnConnection,
        completions: &[Completion],
    ) -> Option<CompletionOutcome> {
        loop {
            let written = match db.get().await {
                Ok(conn) => {
                    jobs::complete_on(
                        conn,
                        completions,
                        self.now(),
                        self.inner.config.max_attempts,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match written {
                Ok(out) => return Some(out),
                Err(e) => {
                    db.reset();
                    self.inner.metrics.db_errors.inc();
                    tracing::warn!(error = %e, results = completions.len(), "cannot record results; retrying");
                    tokio::select! {
                        _ = self.inner.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Count and log what the batch queued: confirmation runs, and jobs queued again after an
    /// infrastructure error.
    fn count_requeues(&self, out: &CompletionOutcome) {
        if out.confirmations > 0 {
            self.inner
                .metrics
                .confirmation_runs_queued
                .inc_by(out.confirmations);
            tracing::info!(
                runs = out.confirmations,
                "regressions or fixes: confirmation runs queued"
            );
        }
        if !out.requeued.is_empty() {
            self.inner
                .metrics
                .jobs_requeued
                .inc_by(out.requeued.len() as u64);
            tracing::info!(jobs = ?out.requeued, "infrastructure errors: jobs queued again for another attempt");
        }
    }

    /// Answer every result of the batch (accepted when it was recorded or queued again; the
    /// worker may forget it either way) and free the slots of the jobs.
    async fn acknowledge(&self, batch: &[PendingResult], out: &CompletionOutcome) {
        let accepted: HashSet<i64> = out.accepted.iter().copied().collect();
        let requeued: HashSet<i64> = out.requeued.iter().copied().collect();
        let mut by_worker: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for p in batch {
            let c = &p.completion;
            let ok = accepted.contains(&c.job_id) || requeued.contains(&c.job_id);
            if accepted.contains(&c.job_id) {
                self.inner.metrics.jobs_completed.inc();
            } else if ok {
                // received, and queued again: the worker may forget it
            } else {
                self.inner
                    .metrics
                    .results_rejected
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "stale-lease".into(),
                    })
                    .inc();
                tracing::warn!(job = c.job_id, lease = %c.lease_token, worker = %c.worker, "rejected a result: its lease is not current");
            }
            by_worker.entry(c.worker).or_default().push(c.job_id);
            let ack = ResultAck {
                lease: wire_lease(c.job_id, c.lease_token),
                accepted: ok,
                reason: if ok {
                    String::new()
                } else {
                    "the lease is not current (expired, reassigned, cancelled or already reported)"
                        .into()
                },
            };
            let _ =
                p.tx.send(Ok(v1::MasterMessage {
                    kind: Some(master_message::Kind::Ack(ack.into())),
                }))
                .await;
        }
        for (worker, ids) in by_worker {
            self.release(worker, ids);
        }
    }

    /// Complete the experiments the batch finished the last job of.
    async fn complete_batch_experiments(&self, db: &mut OwnConnection, experiments: &[Uuid]) {
        if experiments.is_empty() {
            return;
        }
        let finished = match db.get().await {
            Ok(conn) => jobs::finished_experiments(conn, experiments).await,
            Err(e) => Err(e),
        };
        match finished {
            Ok(names) => self.complete_named(names).await,
            Err(e) => {
                // the reaper's sweep completes them later
                db.reset();
                tracing::warn!(error = %e, "cannot check for finished experiments");
            }
        }
    }

    pub(super) fn remember_calibration(&self, experiments: impl IntoIterator<Item = (Uuid, bool)>) {
        let mut known = self.inner.calibration.lock().unwrap();
        if known.len() > 4096 {
            known.clear();
        }
        known.extend(experiments);
    }

    /// Flaky memory (`caldera_db::flakes`): for the confirmation runs (run > 0) and the runs of
    /// calibration experiments this batch recorded, what differed from what should have agreed.
    /// Nothing is read or written for a batch with neither: whether an experiment is a
    /// calibration is known from the dispatcher's reading of its spec (or read once here, for
    /// jobs claimed before a restart of the master).
    async fn record_flakes(
        &self,
        db: &mut OwnConnection,
        batch: &[Completion],
        out: &CompletionOutcome,
    ) {
        if out.done.is_empty() {
            return;
        }
        let mut unknown: Vec<Uuid> = {
            let known = self.inner.calibration.lock().unwrap();
            out.done
                .iter()
                .map(|(_, e, _)| *e)
                .filter(|e| !known.contains_key(e))
                .collect()
        };
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            match caldera_db::experiments::specs(&self.inner.pool, &unknown).await {
                Ok(read) => {
                    let mut found: HashMap<Uuid, bool> =
                        unknown.iter().map(|e| (*e, false)).collect();
                    found.extend(read.iter().map(|(id, spec)| (*id, spec.calibration)));
                    self.remember_calibration(found);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read specs; flakes of this batch's calibration runs are not recorded");
                }
            }
        }
        let finished: Vec<caldera_db::flakes::FinishedRun> = {
            let known = self.inner.calibration.lock().unwrap();
            out.done
                .iter()
                .filter_map(|(id, experiment, run)| {
                    let calibration = known.get(experiment).copied().unwrap_or(false);
                    if *run == 0 && !calibration {
                        return None;
                    }
                    // the first report of the job in the batch is the one recorded
                    let c = batch.iter().find(|c| c.job_id == *id)?;
                    Some(caldera_db::flakes::FinishedRun {
                        job_id: *id,
                        run: *run,
                        calibration,
                        start: (&c.start.outcome, c.start.log_key.as_deref()),
                        end: (&c.end.outcome, c.end.log_key.as_deref()),
                    })
                })
                .collect()
        };
        if finished.is_empty() {
            return;
        }
        // The results are written (and acknowledged) already: a failure here loses these
        // sightings only, so a few attempts, then a warning.
        for attempt in 1..=3 {
            let recorded = match db.get().await {
                Ok(conn) => caldera_db::flakes::record_finished(conn, &finished, self.now()).await,
                Err(e) => Err(e),
            };
            match recorded {
                Ok(n) => {
                    if n > 0 {
                        self.inner.metrics.flakes_recorded.inc_by(n);
                        tracing::info!(sightings = n, "flakes recorded");
                    }
                    return;
                }
                Err(e) => {
                    db.reset();
                    tracing::warn!(error = %e, attempt, "cannot record flakes");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
