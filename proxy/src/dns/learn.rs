//! FQDN learning: what an allowed DNS response teaches, folded into the FQDN cache the policy snapshot consults
//! (`toFQDNs` in `engine.connection`) and into the kernel's FQDN gate (`fqdn_allow`), BEFORE the response is
//! released to the client, so the client's first connect to an answered IP is never refused.
//!
//! The plan (which IPs, which TTL, what goes to the kernel) is pure ([`LearnPlan::new`]); [`Learner`] applies it.

use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use policy_model::{FqdnCache, Identity, PolicyEngine};

use super::message::ResponseInfo;

/// The node's learned names, shared by every policy snapshot (a reload keeps what was learned).
#[derive(Debug, Clone, Default)]
pub struct SharedFqdnCache(Arc<RwLock<FqdnCache>>);

impl SharedFqdnCache {
    pub fn read(&self) -> RwLockReadGuard<'_, FqdnCache> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, FqdnCache> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where learned IPs go in the kernel: the eBPF FQDN map (implemented by the datapath; tests use a recorder).
pub trait FqdnGate: Send + Sync {
    /// Allow `identity` to connect to `ips` for `ttl`.
    fn allow(&self, identity: u32, ips: &[IpAddr], ttl: Duration) -> Result<(), String>;
    /// Forget `ips` for `identity` (evicted by the per-name limit).
    fn remove(&self, identity: u32, ips: &[IpAddr]) -> Result<(), String>;
    /// Drop expired entries; returns how many.
    fn gc(&self) -> Result<usize, String>;
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
                gate.allow(identity, &plan.ips, plan.ttl)?;
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
