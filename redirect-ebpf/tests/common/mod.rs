//! Pin roots for tests: unique per process and tag, purged on drop (also on panic), and pin roots of test processes
//! that died without cleaning up (SIGKILL) are swept before a new one is made.

use std::path::PathBuf;

use redirect_ebpf::Redirect;

const PREFIX: &str = "tollgate-test-";

/// `/sys/fs/bpf/tollgate-test-<pid>-<tag>`, purged on drop.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        sweep_stale();
        let path = PathBuf::from(format!("/sys/fs/bpf/{PREFIX}{}-{tag}", std::process::id()));
        let _ = Redirect::purge(&path);
        PinRoot(path)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Err(e) = Redirect::purge(&self.0) {
            eprintln!("cleanup: purging {}: {e}", self.0.display());
        }
    }
}

fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Redirect::purge(&entry.path());
        }
    }
}
