//! The object storage options of `caldera master`, `caldera worker` and `caldera local`: clap lives
//! here, in the binary, so that `caldera-storage` stays a library without a command-line parser.

use caldera_storage::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_OBJECT_SIZE, DEFAULT_PART_SIZE, S3Credentials, StorageConfig,
    StorageLocation,
};

/// Command-line options for storage, to `#[command(flatten)]` into a clap command. Every option also
/// reads a `CALDERA_STORAGE…` environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct StorageArgs {
    /// Where objects (logs, lockfiles, reports) are stored: `local:/path/to/dir` or
    /// `s3://bucket[/prefix][?endpoint=http://host:9000&region=us-east-1&path_style=true]`.
    #[arg(
        long = "storage",
        env = "CALDERA_STORAGE",
        value_name = "URL",
        default_value = "local:/var/lib/caldera/objects"
    )]
    pub storage: StorageLocation,

    /// S3 access key id (without it, the standard AWS credential chain is used).
    #[arg(
        long,
        env = "CALDERA_STORAGE_ACCESS_KEY_ID",
        requires = "storage_secret_access_key"
    )]
    pub storage_access_key_id: Option<String>,

    /// S3 secret access key.
    #[arg(
        long,
        env = "CALDERA_STORAGE_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "storage_access_key_id"
    )]
    pub storage_secret_access_key: Option<String>,

    /// S3 session token, for temporary credentials.
    #[arg(
        long,
        env = "CALDERA_STORAGE_SESSION_TOKEN",
        hide_env_values = true,
        requires = "storage_access_key_id"
    )]
    pub storage_session_token: Option<String>,

    /// Largest object accepted, in stored (compressed) bytes.
    #[arg(long, env = "CALDERA_STORAGE_MAX_OBJECT_SIZE", default_value_t = DEFAULT_MAX_OBJECT_SIZE)]
    pub storage_max_object_size: u64,

    /// S3 multipart part size in bytes (at least 5 MiB); larger objects are uploaded in parts.
    #[arg(long, env = "CALDERA_STORAGE_PART_SIZE", default_value_t = DEFAULT_PART_SIZE)]
    pub storage_part_size: u64,

    /// Attempts per S3 request before an error is reported.
    #[arg(long, env = "CALDERA_STORAGE_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub storage_max_attempts: u32,
}

impl StorageArgs {
    /// The configuration these options describe.
    pub fn to_config(&self) -> StorageConfig {
        let credentials = match (&self.storage_access_key_id, &self.storage_secret_access_key) {
            (Some(id), Some(secret)) => Some(S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                session_token: self.storage_session_token.clone(),
            }),
            _ => None,
        };
        StorageConfig {
            location: self.storage.clone(),
            credentials,
            max_object_size: self.storage_max_object_size,
            part_size: self.storage_part_size,
            max_attempts: self.storage_max_attempts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        storage: StorageArgs,
    }

    #[test]
    fn clap_args() {
        let cli = Cli::try_parse_from([
            "x",
            "--storage",
            "s3://logs?endpoint=http://127.0.0.1:9000&path_style=true",
            "--storage-access-key-id",
            "id",
            "--storage-secret-access-key",
            "secret",
        ])
        .unwrap();
        let config = cli.storage.to_config();
        assert_eq!(config.credentials.unwrap().access_key_id, "id");
        assert_eq!(config.max_object_size, DEFAULT_MAX_OBJECT_SIZE);
        assert!(Cli::try_parse_from(["x", "--storage", "nowhere"]).is_err());
        // A key id without its secret is refused.
        assert!(
            Cli::try_parse_from([
                "x",
                "--storage",
                "local:/x",
                "--storage-access-key-id",
                "id"
            ])
            .is_err()
        );
    }
}
