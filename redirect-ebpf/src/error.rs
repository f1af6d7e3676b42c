//! Errors of the redirect layer. Every message names the missing piece and the fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "missing privileges for eBPF: this process lacks {missing}; run the proxy as root \
         (or grant CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN)"
    )]
    Privileges { missing: String },

    #[error(
        "the pin root {path} is not on a BPF filesystem: mount bpffs with `mount -t bpf bpf /sys/fs/bpf` \
         (or choose a pin root below an existing bpffs mount)"
    )]
    BpffsNotMounted { path: PathBuf },

    #[error(
        "cannot create the pin directory {path}: {source}; check that bpffs is mounted writable at /sys/fs/bpf"
    )]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "cgroup {path} does not exist or is not a cgroup-v2 directory: create the pod's cgroup under the cgroup-v2 \
         mount (here /sys/fs/cgroup/unified) first ({reason})"
    )]
    CgroupMissing { path: PathBuf, reason: String },

    #[error(
        "the kernel rejected eBPF program {program}: {source}; this needs Linux >= 6.6 with CONFIG_BPF_SYSCALL, \
         CONFIG_CGROUP_BPF, BTF and the {program} hook (see docs: kernel requirements)"
    )]
    KernelFeature {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error(
        "loading eBPF object {object} failed: {source}; if maps pinned under {pin_root} were created by an older \
         Tollgate with a different layout, remove them (`rm -r {pin_root}/maps`) and retry"
    )]
    Load {
        object: &'static str,
        pin_root: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error("attaching {program} to {target} failed: {source}")]
    Attach {
        program: String,
        target: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("pinning or adopting link {path} failed: {reason}")]
    Link { path: PathBuf, reason: String },

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error(
        "network interface {name} not found: create it (or check the name) before attaching the TC program"
    )]
    InterfaceMissing { name: String },

    #[error("invalid argument: {0}")]
    Invalid(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl RedirectError {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> RedirectError {
        move |source| RedirectError::Map {
            map,
            source: Box::new(source),
        }
    }
}
