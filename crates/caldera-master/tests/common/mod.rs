//! The harness of the master's integration tests: a fresh database, object storage (a local
//! directory or a real S3-compatible server), a master started the way `caldera master` starts
//! one ([`caldera_master::Master::start`]: real TCP, the scheduler running), a token of every
//! role and an HTTP client.
#![allow(dead_code)]

use std::sync::Arc;

use caldera_db::testing::TestDb;
use caldera_db::tokens::{self, Role};
use caldera_master::dashboard::{DashboardConfig, fixture};
use caldera_master::{Master, MasterConfig};
use caldera_storage::ObjectStore;
use caldera_storage::testing::S3Server;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

/// Where the master's objects live.
#[derive(Clone, Copy, Debug, Default)]
pub enum Backend {
    /// A local directory (objects under `TestMaster::dir`/objects).
    #[default]
    Local,
    /// A real S3-compatible server of the test's own (`TestMaster::s3`).
    S3,
}

/// How a test's master is set up.
#[derive(Default)]
pub struct Setup {
    pub backend: Backend,
    pub dashboard: DashboardConfig,
    /// A fixture experiment of this name (`caldera_master::dashboard::fixture::create`), made
    /// before the master starts.
    pub fixture: Option<&'static str>,
    /// The live registry index and the registry listing (none by default: nothing looked up).
    pub index: Option<Arc<caldera_master::sparse::SparseIndex>>,
    pub registry: Option<Arc<caldera_core::registry::RegistryListing>>,
}

/// A running master with its database, its storage and a token of every role.
pub struct TestMaster {
    /// `http://ADDR` of the HTTP API and the dashboard.
    pub base: String,
    pub db: TestDb,
    pub store: Arc<dyn ObjectStore>,
    /// A client that does not follow redirects (the dashboard's are checked as they are).
    pub http: reqwest::Client,
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    pub worker: String,
    /// The id of the worker token.
    pub worker_token_id: Uuid,
    pub s3: Option<S3Server>,
    /// The local backend's root (and a scratch directory either way).
    pub dir: tempfile::TempDir,
    pub master: Master,
}

impl TestMaster {
    pub async fn start(setup: Setup) -> TestMaster {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let (store, s3) = open_store(setup.backend, &dir).await;
        if let Some(name) = setup.fixture {
            fixture::create(&db.pool, &store, name).await;
        }
        let master = Master::start(MasterConfig {
            dashboard: setup.dashboard,
            index: setup.index,
            registry: setup.registry,
            ..MasterConfig::new(db.pool.clone(), store.clone())
        })
        .await
        .unwrap();
        let mut secrets = Vec::new();
        for role in [Role::Admin, Role::Operator, Role::Viewer, Role::Worker] {
            secrets.push(tokens::create(&db.pool, role.as_str(), role).await.unwrap());
        }
        let [admin, operator, viewer, (worker_row, worker)] = secrets.try_into().unwrap();
        TestMaster {
            base: master.http_url(),
            db,
            store,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            admin: admin.1,
            operator: operator.1,
            viewer: viewer.1,
            worker,
            worker_token_id: worker_row.id,
            s3,
            dir,
            master,
        }
    }

    /// Sends a request (a JSON body as text) to `{base}{path}`; the status and the body, as JSON
    /// or, when it is not JSON, as a string.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// GETs `{base}{path}` as text.
    pub async fn text(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// The rows of `tables`, as one comparable value (what a rejected call must not change).
    pub async fn snapshot_of(&self, tables: &[&str]) -> Value {
        let mut all = serde_json::Map::new();
        for table in tables {
            let v: Value = sqlx::query_scalar(&format!(
                "SELECT coalesce(json_agg(t ORDER BY t::text), '[]'::json) FROM {table} t"
            ))
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
            all.insert((*table).into(), v);
        }
        Value::Object(all)
    }
}

/// The object store of `backend`: under `dir`, or in a new S3 server (returned with it).
async fn open_store(
    backend: Backend,
    dir: &tempfile::TempDir,
) -> (Arc<dyn ObjectStore>, Option<S3Server>) {
    match backend {
        Backend::Local => (
            caldera_storage::open(&caldera_storage::StorageConfig::local(dir.path())).unwrap(),
            None,
        ),
        Backend::S3 => {
            let server = S3Server::start().await.unwrap();
            (
                caldera_storage::open(&server.config()).unwrap(),
                Some(server),
            )
        }
    }
}
