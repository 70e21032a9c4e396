//! Shared pieces of vmcluster's benchmarks: percentiles and the JSON report.
//!
//! Speed and memory targets live here, never in timed tests: `benches/benches/micro.rs`
//! (criterion) and `benches/src/bin/e2e_bench.rs` (real guests, JSON results, each figure next
//! to the by-hand floor measured in the same run).

use std::time::Duration;

/// p50, p99 and max of a sample, in microseconds.
pub fn percentiles_us(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_ranks() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let (p50, p99, max) = percentiles_us(&mut s);
        assert_eq!((p50.round(), p99.round(), max.round()), (51.0, 99.0, 100.0));
    }
}
