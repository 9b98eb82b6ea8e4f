//! What the benchmarks over real registry crates share: running `caldera local`'s experiments
//! and reading their results.json, and building and testing a crate with cargo directly (outside
//! the farm, as an unprivileged user with its own cargo home) the way the farm's steps do.

#![allow(dead_code)] // each benchmark uses its part

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
/// the newest versions in the index on 2026-12-06.
pub const DEFAULT_CRATES: &str = "anyhow@1.0.105,thiserror@2.0.21,serde_json@1.0.154,itoa@1.0.19,\
ryu@1.0.23,memchr@2.8.3,aho-corasick@1.1.5,bitflags@2.13.2,either@1.19.0,once_cell@1.21.4,\
smallvec@1.16.6,semver@1.0.28,byteorder@1.5.0,bytes@1.12.2,log@0.4.35,fnv@1.0.7,\
hashbrown@0.17.2,indexmap@2.14.2,arrayvec@0.7.9,crc32fast@1.5.6,unicode-segmentation@1.13.3,\
walkdir@2.5.1,same-file@1.0.6,glob@0.3.4,tempfile@3.27.0,fastrand@2.5.0,humantime@2.4.0,\
slab@0.4.12,lazy_static@1.5.1,getrandom@0.4.3,textwrap@0.16.4,paste@1.0.15,quote@1.0.47,\
proc-macro2@1.0.107,unicode-ident@1.0.27,zeroize@1.9.2,anstyle@1.0.15,hex@0.4.3,heck@0.5.0,\
strsim@0.11.1";

pub const NOBODY: u32 = 65534;
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// `name@version,…` from the variable `var`, else `default`.
pub fn crate_list(var: &str, default: &str) -> Result<Vec<(String, String)>> {
    let list = std::env::var(var).unwrap_or_else(|_| default.into());
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('@')
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .with_context(|| format!("{s:?}: crates are NAME@VERSION"))
        })
        .collect()
}

/// The `caldera` binary next to this example's directory (xtask builds it first).
pub fn caldera_binary() -> Result<PathBuf> {
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
    Ok(caldera)
}

pub fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("{cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?}: {s}");
    }
    Ok(())
}

fn chown_nobody(path: &Path) -> Result<()> {
    status(Command::new("chown").arg("65534:65534").arg(path))
}

/// One crate's line of a report's results.json.
pub struct FarmResult {
    pub comparison: String,
    pub confirmation: Option<String>,
    pub start: Outcome,
    pub end: Outcome,
    /// The experiment a side was settled from by the result cache.
    pub start_cached: Option<String>,
    pub end_cached: Option<String>,
}

/// `reports/<name>/results.json` of a `caldera local` state dir.
pub fn results_json(state: &Path, name: &str) -> Result<serde_json::Value> {
    let path = state.join("reports").join(name).join("results.json");
    Ok(serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("{}", path.display()))?,
    )?)
}

/// The crates of [`results_json`], by `name@version`.
pub fn farm_results(state: &Path, name: &str) -> Result<BTreeMap<String, FarmResult>> {
    let json = results_json(state, name)?;
    let mut out = BTreeMap::new();
    for c in json["crates"].as_array().context("results.json: crates")? {
        let id: CrateId = serde_json::from_value(c["crate"].clone())?;
        // `cached`: crate → side → the experiment the side was settled from
        let cached = |side: &str| {
            json["cached"][id.to_string()][side]
                .as_str()
                .map(str::to_owned)
        };
        out.insert(
            crate_key(&id),
            FarmResult {
                comparison: c["comparison"].as_str().unwrap_or_default().to_owned(),
                confirmation: c["confirmation"].as_str().map(str::to_owned),
                start: serde_json::from_value(c["start"].clone())?,
                end: serde_json::from_value(c["end"].clone())?,
                start_cached: cached("start"),
                end_cached: cached("end"),
            },
        );
    }
    Ok(out)
}

/// `name@version` for registry crates, the crate's own form otherwise.
pub fn crate_key(id: &CrateId) -> String {
    match id {
        CrateId::Registry { name, version, .. } => format!("{name}@{version}"),
        other => other.to_string(),
    }
}

