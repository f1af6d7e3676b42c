//! What names resolved to, as learned from DNS responses that passed the proxy. Pure: callers pass `now`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::dns::normalize_name;

/// At most this many IPs are kept per name per endpoint; the oldest is evicted first.
pub const MAX_IPS_PER_NAME: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ip: IpAddr,
    expires: SystemTime,
}

/// Learned name -> IPs, per resolving endpoint (`None` = node-wide, e.g. pre-seeded entries).
#[derive(Debug, Clone)]
pub struct FqdnCache {
    min_ttl: Duration,
    by_name: HashMap<Key, VecDeque<Entry>>,
    /// Reverse index so a connection's lookup does not scan the whole cache.
    by_ip: HashMap<IpAddr, BTreeSet<Key>>,
}

type Key = (Option<IpAddr>, String);

impl Default for FqdnCache {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl FqdnCache {
    /// A cache where every entry lives at least `min_ttl`.
    pub fn new(min_ttl: Duration) -> Self {
        FqdnCache {
            min_ttl,
            by_name: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }

    /// Record that `endpoint` resolved `name` to `ips` with `ttl` at `now`. Expiry is `now + max(ttl, min_ttl)`.
    /// Re-learning an IP refreshes it (and makes it the newest). Returns the IPs evicted by the 50-per-name limit.
    pub fn insert(
        &mut self,
        endpoint: Option<IpAddr>,
        name: &str,
        ips: &[IpAddr],
        ttl: Duration,
        now: SystemTime,
    ) -> Vec<IpAddr> {
        let expires = now + ttl.max(self.min_ttl);
        let key = (endpoint, normalize_name(name));
        let list = self.by_name.entry(key.clone()).or_default();
        let mut evicted = Vec::new();
        for ip in ips {
            list.retain(|e| e.ip != *ip);
            list.push_back(Entry { ip: *ip, expires });
            self.by_ip.entry(*ip).or_default().insert(key.clone());
            while list.len() > MAX_IPS_PER_NAME {
                if let Some(old) = list.pop_front() {
                    evicted.push(old.ip);
                }
            }
        }
        for ip in &evicted {
            if !list.iter().any(|e| e.ip == *ip) {
                unindex(&mut self.by_ip, *ip, &key);
            }
        }
        evicted
    }

    /// Names `ip` was learned for (any endpoint), including entries past expiry that `gc` has not removed yet.
    pub fn names_for_ip(&self, ip: IpAddr) -> Vec<String> {
        self.collect(ip, None)
    }

    /// Names `ip` was learned for that are still valid at `now`.
    pub fn names_for_ip_at(&self, ip: IpAddr, now: SystemTime) -> Vec<String> {
        self.collect(ip, Some(now))
    }

    fn collect(&self, ip: IpAddr, now: Option<SystemTime>) -> Vec<String> {
        let Some(keys) = self.by_ip.get(&ip) else {
            return Vec::new();
        };
        let names: BTreeSet<&String> = keys
            .iter()
            .filter(|k| {
                self.by_name.get(*k).is_some_and(|list| {
                    list.iter()
                        .any(|e| e.ip == ip && now.is_none_or(|n| e.expires > n))
                })
            })
            .map(|(_, name)| name)
            .collect();
        names.into_iter().cloned().collect()
    }

    /// IPs currently known for `name` (any endpoint) at `now`.
    pub fn ips_for_name(&self, name: &str, now: SystemTime) -> Vec<IpAddr> {
        let n = normalize_name(name);
        let ips: BTreeSet<IpAddr> = self
            .by_name
            .iter()
            .filter(|((_, nm), _)| *nm == n)
            .flat_map(|(_, l)| l.iter().filter(|e| e.expires > now).map(|e| e.ip))
            .collect();
        ips.into_iter().collect()
    }

    /// Drop every entry expired at `now`; returns how many IPs were removed.
    pub fn gc(&mut self, now: SystemTime) -> usize {
        let mut removed = 0;
        let by_ip = &mut self.by_ip;
        self.by_name.retain(|key, list| {
            list.retain(|e| {
                let keep = e.expires > now;
                if !keep {
                    removed += 1;
                    unindex(by_ip, e.ip, key);
                }
                keep
            });
            !list.is_empty()
        });
        removed
    }

    /// Number of (endpoint, name, ip) entries.
    pub fn len(&self) -> usize {
        self.by_name.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Number of distinct IPs in the cache.
    pub fn ip_count(&self) -> usize {
        self.by_ip.len()
    }
}

fn unindex(by_ip: &mut HashMap<IpAddr, BTreeSet<Key>>, ip: IpAddr, key: &Key) {
    if let Some(keys) = by_ip.get_mut(&ip) {
        keys.remove(key);
        if keys.is_empty() {
            by_ip.remove(&ip);
        }
    }
}
