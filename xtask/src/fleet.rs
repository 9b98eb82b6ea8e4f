//! `cargo xtask fleet`: the deploy stack on this machine, offline, with faults injected.
//!
//! Builds the images (scripts/build-fleet-images.sh), brings up deploy/fleet/compose.yaml
//! (Postgres, an S3 server, the master with TLS, three workers), runs an experiment over registry
//! crates and fixtures, and meanwhile kills a worker container mid-job, restarts Postgres and
//! stops the S3 server for a while. Then it checks, in Postgres and through the HTTPS API, that
//! every crate has exactly one result per side, no job is left unfinished or errored by the
//! faults, every log is readable, and the report lists every crate once; and tears it all down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};

mod stack;

use stack::Stack;

/// Registry crates of the fleet's experiment: small, pass on both sides, and without heavy
/// dev-dependencies (`build-and-test` builds those: adler's and hex's took minutes here).
const REGISTRY_CRATES: &[&str] = &[
    "cfg-if@1.0.1",
    "fnv@1.0.7",
    "itoa@1.0.11",
    "scopeguard@1.2.0",
    "static_assertions@1.1.0",
    "semver@1.0.23",
    "matches@0.1.10",
    "version_check@0.9.5",
];
/// Fixture crates (tests/fixtures/crates): a regression, a fix, a test failure, a pass.
const FIXTURES: &[&str] = &[
    "regress-on-nightly",
    "fixed-on-nightly",
    "test-fail",
    "pass",
];
const EXPERIMENT: &str = "fleet";

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// How many of the registry crates to run (up to 8; the 4 fixtures always run).
    #[arg(long, default_value_t = REGISTRY_CRATES.len())]
    pub registry_crates: usize,
    /// How long the S3 server stays stopped (seconds).
    #[arg(long, default_value_t = S3_OUTAGE_SECS)]
    pub s3_outage_secs: u64,
    /// Run the experiment without injecting faults.
    #[arg(long)]
    pub no_faults: bool,
    /// Leave the stack running at the end (tear it down later with `--down`).
    #[arg(long)]
    pub keep: bool,
    /// Only tear down a stack left by an earlier run, then exit.
    #[arg(long)]
    pub down: bool,
    /// Give up when the experiment has not completed after this many seconds.
    #[arg(long, default_value_t = TIMEOUT_SECS)]
    pub timeout_secs: u64,
}

const S3_OUTAGE_SECS: u64 = 60;
const TIMEOUT_SECS: u64 = 1800;

/// The defaults of the command line: the whole run, every fault.
impl Default for FleetArgs {
    fn default() -> Self {
        FleetArgs {
            registry_crates: REGISTRY_CRATES.len(),
            s3_outage_secs: S3_OUTAGE_SECS,
            no_faults: false,
            keep: false,
            down: false,
            timeout_secs: TIMEOUT_SECS,
        }
    }
}

/// The whole run; the stack is torn down whatever happens unless `--keep`.
pub fn run(root: &Path, args: &FleetArgs) -> Result<()> {
    let started = Instant::now();
    let stack = Stack::new(root)?;
    if args.down {
        return stack.down();
    }
    ensure!(
        args.registry_crates <= REGISTRY_CRATES.len(),
        "--registry-crates: at most {}",
        REGISTRY_CRATES.len()
    );
    crate::run(Command::new("bash").arg(root.join("scripts/build-fleet-images.sh")))?;
    stack.down()?;
    let result = stack
        .up()
        .and_then(|api| experiment(root, &stack, &api, args));
    if args.keep {
        say(&format!(
            "--keep: the stack stays up (project caldera-fleet, {}); `cargo xtask fleet --down` removes it",
            stack.dir.display()
        ));
    } else if let Err(e) = stack.down() {
        say(&format!("tearing down failed: {e:#}"));
    }
    result?;
    say(&format!(
        "PASSED in {} s: every crate exactly once, every log readable",
        started.elapsed().as_secs()
    ));
    Ok(())
}

