//! [`Redirect`]: loads the eBPF objects, owns the maps, enrolls pod cgroups and interfaces.
//!
//! State that survives a proxy restart (everything under the pin root, default `/sys/fs/bpf/tollgate`):
//! - `maps/<name>`: every map in `bpf/lib/maps.h`. A second `Redirect::load` ADOPTS them (aya `map_pin_path`), so the
//!   ipcache, policy, endpoint, FQDN and original-destination entries are kept.
//! - `links/cg-<cgroup id>/<program>` and `links/tc-<netns inode>-<ifname>`: one pinned bpf_link per attachment. A
//!   pinned link keeps its program attached after the loader exits; enrolling an already-enrolled cgroup ADOPTS the
//!   existing link instead of attaching a second copy.
//! - Programs are NOT adopted: each load verifies fresh program instances (cheap) bound to the adopted maps; links
//!   adopted from an earlier process keep running that process's instances, which use the same pinned maps.
//!
//! Dropping a `Redirect` keeps everything attached (a restart must not open a window without redirects); `unenroll`,
//! `detach_tc`, `detach_proxy_cgroup` and `purge` remove attachments and pins.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError};
use aya::programs::cgroup_sockopt::CgroupSockoptLink;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockopt, LinkOrder,
    SchedClassifier, SockOps, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};

use crate::cgroup::open_cgroup;
use crate::error::RedirectError;
use crate::lookup::{FlowKey, OriginalDstReader, optional};
use crate::maps::*;
use crate::model::*;
use crate::netns::in_netns;
use crate::pins::{self, pin, prepare_pin_root, unpin};
use crate::privileges;

static SOCK_ADDR_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_addr.o"));
static SOCKOPS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockops.o"));
static SOCKOPT_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockopt.o"));
static TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_ingress.o"));
static UDP_EGRESS_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/udp_egress.o"));

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/tollgate";

/// Programs attached to every enrolled pod cgroup (function names in bpf/*.c).
const POD_SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "tg_connect4",
    "tg_connect6",
    "tg_sendmsg4",
    "tg_sendmsg6",
    "tg_recvmsg4",
    "tg_recvmsg6",
    "tg_getpeername4",
    "tg_getpeername6",
];
const SOCKOPS_PROGRAM: &str = "tg_sockops";
const GETSOCKOPT_PROGRAM: &str = "tg_getsockopt";
const TC_PROGRAM: &str = "tg_ingress";
const UDP_EGRESS_PROGRAM: &str = "tg_udp_egress";

#[derive(Clone, Debug)]
pub struct RedirectOptions {
    /// Where maps and links are pinned; must be on bpffs. Tests use a unique subdirectory.
    pub pin_root: PathBuf,
    /// Written to the config map on load (it is what the running proxy listens on).
    pub proxy: ProxyConfig,
}

impl Default for RedirectOptions {
    fn default() -> Self {
        RedirectOptions {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            proxy: ProxyConfig::default(),
        }
    }
}

/// An enrolled pod as the sock_addr programs see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub identity: u32,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// The ipcache's value with its key data (the LPM key's prefix length is carried separately by aya).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpcacheData {
    pub(crate) family: u8,
    pub(crate) pad: [u8; 3],
    pub(crate) ip: [u32; 4],
}
// SAFETY: plain integers, no implicit padding (1 + 3 + 16 bytes).
unsafe impl aya::Pod for IpcacheData {}

/// The `tg_fqdn_denials` ring buffer (pollable: it implements `AsRawFd`).
pub type FqdnDenialRing = aya::maps::RingBuf<MapData>;

