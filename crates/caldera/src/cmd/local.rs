//! `caldera local`: the whole farm on one machine with embedded defaults — a private Postgres under
//! the state directory, local-disk object storage, the master and one worker in this process — running
//! one experiment and printing its report.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use caldera_core::report::{Report, SummaryOptions, summary_markdown};
use caldera_db::embedded::{ClusterOptions, PrivatePostgres};
use caldera_db::tokens::{self, Role};
use caldera_db::{PgPool, experiments};
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::worker::ExecutorArgs;

/// The demo: small real registry crates that pass on both toolchains, plus fixture crates that show a
/// regression, a fix and a spurious failure.
pub const DEMO_REGISTRY_CRATES: &[&str] = &[
    "cfg-if@1.0.1",
    "fnv@1.0.7",
    "itoa@1.0.11",
    "scopeguard@1.2.0",
    "static_assertions@1.1.0",
    "semver@1.0.23",
    "adler@1.0.2",
    "heck@0.5.0",
    "memoffset@0.9.1",
    "hex@0.4.3",
    "matches@0.1.10",
    "version_check@0.9.5",
];

/// Fixture crates of the demo (directories under the fixtures dir).
pub const DEMO_FIXTURES: &[&str] = &[
    "regress-on-nightly",
    "fixed-on-nightly",
    "spurious-oom-on-nightly",
    "pass",
];

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Run the demo experiment: a dozen small registry crates plus fixture crates showing a
    /// regression, a fix and a spurious failure (stable vs nightly).
    #[arg(long, env = "CALDERA_DEMO")]
    pub demo: bool,
    /// With --demo: only this many registry crates (a quick smoke test).
    #[arg(long, env = "CALDERA_DEMO_CRATES")]
    pub demo_crates: Option<usize>,
    /// Crates: a comma-separated list of `name@version`, `git:URL#rev`, `path:/dir` (selections that
    /// need a registry listing — `top:N`, `all`, names without a version — need a full master).
    #[arg(long, env = "CALDERA_CRATES", required_unless_present = "demo")]
    pub crates: Option<String>,
    /// Baseline toolchain (compact form, e.g. `stable` or `stable+rustflags=-Dwarnings`).
    #[arg(long, env = "CALDERA_START", default_value = "stable")]
    pub start: String,
    /// Candidate toolchain [default: nightly; with --demo on a machine without a nightly toolchain,
    /// `stable+rustflags=--cfg=caldera_nightly`, which the demo's fixtures react to as they do to
    /// nightly].
    #[arg(long, env = "CALDERA_END")]
    pub end: Option<String>,
    /// build-and-test, build-only, check-only, clippy, rustdoc or miri.
    #[arg(long, env = "CALDERA_MODE", default_value = "build-and-test")]
    pub mode: String,
    /// The experiment's name; re-running with the same name resumes it.
    #[arg(long, env = "CALDERA_EXPERIMENT_NAME")]
    pub name: Option<String>,
    /// Run each regressed or fixed crate again this many times (0–5) to confirm it [default: the
    /// experiment default, 2; 0 turns confirmation off]. With one local worker, the re-runs run
    /// on it, from fresh target dirs.
    #[arg(long, env = "CALDERA_CONFIRM")]
    pub confirm: Option<u32>,
    /// A calibration (A/A) experiment: --start and --end may be the same toolchain, to measure how
    /// often the farm itself disagrees with itself.
    #[arg(long, env = "CALDERA_CALIBRATION")]
    pub calibration: bool,
    /// Where the private Postgres, the objects and the worker's files live (kept between runs).
    #[arg(long, env = "CALDERA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address of the dashboard and HTTP API.
    #[arg(long, env = "CALDERA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Keep the dashboard up after the experiment finishes (until Ctrl-C).
    #[arg(long, env = "CALDERA_SERVE")]
    pub serve: bool,
    /// Directory of the fixture crates used by --demo.
    #[arg(long, env = "CALDERA_FIXTURES_DIR")]
    pub fixtures_dir: Option<PathBuf>,
    #[command(flatten)]
    pub executor: ExecutorArgs,
}

fn default_state_dir() -> PathBuf {
    if caldera_db::embedded::running_as_root() {
        // the private cluster runs as the `postgres` user, who cannot enter /root
        PathBuf::from("/var/lib/caldera/local")
    } else {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("caldera")
    }
}

