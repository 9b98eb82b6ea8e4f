//! A side's steps: the cargo commands of its mode, the environment they run in, and running them
//! in the side's container in one exec, classified — once more from a clean target dir when the
//! classification saw a contaminated one (E0464).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caldera_classify::{Classification, StepKind, StepRun, Termination, classify_job};
use caldera_core::experiment::Mode;
use caldera_core::job::JobSpec;
use caldera_core::outcome::Outcome;
use caldera_core::toolchain::Toolchain;
use caldera_sandbox::{
    Container, SandboxError, StepCommand, StepResult, TimeoutKind, Timeouts, paths,
};
use tokio_util::sync::CancellationToken;

use super::log::{LogText, limit_notes, write_step_output};
use super::shared_deps::DepsPlan;
use super::toolchains::SideToolchain;
use super::{Inner, SideRun, lock, sandbox_reason};
use crate::prepare::PreparedCrate;

/// One step to run: which kind (for classification), a label and cargo's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub kind: StepKind,
    pub argv: Vec<String>,
}

/// A side ready for its container.
pub(super) struct SideSetup {
    /// the log so far (miri's setup)
    body: Vec<u8>,
    commands: Vec<(StepKind, StepCommand)>,
    target: PathBuf,
    /// The deps-only build to run first (shared dependency builds).
    deps: Option<DepsPlan>,
}

/// What [`Inner::run_steps`] runs: a side's target dir, its steps and its deps-only build.
struct SideWork<'a> {
    target: &'a Path,
    commands: &'a [(StepKind, StepCommand)],
    deps: Option<DepsPlan>,
}

/// Cargo's message format for steps that compile.
const MESSAGE_FORMAT: &str = "--message-format=json-diagnostic-rendered-ansi";

/// The cargo invocations of one side, in order (see the `docker` module docs): build-and-test is
/// `build`, `test --no-run`, `test` (without the last when tests are skipped); build-only `build`;
/// check-only `check --all-targets`; clippy `clippy --all-targets`; rustdoc `doc --no-deps`; miri
/// `miri test`. All run `--locked --offline`; compiling steps print JSON diagnostics; the
/// toolchain's `--target` and cargo flags are appended.
pub fn plan_steps(mode: Mode, skip_tests: bool, toolchain: &Toolchain) -> Vec<PlannedStep> {
    let step = |kind: StepKind, sub: &[&str], json: bool| {
        let mut argv: Vec<String> = std::iter::once("cargo")
            .chain(sub.iter().copied())
            .chain(["--locked", "--offline"])
            .map(String::from)
            .collect();
        if json {
            argv.push(MESSAGE_FORMAT.into());
        }
        if let Some(target) = &toolchain.target {
            argv.push("--target".into());
            argv.push(target.clone());
        }
        if let Some(flags) = &toolchain.cargoflags {
            argv.extend(flags.split_whitespace().map(String::from));
        }
        PlannedStep { kind, argv }
    };
    match mode {
        Mode::BuildAndTest => {
            let mut steps = vec![
                step(StepKind::Build, &["build"], true),
                step(StepKind::TestNoRun, &["test", "--no-run"], true),
            ];
            if !skip_tests {
                steps.push(step(StepKind::Test, &["test"], false));
            }
            steps
        }
        Mode::BuildOnly => vec![step(StepKind::Build, &["build"], true)],
        Mode::CheckOnly => vec![step(StepKind::Check, &["check", "--all-targets"], true)],
        Mode::Clippy => vec![step(StepKind::Clippy, &["clippy", "--all-targets"], true)],
        Mode::Rustdoc => vec![step(StepKind::Doc, &["doc", "--no-deps"], true)],
        Mode::Miri => {
            if skip_tests {
                // nothing to build without running: miri only interprets tests
                vec![step(StepKind::Check, &["check", "--all-targets"], true)]
            } else {
                vec![step(StepKind::Miri, &["miri", "test"], false)]
            }
        }
    }
}

