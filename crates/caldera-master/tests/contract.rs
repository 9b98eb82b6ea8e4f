//! The master's HTTP contract checked by real third-party tools against a real master (real
//! Postgres, real TCP):
//!
//! * `openapi-spec-validator` validates the document served at `/api/v1/openapi.json`;
//! * `schemathesis` runs a bounded property-based test of every operation with an admin token,
//!   failing on any 5xx, any response that does not match its schema, an undocumented status
//!   or an undocumented content type;
//! * `prometheus_client`'s OpenMetrics parser reads `/metrics` as a Prometheus server would.
//!
//! The tools are Python packages that `scripts/ensure-api-tools.sh` installs, pinned, into a
//! virtualenv (`cargo xtask provision` runs it; so does this test when the venv is missing). A test
//! is skipped only when they cannot be provisioned and `CI` is not `true`; under CI a missing tool
//! is a failure.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{Setup, TestMaster};
use reqwest::StatusCode;
use serde_json::Value;

/// The venv holding the tools, provisioned once per test binary; `None` (skip) when it cannot be
/// provisioned outside CI.
fn tools() -> Option<&'static Path> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = VENV.get_or_init(|| {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ensure-api-tools.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", script.display(), out.status));
        }
        let venv = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(PathBuf::from(venv))
    });
    match found {
        Ok(venv) => Some(venv.as_path()),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the API contract tools are required under CI: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the API contract tools could not be provisioned: {e}");
            None
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn served_document(m: &TestMaster) -> Value {
    let (status, doc) = m
        .call(reqwest::Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// Runs `openapi-spec-validator` on `doc`; its success and what it said.
fn validate(venv: &Path, dir: &Path, name: &str, doc: &Value) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = run(Command::new(venv.join("bin/openapi-spec-validator")).arg(&file));
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn the_served_openapi_document_is_valid() {
    let Some(venv) = tools() else { return };
    let m = TestMaster::start(Setup::default()).await;
    let doc = served_document(&m).await;
    let (ok, said) = validate(venv, m.dir.path(), "openapi.json", &doc);
    assert!(
        ok,
        "openapi-spec-validator rejects the served document:\n{said}"
    );

    // the validator is real: the document with one operationId repeated is rejected, as the
    // document with `list` used three times was
    let mut dup = doc.clone();
    let ids = ["get", "post"].map(|method| {
        dup["paths"]["/api/v1/experiments"][method]["operationId"]
            .as_str()
            .unwrap()
            .to_owned()
    });
    dup["paths"]["/api/v1/experiments"]["post"]["operationId"] = ids[0].clone().into();
    let (ok, said) = validate(venv, m.dir.path(), "duplicate.json", &dup);
    assert!(!ok, "a repeated operationId passed:\n{said}");
    assert!(said.contains("is not unique"), "{said}");
}

/// The metric families of an OpenMetrics exposition as `prometheus_client`'s parser reads them:
/// name → type. The parser fails on anything that is not OpenMetrics (a classic text body, a
/// counter without `_total`, a missing `# EOF`).
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {f.name: f.type for f in text_string_to_metric_families(sys.stdin.read())}
print(json.dumps(families))
"#;

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_typed_counters() {
    let Some(venv) = tools() else { return };
    let m = TestMaster::start(Setup {
        fixture: Some("metrics-fx"),
        ..Setup::default()
    })
    .await;
    // a labelled sample: queue depth per experiment
    let body =
        r#"{"name":"queued-metrics","start":"stable","end":"nightly","crates":"serde@1.0.0"}"#;
    let (status, v) = m
        .call(
            reqwest::Method::POST,
            "/api/v1/experiments",
            Some(&m.operator),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = m
        .call(
            reqwest::Method::POST,
            "/api/v1/experiments/queued-metrics/start",
            Some(&m.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let resp = m
        .http
        .get(format!("{}/metrics", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let exposition = resp.text().await.unwrap();

    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejects /metrics:\n{}\n{exposition}",
        text(&out)
    );
    let families: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    for (name, kind) in [
        ("caldera_jobs_assigned", "counter"),
        ("caldera_jobs_completed", "counter"),
        ("caldera_results_rejected", "counter"),
        ("caldera_lease_expiries", "counter"),
        ("caldera_workers_connected", "gauge"),
        ("caldera_queue_depth", "gauge"),
        ("caldera_claim_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            families.get(name).map(String::as_str),
            Some(kind),
            "{name} in {families:?}"
        );
    }
    assert!(
        exposition.contains("caldera_queue_depth{experiment=\"queued-metrics\"} 1"),
        "{exposition}"
    );

    // the parser is strict: the same body without its `# EOF` is refused
    let truncated = exposition.trim_end().trim_end_matches("# EOF");
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(truncated.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a body without # EOF parsed");
}

/// Test cases per operation and phase: with 30-odd operations, 20–40 s on a busy 2-core machine.
/// `CALDERA_FUZZ_EXAMPLES` raises it for a longer run.
const FUZZ_EXAMPLES: &str = "15";

/// `schemathesis` as its own script starts it, with one guard: CPython 3.11's `ast.parse` can
/// fail with `SystemError: AST constructor recursion depth mismatch` when called deep in a stack,
/// and Hypothesis parses source only to describe a lambda in a strategy's repr. Such a
/// description falls back to Hypothesis's own "unknown" form; testing is unchanged.
const SCHEMATHESIS: &str = r#"
import sys
from hypothesis.internal import lambda_sources
describe = lambda_sources._lambda_description
def guarded(f):
    try:
        return describe(f)
    except SystemError:
        return "lambda: <unknown>"
lambda_sources._lambda_description = guarded
from schemathesis.cli import schemathesis
sys.argv[0] = "schemathesis"
sys.exit(schemathesis())
"#;

/// Names that exist, which the run draws path parameters from half of the time (the rest is
/// generated), so that operations get past "not found" to their own logic: schemathesis's
/// configuration (`schemathesis.toml`), its dictionaries bound to path parameters.
fn fuzz_config(
    experiments: &[&str],
    lists: &[&str],
    crates: &[String],
    tokens: &[String],
) -> String {
    let quoted = |values: &[String]| {
        values
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names: Vec<String> = experiments
        .iter()
        .chain(lists)
        .map(|s| (*s).to_owned())
        .collect();
    format!(
        "[dictionaries.names]\nvalues = [{}]\n\n[dictionaries.crates]\nvalues = [{}]\n\n\
         [dictionaries.tokens]\nvalues = [{}]\n\n[parameters]\n\
         \"path.name\" = {{ dictionary = \"names\", probability = 0.5 }}\n\
         \"path.crate\" = {{ dictionary = \"crates\", probability = 0.5 }}\n\
         \"path.id\" = {{ dictionary = \"tokens\", probability = 0.5 }}\n",
        quoted(&names),
        quoted(crates),
        quoted(tokens),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_schemathesis_run_finds_no_server_error_or_schema_violation() {
    let Some(venv) = tools() else { return };
    // a completed experiment with results, reports and logs; a queued one; a crate list
    let m = TestMaster::start(Setup {
        fixture: Some("fuzz-fx"),
        ..Setup::default()
    })
    .await;
    let queued = r#"{"name":"fuzz-queued","start":"stable","end":"nightly","crates":"serde@1.0.0,fnv@1.0.7"}"#;
    let list = r#"{"name":"fuzz-list","crates":["serde@1.0.0","rand"]}"#;
    for (path, body) in [
        ("/api/v1/experiments", queued),
        ("/api/v1/crate-lists", list),
    ] {
        let (status, v) = m
            .call(reqwest::Method::POST, path, Some(&m.operator), Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let mut crates: Vec<String> = caldera_master::dashboard::fixture::crates()
        .into_iter()
        .map(|c| c.to_owned())
        .collect();
    crates.extend(crates.clone().iter().filter_map(|c| {
        c.strip_prefix("reg:")
            .and_then(|c| c.split('@').next())
            .map(str::to_owned)
    }));
    // every token but the admin's, which the run authenticates with
    let (status, tokens) = m
        .call(reqwest::Method::GET, "/api/v1/tokens", Some(&m.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let tokens: Vec<String> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] != "admin")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let config = m.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        fuzz_config(
            &["fuzz-fx", "fuzz-queued"],
            &["fuzz-list"],
            &crates,
            &tokens,
        ),
    )
    .unwrap();

    let examples = std::env::var("CALDERA_FUZZ_EXAMPLES").unwrap_or_else(|_| FUZZ_EXAMPLES.into());
    let report = m.dir.path().join("schemathesis");
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-c", SCHEMATHESIS])
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", m.base))
        .args(["--url", &m.base])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .args(["--header", &format!("Authorization: Bearer {}", m.admin)])
        .args(["--max-examples", &examples])
        .args(["--seed", "20260519"])
        .args(["--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .arg("--report-dir")
        .arg(&report)
        // its own state stays in the test's directory
        .env("HOME", m.dir.path())
        .current_dir(m.dir.path());
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    let said = text(&out);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {}):\n{said}",
        out.status
    );
    eprintln!("schemathesis passed in {took:.0?}:\n{said}");
    // it really tested: every operation of the document, and test cases generated
    let doc = served_document(&m).await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert!(
        said.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{said}"
    );
    assert!(said.contains(" generated"), "{said}");
}
