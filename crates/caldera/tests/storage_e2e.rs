//! End to end with object storage: a real worker (`caldera_worker::run`) whose executor uploads its logs
//! through the durable upload spool (`caldera_worker::upload_spool`) to a real S3-compatible server, an
//! in-process master reading the same bucket, and the S3 server stopped in the middle of a multipart
//! upload and restarted.
//!
//! What it shows: a result is reported only once its log is durable — while storage is down, every
//! recorded result points at an object that is already stored, and the job whose upload was cut
//! waits (its lease kept alive by heartbeats) instead of reporting; after the restart every result
//! arrives exactly once, every `log_key` resolves, and each log downloads through the master's HTTP
//! API byte for byte as the executor wrote it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caldera_core::job::Side;
use caldera_core::outcome::Outcome;
use caldera_db::testing::TestDb;
use caldera_storage::keys;
use caldera_storage::testing::S3Server;
use caldera_worker::upload_spool::{UploadEvent, UploadSpool, UploadSpoolConfig};
use caldera_worker::{Assignment, Executor, JobOutput, SideOutput};
use common::*;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// The crate whose end-side log is large enough for a multipart upload (parts of 5 MiB).
const BIG_CRATE: &str = "reg:fx00001@1.0.0";
const BIG_LEN: usize = 21 << 20;

/// What the executor writes as the log of `side` of `krate`: coloured cargo-like lines, and for
/// [`BIG_CRATE`]'s end side also 21 MiB that zstd cannot shrink (so the stored object needs five parts).
fn expected_log(experiment: &str, krate: &str, side: Side) -> Vec<u8> {
    let mut log = format!(
        "\x1b[1m\x1b[32m   Compiling\x1b[0m {krate} ({experiment}, {side})\n\x1b[1m\x1b[33mwarning\x1b[0m: unused variable `x`\n"
    )
    .into_bytes();
    if krate == BIG_CRATE && side == Side::End {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let target = log.len() + BIG_LEN;
        while log.len() < target {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            log.extend_from_slice(&x.to_le_bytes());
        }
        log.truncate(target);
    }
    log
}

/// An executor that "builds" nothing but produces a log per side and uploads it the way a real
/// executor must: into the spool, then waits until the spool says the object is durable in the store,
/// and only then returns the output that names the key.
#[derive(Clone)]
struct UploadingExecutor {
    spool: Arc<UploadSpool>,
    runs: Arc<Mutex<HashMap<String, usize>>>,
}

impl UploadingExecutor {
    async fn side(
        spool: &UploadSpool,
        job: &Assignment,
        side: Side,
        cancel: &CancellationToken,
    ) -> SideOutput {
        let t0 = Instant::now();
        let krate = job.spec.krate.to_string();
        let toolchain = match side {
            Side::Start => job.spec.start.id(),
            Side::End => job.spec.end.id(),
        };
        let key = match keys::log(&job.spec.experiment, &toolchain, &krate) {
            Ok(k) => k,
            Err(e) => return SideOutput::error(e.to_string(), t0.elapsed()),
        };
        let log = expected_log(&job.spec.experiment, &krate, side);
        if let Err(e) = spool.enqueue_log(key.clone(), log).await {
            return SideOutput::error(format!("spooling the log: {e}"), t0.elapsed());
        }
        let durable = tokio::select! {
            r = spool.wait_durable(&key) => r,
            _ = cancel.cancelled() => return SideOutput::error("cancelled", t0.elapsed()),
        };
        if let Err(e) = durable {
            return SideOutput::error(format!("uploading the log: {e}"), t0.elapsed());
        }
        SideOutput {
            outcome: Outcome::TestPass,
            steps: vec![("test".into(), t0.elapsed())],
            peak_memory_bytes: 0,
            log_key: Some(key.to_string()),
            duration: t0.elapsed(),
            toolchain: None,
            cache_key: None,
        }
    }
}

impl Executor for UploadingExecutor {
    fn run(&self, job: Assignment, cancel: CancellationToken) -> BoxFuture<'static, JobOutput> {
        let this = self.clone();
        Box::pin(async move {
            *this
                .runs
                .lock()
                .unwrap()
                .entry(job.spec.krate.to_string())
                .or_default() += 1;
            let start = Self::side(&this.spool, &job, Side::Start, &cancel).await;
            let end = Self::side(&this.spool, &job, Side::End, &cancel).await;
            JobOutput { start, end }
        })
    }
}

