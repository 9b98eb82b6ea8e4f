use super::*;

/// The own package id of the fixtures under `tests/data/classify`.
fn own(name: &str) -> Vec<String> {
    vec![format!("path+file:///build/{name}#0.1.0")]
}

fn fixture(name: &str) -> &'static str {
    match name {
        "build_own_errors" => include_str!("../tests/data/classify/build_own_errors.log"),
        "build_dep_error" => include_str!("../tests/data/classify/build_dep_error.log"),
        "build_dep_build_script_network" => {
            include_str!("../tests/data/classify/build_dep_build_script_network.log")
        }
        "build_link" => include_str!("../tests/data/classify/build_link.log"),
        "build_deny_lint" => include_str!("../tests/data/classify/build_deny_lint.log"),
        "build_ice" => include_str!("../tests/data/classify/build_ice.log"),
        "test_failures" => include_str!("../tests/data/classify/test_failures.log"),
        "test_failures_libtest_json" => {
            include_str!("../tests/data/classify/test_failures_libtest_json.log")
        }
        "test_crashes" => include_str!("../tests/data/classify/test_crashes.log"),
        "test_crash_single_thread" => {
            include_str!("../tests/data/classify/test_crash_single_thread.log")
        }
        "test_doctests" => include_str!("../tests/data/classify/test_doctests.log"),
        "test_trybuild_mismatch" => {
            include_str!("../tests/data/classify/test_trybuild_mismatch.log")
        }
        other => panic!("no fixture {other}"),
    }
}

fn failed(kind: StepKind, output: &str, own: &[String]) -> Classification {
    failed_with(kind, Termination::Exited(101), output, own)
}

fn failed_with(
    kind: StepKind,
    termination: Termination,
    output: &str,
    own: &[String],
) -> Classification {
    let run = StepRun {
        kind,
        termination,
        output,
        own_packages: own,
        pids_limit_hit: false,
    };
    match classify_step(&run) {
        StepVerdict::Failed(c) => c,
        StepVerdict::Passed => panic!("{kind} step with {termination} passed"),
    }
}

fn bf(reason: BuildFailReason) -> Outcome {
    Outcome::BuildFail(reason)
}

fn codes(c: &[&str]) -> Outcome {
    bf(BuildFailReason::CompilerError {
        codes: c.iter().map(|s| s.to_string()).collect(),
    })
}

fn deps(c: &[&str]) -> Outcome {
    bf(BuildFailReason::DependsOn {
        crates: c.iter().map(|s| s.to_string()).collect(),
    })
}

fn test_fail(names: &[&str]) -> Outcome {
    Outcome::TestFail {
        failed_tests: names.iter().map(|s| s.to_string()).collect(),
        reason: None,
    }
}

fn test_fail_because(names: &[&str], reason: TestFailReason) -> Outcome {
    Outcome::TestFail {
        failed_tests: names.iter().map(|s| s.to_string()).collect(),
        reason: Some(reason),
    }
}

/// A cargo `compiler-message` line, in the shape cargo 1.95 prints (key order included;
/// explanation, spans and rendered text shortened).
fn compiler_message(package_id: &str, level: &str, code: Option<&str>, message: &str) -> String {
    let code = match code {
        Some(c) => serde_json::json!({"code": c, "explanation": null}),
        None => serde_json::Value::Null,
    };
    let diagnostic = serde_json::json!({
        "$message_type": "diagnostic", "message": message, "code": code, "level": level,
        "spans": [], "children": [],
        "rendered": format!("\u{1b}[1m\u{1b}[91m{level}\u{1b}[0m: {message}\n")
    });
    format!(
        "{{\"reason\":\"compiler-message\",\"package_id\":{},\"manifest_path\":\"/build/x/Cargo.toml\",\"target\":{{\"kind\":[\"lib\"],\"crate_types\":[\"lib\"],\"name\":\"x\",\"src_path\":\"/build/x/src/lib.rs\",\"edition\":\"2021\",\"doc\":true,\"doctest\":true,\"test\":true}},\"message\":{diagnostic}}}",
        serde_json::Value::from(package_id)
    )
}

const REG: &str = "registry+https://github.com/rust-lang/crates.io-index";

// -----------------------------------------------------------------------------------------
// Package ids

/// Name, version and source a package id parses to.
type Parsed = Option<(&'static str, &'static str, PackageSource)>;

#[test]
fn package_ids() {
    use PackageSource::*;
    let cases: &[(&str, Parsed, &str)] = &[
        (
            "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.197",
            Some(("serde", "1.0.197", Registry)),
            "reg:serde@1.0.197",
        ),
        (
            "serde 1.0.197 (registry+https://github.com/rust-lang/crates.io-index)",
            Some(("serde", "1.0.197", Registry)),
            "reg:serde@1.0.197",
        ),
        (
            "sparse+https://my.registry/index/#foo-bar@0.1.0-alpha.1",
            Some(("foo-bar", "0.1.0-alpha.1", Registry)),
            "reg:foo-bar@0.1.0-alpha.1",
        ),
        (
            "registry+sparse+https://my.registry/index/#foo_bar@2.0.0+build.5",
            Some(("foo_bar", "2.0.0+build.5", Registry)),
            "reg:foo_bar@2.0.0+build.5",
        ),
        (
            "path+file:///build/own_err#0.1.0",
            Some(("own_err", "0.1.0", Path)),
            "own_err",
        ),
        (
            "path+file:///build/dir#my-crate@0.1.0",
            Some(("my-crate", "0.1.0", Path)),
            "my-crate",
        ),
        (
            "my-crate 0.1.0 (path+file:///build/dir)",
            Some(("my-crate", "0.1.0", Path)),
            "my-crate",
        ),
        (
            "git+https://github.com/rust-lang/regex?branch=main#regex@1.4.3",
            Some(("regex", "1.4.3", Git)),
            "regex",
        ),
        (
            "git+https://github.com/rust-lang/regex#1.4.3",
            Some(("regex", "1.4.3", Git)),
            "regex",
        ),
        (
            "regex 1.4.3 (git+https://github.com/rust-lang/regex?branch=main#0123456789abcdef0123456789abcdef01234567)",
            Some(("regex", "1.4.3", Git)),
            "regex",
        ),
        (
            "https://github.com/rust-lang/crates.io-index#regex:1.4.3",
            Some(("regex", "1.4.3", Other)),
            "regex",
        ),
        ("serde", None, ""),
        ("serde@1.0.0", None, ""),
        ("serde 1.0.0", None, ""),
        ("path+file:///build/x#", None, ""),
        ("path+file:///build/x#name@", None, ""),
        ("a b c (registry+x)", None, ""),
        ("", None, ""),
    ];
    for (input, expected, label) in cases {
        let got = PackageId::parse(input);
        let want = expected.map(|(n, v, s)| PackageId {
            name: n.into(),
            version: v.into(),
            source: s,
        });
        assert_eq!(got, want, "{input}");
        if let Some(p) = got {
            assert_eq!(p.crate_label(), *label, "{input}");
        }
    }
}

#[test]
fn old_and_new_package_id_forms_match_each_other() {
    let old = vec!["my-crate 0.1.0 (path+file:///build/dir)".to_owned()];
    let new = vec!["path+file:///build/dir#my-crate@0.1.0".to_owned()];
    let line_new = compiler_message(&new[0], "error", Some("E0308"), "mismatched types");
    let line_old = compiler_message(&old[0], "error", Some("E0308"), "mismatched types");
    for own in [&old, &new] {
        for line in [&line_new, &line_old] {
            let c = failed(StepKind::Build, line, own);
            assert_eq!(c.outcome, codes(&["E0308"]), "{own:?} {line}");
        }
    }
}

