//! What every bench shares: where results go, and how percentiles are taken.
//! Included by each bench with `mod support;`.

use std::path::PathBuf;

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
