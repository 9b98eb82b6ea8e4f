//! Tests of the log normalisation for the diff, [`log_diff`] on real logs of the farm, and the
//! pull-request comment.

use caldera_core::logtext::for_reading;

use crate::diff::*;
use crate::logdiff::normalize_line;
use crate::pr::*;
use crate::*;

/// Logs of the `regress-on-nightly` fixture run through the real sandbox (testdata/README.md).
const REAL_START: &str = include_str!("../testdata/regress-on-nightly/start.log");
const REAL_END: &str = include_str!("../testdata/regress-on-nightly/end.log");

fn norm(s: &str) -> String {
    let mut out = String::new();
    normalize_line(s, &mut out);
    out
}

/// Each kind of value that differs between two runs of the same build, in pairs of lines that
/// must compare equal, and the normalised form.
#[test]
fn what_always_differs_is_normalised() {
    let cases: &[(&str, &str, &str)] = &[
        // timestamps
        (
            "[2026-12-06T19:25:00Z INFO] starting",
            "[2027-01-31T03:04:05.123+01:00 INFO] starting",
            "[$DATE INFO] starting",
        ),
        (
            "built on 2026-12-06 19:25:00",
            "built on 2026-12-07 08:00:59",
            "built on $DATE",
        ),
        ("at 19:25:00.5 ok", "at 03:04:05 ok", "at $TIME ok"),
        // paths
        (
            "Compiling foo v0.1.0 (/tmp/.tmpAAA111/foo)",
            "Compiling foo v0.1.0 (/tmp/.tmpZZZ999/foo)",
            "Compiling foo v0.1.0 ($TMP/foo)",
        ),
        (
            "--> /home/alice/.cargo/registry/src/index.crates.io-6f17d22bba15001f/syn-2.0.1/src/lib.rs:3:5",
            "--> /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/syn-2.0.1/src/lib.rs:3:5",
            "--> $REGISTRY/syn-2.0.1/src/lib.rs:3:5",
        ),
        (
            "Running /caldera/target/debug/deps/foo-1a2b3c4d5e6f7a8b",
            "Running /work/x/target/debug/deps/foo-8b7a6f5e4d3c2b1a",
            "Running $TARGET/debug/deps/foo-$HASH",
        ),
        (
            "see /home/bob/notes",
            "see /home/carol/notes",
            "see $HOME/notes",
        ),
        // durations
        (
            "Finished `dev` profile in 0.53s",
            "Finished `dev` profile in 12.07s",
            "Finished `dev` profile in $DUR",
        ),
        (
            "==== build: exit status 0 after 0.64 s ====",
            "==== build: exit status 0 after 10 s ====",
            "==== build: exit status 0 after $DUR ====",
        ),
        (
            "$ cargo fetch --locked   (0.11 s, exit status: 0)",
            "$ cargo fetch --locked   (2.5 s, exit status: 0)",
            "$ cargo fetch --locked   ($DUR, exit status: 0)",
        ),
        // toolchain names and versions
        (
            "toolchain stable (/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu)",
            "toolchain nightly (/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu)",
            "toolchain $TOOLCHAIN ($TOOLCHAIN)",
        ),
        (
            "using nightly-2026-01-01-x86_64-unknown-linux-gnu",
            "using 1.95.0-x86_64-unknown-linux-gnu",
            "using $TOOLCHAIN",
        ),
        (
            "cargo +beta test",
            "cargo +nightly-2026-02-03 test",
            "cargo +$TOOLCHAIN test",
        ),
        (
            "rustc 1.95.0 (4d91de4e4 2026-11-01)",
            "rustc 1.96.0-nightly (90b35a623 2026-12-05)",
            "rustc $VERSION ($HASH $DATE)",
        ),
        ("cargo 1.95.0", "cargo 1.96.0-beta.2", "cargo $VERSION"),
        // hashes
        (
            "libfoo-1a2b3c4d5e6f7a8b.rlib",
            "libfoo-0f0e0d0c0b0a0908.rlib",
            "libfoo-$HASH.rlib",
        ),
        (
            "panicked at /rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/lib.rs",
            "panicked at /rustc/17067e9ac6d7e98f18d4d0bd6e5fdcc7d5a6c2fb/library/std/src/lib.rs",
            "panicked at /rustc/$HASH/library/std/src/lib.rs",
        ),
    ];
    for (a, b, want) in cases {
        assert_eq!(norm(a), *want, "{a}");
        assert_eq!(norm(b), *want, "{b}");
    }
}

