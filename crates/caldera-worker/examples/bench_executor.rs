//! Benchmark of the Docker executor (no xtask needed):
//!
//! ```text
//! scripts/ensure-docker.sh && scripts/build-sandbox-image.sh
//! cargo run --release -p caldera-worker --example bench_executor -- [overhead] [reuse]
//! ```
//!
//! **overhead** — per-job overhead of the farm over running the same cargo commands directly on
//! the host in the same prepared directory. For each crate: the farm time is a whole
//! `DockerExecutor::run` of a build-and-test job (stable vs nightly: preparation with lockfile and
//! fetch, two containers — spares created ahead, as in a busy worker —, six steps in two execs,
//! two logs made durable), starting from empty target dirs (a new experiment each time); the
//! direct time is the same six cargo invocations (same arguments, same `RUSTFLAGS`, same cargo
//! home and lockfile, empty target dirs) run by this process on the host in a directory prepared
//! once by the same preparer, right after each farm run (after the farm's background container
//! work has settled). `BENCH_ITERATIONS` (3) pairs; "overhead" is the median of farm − direct
//! over the pairs; "exec ovh" leaves the farm's preparation out (farm − prepare − direct): what
//! the issue's "the same cargo command directly in the same prepared directory" compares.
//!
//! **reuse** — target-dir reuse on real registry crates (check-only, stable vs nightly, one
//! slot): one warm-up pass (downloads, lockfiles, fetches), then a pass with fresh target dirs per
//! crate and a pass reusing the slot's target dirs across crates; total times.
//!
//! Crates: `BENCH_OVERHEAD_CRATES` / `BENCH_REUSE_CRATES` (comma-separated `name@version`, or
//! `fixture:NAME` for a fixture crate) override the defaults. `BENCH_WORK_DIR` keeps the work dir
//! (downloads, cargo home) between runs. Ends with one `<name>: <value> <unit>` line per figure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::crates::CrateId;
use caldera_core::experiment::{CapLints, Mode};
use caldera_core::job::JobSpec;
use caldera_core::toolchain::Toolchain;
use caldera_sandbox::{Limits, Sandbox, SandboxConfig, default_rustup_home, resolve_toolchain};
use caldera_storage::StorageConfig;
use caldera_worker::docker::{DockerExecutor, DockerExecutorConfig, plan_steps};
use caldera_worker::prepare::{HostToolchain, PrepareConfig, Preparer};
use caldera_worker::upload_spool::{UploadSpool, UploadSpoolConfig};
use caldera_worker::{Assignment, Executor, JobOutput};
use tokio_util::sync::CancellationToken;

const DEFAULT_OVERHEAD: &str = "fixture:pass,itoa@1.0.11,fnv@1.0.7,semver@1.0.23";
const DEFAULT_REUSE: &str = "cfg-if@1.0.0,fnv@1.0.7,itoa@1.0.11,scopeguard@1.2.0,\
static_assertions@1.1.0,autocfg@1.3.0,version_check@0.9.5,matches@0.1.10,memoffset@0.9.1,\
lazy_static@1.5.0,libc@0.2.159,getrandom@0.2.15,rand_core@0.6.4,ppv-lite86@0.2.20,\
rand_chacha@0.3.1,rand@0.8.5,ryu@1.0.18,byteorder@1.5.0,memchr@2.7.4,crc32fast@1.4.2,\
either@1.13.0,num_cpus@1.16.0,smallvec@1.13.2,semver@1.0.23";

fn parse_crates(list: &str) -> Vec<CrateId> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/crates");
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix("fixture:") {
            Some(name) => CrateId::Local {
                path: fixtures
                    .join(name)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
                    .to_string_lossy()
                    .into_owned(),
            },
            None => {
                let (name, version) = s.split_once('@').expect("crates are NAME@VERSION");
                CrateId::Registry {
                    name: name.into(),
                    version: version.parse().expect("a semver version"),
                    checksum: None,
                }
            }
        })
        .collect()
}

