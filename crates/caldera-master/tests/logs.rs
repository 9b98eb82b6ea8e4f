//! `GET /api/v1/experiments/{name}/results/{crate}/{toolchain}/log` and the deletion of an experiment's
//! objects, through a running master (real TCP, real Postgres) over both storage backends: a local
//! directory and a real S3-compatible server (`caldera_storage::testing::S3Server`).

mod common;

use caldera_core::crates::CrateId;
use caldera_db::jobs::{self, Completion, SideRecord};
use caldera_storage::{PutOptions, keys};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use common::{Backend, Setup, TestMaster};

/// The test's master ([`TestMaster`]) and what these tests do with it.
struct Master(TestMaster);

impl std::ops::Deref for Master {
    type Target = TestMaster;
    fn deref(&self) -> &TestMaster {
        &self.0
    }
}

impl std::ops::DerefMut for Master {
    fn deref_mut(&mut self) -> &mut TestMaster {
        &mut self.0
    }
}

impl Master {
    async fn start(backend: Backend) -> Master {
        Master(
            TestMaster::start(Setup {
                backend,
                ..Setup::default()
            })
            .await,
        )
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.0.call(method, path, token, None).await
    }

    /// GET a log as the viewer: status, content type, body bytes.
    async fn log(&self, path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
        let resp = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.viewer)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, ct, resp.bytes().await.unwrap().to_vec())
    }

    /// Creates and starts an experiment (stable vs nightly) over `crates` (crate specs).
    async fn experiment(&self, name: &str, crates: &[&str]) {
        let body = json!({"name": name, "start": "stable", "end": "nightly", "crates": {"kind": "list", "crates": crates}});
        let resp = self
            .http
            .post(format!("{}/api/v1/experiments", self.base))
            .bearer_auth(&self.operator)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{:?}",
            resp.text().await
        );
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/api/v1/experiments/{name}/start"),
                Some(&self.operator),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }

    /// Plays a worker: claims every queued job of running experiments, stores the logs `log` gives
    /// for each (crate id, side) with `put_log` under the scheme's key, and completes those jobs for
    /// which `complete` says so, through the same fenced completion the worker service uses.
    async fn run_jobs(
        &self,
        log: impl Fn(&str, &str) -> Option<Vec<u8>>,
        complete: impl Fn(&str) -> bool,
    ) {
        let now = chrono::Utc::now();
        let worker = caldera_db::workers::connect(
            &self.db.pool,
            &format!("w-{}", Uuid::new_v4().simple()),
            "test",
            &[],
            4,
            self.worker_token_id,
            now,
        )
        .await
        .unwrap();
        let claimed = jobs::claim(
            &self.db.pool,
            worker,
            &[],
            1000,
            now,
            chrono::Duration::hours(1),
        )
        .await
        .unwrap();
        assert!(!claimed.is_empty());
        let mut batch = Vec::new();
        for c in claimed.into_iter().filter(|c| complete(&c.crate_id)) {
            let mut sides = Vec::new();
            for (side, toolchain) in [("start", "stable"), ("end", "nightly")] {
                let log_key = match log(&c.crate_id, side) {
                    Some(bytes) => {
                        let key = keys::log(&c.experiment, toolchain, &c.crate_id).unwrap();
                        caldera_storage::put_log(&*self.store, &key, bytes)
                            .await
                            .unwrap();
                        Some(key.to_string())
                    }
                    None => None,
                };
                sides.push(SideRecord {
                    cache_key: None,
                    outcome: if log_key.is_some() {
                        caldera_core::outcome::Outcome::TestPass
                    } else {
                        caldera_core::outcome::Outcome::Error {
                            reason: "docker went away".into(),
                        }
                    },
                    log_key,
                    duration_ms: 1,
                    peak_memory_bytes: 1,
                    steps: vec![],
                });
            }
            let end = sides.pop().unwrap();
            let start = sides.pop().unwrap();
            batch.push(Completion {
                job_id: c.job_id,
                lease_token: c.lease_token,
                worker,
                start,
                end,
            });
        }
        let out = jobs::complete(&self.db.pool, &batch, now, 1).await.unwrap();
        assert_eq!(out.accepted.len(), batch.len());
    }

    async fn count_objects(&self, prefix: &str) -> usize {
        self.store
            .list(&caldera_storage::ObjectKey::new(prefix).unwrap())
            .await
            .unwrap()
            .len()
    }
}

