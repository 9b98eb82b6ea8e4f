//! The model for crates without history: least squares of a side's duration on the crate's
//! number of dependencies, kept only when it predicts better than the mode's median.

use serde::{Deserialize, Serialize};

/// Fewest samples (crates with history and a known dependency count) a line is fitted on.
pub const MIN_LINE_SAMPLES: usize = 5;

/// One crate of the mode's history: its median side duration and, when the registry listing
/// knows the crate, its number of dependencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub deps: Option<u32>,
    pub side_ms: f64,
}

/// How a crate without history of its own is estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Model {
    /// `side_ms = intercept_ms + per_dep_ms × dependencies`; crates the listing does not know
    /// get `median_ms`.
    Line {
        intercept_ms: f64,
        per_dep_ms: f64,
        median_ms: f64,
        /// Crates the line was fitted on.
        samples: usize,
        /// Coefficient of determination on those crates.
        r2: f64,
        /// Mean absolute error of the line, leave-one-out, in milliseconds.
        loo_mae_ms: f64,
        /// The same for the mode's median: what the line had to beat.
        median_loo_mae_ms: f64,
    },
    /// Every crate without history gets the median of the mode's crates.
    Median {
        median_ms: f64,
        samples: usize,
        /// Mean absolute error of the median, leave-one-out, in milliseconds (absent with one
        /// sample).
        loo_mae_ms: Option<f64>,
        /// Why no line: too few crates with a dependency count, or the line did not predict
        /// better than the median.
        why: String,
    },
    /// No history at all in this mode: crates without history of their own cannot be estimated.
    None,
}

impl Model {
    /// The expected side duration of a crate with `deps` dependencies (when known).
    pub fn predict(&self, deps: Option<u32>) -> Option<f64> {
        match self {
            Model::Line {
                intercept_ms,
                per_dep_ms,
                median_ms,
                ..
            } => Some(match deps {
                Some(d) => (intercept_ms + per_dep_ms * f64::from(d)).max(0.0),
                None => *median_ms,
            }),
            Model::Median { median_ms, .. } => Some(*median_ms),
            Model::None => None,
        }
    }
}

/// The median of `values` (not empty).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Leave-one-out mean absolute error of predicting each value by the median of the others.
fn median_loo_mae(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let total: f64 = (0..values.len())
        .map(|i| {
            let mut rest: Vec<f64> = values
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| *v)
                .collect();
            (values[i] - median(&mut rest)).abs()
        })
        .sum();
    Some(total / values.len() as f64)
}

/// An ordinary least-squares line through `(x, y)` with its fit statistics.
struct Line {
    intercept: f64,
    slope: f64,
    r2: f64,
    loo_mae: f64,
}

/// The least-squares line, or `None` when every x is the same.
fn least_squares(points: &[(f64, f64)]) -> Option<Line> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    let ss_tot: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    // leave-one-out residuals of a least-squares fit: e_i / (1 - h_ii), h_ii the leverage
    let loo_mae = points
        .iter()
        .map(|p| {
            let h = 1.0 / n + (p.0 - mx).powi(2) / sxx;
            let e = p.1 - intercept - slope * p.0;
            if h < 1.0 {
                (e / (1.0 - h)).abs()
            } else {
                e.abs()
            }
        })
        .sum::<f64>()
        / n;
    Some(Line {
        intercept,
        slope,
        r2,
        loo_mae,
    })
}

/// Fits the model on the mode's history (see [`Model`]): a line when at least
/// [`MIN_LINE_SAMPLES`] crates have a dependency count and its leave-one-out error beats the
/// median's, else the median, else nothing.
pub fn fit(samples: &[Sample]) -> Model {
    if samples.is_empty() {
        return Model::None;
    }
    let mut all: Vec<f64> = samples.iter().map(|s| s.side_ms).collect();
    let median_ms = median(&mut all);
    let median_only = |why: String| Model::Median {
        median_ms,
        samples: samples.len(),
        loo_mae_ms: median_loo_mae(&all),
        why,
    };
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.deps.map(|d| (f64::from(d), s.side_ms)))
        .collect();
    if points.len() < MIN_LINE_SAMPLES {
        return median_only(format!(
            "{} crate(s) of the history have a dependency count (a line needs {MIN_LINE_SAMPLES})",
            points.len()
        ));
    }
    let Some(line) = least_squares(&points) else {
        return median_only("every crate of the history has the same dependency count".into());
    };
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let median_loo = median_loo_mae(&ys).unwrap_or(f64::INFINITY);
    if line.slope <= 0.0 || line.loo_mae >= median_loo {
        return median_only(format!(
            "the line on dependencies (slope {:.0} ms, leave-one-out error {:.0} ms) predicts no \
             better than the median ({:.0} ms)",
            line.slope, line.loo_mae, median_loo
        ));
    }
    Model::Line {
        intercept_ms: line.intercept,
        per_dep_ms: line.slope,
        median_ms,
        samples: points.len(),
        r2: line.r2,
        loo_mae_ms: line.loo_mae,
        median_loo_mae_ms: median_loo,
    }
}
