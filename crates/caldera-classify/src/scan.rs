//! The scan: one pass over a step's output collecting the facts.

use super::*;

/// Everything one pass over a step's output found.
pub(crate) struct Scan {
    pub(crate) kind: StepKind,
    pub(crate) own: Own,
    /// Packages named in JSON messages, by (name, version).
    pub(crate) packages: HashMap<(String, String), PackageId>,
    pub(crate) tests: TestTracker,
    pub(crate) facts: Facts,
    pub(crate) saw_expected_header: bool,
    /// Lines since the last one naming a farm-provided path (see `farm_permissions`).
    pub(crate) lines_since_farm_path: Option<u32>,
}

/// Evidence gathered from one output; evidence strings are the first line that showed it.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub(crate) build_failed: bool,
    pub(crate) own_errors: bool,
    pub(crate) own_codes: BTreeSet<String>,
    pub(crate) deps: BTreeSet<String>,
    /// Dependencies named only in plain text: (name, version), resolved at the end.
    pub(crate) dep_names: Vec<(String, Option<String>)>,
    pub(crate) own_build_script: Option<String>,
    pub(crate) ice: Option<String>,
    pub(crate) sigkill: Option<String>,
    pub(crate) oom: Option<String>,
    pub(crate) no_space: Option<String>,
    pub(crate) network: Option<String>,
    pub(crate) link: Option<String>,
    pub(crate) contaminated: Option<String>,
    pub(crate) diagnostics_changed: Option<String>,
    pub(crate) first_error: Option<String>,
    pub(crate) truncated: Option<String>,
    pub(crate) path_fallback: bool,
    pub(crate) failed_tests: BTreeSet<String>,
    pub(crate) attributed: BTreeMap<String, Spurious>,
    /// Spurious evidence seen in failed tests' own output, for notes.
    pub(crate) attributed_evidence: Option<String>,
    /// Failed tests that showed changed compiler output (see `TestTracker::diagnostics`).
    pub(crate) diagnostics_tests: BTreeSet<String>,
    /// Test binaries had started running when the output ended (so a kill hit the tests, not
    /// the build part of the step).
    pub(crate) tests_started: bool,
    /// The test that was running when the output ended, when known.
    pub(crate) unfinished_test: Option<String>,
    /// A farm-provided path (cargo home, toolchains) could not be read: the farm's fault.
    pub(crate) farm_denied: Option<String>,
}

pub(crate) fn set(slot: &mut Option<String>, evidence: &str) {
    if slot.is_none() {
        *slot = Some(clip(evidence, 200));
    }
}

impl Scan {
    pub(crate) fn new(kind: StepKind, own: &[String]) -> Scan {
        let own = Own::new(own);
        let facts = Facts {
            path_fallback: own.path_fallback,
            ..Facts::default()
        };
        Scan {
            kind,
            own,
            packages: HashMap::new(),
            tests: TestTracker::default(),
            facts,
            saw_expected_header: false,
            lines_since_farm_path: None,
        }
    }

    pub(crate) fn feed(&mut self, output: &str) {
        for raw in output.split('\n') {
            let line = strip_timestamp(raw);
            // cargo prints `reason` first; other key orders are accepted all the same.
            if line.starts_with("{\"reason\":")
                || (line.starts_with('{') && line.contains("\"reason\":\""))
            {
                if self.cargo_json(line) {
                    continue;
                }
            } else if (line.starts_with("{\"type\":") || line.starts_with("{ \"type\":"))
                && self.libtest_json(line)
            {
                continue;
            }
            let clean = strip_ansi(line);
            self.text(&clean);
        }
    }

    fn record_package(&mut self, raw: &str) -> Option<PackageId> {
        let p = PackageId::parse(raw)?;
        self.packages.entry(p.key()).or_insert_with(|| p.clone());
        Some(p)
    }

    /// Test binaries are running: cargo has built everything, so what follows is test output
    /// (and cargo's reports on the binaries), never a build.
    fn in_test_run(&self) -> bool {
        self.kind.runs_tests()
            && (self.tests.section.is_some() || !matches!(self.tests.state, TestState::Idle))
    }

