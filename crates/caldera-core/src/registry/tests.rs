use super::*;
use std::collections::HashSet;

fn registry_names(ids: &[CrateId]) -> HashSet<&str> {
    ids.iter().filter_map(CrateId::registry_name).collect()
}

fn ck(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

fn names(ids: &[CrateId]) -> Vec<String> {
    ids.iter()
        .map(|id| match id {
            CrateId::Registry { name, version, .. } => format!("{name}@{version}"),
            other => panic!("not a registry id: {other}"),
        })
        .collect()
}

/// A small dump in the real layout: extra columns, columns in another order, quoted cells
/// with commas and newlines.
fn dump() -> (String, String) {
    let crates = "\
created_at,description,downloads,id,name,repository
2015-01-01,\"Serialization, for \"\"Rust\"\"\",1000,1,serde,https://x
2015-01-01,\"multi
line\",5000,2,rand,
2015-01-01,,1000,3,anyhow,
2015-01-01,,99999,4,gone,
2015-01-01,,7,5,pre-only,
2015-01-01,,1000,6,Zebra,
";
    let versions = format!(
        "\
id,crate_id,num,checksum,yanked,license
10,1,1.0.0,{a},f,MIT
11,1,1.0.10,{b},f,MIT
12,1,1.0.9,{a},f,MIT
13,1,2.0.0-rc.1,{a},f,MIT
20,2,0.8.5,{c},f,MIT
21,2,0.9.0,{c},t,MIT
30,3,1.0.0,,f,MIT
40,4,1.0.0,{a},t,MIT
50,5,0.1.0-alpha.1,{a},f,MIT
51,5,0.1.0-alpha.2,{b},f,MIT
52,5,0.1.0-beta.1,{a},t,MIT
60,6,0.1.0,{a},false,MIT
",
        a = ck('a'),
        b = ck('b'),
        c = ck('c'),
    );
    (crates.to_owned(), versions)
}

fn dump_listing() -> RegistryListing {
    let (c, v) = dump();
    RegistryListing::from_db_dump(c.as_bytes(), v.as_bytes()).unwrap()
}

#[test]
fn db_dump_all() {
    let listing = dump_listing();
    let all = listing.all();
    // Byte order puts the capitalised name first.
    assert_eq!(
        names(&all),
        [
            "Zebra@0.1.0",
            "anyhow@1.0.0",
            "pre-only@0.1.0-alpha.2",
            "rand@0.8.5",
            "serde@1.0.10"
        ]
    );
    assert_eq!(
        all[4],
        CrateId::Registry {
            name: "serde".into(),
            version: "1.0.10".parse().unwrap(),
            checksum: Some(ck('b')),
        }
    );
    assert_eq!(
        all[1],
        CrateId::Registry {
            name: "anyhow".into(),
            version: "1.0.0".parse().unwrap(),
            checksum: None,
        }
    );
    assert_eq!(listing.len(), 5);
    assert_eq!(listing.unselectable(), ["gone"]);
    assert_eq!(
        listing.latest("rand").unwrap().to_string(),
        format!("reg:rand@0.8.5#{}", ck('c'))
    );
    assert_eq!(listing.latest("gone"), None);
}

#[test]
fn db_dump_top_by_downloads() {
    let listing = dump_listing();
    assert!(listing.has_downloads());
    // 5000 rand; 1000 each for Zebra, anyhow, serde (ties by name); 7 pre-only. `gone` has the
    // most downloads but no selectable version.
    assert_eq!(
        names(&listing.top(10)),
        [
            "rand@0.8.5",
            "Zebra@0.1.0",
            "anyhow@1.0.0",
            "serde@1.0.10",
            "pre-only@0.1.0-alpha.2"
        ]
    );
    assert_eq!(names(&listing.top(2)), ["rand@0.8.5", "Zebra@0.1.0"]);
    assert!(listing.top(0).is_empty());
}

#[test]
fn db_dump_separate_downloads_file() {
    // Drop the downloads column by reading a crates.csv without it.
    let crates = "id,name\n1,serde\n2,rand\n3,anyhow\n";
    let downloads = "crate_id,downloads\n3,50\n1,10\n";
    let listing = RegistryListing::from_db_dump_with_downloads(
        crates.as_bytes(),
        "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,0.8.5,,f\n3,1.0.0,,f\n".as_bytes(),
        downloads.as_bytes(),
    )
    .unwrap();
    assert_eq!(
        names(&listing.top(3)),
        ["anyhow@1.0.0", "serde@1.0.0", "rand@0.8.5"]
    );
    // Without downloads at all, the dump has no dependency data: every count is 0, so the
    // order is by name.
    let listing = RegistryListing::from_db_dump(
        crates.as_bytes(),
        "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,0.8.5,,f\n3,1.0.0,,f\n".as_bytes(),
    )
    .unwrap();
    assert!(!listing.has_downloads());
    assert_eq!(
        names(&listing.top(3)),
        ["anyhow@1.0.0", "rand@0.8.5", "serde@1.0.0"]
    );
}

#[test]
fn db_dump_errors() {
    let (crates, versions) = dump();
    let cases: Vec<(String, String, &str)> = vec![
        (
            "id,title\n1,x\n".into(),
            versions.clone(),
            "crates.csv: the header has no `name` column",
        ),
        (
            crates.clone(),
            "crate_id,num,yanked\n1,1.0.0,f\n".into(),
            "versions.csv: the header has no `checksum` column",
        ),
        (
            "id,name,downloads\n1,serde,many\n".into(),
            versions.clone(),
            r#"crates.csv line 2: invalid downloads "many": not a non-negative integer"#,
        ),
        (
            "id,name\n1,serde\n2,9lives\n".into(),
            versions.clone(),
            r#"crates.csv line 3: invalid name "9lives": invalid crate name "9lives": must start with an ASCII letter"#,
        ),
        (
            "id,name\n1,serde\n1,rand\n".into(),
            versions.clone(),
            r#"crates.csv line 3: crate id "1" appears more than once"#,
        ),
        (
            "id,name\n1,serde\n".into(),
            "crate_id,num,checksum,yanked\n1,1.0.0,,f\n2,1.0.0,,f\n".into(),
            r#"versions.csv line 3: crate id "2" is not in crates.csv"#,
        ),
        (
            "id,name\n1,serde\n".into(),
            "crate_id,num,checksum,yanked\n1,1.0,,f\n".into(),
            r#"versions.csv line 2: invalid num "1.0": unexpected end of input while parsing minor version number"#,
        ),
        (
            "id,name\n1,serde\n".into(),
            "crate_id,num,checksum,yanked\n1,1.0.0,xyz,f\n".into(),
            r#"versions.csv line 2: invalid checksum "xyz": checksum "xyz" is not 64 lowercase hex digits (sha256)"#,
        ),
        (
            "id,name\n1,serde\n".into(),
            "crate_id,num,checksum,yanked\n1,1.0.0,,maybe\n".into(),
            r#"versions.csv line 2: invalid yanked "maybe": expected t or f"#,
        ),
    ];
    for (c, v, msg) in cases {
        let err = RegistryListing::from_db_dump(c.as_bytes(), v.as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), msg);
    }
    // A ragged row is reported by the CSV reader with its position.
    let err =
        RegistryListing::from_db_dump("id,name\n1,serde,extra\n".as_bytes(), versions.as_bytes())
            .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Csv { file: "crates.csv", message } if message.contains("(line: 2,")),
        "{err}"
    );
}

