//! How the daemon gives memory back to the system. The allocator itself (mimalloc) is chosen in `main.rs`; this
//! module owns the process-wide switches around it and the thread that runs its deferred purges. It must not
//! allocate on the data path or know about connections, policies or the runtime.
//!
//! Why it exists: a node proxy spends most of its life idle, holding thousands of small parked connections and a
//! policy state rebuilt now and then. Two defaults made that idle memory several times what it holds:
//! - mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`), so every 2 MiB region it touches
//!   becomes resident whole: 16 of an idle daemon's 17.5 MiB of anonymous memory were huge pages. The kernel's
//!   per-process switch (`PR_SET_THP_DISABLE`) overrides that advice for every mapping made or faulted later.
//! - mimalloc returns freed pages to the system only after its purge delay AND only when some thread calls into
//!   it again; the runtime's threads sleep while connections are idle, so freed pages stayed resident until the
//!   next burst. A purger thread runs the due purges every [`PURGE_PERIOD`] instead.

use std::time::Duration;

/// How often the purger asks mimalloc to return pages whose purge delay has passed. The call is a few atomic
/// loads when nothing is due, so this costs nothing measurable; it bounds how long freed memory stays resident
/// to mimalloc's delay plus this period.
pub const PURGE_PERIOD: Duration = Duration::from_millis(250);

/// Both settings the daemon runs with ([`small_pages_only`] and the purger thread), for code that measures the
/// daemon's memory outside it (the Kubernetes scale bench).
pub fn tune_for_daemon() -> Result<(), std::io::Error> {
    start_purger();
    small_pages_only()
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`): `main` warns when they are not.
pub fn transparent_huge_pages_disabled() -> bool {
    // SAFETY: PR_GET_THP_DISABLE takes no pointer arguments and only reads this process's flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
}

/// Switches transparent huge pages off for this process (`PR_SET_THP_DISABLE`), for mappings faulted from now on.
/// The binary calls it from an `.init_array` constructor that runs before mimalloc's own (`main.rs`); the scale
/// bench through [`tune_for_daemon`]. Returns why it could not (the process still runs: it only holds more memory).
pub fn small_pages_only() -> Result<(), std::io::Error> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes only this process's flag (inherited by
    // children, which the daemon does not start).
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns the calling thread's freed pages and every purge that is due now, whatever the delay (after a full
/// policy rebuild, which frees far more than it keeps).
pub fn collect_now() {
    // SAFETY: mi_collect only releases memory mimalloc owns and no live allocation; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Starts the thread that runs mimalloc's due purges while the runtime sleeps (long-running commands only).
pub fn start_purger() {
    let spawned = std::thread::Builder::new()
        .name("tollgate-purge".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_PERIOD);
                // SAFETY: as in `collect_now`; `false` purges only what is due (never forces).
                unsafe { libmimalloc_sys::mi_collect(false) }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "no memory purger thread: freed memory stays resident until the next burst");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_huge_pages_are_off_after_tuning() {
        // Tests share a process: the flag is one-way, so this only ever turns it on.
        tune_for_daemon().unwrap();
        assert!(transparent_huge_pages_disabled());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("THP_enabled:\t0"), "{status}");
        collect_now();
    }
}
