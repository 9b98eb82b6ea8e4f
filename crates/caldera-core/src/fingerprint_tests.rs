//! The table test of [`cache_key`] and [`fingerprint`]: each input changes the key, alone, and
//! nothing else does.

use std::collections::BTreeMap;

use super::*;

fn identity() -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: "nightly".into(),
        commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: "1.95.0-nightly".into(),
        cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
    }
}

fn environment() -> Environment {
    Environment {
        image: "sha256:aaaa".into(),
        limits: "memory=4294967296,cpus=1".into(),
        classifier: 1,
    }
}

/// Owned inputs a row of the table changes one field of.
#[derive(Clone)]
struct Owned {
    krate: CrateId,
    toolchain: Toolchain,
    identity: ToolchainIdentity,
    mode: Mode,
    cap_lints: CapLints,
    lockfile: LockfilePolicy,
    skip_tests: bool,
    extra_timeout_secs: u32,
    extra_memory_mib: u32,
    environment: Environment,
}

impl Owned {
    fn base() -> Owned {
        Owned {
            krate: "reg:serde@1.0.0".parse().unwrap(),
            toolchain: "nightly".parse().unwrap(),
            identity: identity(),
            mode: Mode::BuildAndTest,
            cap_lints: CapLints::Forbid,
            lockfile: LockfilePolicy::Shipped,
            skip_tests: false,
            extra_timeout_secs: 0,
            extra_memory_mib: 0,
            environment: environment(),
        }
    }

    fn key(&self) -> Option<String> {
        cache_key(&SideInputs {
            krate: &self.krate,
            toolchain: &self.toolchain,
            identity: &self.identity,
            mode: self.mode,
            cap_lints: self.cap_lints,
            lockfile: self.lockfile,
            skip_tests: self.skip_tests,
            extra_timeout_secs: self.extra_timeout_secs,
            extra_memory_mib: self.extra_memory_mib,
            environment: &self.environment,
        })
    }
}

type Change = fn(&mut Owned);

/// One row per input: a change of that input alone.
fn changes() -> Vec<(&'static str, Change)> {
    vec![
        ("crate version", |o| {
            o.krate = "reg:serde@1.0.1".parse().unwrap()
        }),
        ("crate name", |o| {
            o.krate = "reg:serdf@1.0.0".parse().unwrap()
        }),
        ("crate checksum", |o| {
            o.krate = format!("reg:serde@1.0.0#{}", "ab".repeat(32))
                .parse()
                .unwrap()
        }),
        ("toolchain", |o| o.toolchain = "beta".parse().unwrap()),
        ("rustflags", |o| {
            o.toolchain = "nightly+rustflags=-Zfoo".parse().unwrap()
        }),
        ("target", |o| {
            o.toolchain = "nightly+target=aarch64-unknown-linux-gnu".parse().unwrap()
        }),
        ("commit hash", |o| o.identity.commit_hash = "f".repeat(40)),
        ("commit date", |o| {
            o.identity.commit_date = "2026-12-01".into()
        }),
        ("host", |o| {
            o.identity.host = "aarch64-unknown-linux-gnu".into()
        }),
        ("release", |o| o.identity.release = "1.96.0-nightly".into()),
        ("cargo", |o| {
            o.identity.cargo = "1.95.0-nightly (000000000 2026-11-29)".into()
        }),
        ("mode", |o| o.mode = Mode::CheckOnly),
        ("cap-lints", |o| o.cap_lints = CapLints::Warn),
        ("lockfile policy", |o| o.lockfile = LockfilePolicy::Fresh),
        ("skip_tests", |o| o.skip_tests = true),
        ("extra_timeout_secs", |o| o.extra_timeout_secs = 60),
        ("extra_memory_mib", |o| o.extra_memory_mib = 512),
        ("image", |o| o.environment.image = "sha256:bbbb".into()),
        ("limits", |o| {
            o.environment.limits = "memory=4294967296,cpus=2".into()
        }),
        ("classifier version", |o| o.environment.classifier = 2),
    ]
}

#[test]
fn every_input_changes_the_key_alone() {
    let base = Owned::base();
    let base_key = base.key().unwrap();
    assert_eq!(base.key().unwrap(), base_key, "deterministic");
    assert!(
        base_key.starts_with("v1:") && base_key.len() == 3 + 64,
        "{base_key}"
    );
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    seen.insert(base_key.clone(), "base");
    for (name, change) in changes() {
        let mut changed = base.clone();
        change(&mut changed);
        let key = changed.key().unwrap();
        if let Some(other) = seen.insert(key, name) {
            panic!("changing {name} gives the same key as {other}");
        }
    }
}