/// `RUSTFLAGS`/`RUSTDOCFLAGS`-style value: the toolchain's flags, then `--cap-lints=<cap>`.
fn with_cap_lints(flags: Option<&str>, cap: &str) -> String {
    match flags.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => format!("{f} --cap-lints={cap}"),
        None => format!("--cap-lints={cap}"),
    }
}

/// How a step ended, as classification sees it; `None` when it has no exit status (its container
/// died).
fn termination(r: &StepResult) -> Option<Termination> {
    match (r.timed_out, r.oom_killed, r.exit_code) {
        (Some(TimeoutKind::Total), _, _) => Some(Termination::Timeout),
        (Some(TimeoutKind::NoOutput), _, _) => Some(Termination::NoOutputTimeout),
        (None, true, _) => Some(Termination::OomKilled),
        (None, false, Some(code)) => {
            Some(Termination::Exited(i32::try_from(code).unwrap_or(i32::MAX)))
        }
        (None, false, None) => None,
    }
}

/// The steps' `TMPDIR`, inside the target dir (see [`fresh_tmp_dir`]).
const TMP_DIR: &str = ".caldera-tmp";

/// Empties (or creates) the steps' temp dir inside `target`, writable by everyone (sticky): the
/// sandbox's `/tmp` is a `noexec` tmpfs, so doctest binaries, which rustdoc writes to `TMPDIR`
/// and runs, could not run there.
pub(super) async fn fresh_tmp_dir(target: &Path) -> std::io::Result<()> {
    let dir = target.join(TMP_DIR);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::fs::create_dir(&dir).await?;
    tokio::fs::set_permissions(
        &dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o1777),
    )
    .await
}

impl Inner {
    /// Everything a side needs before its container: the target dir, the environment, the steps,
    /// the mounts and limits. `Err` is the side's run when it cannot even start.
    pub(super) async fn setup_side(
        &self,
        spec: &JobSpec,
        tc: &SideToolchain,
        target: &Path,
        source: &Path,
    ) -> Result<SideSetup, SideRun> {
        let t0 = Instant::now();
        let mut body = Vec::new();
        if let Err(e) = tokio::fs::create_dir_all(target).await {
            return Err(SideRun::error(
                format!("creating the target dir {}: {e}", target.display()),
                body,
                t0.elapsed(),
            ));
        }
        let mut env: BTreeMap<String, String> = self.config.sandbox_env.clone();
        let cap = spec.cap_lints.to_string();
        env.insert(
            "RUSTFLAGS".into(),
            with_cap_lints(tc.spec.rustflags.as_deref(), &cap),
        );
        env.insert(
            "RUSTDOCFLAGS".into(),
            with_cap_lints(tc.spec.rustdocflags.as_deref(), &cap),
        );
        env.insert("LC_ALL".into(), "C".into());
        env.insert("CARGO_TERM_COLOR".into(), "always".into());
        env.insert("CARGO_INCREMENTAL".into(), "0".into());
        // the sandbox's /tmp is a noexec tmpfs, where rustdoc cannot run the doctests it builds
        env.insert("TMPDIR".into(), format!("{}/{TMP_DIR}", paths::TARGET));
        if spec.mode == Mode::Miri && !spec.skip_tests {
            match self.miri_sysroot(tc, &mut body).await {
                Ok(sysroot) => {
                    env.insert("MIRI_SYSROOT".into(), sysroot);
                }
                Err(reason) => {
                    return Err(SideRun::error(
                        format!("miri setup: {reason}"),
                        body,
                        t0.elapsed(),
                    ));
                }
            }
        }
        let extra = Duration::from_secs(u64::from(spec.extra_timeout_secs));
        let timeouts = Timeouts {
            total: self.config.timeouts.total + extra,
            no_output: self.config.timeouts.no_output + extra,
        };
        let plan = plan_steps(spec.mode, spec.skip_tests, &tc.spec);
        let commands: Vec<(StepKind, StepCommand)> = plan
            .into_iter()
            .map(|p| {
                let mut cmd = StepCommand::new(p.argv)
                    .timeouts(timeouts.total, timeouts.no_output)
                    .log_cap(self.config.log_cap)
                    .toolchain(&tc.mount_name);
                cmd.env = env.clone();
                (p.kind, cmd)
            })
            .collect();
        let deps = match commands.first() {
            Some((_, template)) => {
                self.plan_deps_build(spec, tc, source, target, template, &mut body)
                    .await
            }
            None => None,
        };

        Ok(SideSetup {
            body,
            commands,
            target: target.to_owned(),
            deps,
        })
    }