fn line(name: &str, vers: &str, deps: &str, yanked: bool) -> String {
    format!(
        r#"{{"name":"{name}","vers":"{vers}","deps":[{deps}],"cksum":"{}","features":{{}},"yanked":{yanked},"v":2}}"#,
        ck('d')
    )
}

fn dep(name: &str, kind: &str) -> String {
    format!(
        r#"{{"name":"{name}","req":"^1","features":[],"optional":false,"default_features":true,"target":null,"kind":"{kind}"}}"#
    )
}

/// A synthetic index: dependency counts decide `top`.
fn index_listing() -> RegistryListing {
    let files = [
        // serde: depended on by app1 (normal), app2 (build, renamed), app3 (as serde_derive's
        // dep, see below) — but not by `tester` (dev only).
        [
            line("serde", "1.0.0", "", false),
            line("serde", "1.0.1", "", false),
        ]
        .join("\n"),
        // app1's older version depends on `log`; only the latest version counts.
        [
            line("app1", "0.1.0", &dep("log", "normal"), false),
            line(
                "app1",
                "0.2.0",
                &[dep("serde", "normal"), dep("libc", "normal")].join(","),
                false,
            ),
        ]
        .join("\n"),
        line(
            "app2",
            "1.0.0",
            r#"{"name":"s","package":"serde","req":"^1","kind":"build"},{"name":"libc","req":"^0.2"}"#,
            false,
        ),
        // app3's latest version is yanked; its previous version depends on serde and libc twice.
        [
            line(
                "app3",
                "1.0.0",
                &[
                    dep("serde", "normal"),
                    dep("libc", "normal"),
                    dep("libc", "build"),
                ]
                .join(","),
                false,
            ),
            line("app3", "2.0.0", &dep("log", "normal"), true),
        ]
        .join("\n"),
        line(
            "tester",
            "1.0.0",
            &[dep("serde", "dev"), dep("log", "dev")].join(","),
            false,
        ),
        // A dependency on another registry does not count; a self-dependency does not count.
        line(
            "log",
            "0.4.0",
            r#"{"name":"libc","req":"^1","kind":"normal","registry":"https://example.invalid/index"},{"name":"log","req":"^0.4"}"#,
            false,
        ),
        // `Lib_C` style: names compare ignoring case and -/_.
        line("libc", "0.2.0", "", false),
        line("uses-libc", "1.0.0", &dep("LIBC", "normal"), false),
    ];
    let mut listing = RegistryListing::new();
    for f in &files {
        listing.add_index_file(f).unwrap();
    }
    listing
}

