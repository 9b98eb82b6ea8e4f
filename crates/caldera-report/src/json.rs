//! The JSON of `results.json`: [`Report`]'s `Serialize`.

use caldera_core::toolchain::ToolchainIdentity;

use super::*;

/// The build each side of the experiment ran with (its pinned toolchain identities), for the
/// summary's header and `results.json`'s `"toolchains"`: `{"start": {"toolchain": "nightly",
/// "commit_hash": …, "commit_date": …, "host": …, "release": …, "cargo": …}, "end": …}`, each
/// `null` when unknown (an experiment run before identities were recorded, or by workers that
/// do not report them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Toolchains<'a> {
    /// The start (baseline) side's build.
    pub start: Option<&'a ToolchainIdentity>,
    /// The end (candidate) side's build.
    pub end: Option<&'a ToolchainIdentity>,
}

impl Toolchains<'_> {
    /// Whether either side is known.
    pub fn any(&self) -> bool {
        self.start.is_some() || self.end.is_some()
    }
}

struct IdList<'a>(&'a Report, &'a [Ix]);

impl Serialize for IdList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().map(|&i| &self.0.results[i as usize].krate))
    }
}

struct RootJson<'a>(CrateReport<'a>);

impl Serialize for RootJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("crate", c.krate())?;
        map.serialize_entry("end", &c.result().end)?;
        map.serialize_entry("regressions", &c.regressions_through())?;
        map.serialize_entry("dependents", &c.dependents())?;
        map.serialize_entry("in_cycle", &c.in_cycle())?;
        if let Some(s) = c.confirmation() {
            map.serialize_entry("confirmation", &s)?;
        }
        map.end()
    }
}

struct GroupJson<'a>(ErrorGroup<'a>);

impl Serialize for GroupJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let g = self.0;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("group", g.key())?;
        map.serialize_entry("crates", &IdList(g.report, &g.data.crates))?;
        map.end()
    }
}

struct ReasonsJson<'a>(&'a [ReasonCount]);

impl Serialize for ReasonsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|r| (r.kind, r.crates)))
    }
}

struct SpuriousSide<'a>(&'a Report, Option<&'a [ReasonCount]>, &'a [Ix]);

impl Serialize for SpuriousSide<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(reasons) = self.1 {
            map.serialize_entry("reasons", &ReasonsJson(reasons))?;
        }
        map.serialize_entry("crates", &IdList(self.0, self.2))?;
        map.end()
    }
}

struct SpuriousJson<'a>(&'a Report);

impl Serialize for SpuriousJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry(
            Comparison::SpuriousRegressed.as_str(),
            &SpuriousSide(
                r,
                Some(&r.spurious_regressed_reasons),
                &r.spurious_regressed,
            ),
        )?;
        map.serialize_entry(
            Comparison::SpuriousFixed.as_str(),
            &SpuriousSide(r, Some(&r.spurious_fixed_reasons), &r.spurious_fixed),
        )?;
        map.serialize_entry(
            Comparison::Spurious.as_str(),
            &SpuriousSide(r, Some(&r.spurious_both_reasons), &r.spurious_both),
        )?;
        map.serialize_entry(
            Comparison::Error.as_str(),
            &SpuriousSide(r, None, &r.errors),
        )?;
        map.end()
    }
}

struct CrateJson<'a>(CrateReport<'a>);

impl Serialize for CrateJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let r = c.result();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("crate", &r.krate)?;
        map.serialize_entry("comparison", &c.comparison())?;
        if let Some(s) = c.confirmation() {
            map.serialize_entry("confirmation", &s)?;
        }
        map.serialize_entry("start", &r.start)?;
        map.serialize_entry("end", &r.end)?;
        if let Some(key) = &r.start_log {
            map.serialize_entry("start_log", key)?;
        }
        if let Some(key) = &r.end_log {
            map.serialize_entry("end_log", key)?;
        }
        if let Some(p) = c.position() {
            let report = c.report;
            map.serialize_entry(
                "root_causes",
                &IdList(report, report.scc_roots.row(report.scc_of[p])),
            )?;
            if report.impact[p] > 0 {
                map.serialize_entry("root", &true)?;
            }
            if c.in_cycle() {
                map.serialize_entry("in_cycle", &true)?;
            }
        }
        map.end()
    }
}

struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.take().into_iter().flatten())
    }
}

fn seq<I: Iterator<Item = T>, T: Serialize>(iter: I) -> Seq<I> {
    Seq(std::cell::Cell::new(Some(iter)))
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(14))?;
        map.serialize_entry("total", &self.len())?;
        map.serialize_entry("counts", &self.counts)?;
        map.serialize_entry("regressions", &IdList(self, &self.regressions))?;
        map.serialize_entry("quiet_regressions", &IdList(self, &self.quiet))?;
        map.serialize_entry("diagnostics_changes", &IdList(self, &self.diagnostics))?;
        map.serialize_entry("flaky", &IdList(self, &self.flaky))?;
        map.serialize_entry("confirmation", &self.confirmation_counts())?;
        map.serialize_entry(
            "root_regressions",
            &seq(self.root_regressions().map(RootJson)),
        )?;
        map.serialize_entry("error_groups", &seq(self.error_groups().map(GroupJson)))?;
        map.serialize_entry("spurious", &SpuriousJson(self))?;
        map.serialize_entry("unresolved_dependencies", &self.unresolved)?;
        map.serialize_entry("cycles", &IdList(self, &self.cycles_by_id))?;
        map.serialize_entry("crates", &seq(self.crates().map(CrateJson)))?;
        map.end()
    }
}
