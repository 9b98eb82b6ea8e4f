//! Behaviour specific to the S3 backend, against a real S3-compatible server: credentials, missing
//! buckets, outages, prefixes, configuration by URL.

mod common;

use bytes::Bytes;
use caldera_storage::testing::S3Server;
use caldera_storage::{
    ObjectKey, ObjectStore, PutOptions, S3Credentials, StorageConfig, StorageError, put_log,
    read_log,
};

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

async fn every_operation(store: &dyn ObjectStore) -> Vec<StorageError> {
    let k = key("some/key");
    vec![
        store
            .put_bytes(&k, Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err(),
        store.get(&k).await.unwrap_err(),
        store.head(&k).await.unwrap_err(),
        store.list(&k).await.unwrap_err(),
        store.delete_prefix(&k).await.unwrap_err(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_reported_with_bucket_and_cause() {
    let server = S3Server::start().await.unwrap();
    for credentials in [
        S3Credentials::new("no-such-access-key", S3Server::SECRET_ACCESS_KEY),
        S3Credentials::new(S3Server::ACCESS_KEY_ID, "wrong-secret"),
    ] {
        let mut config = server.config();
        config.credentials = Some(credentials.clone());
        let store = caldera_storage::open(&config).unwrap();
        for err in every_operation(&*store).await {
            let msg = err.to_string();
            assert!(
                matches!(err, StorageError::Credentials { .. }),
                "{credentials:?}: {msg}"
            );
            assert!(
                msg.starts_with("S3 bucket `caldera-test` at http://127.0.0.1:"),
                "{msg}"
            );
            assert!(msg.contains("rejected the credentials: "), "{msg}");
            assert!(msg.contains("HTTP 403"), "{msg}");
            assert!(!err.is_transient(), "{msg}");
        }
        // Where the server sends an error body (not for HEAD), its code is part of the message.
        let err = store
            .put_bytes(&key("k"), Bytes::from_static(b"x"), PutOptions::default())
            .await
            .unwrap_err()
            .to_string();
        let expected_code = if credentials.access_key_id == "no-such-access-key" {
            "NotSignedUp"
        } else {
            "SignatureDoesNotMatch"
        };
        assert!(err.contains(expected_code), "{err}");
    }
    // Nothing was written.
    assert!(common::files_under(&server.bucket_dir(S3Server::BUCKET)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_named() {
    let server = S3Server::start().await.unwrap();
    let store = caldera_storage::open(&server.config_for("no-such-bucket", None)).unwrap();
    let err = store
        .put_bytes(&key("k"), Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{msg}");
    assert!(msg.contains("S3 bucket `no-such-bucket`"), "{msg}");
    assert!(msg.contains("NoSuchBucket"), "{msg}");
    assert!(!err.is_transient());
    let err = store.list(&key("k")).await.unwrap_err();
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_transient() {
    let mut server = S3Server::start().await.unwrap();
    let store = caldera_storage::open(&server.config()).unwrap();
    store
        .put_bytes(
            &key("k"),
            Bytes::from_static(b"before"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    server.stop().await;
    for err in every_operation(&*store).await {
        let msg = err.to_string();
        assert!(matches!(err, StorageError::Unavailable { .. }), "{msg}");
        assert!(err.is_transient(), "{msg}");
        assert!(
            msg.contains(&format!(
                "S3 bucket `caldera-test` at {}",
                server.endpoint()
            )),
            "{msg}"
        );
        assert!(msg.contains("is unreachable"), "{msg}");
    }
    server.restart().await.unwrap();
    // Same port, same data: the client reconnects by itself.
    assert_eq!(&store.get_bytes(&key("k")).await.unwrap()[..], b"before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_confines_the_store() {
    let server = S3Server::start().await.unwrap();
    let outer = caldera_storage::open(&server.config()).unwrap();
    let inner =
        caldera_storage::open(&server.config_for(S3Server::BUCKET, Some("tenant/a"))).unwrap();
    assert_eq!(
        inner.describe(),
        format!(
            "S3 bucket `caldera-test` (prefix `tenant/a`) at {}",
            server.endpoint()
        )
    );
    inner
        .put_bytes(
            &key("x/obj"),
            Bytes::from_static(b"inner"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    outer
        .put_bytes(
            &key("x/obj"),
            Bytes::from_static(b"outer"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    // The inner store's object lives under the prefix in the bucket.
    assert_eq!(
        std::fs::read(server.bucket_dir(S3Server::BUCKET).join("tenant/a/x/obj")).unwrap(),
        b"inner"
    );
    assert_eq!(&inner.get_bytes(&key("x/obj")).await.unwrap()[..], b"inner");
    let listed = inner.list(&key("x")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key.as_str(), "x/obj");
    assert_eq!(outer.list(&key("tenant")).await.unwrap().len(), 1);
    // Deleting inside the prefix does not touch the rest of the bucket.
    assert_eq!(inner.delete_prefix(&key("x")).await.unwrap(), 1);
    assert_eq!(&outer.get_bytes(&key("x/obj")).await.unwrap()[..], b"outer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_from_a_location_url_and_deletes_in_batches() {
    let server = S3Server::start().await.unwrap();
    let json = format!(
        r#"{{"location": "s3://{}/caldera?endpoint={}&region=us-east-1&path_style=true",
            "credentials": {{"access_key_id": "{}", "secret_access_key": "{}"}}}}"#,
        S3Server::BUCKET,
        server.endpoint(),
        S3Server::ACCESS_KEY_ID,
        S3Server::SECRET_ACCESS_KEY
    );
    let config: StorageConfig = serde_json::from_str(&json).unwrap();
    let store = caldera_storage::open(&config).unwrap();
    // More than one list page and one DeleteObjects batch (1000 keys each). The objects are written
    // straight into the server's directory (s3s-fs serves plain files): a thousand PUTs would only
    // slow the test down, the put path is covered elsewhere. One goes through the API, with the prefix.
    let n = 1001;
    store
        .put_bytes(&key("batch/00000"), Bytes::from("0"), PutOptions::default())
        .await
        .unwrap();
    let dir = server.bucket_dir(S3Server::BUCKET).join("caldera/batch");
    assert!(dir.join("00000").is_file());
    for i in 1..n {
        std::fs::write(dir.join(format!("{i:05}")), i.to_string()).unwrap();
    }
    let listed = store.list(&key("batch")).await.unwrap();
    assert_eq!(listed.len(), n);
    assert_eq!(listed[0].key.as_str(), "batch/00000");
    assert_eq!(listed[n - 1].key.as_str(), "batch/01000");
    assert_eq!(store.delete_prefix(&key("batch")).await.unwrap(), n as u64);
    assert!(store.list(&key("batch")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_metadata_is_visible_to_other_s3_clients() {
    let server = S3Server::start().await.unwrap();
    let store = caldera_storage::open(&server.config()).unwrap();
    let k = caldera_storage::keys::log("e", "stable", "reg:serde@1.0.0").unwrap();
    put_log(&*store, &k, "hello log\n").await.unwrap();
    assert_eq!(
        &read_log(&*store, &k, 1000).await.unwrap()[..],
        b"hello log\n"
    );
    // Ask with the bare SDK client: the headers a browser or `aws s3 cp` would see.
    let s3 = caldera_storage::S3Store::open(&server.config()).unwrap();
    let head = s3
        .client()
        .head_object()
        .bucket(S3Server::BUCKET)
        .key(k.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(head.content_encoding(), Some("zstd"));
    assert_eq!(
        head.metadata()
            .unwrap()
            .get("original-size")
            .map(String::as_str),
        Some("10")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_below_part_size_refuses_before_sending_anything() {
    let server = S3Server::start().await.unwrap();
    let mut config = server.config();
    config.max_object_size = 1024 * 1024;
    let store = caldera_storage::open(&config).unwrap();
    let k = key("small-cap/object");
    let err = store
        .put(
            &k,
            common::chunked(common::random_bytes(2 * 1024 * 1024, 9), 64 * 1024),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("small-cap/object"), "{err}");
    assert_eq!(server.part_uploads_started(), 0);
    assert_eq!(server.completed_writes(S3Server::BUCKET, k.as_str()), 0);
    assert!(
        common::files_under(server.data_dir()).is_empty(),
        "{:?}",
        common::files_under(server.data_dir())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_is_a_transient_error() {
    use futures::StreamExt;
    let mut server = S3Server::start().await.unwrap();
    let store = caldera_storage::open(&server.config()).unwrap();
    let k = key("download/big");
    // Larger than what loopback socket buffers hold (a few MiB each side), so the cut is noticed
    // mid-stream. Written straight into the server's bucket directory (s3s-fs serves plain files) to
    // keep the test fast.
    let size = 16 * 1024 * 1024;
    let path = server.bucket_dir(S3Server::BUCKET).join(k.as_str());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, common::random_bytes(size, 11)).unwrap();
    let mut object = store.get(&k).await.unwrap();
    assert_eq!(object.meta.size, size as u64);
    let first = object.body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    server.stop().await;
    let mut received = first.len();
    let err = loop {
        match object.body.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("the body ended without an error after {received} bytes"),
        }
    };
    assert!(received < size, "{received}");
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("download/big"), "{err}");
}