fn say(msg: &str) {
    eprintln!("fleet: {msg}");
}

/// The experiment, its faults and the checks.
fn experiment(root: &Path, stack: &Stack, api: &Api, args: &FleetArgs) -> Result<()> {
    let crates = crate_list(root, args.registry_crates)?;
    let body = json!({
        "name": EXPERIMENT, "start": "stable", "end": "stable+rustflags=--cfg=caldera_nightly",
        "mode": "build-and-test", "confirm": 0,
        "crates": {"kind": "list", "crates": crates},
    });
    api.call("POST", "/api/v1/experiments", Some(&body), 201)?;
    api.call(
        "POST",
        &format!("/api/v1/experiments/{EXPERIMENT}/start"),
        None,
        200,
    )?;
    say(&format!(
        "experiment {EXPERIMENT} started: {} crates",
        crates.len()
    ));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut faults = Vec::new();
    if !args.no_faults {
        faults.push(kill_worker(stack, api, deadline)?);
        faults.push(restart_postgres(stack, api)?);
        faults.push(stop_s3(stack, args.s3_outage_secs)?);
    }
    wait_completed(api, deadline)?;
    for f in &faults {
        say(&format!("fault: {f}"));
    }
    verify(stack, api, crates.len())
}

fn crate_list(root: &Path, registry: usize) -> Result<Vec<String>> {
    let fixtures = root.join("tests/fixtures/crates").canonicalize()?;
    let mut list: Vec<String> = REGISTRY_CRATES[..registry]
        .iter()
        .map(|s| s.to_string())
        .collect();
    list.extend(
        FIXTURES
            .iter()
            .map(|f| format!("path:{}", fixtures.join(f).display())),
    );
    Ok(list)
}

fn progress(api: &Api) -> Result<Value> {
    let v = api.get_json(&format!("/api/v1/experiments/{EXPERIMENT}"))?;
    Ok(v)
}

