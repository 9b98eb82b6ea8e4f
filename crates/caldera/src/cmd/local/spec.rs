//! The experiment `caldera local` runs: its end toolchain, and its spec (the demo's crates and
//! fixtures, or --crates).

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

use super::{LocalArgs, say};

/// The demo: small real registry crates that pass on both toolchains, plus fixture crates that show a
/// regression, a fix and a spurious failure.
pub const DEMO_REGISTRY_CRATES: &[&str] = &[
    "cfg-if@1.0.1",
    "fnv@1.0.7",
    "itoa@1.0.11",
    "scopeguard@1.2.0",
    "static_assertions@1.1.0",
    "semver@1.0.23",
    "adler@1.0.2",
    "heck@0.5.0",
    "memoffset@0.9.1",
    "hex@0.4.3",
    "matches@0.1.10",
    "version_check@0.9.5",
];

/// Fixture crates of the demo (directories under the fixtures dir).
pub const DEMO_FIXTURES: &[&str] = &[
    "regress-on-nightly",
    "fixed-on-nightly",
    "spurious-oom-on-nightly",
    "pass",
];

/// The demo's end toolchain on a machine without nightly.
pub const DEMO_END_WITHOUT_NIGHTLY: &str = "stable+rustflags=--cfg=caldera_nightly";

fn default_fixtures_dir() -> PathBuf {
    // at run time first (`cargo run` sets it): a binary reused from a shared target dir may have been
    // built from another checkout, which the compile-time value would name
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../tests/fixtures/crates")
}

/// The end toolchain when `--end` is not given: nightly, or for the demo on a machine without
/// nightly, stable with a cfg flag that the demo's fixtures treat like nightly.
pub(super) fn end_toolchain(args: &LocalArgs, capabilities: &[String]) -> anyhow::Result<String> {
    if let Some(end) = &args.end {
        return Ok(end.clone());
    }
    let has_nightly = capabilities.iter().any(|c| c == "toolchain:nightly");
    if has_nightly {
        return Ok("nightly".into());
    }
    if args.demo {
        say(
            "no nightly toolchain here; the demo compares stable with stable+rustflags=--cfg=caldera_nightly",
        );
        return Ok(DEMO_END_WITHOUT_NIGHTLY.into());
    }
    bail!(
        "the default end toolchain is nightly, which this machine's rustup home does not have: install it \
         (`rustup toolchain install nightly --profile minimal`) or pass --end"
    )
}

/// The experiment's name: --name, else `demo` or `local`.
pub(super) fn experiment_name(args: &LocalArgs) -> String {
    args.name.clone().unwrap_or_else(|| {
        if args.demo {
            "demo".into()
        } else {
            "local".into()
        }
    })
}

/// The body of `POST /api/v1/experiments` for this run.
pub(super) fn experiment_body(
    args: &LocalArgs,
    end: &str,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let crates = if args.demo {
        demo_crates(args)?
    } else {
        json!(args.crates.clone().unwrap_or_default())
    };
    let mut body =
        json!({"name": name, "start": args.start, "end": end, "mode": args.mode, "crates": crates});
    if let Some(n) = args.confirm {
        body["confirm"] = json!(n);
    }
    if let Some(l) = &args.lockfile {
        body["lockfile"] = json!(l);
    }
    if args.calibration {
        body["calibration"] = json!(true);
    }
    Ok(body)
}

/// The demo's crate selection: the first --demo-crates registry crates, then the fixtures.
fn demo_crates(args: &LocalArgs) -> anyhow::Result<serde_json::Value> {
    let fixtures = args
        .fixtures_dir
        .clone()
        .unwrap_or_else(default_fixtures_dir);
    let fixtures = fixtures.canonicalize().with_context(|| {
        format!(
            "the demo's fixture crates are not at {} (pass --fixtures-dir)",
            fixtures.display()
        )
    })?;
    let n = args
        .demo_crates
        .unwrap_or(DEMO_REGISTRY_CRATES.len())
        .min(DEMO_REGISTRY_CRATES.len());
    let mut list: Vec<String> = DEMO_REGISTRY_CRATES[..n]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for f in DEMO_FIXTURES {
        list.push(format!("path:{}", fixtures.join(f).display()));
    }
    Ok(json!({"kind": "list", "crates": list}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        local: LocalArgs,
    }

    fn args(argv: &[&str]) -> LocalArgs {
        Cli::try_parse_from(std::iter::once("local").chain(argv.iter().copied()))
            .expect("valid arguments")
            .local
    }

    #[test]
    fn the_end_toolchain_falls_back_to_flags_only_for_the_demo() {
        let with = ["docker".to_owned(), "toolchain:nightly".to_owned()];
        let without = ["docker".to_owned(), "toolchain:stable".to_owned()];
        let cases: &[(&[&str], &[String], Result<&str, &str>)] = &[
            (&["--demo"], &with, Ok("nightly")),
            (&["--demo"], &without, Ok(DEMO_END_WITHOUT_NIGHTLY)),
            (&["--crates", "fnv@1.0.7"], &with, Ok("nightly")),
            (
                &["--crates", "fnv@1.0.7"],
                &without,
                Err(
                    "the default end toolchain is nightly, which this machine's rustup home does not have",
                ),
            ),
            (&["--demo", "--end", "beta"], &without, Ok("beta")),
            (
                &["--crates", "x@1.0.0", "--end", "stable"],
                &without,
                Ok("stable"),
            ),
        ];
        for (argv, caps, want) in cases {
            let got = end_toolchain(&args(argv), caps);
            match (want, got) {
                (Ok(w), Ok(g)) => assert_eq!(&g, w, "{argv:?}"),
                (Err(w), Err(g)) => assert!(g.to_string().starts_with(w), "{argv:?}: {g}"),
                (w, g) => panic!("{argv:?}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn the_demo_lists_its_crates_and_fixtures() {
        let a = args(&["--demo", "--demo-crates", "2"]);
        let body = experiment_body(&a, "nightly", "demo").unwrap();
        let crates = body["crates"]["crates"].as_array().unwrap();
        assert_eq!(crates.len(), 2 + DEMO_FIXTURES.len());
        assert_eq!(crates[0], "cfg-if@1.0.1");
        assert!(
            crates[2]
                .as_str()
                .unwrap()
                .ends_with("/fixtures/crates/regress-on-nightly")
        );
        assert_eq!(body["end"], "nightly");
        // more than there are: all of them
        let a = args(&["--demo", "--demo-crates", "99"]);
        let body = experiment_body(&a, "nightly", "demo").unwrap();
        assert_eq!(
            body["crates"]["crates"].as_array().unwrap().len(),
            DEMO_REGISTRY_CRATES.len() + DEMO_FIXTURES.len()
        );
        // a missing fixtures dir is named in the error
        let a = args(&["--demo", "--fixtures-dir", "/nonexistent/fixtures"]);
        let e = experiment_body(&a, "nightly", "demo").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/fixtures"), "{e}");
    }
}