pub struct Redirect {
    pin_root: PathBuf,
    sock_addr: Ebpf,
    sockops: Ebpf,
    sockopt: Ebpf,
    tc: Ebpf,
    udp_egress: Ebpf,
    ipcache: LpmTrie<MapData, IpcacheData, IpcacheValue>,
    policy: HashMap<MapData, PolicyKey, PolicyValue>,
    endpoints: HashMap<MapData, u64, EndpointValue>,
    odst: OriginalDstReader,
    fqdn: HashMap<MapData, FqdnKey, FqdnValue>,
    config: Array<MapData, ConfigValue>,
    /// FQDN gate refusals (taken once by the proxy with [`Redirect::take_fqdn_denials`]).
    fqdn_denials: Option<aya::maps::RingBuf<MapData>>,
    /// getsockopt links on proxy cgroups, by cgroup id (not pinnable with aya 0.14, see attach_cgroup_programs).
    sockopt_links: std::collections::BTreeMap<u64, CgroupSockoptLink>,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("pin_root", &self.pin_root)
            .field(
                "proxy_cgroups_with_getsockopt",
                &self.sockopt_links.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn check_privileges() -> Result<(), RedirectError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|source| RedirectError::Io {
            what: "reading /proc/self/status to check capabilities".into(),
            source,
        })?;
    let caps = privileges::effective_caps(&status).unwrap_or(0);
    let missing = privileges::missing_caps(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RedirectError::Privileges {
            missing: missing.join(" and "),
        })
    }
}

