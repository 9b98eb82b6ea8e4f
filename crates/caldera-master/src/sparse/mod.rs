//! The registry's live index, read over HTTP with cargo's sparse protocol: one file per crate at
//! `{url}{caldera_core::registry::sparse_path(name)}`, JSON lines of its versions.
//!
//! The master reads it to resolve crate names when an experiment or a crate list is created (see
//! [`crate::resolve`]): a bare name becomes its newest version, and an exact version must exist.
//! Files are kept in memory for [`SparseIndex::ttl`] (a crate found and a crate not found alike),
//! and at most [`DEFAULT_CONCURRENCY`] requests are in flight at once, so a list of 10,000 crates
//! is 10,000 small requests spread over a few connections, and naming the same crates again soon
//! after costs nothing. A failed request is not cached; it is tried once more before it counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caldera_core::registry::{IndexVersion, parse_index_versions, sparse_path};
use tokio::sync::Semaphore;

/// crates.io's sparse index.
pub const DEFAULT_URL: &str = "https://index.crates.io/";
/// How long a crate's file is reused before it is asked for again.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Files kept at most; past it, expired files are dropped (and all of them if none is expired).
const MAX_CACHED: usize = 200_000;
/// The largest index file read (crates.io's largest are a few MiB).
const MAX_FILE_BYTES: usize = 64 << 20;

/// One crate's versions, or `None` when the index has no such crate.
pub type IndexFile = Option<Arc<Vec<IndexVersion>>>;

/// The index could not answer: the master cannot tell whether a crate exists (a 503, never a 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the registry index at {url} is unreachable: {message}")]
pub struct IndexError {
    /// The index's root URL.
    pub url: String,
    /// What failed: the request, or an answer that is not an index file.
    pub message: String,
}

struct Cached {
    at: Instant,
    file: IndexFile,
}

/// A client of one sparse index; see the module docs.
pub struct SparseIndex {
    url: reqwest::Url,
    http: reqwest::Client,
    ttl: Duration,
    permits: Semaphore,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for SparseIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseIndex")
            .field("url", &self.url.as_str())
            .finish()
    }
}

impl SparseIndex {
    /// A client of the index at `url` (`http://` or `https://`, optionally written with cargo's
    /// `sparse+` prefix; a missing final `/` is added), with the default TTL and concurrency.
    pub fn new(url: &str) -> Result<SparseIndex, String> {
        SparseIndex::with_limits(url, DEFAULT_TTL, DEFAULT_CONCURRENCY)
    }

    /// [`SparseIndex::new`] with another TTL and number of requests in flight.
    pub fn with_limits(
        url: &str,
        ttl: Duration,
        concurrency: usize,
    ) -> Result<SparseIndex, String> {
        let written = url;
        let mut url = url.strip_prefix("sparse+").unwrap_or(url).to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        let url = reqwest::Url::parse(&url)
            .map_err(|e| format!("invalid registry index URL {written:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(format!(
                "invalid registry index URL {written:?}: expected http:// or https:// and no query"
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("caldera-master/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(SparseIndex {
            url,
            http,
            ttl,
            permits: Semaphore::new(concurrency.max(1)),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The index's root URL (ending in `/`).
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// How long a file is reused.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The versions of crate `name` (a valid crate name; the index's path ignores ASCII case),
    /// from the cache when it is fresh.
    pub async fn versions(&self, name: &str) -> Result<IndexFile, IndexError> {
        let key = name.to_ascii_lowercase();
        if let Some(file) = self.cached(&key) {
            return Ok(file);
        }
        let _permit = self.permits.acquire().await.map_err(|e| self.error(e))?;
        // Another request may have filled it while this one waited.
        if let Some(file) = self.cached(&key) {
            return Ok(file);
        }
        let file = match self.fetch(&key).await {
            Err(e) if e.retry => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                self.fetch(&key).await
            }
            other => other,
        }
        .map_err(|e| e.error)?;
        self.store(key, file.clone());
        Ok(file)
    }

    fn cached(&self, key: &str) -> Option<IndexFile> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let hit = cache.get(key)?;
        (hit.at.elapsed() < self.ttl).then(|| hit.file.clone())
    }

    fn store(&self, key: String, file: IndexFile) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.at.elapsed() < self.ttl);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                at: Instant::now(),
                file,
            },
        );
    }

    fn error(&self, message: impl std::fmt::Display) -> IndexError {
        IndexError {
            url: self.url.to_string(),
            message: message.to_string(),
        }
    }

    /// One request for the file of `key` (lowercased): 404, 410 and 451 mean no such crate, as
    /// cargo reads them; any other answer but 200 is an error, retried when it is a server's.
    async fn fetch(&self, key: &str) -> Result<IndexFile, FetchError> {
        let url = format!("{}{}", self.url, sparse_path(key));
        let fail = |retry: bool, message: String| FetchError {
            retry,
            error: self.error(message),
        };
        let response = self
            .http
            .get(&url)
            .header("cargo-protocol", "version=1")
            .header("accept", "text/plain")
            .send()
            .await
            .map_err(|e| fail(true, format!("GET {url}: {}", error_chain(&e))))?;
        let status = response.status();
        if matches!(status.as_u16(), 404 | 410 | 451) {
            return Ok(None);
        }
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            return Err(fail(retry, format!("GET {url}: {status}")));
        }
        let body = read_capped(response, MAX_FILE_BYTES)
            .await
            .map_err(|e| fail(true, format!("GET {url}: {e}")))?;
        let text = String::from_utf8(body)
            .map_err(|_| fail(false, format!("GET {url}: the file is not UTF-8")))?;
        let versions = parse_index_versions(&text)
            .map_err(|e| fail(false, format!("GET {url}: not an index file: {e}")))?;
        Ok(Some(Arc::new(versions)))
    }
}

struct FetchError {
    retry: bool,
    error: IndexError,
}

/// The body of `response`, refused past `cap` bytes.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            return Err(format!("the file is larger than {cap} bytes"));
        }
    }
    Ok(body)
}

/// An error with its sources (reqwest's own message rarely says what failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(feature = "testing")]
pub mod testing;
