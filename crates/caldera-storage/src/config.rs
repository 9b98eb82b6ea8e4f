//! Storage configuration: where objects live, how to authenticate, limits.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::key::ObjectKey;
use crate::local::LocalStore;
use crate::s3::S3Store;
use crate::store::ObjectStore;

/// Default per-object cap: 64 MiB of stored (compressed) bytes.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 64 * 1024 * 1024;
/// Default S3 multipart part size (and the threshold above which multipart upload is used): 8 MiB.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// The smallest part size S3 accepts: 5 MiB.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Default number of attempts the S3 client makes per request before reporting an error.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Everything needed to open an [`ObjectStore`].
///
/// Serialized as e.g.
/// `{"location": "s3://logs/caldera?endpoint=http://127.0.0.1:9000&path_style=true",
///   "credentials": {"access_key_id": "…", "secret_access_key": "…"}}`; every field but `location` has a
/// default. On the command line, the `caldera` binary's `--storage…` options build one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// Where objects live.
    pub location: StorageLocation,
    /// S3 credentials; `None` uses the standard AWS chain (environment, profile, web identity, ECS,
    /// instance metadata). Ignored for local directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3Credentials>,
    /// Per-object cap in stored bytes.
    #[serde(default = "default_max_object_size")]
    pub max_object_size: u64,
    /// S3 only: part size for multipart uploads; bodies larger than this are uploaded in parts.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// S3 only: attempts per request (the SDK's own retries, with its backoff) before an error surfaces.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_max_object_size() -> u64 {
    DEFAULT_MAX_OBJECT_SIZE
}
fn default_part_size() -> u64 {
    DEFAULT_PART_SIZE
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

impl StorageConfig {
    /// A configuration with default limits and no explicit credentials.
    pub fn new(location: StorageLocation) -> Self {
        StorageConfig {
            location,
            credentials: None,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            part_size: DEFAULT_PART_SIZE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// A local directory with default limits.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        StorageConfig::new(StorageLocation::Local(root.into()))
    }

    /// Checks the limits; the error names the offending field.
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.max_object_size == 0 {
            return Err(StorageError::Config(
                "`max_object_size` must be positive".to_owned(),
            ));
        }
        if matches!(self.location, StorageLocation::S3(_)) {
            if self.part_size < MIN_PART_SIZE {
                return Err(StorageError::Config(format!(
                    "`part_size` is {} bytes; S3 needs at least {MIN_PART_SIZE}",
                    self.part_size
                )));
            }
            if self.max_attempts == 0 {
                return Err(StorageError::Config(
                    "`max_attempts` must be at least 1".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// Where objects live. Written `local:/path` or
/// `s3://bucket[/prefix][?endpoint=URL&region=REGION&path_style=true]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory on local disk (`local:/var/lib/caldera/objects`; relative paths are allowed).
    Local(PathBuf),
    /// An S3 bucket (AWS or any S3-compatible server).
    S3(S3Location),
}

/// An S3 bucket and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Optional prefix inside the bucket; all keys live below it.
    pub prefix: Option<ObjectKey>,
    /// Endpoint URL for self-hosted servers (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` uses `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers need.
    pub path_style: bool,
}

impl S3Location {
    /// A bucket on AWS with virtual-hosted addressing and no prefix.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Location {
            bucket: bucket.into(),
            prefix: None,
            endpoint: None,
            region: None,
            path_style: false,
        }
    }
}

fn config_err(msg: String) -> StorageError {
    StorageError::Config(msg)
}

fn check_bucket(bucket: &str) -> Result<(), StorageError> {
    let ok_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let ends_ok = bucket
        .bytes()
        .next()
        .zip(bucket.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ends_ok || bucket.contains("..") {
        return Err(config_err(format!(
            "`{}` is not a valid S3 bucket name (3-63 characters of a-z, 0-9, `.` and `-`, \
             starting and ending with a letter or digit)",
            crate::error::escape_for_message(bucket)
        )));
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<(), StorageError> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| config_err(format!("S3 endpoint `{endpoint}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(config_err(format!(
            "S3 endpoint `{endpoint}` must be an http:// or https:// URL with a host"
        )));
    }
    Ok(())
}

impl FromStr for StorageLocation {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(config_err(
                    "`local:` needs a directory, e.g. `local:/var/lib/caldera/objects`".to_owned(),
                ));
            }
            return Ok(StorageLocation::Local(PathBuf::from(path)));
        }
        let Some(rest) = s.strip_prefix("s3://") else {
            return Err(config_err(format!(
                "storage location `{}` must start with `local:` or `s3://`",
                crate::error::escape_for_message(s)
            )));
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = match path.split_once('/') {
            Some((b, p)) => (b, p.trim_end_matches('/')),
            None => (path, ""),
        };
        check_bucket(bucket)?;
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(ObjectKey::new(prefix).map_err(|e| {
                config_err(format!("prefix of storage location `{s}` is invalid: {e}"))
            })?)
        };
        let mut location = S3Location {
            bucket: bucket.to_owned(),
            prefix,
            endpoint: None,
            region: None,
            path_style: false,
        };
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*name {
                "endpoint" => {
                    check_endpoint(&value)?;
                    location.endpoint = Some(value.trim_end_matches('/').to_owned());
                }
                "region" => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(config_err(format!("S3 region `{value}` is not valid")));
                    }
                    location.region = Some(value.into_owned());
                }
                "path_style" => {
                    location.path_style = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(config_err(format!(
                                "`path_style` must be `true` or `false`, not `{other}`"
                            )));
                        }
                    }
                }
                other => {
                    return Err(config_err(format!(
                        "unknown parameter `{other}` in storage location (known: endpoint, region, \
                         path_style)"
                    )));
                }
            }
        }
        Ok(StorageLocation::S3(location))
    }
}

