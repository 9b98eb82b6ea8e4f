//! [`CrateRef`]: how a user names a crate of an experiment (a log, a triage mark, a crate page).

use std::fmt;
use std::str::FromStr;

use super::{CrateId, CrateIdError, CrateIdErrorKind, validate_crate_name};

/// A crate of an experiment as a user names it: an exact crate in any spelling [`CrateId`]
/// parses (`rand@0.8.5`, `reg:rand@0.8.5`, `git:URL#REV`, `path:/DIR`, `local:/DIR`), or a bare
/// registry name (`rand`), which means the experiment's one crate of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CrateRef {
    /// An exact crate; a registry id without checksum also matches one resolved with it.
    Id(CrateId),
    /// A registry crate name: the experiment's one crate of that name.
    Name(String),
}

impl CrateRef {
    fn parse(s: &str) -> Result<CrateRef, CrateIdErrorKind> {
        if s.contains([':', '@']) {
            return CrateId::parse(s).map(CrateRef::Id);
        }
        match validate_crate_name(s) {
            Ok(()) => Ok(CrateRef::Name(s.to_owned())),
            // `x y` is neither a name nor an id: say what a crate may be
            Err(_) if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                Err(CrateIdErrorKind::UnknownKind)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl FromStr for CrateRef {
    type Err = CrateIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CrateRef::parse(s).map_err(|kind| CrateIdError {
            input: s.to_owned(),
            kind,
        })
    }
}

impl fmt::Display for CrateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrateRef::Id(id) => id.fmt(f),
            CrateRef::Name(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::CrateSpec;
    use super::*;

    const SUM: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Every spelling a user may type or copy from caldera's output, and the one form printed.
    #[test]
    fn every_spelling_of_an_exact_crate_reads_as_one_id() {
        let with_sum = format!("rand@0.8.5#{SUM}");
        let reg_with_sum = format!("reg:rand@0.8.5#{SUM}");
        let cases: &[(&str, &str)] = &[
            ("rand@0.8.5", "reg:rand@0.8.5"),
            ("reg:rand@0.8.5", "reg:rand@0.8.5"),
            (&with_sum, &reg_with_sum),
            (&reg_with_sum, &reg_with_sum),
            ("serde_json@1.0.0-rc.1+b", "reg:serde_json@1.0.0-rc.1+b"),
            ("path:/srv/crates/x", "local:/srv/crates/x"),
            ("local:/srv/crates/x", "local:/srv/crates/x"),
            ("path:/a@b", "local:/a@b"),
            ("git:https://h/r.git#abc", "git:https://h/r.git#abc"),
            ("git:ssh://git@h/r#v1.0", "git:ssh://git@h/r#v1.0"),
        ];
        for (input, printed) in cases {
            let id: CrateId = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.to_string(), *printed, "{input}");
            assert_eq!(printed.parse::<CrateId>().unwrap(), id, "{printed}");
            let r: CrateRef = input.parse().unwrap();
            assert_eq!(r, CrateRef::Id(id.clone()), "{input}");
            assert_eq!(r.to_string(), *printed);
            // as a crate spec (a selection entry) it selects exactly that crate
            let spec: CrateSpec = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(spec, CrateSpec::exact(&id), "{input}");
        }
    }

    #[test]
    fn a_bare_name_is_a_name_ref_and_not_an_id() {
        for name in ["rand", "serde_json", "Inflector", "a-b"] {
            assert_eq!(
                name.parse::<CrateRef>().unwrap(),
                CrateRef::Name(name.into())
            );
            assert_eq!(name.parse::<CrateRef>().unwrap().to_string(), name);
            assert!(name.parse::<CrateId>().is_err(), "{name}");
        }
    }

    #[test]
    fn bad_spellings_say_what_is_wrong() {
        let expected = "expected NAME@VERSION, git:URL#REV or path:/ABS/DIR (or the id forms reg:NAME@VERSION[#SHA256] and local:/ABS/DIR)";
        let cases: &[(&str, String)] = &[
            ("", format!("invalid crate id \"\": {expected}")),
            ("1rand", format!("invalid crate id \"1rand\": {expected}")),
            ("x y", format!("invalid crate id \"x y\": {}", "invalid crate name \"x y\": character ' ' is not allowed (only ASCII letters, digits, '-' and '_')")),
            ("crates:rand", format!("invalid crate id \"crates:rand\": {expected}")),
            ("foo:rand@1.0.0", format!("invalid crate id \"foo:rand@1.0.0\": {expected}")),
            ("rand@0.8", "invalid crate id \"rand@0.8\": invalid version \"0.8\": unexpected end of input while parsing minor version number".into()),
            ("rand@", "invalid crate id \"rand@\": version is empty".into()),
            ("@1.0.0", "invalid crate id \"@1.0.0\": crate name is empty".into()),
            ("reg:rand", "invalid crate id \"reg:rand\": registry id needs NAME@VERSION".into()),
            ("git:https://h/r", "invalid crate id \"git:https://h/r\": git id needs URL#REV".into()),
            ("path:rel/dir", "invalid crate id \"path:rel/dir\": path \"rel/dir\" is not absolute".into()),
            ("local:/a/../b", "invalid crate id \"local:/a/../b\": path \"/a/../b\" must not contain a \"..\" component".into()),
            ("rand@0.8.5#abc", "invalid crate id \"rand@0.8.5#abc\": checksum \"abc\" is not 64 lowercase hex digits (sha256)".into()),
        ];
        for (input, msg) in cases {
            let err = input.parse::<CrateRef>().unwrap_err();
            assert_eq!(err.to_string(), *msg, "{input}");
        }
        // the same inputs as crate ids fail the same way (a bare name is not an exact crate)
        for (input, msg) in &cases[3..] {
            assert_eq!(input.parse::<CrateId>().unwrap_err().to_string(), *msg);
        }
    }

    #[test]
    fn crate_specs_take_the_id_forms_too() {
        let cases: &[(&str, &str)] = &[
            ("reg:rand@0.8.5", "rand@0.8.5"),
            ("local:/srv/x", "path:/srv/x"),
            ("path:/srv/x", "path:/srv/x"),
            ("rand", "rand"),
        ];
        for (input, spec) in cases {
            assert_eq!(input.parse::<CrateSpec>().unwrap().to_string(), *spec);
        }
        let bad: &[(&str, &str)] = &[
            (
                "reg:rand",
                "invalid crate spec \"reg:rand\": registry id needs NAME@VERSION",
            ),
            (
                "reg:rand@x",
                "invalid crate spec \"reg:rand@x\": invalid version \"x\": unexpected character 'x' while parsing major version number",
            ),
            (
                "local:rel",
                "invalid crate spec \"local:rel\": path \"rel\" is not absolute",
            ),
            (
                "local:/a,b",
                "invalid crate spec \"local:/a,b\": path must not contain ','",
            ),
        ];
        for (input, msg) in bad {
            assert_eq!(input.parse::<CrateSpec>().unwrap_err().to_string(), *msg);
        }
    }
}
