//! Statistics: a log-linear latency histogram (about 1.6 % relative precision,
//! fixed memory, no allocation while recording) and summaries of a figure over
//! rounds (median, min-max, inter-quartile range, ratios of medians).

use serde::Serialize;

/// Sub-buckets per power of two: 64 gives a relative error below 1/64.
const SUB: u64 = 64;
/// Values below this are recorded exactly.
const LINEAR: u64 = 2 * SUB;
const BUCKETS: usize = (SUB as usize) * (64 - 6) + SUB as usize;

/// Latencies in nanoseconds, log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], count: 0, sum: 0, min: u64::MAX, max: 0 }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("count", &self.count).field("min", &self.min).field("max", &self.max).finish()
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        // Lossless: values below 128 map to themselves.
        return usize::try_from(v).unwrap_or(0);
    }
    let e = 63 - u64::from(v.leading_zeros()); // >= 7
    let m = v >> (e - 6); // 64..=127
    usize::try_from(SUB * (e - 6) + m).unwrap_or(BUCKETS - 1)
}

/// Lowest and highest value of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, i);
    }
    let e = i / SUB + 5; // inverse of SUB*(e-6)+m with m in 64..128
    let m = i - SUB * (e - 6);
    let lo = m << (e - 6);
    (lo, lo + ((1 << (e - 6)) - 1))
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding the
    /// `ceil(q * count)`-th smallest value, clamped to the exact min and max
    /// (which are returned exactly for the first and last rank).
    #[must_use]
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        if rank == 1 {
            return Some(self.min);
        }
        if rank >= self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return Some((lo + (hi - lo) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// A figure over rounds.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartile (linear interpolation between samples).
    pub q1: f64,
    pub q3: f64,
    pub samples: Vec<f64>,
}

impl Summary {
    /// None when there are no (finite) samples.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(Summary {
            median: quantile_sorted(&s, 0.5),
            min: s[0],
            max: s[s.len() - 1],
            q1: quantile_sorted(&s, 0.25),
            q3: quantile_sorted(&s, 0.75),
            samples: samples.to_vec(),
        })
    }

    /// Spread relative to the median: (max - min) / median.
    #[must_use]
    pub fn relative_spread(&self) -> Option<f64> {
        (self.median != 0.0).then(|| (self.max - self.min) / self.median.abs())
    }
}

/// Quantile of sorted samples with linear interpolation (the median of an even
/// count is the mean of the middle two).
#[must_use]
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// Median of unsorted samples.
#[must_use]
pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    quantile_sorted(&s, 0.5)
}

/// `value / baseline`, None when the baseline is zero or either is not finite.
#[must_use]
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline != 0.0 && value.is_finite() && baseline.is_finite()).then(|| value / baseline)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_and_unsorted() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn summary_spread_and_quartiles() {
        let s = Summary::of(&[10.0, 12.0, 11.0, 9.0, 100.0]).unwrap();
        assert_eq!(s.median, 11.0);
        assert_eq!(s.min, 9.0);
        assert_eq!(s.max, 100.0);
        assert_eq!(s.q1, 10.0);
        assert_eq!(s.q3, 12.0);
        assert_eq!(s.samples, vec![10.0, 12.0, 11.0, 9.0, 100.0], "samples kept in round order");
        assert!((s.relative_spread().unwrap() - 91.0 / 11.0).abs() < 1e-12);
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(11.0, 10.0), Some(1.1));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_precise() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i} starts where {} ended", i - 1);
            }
            assert_eq!(index(lo), i);
            assert_eq!(index(hi), i);
            prev_hi = Some(hi);
            if hi == u64::MAX {
                break;
            }
        }
        for v in [0, 1, 127, 128, 129, 1000, 65_432, 1_000_000, 123_456_789_012] {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v} in [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= v as f64 / 64.0, "{v}: bucket [{lo}, {hi}] too wide");
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(0.0), Some(1000));
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        assert_eq!(h.count(), 10_000);
        let mut other = Histogram::default();
        other.record(5);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.quantile(0.0), Some(5));
    }
}