// -----------------------------------------------------------------------------------------
// Build-ish steps on real output

#[test]
fn build_fixtures() {
    use BuildFailReason as R;
    let cases: &[(&str, StepKind, &str, Outcome)] = &[
        (
            "build_own_errors",
            StepKind::Build,
            "own_err",
            codes(&["E0308", "E0425"]),
        ),
        (
            "build_dep_error",
            StepKind::Build,
            "dep_err",
            deps(&["reg:brokendep@1.2.3"]),
        ),
        (
            "build_dep_build_script_network",
            StepKind::Build,
            "dep_net",
            bf(R::NetworkAccess),
        ),
        ("build_link", StepKind::Build, "link_err", bf(R::Link)),
        (
            "build_deny_lint",
            StepKind::Check,
            "lint_err",
            codes(&["unused_imports"]),
        ),
        ("build_ice", StepKind::Build, "ice", bf(R::Ice)),
        ("build_ice", StepKind::Clippy, "ice", bf(R::Ice)),
        (
            "build_own_errors",
            StepKind::TestNoRun,
            "own_err",
            codes(&["E0308", "E0425"]),
        ),
        // The build part of a test step failed: classified like a build.
        (
            "build_own_errors",
            StepKind::Test,
            "own_err",
            codes(&["E0308", "E0425"]),
        ),
        (
            "build_dep_error",
            StepKind::Miri,
            "dep_err",
            deps(&["reg:brokendep@1.2.3"]),
        ),
    ];
    for (name, kind, pkg, expected) in cases {
        let c = failed(*kind, fixture(name), &own(pkg));
        assert_eq!(&c.outcome, expected, "{name} as {kind}: {:?}", c.notes);
        assert!(!c.diagnostics_changed, "{name}");
        assert!(!c.contaminated_target_dir, "{name}");
    }
}

#[test]
fn dependency_build_script_failure_without_network_is_depends_on() {
    // The same real output with the build script's network error replaced by a missing
    // system library, as openssl-sys reports it when the image lacks libssl-dev.
    let out = fixture("build_dep_build_script_network").replace(
        "failed to download the bundled library: failed to lookup address information: Name or service not known",
        "Could not find directory of OpenSSL installation",
    );
    let c = failed(StepKind::Build, &out, &own("dep_net"));
    assert_eq!(c.outcome, deps(&["reg:netdep@0.4.1"]), "{:?}", c.notes);
}

#[test]
fn own_build_script_failure_is_unknown_with_a_note() {
    let out = "   Compiling mine v0.3.0 (/build/mine)\n\
        error: failed to run custom build command for `mine v0.3.0 (/build/mine)`\n\n\
        Caused by:\n  process didn't exit successfully: `/build/target/debug/build/mine-0123456789abcdef/build-script-build` (exit status: 1)\n\
        \x20 --- stderr\n  cc: error: missing.c: No such file or directory\n\
        {\"reason\":\"build-finished\",\"success\":false}\n";
    let c = failed(
        StepKind::Build,
        out,
        &["path+file:///build/mine#0.3.0".into()],
    );
    assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
    assert!(
        c.notes.iter().any(|n| n.starts_with("build script failed")),
        "{:?}",
        c.notes
    );
}

#[test]
fn compiler_errors_codes_sorted_deduped_and_codeless_errors() {
    let me = "path+file:///build/me#0.1.0";
    let dep = format!("{REG}#dep@2.0.0");
    let cases: Vec<(Vec<String>, Outcome)> = vec![
        (
            vec![
                compiler_message(me, "error", Some("E0599"), "no method"),
                compiler_message(me, "error", Some("E0308"), "mismatched types"),
                compiler_message(me, "error", Some("E0599"), "no method"),
                compiler_message(me, "warning", Some("unused_variables"), "unused"),
            ],
            codes(&["E0308", "E0599"]),
        ),
        // Errors without codes are still compiler errors of the crate.
        (
            vec![compiler_message(
                me,
                "error",
                None,
                "extern blocks must be unsafe",
            )],
            codes(&[]),
        ),
        // Only rustc's summary, and cargo's plain `could not compile`: nothing is known.
        (
            vec![
                compiler_message(me, "error", None, "aborting due to 2 previous errors"),
                "error: could not compile `me` (lib) due to 2 previous errors".into(),
            ],
            bf(BuildFailReason::Unknown),
        ),
        (
            vec!["error: could not compile `me` (lib) due to 1 previous error".into()],
            bf(BuildFailReason::Unknown),
        ),
        // Warnings alone never make a compiler error.
        (
            vec![compiler_message(
                me,
                "warning",
                Some("dead_code"),
                "never used",
            )],
            bf(BuildFailReason::Unknown),
        ),
        // A dependency's error wins over the crate's own (which cannot build without it).
        (
            vec![
                compiler_message(me, "error", Some("E0432"), "unresolved import"),
                compiler_message(&dep, "error", Some("E0308"), "mismatched types"),
            ],
            deps(&["reg:dep@2.0.0"]),
        ),
        // Clippy lints denied in the crate.
        (
            vec![
                compiler_message(me, "error", Some("clippy::needless_return"), "unneeded"),
                compiler_message(me, "error", Some("clippy::all"), "x"),
            ],
            codes(&["clippy::all", "clippy::needless_return"]),
        ),
        // `could not compile` naming a dependency known from JSON messages.
        (
            vec![
                format!(
                    "{{\"reason\":\"compiler-artifact\",\"package_id\":\"{dep}\",\"fresh\":true}}"
                ),
                "error: could not compile `dep` (lib)".into(),
            ],
            deps(&["reg:dep@2.0.0"]),
        ),
        // … or unknown: its name.
        (
            vec!["error: could not compile `mystery` (lib)".into()],
            deps(&["mystery"]),
        ),
    ];
    for (lines, expected) in cases {
        let out = lines.join("\n");
        let c = failed(StepKind::Build, &out, &[me.to_owned()]);
        assert_eq!(c.outcome, expected, "{out}");
    }
}

#[test]
fn ice_takes_precedence_over_errors_and_is_found_in_any_form() {
    let me = "path+file:///build/me#0.1.0";
    let dep = format!("{REG}#dep@2.0.0");
    let e0308 = compiler_message(me, "error", Some("E0308"), "mismatched types");
    let cases = [
        compiler_message(me, "error: internal compiler error", None, "unexpected panic"),
        // An ICE in a dependency is still an ICE.
        compiler_message(&dep, "error: internal compiler error", Some("E0308"), "x"),
        "error: the compiler unexpectedly panicked. this is a bug.".into(),
        "note: the compiler unexpectedly panicked. this is a bug.".into(),
        "query stack during panic:\n#0 [typeck] type-checking `a`\nend of query stack".into(),
        "error: internal compiler error: compiler/rustc_middle/src/ty/mod.rs:1: oops".into(),
        "error: rustc interrupted by SIGSEGV, printing backtrace".into(),
        "\nthread 'rustc' has overflowed its stack\nfatal runtime error: stack overflow".into(),
        "error: could not compile `me` (lib)\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/toolchains/nightly/bin/rustc --crate-name me --edition=2021 src/lib.rs` (signal: 11, SIGSEGV: invalid memory reference)".into(),
    ];
    for ice in cases {
        let out = format!("{e0308}\n{ice}\n{{\"reason\":\"build-finished\",\"success\":false}}");
        for kind in [
            StepKind::Build,
            StepKind::Check,
            StepKind::Doc,
            StepKind::Test,
        ] {
            let c = failed(kind, &out, &[me.to_owned()]);
            assert_eq!(c.outcome, bf(BuildFailReason::Ice), "{kind}: {ice}");
        }
    }
    // A test binary (not a compiler) dying of SIGSEGV is not an ICE.
    let c = failed(StepKind::Test, fixture("test_crashes"), &own("crash"));
    assert!(
        matches!(c.outcome, Outcome::TestFail { .. }),
        "{:?}",
        c.outcome
    );
}

