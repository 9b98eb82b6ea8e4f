//! `cargo xtask rooms`: keeps rooms small. Every non-test source file stays under
//! [`MAX_FILE_LINES`] lines and every function under [`MAX_FN_LINES`], except the data tables
//! named in [`EXCEPTIONS`] (each with its reason; docs/ARCHITECTURE.md lists them too).
//!
//! "Non-test" means the lines of a file minus its `#[cfg(test)]` items; the files are every `.rs`
//! under `crates/*/src` and `xtask/src`. Functions are measured from their first line (attributes
//! excluded) to their closing brace, and include closures and nested items in their body.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::spanned::Spanned;
use syn::visit::Visit;

pub const MAX_FILE_LINES: usize = 800;
pub const MAX_FN_LINES: usize = 80;

/// `(path or path::fn, reason)`: the only rooms allowed to be bigger.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// One room over its limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Overrun {
    pub place: String,
    pub lines: usize,
    pub limit: usize,
}

/// The non-test line count of a file and its functions' lengths, by `(name, lines)`.
pub fn measure(source: &str) -> Result<Measured> {
    let file = syn::parse_file(source)?;
    let mut v = Measure::default();
    v.visit_file(&file);
    Ok(Measured {
        lines: source.lines().count() - v.test_lines,
        fns: v.fns,
        test_mods: v.test_mods,
    })
}

/// What [`measure`] found in one file.
pub struct Measured {
    /// Lines outside `#[cfg(test)]` items.
    pub lines: usize,
    /// Every function's `(path, lines)`.
    pub fns: Vec<(String, usize)>,
    /// Names of the out-of-line modules declared `#[cfg(test)] mod NAME;` at the file's top level:
    /// their files are test code.
    pub test_mods: Vec<String>,
}

#[derive(Default)]
struct Measure {
    test_lines: usize,
    fns: Vec<(String, usize)>,
    test_mods: Vec<String>,
    scope: Vec<String>,
}

fn lines_of(span: proc_macro2::Span) -> usize {
    span.end().line + 1 - span.start().line
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The span of an item from its first token after the attributes to its end.
fn body_lines(item_span: proc_macro2::Span, sig_span: proc_macro2::Span) -> usize {
    item_span.end().line + 1 - sig_span.start().line
}

impl Measure {
    fn record(&mut self, name: &syn::Ident, lines: usize) {
        let mut place = self.scope.join("::");
        if !place.is_empty() {
            place.push_str("::");
        }
        place.push_str(&name.to_string());
        self.fns.push((place, lines));
    }
}

impl<'a> Visit<'a> for Measure {
    fn visit_item(&mut self, item: &'a syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_cfg_test(attrs) {
            self.test_lines += lines_of(item.span());
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && self.scope.is_empty()
            {
                self.test_mods.push(m.ident.to_string());
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        self.record(&f.sig.ident, body_lines(f.span(), f.sig.span()));
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        if is_cfg_test(&f.attrs) {
            self.test_lines += lines_of(f.span());
            return;
        }
        self.record(&f.sig.ident, body_lines(f.span(), f.sig.span()));
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'a syn::TraitItemFn) {
        if f.default.is_some() {
            self.record(&f.sig.ident, body_lines(f.span(), f.sig.span()));
        }
        syn::visit::visit_trait_item_fn(self, f);
    }

    fn visit_item_impl(&mut self, i: &'a syn::ItemImpl) {
        let ty = &i.self_ty;
        self.scope.push(quote_type(ty));
        syn::visit::visit_item_impl(self, i);
        self.scope.pop();
    }

    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        self.scope.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.scope.pop();
    }
}

fn quote_type(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map_or_else(String::new, |s| s.ident.to_string()),
        _ => "impl".to_owned(),
    }
}

