//! What the benches share: where results go, how percentiles are taken, and (for the
//! benches that time calls in a window) the window, its measurement and the median
//! run. Included by each bench with `mod support;`; not every bench uses every item.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `$CARGO_TARGET_DIR/bench-results/<bench>.json`, the target directory defaulting
/// to `target` in the crate root. A relative `CARGO_TARGET_DIR` is taken from the
/// crate root, where cargo runs benches.
pub fn results_path(bench: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target.join("bench-results").join(format!("{bench}.json"))
}

/// The nearest-rank percentile of sorted samples (the default, zero, when there are
/// none).
pub fn percentile<T: Copy + Default>(sorted: &[T], quantile: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The measurement window of one run: callers start at once, so the connection and
/// the runtime are warm when it opens; only calls completed inside it count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window of `measure` that opens `warm_up` from now.
    pub fn after_warm_up(warm_up: Duration, measure: Duration) -> Self {
        let start = Instant::now() + warm_up;
        Self {
            start,
            end: start + measure,
        }
    }

    /// Whether a call completed at `completed` counts.
    pub fn counts(&self, completed: Instant) -> bool {
        self.start <= completed && completed < self.end
    }
}

/// The result of one run of calls.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    pub ops_per_sec: f64,
    pub p50_us: u32,
    pub p99_us: u32,
}

impl Measurement {
    /// Summarizes the latencies (µs) of the calls completed in a window of `window`.
    pub fn from_samples(mut latencies_us: Vec<u32>, window: Duration) -> Self {
        latencies_us.sort_unstable();
        Self {
            ops_per_sec: latencies_us.len() as f64 / window.as_secs_f64(),
            p50_us: percentile(&latencies_us, 0.50),
            p99_us: percentile(&latencies_us, 0.99),
        }
    }
}

/// The run with the median ops/sec.
pub fn median(measurements: &[Measurement]) -> Measurement {
    let mut sorted = measurements.to_vec();
    sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    sorted[sorted.len() / 2]
}
