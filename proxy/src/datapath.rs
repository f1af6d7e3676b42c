//! The daemon's side of the eBPF redirect layer: keeps the kernel maps in step with the compiled policy and the
//! endpoint table, enrolls pod cgroups, and answers "where was this connection going" from the redirect maps.
//!
//! The decision of WHAT to program is pure ([`DatapathPlan::new`]: engine + endpoints in, map contents out) and is
//! tested without a kernel; [`Datapath`] only carries a plan out through `redirect_ebpf::Redirect`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use policy_model::{EndpointTable, PolicyEngine};
use redirect_ebpf::{
    EndpointInfo, L7Kind, L7Redirect, OriginalDstReader, Protocol, ProxyConfig, Redirect,
    RedirectError, RedirectOptions,
};
use thiserror::Error;
use tokio::net::TcpStream;

use crate::original_dst::{OriginalDst, OriginalDstError};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("eBPF redirect layer: {0}")]
    Redirect(#[from] RedirectError),
    #[error(
        "endpoint {endpoint}: cgroup {path} does not exist; give each endpoint the cgroup-v2 path its processes run \
         in (`cgroup:` in the endpoints file), or remove the field to leave it unenrolled"
    )]
    MissingCgroup { endpoint: String, path: String },
    #[error(
        "endpoint {endpoint}: its IP {ip} is IPv6; enrolling IPv6-only pods is not supported yet"
    )]
    Ipv6Only { endpoint: String, ip: IpAddr },
    #[error(
        "--tc-interface needs --tproxy-port: steered connections must land on a transparent listener"
    )]
    TcWithoutListener,
    #[error(
        "TC ingress steering marks packets with {mark:#x}, but no policy route delivers them locally; run \
         `ip rule add fwmark {mark:#x} lookup 100` and `ip route add local 0.0.0.0/0 dev lo table 100` in the node"
    )]
    NoLocalDelivery { mark: u32 },
}

/// Where the proxy is reachable from pods and how it marks its own sockets.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    pub pin_root: PathBuf,
    /// The address pods' connects are rewritten to (the node side of their veth, e.g. 169.254.1.1).
    pub proxy_ipv4: Ipv4Addr,
    /// The HTTP-family listener port.
    pub http_port: u16,
    /// The DNS listener port (UDP and TCP) on `proxy_ipv4`; 0 = no DNS proxy (DNS-policy traffic is not redirected).
    pub dns_port: u16,
    /// SO_MARK on the proxy's own sockets: the programs never redirect them.
    pub proxy_mark: u32,
    /// The cgroup the proxy runs in: gets sockops + getsockopt, never the redirecting programs.
    pub proxy_cgroup: PathBuf,
    /// Transparent listener port for TC-steered ingress (0 = none) and the mark the TC program sets.
    pub tproxy_port: u16,
    pub tproxy_mark: u32,
    /// Interfaces the TC ingress program is attached to.
    pub tc_interfaces: Vec<String>,
}

/// What the kernel maps should hold for one (engine, endpoints) pair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DatapathPlan {
    /// ipcache: every known endpoint IP and its identity.
    pub ipcache: BTreeMap<IpAddr, u32>,
    /// policy map: which (identity, direction, port) need the proxy.
    pub redirects: Vec<L7Redirect>,
    /// cgroup path -> the pod enrolled there.
    pub enrollments: BTreeMap<PathBuf, (String, EndpointInfo)>,
    /// Identities whose connects to out-of-cluster IPs are limited to DNS-learned IPs (`toFQDNs` + default deny).
    pub fqdn_restricted: BTreeSet<u32>,
}

