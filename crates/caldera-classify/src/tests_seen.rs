//! The tests in a step's output: libtest's result lines, JSON events and captured output.

use super::*;

#[derive(Deserialize)]
pub(crate) struct LibtestEvent {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) event: String,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) stdout: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
}

/// A failure reason that can be pinned on one test: printed in that test's own output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Spurious {
    Network,
    NoSpace,
}

#[derive(Debug, Default)]
pub(crate) enum TestState {
    /// Between test binaries (cargo's lines, build output).
    #[default]
    Idle,
    /// A binary is running its tests (after `running N tests`, or libtest JSON's suite start).
    Running,
    /// After a `failures:` header: captured outputs or the list of names follow.
    Failures,
    /// Inside `---- NAME stdout ----`.
    Captured(String),
}

#[derive(Debug, Default)]
pub(crate) struct Section {
    pub(crate) label: String,
    /// `test result:` (or the JSON suite end) was seen.
    pub(crate) completed: bool,
    /// cargo said this binary failed (`error: test failed, to rerun pass …`).
    pub(crate) failed: bool,
    pub(crate) status: Option<String>,
    pub(crate) names_found: usize,
    /// Single-threaded libtest printed `test NAME ... ` without a result.
    pub(crate) pending: Option<String>,
    /// libtest JSON tests started and not finished.
    pub(crate) in_flight: BTreeSet<String>,
    /// A spurious signal printed in this binary's run outside any test's captured output.
    pub(crate) signal: Option<Spurious>,
    /// A UI-test harness reported changed compiler output during this binary's run.
    pub(crate) diagnostics: bool,
    /// The failed tests named in this binary's run.
    pub(crate) failed_names: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct TestTracker {
    pub(crate) state: TestState,
    pub(crate) section: Option<Section>,
    pub(crate) failed: BTreeSet<String>,
    pub(crate) attributed: BTreeMap<String, Spurious>,
    /// Failed tests whose own output, or whose binary's run, showed a UI-test harness reporting
    /// changed compiler output.
    pub(crate) diagnostics: BTreeSet<String>,
}

pub(crate) fn running_header(line: &str) -> bool {
    line.strip_prefix("running ")
        .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// `test NAME ... TAIL` → (NAME without ` - should panic`, TAIL).
pub(crate) fn test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, tail) = rest.split_once(" ... ")?;
    let name = name.strip_suffix(" - should panic").unwrap_or(name);
    (!name.is_empty()).then_some((name, tail.trim()))
}

pub(crate) fn captured_header(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("---- ")?;
    rest.strip_suffix(" stdout ----")
        .or_else(|| rest.strip_suffix(" stderr ----"))
}

/// `     Running unittests src/lib.rs (/t/debug/deps/x-0123456789abcdef)` → `unittests src/lib.rs`;
/// `     Running target/debug/deps/x-0123456789abcdef` → `target/debug/deps/x`;
/// `   Doc-tests x` → `doctests x`.
pub(crate) fn section_label(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("   Doc-tests ") {
        return Some(format!("doctests {}", rest.trim()));
    }
    let rest = line.strip_prefix("     Running ")?.trim();
    let rest = match rest.rfind(" (") {
        Some(i) if rest.ends_with(')') => &rest[..i],
        _ => rest,
    };
    let stem_end = rest.len().saturating_sub(17);
    let hashed = rest.len() > 17
        && rest.as_bytes()[stem_end] == b'-'
        && rest[stem_end + 1..].chars().all(|c| c.is_ascii_hexdigit());
    Some(if hashed { &rest[..stem_end] } else { rest }.to_owned())
}

impl TestTracker {
    fn start_section(&mut self, label: String) {
        self.end_section();
        self.section = Some(Section {
            label,
            ..Section::default()
        });
        self.state = TestState::Idle;
    }

    pub(crate) fn end_section(&mut self) {
        let Some(s) = self.section.take() else {
            return;
        };
        if !s.failed {
            return;
        }
        let status = s.status.as_deref().unwrap_or("failed");
        let synthetic = || format!("<{}>: {}", s.label, status);
        let culprit = if s.completed {
            (s.names_found == 0).then(synthetic)
        } else {
            let single = (s.in_flight.len() == 1)
                .then(|| s.in_flight.first().cloned())
                .flatten();
            Some(s.pending.clone().or(single).unwrap_or_else(synthetic))
        };
        if let Some(name) = culprit {
            if let Some(sig) = s.signal {
                self.attribute(&name, sig);
            }
            if s.diagnostics {
                self.diagnostics.insert(name.clone());
            }
            self.failed.insert(name);
        }
        if s.diagnostics {
            self.diagnostics.extend(s.failed_names);
        }
    }

