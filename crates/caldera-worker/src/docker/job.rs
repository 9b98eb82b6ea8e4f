//! One job from start to end, in the order things happen (see the module docs of
//! [`docker`](super)): a slot, both toolchains, the containers requested, the crate prepared once
//! and moved into the slot, both sides set up, then run one after the other, each side's log made
//! durable while the next side runs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::job::{JobSpec, Side};
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::Toolchain;
use caldera_sandbox::{JobMounts, ToolchainMount};
use caldera_storage::{ObjectKey, keys};
use tokio_util::sync::CancellationToken;

use super::spares::{AfterSteps, Made, wait_for_container};
use super::steps::SideSetup;
use super::targets::{make_dir_for_sandbox, move_tree_contents};
use super::toolchains::SideToolchain;
use super::{Inner, SideRun};
use crate::executor::{Assignment, JobOutput, SideOutput};
use crate::prepare::{HostToolchain, PrepareError, PrepareReport, PreparedCrate};

/// What the sides of a job share once its crate is prepared.
pub(super) struct JobContext<'a> {
    pub(super) spec: &'a JobSpec,
    pub(super) slot: u32,
    /// Each side's toolchain, or why it is missing (`Side::BOTH` order).
    pub(super) sides: &'a [Result<SideToolchain, String>],
    pub(super) report: &'a PrepareReport,
    pub(super) prepared: &'a Result<PreparedCrate, PrepareError>,
    /// Notes for the header of both sides' logs.
    pub(super) header_notes: &'a [String],
    pub(super) cancel: &'a CancellationToken,
}

impl JobContext<'_> {
    /// The toolchain spec of `side`, as the job names it.
    pub(super) fn toolchain_spec(&self, side: Side) -> &Toolchain {
        side_toolchain(self.spec, side)
    }

    /// The side whose clock the preparation ran on: the first that runs (the start side, unless
    /// the result cache settled it).
    pub(super) fn prepared_on(&self) -> Side {
        self.spec.only.unwrap_or(Side::Start)
    }

    /// The resolved toolchain of `side`, if it resolved.
    pub(super) fn resolved(&self, side: Side) -> Option<&SideToolchain> {
        self.sides[side_index(side)].as_ref().ok()
    }
}

/// The toolchain spec of `side` in a job.
fn side_toolchain(spec: &JobSpec, side: Side) -> &Toolchain {
    match side {
        Side::Start => &spec.start,
        Side::End => &spec.end,
    }
}

/// The outputs of both sides, in `Side::BOTH` order, from those of the sides that ran: with
/// `only`, the other side was settled from the result cache (not run, not recorded) and gets
/// [`SideOutput::not_run`].
fn with_settled_side(mut outputs: Vec<SideOutput>, only: Option<Side>) -> Vec<SideOutput> {
    if let Some(only) = only {
        outputs.insert(1 - side_index(only), SideOutput::not_run());
    }
    outputs
}

/// The build each side ran with, `None` for the side a one-sided job did not run.
fn ran_sides<T>(mut ran: [Option<T>; 2], only: Option<Side>) -> [Option<T>; 2] {
    if let Some(only) = only {
        ran[1 - side_index(only)] = None;
    }
    ran
}

/// Where `side` is in `Side::BOTH`, the order of every per-side list of a job.
fn side_index(side: Side) -> usize {
    match side {
        Side::Start => 0,
        Side::End => 1,
    }
}