impl DatapathPlan {
    pub fn new(engine: &PolicyEngine, endpoints: &EndpointTable) -> Result<Self, DatapathError> {
        let mut plan = DatapathPlan::default();
        for (ep, identity) in endpoints.iter_with_identity() {
            plan.ipcache.insert(ep.ip, identity.0);
            if let Some(cgroup) = &ep.cgroup {
                let name = format!("{}/{}", ep.namespace, ep.name);
                let info = match ep.ip {
                    IpAddr::V4(v4) => EndpointInfo {
                        identity: identity.0,
                        ipv4: Some(v4),
                        ipv6: None,
                    },
                    IpAddr::V6(_) => {
                        return Err(DatapathError::Ipv6Only {
                            endpoint: name,
                            ip: ep.ip,
                        });
                    }
                };
                plan.enrollments.insert(PathBuf::from(cgroup), (name, info));
            }
        }
        plan.fqdn_restricted = engine.fqdn_restricted().iter().map(|i| i.0).collect();
        let mut seen = BTreeSet::new();
        for p in engine.l7_ports() {
            let protocol = match p.protocol {
                policy_model::Protocol::Tcp => Protocol::Tcp,
                policy_model::Protocol::Udp => Protocol::Udp,
                // The sock_addr hooks see TCP and UDP only; SCTP L7 rules cannot exist (no SCTP L7 parser).
                policy_model::Protocol::Sctp => continue,
            };
            let kind = match p.kind {
                Some(policy_model::L7Kind::Http) => L7Kind::Http,
                // A port diverted only because its rule requires authentication goes to the main listener too:
                // the proxy refuses plain connections there (AUTH_REQUIRED).
                None => L7Kind::Http,
                Some(policy_model::L7Kind::Kafka) => L7Kind::Kafka,
                Some(policy_model::L7Kind::Dns) => L7Kind::Dns,
            };
            let r = L7Redirect {
                identity: p.identity.0,
                direction: p.direction,
                port: p.port,
                end_port: p.end_port,
                protocol,
                kind,
                proxy_port: None,
            };
            if seen.insert((
                r.identity,
                r.direction,
                r.port,
                r.end_port,
                r.protocol,
                r.kind,
            )) {
                plan.redirects.push(r);
            }
        }
        Ok(plan)
    }
}

/// The loaded redirect layer plus what this process last programmed into it.
pub struct Datapath {
    inner: Mutex<Programmed>,
    /// A read-only handle on the original-destination maps for the accept path (no lock shared with syncs).
    lookup: Arc<OriginalDstReader>,
}

struct Programmed {
    redirect: Redirect,
    last: DatapathPlan,
    /// The maps hold exactly `last`. False after a failed apply (it may have stopped half-way): the next apply then
    /// rewrites every entry instead of only those that differ from `last`.
    exact: bool,
}

