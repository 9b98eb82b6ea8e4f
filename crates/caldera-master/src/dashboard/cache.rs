//! A cache of built reports, one per experiment, so pages over hundreds of thousands of results
//! answer in milliseconds.
//!
//! A [`Snapshot`] is built from Postgres ([`caldera_db::results::report_input`] then
//! [`Report::build`] on a blocking thread) and kept with the number of result rows it was built
//! from. Results are append-only, so that count changes exactly when the results do.
//!
//! Staleness is bounded: a snapshot is served without asking Postgres for at most
//! [`CacheConfig::revalidate`]; after that, one count query tells whether results changed. When
//! they did, the stale snapshot is still served while one rebuild runs in the background (at most
//! one per experiment, and none sooner than [`CacheConfig::min_rebuild`] after the previous build,
//! so a running experiment that receives results every second is not rebuilt every second). Only
//! the first request for an experiment waits for a build. Snapshots are evicted, least recently
//! used first, when together they hold more than [`CacheConfig::max_crates`] crates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_db::{DbError, PgPool};
use caldera_report::Report;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// How reports are cached.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Serve a snapshot this long without checking whether results changed.
    pub revalidate: Duration,
    /// Rebuild a changed snapshot no sooner than this after its last build.
    pub min_rebuild: Duration,
    /// Most crates held by all snapshots together (at least one snapshot is always kept).
    pub max_crates: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            revalidate: Duration::from_secs(1),
            min_rebuild: Duration::from_secs(5),
            max_crates: 4_000_000,
        }
    }
}

/// An experiment's report as of a number of results.
pub struct Snapshot {
    pub report: Report,
    /// For each root regression, the other regressions attributed to it, in report order.
    pub dependents: HashMap<CrateId, Vec<CrateId>>,
    /// Result rows the report was built from.
    pub results: i64,
    /// The source experiments of the sides the result cache settled, with their counts.
    pub cached: Vec<(String, usize)>,
    pub built_at: DateTime<Utc>,
    /// How long loading and building took.
    pub build_time: Duration,
    built: Instant,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("report", &self.report)
            .field("results", &self.results)
            .field("built_at", &self.built_at)
            .finish_non_exhaustive()
    }
}

/// The regressions attributed to each root regression, other than the root itself.
pub fn dependents(report: &Report) -> HashMap<CrateId, Vec<CrateId>> {
    let mut out: HashMap<CrateId, Vec<CrateId>> = HashMap::new();
    for c in report.regressions() {
        for root in c.root_causes() {
            if root != c.krate() {
                out.entry(root.clone()).or_default().push(c.krate().clone());
            }
        }
    }
    out
}

/// Loads an experiment's results and builds its report (on a blocking thread).
pub async fn build(pool: &PgPool, experiment_id: Uuid) -> Result<Snapshot, DbError> {
    let started = Instant::now();
    let before = caldera_db::results::count(pool, experiment_id).await?;
    let input = caldera_db::results::report_input(pool, experiment_id, false).await?;
    let cached =
        crate::cache::sources(&caldera_db::cache::of_experiment(pool, experiment_id).await?);
    let status = crate::export::confirmation(pool, experiment_id)
        .await?
        .status;
    // the spec does not change after the start, so a snapshot keyed by the result count stays right
    let spec = caldera_db::experiments::specs(pool, &[experiment_id])
        .await?
        .into_iter()
        .next()
        .map(|(_, spec)| spec);
    let (report, dependents) = tokio::task::spawn_blocking(move || {
        let quiet =
            |k: &caldera_core::crates::CrateId| spec.as_ref().is_some_and(|s| s.is_quiet(k));
        let report = Report::build_with(input, quiet, status).map_err(|e| DbError::Corrupt {
            table: "results",
            message: e.to_string(),
        })?;
        let dependents = dependents(&report);
        Ok::<_, DbError>((report, dependents))
    })
    .await
    .map_err(|e| DbError::Corrupt {
        table: "results",
        message: format!("report build panicked: {e}"),
    })??;
    Ok(Snapshot {
        // Rows written while loading may or may not be in the report: key it by the count from
        // before, so such a change is picked up by the next revalidation.
        results: before,
        cached,
        report,
        dependents,
        built_at: Utc::now(),
        build_time: started.elapsed(),
        built: Instant::now(),
    })
}