    /// Runs a set-up side in its container; `None` when cancelled (the container is removed). Once
    /// the steps are done (nothing of the job runs in it any more: every step's leftovers were
    /// killed) the container goes to `used`, for removal after the job.
    pub(super) async fn run_in(
        &self,
        setup: SideSetup,
        container: Result<Container, String>,
        spec: &JobSpec,
        prepared: &PreparedCrate,
        cancel: &CancellationToken,
        used: &mut Vec<Container>,
    ) -> Option<SideRun> {
        let t0 = Instant::now();
        let SideSetup {
            body,
            commands,
            target,
            deps,
        } = setup;
        let mut body = body;
        let mut container = match container {
            Ok(c) => c,
            Err(reason) => return Some(SideRun::error(reason, body, t0.elapsed())),
        };
        let result = {
            let side = SideWork {
                target: &target,
                commands: &commands,
                deps,
            };
            let work = self.run_steps(&mut container, spec, prepared, side, &mut body);
            tokio::select! {
                r = work => Some(r),
                () = cancel.cancelled() => None,
            }
        };
        if result.is_some() {
            used.push(container);
        } else if let Err(e) = container.remove().await {
            tracing::warn!(error = %e, "could not remove a sandbox container");
        }
        let mut run = match result? {
            Ok(run) => run,
            Err(reason) => SideRun::error(reason, Vec::new(), Duration::ZERO),
        };
        let mut all = body;
        all.append(&mut run.body);
        run.body = all;
        run.duration = t0.elapsed();
        Some(run)
    }

    /// The steps of one side in a running container (after its deps-only build, if planned),
    /// re-run once from a clean target dir when the classification saw E0464 or a unit linked
    /// from the dependency store had to be rebuilt. `Err` is an infrastructure failure.
    async fn run_steps(
        &self,
        container: &mut Container,
        spec: &JobSpec,
        prepared: &PreparedCrate,
        side: SideWork<'_>,
        body: &mut Vec<u8>,
    ) -> Result<SideRun, String> {
        let SideWork {
            target,
            commands,
            deps,
        } = side;
        let shared = deps.is_some();
        if let Some(plan) = deps {
            self.run_deps_build(container, target, plan, body).await?;
        }
        let mut timings = StepTimings::default();
        for attempt in 0..2 {
            fresh_tmp_dir(target)
                .await
                .map_err(|e| format!("preparing the step temp dir: {e}"))?;
            // all steps in one exec: it stops after the first that fails
            let cmds: Vec<StepCommand> = commands.iter().map(|(_, c)| c.clone()).collect();
            let exec_t0 = Instant::now();
            let step_results = match container.exec_steps(&cmds).await {
                Ok(results) => results,
                Err(SandboxError::ContainerLost {
                    step, loss, steps, ..
                }) => {
                    // Killed or removed from outside: SIGKILL like an OOM kill, but nothing the
                    // crate did. The steps that ran go to the log; the side is an `error`.
                    let kind = commands
                        .get(step.saturating_sub(1))
                        .map_or(StepKind::Build, |(k, _)| *k);
                    let reason =
                        format!("the sandbox container was {loss} during step {step} ({kind})");
                    let interrupted = format!("interrupted: the sandbox container was {loss}");
                    record_lost_steps(commands, &steps, attempt, &interrupted, &mut timings, body);
                    return Ok(timings.into_run(Outcome::Error { reason }, None));
                }
                Err(e) => return Err(sandbox_reason(&e)),
            };
            tracing::debug!(
                elapsed = ?exec_t0.elapsed(),
                steps = ?step_results.iter().map(|r| r.duration).collect::<Vec<_>>(),
                "exec done"
            );
            let results = record_steps(commands, step_results, attempt, &mut timings, body)?;
            let mut classification = classify_steps(spec, prepared, &results);
            if let Some(free) = crate::system::free_bytes(target.to_owned()).await
                && let Some(reason) = crate::system::host_disk_full(&classification.outcome, free)
            {
                // out of the worker's disk, not of a sandbox limit: the farm's fault
                let _ = writeln!(LogText(body), "\n==== error: {reason} ====");
                classification.outcome = Outcome::Error { reason };
            }
            if classification.contaminated_target_dir && attempt == 0 {
                self.purge_contaminated(target, body).await?;
                continue;
            }
            if shared && attempt == 0 && super::shared_deps::store_conflict(&results) {
                self.purge_store_conflict(target, body).await?;
                continue;
            }
            return Ok(timings.into_run(classification.outcome.clone(), Some(classification)));
        }
        unreachable!("the second attempt always returns")
    }

