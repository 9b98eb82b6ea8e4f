//! The S3 backend (aws-sdk-s3).

mod errors;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::{ProvideCredentials, future as creds_future};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient,
};
use aws_sdk_s3::primitives::ByteStream as AwsByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::config::{S3Location, StorageConfig, StorageLocation};
use crate::error::StorageError;
use crate::key::ObjectKey;
use crate::store::{
    ByteStream, Capped, GetObject, ObjectInfo, ObjectMeta, ObjectStore, PutOptions,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Objects in an S3 bucket (AWS, or any S3-compatible server given an endpoint URL).
///
/// Bodies up to the part size are sent with one `PutObject`; larger ones with a multipart upload of
/// part-size parts, aborted if anything fails (including the size cap), so nothing is left behind.
/// Request checksums are only computed where S3 requires them, which keeps older self-hosted servers
/// working.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: Option<ObjectKey>,
    part_size: usize,
    max_object_size: u64,
    label: Arc<str>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.label)
            .field("part_size", &self.part_size)
            .field("max_object_size", &self.max_object_size)
            .finish_non_exhaustive()
    }
}

/// The standard AWS credential chain, built on first use (building it is async; opening a store is not).
#[derive(Debug)]
struct LazyDefaultChain {
    http_client: SharedHttpClient,
    region: Region,
    chain: OnceCell<DefaultCredentialsChain>,
}

