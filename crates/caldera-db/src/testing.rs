//! Test harness: one private Postgres cluster per test binary, a fresh database per test.
//!
//! The cluster is started lazily by the first test that asks for a database and is stopped and
//! removed automatically when the test binary exits (see [`crate::embedded`]). Every test gets its
//! own database cloned from a migrated template, so tests run in parallel without sharing state.
//!
//! Set `CALDERA_TEST_DATABASE_URL` (a superuser URL, database part ignored) to use an existing
//! server instead of starting one.

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

use crate::PgPool;
use crate::embedded::{ClusterOptions, PrivatePostgres};

const TEMPLATE: &str = "caldera_template";

struct Cluster {
    /// URL without the database name, e.g. `postgres://caldera@127.0.0.1:5433`
    base: String,
    /// kept so the cluster handle lives as long as the test binary (it stops on process exit)
    _server: Option<PrivatePostgres>,
}

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

async fn cluster() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            let (base, server) = match std::env::var("CALDERA_TEST_DATABASE_URL") {
                Ok(url) => (
                    url.rsplit_once('/')
                        .map(|(b, _)| b.to_owned())
                        .unwrap_or(url),
                    None,
                ),
                Err(_) => {
                    let dir = tempfile_dir();
                    let server = PrivatePostgres::start(ClusterOptions {
                        dir,
                        port: 0,
                        ephemeral: true,
                        unsafe_fast: true,
                        statement_stats: false,
                    })
                    .await
                    .expect("start the private test Postgres cluster");
                    let base = server.url("").trim_end_matches('/').to_owned();
                    (base, Some(server))
                }
            };
            let mut admin = PgConnection::connect(&format!("{base}/postgres"))
                .await
                .expect("connect as admin");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {TEMPLATE}"))
                .execute(&mut admin)
                .await
                .ok();
            sqlx::query(&format!("CREATE DATABASE {TEMPLATE}"))
                .execute(&mut admin)
                .await
                .expect("create template");
            let pool = crate::connect(&format!("{base}/{TEMPLATE}"), 2)
                .await
                .expect("connect template");
            crate::migrate(&pool).await.expect("migrate template");
            pool.close().await;
            Cluster {
                base,
                _server: server,
            }
        })
        .await
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "caldera-test-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create test cluster dir");
    dir
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// Create a fresh database cloned from the migrated template.
    pub async fn new() -> TestDb {
        Self::create(true).await
    }

    /// Create a fresh, empty database (no migrations applied), e.g. to test the migrations.
    pub async fn empty() -> TestDb {
        Self::create(false).await
    }

    async fn create(migrated: bool) -> TestDb {
        let cluster = cluster().await;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{}/postgres", cluster.base))
            .await
            .expect("connect as admin");
        let template = if migrated { TEMPLATE } else { "template0" };
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = format!("{}/{name}", cluster.base);
        let pool = crate::connect(&url, 10)
            .await
            .expect("connect test database");
        TestDb { pool, url, name }
    }

    /// URL of the cluster's maintenance database (for tests that need a second database).
    pub async fn admin_url() -> String {
        format!("{}/postgres", cluster().await.base)
    }
}
