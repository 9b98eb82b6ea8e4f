//! The result cache at an experiment's start: which sides an earlier result settles, and the
//! objects they bring along (see "Result cache" in docs/ARCHITECTURE.md).
//!
//! 1. [`agreed`]: the environment and, per side, the toolchain build that *every* connected worker
//!    advertises (sandbox image, limits, classifier version in `Hello`); when they disagree, or
//!    one does not say, the side gets no key — a key the running workers might not match would
//!    settle a side with a result another worker could not reproduce.
//! 2. [`wanted`]: each crate's key per side (`caldera_core::fingerprint::cache_key`), from the job
//!    spec exactly as the dispatcher will build it (`scheduler::dispatch::job_spec`).
//! 3. [`prepare`]: the lookup (`caldera_db::cache::lookup`), then per crate: both sides settled
//!    only from one source experiment (one lockfile); the source's lockfile copied to this
//!    experiment's lockfile key, so the side that still runs builds with it; each settled side's
//!    log copied into this experiment's prefix (the logs API reads only there, and a deleted
//!    source takes its objects along). A crate whose lockfile or log cannot be copied runs.
//! 4. [`apply`], on the start's transaction: the rows, the jobs (`done`, or one side only) and
//!    the pins of the settled sides.
//!
//! Later, [`relocate_borrowed_logs`]: when an experiment is deleted, the logs of its re-runs
//! that other experiments' confirmation runs took over are copied into those experiments.

use std::collections::BTreeMap;

use caldera_core::crates::CrateId;
use caldera_core::experiment::ExperimentSpec;
use caldera_core::fingerprint::{Environment, SideInputs, cache_key};
use caldera_core::job::Side;
use caldera_core::toolchain::{Toolchain, ToolchainIdentity, ToolchainSource};
use caldera_db::cache::{Hit, Settle, Settled, Wanted};
use caldera_db::jobs::Claimed;
use caldera_storage::{ObjectStore, PutOptions, keys};
use futures::StreamExt;
use uuid::Uuid;

use crate::AppState;

/// What one connected worker advertised that the cache's keys need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    pub toolchains: Vec<ToolchainIdentity>,
    pub environment: Option<Environment>,
}

/// What every connected worker agrees on: the environment, and the build of each side's
/// toolchain (`None`: the workers disagree or do not say, and that side is not cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    pub environment: Environment,
    pub start: Option<ToolchainIdentity>,
    pub end: Option<ToolchainIdentity>,
}

impl Agreed {
    fn side(&self, side: Side) -> Option<&ToolchainIdentity> {
        match side {
            Side::Start => self.start.as_ref(),
            Side::End => self.end.as_ref(),
        }
    }
}

/// The name a toolchain's build is advertised under: its rustup name or its path.
fn lookup_name(tc: &Toolchain) -> &str {
    match &tc.source {
        ToolchainSource::Rustup(name) | ToolchainSource::Path(name) => name,
    }
}

/// What all `workers` agree on for `spec`; `None` without workers, or when their environments
/// differ or one is missing or incomplete.
pub fn agreed(workers: &[Advertised], spec: &ExperimentSpec) -> Option<Agreed> {
    let first = workers.first()?.environment.clone()?;
    if !first.is_complete()
        || workers
            .iter()
            .any(|w| w.environment.as_ref() != Some(&first))
    {
        return None;
    }
    let build = |tc: &Toolchain| -> Option<ToolchainIdentity> {
        let name = lookup_name(tc);
        let of = |w: &Advertised| w.toolchains.iter().find(|t| t.toolchain == name).cloned();
        let one = of(&workers[0])?;
        workers
            .iter()
            .all(|w| of(w).is_some_and(|t| t.mismatch(&one).is_none()))
            .then_some(one)
    };
    Some(Agreed {
        environment: first,
        start: build(&spec.start),
        end: build(&spec.end),
    })
}

/// The key of every side of `crates` that can have one. Crates the overrides settle (`skip`,
/// `broken`) are left out: they do not run anyway.
pub fn wanted(spec: &ExperimentSpec, crates: &[CrateId], agreed: &Agreed) -> Vec<Wanted> {
    let mut out = Vec::new();
    for krate in crates {
        let ov = krate.registry_name().and_then(|n| spec.override_for(n));
        if ov.is_some_and(|o| o.skip || o.broken.is_some()) {
            continue;
        }
        // the job spec exactly as the dispatcher builds it for the first run
        let claimed = Claimed {
            job_id: 0,
            lease_token: Uuid::nil(),
            attempt: 0,
            experiment_id: Uuid::nil(),
            experiment: spec.name.clone(),
            crate_id: krate.to_string(),
            run: 0,
        };
        let Ok(job) = crate::scheduler::job_spec(spec, &claimed) else {
            continue;
        };
        for side in Side::BOTH {
            let Some(identity) = agreed.side(side) else {
                continue;
            };
            let inputs = SideInputs::of_job(&job, side, identity, &agreed.environment);
            if let Some(key) = cache_key(&inputs) {
                out.push(Wanted {
                    krate: job.krate.to_string(),
                    side,
                    key,
                });
            }
        }
    }
    out
}

