//! Pure checks of the process's effective capabilities (from /proc/self/status), so a missing privilege is reported
//! by name before the kernel answers a bare EPERM.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Parses the `CapEff:` line of /proc/<pid>/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

/// Names of the capabilities the redirect layer needs but `caps` lacks (empty = enough).
/// Loading needs CAP_BPF (or the older catch-all CAP_SYS_ADMIN); attaching to cgroups/interfaces needs CAP_NET_ADMIN;
/// pinning on bpffs and attaching cgroup programs also need CAP_SYS_ADMIN on most kernels.
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = effective_caps(status).unwrap();
        assert!(missing_caps(caps).is_empty());
    }

    #[test]
    fn unprivileged_lacks_bpf_and_net_admin() {
        let caps = effective_caps("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(missing_caps(caps), vec!["CAP_BPF", "CAP_NET_ADMIN"]);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf() {
        let caps = (1u64 << CAP_SYS_ADMIN) | (1u64 << CAP_NET_ADMIN);
        assert!(missing_caps(caps).is_empty());
        assert_eq!(missing_caps(1u64 << CAP_BPF), vec!["CAP_NET_ADMIN"]);
    }

    #[test]
    fn garbage_status_has_no_caps_line() {
        assert_eq!(effective_caps("Name: x\n"), None);
        assert_eq!(effective_caps("CapEff: zz\n"), None);
    }
}
