//! Crate names against the registry, through a running master: the live index (a sparse index of
//! the test's own, served over HTTP by `caldera_master::sparse::testing::TestIndex`) checks and
//! pins names at create; a registry listing serves `rdeps:NAME` at start. One opt-in test reads
//! the real index (`cargo test -p caldera-master --test it real_index -- --ignored`).

use std::sync::Arc;
use std::time::Duration;

use caldera_core::registry::RegistryListing;
use caldera_master::sparse::SparseIndex;
use caldera_master::sparse::testing::{TestIndex, index_line};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Setup, TestMaster};

/// A test index with: serde (a yanked newest, a prerelease newer still), rand, itoa,
/// pre-only (prereleases only), gone (every version yanked) and `Mixed_Case`.
async fn index(dir: &std::path::Path) -> TestIndex {
    let index = TestIndex::start(dir).await;
    index.publish(
        "serde",
        &[
            ("1.0.0", false),
            ("1.0.219", false),
            ("1.0.220", true),
            ("2.0.0-rc.1", false),
        ],
    );
    index.publish("rand", &[("0.8.5", false), ("0.9.0", false)]);
    index.publish("itoa", &[("1.0.14", false), ("1.0.15", false)]);
    index.publish(
        "pre-only",
        &[("0.1.0-alpha.1", false), ("0.1.0-alpha.2", false)],
    );
    index.publish("gone", &[("1.0.0", true)]);
    index.publish("Mixed_Case", &[("0.3.0", false)]);
    index
}

struct Fixture {
    master: TestMaster,
    index: TestIndex,
    _dir: tempfile::TempDir,
}

/// A master whose live index is a fresh test index (files reused for `ttl`).
async fn start(ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let index = index(dir.path()).await;
    let live = SparseIndex::with_limits(&index.url(), ttl, 4).unwrap();
    let master = TestMaster::start(Setup {
        index: Some(Arc::new(live)),
        ..Setup::default()
    })
    .await;
    Fixture {
        master,
        index,
        _dir: dir,
    }
}

impl Fixture {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let body = body.to_string();
        let token = Some(self.master.operator.as_str());
        self.master
            .call(Method::POST, path, token, Some(&body))
            .await
    }

    async fn snapshot(&self) -> Value {
        self.master
            .snapshot_of(&[
                "experiments",
                "crate_lists",
                "crate_list_entries",
                "jobs",
                "crates",
            ])
            .await
    }
}

fn experiment(name: &str, crates: Value) -> Value {
    json!({"name": name, "start": "stable", "end": "nightly", "crates": crates})
}

