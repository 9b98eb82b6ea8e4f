//! [`FakeExecutor`]: scripted outcomes and delays instead of real builds (feature `testing`).
//!
//! For tests of the worker's session logic and for the master's end-to-end tests, where what
//! matters is the protocol, not cargo. It counts its runs, tracks how many run at once, honours
//! cancellation, and can hold jobs at named gates until the test opens them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use caldera_core::crates::CrateId;
use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::{Toolchain, ToolchainIdentity, ToolchainSource};
use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::executor::{Assignment, Executor, JobOutput, SideOutput};

/// What the fake does with one crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeBehaviour {
    pub start: Outcome,
    pub end: Outcome,
    /// How long a run takes.
    pub delay: Duration,
    /// After the delay, wait until [`FakeExecutor::open_gate`] opens the gate of this name.
    pub gate: Option<String>,
    /// The outcomes of confirmation runs (`JobSpec::run > 0`), when they differ from the first
    /// run's (a flaky crate).
    pub reruns: Option<(Outcome, Outcome)>,
}

impl Default for FakeBehaviour {
    /// Both sides pass, at once.
    fn default() -> Self {
        FakeBehaviour::outcomes(Outcome::TestPass, Outcome::TestPass)
    }
}

impl FakeBehaviour {
    pub fn outcomes(start: Outcome, end: Outcome) -> Self {
        FakeBehaviour {
            start,
            end,
            delay: Duration::ZERO,
            gate: None,
            reruns: None,
        }
    }

    /// Confirmation runs (run > 0) end with these outcomes instead.
    pub fn on_reruns(mut self, start: Outcome, end: Outcome) -> Self {
        self.reruns = Some((start, end));
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Hold runs until the gate `name` opens (cancellation still stops them).
    pub fn gated(mut self, name: &str) -> Self {
        self.gate = Some(name.to_owned());
        self
    }
}

/// Counters, updated as runs start and end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Runs started.
    pub started: usize,
    /// Runs that completed (not cancelled).
    pub finished: usize,
    /// Runs stopped by their cancellation token.
    pub cancelled: usize,
    /// Runs going on now.
    pub running: usize,
    /// The most runs ever going on at once.
    pub max_running: usize,
    /// Job ids in the order their runs started.
    pub jobs: Vec<u64>,
    /// Sides built by the runs that completed (a side the job's `only` leaves out is not).
    pub sides: usize,
}

/// An [`Executor`] with scripted results. Cheap to clone; clones share configuration and counters.
#[derive(Clone)]
pub struct FakeExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    default: Mutex<FakeBehaviour>,
    per_crate: Mutex<HashMap<String, FakeBehaviour>>,
    stats: Mutex<FakeStats>,
    changed: Notify,
    gates: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// toolchain name → the build this fake reports for it
    toolchains: Mutex<HashMap<String, ToolchainIdentity>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for FakeExecutor {
    fn default() -> Self {
        FakeExecutor::new()
    }
}

