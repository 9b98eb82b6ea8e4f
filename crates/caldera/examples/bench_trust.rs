//! Can the farm's results be believed? (`cargo xtask bench trust [-- PHASE…]`)
//!
//! On a set of real registry crates (popular ones with dev-dependencies), build-and-test:
//!
//! * **ab** — `caldera local` (embedded Postgres, scheduler, one Docker worker), stable vs
//!   nightly, confirmation on (`--confirm 2`): regressions of the first runs, regressions after
//!   confirmation, flaky ones, and what the re-runs cost against the experiment's wall time.
//! * **aa** — the same set as a calibration (A/A) experiment, both sides on one toolchain: every
//!   confirmed regression there is the farm disagreeing with itself.
//! * **direct** — every (crate, toolchain) built and tested by cargo directly, outside the farm,
//!   as an unprivileged user (uid/gid 65534) with its own cargo home: the crate's `.crate` from
//!   static.crates.io unpacked by that user, the farm's lockfile of the `ab` experiment (waited
//!   for when `ab` runs alongside; else cargo's own, marked in the table), the same
//!   cargo commands and `RUSTFLAGS` as the farm's steps (`plan_steps`), one target dir per
//!   toolchain shared across crates (as the farm's slot shares one per experiment). No sandbox,
//!   network allowed, no manifest tidying.
//! * **compare** — each (crate, toolchain) outcome of `ab` against `direct`, printed as a table
//!   with every disagreement named.
//!
//! Phases default to all four, in that order; `ab`, `aa` (with its own `BENCH_WORK_DIR`) and
//! `direct` may also run as three processes at once. Run as root (Docker; switching to the unprivileged
//! user). Files under `BENCH_WORK_DIR` (default `/var/tmp/caldera-bench-trust`): the farm's state
//! dir, the direct runs' cargo home, toolchains (hard-linked copies readable by that user),
//! sources, target dirs and logs (`direct/logs/<toolchain>/<crate>.log`). Crates:
//! `BENCH_TRUST_CRATES` (comma-separated `name@version`). `BENCH_TRUST_AA` names the A/A toolchain
//! (default `stable`). The caldera binary is the one next to this example's directory (xtask
//! builds it first). Ends with one `<name>: <value> <unit>` line per figure.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use caldera_core::crates::CrateId;
use caldera_core::toolchain::Toolchain;
use common::{Direct, FarmResult, agrees, status};

const AB: &str = "trust-ab";
const AA: &str = "trust-aa";

struct Bench {
    work: PathBuf,
    crates: Vec<(String, String)>,
    caldera: PathBuf,
}

