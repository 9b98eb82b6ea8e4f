//! Benchmark of the report path and the experiment page, against a real Postgres.
//!
//! ```text
//! cargo run --release -p caldera-master --example bench_report            # 1,000,000 + 200,000 crates
//! cargo run --release -p caldera-master --example bench_report -- 100000 20000   # smaller
//! ```
//!
//! 1. Starts a private Postgres cluster (`caldera_db::testing::TestDb`) and loads, with `COPY`, two
//!    synthetic experiments: `bench-1m` (1,000,000 crates, so 2,000,000 result rows) and
//!    `bench-200k` (200,000 crates). The outcome mix follows the core report benchmark: ~2.9 %
//!    regressions, most of them through dependencies (chains, several roots, unresolved names),
//!    spurious results, fixes, errors, and the same outcome on both sides for the rest.
//! 2. In a child process (so its peak memory is its own): the full export of `bench-1m` — the
//!    results query, `Report::build`, then `summary.md`, `retry.txt`, `results.json` (zstd),
//!    `index.html` (zstd) and `logs.tar.zst` (the synthetic crates have no stored logs, so the
//!    archive only lists them as missing) written to a local object store.
//! 3. In another child process: a master serving `bench-200k`; one cold request of the experiment
//!    page (builds the cached report), then 300 requests over HTTP cycling through the unfiltered
//!    page, its pages 2–3 and filters by category, error code and crate name.
//!
//! Prints `report_1m: <s> s`, `report_1m_peak: <MiB> MiB` and `experiment_page_p95: <ms> ms`
//! (plus the parts of each).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_core::outcome::{BuildFailReason as R, Outcome};
use caldera_db::PgPool;
use sqlx::postgres::PgPoolCopyExt;
use uuid::Uuid;

const CODES: &[&str] = &[
    "E0308", "E0599", "E0277", "E0425", "E0433", "E0412", "E0432", "E0061", "E0282", "E0106",
    "E0382", "E0502", "E0499", "E0505", "E0507", "E0597", "E0716", "E0658",
];

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
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ce(codes: &[&str]) -> Outcome {
    Outcome::BuildFail(R::CompilerError {
        codes: codes.iter().map(|c| c.to_string()).collect(),
    })
}

fn dep(crates: Vec<String>) -> Outcome {
    Outcome::BuildFail(R::DependsOn { crates })
}

/// (crate id, start, end) of synthetic crate `i`.
fn synthetic(n: usize, seed: u64) -> Vec<(String, Outcome, Outcome)> {
    let mut rng = SplitMix(seed);
    let mut out = Vec::with_capacity(n);
    let mut regressed: Vec<(String, String)> = Vec::new(); // (name, version)
    let mut failing: Vec<String> = Vec::new();
    for i in 0..n {
        let name = format!("crate-{i}");
        let version = format!("{}.{}.{}", i % 4, i % 23, i % 7);
        let checksum = format!(
            "{:016x}{:016x}{:016x}{:016x}",
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next()
        );
        let roll = rng.below(10_000);
        let pass = Outcome::TestPass;
        let (start, end) = if roll < 40 {
            let end = match rng.below(100) {
                0..70 => {
                    let k = (CODES.len() as f64 * rng.unit().powi(2)) as usize;
                    ce(&[CODES[k]])
                }
                70..75 => Outcome::BuildFail(R::Ice),
                75..80 => Outcome::BuildFail(R::Link),
                80..95 => Outcome::TestFail {
                    failed_tests: vec![format!("tests::t{}", rng.below(50))],
                    reason: None,
                },
                _ => Outcome::BuildFail(R::Unknown),
            };
            (pass, end)
        } else if roll < 290 && !regressed.is_empty() {
            let k = match rng.below(20) {
                0 => 3,
                1..4 => 2,
                _ => 1,
            };
            let mut deps = Vec::new();
            for _ in 0..k {
                let (dn, dv) = &regressed[(regressed.len() as f64 * rng.unit().powi(3)) as usize];
                deps.push(match rng.below(3) {
                    0 => format!("reg:{dn}@{dv}"),
                    1 => dn.clone(),
                    _ => format!("{dn} v{dv}"),
                });
            }
            if rng.below(20) == 0 {
                deps.push(format!("sys-{}", rng.below(500)));
            }
            (pass, dep(deps))
        } else if roll < 300 && !failing.is_empty() {
            (
                pass,
                dep(vec![
                    failing[rng.below(failing.len() as u64) as usize].clone(),
                ]),
            )
        } else if roll < 310 {
            (
                pass,
                Outcome::BuildFail(
                    [R::Oom, R::Timeout, R::NoOutputTimeout][rng.below(3) as usize].clone(),
                ),
            )
        } else if roll < 315 {
            (Outcome::BuildFail(R::Timeout), pass)
        } else if roll < 320 {
            (
                Outcome::Error {
                    reason: "worker lost".into(),
                },
                pass,
            )
        } else if roll < 380 {
            (ce(&["E0308"]), pass)
        } else if roll < 2400 {
            failing.push(name.clone());
            (ce(&["E0425"]), ce(&["E0425"]))
        } else if roll < 3200 {
            let f = Outcome::TestFail {
                failed_tests: vec!["a::b".into()],
                reason: None,
            };
            (f.clone(), f)
        } else if roll < 3500 {
            (Outcome::TestSkipped, Outcome::TestSkipped)
        } else if roll < 3700 {
            let p = Outcome::PrepareFail {
                reason: "yanked".into(),
            };
            (p.clone(), p)
        } else if roll < 3800 {
            (Outcome::Skipped, Outcome::Skipped)
        } else {
            (pass.clone(), pass)
        };
        if caldera_core::compare(&start, &end) == caldera_core::Comparison::Regressed {
            regressed.push((name.clone(), version.clone()));
        }
        out.push((format!("reg:{name}@{version}#{checksum}"), start, end));
    }
    out
}

