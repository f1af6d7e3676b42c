//! FQDN learning: what an allowed DNS response teaches, folded into the FQDN cache the policy snapshot consults
//! (`toFQDNs` in `engine.connection`) and into the kernel's FQDN gate (`fqdn_allow`), BEFORE the response is
//! released to the client, so the client's first connect to an answered IP is never refused.
//!
//! The plan (which IPs, which TTL, what goes to the kernel) is pure ([`LearnPlan::new`]); [`Learner`] applies it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use policy_model::{Identity, PolicyEngine, Protocol};

use crate::fqdn_cache::SharedFqdnCache;
use tollgate_dns_codec::message::ResponseInfo;

/// Where learned IPs go in the kernel: the eBPF FQDN map (implemented by the datapath; tests use a recorder).
pub trait FqdnGate: Send + Sync {
    /// Allow `identity` to connect to the plan's `ips` for its `ttl`, on its `ports` only (`None` = any port).
    fn allow(&self, identity: u32, plan: &LearnPlan) -> Result<(), String>;
    /// Forget `ips` for `identity` on every port (evicted by the per-name limit).
    fn remove(&self, identity: u32, ips: &[IpAddr]) -> Result<(), String>;
    /// Drop expired entries; returns how many.
    fn gc(&self) -> Result<usize, String>;
}

/// The kernel gate of a daemon with the eBPF datapath.
impl FqdnGate for crate::datapath::Datapath {
    fn allow(&self, identity: u32, plan: &LearnPlan) -> Result<(), String> {
        self.fqdn_allow(identity, &plan.ips, plan.ports.as_deref(), plan.ttl)
    }
    fn remove(&self, identity: u32, ips: &[IpAddr]) -> Result<(), String> {
        self.fqdn_remove(identity, ips)
    }
    fn gc(&self) -> Result<usize, String> {
        self.fqdn_gc()
    }
}

/// What to do with one allowed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnPlan {
    /// Names the IPs are recorded under (the question and every CNAME target).
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// `max(response TTL, min_ttl)`.
    pub ttl: Duration,
    /// Push the IPs to the kernel gate for the source identity: some name of the chain is selected by one of its
    /// `toFQDNs` rules. (Other answers are cached for flow records but open nothing.)
    pub to_kernel: bool,
    /// The (protocol, port) pairs those rules allow, for the kernel gate; `None` = any port.
    pub ports: Option<Vec<(Protocol, u16)>>,
}

/// A `toFQDNs` port range wider than this opens every port in the kernel gate rather than one entry per port.
pub const MAX_GATE_PORTS: usize = 64;

/// The kernel gate's (protocol, port) entries for the `toFQDNs` rules selecting any of `names`.
pub fn gate_ports(
    engine: &PolicyEngine,
    identity: Identity,
    names: &[String],
) -> Option<Vec<(Protocol, u16)>> {
    let mut out = Vec::new();
    for name in names {
        for (proto, lo, hi) in engine.fqdn_ports(identity, name)? {
            let protos: &[Protocol] = match proto {
                Some(Protocol::Tcp) => &[Protocol::Tcp],
                Some(Protocol::Udp) => &[Protocol::Udp],
                // connect()/sendmsg() hooks never see SCTP.
                Some(Protocol::Sctp) => &[],
                None => &[Protocol::Tcp, Protocol::Udp],
            };
            if usize::from(hi - lo) >= MAX_GATE_PORTS {
                return None;
            }
            for p in protos {
                for port in lo..=hi {
                    if !out.contains(&(*p, port)) {
                        out.push((*p, port));
                    }
                }
            }
        }
    }
    Some(out)
}

impl LearnPlan {
    /// `None` when the response teaches nothing (no addresses, or an error rcode).
    pub fn new(
        engine: &PolicyEngine,
        identity: Identity,
        info: &ResponseInfo,
        min_ttl: Duration,
    ) -> Option<Self> {
        if info.ips.is_empty() || info.rcode != 0 {
            return None;
        }
        Some(LearnPlan {
            names: info.names.clone(),
            ips: info.ips.clone(),
            ttl: Duration::from_secs(u64::from(info.ttl)).max(min_ttl),
            to_kernel: info.names.iter().any(|n| engine.fqdn_selects(identity, n)),
            ports: gate_ports(engine, identity, &info.names),
        })
    }
}

/// Applies learn plans: cache first, then the kernel; reports what was evicted.
pub struct Learner {
    pub cache: SharedFqdnCache,
    pub gate: Option<Arc<dyn FqdnGate>>,
    pub min_ttl: Duration,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner")
            .field("min_ttl", &self.min_ttl)
            .field("kernel_gate", &self.gate.is_some())
            .finish()
    }
}

