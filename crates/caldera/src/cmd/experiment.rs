use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Map, Value, json};

use caldera_core::{CapLints, ExperimentStatus, LockfilePolicy, Mode};
use clap::builder::PossibleValuesParser;
use futures::StreamExt;

use crate::client::{Client, ServerArgs, print_json, segment};

mod estimate;
mod retry;
mod watch;

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: ExperimentCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Create an experiment (it starts in status `queued`; run `caldera experiment start NAME`).
    Create(CreateArgs),
    /// List experiments, newest first.
    List(ListArgs),
    /// Show one experiment.
    Show(NameArg),
    /// Follow a running experiment until it ends: a progress bar (plain lines when not on a
    /// terminal), then the summary and the report's address.
    Watch(watch::WatchArgs),
    /// Create the follow-up experiment of a finished one: the same toolchains and options, over
    /// the crates of its retry list (regressions, spurious results, errors).
    Retry(retry::RetryArgs),
    /// Change a queued experiment; only the given options change.
    Edit(EditArgs),
    /// Start a queued experiment (prints the estimate made at the start).
    Start(NameArg),
    /// What an experiment costs: before the start the whole of it (jobs, sides the cache
    /// settles, CPU time, wall time on the workers connected now), while it runs what is left,
    /// after the run the estimate against what it took.
    Estimate(NameArg),
    /// Pause a running experiment (no new jobs are handed out).
    Pause(NameArg),
    /// Resume a paused experiment.
    Resume(NameArg),
    /// Abort an experiment (pending jobs are cancelled).
    Abort(NameArg),
    /// Delete an experiment that is not running or paused, with its results.
    Delete(NameArg),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The experiment's name.
    pub name: String,
}

/// Fields of an experiment settable from the command line. Values are sent as written; the
/// master validates them and names the offending field on error.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Baseline toolchain: `stable`, `nightly-2026-05-19`, `1.95.0`, `path:/opt/rust`, with options
    /// as `+key=value` (`nightly+rustflags=-Zfoo+target=x86_64-unknown-linux-gnu`), or a JSON object.
    #[arg(long, env = "CALDERA_EXPERIMENT_START")]
    pub start: Option<String>,
    /// Candidate toolchain, same forms as --start; must differ from it (unless --calibration).
    #[arg(long, env = "CALDERA_EXPERIMENT_END")]
    pub end: Option<String>,
    /// What to run (see docs/user-guide.md, "Modes").
    #[arg(long, env = "CALDERA_EXPERIMENT_MODE", value_parser = names_of(Mode::ALL, Mode::as_str))]
    pub mode: Option<String>,
    /// Crates: `top:N`, `random:N`, `random:N@seed=S`, `all`, `rdeps:NAME` (the crates that
    /// depend on NAME), `list:NAME` (a crate list), or a comma-separated list of `name` (pinned to
    /// its newest version when created), `name@version`, `git:URL#rev`, `path:/dir`.
    #[arg(long, env = "CALDERA_EXPERIMENT_CRATES")]
    pub crates: Option<String>,
    /// Lint cap for dependencies and the crate.
    #[arg(long, env = "CALDERA_EXPERIMENT_CAP_LINTS", value_parser = names_of(CapLints::ALL, CapLints::as_str))]
    pub cap_lints: Option<String>,
    /// Scheduling priority, -1000..=1000 (higher runs first).
    #[arg(
        long,
        env = "CALDERA_EXPERIMENT_PRIORITY",
        allow_negative_numbers = true
    )]
    pub priority: Option<i32>,
    /// A capability a worker must have (repeatable), e.g. `arch:x86_64`.
    #[arg(
        long = "requires",
        env = "CALDERA_EXPERIMENT_REQUIRES",
        value_delimiter = ','
    )]
    pub requirements: Vec<String>,
    /// Run each regressed or fixed crate again this many times, 0..=5 (default 2; 0: off), from
    /// fresh target dirs and on another worker when one is connected, to confirm it.
    #[arg(long, env = "CALDERA_EXPERIMENT_CONFIRM")]
    pub confirm: Option<u32>,
    /// A calibration (A/A) experiment: start and end may be the same toolchain.
    #[arg(long, env = "CALDERA_EXPERIMENT_CALIBRATION")]
    pub calibration: bool,
    /// Run every side, even those an earlier experiment's result would settle (`"cache": false`).
    #[arg(long, env = "CALDERA_EXPERIMENT_NO_CACHE")]
    pub no_cache: bool,
    /// Which dependency versions crates build with: `shipped` (a crate's own Cargo.lock when it
    /// has one; the default) or `fresh` (always resolved anew: the newest its requirements allow).
    #[arg(long, env = "CALDERA_EXPERIMENT_LOCKFILE", value_parser = names_of(LockfilePolicy::ALL, LockfilePolicy::as_str))]
    pub lockfile: Option<String>,
    /// Read the experiment (or the edit) as JSON from this file (`-` for stdin); options given
    /// on the command line override its fields.
    #[arg(long, env = "CALDERA_EXPERIMENT_FILE")]
    pub file: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The experiment's name: lowercase letters, digits and `-`, 1–64 characters.
    #[arg(env = "CALDERA_EXPERIMENT_NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The experiment to change.
    pub name: String,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only experiments in this status.
    #[arg(long, env = "CALDERA_EXPERIMENT_STATUS",
        value_parser = names_of(ExperimentStatus::ALL, ExperimentStatus::as_str))]
    pub status: Option<String>,
    /// Page size (1–500).
    #[arg(long, env = "CALDERA_LIMIT", default_value_t = 50)]
    pub limit: u32,
    /// Items to skip.
    #[arg(long, env = "CALDERA_OFFSET", default_value_t = 0)]
    pub offset: u32,
}