fn default_fixtures_dir() -> PathBuf {
    // at run time first (`cargo run` sets it): a binary reused from a shared target dir may have been
    // built from another checkout, which the compile-time value would name
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../tests/fixtures/crates")
}

/// Tokens of this state directory, created once and kept (mode 0600).
async fn local_tokens(pool: &PgPool, state: &Path) -> anyhow::Result<(String, String)> {
    let path = state.join("tokens.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let (Some(a), Some(w)) = (v["admin"].as_str(), v["worker"].as_str())
            && tokens::authenticate(pool, a).await?.is_some()
            && tokens::authenticate(pool, w).await?.is_some()
        {
            return Ok((a.to_owned(), w.to_owned()));
        }
    }
    let admin = tokens::create(pool, "caldera-local", Role::Admin).await?.1;
    let worker = tokens::create(pool, "caldera-local-worker", Role::Worker)
        .await?
        .1;
    std::fs::write(&path, json!({"admin": admin, "worker": worker}).to_string())?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((admin, worker))
}

async fn start_postgres(state: &Path) -> anyhow::Result<(PrivatePostgres, PgPool)> {
    let pg = PrivatePostgres::start(ClusterOptions {
        dir: state.join("postgres"),
        port: 0,
        ephemeral: false,
        unsafe_fast: false,
        statement_stats: false,
    })
    .await
    .context("starting the private Postgres cluster")?;
    let admin = caldera_db::connect(&pg.url("postgres"), 1).await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'caldera'")
            .fetch_optional(&admin)
            .await?;
    if exists.is_none() {
        sqlx::query("CREATE DATABASE caldera")
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let pool = caldera_db::connect(&pg.url("caldera"), 20).await?;
    caldera_db::migrate(&pool)
        .await
        .context("applying migrations")?;
    Ok((pg, pool))
}

fn say(msg: impl std::fmt::Display) {
    eprintln!("caldera local: {msg}");
}

pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the state directory {}", state.display()))?;
    let state = state.canonicalize()?;
    say(format_args!("state directory {}", state.display()));

    // Check the sandbox first: without Docker and the image nothing can run, and the error says how to fix it.
    let store_dir = state.join("objects");
    let store: Arc<dyn caldera_storage::ObjectStore> = Arc::new(
        caldera_storage::LocalStore::open(&store_dir, 1 << 30)
            .context("opening the object store")?,
    );
    let executor = args
        .executor
        .build(&state.join("worker"), store.clone())
        .await?;

    let end = end_toolchain(&args, &args.executor.capabilities())?;

    let (pg, pool) = start_postgres(&state).await?;
    say(format_args!(
        "postgres: private cluster in {} (port {})",
        pg.dir().display(),
        pg.port()
    ));
    let (admin, worker_token) = local_tokens(&pool, &state).await?;
    // The only worker of this state directory is ours: whatever the previous run was running died
    // with it, so it goes back to the queue now rather than after its lease expires.
    caldera_db::workers::disconnect_all(&pool).await?;
    let orphans = caldera_db::jobs::hand_back_all(&pool, chrono::Utc::now()).await?;
    if orphans > 0 {
        say(format_args!(
            "{orphans} job(s) the previous run left running are queued again"
        ));
    }

    let shutdown = CancellationToken::new();
    let scheduler = caldera_master::scheduler::Scheduler::start(
        pool.clone(),
        caldera_master::scheduler::SchedulerConfig::default(),
        Arc::new(caldera_master::scheduler::SystemClock),
        Arc::new(caldera_master::metrics::Metrics::default()),
        shutdown.clone(),
    );
    let app = caldera_master::AppState {
        pool: pool.clone(),
        scheduler,
        registry: None,
        store: store.clone(),
    };
    let (http, grpc) = match caldera_master::bind(args.listen, "127.0.0.1:0".parse()?).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            say(format_args!(
                "{} is in use; taking a free port",
                args.listen
            ));
            caldera_master::bind("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?
        }
        Err(e) => return Err(e).context("binding the master's ports"),
    };
    let base = format!("http://{}", http.local_addr()?);
    let grpc_url = format!("http://{}", grpc.local_addr()?);
    let master = tokio::spawn(caldera_master::serve(app, http, grpc, shutdown.clone()));
    say(format_args!(
        "dashboard {base}/  (API token for this state directory: {})",
        state.join("tokens.json").display()
    ));

    let slots = args.executor.slots();
    let mut wconfig = caldera_worker::WorkerConfig::new(
        &grpc_url,
        &worker_token,
        "local",
        state.join("worker/spool"),
    );
    wconfig.slots = slots;
    wconfig.capabilities = args.executor.capabilities();
    wconfig.drain_timeout = Duration::from_secs(5);
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(caldera_worker::run(wconfig, executor.clone(), async move {
        let _ = drain_rx.await;
    }));

    // Ctrl-C or SIGTERM stops the run cleanly; the next run with this state directory resumes.
    let outcome = tokio::select! {
        r = drive(&args, &end, &pool, &base, &admin) => r,
        () = super::master::shutdown_signal() => Err(anyhow::anyhow!(
            "interrupted before the experiment finished; its results so far are kept in {} — \
             run the same command again to resume it",
            state.display()
        )),
    };
    let finished = match outcome {
        Ok(name) => {
            let r = report(&pool, &name, &base, &*store, &state).await;
            if args.serve && r.is_ok() {
                say(format_args!(
                    "serving the dashboard at {base}/ — Ctrl-C to stop"
                ));
                super::master::shutdown_signal().await;
            }
            r
        }
        Err(e) => Err(e),
    };
    let _ = drain_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), worker).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), executor.spool().wait_idle()).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), executor.shutdown()).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), master).await;
    pool.close().await;
    pg.stop().await;
    finished
}

