//! Crate preparation through the Docker executor: prepare failures (`broken` or `prepare-fail`),
//! the one lockfile per
//! (experiment, crate), and a registry crate end to end (index, download, checksum, unpack, fetch,
//! build). See `docker_common` for what the tests need; these also reach the crate registry the
//! way cargo is configured to.

mod docker_common;

use std::path::PathBuf;

use caldera_core::crates::CrateId;
use caldera_core::experiment::{LockfilePolicy, Mode};
use caldera_core::outcome::Outcome;
use caldera_sandbox::{default_rustup_home, resolve_toolchain};
use caldera_storage::{ObjectStore, PutOptions, keys};
use caldera_worker::prepare::{HostToolchain, PrepareConfig, Preparer};
use docker_common::{excerpt, fixture, harness, spec};
use sha2::{Digest, Sha256};

fn registry(name: &str, version: &str, checksum: Option<&str>) -> CrateId {
    CrateId::Registry {
        name: name.into(),
        version: version.parse().unwrap(),
        checksum: checksum.map(String::from),
    }
}

async fn stable_host_toolchain() -> HostToolchain {
    let home = default_rustup_home().unwrap();
    let stable = resolve_toolchain(&home, "stable").await.unwrap();
    HostToolchain::probe(&stable.path).await.unwrap()
}

/// The registry's sha256 of `name@version`, read from the index the way the executor does.
async fn index_checksum(
    store: std::sync::Arc<dyn ObjectStore>,
    name: &str,
    version: &str,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let preparer = Preparer::new(PrepareConfig::new(dir.path()), store).unwrap();
    let tc = stable_host_toolchain().await;
    preparer
        .registry_lookup(name, &version.parse().unwrap(), &tc.cargo_version)
        .await
        .unwrap()
        .checksum
}

