//! The dependency store on plain directories: which packages are shared, which files of a unit
//! are linked or copied, harvesting and filling a target dir.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

const LOCK: &str = r#"
version = 4

[[package]]
name = "itoa"
version = "1.0.19"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "00"

[[package]]
name = "libc"
version = "0.2.186"
source = "sparse+https://index.crates.io/"

[[package]]
name = "me"
version = "0.1.0"
dependencies = ["itoa", "libc"]

[[package]]
name = "serde"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "serde"
version = "2.0.0"

[[package]]
name = "gitdep"
version = "0.1.0"
source = "git+https://example.com/gitdep#abc"
"#;

fn me() -> Owner {
    let m = std::fs::metadata("/proc/self").unwrap();
    Owner {
        uid: m.uid(),
        gid: m.gid(),
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A completed unit `<pkg>-<hash>` in the profile dir `pdir`, with a build dir when `build`.
fn unit(pdir: &Path, pkg: &str, hash: &str, build: bool) {
    let fp = pdir.join(".fingerprint").join(format!("{pkg}-{hash}"));
    write(&fp.join(format!("lib-{pkg}")), "fingerprint", 0o644);
    write(&fp.join(format!("lib-{pkg}.json")), "{}", 0o644);
    write(&fp.join(format!("dep-lib-{pkg}")), "dep", 0o644);
    let lib = pkg.replace('-', "_");
    write(
        &pdir.join(format!("deps/lib{lib}-{hash}.rlib")),
        "rlib",
        0o644,
    );
    write(
        &pdir.join(format!("deps/lib{lib}-{hash}.rmeta")),
        "rmeta",
        0o644,
    );
    write(
        &pdir.join(format!("deps/{lib}-{hash}.d")),
        "dep-info",
        0o644,
    );
    if build {
        let b = pdir.join("build").join(format!("{pkg}-{hash}"));
        write(&b.join("build-script-build"), "exe", 0o755);
        write(&b.join(format!("build_script_build-{hash}")), "exe", 0o755);
        write(&b.join("out/generated.rs"), "gen", 0o644);
        write(&b.join("output"), "cargo:rustc-cfg=x", 0o644);
    }
}

#[test]
fn only_registry_packages_no_path_or_git_package_shares_a_name_with_are_shared() {
    let p = lock_packages(LOCK).unwrap();
    assert_eq!(
        p.registry.iter().map(String::as_str).collect::<Vec<_>>(),
        ["itoa", "libc"],
        "serde is also a path package's name; gitdep and me are not registry packages"
    );
    assert_eq!(
        lock_packages("version = 4\n").unwrap(),
        LockPackages::default()
    );
    let e = lock_packages("[[package]\n").unwrap_err();
    assert!(e.starts_with("Cargo.lock is not TOML"), "{e}");
    let e = lock_packages("package = 1\n").unwrap_err();
    assert_eq!(e, "Cargo.lock: `package` is not an array of tables");
    let e = lock_packages("[[package]]\nversion = \"1\"\n").unwrap_err();
    assert_eq!(e, "Cargo.lock: a package without a name");
}

/// The crate under test `unicode-ident` is a dependency of `proc-macro2`, a dependency of its
/// dev-dependency `quote`: built against the crate's stub by the deps-only build, rebuilt by
/// the crate's steps — neither of them may come from the store; `syn` and `trybuild` (which
/// depend on them) neither. `serde`, `glob` and `serde_json` do not depend on it.
#[test]
fn registry_packages_that_depend_on_the_crate_under_test_are_not_shared() {
    let lock = r#"
version = 4

[[package]]
name = "unicode-ident"
version = "1.0.27"
dependencies = ["glob", "quote", "trybuild"]

[[package]]
name = "glob"
version = "0.3.3"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "proc-macro2"
version = "1.0.107"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = ["unicode-ident"]

[[package]]
name = "quote"
version = "1.0.47"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = ["proc-macro2"]

[[package]]
name = "serde"
version = "1.0.229"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "serde_json"
version = "1.0.149"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = ["serde 1.0.229 (registry+https://github.com/rust-lang/crates.io-index)"]

[[package]]
name = "syn"
version = "2.0.119"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = ["proc-macro2", "quote", "unicode-ident"]

[[package]]
name = "trybuild"
version = "1.0.122"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = ["glob", "serde_json", "syn 2.0.119"]
"#;
    let p = lock_packages(lock).unwrap();
    assert_eq!(
        p.registry.iter().map(String::as_str).collect::<Vec<_>>(),
        ["glob", "serde", "serde_json"]
    );
    // the git package of LOCK: whatever depends on it is left out too
    let with_git = format!(
        "{LOCK}\n[[package]]\nname = \"uses-git\"\nversion = \"1.0.0\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\n\
         dependencies = [\"gitdep\"]\n"
    );
    let p = lock_packages(&with_git).unwrap();
    assert_eq!(
        p.registry.iter().map(String::as_str).collect::<Vec<_>>(),
        ["itoa", "libc"]
    );
}

#[test]
fn unit_names_and_their_files() {
    assert_eq!(
        split_unit("serde_json-0123456789abcdef"),
        Some(("serde_json", "0123456789abcdef"))
    );
    assert_eq!(
        split_unit("md-5-0123456789abcdef"),
        Some(("md-5", "0123456789abcdef"))
    );
    assert_eq!(split_unit("nohash"), None);
    assert_eq!(split_unit("x-nothex!"), None);
    assert_eq!(split_unit("-0123456789abcdef"), None);
    let h = "0123456789abcdef";
    assert!(deps_file_of(&format!("libitoa-{h}.rlib"), h));
    assert!(deps_file_of(&format!("itoa-{h}.d"), h));
    assert!(deps_file_of(&format!("itoa-{h}"), h));
    assert!(!deps_file_of("libitoa-fedcba9876543210.rlib", h));
    assert!(linked(Path::new("deps/libitoa-0123.rlib")));
    assert!(linked(Path::new("deps/libserde_derive-0123.so")));
    assert!(!linked(Path::new("deps/itoa-0123.d")));
    assert!(linked(Path::new("build/libc-0123/build-script-build")));
    assert!(linked(Path::new("build/libc-0123/build_script_build-0123")));
    assert!(!linked(Path::new(
        "build/libc-0123/build_script_build-0123.d"
    )));
    assert!(!linked(Path::new("build/libc-0123/out/big.a")));
    assert!(!linked(Path::new("build/libc-0123/output")));
    assert!(!linked(Path::new(".fingerprint/libc-0123/lib-libc")));
}

/// What `populate` placed from the store unit `libc` into `target`: compiled artifacts as
/// hardlinks, fingerprints as copies owned by the caller with their mtime.
fn check_populated(libc: &Path, target2: &Path) {
    let rlib = libc.join("deps/liblibc-00000000000000aa.rlib");
    let placed = target2.join("debug/deps/liblibc-00000000000000aa.rlib");
    let (a, b) = (
        std::fs::metadata(&rlib).unwrap(),
        std::fs::metadata(&placed).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "compiled artifacts are hardlinks");
    let fp = target2.join("debug/.fingerprint/libc-00000000000000aa/lib-libc");
    let stored_fp = libc.join(".fingerprint/libc-00000000000000aa/lib-libc");
    let (a, b) = (
        std::fs::metadata(&stored_fp).unwrap(),
        std::fs::metadata(&fp).unwrap(),
    );
    assert_ne!(a.ino(), b.ino(), "fingerprints are copies");
    assert_eq!(a.mtime(), b.mtime(), "copies keep their mtime");
    assert_eq!(std::fs::read_to_string(&fp).unwrap(), "fingerprint");
    assert_eq!(
        b.mode() & 0o777,
        0o644,
        "copies are writable by their owner"
    );
    assert_eq!((b.uid(), b.gid()), (me().uid, me().gid));
    assert!(
        target2
            .join("x86_64-unknown-linux-gnu/debug/deps/libitoa-00000000000000bb.rlib")
            .exists()
    );
}

#[test]
fn harvest_stores_completed_registry_units_read_only_and_populate_links_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let (target, store, target2) = (
        dir.path().join("t"),
        dir.path().join("store"),
        dir.path().join("t2"),
    );
    let packages = lock_packages(LOCK).unwrap();
    let debug = target.join("debug");
    let cross = target.join("x86_64-unknown-linux-gnu/debug");
    unit(&debug, "libc", "00000000000000aa", true);
    unit(&cross, "itoa", "00000000000000bb", false);
    unit(&debug, "me", "00000000000000cc", false); // the crate's own: never stored
    unit(&debug, "serde", "00000000000000dd", false); // ambiguous name: never stored
    // an incomplete unit (its fingerprint hash file is missing): not stored
    unit(&debug, "itoa", "00000000000000ee", false);
    std::fs::remove_file(debug.join(".fingerprint/itoa-00000000000000ee/lib-itoa")).unwrap();
    // a symlink planted in a unit is skipped, not followed
    std::os::unix::fs::symlink(
        "/etc/passwd",
        debug.join("build/libc-00000000000000aa/out/pw"),
    )
    .unwrap();

    let h = harvest(&target, &store, &packages).unwrap();
    let mut stored = h.stored.clone();
    stored.sort();
    assert_eq!(
        stored,
        [
            "debug/libc-00000000000000aa",
            "x86_64-unknown-linux-gnu/debug/itoa-00000000000000bb"
        ]
    );
    assert_eq!(unit_count(&store), 2);
    let libc = store.join("units/debug/libc-00000000000000aa");
    let rlib = libc.join("deps/liblibc-00000000000000aa.rlib");
    assert_eq!(std::fs::metadata(&rlib).unwrap().mode() & 0o777, 0o444);
    let exe = libc.join("build/libc-00000000000000aa/build-script-build");
    assert_eq!(std::fs::metadata(&exe).unwrap().mode() & 0o777, 0o555);
    assert!(!libc.join("build/libc-00000000000000aa/out/pw").exists());
    // harvesting again stores nothing: the units are there
    let again = harvest(&target, &store, &packages).unwrap();
    assert!(again.stored.is_empty());
    assert_eq!(again.present, 2);

    let done = populate(&store, &target2, &packages, me()).unwrap();
    assert_eq!(done.units, 2);
    // libc: rlib, rmeta, two build script binaries; itoa: rlib, rmeta
    assert_eq!(done.linked, 6);
    check_populated(&libc, &target2);

    // a crate whose lockfile lacks libc gets only itoa
    let only_itoa = LockPackages {
        registry: ["itoa".to_owned()].into(),
    };
    let target3 = dir.path().join("t3");
    assert_eq!(
        populate(&store, &target3, &only_itoa, me()).unwrap().units,
        1
    );
    assert!(!target3.join("debug").exists());
}

#[test]
fn a_unit_that_cannot_be_placed_whole_is_taken_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let (target, store, target2) = (
        dir.path().join("t"),
        dir.path().join("store"),
        dir.path().join("t2"),
    );
    let packages = lock_packages(LOCK).unwrap();
    unit(&target.join("debug"), "libc", "00000000000000aa", true);
    harvest(&target, &store, &packages).unwrap();
    // where the unit's build dir goes, a file is in the way
    write(&target2.join("debug/build"), "in the way", 0o644);
    let done = populate(&store, &target2, &packages, me()).unwrap();
    assert_eq!(done, Populated::default());
    assert!(
        !target2
            .join("debug/deps/liblibc-00000000000000aa.rlib")
            .exists()
    );
    assert!(
        !target2
            .join("debug/.fingerprint/libc-00000000000000aa/lib-libc")
            .exists()
    );
}