#[test]
fn what_cannot_change_an_outcome_does_not_change_the_key() {
    let base = Owned::base();
    // the rustup name the build was looked up under is not the build
    let mut renamed = base.clone();
    renamed.identity.toolchain = "nightly-2026-11-30".into();
    assert_eq!(renamed.key(), base.key());
    // the spec fields that only the report reads (quiet, the run, the experiment's name)
    let spec = |experiment: &str, quiet: bool, run: u32| JobSpec {
        experiment: experiment.into(),
        krate: base.krate.clone(),
        start: "stable".parse().unwrap(),
        end: base.toolchain.clone(),
        mode: base.mode,
        cap_lints: base.cap_lints,
        skip_tests: false,
        quiet,
        extra_timeout_secs: 0,
        extra_memory_mib: 0,
        lockfile: LockfilePolicy::Shipped,
        run,
        only: None,
    };
    let (id, env) = (identity(), environment());
    let of = |s: &JobSpec| cache_key(&SideInputs::of_job(s, Side::End, &id, &env));
    let a = spec("one", false, 0);
    assert_eq!(of(&a), base.key());
    assert_eq!(of(&spec("two", true, 2)), of(&a));
    // the side matters only through its toolchain
    assert_ne!(
        cache_key(&SideInputs::of_job(&a, Side::Start, &id, &env)),
        of(&a)
    );
}

#[test]
fn crates_whose_content_can_change_have_no_key() {
    let mut o = Owned::base();
    o.krate = "local:/src/foo".parse().unwrap();
    assert_eq!(o.key(), None, "a local directory");
    o.krate = "git:https://example.com/r.git#main".parse().unwrap();
    assert_eq!(o.key(), None, "a branch");
    o.krate = format!("git:https://example.com/r.git#{}", "a1".repeat(20))
        .parse()
        .unwrap();
    assert!(o.key().is_some(), "a commit");
}

#[test]
fn the_fingerprint_is_the_key_and_the_lockfile() {
    let key = Owned::base().key().unwrap();
    let lock = sha256_hex(b"# lockfile\n");
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let all = [
        fingerprint(&key, Some(&lock)),
        fingerprint(&key, Some(&sha256_hex(b"# another\n"))),
        fingerprint(&key, None),
        fingerprint(
            &Owned {
                mode: Mode::Clippy,
                ..Owned::base()
            }
            .key()
            .unwrap(),
            Some(&lock),
        ),
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(fingerprint(&key, Some(&lock)), all[0], "deterministic");
}

#[test]
fn an_environment_is_complete_only_with_every_field() {
    assert!(environment().is_complete());
    for broken in [
        Environment {
            image: String::new(),
            ..environment()
        },
        Environment {
            limits: String::new(),
            ..environment()
        },
        Environment {
            classifier: 0,
            ..environment()
        },
    ] {
        assert!(!broken.is_complete(), "{broken:?}");
    }
}

#[test]
fn only_verdicts_of_the_crate_are_trustworthy() {
    use crate::outcome::{BuildFailReason, TestFailReason};
    let yes = [
        Outcome::TestPass,
        Outcome::TestSkipped,
        Outcome::BuildFail(BuildFailReason::CompilerError {
            codes: vec!["E0308".into()],
        }),
        Outcome::TestFail {
            failed_tests: vec!["t".into()],
            reason: None,
        },
        Outcome::TestFail {
            failed_tests: vec![],
            reason: Some(TestFailReason::DiagnosticsChange),
        },
    ];
    let no = [
        Outcome::Error {
            reason: "docker went away".into(),
        },
        Outcome::Skipped,
        Outcome::BuildFail(BuildFailReason::Oom),
        Outcome::BuildFail(BuildFailReason::Timeout),
        Outcome::BuildFail(BuildFailReason::NoSpace),
        Outcome::TestFail {
            failed_tests: vec![],
            reason: Some(TestFailReason::Oom),
        },
        Outcome::PrepareFail {
            reason: "network".into(),
        },
        Outcome::Broken {
            reason: "yanked dependency".into(),
        },
    ];
    for o in &yes {
        assert!(is_trustworthy(o), "{o}");
    }
    for o in &no {
        assert!(!is_trustworthy(o), "{o}");
    }
}
