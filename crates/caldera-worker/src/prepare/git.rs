//! Git crates: cloned and checked out at their revision, submodules included, with git never
//! prompting for credentials.

use std::path::Path;

use super::failures::classify_git_failure;
use super::{PrepareError, PrepareReport, Preparer};

impl Preparer {
    /// Runs `git ARGS` (in `cwd`, when given), recorded in the report.
    async fn git(
        &self,
        args: &[&str],
        cwd: Option<&Path>,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/true")
            .env("LC_ALL", "C");
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let label = format!("git {}", args.join(" "));
        let out = self.run_logged(cmd, &label, report).await?;
        if out.success {
            return Ok(());
        }
        Err(classify_git_failure(&out.text, &label))
    }

    /// Clones `url` into `src` and checks out `rev`, then its submodules when it has any.
    pub(super) async fn clone_git(
        &self,
        url: &str,
        rev: &str,
        src: &Path,
        report: &mut PrepareReport,
    ) -> Result<(), PrepareError> {
        // ids are validated (no leading '-', known URL schemes), and `--` ends the options anyway
        let dest = src.to_string_lossy().into_owned();
        self.git(&["clone", "--quiet", "--", url, &dest], None, report)
            .await?;
        self.git(
            &["checkout", "--quiet", "--detach", rev, "--"],
            Some(src),
            report,
        )
        .await?;
        if tokio::fs::try_exists(src.join(".gitmodules"))
            .await
            .unwrap_or(false)
        {
            self.git(
                &["submodule", "update", "--init", "--recursive", "--quiet"],
                Some(src),
                report,
            )
            .await?;
        }
        Ok(())
    }
}
