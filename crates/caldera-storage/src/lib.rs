//! Object storage for caldera.
//!
//! Workers upload logs and lockfiles here, the master writes report files and reads everything back;
//! Postgres only stores the keys. This crate provides:
//!
//! * [`ObjectStore`], an object-safe async trait (`Arc<dyn ObjectStore>`), with two backends:
//!   [`LocalStore`] (a directory on local disk, the embedded default) and [`S3Store`] (anything that speaks
//!   S3). [`open`] builds one from a [`StorageConfig`] (`local:/path` or
//!   `s3://bucket/prefix?endpoint=…&region=…&path_style=true`).
//! * [`ObjectKey`]: keys are validated when they are made, so no key can escape the store's root; the
//!   [`keys`] module holds the one key scheme caldera uses (`experiments/{experiment}/…`).
//! * [`put_log`] / [`get_log`]: logs are stored zstd-compressed, compressed and decompressed on blocking
//!   threads while streaming.
//! * [`frame`]: the one on-disk framing (magic, JSON header, body) of the local store's objects and
//!   of the worker's upload spool entries (the spool itself is `caldera_worker::upload_spool`).
//!
//! Every store enforces a per-object size cap (of the stored, compressed bytes): an object over the cap
//! is refused with [`StorageError::TooLarge`] and nothing is left behind.
//!
//! # Choice of AWS SDK features
//!
//! `aws-sdk-s3` and `aws-config` are used with `default-features = false` plus `behavior-version-latest`
//! and `rt-tokio`. Their defaults would compile `aws-lc-rs` (a C/CMake build) through
//! `default-https-client`, and the `rustls` feature still selects the legacy hyper 0.14 / rustls 0.21
//! connector. Instead the S3 backend builds its HTTP client from `aws-smithy-http-client` with
//! `rustls-ring`: hyper 1, rustls 0.23 with the ring provider (the same TLS stack as the rest of the
//! workspace), and native root certificates. SigV4a (multi-region access points) is left out.
//!
//! # Testing
//!
//! With the `testing` feature, [`testing::S3Server`] starts a real S3-compatible server (`s3s-fs`, in
//! process, on a loopback port, over a temporary directory) that tests of other crates can use.

#![warn(missing_docs)]

mod config;
mod error;
pub mod frame;
mod key;
pub mod keys;
mod local;
mod log;
mod s3;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_OBJECT_SIZE, DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Credentials,
    S3Location, StorageConfig, StorageLocation, open,
};
pub use error::StorageError;
pub use key::ObjectKey;
pub use local::LocalStore;
pub use log::{
    LOG_CONTENT_ENCODING, LOG_CONTENT_TYPE, LogBody, LogStats, ORIGINAL_SIZE_METADATA,
    compressed_log, get_log, put_log, read_log,
};
pub use s3::S3Store;
pub use store::{
    ByteStream, GetObject, ObjectBody, ObjectInfo, ObjectMeta, ObjectStore, PutOptions,
    bytes_stream, collect_body, file_stream,
};
