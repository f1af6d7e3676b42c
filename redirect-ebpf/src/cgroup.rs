//! Opening a pod's (or the proxy's) cgroup-v2 directory for attaching, with a clear error when it is not one.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::RedirectError;
use crate::pins::statfs_type;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Opens a cgroup-v2 directory and returns it with its id (the kernfs inode number, what
/// bpf_get_current_cgroup_id returns).
pub(crate) fn open_cgroup(path: &Path) -> Result<(File, u64), RedirectError> {
    let missing = |reason: String| RedirectError::CgroupMissing {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| missing(e.to_string()))?;
    let meta = file.metadata().map_err(|e| missing(e.to_string()))?;
    if !meta.is_dir() {
        return Err(missing("not a directory".into()));
    }
    match statfs_type(path) {
        Ok(CGROUP2_SUPER_MAGIC) => {}
        Ok(other) => {
            return Err(missing(format!(
                "filesystem magic {other:#x} is not cgroup2"
            )));
        }
        Err(e) => return Err(missing(e.to_string())),
    }
    Ok((file, meta.ino()))
}
