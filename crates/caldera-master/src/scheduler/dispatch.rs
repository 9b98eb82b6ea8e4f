//! The dispatcher: claims queued jobs for workers with free slots whenever something changes, and
//! pushes them onto the workers' streams.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_core::experiment::ExperimentSpec;
use caldera_core::job::{JobSpec, Side};
use caldera_db::jobs::{self, Claimed};
use caldera_proto::Assign;
use caldera_proto::v1::{self, master_message};
use uuid::Uuid;

use super::{Outbound, Scheduler, chrono_dur, wire_lease};

/// Each experiment's spec, read once by the dispatcher (specs do not change after the start).
type Specs = HashMap<Uuid, Arc<Dispatchable>>;

/// What the dispatcher keeps of an experiment: its spec, and the first runs that run one side
/// only (their other side was settled from the result cache at the start, which decides them
/// once; confirmation runs that run one side are read when claimed).
struct Dispatchable {
    spec: ExperimentSpec,
    only: HashMap<i64, Side>,
}

/// A claimed job ready to go: its id and lease token (as the database knows them) and the
/// message that assigns it.
type Ready = (i64, Uuid, v1::Assign);

impl Scheduler {
    pub(super) async fn dispatcher(self) {
        let mut specs: Specs = HashMap::new();
        let mut claimer = jobs::Claimer::new(&self.inner.pool);
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(self.inner.config.dispatch_tick) => {}
            }
            if let Err(e) = self.dispatch_round(&mut claimer, &mut specs).await {
                self.inner.metrics.db_errors.inc();
                tracing::warn!(error = %e, "dispatcher: database error; retrying shortly");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// Claim for every worker with free slots until nothing more can be handed out.
    async fn dispatch_round(
        &self,
        claimer: &mut jobs::Claimer,
        specs: &mut Specs,
    ) -> Result<(), caldera_db::DbError> {
        let mut exhausted: HashSet<Uuid> = HashSet::new();
        loop {
            // the workers with free slots, and every connected worker that takes jobs (a
            // confirmation run goes to another worker than its first run's when one could take it)
            let (candidates, connected): (
                Vec<(Uuid, Vec<String>, usize)>,
                Vec<(Uuid, Vec<String>)>,
            ) = {
                let sessions = self.inner.sessions.lock().expect("sessions lock");
                (
                    sessions
                        .iter()
                        .filter(|(id, s)| {
                            !s.draining && s.in_flight.len() < s.slots && !exhausted.contains(id)
                        })
                        .map(|(id, s)| (*id, s.capabilities.clone(), s.slots - s.in_flight.len()))
                        .collect(),
                    sessions
                        .iter()
                        .filter(|(_, s)| !s.draining && s.slots > 0)
                        .map(|(id, s)| (*id, s.capabilities.clone()))
                        .collect(),
                )
            };
            if candidates.is_empty() {
                return Ok(());
            }
            for (worker, caps, free) in candidates {
                let limit = (free as i64).min(self.inner.config.claim_batch);
                let mut others: Vec<Vec<String>> = connected
                    .iter()
                    .filter(|(id, _)| *id != worker)
                    .map(|(_, caps)| caps.clone())
                    .collect();
                others.sort_unstable();
                others.dedup();
                let started = Instant::now();
                let claimed = claimer
                    .claim_among(
                        worker,
                        &caps,
                        &others,
                        limit,
                        self.now(),
                        chrono_dur(self.inner.config.lease),
                    )
                    .await?;
                self.inner
                    .metrics
                    .claim_latency
                    .observe(started.elapsed().as_secs_f64());
                if (claimed.len() as i64) < limit {
                    exhausted.insert(worker);
                }
                if claimed.is_empty() {
                    continue;
                }
                let sent_at = Instant::now();
                self.assign(worker, claimed, specs).await?;
                self.inner
                    .metrics
                    .claim_to_send
                    .observe(sent_at.elapsed().as_secs_f64());
            }
        }
    }

    /// Send the jobs claimed for `worker` down its stream. What cannot be sent (no spec, the
    /// worker gone) goes back to the queue.
    async fn assign(
        &self,
        worker: Uuid,
        claimed: Vec<Claimed>,
        specs: &mut Specs,
    ) -> Result<(), caldera_db::DbError> {
        self.read_specs(&claimed, specs).await?;
        let later = self.one_sided_confirmations(&claimed, specs).await?;
        let (ready, mut give_back) = assignments(&claimed, specs, &later);
        match self.track(worker, &ready) {
            Some(tx) => give_back.extend(self.send_assignments(worker, &tx, ready).await),
            None => give_back.extend(ready.iter().map(|(id, token, _)| (*id, *token))),
        }
        self.give_back(worker, give_back).await
    }

    /// Read the specs of the claimed jobs' experiments not read yet (each is read once: specs do
    /// not change after the start).
    async fn read_specs(
        &self,
        claimed: &[Claimed],
        specs: &mut Specs,
    ) -> Result<(), caldera_db::DbError> {
        let mut unknown: Vec<Uuid> = claimed
            .iter()
            .map(|c| c.experiment_id)
            .filter(|id| !specs.contains_key(id))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            if specs.len() > 256 {
                specs.clear();
            }
            let read = caldera_db::experiments::specs(&self.inner.pool, &unknown).await?;
            self.remember_calibration(read.iter().map(|(id, spec)| (*id, spec.calibration)));
            for (id, spec) in read {
                let only = match spec.cache {
                    true => caldera_db::cache::one_sided_jobs(&self.inner.pool, id).await?,
                    false => Vec::new(),
                };
                let only = only.into_iter().collect();
                specs.insert(id, Arc::new(Dispatchable { spec, only }));
            }
        }
        Ok(())
    }

