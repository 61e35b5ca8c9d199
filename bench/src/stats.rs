//! Order statistics of a small sample.

/// Median, spread and size of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median (the lower middle value for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// 90th percentile, nearest rank.
    pub p90: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: usize,
}

/// Summarizes `values`; `None` when there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        median: percentile(&sorted, 50)?,
        min: *sorted.first()?,
        p90: percentile(&sorted, 90)?,
        max: *sorted.last()?,
        count: sorted.len(),
    })
}

/// Returns the `percent` percentile of sorted values by nearest rank.
fn percentile(sorted: &[f64], percent: usize) -> Option<f64> {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_ten_values() {
        let values = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0];
        let summary = summarize(&values).unwrap();
        assert_eq!(summary.median, 5.0);
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.p90, 9.0);
        assert_eq!(summary.max, 10.0);
        assert_eq!(summary.count, 10);
    }

    #[test]
    fn summary_of_one_value() {
        let summary = summarize(&[3.5]).unwrap();
        assert_eq!(summary.median, 3.5);
        assert_eq!(summary.p90, 3.5);
    }

    #[test]
    fn summary_of_nothing() {
        assert!(summarize(&[]).is_none());
    }
}