impl Inner {
    /// Runs one job; `None` when cancelled.
    pub(super) async fn run_job(
        self: Arc<Self>,
        job: Assignment,
        cancel: CancellationToken,
    ) -> Option<JobOutput> {
        let spec = &job.spec;
        let t0 = Instant::now();
        let slot = self.take_slot().await;
        let sides = self.resolve_sides(spec).await;
        let ran = [
            self.side_identity(&sides[0]).await,
            self.side_identity(&sides[1]).await,
        ];
        let start_host = match &sides[0] {
            Ok(tc) => self.host_toolchain(&tc.dir).await,
            Err(reason) => Err(PrepareError::Infra(reason.clone())),
        };

        // Containers first: the slot's spare, made ahead of the job, when it fits; otherwise one
        // is created now and starts while the crate is prepared. The source is mounted from the
        // slot's source dir, into which the prepared crate is moved below.
        let slot_src = self.config.slot_source_dir(slot.index);
        let slot_src_ready = make_dir_for_sandbox(&slot_src).await;
        if spec.run > 0 {
            // a confirmation run: fresh target dirs, whatever a previous one left there goes
            if let Err(e) = self.purge(self.fresh_targets(slot.index), false).await {
                tracing::warn!(error = %e, "could not empty the fresh target dirs");
            }
        }
        let mut creations = self
            .request_containers(slot.index, spec, &sides, &slot_src, slot_src_ready.is_ok())
            .await;

        tracing::debug!(at = ?t0.elapsed(), "containers requested");
        let Some((report, prepared)) = self.prepare_crate(spec, start_host, &cancel).await else {
            self.keep_unused(slot.index, &mut creations);
            return None;
        };
        let prepared = self
            .move_into_slot(prepared, slot_src_ready, &slot_src)
            .await;
        tracing::debug!(at = ?t0.elapsed(), "prepared and moved into the slot");
        let mut header_notes = Vec::new();
        if let Err(e) = self.prepare_slot(slot.index, &spec.experiment).await {
            header_notes.push(format!("target dir housekeeping failed: {e}"));
        }
        tracing::debug!(at = ?t0.elapsed(), "slot housekeeping done");

        let ctx = JobContext {
            spec,
            slot: slot.index,
            sides: &sides,
            report: &report,
            prepared: &prepared,
            header_notes: &header_notes,
            cancel: &cancel,
        };
        // Both sides are set up first. The end side's container (when not a spare already) starts
        // while the start side's steps run, and the start side's log is made durable while the end
        // side runs.
        let plans = self.set_up_sides(&ctx, &mut creations).await?;
        tracing::debug!(at = ?t0.elapsed(), "sides set up");
        let outputs = self.run_sides(&ctx, plans, creations).await?;
        let mut outputs = with_settled_side(outputs, spec.only);
        drop(prepared);
        drop(slot);
        tracing::debug!(elapsed = ?t0.elapsed(), "job finished");
        let [start_ran, end_ran] = ran_sides(ran, spec.only);
        let end = SideOutput {
            toolchain: end_ran,
            ..outputs.pop()?
        };
        let start = SideOutput {
            toolchain: start_ran,
            ..outputs.pop()?
        };
        Some(JobOutput { start, end })
    }

    /// Both sides' toolchains, resolved in the worker's rustup home (`Side::BOTH` order); a
    /// missing one is why.
    async fn resolve_sides(&self, spec: &JobSpec) -> Vec<Result<SideToolchain, String>> {
        let mut sides = Vec::new();
        for side in Side::BOTH {
            sides.push(
                self.resolve_side(side_toolchain(spec, side), spec.mode)
                    .await,
            );
        }
        sides
    }

