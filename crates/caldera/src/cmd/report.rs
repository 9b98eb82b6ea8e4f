//! `caldera report` (an experiment's report file) and `caldera logs` (one crate's build logs).

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::client::{Client, ServerArgs, segment};

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The experiment.
    pub name: String,
    /// Which form of the report.
    #[arg(long, value_enum, default_value = "md", env = "CALDERA_REPORT_FORMAT")]
    pub format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

/// The report's forms, each a file the master exports when the experiment completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// `summary.md`: counts, root regressions, errors and spurious results (fit for an issue).
    Md,
    /// `results.json`: every crate with both outcomes, comparison, log keys and root causes.
    Json,
    /// `index.html`: a static page browsable without the master.
    Html,
    /// `retry.txt`: the crates worth running again, one a line (a crate list).
    Retry,
    /// The pull-request comment: Markdown sized for a GitHub comment (at most 65,536
    /// characters), with links to the dashboard (`GET …/pr-comment`).
    Pr,
}

impl ReportFormat {
    /// The report file of this form.
    pub fn file(self) -> &'static str {
        match self {
            ReportFormat::Md => "summary.md",
            ReportFormat::Json => "results.json",
            ReportFormat::Html => "index.html",
            ReportFormat::Retry => "retry.txt",
            ReportFormat::Pr => "pr-comment.md",
        }
    }

    /// Where the master serves it, under `/api/v1`.
    fn path(self, experiment: &str) -> String {
        match self {
            ReportFormat::Pr => format!("/experiments/{}/pr-comment", segment(experiment)),
            _ => format!(
                "/experiments/{}/report/{}",
                segment(experiment),
                self.file()
            ),
        }
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The experiment.
    pub name: String,
    /// The crate, as printed or as written in the crate list: `rand@0.8.5` (or
    /// `reg:rand@0.8.5`), `git:URL#REV`, `path:/DIR` (or `local:/DIR`), or a bare registry name
    /// when the experiment holds one version of it.
    #[arg(name = "CRATE")]
    pub krate: String,
    /// Only this side's log (default: both, each under a header).
    #[arg(long, value_enum, env = "CALDERA_LOGS_SIDE")]
    pub side: Option<Side>,
    /// The log as stored: cargo's JSON messages kept as they are, not rendered as diagnostics.
    #[arg(long)]
    pub raw: bool,
}

/// A side of an experiment: its start (baseline) or end (candidate) toolchain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// The start (baseline) toolchain.
    Start,
    /// The end (candidate) toolchain.
    End,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Start => "start",
            Side::End => "end",
        }
    }
}

/// `caldera report`: one report file (or the pull-request comment), streamed to standard output or `--output`.
pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let mut resp = client.get_raw(&args.format.path(&args.name)).await?;
    let mut out: Box<dyn Write> = match &args.output {
        Some(file) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(chunk) = resp.chunk().await.context("reading the report")? {
        out.write_all(&chunk).context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    if let Some(file) = &args.output {
        eprintln!(
            "wrote {} of {} to {}",
            args.format.file(),
            args.name,
            file.display()
        );
    }
    Ok(())
}

/// `caldera logs`: one side's log, or both under headers. A side without a log (no result yet, an
/// infrastructure error before anything ran) is named under its header; it is an error only
/// when no log could be shown at all.
pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.server)?;
    let colour = std::io::stdout().is_terminal();
    let sides = match args.side {
        Some(side) => vec![side],
        None => vec![Side::Start, Side::End],
    };
    let mut shown = 0;
    let mut last_err = None;
    let mut out = std::io::stdout().lock();
    for side in &sides {
        let text = log_text(&client, &args, *side).await;
        if sides.len() > 1 {
            let header = format!("==> {} log of {} <==", side.as_str(), args.krate);
            let header = if colour {
                format!("\x1b[1m{header}\x1b[0m")
            } else {
                header
            };
            writeln!(out, "{}{header}", if shown > 0 { "\n" } else { "" })?;
        }
        match text {
            Ok(text) => {
                out.write_all(readable(&text, args.raw, colour).as_bytes())?;
                shown += 1;
            }
            Err(e) if sides.len() > 1 => {
                writeln!(out, "(no log: {e:#})")?;
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    out.flush()?;
    match (shown, last_err) {
        (0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

async fn log_text(client: &Client, args: &LogsArgs, side: Side) -> anyhow::Result<String> {
    let path = format!(
        "/experiments/{}/results/{}/{}/log",
        segment(&args.name),
        segment(&args.krate),
        side.as_str()
    );
    let resp = client.get_raw(&path).await?;
    let bytes = resp.bytes().await.context("reading the log")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The log as a person reads it (diagnostics rendered, unless `raw`), its colours kept only for
/// a terminal.
fn readable(log: &str, raw: bool, colour: bool) -> String {
    let text = if raw {
        log.to_owned()
    } else {
        caldera_core::logtext::for_reading(log)
    };
    if colour {
        return text;
    }
    let mut plain = String::with_capacity(text.len());
    for line in text.lines() {
        plain.push_str(&caldera_core::logtext::strip_ansi(line));
        plain.push('\n');
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_for_a_terminal() {
        let log = "[   0.100] \x1b[1m\x1b[31merror\x1b[0m: boom\nplain\n";
        assert_eq!(readable(log, true, true), log);
        assert_eq!(
            readable(log, true, false),
            "[   0.100] error: boom\nplain\n"
        );
    }
}
