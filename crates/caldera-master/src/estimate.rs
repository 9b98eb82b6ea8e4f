//! The cost estimate of an experiment: the inputs of [`caldera_core::estimate`] gathered from
//! the database (the mode's history, the jobs, the connected slots) and the registry listing
//! (dependency counts, the model's feature).
//!
//! * Before the start ([`before_start`]): the selection resolved as the start would resolve it;
//!   overrides that `skip` or mark `broken` settle both sides.
//! * At the start ([`at_start`], on the start's transaction, stored with it): the jobs just
//!   created; a side that already has a result is settled (by the result cache when the row
//!   says it was copied, else by an override).
//! * While running ([`remaining`]): the queued and running jobs (confirmation runs included),
//!   a running job's time so far taken off.
//!
//! The history is the mode's, the experiment's own results left out.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use caldera_core::CrateId;
use caldera_core::estimate::{self, CrateHistory, Estimate, JobInput, Model, Sample, SidePlan};
use caldera_core::experiment::{ExperimentSpec, Mode};
use caldera_db::estimate::PlannedJob;
use caldera_db::experiments::ExperimentRow;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

/// Whether the mode builds the dev-dependencies (then they count as dependencies).
fn builds_dev_deps(mode: Mode) -> bool {
    matches!(mode, Mode::BuildAndTest | Mode::Miri)
}

/// The estimate of a queued experiment, from its selection resolved now.
pub async fn before_start(state: &AppState, row: &ExperimentRow) -> Result<Estimate, ApiError> {
    let registry = crate::resolve::Registry::of(state);
    let crates = crate::resolve::resolve(&state.pool, registry, &row.spec).await?;
    let jobs = crates
        .iter()
        .map(|c| {
            let settled = overridden(&row.spec, c);
            let plan = if settled {
                SidePlan::Settled
            } else {
                SidePlan::Run
            };
            JobInput {
                key: key_of(c),
                deps: None,
                sides: [plan, plan],
                elapsed_ms: 0,
            }
        })
        .collect();
    Ok(finish(state, row.spec.mode, row.id, jobs, false).await?)
}

/// Whether an override settles the crate without running it (`skip`, `broken`).
fn overridden(spec: &ExperimentSpec, c: &CrateId) -> bool {
    c.registry_name()
        .and_then(|n| spec.override_for(n))
        .is_some_and(|o| o.skip || o.broken.is_some())
}

/// The history key of a crate (see `caldera_db::estimate::KeyHistory::key`).
fn key_of(c: &CrateId) -> String {
    match c.registry_name() {
        Some(name) => name.to_owned(),
        None => c.to_string(),
    }
}

/// The estimate made at the start, on the start's transaction (which has created the jobs and
/// settled what overrides and the cache settle); stored on it.
pub async fn at_start(
    state: &AppState,
    pending: &mut caldera_db::experiments::PendingTransition,
) -> Result<Estimate, ApiError> {
    let id = pending.current.id;
    let planned = caldera_db::estimate::jobs_of(&mut *pending.tx, id).await?;
    let jobs = planned
        .iter()
        .filter(|j| j.run == 0)
        .map(|j| input(j, Utc::now()))
        .collect();
    let e = finish(state, pending.current.spec.mode, id, jobs, false).await?;
    caldera_db::estimate::store(&mut *pending.tx, id, &e, Utc::now()).await?;
    Ok(e)
}

/// What is left of a started experiment: its queued and running jobs (the history and model
/// reused for [`REUSE`]: this is the view polled while it runs).
pub async fn remaining(state: &AppState, row: &ExperimentRow) -> Result<Estimate, ApiError> {
    let planned = caldera_db::estimate::jobs_of(&state.pool, row.id).await?;
    let now = Utc::now();
    let jobs = planned
        .iter()
        .filter(|j| matches!(j.state.as_str(), "queued" | "running"))
        .map(|j| input(j, now))
        .collect();
    Ok(finish(state, row.spec.mode, row.id, jobs, true).await?)
}

