//! Tidying the crate's root `Cargo.toml` the way crater does: target entries whose file the
//! package does not ship are dropped, the rest of the file kept byte for byte.

use std::io;
use std::path::{Component, Path};

use super::PrepareError;

/// The kinds of target tables a manifest may list, with the directory where cargo looks for a
/// target's file when the entry names no `path`.
const TARGET_TABLES: &[(&str, &str)] = &[
    ("bin", "src/bin"),
    ("example", "examples"),
    ("test", "tests"),
    ("bench", "benches"),
];

/// The files cargo would build a `kind` target named `name` from, when its entry has no `path`
/// (relative to the package root). Generous on purpose: an entry is dropped only when none exists.
fn default_target_paths(kind: &str, dir: &str, name: &str, package: Option<&str>) -> Vec<String> {
    let mut paths = vec![format!("{dir}/{name}.rs"), format!("{dir}/{name}/main.rs")];
    if kind == "bin" {
        // the package's own binary, and cargo's legacy binary paths
        if package.is_none_or(|p| p == name) {
            paths.push("src/main.rs".into());
        }
        paths.push(format!("src/{name}.rs"));
        paths.push("src/bin/main.rs".into());
    }
    paths
}

/// Whether `path` (from a manifest) is relative and stays inside the package, so that looking for
/// it does not look outside.
fn inside_package(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Drops from a manifest the `[[bin]]`, `[[example]]`, `[[test]]` and `[[bench]]` entries whose
/// source file the package does not ship (`exists` answers for a path relative to the package
/// root), as crater does: older crates often list targets whose files were left out when they
/// were published, and cargo then refuses the whole manifest. Everything else in the text is kept
/// byte for byte. Returns the new text and a description of each dropped target, or `None` when
/// nothing is dropped (or the text is not TOML: cargo will say what is wrong with it). Entries
/// the check cannot judge (no name nor path, a path leaving the package) are kept;
/// auto-discovered targets are not listed, so never touched.
pub fn tidy_manifest(text: &str, exists: impl Fn(&str) -> bool) -> Option<(String, Vec<String>)> {
    let mut doc: toml_edit::DocumentMut = text.parse().ok()?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let mut dropped = Vec::new();
    for &(kind, dir) in TARGET_TABLES {
        // what cargo would build this entry from; `None` when it cannot be judged (kept)
        let missing = |name: Option<&str>, path: Option<&str>| -> Option<String> {
            let candidates = match (path, name) {
                (Some(p), _) if inside_package(p) => vec![p.to_owned()],
                (Some(_), _) => return None,
                (None, Some(n)) if inside_package(n) => {
                    default_target_paths(kind, dir, n, package.as_deref())
                }
                (None, _) => return None,
            };
            if candidates.iter().any(|c| exists(c)) {
                return None;
            }
            Some(format!(
                "[[{kind}]] {} ({} not in the package)",
                name.map_or_else(|| "(unnamed)".to_owned(), |n| format!("`{n}`")),
                candidates.join(" or ")
            ))
        };
        let Some(item) = doc.get_mut(kind) else {
            continue;
        };
        let before = dropped.len();
        let now_empty = match item {
            toml_edit::Item::ArrayOfTables(array) => {
                array.retain(|t| {
                    let gone = missing(
                        t.get("name").and_then(|v| v.as_str()),
                        t.get("path").and_then(|v| v.as_str()),
                    );
                    dropped.extend(gone.clone());
                    gone.is_none()
                });
                array.is_empty()
            }
            // the inline form: `example = [{ name = "x" }]`
            toml_edit::Item::Value(toml_edit::Value::Array(array)) => {
                array.retain(|v| {
                    let Some(t) = v.as_inline_table() else {
                        return true;
                    };
                    let gone = missing(
                        t.get("name").and_then(|v| v.as_str()),
                        t.get("path").and_then(|v| v.as_str()),
                    );
                    dropped.extend(gone.clone());
                    gone.is_none()
                });
                array.is_empty()
            }
            _ => false,
        };
        if now_empty && dropped.len() > before {
            // no `[[kind]]` entry is left: the key goes too (cargo would take `kind = []` alike)
            doc.remove(kind);
        }
    }
    if dropped.is_empty() {
        return None;
    }
    Some((doc.to_string(), dropped))
}

/// [`tidy_manifest`] on the file `manifest`, written back when something was dropped; returns
/// what was dropped. A symlinked manifest is left alone (the write would go through the link).
fn tidy_manifest_file(manifest: &Path) -> io::Result<Vec<String>> {
    if std::fs::symlink_metadata(manifest)?
        .file_type()
        .is_symlink()
    {
        return Ok(Vec::new());
    }
    let root = manifest.parent().unwrap_or(Path::new("."));
    let Ok(text) = std::fs::read_to_string(manifest) else {
        // not UTF-8: cargo will say so
        return Ok(Vec::new());
    };
    match tidy_manifest(&text, |rel| root.join(rel).is_file()) {
        Some((tidied, dropped)) => {
            std::fs::write(manifest, tidied)?;
            Ok(dropped)
        }
        None => Ok(Vec::new()),
    }
}

/// [`tidy_manifest_file`] on the crate's root `Cargo.toml` in `src`, on a blocking thread;
/// returns what was dropped.
pub(super) async fn tidy_root_manifest(src: &Path) -> Result<Vec<String>, PrepareError> {
    let manifest = src.join("Cargo.toml");
    tokio::task::spawn_blocking(move || tidy_manifest_file(&manifest))
        .await
        .map_err(|e| PrepareError::Infra(format!("tidy task: {e}")))?
        .map_err(|e| PrepareError::Infra(format!("tidying Cargo.toml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tidy_manifest` over a package holding `files`.
    fn tidy(text: &str, files: &[&str]) -> Option<(String, Vec<String>)> {
        tidy_manifest(text, |p| files.contains(&p))
    }

    #[test]
    fn manifests_lose_only_the_targets_whose_files_are_missing() {
        let text = r#"# top comment, kept
[package]
name   =   "foo"   # odd spacing, kept
version = "1.0.0"
autoexamples = false

[[example]]
name = "present"

[[example]]   # a missing example
name = "gone"

[[example]]
name = "custom"
path = "demo/custom.rs"

[[example]]
name = "dir-style"

[[test]]
name = "gone-test"
harness = false

[[bench]]
name = "gone-bench"

[[bin]]
name = "foo"

[[bin]]
name = "tool"
path = "src/tools/tool.rs"

[dependencies]
bar = { version = "1", features = ["x"] } # kept
"#;
        let files = [
            "examples/present.rs",
            "examples/dir-style/main.rs",
            "src/main.rs",
        ];
        let (tidied, dropped) = tidy(text, &files).unwrap();
        assert_eq!(
            dropped,
            [
                "[[bin]] `tool` (src/tools/tool.rs not in the package)",
                "[[example]] `gone` (examples/gone.rs or examples/gone/main.rs not in the package)",
                "[[example]] `custom` (demo/custom.rs not in the package)",
                "[[test]] `gone-test` (tests/gone-test.rs or tests/gone-test/main.rs not in the package)",
                "[[bench]] `gone-bench` (benches/gone-bench.rs or benches/gone-bench/main.rs not in the package)",
            ]
        );
        assert_eq!(
            tidied,
            r#"# top comment, kept
[package]
name   =   "foo"   # odd spacing, kept
version = "1.0.0"
autoexamples = false

[[example]]
name = "present"

[[example]]
name = "dir-style"

[[bin]]
name = "foo"

[dependencies]
bar = { version = "1", features = ["x"] } # kept
"#
        );
        // all present, or nothing listed (auto-discovery): the text is not touched
        let all = [
            "examples/present.rs",
            "examples/gone.rs",
            "demo/custom.rs",
            "examples/dir-style.rs",
            "tests/gone-test.rs",
            "benches/gone-bench/main.rs",
            "src/main.rs",
            "src/tools/tool.rs",
        ];
        assert_eq!(tidy(text, &all), None);
        assert_eq!(
            tidy("[package]\nname = \"foo\"\nversion = \"1.0.0\"\n", &[]),
            None
        );
    }

    #[test]
    fn tidying_keeps_what_it_cannot_judge() {
        // not TOML: cargo says what is wrong
        assert_eq!(tidy("this is not toml", &[]), None);
        // a path leaving the package, an absolute one, an entry with neither name nor path
        let text = "[package]\nname = \"foo\"\n\n[[example]]\nname = \"up\"\npath = \"../x.rs\"\n\n[[example]]\nname = \"abs\"\npath = \"/etc/x.rs\"\n\n[[test]]\nharness = false\n";
        assert_eq!(tidy(text, &[]), None);
        // the legacy binary paths cargo still accepts
        let bins = "[package]\nname = \"foo\"\n\n[[bin]]\nname = \"old\"\n";
        assert_eq!(tidy(bins, &["src/old.rs"]), None);
        assert_eq!(tidy(bins, &["src/bin/main.rs"]), None);
        assert!(
            tidy(bins, &["src/main.rs"]).is_some(),
            "src/main.rs is `foo`'s"
        );
        // the inline form, and a key left with no entry is removed
        let (tidied, dropped) = tidy(
            "example = [{ name = \"a\" }, { name = \"b\" }]\nbench = [{ name = \"c\" }]\n[package]\nname = \"foo\"\n",
            &["examples/a.rs"],
        )
        .unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert_eq!(
            tidied,
            "example = [{ name = \"a\" }]\n[package]\nname = \"foo\"\n"
        );
    }

    #[test]
    fn a_manifest_file_is_rewritten_only_when_something_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        let text = "[package]\nname = \"foo\"\n\n[[example]]\nname = \"gone\"\n";
        std::fs::write(&manifest, text).unwrap();
        let dropped = tidy_manifest_file(&manifest).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&manifest).unwrap(),
            "[package]\nname = \"foo\"\n"
        );
        assert!(tidy_manifest_file(&manifest).unwrap().is_empty());
        // a symlinked manifest is not written through
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("real.toml"), text).unwrap();
        std::fs::remove_file(&manifest).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("real.toml"), &manifest).unwrap();
        assert!(tidy_manifest_file(&manifest).unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(elsewhere.path().join("real.toml")).unwrap(),
            text
        );
    }
}