/// A toolchain argument is sent as a JSON object when it looks like one, else as the string.
fn toolchain_value(s: &str) -> anyhow::Result<Value> {
    if s.trim_start().starts_with('{') {
        serde_json::from_str(s).context("toolchain JSON object")
    } else {
        Ok(Value::String(s.to_owned()))
    }
}

fn read_file(path: &str) -> anyhow::Result<Map<String, Value>> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    match serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))? {
        Value::Object(map) => Ok(map),
        _ => anyhow::bail!("{path} must hold a JSON object"),
    }
}

impl SpecArgs {
    fn into_body(self, mut body: Map<String, Value>) -> anyhow::Result<Map<String, Value>> {
        if let Some(file) = &self.file {
            for (k, v) in read_file(file)? {
                body.entry(k).or_insert(v);
            }
        }
        if let Some(s) = self.start {
            body.insert("start".into(), toolchain_value(&s)?);
        }
        if let Some(s) = self.end {
            body.insert("end".into(), toolchain_value(&s)?);
        }
        if let Some(m) = self.mode {
            body.insert("mode".into(), m.into());
        }
        if let Some(c) = self.crates {
            body.insert("crates".into(), c.into());
        }
        if let Some(c) = self.cap_lints {
            body.insert("cap_lints".into(), c.into());
        }
        if let Some(p) = self.priority {
            body.insert("priority".into(), p.into());
        }
        if !self.requirements.is_empty() {
            body.insert("requirements".into(), json!(self.requirements));
        }
        if let Some(n) = self.confirm {
            body.insert("confirm".into(), n.into());
        }
        if self.calibration {
            body.insert("calibration".into(), true.into());
        }
        if self.no_cache {
            body.insert("cache".into(), false.into());
        }
        if let Some(l) = self.lockfile {
            body.insert("lockfile".into(), l.into());
        }
        Ok(body)
    }
}

