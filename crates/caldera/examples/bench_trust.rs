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

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use caldera_core::crates::CrateId;
use caldera_core::experiment::Mode;
use caldera_core::outcome::{Outcome, TestFailReason};
use caldera_core::toolchain::Toolchain;
use caldera_worker::docker::plan_steps;

/// 40 popular crates, most with dev-dependencies (fnv, heck and strsim without, as controls):
/// the newest versions in the index on the day of the first run (2026-12-06).
const DEFAULT_CRATES: &str = "anyhow@1.0.105,thiserror@2.0.21,serde_json@1.0.154,itoa@1.0.19,\
ryu@1.0.23,memchr@2.8.3,aho-corasick@1.1.5,bitflags@2.13.2,either@1.19.0,once_cell@1.21.4,\
smallvec@1.16.6,semver@1.0.28,byteorder@1.5.0,bytes@1.12.2,log@0.4.35,fnv@1.0.7,\
hashbrown@0.17.2,indexmap@2.14.2,arrayvec@0.7.9,crc32fast@1.5.6,unicode-segmentation@1.13.3,\
walkdir@2.5.1,same-file@1.0.6,glob@0.3.4,tempfile@3.27.0,fastrand@2.5.0,humantime@2.4.0,\
slab@0.4.12,lazy_static@1.5.1,getrandom@0.4.3,textwrap@0.16.4,paste@1.0.15,quote@1.0.47,\
proc-macro2@1.0.107,unicode-ident@1.0.27,zeroize@1.9.2,anstyle@1.0.15,hex@0.4.3,heck@0.5.0,\
strsim@0.11.1";

const AB: &str = "trust-ab";
const AA: &str = "trust-aa";
const NOBODY: u32 = 65534;
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

struct Bench {
    work: PathBuf,
    crates: Vec<(String, String)>,
    caldera: PathBuf,
}

fn main() -> Result<()> {
    let work = PathBuf::from(
        std::env::var("BENCH_WORK_DIR").unwrap_or_else(|_| "/var/tmp/caldera-bench-trust".into()),
    );
    let list = std::env::var("BENCH_TRUST_CRATES").unwrap_or_else(|_| DEFAULT_CRATES.into());
    let crates = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('@')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("{s:?}: crates are NAME@VERSION"))
        })
        .collect::<Result<Vec<_>>>()?;
    let exe = std::env::current_exe()?;
    let caldera = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("caldera"))
        .context("the example's directory")?;
    if !caldera.exists() {
        bail!(
            "{} is missing: `cargo build --release -p caldera` first (xtask does)",
            caldera.display()
        );
    }
    std::fs::create_dir_all(&work)?;
    chmod(&work, 0o755)?;
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

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?}: {s}");
    }
    Ok(())
}