impl std::fmt::Debug for Programmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programmed")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("programmed", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads (or adopts, after a restart) the programs and pinned maps and attaches the proxy's own cgroup.
    pub fn start(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let proxy = ProxyConfig {
            ipv4: Some(opts.proxy_ipv4),
            ipv6: None,
            http_port: opts.http_port,
            // One listener serves HTTP and Kafka ports: user space reads the port's L7 kind from the policy.
            kafka_port: opts.http_port,
            dns_port: opts.dns_port,
            tproxy_port: opts.tproxy_port,
            proxy_mark: opts.proxy_mark,
            tproxy_mark: opts.tproxy_mark,
        };
        let mut redirect = Redirect::load(RedirectOptions {
            pin_root: opts.pin_root.clone(),
            proxy,
        })?;
        redirect.attach_proxy_cgroup(&opts.proxy_cgroup)?;
        if !opts.tc_interfaces.is_empty() {
            if opts.tproxy_port == 0 {
                return Err(DatapathError::TcWithoutListener);
            }
            check_local_delivery(opts.tproxy_mark)?;
        }
        // Named by our own network namespace: the interfaces are the node's, and /sys may show another netns's.
        let own_netns = Path::new("/proc/self/ns/net");
        for ifname in &opts.tc_interfaces {
            redirect.attach_tc(ifname, Some(own_netns))?;
        }
        let lookup = Arc::new(OriginalDstReader::open(&opts.pin_root)?);
        Ok(Datapath {
            inner: Mutex::new(Programmed {
                redirect,
                last: DatapathPlan::default(),
                exact: true,
            }),
            lookup,
        })
    }

    /// Programs the maps for `plan`: new endpoints and redirects first, stale ones removed after, so a reload never
    /// opens a window where a policy-selected connection bypasses the proxy. Only entries that differ from the last applied plan are written (a pod event touches one IP, not 20,000).
    pub fn apply(&self, plan: DatapathPlan) -> Result<(), DatapathError> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let exact = std::mem::replace(&mut p.exact, false);
        if exact && p.last == plan {
            p.exact = true;
            return Ok(());
        }
        for (ip, identity) in &plan.ipcache {
            if exact && p.last.ipcache.get(ip) == Some(identity) {
                continue;
            }
            // Standalone mode: every endpoint in the file runs on this node (LOCAL: TC ingress may steer to it).
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            p.redirect
                .ipcache_upsert_prefix(*ip, prefix, *identity, true)?;
        }
        let rewrite_policy = !exact || p.last.redirects != plan.redirects;
        if rewrite_policy {
            p.redirect.policy_sync(&plan.redirects)?;
        }
        // policy_sync rewrites the policy map, flags entries included: (re)mark FQDN-restricted identities after it.
        for identity in &plan.fqdn_restricted {
            if rewrite_policy || !p.last.fqdn_restricted.contains(identity) {
                p.redirect.set_fqdn_restricted(*identity, true)?;
            }
        }
        for (cgroup, (name, info)) in &plan.enrollments {
            if exact && p.last.enrollments.get(cgroup) == Some(&(name.clone(), *info)) {
                continue;
            }
            if !Path::new(cgroup).is_dir() {
                return Err(DatapathError::MissingCgroup {
                    endpoint: name.clone(),
                    path: cgroup.display().to_string(),
                });
            }
            p.redirect.enroll(cgroup, *info)?;
        }
        for cgroup in stale_keys(&p.last.enrollments, &plan.enrollments) {
            if Path::new(&cgroup).is_dir() {
                p.redirect.unenroll(&cgroup)?;
            }
        }
        let stale_restricted: Vec<u32> = p
            .last
            .fqdn_restricted
            .difference(&plan.fqdn_restricted)
            .copied()
            .collect();
        for identity in stale_restricted {
            p.redirect.set_fqdn_restricted(identity, false)?;
        }
        for ip in stale_keys(&p.last.ipcache, &plan.ipcache) {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            p.redirect.ipcache_remove(ip, prefix)?;
        }
        p.last = plan;
        p.exact = true;
        Ok(())
    }

    /// Number of policy-map entries programmed (for metrics and tests).
    pub fn policy_entries(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .redirect
            .policy_len()
    }

    /// The ring buffer of connects the kernel FQDN gate refused (once; `None` after).
    pub fn take_fqdn_denials(&self) -> Option<redirect_ebpf::FqdnDenialRing> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .redirect
            .take_fqdn_denials()
    }

    /// The read-only original-destination maps (the DNS listener looks datagrams up by 4-tuple).
    pub fn reader(&self) -> Arc<OriginalDstReader> {
        self.lookup.clone()
    }

    /// The [`OriginalDst`] source backed by the redirect maps: the accepted socket's cookie (re-keyed by sockops on
    /// the proxy's cgroup), else its 4-tuple.
    pub fn original_dst(&self) -> Box<dyn OriginalDst> {
        Box::new(EbpfOriginalDst {
            reader: self.lookup.clone(),
        })
    }
}

/// The keys `last` has and `next` no longer has (what an update must remove from the kernel).
fn stale_keys<K: Ord + Clone, V, W>(last: &BTreeMap<K, V>, next: &BTreeMap<K, W>) -> Vec<K> {
    last.keys()
        .filter(|k| !next.contains_key(*k))
        .cloned()
        .collect()
}