fn print_experiment(v: &Value) {
    let s = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!("name:         {}", s("name"));
    println!("status:       {}", s("status"));
    println!("start:        {}", v["start"]);
    println!("end:          {}", v["end"]);
    println!("mode:         {}", s("mode"));
    println!("crates:       {}", v["crates"]);
    println!("cap-lints:    {}", s("cap_lints"));
    println!("priority:     {}", s("priority"));
    println!("requirements: {}", v["requirements"]);
    println!("confirm:      {}", s("confirm"));
    println!("lockfile:     {}", s("lockfile"));
    if v["calibration"] == json!(true) {
        println!("calibration:  yes (A/A)");
    }
    if v["overrides"].as_object().is_some_and(|o| !o.is_empty()) {
        println!("overrides:    {}", v["overrides"]);
    }
    println!("created:      {}", s("created_at"));
    println!("started:      {}", s("started_at"));
    println!("finished:     {}", s("finished_at"));
    let p = &v["progress"];
    if let Some(total) = p["total"].as_i64() {
        let n = |k: &str| p[k].as_i64().unwrap_or(0);
        println!(
            "jobs:         {} of {total} finished ({} done, {} error, {} cancelled), {} running, {} queued",
            n("done") + n("error") + n("cancelled"),
            n("done"),
            n("error"),
            n("cancelled"),
            n("running"),
            n("queued")
        );
    }
}

pub async fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let json_out = args.server.json;
    match args.command {
        ExperimentCommand::Create(c) => create(&client, c, json_out).await,
        ExperimentCommand::List(l) => list(&client, &l, json_out).await,
        ExperimentCommand::Show(n) => {
            let path = format!("/experiments/{}", segment(&n.name));
            show(&client.call(Method::GET, &path, None).await?, json_out);
            Ok(())
        }
        ExperimentCommand::Watch(w) => watch::run(&client, w).await,
        ExperimentCommand::Retry(r) => retry::run(&client, r, json_out).await,
        ExperimentCommand::Edit(e) => edit(&client, e, json_out).await,
        ExperimentCommand::Start(n) => action(&client, &n.name, "start", json_out).await,
        ExperimentCommand::Estimate(n) => estimate::run(&client, &n.name, json_out).await,
        ExperimentCommand::Pause(n) => action(&client, &n.name, "pause", json_out).await,
        ExperimentCommand::Resume(n) => action(&client, &n.name, "resume", json_out).await,
        ExperimentCommand::Abort(n) => action(&client, &n.name, "abort", json_out).await,
        ExperimentCommand::Delete(n) => delete(&client, &n.name, json_out).await,
    }
}

/// An experiment as JSON, or as the lines of [`print_experiment`].
fn show(v: &Value, json_out: bool) {
    if json_out {
        print_json(v)
    } else {
        print_experiment(v)
    }
}

/// `caldera experiment create`: the body from the options (and --file), sent as written.
async fn create(client: &Client, c: CreateArgs, json_out: bool) -> anyhow::Result<()> {
    let mut body = Map::new();
    if let Some(name) = c.name {
        body.insert("name".into(), name.into());
    }
    let body = c.spec.into_body(body)?;
    let v = client
        .call(Method::POST, "/experiments", Some(Value::Object(body)))
        .await?;
    if json_out {
        print_json(&v);
    } else {
        println!(
            "created experiment {} (queued); start it with `caldera experiment start {}`",
            v["name"].as_str().unwrap_or("?"),
            v["name"].as_str().unwrap_or("?")
        );
        estimate::print_of_view(&v);
    }
    Ok(())
}

/// `caldera experiment list`: one page of experiments, newest first.
async fn list(client: &Client, l: &ListArgs, json_out: bool) -> anyhow::Result<()> {
    let mut path = format!("/experiments?limit={}&offset={}", l.limit, l.offset);
    if let Some(status) = &l.status {
        path.push_str(&format!("&status={}", segment(status)));
    }
    let v = client.call(Method::GET, &path, None).await?;
    if json_out {
        print_json(&v);
    } else {
        let progress = progress_of(client, &v).await;
        print_list(&v, &progress);
    }
    Ok(())
}

