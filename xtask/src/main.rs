//! Developer tasks: `cargo xtask test | provision | demo | lint | rooms | validate-deploy | bench |
//! bench-smoke | fleet`.
//!
//! `cargo xtask test` is the one command that proves main works on a fresh Debian/Ubuntu machine:
//! it provisions what the machine lacks (saying what it does), then runs the checks and the whole
//! test suite against real services.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod fleet;
mod rooms;

#[derive(Parser)]
#[command(name = "xtask", about = "caldera developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Provision prerequisites, check formatting and lints, run the whole test suite and every
    /// benchmark on a tiny input, validate the deployment files (scripts/validate-deploy.sh), then
    /// run the deploy stack with its faults (`cargo xtask fleet`).
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Skip the deploy stack run (`cargo xtask fleet`).
        #[arg(long)]
        no_fleet: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Run every benchmark on a tiny input (`cargo xtask test` does too).
    BenchSmoke,
    /// Only provision prerequisites: PostgreSQL server binaries, a running Docker engine, the
    /// sandbox image, Chromium + ChromeDriver (browser tests), the HTTP contract's Python checkers.
    Provision,
    /// Run a benchmark and print its `<name>: <value> <unit>` lines: scheduler, report, sandbox
    /// (a step in the sandbox vs a container per step), executor (`-- overhead` | `-- reuse`),
    /// trust (`-- ab aa direct compare`: real crates through the farm vs cargo run directly),
    /// fleet (200 workers and 50 API clients against one `caldera master`; `-- --smoke` tiny) or
    /// farm (`-- farm naive compare`: 40 real crates on the farm with shared dependencies and the
    /// result cache vs a naive cargo loop).
    Bench {
        /// Which benchmark.
        name: String,
        /// Extra arguments for the benchmark program.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check`, `cargo clippy --workspace --all-targets -- -D warnings` and `rooms`.
    Lint,
    /// Check that no non-test source file is over 800 lines and no function over 80.
    Rooms {
        /// Also list the 25 biggest files.
        #[arg(long)]
        list: bool,
    },
    /// Validate the deployment files (docker/Dockerfile, deploy/): scripts/validate-deploy.sh.
    ValidateDeploy,
    /// The deploy stack on this machine, offline (deploy/fleet/compose.yaml, images from
    /// scripts/build-fleet-images.sh): Postgres, S3, the master with TLS and three workers run an
    /// experiment while a worker is killed, Postgres restarted and S3 stopped; then checks that
    /// every crate has one result per side and readable logs, and tears it all down.
    Fleet(fleet::FleetArgs),
    /// Run the demo experiment on embedded defaults (`caldera local --demo`).
    Demo {
        /// Extra arguments for `caldera local` (e.g. `--demo-crates 2`, `--serve`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        demo_args: Vec<String>,
    },
}

/// The workspace this xtask was run for. `cargo run` sets `CARGO_MANIFEST_DIR` at run time; the
/// compile-time value is only a fallback, because a binary built from another checkout may be reused
/// from a shared `CARGO_TARGET_DIR` and would point there.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    say(&format!("running {cmd:?}"));
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !have("apt-get") {
        bail!(
            "missing {packages:?} and this machine has no apt-get: install them with your package manager"
        );
    }
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut all: Vec<&str> = sudo.to_vec();
        all.push("apt-get");
        all.extend_from_slice(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&mut apt(&args))
}

/// PostgreSQL server binaries (the test harness and `caldera local` start private clusters).
fn provision_postgres() -> Result<()> {
    let found = std::env::var_os("CALDERA_PG_BIN").is_some()
        || std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("bin/initdb").is_file());
    if found || have("initdb") {
        say("PostgreSQL server binaries: present");
        return Ok(());
    }
    say("PostgreSQL server binaries missing: installing Debian's `postgresql` package");
    apt_install(&["postgresql"])?;
    // Debian starts a system cluster on install; caldera does not use it.
    Ok(())
}

/// The command-line tools the operator guide's commands use (its test runs them as written).
fn provision_guide_tools() -> Result<()> {
    let wanted = [
        ("curl", "curl"),
        ("jq", "jq"),
        ("openssl", "openssl"),
        ("pg_dump", "postgresql-client"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(tool, _)| !have(tool))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        say("the operator guide's tools (curl, jq, openssl, pg_dump): present");
        return Ok(());
    }
    say(&format!(
        "the operator guide's tools missing: installing Debian's {}",
        missing.join(", ")
    ));
    apt_install(&missing)
}

fn script(name: &str, args: &[&str]) -> Result<()> {
    let path = root().join("scripts").join(name);
    run(Command::new("bash").arg(path).args(args))
}

fn provision() -> Result<()> {
    provision_postgres()?;
    provision_guide_tools()?;
    // the sandbox: a Docker engine and the builder image (built offline by debootstrap + docker import)
    script("ensure-docker.sh", &[])?;
    script("build-sandbox-image.sh", &[])?;
    // browser tests of the dashboard
    if root().join("scripts/ensure-chromium.sh").exists() {
        script("ensure-chromium.sh", &[])?;
    }
    // the HTTP contract's checkers (openapi-spec-validator, schemathesis, prometheus_client):
    // pinned, from PyPI into a venv under /var/tmp/caldera-api-tools, once
    script("ensure-api-tools.sh", &[])?;
    Ok(())
}

