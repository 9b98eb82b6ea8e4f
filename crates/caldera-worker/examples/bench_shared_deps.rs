//! Benchmark of shared dependency builds (the executor's dependency store):
//!
//! ```text
//! scripts/ensure-docker.sh && scripts/build-sandbox-image.sh
//! cargo run --release -p caldera-worker --example bench_shared_deps
//! ```
//!
//! Three executors, one slot each, run the same small set of registry crates with
//! dev-dependencies (build-and-test, stable vs nightly), one experiment per round:
//! **fresh** (empty target dirs for every job), **reuse** (the slot's target dirs reused across
//! the crates of an experiment, the default) and **store** (`shared_deps`: empty target dirs
//! filled from the dependency store, which outlives experiments). Rounds are interleaved (the
//! order of the modes rotates). A warm-up pass (check-only, not measured) downloads and fetches
//! every crate into the shared cargo home first. Round 1 of `store` starts with an empty store
//! (cold); later rounds find it filled (warm), like a worker's next experiment.
//!
//! `BENCH_CRATES` (comma-separated `name@version`), `BENCH_ROUNDS` (3) and `BENCH_WORK_DIR`
//! (kept between runs) override the defaults. Prints each round's totals, then one
//! `<name>: <value> <unit>` line per figure, and any outcome that differs between the modes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_core::experiment::{CapLints, Mode};
use caldera_core::job::JobSpec;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, default_rustup_home};
use caldera_storage::StorageConfig;
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use caldera_worker::{Assignment, Executor};
use tokio_util::sync::CancellationToken;

/// Small crates whose dependencies and dev-dependencies overlap (libc, cfg-if, rand_core,
/// getrandom, ppv-lite86, …).
const DEFAULT_CRATES: &str =
    "getrandom@0.2.15,rand_core@0.6.4,rand_chacha@0.3.1,num_cpus@1.16.0,ryu@1.0.18";

const MODES: [&str; 3] = ["fresh", "reuse", "store"];

async fn executor(work: &Path, mode: &str, cargo_home: &Path) -> DockerExecutor {
    let store = caldera_storage::open(&StorageConfig::local(work.join("objects"))).unwrap();
    let spool = Arc::new(
        UploadSpool::open(
            store,
            UploadSpoolConfig::new(work.join(format!("spool-{mode}"))),
        )
        .await
        .unwrap(),
    );
    let sandbox = Sandbox::connect(SandboxConfig {
        owner: format!("bench-shared-{mode}-{}", std::process::id()),
        ..SandboxConfig::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let rustup_home = default_rustup_home().expect("RUSTUP_HOME or HOME");
    let mut config = DockerExecutorConfig::new(work.join(format!("work-{mode}")), &rustup_home);
    config.limits = Limits {
        memory_bytes: 4 << 30,
        cpus: 2.0,
        pids: 1024,
        tmp_bytes: 512 << 20,
    };
    config.prepare.cargo_home = cargo_home.to_owned();
    config.reuse_target_dirs = mode != "fresh";
    config.shared_deps = mode == "store";
    DockerExecutor::new(config, sandbox, spool).unwrap()
}

fn crates(list: &str) -> Vec<CrateId> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (name, version) = s.split_once('@').expect("crates are NAME@VERSION");
            CrateId::Registry {
                name: name.into(),
                version: version.parse().expect("a semver version"),
                checksum: None,
            }
        })
        .collect()
}

fn spec(experiment: &str, krate: &CrateId, mode: Mode) -> JobSpec {
    JobSpec {
        experiment: experiment.into(),
        krate: krate.clone(),
        start: "stable".parse().unwrap(),
        end: "nightly".parse().unwrap(),
        mode,
        cap_lints: CapLints::Forbid,
        skip_tests: false,
        quiet: false,
        extra_timeout_secs: 0,
        extra_memory_mib: 0,
        lockfile: Default::default(),
        run: 0,
        only: None,
    }
}

/// Runs `krates` as one experiment; the total wall time and each crate's outcomes.
async fn pass(
    ex: &DockerExecutor,
    experiment: &str,
    krates: &[CrateId],
    mode: Mode,
    next_id: &mut u64,
) -> (Duration, Vec<String>) {
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    for krate in krates {
        *next_id += 1;
        let out = ex
            .run(
                Assignment {
                    job_id: *next_id,
                    attempt: 1,
                    spec: spec(experiment, krate, mode),
                },
                CancellationToken::new(),
            )
            .await;
        outcomes.push(format!(
            "{krate}: {} / {}",
            out.start.outcome, out.end.outcome
        ));
    }
    let took = t0.elapsed();
    ex.settle().await;
    (took, outcomes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let krates = crates(&std::env::var("BENCH_CRATES").unwrap_or(DEFAULT_CRATES.into()));
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let work = std::env::var_os("BENCH_WORK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let cargo_home = work.join("cargo-home");
    let mut executors = BTreeMap::new();
    for mode in MODES {
        executors.insert(mode, executor(&work, mode, &cargo_home).await);
    }
    let mut next_id = 0;
    let (warm, _) = pass(
        &executors["fresh"],
        "warm-up",
        &krates,
        Mode::CheckOnly,
        &mut next_id,
    )
    .await;
    eprintln!(
        "warm-up (check-only, not measured): {:.1} s",
        warm.as_secs_f64()
    );

    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let run_id = std::process::id();
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let mode = MODES[(round + k) % MODES.len()];
            let experiment = format!("bench-{run_id}-{mode}-{round}");
            let (took, outs) = pass(
                &executors[mode],
                &experiment,
                &krates,
                Mode::BuildAndTest,
                &mut next_id,
            )
            .await;
            eprintln!(
                "round {} {mode:<5} {:>7.1} s",
                round + 1,
                took.as_secs_f64()
            );
            times.entry(mode).or_default().push(took.as_secs_f64());
            let seen = outcomes.entry(mode).or_insert_with(|| outs.clone());
            if *seen != outs {
                eprintln!("outcomes of {mode} changed between rounds: {seen:?} vs {outs:?}");
            }
        }
    }
    for (mode, t) in &times {
        println!("{mode}_round1: {:.1} s", t[0]);
        println!("{mode}_median: {:.1} s", median(t.clone()));
        if t.len() > 1 {
            println!(
                "{mode}_median_after_round1: {:.1} s",
                median(t[1..].to_vec())
            );
        }
    }
    let base = &outcomes["fresh"];
    for mode in ["reuse", "store"] {
        if &outcomes[mode] != base {
            println!(
                "OUTCOMES DIFFER: {mode}: {:?} vs fresh: {base:?}",
                outcomes[mode]
            );
        }
    }
    println!("outcomes (fresh): {base:?}");
    println!("store: {:?}", executors["store"].stats());
    for ex in executors.values() {
        ex.shutdown().await;
    }
}
