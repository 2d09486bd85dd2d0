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

    /// Sorts the samples and returns the percentiles (all zero when empty).
    pub fn percentiles(mut self) -> Percentiles {
        if self.us.is_empty() {
            return Percentiles::default();
        }
        self.us.sort_unstable();
        let sum: u64 = self.us.iter().map(|&v| u64::from(v)).sum();
        Percentiles {
            p50_us: nearest_rank(&self.us, 0.50),
            p90_us: nearest_rank(&self.us, 0.90),
            p99_us: nearest_rank(&self.us, 0.99),
            p999_us: nearest_rank(&self.us, 0.999),
            max_us: self.us[self.us.len() - 1],
            mean_us: sum as f64 / self.us.len() as f64,
        }
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub max_us: u32,
    pub mean_us: f64,
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
        assert_eq!((p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us), (500, 900, 990, 999, 1000));
        assert!((p.mean_us - 500.5).abs() < 1e-9);
    }

    #[test]
    fn percentiles_single_sample_all_equal() {
        let p = samples([42]).percentiles();
        assert_eq!((p.p50_us, p.p999_us, p.max_us), (42, 42, 42));
    }

    #[test]
    fn percentiles_empty_all_zero() {
        assert_eq!(Samples::default().percentiles(), Percentiles::default());
    }

    #[test]
    fn record_huge_latency_saturates() {
        let p = samples([u64::MAX / 2]).percentiles();
        assert_eq!(p.max_us, u32::MAX);
    }
}
