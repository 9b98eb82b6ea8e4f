//! What a run cost against what was estimated at its start (`caldera_core::estimate`): a
//! section of `summary.md`, a field of `results.json`, a row of `index.html`.

use serde::Serialize;

/// The estimate made at the start and what the run then took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostComparison {
    /// Sides the estimate expected to run.
    pub estimated_sides: u64,
    /// First-run sides that did build.
    pub sides_run: u64,
    /// Expected build time (slot time) of the sides, in milliseconds; absent when the
    /// estimate had none (no history in the mode).
    pub estimated_cpu_ms: Option<u64>,
    /// Their build time, in milliseconds.
    pub cpu_ms: u64,
    /// Expected wall time, in milliseconds; absent when no worker was connected at the start.
    pub estimated_wall_ms: Option<u64>,
    /// From the start to the end, in milliseconds; absent while it has not ended.
    pub wall_ms: Option<u64>,
    /// How the estimate was made (its `method`).
    pub method: String,
}

/// `42s`, `3m05s`, `2h07m`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// `took / estimated`, as `1.25×`, when both are known and the estimate is not zero.
fn ratio(estimated: Option<u64>, took: Option<u64>) -> Option<String> {
    match (estimated, took) {
        (Some(e), Some(t)) if e > 0 => Some(format!("{:.2}×", t as f64 / e as f64)),
        _ => None,
    }
}

impl CostComparison {
    /// `CPU time: estimated 24s, took 27s (1.12×); wall time: …`, in one line.
    pub fn line(&self) -> String {
        let part = |what: &str, e: Option<u64>, t: Option<u64>| {
            let took = t.map_or("not ended".to_owned(), duration);
            let r = ratio(e, t).map(|r| format!(" ({r})")).unwrap_or_default();
            match e {
                Some(e) => format!("{what}: estimated {}, took {took}{r}", duration(e)),
                None => format!("{what}: no estimate, took {took}"),
            }
        };
        format!(
            "{}; {}",
            part("CPU time", self.estimated_cpu_ms, Some(self.cpu_ms)),
            part("wall time", self.estimated_wall_ms, self.wall_ms)
        )
    }

    /// The `## Cost` section of `summary.md`.
    pub fn markdown(&self) -> String {
        let cell = |v: Option<u64>, none: &str| v.map_or(none.to_owned(), duration);
        let ratio_cell = |e, t| ratio(e, t).unwrap_or_else(|| "—".into());
        format!(
            "\n## Cost\n\n\
             | | estimated at the start | took | ratio |\n\
             |---|---|---|---|\n\
             | sides run | {} | {} | |\n\
             | CPU time | {} | {} | {} |\n\
             | wall time | {} | {} | {} |\n\n\
             {}\n",
            self.estimated_sides,
            self.sides_run,
            cell(self.estimated_cpu_ms, "no estimate"),
            duration(self.cpu_ms),
            ratio_cell(self.estimated_cpu_ms, Some(self.cpu_ms)),
            cell(self.estimated_wall_ms, "no estimate"),
            cell(self.wall_ms, "not ended"),
            ratio_cell(self.estimated_wall_ms, self.wall_ms),
            self.method
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost() -> CostComparison {
        CostComparison {
            estimated_sides: 4,
            sides_run: 4,
            estimated_cpu_ms: Some(24_000),
            cpu_ms: 27_000,
            estimated_wall_ms: Some(14_000),
            wall_ms: Some(185_000),
            method: "1 job(s) from their crate's history, 1 from the model.".into(),
        }
    }

    #[test]
    fn the_line_and_the_section_set_estimate_against_actual() {
        let c = cost();
        assert_eq!(
            c.line(),
            "CPU time: estimated 24s, took 27s (1.12×); wall time: estimated 14s, took 3m05s (13.21×)"
        );
        let md = c.markdown();
        assert!(md.contains("| CPU time | 24s | 27s | 1.12× |"), "{md}");
        assert!(md.contains("| wall time | 14s | 3m05s | 13.21× |"), "{md}");
        assert!(md.contains("| sides run | 4 | 4 | |"), "{md}");
        assert!(md.ends_with("1 from the model.\n"), "{md}");
    }

    #[test]
    fn missing_numbers_are_said_not_divided() {
        let c = CostComparison {
            estimated_cpu_ms: None,
            estimated_wall_ms: None,
            wall_ms: None,
            ..cost()
        };
        assert_eq!(
            c.line(),
            "CPU time: no estimate, took 27s; wall time: no estimate, took not ended"
        );
        let md = c.markdown();
        assert!(md.contains("| CPU time | no estimate | 27s | — |"), "{md}");
        assert!(
            md.contains("| wall time | no estimate | not ended | — |"),
            "{md}"
        );
        let zero = CostComparison {
            estimated_cpu_ms: Some(0),
            ..cost()
        };
        assert!(zero.line().starts_with("CPU time: estimated 0s, took 27s;"));
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(duration(999), "0s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_620_000), "2h07m");
    }
}