fn sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![root.join("xtask/src")];
    for entry in std::fs::read_dir(root.join("crates"))? {
        dirs.push(entry?.path().join("src"));
    }
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The files that can hold module `name` declared in the file `parent`.
fn module_files(parent: &Path, name: &str) -> [PathBuf; 2] {
    let dir = parent.parent().unwrap_or(Path::new("."));
    let stem = parent.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = if matches!(stem, "lib" | "main" | "mod") {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ]
}

/// Every room over its limit in the tree at `root`, exceptions left out.
pub fn overruns(root: &Path) -> Result<(Vec<Overrun>, Vec<(String, usize)>)> {
    let mut over = Vec::new();
    let mut all_files = Vec::new();
    let mut measured = Vec::new();
    let mut test_files = Vec::new();
    for path in sources(root)? {
        let source = std::fs::read_to_string(&path)?;
        let m = measure(&source).with_context(|| format!("parsing {}", path.display()))?;
        test_files.extend(
            m.test_mods
                .iter()
                .flat_map(|name| module_files(&path, name)),
        );
        measured.push((path, m));
    }
    for (path, Measured { lines, fns, .. }) in measured {
        if test_files.contains(&path) {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        all_files.push((rel.clone(), lines));
        let excepted = |place: &str| EXCEPTIONS.iter().any(|(p, _)| *p == place);
        if lines > MAX_FILE_LINES && !excepted(&rel) {
            over.push(Overrun {
                place: rel.clone(),
                lines,
                limit: MAX_FILE_LINES,
            });
        }
        for (name, n) in fns {
            let place = format!("{rel}::{name}");
            if n > MAX_FN_LINES && !excepted(&place) {
                over.push(Overrun {
                    place,
                    lines: n,
                    limit: MAX_FN_LINES,
                });
            }
        }
    }
    Ok((over, all_files))
}

/// `cargo xtask rooms [--list]`: fails naming every room over its limit.
pub fn check(root: &Path, list: bool) -> Result<()> {
    let (over, files) = overruns(root)?;
    if list {
        let mut crates = std::collections::BTreeMap::<&str, usize>::new();
        for (path, n) in &files {
            let mut parts = path.split('/');
            let first = parts.next().unwrap_or(path);
            let krate = if first == "crates" {
                parts.next().unwrap_or(first)
            } else {
                first
            };
            *crates.entry(krate).or_default() += n;
        }
        println!("non-test lines by crate:");
        for (krate, n) in &crates {
            println!("{n:6} {krate}");
        }
        println!("biggest files:");
        let mut files = files.clone();
        files.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for (path, n) in files.iter().take(25) {
            println!("{n:6} {path}");
        }
    }
    if over.is_empty() {
        println!(
            "rooms: every non-test file ≤ {MAX_FILE_LINES} lines, every function ≤ {MAX_FN_LINES}"
        );
        return Ok(());
    }
    let mut msg = String::new();
    for o in &over {
        let _ = writeln!(
            msg,
            "  {} has {} lines (limit {})",
            o.place, o.lines, o.limit
        );
    }
    bail!(
        "{} rooms are over their limit; split them by what they do (or name a data table in \
         xtask/src/rooms.rs EXCEPTIONS with its reason):\n{msg}",
        over.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_items_are_not_counted_and_functions_are_measured() {
        let src = "\
/// doc
#[inline]
fn one() {
    let x = 1;
}

struct S;
impl S {
    fn two(&self) {}
}

#[cfg(test)]
mod tests {
    fn three() {}
}
";
        let m = measure(src).unwrap();
        assert_eq!(m.lines, 11);
        assert_eq!(m.fns, vec![("one".to_owned(), 3), ("S::two".to_owned(), 1)]);
        assert!(m.test_mods.is_empty());
        let m = measure("#[cfg(test)]\nmod tests;\nmod real;\n").unwrap();
        assert_eq!((m.lines, m.test_mods), (1, vec!["tests".to_owned()]));
        assert_eq!(
            module_files(Path::new("src/report.rs"), "tests"),
            [
                PathBuf::from("src/report/tests.rs"),
                PathBuf::from("src/report/tests/mod.rs")
            ]
        );
    }
}
