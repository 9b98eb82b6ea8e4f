//! Shared dependency builds (the executor's dependency store) end to end, in the real sandbox:
//! a dependency compiled for one crate is not compiled again for the next, the crate under test
//! cannot change the store (a canary tries), confirmation runs do not use it, a store past its
//! size is emptied of its oldest units, and outcomes are the ones the fixtures have without it. See `docker_common` for what the tests need.

mod docker_common;

use std::collections::BTreeMap;
use std::path::Path;

use caldera_core::experiment::Mode;
use caldera_core::outcome::{BuildFailReason, Outcome, TestFailReason};
use docker_common::{env, excerpt, fixture, harness, spec};
use sha2::{Digest, Sha256};

/// The log without ANSI escape sequences (steps run with `CARGO_TERM_COLOR=always`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// How many times cargo compiled `package` in a log (`Compiling <package> v…` lines).
fn compilations(log: &str, package: &str) -> usize {
    let needle = format!("Compiling {package} v");
    plain(log).lines().filter(|l| l.contains(&needle)).count()
}

/// Every file of the store with its mode, mtime and content hash.
fn store_snapshot(dir: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                walk(root, &e.path(), out);
            } else {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(
                    rel,
                    format!(
                        "{:o} {} {} {}",
                        meta.mode(),
                        meta.uid(),
                        meta.mtime(),
                        hex::encode(Sha256::digest(&bytes))
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

const SHARED: [&str; 2] = ["itoa", "libc"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_are_built_once_and_the_crate_under_test_cannot_change_them() {
    // the store is what this test is about: a full disk on the test machine (past the default
    // high-water mark, which purges it with the target dirs) must not empty it between crates
    let h = harness("shared-deps", |c| {
        c.shared_deps = true;
        c.disk_high_water = 1.0;
        c.sandbox_env = env(&[("CALDERA_SANDBOX_CANARY", "1")]);
    })
    .await;
    let store = h.work_dir().join("depstore");

    // the first crate compiles the shared dependencies once per side, in the deps-only build
    let a = h
        .run(spec(
            "sd",
            fixture("shared-deps-a"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&a.start, &a.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        for dep in SHARED {
            assert_eq!(compilations(&log, dep), 1, "{dep}: {}", excerpt(&log));
        }
        assert!(log.contains("deps-only build"), "{}", excerpt(&log));
    }
    let stats = h.executor.stats();
    assert_eq!(stats.deps_builds, 2);
    assert!(stats.deps_units_stored >= 4, "{stats:?}"); // itoa, libc (lib, build script, its run)
    let before = store_snapshot(&store);
    assert!(!before.is_empty());
    assert!(
        before.values().all(|v| v.split(' ').nth(1) == Some("0")),
        "store files are root's: {before:#?}"
    );

    // the canary sees the store's files in its target dir and cannot change any of them
    let c = h
        .run(spec(
            "sd",
            fixture("canary-depstore"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&c.start, &c.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        assert!(
            log.contains("of another owner attacked"),
            "{}",
            excerpt(&log)
        );
        for dep in SHARED {
            assert_eq!(compilations(&log, dep), 0, "{dep}: {}", excerpt(&log));
        }
    }
    let after = store_snapshot(&store);
    for (path, was) in &before {
        assert_eq!(after.get(path), Some(was), "{path} changed");
    }

    // the next crate builds against the unchanged store: nothing shared is compiled again
    let b = h
        .run(spec(
            "sd",
            fixture("shared-deps-b"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&b.start, &b.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        for dep in SHARED {
            assert_eq!(compilations(&log, dep), 0, "{dep}: {}", excerpt(&log));
        }
        // the crate itself is compiled, once per compiling step (its stub in the deps-only build
        // does not count)
        let own = plain(&log)
            .lines()
            .filter(|l| l.contains("Compiling fixture-shared-deps-b v0.1.0 (/caldera/src)"))
            .count();
        assert_eq!(own, 2, "{}", excerpt(&log));
    }
    assert!(h.executor.stats().deps_units_reused >= 8);

    // a confirmation run never uses the store: it compiles everything in fresh target dirs
    let mut confirm = spec(
        "sd",
        fixture("shared-deps-b"),
        "stable",
        "nightly",
        Mode::BuildAndTest,
    );
    confirm.run = 1;
    let r = h.run(confirm).await;
    for side in [&r.start, &r.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        assert!(!log.contains("deps-only build"), "{}", excerpt(&log));
        for dep in SHARED {
            assert_eq!(compilations(&log, dep), 1, "{dep}: {}", excerpt(&log));
        }
    }
    assert_eq!(
        store_snapshot(&store),
        after,
        "a confirmation run stores nothing"
    );

    // a stored unit that cargo sees as dirty (its fingerprint no longer matches) is rebuilt, which
    // rustc refuses over a read-only linked file: the side runs again from a clean target dir
    let mut tampered = Vec::new();
    for (path, _) in after.iter().filter(|(p, _)| p.ends_with("/lib-itoa")) {
        let file = store.join(path);
        tampered.push((file.clone(), std::fs::read(&file).unwrap()));
        std::fs::write(&file, "0000000000000000").unwrap();
    }
    assert_eq!(tampered.len(), 2, "one itoa unit per toolchain");
    let d = h
        .run(spec(
            "sd2",
            fixture("shared-deps-b"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&d.start, &d.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        assert!(log.contains("could not be replaced"), "{}", excerpt(&log));
    }
    assert_eq!(h.executor.stats().store_conflict_reruns, 2);
    for (file, original) in tampered {
        std::fs::write(file, original).unwrap();
    }

    // the canary can fail: with the store's libc rlibs writable, its build script writes into
    // them and fails the build
    use std::os::unix::fs::PermissionsExt;
    let mut opened = 0;
    for (path, _) in after
        .iter()
        .filter(|(p, _)| p.contains("/deps/liblibc-") && p.ends_with(".rlib"))
    {
        std::fs::set_permissions(store.join(path), std::fs::Permissions::from_mode(0o666)).unwrap();
        opened += 1;
    }
    assert_eq!(opened, 2, "one libc rlib per toolchain");
    let e = h
        .run(spec(
            "sd3",
            fixture("canary-depstore"),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&e.start, &e.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert!(
            matches!(side.outcome, Outcome::BuildFail(_)),
            "{}",
            excerpt(&log)
        );
        assert!(log.contains("BREACH"), "{}", excerpt(&log));
    }
}

fn compiler_error(codes: &[&str]) -> Outcome {
    Outcome::BuildFail(BuildFailReason::CompilerError {
        codes: codes.iter().map(|c| (*c).to_owned()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_past_its_size_evicts_and_the_next_crate_builds_its_dependencies_again() {
    // a store of one byte: every unit a deps-only build stores is evicted right after its side
    let h = harness("shared-deps-evict", |c| {
        c.shared_deps = true;
        c.disk_high_water = 1.0;
        c.shared_deps_max_bytes = 1;
    })
    .await;
    for fixture_name in ["shared-deps-a", "shared-deps-b"] {
        let r = h
            .run(spec(
                "sde",
                fixture(fixture_name),
                "stable",
                "nightly",
                Mode::BuildAndTest,
            ))
            .await;
        for side in [&r.start, &r.end] {
            let log = h.log(side.log_key.as_deref()).await;
            assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
            for dep in SHARED {
                assert_eq!(compilations(&log, dep), 1, "{dep}: {}", excerpt(&log));
            }
        }
    }
    let stats = h.executor.stats();
    assert_eq!(stats.deps_builds, 4);
    assert_eq!(stats.deps_units_reused, 0, "{stats:?}");
    assert!(stats.deps_units_stored >= 8, "{stats:?}"); // itoa and libc, 4 sides
    assert_eq!(
        stats.deps_units_evicted, stats.deps_units_stored,
        "{stats:?}"
    );
    let units = std::fs::read_dir(h.work_dir().join("depstore"))
        .unwrap()
        .map(|k| {
            let units = k.unwrap().path().join("units/debug");
            std::fs::read_dir(units).map_or(0, |d| d.count())
        })
        .sum::<usize>();
    assert_eq!(units, 0, "the store keeps nothing past its size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_the_same_with_shared_dependency_builds() {
    let h = harness("shared-deps-outcomes", |c| c.shared_deps = true).await;
    let cases: Vec<(&str, Outcome, Outcome)> = vec![
        ("pass", Outcome::TestPass, Outcome::TestPass),
        (
            "compile-error",
            compiler_error(&["E0308"]),
            compiler_error(&["E0308"]),
        ),
        (
            "test-fail",
            Outcome::TestFail {
                failed_tests: vec!["tests::fails_on_purpose".into()],
                reason: None,
            },
            Outcome::TestFail {
                failed_tests: vec!["tests::fails_on_purpose".into()],
                reason: None,
            },
        ),
        (
            "broken-path-dep",
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["broken-dep".into()],
            }),
            Outcome::BuildFail(BuildFailReason::DependsOn {
                crates: vec!["broken-dep".into()],
            }),
        ),
        (
            "regress-on-nightly",
            Outcome::TestPass,
            compiler_error(&["E0308"]),
        ),
        (
            "diagnostics-change-on-nightly",
            Outcome::TestPass,
            Outcome::TestFail {
                failed_tests: vec!["ui".into()],
                reason: Some(TestFailReason::DiagnosticsChange),
            },
        ),
        ("registry-dep", Outcome::TestPass, Outcome::TestPass),
    ];
    for (name, start, end) in cases {
        let out = h
            .run(spec(
                "fx",
                fixture(name),
                "stable",
                "nightly",
                Mode::BuildAndTest,
            ))
            .await;
        let log = h.log(out.start.log_key.as_deref()).await;
        assert_eq!(out.start.outcome, start, "{name}: {}", excerpt(&log));
        let log = h.log(out.end.log_key.as_deref()).await;
        assert_eq!(out.end.outcome, end, "{name}: {}", excerpt(&log));
    }
    // only registry-dep has registry packages: the others build without a deps-only build
    assert_eq!(h.executor.stats().deps_builds, 2);
}