#[test]
fn index_all_and_top_by_dependents() {
    let listing = index_listing();
    assert!(!listing.has_downloads());
    assert_eq!(
        names(&listing.all()),
        [
            "app1@0.2.0",
            "app2@1.0.0",
            "app3@1.0.0",
            "libc@0.2.0",
            "log@0.4.0",
            "serde@1.0.1",
            "tester@1.0.0",
            "uses-libc@1.0.0"
        ]
    );
    // libc: app1, app2, app3, uses-libc = 4; serde: app1, app2, app3 = 3; log: 0 (app1's old
    // version, app3's yanked one and tester's dev dep do not count); the rest 0, by name.
    assert_eq!(
        names(&listing.top(4)),
        ["libc@0.2.0", "serde@1.0.1", "app1@0.2.0", "app2@1.0.0"]
    );
    let counts = listing.reverse_dependency_counts();
    assert_eq!(counts.get("libc"), Some(&4));
    assert_eq!(counts.get("serde"), Some(&3));
    assert_eq!(counts.get("log"), None);
    assert_eq!(
        listing.latest("serde"),
        Some(CrateId::Registry {
            name: "serde".into(),
            version: "1.0.1".parse().unwrap(),
            checksum: Some(ck('d')),
        })
    );
}

#[test]
fn index_version_selection() {
    let mut listing = RegistryListing::new();
    let file = [
        line("x", "1.0.0", "", false),
        line("x", "1.10.0", "", false),
        line("x", "1.9.0", "", false),
        line("x", "2.0.0-beta.1", "", false),
        line("x", "1.11.0", "", true),
        "".to_owned(),
    ]
    .join("\n");
    listing.add_index_file(&file).unwrap();
    // Idempotent.
    listing.add_index_file(&file).unwrap();
    listing
        .add_index_file(
            &[
                line("y", "0.1.0-a", "", false),
                line("y", "0.1.0-b", "", false),
            ]
            .join("\n"),
        )
        .unwrap();
    listing
        .add_index_file(&[line("z", "1.0.0", "", true)].join("\n"))
        .unwrap();
    assert_eq!(names(&listing.all()), ["x@1.10.0", "y@0.1.0-b"]);
    assert_eq!(listing.unselectable(), ["z"]);
    // An empty file adds nothing.
    listing.add_index_file("\n\n").unwrap();
    assert_eq!(listing.len(), 2);
}

