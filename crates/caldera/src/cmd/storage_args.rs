//! The object storage options of `caldera master`, `caldera worker` and `caldera local`: clap lives
//! here, in the binary, so that `caldera-storage` stays a library without a command-line parser.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
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
        requires = "storage_secret"
    )]
    pub storage_access_key_id: Option<String>,

    /// S3 secret access key. On the command line it shows in the process list of every local
    /// user: prefer a file (`--storage-secret-access-key-file`) or the variable.
    #[arg(
        long,
        env = "CALDERA_STORAGE_SECRET_ACCESS_KEY",
        hide_env_values = true,
        group = "storage_secret",
        requires = "storage_access_key_id"
    )]
    pub storage_secret_access_key: Option<String>,

    /// A file holding the S3 secret access key (one line; keep it mode 0600). Not together with
    /// the key itself (`--storage-secret-access-key`, `CALDERA_STORAGE_SECRET_ACCESS_KEY`).
    #[arg(
        long,
        env = "CALDERA_STORAGE_SECRET_ACCESS_KEY_FILE",
        value_name = "FILE",
        group = "storage_secret",
        requires = "storage_access_key_id"
    )]
    pub storage_secret_access_key_file: Option<PathBuf>,

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

/// The S3 secret access key's options.
const STORAGE_SECRET: SecretOption = SecretOption {
    what: "the S3 secret access key",
    flag: "--storage-secret-access-key",
    env: "CALDERA_STORAGE_SECRET_ACCESS_KEY",
    file_flag: "--storage-secret-access-key-file",
    file_env: "CALDERA_STORAGE_SECRET_ACCESS_KEY_FILE",
};

impl StorageArgs {
    /// The configuration these options describe (reading the secret key's file, if given).
    pub fn to_config(&self) -> anyhow::Result<StorageConfig> {
        let secret = STORAGE_SECRET.resolve(
            self.storage_secret_access_key.as_deref(),
            self.storage_secret_access_key_file.as_deref(),
        )?;
        let credentials = match (&self.storage_access_key_id, secret) {
            (Some(id), Some(secret)) => Some(S3Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret,
                session_token: self.storage_session_token.clone(),
            }),
            _ => None,
        };
        Ok(StorageConfig {
            location: self.storage.clone(),
            credentials,
            max_object_size: self.storage_max_object_size,
            part_size: self.storage_part_size,
            max_attempts: self.storage_max_attempts,
        })
    }
}

/// A secret that may be given as a value (an option or its variable) or in a file (an option or
/// its variable), never both.
pub(crate) struct SecretOption {
    /// What it is, for messages ("the worker's token").
    pub what: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub file_flag: &'static str,
    pub file_env: &'static str,
}

/// The largest secret file read.
const MAX_SECRET_FILE: u64 = 64 << 10;