    /// Requests the container of each side whose toolchain resolved (see
    /// [`container_for`](Inner::container_for)), mounting the slot's source dir `slot_src` and
    /// the side's target dir; `None` for a side that gets none.
    async fn request_containers(
        &self,
        slot: u32,
        spec: &JobSpec,
        sides: &[Result<SideToolchain, String>],
        slot_src: &Path,
        slot_src_ready: bool,
    ) -> Vec<Option<Made>> {
        let mut creations = Vec::new();
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let mut creation = None;
            if let (Ok(tc), true) = (&sides[i], slot_src_ready) {
                let target = self.job_target(slot, tc, spec.run);
                if spec.run > 0 {
                    // the slot's own dir, which the spare made after this job mounts
                    let _ = tokio::fs::create_dir_all(self.side_target(slot, tc)).await;
                }
                if tokio::fs::create_dir_all(&target).await.is_ok() {
                    let mounts = JobMounts {
                        source: slot_src.to_owned(),
                        target,
                        cargo_home: self.config.prepare.cargo_home.clone(),
                        toolchains: vec![ToolchainMount::new(&tc.mount_name, &tc.dir)],
                    };
                    let limits = self.side_limits(spec);
                    let handle = self.container_for(slot, side, &mounts, &limits);
                    creation = Some((mounts, limits, handle));
                }
            }
            creations.push(creation);
        }
        creations
    }

    /// Prepares the crate once for both sides, with the start side's toolchain (or fails as its
    /// resolution did); `None` when cancelled.
    async fn prepare_crate(
        &self,
        spec: &JobSpec,
        start_host: Result<HostToolchain, PrepareError>,
        cancel: &CancellationToken,
    ) -> Option<(PrepareReport, Result<PreparedCrate, PrepareError>)> {
        match start_host {
            Ok(host) => {
                // dropping the preparation kills its subprocesses and removes its directory
                tokio::select! {
                    r = self.preparer.prepare(&spec.experiment, &spec.krate, spec.lockfile, &host) => Some(r),
                    () = cancel.cancelled() => None,
                }
            }
            Err(e) => Some((PrepareReport::default(), Err(e))),
        }
    }

    /// Moves the prepared crate into the slot's source dir, which the containers mount; what the
    /// slot's previous job left there goes to the trash first. A failure is the infrastructure's.
    async fn move_into_slot(
        &self,
        prepared: Result<PreparedCrate, PrepareError>,
        slot_src_ready: std::io::Result<()>,
        slot_src: &Path,
    ) -> Result<PreparedCrate, PrepareError> {
        match (prepared, slot_src_ready) {
            (Ok(p), Ok(())) => match async {
                self.purge(slot_src.to_owned(), false).await?;
                move_tree_contents(p.source(), slot_src.to_owned()).await
            }
            .await
            {
                Ok(()) => Ok(p),
                Err(e) => Err(PrepareError::Infra(format!(
                    "moving the prepared source into {}: {e}",
                    slot_src.display()
                ))),
            },
            (Ok(_), Err(e)) => Err(PrepareError::Infra(format!(
                "the slot's source dir {}: {e}",
                slot_src.display()
            ))),
            (Err(e), _) => Err(e),
        }
    }

    /// Sets both sides up ([`setup_side`](Inner::setup_side)). A side that cannot run (no
    /// toolchain, no prepared crate) is its run already, and the container requested for it is
    /// kept for the slot's next job. `None` when cancelled.
    async fn set_up_sides(
        &self,
        job: &JobContext<'_>,
        creations: &mut [Option<Made>],
    ) -> Option<Vec<Result<SideSetup, SideRun>>> {
        let mut plans = Vec::new();
        for (i, side) in Side::BOTH.into_iter().enumerate() {
            let plan = match (&job.sides[i], job.prepared) {
                (Err(reason), _) => Err(SideRun::error(reason.clone(), Vec::new(), Duration::ZERO)),
                _ if job.spec.only.is_some_and(|only| only != side) => Err(SideRun::error(
                    "settled from the result cache".into(),
                    Vec::new(),
                    Duration::ZERO,
                )),
                (_, Err(e)) => Err(unprepared(e)),
                (Ok(tc), Ok(_)) => {
                    let target = self.job_target(job.slot, tc, job.spec.run);
                    let source = self.config.slot_source_dir(job.slot);
                    tokio::select! {
                        r = self.setup_side(job.spec, tc, &target, &source) => r,
                        () = job.cancel.cancelled() => {
                            self.keep_unused(job.slot, creations);
                            return None;
                        }
                    }
                }
            };
            tracing::trace!(%side, ok = plan.is_ok(), "side set up");
            if plan.is_err()
                && let Some(made) = creations[i].take()
            {
                // not needed by this job: the next one can have it
                self.keep_spare(job.slot, side, made);
            }
            plans.push(plan);
        }
        Some(plans)
    }

    /// Runs the set-up sides one after the other, each side's log reaching storage while the next
    /// side runs; the sides' outputs, once their logs are stored. `None` when cancelled.
    async fn run_sides(
        &self,
        job: &JobContext<'_>,
        plans: Vec<Result<SideSetup, SideRun>>,
        mut creations: Vec<Option<Made>>,
    ) -> Option<Vec<SideOutput>> {
        // containers used by this job, and the spares to make for the slot's next one: both wait
        // until the job's steps are over, so that no container work competes with them
        let mut after = AfterSteps::default();
        let mut outputs: Vec<SideOutput> = Vec::new();
        let mut pending: Option<(ObjectKey, SideRun)> = None;
        for (i, plan) in plans.into_iter().enumerate() {
            if job.spec.only.is_some_and(|only| only != Side::BOTH[i]) {
                continue; // settled from the result cache: no steps, no log
            }
            let side_t0 = Instant::now();
            let work = self.run_side(job, i, plan, creations[i].take(), &mut after);
            // the previous side's log reaches storage while this side runs
            let (run, previous) = match pending.take() {
                Some((key, prev)) => {
                    let (run, stored) = tokio::join!(work, self.finish_store(key, job.cancel));
                    (run, Some((prev, stored)))
                }
                None => (work.await, None),
            };
            let (run, previous) = match previous {
                Some((prev, Some(stored))) => (run, Some(side_output(prev, stored))),
                Some((_, None)) => (None, None), // cancelled
                None => (run, None),
            };
            let Some(mut run) = run else {
                // cancelled: the containers not used yet are the slot's next spares
                self.keep_unused(job.slot, &mut creations);
                self.after_job(job.slot, after);
                self.drop_fresh_targets(job.slot, job.spec.run).await;
                return None;
            };
            outputs.extend(previous);
            run.duration = side_t0.elapsed();
            if Side::BOTH[i] == job.prepared_on() {
                add_preparation(&mut run, job.report);
            }
            match self.spool_log(job, Side::BOTH[i], &run).await {
                Ok(key) => pending = Some((key, run)),
                Err(e) => outputs.push(side_output(run, Err(e))),
            }
        }
        self.after_job(job.slot, after);
        self.drop_fresh_targets(job.slot, job.spec.run).await;
        if let Some((key, prev)) = pending.take() {
            outputs.push(side_output(prev, self.finish_store(key, job.cancel).await?));
        }
        Some(outputs)
    }

    /// Runs side `i` of a job: a side that could not be set up is its run already; otherwise its
    /// steps run in its container, once that is ready. `None` when cancelled.
    async fn run_side(
        &self,
        job: &JobContext<'_>,
        i: usize,
        plan: Result<SideSetup, SideRun>,
        creation: Option<Made>,
        after: &mut AfterSteps,
    ) -> Option<SideRun> {
        let side = Side::BOTH[i];
        match (plan, job.prepared) {
            (Err(run), _) => Some(run),
            (Ok(setup), Ok(prepared)) => {
                // the slot's next spare mounts the slot's own target dir, not a confirmation run's
                let slot_target = job
                    .resolved(side)
                    .map(|tc| self.side_target(job.slot, tc))
                    .filter(|_| job.spec.run > 0);
                let container =
                    wait_for_container(side, creation, slot_target, &mut after.respare).await;
                self.run_in(
                    setup,
                    container,
                    job.spec,
                    prepared,
                    job.cancel,
                    &mut after.used,
                )
                .await
            }
            (Ok(_), Err(_)) => unreachable!("a side is set up only for a prepared crate"),
        }
    }

    /// Writes a side's log ([`compose_log`](Inner::compose_log)) to the upload spool; the key it
    /// is stored under. A confirmation run's logs, and the end side's of a calibration (A/A)
    /// run, have keys of their own: they never replace the first run's or the start side's.
    async fn spool_log(
        &self,
        job: &JobContext<'_>,
        side: Side,
        run: &SideRun,
    ) -> Result<ObjectKey, String> {
        let log = self.compose_log(job, side, run);
        let same_toolchain_end = side == Side::End && job.spec.start == job.spec.end;
        let key = keys::run_log(
            &job.spec.experiment,
            &job.toolchain_spec(side).id(),
            &job.spec.krate.without_checksum().to_string(),
            job.spec.run,
            same_toolchain_end,
        )
        .map_err(|e| format!("no log key: {e}"))?;
        self.spool
            .enqueue_log(key.clone(), log)
            .await
            .map_err(|e| e.to_string())?;
        Ok(key)
    }

    /// Waits until a spooled log is durable; `None` when cancelled.
    async fn finish_store(
        &self,
        key: ObjectKey,
        cancel: &CancellationToken,
    ) -> Option<Result<ObjectKey, String>> {
        let work = async {
            match tokio::time::timeout(
                self.config.log_upload_timeout,
                self.spool.wait_durable(&key),
            )
            .await
            {
                Ok(Ok(())) => Ok(key),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "not in object storage after {:?} (it stays in the upload spool)",
                    self.config.log_upload_timeout
                )),
            }
        };
        tokio::select! {
            r = work => Some(r),
            () = cancel.cancelled() => None,
        }
    }
}

