use super::*;
use crate::{logdiff::*, summary::*};
use BuildFailReason as R;
use serde_json::json;

const CKSUM: &str = "a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1";

fn id(s: &str) -> CrateId {
    s.parse().unwrap()
}

fn res(krate: &str, start: Outcome, end: Outcome) -> CrateResult {
    CrateResult {
        krate: id(krate),
        start,
        end,
        start_log: None,
        end_log: None,
    }
}

fn ce(codes: &[&str]) -> Outcome {
    Outcome::BuildFail(R::CompilerError {
        codes: codes.iter().map(|c| c.to_string()).collect(),
    })
}

fn dep(crates: &[&str]) -> Outcome {
    Outcome::BuildFail(R::DependsOn {
        crates: crates.iter().map(|c| c.to_string()).collect(),
    })
}

fn bf(reason: BuildFailReason) -> Outcome {
    Outcome::BuildFail(reason)
}

fn test_fail() -> Outcome {
    Outcome::TestFail {
        failed_tests: vec!["t".into()],
        reason: None,
    }
}

fn error() -> Outcome {
    Outcome::Error {
        reason: "worker lost".into(),
    }
}

const PASS: Outcome = Outcome::TestPass;

/// A regression from test-pass to `end`.
fn reg(krate: &str, end: Outcome) -> CrateResult {
    res(krate, PASS, end)
}

fn build(results: Vec<CrateResult>) -> Report {
    Report::build(results).unwrap()
}

fn ids<'a>(it: impl Iterator<Item = CrateReport<'a>>) -> Vec<String> {
    it.map(|c| c.krate().to_string()).collect()
}

fn roots_of(report: &Report, krate: &str) -> Vec<String> {
    report
        .get(&id(krate))
        .unwrap_or_else(|| panic!("{krate} not in report"))
        .root_causes()
        .map(ToString::to_string)
        .collect()
}

struct Case {
    name: &'static str,
    results: Vec<CrateResult>,
    /// (crate, its roots)
    roots: &'static [(&'static str, &'static [&'static str])],
    /// root regressions in order, with regressions through each
    ranking: &'static [(&'static str, usize)],
    cycles: &'static [&'static str],
    unresolved: &'static [(&'static str, usize)],
}

