//! What does a run cost on the farm against a naive loop? (`cargo xtask bench farm [-- PHASE…]`)
//!
//! On a set of real registry crates (popular ones with dev-dependencies), build-and-test, in
//! `BENCH_FARM_BATCHES` batches (default 4) so that the farm and the naive loop take turns and the
//! load of a shared machine falls on both alike; for each batch, in this order:
//!
//! 1. `farm-1-<batch>`: `caldera local --shared-deps`, stable vs nightly;
//! 2. `farm-2-<batch>`: stable vs `nightly+rustflags=--cfg=caldera_bench_farm` — only the end
//!    toolchain changes, so the result cache settles the start side from `farm-1-<batch>`;
//! 3. **naive**: every (crate, toolchain) of the batch built and tested by cargo directly, one
//!    after another, each from an empty target dir: as an unprivileged user with its own cargo
//!    home, the `.crate` from static.crates.io, `farm-1-<batch>`'s lockfile, and the farm's steps
//!    (`cargo fetch`, `cargo build`, `cargo test --no-run`, `cargo test`; `common::Direct`). The
//!    CPU time of each (user + system, of cargo and everything it ran) is recorded: the registry
//!    projection is made from it.
//!
//! The farm runs share one state dir, emptied when the `run` phase begins (fresh Postgres, empty
//! result cache, empty dependency store, which then fills batch by batch as a worker's would), and
//! the naive loop one cargo home (empty at the beginning too). The experiments use the defaults
//! otherwise (confirmation of regressions on: the re-runs are part of the wall time) and
//! `BENCH_FARM_SLOTS` slots (default 2, the cores of the machine this was written on).
//!
//! Phase **compare** then sums the wall times (farm-1 / naive, farm-2 / farm-1), gives the
//! 1-minute load average during each part, and checks every outcome: farm-1 against the naive
//! loop (which shares nothing), farm-2's cached start against farm-1's start, farm-2's end
//! against farm-1's end. It also sets each experiment's estimate, made at its start from the
//! history of the batches before it, against what the experiment took.
//!
//! Phases (`run`, `compare`) default to both. Run as root (Docker; switching to the unprivileged
//! user). Files under `BENCH_WORK_DIR` (default `/var/tmp/caldera-bench-farm`): the farm's state
//! dir, `farm.tsv` (experiment, wall seconds, load), `naive/` (cargo home, sources, logs under
//! `naive/logs/<toolchain>/`, `outcomes.tsv`: toolchain, crate, outcome, wall seconds, CPU
//! seconds, load). Crates: `BENCH_FARM_CRATES` (comma-separated `name@version`; default the 40 of
//! `cargo xtask bench trust`). The caldera binary is the one next to this example's directory
//! (xtask builds it first). `BENCH_FARM_LOCKFILE` (`shipped`, the default, or `fresh`) is the
//! experiments' lockfile policy; the naive loop builds with whatever lockfiles farm-1 settled.
//! Ends with one `<name>: <value> <unit>` line per figure.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use caldera_core::crates::CrateId;
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::Toolchain;
use common::{Direct, FarmResult, agrees, farm_class, status};

const FIRST: &str = "farm-1";
const SECOND: &str = "farm-2";
const SECOND_END: &str = "nightly+rustflags=--cfg=caldera_bench_farm";

struct Bench {
    work: PathBuf,
    crates: Vec<(String, String)>,
    caldera: PathBuf,
    slots: String,
    batches: usize,
    /// The experiments' lockfile policy.
    lockfile: String,
    load: Load,
}