#[test]
fn linker_failures() {
    let me = "path+file:///build/me#0.1.0";
    let lines = [
        "error: linking with `cc` failed: exit status: 1",
        "  = note: /usr/bin/ld: /build/target/debug/deps/me.o: in function `me::main': undefined reference to `SSL_new'",
        "          collect2: error: ld returned 1 exit status",
        "  = note: /usr/bin/ld: cannot find -lsqlite3: No such file or directory",
        "error: linker `cc` not found",
        "rust-lld: error: undefined symbol: caldera_missing_symbol",
    ];
    for line in lines {
        let out =
            format!("{line}\nerror: could not compile `me` (bin \"me\") due to 1 previous error");
        let c = failed(StepKind::Build, &out, &[me.to_owned()]);
        assert_eq!(c.outcome, bf(BuildFailReason::Link), "{line}");
    }
    // Structured: the linker's output in the children of the JSON diagnostic.
    let mut v: serde_json::Value = serde_json::from_str(&compiler_message(
        me,
        "error",
        None,
        "could not find native static library `foo`, perhaps an -L flag is missing?",
    ))
    .unwrap();
    v["message"]["children"] = serde_json::json!([{"message": "/usr/bin/ld: cannot find -lfoo", "code": null, "level": "note", "spans": [], "children": [], "rendered": null}]);
    let c = failed(StepKind::Build, &v.to_string(), &[me.to_owned()]);
    assert_eq!(c.outcome, bf(BuildFailReason::Link));
    // JSON lines are not searched as text: a warning quoting linker (or disk, or network)
    // messages is just a warning.
    let quoting = compiler_message(
        me,
        "warning",
        Some("dead_code"),
        "undefined reference to `x` / No space left on device / Could not resolve host",
    );
    let c = failed(StepKind::Build, &quoting, &[me.to_owned()]);
    assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
    // A doctest that fails to link is a failed test, not a link failure of the crate.
    let doctest = "   Doc-tests me\n\nrunning 1 test\ntest src/lib.rs - f (line 3) ... FAILED\n\nfailures:\n\n---- src/lib.rs - f (line 3) stdout ----\nerror: linking with `cc` failed: exit status: 1\n  = note: undefined reference to `f'\nCouldn't compile the test.\n\nfailures:\n    src/lib.rs - f (line 3)\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\nerror: doctest failed, to rerun pass `--doc`\n";
    let c = failed(StepKind::Test, doctest, &[me.to_owned()]);
    assert_eq!(c.outcome, test_fail(&["src/lib.rs - f (line 3)"]));
}

// -----------------------------------------------------------------------------------------
// Terminations and spurious failures

#[test]
fn termination_wins_over_output() {
    use BuildFailReason as R;
    use TestFailReason as T;
    let cases = [
        (Termination::Timeout, R::Timeout, T::Timeout),
        (
            Termination::NoOutputTimeout,
            R::NoOutputTimeout,
            T::NoOutputTimeout,
        ),
        (Termination::OomKilled, R::Oom, T::Oom),
    ];
    let outputs = [
        (fixture("build_own_errors"), "own_err"),
        (fixture("build_ice"), "ice"),
        (fixture("test_failures"), "tests_fail"),
        ("", "x"),
    ];
    for (termination, build, test) in cases {
        for kind in [
            StepKind::Build,
            StepKind::Test,
            StepKind::Clippy,
            StepKind::Miri,
        ] {
            for (out, pkg) in outputs {
                let c = failed_with(kind, termination, out, &own(pkg));
                // the outcome follows the part of the step that was killed: test binaries
                // had run only in the test_failures output
                if kind.runs_tests() && pkg == "tests_fail" {
                    assert!(
                        matches!(&c.outcome, Outcome::TestFail { reason: Some(r), .. } if *r == test),
                        "{kind} {termination}: {}",
                        c.outcome
                    );
                } else {
                    assert_eq!(c.outcome, bf(build.clone()), "{kind} {termination}");
                }
            }
        }
    }
}

#[test]
fn pids_limit_is_named_whatever_else_happened() {
    let outputs = [
        (fixture("build_own_errors"), "own_err", false),
        (fixture("test_failures"), "tests_fail", true),
        ("", "x", false),
    ];
    for termination in [
        Termination::Exited(101),
        Termination::NoOutputTimeout,
        Termination::Timeout,
        Termination::Signalled(9),
    ] {
        for (out, pkg, tests_ran) in outputs {
            for kind in [StepKind::Build, StepKind::Test] {
                let own = own(pkg);
                let run = StepRun {
                    kind,
                    termination,
                    output: out,
                    own_packages: &own,
                    pids_limit_hit: true,
                };
                let StepVerdict::Failed(c) = classify_step(&run) else {
                    panic!("passed");
                };
                let expected_test = kind.runs_tests() && tests_ran;
                match &c.outcome {
                    Outcome::TestFail {
                        reason: Some(TestFailReason::PidsLimit),
                        ..
                    } => assert!(expected_test, "{kind} {pkg}"),
                    Outcome::BuildFail(BuildFailReason::PidsLimit) => {
                        assert!(!expected_test, "{kind} {pkg}")
                    }
                    other => panic!("{kind} {termination} {pkg}: {other}"),
                }
                assert!(c.outcome.is_spurious());
                assert!(
                    c.notes.iter().any(|n| n.contains("pids limit")),
                    "{:?}",
                    c.notes
                );
            }
        }
    }
}

#[test]
fn sigkill_without_the_cgroup_saying_oom_is_not_oom() {
    for termination in [Termination::Exited(137), Termination::Signalled(9)] {
        let c = failed_with(
            StepKind::Build,
            termination,
            fixture("build_own_errors"),
            &own("own_err"),
        );
        assert_eq!(c.outcome, codes(&["E0308", "E0425"]), "{termination}");
        assert!(
            c.notes.iter().any(|n| n.contains("no OOM kill")),
            "{:?}",
            c.notes
        );
        let c = failed_with(StepKind::Build, termination, "", &own("x"));
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown), "{termination}");
        let c = failed_with(
            StepKind::Test,
            termination,
            fixture("test_failures"),
            &own("tests_fail"),
        );
        assert!(
            matches!(c.outcome, Outcome::TestFail { reason: None, .. }),
            "{}",
            c.outcome
        );
    }
    // rustc (or a linker) reported killed by SIGKILL: evidence, not a verdict
    for line in [
        "error: could not compile `syn` (lib)\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/toolchains/stable/bin/rustc --crate-name syn --edition=2021 /cargo/registry/src/syn-2.0.0/src/lib.rs` (signal: 9, SIGKILL: kill)",
        "collect2: fatal error: ld terminated with signal 9 [Killed]",
    ] {
        let c = failed(StepKind::Build, line, &own("x"));
        assert!(!c.outcome.is_spurious(), "{line}: {}", c.outcome);
        assert!(
            c.notes.iter().any(|n| n.contains("SIGKILL")),
            "{line}: {:?}",
            c.notes
        );
    }
}