/// The package and example of a benchmark.
fn bench_program(name: &str) -> Result<(&'static str, &'static str)> {
    Ok(match name {
        "scheduler" => ("caldera", "bench_scheduler"),
        "report" => ("caldera-master", "bench_report"),
        "sandbox" => ("caldera-sandbox", "sandbox_overhead"),
        "executor" => ("caldera-worker", "bench_executor"),
        "trust" => ("caldera", "bench_trust"),
        "fleet" => ("caldera", "bench_fleet"),
        "farm" => ("caldera", "bench_farm"),
        other => {
            bail!(
                "unknown benchmark {other:?}; expected scheduler, report, sandbox, executor, trust, fleet or farm"
            )
        }
    })
}

/// Benchmarks: a release build of the program, then the program itself.
fn bench(name: &str, args: &[String]) -> Result<()> {
    let (package, example) = bench_program(name)?;
    if matches!(name, "trust" | "fleet" | "farm") {
        // the example drives the `caldera` binary
        run(cargo().args(["build", "--release", "-p", "caldera", "--bin", "caldera"]))?;
    }
    if name != "scheduler" && name != "fleet" {
        provision()?;
    } else {
        provision_postgres()?;
    }
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            package,
            "--example",
            example,
            "--",
        ])
        .args(args))
}

/// Every benchmark on a tiny input (a debug build, as `cargo test` left it), so that a change
/// which breaks a benchmark breaks the test run: name, arguments, environment.
const SMOKES: &[(&str, &[&str], &[(&str, &str)])] = &[
    ("scheduler", &["200", "2", "4", "--unsafe-fast"], &[]),
    ("report", &["2000", "500"], &[]),
    ("sandbox", &["1"], &[]),
    (
        "executor",
        &["overhead", "reuse"],
        &[
            ("BENCH_ITERATIONS", "1"),
            ("BENCH_OVERHEAD_CRATES", "fixture:pass"),
            ("BENCH_REUSE_CRATES", "fixture:pass"),
        ],
    ),
    ("trust", &[], &[("BENCH_TRUST_CRATES", "fnv@1.0.7")]),
    ("fleet", &["--smoke"], &[]),
    (
        "farm",
        &[],
        &[
            ("BENCH_FARM_CRATES", "fnv@1.0.7"),
            ("BENCH_FARM_SLOTS", "1"),
        ],
    ),
];

/// Runs [`SMOKES`]; the trust benchmark gets a fresh work dir (it must never share the real
/// run's).
fn bench_smoke() -> Result<()> {
    let work = std::env::temp_dir().join(format!("caldera-bench-smoke-{}", std::process::id()));
    for (name, args, envs) in SMOKES {
        let (package, example) = bench_program(name)?;
        if matches!(*name, "trust" | "fleet" | "farm") {
            run(cargo().args(["build", "-p", "caldera", "--bin", "caldera"]))?;
        }
        say(&format!("benchmark smoke test: {name}"));
        let mut cmd = cargo();
        cmd.args(["run", "--quiet", "-p", package, "--example", example, "--"])
            .args(*args)
            .envs(envs.iter().copied())
            .env("BENCH_WORK_DIR", work.join(name));
        let result = run(&mut cmd);
        let _ = std::fs::remove_dir_all(work.join(name));
        result.with_context(|| format!("the {name} benchmark's smoke test"))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn lint() -> Result<()> {
    rooms::check(&root(), false)?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Provision => provision(),
        Cmd::Bench { name, args } => bench(&name, &args),
        Cmd::Lint => lint(),
        Cmd::Rooms { list } => rooms::check(&root(), list),
        Cmd::BenchSmoke => {
            provision()?;
            bench_smoke()
        }
        Cmd::ValidateDeploy => script("validate-deploy.sh", &[]),
        Cmd::Fleet(args) => {
            provision()?;
            fleet::run(&root(), &args)
        }
        Cmd::Test {
            no_lint,
            no_fleet,
            cargo_args,
        } => {
            provision()?;
            if !no_lint {
                lint()?;
            }
            let mut test = cargo();
            test.args(["test", "--workspace"]).args(&cargo_args);
            run(&mut test)?;
            bench_smoke()?;
            // validate-deploy reads the CLI's options from the binary the tests just built, instead
            // of building the non-test configuration of it
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root().join("target"), PathBuf::from);
            let mut validate = Command::new("bash");
            validate.arg(root().join("scripts/validate-deploy.sh"));
            if target.join("debug/caldera").is_file() {
                validate.env("CALDERA_BIN", target.join("debug/caldera"));
            }
            run(&mut validate)?;
            if no_fleet {
                return Ok(());
            }
            // the whole deploy stack with its faults, from the binary the tests just built
            fleet::run(&root(), &fleet::FleetArgs::default())
        }
        Cmd::Demo { demo_args } => {
            provision()?;
            // `caldera local --demo`: a private Postgres, local storage, the master and a worker in one
            // process; a dozen small registry crates plus fixtures showing a regression, a fix and a
            // spurious failure, stable vs nightly
            let mut c = cargo();
            c.args(["run", "-p", "caldera", "--", "local", "--demo"])
                .args(&demo_args);
            run(&mut c)
        }
    }
}
