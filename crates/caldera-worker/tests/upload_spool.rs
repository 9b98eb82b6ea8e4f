//! The upload spool: durability on local disk, uploads with backoff through S3 outages, restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use caldera_storage::testing::{S3Server, files_under, log_text, random_bytes};
use caldera_storage::{ObjectKey, ObjectStore, PutOptions, StorageError, keys, read_log};
use caldera_worker::upload_spool::{UploadBody, UploadEvent, UploadSpool, UploadSpoolConfig};
use tokio::time::timeout;

const MIB: usize = 1024 * 1024;
/// Generous bound for things that should happen promptly; tests never sleep for it.
const PROMPTLY: Duration = Duration::from_secs(30);

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn fast(dir: &Path) -> UploadSpoolConfig {
    let mut config = UploadSpoolConfig::new(dir);
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

fn pending_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("pending"))
}

/// These tests stop and restart S3 servers; a stopped server frees its port, and a server started
/// by a test running in parallel could take it and answer in its place. So they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_objects_become_durable() {
    let _serial = SERIAL.lock().await;
    let store_dir = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        caldera_storage::open(&caldera_storage::StorageConfig::local(store_dir.path())).unwrap();
    let spool = UploadSpool::open(store.clone(), fast(spool_dir.path()))
        .await
        .unwrap();
    let mut events = spool.subscribe();

    let k = key("a/bytes");
    spool
        .enqueue(
            k.clone(),
            Bytes::from_static(b"hello"),
            PutOptions::content_type("text/plain"),
        )
        .await
        .unwrap();
    timeout(PROMPTLY, spool.wait_durable(&k))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&store.get_bytes(&k).await.unwrap()[..], b"hello");
    assert_eq!(
        store.head(&k).await.unwrap().content_type.as_deref(),
        Some("text/plain")
    );
    match timeout(PROMPTLY, events.recv()).await.unwrap().unwrap() {
        UploadEvent::Durable { key } => assert_eq!(key, k),
        other => panic!("{other:?}"),
    }

    // A file is copied in, so the caller may delete it right away.
    let file = spool_dir.path().join("outside.txt");
    std::fs::write(&file, b"from a file").unwrap();
    let kf = key("a/file");
    spool
        .enqueue(
            kf.clone(),
            UploadBody::File(file.clone()),
            PutOptions::default(),
        )
        .await
        .unwrap();
    std::fs::remove_file(&file).unwrap();

    // Logs are compressed into the spool.
    let text = log_text(MIB);
    let kl = keys::log("e", "stable", "reg:serde@1.0.0").unwrap();
    let stats = spool.enqueue_log(kl.clone(), text.clone()).await.unwrap();
    assert!(stats.stored_size < stats.original_size / 10, "{stats:?}");

    timeout(PROMPTLY, spool.wait_idle()).await.unwrap();
    spool.wait_durable(&kf).await.unwrap();
    spool.wait_durable(&kl).await.unwrap();
    assert_eq!(&store.get_bytes(&kf).await.unwrap()[..], b"from a file");
    assert!(read_log(&*store, &kl, u64::MAX).await.unwrap()[..] == *text.as_bytes());
    assert!(spool.pending().is_empty());
    assert!(pending_files(spool_dir.path()).is_empty());

    // A key never enqueued: durable if the store has it, an error naming it if not.
    spool.wait_durable(&k).await.unwrap();
    let err = spool
        .wait_durable(&key("never/enqueued"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotSpooled { .. }), "{err}");
    assert!(err.to_string().contains("never/enqueued"), "{err}");
    spool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_cap_is_refused_at_enqueue_and_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let store_dir = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let mut config = caldera_storage::StorageConfig::local(store_dir.path());
    config.max_object_size = MIB as u64;
    let store = caldera_storage::open(&config).unwrap();
    let spool = UploadSpool::open(store.clone(), fast(spool_dir.path()))
        .await
        .unwrap();
    let k = key("too/big");
    let err = spool
        .enqueue(k.clone(), random_bytes(MIB + 1, 1), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("too/big") && err.to_string().contains("1048576"));
    let err = spool
        .enqueue_log(k.clone(), random_bytes(2 * MIB, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    assert!(
        files_under(spool_dir.path())
            .iter()
            .all(|p| p.file_name().unwrap() == "lock")
    );
    assert!(spool.pending().is_empty());
    assert!(!store.exists(&k).await.unwrap());
    spool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_spool_directory() {
    let _serial = SERIAL.lock().await;
    let store_dir = tempfile::tempdir().unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let store =
        caldera_storage::open(&caldera_storage::StorageConfig::local(store_dir.path())).unwrap();
    let spool = UploadSpool::open(store.clone(), fast(spool_dir.path()))
        .await
        .unwrap();
    let err = UploadSpool::open(store.clone(), fast(spool_dir.path()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    spool.shutdown().await;
    // Released on shutdown.
    UploadSpool::open(store, fast(spool_dir.path()))
        .await
        .unwrap()
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_reported_not_retried() {
    let _serial = SERIAL.lock().await;
    let server = S3Server::start().await.unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let mut config = server.config();
    config.credentials = Some(caldera_storage::S3Credentials::new(
        S3Server::ACCESS_KEY_ID,
        "wrong-secret",
    ));
    let store = caldera_storage::open(&config).unwrap();
    let spool = UploadSpool::open(store, fast(spool_dir.path()))
        .await
        .unwrap();
    let k = key("refused/object");
    spool
        .enqueue(k.clone(), Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap();
    let err = timeout(PROMPTLY, spool.wait_durable(&k))
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::UploadFailed { .. }), "{msg}");
    assert!(msg.contains("refused/object"), "{msg}");
    assert!(msg.contains("rejected the credentials"), "{msg}");
    // The entry is kept for inspection, with the reason.
    let failed = files_under(&spool_dir.path().join("failed"));
    assert_eq!(failed.len(), 2, "{failed:?}");
    let reason = std::fs::read_to_string(
        failed
            .iter()
            .find(|p| p.extension().unwrap() == "error")
            .unwrap(),
    )
    .unwrap();
    assert!(reason.contains("rejected the credentials"), "{reason}");
    assert!(pending_files(spool_dir.path()).is_empty());
    spool.shutdown().await;
}

/// The S3 server dies in the middle of a multipart upload; the spool keeps retrying with backoff, the
/// upload succeeds once the server is back (same port, same data), and the object arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_s3_outage_during_upload() {
    let mut server = S3Server::start().await.unwrap();
    let store = caldera_storage::open(&server.config()).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = UploadSpool::open(store.clone(), fast(spool_dir.path()))
        .await
        .unwrap();
    let mut events = spool.subscribe();

    // Three parts of 5 MiB: the server is stopped as soon as the first part starts arriving.
    let data = random_bytes(15 * MIB, 42);
    let k = key("outage/big.bin");
    spool
        .enqueue(k.clone(), data.clone(), PutOptions::default())
        .await
        .unwrap();
    timeout(PROMPTLY, server.wait_for_part_uploads(1))
        .await
        .unwrap();
    server.stop().await;

    // The spool notices and retries (three failed attempts observed while the server is down);
    // nothing is durable yet and the entry is still on disk.
    for _ in 0..3 {
        match timeout(PROMPTLY, events.recv()).await.unwrap().unwrap() {
            UploadEvent::Retrying { key, error, .. } => {
                assert_eq!(key, k);
                assert!(error.contains("S3 bucket `caldera-test`"), "{error}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        timeout(Duration::from_millis(50), spool.wait_durable(&k))
            .await
            .is_err(),
        "not durable while the server is down"
    );
    assert_eq!(spool.pending(), vec![k.clone()]);
    assert_eq!(pending_files(spool_dir.path()).len(), 1);
    assert_eq!(server.completed_writes(S3Server::BUCKET, k.as_str()), 0);

    server.restart().await.unwrap();
    timeout(PROMPTLY, spool.wait_durable(&k))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.completed_writes(S3Server::BUCKET, k.as_str()), 1);
    // The interrupted multipart upload was started over: its part(s) plus three more.
    assert!(
        server.part_uploads_started() >= 4,
        "{}",
        server.part_uploads_started()
    );
    let got = store.get_bytes(&k).await.unwrap();
    assert!(got[..] == data[..], "content differs");
    assert!(pending_files(spool_dir.path()).is_empty());
    // Nothing further is uploaded.
    spool.wait_idle().await;
    assert_eq!(server.completed_writes(S3Server::BUCKET, k.as_str()), 1);
    spool.shutdown().await;
}

/// Entries pending when the process stops are uploaded by the next process to open the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_entries_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut server = S3Server::start().await.unwrap();
    server.stop().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let keys: Vec<ObjectKey> = (0..3)
        .map(|i| keys::log("e", "stable", &format!("reg:crate-{i}@1.0.0")).unwrap())
        .collect();
    {
        let store = caldera_storage::open(&server.config()).unwrap();
        let spool = UploadSpool::open(store, fast(spool_dir.path()))
            .await
            .unwrap();
        let mut events = spool.subscribe();
        for (i, k) in keys.iter().enumerate() {
            spool
                .enqueue_log(k.clone(), format!("log {i}\n"))
                .await
                .unwrap();
        }
        // The store is down: uploads are being retried.
        match timeout(PROMPTLY, events.recv()).await.unwrap().unwrap() {
            UploadEvent::Retrying { error, .. } => {
                assert!(error.contains("is unreachable"), "{error}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(spool.pending().len(), 3);
        // The process "dies": the spool is dropped without finishing.
        drop(spool);
    }
    assert_eq!(pending_files(spool_dir.path()).len(), 3);

    server.restart().await.unwrap();
    let store = caldera_storage::open(&server.config()).unwrap();
    // The lock of the dropped spool is released once its task has stopped; retry briefly.
    let spool = {
        let mut attempt = 0;
        loop {
            match UploadSpool::open(store.clone(), fast(spool_dir.path())).await {
                Ok(s) => break s,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    assert!(e.to_string().contains("another process"), "{e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    for (i, k) in keys.iter().enumerate() {
        timeout(PROMPTLY, spool.wait_durable(k))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            read_log(&*store, k, 100).await.unwrap(),
            Bytes::from(format!("log {i}\n"))
        );
        assert_eq!(server.completed_writes(S3Server::BUCKET, k.as_str()), 1);
    }
    assert!(pending_files(spool_dir.path()).is_empty());
    spool.shutdown().await;
}
