//! Order statistics over samples: [`median`] and [`percentile`].
//!
//! Both take the samples in any order and sort a copy (NaN sorts last, by
//! `f64::total_cmp`). Both return NaN for no samples, so an empty bench shows
//! up as `NaN` in the output instead of a made-up number.

/// The median: the middle sample, or the mean of the two middle ones when
/// there is an even number of samples.
pub(crate) fn median(samples: &[f64]) -> f64 {
    let sorted = sorted(samples);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0 ≤ `p` ≤ 100) by the nearest-rank method: the
/// smallest sample such that at least `p`% of the samples are ≤ it. Always
/// one of the samples, never an interpolation. `p` outside 0..=100 is clamped.
pub(crate) fn percentile(samples: &[f64], p: f64) -> f64 {
    let sorted = sorted(samples);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) };
    // Rank 1..=n; the float-to-int cast saturates, and the clamp keeps p = 0 at rank 1.
    let rank = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[5.0, 1.0, 4.0, 2.0, 3.0]), 3.0);
    }

    #[test]
    fn median_ignores_input_order_and_outliers() {
        assert_eq!(median(&[1.0, 1000.0, 2.0, 3.0, 2.5]), 2.5);
        assert_eq!(median(&[1000.0, 3.0, 2.5, 2.0, 1.0]), 2.5);
    }

    #[test]
    fn empty_input_is_nan() {
        assert!(median(&[]).is_nan());
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 99.5), 100.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 1.0), 1.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        // 2000 samples: p99 is the 1980th smallest.
        let w: Vec<f64> = (1..=2000).rev().map(f64::from).collect();
        assert_eq!(percentile(&w, 99.0), 1980.0);
        assert_eq!(percentile(&w, 50.0), 1000.0);
    }

    #[test]
    fn percentile_of_few_samples() {
        assert_eq!(percentile(&[10.0, 20.0, 30.0], 50.0), 20.0);
        assert_eq!(percentile(&[10.0, 20.0, 30.0], 99.0), 30.0);
        assert_eq!(percentile(&[10.0, 20.0], 50.0), 10.0);
        assert_eq!(percentile(&[42.0], 99.0), 42.0);
    }

    #[test]
    fn percentile_clamps_p() {
        let v = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&v, -5.0), 1.0);
        assert_eq!(percentile(&v, 250.0), 3.0);
        assert_eq!(percentile(&v, f64::NAN), 1.0);
    }

    #[test]
    fn nan_samples_sort_last() {
        assert_eq!(median(&[f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&[f64::NAN, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[f64::NAN, 1.0, 2.0], 100.0).is_nan());
    }
}