impl SecretOption {
    /// The secret from `value` or from the file `file`: both is an error; a value typed on the
    /// command line (not from the variable) is warned about, as is a file other users can read.
    pub(crate) fn resolve(
        &self,
        value: Option<&str>,
        file: Option<&Path>,
    ) -> anyhow::Result<Option<String>> {
        match (value, file) {
            (Some(_), Some(_)) => anyhow::bail!(
                "{what} is given twice: by {flag} (or {env}) and by {file_flag} (or {file_env}); \
                 give only one (the file is the safer)",
                what = self.what,
                flag = self.flag,
                env = self.env,
                file_flag = self.file_flag,
                file_env = self.file_env,
            ),
            (Some(value), None) => {
                if std::env::var(self.env).ok().as_deref() != Some(value) {
                    tracing::warn!(
                        "{} on the command line shows in the process list of every local user; \
                         use {} or {}",
                        self.flag,
                        self.file_flag,
                        self.env
                    );
                }
                Ok(Some(value.to_owned()))
            }
            (None, Some(path)) => read_secret_file(path, self.what).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Reads a secret from a file: one line (surrounding whitespace dropped), not empty. A file that
/// users other than its owner and group may read is warned about.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let context = || format!("reading {what} from {}", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let mode = file.metadata().with_context(context)?.permissions().mode();
    if mode & 0o004 != 0 {
        tracing::warn!(
            "{} (holding {what}) is readable by every user of this host (mode {:03o}); \
             chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let mut text = String::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .with_context(context)?;
    anyhow::ensure!(
        (text.len() as u64) <= MAX_SECRET_FILE,
        "{}: larger than {} KiB; is it the file holding {what}?",
        path.display(),
        MAX_SECRET_FILE >> 10
    );
    let secret = text.trim();
    anyhow::ensure!(
        !secret.is_empty(),
        "{}: empty; it should hold {what}",
        path.display()
    );
    anyhow::ensure!(
        !secret.contains(['\n', '\r']),
        "{}: more than one line; it should hold only {what}",
        path.display()
    );
    Ok(secret.to_owned())
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
        let config = cli.storage.to_config().unwrap();
        assert_eq!(config.credentials.unwrap().access_key_id, "id");
        assert_eq!(config.max_object_size, DEFAULT_MAX_OBJECT_SIZE);
        assert!(Cli::try_parse_from(["x", "--storage", "nowhere"]).is_err());
        // A key id without its secret (in either form) is refused, as is a secret without its id.
        assert!(
            Cli::try_parse_from([
                "x",
                "--storage",
                "local:/x",
                "--storage-secret-access-key-file",
                "/k"
            ])
            .is_err()
        );
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

    fn storage_with_secret_file(file: &Path) -> anyhow::Result<StorageConfig> {
        Cli::try_parse_from([
            "x",
            "--storage",
            "s3://logs",
            "--storage-access-key-id",
            "id",
            "--storage-secret-access-key-file",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .storage
        .to_config()
    }

    #[test]
    fn the_secret_key_comes_from_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3.key");
        std::fs::write(&file, "  s3cr3t/KEY+x \n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let credentials = storage_with_secret_file(&file)
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(
            (
                credentials.access_key_id.as_str(),
                credentials.secret_access_key.as_str()
            ),
            ("id", "s3cr3t/KEY+x")
        );

        // files that hold no usable secret: the error names the file and what it should hold
        for (content, want) in [
            ("", "empty"),
            (" \n\n", "empty"),
            ("a\nb\n", "more than one line"),
        ] {
            std::fs::write(&file, content).unwrap();
            let err = format!("{:#}", storage_with_secret_file(&file).unwrap_err());
            assert!(
                err.contains(&file.display().to_string())
                    && err.contains(want)
                    && err.contains("the S3 secret access key"),
                "{content:?}: {err}"
            );
        }
        std::fs::write(&file, vec![b'k'; (MAX_SECRET_FILE + 1) as usize]).unwrap();
        let err = format!("{:#}", storage_with_secret_file(&file).unwrap_err());
        assert!(err.contains("larger than 64 KiB"), "{err}");
        let missing = dir.path().join("missing");
        let err = format!("{:#}", storage_with_secret_file(&missing).unwrap_err());
        assert!(
            err.contains("reading the S3 secret access key from")
                && err.contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_secret_given_twice_is_refused() {
        let err = STORAGE_SECRET
            .resolve(Some("a"), Some(Path::new("/k")))
            .unwrap_err()
            .to_string();
        for part in [
            "the S3 secret access key is given twice",
            "--storage-secret-access-key (or CALDERA_STORAGE_SECRET_ACCESS_KEY)",
            "--storage-secret-access-key-file (or CALDERA_STORAGE_SECRET_ACCESS_KEY_FILE)",
        ] {
            assert!(err.contains(part), "{err}");
        }
        assert_eq!(STORAGE_SECRET.resolve(None, None).unwrap(), None);
        assert_eq!(
            STORAGE_SECRET.resolve(Some("v"), None).unwrap().as_deref(),
            Some("v")
        );
    }
}
