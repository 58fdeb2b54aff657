//! Figures for the bench binaries: percentiles and the one table-row format that
//! `scripts/bench.sh` collects (`name value unit target ratio (verdict)`).

use std::time::Duration;

/// The `p` quantile (0.0..=1.0) of an ascending slice; `None` when it is empty.
pub fn quantile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

/// [`quantile`] of milliseconds, NaN when empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    quantile(sorted, p).unwrap_or(f64::NAN)
}

/// [`quantile`] of durations, zero when empty.
pub fn pct_duration(sorted: &[Duration], p: f64) -> Duration {
    quantile(sorted, p).unwrap_or_default()
}

/// The row's ratio to its target: below or at 1.0 meets it.
pub fn ratio(value: f64, target: f64, lower_is_better: bool) -> f64 {
    if lower_is_better {
        value / target
    } else {
        target / value
    }
}

/// Formats one table row: `name value unit target T unit ratio R (meets|MISSES)`.
pub fn format_row(
    name: &str,
    value: f64,
    unit: &str,
    target: f64,
    lower_is_better: bool,
) -> String {
    let r = ratio(value, target, lower_is_better);
    let verdict = if r <= 1.0 { "meets" } else { "MISSES" };
    format!("{name:<44} {value:>10.2} {unit:<6} target {target:>7} {unit:<6} ratio {r:>5.2} ({verdict})")
}

/// Prints [`format_row`].
pub fn row(name: &str, value: f64, unit: &str, target: f64, lower_is_better: bool) {
    println!("{}", format_row(name, value, unit, target, lower_is_better));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rows() {
        let v = [1.0, 2.0, 3.0, 4.0, 100.0];
        assert_eq!(pct(&v, 0.5), 3.0);
        assert_eq!(pct(&v, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
        assert_eq!(pct_duration(&[], 0.99), Duration::ZERO);
        let meets = format_row("p99", 10.0, "ms", 20.0, true);
        assert!(meets.ends_with("ratio  0.50 (meets)"), "{meets}");
        let misses = format_row("req/s ratio", 0.5, "x", 0.9, false);
        assert!(misses.ends_with("ratio  1.80 (MISSES)"), "{misses}");
    }
}