/// A job as the estimator sees it: a side with a result recorded is settled (copied by the
/// result cache, or by an override, a `skip` or `broken`).
/// How long the views of a running experiment reuse the estimate of what is left: every view
/// shows it, and computing it reads every job of the experiment (≈ 1 s of the database for 40,000
/// jobs on a quiet machine, minutes on a loaded one). Computing it per request, 50 clients polling
/// one 40,000-job experiment saturated the pool (`cargo xtask bench fleet`: API p99 288 s, 503s).
/// `GET …/estimate` stays fresh.
const VIEW_REUSE: Duration = Duration::from_secs(15);
/// How long a view waits for a refresh before it shows the last value (or none).
const VIEW_WAIT: Duration = Duration::from_secs(2);
/// Experiments whose estimate nobody viewed for this long are forgotten.
const VIEW_FORGET: Duration = Duration::from_secs(600);

struct Viewed {
    /// The last estimate and when it was made.
    last: tokio::sync::watch::Sender<Option<(Instant, Estimate)>>,
    refreshing: bool,
}

static VIEWED: LazyLock<Mutex<HashMap<Uuid, Viewed>>> = LazyLock::new(Default::default);

fn viewed() -> std::sync::MutexGuard<'static, HashMap<Uuid, Viewed>> {
    VIEWED.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`remaining`] for the views, which never wait long for it: a value younger than
/// [`VIEW_REUSE`] is reused; otherwise one refresh at a time runs in the background, and the view
/// waits for it at most [`VIEW_WAIT`] before it shows the last value (`None` before the first).
pub async fn remaining_for_view(state: &AppState, row: &ExperimentRow) -> Option<Estimate> {
    let mut next = {
        let mut viewed = viewed();
        viewed.retain(|_, v| {
            v.refreshing
                || v.last
                    .borrow()
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < VIEW_FORGET)
        });
        let v = viewed.entry(row.id).or_insert_with(|| Viewed {
            last: tokio::sync::watch::channel(None).0,
            refreshing: false,
        });
        if let Some((at, e)) = v.last.borrow().as_ref()
            && at.elapsed() < VIEW_REUSE
        {
            return Some(e.clone());
        }
        if !v.refreshing {
            v.refreshing = true;
            tokio::spawn(refresh_view(state.clone(), row.clone()));
        }
        v.last.subscribe()
    };
    let _ = tokio::time::timeout(VIEW_WAIT, next.changed()).await;
    next.borrow().as_ref().map(|(_, e)| e.clone())
}

async fn refresh_view(state: AppState, row: ExperimentRow) {
    let made = remaining(&state, &row).await;
    let mut viewed = viewed();
    let Some(v) = viewed.get_mut(&row.id) else {
        return;
    };
    v.refreshing = false;
    match made {
        Ok(e) => {
            v.last.send_replace(Some((Instant::now(), e)));
        }
        Err(e) => {
            tracing::warn!(experiment = %row.name, error = ?e, "estimating what is left failed")
        }
    }
}

fn input(j: &PlannedJob, now: DateTime<Utc>) -> JobInput {
    let plan = |recorded: &Option<caldera_db::estimate::Recorded>| match recorded {
        None => SidePlan::Run,
        Some(r) if r.cached => SidePlan::Cached,
        Some(_) => SidePlan::Settled,
    };
    let elapsed_ms = match (j.state.as_str(), j.claimed_at) {
        ("running", Some(at)) => u64::try_from((now - at).num_milliseconds()).unwrap_or(0),
        _ => 0,
    };
    JobInput {
        key: j.key.clone(),
        deps: None,
        sides: [plan(&j.recorded[0]), plan(&j.recorded[1])],
        elapsed_ms,
    }
}

/// How long [`remaining`] (the view that `watch` and the dashboard poll) reuses a running
/// experiment's history and model: its own results are not in its history, so only other
/// experiments finishing meanwhile change them. The history query reads every result of the
/// mode's 20 newest experiments (≈ 0.3 s at 20 × 5,000 crates on the 2-core test machine).
const REUSE: Duration = Duration::from_secs(120);