#[test]
fn permission_denied_on_farm_paths_is_the_farms_error() {
    let me = "path+file:///build/me#0.1.0";
    let dep = "registry+https://github.com/rust-lang/crates.io-index#pin-utils@0.1.0";
    let farm = [
        compiler_message(
            dep,
            "error",
            None,
            "couldn't read `/caldera/cargo-home/registry/src/index.crates.io-1949cf8c6b5b557f/pin-utils-0.1.0/src/lib.rs`: Permission denied (os error 13)",
        ),
        "error: failed to read `/caldera/cargo-home/registry/src/index/fnv-1.0.7/Cargo.toml`\n\nCaused by:\n  Permission denied (os error 13)".to_owned(),
        "error: could not execute process `/caldera/toolchain/bin/rustc -vV` (never executed)\n\nCaused by:\n  Permission denied (os error 13)".to_owned(),
    ];
    for out in &farm {
        for kind in [StepKind::Build, StepKind::Test, StepKind::Check] {
            let c = failed(kind, out, &[me.to_owned()]);
            assert!(
                matches!(&c.outcome, Outcome::Error { reason } if reason.contains("Permission denied")),
                "{kind}: {out}: {}",
                c.outcome
            );
        }
    }
    // the crate's own paths (its source is read-only by design) and permission errors far
    // from any farm path stay the crate's
    let own_path = [
        "error: failed to run custom build command for `me v0.1.0 (/caldera/src)`\n\nCaused by:\n  process didn't exit successfully: `/caldera/target/debug/build/me-1/build-script-build` (exit status: 101)\n  --- stderr\n  thread 'main' panicked at build.rs:3:5:\n  could not write /caldera/src/generated.rs: Permission denied (os error 13)",
        "/caldera/cargo-home/registry/src/x/y\na\nb\nc\nd\ne\nf\nPermission denied (os error 13)",
    ];
    for out in own_path {
        let c = failed(StepKind::Build, out, &[me.to_owned()]);
        assert!(
            !matches!(c.outcome, Outcome::Error { .. }),
            "{out}: {}",
            c.outcome
        );
    }
}

#[test]
fn other_terminations_fall_back_to_the_output() {
    let c = failed_with(
        StepKind::Build,
        Termination::Signalled(15),
        fixture("build_own_errors"),
        &own("own_err"),
    );
    assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
    assert!(
        c.notes.iter().any(|n| n == "step killed by signal 15"),
        "{:?}",
        c.notes
    );
    let c = failed_with(StepKind::Build, Termination::Exited(1), "", &own("x"));
    assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
    let c = failed_with(StepKind::Test, Termination::Exited(101), "", &own("x"));
    assert_eq!(c.outcome, test_fail(&[]));
}

#[test]
fn out_of_memory_in_output() {
    let me = "path+file:///build/me#0.1.0";
    let e0308 = compiler_message(me, "error", Some("E0308"), "mismatched types");
    let cases = [
        "memory allocation of 4294967296 bytes failed\nerror: could not compile `me` (lib)\n\nCaused by:\n  process didn't exit successfully: `rustc --crate-name me` (signal: 6, SIGABRT: process abort signal)",
        "LLVM ERROR: out of memory",
        "cc1plus: out of memory allocating 65536 bytes after a total of 123456 bytes",
        "virtual memory exhausted: Cannot allocate memory",
    ];
    for oom in cases {
        // Out of memory beats the ICE-looking abort and the compiler errors.
        let out =
            format!("{e0308}\n{oom}\nerror: the compiler unexpectedly panicked. this is a bug.");
        let c = failed(StepKind::Build, &out, &[me.to_owned()]);
        assert_eq!(c.outcome, bf(BuildFailReason::Oom), "{oom}");
    }
    // A test binary killed by SIGKILL without the cgroup counting an OOM kill: a test
    // failure (the OOM verdict comes from the termination, see
    // `sigkill_without_the_cgroup_saying_oom_is_not_oom`).
    let killed = fixture("test_crashes").replace(
        "(signal: 11, SIGSEGV: invalid memory reference)",
        "(signal: 9, SIGKILL: kill)",
    );
    let c = failed(StepKind::Test, &killed, &own("crash"));
    assert!(
        matches!(c.outcome, Outcome::TestFail { reason: None, .. }),
        "{}",
        c.outcome
    );
    // But a test aborting on an absurd allocation is the test's bug.
    let c = failed(StepKind::Test, fixture("test_crashes"), &own("crash"));
    assert!(matches!(c.outcome, Outcome::TestFail { .. }));
}

#[test]
fn no_space_left() {
    let me = "path+file:///build/me#0.1.0";
    let cases = [
        compiler_message(
            me,
            "error",
            None,
            "failed to write /build/target/debug/deps/me.o: No space left on device (os error 28)",
        ),
        "error: failed to write `/build/target/debug/.fingerprint/me/lib-me`\n\nCaused by:\n  No space left on device (os error 28)".into(),
        "  = note: /usr/bin/ld: final link failed: No space left on device\n          collect2: error: ld returned 1 exit status".into(),
        "error: could not write output: Disk quota exceeded".into(),
    ];
    for out in &cases {
        for kind in [StepKind::Build, StepKind::Doc, StepKind::Test] {
            let c = failed(kind, out, &[me.to_owned()]);
            assert_eq!(c.outcome, bf(BuildFailReason::NoSpace), "{kind}: {out}");
        }
    }
}

#[test]
fn network_access_phrases() {
    let positive = [
        "fatal: unable to access 'https://github.com/x/y/': Could not resolve host: github.com",
        "  failed to download the bundled library: failed to lookup address information: Temporary failure in name resolution",
        "Error: reqwest::Error { kind: Request, url: \"https://example.com/\", source: hyper_util::client::legacy::Error(Connect, ConnectError(\"dns error\", Custom { kind: Uncategorized, error: \"failed to lookup address information: Name or service not known\" })) }",
        "Error: Os { code: 101, kind: NetworkUnreachable, message: \"Network is unreachable\" }",
        "curl: (7) Failed to connect to 93.184.216.34 port 443: No route to host",
        "error sending request for url (https://static.rust-lang.org/dist/x.tar.gz): error trying to connect: tcp connect error: Connection refused (os error 111)",
        "error: failed to download `serde v1.0.0`\n\nCaused by:\n  attempting to make an HTTP request, but --offline was specified",
        "error: failed to get `rand` as a dependency of package `x v0.1.0`\n\nCaused by:\n  attempting to make an HTTP request, but --frozen was specified",
        "  thread 'main' panicked at build.rs:9:5:\n  this build script requires network access to fetch the SDK",
        "error: Network access is disabled in this environment",
    ];
    for line in positive {
        let out = format!("{line}\n{{\"reason\":\"build-finished\",\"success\":false}}");
        let c = failed(StepKind::Build, &out, &own("x"));
        assert_eq!(c.outcome, bf(BuildFailReason::NetworkAccess), "{line}");
    }
    let negative = [
        "Error: Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
        "error sending request for url (http://127.0.0.1:8080/): Connection refused (os error 111)",
        "error sending request for url (http://localhost:3000/x): Connection refused",
        "error sending request for url (http://[::1]:3000/x): Connection refused",
        "note: this test needs network access",
        "test network_access_is_mocked ... FAILED",
    ];
    for line in negative {
        let out = format!("{line}\n{{\"reason\":\"build-finished\",\"success\":false}}");
        let c = failed(StepKind::Build, &out, &own("x"));
        assert_eq!(c.outcome, bf(BuildFailReason::Unknown), "{line}");
    }
}