/// The kernel FQDN gate: DNS-learned IPs go into the eBPF FQDN map (connects elsewhere get EPERM). The DNS proxy
/// reaches it through its `FqdnGate` trait (implemented in `dns/learn.rs`, so this module does not depend on it).
impl Datapath {
    /// Allows `identity` to connect to `ips` for `ttl`, on `ports` only (`None` = any port).
    pub fn fqdn_allow(
        &self,
        identity: u32,
        ips: &[IpAddr],
        ports: Option<&[(policy_model::Protocol, u16)]>,
        ttl: std::time::Duration,
    ) -> Result<(), String> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for ip in ips {
            match ports {
                None => p.redirect.fqdn_allow(identity, *ip, Some(ttl)),
                Some(ports) => ports.iter().try_for_each(|(proto, port)| {
                    let proto = match proto {
                        policy_model::Protocol::Udp => Protocol::Udp,
                        _ => Protocol::Tcp,
                    };
                    p.redirect
                        .fqdn_allow_port(identity, *ip, proto, *port, Some(ttl))
                }),
            }
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Forgets `ips` for `identity` on every port.
    pub fn fqdn_remove(&self, identity: u32, ips: &[IpAddr]) -> Result<(), String> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for ip in ips {
            p.redirect
                .fqdn_remove_all_ports(identity, *ip)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Drops expired entries; returns how many.
    pub fn fqdn_gc(&self) -> Result<usize, String> {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.redirect.fqdn_gc().map_err(|e| e.to_string())
    }
}

/// Steered packets carry `mark` and must be routed to the local stack, or they are forwarded past the proxy.
fn check_local_delivery(mark: u32) -> Result<(), DatapathError> {
    let rules = std::process::Command::new("ip")
        .args(["-4", "rule", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let wanted = format!("fwmark {mark:#x}");
    if rules.lines().any(|l| l.contains(&wanted)) {
        Ok(())
    } else {
        Err(DatapathError::NoLocalDelivery { mark })
    }
}

/// [`OriginalDst`] from the redirect layer's maps.
#[derive(Debug, Clone)]
pub struct EbpfOriginalDst {
    reader: Arc<OriginalDstReader>,
}

impl OriginalDst for EbpfOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> Result<SocketAddr, OriginalDstError> {
        match self.reader.original_dst_of_socket(stream) {
            Ok(Some(od)) => Ok(od.addr),
            Ok(None) => Err(OriginalDstError::NotInMap {
                peer: stream.peer_addr().map_err(OriginalDstError::Socket)?,
                local: stream.local_addr().map_err(OriginalDstError::Socket)?,
            }),
            Err(e) => Err(OriginalDstError::Socket(std::io::Error::other(
                e.to_string(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_model::{Direction, Endpoint, load_policies};

    fn engine(yaml: &str, eps: Vec<Endpoint>) -> (PolicyEngine, EndpointTable) {
        let table = EndpointTable::new(eps).unwrap();
        let load = load_policies("t.yaml", yaml);
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let (engine, errors) = PolicyEngine::compile(load.policies, &table);
        assert!(errors.is_empty(), "{errors:?}");
        (engine, table)
    }

    const HTTP_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-http, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET}]}
"#;

    fn ep(name: &str, app: &str, ip: &str, cgroup: Option<&str>) -> Endpoint {
        let mut e = Endpoint::new(name, "prod", &[("app", app)], ip.parse().unwrap());
        e.cgroup = cgroup.map(str::to_string);
        e
    }

    #[test]
    fn plan_redirects_the_l7_port_of_the_selected_identity_only() {
        let (engine, table) = engine(
            HTTP_POLICY,
            vec![
                ep("frontend", "frontend", "10.0.1.10", Some("/cg/fe")),
                ep("api", "api", "10.0.1.20", None),
            ],
        );
        let plan = DatapathPlan::new(&engine, &table).unwrap();
        let api = table.identity_of_ip("10.0.1.20".parse().unwrap()).0;
        assert_eq!(plan.redirects.len(), 1, "{:?}", plan.redirects);
        let r = plan.redirects[0];
        assert_eq!(
            (r.identity, r.direction, r.port, r.protocol, r.kind),
            (api, Direction::Ingress, 8080, Protocol::Tcp, L7Kind::Http)
        );
        assert_eq!(plan.ipcache.len(), 2);
        assert_eq!(plan.ipcache[&"10.0.1.20".parse::<IpAddr>().unwrap()], api);
        // Only endpoints with a cgroup are enrolled.
        assert_eq!(plan.enrollments.len(), 1);
        assert_eq!(plan.enrollments[Path::new("/cg/fe")].0, "prod/frontend");
    }

    #[test]
    fn plan_without_l7_rules_redirects_nothing() {
        let l4_only = HTTP_POLICY.replace("\n          rules: {http: [{method: GET}]}", "");
        assert_ne!(l4_only, HTTP_POLICY);
        let (engine, table) = engine(&l4_only, vec![ep("api", "api", "10.0.1.20", None)]);
        assert!(
            DatapathPlan::new(&engine, &table)
                .unwrap()
                .redirects
                .is_empty()
        );
    }

    #[test]
    fn ipv6_pods_are_refused_with_a_reason() {
        let (engine, table) = engine(
            HTTP_POLICY,
            vec![ep("api", "api", "fd00::20", Some("/cg/api"))],
        );
        let err = DatapathPlan::new(&engine, &table).unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
    }
}