    /// Before the clean re-run: the contaminated target dir is emptied, and the log says why.
    async fn purge_contaminated(&self, target: &Path, body: &mut Vec<u8>) -> Result<(), String> {
        let _ = writeln!(
            LogText(body),
            "\n==== E0464 (multiple candidates for a dependency): the reused target dir \
             is contaminated; purging it and re-running this side in a clean one ===="
        );
        // only the contents go: the dir itself is the container's live bind mount
        self.purge(target.to_owned(), false)
            .await
            .map_err(|e| format!("purging the contaminated target dir: {e}"))?;
        lock(&self.stats).contaminated_reruns += 1;
        Ok(())
    }
}

/// The timings of a side's steps across its attempts: each step's duration, its line in the log's
/// header, and the highest peak memory.
#[derive(Default)]
struct StepTimings {
    steps: Vec<(String, Duration)>,
    lines: Vec<String>,
    peak: u64,
}

impl StepTimings {
    /// Records one step that ended as `end`.
    fn record(&mut self, name: &str, result: &StepResult, end: &str) {
        self.peak = self.peak.max(result.peak_memory_bytes.unwrap_or(0));
        self.steps.push((name.to_owned(), result.duration));
        self.lines.push(format!(
            "{name:<24} {:>8.2} s  {end}{}",
            result.duration.as_secs_f64(),
            limit_notes(result, true)
        ));
    }

    /// The side's run with this outcome (its log body and duration are the caller's).
    fn into_run(self, outcome: Outcome, classification: Option<Classification>) -> SideRun {
        SideRun {
            outcome,
            classification,
            steps: self.steps,
            step_lines: self.lines,
            peak_memory_bytes: self.peak,
            body: Vec::new(),
            duration: Duration::ZERO,
        }
    }
}

/// A step's name in the timings and the log: the clean re-run's steps say so.
fn step_name(kind: StepKind, attempt: u32) -> String {
    if attempt == 0 {
        kind.as_str().to_owned()
    } else {
        format!("{kind} (clean re-run)")
    }
}

/// Records the steps of one exec and writes their output to the log, up to the first that
/// failed; the steps with how they ended, for classification. A step without an exit status
/// means the container died: an infrastructure failure.
fn record_steps(
    commands: &[(StepKind, StepCommand)],
    step_results: Vec<StepResult>,
    attempt: u32,
    timings: &mut StepTimings,
    body: &mut Vec<u8>,
) -> Result<Vec<(StepKind, Termination, StepResult)>, String> {
    let mut results = Vec::new();
    for (i, ((kind, cmd), result)) in commands.iter().zip(step_results).enumerate() {
        let term = termination(&result).ok_or_else(|| {
            format!(
                "step {} ({}) ended without an exit status: the sandbox container died",
                i + 1,
                kind
            )
        })?;
        let name = step_name(*kind, attempt);
        let end = term.to_string();
        timings.record(&name, &result, &end);
        write_step_output(body, i, commands.len(), &name, cmd, &result, &end);
        let success = term.success();
        results.push((*kind, term, result));
        if !success {
            break;
        }
    }
    Ok(results)
}