// -----------------------------------------------------------------------------------------
// Test steps

#[test]
fn failed_tests_from_real_output() {
    let cases: &[(&str, &[&str])] = &[
        (
            "test_failures",
            &[
                "integ_fails",
                "tests::network",
                "tests::should_panic_but_doesnt",
                "tests::wrong_sum",
            ],
        ),
        (
            "test_failures_libtest_json",
            &[
                "integ_fails",
                "tests::network",
                "tests::should_panic_but_doesnt",
                "tests::wrong_sum",
            ],
        ),
        (
            "test_crashes",
            &[
                "<tests/alloc.rs>: signal: 6, SIGABRT: process abort signal",
                "<tests/exit.rs>: exit status: 3",
                "<unittests src/lib.rs>: signal: 11, SIGSEGV: invalid memory reference",
            ],
        ),
        ("test_crash_single_thread", &["tests::segv"]),
        (
            "test_doctests",
            &["src/lib.rs - add (line 3)", "src/lib.rs - add (line 8)"],
        ),
        ("test_trybuild_mismatch", &["ui"]),
        ("build_own_errors", &[]),
    ];
    for (name, expected) in cases {
        assert_eq!(failed_tests(fixture(name)), *expected, "{name}");
    }
}

#[test]
fn test_step_outcomes_on_real_output() {
    let cases: &[(&str, &str, Outcome, bool)] = &[
        // One of the four failed tests tried the network: the others are real failures.
        (
            "test_failures",
            "tests_fail",
            test_fail(&[
                "integ_fails",
                "tests::network",
                "tests::should_panic_but_doesnt",
                "tests::wrong_sum",
            ]),
            false,
        ),
        (
            "test_failures_libtest_json",
            "tests_fail",
            test_fail(&[
                "integ_fails",
                "tests::network",
                "tests::should_panic_but_doesnt",
                "tests::wrong_sum",
            ]),
            false,
        ),
        (
            "test_doctests",
            "doctest_fail",
            test_fail(&["src/lib.rs - add (line 3)", "src/lib.rs - add (line 8)"]),
            false,
        ),
        (
            "test_trybuild_mismatch",
            "tb",
            test_fail_because(&["ui"], TestFailReason::DiagnosticsChange),
            true,
        ),
        (
            "test_crash_single_thread",
            "crash",
            test_fail(&["tests::segv"]),
            false,
        ),
    ];
    for (name, pkg, expected, diag) in cases {
        for kind in [StepKind::Test, StepKind::Miri] {
            let c = failed(kind, fixture(name), &own(pkg));
            assert_eq!(&c.outcome, expected, "{name}: {:?}", c.notes);
            assert_eq!(c.diagnostics_changed, *diag, "{name}");
            assert!(!c.contaminated_target_dir, "{name}");
        }
    }
    let c = failed(StepKind::Test, fixture("test_failures"), &own("tests_fail"));
    assert!(
        c.notes
            .iter()
            .any(|n| n.ends_with("hit the sandbox (network or disk): tests::network")),
        "{:?}",
        c.notes
    );
}

