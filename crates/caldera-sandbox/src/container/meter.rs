//! What a step is measured with: its output capture and the cgroup's counters, read at its start
//! and at its end marker, and the engine's OOM events and memory stats when the cgroup cannot be
//! read from here.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, StatsOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;

use super::Container;
use crate::cgroup::{ContainerCgroup, PeakMeter};
use crate::log::LogCapture;
use crate::spec::{StepResult, TimeoutKind};

/// What a step is measured with while it runs: its start, output capture, and the cgroup's
/// counters and high-water mark as they were at its start.
pub(super) struct StepMeter {
    pub(super) start: Instant,
    pub(super) capture: LogCapture,
    cgroup: Option<ContainerCgroup>,
    oom_before: Option<u64>,
    pids_events_before: Option<u64>,
    peak: PeakMeter,
}

impl StepMeter {
    pub(super) async fn start(cgroup: Option<&ContainerCgroup>, log_cap: usize) -> StepMeter {
        let (oom_before, pids_events_before, peak) = match cgroup {
            Some(cg) => (
                cg.oom_kills().await,
                cg.pids_max_events().await,
                cg.start_peak().await,
            ),
            None => (None, None, PeakMeter::None),
        };
        StepMeter {
            start: Instant::now(),
            capture: LogCapture::new(log_cap),
            cgroup: cgroup.cloned(),
            oom_before,
            pids_events_before,
            peak,
        }
    }

    /// The step's result, read before anything is killed (a killed container's cgroup is gone).
    pub(super) async fn finish(
        mut self,
        exit_code: Option<i64>,
        timed_out: Option<TimeoutKind>,
    ) -> StepResult {
        let counters = self.counters().await;
        self.into_result(counters, exit_code, timed_out)
    }

    /// OOM kill, pids limit hit and peak memory since the step started.
    pub(super) async fn counters(&mut self) -> (bool, bool, Option<u64>) {
        let mut oom_killed = false;
        let mut pids_limit_hit = false;
        if let Some(cg) = &self.cgroup {
            if let (Some(before), Some(after)) = (self.oom_before, cg.oom_kills().await) {
                oom_killed = after > before;
            }
            if let (Some(before), Some(after)) =
                (self.pids_events_before, cg.pids_max_events().await)
            {
                pids_limit_hit = after > before;
            }
        }
        let peak = std::mem::replace(&mut self.peak, PeakMeter::None);
        (oom_killed, pids_limit_hit, peak.read().await)
    }

    pub(super) fn into_result(
        self,
        (oom_killed, pids_limit_hit, peak_memory_bytes): (bool, bool, Option<u64>),
        exit_code: Option<i64>,
        timed_out: Option<TimeoutKind>,
    ) -> StepResult {
        StepResult {
            exit_code: if timed_out.is_some() { None } else { exit_code },
            timed_out,
            oom_killed,
            pids_limit_hit,
            peak_memory_bytes,
            duration: self.start.elapsed(),
            output: self.capture.finish(),
        }
    }
}

/// Aborts the task it holds when dropped.
pub(super) struct AbortOnDrop(pub(super) Option<tokio::task::JoinHandle<bool>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl Container {
    /// Watches the engine's events for an OOM in this container (used when the cgroup is not
    /// readable from here).
    pub(super) fn watch_oom_events(&self) -> tokio::task::JoinHandle<bool> {
        let docker = self.docker.clone();
        let id = self.id.clone();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let since_nanos = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
        // Sub-second precision, so an OOM of the previous step in the same second is not replayed.
        let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
        tokio::spawn(async move {
            let filters: HashMap<&str, Vec<&str>> = HashMap::from([
                ("container", vec![id.as_str()]),
                ("event", vec!["oom"]),
                ("type", vec!["container"]),
            ]);
            let mut events = docker.events(Some(
                EventsOptionsBuilder::default()
                    .since(&since)
                    .filters(&filters)
                    .build(),
            ));
            while let Some(Ok(event)) = events.next().await {
                if event.time_nano.is_none_or(|t| t >= since_nanos) {
                    return true;
                }
            }
            false
        })
    }

    /// The container's memory high-water mark from the engine's stats (cgroup v1 engines only).
    async fn stats_max_usage(&self) -> Option<u64> {
        let mut stats = self.docker.stats(
            &self.id,
            Some(
                StatsOptionsBuilder::default()
                    .stream(false)
                    .one_shot(true)
                    .build(),
            ),
        );
        let stats = stats.next().await?.ok()?;
        stats.memory_stats?.max_usage.filter(|&m| m > 0)
    }

    /// Adds to the last step's result what is known only after its exec: an OOM kill the engine
    /// reported (when the cgroup is not read from here, `oom_watch`), the engine's memory
    /// high-water mark when the cgroup gave none, and, if the container died, whether PID 1 itself
    /// was the OOM victim (not after a timeout, which killed it).
    pub(super) async fn add_late_facts(
        &self,
        last: &mut StepResult,
        oom_watch: &mut AbortOnDrop,
        timed_out: bool,
    ) {
        if let Some(watch) = oom_watch.0.take() {
            if !last.success() {
                // Give the engine's event a moment to arrive after the process died.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            watch.abort();
            last.oom_killed |= watch.await.unwrap_or(false);
        }
        if last.peak_memory_bytes.is_none() {
            last.peak_memory_bytes = self.stats_max_usage().await;
        }
        if self.needs_start {
            // PID 1 itself may have been the OOM victim.
            if let Ok(inspect) = self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
                && let Some(state) = inspect.state
            {
                last.oom_killed |= state.oom_killed == Some(true) && !timed_out;
            }
        }
    }
}
