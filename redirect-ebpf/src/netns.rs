//! Running a piece of setup inside another network namespace (interface names and tcx links are per netns).

use std::fs::File;
use std::path::Path;

use crate::error::RedirectError;

/// Runs `f` on a thread that joined the network namespace at `netns` (e.g. /var/run/netns/<name>); interface names
/// and tcx links are per netns.
pub(crate) fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, RedirectError> + Send,
) -> Result<T, RedirectError> {
    let Some(netns) = netns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns).map_err(|source| RedirectError::Io {
                what: format!("opening network namespace {}", netns.display()),
                source,
            })?;
            // SAFETY: setns on this (scoped, short-lived) thread only; the fd is valid.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(RedirectError::Io {
                    what: format!("joining network namespace {}", netns.display()),
                    source: std::io::Error::last_os_error(),
                });
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RedirectError::Invalid(
                "netns worker thread panicked".into(),
            ))
        })
    })
}
