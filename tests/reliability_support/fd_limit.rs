//! The soft limit on open files (`RLIMIT_NOFILE`), raised toward the hard limit for
//! tests and benches that open thousands of sockets. Included with `#[path]` by
//! `tests/reliability_load.rs` and `benches/scale.rs`.

/// Raises the soft limit to `wanted` (at most the hard limit); returns the soft
/// limit in force afterwards.
#[cfg(unix)]
pub fn raise_to(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `struct rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return soft_limit_from_proc().unwrap_or(1024);
    }
    let wanted = wanted.min(limit.rlim_max);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid `struct rlimit`; on failure the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = wanted;
        }
    }
    limit.rlim_cur
}

/// Elsewhere the limit is only read (from `/proc`, if there is one).
#[cfg(not(unix))]
pub fn raise_to(_wanted: u64) -> u64 {
    soft_limit_from_proc().unwrap_or(1024)
}

/// The soft "Max open files" of `/proc/self/limits`.
fn soft_limit_from_proc() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    soft.parse().ok()
}