/// Records the steps that ran before the container was lost and writes their output to the log;
/// the last of them is the one `interrupted`.
fn record_lost_steps(
    commands: &[(StepKind, StepCommand)],
    steps: &[StepResult],
    attempt: u32,
    interrupted: &str,
    timings: &mut StepTimings,
    body: &mut Vec<u8>,
) {
    for (i, ((kind, cmd), result)) in commands.iter().zip(steps).enumerate() {
        let name = step_name(*kind, attempt);
        let end = if i + 1 == steps.len() {
            interrupted.to_owned()
        } else {
            termination(result).map_or_else(String::new, |t| t.to_string())
        };
        timings.record(&name, result, &end);
        write_step_output(body, i, commands.len(), &name, cmd, result, &end);
    }
}

/// Classifies the steps that ran into the side's outcome.
fn classify_steps(
    spec: &JobSpec,
    prepared: &PreparedCrate,
    results: &[(StepKind, Termination, StepResult)],
) -> Classification {
    let texts: Vec<std::borrow::Cow<'_, str>> =
        results.iter().map(|(_, _, r)| r.output.text()).collect();
    let runs: Vec<StepRun<'_>> = results
        .iter()
        .zip(&texts)
        .map(|((kind, term, result), text)| StepRun {
            kind: *kind,
            termination: *term,
            output: text,
            own_packages: &prepared.own_packages,
            pids_limit_hit: result.pids_limit_hit,
        })
        .collect();
    classify_job(spec.mode, &runs, spec.skip_tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(s: &str) -> Toolchain {
        s.parse().unwrap()
    }

    fn argvs(steps: &[PlannedStep]) -> Vec<(StepKind, String)> {
        steps.iter().map(|s| (s.kind, s.argv.join(" "))).collect()
    }

    #[test]
    fn modes_map_to_cargo_commands() {
        let j = MESSAGE_FORMAT;
        let plain = tc("stable");
        assert_eq!(
            argvs(&plan_steps(Mode::BuildAndTest, false, &plain)),
            [
                (
                    StepKind::Build,
                    format!("cargo build --locked --offline {j}")
                ),
                (
                    StepKind::TestNoRun,
                    format!("cargo test --no-run --locked --offline {j}")
                ),
                (StepKind::Test, "cargo test --locked --offline".into()),
            ]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::BuildAndTest, true, &plain)).len(),
            2,
            "skip_tests drops the test run"
        );
        assert_eq!(
            argvs(&plan_steps(Mode::BuildOnly, false, &plain)),
            [(
                StepKind::Build,
                format!("cargo build --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::CheckOnly, false, &plain)),
            [(
                StepKind::Check,
                format!("cargo check --all-targets --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Clippy, false, &plain)),
            [(
                StepKind::Clippy,
                format!("cargo clippy --all-targets --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Rustdoc, false, &plain)),
            [(
                StepKind::Doc,
                format!("cargo doc --no-deps --locked --offline {j}")
            )]
        );
        assert_eq!(
            argvs(&plan_steps(Mode::Miri, false, &plain)),
            [(StepKind::Miri, "cargo miri test --locked --offline".into())]
        );
        let flagged =
            tc("nightly+cargoflags=--features x --release+target=x86_64-unknown-linux-gnu");
        assert_eq!(
            argvs(&plan_steps(Mode::BuildOnly, false, &flagged)),
            [(
                StepKind::Build,
                format!(
                    "cargo build --locked --offline {j} --target x86_64-unknown-linux-gnu \
                     --features x --release"
                )
            )]
        );
    }

    #[test]
    fn cap_lints_follow_the_toolchain_flags() {
        assert_eq!(with_cap_lints(None, "forbid"), "--cap-lints=forbid");
        assert_eq!(with_cap_lints(Some("  "), "warn"), "--cap-lints=warn");
        assert_eq!(
            with_cap_lints(Some("-Dwarnings"), "forbid"),
            "-Dwarnings --cap-lints=forbid"
        );
    }
}