impl std::fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeExecutor")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FakeExecutor {
    /// Every crate passes on both sides, at once.
    pub fn new() -> Self {
        FakeExecutor {
            inner: Arc::new(Inner {
                default: Mutex::new(FakeBehaviour::default()),
                per_crate: Mutex::new(HashMap::new()),
                stats: Mutex::new(FakeStats::default()),
                changed: Notify::new(),
                gates: Mutex::new(HashMap::new()),
                toolchains: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// What crates without their own behaviour do.
    pub fn with_default(self, behaviour: FakeBehaviour) -> Self {
        *lock(&self.inner.default) = behaviour;
        self
    }

    /// What `krate` does: a full crate id (`reg:foo@1.0.0`, `git:…`, `local:…`) or, for registry
    /// crates, just the name (`foo`, any version). A full id wins over a name.
    pub fn with_crate(self, krate: &str, behaviour: FakeBehaviour) -> Self {
        self.set_crate(krate, behaviour);
        self
    }

    /// [`with_crate`](Self::with_crate) on a shared executor.
    pub fn set_crate(&self, krate: &str, behaviour: FakeBehaviour) {
        lock(&self.inner.per_crate).insert(krate.to_owned(), behaviour);
    }

    /// Report `identity` as the build of the toolchain `identity.toolchain` (its rustup name, or
    /// its path): each side run with that toolchain carries it in its result. Give a worker
    /// running this fake the same identities in `WorkerConfig::toolchains` (see
    /// [`identities`](Self::identities)).
    pub fn with_toolchain(self, identity: ToolchainIdentity) -> Self {
        lock(&self.inner.toolchains).insert(identity.toolchain.clone(), identity);
        self
    }

    /// The builds given with [`with_toolchain`](Self::with_toolchain), by name.
    pub fn identities(&self) -> Vec<ToolchainIdentity> {
        let mut all: Vec<ToolchainIdentity> =
            lock(&self.inner.toolchains).values().cloned().collect();
        all.sort_by(|a, b| a.toolchain.cmp(&b.toolchain));
        all
    }

    fn identity(&self, tc: &Toolchain) -> Option<ToolchainIdentity> {
        let name = match &tc.source {
            ToolchainSource::Rustup(name) => name,
            ToolchainSource::Path(path) => path,
        };
        lock(&self.inner.toolchains).get(name).cloned()
    }

    /// Let every run gated by `name` (waiting now or later) finish.
    pub fn open_gate(&self, name: &str) {
        self.gate(name).send_replace(true);
    }

    fn gate(&self, name: &str) -> watch::Sender<bool> {
        lock(&self.inner.gates)
            .entry(name.to_owned())
            .or_insert_with(|| watch::Sender::new(false))
            .clone()
    }

    pub fn stats(&self) -> FakeStats {
        lock(&self.inner.stats).clone()
    }

    /// How many runs started.
    pub fn runs(&self) -> usize {
        lock(&self.inner.stats).started
    }

    /// Wait until the counters satisfy `what`; returns them. Put a timeout around it.
    pub async fn wait_for(&self, what: impl Fn(&FakeStats) -> bool) -> FakeStats {
        loop {
            let changed = self.inner.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let stats = self.stats();
            if what(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    fn behaviour(&self, krate: &CrateId) -> FakeBehaviour {
        let per_crate = lock(&self.inner.per_crate);
        per_crate
            .get(&krate.to_string())
            .or_else(|| krate.registry_name().and_then(|n| per_crate.get(n)))
            .cloned()
            .unwrap_or_else(|| lock(&self.inner.default).clone())
    }

    fn update(&self, f: impl FnOnce(&mut FakeStats)) {
        f(&mut lock(&self.inner.stats));
        self.inner.changed.notify_waiters();
    }
}

/// Counts a run as going on until dropped (also when the run's future is dropped mid-way).
struct RunGuard(FakeExecutor);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.running -= 1);
    }
}

impl Executor for FakeExecutor {
    fn run(&self, job: Assignment, cancel: CancellationToken) -> BoxFuture<'static, JobOutput> {
        let this = self.clone();
        Box::pin(async move {
            let behaviour = this.behaviour(&job.spec.krate);
            this.update(|s| {
                s.started += 1;
                s.running += 1;
                s.max_running = s.max_running.max(s.running);
                s.jobs.push(job.job_id);
            });
            let guard = RunGuard(this.clone());
            let t0 = Instant::now();
            let gate = behaviour
                .gate
                .as_deref()
                .map(|name| this.gate(name).subscribe());
            let work = async {
                tokio::time::sleep(behaviour.delay).await;
                if let Some(mut gate) = gate {
                    // the sender lives in `this`, so this only ends when the gate opens
                    let _ = gate.wait_for(|open| *open).await;
                }
            };
            let cancelled = tokio::select! {
                () = cancel.cancelled() => true,
                () = work => false,
            };
            let duration = t0.elapsed();
            drop(guard);
            // the sides it builds: both, or the one `only` names
            let ran = |s: Side| job.spec.only.is_none_or(|only| only == s);
            let built = Side::BOTH.into_iter().filter(|s| ran(*s)).count();
            this.update(|s| {
                if cancelled {
                    s.cancelled += 1
                } else {
                    s.finished += 1;
                    s.sides += built;
                }
            });
            if cancelled {
                let side = SideOutput::error("cancelled", duration);
                return JobOutput {
                    start: side.clone(),
                    end: side,
                };
            }
            let side = |outcome: Outcome, tc: &Toolchain| SideOutput {
                outcome,
                steps: vec![
                    ("build".to_owned(), duration / 2),
                    ("test".to_owned(), duration / 2),
                ],
                peak_memory_bytes: 64 << 20,
                log_key: None,
                duration,
                toolchain: this.identity(tc),
                cache_key: None,
            };
            let (start, end) = match behaviour.reruns {
                Some(outcomes) if job.spec.run > 0 => outcomes,
                _ => (behaviour.start, behaviour.end),
            };
            JobOutput {
                start: match ran(Side::Start) {
                    true => side(start, &job.spec.start),
                    false => SideOutput::not_run(),
                },
                end: match ran(Side::End) {
                    true => side(end, &job.spec.end),
                    false => SideOutput::not_run(),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use caldera_core::job::JobSpec;
    use caldera_core::outcome::BuildFailReason;

    use super::*;

    fn job(id: u64, krate: &str) -> Assignment {
        let spec = caldera_proto::v1::JobSpec {
            experiment: "e".into(),
            crate_id: krate.into(),
            start: "stable".into(),
            end: "nightly".into(),
            mode: "build-and-test".into(),
            cap_lints: "forbid".into(),
            ..Default::default()
        };
        Assignment {
            job_id: id,
            attempt: 1,
            spec: JobSpec::try_from(spec).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_job_with_one_side_settled_runs_only_the_other() {
        let broken = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        });
        let fake = FakeExecutor::new()
            .with_default(FakeBehaviour::outcomes(broken.clone(), Outcome::TestPass));
        for (only, start, end) in [
            (None, broken.clone(), Outcome::TestPass),
            (Some(Side::Start), broken.clone(), Outcome::Skipped),
            (Some(Side::End), Outcome::Skipped, Outcome::TestPass),
        ] {
            let mut j = job(1, "reg:a@1.0.0");
            j.spec.only = only;
            let out = fake.run(j, CancellationToken::new()).await;
            assert_eq!(
                (&out.start.outcome, &out.end.outcome),
                (&start, &end),
                "{only:?}"
            );
            let not_run = [&out.start, &out.end]
                .into_iter()
                .filter(|s| **s == SideOutput::not_run())
                .count();
            assert_eq!(not_run, usize::from(only.is_some()), "{only:?}");
        }
    }

    #[tokio::test]
    async fn outcomes_per_crate_gate_and_cancel() {
        let broken = Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        });
        let fake = FakeExecutor::new()
            .with_crate(
                "regresses",
                FakeBehaviour::outcomes(Outcome::TestPass, broken.clone()),
            )
            .with_crate(
                "reg:pinned@2.0.0",
                FakeBehaviour::outcomes(Outcome::Skipped, Outcome::Skipped),
            )
            .with_crate("slow", FakeBehaviour::default().gated("slow"))
            .with_crate("other", FakeBehaviour::default().gated("other"));

        let out = fake
            .run(job(1, "reg:regresses@1.0.0"), CancellationToken::new())
            .await;
        assert_eq!(
            (out.start.outcome, out.end.outcome),
            (Outcome::TestPass, broken)
        );
        let out = fake
            .run(job(2, "reg:pinned@2.0.0"), CancellationToken::new())
            .await;
        assert_eq!(out.end.outcome, Outcome::Skipped, "a full id matches");
        let out = fake
            .run(job(3, "reg:pinned@1.0.0"), CancellationToken::new())
            .await;
        assert_eq!(
            out.end.outcome,
            Outcome::TestPass,
            "another version falls back to the default"
        );

        // gated runs wait; cancel stops one, the gate releases the other
        let cancel = CancellationToken::new();
        let a = tokio::spawn(fake.run(job(4, "reg:slow@1.0.0"), cancel.clone()));
        let b = tokio::spawn(fake.run(job(5, "reg:slow@1.0.0"), CancellationToken::new()));
        let stats = fake.wait_for(|s| s.running == 2).await;
        assert_eq!(stats.max_running, 2);
        cancel.cancel();
        assert!(matches!(
            a.await.unwrap().start.outcome,
            Outcome::Error { .. }
        ));
        assert_eq!(fake.stats().cancelled, 1);
        assert!(!b.is_finished());
        fake.open_gate("other");
        tokio::task::yield_now().await;
        assert!(!b.is_finished(), "another gate does not release it");
        fake.open_gate("slow");
        assert_eq!(b.await.unwrap().start.outcome, Outcome::TestPass);
        let stats = fake.stats();
        assert_eq!(
            stats,
            FakeStats {
                started: 5,
                finished: 4,
                cancelled: 1,
                running: 0,
                max_running: 2,
                jobs: vec![1, 2, 3, 4, 5],
                sides: 8,
            }
        );
        assert_eq!(fake.runs(), 5);
    }
}