#[test]
fn index_errors() {
    let cases: Vec<(String, &str)> = vec![
        (
            "{not json".into(),
            "index line 1: key must be a string at line 1 column 2",
        ),
        (
            format!(
                "{}\n{}",
                line("a", "1.0.0", "", false),
                line("b", "1.0.0", "", false)
            ),
            r#"index line 2: crate "b" differs from "a" earlier in the file"#,
        ),
        (
            line("a", "1.0", "", false),
            r#"index line 1: invalid version "1.0": unexpected end of input while parsing minor version number"#,
        ),
        (
            line("a", "1.0.0", &dep("b", "peer"), false),
            r#"index line 1: dependency "b" has unknown kind "peer" (expected normal, build or dev)"#,
        ),
        (
            r#"{"name":"a","vers":"1.0.0","deps":[],"cksum":"00"}"#.into(),
            r#"index line 1: checksum "00" is not 64 lowercase hex digits (sha256)"#,
        ),
        (
            r#"{"name":"a","vers":"1.0.0","deps":[]}"#.into(),
            "index line 1: missing field `cksum` at line 1 column 37",
        ),
        (
            line("_a", "1.0.0", "", false),
            r#"index line 1: invalid crate name "_a": must start with an ASCII letter"#,
        ),
    ];
    for (text, msg) in cases {
        let mut listing = RegistryListing::new();
        assert_eq!(listing.add_index_file(&text).unwrap_err().to_string(), msg);
        // A failed file adds nothing.
        assert!(listing.is_empty());
    }
}

fn numbered(n: usize) -> RegistryListing {
    let mut listing = RegistryListing::new();
    for i in 0..n {
        listing
            .add_index_file(&line(&format!("c{i:03}"), "1.0.0", "", false))
            .unwrap();
    }
    listing
}

#[test]
fn random_is_deterministic_and_uniformish() {
    let listing = numbered(100);
    let a = listing.random(10, 7);
    assert_eq!(a, listing.random(10, 7));
    assert_eq!(a.len(), 10);
    assert_eq!(registry_names(&a).len(), 10);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(a, sorted);
    assert_ne!(a, listing.random(10, 8));
    // Pinned: the stream of ChaCha8 for seed 7 must keep selecting these.
    assert_eq!(
        names(&a)
            .iter()
            .map(|s| s.trim_end_matches("@1.0.0"))
            .collect::<Vec<_>>(),
        PINNED_SEED_7
    );
    // n at or above the size gives everything.
    assert_eq!(listing.random(100, 1), listing.all());
    assert_eq!(listing.random(1000, 1), listing.all());
    assert!(listing.random(0, 1).is_empty());
    // Every crate is about equally likely: 4000 draws of 1 among 4.
    let small = numbered(4);
    let mut hits: HashMap<String, u32> = HashMap::new();
    for seed in 0..4000 {
        let pick = small.random(1, seed);
        *hits.entry(pick[0].to_string()).or_default() += 1;
    }
    assert_eq!(hits.len(), 4);
    for (name, count) in hits {
        assert!((850..=1150).contains(&count), "{name}: {count}");
    }
}

const PINNED_SEED_7: [&str; 10] = [
    "c001", "c006", "c007", "c023", "c027", "c035", "c044", "c057", "c076", "c090",
];

#[test]
fn select_dispatches() {
    let listing = numbered(5);
    assert_eq!(listing.select(&CrateSelection::All), Ok(listing.all()));
    assert_eq!(
        listing.select(&CrateSelection::Top { n: 2 }),
        Ok(listing.top(2))
    );
    assert_eq!(
        listing.select(&CrateSelection::Random { n: 2, seed: 3 }),
        Ok(listing.random(2, 3))
    );
    assert_eq!(
        listing.select(&CrateSelection::CrateList { name: "x".into() }),
        Err(SelectError::NotWholeRegistry)
    );
    assert_eq!(
        listing.select(&"serde".parse().unwrap()),
        Err(SelectError::NotWholeRegistry)
    );
    let listing = index_listing();
    assert_eq!(
        listing
            .select(&"rdeps:LOG".parse().unwrap())
            .map(|ids| names(&ids)),
        Ok(vec!["tester@1.0.0".to_owned()])
    );
    let cases = [
        (
            "rdeps:uses-libc",
            r#"no crate in the registry listing depends on "uses-libc""#,
        ),
        (
            "rdeps:nope",
            r#"crate "nope" is not in the registry listing"#,
        ),
    ];
    for (selection, message) in cases {
        let err = listing.select(&selection.parse().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), message, "{selection}");
    }
}

