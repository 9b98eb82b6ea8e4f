//! What `caldera local` prints and keeps when the experiment has ended: the summary and a line
//! per crate, and the report files copied out of object storage into the state directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use caldera_db::{PgPool, experiments};
use caldera_report::{Report, SummaryOptions, summary_markdown};

use super::say;

/// Print the summary, the report location and the dashboard URL.
pub(super) async fn print_report(
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
