//! Validated object keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{StorageError, escape_for_message};

/// A validated object key: `/`-separated segments, relative to the store's root (the local directory or
/// the S3 bucket plus its optional prefix).
///
/// Every key that reaches a backend went through [`ObjectKey::new`], which refuses anything that could
/// escape the store's root or behave differently on different backends:
///
/// * empty keys, and keys longer than [`ObjectKey::MAX_LEN`] bytes;
/// * a leading or trailing `/`, and empty segments (`a//b`);
/// * `.` and `..` segments;
/// * backslashes and control characters (including NUL, DEL and C1 controls);
/// * segments longer than [`ObjectKey::MAX_SEGMENT_LEN`] bytes (a file name on most file systems).
///
/// Keys are also used as prefixes for [`ObjectStore::list`](crate::ObjectStore::list) and
/// [`ObjectStore::delete_prefix`](crate::ObjectStore::delete_prefix); a prefix matches whole segments
/// (`experiments/e1` covers `experiments/e1/x`, never `experiments/e10/x`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The longest key accepted, in bytes (S3's own limit).
    pub const MAX_LEN: usize = 1024;
    /// The longest segment accepted, in bytes (a file name on common file systems).
    pub const MAX_SEGMENT_LEN: usize = 255;

    /// Validates `key`; the error names the key and the rule it breaks.
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        match check(&key) {
            Ok(()) => Ok(ObjectKey(key)),
            Err(reason) => Err(StorageError::InvalidKey {
                key: escape_for_message(&key),
                reason: reason.to_owned(),
            }),
        }
    }

    /// Builds a key from segments, each of which must be a valid single segment.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut key = String::new();
        for (i, segment) in segments.into_iter().enumerate() {
            let segment = segment.as_ref();
            if segment.contains('/') {
                return Err(StorageError::InvalidKey {
                    key: escape_for_message(segment),
                    reason: "a key segment may not contain `/`".to_owned(),
                });
            }
            if i > 0 {
                key.push('/');
            }
            key.push_str(segment);
        }
        ObjectKey::new(key)
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments of the key (never empty).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// This key with one or more segments appended (`rest` is validated like a key).
    pub fn join(&self, rest: &str) -> Result<Self, StorageError> {
        ObjectKey::new(format!("{}/{rest}", self.0))
    }

    /// Whether this key lies strictly below `prefix` (segment-wise: `a/b/c` is under `a/b`, `a/bc` is not).
    pub fn is_under(&self, prefix: &ObjectKey) -> bool {
        self.0.len() > prefix.0.len()
            && self.0.starts_with(&prefix.0)
            && self.0.as_bytes()[prefix.0.len()] == b'/'
    }

    /// This key relative to `prefix`, if it lies under it.
    pub fn strip_prefix(&self, prefix: &ObjectKey) -> Option<&str> {
        if self.is_under(prefix) {
            Some(&self.0[prefix.0.len() + 1..])
        } else {
            None
        }
    }
}

fn check(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("a key may not be empty");
    }
    if key.len() > ObjectKey::MAX_LEN {
        return Err("a key may be at most 1024 bytes long");
    }
    if key.starts_with('/') {
        return Err("a key may not start with `/` (keys are relative to the store's root)");
    }
    if key.contains('\\') {
        return Err("a key may not contain a backslash");
    }
    if key.chars().any(char::is_control) {
        return Err("a key may not contain control characters");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("a key may not contain empty segments (`//` or a trailing `/`)"),
            "." | ".." => return Err("a key may not contain `.` or `..` segments"),
            s if s.len() > ObjectKey::MAX_SEGMENT_LEN => {
                return Err("a key segment may be at most 255 bytes long");
            }
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ObjectKey {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectKey::new(s)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = StorageError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ObjectKey::new(s)
    }
}

impl TryFrom<&str> for ObjectKey {
    type Error = StorageError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        ObjectKey::new(s)
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> String {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for key in [
            "a",
            "experiments/e1/stable/reg%3Aserde@1.0.0/log.zst",
            "a/.hidden/b",
            "a/...",
            "日本/語",
            "x y/z",
        ] {
            assert_eq!(ObjectKey::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn refuses_escaping_and_ambiguous_keys() {
        let long_segment = "x".repeat(256);
        let long_key = ["y"; 600].join("/");
        for (key, reason) in [
            ("", "empty"),
            ("/etc/passwd", "start with `/`"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty segments"),
            ("a/", "empty segments"),
            ("a\\..\\b", "backslash"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("a\u{7f}", "control"),
            ("a\u{85}", "control"),
            (long_segment.as_str(), "255"),
            (long_key.as_str(), "1024"),
        ] {
            let err = ObjectKey::new(key).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(reason), "{key:?}: {msg}");
            assert!(matches!(err, StorageError::InvalidKey { .. }));
            if key.len() < 100 && !key.chars().any(char::is_control) {
                assert!(
                    msg.contains(&format!("`{key}`")),
                    "message names the key: {msg}"
                );
            }
        }
        // Control characters are escaped in the message rather than echoed.
        let msg = ObjectKey::new("a\nb").unwrap_err().to_string();
        assert!(msg.contains("a\\nb"), "{msg}");
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let k = ObjectKey::new("experiments/e1/x").unwrap();
        assert!(k.is_under(&ObjectKey::new("experiments/e1").unwrap()));
        assert!(k.is_under(&ObjectKey::new("experiments").unwrap()));
        assert!(!k.is_under(&ObjectKey::new("experiments/e").unwrap()));
        assert!(!k.is_under(&k));
        assert_eq!(
            k.strip_prefix(&ObjectKey::new("experiments").unwrap()),
            Some("e1/x")
        );
        assert_eq!(k.file_name(), "x");
    }

    #[test]
    fn serde_validates() {
        let ok: ObjectKey = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(ok.as_str(), "a/b");
        let err = serde_json::from_str::<ObjectKey>("\"../b\"").unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
    }

    #[test]
    fn from_segments_refuses_slashes_inside_segments() {
        assert!(ObjectKey::from_segments(["a", "b/c"]).is_err());
        assert_eq!(
            ObjectKey::from_segments(["a", "b"]).unwrap().as_str(),
            "a/b"
        );
    }
}
