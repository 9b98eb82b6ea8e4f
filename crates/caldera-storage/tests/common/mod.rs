//! Fixtures shared by the integration tests: one store per backend, plus a look behind the API at what
//! the backend left on disk.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use caldera_storage::testing::S3Server;
// each test binary uses some of these
#[allow(unused_imports)]
pub use caldera_storage::testing::{files_under, log_text, random_bytes};
use caldera_storage::{ByteStream, ObjectStore, StorageConfig};
use futures::StreamExt;

/// A store under test and the means to inspect its backend.
pub struct Fixture {
    pub store: Arc<dyn ObjectStore>,
    pub backend: Backend,
}

pub enum Backend {
    Local { dir: tempfile::TempDir },
    S3 { server: S3Server },
}

impl Fixture {
    pub async fn local(max_object_size: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StorageConfig::local(dir.path().join("store"));
        config.max_object_size = max_object_size;
        Fixture {
            store: caldera_storage::open(&config).unwrap(),
            backend: Backend::Local { dir },
        }
    }

    pub async fn s3(max_object_size: u64) -> Fixture {
        let server = S3Server::start().await.unwrap();
        let mut config = server.config();
        config.max_object_size = max_object_size;
        Fixture {
            store: caldera_storage::open(&config).unwrap(),
            backend: Backend::S3 { server },
        }
    }

    pub fn s3_server(&self) -> Option<&S3Server> {
        match &self.backend {
            Backend::S3 { server } => Some(server),
            Backend::Local { .. } => None,
        }
    }

    /// Files of partial or aborted writes the backend left behind: temporary files of the local
    /// store; multipart parts, upload records and temporary files of the S3 server.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Local { dir } => files_under(&dir.path().join("store").join("tmp")),
            Backend::S3 { server } => files_under(server.data_dir())
                .into_iter()
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with(".upload_id-")
                        || name.starts_with(".tmp.")
                        || name.contains(".upload-")
                        || name.starts_with(".upload")
                })
                .collect(),
        }
    }

    /// Every file holding object data, wherever the backend keeps it.
    pub fn object_files(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Local { dir } => files_under(&dir.path().join("store").join("objects")),
            Backend::S3 { server } => files_under(&server.bucket_dir(S3Server::BUCKET)),
        }
    }
}

/// A stream of `data` in chunks of `chunk` bytes (uneven sizes exercise part boundaries).
pub fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A stream that yields `good` bytes and then fails.
pub fn failing_after(good: Vec<u8>) -> ByteStream {
    futures::stream::iter(vec![
        Ok(Bytes::from(good)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the build container went away",
        )),
    ])
    .boxed()
}
