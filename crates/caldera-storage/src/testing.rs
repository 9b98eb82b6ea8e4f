//! A real S3-compatible server for tests (feature `testing`).
//!
//! [`S3Server`] runs [`s3s-fs`](https://crates.io/crates/s3s-fs) in process: a full S3 HTTP server
//! (SigV4 authentication, multipart uploads, listing, batch delete) backed by a temporary directory,
//! listening on a random loopback port. It can be stopped and restarted on the same port with the same
//! data, which is how outage tests are written, and it counts completed writes per key, so tests can
//! check that an object arrived exactly once. Where s3s-fs departs from S3 in ways caldera's tests
//! notice, the server answers as S3 does: a GET or HEAD of a key that is a "directory" (a prefix of
//! other keys) is 404 `NoSuchKey` rather than 500, and a request on a bucket that does not exist is 404
//! `NoSuchBucket` rather than a put silently creating the bucket.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use caldera_storage::testing::S3Server;
//! let server = S3Server::start().await?;
//! let store = caldera_storage::open(&server.config()).expect("valid config");
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::{MIN_PART_SIZE, S3Credentials, S3Location, StorageConfig, StorageLocation};

type WriteCounts = Arc<Mutex<HashMap<(String, String), u64>>>;

#[derive(Clone, Default)]
struct Observed {
    writes: WriteCounts,
    parts_started: Arc<watch::Sender<u64>>,
}

/// An in-process S3-compatible server over a temporary directory; see the [module docs](self).
///
/// Dropping it stops the server and deletes its data.
pub struct S3Server {
    data: tempfile::TempDir,
    addr: SocketAddr,
    observed: Observed,
    running: Option<Running>,
}

struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint())
            .field("data", &self.data.path())
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl S3Server {
    /// The access key id the server accepts.
    pub const ACCESS_KEY_ID: &'static str = "caldera-test-access-key";
    /// The secret access key the server accepts.
    pub const SECRET_ACCESS_KEY: &'static str = "caldera-test-secret-key";
    /// A bucket created at start.
    pub const BUCKET: &'static str = "caldera-test";

    /// Starts a server on `127.0.0.1` at a random port, over a fresh temporary directory, with the
    /// bucket [`S3Server::BUCKET`] created.
    pub async fn start() -> io::Result<S3Server> {
        let data = tempfile::Builder::new().prefix("caldera-s3-").tempdir()?;
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut server = S3Server {
            data,
            addr,
            observed: Observed::default(),
            running: None,
        };
        server.create_bucket(Self::BUCKET)?;
        server.serve(listener)?;
        Ok(server)
    }

    fn serve(&mut self, listener: TcpListener) -> io::Result<()> {
        let fs = s3s_fs::FileSystem::new(self.data.path())
            .map_err(|e| io::Error::other(format!("s3s-fs: {e:?}")))?;
        let service = {
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(
                Self::ACCESS_KEY_ID,
                Self::SECRET_ACCESS_KEY,
            ));
            builder.build()
        };
        let (shutdown, rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            service,
            self.data.path().to_owned(),
            self.observed.clone(),
            rx,
        ));
        self.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The directory holding the buckets (one sub-directory each).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Where the objects of `bucket` live on disk.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.data.path().join(bucket)
    }

    /// Creates a bucket (a directory, for s3s-fs).
    pub fn create_bucket(&self, bucket: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.bucket_dir(bucket))
    }

    /// The credentials the server accepts.
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials::new(Self::ACCESS_KEY_ID, Self::SECRET_ACCESS_KEY)
    }

    /// The location of `bucket` (optionally under `prefix`) on this server, path-style.
    pub fn location(&self, bucket: &str, prefix: Option<&str>) -> S3Location {
        S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.map(|p| p.parse().expect("valid prefix")),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".to_owned()),
            path_style: true,
        }
    }

    /// A configuration for [`S3Server::BUCKET`] with the right credentials, the smallest part size S3
    /// allows ([`MIN_PART_SIZE`], so multipart uploads need less test data), one attempt per request
    /// (so outage tests fail fast), and the default size cap.
    pub fn config(&self) -> StorageConfig {
        self.config_for(Self::BUCKET, None)
    }

    /// Like [`S3Server::config`] for another bucket and an optional prefix.
    pub fn config_for(&self, bucket: &str, prefix: Option<&str>) -> StorageConfig {
        let mut config = StorageConfig::new(StorageLocation::S3(self.location(bucket, prefix)));
        config.credentials = Some(self.credentials());
        config.part_size = MIN_PART_SIZE;
        config.max_attempts = 1;
        config
    }

    /// Whether the server is accepting connections.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the server like a crash would: the port closes and open connections are cut.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(());
            let _ = running.task.await;
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener)
    }

    /// How many writes of `bucket`/`key` (full S3 key, including any store prefix) the server
    /// completed successfully: `PutObject` and `CompleteMultipartUpload` responses with a 2xx status.
    pub fn completed_writes(&self, bucket: &str, key: &str) -> u64 {
        self.observed
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(bucket.to_owned(), key.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Number of `UploadPart` requests the server has started to receive (across restarts).
    pub fn part_uploads_started(&self) -> u64 {
        *self.observed.parts_started.borrow()
    }

    /// Waits until the server has started to receive at least `n` `UploadPart` requests in total — to
    /// stop it in the middle of a multipart upload.
    pub async fn wait_for_part_uploads(&self, n: u64) {
        let mut rx = self.observed.parts_started.subscribe();
        // The sender lives as long as `self`, so this only ends once the count is reached.
        let _ = rx.wait_for(|&count| count >= n).await;
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: S3Service,
    root: PathBuf,
    observed: Observed,
    mut shutdown: oneshot::Receiver<()>,
) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        let socket = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => continue,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let service = service.clone();
        let observed = observed.clone();
        let root = root.clone();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let service = service.clone();
            let observed = observed.clone();
            let root = root.clone();
            async move {
                if let Some(response) = no_such_bucket(&root, &req).await {
                    return Ok(response);
                }
                if let Some(response) = directory_is_not_an_object(&root, &req).await {
                    return Ok(response);
                }
                let method = req.method().clone();
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or("").to_owned();
                let has = |param: &str| {
                    query
                        .split('&')
                        .any(|kv| kv.split('=').next() == Some(param))
                };
                if method == http::Method::PUT && has("partNumber") {
                    observed.parts_started.send_modify(|n| *n += 1);
                }
                let is_copy = req.headers().contains_key("x-amz-copy-source");
                let response = service.call(req.map(s3s::Body::from)).await;
                if let Ok(r) = &response
                    && r.status().is_success()
                {
                    let put_object = method == http::Method::PUT
                        && !is_copy
                        && !has("partNumber")
                        && !has("uploadId");
                    let complete = method == http::Method::POST && has("uploadId");
                    if (put_object || complete)
                        && let Some((bucket, key)) = path.trim_start_matches('/').split_once('/')
                    {
                        *observed
                            .writes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry((percent_decode(bucket), percent_decode(key)))
                            .or_default() += 1;
                    }
                }
                response
            }
        });
        let conn = http
            .serve_connection(TokioIo::new(socket), svc)
            .into_owned();
        connections.spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    // Cut every open connection, as a crashed server would.
    connections.shutdown().await;
}