#[test]
fn an_empty_or_missing_store_fills_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let packages = lock_packages(LOCK).unwrap();
    let done = populate(
        &dir.path().join("none"),
        &dir.path().join("t"),
        &packages,
        me(),
    )
    .unwrap();
    assert_eq!(done, Populated::default());
    let h = harvest(&dir.path().join("t"), &dir.path().join("s"), &packages).unwrap();
    assert_eq!(h, Harvested::default());
}

/// Sets a directory's mtime (what the store reads as the unit's last placement).
fn set_used_at(dir: &Path, t: std::time::SystemTime) {
    std::fs::File::open(dir).unwrap().set_modified(t).unwrap();
}

/// [`set_used_at`] `secs` seconds after the epoch.
fn set_used(dir: &Path, secs: u64) {
    set_used_at(
        dir,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
    );
}

fn used(dir: &Path) -> std::time::SystemTime {
    std::fs::metadata(dir).unwrap().modified().unwrap()
}

#[test]
fn placing_a_unit_records_when_and_never_moves_that_back() {
    let dir = tempfile::tempdir().unwrap();
    let (target, store) = (dir.path().join("t"), dir.path().join("store"));
    let packages = lock_packages(LOCK).unwrap();
    unit(&target.join("debug"), "libc", "00000000000000aa", true);
    harvest(&target, &store, &packages).unwrap();
    let libc = store.join("units/debug/libc-00000000000000aa");
    set_used(&libc, 1_000_000_000);
    let before = std::time::SystemTime::now();
    populate(&store, &dir.path().join("t2"), &packages, me()).unwrap();
    assert!(used(&libc) >= before, "placing it moved its time forward");
    // a later placement already recorded (another slot's) is not moved back
    let later = before + std::time::Duration::from_secs(3600);
    set_used_at(&libc, later);
    populate(&store, &dir.path().join("t3"), &packages, me()).unwrap();
    assert_eq!(used(&libc), later);
}

