//! A lock-free fixed-bucket histogram, for metrics without a metrics library in the domain.

use std::sync::atomic::{AtomicU64, Ordering};

/// Cumulative-bucket histogram of non-negative values (seconds, counts…).
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    /// Sum of observations in millionths, to stay integral.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

/// A consistent-enough copy of a histogram for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending (`+Inf` implied).
    pub bounds: &'static [f64],
    /// Cumulative counts per bound.
    pub cumulative: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the current state.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum: self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Buckets for latencies in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// Buckets for attempt counts.
pub const ATTEMPT_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = AtomicHistogram::new(&[1.0, 2.0, 5.0]);
        for v in [0.5, 1.0, 1.5, 4.0, 9.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.cumulative, vec![2, 3, 4]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 16.0).abs() < 1e-6);
    }
}