fn short(id: &CrateId) -> String {
    match id {
        CrateId::Registry { name, version, .. } => format!("{name}@{version}"),
        CrateId::Local { path } => Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        CrateId::Git { url, .. } => url.clone(),
    }
}

struct Bench {
    executor: DockerExecutor,
    preparer: Preparer,
    cargo_home: PathBuf,
    stable: (Toolchain, PathBuf),
    nightly: (Toolchain, PathBuf),
    next_id: u64,
}

impl Bench {
    async fn new(work: &Path, name: &str, reuse: bool) -> Bench {
        let store = caldera_storage::open(&StorageConfig::local(work.join("objects"))).unwrap();
        let spool = Arc::new(
            UploadSpool::open(
                store.clone(),
                UploadSpoolConfig::new(work.join(format!("spool-{name}"))),
            )
            .await
            .unwrap(),
        );
        let sandbox = Sandbox::connect(SandboxConfig {
            owner: format!("bench-{name}-{}", std::process::id()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let rustup_home = default_rustup_home().expect("RUSTUP_HOME or HOME");
        let mut config = DockerExecutorConfig::new(work.join("work"), &rustup_home);
        config.limits = Limits {
            memory_bytes: 4 << 30,
            cpus: 2.0,
            pids: 512,
            tmp_bytes: 512 << 20,
        };
        config.reuse_target_dirs = reuse;
        let cargo_home = config.prepare.cargo_home.clone();
        let mut prep = PrepareConfig::new(&work.join("work"));
        prep.sources_dir = work.join("direct-sources");
        let preparer = Preparer::new(prep, store).unwrap();
        let executor = DockerExecutor::new(config, sandbox, spool).unwrap();
        let tc = |name: &str| {
            let home = rustup_home.clone();
            let name = name.to_owned();
            async move {
                let dir = resolve_toolchain(&home, &name).await.unwrap().path;
                (Toolchain::rustup(&name).unwrap(), dir)
            }
        };
        Bench {
            executor,
            preparer,
            cargo_home,
            stable: tc("stable").await,
            nightly: tc("nightly").await,
            next_id: 1,
        }
    }

    async fn farm(
        &mut self,
        experiment: &str,
        krate: &CrateId,
        mode: Mode,
    ) -> (Duration, JobOutput) {
        let spec = JobSpec {
            experiment: experiment.into(),
            krate: krate.clone(),
            start: self.stable.0.clone(),
            end: self.nightly.0.clone(),
            mode,
            cap_lints: CapLints::Forbid,
            skip_tests: false,
            quiet: false,
            extra_timeout_secs: 0,
            extra_memory_mib: 0,
            lockfile: Default::default(),
            run: 0,
            only: None,
        };
        self.next_id += 1;
        let t0 = Instant::now();
        let out = self
            .executor
            .run(
                Assignment {
                    job_id: self.next_id,
                    attempt: 1,
                    spec,
                },
                CancellationToken::new(),
            )
            .await;
        (t0.elapsed(), out)
    }

    /// The same cargo invocations as a farm job, on the host, in `src`, from empty target dirs.
    async fn direct(&self, src: &Path, mode: Mode) -> Duration {
        let mut total = Duration::ZERO;
        for (tc, dir) in [&self.stable, &self.nightly] {
            let target = tempfile::tempdir().unwrap();
            let bin = dir.join("bin");
            let mut env = BTreeMap::new();
            env.insert(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
            );
            env.insert("CARGO_HOME", self.cargo_home.display().to_string());
            env.insert("CARGO_TARGET_DIR", target.path().display().to_string());
            env.insert("RUSTFLAGS", "--cap-lints=forbid".into());
            env.insert("RUSTDOCFLAGS", "--cap-lints=forbid".into());
            env.insert("CARGO_TERM_COLOR", "always".into());
            env.insert("CARGO_INCREMENTAL", "0".into());
            env.insert("LC_ALL", "C".into());
            env.insert("HOME", std::env::var("HOME").unwrap_or_default());
            let t0 = Instant::now();
            for step in plan_steps(mode, false, tc) {
                let out = tokio::process::Command::new(bin.join("cargo"))
                    .args(&step.argv[1..])
                    .current_dir(src)
                    .env_clear()
                    .envs(&env)
                    .output()
                    .await
                    .unwrap();
                if !out.status.success() {
                    break;
                }
            }
            total += t0.elapsed();
        }
        total
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn overhead(work: &Path, iterations: usize) -> Vec<String> {
    let crates = parse_crates(
        &std::env::var("BENCH_OVERHEAD_CRATES").unwrap_or_else(|_| DEFAULT_OVERHEAD.into()),
    );
    let mut bench = Bench::new(work, "overhead", true).await;
    let host = HostToolchain::probe(&bench.stable.1).await.unwrap();
    let mut summary = Vec::new();
    let mut overheads = Vec::new();
    let mut exec_overheads = Vec::new();
    println!(
        "\n== overhead: farm job vs the same cargo commands on the host (build-and-test, stable+nightly, cold target dirs)"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8}   {:>9} {:>9} {:>9}  outcome",
        "crate",
        "farm ms",
        "direct ms",
        "overhead",
        "%",
        "exec ovh",
        "%",
        "prepare",
        "steps",
        "other"
    );
    for krate in &crates {
        let name = short(krate);
        // warm-up: downloads, index, fetched dependencies, page cache
        let (_, warm) = bench.farm("ovh-warm", krate, Mode::BuildAndTest).await;
        bench.executor.settle().await;
        let (_, prepared) = bench
            .preparer
            .prepare("ovh-direct", krate, Default::default(), &host)
            .await;
        let prepared = prepared.unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut farm = Vec::new();
        let mut farm_prepare = Vec::new();
        let mut direct = Vec::new();
        let mut last = warm;
        for i in 0..iterations {
            // a new experiment purges the slot: the farm starts from empty target dirs too
            let (d, out) = bench
                .farm(&format!("ovh-{i}"), krate, Mode::BuildAndTest)
                .await;
            farm.push(d);
            // the farm's after-job container work (removals, spares) must not slow the direct run
            bench.executor.settle().await;
            farm_prepare.push(
                out.start
                    .steps
                    .iter()
                    .filter(|(n, _)| n.starts_with("prepare:"))
                    .map(|(_, d)| *d)
                    .sum::<Duration>(),
            );
            last = out;
            direct.push(bench.direct(&prepared.source(), Mode::BuildAndTest).await);
        }
        // overheads are medians of the paired differences (each farm run against the direct run
        // right after it), which the machine's load drifts affect less than a difference of medians
        let paired = |with_prepare: bool| -> f64 {
            let mut diffs: Vec<f64> = farm
                .iter()
                .zip(&farm_prepare)
                .zip(&direct)
                .map(|((f, p), d)| {
                    let f = if with_prepare {
                        ms(*f)
                    } else {
                        ms(*f) - ms(*p)
                    };
                    f - ms(*d)
                })
                .collect();
            diffs.sort_by(f64::total_cmp);
            diffs[diffs.len() / 2]
        };
        let (over, exec_over) = (paired(true), paired(false));
        let (f, d) = (median(farm.clone()), median(direct.clone()));
        let sum = |steps: &[(String, Duration)], prep: bool| -> Duration {
            steps
                .iter()
                .filter(|(n, _)| n.starts_with("prepare:") == prep)
                .map(|(_, d)| *d)
                .sum()
        };
        // the farm's preparation per run, which a direct run in a prepared directory skips
        let prep = median(farm_prepare.clone());
        let steps = sum(&last.start.steps, false) + sum(&last.end.steps, false);
        let other = f.saturating_sub(prep + steps);
        let pct = 100.0 * over / ms(d);
        let exec_pct = 100.0 * exec_over / ms(d);
        println!(
            "{name:<16} {:>10.0} {:>10.0} {:>10.0} {:>7.1}% {:>10.0} {:>7.1}%   {:>9.0} {:>9.0} {:>9.0}  {} / {}",
            ms(f),
            ms(d),
            over,
            pct,
            exec_over,
            exec_pct,
            ms(prep),
            ms(steps),
            ms(other),
            last.start.outcome,
            last.end.outcome
        );
        summary.push(format!("executor-overhead-{name}: {over:.0} ms"));
        summary.push(format!("executor-overhead-{name}-pct: {pct:.1} %"));
        summary.push(format!(
            "executor-exec-overhead-{name}: {exec_over:.0} ms ({exec_pct:.1} %)"
        ));
        overheads.push((over, pct));
        exec_overheads.push((exec_over, exec_pct));
    }
    bench.executor.shutdown().await;
    exec_overheads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mid, mid_pct) = exec_overheads[exec_overheads.len() / 2];
    summary.push(format!(
        "executor-exec-overhead-median: {mid:.0} ms ({mid_pct:.1} %)"
    ));
    overheads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mid, mid_pct) = overheads[overheads.len() / 2];
    summary.push(format!("executor-overhead-median: {mid:.0} ms"));
    summary.push(format!("executor-overhead-median-pct: {mid_pct:.1} %"));
    summary
}

async fn reuse(work: &Path) -> Vec<String> {
    let crates =
        parse_crates(&std::env::var("BENCH_REUSE_CRATES").unwrap_or_else(|_| DEFAULT_REUSE.into()));
    let targets = work.join("work/targets");
    println!(
        "\n== target-dir reuse: {} registry crates, check-only, stable+nightly, one slot",
        crates.len()
    );
    let mut totals = BTreeMap::new();
    for (pass, reuse) in [("warm-up", true), ("fresh", false), ("reuse", true)] {
        let _ = std::fs::remove_dir_all(&targets);
        let mut bench = Bench::new(work, pass, reuse).await;
        let t0 = Instant::now();
        let mut outcomes = BTreeMap::<String, usize>::new();
        for krate in &crates {
            let (d, out) = bench.farm("reuse-bench", krate, Mode::CheckOnly).await;
            for o in [&out.start.outcome, &out.end.outcome] {
                *outcomes.entry(o.to_string()).or_default() += 1;
            }
            if pass != "warm-up" {
                println!(
                    "  {pass:<6} {:<22} {:>8.1} s  {} / {}",
                    short(krate),
                    d.as_secs_f64(),
                    out.start.outcome,
                    out.end.outcome
                );
            }
        }
        let total = t0.elapsed();
        println!(
            "{pass}: {:.1} s total; outcomes {outcomes:?}; {:?}",
            total.as_secs_f64(),
            bench.executor.stats()
        );
        totals.insert(pass, total);
        bench.executor.shutdown().await;
    }
    let (fresh, reused) = (totals["fresh"], totals["reuse"]);
    vec![
        format!("target-reuse-crates: {} crates", crates.len()),
        format!("target-reuse-fresh-total: {:.1} s", fresh.as_secs_f64()),
        format!("target-reuse-reuse-total: {:.1} s", reused.as_secs_f64()),
        format!(
            "target-reuse-saving: {:.1} %",
            100.0 * (1.0 - reused.as_secs_f64() / fresh.as_secs_f64())
        ),
    ]
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=caldera_worker=debug` shows where a job's time goes
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.is_empty();
    let keep;
    let work = match std::env::var_os("BENCH_WORK_DIR") {
        Some(dir) => {
            keep = None;
            PathBuf::from(dir)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("caldera-bench-executor-")
                .tempdir()
                .unwrap();
            let p = t.path().to_owned();
            keep = Some(t);
            p
        }
    };
    std::fs::create_dir_all(&work).unwrap();
    let iterations = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let mut summary = Vec::new();
    if all || args.iter().any(|a| a == "overhead") {
        summary.extend(overhead(&work, iterations).await);
    }
    if all || args.iter().any(|a| a == "reuse") {
        summary.extend(reuse(&work).await);
    }
    println!();
    for line in summary {
        println!("{line}");
    }
    drop(keep);
}
