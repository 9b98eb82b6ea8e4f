//! Every option of the CLI documents its environment variable in `--help`.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_caldera"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The `--long` options listed in a help text, each with the text up to the next option.
fn options(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t
            .strip_prefix("--")
            .or_else(|| t.split_once(", --").map(|(_, r)| r))
        {
            let name = rest.split([' ', '<']).next().unwrap_or("").to_owned();
            out.push((name, String::new()));
        } else if t.starts_with("-h, --help") || t.starts_with("-V, --version") {
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push(' ');
        }
    }
    out.retain(|(n, _)| n != "help" && n != "version");
    out
}

#[test]
fn every_option_names_its_environment_variable() {
    for cmd in [
        &["experiment", "create"][..],
        &["experiment", "edit"],
        &["experiment", "list"],
        &["crate-list", "create"],
        &["triage", "mark"],
        &["triage", "list"],
        &["master"],
        &["worker"],
        &["local"],
        &["migrate"],
        &["token", "create"],
    ] {
        let text = help(cmd);
        let opts = options(&text);
        assert!(opts.len() >= 2, "{cmd:?}: found no options in\n{text}");
        for (name, desc) in opts {
            let desc = desc.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                desc.contains("[env: CALDERA_"),
                "{cmd:?} --{name} does not name its env var: {desc}"
            );
        }
    }
}

#[test]
fn the_scripting_names_are_stable() {
    let master = help(&["master"]);
    for var in ["CALDERA_LISTEN", "CALDERA_DATABASE_URL"] {
        assert!(master.contains(var), "caldera master --help lacks {var}");
    }
    let exp = help(&["experiment", "list"]);
    for var in ["CALDERA_SERVER", "CALDERA_TOKEN"] {
        assert!(exp.contains(var), "caldera experiment --help lacks {var}");
    }
    assert!(help(&["worker"]).contains("CALDERA_MASTER"));
}