/// The end toolchain when `--end` is not given: nightly, or for the demo on a machine without
/// nightly, stable with a cfg flag that the demo's fixtures treat like nightly.
fn end_toolchain(args: &LocalArgs, capabilities: &[String]) -> anyhow::Result<String> {
    if let Some(end) = &args.end {
        return Ok(end.clone());
    }
    let has_nightly = capabilities.iter().any(|c| c == "toolchain:nightly");
    if has_nightly {
        return Ok("nightly".into());
    }
    if args.demo {
        say(
            "no nightly toolchain here; the demo compares stable with stable+rustflags=--cfg=caldera_nightly",
        );
        return Ok(DEMO_END_WITHOUT_NIGHTLY.into());
    }
    bail!(
        "the default end toolchain is nightly, which this machine's rustup home does not have: install it \
         (`rustup toolchain install nightly --profile minimal`) or pass --end"
    )
}

/// The demo's end toolchain on a machine without nightly.
pub const DEMO_END_WITHOUT_NIGHTLY: &str = "stable+rustflags=--cfg=caldera_nightly";

fn experiment_body(args: &LocalArgs, end: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    let crates = if args.demo {
        let fixtures = args
            .fixtures_dir
            .clone()
            .unwrap_or_else(default_fixtures_dir);
        let fixtures = fixtures.canonicalize().with_context(|| {
            format!(
                "the demo's fixture crates are not at {} (pass --fixtures-dir)",
                fixtures.display()
            )
        })?;
        let n = args
            .demo_crates
            .unwrap_or(DEMO_REGISTRY_CRATES.len())
            .min(DEMO_REGISTRY_CRATES.len());
        let mut list: Vec<String> = DEMO_REGISTRY_CRATES[..n]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for f in DEMO_FIXTURES {
            list.push(format!("path:{}", fixtures.join(f).display()));
        }
        json!({"kind": "list", "crates": list})
    } else {
        json!(args.crates.clone().unwrap_or_default())
    };
    let mut body =
        json!({"name": name, "start": args.start, "end": end, "mode": args.mode, "crates": crates});
    if let Some(n) = args.confirm {
        body["confirm"] = json!(n);
    }
    if args.calibration {
        body["calibration"] = json!(true);
    }
    Ok(body)
}