/// A stored unit of `size` bytes, last placed at `secs`, in the store of build key `key`.
fn stored_unit(root: &Path, key: &str, name: &str, size: usize, secs: u64) -> std::path::PathBuf {
    let u = root.join(key).join("units/debug").join(name);
    let (pkg, hash) = split_unit(name).unwrap();
    write(
        &u.join(format!("deps/lib{pkg}-{hash}.rlib")),
        &"x".repeat(size),
        0o444,
    );
    set_used(&u, secs);
    u
}

#[test]
fn eviction_removes_the_units_placed_longest_ago_one_whole_placement_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("depstore");
    // the placement at 100 put two units; the one at 200 another build key's; 300 is newest
    let a = stored_unit(&root, "nightly-1", "a-00000000000000aa", 100_000, 100);
    let b = stored_unit(&root, "nightly-1", "b-00000000000000bb", 100_000, 100);
    let c = stored_unit(&root, "stable-2", "c-00000000000000cc", 100_000, 200);
    let d = stored_unit(&root, "nightly-1", "d-00000000000000dd", 100_000, 300);
    let each = disk_bytes(&a).unwrap();
    assert!(each >= 100_000);
    let total = 4 * each;

    // within the size: nothing goes
    let e = evict(&root, total).unwrap();
    assert_eq!(
        e,
        Evicted {
            units: 0,
            bytes: 0,
            kept_bytes: total
        }
    );
    assert!(a.exists() && b.exists() && c.exists() && d.exists());

    // past it: down to three quarters of it. One unit would do (3 of 4 left = 3/4 of the
    // total), but the other unit of that placement goes with it
    let e = evict(&root, total - 1).unwrap();
    assert_eq!(
        e,
        Evicted {
            units: 2,
            bytes: 2 * each,
            kept_bytes: 2 * each
        }
    );
    assert!(!a.exists() && !b.exists());
    assert!(c.exists() && d.exists());
    // nothing is left behind in the stores' temp dirs
    assert_eq!(
        std::fs::read_dir(root.join("nightly-1/tmp"))
            .unwrap()
            .count(),
        0
    );

    // a tiny size: the older build key's unit first, then the newest placement
    let e = evict(&root, each).unwrap();
    assert_eq!((e.units, e.kept_bytes), (2, 0));
    assert!(!c.exists() && !d.exists());
    // a missing store is an empty one
    assert_eq!(
        evict(&dir.path().join("none"), 0).unwrap(),
        Evicted::default()
    );
}