async fn copy(pool: &PgPool, statement: &str, data: &str) {
    let mut c = pool.copy_in_raw(statement).await.expect("COPY");
    for chunk in data.as_bytes().chunks(8 << 20) {
        c.send(chunk).await.expect("COPY data");
    }
    c.finish().await.expect("COPY finish");
}

/// Loads a synthetic experiment of `n` crates with crate row ids from `first_id`.
async fn load(pool: &PgPool, name: &str, n: usize, first_id: i64, seed: u64) -> Uuid {
    let t = Instant::now();
    let spec = caldera_core::ExperimentSpec::from_json(
        serde_json::json!({"name": name, "start": "stable", "end": "beta", "crates": "top:1000"})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let row = caldera_db::experiments::create(pool, &spec).await.unwrap();
    sqlx::query("UPDATE experiments SET status = 'completed', started_at = now() - interval '3 hours', finished_at = now() WHERE id = $1")
        .bind(row.id)
        .execute(pool)
        .await
        .unwrap();
    let crates = synthetic(n, seed);
    let (mut c, mut j, mut r) = (String::new(), String::new(), String::new());
    let base = chrono::Utc::now() - chrono::Duration::hours(3);
    for (k, (id, start, end)) in crates.iter().enumerate() {
        let cid = first_id + k as i64;
        let rest = id.strip_prefix("reg:").unwrap();
        let (nv, checksum) = rest.split_once('#').unwrap();
        let (cname, version) = nv.split_once('@').unwrap();
        writeln!(c, "{cid}\t{id}\tregistry\t{cname}\t{version}\t{checksum}").unwrap();
        let at = base + chrono::Duration::milliseconds((k as i64 * 10_800_000) / n as i64);
        writeln!(j, "{}\t{cid}\tdone\t1\t{}", row.id, at.to_rfc3339()).unwrap();
        for (side, tc, o) in [("start", "stable", start), ("end", "beta", end)] {
            let key = caldera_storage::keys::log(name, tc, id).unwrap();
            let json = serde_json::to_string(o).unwrap();
            writeln!(
                r,
                "{}\t{cid}\t{side}\t{json}\t{}\t{key}\t{}\t{}\t[{{\"name\": \"build\", \"duration_ms\": 1200}}]",
                row.id,
                o.kind(),
                1200 + k % 5000,
                (300 + k % 700) << 20
            )
            .unwrap();
        }
    }
    drop(crates);
    copy(
        pool,
        "COPY crates (id, crate_id, kind, name, version, checksum) FROM STDIN",
        &c,
    )
    .await;
    drop(c);
    copy(
        pool,
        "COPY jobs (experiment_id, crate_id, state, attempt, updated_at) FROM STDIN",
        &j,
    )
    .await;
    drop(j);
    copy(
        pool,
        "COPY results (experiment_id, crate_id, toolchain, outcome, outcome_kind, log_key, duration_ms, peak_memory_bytes, steps) FROM STDIN",
        &r,
    )
    .await;
    eprintln!(
        "loaded {name}: {n} crates in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    row.id
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

async fn measure_export(url: &str) {
    let pool = caldera_db::connect(url, 4).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn caldera_storage::ObjectStore> =
        Arc::new(caldera_storage::LocalStore::open(dir.path(), 4 << 30).unwrap());
    let t = Instant::now();
    let s = caldera_master::export::export(&pool, store.clone(), "bench-1m")
        .await
        .unwrap();
    let total = t.elapsed().as_secs_f64();
    let peak = vm_hwm_mib();
    eprintln!(
        "exported {} crates ({} regressions): load {:.2} s, build {:.2} s, write {:.2} s; files: {}",
        s.crates,
        s.regressions,
        s.load_seconds,
        s.build_seconds,
        s.write_seconds,
        s.files
            .iter()
            .map(|f| format!("{} {:.1} MiB", f.name, f.stored_bytes as f64 / 1048576.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("report_1m_load: {:.2} s", s.load_seconds);
    println!("report_1m_build: {:.2} s", s.build_seconds);
    println!("report_1m_exports: {:.2} s", s.write_seconds);
    println!("report_1m: {total:.2} s");
    println!("report_1m_peak: {peak:.0} MiB");
}

async fn measure_page(url: &str) {
    let pool = caldera_db::connect(url, 8).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn caldera_storage::ObjectStore> =
        Arc::new(caldera_storage::LocalStore::open(dir.path(), 64 << 20).unwrap());
    let master = caldera_master::Master::start(caldera_master::MasterConfig::new(pool, store))
        .await
        .unwrap();
    let base = master.http_url();
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let t = Instant::now();
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            let body = resp.bytes().await.unwrap();
            (t.elapsed(), body.len())
        }
    };
    let (cold, size) = get("/experiments/bench-200k".into()).await;
    eprintln!(
        "cold experiment page (loads and builds the report): {:.0} ms, {size} bytes",
        cold.as_secs_f64() * 1e3
    );
    let paths = [
        "/experiments/bench-200k",
        "/experiments/bench-200k?page=2",
        "/experiments/bench-200k?category=regressed",
        "/experiments/bench-200k?category=regressed&page=3",
        "/experiments/bench-200k?category=fixed",
        "/experiments/bench-200k?category=same-test-pass&page=40",
        "/experiments/bench-200k?code=E0308&category=regressed",
        "/experiments/bench-200k?q=crate-1999",
        "/experiments/bench-200k?q=CRATE-42",
        "/experiments/bench-200k?category=spurious-regressed",
    ];
    let mut times = Vec::new();
    let mut bytes = 0;
    let t = Instant::now();
    for i in 0..300 {
        let (d, n) = get(paths[i % paths.len()].into()).await;
        times.push(d);
        bytes += n;
    }
    let wall = t.elapsed();
    times.sort();
    let pct = |p: f64| {
        times[((times.len() as f64 * p).ceil() as usize).saturating_sub(1)].as_secs_f64() * 1e3
    };
    eprintln!(
        "300 requests in {:.1} s, {:.0} KiB average page; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        wall.as_secs_f64(),
        bytes as f64 / 300.0 / 1024.0,
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("experiment_page_cold: {:.0} ms", cold.as_secs_f64() * 1e3);
    println!("experiment_page_p50: {:.1} ms", pct(0.5));
    println!("experiment_page_p95: {:.1} ms", pct(0.95));
    let _ = master.stop().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("measure-export") => return measure_export(&args[2]).await,
        Some("measure-page") => return measure_page(&args[2]).await,
        _ => {}
    }
    let big: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let page: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let db = caldera_db::testing::TestDb::new().await;
    load(&db.pool, "bench-1m", big, 1, 42).await;
    load(&db.pool, "bench-200k", page, big as i64 + 1, 7).await;
    sqlx::query("SELECT setval('crates_id_seq', (SELECT max(id) FROM crates))")
        .execute(&db.pool)
        .await
        .unwrap();
    let t = Instant::now();
    sqlx::query("VACUUM ANALYZE")
        .execute(&db.pool)
        .await
        .unwrap();
    eprintln!("vacuum analyze: {:.1} s", t.elapsed().as_secs_f64());
    if let Some(secs) = std::env::var("CALDERA_BENCH_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // For looking at the loaded database (EXPLAIN, psql) before measuring.
        eprintln!("database: {}; pausing {secs} s", db.url);
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    let me = std::env::current_exe().unwrap();
    for mode in ["measure-export", "measure-page"] {
        let status = std::process::Command::new(&me)
            .args([mode, &db.url])
            .status()
            .unwrap();
        assert!(status.success(), "{mode} failed");
        std::thread::sleep(Duration::from_millis(100));
    }
}