/// The lockfile both sides of the crate ran with in experiment `experiment` of the state dir
/// whose objects are in `store`.
pub async fn farm_lockfile(
    store: &caldera_storage::LocalStore,
    experiment: &str,
    krate: &CrateId,
) -> Option<Vec<u8>> {
    use caldera_storage::ObjectStore;
    let key = caldera_storage::keys::lockfile(experiment, &krate.to_string()).ok()?;
    store.get_bytes(&key).await.ok().map(|b| b.to_vec())
}

/// A farm outcome in the direct runs' words (test-pass, build-fail, test-fail, …); the farm's
/// spurious reasons keep their name, so they never agree with a direct outcome by accident.
pub fn farm_class(o: &Outcome) -> String {
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

/// Whether the farm's outcome `farm` and a direct run's class `direct` say the same.
pub fn agrees(farm: &Outcome, direct: &str) -> bool {
    farm_class(farm) == direct
        || (direct == "fetch-fail"
            && matches!(farm, Outcome::Broken { .. } | Outcome::PrepareFail { .. }))
}

/// CPU time (user + system) of this process's waited-for children, from `/proc/self/stat`.
pub fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the fields after the command's closing parenthesis; cutime and cstime are fields 16 and 17
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // the kernel's USER_HZ is 100 on Linux
    Duration::from_millis((ticks(13) + ticks(14)) * 10)
}

/// Building and testing crates with cargo directly as the unprivileged user, under `dir`
/// (`home`, `cargo-home`, `downloads`, `toolchains`, `logs`, `src`).
pub struct Direct {
    pub dir: PathBuf,
    http: reqwest::Client,
}

impl Direct {
    pub fn new(dir: PathBuf) -> Result<Direct> {
        for sub in [
            "home",
            "cargo-home",
            "downloads",
            "toolchains",
            "logs",
            "src",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        status(Command::new("chown").arg("-R").arg("65534:65534").arg(&dir))?;
        Ok(Direct {
            dir,
            http: reqwest::Client::new(),
        })
    }

    /// A copy of the host's toolchain the unprivileged user can read (hard links: no space).
    pub async fn user_toolchain(&self, name: &str) -> Result<PathBuf> {
        let home = caldera_sandbox::default_rustup_home().context("RUSTUP_HOME or HOME")?;
        let host = caldera_sandbox::resolve_toolchain(&home, name).await?.path;
        let copy = self.dir.join("toolchains").join(name);
        if !copy.exists() {
            status(Command::new("cp").arg("-al").arg(&host).arg(&copy))?;
        }
        Ok(copy)
    }

    /// The crate's source, downloaded once from static.crates.io and unpacked afresh by the
    /// unprivileged user under `src/<tree>/`, with `lockfile` written into it when given.
    pub async fn unpack(
        &self,
        name: &str,
        version: &str,
        tree: &str,
        lockfile: Option<&[u8]>,
    ) -> Result<PathBuf> {
        let tarball = self
            .dir
            .join("downloads")
            .join(format!("{name}@{version}.crate"));
        if !tarball.exists() {
            let url = format!("https://static.crates.io/crates/{name}/{name}-{version}.crate");
            let body = self
                .http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            std::fs::write(&tarball, &body)?;
        }
        let src = self.dir.join("src").join(tree);
        std::fs::create_dir_all(&src)?;
        chown_nobody(&src)?;
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
        if let Some(lock) = lockfile {
            std::fs::write(root.join("Cargo.lock"), lock)?;
            chown_nobody(&root.join("Cargo.lock"))?;
        }
        Ok(root)
    }

    /// `cargo fetch`, then the farm's build-and-test steps, as the unprivileged user with
    /// `target` as the target dir; the outcome's class (test-pass, fetch-fail, build-fail,
    /// test-fail, timeout(step)). The log goes to `logs/<toolchain>/<id>.log`.
    pub fn build_and_test(
        &self,
        toolchain: &Path,
        tc: &Toolchain,
        root: &Path,
        id: &str,
        locked: bool,
        target: &Path,
    ) -> Result<String> {
        let log_path = self
            .dir
            .join("logs")
            .join(tc.to_string())
            .join(format!("{id}.log"));
        std::fs::create_dir_all(log_path.parent().context("log dir")?)?;
        let log = std::fs::File::create(&log_path)?;
        let bin = toolchain.join("bin");
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
                .env("HOME", self.dir.join("home"))
                .env("CARGO_HOME", self.dir.join("cargo-home"))
                .env("CARGO_TARGET_DIR", target)
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
}