    /// The test that was running when the output ended, if the binary had not finished.
    pub(crate) fn unfinished_test(&self) -> Option<String> {
        let s = self.section.as_ref().filter(|s| !s.completed)?;
        s.pending
            .clone()
            .or_else(|| (s.in_flight.len() == 1).then(|| s.in_flight.first().cloned())?)
    }

    /// A UI-test harness reported changed compiler output: pinned on the test whose captured
    /// output it is in, else on the running binary.
    pub(crate) fn diagnostics_seen(&mut self) {
        if let TestState::Captured(name) = &self.state {
            let name = name.clone();
            self.diagnostics.insert(name);
        } else if let Some(s) = &mut self.section {
            s.diagnostics = true;
        }
    }

    fn section(&mut self) -> &mut Section {
        self.section.get_or_insert_with(|| Section {
            label: "test binary".into(),
            ..Section::default()
        })
    }

    fn add_failed(&mut self, name: &str) {
        let s = self.section();
        s.names_found += 1;
        s.failed_names.push(name.to_owned());
        self.failed.insert(name.to_owned());
    }

    pub(crate) fn attribute(&mut self, name: &str, sig: Spurious) {
        let e = self.attributed.entry(name.to_owned()).or_insert(sig);
        *e = (*e).max(sig);
    }

    /// Routes a spurious signal from a plain line: to the test whose captured output it is in
    /// (returns true), or to the step (returns false; also remembered for the running binary).
    pub(crate) fn route(&mut self, sig: Spurious) -> bool {
        if let TestState::Captured(name) = &self.state {
            let name = name.clone();
            self.attribute(&name, sig);
            return true;
        }
        if let Some(s) = &mut self.section {
            s.signal = Some(s.signal.map_or(sig, |old| old.max(sig)));
        }
        false
    }

    pub(crate) fn on_text(&mut self, line: &str, hits: Hits) {
        let t = line.trim_end();
        if !matches!(self.state, TestState::Captured(_))
            && let Some(label) = section_label(t)
        {
            self.start_section(label);
            return;
        }
        match &self.state {
            TestState::Idle => {
                if running_header(t) {
                    self.state = TestState::Running;
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                } else if hits.has(Hits::BINARY_FAILED) {
                    self.section().failed = true;
                } else if let Some((_, status)) =
                    process_status(t).filter(|_| hits.has(Hits::PROCESS))
                {
                    let s = self.section();
                    if s.failed && s.status.is_none() {
                        s.status = Some(status.to_owned());
                    }
                }
            }
            TestState::Running => {
                if let Some((name, tail)) = test_line(t) {
                    if tail.starts_with("FAILED") {
                        self.add_failed(name);
                        self.section().pending = None;
                    } else if tail == "ok"
                        || tail.starts_with("ok ")
                        || tail.starts_with("ignored")
                        || tail.starts_with("bench:")
                    {
                        self.section().pending = None;
                    } else {
                        self.section().pending = Some(name.to_owned());
                    }
                }
                if t == "failures:" {
                    self.state = TestState::Failures;
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                    self.state = TestState::Idle;
                } else if hits.has(Hits::BINARY_FAILED) {
                    self.section().failed = true;
                    self.state = TestState::Idle;
                }
            }
            TestState::Failures => {
                if let Some(name) = captured_header(t) {
                    self.state = TestState::Captured(name.to_owned());
                } else if t.starts_with("test result: ") {
                    self.section().completed = true;
                    self.state = TestState::Idle;
                } else if let Some(name) = t.strip_prefix("    ")
                    && !name.is_empty()
                    && !name.starts_with(' ')
                {
                    self.add_failed(name);
                }
            }
            TestState::Captured(_) => {
                if let Some(name) = captured_header(t) {
                    self.state = TestState::Captured(name.to_owned());
                } else if t == "failures:" {
                    self.state = TestState::Failures;
                }
            }
        }
    }

    /// Handles a libtest JSON event; returns the name of a failed test and its output to scan.
    pub(crate) fn on_event(&mut self, ev: LibtestEvent) -> Option<(String, String)> {
        match (ev.kind.as_str(), ev.event.as_str()) {
            ("suite", "started") => {
                self.state = TestState::Running;
                None
            }
            ("suite", _) => {
                self.section().completed = true;
                self.state = TestState::Idle;
                None
            }
            ("test" | "bench", event) => {
                let name = ev.name?;
                match event {
                    "started" => {
                        self.section().in_flight.insert(name);
                        None
                    }
                    "failed" => {
                        self.section().in_flight.remove(&name);
                        self.add_failed(&name);
                        let mut text = ev.stdout.unwrap_or_default();
                        if let Some(m) = ev.message {
                            text.push('\n');
                            text.push_str(&m);
                        }
                        Some((name, text))
                    }
                    "timeout" => None,
                    _ => {
                        self.section().in_flight.remove(&name);
                        None
                    }
                }
            }
            _ => None,
        }
    }
}