    /// Handles a cargo JSON message; false when the line is not one.
    fn cargo_json(&mut self, line: &str) -> bool {
        let Ok(msg) = serde_json::from_str::<CargoMessage<'_>>(line) else {
            return false;
        };
        if self.in_test_run() {
            // Printed by a test (say, a harness driving cargo), not by this step's build.
            return true;
        }
        let package = msg.package_id.as_deref().map(str::to_owned);
        let parsed = package.as_deref().and_then(|p| self.record_package(p));
        match msg.reason.as_ref() {
            "compiler-message" => {
                if let Some(diag) = msg.message {
                    self.diagnostic(&diag, package.as_deref().unwrap_or(""), parsed.as_ref());
                }
            }
            "build-finished" if msg.success == Some(false) => self.facts.build_failed = true,
            _ => {}
        }
        true
    }

    fn diagnostic(&mut self, diag: &Diagnostic, package: &str, parsed: Option<&PackageId>) {
        let ice = diag.level.starts_with("error: internal compiler error");
        let error = diag.level == "error";
        if !ice && !error {
            return;
        }
        let code = diag.code.as_ref().map(|c| c.code.as_str());
        if code == Some("E0464") {
            set(&mut self.facts.contaminated, &diag.message);
        }
        if ice {
            set(
                &mut self.facts.ice,
                &format!("{}: {}", diag.level, diag.message),
            );
        }
        self.diagnostic_text(diag);
        if diag.message.starts_with("aborting due to") {
            return;
        }
        self.facts.build_failed = true;
        if self.own.contains(package, parsed) {
            self.facts.own_errors = true;
            if let (Some(code), false) = (code, ice) {
                self.facts.own_codes.insert(code.to_owned());
            }
        } else {
            let label = match parsed {
                Some(p) => p.crate_label(),
                None if package.is_empty() => return,
                None => package.to_owned(),
            };
            self.facts.deps.insert(label);
        }
    }

    /// Looks for spurious, ICE, link and contamination phrases in an error diagnostic's texts.
    fn diagnostic_text(&mut self, diag: &Diagnostic) {
        for line in diag.message.lines() {
            self.phrases(line, Hits::of(line), false);
        }
        for child in &diag.children {
            self.diagnostic_text(child);
        }
    }

    /// Handles a libtest JSON event; false when the line is not one.
    fn libtest_json(&mut self, line: &str) -> bool {
        let Ok(ev) = serde_json::from_str::<LibtestEvent>(line) else {
            return false;
        };
        if !self.kind.runs_tests() {
            return true;
        }
        if let Some((name, text)) = self.tests.on_event(ev) {
            for l in text.lines() {
                let l = strip_ansi(l);
                let hits = Hits::of(&l);
                if self.diagnostics_phrases(&l, hits) {
                    self.tests.diagnostics.insert(name.clone());
                }
                if hits.has(Hits::ICE) {
                    set(&mut self.facts.ice, &l);
                }
                if let Some(sig) = hits.spurious(&l) {
                    self.tests.attribute(&name, sig);
                    set(&mut self.facts.attributed_evidence, &format!("{name}: {l}"));
                }
            }
        }
        true
    }

    fn text(&mut self, line: &str) {
        if line.starts_with("[caldera: log truncated") {
            set(&mut self.facts.truncated, line);
            return;
        }
        let hits = Hits::of(line);
        if self.kind.runs_tests() {
            self.tests.on_text(line, hits);
        }
        let in_test_run = self.in_test_run();
        self.phrases(line, hits, true);
        self.cargo_lines(line, hits, in_test_run);
    }

    /// Phrase matching shared by plain lines (`plain`) and diagnostic texts.
    fn phrases(&mut self, line: &str, hits: Hits, plain: bool) {
        if hits.0 == 0 {
            if plain {
                self.plain_diagnostics(line, hits);
            }
            if let Some(n) = &mut self.lines_since_farm_path {
                *n += 1;
                if *n > FARM_PATH_REACH {
                    self.lines_since_farm_path = None;
                }
            }
            return;
        }
        self.farm_permissions(line, hits);
        if hits.has(Hits::ICE) {
            set(&mut self.facts.ice, line);
        }
        if hits.has(Hits::SIGKILL) {
            set(&mut self.facts.sigkill, line);
        }
        if hits.oom() {
            set(&mut self.facts.oom, line);
        }
        if hits.has(Hits::LINK) {
            set(&mut self.facts.link, line);
        }
        if hits.has(Hits::CONTAMINATION) {
            set(&mut self.facts.contaminated, line);
        }
        if let Some(sig) = hits.spurious(line) {
            let attributed = plain && self.kind.runs_tests() && self.tests.route(sig);
            if attributed {
                if let TestState::Captured(name) = &self.tests.state {
                    let evidence = format!("{name}: {line}");
                    set(&mut self.facts.attributed_evidence, &evidence);
                }
            } else {
                match sig {
                    Spurious::NoSpace => set(&mut self.facts.no_space, line),
                    Spurious::Network => set(&mut self.facts.network, line),
                }
            }
        }
        if plain {
            self.plain_diagnostics(line, hits);
        }
    }

    fn plain_diagnostics(&mut self, line: &str, hits: Hits) {
        if self.diagnostics_phrases(line, hits) && self.kind.runs_tests() {
            self.tests.diagnostics_seen();
        }
    }

    /// Looks for a UI-test harness reporting changed compiler output; true when the line is
    /// such evidence.
    fn diagnostics_phrases(&mut self, line: &str, hits: Hits) -> bool {
        let t = line.trim();
        if t == "EXPECTED:" {
            self.saw_expected_header = true;
        }
        let changed = (t == "ACTUAL OUTPUT:" && self.saw_expected_header)
            || (t.starts_with("test ") && t.ends_with(" ... mismatch"))
            || hits.has(Hits::DIAGNOSTICS);
        if changed {
            set(&mut self.facts.diagnostics_changed, t);
        }
        changed
    }

    /// Permission denied on a path the farm provides: on the line naming the path, or within a
    /// few lines after it (cargo's `Caused by:` chains).
    fn farm_permissions(&mut self, line: &str, hits: Hits) {
        if hits.has(Hits::FARM_PATH) {
            self.lines_since_farm_path = Some(0);
        } else if let Some(n) = &mut self.lines_since_farm_path {
            *n += 1;
            if *n > FARM_PATH_REACH {
                self.lines_since_farm_path = None;
            }
        }
        if hits.has(Hits::PERMISSION) && self.lines_since_farm_path.is_some() {
            set(&mut self.facts.farm_denied, line.trim());
        }
    }

    /// cargo's own error lines (and process statuses) outside test output.
    fn cargo_lines(&mut self, line: &str, hits: Hits, in_test_run: bool) {
        if hits.has(Hits::PROCESS)
            && let Some((cmd, status)) = process_status(line)
            && is_compiler_command(cmd)
            && ["SIGSEGV", "SIGILL", "SIGBUS", "SIGABRT"]
                .iter()
                .any(|s| status.contains(s))
        {
            set(&mut self.facts.ice, &format!("compiler crashed: {status}"));
        }
        if in_test_run {
            return;
        }
        if line.starts_with("error") && self.facts.first_error.is_none() {
            set(&mut self.facts.first_error, line);
        }
        if let Some(rest) = line.strip_prefix("error: failed to run custom build command for ") {
            self.facts.build_failed = true;
            let Some(inner) = backticked(rest) else {
                return;
            };
            let inner = match inner.find(" (") {
                Some(i) => &inner[..i],
                None => inner,
            };
            let (name, version) = match inner.rsplit_once(" v") {
                Some((n, v)) => (n, Some(v)),
                None => (inner, None),
            };
            if self.own.has_name_version(name, version) {
                set(&mut self.facts.own_build_script, line);
            } else {
                self.facts
                    .dep_names
                    .push((name.to_owned(), version.map(str::to_owned)));
            }
        } else if let Some(rest) = line.strip_prefix("error: could not compile ") {
            self.facts.build_failed = true;
            if let Some(name) = backticked(rest)
                && !self.own.has_name_version(name, None)
            {
                self.facts.dep_names.push((name.to_owned(), None));
            }
        }
    }

    pub(crate) fn finish(mut self) -> Facts {
        self.facts.tests_started = self.in_test_run();
        self.facts.unfinished_test = self.tests.unfinished_test();
        self.tests.end_section();
        let mut facts = self.facts;
        facts.failed_tests = std::mem::take(&mut self.tests.failed);
        facts.attributed = std::mem::take(&mut self.tests.attributed);
        facts.diagnostics_tests = std::mem::take(&mut self.tests.diagnostics);
        // Dependencies named only in text: a JSON-known package gives its crate label, except
        // when it is the crate's own under the path fallback (its JSON errors already count).
        for (name, version) in std::mem::take(&mut facts.dep_names) {
            let known: Vec<&PackageId> = match &version {
                Some(v) => self
                    .packages
                    .get(&(name.clone(), v.clone()))
                    .into_iter()
                    .collect(),
                None => self.packages.values().filter(|p| p.name == name).collect(),
            };
            if known.iter().any(|p| {
                self.own
                    .contains(&format!("{} {}", p.name, p.version), Some(p))
            }) {
                continue;
            }
            match known.as_slice() {
                [one] => facts.deps.insert(one.crate_label()),
                _ => facts.deps.insert(name),
            };
        }
        facts
    }
}