fn attribution_cases() -> Vec<Case> {
    let ck_a2 = format!("reg:a@2.0.0#{CKSUM}");
    vec![
        Case {
            name: "chain a <- b <- c",
            results: vec![
                reg("reg:c@1.0.0", dep(&["reg:b@1.0.0"])),
                reg("reg:a@1.0.0", ce(&["E0308"])),
                reg("reg:b@1.0.0", dep(&["reg:a@1.0.0"])),
                res("reg:z@1.0.0", PASS, PASS),
            ],
            roots: &[
                ("reg:a@1.0.0", &["reg:a@1.0.0"]),
                ("reg:b@1.0.0", &["reg:a@1.0.0"]),
                ("reg:c@1.0.0", &["reg:a@1.0.0"]),
                ("reg:z@1.0.0", &[]),
            ],
            ranking: &[("reg:a@1.0.0", 3)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "several roots for one crate, inherited down the chain",
            results: vec![
                reg("reg:a@1.0.0", ce(&["E0308"])),
                reg("reg:b@1.0.0", bf(R::Ice)),
                reg("reg:c@1.0.0", dep(&["reg:a@1.0.0", "reg:b@1.0.0"])),
                reg("reg:d@1.0.0", dep(&["reg:c@1.0.0"])),
                reg("reg:e@1.0.0", dep(&["reg:a@1.0.0"])),
            ],
            roots: &[
                ("reg:c@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                ("reg:d@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                ("reg:e@1.0.0", &["reg:a@1.0.0"]),
            ],
            ranking: &[("reg:a@1.0.0", 4), ("reg:b@1.0.0", 3)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "a dependency already failing on start is not a root",
            results: vec![
                res("reg:a@1.0.0", ce(&["E0425"]), ce(&["E0425"])),
                reg("reg:x@1.0.0", dep(&["reg:a@1.0.0"])),
                reg("reg:y@1.0.0", dep(&["reg:x@1.0.0"])),
            ],
            roots: &[
                ("reg:a@1.0.0", &[]),
                ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                ("reg:y@1.0.0", &["reg:x@1.0.0"]),
            ],
            ranking: &[("reg:x@1.0.0", 2)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "a spuriously failing dependency is not a root",
            results: vec![
                reg("reg:s@1.0.0", bf(R::Oom)),
                reg("reg:x@1.0.0", dep(&["reg:s@1.0.0"])),
            ],
            roots: &[("reg:s@1.0.0", &[]), ("reg:x@1.0.0", &["reg:x@1.0.0"])],
            ranking: &[("reg:x@1.0.0", 1)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "a dependency that regressed in its tests still explains the failure",
            results: vec![
                reg("reg:t@1.0.0", test_fail()),
                reg("reg:x@1.0.0", dep(&["t"])),
            ],
            roots: &[("reg:x@1.0.0", &["reg:t@1.0.0"])],
            ranking: &[("reg:t@1.0.0", 2)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "dependencies not in the experiment",
            results: vec![
                reg("reg:x@1.0.0", dep(&["openssl-sys", "reg:nope@1.0.0"])),
                reg("reg:y@1.0.0", dep(&["openssl-sys", " openssl-sys "])),
                reg("reg:w@1.0.0", dep(&["not a crate!"])),
                reg("reg:a@1.0.0", ce(&[])),
                reg("reg:v@1.0.0", dep(&["a", "openssl-sys"])),
            ],
            roots: &[
                ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                ("reg:y@1.0.0", &["reg:y@1.0.0"]),
                ("reg:w@1.0.0", &["reg:w@1.0.0"]),
                ("reg:v@1.0.0", &["reg:a@1.0.0"]),
            ],
            ranking: &[
                ("reg:a@1.0.0", 2),
                ("reg:w@1.0.0", 1),
                ("reg:x@1.0.0", 1),
                ("reg:y@1.0.0", 1),
            ],
            cycles: &[],
            unresolved: &[
                ("openssl-sys", 3),
                ("not a crate!", 1),
                ("reg:nope@1.0.0", 1),
            ],
        },
        Case {
            name: "matching by name, versioned name and id; names fold case and - _",
            results: vec![
                reg("reg:foo-bar@1.0.0", ce(&["E0277"])),
                reg("reg:p@1.0.0", dep(&["foo-bar"])),
                reg("reg:q@1.0.0", dep(&["Foo_Bar"])),
                reg("reg:r@1.0.0", dep(&["foo_bar@1.0.0"])),
                reg("reg:s@1.0.0", dep(&["foo-bar v1.0.0 (registry+https://x)"])),
                reg("reg:t@1.0.0", dep(&[&format!("reg:foo-bar@1.0.0#{CKSUM}")])),
            ],
            roots: &[
                ("reg:p@1.0.0", &["reg:foo-bar@1.0.0"]),
                ("reg:q@1.0.0", &["reg:foo-bar@1.0.0"]),
                ("reg:r@1.0.0", &["reg:foo-bar@1.0.0"]),
                ("reg:s@1.0.0", &["reg:foo-bar@1.0.0"]),
                ("reg:t@1.0.0", &["reg:foo-bar@1.0.0"]),
            ],
            ranking: &[("reg:foo-bar@1.0.0", 6)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "an exact id never falls back to another version; a name takes any",
            results: vec![
                res("reg:a@1.0.0", PASS, PASS),
                CrateResult {
                    krate: id(&ck_a2),
                    start: PASS,
                    end: ce(&["E0308"]),
                    start_log: None,
                    end_log: None,
                },
                reg("reg:x@1.0.0", dep(&["reg:a@1.0.0"])),
                reg("reg:y@1.0.0", dep(&["a"])),
                reg("reg:z@1.0.0", dep(&["reg:a@2.0.0"])),
                reg("reg:a@3.0.0", dep(&["a"])),
            ],
            roots: &[
                ("reg:x@1.0.0", &["reg:x@1.0.0"]),
                (
                    "reg:y@1.0.0",
                    &[
                        "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                    ],
                ),
                (
                    "reg:z@1.0.0",
                    &[
                        "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                    ],
                ),
                (
                    "reg:a@3.0.0",
                    &[
                        "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                    ],
                ),
            ],
            ranking: &[
                (
                    "reg:a@2.0.0#a9f1c3e5b7d9f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1",
                    4,
                ),
                ("reg:x@1.0.0", 1),
            ],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "git and local ids match exactly",
            results: vec![
                reg("git:https://h/r.git#abc", bf(R::Link)),
                reg("local:/src/l", ce(&["E0433"])),
                reg(
                    "reg:x@1.0.0",
                    dep(&[
                        "git:https://h/r.git#abc",
                        "local:/src/l",
                        "git:https://h/r.git#def",
                    ]),
                ),
            ],
            roots: &[("reg:x@1.0.0", &["git:https://h/r.git#abc", "local:/src/l"])],
            ranking: &[("git:https://h/r.git#abc", 2), ("local:/src/l", 2)],
            cycles: &[],
            unresolved: &[("git:https://h/r.git#def", 1)],
        },
        Case {
            name: "a cycle in bad data is its own root",
            results: vec![
                reg("reg:a@1.0.0", dep(&["reg:b@1.0.0"])),
                reg("reg:b@1.0.0", dep(&["a"])),
                reg("reg:c@1.0.0", dep(&["reg:a@1.0.0"])),
            ],
            roots: &[
                ("reg:a@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                ("reg:b@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
                ("reg:c@1.0.0", &["reg:a@1.0.0", "reg:b@1.0.0"]),
            ],
            ranking: &[("reg:a@1.0.0", 3), ("reg:b@1.0.0", 3)],
            cycles: &["reg:a@1.0.0", "reg:b@1.0.0"],
            unresolved: &[],
        },
        Case {
            name: "a cycle that reaches a real root is attributed to it",
            results: vec![
                reg("reg:a@1.0.0", dep(&["reg:b@1.0.0", "reg:r@1.0.0"])),
                reg("reg:b@1.0.0", dep(&["reg:c@1.0.0"])),
                reg("reg:c@1.0.0", dep(&["reg:a@1.0.0"])),
                reg("reg:r@1.0.0", ce(&["E0599"])),
            ],
            roots: &[
                ("reg:a@1.0.0", &["reg:r@1.0.0"]),
                ("reg:b@1.0.0", &["reg:r@1.0.0"]),
                ("reg:c@1.0.0", &["reg:r@1.0.0"]),
            ],
            ranking: &[("reg:r@1.0.0", 4)],
            cycles: &["reg:a@1.0.0", "reg:b@1.0.0", "reg:c@1.0.0"],
            unresolved: &[],
        },
        Case {
            name: "a crate naming itself: by id it is a cycle, by name it is skipped",
            results: vec![
                reg("reg:a@1.0.0", dep(&["reg:a@1.0.0"])),
                reg("reg:b@1.0.0", dep(&["b"])),
            ],
            roots: &[
                ("reg:a@1.0.0", &["reg:a@1.0.0"]),
                ("reg:b@1.0.0", &["reg:b@1.0.0"]),
            ],
            ranking: &[("reg:a@1.0.0", 1), ("reg:b@1.0.0", 1)],
            cycles: &["reg:a@1.0.0"],
            unresolved: &[("b", 1)],
        },
        Case {
            name: "a dependency named several ways counts once",
            results: vec![
                reg("reg:a@1.0.0", ce(&["E0308"])),
                reg("reg:x@1.0.0", dep(&["a", "reg:a@1.0.0", "a@1.0.0", "a"])),
            ],
            roots: &[("reg:x@1.0.0", &["reg:a@1.0.0"])],
            ranking: &[("reg:a@1.0.0", 2)],
            cycles: &[],
            unresolved: &[],
        },
        Case {
            name: "depends-on in crates that did not regress is ignored",
            results: vec![
                reg("reg:a@1.0.0", ce(&["E0308"])),
                res("reg:x@1.0.0", dep(&["a"]), dep(&["a"])),
                res("reg:y@1.0.0", dep(&["missing"]), PASS),
            ],
            roots: &[("reg:x@1.0.0", &[]), ("reg:y@1.0.0", &[])],
            ranking: &[("reg:a@1.0.0", 1)],
            cycles: &[],
            unresolved: &[],
        },
    ]
}

/// Quiet crates count and explain their dependents, but are in no list of regressions (nor
/// the retry list); they are named apart, in the JSON and in the summary.
#[test]
fn quiet_crates_are_left_out_of_the_lists_of_regressions() {
    let results = vec![
        reg("reg:q@1.0.0", ce(&["E0308"])),
        reg("reg:d@1.0.0", dep(&["q"])),
        reg("reg:c@1.0.0", ce(&["E0599"])),
        reg("reg:r@1.0.0", bf(R::Oom)),
        res("reg:p@1.0.0", PASS, PASS),
    ];
    let is_quiet = |k: &CrateId| matches!(k, CrateId::Registry { name, .. } if name == "q");
    let plain = build(results.clone());
    let quiet = Report::build_quiet(results, is_quiet).unwrap();
    assert_eq!(
        ids(plain.root_regressions()),
        ["reg:q@1.0.0", "reg:c@1.0.0"]
    );

    // counts and attribution are the same as without quiet crates
    assert_eq!(quiet.counts(), plain.counts());
    assert_eq!(quiet.counts().get(Comparison::Regressed), 3);
    assert_eq!(roots_of(&quiet, "reg:d@1.0.0"), ["reg:q@1.0.0"]);
    // the lists leave the quiet crate out
    assert_eq!(ids(quiet.quiet_regressions()), ["reg:q@1.0.0"]);
    assert_eq!(ids(quiet.root_regressions()), ["reg:c@1.0.0"]);
    assert_eq!(ids(quiet.regressions()), ["reg:c@1.0.0", "reg:d@1.0.0"]);
    let groups: Vec<(String, Vec<String>)> = quiet
        .error_groups()
        .map(|g| (g.key().to_string(), ids(g.crates())))
        .collect();
    assert_eq!(
        groups,
        [("E0599".to_owned(), vec!["reg:c@1.0.0".to_owned()])]
    );
    let retry: Vec<String> = quiet.retry_list().iter().map(ToString::to_string).collect();
    assert_eq!(retry, ["reg:c@1.0.0", "reg:d@1.0.0", "reg:r@1.0.0"]);
    assert_eq!(ids(plain.quiet_regressions()), Vec::<String>::new());

    let json = serde_json::to_value(&quiet).unwrap();
    assert_eq!(
        json["quiet_regressions"],
        serde_json::json!(["reg:q@1.0.0"])
    );
    assert_eq!(
        json["regressions"],
        serde_json::json!(["reg:c@1.0.0", "reg:d@1.0.0"])
    );
    let md = summary_markdown(&quiet, &SummaryOptions::new("x", "stable", "beta"));
    assert!(
        md.contains("**2 regressions, 1 of them through `c 1.0.0`.**"),
        "{md}"
    );
    assert!(
        md.contains("the other 1 regressed because a dependency did"),
        "{md}"
    );
    assert!(
        md.contains("1 regression of crates marked quiet is not listed: `q 1.0.0`."),
        "{md}"
    );

    // only quiet regressions: none listed, and the summary says so
    let only = Report::build_quiet(vec![reg("reg:q@1.0.0", ce(&["E0308"]))], is_quiet).unwrap();
    assert_eq!(only.regressions().len(), 0);
    assert_eq!(only.error_groups().len(), 0);
    assert!(only.retry_list().is_empty());
    let md = summary_markdown(&only, &SummaryOptions::new("x", "stable", "beta"));
    assert!(md.contains("**No regressions listed.**"), "{md}");
    assert!(!md.contains("## Root regressions"), "{md}");
}

#[test]
fn root_cause_attribution() {
    for case in attribution_cases() {
        let name = case.name;
        let report = build(case.results);
        for (krate, expected) in case.roots {
            assert_eq!(
                roots_of(&report, krate),
                *expected,
                "{name}: roots of {krate}"
            );
        }
        let ranking: Vec<(String, usize)> = report
            .root_regressions()
            .map(|c| (c.krate().to_string(), c.regressions_through()))
            .collect();
        let expected: Vec<(String, usize)> = case
            .ranking
            .iter()
            .map(|(k, n)| (k.to_string(), *n))
            .collect();
        assert_eq!(ranking, expected, "{name}: ranking");
        for c in report.root_regressions() {
            assert!(c.is_root(), "{name}");
            assert_eq!(c.dependents(), c.regressions_through() - 1, "{name}");
            assert!(c.root_causes().any(|r| r == c.krate()), "{name}");
        }
        assert_eq!(ids(report.cycles()), case.cycles, "{name}: cycles");
        for c in report.crates() {
            assert_eq!(
                c.in_cycle(),
                case.cycles.contains(&c.krate().to_string().as_str())
            );
        }
        let unresolved: Vec<(&str, usize)> = report
            .unresolved_dependencies()
            .iter()
            .map(|u| (u.name.as_str(), u.dependents))
            .collect();
        assert_eq!(unresolved, case.unresolved, "{name}: unresolved");
        // Roots first, then the rest by id; every regression exactly once.
        let regressions = ids(report.regressions());
        let roots = ids(report.root_regressions());
        assert_eq!(regressions[..roots.len()], roots[..], "{name}");
        let rest = &regressions[roots.len()..];
        let mut sorted = rest.to_vec();
        sorted.sort_by_key(|s| id(s));
        assert_eq!(rest, &sorted[..], "{name}");
        assert_eq!(
            regressions.len(),
            report.counts().get(Comparison::Regressed),
            "{name}"
        );
    }
}

/// Attribution agrees with a direct recursive definition on random acyclic experiments, and
/// keeps its invariants on random graphs with cycles.
#[test]
fn attribution_matches_reference_on_random_graphs() {
    let mut rng = SplitMix(7);
    for round in 0..300 {
        let n = 2 + rng.below(40) as usize;
        let acyclic = round % 2 == 0;
        let mut results = Vec::new();
        let mut deps: Vec<Vec<usize>> = Vec::new();
        for i in 0..n {
            let name = format!("reg:c{i}@1.0.0");
            let mut d = Vec::new();
            if rng.below(3) > 0 && (i > 0 || !acyclic) {
                for _ in 0..1 + rng.below(3) {
                    let bound = if acyclic { i } else { n };
                    d.push(rng.below(bound as u64) as usize);
                }
            }
            let (start, end) = match (rng.below(6), d.is_empty()) {
                (0, _) => (ce(&["E0001"]), ce(&["E0001"])),
                (1, _) => (PASS, PASS),
                (_, true) => (PASS, ce(&["E0002"])),
                (_, false) => {
                    let names: Vec<String> = d
                        .iter()
                        .map(|&k| {
                            if rng.below(2) == 0 {
                                format!("c{k}")
                            } else {
                                format!("reg:c{k}@1.0.0")
                            }
                        })
                        .collect();
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    (PASS, dep(&names))
                }
            };
            results.push(res(&name, start, end));
            deps.push(d);
        }
        let regressed: Vec<bool> = results
            .iter()
            .map(|r| compare(&r.start, &r.end) == Comparison::Regressed)
            .collect();
        let report = build(results.clone());
        let total: usize = report.regressions().map(|c| c.root_causes().len()).sum();
        let through: usize = report
            .root_regressions()
            .map(|c| c.regressions_through())
            .sum();
        assert_eq!(total, through, "round {round}");
        for (i, c) in report.crates().enumerate() {
            if !regressed[i] {
                assert_eq!(c.root_causes().len(), 0);
                continue;
            }
            assert!(c.root_causes().len() > 0, "round {round}");
            for r in c.root_causes() {
                assert!(report.get(r).unwrap().is_root(), "round {round}");
            }
            if acyclic {
                let expected = reference_roots(i, &deps, &regressed, &results);
                let got: Vec<usize> = c
                    .root_causes()
                    .map(|r| r.registry_name().unwrap()[1..].parse().unwrap())
                    .collect();
                assert_eq!(got, expected, "round {round} crate {i}");
            }
        }
        if acyclic {
            assert_eq!(report.cycles().len(), 0);
        }
    }
}

fn reference_roots(
    i: usize,
    deps: &[Vec<usize>],
    regressed: &[bool],
    results: &[CrateResult],
) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    if matches!(results[i].end, Outcome::BuildFail(R::DependsOn { .. })) {
        for &d in &deps[i] {
            if regressed[d] {
                out.extend(reference_roots(d, deps, regressed, results));
            }
        }
    }
    if out.is_empty() {
        out.push(i);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A chain far deeper than any recursion could take.
#[test]
fn very_long_chain_does_not_recurse() {
    let n = 200_000;
    let mut results = vec![reg("reg:c0@1.0.0", ce(&["E0308"]))];
    for i in 1..n {
        let prev = format!("reg:c{}@1.0.0", i - 1);
        results.push(reg(&format!("reg:c{i}@1.0.0"), dep(&[&prev])));
    }
    let report = build(results);
    let top = report.root_regressions().next().unwrap();
    assert_eq!(top.krate().to_string(), "reg:c0@1.0.0");
    assert_eq!(top.regressions_through(), n);
    assert_eq!(report.root_regressions().len(), 1);
    assert_eq!(roots_of(&report, "reg:c199999@1.0.0"), ["reg:c0@1.0.0"]);
}

/// One crate per comparison (with the number of crates given), to test counts.
fn one_of_each() -> Vec<CrateResult> {
    vec![
        reg("reg:regressed@1.0.0", ce(&["E0308"])),
        res("reg:fixed@1.0.0", ce(&["E0308"]), PASS),
        reg("reg:sr@1.0.0", bf(R::Timeout)),
        res("reg:sf@1.0.0", bf(R::NoSpace), PASS),
        res("reg:spurious@1.0.0", bf(R::PidsLimit), bf(R::Timeout)),
        res("reg:sbf@1.0.0", bf(R::Link), ce(&[])),
        res("reg:stf@1.0.0", test_fail(), test_fail()),
        res("reg:sts@1.0.0", Outcome::TestSkipped, Outcome::TestSkipped),
        res("reg:stp@1.0.0", PASS, PASS),
        res("reg:stp@2.0.0", PASS, PASS),
        res("reg:skipped@1.0.0", Outcome::Skipped, Outcome::Skipped),
        res(
            "reg:broken@1.0.0",
            Outcome::Broken { reason: "x".into() },
            Outcome::Broken { reason: "x".into() },
        ),
        res(
            "reg:pf@1.0.0",
            PASS,
            Outcome::PrepareFail { reason: "x".into() },
        ),
        res("reg:error@1.0.0", error(), PASS),
        res("reg:unknown@1.0.0", Outcome::TestSkipped, PASS),
    ]
}

#[test]
fn counts_per_comparison() {
    let report = build(one_of_each());
    let expected = [
        (Comparison::Regressed, 1),
        (Comparison::Fixed, 1),
        (Comparison::SpuriousRegressed, 1),
        (Comparison::SpuriousFixed, 1),
        (Comparison::Spurious, 1),
        (Comparison::SameBuildFail, 1),
        (Comparison::SameTestFail, 1),
        (Comparison::SameTestSkipped, 1),
        (Comparison::SameTestPass, 2),
        (Comparison::Skipped, 1),
        (Comparison::Broken, 1),
        (Comparison::PrepareFail, 1),
        (Comparison::Error, 1),
        (Comparison::Unknown, 1),
    ];
    assert_eq!(report.counts().iter().collect::<Vec<_>>(), expected);
    assert_eq!(report.counts().total(), 15);
    assert_eq!(report.len(), 15);
    let json = serde_json::to_value(report.counts()).unwrap();
    assert_eq!(
        json,
        json!({
            "regressed": 1, "fixed": 1, "spurious-regressed": 1, "spurious-fixed": 1,
            "spurious": 1, "same-build-fail": 1, "same-test-fail": 1, "same-test-skipped": 1,
            "same-test-pass": 2, "skipped": 1, "broken": 1, "prepare-fail": 1, "error": 1,
            "unknown": 1
        })
    );
    let empty = build(Vec::new());
    assert!(empty.is_empty());
    assert_eq!(empty.counts().total(), 0);
    assert_eq!(empty.root_regressions().len(), 0);
}

#[test]
fn error_code_grouping() {
    let report = build(vec![
        reg("reg:a@1.0.0", ce(&["E0308", "E0599"])),
        reg("reg:b@1.0.0", ce(&["E0308"])),
        reg("reg:c@1.0.0", ce(&["E0308", "E0308"])),
        reg("reg:d@1.0.0", bf(R::Ice)),
        res("reg:d2@1.0.0", bf(R::Oom), bf(R::Ice)),
        reg("reg:e@1.0.0", bf(R::Link)),
        reg("reg:f@1.0.0", bf(R::Unknown)),
        reg("reg:g@1.0.0", test_fail()),
        reg("reg:h@1.0.0", ce(&[])),
        reg("reg:i@1.0.0", dep(&["missing"])),
        reg("reg:j@1.0.0", dep(&["c"])),
        reg("reg:k@1.0.0", dep(&["c"])),
        res("reg:l@1.0.0", ce(&["E0001"]), ce(&["E0001"])),
    ]);
    let groups: Vec<(String, Vec<String>)> = report
        .error_groups()
        .map(|g| (g.key().to_string(), ids(g.crates())))
        .collect();
    let expected: Vec<(&str, Vec<&str>)> = vec![
        // c first: two regressions through it (j, k); then by id
        ("E0308", vec!["reg:c@1.0.0", "reg:a@1.0.0", "reg:b@1.0.0"]),
        ("ice", vec!["reg:d@1.0.0", "reg:d2@1.0.0"]),
        ("E0599", vec!["reg:a@1.0.0"]),
        ("compiler-error", vec!["reg:h@1.0.0"]),
        ("depends-on", vec!["reg:i@1.0.0"]),
        ("link", vec!["reg:e@1.0.0"]),
        ("test-fail", vec!["reg:g@1.0.0"]),
        ("unknown", vec!["reg:f@1.0.0"]),
    ];
    let expected: Vec<(String, Vec<String>)> = expected
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(groups, expected);
    let first = report.error_groups().next().unwrap();
    assert_eq!(first.key(), &ErrorGroupKey::Code("E0308".into()));
    assert_eq!(first.len(), 3);
    assert!(!first.is_empty());
    assert_eq!(
        report.error_groups().nth(1).unwrap().key(),
        &ErrorGroupKey::Kind("ice")
    );
}

#[test]
fn spurious_results_are_kept_apart() {
    let report = build(vec![
        reg("reg:r@1.0.0", ce(&["E0308"])),
        reg("reg:oom@1.0.0", bf(R::Oom)),
        reg("reg:t1@1.0.0", bf(R::Timeout)),
        res("reg:t2@1.0.0", ce(&["E0308"]), bf(R::Timeout)),
        reg("reg:noout@1.0.0", bf(R::NoOutputTimeout)),
        res("reg:net@1.0.0", bf(R::NetworkAccess), PASS),
        res("reg:space@1.0.0", bf(R::NoSpace), ce(&["E0308"])),
        res("reg:err1@1.0.0", PASS, error()),
        res("reg:err0@1.0.0", error(), ce(&["E0308"])),
        res("reg:same@1.0.0", bf(R::Oom), bf(R::Timeout)),
    ]);
    assert_eq!(ids(report.regressions()), ["reg:r@1.0.0"]);
    assert_eq!(
        ids(report.spurious_regressed()),
        [
            "reg:noout@1.0.0",
            "reg:oom@1.0.0",
            "reg:t1@1.0.0",
            "reg:t2@1.0.0"
        ]
    );
    assert_eq!(
        ids(report.spurious_fixed()),
        ["reg:net@1.0.0", "reg:space@1.0.0"]
    );
    assert_eq!(ids(report.errors()), ["reg:err0@1.0.0", "reg:err1@1.0.0"]);
    let reasons = |c| -> Vec<(&str, usize)> {
        report
            .spurious_reasons(c)
            .iter()
            .map(|r| (r.kind, r.crates))
            .collect()
    };
    assert_eq!(
        reasons(Comparison::SpuriousRegressed),
        [("timeout", 2), ("no-output-timeout", 1), ("oom", 1)]
    );
    assert_eq!(
        reasons(Comparison::SpuriousFixed),
        [("network-access", 1), ("no-space", 1)]
    );
    assert!(reasons(Comparison::Regressed).is_empty());
    // spurious on both sides: a comparison of its own, listed and retried with the others
    assert_eq!(report.counts().get(Comparison::SameBuildFail), 0);
    assert_eq!(report.counts().get(Comparison::Spurious), 1);
    assert_eq!(ids(report.spurious_both()), ["reg:same@1.0.0"]);
    assert_eq!(reasons(Comparison::Spurious), [("oom", 1), ("timeout", 1)]);
    assert!(
        report
            .retry_list()
            .iter()
            .any(|k| k.to_string() == "reg:same@1.0.0")
    );
    let md = summary_markdown(&report, &SummaryOptions::new("x", "stable", "beta"));
    assert!(md.contains("| spurious | 1 | oom 1, timeout 1 |"), "{md}");
    assert!(md.contains("**spurious**: `same 1.0.0`"), "{md}");
    for c in report.spurious_regressed().chain(report.errors()) {
        assert!(!c.is_root());
        assert_eq!(c.root_causes().len(), 0);
    }
    let error_groups: Vec<String> = report.error_groups().map(|g| g.key().to_string()).collect();
    assert_eq!(error_groups, ["E0308"]);
}

#[test]
fn diagnostics_changes_are_kept_apart_from_breakage() {
    let ui = Outcome::TestFail {
        failed_tests: vec!["ui".into()],
        reason: Some(TestFailReason::DiagnosticsChange),
    };
    let report = build(vec![
        reg("reg:ui@1.0.0", ui.clone()),
        reg("reg:real@1.0.0", test_fail()),
        reg("reg:dep@1.0.0", dep(&["ui"])),
        res("reg:both@1.0.0", ui.clone(), ui.clone()),
    ]);
    // counted as regressed, but in no list of regressions and no one's root cause
    assert_eq!(report.counts().get(Comparison::Regressed), 3);
    assert_eq!(ids(report.diagnostics_changes()), ["reg:ui@1.0.0"]);
    assert_eq!(
        ids(report.regressions()),
        ["reg:dep@1.0.0", "reg:real@1.0.0"]
    );
    assert!(!ids(report.root_regressions()).contains(&"reg:ui@1.0.0".to_owned()));
    let dep = report.get(&"reg:dep@1.0.0".parse().unwrap()).unwrap();
    assert!(dep.is_root(), "a diagnostics change explains no dependent");
    // retried after the regressions
    let retry: Vec<String> = report
        .retry_list()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(retry, ["reg:dep@1.0.0", "reg:real@1.0.0", "reg:ui@1.0.0"]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["diagnostics_changes"], json!(["reg:ui@1.0.0"]));
    let md = summary_markdown(&report, &SummaryOptions::new("x", "stable", "beta"));
    let changed = md.find("## Compiler output changed").expect(&md);
    assert!(md.find("## Root regressions").unwrap() < changed, "{md}");
    assert!(
        md.contains("1 crate regressed only because tests that compare"),
        "{md}"
    );
    assert!(
        md.contains("| `ui 1.0.0` | `test-fail:diagnostics-change(1)` |"),
        "{md}"
    );
    // only diagnostics changes: the headline does not say "no regressions"
    let only = build(vec![reg("reg:ui@1.0.0", ui)]);
    let md = summary_markdown(&only, &SummaryOptions::new("x", "stable", "beta"));
    assert!(!md.contains("**No regressions.**"), "{md}");
}

#[test]
fn flaky_crates_leave_the_lists_and_confirmed_ones_say_so() {
    use caldera_core::confirm::ConfirmationStatus as S;
    let results = vec![
        reg("reg:conf@1.0.0", ce(&["E0308"])),
        reg("reg:flaky@1.0.0", ce(&["E0599"])),
        reg("reg:dep@1.0.0", dep(&["flaky"])),
        reg("reg:wait@1.0.0", test_fail()),
        res("reg:fixflaky@1.0.0", ce(&[]), PASS),
        res("reg:pass@1.0.0", PASS, PASS),
    ];
    let asked = std::cell::RefCell::new(Vec::new());
    let status = |r: &CrateResult, _: Comparison| {
        let k = &r.krate;
        asked.borrow_mut().push(k.to_string());
        match k.to_string().as_str() {
            "reg:conf@1.0.0" => Some(S::Confirmed),
            "reg:flaky@1.0.0" | "reg:fixflaky@1.0.0" => Some(S::Flaky),
            "reg:wait@1.0.0" => Some(S::Pending),
            "reg:pass@1.0.0" => Some(S::Confirmed), // never asked: not regressed or fixed
            _ => None,
        }
    };
    let report = Report::build_with(results, |_| false, status).unwrap();
    assert!(!asked.borrow().contains(&"reg:pass@1.0.0".to_owned()));
    // counts keep the first run's comparison; the lists leave the flaky crates out
    assert_eq!(report.counts().get(Comparison::Regressed), 4);
    assert_eq!(
        ids(report.flaky()),
        ["reg:fixflaky@1.0.0", "reg:flaky@1.0.0"]
    );
    assert_eq!(
        ids(report.regressions()),
        ["reg:conf@1.0.0", "reg:dep@1.0.0", "reg:wait@1.0.0"]
    );
    // a flaky dependency explains nothing: its dependent is a root of its own
    assert!(
        report
            .get(&"reg:dep@1.0.0".parse().unwrap())
            .unwrap()
            .is_root()
    );
    assert_eq!(
        report.confirmation_counts(),
        ConfirmationCounts {
            confirmed: 1,
            flaky: 2,
            pending: 1,
            known_flaky: 0,
        }
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["flaky"],
        json!(["reg:fixflaky@1.0.0", "reg:flaky@1.0.0"])
    );
    assert_eq!(
        json["confirmation"],
        json!({"confirmed": 1, "flaky": 2, "pending": 1, "known_flaky": 0})
    );
    let by_id = |id: &str| {
        json["crates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["crate"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("reg:conf@1.0.0")["confirmation"], "confirmed");
    assert_eq!(by_id("reg:flaky@1.0.0")["confirmation"], "flaky");
    assert!(by_id("reg:dep@1.0.0").get("confirmation").is_none());
    let opts = SummaryOptions {
        reruns: Some((8, 252_000)),
        ..SummaryOptions::new("x", "stable", "beta")
    };
    let md = summary_markdown(&report, &opts);
    assert!(
        md.contains("1 confirmed, 2 flaky (listed apart, not regressions), 1 pending; 8 re-runs cost 4.2 min of builds."),
        "{md}"
    );
    assert!(md.contains("`conf 1.0.0` (confirmed)"), "{md}");
    assert!(
        md.contains("`wait 1.0.0` (confirmation pending)") || !md.contains("`wait 1.0.0` |"),
        "{md}"
    );
    assert!(md.contains("## Flaky (not confirmed)"), "{md}");
    assert!(
        md.contains(
            "| `flaky 1.0.0` | regressed | `test-pass` | `build-fail:compiler-error(E0599)` |"
        ),
        "{md}"
    );
    // without re-runs, nothing about confirmation is said
    let plain = build(vec![reg("reg:a@1.0.0", ce(&["E0308"]))]);
    let md = summary_markdown(&plain, &SummaryOptions::new("x", "a", "b"));
    assert!(!md.contains("onfirm"), "{md}");
    assert!(!md.contains("Flaky"), "{md}");
}

#[test]
fn retry_list_and_selection() {
    let report = build(vec![
        reg("reg:c@1.0.0", dep(&["a"])),
        reg("reg:a@1.0.0", ce(&["E0308"])),
        reg("reg:b@1.0.0", test_fail()),
        reg("reg:s@1.0.0", bf(R::Oom)),
        res("reg:f@1.0.0", bf(R::Oom), PASS),
        res("git:https://h/r.git#abc", error(), PASS),
        res("reg:fixed@1.0.0", ce(&[]), PASS),
        res("reg:same@1.0.0", ce(&[]), ce(&[])),
        res("reg:pass@1.0.0", PASS, PASS),
        res(
            "local:/x",
            PASS,
            Outcome::PrepareFail { reason: "x".into() },
        ),
    ]);
    let retry: Vec<String> = report
        .retry_list()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        retry,
        [
            "reg:a@1.0.0",
            "reg:b@1.0.0",
            "reg:c@1.0.0",
            "reg:s@1.0.0",
            "reg:f@1.0.0",
            "git:https://h/r.git#abc"
        ]
    );
    let selection = report.retry_selection().unwrap();
    selection.validate().unwrap();
    let CrateSelection::List(specs) = &selection else {
        panic!("not a list: {selection:?}");
    };
    let specs: Vec<String> = specs.iter().map(ToString::to_string).collect();
    assert_eq!(
        specs,
        [
            "a@1.0.0",
            "b@1.0.0",
            "c@1.0.0",
            "s@1.0.0",
            "f@1.0.0",
            "git:https://h/r.git#abc"
        ]
    );
    // The selection survives its own string form, as an operator would paste it back.
    let back: CrateSelection = selection.to_string().parse().unwrap();
    assert_eq!(back, selection);

    let quiet = build(vec![res("reg:pass@1.0.0", PASS, PASS)]);
    assert!(quiet.retry_list().is_empty());
    assert_eq!(quiet.retry_selection(), None);
}

#[test]
fn lookup_ignores_checksum_and_keeps_input() {
    let results = vec![
        CrateResult {
            krate: id(&format!("reg:a@1.0.0#{CKSUM}")),
            start: PASS,
            end: ce(&["E0308"]),
            start_log: Some("experiments/e/stable/reg%3Aa@1.0.0/log.zst".into()),
            end_log: Some("experiments/e/beta/reg%3Aa@1.0.0/log.zst".into()),
        },
        res("reg:b@1.0.0", PASS, PASS),
    ];
    let report = build(results.clone());
    let a = report.get(&id("reg:a@1.0.0")).unwrap();
    assert_eq!(a.result(), &results[0]);
    assert_eq!(a.comparison(), Comparison::Regressed);
    assert!(report.get(&id("reg:a@1.0.1")).is_none());
    assert!(report.get(&id("reg:c@1.0.0")).is_none());
    assert_eq!(report.into_results(), results);
}

#[test]
fn json_shape() {
    let report = build(vec![
        CrateResult {
            krate: id("reg:a@1.0.0"),
            start: PASS,
            end: ce(&["E0308"]),
            start_log: Some("s/a".into()),
            end_log: Some("e/a".into()),
        },
        reg("reg:b@1.0.0", dep(&["a", "ghost"])),
        reg("reg:x@1.0.0", dep(&["reg:y@1.0.0"])),
        reg("reg:y@1.0.0", dep(&["reg:x@1.0.0"])),
        reg("reg:s@1.0.0", bf(R::Oom)),
        res("reg:p@1.0.0", PASS, PASS),
    ]);
    let json = serde_json::to_value(&report).unwrap();
    let oom = json!({"kind": "build-fail", "reason": {"kind": "oom"}});
    let e0308 =
        json!({"kind": "build-fail", "reason": {"kind": "compiler-error", "codes": ["E0308"]}});
    let dep_xy =
        |d: &str| json!({"kind": "build-fail", "reason": {"kind": "depends-on", "crates": [d]}});
    let mut counts = serde_json::to_value(report.counts()).unwrap();
    counts["regressed"] = json!(4);
    assert_eq!(
        json,
        json!({
            "total": 6,
            "counts": counts,
            "regressions": ["reg:a@1.0.0", "reg:x@1.0.0", "reg:y@1.0.0", "reg:b@1.0.0"],
            "quiet_regressions": [],
            "diagnostics_changes": [],
            "flaky": [],
            "confirmation": {"confirmed": 0, "flaky": 0, "pending": 0, "known_flaky": 0},
            "root_regressions": [
                {"crate": "reg:a@1.0.0", "end": e0308, "regressions": 2, "dependents": 1, "in_cycle": false},
                {"crate": "reg:x@1.0.0", "end": dep_xy("reg:y@1.0.0"), "regressions": 2, "dependents": 1, "in_cycle": true},
                {"crate": "reg:y@1.0.0", "end": dep_xy("reg:x@1.0.0"), "regressions": 2, "dependents": 1, "in_cycle": true},
            ],
            "error_groups": [
                {"group": "depends-on", "crates": ["reg:x@1.0.0", "reg:y@1.0.0"]},
                {"group": "E0308", "crates": ["reg:a@1.0.0"]},
            ],
            "spurious": {
                "spurious-regressed": {"reasons": {"oom": 1}, "crates": ["reg:s@1.0.0"]},
                "spurious-fixed": {"reasons": {}, "crates": []},
                "spurious": {"reasons": {}, "crates": []},
                "error": {"crates": []},
            },
            "unresolved_dependencies": [{"name": "ghost", "dependents": 1}],
            "cycles": ["reg:x@1.0.0", "reg:y@1.0.0"],
            "crates": [
                {"crate": "reg:a@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                 "end": e0308, "start_log": "s/a", "end_log": "e/a",
                 "root_causes": ["reg:a@1.0.0"], "root": true},
                {"crate": "reg:b@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                 "end": {"kind": "build-fail", "reason": {"kind": "depends-on", "crates": ["a", "ghost"]}},
                 "root_causes": ["reg:a@1.0.0"]},
                {"crate": "reg:x@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                 "end": dep_xy("reg:y@1.0.0"), "root_causes": ["reg:x@1.0.0", "reg:y@1.0.0"],
                 "root": true, "in_cycle": true},
                {"crate": "reg:y@1.0.0", "comparison": "regressed", "start": {"kind": "test-pass"},
                 "end": dep_xy("reg:x@1.0.0"), "root_causes": ["reg:x@1.0.0", "reg:y@1.0.0"],
                 "root": true, "in_cycle": true},
                {"crate": "reg:s@1.0.0", "comparison": "spurious-regressed", "start": {"kind": "test-pass"},
                 "end": oom},
                {"crate": "reg:p@1.0.0", "comparison": "same-test-pass", "start": {"kind": "test-pass"},
                 "end": {"kind": "test-pass"}},
            ],
        })
    );
    // CrateResult round-trips through its own JSON.
    let r = reg("reg:a@1.0.0", ce(&["E0308"]));
    let text = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<CrateResult>(&text).unwrap(), r);
}

/// 5 regressions: foo (root) with two crates through it, bar (root) with one; a spurious
/// result, an error, an unresolved dependency.
fn summary_report() -> Report {
    build(vec![
        reg("reg:foo@1.2.3", ce(&["E0308", "E0599"])),
        reg("reg:u1@1.0.0", dep(&["foo"])),
        reg("reg:u2@0.1.0", dep(&["reg:u1@1.0.0"])),
        reg("reg:bar@0.4.0", bf(R::Ice)),
        reg("reg:v1@2.0.0", dep(&["bar", "libgit2-sys"])),
        reg("reg:sp@1.0.0", bf(R::Oom)),
        res("reg:er@1.0.0", error(), PASS),
        res("reg:fx@1.0.0", ce(&["E0308"]), PASS),
        res("reg:ok@1.0.0", PASS, PASS),
        res("reg:ok@2.0.0", PASS, PASS),
    ])
}

#[test]
fn markdown_summary_content() {
    let report = summary_report();
    let md = summary_markdown(
        &report,
        &SummaryOptions::new("beta-2026-05", "stable", "beta"),
    );
    let expected_lines = [
        "# beta-2026-05",
        "`stable` (start) → `beta` (end), 10 crates.",
        "**5 regressions, 3 of them through `foo 1.2.3`.**",
        "2 crates regressed on their own; the other 3 regressed because a dependency did.",
        "2 spurious or infrastructure results are listed apart and not counted as regressions.",
        "## Counts",
        "| regressed | 5 |",
        "| fixed | 1 |",
        "| spurious-regressed | 1 |",
        "| same-test-pass | 2 |",
        "| error | 1 |",
        "| unknown | 0 |",
        "| **total** | **10** |",
        "## Root regressions",
        "| 1 | `foo 1.2.3` | `build-fail:compiler-error(E0308,E0599)` | 3 |",
        "| 2 | `bar 0.4.0` | `build-fail:ice` | 2 |",
        "## Root regressions by error",
        "| `E0308` | 1 | `foo 1.2.3` |",
        "| `E0599` | 1 | `foo 1.2.3` |",
        "| `ice` | 1 | `bar 0.4.0` |",
        "## Spurious and infrastructure results",
        "| spurious-regressed | 1 | oom 1 |",
        "| spurious-fixed | 0 |  |",
        "| error | 1 |  |",
        "**spurious-regressed**: `sp 1.0.0`",
        "**error**: `er 1.0.0`",
        "## Attribution notes",
        "- `libgit2-sys`: 1 crate",
        "## Retry",
        "**7 crates to retry** (regressions and spurious results): the report's retry list is an explicit crate selection.",
    ];
    let lines: Vec<&str> = md.lines().collect();
    let mut at = 0;
    for expected in expected_lines {
        match lines[at..].iter().position(|l| *l == expected) {
            Some(k) => at += k + 1,
            None => panic!("missing or out of order: {expected:?}\n---\n{md}"),
        }
    }
    assert!(!md.contains("… and"), "{md}");
    assert!(!md.contains("**spurious-fixed**"), "{md}");
    assert!(!md.contains("cycle"), "{md}");

    let small = SummaryOptions {
        max_entries: 1,
        ..SummaryOptions::new("t", "a", "b")
    };
    let md = summary_markdown(&report, &small);
    assert!(md.contains("| 1 | `foo 1.2.3` |"), "{md}");
    assert!(!md.contains("| 2 | `bar 0.4.0` |"), "{md}");
    assert!(md.contains("… and 1 more root regressions"), "{md}");
    assert!(md.contains("… and 2 more groups"), "{md}");
}

#[test]
fn markdown_summary_without_regressions() {
    let report = build(vec![res("reg:ok@1.0.0", PASS, PASS)]);
    let md = summary_markdown(&report, &SummaryOptions::new("t\nx", "a|b", "`c`"));
    assert!(md.starts_with("# t x\n"), "{md}");
    assert!(
        md.contains("`a\\|b` (start) → `` `c` `` (end), 1 crate."),
        "{md}"
    );
    assert!(md.contains("**No regressions.**"), "{md}");
    assert!(md.contains("Nothing to retry."), "{md}");
    assert!(!md.contains("## Root regressions"), "{md}");
    assert!(!md.contains("## Spurious"), "{md}");
}

#[test]
fn markdown_summary_is_bounded() {
    // 5,000 roots with 2 KiB git URLs and many codes, 5,000 spurious, 5,000 unresolved names,
    // a cycle of 1,000: still fits a GitHub issue.
    let long = "x".repeat(1900);
    let mut results = Vec::new();
    for i in 0..5000 {
        let codes: Vec<String> = (0..20).map(|k| format!("E{:04}", i * 7 + k)).collect();
        let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
        results.push(reg(
            &format!("git:https://h/{long}{i}.git#r{i}"),
            ce(&codes),
        ));
        results.push(reg(&format!("reg:s{i}@1.0.0"), bf(R::Timeout)));
        let ghost = format!("ghost-{i}-{}", "y".repeat(50));
        results.push(reg(&format!("reg:d{i}@1.0.0"), dep(&[&ghost])));
    }
    for i in 0..1000 {
        let next = format!("reg:cy{}@1.0.0", (i + 1) % 1000);
        results.push(reg(&format!("reg:cy{i}@1.0.0"), dep(&[&next])));
    }
    let report = build(results);
    assert_eq!(report.cycles().len(), 1000);
    let md = summary_markdown(&report, &SummaryOptions::new("big", "a", "b"));
    assert!(md.len() < 65_536, "{} bytes", md.len());
    // 5,000 + 5,000 + 1,000 cycle members, all roots; 50 shown.
    assert!(
        md.contains("… and 10950 more root regressions"),
        "{}",
        &md[..2000]
    );
    assert!(md.contains("… and 4950 more"));
    assert!(md.contains("…` |"), "labels are cut");
}

#[test]
fn markdown_code_spans() {
    assert_eq!(code("foo 1.2.3"), "`foo 1.2.3`");
    assert_eq!(code("a`b"), "``a`b``");
    assert_eq!(code("`a``"), "``` `a`` ```");
    assert_eq!(code("a|b\nc"), "`a\\|b c`");
    assert_eq!(cut("abcdef".into(), 4), "abc…");
    assert_eq!(cut("abcd".into(), 4), "abcd");
    assert_eq!(cut("ääää€".into(), 4), "äää…");
}

#[test]
fn normalisation() {
    let cases = [
        (
            "/home/alice/.cargo/registry/src/index.crates.io-6f17d22bba15001f/serde-1.0.0/src/de.rs:10:5",
            "$REGISTRY/serde-1.0.0/src/de.rs:10:5",
        ),
        (
            "--> /root/.cargo/git/checkouts/foo-1a2b3c4d5e6f7a8b/0123abc/src/lib.rs",
            "--> $GIT/src/lib.rs",
        ),
        (
            "at /opt/rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/core/src/ops.rs:7",
            "at $TOOLCHAIN/lib/rustlib/src/rust/library/core/src/ops.rs:7",
        ),
        ("(/tmp/.tmpAbC123/foo/src/lib.rs)", "($TMP/foo/src/lib.rs)"),
        ("'/var/tmp/x1/y'", "'$TMP/y'"),
        ("/home/bob/proj/src/lib.rs", "$HOME/proj/src/lib.rs"),
        ("/Users/bob/p", "$HOME/p"),
        ("/root/x and /root", "$HOME/x and $HOME"),
        (
            "/opt/ci/target/debug/deps/libfoo-1a2b3c4d5e6f7a8b.rlib",
            "$TARGET/debug/deps/libfoo-$HASH.rlib",
        ),
        (
            "~/.cargo/registry/src/idx-0123/x-1.0.0/lib.rs",
            "$REGISTRY/x-1.0.0/lib.rs",
        ),
        (
            "Running target/debug/deps/foo-1a2b3c4d5e6f7a8b",
            "Running target/debug/deps/foo-$HASH",
        ),
        (
            "panicked at /rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/panicking.rs",
            "panicked at /rustc/$HASH/library/std/src/panicking.rs",
        ),
        ("finished in 1.23s", "finished in $DUR"),
        ("[2.3s] ok", "[$DUR] ok"),
        (
            "took 150ms, 2min, 3µs, 12seconds",
            "took $DUR, $DUR, $DUR, $DUR",
        ),
        (
            "1.2.3 E0308 12 items a.rs:12:5",
            "1.2.3 E0308 12 items a.rs:12:5",
        ),
        ("deadbeef cafebabe abc1234", "deadbeef cafebabe abc1234"),
        (
            "x-1a2b3c4d x-1a2b3c4 x-12345678",
            "x-$HASH x-1a2b3c4 x-$HASH",
        ),
        ("at 0x7ffd5e3c1a20 0x10", "at 0x$HEX 0x10"),
        ("foo::bar::h0123456789abcdef", "foo::bar::h$HASH"),
        ("src/lib.rs and a/tmp/b", "src/lib.rs and a/tmp/b"),
        ("ünï /tmp/é/x — 1.5s ✓", "ünï $TMP/x — $DUR ✓"),
        ("  trimmed \t", "trimmed"),
        ("/usr/lib/x.so", "/usr/lib/x.so"),
    ];
    let mut out = String::new();
    for (input, expected) in cases {
        normalize_line(input, &mut out);
        assert_eq!(out, expected, "{input}");
    }
    let mut clean = String::new();
    for (input, expected) in [
        ("\x1b[1m\x1b[31merror[E0308]\x1b[0m: x", "error[E0308]: x"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x07!", "link!"),
        ("progress 1/3\rprogress 2/3\rerror: boom\r", "error: boom"),
        ("a\x1b(Bb\x1b", "ab"),
    ] {
        strip_ansi(input, &mut clean);
        assert_eq!(clean, expected, "{input:?}");
    }
}

#[test]
fn first_new_error_cases() {
    let start = "\
   Compiling foo v0.1.0 (/tmp/.tmpAAA111/foo)
error[E0308]: mismatched types
 --> /home/alice/.cargo/registry/src/index.crates.io-6f17d22bba15001f/bar-1.0.0/src/lib.rs:3:5
error: test timed out after 12.5s [2.3s]
thread 'main' panicked at /rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/core/src/x.rs:1:1:
error: could not link /work/target/debug/deps/libfoo-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20
";
    let same_after_normalising = "\
   Compiling foo v0.1.0 (/tmp/.tmpBBB222/foo)
\x1b[1m\x1b[31merror[E0308]\x1b[0m\x1b[1m: mismatched types\x1b[0m
 --> /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bar-1.0.0/src/lib.rs:3:5
error: test timed out after 3.1s [0.4s]
thread 'main' panicked at /rustc/0123456789abcdef0123456789abcdef01234567/library/core/src/x.rs:1:1:
error: could not link /srv/x/target/debug/deps/libfoo-0f0e0d0c0b0a0908.rlib at 0x55d1c0ffee00
warning: something new that is not an error
";
    assert_eq!(first_new_error(start, same_after_normalising), None);

    let cases: &[(&str, Option<(usize, &str)>)] = &[
        (
            "line 0\nerror[E0308]: mismatched types\nwarning: x\nerror[E0599]: no method named `x`\nerror[E0425]: y",
            Some((3, "error[E0599]: no method named `x`")),
        ),
        (
            "\x1b[31merror\x1b[0m: new and coloured  \r\n",
            Some((0, "error: new and coloured")),
        ),
        (
            "ok\r\nok\r\n  test a::b ... FAILED",
            Some((2, "test a::b ... FAILED")),
        ),
        (
            "thread 'other' panicked at src/main.rs:2:5:",
            Some((0, "thread 'other' panicked at src/main.rs:2:5:")),
        ),
        (
            "foo.c:1:10: fatal error: openssl/ssl.h: No such file or directory",
            Some((
                0,
                "foo.c:1:10: fatal error: openssl/ssl.h: No such file or directory",
            )),
        ),
        (
            "error: internal compiler error: unexpected panic",
            Some((0, "error: internal compiler error: unexpected panic")),
        ),
        (
            "Error: Os { code: 13 }",
            Some((0, "Error: Os { code: 13 }")),
        ),
        // A different file is a different error, normalisation or not.
        (
            "error[E0308]: mismatched types\n --> src/main.rs:3:5\nerror: could not link /work/target/debug/deps/libbar-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20",
            Some((
                2,
                "error: could not link /work/target/debug/deps/libbar-1a2b3c4d5e6f7a8b.rlib at 0x7ffd5e3c1a20",
            )),
        ),
        ("warning: unused\nnote: x\nerrors: not an error line", None),
        ("", None),
        // Line stamps of the sandbox are not part of the line.
        (
            "[   0.100] error[E0308]: mismatched types\n[  12.500] error[E0599]: new",
            Some((1, "error[E0599]: new")),
        ),
        (
            "[   3.000] \x1b[31merror[E0308]\x1b[0m: mismatched types",
            None,
        ),
    ];
    for (end, expected) in cases {
        let got = first_new_error(start, end);
        let got = got.as_ref().map(|(i, s)| (*i, s.as_str()));
        assert_eq!(got, *expected, "{end:?}");
    }
    // Nothing in start: the first error line of end.
    assert_eq!(
        first_new_error("", "a\nerror: x"),
        Some((1, "error: x".to_owned()))
    );
}

/// Random text (multi-byte characters, escapes, paths, digits) never makes the log functions
/// panic.
#[test]
fn log_functions_never_panic() {
    const PIECES: &[&str] = &[
        "/",
        "~",
        "/tmp/",
        "/home/",
        "/root",
        "/target/",
        "/registry/src/",
        "/toolchains/",
        "/git/checkouts/",
        "0x",
        "h",
        "deadbeef1",
        "1.5",
        "s",
        "ms",
        "µs",
        "μ",
        "é",
        "€",
        "✓",
        "\x1b",
        "[",
        "]",
        "\r",
        "\n",
        " ",
        ":",
        "error",
        "error:",
        "test ",
        " FAILED",
        "1",
        "a",
        "-",
        ".",
        "'",
        "\\",
        "\x07",
        "0123456789abcdef",
    ];
    let mut rng = SplitMix(99);
    let mut out = String::new();
    for _ in 0..3000 {
        let mut a = String::new();
        let mut b = String::new();
        for _ in 0..rng.below(30) {
            a.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
            b.push_str(PIECES[rng.below(PIECES.len() as u64) as usize]);
        }
        normalize_line(&a, &mut out);
        if let Some((i, line)) = first_new_error(&a, &b) {
            assert!(i < b.lines().count());
            assert!(!line.contains('\x1b'));
        }
    }
}

/// SplitMix64: a small deterministic generator for tests.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// -----------------------------------------------------------------------------------------
// 1M benchmark

/// The synthetic experiment: its results and the number of regressions planted.
pub(crate) fn synthetic(n: usize, seed: u64) -> (Vec<CrateResult>, usize) {
    const CODES: &[&str] = &[
        "E0308", "E0599", "E0277", "E0425", "E0433", "E0412", "E0432", "E0061", "E0282", "E0106",
        "E0382", "E0502", "E0499", "E0505", "E0507", "E0597", "E0716", "E0658", "E0554", "E0034",
        "E0119", "E0201", "E0252", "E0283", "E0310", "E0369", "E0392", "E0404", "E0405", "E0407",
        "E0423", "E0424", "E0428", "E0434", "E0435", "E0449", "E0493", "E0515", "E0560", "E0609",
    ];
    struct Planted {
        name: String,
        version: caldera_core::semver::Version,
        checksum: String,
    }
    let mut rng = SplitMix(seed);
    let mut results = Vec::with_capacity(n);
    let mut regressed: Vec<Planted> = Vec::new();
    let mut failing: Vec<String> = Vec::new();
    let mut planted = 0;
    let cycles = 3;
    for i in 0..n - 2 * cycles {
        let name = format!("crate-{i}");
        let version = caldera_core::semver::Version::new(i as u64 % 4, i as u64 % 23, i as u64 % 7);
        let checksum = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next()
        );
        let roll = rng.below(10_000);
        let (start, end) = if roll < 40 {
            // a root regression
            let end = match rng.below(100) {
                0..70 => {
                    let k = (CODES.len() as f64 * rng.unit().powi(2)) as usize;
                    let mut codes = vec![CODES[k]];
                    if rng.below(5) == 0 {
                        codes.push(CODES[rng.below(CODES.len() as u64) as usize]);
                    }
                    ce(&codes)
                }
                70..75 => bf(R::Ice),
                75..80 => bf(R::Link),
                80..95 => test_fail(),
                _ => bf(R::Unknown),
            };
            (PASS, end)
        } else if roll < 290 && !regressed.is_empty() {
            // a regression through 1-3 regressed crates, popular (early) ones more often
            let mut deps = Vec::new();
            let k = match rng.below(20) {
                0 => 3,
                1..4 => 2,
                _ => 1,
            };
            for _ in 0..k {
                let d = &regressed[(regressed.len() as f64 * rng.unit().powi(3)) as usize];
                deps.push(match rng.below(20) {
                    0..10 => format!("reg:{}@{}#{}", d.name, d.version, d.checksum),
                    10..14 => format!("reg:{}@{}", d.name, d.version),
                    14..18 => d.name.clone(),
                    _ => format!("{} v{}", d.name, d.version),
                });
            }
            if rng.below(20) == 0 {
                deps.push(format!("sys-{}", rng.below(500)));
            }
            (
                PASS,
                dep(&deps.iter().map(String::as_str).collect::<Vec<_>>()),
            )
        } else if roll < 300 && !failing.is_empty() {
            // depends on a crate that already failed on start: its own root
            let d = failing[rng.below(failing.len() as u64) as usize].clone();
            (PASS, dep(&[&d]))
        } else if roll < 310 {
            let r = [R::Oom, R::Timeout, R::NoOutputTimeout][rng.below(3) as usize].clone();
            (PASS, bf(r))
        } else if roll < 315 {
            (bf(R::Timeout), PASS)
        } else if roll < 320 {
            (error(), PASS)
        } else if roll < 380 {
            (ce(&["E0308"]), PASS)
        } else if roll < 2400 {
            failing.push(name.clone());
            if rng.below(10) < 3 {
                let d = format!("crate-{}", rng.below(i as u64 + 1));
                (dep(&[&d]), dep(&[&d]))
            } else {
                (ce(&["E0425"]), ce(&["E0425"]))
            }
        } else if roll < 3200 {
            (test_fail(), test_fail())
        } else if roll < 3500 {
            (Outcome::TestSkipped, Outcome::TestSkipped)
        } else if roll < 3700 {
            (
                Outcome::PrepareFail {
                    reason: "yanked".into(),
                },
                Outcome::PrepareFail {
                    reason: "yanked".into(),
                },
            )
        } else if roll < 3750 {
            (
                Outcome::Broken {
                    reason: "known".into(),
                },
                Outcome::Broken {
                    reason: "known".into(),
                },
            )
        } else if roll < 3800 {
            (Outcome::Skipped, Outcome::Skipped)
        } else {
            (PASS, PASS)
        };
        if compare(&start, &end) == Comparison::Regressed {
            planted += 1;
            regressed.push(Planted {
                name: name.clone(),
                version: version.clone(),
                checksum: checksum.clone(),
            });
        }
        let key = |tc: &str| {
            format!("experiments/beta-1m/{tc}/reg%3A{name}@{version}%23{checksum}/log.zst")
        };
        results.push(CrateResult {
            start_log: Some(key("stable")),
            end_log: Some(key("beta-2026-05-01")),
            krate: CrateId::Registry {
                name,
                version,
                checksum: Some(checksum),
            },
            start,
            end,
        });
    }
    // Bad data: a few two-crate cycles.
    for k in 0..cycles {
        let (a, b) = (format!("reg:cyc-a{k}@1.0.0"), format!("reg:cyc-b{k}@1.0.0"));
        results.push(reg(&a, dep(&[&b])));
        results.push(reg(&b, dep(&[&a])));
        planted += 2;
    }
    (results, planted)
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct CountingSink(usize);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `cargo test --release -p caldera-core report::tests::bench_1m -- --ignored --nocapture`
/// (run it alone: peak memory is the whole process's). Builds the report over 1,000,000
/// synthetic results with dependency chains, renders the summary and serializes the JSON.
#[test]
#[ignore = "benchmark: run explicitly, in release"]
fn bench_1m() {
    use std::time::Instant;
    let n = 1_000_000;
    let t = Instant::now();
    let (results, planted) = synthetic(n, 42);
    let generate = t.elapsed().as_secs_f64();
    let input_mib = proc_status_kib("VmRSS:") as f64 / 1024.0;

    let t = Instant::now();
    let report = Report::build(results).unwrap();
    let build_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let md = summary_markdown(&report, &SummaryOptions::new("beta-1m", "stable", "beta"));
    let summary_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut sink = CountingSink(0);
    serde_json::to_writer(&mut sink, &report).unwrap();
    let json_s = t.elapsed().as_secs_f64();
    let peak_mib = proc_status_kib("VmHWM:") as f64 / 1024.0;

    assert_eq!(report.len(), n);
    assert_eq!(report.counts().get(Comparison::Regressed), planted);
    assert_eq!(report.cycles().len(), 6);
    assert!(md.len() < 65_536);
    let (mut links, mut widest) = (0, 0);
    for c in report.regressions() {
        let k = c.root_causes().len();
        assert!(k > 0);
        links += k;
        widest = widest.max(k);
    }
    let top = report.root_regressions().next().unwrap();
    eprintln!(
        "{} regressions ({links} root links, at most {widest} roots per crate), {} roots, top root {} with {} through it; {} error groups; {} unresolved names; summary {} bytes",
        planted,
        report.root_regressions().len(),
        top.krate(),
        top.regressions_through(),
        report.error_groups().len(),
        report.unresolved_dependencies().len(),
        md.len()
    );
    eprintln!("report_1m_generate: {generate:.2} s");
    eprintln!("report_1m_build: {build_s:.2} s");
    eprintln!("report_1m_summary: {summary_s:.3} s");
    eprintln!("report_1m_json: {json_s:.2} s");
    eprintln!("report_1m_json_size: {:.0} MiB", sink.0 as f64 / 1048576.0);
    eprintln!("report_1m_input: {input_mib:.0} MiB");
    println!("report_1m: {:.2} s", build_s + summary_s + json_s);
    println!("report_1m_peak: {peak_mib:.0} MiB");
}

#[test]
fn summary_header_names_the_build_of_each_side() {
    use caldera_core::toolchain::ToolchainIdentity;
    let report = build(vec![reg("a@1.0.0", ce(&["E0308"]))]);
    let nightly = ToolchainIdentity {
        toolchain: "nightly".into(),
        commit_hash: "0123456789abcdef0123456789abcdef01234567".into(),
        commit_date: "2026-11-30".into(),
        host: "x86_64-unknown-linux-gnu".into(),
        release: "1.95.0-nightly".into(),
        cargo: "1.95.0-nightly (fedcba987 2026-11-29)".into(),
    };
    let plain = summary_markdown(&report, &SummaryOptions::new("x", "stable", "nightly"));
    assert!(!plain.contains("Builds"), "no identity, no line: {plain}");
    let opts = SummaryOptions {
        toolchains: Toolchains {
            start: None,
            end: Some(&nightly),
        },
        ..SummaryOptions::new("x", "stable", "nightly")
    };
    let md = summary_markdown(&report, &opts);
    assert!(
        md.contains(
            "`stable` (start) → `nightly` (end), 1 crate.\n\nBuilds (every result of a side ran \
             with this build): start not recorded; end `1.95.0-nightly (0123456789ab 2026-11-30, \
             x86_64-unknown-linux-gnu)`, cargo `1.95.0-nightly (fedcba987 2026-11-29)`.\n"
        ),
        "{md}"
    );
    let json = serde_json::to_value(opts.toolchains).unwrap();
    assert_eq!(json["start"], serde_json::Value::Null);
    assert_eq!(json["end"]["commit_hash"], nightly.commit_hash.as_str());
    assert_eq!(json["end"]["cargo"], nightly.cargo.as_str());
}