fn main() -> Result<()> {
    let work = PathBuf::from(
        std::env::var("BENCH_WORK_DIR").unwrap_or_else(|_| "/var/tmp/caldera-bench-trust".into()),
    );
    let crates = common::crate_list("BENCH_TRUST_CRATES", common::DEFAULT_CRATES)?;
    let caldera = common::caldera_binary()?;
    std::fs::create_dir_all(&work)?;
    common::chmod(&work, 0o755)?;
    let bench = Bench {
        work,
        crates,
        caldera,
    };
    let phases: Vec<String> = std::env::args().skip(1).collect();
    let phases = if phases.is_empty() {
        vec!["ab".into(), "aa".into(), "direct".into(), "compare".into()]
    } else {
        phases
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut figures = Vec::new();
    for phase in &phases {
        match phase.as_str() {
            "ab" => figures.extend(bench.farm(AB, "stable", "nightly", false)?),
            "aa" => {
                let tc = std::env::var("BENCH_TRUST_AA").unwrap_or_else(|_| "stable".into());
                figures.extend(bench.farm(AA, &tc, &tc, true)?)
            }
            "direct" => figures.extend(rt.block_on(bench.direct())?),
            "compare" => figures.extend(bench.compare()?),
            other => bail!("unknown phase {other:?}; expected ab, aa, direct or compare"),
        }
    }
    for f in figures {
        println!("{f}");
    }
    Ok(())
}

impl Bench {
    fn state(&self) -> PathBuf {
        self.work.join("state")
    }

    fn crate_list(&self) -> String {
        self.crates
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs one experiment through `caldera local`; its figures.
    fn farm(&self, name: &str, start: &str, end: &str, calibration: bool) -> Result<Vec<String>> {
        let log = self.work.join(format!("{name}.out"));
        eprintln!(
            "bench trust: {name}: caldera local, {} crates, {start} vs {end} (output in {})",
            self.crates.len(),
            log.display()
        );
        let mut cmd = Command::new(&self.caldera);
        cmd.arg("local")
            .arg("--state-dir")
            .arg(self.state())
            .args(["--name", name, "--crates"])
            .arg(self.crate_list())
            .args(["--start", start, "--end", end, "--mode", "build-and-test"])
            .args(["--confirm", "2", "--listen", "127.0.0.1:0"])
            .stdout(std::fs::File::create(&log)?);
        if calibration {
            cmd.arg("--calibration");
        }
        let t0 = Instant::now();
        status(&mut cmd)?;
        let wall = t0.elapsed();
        let results = self.farm_results(name)?;
        let summary = std::fs::read_to_string(self.report_dir(name).join("summary.md"))?;
        let count = |f: &dyn Fn(&FarmResult) -> bool| results.values().filter(|r| f(r)).count();
        let regressed = |r: &FarmResult| r.comparison == "regressed";
        let first = count(&regressed);
        for (id, r) in results.iter().filter(|(_, r)| r.confirmation.is_some()) {
            eprintln!(
                "bench trust: {name}: {id}: {} [{}] ({} / {})",
                r.comparison,
                r.confirmation.as_deref().unwrap_or_default(),
                r.start,
                r.end
            );
        }
        let confirmed = count(&|r| regressed(r) && r.confirmation.as_deref() == Some("confirmed"));
        let flaky = count(&|r| r.confirmation.as_deref() == Some("flaky"));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in results.values() {
            *counts.entry(r.comparison.as_str()).or_default() += 1;
        }
        eprintln!("bench trust: {name}: comparisons {counts:?}");
        let rerun_min = summary
            .split("cost ")
            .nth(1)
            .and_then(|s| s.split(" min").next())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        Ok(vec![
            format!("{name}-crates: {} crates", results.len()),
            format!("{name}-wall: {:.1} min", wall.as_secs_f64() / 60.0),
            format!("{name}-regressed-first-run: {first} crates"),
            format!("{name}-regressed-confirmed: {confirmed} crates"),
            format!("{name}-flaky: {flaky} crates"),
            format!("{name}-confirmation-builds: {rerun_min:.1} min"),
            format!(
                "{name}-confirmation-share-of-wall: {:.1} %",
                100.0 * rerun_min / (wall.as_secs_f64() / 60.0)
            ),
        ])
    }

    fn report_dir(&self, name: &str) -> PathBuf {
        self.state().join("reports").join(name)
    }

    fn farm_results(&self, name: &str) -> Result<BTreeMap<String, FarmResult>> {
        common::farm_results(&self.state(), name)
    }

    fn direct_dir(&self) -> PathBuf {
        self.work.join("direct")
    }

    /// Builds and tests every (crate, toolchain) with cargo directly as the unprivileged user,
    /// one target dir per toolchain shared across the crates.
    async fn direct(&self) -> Result<Vec<String>> {
        let direct = Direct::new(self.direct_dir())?;
        let store = caldera_storage::LocalStore::open(self.state().join("objects"), 1 << 30)?;
        let mut outcomes = Vec::new();
        let t0 = Instant::now();
        for tc_name in ["stable", "nightly"] {
            let toolchain = direct.user_toolchain(tc_name).await?;
            let tc = Toolchain::rustup(tc_name)?;
            let target = direct.dir.join(format!("target-{tc}"));
            for (name, version) in &self.crates {
                let id = format!("{name}@{version}");
                let krate = CrateId::Registry {
                    name: name.clone(),
                    version: version.parse()?,
                    checksum: None,
                };
                let lockfile = self.wait_for_farm_lockfile(&store, &krate).await;
                let root = direct
                    .unpack(name, version, tc_name, lockfile.as_deref())
                    .await?;
                let started = Instant::now();
                // cargo runs for minutes: off the runtime's worker thread
                let outcome = tokio::task::block_in_place(|| {
                    direct.build_and_test(&toolchain, &tc, &root, &id, lockfile.is_some(), &target)
                })?;
                eprintln!(
                    "bench trust: direct {tc_name} {id}: {outcome} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                let lock = if lockfile.is_some() { "farm" } else { "own" };
                outcomes.push(format!("{tc_name}\t{id}\t{outcome}\t{lock}"));
            }
        }
        std::fs::write(direct.dir.join("outcomes.tsv"), outcomes.join("\n") + "\n")?;
        Ok(vec![format!(
            "trust-direct-wall: {:.1} min",
            t0.elapsed().as_secs_f64() / 60.0
        )])
    }

    /// The farm's lockfile, waiting for it while the `ab` phase runs alongside (at most
    /// `BENCH_TRUST_LOCK_WAIT` seconds, default 180; a crate the farm could not resolve has none).
    async fn wait_for_farm_lockfile(
        &self,
        store: &caldera_storage::LocalStore,
        krate: &CrateId,
    ) -> Option<Vec<u8>> {
        let wait = std::env::var("BENCH_TRUST_LOCK_WAIT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        let deadline = Instant::now() + Duration::from_secs(wait);
        loop {
            if let Some(lock) = common::farm_lockfile(store, AB, krate).await {
                return Some(lock);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "bench trust: direct {krate}: no lockfile from the farm; cargo makes one"
                );
                return None;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Each (crate, toolchain) of the `ab` experiment against the direct runs.
    fn compare(&self) -> Result<Vec<String>> {
        let farm = self.farm_results(AB)?;
        let direct = std::fs::read_to_string(self.direct_dir().join("outcomes.tsv"))?;
        let mut agree = 0;
        let mut total = 0;
        println!("| crate | toolchain | farm | direct | lockfile | agree |");
        println!("|---|---|---|---|---|---|");
        for line in direct.lines() {
            let mut parts = line.split('\t');
            let (Some(tc), Some(id), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(r) = farm.get(id) else { continue };
            let f = if tc == "stable" { &r.start } else { &r.end };
            let lock = parts.next().unwrap_or("farm");
            let same = agrees(f, d);
            total += 1;
            agree += usize::from(same);
            println!(
                "| {id} | {tc} | {f} | {d} | {lock} | {} |",
                if same { "yes" } else { "**no**" }
            );
        }
        Ok(vec![format!(
            "trust-direct-agreement: {agree} of {total} (crate, toolchain) outcomes"
        )])
    }
}