impl Learner {
    /// Records `plan` for `endpoint` (the querying pod) / `identity`. The cache insert and the kernel push both
    /// complete before this returns; the caller releases the response only afterwards.
    pub fn apply(
        &self,
        endpoint: IpAddr,
        identity: u32,
        plan: &LearnPlan,
        now: SystemTime,
    ) -> Result<(), String> {
        let mut evicted = Vec::new();
        {
            let mut cache = self.cache.write();
            for name in &plan.names {
                evicted.extend(cache.insert(Some(endpoint), name, &plan.ips, plan.ttl, now));
            }
            // An IP evicted under one name may still be valid under another: keep it in the kernel then.
            evicted.retain(|ip| cache.names_for_ip_at(*ip, now).is_empty());
        }
        if let Some(gate) = &self.gate {
            if plan.to_kernel {
                gate.allow(identity, plan)?;
            }
            if !evicted.is_empty() {
                // The gate acts at connect() only: removing an IP never cuts a connection already open to it.
                gate.remove(identity, &evicted)?;
            }
        }
        Ok(())
    }

    /// Periodic GC: expired cache entries and expired kernel entries (the kernel already refuses expired ones).
    pub fn gc(&self, now: SystemTime) -> (usize, usize) {
        let cached = self.cache.write().gc(now);
        let kernel = match &self.gate {
            Some(g) => g.gc().unwrap_or_else(|e| {
                tracing::warn!("FQDN map GC failed: {e}");
                0
            }),
            None => 0,
        };
        (cached, kernel)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::conformance::conformance_snapshot;
    use policy_model::{Decision, Protocol};
    use std::sync::Mutex;
    use tollgate_dns_codec::message::ResponseInfo;

    type GatePorts = Option<Vec<(Protocol, u16)>>;

    #[derive(Default)]
    pub(crate) struct Recorder {
        pub allowed: Mutex<Vec<(u32, IpAddr, Duration)>>,
        /// The `ports` argument of every `allow` call (`None` = any port).
        pub ports: Mutex<Vec<GatePorts>>,
        pub removed: Mutex<Vec<(u32, IpAddr)>>,
    }

    impl FqdnGate for Recorder {
        fn allow(&self, identity: u32, plan: &LearnPlan) -> Result<(), String> {
            self.ports.lock().unwrap().push(plan.ports.clone());
            let mut a = self.allowed.lock().unwrap();
            a.extend(plan.ips.iter().map(|ip| (identity, *ip, plan.ttl)));
            Ok(())
        }
        fn remove(&self, identity: u32, ips: &[IpAddr]) -> Result<(), String> {
            self.removed
                .lock()
                .unwrap()
                .extend(ips.iter().map(|ip| (identity, *ip)));
            Ok(())
        }
        fn gc(&self) -> Result<usize, String> {
            Ok(0)
        }
    }

    fn info(names: &[&str], ips: &[&str], ttl: u32) -> ResponseInfo {
        ResponseInfo {
            names: names.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ttl,
            ..Default::default()
        }
    }

    /// The FQDN-restricted workload of `dns-telemetry` (ops/fetcher).
    const FETCHER: &str = "10.0.23.10";

    #[test]
    fn only_names_selected_by_to_fqdns_reach_the_kernel() {
        let snap = conformance_snapshot("dns-telemetry");
        let fetcher = snap.endpoints.identity_of_ip(FETCHER.parse().unwrap());
        assert_eq!(snap.engine.fqdn_restricted(), vec![fetcher]);
        let telemetry = LearnPlan::new(
            &snap.engine,
            fetcher,
            &info(&["telemetry.example.net"], &["203.0.113.40"], 5),
            Duration::ZERO,
        )
        .unwrap();
        assert!(telemetry.to_kernel);
        assert_eq!(
            telemetry.ports,
            Some(vec![(Protocol::Tcp, 443)]),
            "the kernel gate opens the rule's port only"
        );
        assert_eq!(telemetry.ttl, Duration::from_secs(5));
        // Selected through the CNAME target (matchPattern *.assets.example.com).
        let via_cname = LearnPlan::new(
            &snap.engine,
            fetcher,
            &info(
                &["downloads.example", "img.assets.example.com"],
                &["198.51.100.44"],
                5,
            ),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(via_cname.to_kernel);
        assert_eq!(via_cname.ttl, Duration::from_secs(60), "min TTL applies");
        let other = LearnPlan::new(
            &snap.engine,
            fetcher,
            &info(&["assets.example.com"], &["192.0.2.5"], 5),
            Duration::ZERO,
        )
        .unwrap();
        assert!(
            !other.to_kernel,
            "*.assets.example.com does not select assets.example.com"
        );
        assert_eq!(
            LearnPlan::new(&snap.engine, fetcher, &info(&["x"], &[], 5), Duration::ZERO),
            None
        );
        let mut nx = info(&["telemetry.example.net"], &["203.0.113.40"], 5);
        nx.rcode = 3;
        assert_eq!(
            LearnPlan::new(&snap.engine, fetcher, &nx, Duration::ZERO),
            None
        );
    }

    #[test]
    fn learning_opens_the_connection_verdict_and_expiry_closes_it() {
        let snap = conformance_snapshot("dns-telemetry");
        let src: IpAddr = FETCHER.parse().unwrap();
        let fetcher = snap.endpoints.identity_of_ip(src);
        let dst: IpAddr = "203.0.113.40".parse().unwrap();
        let flow = snap.engine.flow(src, dst, 443, Protocol::Tcp);
        let now = SystemTime::now();
        let verdict = |at| {
            snap.engine
                .connection(&flow, &snap.fqdn.read(), at)
                .decision
        };
        assert_eq!(verdict(now), Decision::Deny, "nothing learned yet");
        let gate = Arc::new(Recorder::default());
        let learner = Learner {
            cache: snap.fqdn.clone(),
            gate: Some(gate.clone()),
            min_ttl: Duration::ZERO,
        };
        let plan = LearnPlan::new(
            &snap.engine,
            fetcher,
            &info(&["telemetry.example.net"], &["203.0.113.40"], 5),
            Duration::ZERO,
        )
        .unwrap();
        learner.apply(src, fetcher.0, &plan, now).unwrap();
        assert_eq!(
            *gate.allowed.lock().unwrap(),
            vec![(fetcher.0, dst, Duration::from_secs(5))]
        );
        assert_eq!(
            *gate.ports.lock().unwrap(),
            vec![Some(vec![(Protocol::Tcp, 443)])]
        );
        assert_eq!(verdict(now), Decision::Allow);
        let port80 = snap.engine.flow(src, dst, 80, Protocol::Tcp);
        assert_eq!(
            snap.engine
                .connection(&port80, &snap.fqdn.read(), now)
                .decision,
            Decision::Deny,
            "only the rule's port"
        );
        let later = now + Duration::from_secs(6);
        assert_eq!(verdict(later), Decision::Deny, "expired");
        assert_eq!(learner.gc(later).0, 1);
        assert!(snap.fqdn.read().is_empty());
    }

    #[test]
    fn the_51st_ip_evicts_the_oldest_from_cache_and_kernel() {
        let snap = conformance_snapshot("dns-telemetry");
        let src: IpAddr = FETCHER.parse().unwrap();
        let fetcher = snap.endpoints.identity_of_ip(src);
        let gate = Arc::new(Recorder::default());
        let learner = Learner {
            cache: snap.fqdn.clone(),
            gate: Some(gate.clone()),
            min_ttl: Duration::ZERO,
        };
        let now = SystemTime::now();
        for i in 0..51u8 {
            let ip = format!("198.51.100.{i}");
            let plan = LearnPlan::new(
                &snap.engine,
                fetcher,
                &info(&["telemetry.example.net"], &[&ip], 300),
                Duration::ZERO,
            )
            .unwrap();
            learner.apply(src, fetcher.0, &plan, now).unwrap();
        }
        assert_eq!(snap.fqdn.read().len(), 50);
        assert_eq!(
            *gate.removed.lock().unwrap(),
            vec![(fetcher.0, "198.51.100.0".parse().unwrap())]
        );
        assert!(
            snap.fqdn
                .read()
                .names_for_ip("198.51.100.0".parse().unwrap())
                .is_empty()
        );
    }

    /// The kernel side of what this module learns for: the datapath plan of the same conformance case limits the
    /// `toFQDNs` identity to DNS-learned IPs and redirects its DNS to the proxy.
    #[test]
    fn plan_marks_fqdn_restricted_identities_and_redirects_their_dns() {
        let snap = crate::conformance::conformance_snapshot("dns-telemetry");
        let plan = crate::datapath::DatapathPlan::new(&snap.engine, &snap.endpoints).unwrap();
        let fetcher = snap
            .endpoints
            .identity_of_ip("10.0.23.10".parse().unwrap())
            .0;
        assert_eq!(
            plan.fqdn_restricted,
            std::collections::BTreeSet::from([fetcher])
        );
        let dns: Vec<_> = plan
            .redirects
            .iter()
            .filter(|r| r.kind == redirect_ebpf::L7Kind::Dns)
            .map(|r| (r.identity, r.direction, r.port, r.protocol))
            .collect();
        assert_eq!(
            dns,
            [
                (
                    fetcher,
                    policy_model::Direction::Egress,
                    53,
                    redirect_ebpf::Protocol::Tcp
                ),
                (
                    fetcher,
                    policy_model::Direction::Egress,
                    53,
                    redirect_ebpf::Protocol::Udp
                )
            ]
        );
    }
}