#[test]
fn index_rdeps_counts_normal_build_and_dev_dependencies() {
    let listing = index_listing();
    // (name asked, dependents): app1 (normal), app2 (build, renamed from `s`), app3 (its selected
    // version; the yanked one depends on log), tester (dev only). Never the crate itself, never a
    // dependency on another registry, never an older version's.
    let cases: [(&str, Option<&[&str]>); 6] = [
        (
            "serde",
            Some(&["app1@0.2.0", "app2@1.0.0", "app3@1.0.0", "tester@1.0.0"]),
        ),
        ("log", Some(&["tester@1.0.0"])),
        (
            "LIBC",
            Some(&["app1@0.2.0", "app2@1.0.0", "app3@1.0.0", "uses-libc@1.0.0"]),
        ),
        ("uses-libc", Some(&[])),
        ("app1", Some(&[])),
        ("nope", None),
    ];
    for (name, expected) in cases {
        let got = listing.rdeps(name).map(|ids| names(&ids));
        let expected = expected.map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, expected, "{name}");
    }
    // `top` still counts only normal and build dependencies.
    assert_eq!(listing.reverse_dependency_counts().get("log"), None);
}

/// A dump with `dependencies.csv`: versions 10/11 of serde, 20 of rand, 30 of anyhow, 40 of app.
fn dump_with_dependencies(dependencies: &str) -> Result<RegistryListing, RegistryError> {
    let crates = "id,name\n1,serde\n2,rand\n3,anyhow\n4,app\n";
    let versions = "id,crate_id,num,checksum,yanked\n\
                    10,1,1.0.0,,f\n11,1,0.9.0,,f\n20,2,0.8.5,,f\n30,3,1.0.0,,f\n40,4,1.0.0,,f\n";
    RegistryListing::from_dump(DbDump {
        crates: crates.as_bytes(),
        versions: versions.as_bytes(),
        crate_downloads: None,
        dependencies: Some(dependencies.as_bytes()),
    })
}

#[test]
fn db_dump_dependencies() {
    // app: serde (normal, twice), rand (build), anyhow (dev); rand: serde (dev) and itself;
    // serde 0.9.0 (not selected): anyhow.
    let deps = "id,version_id,crate_id,req,optional,kind,explicit_name\n\
                1,40,1,^1,f,0,\n2,40,1,^1,t,0,serde1\n3,40,2,^0.8,f,1,\n4,40,3,^1,f,2,\n\
                5,20,1,^1,f,2,\n6,20,2,^0.8,f,0,\n7,11,3,^1,f,0,\n";
    let listing = dump_with_dependencies(deps).unwrap();
    assert_eq!(
        names(&listing.rdeps("serde").unwrap()),
        ["app@1.0.0", "rand@0.8.5"]
    );
    assert_eq!(names(&listing.rdeps("anyhow").unwrap()), ["app@1.0.0"]);
    assert_eq!(names(&listing.rdeps("rand").unwrap()), ["app@1.0.0"]);
    assert!(listing.rdeps("app").unwrap().is_empty());
    // Without downloads, `top` ranks by normal and build dependents: serde 1 (app; rand's is
    // dev), rand 1 (app), then by name.
    assert_eq!(
        names(&listing.top(4)),
        ["rand@0.8.5", "serde@1.0.0", "anyhow@1.0.0", "app@1.0.0"]
    );
    let cases = [
        (
            "version_id,crate_id\n40,1\n",
            "dependencies.csv: the header has no `kind` column",
        ),
        (
            "version_id,crate_id,kind\n40,1,3\n",
            r#"dependencies.csv line 2: invalid kind "3": expected 0 (normal), 1 (build) or 2 (dev)"#,
        ),
        (
            "version_id,crate_id,kind\n40,9,0\n",
            r#"dependencies.csv line 2: crate id "9" is not in crates.csv"#,
        ),
    ];
    for (deps, message) in cases {
        assert_eq!(
            dump_with_dependencies(deps).unwrap_err().to_string(),
            message
        );
    }
    // A row of a version that is not selected is not looked at.
    assert!(dump_with_dependencies("version_id,crate_id,kind\n11,9,0\n").is_ok());
}

#[test]
fn sparse_paths() {
    let cases = [
        ("a", "1/a"),
        ("AB", "2/ab"),
        ("cfg", "3/c/cfg"),
        ("Serde", "se/rd/serde"),
        ("serde_json", "se/rd/serde_json"),
        ("rand", "ra/nd/rand"),
    ];
    for (name, path) in cases {
        assert_eq!(sparse_path(name), path, "{name}");
    }
}