/// Percent-encodes every byte outside `[A-Za-z0-9._~-]`, as a client building the URL would.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `len` bytes that zstd cannot compress (xorshift), so the stored object is as large as the log.
fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

const ANSI_LOG: &str = "\x1b[1m\x1b[32m   Compiling\x1b[0m serde v1.0.0\n\x1b[0m\x1b[1m\x1b[38;5;9merror[E0308]\x1b[0m\x1b[0m\x1b[1m: mismatched types\x1b[0m\n  → naïve ünïcödé ✓\n";
const GIT: &str = "git:https://example.com/org/x.git#0123abcd";

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: &str, has: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(has), "{message:?} should mention {has:?}");
}

async fn serves_logs(backend: Backend) {
    let m = Master::start(backend).await;
    m.experiment("logs", &["serde@1.0.0", GIT]).await;
    // Large enough for a multipart upload on S3 (parts of 5 MiB).
    let big = incompressible(11 << 20, 7);
    let big2 = big.clone();
    m.run_jobs(
        move |krate, side| match (krate, side) {
            ("reg:serde@1.0.0", "start") => Some(ANSI_LOG.as_bytes().to_vec()),
            ("reg:serde@1.0.0", "end") => Some(big2.clone()),
            (_, "start") => Some(Vec::new()),
            _ => Some(format!("log of {krate} {side}\n").into_bytes()),
        },
        |_| true,
    )
    .await;

    let path =
        |krate: &str, side: &str| format!("/experiments/logs/results/{}/{side}/log", enc(krate));
    let (status, ct, body) = m.log(&path("reg:serde@1.0.0", "start")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(String::from_utf8(body).unwrap(), ANSI_LOG, "ANSI kept");

    let (status, _, body) = m.log(&path("reg:serde@1.0.0", "end")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == big, "the 11 MiB log comes back byte for byte");

    // `:` and `@` may also be left unencoded in a path segment.
    let (status, _, body) = m
        .log("/experiments/logs/results/reg:serde@1.0.0/start/log")
        .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, ANSI_LOG.as_bytes())
    );

    // A git id carries `/` and `#`: percent-encoded, it is one path segment.
    let (status, _, body) = m.log(&path(GIT, "end")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("log of {GIT} end\n").into_bytes());
    let (status, _, body) = m.log(&path(GIT, "start")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0), "an empty log");

    // Nosniff, and the role rules of every read.
    let resp = m
        .http
        .get(format!(
            "{}/api/v1{}",
            m.base,
            path("reg:serde@1.0.0", "start")
        ))
        .bearer_auth(&m.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let url = format!("/api/v1{}", path("reg:serde@1.0.0", "start"));
    let (status, body) = m.call(Method::GET, &url, None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "authorization",
        "bearer",
    );
    let (status, body) = m.call(Method::GET, &url, Some(&m.worker)).await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "authorization",
        "worker",
    );

    // The route is documented.
    let (_, doc) = m.call(Method::GET, "/api/v1/openapi.json", None).await;
    let op = &doc["paths"]["/api/v1/experiments/{name}/results/{crate}/{toolchain}/log"]["get"];
    assert!(
        op["responses"]["200"]["content"]["text/plain; charset=utf-8"].is_object(),
        "{op}"
    );
}

