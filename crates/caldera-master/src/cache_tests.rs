//! The pure parts of the start's cache: agreement among workers, the keys asked for, the choice
//! of sources.

use super::*;

fn build(name: &str, hash: char) -> ToolchainIdentity {
    ToolchainIdentity {
        toolchain: name.into(),
        commit_hash: hash.to_string().repeat(40),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: format!("1.95.0-{name}"),
        cargo: format!("1.95.0-{name} (fedcba987 2026-11-29)"),
    }
}

fn env(image: &str) -> Environment {
    Environment {
        image: image.into(),
        limits: "memory=1".into(),
        classifier: 1,
    }
}

fn worker(nightly: char, image: &str) -> Advertised {
    Advertised {
        toolchains: vec![build("stable", '5'), build("nightly", nightly)],
        environment: Some(env(image)),
    }
}

fn spec(extra: serde_json::Value) -> ExperimentSpec {
    let mut doc = serde_json::json!({"name": "e", "start": "stable", "end": "nightly",
        "crates": "top:1"});
    if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
        doc.extend(extra.clone());
    }
    ExperimentSpec::from_json(doc.to_string().as_bytes()).unwrap()
}

#[test]
fn workers_must_agree_on_the_environment_and_each_side_s_build() {
    let s = spec(serde_json::json!({}));
    assert_eq!(agreed(&[], &s), None, "no worker, no cache");
    let one = agreed(&[worker('a', "sha256:1")], &s).unwrap();
    assert_eq!(one.start, Some(build("stable", '5')));
    assert_eq!(one.end, Some(build("nightly", 'a')));
    // two nightlies: the end side gets no key, the start side still does
    let two = agreed(&[worker('a', "sha256:1"), worker('b', "sha256:1")], &s).unwrap();
    assert_eq!((two.start.is_some(), two.end), (true, None));
    // another image, or a worker that does not say: nothing
    assert_eq!(
        agreed(&[worker('a', "sha256:1"), worker('a', "sha256:2")], &s),
        None
    );
    let silent = Advertised {
        environment: None,
        ..worker('a', "sha256:1")
    };
    assert_eq!(agreed(&[worker('a', "sha256:1"), silent], &s), None);
    assert_eq!(
        agreed(&[worker('a', "")], &s),
        None,
        "an incomplete environment"
    );
    // a toolchain no worker has
    let beta = spec(serde_json::json!({"end": "beta"}));
    assert_eq!(agreed(&[worker('a', "sha256:1")], &beta).unwrap().end, None);
}

#[test]
fn keys_are_asked_for_the_sides_that_can_have_one() {
    let s = spec(serde_json::json!({"overrides": {"skipped": {"skip": true}}}));
    let agreed = super::agreed(&[worker('a', "sha256:1")], &s).unwrap();
    let crates: Vec<CrateId> = ["reg:a@1.0.0", "reg:skipped@1.0.0", "local:/src/x"]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let w = wanted(&s, &crates, &agreed);
    let asked: Vec<(&str, Side)> = w.iter().map(|w| (w.krate.as_str(), w.side)).collect();
    assert_eq!(
        asked,
        [("reg:a@1.0.0", Side::Start), ("reg:a@1.0.0", Side::End)],
        "overridden and local crates are not asked for"
    );
    assert_ne!(w[0].key, w[1].key, "the sides' toolchains differ");
    // the same toolchain as another experiment's end side has the same key
    let other = spec(serde_json::json!({"start": "nightly", "end": "stable"}));
    let swapped = super::agreed(&[worker('a', "sha256:1")], &other).unwrap();
    let w2 = wanted(&other, &crates[..1], &swapped);
    assert_eq!(w2[0].key, w[1].key);
}

fn hit(krate: &str, side: Side, source: u128) -> Hit {
    Hit {
        krate: krate.into(),
        side,
        source: Uuid::from_u128(source),
        source_name: format!("src-{source}"),
        source_side: side,
        log_key: None,
        outcome_kind: "test-pass".into(),
    }
}

#[test]
fn both_sides_of_a_crate_come_from_one_source() {
    let chosen = choose(vec![
        hit("a", Side::End, 1),
        hit("a", Side::Start, 1),
        hit("b", Side::Start, 1),
        hit("b", Side::End, 2),
        hit("c", Side::End, 3),
    ]);
    let sides = |k: &str| -> Vec<(Side, u128)> {
        chosen[k]
            .iter()
            .map(|h| (h.side, h.source.as_u128()))
            .collect()
    };
    assert_eq!(sides("a"), [(Side::Start, 1), (Side::End, 1)]);
    assert_eq!(
        sides("b"),
        [(Side::Start, 1)],
        "two sources: the end side runs"
    );
    assert_eq!(sides("c"), [(Side::End, 3)]);
}

#[test]
fn the_summary_names_each_cached_side_and_links_its_source() {
    let mut cached = caldera_db::cache::CachedSides::new();
    assert_eq!(summary_section(&cached), "", "nothing cached, no section");
    assert!(sources(&cached).is_empty());
    cached
        .entry("reg:a@1.0.0".into())
        .or_default()
        .insert(Side::Start, "last-week".into());
    cached.entry("reg:b@1.0.0".into()).or_default().extend([
        (Side::Start, "last-week".into()),
        (Side::End, "older".into()),
    ]);
    let md = summary_section(&cached);
    assert!(
        md.starts_with("\n## Result cache\n\n3 sides were settled"),
        "{md}"
    );
    assert!(
        md.contains("* start side of `reg:a@1.0.0`: cached from [last-week](../../last-week/report/index.html)\n")
            && md.contains("* end side of `reg:b@1.0.0`: cached from [older]"),
        "{md}"
    );
    assert_eq!(
        sources(&cached),
        [("last-week".to_owned(), 2), ("older".to_owned(), 1)]
    );
    for i in 0..60 {
        cached
            .entry(format!("reg:c{i}@1.0.0"))
            .or_default()
            .insert(Side::End, "older".into());
    }
    assert!(summary_section(&cached).ends_with("* … and 13 more\n"));
}