/// The hits to use: per crate, both sides only from one source experiment (they must share a
/// lockfile); when the newest hits of the two sides come from different experiments, the start
/// side's is kept and the end side runs.
pub fn choose(hits: Vec<Hit>) -> BTreeMap<String, Vec<Hit>> {
    let mut per_crate: BTreeMap<String, Vec<Hit>> = BTreeMap::new();
    for hit in hits {
        per_crate.entry(hit.krate.clone()).or_default().push(hit);
    }
    for hits in per_crate.values_mut() {
        hits.sort_by_key(|h| h.side);
        if let [a, b] = hits.as_slice()
            && a.source != b.source
        {
            hits.truncate(1);
        }
    }
    per_crate
}

/// What the start settles from the cache, ready for [`apply`].
#[derive(Debug, Default)]
pub struct Prepared {
    pub sides: Vec<Settle>,
    /// the build each settled side's key was computed with
    pub pins: Vec<(Side, ToolchainIdentity)>,
}

/// Look the experiment's sides up and copy what the settled ones need (before the start's
/// transaction: it reads storage). Nothing when the spec says `"cache": false`, the operator's
/// maximum age is zero, or the connected workers do not agree.
pub async fn prepare(
    state: &AppState,
    spec: &ExperimentSpec,
    crates: &[CrateId],
) -> Result<Prepared, caldera_db::DbError> {
    let max_age = state.scheduler.config().result_cache_max_age;
    if !spec.cache || max_age.is_zero() {
        return Ok(Prepared::default());
    }
    let Some(agreed) = agreed(&state.scheduler.advertised(), spec) else {
        tracing::info!(
            experiment = spec.name,
            "result cache: the connected workers do not agree on an environment"
        );
        return Ok(Prepared::default());
    };
    let wanted = wanted(spec, crates, &agreed);
    let oldest =
        chrono::Utc::now() - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    let hits = caldera_db::cache::lookup(&state.pool, &wanted, oldest).await?;
    let mut out = Prepared::default();
    for (krate, hits) in choose(hits) {
        match copy_objects(state.store.as_ref(), spec, &krate, &hits).await {
            Ok(sides) => out.sides.extend(sides),
            Err(e) => {
                tracing::warn!(experiment = spec.name, %krate, error = %e, "result cache: objects not copied; the crate runs");
            }
        }
    }
    for side in Side::BOTH {
        if let Some(identity) = agreed.side(side)
            && out.sides.iter().any(|s| s.hit.side == side)
        {
            out.pins.push((side, identity.clone()));
        }
    }
    tracing::info!(
        experiment = spec.name,
        asked = wanted.len(),
        settled = out.sides.len(),
        "result cache looked up"
    );
    Ok(out)
}

/// Copy the source's lockfile of `krate` and the logs of its settled `hits` into the new
/// experiment's prefix; the sides to settle.
async fn copy_objects(
    store: &dyn ObjectStore,
    spec: &ExperimentSpec,
    krate: &str,
    hits: &[Hit],
) -> Result<Vec<Settle>, String> {
    let Some(first) = hits.first() else {
        return Ok(Vec::new());
    };
    let source_lock = keys::lockfile(&first.source_name, krate).map_err(|e| e.to_string())?;
    let lock = keys::lockfile(&spec.name, krate).map_err(|e| e.to_string())?;
    // a source without a stored lockfile (a worker that never stored one) brings none: the
    // sides that still run then generate it as always
    copy(store, &source_lock, &lock, true).await?;
    let mut out = Vec::new();
    for hit in hits {
        let log_key = match &hit.log_key {
            Some(src) => {
                let src =
                    caldera_storage::ObjectKey::new(src.clone()).map_err(|e| e.to_string())?;
                let sides = (&spec.start, &spec.end);
                let dst = side_log_key(&spec.name, sides, hit.side, krate, 0)?;
                copy(store, &src, &dst, false).await?;
                Some(dst.to_string())
            }
            None => None,
        };
        out.push(Settle {
            hit: hit.clone(),
            log_key,
        });
    }
    Ok(out)
}

/// The key a worker stores the log of `krate`'s `side` of run `run` under, in the experiment
/// `name` of toolchains `(start, end)` (as the Docker executor's `spool_log` names it).
fn side_log_key(
    name: &str,
    (start, end): (&Toolchain, &Toolchain),
    side: Side,
    krate: &str,
    run: u32,
) -> Result<caldera_storage::ObjectKey, String> {
    let tc = match side {
        Side::Start => start,
        Side::End => end,
    };
    let same = side == Side::End && start == end;
    let krate = match krate.parse::<CrateId>() {
        Ok(id) => id.without_checksum().to_string(),
        Err(_) => krate.to_owned(),
    };
    keys::run_log(name, &tc.id(), &krate, run, same).map_err(|e| e.to_string())
}

