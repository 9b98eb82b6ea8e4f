//! What does a run cost on the farm against a naive loop? (`cargo xtask bench farm [-- PHASE…]`)
//!
//! On a set of real registry crates (popular ones with dev-dependencies), build-and-test:
//!
//! * **farm** — from an empty state dir (fresh Postgres, empty result cache, empty dependency
//!   store), two experiments through `caldera local --shared-deps`:
//!   1. `farm-1`: stable vs nightly;
//!   2. `farm-2`: stable vs `nightly+rustflags=--cfg=caldera_bench_farm` — only the end toolchain
//!      changes, so the result cache settles the start side from `farm-1`.
//!
//!   Both with the experiment defaults otherwise (confirmation of regressions on: the re-runs are
//!   part of the wall time) and `BENCH_FARM_SLOTS` slots (default 2, the cores of the machine the
//!   benchmark was written on).
//! * **naive** — every (crate, toolchain) of `farm-1` built and tested by cargo directly, one after
//!   another, each from an empty target dir: as an unprivileged user with its own cargo home (empty
//!   at the start of the phase), the `.crate` from static.crates.io, `farm-1`'s lockfile, and the
//!   farm's steps (`cargo fetch`, `cargo build`, `cargo test --no-run`, `cargo test`; see
//!   `common::Direct`). The CPU time of each (user + system, of cargo and everything it ran) is
//!   recorded: the registry projection is made from it.
//! * **compare** — the wall times (farm-1 / naive, farm-2 / farm-1), the 1-minute load average
//!   during each phase, and every outcome: `farm-1` against the naive loop (which shares nothing),
//!   `farm-2`'s cached start against `farm-1`'s start, `farm-2`'s end against `farm-1`'s end.
//!
//! Phases default to all three, in that order (the naive loop takes the farm's lockfiles). Run as
//! root (Docker; switching to the unprivileged user). Files under `BENCH_WORK_DIR` (default
//! `/var/tmp/caldera-bench-farm`): the farm's state dir, `farm.tsv` (experiment, wall seconds,
//! load), `naive/` (cargo home, sources, logs under `naive/logs/<toolchain>/`, `outcomes.tsv`:
//! toolchain, crate, outcome, wall seconds, CPU seconds). Crates: `BENCH_FARM_CRATES`
//! (comma-separated `name@version`; default the 40 of `cargo xtask bench trust`). The caldera
//! binary is the one next to this example's directory (xtask builds it first). Ends with one
//! `<name>: <value> <unit>` line per figure.

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
    load: Load,
}