fn push_query_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' | '#' | '+' | '%' | ' ' | '=' => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
}

impl fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageLocation::Local(path) => write!(f, "local:{}", path.display()),
            StorageLocation::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if let Some(prefix) = &s3.prefix {
                    write!(f, "/{prefix}")?;
                }
                let mut query = String::new();
                let mut param = |name: &str, value: &str| {
                    query.push(if query.is_empty() { '?' } else { '&' });
                    query.push_str(name);
                    query.push('=');
                    push_query_value(&mut query, value);
                };
                if let Some(endpoint) = &s3.endpoint {
                    param("endpoint", endpoint);
                }
                if let Some(region) = &s3.region {
                    param("region", region);
                }
                if s3.path_style {
                    param("path_style", "true");
                }
                f.write_str(&query)
            }
        }
    }
}

impl Serialize for StorageLocation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorageLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Static S3 credentials. `Debug` never shows the secret or the session token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// Credentials from a key id and secret.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Opens the store a configuration describes (creating a local directory if needed).
///
/// Opening does not contact S3; the first request does (and reports unreachable endpoints or bad
/// credentials with an error naming the bucket).
pub fn open(config: &StorageConfig) -> Result<Arc<dyn ObjectStore>, StorageError> {
    config.validate()?;
    match &config.location {
        StorageLocation::Local(root) => Ok(Arc::new(LocalStore::open(
            root.clone(),
            config.max_object_size,
        )?)),
        StorageLocation::S3(_) => Ok(Arc::new(S3Store::open(config)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_locations() {
        let loc: StorageLocation =
            "s3://logs/caldera/prod?endpoint=http://127.0.0.1:9000&region=eu-west-1&path_style=true"
                .parse()
                .unwrap();
        let StorageLocation::S3(s3) = &loc else {
            panic!("{loc:?}")
        };
        assert_eq!(s3.bucket, "logs");
        assert_eq!(s3.prefix.as_ref().unwrap().as_str(), "caldera/prod");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert!(s3.path_style);
        assert_eq!(loc.to_string().parse::<StorageLocation>().unwrap(), loc);

        let plain: StorageLocation = "s3://my-bucket".parse().unwrap();
        assert_eq!(plain, StorageLocation::S3(S3Location::new("my-bucket")));
        assert_eq!(plain.to_string(), "s3://my-bucket");

        let local: StorageLocation = "local:/var/lib/caldera".parse().unwrap();
        assert_eq!(local, StorageLocation::Local("/var/lib/caldera".into()));
        assert_eq!(local.to_string(), "local:/var/lib/caldera");
    }

    #[test]
    fn refuses_bad_locations_naming_the_problem() {
        for (s, needle) in [
            ("/tmp/x", "must start with"),
            ("local:", "needs a directory"),
            ("s3://Bad_Bucket", "Bad_Bucket"),
            ("s3://ab", "`ab`"),
            ("s3://logs/../x", "`..`"),
            ("s3://logs?endpoint=ftp://x", "ftp://x"),
            ("s3://logs?endpoint=notaurl", "notaurl"),
            ("s3://logs?path_style=maybe", "maybe"),
            ("s3://logs?regoin=x", "regoin"),
        ] {
            let err = s.parse::<StorageLocation>().unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
    }

    #[test]
    fn serde_round_trip_and_defaults() {
        let json = r#"{"location":"s3://logs?endpoint=http://h:1&path_style=true",
                       "credentials":{"access_key_id":"id","secret_access_key":"sk"}}"#;
        let config: StorageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.max_object_size, DEFAULT_MAX_OBJECT_SIZE);
        assert_eq!(config.part_size, DEFAULT_PART_SIZE);
        let back: StorageConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert!(!format!("{config:?}").contains("sk\""), "{config:?}");
        let err = serde_json::from_str::<StorageConfig>(r#"{"location":"nowhere"}"#).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    #[test]
    fn validate_names_the_field() {
        let mut c = StorageConfig::new("s3://logs".parse().unwrap());
        c.part_size = 1024;
        assert!(c.validate().unwrap_err().to_string().contains("part_size"));
        let mut c = StorageConfig::local("/tmp/x");
        c.max_object_size = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_object_size")
        );
    }
}