    /// The claimed confirmation runs of experiments with the result cache that run one side
    /// only (queued after the start, so not in their [`Dispatchable`]): one read, only when such
    /// runs were claimed.
    async fn one_sided_confirmations(
        &self,
        claimed: &[Claimed],
        specs: &Specs,
    ) -> Result<HashMap<i64, Side>, caldera_db::DbError> {
        let ids: Vec<i64> = (claimed.iter())
            .filter(|c| c.run > 0 && specs.get(&c.experiment_id).is_some_and(|d| d.spec.cache))
            .map(|c| c.job_id)
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let only = caldera_db::cache::one_sided_among(&self.inner.pool, &ids).await?;
        Ok(only.into_iter().collect())
    }

    /// Count the jobs about to be sent as in flight on `worker`'s session; its stream, if it is
    /// still connected.
    fn track(&self, worker: Uuid, ready: &[Ready]) -> Option<Outbound> {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        let s = sessions.get_mut(&worker)?;
        for (id, token, _) in ready {
            s.in_flight.insert(*id, (*token).into());
        }
        Some(s.tx.clone())
    }

    /// Push the assignments onto the worker's stream; returns those that could not be sent.
    async fn send_assignments(
        &self,
        worker: Uuid,
        tx: &Outbound,
        ready: Vec<Ready>,
    ) -> Vec<(i64, Uuid)> {
        let mut unsent = Vec::new();
        for (id, token, assign) in ready {
            tracing::debug!(job = id, worker = %worker, "assign");
            let msg = v1::MasterMessage {
                kind: Some(master_message::Kind::Assign(assign)),
            };
            if tx.send(Ok(msg)).await.is_err() {
                unsent.push((id, token));
            } else {
                self.inner.metrics.jobs_assigned.inc();
            }
        }
        unsent
    }

    /// Put jobs claimed for `worker` but not sent back in the queue.
    async fn give_back(
        &self,
        worker: Uuid,
        unsent: Vec<(i64, Uuid)>,
    ) -> Result<(), caldera_db::DbError> {
        if !unsent.is_empty() {
            self.release(worker, unsent.iter().map(|(id, _)| *id));
            for (id, token) in unsent {
                jobs::hand_back(&self.inner.pool, id, token, self.now()).await?;
            }
        }
        Ok(())
    }
}

/// The Assign message of every claimed job whose spec can be built, and (job id, token) of
/// those that cannot be sent. `later`: the one-sided confirmation runs among them.
fn assignments(
    claimed: &[Claimed],
    specs: &Specs,
    later: &HashMap<i64, Side>,
) -> (Vec<Ready>, Vec<(i64, Uuid)>) {
    let mut ready = Vec::with_capacity(claimed.len());
    let mut unsendable = Vec::new();
    for c in claimed {
        let Some(d) = specs.get(&c.experiment_id) else {
            tracing::error!(experiment = %c.experiment, "the experiment of a claimed job is gone");
            unsendable.push((c.job_id, c.lease_token));
            continue;
        };
        match job_spec(&d.spec, c) {
            Ok(mut job) => {
                job.only = (d.only.get(&c.job_id)).or(later.get(&c.job_id)).copied();
                let assign = Assign {
                    lease: wire_lease(c.job_id, c.lease_token),
                    attempt: c.attempt as u32,
                    spec: job,
                };
                ready.push((c.job_id, c.lease_token, (&assign).into()));
            }
            Err(e) => {
                tracing::error!(experiment = %c.experiment, krate = %c.crate_id, error = %e, "cannot build the job spec");
                unsendable.push((c.job_id, c.lease_token));
            }
        }
    }
    (ready, unsendable)
}

/// The job a worker runs for a claimed row.
pub fn job_spec(spec: &ExperimentSpec, c: &Claimed) -> Result<JobSpec, String> {
    let krate: CrateId = c
        .crate_id
        .parse()
        .map_err(|e| format!("crate id {:?}: {e}", c.crate_id))?;
    let name = match &krate {
        CrateId::Registry { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let ov = name.and_then(|n| spec.override_for(n));
    Ok(JobSpec {
        experiment: c.experiment.clone(),
        krate,
        start: spec.start.clone(),
        end: spec.end.clone(),
        mode: spec.mode,
        cap_lints: spec.cap_lints,
        skip_tests: ov.is_some_and(|o| o.skip_tests),
        quiet: ov.is_some_and(|o| o.quiet),
        extra_timeout_secs: ov.and_then(|o| o.extra_timeout_secs).unwrap_or(0),
        extra_memory_mib: ov.and_then(|o| o.extra_memory_mib).unwrap_or(0),
        lockfile: spec.lockfile,
        run: u32::try_from(c.run).unwrap_or(0),
        only: None,
    })
}
