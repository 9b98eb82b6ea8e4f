//! `caldera`: the one binary. `caldera master` serves the API; `caldera migrate` and
//! `caldera token` talk to the database; `caldera experiment` and `caldera crate-list` talk to a
//! running master over HTTP.

mod client;
mod cmd;

use clap::{Parser, Subcommand, ValueEnum};

/// caldera — run experiments over the Rust ecosystem: build and test crates with two toolchains
/// and report what regressed.
#[derive(Debug, Parser)]
#[command(
    name = "caldera",
    version,
    propagate_version = true,
    max_term_width = 110
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "pretty",
        env = "CALDERA_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,caldera_master=debug`) [default: info;
    /// warn for `caldera local`, whose progress and summary are printed apart from the log].
    #[arg(long, global = true, env = "CALDERA_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (and, once workers connect, schedule their jobs).
    Master(cmd::master::MasterArgs),
    /// Apply (or revert) database migrations.
    Migrate(cmd::migrate::MigrateArgs),
    /// Manage API tokens (talks to the database directly; use it to bootstrap the first admin).
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Define, inspect, follow and control experiments through a running master.
    Experiment(cmd::experiment::ExperimentArgs),
    /// Print an experiment's report (Markdown summary, JSON, HTML or the retry list).
    Report(cmd::report::ReportArgs),
    /// Print the build logs of one crate of an experiment (both sides, or one).
    Logs(cmd::report::LogsArgs),
    /// Manage named crate lists through a running master.
    CrateList(cmd::crate_list::CrateListArgs),
    /// Mark regressions (expected, known issue, ignore) through a running master; a mark follows
    /// the crate and its cause into later experiments.
    Triage(cmd::triage::TriageArgs),
    /// Connect to a master and run its jobs in the Docker sandbox.
    Worker(cmd::worker::WorkerArgs),
    /// Run one experiment on this machine with embedded defaults: a private Postgres, local-disk
    /// storage, the master and a worker in this process (`--demo` for the demo experiment).
    Local(Box<cmd::local::LocalArgs>),
    /// Make a private CA and certificates for a fleet, for TLS on the master's ports.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// `caldera completions bash > /etc/bash_completion.d/caldera`, `caldera completions zsh >
    /// "${fpath[1]}/_caldera"`, `caldera completions fish > ~/.config/fish/completions/caldera.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn init_tracing(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // colours only for a person at a terminal: a log redirected to a file stays plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Local(_) => "warn",
        _ => "info",
    };
    init_tracing(cli.log_format, cli.log.as_deref().unwrap_or(default_filter));
    let result = match cli.command {
        Command::Master(args) => cmd::master::run(args).await,
        Command::Migrate(args) => cmd::migrate::run(args).await,
        Command::Token(cmd) => cmd::token::run(cmd).await,
        Command::Experiment(args) => cmd::experiment::run(args).await,
        Command::CrateList(args) => cmd::crate_list::run(args).await,
        Command::Triage(args) => cmd::triage::run(args).await,
        Command::Worker(args) => cmd::worker::run(args).await,
        Command::Local(args) => cmd::local::run(*args).await,
        Command::Report(args) => cmd::report::report(args).await,
        Command::Cert(cmd) => cmd::cert::run(cmd),
        Command::Logs(args) => cmd::report::logs(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "caldera",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // a command that has said all it had to say and only sets the exit status
        Err(e) if e.downcast_ref::<cmd::Exit>().is_some() => {
            std::process::ExitCode::from(e.downcast_ref::<cmd::Exit>().map_or(1, |x| x.0))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
