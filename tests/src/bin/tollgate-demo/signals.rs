//! Ctrl-C and SIGTERM become a flag the demo checks between steps, so an interrupted demo still runs its cleanup
//! (every guard's `Drop`) instead of dying with pods, cgroups and pinned maps left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once SIGINT or SIGTERM arrived.
#[derive(Clone)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Fails when a stop was requested (the caller's `?` unwinds into the cleanup).
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.requested(), "interrupted");
        Ok(())
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and every thread spawned after it: call first, from `main`) and starts
/// a thread that waits for them. Children start with an empty mask (std's `Command` resets it), so servers still
/// stop on SIGTERM.
pub fn watch() -> Stop {
    // SAFETY: plain signal-set manipulation on a local sigset_t before any other thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: `set` is a valid, initialised signal set; `sig` is a valid out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("\n== signal {sig} received: stopping and cleaning up");
        seen.store(true, Ordering::SeqCst);
    });
    Stop(flag)
}