/// What differs for real survives normalisation: error lines, codes, crate versions, line
/// numbers, test names, words that merely start like a toolchain.
#[test]
fn real_differences_survive() {
    let kept: &[&str] = &[
        "error[E0308]: mismatched types",
        "error: could not compile `foo` (lib) due to 1 previous error",
        "--> src/lib.rs:11:5",
        "Compiling foo v1.0.3",
        "test tests::value_is_one ... FAILED",
        "stablecoin betamax nightlyish",
        "12 items, 3 secrets",
        "version 1.95.0 of the parser",
    ];
    for line in kept {
        assert_eq!(norm(line), *line, "{line}");
    }
    assert_ne!(
        norm("error[E0308]: mismatched types"),
        norm("error[E0277]: mismatched types")
    );
    assert_ne!(norm("Compiling foo v1.0.3"), norm("Compiling foo v1.0.4"));
}

/// The real logs of a regressed crate: the first divergent section holds the new error, and
/// nothing that only differs in stamps, timings, paths or hashes is reported.
#[test]
fn real_regression_diff_starts_with_the_new_error() {
    let (start, end) = (for_reading(REAL_START), for_reading(REAL_END));
    let diff = log_diff(&start, &end, &DiffOptions::default());
    assert!(!diff.timed_out);
    assert!(!diff.identical());
    // the run headers (side, outcome, steps) are left out of the comparison
    assert!(
        diff.header_lines.0 > 5 && diff.header_lines.1 > 5,
        "{diff:?}"
    );
    let first = &diff.sections[0];
    let added: Vec<&str> = first
        .lines
        .iter()
        .filter(|l| matches!(l, DiffLine::Added { .. }))
        .map(DiffLine::text)
        .collect();
    assert!(
        added
            .iter()
            .any(|l| l.contains("error[E0308]: mismatched types")),
        "{first:#?}"
    );
    assert!(
        added.iter().any(|l| l.contains("could not compile")),
        "{added:?}"
    );
    // the line numbers point into the logs as shown
    let end_lines: Vec<&str> = end.lines().collect();
    for l in &first.lines {
        if let DiffLine::Added { end: n, text } = l {
            let shown = caldera_core::logtext::strip_ansi(end_lines[*n]);
            assert!(shown.contains(text.trim()), "{n}: {text}");
        }
    }
    // nothing volatile is a difference: no line added to the end log is, once normalised, a
    // line removed from the start log (that would be the same line with other stamps or paths)
    for s in &diff.sections {
        let removed: std::collections::HashSet<String> = s
            .lines
            .iter()
            .filter(|l| matches!(l, DiffLine::Removed { .. }))
            .map(|l| norm(l.text()))
            .collect();
        for l in &s.lines {
            if let DiffLine::Added { text, .. } = l {
                assert!(
                    !removed.contains(&norm(text)),
                    "reported as changed: {text}"
                );
            }
        }
    }
    // the end log's last step line says how the build ended, and differs for real
    assert!(
        added.contains(&"==== build: exit status 101 after 0.62 s ===="),
        "{added:?}"
    );
    // the stamps, timings and paths of the start log changed, and nothing else: identical
    let shifted = start
        .replace("[   0.", "[  17.")
        .replace("0.54s", "3.21s")
        .replace("(0.23 s,", "(4.5 s,")
        .replace("5b8988809f9ccc54", "0123456789abcdef")
        .replace("/caldera/target/", "/build/other/target/");
    assert_ne!(shifted, start);
    let same = log_diff(&start, &shifted, &DiffOptions::default());
    assert!(same.identical(), "{:#?}", same.sections);
}