fn wait_completed(api: &Api, deadline: Instant) -> Result<()> {
    let mut last = String::new();
    loop {
        let v = progress(api)?;
        let line = format!("{} {}", v["status"], v["progress"]);
        if line != last {
            say(&format!("experiment: {line}"));
            last = line;
        }
        if v["status"] == "completed" {
            return Ok(());
        }
        ensure!(
            v["status"] == "running" || v["status"] == "queued",
            "the experiment is {}",
            v["status"]
        );
        ensure!(
            Instant::now() < deadline,
            "the experiment did not complete in time"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Fault 1: `docker kill` a worker that holds a job, wait until its lease expired and the job went
/// back to the queue, then start the container again (the machine rebooted).
fn kill_worker(stack: &Stack, api: &Api, deadline: Instant) -> Result<String> {
    let (worker, krate) = loop {
        let busy = stack.sql(
            "SELECT w.name, c.crate_id, j.attempt FROM jobs j JOIN workers w ON w.id = j.lease_owner \
             JOIN crates c ON c.id = j.crate_id WHERE j.state = 'running' ORDER BY j.claimed_at LIMIT 1",
        )?;
        if let Some(row) = busy.first() {
            break (row[0].clone(), row[1].clone());
        }
        ensure!(Instant::now() < deadline, "no worker ever took a job");
        std::thread::sleep(Duration::from_millis(500));
    };
    let service = worker.trim_start_matches("fleet-").to_string();
    // a few seconds into the job, so that the sandbox is building
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = Instant::now();
    stack.docker(&["kill", &stack.container(&service)?])?;
    say(&format!(
        "killed {service} (container) while it held {krate}"
    ));
    let (state, attempt) = loop {
        let rows = stack.sql(&format!(
            "SELECT j.state, j.attempt, coalesce(w.name, '') FROM jobs j JOIN crates c ON c.id = j.crate_id \
             LEFT JOIN workers w ON w.id = j.lease_owner WHERE c.crate_id = '{}'",
            krate.replace('\'', "''")
        ))?;
        let row = rows.first().context("the killed worker's job vanished")?;
        if row[2] != worker {
            break (row[0].clone(), row[1].clone());
        }
        ensure!(
            Instant::now() < deadline,
            "the killed worker's lease never expired"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let requeued = killed_at.elapsed().as_secs();
    stack.compose(&["start", &service])?;
    let connected = wait_connected(api, &worker, deadline)?;
    Ok(format!(
        "worker killed mid-job: {service} held {krate}; {requeued} s later its lease was gone and the job \
         was {state} (attempt {attempt}); {service} started again and reconnected after {connected} s"
    ))
}

fn wait_connected(api: &Api, worker: &str, deadline: Instant) -> Result<u64> {
    let t = Instant::now();
    loop {
        let workers = api.get_json("/api/v1/workers")?;
        let up = workers
            .as_array()
            .into_iter()
            .flatten()
            .chain(workers["workers"].as_array().into_iter().flatten())
            .any(|w| w["name"] == worker && w["connected"] == true);
        if up {
            return Ok(t.elapsed().as_secs());
        }
        ensure!(Instant::now() < deadline, "{worker} never reconnected");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Fault 2: `docker restart` the Postgres container; the master answers /healthz again after.
fn restart_postgres(stack: &Stack, api: &Api) -> Result<String> {
    let before = count_results(stack)?;
    let t = Instant::now();
    stack.docker(&["restart", &stack.container("postgres")?])?;
    let mut healthy = None;
    while t.elapsed() < Duration::from_secs(120) {
        if api.call("GET", "/healthz", None, 200).is_ok() {
            healthy = Some(t.elapsed().as_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let healthy =
        healthy.context("the master did not report healthy within 120 s of the restart")?;
    Ok(format!(
        "Postgres restarted: {before} results before; the master was healthy again after {healthy} s"
    ))
}

/// Fault 3: stop the S3 container for `secs`, then start it again.
fn stop_s3(stack: &Stack, secs: u64) -> Result<String> {
    let s3 = stack.container("s3")?;
    let before = count_results(stack)?;
    stack.docker(&["stop", &s3])?;
    say(&format!("S3 stopped for {secs} s"));
    std::thread::sleep(Duration::from_secs(secs));
    let during = count_results(stack)? - before;
    stack.docker(&["start", &s3])?;
    Ok(format!(
        "S3 stopped for {secs} s: {during} results were written meanwhile (their logs waited in the \
         workers' upload spools)"
    ))
}

fn count_results(stack: &Stack) -> Result<i64> {
    let rows = stack.sql("SELECT count(*) FROM results")?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// The checks: Postgres, every log through the API, the report.
fn verify(stack: &Stack, api: &Api, n: usize) -> Result<()> {
    let rows = stack.sql(&format!(
        "SELECT c.crate_id, j.state, j.attempt, \
         (SELECT count(*) FROM results r WHERE r.experiment_id = j.experiment_id \
           AND r.crate_id = j.crate_id AND r.toolchain = 'start') AS start_n, \
         (SELECT count(*) FROM results r WHERE r.experiment_id = j.experiment_id \
           AND r.crate_id = j.crate_id AND r.toolchain = 'end') AS end_n, \
         (SELECT string_agg(r.toolchain || '=' || r.outcome_kind, ' ' ORDER BY r.toolchain DESC) \
           FROM results r WHERE r.experiment_id = j.experiment_id AND r.crate_id = j.crate_id) \
         FROM jobs j JOIN crates c ON c.id = j.crate_id JOIN experiments e ON e.id = j.experiment_id \
         WHERE e.name = '{EXPERIMENT}' ORDER BY c.crate_id"
    ))?;
    ensure!(rows.len() == n, "{} jobs for {n} crates", rows.len());
    let mut problems = Vec::new();
    for r in &rows {
        let (krate, state, attempt, outcomes) = (&r[0], &r[1], &r[2], &r[5]);
        for (side, count) in [("start", &r[3]), ("end", &r[4])] {
            if count != "1" {
                problems.push(format!("{krate}: {count} results for {side}"));
            }
            if let Err(e) = api.log(EXPERIMENT, krate, side) {
                problems.push(format!("{krate}: {side} log: {e:#}"));
            }
        }
        if state != "done" || outcomes.contains("=error") {
            problems.push(format!("{krate}: job {state}, {outcomes}"));
        }
        say(&format!(
            "{krate}: {outcomes} (attempt {attempt}), both logs readable"
        ));
    }
    problems.extend(check_report(api, &rows)?);
    if !problems.is_empty() {
        bail!("lost, doubled or unreadable:\n  {}", problems.join("\n  "));
    }
    say(&format!(
        "{n} crates, {} results: each crate exactly once per side, nothing lost or doubled",
        2 * n
    ));
    Ok(())
}

/// The report lists every crate once, and the regression fixture as a regression.
fn check_report(api: &Api, rows: &[Vec<String>]) -> Result<Vec<String>> {
    api.call(
        "POST",
        &format!("/api/v1/experiments/{EXPERIMENT}/report"),
        Some(&json!({})),
        200,
    )?;
    let report = api.get_json(&format!(
        "/api/v1/experiments/{EXPERIMENT}/report/results.json"
    ))?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for c in report["crates"].as_array().into_iter().flatten() {
        *seen
            .entry(c["crate"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    let mut problems = Vec::new();
    for r in rows {
        match seen.get(&r[0]) {
            Some(1) => {}
            n => problems.push(format!("{}: {n:?} times in results.json", r[0])),
        }
    }
    if seen.len() != rows.len() {
        problems.push(format!(
            "results.json lists {} crates, the experiment has {}",
            seen.len(),
            rows.len()
        ));
    }
    let regressed = report["regressions"].to_string();
    if !regressed.contains("regress-on-nightly") {
        problems.push(format!(
            "results.json: regress-on-nightly is not a regression ({regressed})"
        ));
    }
    say(&format!(
        "report: {} crates, regressions {regressed}, counts {}",
        report["total"], report["counts"]
    ));
    Ok(problems)
}

/// The master's HTTPS API, through curl with the fleet's CA.
pub struct Api {
    base: String,
    ca: PathBuf,
    token: String,
}

impl Api {
    /// `method path` with an optional JSON body; fails unless the status is `want`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>, want: u16) -> Result<String> {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "60", "-X", method, "--cacert"])
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-w", "\n%{http_code}"]);
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = c
            .arg(format!("{}{path}", self.base))
            .stderr(Stdio::piped())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        ensure!(
            out.status.success() && status == want.to_string(),
            "{method} {path}: HTTP {status} (wanted {want}) {body} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(body.to_string())
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        let body = self.call("GET", path, None, 200)?;
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// One side's log: 200 and not empty.
    fn log(&self, experiment: &str, krate: &str, side: &str) -> Result<()> {
        let path = format!(
            "/api/v1/experiments/{experiment}/results/{}/{side}/log",
            percent_encode(krate)
        );
        let body = self.call("GET", &path, None, 200)?;
        ensure!(!body.trim().is_empty(), "empty");
        Ok(())
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        for (input, want) in [
            ("reg:fnv@1.0.7", "reg%3Afnv%401.0.7"),
            ("local:/a b/c", "local%3A%2Fa%20b%2Fc"),
            ("plain-name_1.~", "plain-name_1.~"),
        ] {
            assert_eq!(percent_encode(input), want);
        }
    }

    #[test]
    fn the_crate_list_has_the_registry_crates_then_the_fixtures() {
        let root = crate::root();
        let list = crate_list(&root, 2).unwrap();
        assert_eq!(list.len(), 2 + FIXTURES.len());
        assert_eq!(&list[..2], &["cfg-if@1.0.1", "fnv@1.0.7"]);
        assert!(list[2].starts_with("path:/") && list[2].ends_with("/regress-on-nightly"));
    }
}