/// Some of these tests stop and restart S3 servers; a stopped server frees its port, and a server
/// started by a test running in parallel could take it and answer in its place. So they run one at
/// a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_logs_from_a_local_directory() {
    let _serial = SERIAL.lock().await;
    serves_logs(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_logs_from_s3() {
    let _serial = SERIAL.lock().await;
    serves_logs(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_what_is_wrong_or_missing() {
    let _serial = SERIAL.lock().await;
    let m = Master::start(Backend::Local).await;
    m.experiment("errs", &["serde@1.0.0", "rand@0.8.5", "libc@0.2.0"])
        .await;
    // serde: both logs; rand: its end side has no log (an infrastructure error); libc: not finished.
    m.run_jobs(
        |krate, side| (krate == "reg:serde@1.0.0" || side == "start").then(|| b"ok\n".to_vec()),
        |krate| krate != "reg:libc@0.2.0",
    )
    .await;
    let mr = &m;
    let get = |path: String| async move {
        mr.call(
            Method::GET,
            &format!("/api/v1/experiments{path}"),
            Some(&mr.viewer),
        )
        .await
    };
    let ok = get("/errs/results/reg:serde@1.0.0/end/log".into()).await;
    assert_eq!(ok, (StatusCode::OK, Value::String("ok\n".into())));

    for (path, status, field, has) in [
        (
            "/nope/results/reg:serde@1.0.0/end/log",
            StatusCode::NOT_FOUND,
            "name",
            "experiment \"nope\" not found",
        ),
        (
            "/errs/results/reg:serde@9.9.9/end/log",
            StatusCode::NOT_FOUND,
            "crate",
            "`reg:serde@9.9.9` is not part of experiment",
        ),
        (
            "/errs/results/reg:libc@0.2.0/start/log",
            StatusCode::NOT_FOUND,
            "toolchain",
            "no result for the start toolchain yet",
        ),
        (
            "/errs/results/reg:rand@0.8.5/end/log",
            StatusCode::NOT_FOUND,
            "log",
            "has no log",
        ),
        (
            "/errs/results/crates:serde@1.0.0/end/log",
            StatusCode::BAD_REQUEST,
            "crate",
            "expected NAME@VERSION, git:URL#REV or path:/ABS/DIR",
        ),
        (
            "/errs/results/serde@9.9.9/end/log",
            StatusCode::NOT_FOUND,
            "crate",
            "`reg:serde@9.9.9` is not part of experiment",
        ),
        (
            "/errs/results/tokio/end/log",
            StatusCode::NOT_FOUND,
            "crate",
            "experiment \"errs\" has no registry crate named `tokio`",
        ),
        (
            "/nope/results/serde/end/log",
            StatusCode::NOT_FOUND,
            "name",
            "experiment \"nope\" not found",
        ),
        (
            "/nope/results/reg:serde@1.0.0/stable/log",
            StatusCode::NOT_FOUND,
            "name",
            "experiment \"nope\" not found",
        ),
        (
            "/errs/results/reg:serde@1.0.0/beta/log",
            StatusCode::BAD_REQUEST,
            "toolchain",
            "unknown side \"beta\"; expected `start`, `end`, or a side's toolchain (`stable` for start, `nightly` for end)",
        ),
        (
            "/errs/results/reg:serde/end/log",
            StatusCode::BAD_REQUEST,
            "crate",
            "NAME@VERSION",
        ),
        (
            "/errs/results/reg:serde@1.0/end/log",
            StatusCode::BAD_REQUEST,
            "crate",
            "invalid crate id",
        ),
        (
            "/errs/results/reg%3Ase%2Frde%401.0.0/end/log",
            StatusCode::BAD_REQUEST,
            "crate",
            "invalid crate id",
        ),
        (
            "/errs/results/reg:serde@1.0.0/middle/log",
            StatusCode::BAD_REQUEST,
            "toolchain",
            "expected `start`, `end`, or a side's toolchain",
        ),
        (
            "/errs/results/reg:serde@1.0.0/Start/log",
            StatusCode::BAD_REQUEST,
            "toolchain",
            "\"Start\"",
        ),
        (
            "/errs/results/reg%FF/end/log",
            StatusCode::BAD_REQUEST,
            "path",
            "UTF-8",
        ),
    ] {
        let (s, body) = get(path.into()).await;
        assert_error(s, &body, status, field, has);
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    // A crate that does not parse is refused before the experiment is even looked up.
    let (s, body) = get("/nope/results/non%20sense/end/log".into()).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "crate", "non sense");

    // A result whose object vanished behind the master's back: 404 on `log`, not a 500 or an empty 200.
    let key = keys::log("errs", "stable", "reg:serde@1.0.0").unwrap();
    std::fs::remove_file(m.dir.path().join("objects").join(key.as_str())).unwrap();
    let (s, body) = get("/errs/results/reg:serde@1.0.0/start/log".into()).await;
    assert_error(
        s,
        &body,
        StatusCode::NOT_FOUND,
        "log",
        "missing from object storage",
    );

    // A key outside the experiment's prefix (as a buggy or hostile worker could report) is never
    // served, even though the object exists.
    m.experiment("other", &["serde@1.0.0"]).await;
    m.run_jobs(|_, _| Some(b"other's log\n".to_vec()), |_| true)
        .await;
    sqlx::query(
        "UPDATE results SET log_key = $1 FROM experiments e
         WHERE e.id = results.experiment_id AND e.name = 'errs' AND results.toolchain = 'end'",
    )
    .bind(
        keys::log("other", "nightly", "reg:serde@1.0.0")
            .unwrap()
            .as_str(),
    )
    .execute(&m.db.pool)
    .await
    .unwrap();
    let (s, body) = get("/errs/results/reg:serde@1.0.0/end/log".into()).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(!body.to_string().contains("other's log"), "{body}");
}

/// Every spelling of a crate finds its log: as typed in the crate list (`serde@1.0.0`), as
/// printed (`reg:serde@1.0.0`), or by its bare name; and the side by `start`/`end` or its
/// toolchain's name. When both sides use the same toolchain, its name is ambiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_crate_and_a_side_finds_the_log() {
    let _serial = SERIAL.lock().await;
    let m = Master::start(Backend::Local).await;
    m.experiment("spell", &["serde@1.0.0", "rand@0.8.5"]).await;
    m.run_jobs(
        |krate, side| Some(format!("{krate} {side}\n").into_bytes()),
        |_| true,
    )
    .await;
    for (krate, side, want) in [
        ("reg:serde@1.0.0", "end", "reg:serde@1.0.0 end\n"),
        ("serde@1.0.0", "end", "reg:serde@1.0.0 end\n"),
        ("serde", "end", "reg:serde@1.0.0 end\n"),
        ("rand", "start", "reg:rand@0.8.5 start\n"),
        ("serde", "stable", "reg:serde@1.0.0 start\n"),
        ("rand@0.8.5", "nightly", "reg:rand@0.8.5 end\n"),
        ("reg:rand@0.8.5", "stable", "reg:rand@0.8.5 start\n"),
    ] {
        let (status, _, body) = m
            .log(&format!(
                "/experiments/spell/results/{}/{side}/log",
                enc(krate)
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{krate} {side}");
        assert_eq!(String::from_utf8_lossy(&body), want, "{krate} {side}");
    }

    // a calibration: stable on both sides, so `stable` names no one side
    let body = json!({"name": "calib", "start": "stable", "end": "stable", "calibration": true,
        "crates": {"kind": "list", "crates": ["serde@1.0.0"]}});
    let resp = m
        .http
        .post(format!("{}/api/v1/experiments", m.base))
        .bearer_auth(&m.operator)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (s, v) = m
        .call(
            Method::GET,
            "/api/v1/experiments/calib/results/serde/stable/log",
            Some(&m.viewer),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::BAD_REQUEST,
        "toolchain",
        "both sides use the toolchain \"stable\"; say `start` or `end`",
    );
}

/// A registry id without its checksum finds the crate an experiment resolved with one; with two
/// such crates the id is ambiguous and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ids_match_with_or_without_checksum() {
    let _serial = SERIAL.lock().await;
    let m = Master::start(Backend::Local).await;
    let body =
        json!({"name": "sums", "start": "stable", "end": "nightly", "crates": "serde@1.0.0"});
    let resp = m
        .http
        .post(format!("{}/api/v1/experiments", m.base))
        .bearer_auth(&m.operator)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Start it the way the master does, but with crates resolved with checksums (as from a registry
    // listing), two of them sharing a name and version.
    let sum = |c: char| c.to_string().repeat(64);
    let ids: Vec<CrateId> = [
        format!("reg:serde@1.0.0#{}", sum('a')),
        format!("reg:rand@0.8.5#{}", sum('b')),
        format!("reg:rand@0.8.5#{}", sum('c')),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut pending = caldera_db::experiments::begin_action(
        &m.db.pool,
        "sums",
        caldera_core::lifecycle::ExperimentAction::Start,
    )
    .await
    .unwrap();
    jobs::create_for_experiment(&mut pending.tx, pending.current.id, &ids)
        .await
        .unwrap();
    pending.commit().await.unwrap();
    m.run_jobs(
        |krate, side| Some(format!("{krate} {side}").into_bytes()),
        |_| true,
    )
    .await;

    let with = format!("reg:serde@1.0.0#{}", sum('a'));
    for id in ["reg:serde@1.0.0", with.as_str()] {
        let (status, _, body) = m
            .log(&format!("/experiments/sums/results/{}/end/log", enc(id)))
            .await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(body, format!("{with} end").into_bytes());
    }
    let (s, body) = m
        .call(
            Method::GET,
            "/api/v1/experiments/sums/results/reg:rand@0.8.5/end/log",
            Some(&m.viewer),
        )
        .await;
    assert_error(
        s,
        &body,
        StatusCode::BAD_REQUEST,
        "crate",
        "give the checksum",
    );
    let (s, body) = m
        .call(
            Method::GET,
            &format!(
                "/api/v1/experiments/sums/results/{}/end/log",
                enc(&format!("reg:serde@1.0.0#{}", sum('d')))
            ),
            Some(&m.viewer),
        )
        .await;
    assert_error(
        s,
        &body,
        StatusCode::NOT_FOUND,
        "crate",
        "is not part of experiment",
    );
}

/// An unreachable store is a 503; a store that fails in the middle of a download cuts the response
/// off, so the client sees an error instead of a silently truncated log — which also shows the log is
/// streamed, not read whole before the response starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outages_are_503_and_cut_downloads_visibly() {
    let _serial = SERIAL.lock().await;
    let mut m = Master::start(Backend::S3).await;
    m.experiment("outage", &["serde@1.0.0"]).await;
    const LEN: usize = 16 << 20;
    m.run_jobs(
        |_, side| {
            Some(if side == "end" {
                incompressible(LEN, 3)
            } else {
                b"short\n".to_vec()
            })
        },
        |_| true,
    )
    .await;
    let start = "/api/v1/experiments/outage/results/reg:serde@1.0.0/start/log";
    let end = "/api/v1/experiments/outage/results/reg:serde@1.0.0/end/log";

    let s3 = m.s3.as_mut().unwrap();
    s3.stop().await;
    let (s, body) = m.call(Method::GET, start, Some(&m.viewer)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage-unavailable", "{body}");
    assert!(!body.to_string().contains("caldera-test-secret"), "{body}");

    let s3 = m.s3.as_mut().unwrap();
    s3.restart().await.unwrap();
    let (s, body) = m.call(Method::GET, start, Some(&m.viewer)).await;
    assert_eq!((s, body), (StatusCode::OK, Value::String("short\n".into())));

    let mut resp = m
        .http
        .get(format!("{}{end}", m.base))
        .bearer_auth(&m.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut received = resp.chunk().await.unwrap().unwrap().len();
    m.s3.as_mut().unwrap().stop().await;
    let failed = loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        failed,
        "the download ended normally after {received} of {LEN} bytes although storage went away"
    );
    assert!(received < LEN, "{received}");
}

async fn deleting_an_experiment_deletes_its_objects(backend: Backend) {
    let m = Master::start(backend).await;
    // `e1` must not take `e10`'s objects with it: prefixes match whole segments.
    for name in ["e1", "e10"] {
        m.experiment(name, &["serde@1.0.0", "rand@0.8.5"]).await;
    }
    m.run_jobs(
        |krate, side| Some(format!("{krate} {side}\n").into_bytes()),
        |_| true,
    )
    .await;
    for name in ["e1", "e10"] {
        let lock = keys::lockfile(name, "reg:serde@1.0.0").unwrap();
        m.store
            .put_bytes(&lock, "# lockfile\n".into(), PutOptions::default())
            .await
            .unwrap();
        let report = keys::report(name, "index.html").unwrap();
        m.store
            .put_bytes(&report, "<html></html>".into(), PutOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(m.count_objects("experiments/e1").await, 6);
    assert_eq!(m.count_objects("experiments/e10").await, 6);

    // A running experiment is refused (409) and keeps its objects.
    let (s, body) = m
        .call(Method::DELETE, "/api/v1/experiments/e1", Some(&m.operator))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(m.count_objects("experiments/e1").await, 6);
    // A viewer cannot delete.
    let (s, _) = m
        .call(Method::DELETE, "/api/v1/experiments/e1", Some(&m.viewer))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(m.count_objects("experiments/e1").await, 6);

    let (s, body) = m
        .call(
            Method::POST,
            "/api/v1/experiments/e1/abort",
            Some(&m.operator),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = m
        .call(Method::DELETE, "/api/v1/experiments/e1", Some(&m.operator))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(m.count_objects("experiments/e1").await, 0);
    assert_eq!(m.count_objects("experiments/e10").await, 6, "e10 untouched");
    let (s, body) = m
        .call(
            Method::GET,
            "/api/v1/experiments/e10/results/reg:rand@0.8.5/end/log",
            Some(&m.viewer),
        )
        .await;
    assert_eq!(
        (s, body),
        (StatusCode::OK, Value::String("reg:rand@0.8.5 end\n".into()))
    );
    let (s, body) = m
        .call(
            Method::GET,
            "/api/v1/experiments/e1/results/reg:rand@0.8.5/end/log",
            Some(&m.viewer),
        )
        .await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "name", "not found");
    // Nothing left: a second DELETE is a 404.
    let (s, body) = m
        .call(Method::DELETE, "/api/v1/experiments/e1", Some(&m.operator))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_experiment_deletes_its_objects_in_a_local_directory() {
    let _serial = SERIAL.lock().await;
    deleting_an_experiment_deletes_its_objects(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_experiment_deletes_its_objects_in_s3() {
    let _serial = SERIAL.lock().await;
    deleting_an_experiment_deletes_its_objects(Backend::S3).await;
}

/// Storage down during a DELETE: the rows go (no result can point at a deleted object), the
/// response is a 503 saying the objects remain, and DELETE again finishes the cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_interrupted_by_a_storage_outage_is_finished_by_the_next() {
    let _serial = SERIAL.lock().await;
    let mut m = Master::start(Backend::S3).await;
    m.experiment("half", &["serde@1.0.0"]).await;
    m.run_jobs(|_, _| Some(b"log\n".to_vec()), |_| true).await;
    let (s, _) = m
        .call(
            Method::POST,
            "/api/v1/experiments/half/abort",
            Some(&m.operator),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m.count_objects("experiments/half").await, 2);

    m.s3.as_mut().unwrap().stop().await;
    let (s, body) = m
        .call(
            Method::DELETE,
            "/api/v1/experiments/half",
            Some(&m.operator),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage-unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("deleted from the database") && message.contains("DELETE again"),
        "{message}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM results")
        .fetch_one(&m.db.pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 0,
        "the rows are gone, so no result points at the objects"
    );

    m.s3.as_mut().unwrap().restart().await.unwrap();
    assert_eq!(m.count_objects("experiments/half").await, 2, "left over");
    let (s, body) = m
        .call(
            Method::DELETE,
            "/api/v1/experiments/half",
            Some(&m.operator),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(m.count_objects("experiments/half").await, 0);
    let (s, _) = m
        .call(
            Method::DELETE,
            "/api/v1/experiments/half",
            Some(&m.operator),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