/// `name@version` of each job of experiment `name`, sorted.
async fn jobs_of(master: &TestMaster, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.name || '@' || c.version FROM jobs j JOIN crates c ON c.id = j.crate_id \
         JOIN experiments e ON e.id = j.experiment_id WHERE e.name = $1 ORDER BY 1",
    )
    .bind(name)
    .fetch_all(&master.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn bare_names_are_pinned_to_the_newest_version_at_create() {
    let f = start(Duration::from_secs(300)).await;
    let (status, body) = f
        .post(
            "/api/v1/experiments",
            experiment(
                "pinned",
                json!("serde,rand@0.8.5,pre-only,mixed_case,serde@1.0.220,git:https://example.com/x.git,serde@1.0.219"),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The newest release (1.0.220 is yanked, 2.0.0-rc.1 a prerelease); a prerelease only when
    // there is nothing else; the registry's spelling; a yanked version asked for by number;
    // `serde@1.0.219` named twice kept once; other kinds of entries as written.
    let pinned = json!([
        "serde@1.0.219",
        "rand@0.8.5",
        "pre-only@0.1.0-alpha.2",
        "Mixed_Case@0.3.0",
        "serde@1.0.220",
        "git:https://example.com/x.git"
    ]);
    assert_eq!(body["crates"], json!({"kind": "list", "crates": pinned}));
    let (_, stored) = f
        .master
        .call(
            Method::GET,
            "/api/v1/experiments/pinned",
            Some(&f.master.viewer),
            None,
        )
        .await;
    assert_eq!(stored["crates"]["crates"], pinned);

    // Starting needs no lookup: the index can be down.
    f.index.set_failing(true);
    let (status, body) = f.post("/api/v1/experiments/pinned/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jobs_of(&f.master, "pinned").await,
        [
            "Mixed_Case@0.3.0",
            "https://example.com/x.git@HEAD",
            "pre-only@0.1.0-alpha.2",
            "rand@0.8.5",
            "serde@1.0.219",
            "serde@1.0.220"
        ]
    );
}

#[tokio::test]
async fn unknown_crates_and_versions_are_refused_at_create_and_nothing_is_stored() {
    let f = start(Duration::from_secs(300)).await;
    let url = f.index.url();
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!("serde,itoa@99.0.0"),
            "crates[1]",
            r#"crate "itoa" has no version 99.0.0 (newest: 1.0.15)"#.into(),
        ),
        (
            json!({"kind": "list", "crates": ["nope"]}),
            "crates[0]",
            format!(r#"crate "nope" is not in the registry index at {url}"#),
        ),
        (
            json!("rand,gone"),
            "crates[1]",
            r#"every version of crate "gone" is yanked; write gone@VERSION to build a yanked version"#
                .into(),
        ),
        (
            json!("gone@2.0.0"),
            "crates[0]",
            r#"crate "gone" has no version 2.0.0 (every version is yanked)"#.into(),
        ),
        // serde-json is not serde_json: the index's paths ignore case, not `-`/`_`
        (
            json!("Serde_Json@1.0.0,serde@1.0.1,rand"),
            "crates[0]",
            format!(
                r#"crate "Serde_Json" is not in the registry index at {url}; 1 more invalid: crates[1]: crate "serde" has no version 1.0.1 (newest: 1.0.219)"#
            ),
        ),
    ];
    let before = f.snapshot().await;
    for (crates, field, message) in &cases {
        for path in ["/api/v1/experiments", "/api/v1/crate-lists"] {
            let body = match path {
                "/api/v1/crate-lists" if crates.is_string() => {
                    let list: Vec<&str> = crates.as_str().unwrap().split(',').collect();
                    json!({"name": "l", "crates": list})
                }
                "/api/v1/crate-lists" => json!({"name": "l", "crates": crates["crates"]}),
                _ => experiment("refused", crates.clone()),
            };
            let (status, body) = f.post(path, body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path} {crates}");
            assert_eq!(body["error"]["code"], "invalid-field");
            assert_eq!(body["error"]["field"], *field, "{path} {crates}");
            assert_eq!(body["error"]["message"], *message, "{path} {crates}");
            assert_eq!(f.snapshot().await, before, "{path} {crates}");
        }
    }

    // Editing a queued experiment's crates is checked (and pinned) the same way.
    let (status, _) = f
        .post("/api/v1/experiments", experiment("edited", json!("rand")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = f.snapshot().await;
    let token = Some(f.master.operator.as_str());
    let (status, body) = f
        .master
        .call(
            Method::PATCH,
            "/api/v1/experiments/edited",
            token,
            Some(r#"{"crates":"itoa,itoa@99.0.0"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "crates[1]");
    assert_eq!(f.snapshot().await, before);
    let (status, body) = f
        .master
        .call(
            Method::PATCH,
            "/api/v1/experiments/edited",
            token,
            Some(r#"{"crates":"itoa"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["crates"]["crates"], json!(["itoa@1.0.15"]));
}

#[tokio::test]
async fn an_index_that_cannot_answer_is_a_503_and_nothing_is_stored() {
    let f = start(Duration::from_secs(300)).await;
    let url = f.index.url();
    let before = f.snapshot().await;
    f.index.set_failing(true);
    let (status, body) = f
        .post("/api/v1/experiments", experiment("down", json!("serde")))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "registry-unavailable");
    assert_eq!(
        body["error"]["message"],
        format!(
            "the registry index at {url} is unreachable: GET {url}se/rd/serde: 503 Service Unavailable"
        )
    );
    let (status, _) = f
        .post(
            "/api/v1/crate-lists",
            json!({"name": "l", "crates": ["rand"]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(f.snapshot().await, before);

    // A server that is gone: the same, with the connection's error.
    let Fixture {
        master,
        index,
        _dir,
    } = f;
    index.stop().await;
    let (status, body) = master
        .call(
            Method::POST,
            "/api/v1/experiments",
            Some(&master.operator),
            Some(&experiment("gone", json!("serde")).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the registry index at {url} is unreachable: GET {url}se/rd/serde: "
        )),
        "{message}"
    );
}

#[tokio::test]
async fn index_files_are_cached_for_their_ttl() {
    let f = start(Duration::from_secs(300)).await;
    let crates = json!("serde,rand,itoa@1.0.14,nope@1.0.0");
    let (status, _) = f
        .post("/api/v1/experiments", experiment("c1", crates.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // one request per distinct crate, a crate that is not there included
    assert_eq!(f.index.requests(), 4);
    let (status, _) = f
        .post(
            "/api/v1/experiments",
            experiment("c2", json!("serde,rand,itoa@1.0.14")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(f.index.requests(), 4, "served from the cache");

    // With no TTL every create asks again, and sees what was published meanwhile.
    let f = start(Duration::ZERO).await;
    let (status, body) = f
        .post("/api/v1/experiments", experiment("n1", json!("rand")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["crates"]["crates"], json!(["rand@0.9.0"]));
    f.index.publish(
        "rand",
        &[("0.8.5", false), ("0.9.0", false), ("0.9.1", false)],
    );
    let (_, body) = f
        .post("/api/v1/experiments", experiment("n2", json!("rand")))
        .await;
    assert_eq!(body["crates"]["crates"], json!(["rand@0.9.1"]));
    assert_eq!(f.index.requests(), 2);
}

#[tokio::test]
async fn crate_lists_keep_bare_names_which_resolve_when_an_experiment_starts() {
    let f = start(Duration::ZERO).await;
    let (status, body) = f
        .post(
            "/api/v1/crate-lists",
            json!({"name": "mine", "crates": ["rand", "itoa@1.0.14"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["crates"], json!(["rand", "itoa@1.0.14"]));
    let (status, body) = f
        .post(
            "/api/v1/experiments",
            experiment("from-list", json!("list:mine")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A release between creating the list and starting: the start takes it.
    f.index.publish(
        "rand",
        &[("0.8.5", false), ("0.9.0", false), ("0.9.1", false)],
    );
    let (status, body) = f
        .post("/api/v1/experiments/from-list/start", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        jobs_of(&f.master, "from-list").await,
        ["itoa@1.0.14", "rand@0.9.1"]
    );

    // A bare name that no longer resolves when a list's experiment starts: 422 naming the list's
    // entry, and the experiment stays queued without jobs.
    let (status, _) = f
        .post(
            "/api/v1/crate-lists",
            json!({"name": "soon-gone", "crates": ["itoa", "rand"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = f
        .post(
            "/api/v1/experiments",
            experiment("late", json!("list:soon-gone")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    f.index.publish("rand", &[("0.9.1", true)]);
    let before = f.snapshot().await;
    let (status, body) = f.post("/api/v1/experiments/late/start", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["field"],
        r#"crates (crate list "soon-gone", crates[1])"#
    );
    assert_eq!(
        body["error"]["message"],
        r#"every version of crate "rand" is yanked; write rand@VERSION to build a yanked version"#
    );
    assert_eq!(f.snapshot().await, before);
}

#[tokio::test]
async fn without_a_live_index_names_are_stored_as_written() {
    let master = TestMaster::start(Setup::default()).await;
    let token = Some(master.operator.as_str());
    let body = experiment("offline", json!("serde,nope@9.9.9")).to_string();
    let (status, created) = master
        .call(Method::POST, "/api/v1/experiments", token, Some(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["crates"]["crates"], json!(["serde", "nope@9.9.9"]));
    let (status, body) = master
        .call(
            Method::POST,
            "/api/v1/experiments/offline/start",
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["error"]["message"],
        "crate \"serde\" has no version: write serde@VERSION, or start the master with the live \
         index (--registry-url) or a registry listing (--registry-dump / --registry-index) to \
         pick the newest"
    );
}

/// A listing in which app1 (normal), app2 (build), tester (dev) depend on serde, and app1's
/// older version on log.
fn listing() -> RegistryListing {
    let mut listing = RegistryListing::new();
    let files = [
        index_line("serde", "1.0.219", &[], false),
        [
            index_line("app1", "0.1.0", &[("log", "normal")], false),
            index_line("app1", "0.2.0", &[("serde", "normal")], false),
        ]
        .join("\n"),
        index_line("app2", "1.0.0", &[("serde", "build")], false),
        index_line("tester", "1.0.0", &[("serde", "dev")], false),
        index_line("log", "0.4.0", &[], false),
    ];
    for file in files {
        listing.add_index_file(&file).unwrap();
    }
    listing
}

#[tokio::test]
async fn rdeps_selects_the_dependents_from_the_listing_at_start() {
    let master = TestMaster::start(Setup {
        registry: Some(Arc::new(listing())),
        ..Setup::default()
    })
    .await;
    let token = Some(master.operator.as_str());
    for (name, crates) in [
        ("of-serde", json!("rdeps:serde")),
        ("of-log", json!({"kind": "rdeps", "crate": "log"})),
        ("of-nope", json!("rdeps:nope")),
    ] {
        let body = experiment(name, crates).to_string();
        let (status, created) = master
            .call(Method::POST, "/api/v1/experiments", token, Some(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }
    let (status, body) = master
        .call(
            Method::POST,
            "/api/v1/experiments/of-serde/start",
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["crates"], json!({"kind": "rdeps", "crate": "serde"}));
    assert_eq!(
        jobs_of(&master, "of-serde").await,
        ["app1@0.2.0", "app2@1.0.0", "tester@1.0.0"]
    );
    for (name, message) in [
        (
            "of-log",
            r#"no crate in the registry listing depends on "log""#,
        ),
        ("of-nope", r#"crate "nope" is not in the registry listing"#),
    ] {
        let (status, body) = master
            .call(
                Method::POST,
                &format!("/api/v1/experiments/{name}/start"),
                token,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], "crates");
        assert_eq!(body["error"]["message"], message);
        assert!(jobs_of(&master, name).await.is_empty());
    }
}

/// The real index (crates.io), opt-in: `cargo test -p caldera-master --test it real_index --
/// --ignored`.
#[tokio::test]
#[ignore = "reads https://index.crates.io/ over the network"]
async fn real_index() {
    let live = SparseIndex::new(caldera_master::sparse::DEFAULT_URL).unwrap();
    let master = TestMaster::start(Setup {
        index: Some(Arc::new(live)),
        ..Setup::default()
    })
    .await;
    let token = Some(master.operator.as_str());
    let body = experiment("real", json!("serde,rand@0.8.5,anyhow")).to_string();
    let (status, created) = master
        .call(Method::POST, "/api/v1/experiments", token, Some(&body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let crates = created["crates"]["crates"].as_array().unwrap();
    assert_eq!(crates[1], "rand@0.8.5");
    for (i, name) in [(0, "serde@1."), (2, "anyhow@1.")] {
        assert!(crates[i].as_str().unwrap().starts_with(name), "{created}");
    }
    let body = experiment("bad", json!("serde,itoa@99.0.0")).to_string();
    let (status, refused) = master
        .call(Method::POST, "/api/v1/experiments", token, Some(&body))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["field"], "crates[1]");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(r#"crate "itoa" has no version 99.0.0 (newest: 1."#),
        "{message}"
    );
    let (status, body) = master
        .call(Method::POST, "/api/v1/experiments/real/start", token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
