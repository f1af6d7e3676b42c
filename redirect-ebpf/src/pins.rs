//! The pin root on bpffs: checking it is bpffs, pinning and unpinning links, and removing everything (purge).

use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};

use crate::error::RedirectError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(crate) fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statfs is valid; c is a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The pin root must be on bpffs: check the deepest existing ancestor, then create the directories.
pub(crate) fn prepare_pin_root(root: &Path) -> Result<(), RedirectError> {
    let mut existing = root;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    match statfs_type(existing) {
        Ok(BPF_FS_MAGIC) => {}
        _ => {
            return Err(RedirectError::BpffsNotMounted {
                path: root.to_path_buf(),
            });
        }
    }
    for dir in [root.join("maps"), root.join("links")] {
        std::fs::create_dir_all(&dir)
            .map_err(|source| RedirectError::PinDir { path: dir, source })?;
    }
    Ok(())
}

/// Pins `link` at `path`.
pub(crate) fn pin(link: FdLink, path: &Path) -> Result<(), RedirectError> {
    link.pin(path).map(drop).map_err(|e| RedirectError::Link {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Removes a pinned link: once no fd refers to it, the kernel detaches the program.
pub(crate) fn unpin(path: &Path) -> Result<(), RedirectError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => link.unpin().map(drop).map_err(|e| RedirectError::Link {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(RedirectError::Link {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

/// Detaches everything pinned under `pin_root` (links first, so programs stop before their maps go) and removes the
/// pins, maps included.
pub(crate) fn purge(pin_root: &Path) -> Result<(), RedirectError> {
    let links = pin_root.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                for link in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    unpin(&link.path())?;
                }
                let _ = std::fs::remove_dir(&path);
            } else {
                unpin(&path)?;
            }
        }
    }
    if pin_root.exists() {
        std::fs::remove_dir_all(pin_root).map_err(|source| RedirectError::Io {
            what: format!("removing {}", pin_root.display()),
            source,
        })?;
    }
    Ok(())
}