/// Create (or resume) the experiment and wait for it, showing progress. Returns its name.
async fn drive(
    args: &LocalArgs,
    end: &str,
    pool: &PgPool,
    base: &str,
    token: &str,
) -> anyhow::Result<String> {
    let name = args.name.clone().unwrap_or_else(|| {
        if args.demo {
            "demo".into()
        } else {
            "local".into()
        }
    });
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{base}/api/v1{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            if !status.is_success() {
                let e = &v["error"];
                bail!(
                    "{} (field `{}`)",
                    e["message"].as_str().unwrap_or("request failed"),
                    e["field"].as_str().unwrap_or("-")
                );
            }
            Ok::<_, anyhow::Error>(v)
        }
    };
    match experiments::get(pool, &name).await {
        Ok(row) => {
            let p = caldera_db::jobs::progress_of(pool, row.id).await?;
            say(format_args!(
                "experiment {name} exists ({}, {}/{} jobs finished); resuming it with its data",
                row.status,
                p.done + p.error + p.cancelled,
                p.total()
            ));
            match row.status.as_str() {
                "queued" => drop(
                    call(
                        reqwest::Method::POST,
                        format!("/experiments/{name}/start"),
                        None,
                    )
                    .await?,
                ),
                "paused" => drop(
                    call(
                        reqwest::Method::POST,
                        format!("/experiments/{name}/resume"),
                        None,
                    )
                    .await?,
                ),
                _ => {}
            }
        }
        Err(caldera_db::DbError::NotFound { .. }) => {
            call(
                reqwest::Method::POST,
                "/experiments".into(),
                Some(experiment_body(args, end, &name)?),
            )
            .await?;
            if let Err(e) = call(
                reqwest::Method::POST,
                format!("/experiments/{name}/start"),
                None,
            )
            .await
            {
                // not left behind half-made: the next run would only fail the same way
                let _ = call(
                    reqwest::Method::DELETE,
                    format!("/experiments/{name}"),
                    None,
                )
                .await;
                return Err(e.context(format!("starting experiment {name}")));
            }
            say(format_args!(
                "experiment {name} started: {} vs {end}, {}",
                args.start, args.mode
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} jobs {msg} (eta {eta})",
            )
            .expect("a valid template"),
        );
        b
    });
    let t0 = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let row = experiments::get(pool, &name).await?;
        let p = caldera_db::jobs::progress_of(pool, row.id).await?;
        let finished = (p.done + p.error + p.cancelled) as u64;
        let msg = format!("{} running, {} queued", p.running, p.queued);
        match &bar {
            Some(b) => {
                b.set_length(p.total() as u64);
                b.set_position(finished);
                b.set_message(msg);
            }
            None if last_line.elapsed() >= Duration::from_secs(10) => {
                last_line = Instant::now();
                say(format_args!(
                    "[{:>5}s] {finished}/{} jobs finished, {msg}",
                    t0.elapsed().as_secs(),
                    p.total()
                ));
            }
            None => {}
        }
        if row.status.is_terminal() {
            if let Some(b) = &bar {
                b.finish();
            }
            say(format_args!(
                "experiment {name} {} after {:.0?}",
                row.status,
                t0.elapsed()
            ));
            return Ok(name);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Print the summary, the report location and the dashboard URL.
async fn report(
    pool: &PgPool,
    name: &str,
    base: &str,
    store: &dyn caldera_storage::ObjectStore,
    state: &Path,
) -> anyhow::Result<()> {
    let row = experiments::get(pool, name).await?;
    // the first run of every crate (confirmation runs only confirm it)
    let results = caldera_db::results::report_input(pool, row.id, true).await?;
    let caldera_master::export::Confirmation { status, reruns, .. } =
        caldera_master::export::confirmation(pool, row.id).await?;
    let report = Report::build_with(results, |k| row.spec.is_quiet(k), status)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = row.spec.start.to_string();
    let end = row.spec.end.to_string();
    println!(
        "{}",
        summary_markdown(
            &report,
            &SummaryOptions {
                reruns,
                ..SummaryOptions::new(name, &start, &end)
            }
        )
    );
    println!();
    println!("per crate:");
    for c in report.crates() {
        match c.confirmation() {
            // the comparison stays the line's last word (scripts read it)
            Some(status) => println!(
                "  {:<60} [{status}] {}",
                c.krate().to_string(),
                c.comparison()
            ),
            None => println!("  {:<60} {}", c.krate().to_string(), c.comparison()),
        }
    }
    println!();
    let dir = state.join("reports").join(name);
    match save_report(store, name, &dir).await {
        Ok(()) => println!(
            "report: {} (summary.md, retry.txt, results.json, index.html; the logs: {base}/api/v1/experiments/{name}/report/logs.tar.zst)",
            dir.display()
        ),
        Err(e) => say(format_args!(
            "could not save the report files to {}: {e:#}",
            dir.display()
        )),
    }
    println!("dashboard: {base}/experiments/{name}");
    Ok(())
}

/// Copies the experiment's exported report files (but the log archive) out of object storage into
/// `dir` as plain files, once the export that follows completion has written them.
async fn save_report(
    store: &dyn caldera_storage::ObjectStore,
    name: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    use tokio::io::AsyncWriteExt;
    const COPIED: [&str; 4] = ["summary.md", "retry.txt", "results.json", "index.html"];
    // the export runs when the experiment completes and writes its files concurrently: wait for
    // each of them
    let deadline = Instant::now() + Duration::from_secs(60);
    tokio::fs::create_dir_all(dir).await?;
    for file in COPIED {
        let key = caldera_storage::keys::report(name, file)?;
        let object = loop {
            match store.get(&key).await {
                Ok(o) => break o,
                Err(e) if e.is_not_found() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("{file} of the report")),
            }
        };
        let mut body = if object.meta.content_encoding.as_deref() == Some("zstd") {
            caldera_master::export::decompress(object.body)
        } else {
            object.body.map_err(std::io::Error::other).boxed()
        };
        let mut out = tokio::fs::File::create(dir.join(file)).await?;
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk?).await?;
        }
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        local: LocalArgs,
    }

    fn args(argv: &[&str]) -> LocalArgs {
        Cli::try_parse_from(std::iter::once("local").chain(argv.iter().copied()))
            .expect("valid arguments")
            .local
    }

    #[test]
    fn the_end_toolchain_falls_back_to_flags_only_for_the_demo() {
        let with = ["docker".to_owned(), "toolchain:nightly".to_owned()];
        let without = ["docker".to_owned(), "toolchain:stable".to_owned()];
        let cases: &[(&[&str], &[String], Result<&str, &str>)] = &[
            (&["--demo"], &with, Ok("nightly")),
            (&["--demo"], &without, Ok(DEMO_END_WITHOUT_NIGHTLY)),
            (&["--crates", "fnv@1.0.7"], &with, Ok("nightly")),
            (
                &["--crates", "fnv@1.0.7"],
                &without,
                Err(
                    "the default end toolchain is nightly, which this machine's rustup home does not have",
                ),
            ),
            (&["--demo", "--end", "beta"], &without, Ok("beta")),
            (
                &["--crates", "x@1.0.0", "--end", "stable"],
                &without,
                Ok("stable"),
            ),
        ];
        for (argv, caps, want) in cases {
            let got = end_toolchain(&args(argv), caps);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(&g, w, "{argv:?}"),
                (Err(w), Err(g)) => assert!(g.to_string().starts_with(w), "{argv:?}: {g}"),
                (w, g) => panic!("{argv:?}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn the_demo_lists_its_crates_and_fixtures() {
        let a = args(&["--demo", "--demo-crates", "2"]);
        let body = experiment_body(&a, "nightly", "demo").unwrap();
        let crates = body["crates"]["crates"].as_array().unwrap();
        assert_eq!(crates.len(), 2 + DEMO_FIXTURES.len());
        assert_eq!(crates[0], "cfg-if@1.0.1");
        assert!(
            crates[2]
                .as_str()
                .unwrap()
                .ends_with("/fixtures/crates/regress-on-nightly")
        );
        assert_eq!(body["end"], "nightly");
        // more than there are: all of them
        let a = args(&["--demo", "--demo-crates", "99"]);
        let body = experiment_body(&a, "nightly", "demo").unwrap();
        assert_eq!(
            body["crates"]["crates"].as_array().unwrap().len(),
            DEMO_REGISTRY_CRATES.len() + DEMO_FIXTURES.len()
        );
        // a missing fixtures dir is named in the error
        let a = args(&["--demo", "--fixtures-dir", "/nonexistent/fixtures"]);
        let e = experiment_body(&a, "nightly", "demo").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/fixtures"), "{e}");
    }
}
