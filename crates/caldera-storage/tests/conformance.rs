//! One conformance suite, run against every backend: the local directory and S3 (a real s3s-fs server
//! started per test on a loopback port).

mod common;

use bytes::Bytes;
use caldera_storage::{
    LOG_CONTENT_ENCODING, LOG_CONTENT_TYPE, LogBody, ORIGINAL_SIZE_METADATA, ObjectKey,
    ObjectStore, PutOptions, StorageError, collect_body, get_log, keys, put_log, read_log,
};
use common::{Fixture, chunked, failing_after, log_text, random_bytes};
use futures::StreamExt;

const MIB: usize = 1024 * 1024;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

async fn get_all(store: &dyn ObjectStore, k: &ObjectKey) -> Result<Bytes, StorageError> {
    store.get_bytes(k).await
}

async fn put_get_head(fx: Fixture) {
    let store = &*fx.store;
    let k = key("a/b/object.txt");
    let options = PutOptions::content_type("text/plain").with_metadata("origin", "conformance");
    let n = store
        .put_bytes(&k, Bytes::from_static(b"hello world"), options)
        .await
        .unwrap();
    assert_eq!(n, 11);

    let meta = store.head(&k).await.unwrap();
    assert_eq!(meta.size, 11);
    assert_eq!(meta.content_type.as_deref(), Some("text/plain"));
    assert_eq!(meta.content_encoding, None);
    assert_eq!(
        meta.metadata.get("origin").map(String::as_str),
        Some("conformance")
    );

    let got = store.get(&k).await.unwrap();
    assert_eq!(got.meta, meta);
    let body = collect_body(store.describe(), &k, got.body, u64::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], b"hello world");

    // Overwrite replaces bytes and metadata.
    store
        .put_bytes(&k, Bytes::from_static(b"bye"), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(&get_all(store, &k).await.unwrap()[..], b"bye");
    let meta = store.head(&k).await.unwrap();
    assert_eq!(meta.size, 3);
    assert!(meta.metadata.is_empty(), "{meta:?}");

    // Empty objects are objects.
    let empty = key("a/empty");
    store
        .put_bytes(&empty, Bytes::new(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.head(&empty).await.unwrap().size, 0);
    assert!(get_all(store, &empty).await.unwrap().is_empty());
    assert!(store.exists(&empty).await.unwrap());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

async fn list_and_delete_prefix(fx: Fixture) {
    let store = &*fx.store;
    for (k, len) in [
        ("exp/e1/a/1", 1),
        ("exp/e1/a/2", 2),
        ("exp/e1/a/deeper/3", 3),
        ("exp/e1/ab/4", 4),
        ("exp/e10/a/5", 5),
    ] {
        store
            .put_bytes(&key(k), Bytes::from(vec![b'x'; len]), PutOptions::default())
            .await
            .unwrap();
    }
    let listed = |v: Vec<caldera_storage::ObjectInfo>| {
        v.into_iter()
            .map(|o| (o.key.to_string(), o.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(store.list(&key("exp/e1/a")).await.unwrap()),
        vec![
            ("exp/e1/a/1".to_owned(), 1),
            ("exp/e1/a/2".to_owned(), 2),
            ("exp/e1/a/deeper/3".to_owned(), 3),
        ]
    );
    // Prefixes match whole segments: `exp/e1` does not cover `exp/e10`.
    assert_eq!(store.list(&key("exp/e1")).await.unwrap().len(), 4);
    assert_eq!(store.list(&key("exp")).await.unwrap().len(), 5);
    assert!(store.list(&key("nothing/here")).await.unwrap().is_empty());
    // A key is not a prefix of itself.
    assert!(store.list(&key("exp/e1/a/1")).await.unwrap().is_empty());

    assert_eq!(store.delete_prefix(&key("exp/e1/a")).await.unwrap(), 3);
    assert!(store.list(&key("exp/e1/a")).await.unwrap().is_empty());
    let err = store.head(&key("exp/e1/a/1")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        listed(store.list(&key("exp")).await.unwrap()),
        vec![("exp/e1/ab/4".to_owned(), 4), ("exp/e10/a/5".to_owned(), 5)]
    );
    assert_eq!(store.delete_prefix(&key("exp/e1/a")).await.unwrap(), 0);
    assert_eq!(store.delete_prefix(&key("exp/e1")).await.unwrap(), 1);
    assert_eq!(store.list(&key("exp")).await.unwrap().len(), 1);
    // The prefix can be written again after deletion.
    store
        .put_bytes(
            &key("exp/e1/a/1"),
            Bytes::from_static(b"again"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        &get_all(store, &key("exp/e1/a/1")).await.unwrap()[..],
        b"again"
    );
}

async fn large_multipart_object(fx: Fixture) {
    let store = &*fx.store;
    // 10 MiB + a bit, in uneven chunks: three parts on S3 (the test server uses 5 MiB parts), the last
    // one short.
    let data = random_bytes(10 * MIB + 12_345, 7);
    let k = key("big/object.bin");
    let n = store
        .put(
            &k,
            chunked(data.clone(), MIB + 7),
            PutOptions::content_type("application/octet-stream").with_metadata("kind", "big"),
        )
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let meta = store.head(&k).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(
        meta.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(meta.metadata.get("kind").map(String::as_str), Some("big"));
    let got = get_all(store, &k).await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got[..] == data[..], "content differs");
    assert_eq!(
        store.list(&key("big")).await.unwrap()[0].size,
        data.len() as u64
    );
    if let Some(server) = fx.s3_server() {
        assert!(server.part_uploads_started() >= 3, "multipart was used");
        assert_eq!(
            server.completed_writes(caldera_storage::testing::S3Server::BUCKET, k.as_str()),
            1
        );
    }
    // Exactly one part-size body goes up in one piece.
    let exact = random_bytes(5 * MIB, 8);
    let k2 = key("big/exact.bin");
    store
        .put(&k2, chunked(exact.clone(), MIB), PutOptions::default())
        .await
        .unwrap();
    assert!(get_all(store, &k2).await.unwrap()[..] == exact[..]);
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

async fn zstd_log_round_trip(fx: Fixture) {
    let store = &*fx.store;
    let text = log_text(3 * MIB);
    let k = keys::log("exp-1", "nightly+rustflags=-Zfoo", "reg:serde@1.0.0").unwrap();
    let stats = put_log(store, &k, text.clone()).await.unwrap();
    assert_eq!(stats.original_size, text.len() as u64);
    assert!(
        stats.stored_size * 10 < stats.original_size,
        "compressed: {stats:?}"
    );
    let meta = store.head(&k).await.unwrap();
    assert_eq!(meta.size, stats.stored_size);
    assert_eq!(meta.content_type.as_deref(), Some(LOG_CONTENT_TYPE));
    assert_eq!(meta.content_encoding.as_deref(), Some(LOG_CONTENT_ENCODING));
    assert_eq!(
        meta.metadata.get(ORIGINAL_SIZE_METADATA),
        Some(&text.len().to_string())
    );
    // The stored bytes are a zstd frame.
    let raw = get_all(store, &k).await.unwrap();
    assert_eq!(&raw[..4], &[0x28, 0xb5, 0x2f, 0xfd]);

    let mut body = get_log(store, &k).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert!(out == text.as_bytes(), "decompressed log differs");
    assert_eq!(
        read_log(store, &k, u64::MAX).await.unwrap().len(),
        text.len()
    );
    let err = read_log(store, &k, 1000).await.unwrap_err();
    assert!(matches!(err, StorageError::TooLargeToRead { .. }), "{err}");

    // From a file and from a stream of announced length.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("build.log");
    std::fs::write(&path, b"from a file\n").unwrap();
    let kf = keys::log("exp-1", "stable", "reg:file@1.0.0").unwrap();
    put_log(store, &kf, LogBody::File(path)).await.unwrap();
    assert_eq!(
        &read_log(store, &kf, 100).await.unwrap()[..],
        b"from a file\n"
    );
    let ks = keys::log("exp-1", "stable", "reg:stream@1.0.0").unwrap();
    let data = log_text(200_000).into_bytes();
    put_log(
        store,
        &ks,
        LogBody::Stream {
            stream: chunked(data.clone(), 4096),
            size: data.len() as u64,
        },
    )
    .await
    .unwrap();
    assert!(read_log(store, &ks, u64::MAX).await.unwrap()[..] == data[..]);

    // A stream shorter than announced stores nothing.
    let kbad = keys::log("exp-1", "stable", "reg:short@1.0.0").unwrap();
    let err = put_log(
        store,
        &kbad,
        LogBody::Stream {
            stream: chunked(vec![b'a'; 100], 10),
            size: 101,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StorageError::Body { .. }), "{err}");
    assert!(err.to_string().contains(kbad.as_str()), "{err}");
    assert!(store.head(&kbad).await.unwrap_err().is_not_found());

    // A plain object is not a log.
    let plain = key("plain.txt");
    store
        .put_bytes(&plain, Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap();
    let err = get_log(store, &plain).await.err().unwrap();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    // Data that is not zstd under a log's metadata is reported as corrupt when read.
    let fake = key("fake/log.zst");
    store
        .put_bytes(
            &fake,
            Bytes::from_static(b"definitely not zstd"),
            PutOptions {
                content_encoding: Some("zstd".into()),
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    let err = read_log(store, &fake, u64::MAX).await.unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("fake/log.zst"), "{err}");
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
}

async fn keys_stay_inside(fx: Fixture) {
    let store = &*fx.store;
    // Escaping keys never reach the store: they cannot even be constructed.
    for bad in [
        "../outside",
        "a/../../outside",
        "/etc/passwd",
        "a//b",
        "a\\b",
        "a\0b",
    ] {
        let err = ObjectKey::new(bad).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().starts_with("invalid object key `"), "{err}");
    }
    // Awkward components of the key scheme are encoded into single segments and round-trip.
    let awkward = [
        ("..", "..", ".."),
        (
            "e/../..",
            "nightly+rustflags=-Zfoo",
            "git:https://host/x.git#rev",
        ),
        ("100%", "lockfiles", "reg:a b@1.0.0"),
        ("日本", "report", "%2E%2E"),
    ];
    for (e, t, c) in awkward {
        let k = keys::log(e, t, c).unwrap();
        store
            .put_bytes(
                &k,
                Bytes::from(format!("{e}|{t}|{c}")),
                PutOptions::default(),
            )
            .await
            .unwrap();
        let listed = store
            .list(&keys::experiment_prefix(e).unwrap())
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].key, k);
        assert_eq!(
            keys::parse(&listed[0].key).unwrap(),
            keys::ParsedKey::Log {
                experiment: e.into(),
                toolchain: t.into(),
                krate: c.into()
            }
        );
        assert_eq!(
            &get_all(store, &k).await.unwrap()[..],
            format!("{e}|{t}|{c}").as_bytes()
        );
    }
    // Everything the backend wrote is inside its own area.
    let files = fx.object_files();
    assert_eq!(files.len(), awkward.len(), "{files:?}");
    let lockfile = keys::lockfile("100%", "reg:a b@1.0.0").unwrap();
    store
        .put_bytes(
            &lockfile,
            Bytes::from_static(b"[[package]]"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    // The lockfile area holds the lockfile, not the log of a toolchain named `lockfiles`.
    let lockfiles = store
        .list(&keys::lockfiles_prefix("100%").unwrap())
        .await
        .unwrap();
    assert_eq!(lockfiles.len(), 1);
    assert_eq!(lockfiles[0].key, lockfile);
}

async fn over_cap_is_refused(fx: Fixture) {
    // This fixture's cap is 6 MiB: larger than one 5 MiB part, so on S3 the refusal happens in the
    // middle of a multipart upload, which must be aborted.
    let store = &*fx.store;
    assert_eq!(store.max_object_size(), 6 * MIB as u64);
    let k = key("caps/too-big.bin");
    let err = store
        .put(
            &k,
            chunked(random_bytes(8 * MIB, 1), MIB),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StorageError::TooLarge { cap, .. } if cap == 6 * MIB as u64),
        "{msg}"
    );
    assert!(
        msg.contains("caps/too-big.bin") && msg.contains("6291456"),
        "{msg}"
    );
    assert!(!err.is_transient());
    assert!(store.head(&k).await.unwrap_err().is_not_found());
    assert!(store.list(&key("caps")).await.unwrap().is_empty());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
    assert!(fx.object_files().is_empty(), "{:?}", fx.object_files());

    // Exactly the cap is fine; one byte more is not.
    let at_cap = key("caps/at-cap.bin");
    store
        .put(
            &at_cap,
            chunked(random_bytes(6 * MIB, 2), 3 * MIB),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let over = key("caps/over.bin");
    let err = store
        .put(
            &over,
            chunked(random_bytes(6 * MIB + 1, 3), 3 * MIB),
            PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    assert!(store.head(&over).await.unwrap_err().is_not_found());

    // A log whose compressed form is over the cap (incompressible data) is refused the same way.
    let log_key = keys::log("e", "stable", "reg:noise@1.0.0").unwrap();
    let err = put_log(store, &log_key, random_bytes(7 * MIB, 4))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    assert!(store.head(&log_key).await.unwrap_err().is_not_found());
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());
    assert_eq!(
        store
            .list(&key("caps"))
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect::<Vec<_>>(),
        vec!["caps/at-cap.bin"]
    );
}

async fn failed_put_keeps_old_object(fx: Fixture) {
    let store = &*fx.store;
    let k = key("atomic/object");
    store
        .put_bytes(&k, Bytes::from_static(b"old"), PutOptions::default())
        .await
        .unwrap();
    // Small body failing before the end.
    let err = store
        .put(&k, failing_after(vec![b'n'; 1000]), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Body { .. }), "{err}");
    assert!(err.to_string().contains("atomic/object"), "{err}");
    assert_eq!(&get_all(store, &k).await.unwrap()[..], b"old");
    // Large body failing after a part went up (multipart on S3).
    let mut big = chunked(random_bytes(6 * MIB, 5), MIB);
    big = big.chain(failing_after(vec![1; 10])).boxed();
    let err = store.put(&k, big, PutOptions::default()).await.unwrap_err();
    assert!(matches!(err, StorageError::Body { .. }), "{err}");
    assert_eq!(&get_all(store, &k).await.unwrap()[..], b"old");
    assert!(fx.leftovers().is_empty(), "{:?}", fx.leftovers());

    // Bad metadata is refused before anything is sent.
    let err = store
        .put_bytes(
            &key("atomic/meta"),
            Bytes::from_static(b"x"),
            PutOptions::default().with_metadata("Bad Name", "v"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidMetadata { .. }), "{err}");
    assert!(err.to_string().contains("atomic/meta"), "{err}");
    assert!(!store.exists(&key("atomic/meta")).await.unwrap());
}

async fn missing_objects(fx: Fixture) {
    let store = &*fx.store;
    let k = key("no/such/object");
    for err in [
        store.head(&k).await.unwrap_err(),
        store.get(&k).await.unwrap_err(),
        get_log(store, &k).await.err().unwrap(),
    ] {
        assert!(err.is_not_found(), "{err}");
        assert!(!err.is_transient());
        let msg = err.to_string();
        assert!(msg.contains("`no/such/object`"), "{msg}");
        assert!(msg.contains(store.describe()), "{msg}");
    }
    assert!(!store.exists(&k).await.unwrap());
    assert!(store.list(&key("no")).await.unwrap().is_empty());
    assert_eq!(store.delete_prefix(&key("no")).await.unwrap(), 0);
    // A prefix of existing keys is not itself an object.
    store
        .put_bytes(
            &key("dir/child"),
            Bytes::from_static(b"c"),
            PutOptions::default(),
        )
        .await
        .unwrap();
    assert!(store.head(&key("dir")).await.unwrap_err().is_not_found());
    assert!(store.get(&key("dir")).await.unwrap_err().is_not_found());
    // Below an object there is nothing either.
    assert!(
        store
            .head(&key("dir/child/grandchild"))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn put_get_head() {
                super::put_get_head($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_and_delete_prefix() {
                super::list_and_delete_prefix($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_multipart_object() {
                super::large_multipart_object($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn zstd_log_round_trip() {
                super::zstd_log_round_trip($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_stay_inside() {
                super::keys_stay_inside($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_cap_is_refused() {
                super::over_cap_is_refused($make(6 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn failed_put_keeps_old_object() {
                super::failed_put_keeps_old_object($make(64 * MIB as u64).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn missing_objects() {
                super::missing_objects($make(64 * MIB as u64).await).await;
            }
        }
    };
}

conformance!(local, Fixture::local);
conformance!(s3, Fixture::s3);