impl ProvideCredentials for LazyDefaultChain {
    fn provide_credentials<'a>(&'a self) -> creds_future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        creds_future::ProvideCredentials::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    let conf = ProviderConfig::without_region()
                        .with_region(Some(self.region.clone()))
                        .with_http_client(self.http_client.clone());
                    DefaultCredentialsChain::builder()
                        .configure(conf)
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl S3Store {
    /// Opens the bucket a configuration names (which must be an `s3://` location). Does not contact
    /// the server.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        config.validate()?;
        let StorageLocation::S3(location) = &config.location else {
            return Err(StorageError::Config(format!(
                "`{}` is not an S3 location",
                config.location
            )));
        };
        let S3Location {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
        } = location;
        let region = region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        let region = Region::new(region);
        let http = http_client();
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            .http_client(http.clone())
            .force_path_style(*path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        builder = match &config.credentials {
            Some(c) => builder.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "caldera-config",
            )),
            None => builder.credentials_provider(LazyDefaultChain {
                http_client: http,
                region,
                chain: OnceCell::new(),
            }),
        };
        let mut label = format!("S3 bucket `{bucket}`");
        if let Some(prefix) = prefix {
            label.push_str(&format!(" (prefix `{prefix}`)"));
        }
        if let Some(endpoint) = endpoint {
            label.push_str(&format!(" at {endpoint}"));
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            part_size: usize::try_from(config.part_size)
                .map_err(|_| StorageError::Config("`part_size` is too large".to_owned()))?,
            max_object_size: config.max_object_size,
            label: label.into(),
        })
    }

    /// The underlying SDK client (for operations this crate does not wrap).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &ObjectKey) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{key}"),
            None => key.to_string(),
        }
    }

    async fn put_single(
        &self,
        key: &ObjectKey,
        body: Bytes,
        options: &PutOptions,
    ) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_length(body.len() as i64)
            .body(AwsByteStream::from(body))
            .set_content_type(options.content_type.clone())
            .set_content_encoding(options.content_encoding.clone())
            .set_metadata(metadata_map(options))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        first: Bytes,
        reader: &mut PartReader,
        options: &PutOptions,
    ) -> Result<(), StorageError> {
        let full_key = self.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full_key)
            .set_content_type(options.content_type.clone())
            .set_content_encoding(options.content_encoding.clone())
            .set_metadata(metadata_map(options))
            .send()
            .await
            .map_err(|e| self.error("start multipart upload of", key, e))?;
        let upload_id = created.upload_id().ok_or_else(|| StorageError::Backend {
            store: self.label.to_string(),
            op: "start multipart upload of",
            key: key.to_string(),
            cause: "the response has no upload id".to_owned(),
            transient: false,
        })?;
        // From here on, every exit that is not a completed upload must abort it; the guard also covers
        // the future being dropped.
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: full_key.clone(),
            upload_id: Some(upload_id.to_owned()),
        };
        let result = self
            .upload_parts(key, &full_key, upload_id, first, reader)
            .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(e) => {
                let upload_id = guard.upload_id.take().expect("still armed");
                if let Err(abort_err) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full_key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    tracing::warn!(
                        store = %self.label,
                        key = %key,
                        error = %self.error("abort multipart upload of", key, abort_err),
                        "could not abort a failed multipart upload; the bucket's lifecycle rules must clean it up"
                    );
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &ObjectKey,
        full_key: &str,
        upload_id: &str,
        first: Bytes,
        reader: &mut PartReader,
    ) -> Result<(), StorageError> {
        let mut parts = Vec::new();
        let mut next = Some(first);
        let mut number = 1;
        while let Some(part) = next {
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full_key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(AwsByteStream::from(part))
                .send()
                .await
                .map_err(|e| self.error("upload a part of", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
            number += 1;
            next = reader.next_part(self.part_size).await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("complete multipart upload of", key, e))?;
        Ok(())
    }

    fn store_relative(&self, full: &str) -> Option<ObjectKey> {
        let rel = match &self.prefix {
            Some(p) => full.strip_prefix(p.as_str())?.strip_prefix('/')?,
            None => full,
        };
        ObjectKey::new(rel).ok()
    }
}

fn metadata_map(options: &PutOptions) -> Option<HashMap<String, String>> {
    if options.metadata.is_empty() {
        None
    } else {
        Some(
            options
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Aborts a multipart upload whose put future was dropped before it finished.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id);
        handle.spawn(async move {
            let _ = request.send().await;
        });
    }
}

/// Cuts a body stream into parts, enforcing the size cap.
struct PartReader {
    body: ByteStream,
    buf: BytesMut,
    eof: bool,
    cap: Capped,
    max: u64,
    key: ObjectKey,
    label: Arc<str>,
}

impl PartReader {
    async fn fill(&mut self, want: usize) -> Result<(), StorageError> {
        while !self.eof && self.buf.len() < want {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if !self.cap.add(chunk.len()) {
                        return Err(StorageError::TooLarge {
                            store: self.label.to_string(),
                            key: self.key.to_string(),
                            cap: self.max,
                        });
                    }
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(source)) => {
                    return Err(StorageError::Body {
                        key: self.key.to_string(),
                        source,
                    });
                }
                None => self.eof = true,
            }
        }
        Ok(())
    }

    /// The next part of at most `size` bytes, or `None` at the end.
    async fn next_part(&mut self, size: usize) -> Result<Option<Bytes>, StorageError> {
        self.fill(size).await?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let n = size.min(self.buf.len());
        Ok(Some(self.buf.split_to(n).freeze()))
    }

    /// Whether any bytes follow.
    async fn has_more(&mut self) -> Result<bool, StorageError> {
        self.fill(1).await?;
        Ok(!self.buf.is_empty())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> &str {
        &self.label
    }

    fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<u64, StorageError> {
        options.validate(key)?;
        let mut reader = PartReader {
            body,
            buf: BytesMut::new(),
            eof: false,
            cap: Capped::new(self.max_object_size),
            max: self.max_object_size,
            key: key.clone(),
            label: self.label.clone(),
        };
        let first = reader.next_part(self.part_size).await?.unwrap_or_default();
        if !reader.has_more().await? {
            let n = first.len() as u64;
            self.put_single(key, first, &options).await?;
            return Ok(n);
        }
        self.put_multipart(key, first, &mut reader, &options)
            .await?;
        Ok(reader.cap.written)
    }

    async fn get(&self, key: &ObjectKey) -> Result<GetObject, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("get", key, e))?;
        let meta = ObjectMeta {
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            content_type: out.content_type().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            metadata: out
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        };
        let label = self.label.clone();
        let k = key.to_string();
        let body = futures::stream::unfold(Some(out.body), move |state| {
            let label = label.clone();
            let k = k.clone();
            async move {
                let mut body = state?;
                match body.next().await {
                    None => None,
                    Some(Ok(bytes)) => Some((Ok(bytes), Some(body))),
                    Some(Err(e)) => Some((
                        Err(StorageError::Unavailable {
                            store: label.to_string(),
                            op: "read",
                            key: k,
                            cause: DisplayErrorContext(&e).to_string(),
                        }),
                        None,
                    )),
                }
            }
        })
        .boxed();
        Ok(GetObject { meta, body })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectMeta {
            size: out
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            content_type: out.content_type().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            metadata: out
                .metadata()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
    }

    async fn list(&self, prefix: &ObjectKey) -> Result<Vec<ObjectInfo>, StorageError> {
        let full_prefix = format!("{}/", self.full_key(prefix));
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for object in page.contents() {
                let Some(full) = object.key() else { continue };
                match self.store_relative(full) {
                    Some(key) => out.push(ObjectInfo {
                        key,
                        size: object
                            .size()
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(0),
                    }),
                    None => {
                        tracing::warn!(store = %self.label, key = full, "ignoring an S3 object whose name is not a valid key")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<u64, StorageError> {
        let objects = self.list(prefix).await?;
        let mut deleted = 0;
        for batch in objects.chunks(1000) {
            let ids = batch
                .iter()
                .map(|o| {
                    ObjectIdentifier::builder()
                        .key(self.full_key(&o.key))
                        .build()
                        .expect("key is set")
                })
                .collect::<Vec<_>>();
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids))
                        .quiet(true)
                        .build()
                        .expect("objects are set"),
                )
                .send()
                .await
                .map_err(|e| self.error("delete", prefix, e))?;
            if let Some(first) = out.errors().first() {
                return Err(StorageError::Backend {
                    store: self.label.to_string(),
                    op: "delete",
                    key: first.key().unwrap_or(prefix.as_str()).to_owned(),
                    cause: format!(
                        "{}: {} ({} of {} objects in the batch failed)",
                        first.code().unwrap_or("?"),
                        first.message().unwrap_or(""),
                        out.errors().len(),
                        batch.len()
                    ),
                    transient: matches!(first.code(), Some("InternalError" | "SlowDown")),
                });
            }
            deleted += batch.len() as u64;
        }
        Ok(deleted)
    }
}