#[test]
fn diff_sections_are_cut_to_size() {
    let start: String = (0..100).map(|i| format!("line {i}\n")).collect();
    let mut end = start.replace("line 10\n", "changed 10\n");
    end = end.replace("line 50\n", "changed 50\n");
    end.push_str(&(0..50).map(|i| format!("extra {i}\n")).collect::<String>());
    let diff = log_diff(&start, &end, &DiffOptions::default());
    assert_eq!(diff.total_sections, 3);
    assert_eq!(diff.header_lines, (0, 0));
    let s = &diff.sections[0];
    assert_eq!(s.changes(), (1, 1));
    assert_eq!(s.lines.len(), 3 + 2 + 3, "{s:#?}");
    assert_eq!(
        s.lines[3],
        DiffLine::Removed {
            start: 10,
            text: "line 10".into()
        }
    );
    assert_eq!(
        s.lines[4],
        DiffLine::Added {
            end: 10,
            text: "changed 10".into()
        }
    );
    let small = DiffOptions {
        max_sections: 2,
        max_section_lines: 10,
        ..DiffOptions::default()
    };
    let diff = log_diff(&start, &end, &small);
    assert_eq!((diff.sections.len(), diff.total_sections), (2, 3));
    let diff = log_diff(&start, &end, &small);
    let last = log_diff(
        &start,
        &end,
        &DiffOptions {
            max_sections: 3,
            ..small
        },
    );
    assert_eq!(diff.sections[..], last.sections[..2]);
    let tail = &last.sections[2];
    assert_eq!((tail.lines.len(), tail.cut), (10, 3 + 50 - 10));
    assert!(log_diff("a\nb\n", "a\nb\n", &DiffOptions::default()).identical());
    // a log that is not caldera's keeps all its lines
    assert!(!log_diff("x\n", "y\n", &DiffOptions::default()).identical());
}

fn reg(id: &str, start: Outcome, end: Outcome) -> CrateResult {
    CrateResult {
        krate: id.parse().unwrap(),
        start,
        end,
        start_log: None,
        end_log: None,
    }
}

fn ce(code: &str) -> Outcome {
    Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: vec![code.into()],
    })
}