/// Results of the experiment: (crate id, side, log key).
async fn results(pool: &caldera_db::PgPool, name: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT c.crate_id, r.toolchain, r.log_key FROM results r
         JOIN crates c ON c.id = r.crate_id JOIN experiments e ON e.id = r.experiment_id
         WHERE e.name = $1 ORDER BY 1, 2",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_are_reported_only_once_their_logs_are_durable_across_an_s3_outage() {
    const EXP: &str = "durable";
    const CRATES: usize = 6;
    let db = TestDb::new().await;
    let t = tokens(&db.pool).await;
    let mut s3 = S3Server::start().await.unwrap();
    // The master and the worker each open their own client to the same bucket, as in production.
    let master_store = caldera_storage::open(&s3.config()).unwrap();
    let worker_store = caldera_storage::open(&s3.config()).unwrap();
    let master =
        InProcessMaster::start_with_store(db.pool.clone(), fast_config(), None, master_store).await;
    let (http, grpc) = (master.http.clone(), master.grpc.clone());

    let dirs = tempfile::tempdir().unwrap();
    let mut spool_config = UploadSpoolConfig::new(dirs.path().join("uploads"));
    spool_config.min_backoff = Duration::from_millis(50);
    spool_config.max_backoff = Duration::from_millis(400);
    let spool = Arc::new(
        UploadSpool::open(worker_store.clone(), spool_config)
            .await
            .unwrap(),
    );
    let mut events = spool.subscribe();
    let executor = UploadingExecutor {
        spool: spool.clone(),
        runs: Arc::default(),
    };
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(caldera_worker::run(
        worker_config(
            &grpc,
            &t.worker,
            "uploader",
            2,
            &dirs.path().join("results"),
        ),
        Arc::new(executor.clone()),
        async move {
            let _ = drain_rx.await;
        },
    ));

    start_experiment(&http, &t.operator, EXP, &crate_names(CRATES)).await;

    // Cut the storage while the big log's multipart upload is under way.
    tokio::time::timeout(Duration::from_secs(120), s3.wait_for_part_uploads(1))
        .await
        .expect("the big log's multipart upload starts");
    s3.stop().await;
    let big_key = keys::log(EXP, "nightly", BIG_CRATE).unwrap();

    // While storage is down: the spool retries the cut upload, the job that owns it does not report,
    // and every result that is recorded points at an object already stored (checked on the server's
    // disk, since the server itself is down).
    let outage = Instant::now();
    let mut retried = false;
    while outage.elapsed() < Duration::from_secs(3) || !retried {
        assert!(
            outage.elapsed() < Duration::from_secs(60),
            "no retry of the cut upload was seen"
        );
        if let Ok(Ok(UploadEvent::Retrying { key, .. })) =
            tokio::time::timeout(Duration::from_millis(100), events.recv()).await
        {
            retried |= key == big_key;
        }
        for (krate, side, key) in results(&db.pool, EXP).await {
            let key = key.unwrap_or_else(|| panic!("{krate} {side}: a result without a log"));
            assert!(
                s3.bucket_dir(S3Server::BUCKET).join(&key).is_file(),
                "{krate} {side} was recorded while its log {key} is not stored"
            );
            assert_ne!(krate, BIG_CRATE, "reported before its log was durable");
        }
    }
    assert_eq!(
        s3.completed_writes(S3Server::BUCKET, big_key.as_str()),
        0,
        "the big log was not stored before the outage"
    );
    let jobs_running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN crates c ON c.id = j.crate_id WHERE c.crate_id = $1 AND j.state = 'running'",
    )
    .bind(BIG_CRATE)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        jobs_running, 1,
        "the waiting job keeps its lease through the outage"
    );

    s3.restart().await.unwrap();
    wait_status(&db.pool, EXP, "completed", Duration::from_secs(120)).await;

    // Exactly once: one run per crate, two results per job, none twice.
    assert_exactly_one_result_each(&db.pool, EXP, CRATES as i64).await;
    let runs = executor.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), CRATES, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a job ran twice: {runs:?}");
    assert!(
        s3.completed_writes(S3Server::BUCKET, big_key.as_str()) >= 1,
        "the big log was stored after the restart"
    );
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT DISTINCT outcome_kind FROM results")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(outcomes, ["test-pass"], "no side was recorded as an error");

    // No result points at a missing object, and every log reads back through the master as written.
    let client = reqwest::Client::new();
    let rows = results(&db.pool, EXP).await;
    assert_eq!(rows.len(), CRATES * 2);
    for (krate, side, key) in rows {
        let key = key.unwrap();
        let meta = worker_store
            .head(&caldera_storage::ObjectKey::new(key.as_str()).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{krate} {side}: {e}"));
        let side_enum = if side == "start" {
            Side::Start
        } else {
            Side::End
        };
        let expected = expected_log(EXP, &krate, side_enum);
        assert_eq!(
            meta.metadata.get(caldera_storage::ORIGINAL_SIZE_METADATA),
            Some(&expected.len().to_string())
        );
        let url = format!(
            "{http}/api/v1/experiments/{EXP}/results/{}/{side}/log",
            krate.replace(':', "%3A").replace('@', "%40")
        );
        let resp = client
            .get(&url)
            .bearer_auth(&t.operator)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let body = resp.bytes().await.unwrap();
        assert!(
            body.as_ref() == expected.as_slice(),
            "{krate} {side}: the downloaded log differs from what the executor wrote ({} vs {} bytes)",
            body.len(),
            expected.len()
        );
    }
    assert!(spool.pending().is_empty());

    let _ = drain_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker drains")
        .unwrap()
        .unwrap();
    master.stop().await;
}