#[derive(Default)]
struct SlotState {
    snapshot: Option<Arc<Snapshot>>,
    checked: Option<Instant>,
    used: Option<Instant>,
    rebuilding: bool,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held while the first build of the slot runs, so concurrent first requests wait for it.
    first_build: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports per experiment; see the module docs.
pub struct ReportCache {
    config: CacheConfig,
    slots: Mutex<HashMap<Uuid, Arc<Slot>>>,
}

impl ReportCache {
    pub fn new(config: CacheConfig) -> Arc<ReportCache> {
        Arc::new(ReportCache {
            config,
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, id: Uuid) -> Arc<Slot> {
        lock(&self.slots).entry(id).or_default().clone()
    }

    /// The experiment's report, built or revalidated as the module docs say.
    pub async fn get(
        self: &Arc<Self>,
        pool: &PgPool,
        experiment_id: Uuid,
    ) -> Result<Arc<Snapshot>, DbError> {
        let slot = self.slot(experiment_id);
        let now = Instant::now();
        let (snapshot, fresh) = {
            let mut st = lock(&slot.state);
            st.used = Some(now);
            let fresh = st
                .checked
                .is_some_and(|c| now.duration_since(c) < self.config.revalidate);
            (st.snapshot.clone(), fresh)
        };
        if let Some(snapshot) = snapshot {
            if fresh {
                return Ok(snapshot);
            }
            let count = caldera_db::results::count(pool, experiment_id).await?;
            let rebuild = {
                let mut st = lock(&slot.state);
                st.checked = Some(Instant::now());
                let due = snapshot.built.elapsed() >= self.config.min_rebuild;
                let start = count != snapshot.results && due && !st.rebuilding;
                if start {
                    st.rebuilding = true;
                }
                start
            };
            if rebuild {
                let cache = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    let built = build(&pool, experiment_id).await;
                    let slot = cache.slot(experiment_id);
                    let mut st = lock(&slot.state);
                    st.rebuilding = false;
                    match built {
                        Ok(s) => {
                            st.snapshot = Some(Arc::new(s));
                            st.checked = Some(Instant::now());
                            drop(st);
                            cache.evict(experiment_id);
                        }
                        Err(e) => {
                            tracing::warn!(experiment = %experiment_id, error = %e, "cannot rebuild the report; serving the previous one")
                        }
                    }
                });
            }
            return Ok(snapshot);
        }
        let _building = slot.first_build.lock().await;
        if let Some(s) = lock(&slot.state).snapshot.clone() {
            return Ok(s);
        }
        let snapshot = Arc::new(build(pool, experiment_id).await?);
        {
            let mut st = lock(&slot.state);
            st.snapshot = Some(snapshot.clone());
            st.checked = Some(Instant::now());
        }
        self.evict(experiment_id);
        Ok(snapshot)
    }

    /// Drops the snapshot of an experiment (e.g. when it is deleted).
    pub fn forget(&self, experiment_id: Uuid) {
        lock(&self.slots).remove(&experiment_id);
    }

    /// Crates held by all snapshots.
    pub fn crates(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter_map(|s| lock(&s.state).snapshot.as_ref().map(|s| s.report.len()))
            .sum()
    }

    /// Evicts least recently used snapshots other than `keep` while over the crate budget.
    fn evict(&self, keep: Uuid) {
        let mut slots = lock(&self.slots);
        loop {
            let mut total = 0;
            let mut oldest: Option<(Instant, Uuid)> = None;
            for (id, slot) in slots.iter() {
                let st = lock(&slot.state);
                if let Some(s) = &st.snapshot {
                    total += s.report.len();
                    let used = st.used.unwrap_or_else(Instant::now);
                    if *id != keep && oldest.is_none_or(|(t, _)| used < t) {
                        oldest = Some((used, *id));
                    }
                }
            }
            match oldest {
                Some((_, id)) if total > self.config.max_crates => {
                    slots.remove(&id);
                }
                _ => return,
            }
        }
    }
}