fn load_object(object: &'static str, bytes: &[u8], root: &Path) -> Result<Ebpf, RedirectError> {
    let mut loader = EbpfLoader::new();
    for name in ALL_MAPS {
        loader.map_pin_path(name, root.join("maps").join(name));
    }
    loader.load(bytes).map_err(|source| RedirectError::Load {
        object,
        pin_root: root.to_path_buf(),
        source: Box::new(source),
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, RedirectError> {
    ebpf.take_map(name).ok_or(RedirectError::Map {
        map: name,
        source: Box::new(MapError::InvalidName { name: name.into() }),
    })
}

fn kernel(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> RedirectError + '_ {
    move |source| RedirectError::KernelFeature {
        program: program.to_string(),
        source: Box::new(source),
    }
}

fn missing_program(name: &str) -> RedirectError {
    RedirectError::Invalid(format!(
        "program {name} missing from the built eBPF object (build.rs out of date?)"
    ))
}

pub(crate) fn boottime_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Redirect {
    /// Loads (or adopts) everything under `opts.pin_root` and writes `opts.proxy` to the config map.
    pub fn load(opts: RedirectOptions) -> Result<Redirect, RedirectError> {
        check_privileges()?;
        prepare_pin_root(&opts.pin_root)?;
        let root = opts.pin_root.clone();
        // The first object creates and pins the maps; the others adopt them by path.
        let mut sock_addr = load_object("sock_addr.o", SOCK_ADDR_OBJ, &root)?;
        let mut sockops = load_object("sockops.o", SOCKOPS_OBJ, &root)?;
        let mut sockopt = load_object("sockopt.o", SOCKOPT_OBJ, &root)?;
        let mut tc = load_object("tc_ingress.o", TC_OBJ, &root)?;
        let mut udp_egress = load_object("udp_egress.o", UDP_EGRESS_OBJ, &root)?;

        for name in POD_SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = sock_addr
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()
                .map_err(kernel(name))?;
            prog.load().map_err(kernel(name))?;
        }
        let prog: &mut SockOps = sockops
            .program_mut(SOCKOPS_PROGRAM)
            .ok_or_else(|| missing_program(SOCKOPS_PROGRAM))?
            .try_into()
            .map_err(kernel(SOCKOPS_PROGRAM))?;
        prog.load().map_err(kernel(SOCKOPS_PROGRAM))?;
        let prog: &mut CgroupSockopt = sockopt
            .program_mut(GETSOCKOPT_PROGRAM)
            .ok_or_else(|| missing_program(GETSOCKOPT_PROGRAM))?
            .try_into()
            .map_err(kernel(GETSOCKOPT_PROGRAM))?;
        prog.load().map_err(kernel(GETSOCKOPT_PROGRAM))?;
        let prog: &mut SchedClassifier = tc
            .program_mut(TC_PROGRAM)
            .ok_or_else(|| missing_program(TC_PROGRAM))?
            .try_into()
            .map_err(kernel(TC_PROGRAM))?;
        prog.load().map_err(kernel(TC_PROGRAM))?;
        let prog: &mut CgroupSkb = udp_egress
            .program_mut(UDP_EGRESS_PROGRAM)
            .ok_or_else(|| missing_program(UDP_EGRESS_PROGRAM))?
            .try_into()
            .map_err(kernel(UDP_EGRESS_PROGRAM))?;
        prog.load().map_err(kernel(UDP_EGRESS_PROGRAM))?;

        let m = &mut sock_addr;
        let mut redirect = Redirect {
            ipcache: LpmTrie::try_from(take_map(m, MAP_IPCACHE)?)
                .map_err(RedirectError::map(MAP_IPCACHE))?,
            policy: HashMap::try_from(take_map(m, MAP_POLICY)?)
                .map_err(RedirectError::map(MAP_POLICY))?,
            endpoints: HashMap::try_from(take_map(m, MAP_ENDPOINTS)?)
                .map_err(RedirectError::map(MAP_ENDPOINTS))?,
            odst: OriginalDstReader::from_maps(
                HashMap::try_from(take_map(m, MAP_ODST_COOKIE)?)
                    .map_err(RedirectError::map(MAP_ODST_COOKIE))?,
                HashMap::try_from(take_map(m, MAP_ODST_TUPLE)?)
                    .map_err(RedirectError::map(MAP_ODST_TUPLE))?,
            ),
            fqdn: HashMap::try_from(take_map(m, MAP_FQDN_ALLOW)?)
                .map_err(RedirectError::map(MAP_FQDN_ALLOW))?,
            config: Array::try_from(take_map(m, MAP_CONFIG)?)
                .map_err(RedirectError::map(MAP_CONFIG))?,
            fqdn_denials: Some(
                aya::maps::RingBuf::try_from(take_map(m, MAP_FQDN_DENIALS)?)
                    .map_err(RedirectError::map(MAP_FQDN_DENIALS))?,
            ),
            pin_root: root,
            sockopt_links: Default::default(),
            sock_addr,
            sockops,
            sockopt,
            tc,
            udp_egress,
        };
        redirect.set_config(opts.proxy)?;
        Ok(redirect)
    }

    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Rewrites the config map (proxy addresses, listener ports, marks) and enables redirection.
    pub fn set_config(&mut self, proxy: ProxyConfig) -> Result<(), RedirectError> {
        self.config
            .set(0, proxy.to_value(), 0)
            .map_err(RedirectError::map(MAP_CONFIG))
    }

    /// The config map's current content.
    pub fn config(&self) -> Result<ConfigValue, RedirectError> {
        self.config
            .get(&0, 0)
            .map_err(RedirectError::map(MAP_CONFIG))
    }

    fn cgroup_link_dir(&self, cgroup_id: u64) -> PathBuf {
        self.pin_root.join("links").join(format!("cg-{cgroup_id}"))
    }

    /// Attaches `attach` unless a link is already pinned at `pin_path` (adopted as is).
    fn attach_pinned(
        pin_path: &Path,
        attach: impl FnOnce() -> Result<FdLink, RedirectError>,
    ) -> Result<(), RedirectError> {
        if PinnedLink::from_pin(pin_path).is_ok() {
            return Ok(());
        }
        pin(attach()?, pin_path)
    }

    fn attach_cgroup_programs(
        &mut self,
        cgroup: &Path,
        sock_addr: &[&str],
        sockops: bool,
        getsockopt: bool,
    ) -> Result<u64, RedirectError> {
        let (cg, id) = open_cgroup(cgroup)?;
        let dir = self.cgroup_link_dir(id);
        std::fs::create_dir_all(&dir).map_err(|source| RedirectError::PinDir {
            path: dir.clone(),
            source,
        })?;
        let target = cgroup.display().to_string();
        let attach_err = |program: &str, target: &str| {
            let (program, target) = (program.to_string(), target.to_string());
            move |source: aya::programs::ProgramError| RedirectError::Attach {
                program,
                target,
                source: Box::new(source),
            }
        };
        let link_err = |program: &str| {
            let program = program.to_string();
            move |e: aya::programs::links::LinkError| {
                RedirectError::Invalid(format!("link of {program}: {e}"))
            }
        };
        for &name in sock_addr {
            let prog: &mut CgroupSockAddr = self
                .sock_addr
                .program_mut(name)
                .ok_or_else(|| missing_program(name))?
                .try_into()
                .map_err(kernel(name))?;
            Self::attach_pinned(&dir.join(name), || {
                let id = prog
                    .attach(cg.as_fd(), CgroupAttachMode::default())
                    .map_err(attach_err(name, &target))?;
                let link = prog.take_link(id).map_err(attach_err(name, &target))?;
                FdLink::try_from(link).map_err(link_err(name))
            })?;
        }
        if sockops {
            let prog: &mut SockOps = self
                .sockops
                .program_mut(SOCKOPS_PROGRAM)
                .ok_or_else(|| missing_program(SOCKOPS_PROGRAM))?
                .try_into()
                .map_err(kernel(SOCKOPS_PROGRAM))?;
            Self::attach_pinned(&dir.join(SOCKOPS_PROGRAM), || {
                let id = prog
                    .attach(cg.as_fd(), CgroupAttachMode::default())
                    .map_err(attach_err(SOCKOPS_PROGRAM, &target))?;
                let link = prog
                    .take_link(id)
                    .map_err(attach_err(SOCKOPS_PROGRAM, &target))?;
                FdLink::try_from(link).map_err(link_err(SOCKOPS_PROGRAM))
            })?;
        }
        if sockops && !sock_addr.is_empty() {
            // Pods only (the caller passes the redirecting programs): the tuple recorder for connected UDP.
            let prog: &mut CgroupSkb = self
                .udp_egress
                .program_mut(UDP_EGRESS_PROGRAM)
                .ok_or_else(|| missing_program(UDP_EGRESS_PROGRAM))?
                .try_into()
                .map_err(kernel(UDP_EGRESS_PROGRAM))?;
            Self::attach_pinned(&dir.join(UDP_EGRESS_PROGRAM), || {
                let id = prog
                    .attach(
                        cg.as_fd(),
                        CgroupSkbAttachType::Egress,
                        CgroupAttachMode::default(),
                    )
                    .map_err(attach_err(UDP_EGRESS_PROGRAM, &target))?;
                let link = prog
                    .take_link(id)
                    .map_err(attach_err(UDP_EGRESS_PROGRAM, &target))?;
                FdLink::try_from(link).map_err(link_err(UDP_EGRESS_PROGRAM))
            })?;
        }
        if getsockopt && !self.sockopt_links.contains_key(&id) {
            // aya 0.14 cannot turn a CgroupSockoptLink into a pinnable FdLink, so this link lives as long as this
            // Redirect. That is the right lifetime anyway: only the running proxy asks for SO_ORIGINAL_DST.
            let prog: &mut CgroupSockopt = self
                .sockopt
                .program_mut(GETSOCKOPT_PROGRAM)
                .ok_or_else(|| missing_program(GETSOCKOPT_PROGRAM))?
                .try_into()
                .map_err(kernel(GETSOCKOPT_PROGRAM))?;
            let link_id = prog
                .attach(cg.as_fd(), CgroupAttachMode::default())
                .map_err(attach_err(GETSOCKOPT_PROGRAM, &target))?;
            let link = prog
                .take_link(link_id)
                .map_err(attach_err(GETSOCKOPT_PROGRAM, &target))?;
            self.sockopt_links.insert(id, link);
        }
        Ok(id)
    }

    /// Enrolls a pod: records its identity/addresses under its cgroup id and attaches connect, sendmsg, recvmsg,
    /// getpeername (v4 + v6), sockops and the UDP egress tuple recorder to its cgroup. Idempotent; adopts links pinned by an earlier process.
    pub fn enroll(&mut self, cgroup: &Path, endpoint: EndpointInfo) -> Result<(), RedirectError> {
        let (_, id) = open_cgroup(cgroup)?;
        let value = EndpointValue {
            identity: endpoint.identity,
            flags: 0,
            ip4: endpoint
                .ipv4
                .map(|ip| ip_words(IpAddr::V4(ip)).1[0])
                .unwrap_or(0),
            ip6: endpoint
                .ipv6
                .map(|ip| ip_words(IpAddr::V6(ip)).1)
                .unwrap_or_default(),
        };
        // The endpoint entry first: a connect racing the attach must find the pod's identity.
        self.endpoints
            .insert(id, value, 0)
            .map_err(RedirectError::map(MAP_ENDPOINTS))?;
        self.attach_cgroup_programs(cgroup, &POD_SOCK_ADDR_PROGRAMS, true, false)?;
        Ok(())
    }

    /// Detaches every program from a pod's cgroup and forgets its endpoint entry.
    pub fn unenroll(&mut self, cgroup: &Path) -> Result<(), RedirectError> {
        let (_, id) = open_cgroup(cgroup)?;
        self.remove_cgroup_links(id)?;
        ignore_missing(self.endpoints.remove(&id), MAP_ENDPOINTS)
    }

    fn remove_cgroup_links(&self, id: u64) -> Result<(), RedirectError> {
        let dir = self.cgroup_link_dir(id);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                unpin(&entry.path())?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// The proxy's own cgroup: sockops (to re-key accepted sockets) and getsockopt (SO_ORIGINAL_DST). Never the
    /// redirecting programs: the proxy's upstream connections must not loop back into it.
    pub fn attach_proxy_cgroup(&mut self, cgroup: &Path) -> Result<(), RedirectError> {
        self.attach_cgroup_programs(cgroup, &[], true, true)
            .map(drop)
    }

    pub fn detach_proxy_cgroup(&mut self, cgroup: &Path) -> Result<(), RedirectError> {
        let (_, id) = open_cgroup(cgroup)?;
        self.sockopt_links.remove(&id);
        self.remove_cgroup_links(id)
    }

    fn tc_pin_path(&self, ifname: &str, netns: Option<&Path>) -> Result<PathBuf, RedirectError> {
        let ns = netns.unwrap_or(Path::new("/proc/self/ns/net"));
        let ino = std::fs::metadata(ns)
            .map_err(|source| RedirectError::Io {
                what: format!("reading network namespace {}", ns.display()),
                source,
            })?
            .ino();
        Ok(self
            .pin_root
            .join("links")
            .join(format!("tc-{ino}-{ifname}")))
    }

    /// Attaches the ingress classifier (tcx) to `ifname`, in the network namespace at `netns` (e.g.
    /// `/var/run/netns/<node>`) or the caller's. Adopts a link pinned by an earlier process.
    pub fn attach_tc(&mut self, ifname: &str, netns: Option<&Path>) -> Result<(), RedirectError> {
        let pin_path = self.tc_pin_path(ifname, netns)?;
        let prog: &mut SchedClassifier = self
            .tc
            .program_mut(TC_PROGRAM)
            .ok_or_else(|| missing_program(TC_PROGRAM))?
            .try_into()
            .map_err(kernel(TC_PROGRAM))?;
        in_netns(netns, || {
            Self::attach_pinned(&pin_path, || {
                if !Path::new("/sys/class/net").join(ifname).exists() && netns.is_none() {
                    return Err(RedirectError::InterfaceMissing {
                        name: ifname.into(),
                    });
                }
                let id = prog
                    .attach_with_options(
                        ifname,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|source| match source {
                        aya::programs::ProgramError::TcError(_) => {
                            RedirectError::InterfaceMissing {
                                name: ifname.into(),
                            }
                        }
                        source => RedirectError::Attach {
                            program: TC_PROGRAM.into(),
                            target: ifname.into(),
                            source: Box::new(source),
                        },
                    })?;
                let link = prog.take_link(id).map_err(|source| RedirectError::Attach {
                    program: TC_PROGRAM.into(),
                    target: ifname.into(),
                    source: Box::new(source),
                })?;
                FdLink::try_from(link).map_err(|e| RedirectError::Invalid(format!("tcx link: {e}")))
            })
        })
    }

    pub fn detach_tc(&mut self, ifname: &str, netns: Option<&Path>) -> Result<(), RedirectError> {
        unpin(&self.tc_pin_path(ifname, netns)?)
    }

    /// `ip` (a single address) has `identity`.
    pub fn ipcache_upsert(&mut self, ip: IpAddr, identity: u32) -> Result<(), RedirectError> {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        self.ipcache_upsert_prefix(ip, len, identity, false)
    }

    /// A prefix has `identity`; `local` marks endpoints on this node (TC ingress steering only targets those).
    pub fn ipcache_upsert_prefix(
        &mut self,
        ip: IpAddr,
        prefix_len: u8,
        identity: u32,
        local: bool,
    ) -> Result<(), RedirectError> {
        let key = ipcache_key(ip, prefix_len)?;
        let value = IpcacheValue {
            identity,
            flags: if local { IPCACHE_F_LOCAL } else { 0 },
        };
        self.ipcache
            .insert(&lpm(&key), value, 0)
            .map_err(RedirectError::map(MAP_IPCACHE))
    }

    pub fn ipcache_remove(&mut self, ip: IpAddr, prefix_len: u8) -> Result<(), RedirectError> {
        let key = ipcache_key(ip, prefix_len)?;
        ignore_missing(self.ipcache.remove(&lpm(&key)), MAP_IPCACHE)
    }

    /// Exact-prefix read of the ipcache (for inspection and tests).
    pub fn ipcache_get(
        &self,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<Option<IpcacheValue>, RedirectError> {
        let key = ipcache_key(ip, prefix_len)?;
        optional(self.ipcache.get(&lpm(&key), 0), MAP_IPCACHE)
    }

    /// Adds every port of one redirect rule.
    pub fn policy_upsert(&mut self, redirect: &L7Redirect) -> Result<(), RedirectError> {
        for ((identity, dir, proto, port), value) in policy_entries(std::slice::from_ref(redirect))?
        {
            self.policy
                .insert(policy_key(identity, dir, proto, port), value, 0)
                .map_err(RedirectError::map(MAP_POLICY))?;
        }
        Ok(())
    }

    /// Makes the policy map hold exactly `redirects` (per-identity flag entries are kept): adds new entries first,
    /// then removes stale ones, so a flow covered before and after never misses its redirect.
    pub fn policy_sync(&mut self, redirects: &[L7Redirect]) -> Result<(), RedirectError> {
        let wanted = policy_entries(redirects)?;
        for (&(identity, dir, proto, port), value) in &wanted {
            self.policy
                .insert(policy_key(identity, dir, proto, port), value, 0)
                .map_err(RedirectError::map(MAP_POLICY))?;
        }
        let existing: Vec<PolicyKey> = self
            .policy
            .keys()
            .collect::<Result<_, _>>()
            .map_err(RedirectError::map(MAP_POLICY))?;
        for key in existing {
            let flags_entry = key.port == 0 && key.proto == 0;
            let id = (
                key.identity,
                key.direction,
                key.proto,
                u16::from_be(key.port),
            );
            if !flags_entry && !wanted.contains_key(&id) {
                ignore_missing(self.policy.remove(&key), MAP_POLICY)?;
            }
        }
        Ok(())
    }

    /// Number of entries in the policy map (including flag entries).
    pub fn policy_len(&self) -> usize {
        self.policy.keys().count()
    }

    /// Marks `identity`'s egress as FQDN-restricted: connects to out-of-cluster IPs not in the FQDN map get EPERM.
    pub fn set_fqdn_restricted(
        &mut self,
        identity: u32,
        restricted: bool,
    ) -> Result<(), RedirectError> {
        let key = policy_flags_key(identity);
        if restricted {
            let value = PolicyValue {
                l7_kind: L7_NONE,
                proxy_port: 0,
                flags: POLICY_F_FQDN_RESTRICTED,
            };
            self.policy
                .insert(key, value, 0)
                .map_err(RedirectError::map(MAP_POLICY))
        } else {
            ignore_missing(self.policy.remove(&key), MAP_POLICY)
        }
    }

    /// Allows `identity` to reach `ip` (a DNS answer) for `ttl` (`None` = until removed).
    pub fn fqdn_allow(
        &mut self,
        identity: u32,
        ip: IpAddr,
        ttl: Option<Duration>,
    ) -> Result<(), RedirectError> {
        let expires_ns = ttl
            .map(|t| boottime_ns().saturating_add(t.as_nanos().min(u128::from(u64::MAX)) as u64))
            .unwrap_or(0);
        let value = FqdnValue {
            expires_ns,
            flags: 0,
            pad: 0,
        };
        self.fqdn
            .insert(fqdn_key(identity, ip), value, 0)
            .map_err(RedirectError::map(MAP_FQDN_ALLOW))
    }

    /// Allows `identity` to reach `ip` on one protocol and port only (a `toFQDNs` rule's port), for `ttl`.
    pub fn fqdn_allow_port(
        &mut self,
        identity: u32,
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        ttl: Option<Duration>,
    ) -> Result<(), RedirectError> {
        let expires_ns = ttl
            .map(|t| boottime_ns().saturating_add(t.as_nanos().min(u128::from(u64::MAX)) as u64))
            .unwrap_or(0);
        let value = FqdnValue {
            expires_ns,
            flags: 0,
            pad: 0,
        };
        self.fqdn
            .insert(
                crate::model::fqdn_port_key(identity, ip, Some((protocol, port))),
                value,
                0,
            )
            .map_err(RedirectError::map(MAP_FQDN_ALLOW))
    }

    /// Removes every entry (any port) for `identity` and `ip`.
    pub fn fqdn_remove_all_ports(
        &mut self,
        identity: u32,
        ip: IpAddr,
    ) -> Result<(), RedirectError> {
        let want = fqdn_key(identity, ip);
        let keys: Vec<FqdnKey> = self
            .fqdn
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.identity == want.identity && k.family == want.family && k.ip == want.ip)
            .collect();
        for key in &keys {
            ignore_missing(self.fqdn.remove(key), MAP_FQDN_ALLOW)?;
        }
        Ok(())
    }

    pub fn fqdn_remove(&mut self, identity: u32, ip: IpAddr) -> Result<(), RedirectError> {
        ignore_missing(self.fqdn.remove(&fqdn_key(identity, ip)), MAP_FQDN_ALLOW)
    }

    /// The ring buffer of connects the FQDN gate refused ([`crate::maps::FqdnDenial`] records); `None` once taken.
    pub fn take_fqdn_denials(&mut self) -> Option<FqdnDenialRing> {
        self.fqdn_denials.take()
    }

    /// Removes expired FQDN entries; returns how many.
    pub fn fqdn_gc(&mut self) -> Result<usize, RedirectError> {
        let now = boottime_ns();
        let expired: Vec<FqdnKey> = self
            .fqdn
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.expires_ns != 0 && v.expires_ns < now)
            .map(|(k, _)| k)
            .collect();
        for key in &expired {
            ignore_missing(self.fqdn.remove(key), MAP_FQDN_ALLOW)?;
        }
        Ok(expired.len())
    }

    /// The record of a redirected flow.
    pub fn original_dst(&self, key: FlowKey) -> Result<Option<OriginalDst>, RedirectError> {
        self.odst.original_dst(key)
    }

    /// See [`OriginalDstReader::original_dst_of_socket`].
    pub fn original_dst_of_socket(
        &self,
        fd: impl AsFd,
    ) -> Result<Option<OriginalDst>, RedirectError> {
        self.odst.original_dst_of_socket(fd)
    }

    /// See [`OriginalDstReader::original_dst_of_datagram`].
    pub fn original_dst_of_datagram(
        &self,
        client: std::net::SocketAddr,
        listener: std::net::SocketAddr,
        netns_cookie: u64,
    ) -> Result<Option<OriginalDst>, RedirectError> {
        self.odst
            .original_dst_of_datagram(client, listener, netns_cookie)
    }

    /// Detaches everything pinned under `pin_root` and removes the pins (maps included). For tests and
    /// `tollgate uninstall`; a running proxy's restarts must NOT call this.
    pub fn purge(pin_root: &Path) -> Result<(), RedirectError> {
        pins::purge(pin_root)
    }
}

fn lpm(key: &IpcacheKey) -> LpmKey<IpcacheData> {
    LpmKey::new(
        key.prefixlen,
        IpcacheData {
            family: key.family,
            pad: key.pad,
            ip: key.ip,
        },
    )
}

/// Removing an absent key is not an error (aya reports it as KeyNotFound or as the syscall's ENOENT).
fn ignore_missing(r: Result<(), MapError>, map: &'static str) -> Result<(), RedirectError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(RedirectError::map(map)(e)),
    }
}
