//! The containers of a job's sides. Each side gets a fresh container; it is usually a *spare*,
//! created for the slot after its previous job (so no job waits for a container to start), and
//! taken only when its mounts and limits are the job's. After a job's steps its containers are
//! removed and the slot's next spares created, in the background.

use std::path::PathBuf;
use std::time::Instant;

use caldera_core::job::{JobSpec, Side};
use caldera_sandbox::{Container, JobMounts, Limits};

use super::{Inner, lock, sandbox_reason};

/// A container being created (or made) for a job not yet known.
pub(super) type Creation = tokio::task::JoinHandle<Result<Container, String>>;

/// A container being created, with what it mounts and its limits.
pub(super) type Made = (JobMounts, Limits, Creation);

/// A spare container: what it mounts and its limits, so a job takes it only when they match.
pub(super) struct Spare {
    mounts: JobMounts,
    limits: Limits,
    pub(super) creation: Creation,
}

/// What waits until a job's steps are over, so that no container work competes with them: the
/// containers the job used, to remove, and the spares to make for the slot's next job.
#[derive(Default)]
pub(super) struct AfterSteps {
    pub(super) used: Vec<Container>,
    pub(super) respare: Vec<(Side, JobMounts, Limits)>,
}

/// Removes the container of `creation` once it exists.
fn discard(creation: Creation) {
    tokio::spawn(async move {
        if let Ok(Ok(container)) = creation.await
            && let Err(e) = container.remove().await
        {
            tracing::warn!(error = %e, "could not remove a sandbox container");
        }
    });
}

/// The side's container once its creation is done. When it is up, its mounts and limits are
/// noted in `respare` for the slot's next spare — with `slot_target` as the target dir when
/// given (a confirmation run mounts fresh target dirs, the next job the slot's own).
pub(super) async fn wait_for_container(
    side: Side,
    creation: Option<Made>,
    slot_target: Option<PathBuf>,
    respare: &mut Vec<(Side, JobMounts, Limits)>,
) -> Result<Container, String> {
    let Some((mut mounts, limits, handle)) = creation else {
        return Err("no container was created".to_owned());
    };
    let waited = Instant::now();
    let container = handle
        .await
        .unwrap_or_else(|e| Err(format!("creating the container: {e}")));
    tracing::debug!(%side, waited = ?waited.elapsed(), "container ready");
    if container.is_ok() {
        if let Some(target) = slot_target {
            mounts.target = target;
        }
        respare.push((side, mounts, limits));
    }
    container
}

impl Inner {
    /// The configured limits plus the job's extra memory.
    pub(super) fn side_limits(&self, spec: &JobSpec) -> Limits {
        Limits {
            memory_bytes: self.config.limits.memory_bytes
                + (u64::from(spec.extra_memory_mib) << 20),
            ..self.config.limits.clone()
        }
    }

    fn spawn_create(&self, mounts: JobMounts, limits: Limits) -> Creation {
        let sandbox = self.sandbox.clone();
        self.background.spawn(async move {
            sandbox
                .create(mounts, limits)
                .await
                .map_err(|e| sandbox_reason(&e))
        })
    }

    /// The container for a side of a job in `slot`: the slot's spare for that side when it has the
    /// same mounts and limits, otherwise one created now.
    pub(super) fn container_for(
        &self,
        slot: u32,
        side: Side,
        mounts: &JobMounts,
        limits: &Limits,
    ) -> Creation {
        let spare = lock(&self.spares).remove(&(slot, side));
        if let Some(spare) = spare {
            if spare.mounts == *mounts && spare.limits == *limits {
                lock(&self.stats).spare_hits += 1;
                return spare.creation;
            }
            discard(spare.creation);
        }
        lock(&self.stats).spare_misses += 1;
        self.spawn_create(mounts.clone(), limits.clone())
    }

    /// After a job's steps: removes its containers and starts creating the slot's spares, in the
    /// background.
    pub(super) fn after_job(&self, slot: u32, after: AfterSteps) {
        let AfterSteps { used, respare } = after;
        for container in used {
            self.background.spawn(async move {
                if let Err(e) = container.remove().await {
                    tracing::warn!(error = %e, "could not remove a sandbox container");
                }
            });
        }
        for (side, mounts, limits) in respare {
            self.replenish(slot, side, mounts, limits);
        }
    }

    /// Starts creating the slot's spare for its next job on `side`.
    fn replenish(&self, slot: u32, side: Side, mounts: JobMounts, limits: Limits) {
        let creation = self.spawn_create(mounts.clone(), limits.clone());
        self.keep_spare(slot, side, (mounts, limits, creation));
    }

    /// Keeps a container (being) made with `mounts` and `limits` for the slot's next job on
    /// `side`, replacing an older spare.
    pub(super) fn keep_spare(&self, slot: u32, side: Side, (mounts, limits, creation): Made) {
        let spare = Spare {
            mounts,
            limits,
            creation,
        };
        if let Some(old) = lock(&self.spares).insert((slot, side), spare) {
            discard(old.creation);
        }
    }

    /// The containers a cancelled job did not use (nothing ran in them) become the slot's spares.
    pub(super) fn keep_unused(&self, slot: u32, creations: &mut [Option<Made>]) {
        for (side, made) in Side::BOTH.into_iter().zip(creations.iter_mut()) {
            if let Some(made) = made.take() {
                self.keep_spare(slot, side, made);
            }
        }
    }
}
