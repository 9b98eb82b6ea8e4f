//! The one error type of this crate.

use std::io;
use std::sync::Arc;

/// Everything that can go wrong when storing or reading objects.
///
/// Every message names the store (`S3 bucket `logs``, `local directory `/srv/objects``) and the key
/// involved, and the cause as reported by the backend. Use [`StorageError::is_transient`] to decide whether
/// retrying later can help (the worker's upload spool retries exactly those).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A key (or key prefix) was refused before anything was sent to a store.
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given (control characters escaped).
        key: String,
        /// What rule it breaks.
        reason: String,
    },

    /// A component of the caldera key scheme ([`keys`](crate::keys)) could not be encoded or decoded.
    #[error("invalid key component `{component}`: {reason}")]
    InvalidKeyComponent {
        /// The component as given.
        component: String,
        /// What is wrong with it.
        reason: String,
    },

    /// User metadata that no backend could store faithfully.
    #[error("invalid metadata for object `{key}`: {reason}")]
    InvalidMetadata {
        /// The object key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// The object does not exist.
    #[error("{store}: object `{key}` does not exist")]
    NotFound {
        /// The store, e.g. ``S3 bucket `logs` ``.
        store: String,
        /// The missing key.
        key: String,
    },

    /// The object is bigger than the store's per-object cap; nothing was stored.
    #[error("{store}: object `{key}` exceeds the size cap of {cap} bytes; nothing was stored")]
    TooLarge {
        /// The store.
        store: String,
        /// The key that was refused.
        key: String,
        /// The cap in bytes (of the stored, i.e. compressed, form).
        cap: u64,
    },

    /// The store refused the credentials (unknown key id, bad signature, expired token, access denied).
    #[error("{store} rejected the credentials: {cause} (while trying to {op} `{key}`)")]
    Credentials {
        /// The store.
        store: String,
        /// The operation, e.g. `put`.
        op: &'static str,
        /// The key or prefix of the operation.
        key: String,
        /// The backend's error code and message.
        cause: String,
    },

    /// The bucket does not exist.
    #[error("{store} does not exist: {cause} (while trying to {op} `{key}`)")]
    NoSuchBucket {
        /// The store.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key or prefix of the operation.
        key: String,
        /// The backend's error code and message.
        cause: String,
    },

    /// The store could not be reached or did not answer in time (connection refused or reset, DNS
    /// failure, timeout). Transient.
    #[error("{store} is unreachable: {cause} (while trying to {op} `{key}`)")]
    Unavailable {
        /// The store.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key or prefix of the operation.
        key: String,
        /// What happened, with the full chain of causes.
        cause: String,
    },

    /// The store answered with an error not covered by the variants above.
    #[error("{store}: {op} `{key}` failed: {cause}")]
    Backend {
        /// The store.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key or prefix of the operation.
        key: String,
        /// The backend's error code, message and HTTP status.
        cause: String,
        /// Whether retrying may help (5xx, throttling, request timeouts).
        transient: bool,
    },

    /// A local file-system operation failed.
    #[error("{store}: {op} `{key}` failed: {source}")]
    Io {
        /// The store (or spool) directory.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key involved.
        key: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The body given to a put could not be read (the caller's stream or file failed); nothing was stored.
    #[error("reading the data for object `{key}` failed: {source}; nothing was stored")]
    Body {
        /// The key being written.
        key: String,
        /// The error of the caller's stream.
        #[source]
        source: io::Error,
    },

    /// Stored data is not what it should be (bad local header, bad zstd frame, size mismatch).
    #[error("{store}: object `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },

    /// An object is bigger than what may be read into memory at once.
    #[error(
        "{store}: object `{key}` is larger than {cap} bytes, the most that may be read into memory"
    )]
    TooLargeToRead {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// The limit in bytes.
        cap: u64,
    },

    /// The storage configuration is invalid.
    #[error("invalid storage configuration: {0}")]
    Config(String),

    /// The spool gave up on an object because the store refused it permanently.
    #[error("upload of `{key}` from the spool failed permanently: {source}")]
    UploadFailed {
        /// The key.
        key: String,
        /// Why the store refused it.
        #[source]
        source: Arc<StorageError>,
    },

    /// The spool was asked about a key it never held and that is not in the store either.
    #[error("`{key}` was never enqueued in the spool at {spool} and is not in {store}")]
    NotSpooled {
        /// The spool directory.
        spool: String,
        /// The store.
        store: String,
        /// The key.
        key: String,
    },

    /// The spool was shut down while someone was waiting for it.
    #[error("the spool at {spool} was shut down before `{key}` became durable")]
    SpoolClosed {
        /// The spool directory.
        spool: String,
        /// The key being waited for.
        key: String,
    },
}

impl StorageError {
    /// Turns an I/O error of `op` on `key` in `store` (a directory's label) into
    /// [`StorageError::Io`]; for `map_err`.
    pub fn io(
        store: &str,
        op: &'static str,
        key: &crate::ObjectKey,
    ) -> impl FnOnce(std::io::Error) -> StorageError + use<> {
        let store = store.to_owned();
        let key = key.to_string();
        move |source| StorageError::Io {
            store,
            op,
            key,
            source,
        }
    }
}

impl StorageError {
    /// Whether the same operation may succeed later without anyone changing anything: the store was
    /// unreachable, timed out, throttled, answered 5xx, or the local disk was full.
    ///
    /// Permanent errors (bad key, missing object, wrong credentials, object too large, corrupt data) are
    /// not retried by the spool.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Unavailable { .. } => true,
            StorageError::Backend { transient, .. } => *transient,
            StorageError::Io { source, .. } => io_is_transient(source),
            StorageError::UploadFailed { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// Whether this error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// I/O error kinds that usually go away by themselves.
pub(crate) fn io_is_transient(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        err.kind(),
        TimedOut
            | Interrupted
            | WouldBlock
            | ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | StorageFull
            | ResourceBusy
    )
}

/// Renders a string for an error message, escaping control characters so that a hostile key cannot
/// forge log lines.
pub(crate) fn escape_for_message(s: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::with_capacity(s.len().min(MAX));
    for (i, c) in s.chars().enumerate() {
        if i >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