/// A side's run when the crate could not be prepared: `prepare-fail`, `broken` or `error`, as the
/// preparation found.
fn unprepared(e: &PrepareError) -> SideRun {
    let outcome = match e {
        PrepareError::Crate(reason) => Outcome::PrepareFail {
            reason: reason.clone(),
        },
        PrepareError::Broken(reason) => Outcome::Broken {
            reason: reason.clone(),
        },
        PrepareError::Infra(reason) => {
            return SideRun::error(reason.clone(), Vec::new(), Duration::ZERO);
        }
    };
    SideRun {
        outcome,
        ..SideRun::error(String::new(), Vec::new(), Duration::ZERO)
    }
}

/// Preparation happened once, on the clock of the first side that runs
/// ([`JobContext::prepared_on`]): its steps come first in that side's timings, and its time
/// counts in that side's duration.
fn add_preparation(run: &mut SideRun, report: &PrepareReport) {
    run.steps.splice(
        0..0,
        report
            .steps
            .iter()
            .map(|(n, d)| (format!("prepare:{n}"), *d)),
    );
    run.duration += report.steps.iter().map(|(_, d)| *d).sum::<Duration>();
}

/// A side's output once its log is stored (or could not be): a side whose log is lost is an
/// `error`, unless it already was one.
fn side_output(run: SideRun, stored: Result<ObjectKey, String>) -> SideOutput {
    let (outcome, log_key) = match stored {
        Ok(key) => (run.outcome, Some(key.to_string())),
        Err(e) if matches!(run.outcome, Outcome::Error { .. }) => {
            tracing::warn!(error = %e, "could not store the log of a failed side");
            (run.outcome, None)
        }
        Err(e) => (
            Outcome::Error {
                reason: format!("the log could not be stored: {e}"),
            },
            None,
        ),
    };
    SideOutput {
        outcome,
        steps: run.steps,
        peak_memory_bytes: run.peak_memory_bytes,
        log_key,
        duration: run.duration,
        toolchain: None, // set with the job's output
        cache_key: None, // set by the worker
    }
}