/// Keeps only the lines of libtest's human output that belong to the given test names (and
/// the framing), turning `test_failures.log` into a run where only those tests failed.
fn only_failing(names: &[&str]) -> String {
    let all = fixture("test_failures");
    let src = &all[..all.find("     Running tests/integ.rs").unwrap()];
    let mut out = String::new();
    let mut skip = false;
    for line in src.lines() {
        let failed_line = line.starts_with("test ") && line.ends_with("FAILED");
        let list_entry = line.starts_with("    ") && !line.starts_with("     ");
        if let Some(n) = captured_header(line) {
            skip = !names.contains(&n);
        } else if line == "failures:" || line.starts_with("test result:") {
            skip = false;
        }
        let name = if failed_line {
            test_line(line).map(|(n, _)| n)
        } else if list_entry {
            Some(line.trim())
        } else {
            None
        };
        if skip || name.is_some_and(|n| !names.contains(&n)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[test]
fn network_only_when_every_failed_test_hit_it() {
    let out = only_failing(&["tests::network"]);
    assert_eq!(failed_tests(&out), ["tests::network"]);
    let c = failed(StepKind::Test, &out, &own("tests_fail"));
    assert_eq!(
        c.outcome,
        test_fail_because(&["tests::network"], TestFailReason::NetworkAccess),
        "{out}"
    );
    let out = only_failing(&["tests::network", "tests::wrong_sum"]);
    let c = failed(StepKind::Test, &out, &own("tests_fail"));
    assert_eq!(
        c.outcome,
        test_fail(&["tests::network", "tests::wrong_sum"])
    );
    // libtest JSON: the failed event's stdout carries the evidence.
    let json = "{ \"type\": \"suite\", \"event\": \"started\", \"test_count\": 1 }\n\
        { \"type\": \"test\", \"event\": \"started\", \"name\": \"net::fetch\" }\n\
        { \"type\": \"test\", \"name\": \"net::fetch\", \"event\": \"failed\", \"stdout\": \"thread 'net::fetch' panicked at src/net.rs:4:5:\\nCould not resolve host: example.com\\n\" }\n\
        { \"type\": \"suite\", \"event\": \"failed\", \"passed\": 0, \"failed\": 1, \"ignored\": 0, \"measured\": 0, \"filtered_out\": 0, \"exec_time\": 0.01 }\n\
        error: test failed, to rerun pass `--lib`\n";
    let c = failed(StepKind::Test, json, &own("x"));
    assert_eq!(
        c.outcome,
        test_fail_because(&["net::fetch"], TestFailReason::NetworkAccess)
    );
    // A crashed binary whose own output tried the network.
    let crash = "     Running tests/net.rs (/build/target/debug/deps/net-0123456789abcdef)\n\
        Error: Os { code: 101, kind: NetworkUnreachable, message: \"Network is unreachable\" }\n\
        error: test failed, to rerun pass `--test net`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/net-0123456789abcdef` (exit status: 1)\n";
    assert_eq!(failed_tests(crash), ["<tests/net.rs>: exit status: 1"]);
    let c = failed(StepKind::Test, crash, &own("x"));
    assert_eq!(
        c.outcome,
        test_fail_because(
            &["<tests/net.rs>: exit status: 1"],
            TestFailReason::NetworkAccess
        )
    );
}

#[test]
fn libtest_text_edge_cases() {
    let cases: &[(&str, &[&str])] = &[
        // Result lines printed inside a test's captured output are ignored.
        (
            "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n---- b stdout ----\ntest c ... FAILED\nfailures:\n\nfailures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
            &["b"],
        ),
        // Terse output: names come from the failures list only.
        (
            "running 3 tests\n.F.\nfailures:\n\n---- m::t stdout ----\npanicked\n\nfailures:\n    m::t\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
            &["m::t"],
        ),
        // Old cargo: `Running target/…/name-hash`, quotes instead of backticks.
        (
            "     Running target/debug/deps/foo-0123456789abcdef\n\nrunning 1 test\nerror: test failed, to rerun pass '--lib'\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/foo-0123456789abcdef` (signal: 11, SIGSEGV: invalid memory reference)\n",
            &["<target/debug/deps/foo>: signal: 11, SIGSEGV: invalid memory reference"],
        ),
        // A binary that completed but failed without naming a test (custom harness).
        (
            "     Running tests/ui.rs (/build/target/debug/deps/ui-0123456789abcdef)\ntest result: FAIL. 3 tests failed\nerror: test failed, to rerun pass `--test ui`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/ui-0123456789abcdef` (exit status: 1)\n",
            &["<tests/ui.rs>: exit status: 1"],
        ),
        // Miri aborting single-threaded inside a test.
        (
            "     Running unittests src/lib.rs (/build/target/miri/debug/deps/m-0123456789abcdef)\n\nrunning 2 tests\ntest a ... ok\ntest ub ... error: Undefined Behavior: out-of-bounds pointer use\n  --> src/lib.rs:9:5\nerror: test failed, to rerun pass `--lib`\n\nCaused by:\n  process didn't exit successfully: `/opt/rustup/bin/cargo-miri runner /build/target/miri/debug/deps/m-0123456789abcdef` (exit status: 1)\n",
            &["ub"],
        ),
        // JSON with exactly one test in flight when the binary died.
        (
            "     Running unittests src/lib.rs (/build/target/debug/deps/j-0123456789abcdef)\n{ \"type\": \"suite\", \"event\": \"started\", \"test_count\": 2 }\n{ \"type\": \"test\", \"event\": \"started\", \"name\": \"ok_one\" }\n{ \"type\": \"test\", \"name\": \"ok_one\", \"event\": \"ok\" }\n{ \"type\": \"test\", \"event\": \"started\", \"name\": \"boom\" }\nerror: test failed, to rerun pass `--lib`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/j-0123456789abcdef --format json` (signal: 11, SIGSEGV: invalid memory reference)\n",
            &["boom"],
        ),
        // The same test name failing in two binaries: no synthetic name for the second.
        (
            "     Running unittests src/lib.rs (/b/deps/x-0123456789abcdef)\n\nrunning 1 test\ntest it_works ... FAILED\n\nfailures:\n\nfailures:\n    it_works\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\nerror: test failed, to rerun pass `--lib`\n     Running tests/it.rs (/b/deps/it-0123456789abcdef)\n\nrunning 1 test\ntest it_works ... FAILED\n\nfailures:\n\nfailures:\n    it_works\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\nerror: test failed, to rerun pass `--test it`\n",
            &["it_works"],
        ),
        // All passing binaries: nothing.
        (
            "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
            &[],
        ),
    ];
    for (out, expected) in cases {
        assert_eq!(failed_tests(out), *expected, "{out}");
    }
}

#[test]
fn build_messages_printed_by_tests_are_test_output() {
    // A custom-harness test binary that drives cargo and echoes what it printed.
    let me = "path+file:///build/me#0.1.0";
    let echoed = compiler_message(me, "error", Some("E0308"), "mismatched types");
    let out = format!(
        "{{\"reason\":\"build-finished\",\"success\":true}}\n     Running tests/compile.rs (/build/target/debug/deps/compile-0123456789abcdef)\n{echoed}\nerror: could not compile `fixture-crate` (lib) due to 1 previous error\nerror: failed to run custom build command for `fixture-sys v0.1.0`\nerror: test failed, to rerun pass `--test compile`\n\nCaused by:\n  process didn't exit successfully: `/build/target/debug/deps/compile-0123456789abcdef` (exit status: 1)\n"
    );
    let c = failed(StepKind::Test, &out, &[me.to_owned()]);
    assert_eq!(
        c.outcome,
        test_fail(&["<tests/compile.rs>: exit status: 1"])
    );
    // The same lines before any test binary ran are the step's own build failing.
    let before = format!("{echoed}\n{{\"reason\":\"build-finished\",\"success\":false}}\n");
    let c = failed(StepKind::Test, &before, &[me.to_owned()]);
    assert_eq!(c.outcome, codes(&["E0308"]));
}

// -----------------------------------------------------------------------------------------
// Flags

#[test]
fn diagnostics_changed_in_any_step() {
    let samples = [
        // trybuild, as in the real fixture but alone.
        "test tests/ui/x.rs ... mismatch\n\nEXPECTED:\n┈┈┈┈\nerror[E0308]: mismatched types\n┈┈┈┈\n\nACTUAL OUTPUT:\n┈┈┈┈\nerror[E0308]: mismatched types\n┈┈┈┈\n",
        "note: If the actual output is the correct output you can bless it by rerunning\n      your test with the environment variable TRYBUILD=overwrite",
        // ui_test
        "FAILED TEST: tests/ui/bad.rs\ncommand: \"rustc\" \"tests/ui/bad.rs\"\n\nactual output differed from expected\nExecute `cargo test --bless` to update `tests/ui/bad.stderr` to the actual output\n--- tests/ui/bad.stderr\n+++ <stderr output>\n",
        // compiletest-rs
        "\nThe actual stderr differed from the expected stderr.\nActual stderr saved to /build/target/debug/ui/x.stderr\nTo update references, rerun the tests and pass the `--bless` flag\n",
        "normalized stderr:\nerror[E0277]: the trait bound `X: Y` is not satisfied\n",
    ];
    for sample in samples {
        let out = format!(
            "running 1 test\ntest ui ... FAILED\n\nfailures:\n\n---- ui stdout ----\n{sample}\n\nfailures:\n    ui\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n"
        );
        for kind in StepKind::ALL {
            if kind == StepKind::Fetch {
                continue;
            }
            let c = failed(kind, &out, &own("x"));
            assert!(c.diagnostics_changed, "{kind}: {sample}");
            if kind.runs_tests() {
                assert_eq!(
                    c.outcome,
                    test_fail_because(&["ui"], TestFailReason::DiagnosticsChange),
                    "{sample}"
                );
            }
        }
    }
    // trybuild's `wip` (no expected file yet) and EXPECTED: alone are not changes.
    let wip = "test tests/ui/new.rs ... wip\n\nNOTE: writing the following output to `wip/new.stderr`.\nMove this file to `tests/ui/new.stderr` to accept it as correct.\nEXPECTED:\n";
    let c = failed(StepKind::Test, wip, &own("x"));
    assert!(!c.diagnostics_changed);
}

#[test]
fn contaminated_target_dir() {
    let me = "path+file:///build/me#0.1.0";
    let rustc_text = "error[E0464]: multiple candidates for `rlib` dependency `okdep` found\n --> user.rs:1:1\n  |\n1 | extern crate okdep;\n  | ^^^^^^^^^^^^^^^^^^^\n  |\n  = note: candidate #1: deps/libokdep-aaaa.rlib\n  = note: candidate #2: deps/libokdep-bbbb.rlib\n\nerror: aborting due to 1 previous error\n";
    let cases: Vec<(StepKind, String, Outcome)> = vec![
        (
            StepKind::Build,
            compiler_message(
                me,
                "error",
                Some("E0464"),
                "multiple candidates for `rmeta` dependency `serde` found",
            ),
            codes(&["E0464"]),
        ),
        // Printed by a doctest (rustdoc compiling against the shared target dir).
        (
            StepKind::Test,
            format!(
                "   Doc-tests me\n\nrunning 1 test\ntest src/lib.rs - f (line 3) ... FAILED\n\nfailures:\n\n---- src/lib.rs - f (line 3) stdout ----\n{rustc_text}Couldn't compile the test.\n\nfailures:\n    src/lib.rs - f (line 3)\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n\nerror: doctest failed, to rerun pass `--doc`\n"
            ),
            test_fail(&["src/lib.rs - f (line 3)"]),
        ),
        // Older wording, coloured, from a test that runs rustc itself.
        (
            StepKind::Test,
            "running 1 test\ntest compile ... FAILED\n\nfailures:\n\n---- compile stdout ----\n\x1b[0m\x1b[1m\x1b[38;5;9merror[E0464]\x1b[0m\x1b[0m\x1b[1m: multiple matching crates for `log`\x1b[0m\n\nfailures:\n    compile\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s\n".into(),
            test_fail(&["compile"]),
        ),
    ];
    for (kind, out, expected) in cases {
        let c = failed(kind, &out, &[me.to_owned()]);
        assert_eq!(c.outcome, expected, "{out}");
        assert!(c.contaminated_target_dir, "{out}");
    }
}

// -----------------------------------------------------------------------------------------
// Robustness

#[test]
fn timestamps_colours_and_crlf_are_ignored() {
    let stamped: String = fixture("build_own_errors")
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let at = std::time::Duration::from_millis(250 * i as u64);
            format!("{}{l}\r\n", caldera_core::logtext::stamp(at))
        })
        .collect();
    let c = failed(StepKind::Build, &stamped, &own("own_err"));
    assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
    let stamped: String = fixture("test_failures")
        .lines()
        .map(|l| format!("[  12.500] {l}\n"))
        .collect();
    assert_eq!(failed_tests(&stamped).len(), 4);
    // Brackets that are not a timestamp are left alone.
    assert_eq!(strip_timestamp("[abc] x"), "[abc] x");
    assert_eq!(strip_timestamp("[1.5] x"), "x");
    assert_eq!(
        strip_ansi("\x1b[1m\x1b[38;5;9merror\x1b[0m: x\x1b]8;;http://x\x07y"),
        "error: xy"
    );
}

#[test]
fn own_packages_unknown_falls_back_to_path_packages() {
    let c = failed(StepKind::Build, fixture("build_own_errors"), &[]);
    assert_eq!(c.outcome, codes(&["E0308", "E0425"]));
    assert!(
        c.notes
            .iter()
            .any(|n| n.starts_with("own packages unknown"))
    );
    let c = failed(StepKind::Build, fixture("build_dep_error"), &[]);
    assert_eq!(c.outcome, deps(&["reg:brokendep@1.2.3"]));
    // With own packages given, a path package that is not among them is a dependency.
    let c = failed(
        StepKind::Build,
        fixture("build_own_errors"),
        &["path+file:///build/other#0.1.0".into()],
    );
    assert_eq!(c.outcome, deps(&["own_err"]));
}

#[test]
fn truncated_log_is_noted() {
    let out = format!(
        "{}\n[caldera: log truncated: 1234 bytes omitted here; the log keeps the first and last part within a cap of 5242880 bytes]\n",
        fixture("build_own_errors")
    );
    let c = failed(StepKind::Build, &out, &own("own_err"));
    assert!(
        c.notes.iter().any(|n| n.contains("log was truncated")),
        "{:?}",
        c.notes
    );
}

#[test]
fn malformed_json_lines_are_text() {
    let out = "{\"reason\":\"compiler-message\",\"package_id\":\n{\"reason\": 5}\n{ \"type\": \"test\"\nerror: could not compile `x` (lib)\n";
    let c = failed(StepKind::Build, out, &own("x"));
    assert_eq!(c.outcome, bf(BuildFailReason::Unknown));
}

#[test]
fn one_pass_matcher_agrees_with_naive_search() {
    let naive = |line: &str| {
        Hits(
            all_phrases()
                .filter(|(p, _)| line.contains(p))
                .fold(0, |bits, (_, bit)| bits | bit),
        )
    };
    let mut corpus: Vec<String> = [
        "",
        "e",
        "--",
        "--bless",
        "x--bless",
        "error: linking with `",
        "No space left on device",
        "éNo space left on deviceé",
        "memory allocation of 12 bytes failed",
        "error: test failed, to rerun pass `--lib` error: doctest failed",
        "query stack during panicquery stack during panic",
        "Could not resolve hos",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Every phrase alone, at the end of a line, cut short, and around multi-byte text.
    for (p, _) in all_phrases() {
        corpus.push(p.to_owned());
        corpus.push(format!("ab{p}"));
        corpus.push(p[..p.len() - 1].to_owned());
        corpus.push(format!("┈{p}┈"));
    }
    for name in [
        "build_own_errors",
        "build_dep_error",
        "build_dep_build_script_network",
        "build_link",
        "build_deny_lint",
        "build_ice",
        "test_failures",
        "test_failures_libtest_json",
        "test_crashes",
        "test_crash_single_thread",
        "test_doctests",
        "test_trybuild_mismatch",
    ] {
        corpus.extend(fixture(name).lines().map(|l| strip_ansi(l).into_owned()));
    }
    let mut matched = 0;
    for line in &corpus {
        let hits = Hits::of(line);
        assert_eq!(hits, naive(line), "{line:?}");
        matched += usize::from(hits.0 != 0);
    }
    assert!(matched > 100, "only {matched} lines matched anything");
}

#[test]
fn notes_are_bounded() {
    let long = "x".repeat(10_000);
    let mut c = Classification::new(Outcome::TestPass);
    for i in 0..100 {
        c.note(format!("{i} {long}"));
    }
    assert_eq!(c.notes.len(), MAX_NOTES);
    assert!(
        c.notes
            .iter()
            .all(|n| n.len() <= MAX_NOTE_LEN && n.ends_with('…'))
    );
    // Cut at a character boundary: byte 4 is inside the second `é`.
    assert_eq!(clip("aéééé", 7), "aé…");
}

#[test]
fn five_mebibytes_of_output() {
    // A long, realistic log (a big dependency tree's artifacts, warnings and test results)
    // with the failures at the end: every line is looked at once.
    let artifact = format!(
        "{{\"reason\":\"compiler-artifact\",\"package_id\":\"{REG}#dep@1.0.0\",\"manifest_path\":\"/cargo/registry/src/dep-1.0.0/Cargo.toml\",\"target\":{{\"kind\":[\"lib\"],\"crate_types\":[\"lib\"],\"name\":\"dep\",\"src_path\":\"/cargo/registry/src/dep-1.0.0/src/lib.rs\",\"edition\":\"2021\",\"doc\":true,\"doctest\":true,\"test\":true}},\"profile\":{{\"opt_level\":\"0\",\"debuginfo\":2,\"debug_assertions\":true,\"overflow_checks\":true,\"test\":false}},\"features\":[],\"filenames\":[\"/build/target/debug/deps/libdep-0123456789abcdef.rlib\"],\"executable\":null,\"fresh\":false}}\n"
    );
    let warning = compiler_message(
        "path+file:///build/big#0.1.0",
        "warning",
        Some("dead_code"),
        "function `f` is never used",
    ) + "\n";
    let mut out = String::from("running 100000 tests\n");
    while out.len() < 5 * 1024 * 1024 {
        out.push_str(&artifact);
        out.push_str(&warning);
        out.push_str("test some::module::a_rather_long_test_name ... ok\n");
    }
    out.push_str("test some::module::broken ... FAILED\n\nfailures:\n\nfailures:\n    some::module::broken\n\ntest result: FAILED. 99999 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s\n");
    let c = failed(StepKind::Test, &out, &own("big"));
    assert_eq!(c.outcome, test_fail(&["some::module::broken"]));
}

// -----------------------------------------------------------------------------------------
// Jobs

fn step(kind: StepKind, termination: Termination, output: &'static str) -> StepRun<'static> {
    static OWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    StepRun {
        kind,
        termination,
        output,
        own_packages: OWN.get_or_init(|| own("own_err")),
        pids_limit_hit: false,
    }
}

#[test]
fn job_mapping() {
    use StepKind as K;
    let ok = Termination::Exited(0);
    let bad = Termination::Exited(101);
    let errors = fixture("build_own_errors");
    let tests = fixture("test_failures");
    let e = codes(&["E0308", "E0425"]);
    let tf = test_fail(&[
        "integ_fails",
        "tests::network",
        "tests::should_panic_but_doesnt",
        "tests::wrong_sum",
    ]);
    let fetch = step(K::Fetch, ok, "");
    let build = step(K::Build, ok, "");
    let no_run = step(K::TestNoRun, ok, "");
    let test = step(K::Test, ok, "");
    let error = || Outcome::Error {
        reason: "no build step ran".into(),
    };
    #[rustfmt::skip]
    let cases: Vec<(Mode, Vec<StepRun<'static>>, bool, Outcome)> = vec![
        (Mode::BuildAndTest, vec![fetch, build, no_run, test], false, Outcome::TestPass),
        (Mode::BuildAndTest, vec![fetch, build, no_run], true, Outcome::TestSkipped),
        (Mode::BuildAndTest, vec![fetch, build, no_run], false, Outcome::TestSkipped),
        // skip_tests: a test step that ran anyway is ignored.
        (Mode::BuildAndTest, vec![build, step(K::Test, bad, tests)], true, Outcome::TestSkipped),
        (Mode::BuildAndTest, vec![fetch, step(K::Build, bad, errors), no_run, test], false, e.clone()),
        (Mode::BuildAndTest, vec![build, step(K::TestNoRun, bad, errors)], false, e.clone()),
        (Mode::BuildAndTest, vec![build, no_run, step(K::Test, bad, tests)], false, tf.clone()),
        // The first failure decides; later steps are ignored.
        (Mode::BuildAndTest, vec![step(K::Build, bad, errors), step(K::Test, bad, tests)], false, e.clone()),
        (Mode::BuildOnly, vec![fetch, build], false, Outcome::TestSkipped),
        (Mode::BuildOnly, vec![fetch, step(K::Build, bad, errors)], false, e.clone()),
        (Mode::CheckOnly, vec![fetch, step(K::Check, ok, "")], false, Outcome::TestPass),
        (Mode::CheckOnly, vec![step(K::Check, bad, errors)], false, e.clone()),
        (Mode::Clippy, vec![step(K::Clippy, ok, "")], false, Outcome::TestPass),
        (Mode::Clippy, vec![step(K::Clippy, bad, errors)], false, e.clone()),
        (Mode::Rustdoc, vec![step(K::Doc, ok, "")], true, Outcome::TestPass),
        (Mode::Rustdoc, vec![step(K::Doc, Termination::Timeout, errors)], false, bf(BuildFailReason::Timeout)),
        (Mode::Miri, vec![fetch, step(K::Miri, ok, "")], false, Outcome::TestPass),
        (Mode::Miri, vec![fetch, build], true, Outcome::TestSkipped),
        (Mode::Miri, vec![fetch, step(K::Miri, bad, tests)], false, tf.clone()),
        (Mode::BuildAndTest, vec![step(K::Fetch, bad, "error: failed to get `foo` as a dependency of package `x v0.1.0`\n\nCaused by:\n  no matching package named `foo` found\n")], false,
            Outcome::PrepareFail { reason: "error: failed to get `foo` as a dependency of package `x v0.1.0`".into() }),
        (Mode::BuildAndTest, vec![step(K::Fetch, Termination::Timeout, "")], false,
            Outcome::PrepareFail { reason: "fetch timed out".into() }),
        (Mode::BuildAndTest, vec![], false, error()),
        (Mode::CheckOnly, vec![fetch], false, error()),
        (Mode::BuildAndTest, vec![step(K::Test, ok, "")], true, error()),
    ];
    for (mode, steps, skip, expected) in cases {
        let kinds: Vec<_> = steps.iter().map(|s| (s.kind, s.termination)).collect();
        let c = classify_job(mode, &steps, skip);
        assert_eq!(
            c.outcome, expected,
            "{mode} {kinds:?} skip={skip}: {:?}",
            c.notes
        );
    }
}

#[test]
fn job_carries_flags_of_the_deciding_step() {
    let trybuild = fixture("test_trybuild_mismatch");
    let tb_own = own("tb");
    let steps = [
        StepRun {
            kind: StepKind::Build,
            termination: Termination::Exited(0),
            output: "",
            own_packages: &tb_own,
            pids_limit_hit: false,
        },
        StepRun {
            kind: StepKind::Test,
            termination: Termination::Exited(101),
            output: trybuild,
            own_packages: &tb_own,
            pids_limit_hit: false,
        },
    ];
    let c = classify_job(Mode::BuildAndTest, &steps, false);
    assert_eq!(
        c.outcome,
        test_fail_because(&["ui"], TestFailReason::DiagnosticsChange)
    );
    assert!(c.diagnostics_changed);
    assert!(
        c.notes.iter().any(|n| n == "decided by step 2 (test)"),
        "{:?}",
        c.notes
    );
}

#[test]
fn passed_steps_are_passed_whatever_they_print() {
    for kind in StepKind::ALL {
        let run = StepRun {
            kind,
            termination: Termination::Exited(0),
            output: fixture("build_ice"),
            own_packages: &[],
            pids_limit_hit: false,
        };
        assert_eq!(classify_step(&run), StepVerdict::Passed);
    }
}

#[test]
fn helpers() {
    assert_eq!(
        error_codes(fixture("build_own_errors"), &own("own_err")),
        ["E0308", "E0425"]
    );
    assert_eq!(
        error_codes(fixture("build_dep_error"), &own("dep_err")),
        Vec::<String>::new()
    );
    assert_eq!(
        StepKind::ALL.map(StepKind::as_str),
        [
            "fetch",
            "build",
            "test-no-run",
            "test",
            "check",
            "clippy",
            "doc",
            "miri"
        ]
    );
    assert_eq!(
        section_label("     Running unittests src/lib.rs (/t/debug/deps/x-0123456789abcdef)"),
        Some("unittests src/lib.rs".into())
    );
    assert_eq!(section_label("   Doc-tests x"), Some("doctests x".into()));
    assert_eq!(section_label("Running x"), None);
    assert!(running_header("running 1 test"));
    assert!(running_header("running 12 tests"));
    assert!(!running_header("running tests"));
    assert_eq!(
        process_status("  process didn't exit successfully: `a b` (exit status: 3)"),
        Some(("a b", "exit status: 3"))
    );
}