/// A mode's history by key, and the model fitted on it.
type Fitted = Arc<(HashMap<String, CrateHistory>, Model)>;

/// What [`remaining`] reuses, by experiment.
static FITTED: LazyLock<Mutex<HashMap<Uuid, (Instant, Fitted)>>> = LazyLock::new(Default::default);

/// The dependency count of a history key (a registry name) in the listing.
fn deps_of(state: &AppState, mode: Mode, key: &str, registry: bool) -> Option<u32> {
    let listing = state.registry.as_deref().filter(|_| registry)?;
    let n = listing.dependency_count(key, builds_dev_deps(mode))?;
    u32::try_from(n).ok()
}

/// The mode's history (the experiment's own results left out) and the model fitted on it;
/// kept for [`REUSE`] when `reuse`.
async fn fitted(
    state: &AppState,
    mode: Mode,
    experiment: Uuid,
    reuse: bool,
) -> Result<Fitted, caldera_db::DbError> {
    let lock = || FITTED.lock().unwrap_or_else(|p| p.into_inner());
    if reuse
        && let Some((at, f)) = lock().get(&experiment)
        && at.elapsed() < REUSE
    {
        return Ok(f.clone());
    }
    let history = caldera_db::estimate::mode_history(&state.pool, mode, Some(experiment)).await?;
    let samples: Vec<Sample> = history
        .iter()
        .map(|h| Sample {
            deps: deps_of(state, mode, &h.key, h.registry),
            side_ms: h.median_ms,
        })
        .collect();
    let model = estimate::fit(&samples);
    let by_key: HashMap<String, CrateHistory> = history
        .into_iter()
        .map(|h| {
            let sides = u64::try_from(h.sides).unwrap_or(0);
            (
                h.key,
                CrateHistory {
                    sides,
                    median_ms: h.median_ms,
                },
            )
        })
        .collect();
    let f: Fitted = Arc::new((by_key, model));
    if reuse {
        let mut kept = lock();
        kept.retain(|_, (at, _)| at.elapsed() < REUSE);
        kept.insert(experiment, (Instant::now(), f.clone()));
    }
    Ok(f)
}

/// The history, the model fitted on it, the slots; then the estimate of `jobs`.
async fn finish(
    state: &AppState,
    mode: Mode,
    experiment: Uuid,
    mut jobs: Vec<JobInput>,
    reuse: bool,
) -> Result<Estimate, caldera_db::DbError> {
    let f = fitted(state, mode, experiment, reuse).await?;
    let (by_key, model) = &*f;
    for j in &mut jobs {
        // registry names hold no ':'; other crates' keys are ids (`git:…`, `path:…`)
        j.deps = deps_of(state, mode, &j.key, !j.key.contains(':'));
    }
    let slots = caldera_db::estimate::connected_slots(&state.pool).await?;
    Ok(estimate::estimate(&jobs, by_key, model, slots))
}

/// The estimate kept from the start of `row` against what the run cost (so far, while it
/// runs), for the report; `None` when no estimate was kept (started before estimates were).
pub async fn comparison(
    pool: &caldera_db::PgPool,
    row: &ExperimentRow,
) -> Result<Option<caldera_report::cost::CostComparison>, caldera_db::DbError> {
    let Some(stored) = caldera_db::estimate::stored(pool, row.id).await? else {
        return Ok(None);
    };
    let actual = caldera_db::estimate::actual(pool, row.id).await?;
    let e = stored.estimate;
    let wall_ms = row
        .started_at
        .zip(row.finished_at)
        .and_then(|(s, f)| u64::try_from((f - s).num_milliseconds()).ok());
    Ok(Some(caldera_report::cost::CostComparison {
        estimated_sides: e.sides_to_run,
        sides_run: u64::try_from(actual.sides_run).unwrap_or(0),
        estimated_cpu_ms: e.cpu_ms,
        cpu_ms: u64::try_from(actual.cpu_ms).unwrap_or(0),
        estimated_wall_ms: e.wall_ms,
        wall_ms,
        method: e.method,
    }))
}
