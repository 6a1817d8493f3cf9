//! Percentiles and summaries of measured samples.

use std::time::Duration;

use serde_json::{Value, json};

/// Summary of a set of durations (milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Smallest sample, ms.
    pub min: f64,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99: f64,
    /// Largest sample, ms.
    pub max: f64,
    /// Mean, ms.
    pub mean: f64,
}

impl Summary {
    /// Summarises `samples`; all zero when empty.
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::of_ms(&mut ms)
    }

    /// Summarises millisecond samples (sorted in place).
    pub fn of_ms(ms: &mut [f64]) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        Summary {
            n: ms.len(),
            min: ms[0],
            p50: percentile(ms, 50.0),
            p99: percentile(ms, 99.0),
            max: ms[ms.len() - 1],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }

    /// As JSON (milliseconds).
    pub fn to_json(self) -> Value {
        json!({"n": self.n, "min_ms": round(self.min), "p50_ms": round(self.p50),
               "p99_ms": round(self.p99), "max_ms": round(self.max), "mean_ms": round(self.mean)})
    }
}

/// Nearest-rank percentile of sorted `ms` (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to three decimals, for JSON.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of_ms(&mut v);
        assert_eq!((s.p50, s.p99, s.max, s.n), (50.0, 99.0, 100.0, 100));
        let mut one = [7.0];
        assert_eq!(Summary::of_ms(&mut one).p99, 7.0);
        assert_eq!(Summary::of(&[]).n, 0);
    }
}