/// The directory of a fixture crate.
fn fixture_dir(name: &str) -> PathBuf {
    match fixture(name) {
        CrateId::Local { path } => PathBuf::from(path),
        other => panic!("{other}"),
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a failed preparation must end as on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    PrepareFail,
    Broken,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_failures_are_broken_or_prepare_fail_with_a_reason() {
    let h = harness("prepare-fail", |_| {}).await;
    let itoa_sum = index_checksum(h.store.clone(), "itoa", "1.0.11").await;
    let wrong_sum: String = itoa_sum
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let cases: Vec<(CrateId, Want, &[&str])> = vec![
        // what the crate makes impossible anywhere: broken, the reason naming the problem
        (
            fixture("prepare-bad-manifest"),
            Want::Broken,
            // cargo's wording changes between versions; the location does not
            &["invalid manifest: ", "Cargo.toml:7"],
        ),
        (
            fixture("prepare-missing-dep"),
            Want::Broken,
            &["missing dependency: error: no matching package named \
             `caldera-fixture-no-such-crate-7f3a9` found"],
        ),
        // faults another preparation could get past: prepare-fail
        (
            fixture("prepare-bad-lockfile"),
            Want::PrepareFail,
            &["invalid lockfile: "],
        ),
        (
            CrateId::Local {
                path: "/nonexistent/caldera-crate".into(),
            },
            Want::PrepareFail,
            &["local crate directory /nonexistent/caldera-crate does not exist on this worker"],
        ),
        (
            registry("itoa", "1.0.11", Some(&wrong_sum)),
            Want::PrepareFail,
            &["checksum mismatch for itoa 1.0.11: the crate id says"],
        ),
        (
            registry("itoa", "0.0.77", None),
            Want::PrepareFail,
            &["version 0.0.77 of crate itoa is not in the registry index"],
        ),
        (
            registry("caldera-fixture-no-such-crate-7f3a9", "1.0.0", None),
            Want::PrepareFail,
            &["crate caldera-fixture-no-such-crate-7f3a9 is not in the registry index"],
        ),
    ];
    for (krate, want, needles) in cases {
        let out = h
            .run(spec(
                "pf",
                krate.clone(),
                "stable",
                "nightly",
                Mode::BuildAndTest,
            ))
            .await;
        for side in [&out.start, &out.end] {
            let log = h.log(side.log_key.as_deref()).await;
            let (reason, prefix) = match (&side.outcome, want) {
                (Outcome::PrepareFail { reason }, Want::PrepareFail) => (reason, "prepare-fail"),
                (Outcome::Broken { reason }, Want::Broken) => (reason, "broken"),
                (other, _) => panic!(
                    "{krate}: expected {want:?}, got {other:?}\n{}",
                    excerpt(&log)
                ),
            };
            for needle in needles {
                assert!(
                    reason.contains(needle),
                    "{krate}: {reason:?} lacks {needle:?}"
                );
            }
            assert!(
                log.contains(&format!("preparation failed: {prefix}: ")),
                "{}",
                excerpt(&log)
            );
            assert!(
                !side.steps.iter().any(|(n, _)| n == "build"),
                "nothing is built after a prepare failure: {:?}",
                side.steps
            );
        }
    }
    // the lockfile of a crate that could not be prepared is not stored
    let key = keys::lockfile("pf", &fixture("prepare-missing-dep").to_string()).unwrap();
    assert!(!h.store.exists(&key).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockfile_is_generated_once_stored_and_used_by_both_sides() {
    let h = harness("lockfile", |_| {}).await;
    let krate = fixture("registry-dep");
    let CrateId::Local { path } = &krate else {
        unreachable!()
    };
    let fixture_lock = PathBuf::from(path).join("Cargo.lock");
    assert!(!fixture_lock.exists(), "the fixture ships no lockfile");

    let out = h
        .run(spec(
            "lock-a",
            krate.clone(),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let start_log = h.log(out.start.log_key.as_deref()).await;
    let end_log = h.log(out.end.log_key.as_deref()).await;
    assert_eq!(
        out.start.outcome,
        Outcome::TestPass,
        "{}",
        excerpt(&start_log)
    );
    assert_eq!(out.end.outcome, Outcome::TestPass, "{}", excerpt(&end_log));
    let key = keys::lockfile("lock-a", &krate.to_string()).unwrap();
    let stored = h.store.get_bytes(&key).await.unwrap();
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains("name = \"itoa\""), "{text}");
    let line = format!("lockfile:    generated (sha256 {})", sha256(&stored));
    for log in [&start_log, &end_log] {
        assert!(log.contains(&line), "{}", excerpt(log));
        assert_eq!(log.matches("$ cargo generate-lockfile").count(), 1);
        assert_eq!(log.matches("$ cargo fetch --locked").count(), 1);
    }
    // preparation (lockfile and fetch) ran once, on the start side; the end side only built
    assert!(out.start.steps.iter().any(|(n, _)| n == "prepare:lockfile"));
    assert!(!out.end.steps.iter().any(|(n, _)| n.starts_with("prepare:")));
    assert!(
        !fixture_lock.exists(),
        "the fixture directory is never written to"
    );

    // the next job of the same experiment uses the stored lockfile
    let out = h
        .run(spec(
            "lock-a",
            krate.clone(),
            "stable",
            "nightly",
            Mode::CheckOnly,
        ))
        .await;
    let log = h.log(out.end.log_key.as_deref()).await;
    assert_eq!(out.end.outcome, Outcome::TestPass);
    assert!(
        log.contains(&format!("lockfile:    stored (sha256 {})", sha256(&stored))),
        "{}",
        excerpt(&log)
    );
    assert!(
        !log.contains("$ cargo generate-lockfile"),
        "{}",
        excerpt(&log)
    );
    assert_eq!(h.store.get_bytes(&key).await.unwrap(), stored);

    // a stored lockfile that pins an older itoa is what both sides build with
    let (old_version, old_sum) = {
        let text = String::from_utf8(stored.to_vec()).unwrap();
        let block = &text[text.find("name = \"itoa\"").unwrap()..];
        let field = |f: &str| {
            let start = block.find(&format!("{f} = \"")).unwrap() + f.len() + 4;
            block[start..start + block[start..].find('"').unwrap()].to_owned()
        };
        (field("version"), field("checksum"))
    };
    let pinned_sum = index_checksum(h.store.clone(), "itoa", "1.0.1").await;
    let pinned = String::from_utf8(stored.to_vec())
        .unwrap()
        .replace(
            &format!("name = \"itoa\"\nversion = \"{old_version}\""),
            "name = \"itoa\"\nversion = \"1.0.1\"",
        )
        .replace(&old_sum, &pinned_sum);
    assert!(pinned.contains("version = \"1.0.1\""));
    let key_b = keys::lockfile("lock-b", &krate.to_string()).unwrap();
    h.store
        .put_bytes(
            &key_b,
            pinned.clone().into(),
            PutOptions::content_type("text/plain"),
        )
        .await
        .unwrap();
    let out = h
        .run(spec(
            "lock-b",
            krate.clone(),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    for side in [&out.start, &out.end] {
        let log = h.log(side.log_key.as_deref()).await;
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
        assert!(
            log.contains(&format!(
                "lockfile:    stored (sha256 {})",
                sha256(pinned.as_bytes())
            )),
            "{}",
            excerpt(&log)
        );
        assert!(log.contains("#itoa@1.0.1"), "{}", excerpt(&log));
        assert!(
            !log.contains(&format!("#itoa@{old_version}\"")),
            "{}",
            excerpt(&log)
        );
    }
    assert_eq!(h.store.get_bytes(&key_b).await.unwrap(), pinned.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fresh_policy_resolves_anew_and_never_uses_a_shipped_lockfile() {
    let h = harness("lock-fresh", |_| {}).await;
    // its shipped Cargo.lock is not a lockfile: under `shipped` the crate is prepare-fail (the
    // test above); under `fresh` that file is never read
    let krate = fixture("prepare-bad-lockfile");
    let shipped = std::fs::read(fixture_dir("prepare-bad-lockfile").join("Cargo.lock")).unwrap();
    let mut job = spec(
        "lock-fresh",
        krate.clone(),
        "stable",
        "nightly",
        Mode::CheckOnly,
    );
    job.lockfile = LockfilePolicy::Fresh;
    let out = h.run(job).await;
    let log = h.log(out.start.log_key.as_deref()).await;
    for side in [&out.start, &out.end] {
        assert_eq!(side.outcome, Outcome::TestPass, "{}", excerpt(&log));
    }
    let key = keys::lockfile("lock-fresh", &krate.to_string()).unwrap();
    let stored = h.store.get_bytes(&key).await.unwrap();
    assert_ne!(stored.as_ref(), shipped.as_slice());
    assert!(
        String::from_utf8_lossy(&stored).contains("name = \"fixture-prepare-bad-lockfile\""),
        "a generated lockfile"
    );
    for needle in [
        "lockfile policy fresh: the shipped Cargo.lock is not used",
        "$ cargo generate-lockfile",
        &format!("lockfile:    fresh (sha256 {})", sha256(&stored)),
    ] {
        assert!(log.contains(needle), "{needle}: {}", excerpt(&log));
    }
    assert_eq!(
        std::fs::read(fixture_dir("prepare-bad-lockfile").join("Cargo.lock")).unwrap(),
        shipped,
        "the fixture directory is never written to"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_crate_is_downloaded_verified_unpacked_and_built() {
    let h = harness("registry", |_| {}).await;
    let sum = index_checksum(h.store.clone(), "itoa", "1.0.11").await;
    let krate = registry("itoa", "1.0.11", Some(&sum));
    let out = h
        .run(spec(
            "reg",
            krate.clone(),
            "stable",
            "nightly",
            Mode::BuildAndTest,
        ))
        .await;
    let log = h.log(out.start.log_key.as_deref()).await;
    assert_eq!(out.start.outcome, Outcome::TestPass, "{}", excerpt(&log));
    assert_eq!(out.end.outcome, Outcome::TestPass);
    assert!(
        log.contains(&format!("registry index: itoa 1.0.11 sha256 {sum}")),
        "{}",
        excerpt(&log)
    );
    assert!(
        log.contains(&format!("sha256 {sum} verified")),
        "{}",
        excerpt(&log)
    );
    assert!(log.contains("unpacked "), "{}", excerpt(&log));
    assert!(log.contains("$ cargo fetch --locked"), "{}", excerpt(&log));
    // the log and lockfile keys leave the checksum out of the crate id
    let plain = registry("itoa", "1.0.11", None).to_string();
    assert_eq!(
        out.start.log_key.as_deref(),
        Some(keys::log("reg", "stable", &plain).unwrap().as_str())
    );
    assert!(
        h.store
            .exists(&keys::lockfile("reg", &plain).unwrap())
            .await
            .unwrap()
    );
    // the .crate was kept, and is verified again before reuse
    let out = h
        .run(spec("reg2", krate, "stable", "nightly", Mode::CheckOnly))
        .await;
    let log = h.log(out.start.log_key.as_deref()).await;
    // check-only checks all targets: itoa's benches use `#![feature(test)]`, which stable refuses
    assert_eq!(
        out.start.outcome,
        Outcome::BuildFail(caldera_core::outcome::BuildFailReason::CompilerError {
            codes: vec!["E0554".into()]
        }),
        "{}",
        excerpt(&log)
    );
    assert_eq!(out.end.outcome, Outcome::TestPass);
    assert!(
        log.contains(&format!(
            "reusing the downloaded itoa-1.0.11.crate (sha256 {sum} verified)"
        )),
        "{}",
        excerpt(&log)
    );
}
