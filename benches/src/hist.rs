//! Latency samples (microseconds, one `u32` each) and the percentiles taken from them.

use std::time::Duration;

use serde::Serialize;

/// Every latency of one run in microseconds; sorted once when summarised.
///
/// A plain vector is exact and cheap: even 100k req/s for 10 s is 4 MB.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    us: Vec<u32>,
}

impl Samples {
    /// Records one latency (saturating at `u32::MAX` microseconds, about 71 minutes).
    pub fn record(&mut self, latency: Duration) {
        self.us.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Moves every sample of `other` into `self`.
    pub fn merge(&mut self, mut other: Samples) {
        self.us.append(&mut other.us);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.us.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    /// Sorts the samples and returns the latency at each of `CURVE_POINTS` quantiles spaced
    /// evenly in "nines" (p50 .. p99.99), stopping where the samples run out: a quantile
    /// whose rank would be the last sample is only kept if it is the first such (it is the max).
    /// Empty when nothing was recorded.
    pub fn curve(&mut self) -> Vec<CurvePoint> {
        self.us.sort_unstable();
        let mut points = Vec::new();
        for quantile in curve_quantiles() {
            if self.us.is_empty() {
                break;
            }
            points.push(CurvePoint { quantile, us: nearest_rank(&self.us, quantile) });
            // Beyond here every quantile is the max: more points would only draw a flat line.
            if !known(quantile, self.us.len()) {
                break;
            }
        }
        points
    }

    /// Sorts the samples and returns the percentiles (all zero when empty). A percentile the
    /// samples cannot tell, because fewer than one sample lies above its rank (p99.9 of 999
    /// samples would only be the max), is `None`, as the curve stops there too.
    pub fn percentiles(mut self) -> Percentiles {
        if self.us.is_empty() {
            return Percentiles::default();
        }
        self.us.sort_unstable();
        let sum: u64 = self.us.iter().map(|&v| u64::from(v)).sum();
        let told = |q: f64| known(q, self.us.len()).then(|| nearest_rank(&self.us, q));
        Percentiles {
            p50_us: nearest_rank(&self.us, 0.50),
            p90_us: told(0.90),
            p99_us: told(0.99),
            p999_us: told(0.999),
            max_us: self.us[self.us.len() - 1],
            mean_us: sum as f64 / self.us.len() as f64,
        }
    }
}

/// Whether `n` samples tell quantile `q`: at least one sample lies above its rank.
fn known(q: f64, n: usize) -> bool {
    // Rounded: 1 - 0.999 is not exactly 0.001 in floating point.
    ((1.0 - q) * n as f64 * 1e6).round() >= 1e6
}

/// Latency percentiles of one run, in microseconds; `None` where the run had too few samples to
/// tell (see [`Samples::percentiles`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_us: u32,
    pub p90_us: Option<u32>,
    pub p99_us: Option<u32>,
    pub p999_us: Option<u32>,
    pub max_us: u32,
    pub mean_us: f64,
}

/// Points of the latency curve: `CURVE_STEPS_PER_NINE` per "nine" from p50 to p99.99.
pub const CURVE_STEPS_PER_NINE: u32 = 20;

/// Highest quantile of the curve, in nines: 4 = p99.99.
pub const CURVE_MAX_NINES: u32 = 4;

/// Quantiles of one to four nines (the length must be `CURVE_MAX_NINES`).
const WHOLE_NINES: [f64; CURVE_MAX_NINES as usize] = [0.9, 0.99, 0.999, 0.9999];

/// One point of a latency-by-percentile curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// 0.5 ..= 0.9999.
    pub quantile: f64,
    /// Nearest-rank latency at `quantile`, microseconds.
    pub us: u32,
}

/// The curve's quantiles, ascending: 0.5, then `1 - 10^-x` for x on an even grid in "nines"
/// (x = 1 is p90, 2 is p99, ...) up to `CURVE_MAX_NINES`. Whole nines are exact (0.9, 0.99, ...),
/// so those points equal the table's percentiles.
pub fn curve_quantiles() -> impl Iterator<Item = f64> {
    let first = (0.5f64.log10().abs() * f64::from(CURVE_STEPS_PER_NINE)).ceil() as u32;
    let steps = (first..=CURVE_MAX_NINES * CURVE_STEPS_PER_NINE).map(|k| {
        if k % CURVE_STEPS_PER_NINE == 0 {
            // The literals, so p90, p99 and p99.9 match `percentiles()` exactly.
            WHOLE_NINES[(k / CURVE_STEPS_PER_NINE) as usize - 1]
        } else {
            1.0 - 10f64.powf(-f64::from(k) / f64::from(CURVE_STEPS_PER_NINE))
        }
    });
    std::iter::once(0.5).chain(steps)
}

/// Nearest-rank percentile of sorted, non-empty `sorted`: the smallest value with at least
/// `q` of the samples at or below it.
fn nearest_rank(sorted: &[u32], q: f64) -> u32 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: impl IntoIterator<Item = u64>) -> Samples {
        let mut s = Samples::default();
        for v in values {
            s.record(Duration::from_micros(v));
        }
        s
    }

    #[test]
    fn percentiles_one_to_thousand_nearest_rank() {
        let p = samples((1..=1000).rev()).percentiles();
        assert_eq!((p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us), (500, Some(900), Some(990), Some(999), 1000));
        assert!((p.mean_us - 500.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_single_sample_all_equal() {
        let p = samples([42]).percentiles();
        assert_eq!((p.p50_us, p.p90_us, p.p999_us, p.max_us), (42, None, None, 42));
    }

    #[test]
    fn percentiles_too_few_samples_are_unknown_not_the_max() {
        let p = samples(1..=999).percentiles();
        assert_eq!((p.p99_us, p.p999_us, p.max_us), (Some(990), None, 999));
        assert_eq!(samples(1..=1000).percentiles().p999_us, Some(999));
        assert_eq!(samples(1..=99).percentiles().p99_us, None);
    }

    #[test]
    fn percentiles_empty_all_zero() {
        assert_eq!(Samples::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn curve_quantiles_ascend_from_p50_to_p9999_with_exact_nines() {
        let q: Vec<f64> = curve_quantiles().collect();
        assert_eq!(q[0], 0.5);
        assert!(q.windows(2).all(|w| w[0] < w[1]), "{q:?}");
        assert_eq!(q[q.len() - 1], 0.9999);
        for nines in [0.9, 0.99, 0.999] {
            assert!(q.contains(&nines), "{nines} missing");
        }
    }

    #[test]
    fn curve_matches_percentiles_at_whole_nines() {
        let mut s = samples((1..=100_000).map(|v| v * 7 % 100_003));
        let curve = s.curve();
        let p = s.percentiles();
        let at = |q: f64| curve.iter().find(|c| c.quantile == q).map(|c| c.us);
        assert_eq!(at(0.5), Some(p.p50_us));
        assert_eq!(at(0.9), p.p90_us);
        assert_eq!(at(0.99), p.p99_us);
        assert_eq!(at(0.999), p.p999_us);
        assert!(curve.windows(2).all(|w| w[0].us <= w[1].us));
    }

    #[test]
    fn curve_few_samples_stops_at_max() {
        let curve = samples(1..=100).curve();
        let last = curve[curve.len() - 1];
        assert_eq!(last.us, 100);
        assert!(last.quantile < 0.999, "no points past the max: {curve:?}");
        assert!(Samples::default().curve().is_empty());
    }

    #[test]
    fn record_huge_latency_saturates() {
        let p = samples([u64::MAX / 2]).percentiles();
        assert_eq!(p.max_us, u32::MAX);
    }
}