fn main() -> Result<()> {
    let work = PathBuf::from(
        std::env::var("BENCH_WORK_DIR").unwrap_or_else(|_| "/var/tmp/caldera-bench-farm".into()),
    );
    let crates = common::crate_list("BENCH_FARM_CRATES", common::DEFAULT_CRATES)?;
    let slots = std::env::var("BENCH_FARM_SLOTS").unwrap_or_else(|_| "2".into());
    let batches = match std::env::var("BENCH_FARM_BATCHES") {
        Ok(b) => b.parse().context("BENCH_FARM_BATCHES")?,
        Err(_) => 4,
    };
    let lockfile = std::env::var("BENCH_FARM_LOCKFILE").unwrap_or_else(|_| "shipped".into());
    if !["shipped", "fresh"].contains(&lockfile.as_str()) {
        bail!("BENCH_FARM_LOCKFILE={lockfile:?}: expected shipped or fresh");
    }
    std::fs::create_dir_all(&work)?;
    common::chmod(&work, 0o755)?;
    let bench = Bench {
        work,
        crates,
        caldera: common::caldera_binary()?,
        slots,
        batches,
        lockfile,
        load: Load::sample_every(Duration::from_secs(10)),
    };
    let phases: Vec<String> = std::env::args().skip(1).collect();
    let phases = if phases.is_empty() {
        vec!["run".into(), "compare".into()]
    } else {
        phases
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut figures = Vec::new();
    for phase in &phases {
        match phase.as_str() {
            "run" => figures.extend(rt.block_on(bench.run())?),
            "compare" => figures.extend(bench.compare()?),
            other => bail!("unknown phase {other:?}; expected run or compare"),
        }
    }
    for f in figures {
        println!("{f}");
    }
    Ok(())
}

/// The 1-minute load average, sampled in the background.
struct Load(Arc<Mutex<Vec<(Instant, f64)>>>);

impl Load {
    fn sample_every(period: Duration) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        std::thread::spawn(move || {
            loop {
                let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
                if let Some(l) = text.split_whitespace().next().and_then(|l| l.parse().ok()) {
                    s.lock().unwrap().push((Instant::now(), l));
                }
                std::thread::sleep(period);
            }
        });
        Load(samples)
    }

    /// Median of the samples since `t0`, or the last one before it when there are none (the
    /// 1-minute average lags: the first minute is mixed).
    fn median_since(&self, t0: Instant) -> f64 {
        let samples = self.0.lock().unwrap();
        let mut v: Vec<f64> = (samples.iter())
            .filter(|(t, _)| *t >= t0)
            .map(|(_, l)| *l)
            .collect();
        if v.is_empty() {
            v.extend(samples.last().map(|(_, l)| *l));
        }
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

impl Bench {
    fn state(&self) -> PathBuf {
        self.work.join("state")
    }

    fn naive_dir(&self) -> PathBuf {
        self.work.join("naive")
    }

    /// The crates in `self.batches` batches of (nearly) equal size, in list order.
    fn batches(&self) -> Vec<&[(String, String)]> {
        let size = self.crates.len().div_ceil(self.batches.max(1)).max(1);
        self.crates.chunks(size).collect()
    }

    /// Every batch: both experiments, then the naive loop; `farm.tsv` and `naive/outcomes.tsv`.
    async fn run(&self) -> Result<Vec<String>> {
        for dir in [self.state(), self.naive_dir()] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
        }
        let direct = Direct::new(self.naive_dir())?;
        let mut farm_rows = Vec::new();
        let mut naive_rows = Vec::new();
        let t0 = Instant::now();
        for (i, batch) in self.batches().into_iter().enumerate() {
            let first = format!("{FIRST}-{}", i + 1);
            for (name, end) in [
                (first.clone(), "nightly"),
                (format!("{SECOND}-{}", i + 1), SECOND_END),
            ] {
                let (wall, load) = self.experiment(&name, end, batch)?;
                farm_rows.push(format!("{name}\t{:.1}\t{load:.1}", wall.as_secs_f64()));
            }
            naive_rows.extend(self.naive(&direct, batch, &first).await?);
            std::fs::write(self.work.join("farm.tsv"), farm_rows.join("\n") + "\n")?;
            std::fs::write(
                direct.dir.join("outcomes.tsv"),
                naive_rows.join("\n") + "\n",
            )?;
        }
        Ok(vec![format!(
            "run-wall: {:.1} min (load {:.1})",
            t0.elapsed().as_secs_f64() / 60.0,
            self.load.median_since(t0)
        )])
    }

    /// One experiment through `caldera local --shared-deps`: its wall time and median load.
    fn experiment(
        &self,
        name: &str,
        end: &str,
        crates: &[(String, String)],
    ) -> Result<(Duration, f64)> {
        let log = self.work.join(format!("{name}.out"));
        eprintln!(
            "bench farm: {name}: caldera local, {} crates, stable vs {end} (output in {})",
            crates.len(),
            log.display()
        );
        let ids: Vec<String> = crates.iter().map(|(n, v)| format!("{n}@{v}")).collect();
        let mut cmd = Command::new(&self.caldera);
        cmd.arg("local")
            .arg("--state-dir")
            .arg(self.state())
            .args(["--name", name, "--crates"])
            .arg(ids.join(","))
            .args([
                "--start",
                "stable",
                "--end",
                end,
                "--mode",
                "build-and-test",
            ])
            .args([
                "--lockfile",
                &self.lockfile,
                "--shared-deps",
                "--slots",
                &self.slots,
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(std::fs::File::create(&log)?);
        let t0 = Instant::now();
        status(&mut cmd)?;
        let wall = t0.elapsed();
        let load = self.load.median_since(t0);
        eprintln!(
            "bench farm: {name}: {:.1} s (load {load:.1})",
            wall.as_secs_f64()
        );
        Ok((wall, load))
    }

    /// Every (crate, toolchain) of a batch with cargo directly, one after another, each from an
    /// empty target dir, with the lockfile of experiment `farm`: `outcomes.tsv` rows.
    async fn naive(
        &self,
        direct: &Direct,
        crates: &[(String, String)],
        farm: &str,
    ) -> Result<Vec<String>> {
        let store = caldera_storage::LocalStore::open(self.state().join("objects"), 1 << 30)?;
        let target = direct.dir.join("target");
        let mut rows = Vec::new();
        for tc_name in ["stable", "nightly"] {
            let toolchain = direct.user_toolchain(tc_name).await?;
            let tc = Toolchain::rustup(tc_name)?;
            for (name, version) in crates {
                let id = format!("{name}@{version}");
                let krate = CrateId::Registry {
                    name: name.clone(),
                    version: version.parse()?,
                    checksum: None,
                };
                let lockfile = common::farm_lockfile(&store, farm, &krate).await;
                let started = Instant::now();
                let cpu = common::children_cpu();
                let root = direct
                    .unpack(name, version, tc_name, lockfile.as_deref())
                    .await?;
                if target.exists() {
                    std::fs::remove_dir_all(&target)?;
                }
                // cargo runs for minutes: off the runtime's worker thread
                let outcome = tokio::task::block_in_place(|| {
                    direct.build_and_test(&toolchain, &tc, &root, &id, lockfile.is_some(), &target)
                })?;
                let wall = started.elapsed().as_secs_f64();
                let cpu = (common::children_cpu() - cpu).as_secs_f64();
                let load = self.load.median_since(started);
                eprintln!(
                    "bench farm: naive {tc_name} {id}: {outcome} ({wall:.1} s, CPU {cpu:.1} s, load {load:.1})"
                );
                rows.push(format!(
                    "{tc_name}\t{id}\t{outcome}\t{wall:.1}\t{cpu:.1}\t{load:.1}"
                ));
            }
        }
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        Ok(rows)
    }

    /// Wall-time ratios, outcome agreement and the registry projection's inputs.
    fn compare(&self) -> Result<Vec<String>> {
        let farm = read_tsv(&self.work.join("farm.tsv"))?;
        let naive = read_tsv(&self.naive_dir().join("outcomes.tsv"))?;
        // the batches' experiments: `farm-1-<i>` and `farm-2-<i>`
        let of = |prefix: &'static str| farm.iter().filter(move |r| is_batch_of(&r[0], prefix));
        let sum = |rows: &mut dyn Iterator<Item = &Vec<String>>, col: usize| -> f64 {
            rows.map(|r| r[col].parse::<f64>().unwrap_or(0.0)).sum()
        };
        let (w1, w2) = (sum(&mut of(FIRST), 1), sum(&mut of(SECOND), 1));
        let naive_wall = sum(&mut naive.iter(), 3);
        let load = |rows: Vec<&Vec<String>>, col: usize| {
            let mut v: Vec<f64> = rows.iter().filter_map(|r| r[col].parse().ok()).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let loads = [
            load(of(FIRST).collect(), 2),
            load(of(SECOND).collect(), 2),
            load(naive.iter().collect(), 5),
        ];
        let naive_cpu: Vec<f64> = naive.iter().map(|r| r[4].parse().unwrap_or(0.0)).collect();
        let mut first = BTreeMap::new();
        let mut second = BTreeMap::new();
        for row in &farm {
            let results = common::farm_results(&self.state(), &row[0])?;
            if is_batch_of(&row[0], FIRST) {
                first.extend(results);
            } else {
                second.extend(results);
            }
        }
        if first.is_empty() || naive.is_empty() {
            bail!("nothing to compare: run the `run` phase first");
        }

        let estimates = self.estimates(&farm)?;
        let disagreements = outcome_disagreements(&first, &second, &naive);
        println!("| crate | side | this | against | reference |");
        println!("|---|---|---|---|---|");
        for d in &disagreements {
            println!("{d}");
        }
        let cached = second.values().filter(|r| r.start_cached.is_some()).count();
        if cached == 0 && first.values().any(|r| r.start == Outcome::TestPass) {
            bail!("the result cache settled no start side of {SECOND}: it was not used");
        }
        let mut cpu = naive_cpu.clone();
        cpu.sort_by(f64::total_cmp);
        let total_cpu: f64 = cpu.iter().sum();
        Ok(vec![
            format!("farm-crates: {} crates", first.len()),
            format!(
                "farm-1-wall: {:.1} min (median load {:.1})",
                w1 / 60.0,
                loads[0]
            ),
            format!(
                "farm-2-wall: {:.1} min (median load {:.1})",
                w2 / 60.0,
                loads[1]
            ),
            format!(
                "naive-wall: {:.1} min (median load {:.1})",
                naive_wall / 60.0,
                loads[2]
            ),
            format!("farm-1-over-naive: {:.3} x", w1 / naive_wall),
            format!("farm-2-over-farm-1: {:.3} x", w2 / w1),
            format!("farm-2-start-sides-cached: {cached} of {}", second.len()),
            format!("outcome-disagreements: {}", disagreements.len()),
            format!(
                "naive-cpu-per-side: median {:.1} s, mean {:.1} s",
                cpu.get(cpu.len() / 2).copied().unwrap_or(0.0),
                total_cpu / cpu.len().max(1) as f64
            ),
            format!("naive-cpu-total: {:.1} min", total_cpu / 60.0),
            estimates,
        ])
    }

    /// The estimate each experiment made at its start against what it took (`results.json`'s
    /// `cost`), as a table, and the median ratio over the experiments that had one: the
    /// estimator on real history (the first batch has none of its own).
    fn estimates(&self, farm: &[Vec<String>]) -> Result<String> {
        println!(
            "| experiment | method | sides est. / run | slot time est. / actual | wall est. / actual |"
        );
        println!("|---|---|---|---|---|");
        let mut ratios = Vec::new();
        for row in farm {
            let json = common::results_json(&self.state(), &row[0])?;
            let cost = &json["cost"];
            let ms = |k: &str| cost[k].as_u64().map(|v| v as f64 / 1000.0);
            let pair = |e: Option<f64>, a: Option<f64>| match (e, a) {
                (Some(e), Some(a)) => format!("{e:.0} s / {a:.0} s ({:.2}×)", e / a),
                (None, Some(a)) => format!("— / {a:.0} s"),
                _ => "—".into(),
            };
            if let (Some(e), Some(a)) = (ms("estimated_wall_ms"), ms("wall_ms")) {
                ratios.push(e / a);
            }
            println!(
                "| {} | {} | {} / {} | {} | {} |",
                row[0],
                cost["method"].as_str().unwrap_or("none kept"),
                cost["estimated_sides"],
                cost["sides_run"],
                pair(ms("estimated_cpu_ms"), ms("cpu_ms")),
                pair(ms("estimated_wall_ms"), ms("wall_ms")),
            );
        }
        ratios.sort_by(f64::total_cmp);
        Ok(match ratios.get(ratios.len() / 2) {
            Some(m) => format!(
                "estimate-wall-over-actual: median {m:.2} x over {} experiments",
                ratios.len()
            ),
            None => "estimate-wall-over-actual: no experiment had an estimate".into(),
        })
    }
}

/// Every outcome that is not the same as its reference, as a table row: `farm-1` against the
/// naive loop, `farm-2`'s start against `farm-1`'s (cached), `farm-2`'s end against `farm-1`'s
/// (the flag changes nothing these crates test).
fn outcome_disagreements(
    first: &BTreeMap<String, FarmResult>,
    second: &BTreeMap<String, FarmResult>,
    naive: &[Vec<String>],
) -> Vec<String> {
    let mut out = Vec::new();
    for row in naive {
        let (tc, id, class) = (&row[0], &row[1], &row[2]);
        let Some(r) = first.get(id) else {
            out.push(format!(
                "| {id} | {tc} | missing in {FIRST} | {class} | naive |"
            ));
            continue;
        };
        let f = if tc == "stable" { &r.start } else { &r.end };
        if !agrees(f, class) {
            out.push(format!("| {id} | {tc} | {FIRST}: {f} | {class} | naive |"));
        }
    }
    for (id, r1) in first {
        let Some(r2) = second.get(id) else {
            out.push(format!("| {id} | both | missing in {SECOND} | | {FIRST} |"));
            continue;
        };
        let same = |a: &Outcome, b: &Outcome| farm_class(a) == farm_class(b);
        if !same(&r2.start, &r1.start) {
            out.push(format!(
                "| {id} | start | {SECOND}: {} | {} | {FIRST} |",
                r2.start, r1.start
            ));
        }
        if !same(&r2.end, &r1.end) {
            out.push(format!(
                "| {id} | end | {SECOND}: {} | {} | {FIRST} |",
                r2.end, r1.end
            ));
        }
    }
    out
}

/// Whether experiment `name` is one of the batches of `prefix` (`farm-1-3` of `farm-1`).
fn is_batch_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| n.parse::<usize>().is_ok())
}

fn read_tsv(path: &Path) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}