/// One crate's line of a report's results.json.
struct FarmResult {
    comparison: String,
    confirmation: Option<String>,
    start: Outcome,
    end: Outcome,
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
        let path = self.report_dir(name).join("results.json");
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("{}", path.display()))?,
        )?;
        let mut out = BTreeMap::new();
        for c in json["crates"].as_array().context("results.json: crates")? {
            let id: CrateId = serde_json::from_value(c["crate"].clone())?;
            let key = match &id {
                CrateId::Registry { name, version, .. } => format!("{name}@{version}"),
                other => other.to_string(),
            };
            out.insert(
                key,
                FarmResult {
                    comparison: c["comparison"].as_str().unwrap_or_default().to_owned(),
                    confirmation: c["confirmation"].as_str().map(str::to_owned),
                    start: serde_json::from_value(c["start"].clone())?,
                    end: serde_json::from_value(c["end"].clone())?,
                },
            );
        }
        Ok(out)
    }

    fn direct_dir(&self) -> PathBuf {
        self.work.join("direct")
    }

    /// Builds and tests every (crate, toolchain) with cargo directly as the unprivileged user.
    async fn direct(&self) -> Result<Vec<String>> {
        let dir = self.direct_dir();
        for sub in ["home", "cargo-home", "downloads", "toolchains", "logs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        status(Command::new("chown").arg("-R").arg("65534:65534").arg(&dir))?;
        let store = caldera_storage::LocalStore::open(self.state().join("objects"), 1 << 30)?;
        let http = reqwest::Client::new();
        let mut outcomes = Vec::new();
        let t0 = Instant::now();
        for tc_name in ["stable", "nightly"] {
            let toolchain = self.user_toolchain(tc_name).await?;
            let tc = Toolchain::rustup(tc_name)?;
            for (name, version) in &self.crates {
                let id = format!("{name}@{version}");
                let tarball = dir.join("downloads").join(format!("{id}.crate"));
                if !tarball.exists() {
                    let url =
                        format!("https://static.crates.io/crates/{name}/{name}-{version}.crate");
                    let body = http
                        .get(&url)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    std::fs::write(&tarball, &body)?;
                }
                let src = dir.join("src").join(tc_name);
                std::fs::create_dir_all(&src)?;
                status(Command::new("chown").arg("65534:65534").arg(&src))?;
                let root = src.join(format!("{name}-{version}"));
                if root.exists() {
                    std::fs::remove_dir_all(&root)?;
                }
                status(
                    Command::new("tar")
                        .arg("xzf")
                        .arg(&tarball)
                        .arg("-C")
                        .arg(&src)
                        .uid(NOBODY)
                        .gid(NOBODY),
                )?;
                let krate = CrateId::Registry {
                    name: name.clone(),
                    version: version.parse()?,
                    checksum: None,
                };
                let lockfile = self.wait_for_farm_lockfile(&store, &krate).await;
                if let Some(lock) = &lockfile {
                    std::fs::write(root.join("Cargo.lock"), lock)?;
                    status(
                        Command::new("chown")
                            .arg("65534:65534")
                            .arg(root.join("Cargo.lock")),
                    )?;
                }
                let started = Instant::now();
                // cargo runs for minutes: off the runtime's worker thread
                let outcome = tokio::task::block_in_place(|| {
                    self.direct_one(&toolchain, &tc, &root, &id, lockfile.is_some())
                })?;
                eprintln!(
                    "bench trust: direct {tc_name} {id}: {outcome} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                let lock = if lockfile.is_some() { "farm" } else { "own" };
                outcomes.push(format!("{tc_name}\t{id}\t{outcome}\t{lock}"));
            }
        }
        std::fs::write(dir.join("outcomes.tsv"), outcomes.join("\n") + "\n")?;
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
            if let Some(lock) = self.farm_lockfile(store, krate).await {
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

    /// The farm's lockfile of the crate in the `ab` experiment (both sides ran with it).
    async fn farm_lockfile(
        &self,
        store: &caldera_storage::LocalStore,
        krate: &CrateId,
    ) -> Option<Vec<u8>> {
        use caldera_storage::ObjectStore;
        let key = caldera_storage::keys::lockfile(AB, &krate.to_string()).ok()?;
        store.get_bytes(&key).await.ok().map(|b| b.to_vec())
    }

    /// A copy of the host's toolchain the unprivileged user can read (hard links: no space).
    async fn user_toolchain(&self, name: &str) -> Result<PathBuf> {
        let home = caldera_sandbox::default_rustup_home().context("RUSTUP_HOME or HOME")?;
        let host = caldera_sandbox::resolve_toolchain(&home, name).await?.path;
        let copy = self.direct_dir().join("toolchains").join(name);
        if !copy.exists() {
            status(Command::new("cp").arg("-al").arg(&host).arg(&copy))?;
        }
        Ok(copy)
    }

    /// cargo fetch, then the farm's steps, as the unprivileged user; the outcome's class.
    fn direct_one(
        &self,
        toolchain: &Path,
        tc: &Toolchain,
        root: &Path,
        id: &str,
        locked: bool,
    ) -> Result<String> {
        let dir = self.direct_dir();
        let log_path = dir
            .join("logs")
            .join(tc.to_string())
            .join(format!("{id}.log"));
        std::fs::create_dir_all(log_path.parent().context("log dir")?)?;
        let log = std::fs::File::create(&log_path)?;
        let bin = toolchain.join("bin");
        let target = dir.join(format!("target-{tc}"));
        let mut steps: Vec<Vec<String>> = vec![vec!["cargo".into(), "fetch".into()]];
        if locked {
            steps[0].push("--locked".into());
        }
        // after the fetch there is a lockfile (cargo wrote one if the farm had none)
        for step in plan_steps(Mode::BuildAndTest, false, tc) {
            steps.push(step.argv);
        }
        let names = ["fetch", "build", "test --no-run", "test"];
        for (i, argv) in steps.iter().enumerate() {
            let mut child = Command::new(bin.join("cargo"));
            child
                .args(&argv[1..])
                .current_dir(root)
                .env_clear()
                .env(
                    "PATH",
                    format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
                )
                .env("HOME", dir.join("home"))
                .env("CARGO_HOME", dir.join("cargo-home"))
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", "--cap-lints=forbid")
                .env("RUSTDOCFLAGS", "--cap-lints=forbid")
                .env("CARGO_INCREMENTAL", "0")
                .env("LC_ALL", "C")
                .uid(NOBODY)
                .gid(NOBODY)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?);
            let mut child = child.spawn()?;
            let t0 = Instant::now();
            let code = loop {
                if let Some(s) = child.try_wait()? {
                    break s;
                }
                if t0.elapsed() > STEP_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(format!("timeout({})", names[i]));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if !code.success() {
                return Ok(match i {
                    0 => "fetch-fail".into(),
                    1 | 2 => "build-fail".into(),
                    _ => "test-fail".into(),
                });
            }
        }
        Ok("test-pass".into())
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
            let fc = farm_class(f);
            let same = fc == d
                || (d == "fetch-fail"
                    && matches!(f, Outcome::Broken { .. } | Outcome::PrepareFail { .. }));
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

/// A farm outcome in the direct runs' words (test-pass, build-fail, test-fail, …); the farm's
/// spurious reasons keep their name, so they never agree with a direct outcome by accident.
fn farm_class(o: &Outcome) -> String {
    match o {
        Outcome::TestPass => "test-pass".into(),
        Outcome::BuildFail(_) if !o.is_spurious() => "build-fail".into(),
        Outcome::TestFail {
            reason: None | Some(TestFailReason::DiagnosticsChange),
            ..
        } => "test-fail".into(),
        other => other.to_string(),
    }
}