/// Copy one object, with its content type, encoding and metadata; whether there was one. A
/// missing source is fine only when `optional`.
async fn copy(
    store: &dyn ObjectStore,
    from: &caldera_storage::ObjectKey,
    to: &caldera_storage::ObjectKey,
    optional: bool,
) -> Result<bool, String> {
    let object = match store.get(from).await {
        Ok(o) => o,
        Err(e) if optional && e.is_not_found() => return Ok(false),
        Err(e) => return Err(format!("reading {from}: {e}")),
    };
    let options = PutOptions {
        content_type: object.meta.content_type,
        content_encoding: object.meta.content_encoding,
        metadata: object.meta.metadata,
    };
    let body = object
        .body
        .map(|r| r.map_err(std::io::Error::other))
        .boxed();
    store
        .put(to, body, options)
        .await
        .map_err(|e| format!("writing {to}: {e}"))?;
    Ok(true)
}

/// Once the experiment `source`'s rows are deleted, before its objects are: the logs of its
/// that other experiments' rows still name (their confirmation runs' copies of its re-runs of a
/// cached side, `CONFIRMING` in `caldera_db::jobs::completion`, which can no longer appear) are
/// copied into those experiments' prefixes, under the keys their own workers would have written,
/// and the rows pointed at the copies — so that deleting the source's objects leaves no result
/// naming a missing log. A row whose source object is already gone keeps no log. Returns how
/// many rows were moved; the first failure stops it (what was moved stays moved: running it
/// again finishes).
pub async fn relocate_borrowed_logs(state: &AppState, source: &str) -> Result<usize, String> {
    let Ok(prefix) = keys::experiment_prefix(source) else {
        return Ok(0); // a name that cannot be a key component owns no objects
    };
    let prefix = format!("{prefix}/");
    let borrowed = caldera_db::cache::borrowed_logs(&state.pool, source, &prefix)
        .await
        .map_err(|e| e.to_string())?;
    for b in &borrowed {
        let run = u32::try_from(b.run).map_err(|e| e.to_string())?;
        let own = side_log_key(&b.experiment, (&b.start, &b.end), b.side, &b.krate, run)?;
        let from = caldera_storage::ObjectKey::new(b.log_key.clone()).map_err(|e| e.to_string())?;
        let copied = copy(state.store.as_ref(), &from, &own, true).await?;
        let own = copied.then(|| own.to_string());
        caldera_db::cache::own_log(&state.pool, b, own.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(experiment = b.experiment, krate = b.krate, run = b.run, side = b.side.as_str(),
            from = b.log_key, to = ?own, "a log borrowed from an experiment being deleted is now its own");
    }
    Ok(borrowed.len())
}

/// Settle the prepared sides on the start's transaction (after the jobs are created).
pub async fn apply(
    pending: &mut caldera_db::experiments::PendingTransition,
    prepared: &Prepared,
) -> Result<Settled, caldera_db::DbError> {
    let now = chrono::Utc::now();
    let (tx, experiment_id) = (&mut pending.tx, pending.current.id);
    let settled = caldera_db::cache::settle(tx, experiment_id, &prepared.sides, now).await?;
    let pins: Vec<(Side, &ToolchainIdentity)> =
        prepared.pins.iter().map(|(s, i)| (*s, i)).collect();
    caldera_db::cache::pin_cached_sides(tx, experiment_id, &pins, now).await?;
    Ok(settled)
}

/// Most cached sides the summary lists one by one.
const SUMMARY_LIST: usize = 50;

/// The summary's "Result cache" section (empty when nothing was cached): how many sides were
/// settled from the cache, and each (up to [`SUMMARY_LIST`]) with a link to its source's report.
pub fn summary_section(cached: &caldera_db::cache::CachedSides) -> String {
    let all: Vec<(&String, Side, &String)> = cached
        .iter()
        .flat_map(|(krate, sides)| sides.iter().map(move |(side, src)| (krate, *side, src)))
        .collect();
    if all.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\n## Result cache\n\n{} sides were settled from the result cache: not run, their \
         outcome, log and lockfile are those of an earlier experiment with the same fingerprint.\n\n",
        all.len()
    );
    for (krate, side, source) in all.iter().take(SUMMARY_LIST) {
        md.push_str(&format!(
            "* {side} side of `{krate}`: cached from [{source}](../../{source}/report/index.html)\n"
        ));
    }
    if all.len() > SUMMARY_LIST {
        md.push_str(&format!("* … and {} more\n", all.len() - SUMMARY_LIST));
    }
    md
}

/// The source experiments of the cached sides, each with how many sides it settled, most
/// first.
pub fn sources(cached: &caldera_db::cache::CachedSides) -> Vec<(String, usize)> {
    let mut count: BTreeMap<&String, usize> = BTreeMap::new();
    for source in cached.values().flat_map(|sides| sides.values()) {
        *count.entry(source).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = count.into_iter().map(|(s, n)| (s.clone(), n)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