fn main() -> Result<()> {
    let work = PathBuf::from(
        std::env::var("BENCH_WORK_DIR").unwrap_or_else(|_| "/var/tmp/caldera-bench-farm".into()),
    );
    let crates = common::crate_list("BENCH_FARM_CRATES", common::DEFAULT_CRATES)?;
    let slots = std::env::var("BENCH_FARM_SLOTS").unwrap_or_else(|_| "2".into());
    std::fs::create_dir_all(&work)?;
    common::chmod(&work, 0o755)?;
    let bench = Bench {
        work,
        crates,
        caldera: common::caldera_binary()?,
        slots,
        load: Load::sample_every(Duration::from_secs(10)),
    };
    let phases: Vec<String> = std::env::args().skip(1).collect();
    let phases = if phases.is_empty() {
        vec!["farm".into(), "naive".into(), "compare".into()]
    } else {
        phases
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut figures = Vec::new();
    for phase in &phases {
        match phase.as_str() {
            "farm" => figures.extend(bench.farm()?),
            "naive" => figures.extend(rt.block_on(bench.naive())?),
            "compare" => figures.extend(bench.compare()?),
            other => bail!("unknown phase {other:?}; expected farm, naive or compare"),
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

    fn crate_list(&self) -> String {
        let ids: Vec<String> = self
            .crates
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect();
        ids.join(",")
    }

    /// Both experiments from an empty state dir; their wall times and loads in `farm.tsv`.
    fn farm(&self) -> Result<Vec<String>> {
        if self.state().exists() {
            std::fs::remove_dir_all(self.state())?;
        }
        let mut rows = Vec::new();
        let mut figures = Vec::new();
        for (name, end) in [(FIRST, "nightly"), (SECOND, SECOND_END)] {
            let (wall, load) = self.experiment(name, end)?;
            rows.push(format!("{name}\t{:.1}\t{load:.1}", wall.as_secs_f64()));
            figures.push(format!(
                "{name}-wall: {:.1} min (load {load:.1})",
                wall.as_secs_f64() / 60.0
            ));
        }
        std::fs::write(self.work.join("farm.tsv"), rows.join("\n") + "\n")?;
        Ok(figures)
    }

    /// One experiment through `caldera local --shared-deps`: its wall time and median load.
    fn experiment(&self, name: &str, end: &str) -> Result<(Duration, f64)> {
        let log = self.work.join(format!("{name}.out"));
        eprintln!(
            "bench farm: {name}: caldera local, {} crates, stable vs {end} (output in {})",
            self.crates.len(),
            log.display()
        );
        let mut cmd = Command::new(&self.caldera);
        cmd.arg("local")
            .arg("--state-dir")
            .arg(self.state())
            .args(["--name", name, "--crates"])
            .arg(self.crate_list())
            .args([
                "--start",
                "stable",
                "--end",
                end,
                "--mode",
                "build-and-test",
            ])
            .args([
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

    /// Every (crate, toolchain) of `farm-1` with cargo directly, one after another, each from an
    /// empty target dir.
    async fn naive(&self) -> Result<Vec<String>> {
        if self.naive_dir().exists() {
            std::fs::remove_dir_all(self.naive_dir())?;
        }
        let direct = Direct::new(self.naive_dir())?;
        let store = caldera_storage::LocalStore::open(self.state().join("objects"), 1 << 30)?;
        let target = direct.dir.join("target");
        let mut rows = Vec::new();
        let t0 = Instant::now();
        for tc_name in ["stable", "nightly"] {
            let toolchain = direct.user_toolchain(tc_name).await?;
            let tc = Toolchain::rustup(tc_name)?;
            for (name, version) in &self.crates {
                let id = format!("{name}@{version}");
                let krate = CrateId::Registry {
                    name: name.clone(),
                    version: version.parse()?,
                    checksum: None,
                };
                let lockfile = common::farm_lockfile(&store, FIRST, &krate).await;
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
                eprintln!(
                    "bench farm: naive {tc_name} {id}: {outcome} ({wall:.1} s, CPU {cpu:.1} s)"
                );
                rows.push(format!("{tc_name}\t{id}\t{outcome}\t{wall:.1}\t{cpu:.1}"));
            }
        }
        let wall = t0.elapsed();
        let load = self.load.median_since(t0);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::write(direct.dir.join("outcomes.tsv"), rows.join("\n") + "\n")?;
        Ok(vec![format!(
            "naive-wall: {:.1} min (load {load:.1})",
            wall.as_secs_f64() / 60.0
        )])
    }

    /// Wall-time ratios, outcome agreement and the registry projection's inputs.
    fn compare(&self) -> Result<Vec<String>> {
        let farm = read_tsv(&self.work.join("farm.tsv"))?;
        let wall = |name: &str| -> Result<f64> {
            let row = farm.iter().find(|r| r[0] == name);
            let row = row.with_context(|| format!("farm.tsv: no {name}"))?;
            Ok(row[1].parse()?)
        };
        let naive = read_tsv(&self.naive_dir().join("outcomes.tsv"))?;
        let naive_wall: f64 = naive
            .iter()
            .map(|r| r[3].parse::<f64>().unwrap_or(0.0))
            .sum();
        let naive_cpu: Vec<f64> = naive.iter().map(|r| r[4].parse().unwrap_or(0.0)).collect();
        let first = common::farm_results(&self.state(), FIRST)?;
        let second = common::farm_results(&self.state(), SECOND)?;
        let (w1, w2) = (wall(FIRST)?, wall(SECOND)?);

        let disagreements = outcome_disagreements(&first, &second, &naive);
        println!("| crate | side | this | against | reference |");
        println!("|---|---|---|---|---|");
        for d in &disagreements {
            println!("{d}");
        }
        let cached = second.values().filter(|r| r.start_cached.is_some()).count();
        let mut cpu = naive_cpu.clone();
        cpu.sort_by(f64::total_cmp);
        let total_cpu: f64 = cpu.iter().sum();
        Ok(vec![
            format!("farm-crates: {} crates", first.len()),
            format!("naive-sides-wall: {:.1} min", naive_wall / 60.0),
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
        ])
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

fn read_tsv(path: &Path) -> Result<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect())
}