#[test]
fn pr_comment_has_counts_roots_links_and_the_retry_commands() {
    let report = Report::build(vec![
        reg("reg:root-a@1.0.0", Outcome::TestPass, ce("E0308")),
        reg(
            "reg:dep-b@2.0.0",
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["root-a".into()],
            }),
        ),
        reg("reg:fixed-f@1.0.0", ce("E0599"), Outcome::TestPass),
        reg(
            "reg:flaky-e@1.0.0",
            Outcome::TestPass,
            Outcome::BuildFail(BuildFailReason::Oom),
        ),
        reg("reg:same-g@1.0.0", Outcome::TestPass, Outcome::TestPass),
    ])
    .unwrap();
    let md = pr_comment(
        &report,
        &PrCommentOptions::new("pr-123", "stable", "nightly", "https://caldera.example/"),
    );
    let exp = "https://caldera.example/experiments/pr-123";
    assert!(
        md.starts_with(&format!(
            "### [caldera]({exp}) `pr-123`: 2 regressions (1 root cause)\n"
        )),
        "{md}"
    );
    assert!(
        md.contains("`stable` → `nightly`, 5 crates tested."),
        "{md}"
    );
    assert!(
        md.contains(&format!("| [regressed]({exp}?category=regressed) | 2 |")),
        "{md}"
    );
    assert!(md.contains("| **total** | **5** |"), "{md}");
    // zero counts are left out
    assert!(!md.contains("| [broken]"), "{md}");
    let page = format!("{exp}/crates/reg%3Aroot-a%401.0.0");
    assert!(
        md.contains(&format!(
            "| `root-a 1.0.0` | `build-fail:compiler-error(E0308)` | 2 | [end log]({page}#log-end) · [diff]({page}/diff) · [through it]({exp}?root=reg%3Aroot-a%401.0.0) |"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "#### Fixed (1)\n\n[`fixed-f 1.0.0`]({exp}/crates/reg%3Afixed-f%401.0.0)"
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "Not counted as regressions: [1 spurious-regressed]({exp}?category=spurious-regressed)."
        )),
        "{md}"
    );
    assert!(md.contains("Retry 3 crates"), "{md}");
    assert!(md.contains(
        "curl -s -H \"Authorization: Bearer $CALDERA_TOKEN\" 'https://caldera.example/api/v1/experiments/pr-123/report/retry.txt' > retry.txt"
    ));
    assert!(md.contains(
        "caldera experiment create 'pr-123-retry' --start 'stable' --end 'nightly' --crates 'list:pr-123-retry'"
    ));
    assert!(!md.contains("… and"), "nothing cut: {md}");

    let clean = Report::build(vec![reg(
        "reg:same-g@1.0.0",
        Outcome::TestPass,
        Outcome::TestPass,
    )])
    .unwrap();
    let md = pr_comment(
        &clean,
        &PrCommentOptions::new("ok", "stable", "beta", "http://h:8080"),
    );
    assert!(md.contains("`ok`: no regressions"), "{md}");
    assert!(!md.contains("Retry") && !md.contains("####"), "{md}");
}

/// 200,000 crates with thousands of regressions and fixes: the comment stays within GitHub's
/// limit, lists are cut with a link to the full list, and the sections are all there.
#[test]
fn pr_comment_fits_github_at_200k_results() {
    let (results, _) = crate::tests::synthetic(200_000, 7);
    let mut results = results;
    // thousands of fixes too, with long names
    for (_, r) in results.iter_mut().enumerate().filter(|(i, _)| i % 50 == 3) {
        if r.start == r.end {
            r.start = ce("E0599");
        }
    }
    let report = Report::build(results).unwrap();
    let roots = report.root_regressions().len();
    let fixed = report.counts().get(Comparison::Fixed);
    assert!(roots > 500 && fixed > 1000, "{roots} roots, {fixed} fixed");
    let base = format!("https://{}.example", "x".repeat(200));
    let md = pr_comment(
        &report,
        &PrCommentOptions::new("big-experiment", "stable", "nightly", &base),
    );
    assert!(md.len() <= GITHUB_COMMENT_LIMIT, "{} bytes", md.len());
    assert!(md.chars().count() <= GITHUB_COMMENT_LIMIT);
    assert!(md.len() > GITHUB_COMMENT_LIMIT / 4, "{} bytes", md.len());
    let exp = format!("{base}/experiments/big-experiment");
    let shown = md.matches("[end log](").count();
    assert!(shown >= 10 && shown < roots, "{shown}");
    assert!(
        md.contains(&format!(
            "… and {} more, see {exp}?category=regressed",
            roots - shown
        )),
        "{md}"
    );
    assert!(
        md.contains(&format!("see {exp}?category=fixed")),
        "fixed list cut"
    );
    assert!(
        md.contains("Retry ") && md.ends_with("</details>\n"),
        "{md}"
    );
    // a generous limit per section is cut down to fit
    let md = pr_comment(
        &report,
        &PrCommentOptions {
            max_entries: 100_000,
            ..PrCommentOptions::new("big-experiment", "stable", "nightly", &base)
        },
    );
    assert!(md.len() <= GITHUB_COMMENT_LIMIT, "{} bytes", md.len());
}