fn index_file(lines: &[(&str, bool)]) -> String {
    lines
        .iter()
        .map(|(vers, yanked)| line("Xy", vers, &dep("serde", "peer"), *yanked))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn pick_versions() {
    let x = index_file(&[
        ("1.0.0", false),
        ("1.10.0", false),
        ("1.9.0", false),
        ("1.11.0", true),
        ("2.0.0-beta.1", false),
        ("1.2.3+build.5", false),
    ]);
    let pre = index_file(&[("0.1.0-a", false), ("0.1.0-b", false), ("0.1.0-c", true)]);
    let yanked = index_file(&[("1.0.0", true)]);
    // (file, asked, picked or error)
    let cases: Vec<(&str, Option<&str>, Result<&str, String>)> = vec![
        (&x, None, Ok("1.10.0")),
        (&x, Some("1.0.0"), Ok("1.0.0")),
        // a yanked version asked for by number
        (&x, Some("1.11.0"), Ok("1.11.0")),
        (&x, Some("2.0.0-beta.1"), Ok("2.0.0-beta.1")),
        (&x, Some("1.2.3"), Ok("1.2.3+build.5")),
        (&x, Some("1.2.3+build.5"), Ok("1.2.3+build.5")),
        (
            &x,
            Some("1.2.3+other"),
            Err(r#"crate "xy" has no version 1.2.3+other (newest: 1.10.0)"#.into()),
        ),
        (
            &x,
            Some("99.0.0"),
            Err(r#"crate "xy" has no version 99.0.0 (newest: 1.10.0)"#.into()),
        ),
        (&pre, None, Ok("0.1.0-b")),
        (&pre, Some("0.1.0-c"), Ok("0.1.0-c")),
        (
            &yanked,
            None,
            Err(r#"every version of crate "xy" is yanked; write xy@VERSION to build a yanked version"#
                .into()),
        ),
        (&yanked, Some("1.0.0"), Ok("1.0.0")),
        (
            &yanked,
            Some("2.0.0"),
            Err(r#"crate "xy" has no version 2.0.0 (every version is yanked)"#.into()),
        ),
        (
            "",
            None,
            Err(r#"crate "xy" has no version in the registry index"#.into()),
        ),
    ];
    for (file, asked, expected) in cases {
        let versions = parse_index_versions(file).unwrap();
        let asked_version = asked.map(|v| semver::Version::parse(v).unwrap());
        let got = pick("xy", &versions, asked_version.as_ref()).map_err(|e| e.to_string());
        let expected = expected.map(|v| CrateId::Registry {
            // the registry's spelling of the name, with the checksum
            name: "Xy".into(),
            version: v.parse().unwrap(),
            checksum: Some(ck('d')),
        });
        assert_eq!(got, expected, "{asked:?} of {file}");
    }
}

#[test]
fn parse_index_versions_reads_and_validates() {
    let versions = parse_index_versions(&index_file(&[("1.0.0", false), ("1.1.0", true)])).unwrap();
    assert_eq!(
        versions,
        [
            IndexVersion {
                name: "Xy".into(),
                version: "1.0.0".parse().unwrap(),
                checksum: ck('d'),
                yanked: false,
            },
            IndexVersion {
                name: "Xy".into(),
                version: "1.1.0".parse().unwrap(),
                checksum: ck('d'),
                yanked: true,
            },
        ]
    );
    // The same line checks as a listing's (a dependency kind it does not know is not read).
    let bad = format!(
        "{}\n{}",
        line("a", "1.0.0", "", false),
        line("b", "1.0.0", "", false)
    );
    assert_eq!(
        parse_index_versions(&bad).unwrap_err().to_string(),
        r#"index line 2: crate "b" differs from "a" earlier in the file"#
    );
    assert_eq!(
        parse_index_versions(&line("a", "1", "", false))
            .unwrap_err()
            .to_string(),
        r#"index line 1: invalid version "1": unexpected end of input while parsing major version number"#
    );
}

#[test]
fn dependency_counts_are_of_the_selected_version() {
    let listing = index_listing();
    // app1@0.2.0: serde, libc (its older version's `log` does not count)
    assert_eq!(listing.dependency_count("app1", false), Some(2));
    // app3: the yanked 2.0.0 is not selected; 1.0.0 has serde and libc (twice, counted once)
    assert_eq!(listing.dependency_count("app3", false), Some(2));
    // tester: dev-dependencies only
    assert_eq!(listing.dependency_count("tester", false), Some(0));
    assert_eq!(listing.dependency_count("tester", true), Some(2));
    assert_eq!(listing.dependency_count("unknown", true), None);
}