fn s3_error(
    method: &http::Method,
    status: http::StatusCode,
    code: &str,
    message: &str,
) -> http::Response<s3s::Body> {
    let body = if method == http::Method::HEAD {
        s3s::Body::empty()
    } else {
        s3s::Body::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ))
    };
    http::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(body)
        .expect("valid response")
}

/// s3s-fs creates a missing bucket's directory on `PutObject`; S3 answers 404 `NoSuchBucket` to any
/// object request on a bucket that does not exist, and so does this server.
async fn no_such_bucket<B>(
    root: &Path,
    req: &http::Request<B>,
) -> Option<http::Response<s3s::Body>> {
    let (bucket, _key) = req.uri().path().trim_start_matches('/').split_once('/')?;
    let bucket = percent_decode(bucket);
    if bucket.is_empty() || bucket.contains('/') || bucket.starts_with('.') {
        return None;
    }
    match tokio::fs::metadata(root.join(&bucket)).await {
        Ok(_) => None,
        Err(_) => Some(s3_error(
            req.method(),
            http::StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        )),
    }
}

/// s3s-fs answers 500 to a GET or HEAD of a key that is a directory on its disk (a prefix of other
/// keys); S3 answers 404 `NoSuchKey`, and so does this server.
async fn directory_is_not_an_object<B>(
    root: &Path,
    req: &http::Request<B>,
) -> Option<http::Response<s3s::Body>> {
    // Plain object reads only: the SDK adds `x-id=GetObject`, sub-resources (`?acl`, …) are left alone.
    let plain_read = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .all(|kv| kv.is_empty() || kv.starts_with("x-id="));
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) || !plain_read {
        return None;
    }
    let (bucket, key) = req.uri().path().trim_start_matches('/').split_once('/')?;
    let (bucket, key) = (percent_decode(bucket), percent_decode(key));
    if key.is_empty() || key.split('/').any(|s| s == ".." || s == ".") || bucket.contains("..") {
        return None;
    }
    let meta = tokio::fs::metadata(root.join(&bucket).join(&key))
        .await
        .ok()?;
    if !meta.is_dir() {
        return None;
    }
    Some(s3_error(
        req.method(),
        http::StatusCode::NOT_FOUND,
        "NoSuchKey",
        "The specified key does not exist.",
    ))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Test data and file listings shared by the storage tests and the worker's upload-spool tests.

/// Every file below `dir`, sorted (none when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random (incompressible) bytes; xorshift, because it is fast even in debug
/// builds.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        v.extend_from_slice(&state.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A log-like text of about `len` bytes.
pub fn log_text(len: usize) -> String {
    let mut s = String::with_capacity(len + 100);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!(
            "   Compiling crate-{i} v0.{}.{} (registry+https://example.invalid/index)\n",
            i % 7,
            i % 13
        ));
        i += 1;
    }
    s.truncate(len);
    s
}
