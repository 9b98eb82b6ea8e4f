//! A sparse index of the test's own: the files of a directory served over real HTTP (axum on a
//! free port of 127.0.0.1), laid out as cargo's sparse protocol says. Tests write crates into it
//! with [`TestIndex::publish`], point a master at [`TestIndex::url`], and can make it fail
//! ([`TestIndex::set_failing`]) or count the requests it answered ([`TestIndex::requests`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use caldera_core::registry::sparse_path;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Served {
    root: PathBuf,
    failing: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

/// A running test index; see the module docs. Stop it with [`TestIndex::stop`].
pub struct TestIndex {
    addr: SocketAddr,
    served: Served,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One version as [`TestIndex::publish`] writes it: `(version, yanked)`.
pub type Published<'a> = (&'a str, bool);

impl TestIndex {
    /// Serves `root` (which it writes `config.json` into) on a free port.
    pub async fn start(root: &Path) -> TestIndex {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(
            root.join("config.json"),
            format!(r#"{{"dl":"http://{addr}/dl","api":null}}"#),
        )
        .unwrap();
        let served = Served {
            root: root.to_owned(),
            failing: Arc::default(),
            requests: Arc::default(),
        };
        let app = Router::new().fallback(serve).with_state(served.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .unwrap();
        });
        TestIndex {
            addr,
            served,
            shutdown,
            task,
        }
    }

    /// `http://ADDR/`, the index's root.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Writes the index file of crate `name` (spelled as given) with these versions, replacing
    /// any earlier file; each version depends on nothing and has a checksum made from its name
    /// and number.
    pub fn publish(&self, name: &str, versions: &[Published<'_>]) {
        let text: String = versions
            .iter()
            .map(|(vers, yanked)| index_line(name, vers, &[], *yanked) + "\n")
            .collect();
        self.write(name, &text);
    }

    /// Writes the index file of crate `name` as `text`, as it is.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.served.root.join(sparse_path(name));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// While `failing`, every request is answered 503.
    pub fn set_failing(&self, failing: bool) {
        self.served.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests answered so far (any path, any answer).
    pub fn requests(&self) -> usize {
        self.served.requests.load(Ordering::SeqCst)
    }

    /// Stops serving; the port is closed when this returns.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// One line of an index file: `name@vers`, depending on `deps` (`(name, kind)`), with a checksum
/// that is the hex of `name` and `vers`'s bytes, padded to 64 digits.
pub fn index_line(name: &str, vers: &str, deps: &[(&str, &str)], yanked: bool) -> String {
    let mut cksum: String = format!("{name}{vers}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    cksum.truncate(64);
    while cksum.len() < 64 {
        cksum.push('0');
    }
    let deps: Vec<serde_json::Value> = deps
        .iter()
        .map(|(dep, kind)| {
            serde_json::json!({"name": dep, "req": "*", "features": [], "optional": false,
                "default_features": true, "target": null, "kind": kind})
        })
        .collect();
    serde_json::json!({"name": name, "vers": vers, "deps": deps, "cksum": cksum,
        "features": {}, "yanked": yanked, "v": 2})
    .to_string()
}

async fn serve(State(served): State<Served>, uri: Uri) -> (StatusCode, String) {
    served.requests.fetch_add(1, Ordering::SeqCst);
    if served.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose".into());
    }
    let relative = uri.path().trim_start_matches('/');
    if relative
        .split('/')
        .any(|part| part == ".." || part.is_empty())
    {
        return (StatusCode::NOT_FOUND, String::new());
    }
    match tokio::fs::read_to_string(served.root.join(relative)).await {
        Ok(text) => (StatusCode::OK, text),
        Err(_) => (StatusCode::NOT_FOUND, String::new()),
    }
}