/// The job counts of each experiment of a page (the list leaves them out), a few requests at
/// a time; `Null` for one that could not be read (deleted meanwhile).
async fn progress_of(client: &Client, page: &Value) -> Vec<Value> {
    let names: Vec<String> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    futures::stream::iter(names)
        .map(|name| async move {
            let path = format!("/experiments/{}", segment(&name));
            match client.call(Method::GET, &path, None).await {
                Ok(mut v) => v["progress"].take(),
                Err(_) => Value::Null,
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// `78/80 97%`: jobs finished (done, error or cancelled) of all, or `-` before the start.
pub(crate) fn progress_cell(p: &Value) -> String {
    let n = |k: &str| p[k].as_i64().unwrap_or(0);
    let total = n("total");
    if total == 0 {
        return "-".into();
    }
    let finished = n("done") + n("error") + n("cancelled");
    format!("{finished}/{total} {}%", finished * 100 / total)
}

/// A page of `GET /experiments` as a table, one experiment a line.
fn print_list(v: &Value, progress: &[Value]) {
    println!(
        "{:<32}  {:<10}  {:<14}  {:<15}  {:<24}  created",
        "name", "status", "progress", "mode", "start → end"
    );
    for (i, e) in v["items"].as_array().into_iter().flatten().enumerate() {
        let tc = |k: &str| {
            e[k]["toolchain"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| e[k].to_string())
        };
        println!(
            "{:<32}  {:<10}  {:<14}  {:<15}  {:<24}  {}",
            e["name"].as_str().unwrap_or("?"),
            e["status"].as_str().unwrap_or("?"),
            progress_cell(progress.get(i).unwrap_or(&Value::Null)),
            e["mode"].as_str().unwrap_or("?"),
            format!("{} → {}", tc("start"), tc("end")),
            e["created_at"]
                .as_str()
                .unwrap_or("?")
                .get(..16)
                .unwrap_or("?"),
        );
    }
    println!(
        "({} of {} shown)",
        v["items"].as_array().map_or(0, Vec::len),
        v["total"]
    );
}

/// `caldera experiment edit`: only the options given change; none at all is an error.
async fn edit(client: &Client, e: EditArgs, json_out: bool) -> anyhow::Result<()> {
    let body = e.spec.into_body(Map::new())?;
    if body.is_empty() {
        anyhow::bail!("nothing to change: give at least one option (see --help)");
    }
    let v = client
        .call(
            Method::PATCH,
            &format!("/experiments/{}", segment(&e.name)),
            Some(Value::Object(body)),
        )
        .await?;
    show(&v, json_out);
    Ok(())
}

/// `caldera experiment delete`.
async fn delete(client: &Client, name: &str, json_out: bool) -> anyhow::Result<()> {
    client
        .call(
            Method::DELETE,
            &format!("/experiments/{}", segment(name)),
            None,
        )
        .await?;
    if !json_out {
        println!("deleted experiment {name}");
    }
    Ok(())
}

/// `caldera experiment start|pause|resume|abort`: prints the status the action led to.
async fn action(client: &Client, name: &str, verb: &str, json_out: bool) -> anyhow::Result<()> {
    let v = client
        .call(
            Method::POST,
            &format!("/experiments/{}/{verb}", segment(name)),
            None,
        )
        .await?;
    if json_out {
        print_json(&v);
    } else {
        println!(
            "experiment {name} is now {}",
            v["status"].as_str().unwrap_or("?")
        );
        estimate::print_of_view(&v);
    }
    Ok(())
}

/// A clap parser accepting the names of `values` (listed in `--help`, with a suggestion for a
/// near miss): the names are defined once, in caldera-core.
fn names_of<T: Copy>(values: &[T], name: fn(T) -> &'static str) -> PossibleValuesParser {
    PossibleValuesParser::new(values.iter().map(|&v| name(v)))
}
