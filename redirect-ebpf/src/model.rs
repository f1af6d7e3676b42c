//! The redirect layer's own vocabulary (independent of policy-model: the proxy converts its `L7Port`s into
//! [`L7Redirect`]s) and the pure conversions between it and the map structs in [`crate::maps`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::RedirectError;
use crate::maps::*;

/// Most ports one [`L7Redirect`] range may expand to: every port is one policy-map entry.
pub const MAX_PORT_RANGE: u32 = 4096;

/// The policy engine's direction, so the proxy hands its plans down without a translation table.
pub use policy_model::Direction;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L7Kind {
    Http,
    Kafka,
    Dns,
}

/// The direction's value in the kernel maps (`DIR_*` in the shared C header).
fn direction_raw(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

impl Protocol {
    pub(crate) fn raw(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }
    fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl L7Kind {
    pub(crate) fn raw(self) -> u16 {
        match self {
            L7Kind::Http => L7_HTTP,
            L7Kind::Kafka => L7_KAFKA,
            L7Kind::Dns => L7_DNS,
        }
    }
    fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            L7_HTTP => Some(L7Kind::Http),
            L7_KAFKA => Some(L7Kind::Kafka),
            L7_DNS => Some(L7Kind::Dns),
            _ => None,
        }
    }
}

/// "Flows on `port..=end_port`/`protocol` to (ingress) or from (egress) `identity` need the `kind` proxy."
/// Mirrors policy-model's `L7Port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct L7Redirect {
    pub identity: u32,
    pub direction: Direction,
    pub port: u16,
    /// Inclusive; equal to `port` (or 0) for a single port.
    pub end_port: u16,
    pub protocol: Protocol,
    pub kind: L7Kind,
    /// Overrides the config's listener port for `kind`.
    pub proxy_port: Option<u16>,
}

/// Policy-map entries by (identity, `DIR_*`, `IPPROTO_*`, port in host order).
pub type PolicyEntries = BTreeMap<(u32, u8, u8, u16), PolicyValue>;

/// Expands redirects into policy-map entries. Overlapping redirects for the same key keep the first one listed.
pub fn policy_entries(redirects: &[L7Redirect]) -> Result<PolicyEntries, RedirectError> {
    let mut out = BTreeMap::new();
    for r in redirects {
        let end = if r.end_port == 0 { r.port } else { r.end_port };
        if r.port == 0 || end < r.port {
            return Err(RedirectError::Invalid(format!(
                "L7 redirect for identity {} has port range {}-{}: ports must be 1..=65535 with end >= start",
                r.identity, r.port, r.end_port
            )));
        }
        if u32::from(end - r.port) + 1 > MAX_PORT_RANGE {
            return Err(RedirectError::Invalid(format!(
                "L7 redirect for identity {} spans {} ports ({}-{}); at most {MAX_PORT_RANGE} are supported",
                r.identity,
                end - r.port + 1,
                r.port,
                end
            )));
        }
        for port in r.port..=end {
            out.entry((
                r.identity,
                direction_raw(r.direction),
                r.protocol.raw(),
                port,
            ))
            .or_insert(PolicyValue {
                l7_kind: r.kind.raw(),
                proxy_port: r.proxy_port.unwrap_or(0),
                flags: 0,
            });
        }
    }
    Ok(out)
}

pub(crate) fn policy_key(identity: u32, direction: u8, proto: u8, port_host: u16) -> PolicyKey {
    PolicyKey {
        identity,
        direction,
        proto,
        port: port_host.to_be(),
    }
}

/// The key of the per-identity flags entry (FQDN restriction).
pub(crate) fn policy_flags_key(identity: u32) -> PolicyKey {
    policy_key(identity, DIR_EGRESS, 0, 0)
}

/// Where the proxy listens and how its sockets are marked; written to the config map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    /// Address pods reach the proxy at (e.g. the node side of their veth); `None` = no IPv4 redirect.
    pub ipv4: Option<Ipv4Addr>,
    /// `None` = no IPv6 redirect.
    pub ipv6: Option<Ipv6Addr>,
    pub http_port: u16,
    pub kafka_port: u16,
    pub dns_port: u16,
    /// Transparent listener for TC ingress steering; 0 = no ingress steering.
    pub tproxy_port: u16,
    /// SO_MARK the proxy sets on its own sockets: never redirected. 0 = none.
    pub proxy_mark: u32,
    /// skb mark the TC program sets on steered packets, for `ip rule add fwmark ... lookup <local table>`.
    pub tproxy_mark: u32,
}

impl ProxyConfig {
    pub(crate) fn to_value(self) -> ConfigValue {
        ConfigValue {
            flags: CFG_F_ENABLED,
            proxy_ip4: self
                .ipv4
                .map(|ip| ip_words(IpAddr::V4(ip)).1[0])
                .unwrap_or(0),
            proxy_ip6: self
                .ipv6
                .map(|ip| ip_words(IpAddr::V6(ip)).1)
                .unwrap_or_default(),
            proxy_mark: self.proxy_mark,
            tproxy_mark: self.tproxy_mark,
            http_port: self.http_port,
            kafka_port: self.kafka_port,
            dns_port: self.dns_port,
            tproxy_port: self.tproxy_port,
        }
    }
}

/// What the redirect layer recorded about a redirected flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// The destination the client asked for.
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub source_identity: u32,
    pub destination_identity: u32,
    pub kind: Option<L7Kind>,
    /// The proxy listener port the flow was sent to.
    pub proxy_port: u16,
}

impl OriginalDst {
    pub(crate) fn from_value(v: &OrigDstValue) -> Option<Self> {
        Some(OriginalDst {
            addr: SocketAddr::new(words_ip(v.family, v.ip)?, u16::from_be(v.port)),
            protocol: Protocol::from_raw(v.proto)?,
            source_identity: v.src_identity,
            destination_identity: v.dst_identity,
            kind: L7Kind::from_raw(v.l7_kind),
            proxy_port: v.proxy_port,
        })
    }
}

/// A flow as the client sees it: `client` = its local address, `proxy` = the listener it reached.
/// `netns_cookie` only matters when `proxy` is a loopback address (the same 4-tuple exists in every netns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FourTuple {
    pub client: SocketAddr,
    pub proxy: SocketAddr,
    pub protocol: Protocol,
    pub netns_cookie: u64,
}

impl FourTuple {
    pub(crate) fn key(&self) -> Result<TupleKey, RedirectError> {
        let (sf, src) = ip_words(self.client.ip());
        let (df, dst) = ip_words(self.proxy.ip());
        if sf != df {
            return Err(RedirectError::Invalid(format!(
                "4-tuple mixes address families: {} -> {}",
                self.client, self.proxy
            )));
        }
        let loopback = self.proxy.ip().is_loopback()
            || matches!(self.proxy.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        Ok(TupleKey {
            src_ip: src,
            dst_ip: dst,
            src_port: self.client.port().to_be(),
            dst_port: self.proxy.port().to_be(),
            family: sf,
            proto: self.protocol.raw(),
            pad: 0,
            netns_cookie: if loopback { self.netns_cookie } else { 0 },
        })
    }
}

/// An ipcache prefix key: `prefix_len` is the IP prefix (0..=32 or 0..=128).
pub(crate) fn ipcache_key(ip: IpAddr, prefix_len: u8) -> Result<IpcacheKey, RedirectError> {
    let (family, words) = ip_words(ip);
    let max = if family == FAMILY_V4 { 32 } else { 128 };
    // An IPv4-mapped IPv6 prefix is stored as IPv4: shift the length accordingly.
    let prefix_len = if family == FAMILY_V4 && ip.is_ipv6() {
        prefix_len.checked_sub(96).ok_or_else(|| {
            RedirectError::Invalid(format!(
                "prefix {ip}/{prefix_len} is shorter than the IPv4-mapped range"
            ))
        })?
    } else {
        prefix_len
    };
    if prefix_len > max {
        return Err(RedirectError::Invalid(format!(
            "prefix length {prefix_len} exceeds {max} for {ip}"
        )));
    }
    Ok(IpcacheKey {
        prefixlen: 32 + u32::from(prefix_len),
        family,
        pad: [0; 3],
        ip: words,
    })
}

pub(crate) fn fqdn_key(identity: u32, ip: IpAddr) -> FqdnKey {
    fqdn_port_key(identity, ip, None)
}

/// The key for `ip` on one (protocol, port), or any port with `None`.
pub(crate) fn fqdn_port_key(identity: u32, ip: IpAddr, port: Option<(Protocol, u16)>) -> FqdnKey {
    let (family, words) = ip_words(ip);
    let (proto, port) = match port {
        Some((p, port)) => (p.raw(), port.to_be()),
        None => (0, 0),
    };
    FqdnKey {
        identity,
        family,
        proto,
        port,
        ip: words,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(port: u16, end_port: u16) -> L7Redirect {
        L7Redirect {
            identity: 300,
            direction: Direction::Ingress,
            port,
            end_port,
            protocol: Protocol::Tcp,
            kind: L7Kind::Http,
            proxy_port: None,
        }
    }

    #[test]
    fn single_port_is_one_entry_with_port_in_network_order() {
        let entries = policy_entries(&[redirect(80, 0)]).unwrap();
        assert_eq!(entries.len(), 1);
        let ((id, dir, proto, port), v) = entries.iter().next().unwrap();
        assert_eq!(
            (*id, *dir, *proto, *port),
            (300, DIR_INGRESS, IPPROTO_TCP, 80)
        );
        assert_eq!(v.l7_kind, L7_HTTP);
        assert_eq!(
            policy_key(300, DIR_INGRESS, IPPROTO_TCP, 80)
                .port
                .to_ne_bytes(),
            [0, 80]
        );
    }

    #[test]
    fn ranges_expand_inclusively_and_first_listed_wins() {
        let mut second = redirect(8080, 8082);
        second.kind = L7Kind::Kafka;
        let entries = policy_entries(&[redirect(8081, 0), second]).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[&(300, DIR_INGRESS, IPPROTO_TCP, 8081)].l7_kind,
            L7_HTTP
        );
        assert_eq!(
            entries[&(300, DIR_INGRESS, IPPROTO_TCP, 8082)].l7_kind,
            L7_KAFKA
        );
    }

    #[test]
    fn bad_ranges_are_rejected_with_the_reason() {
        assert!(policy_entries(&[redirect(0, 0)]).is_err());
        assert!(policy_entries(&[redirect(90, 80)]).is_err());
        let err = policy_entries(&[redirect(1, 65535)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 4096"), "{err}");
        assert_eq!(policy_entries(&[redirect(1, 4096)]).unwrap().len(), 4096);
    }

    #[test]
    fn config_value_carries_addresses_in_network_order() {
        let cfg = ProxyConfig {
            ipv4: Some(Ipv4Addr::new(169, 254, 1, 1)),
            http_port: 15001,
            ..Default::default()
        };
        let v = cfg.to_value();
        assert_eq!(v.flags, CFG_F_ENABLED);
        assert_eq!(v.proxy_ip4.to_ne_bytes(), [169, 254, 1, 1]);
        assert_eq!(v.proxy_ip6, [0; 4]);
        assert_eq!(v.http_port, 15001);
    }

    #[test]
    fn orig_dst_round_trip() {
        let v = OrigDstValue {
            ip: ip_words("10.0.0.7".parse().unwrap()).1,
            port: 8080u16.to_be(),
            family: FAMILY_V4,
            proto: IPPROTO_TCP,
            src_identity: 256,
            dst_identity: 257,
            l7_kind: L7_HTTP,
            proxy_port: 15001,
        };
        let od = OriginalDst::from_value(&v).unwrap();
        assert_eq!(od.addr, "10.0.0.7:8080".parse().unwrap());
        assert_eq!(od.kind, Some(L7Kind::Http));
        assert_eq!(od.protocol, Protocol::Tcp);
        let bad = OrigDstValue { family: 0, ..v };
        assert_eq!(OriginalDst::from_value(&bad), None);
    }

    #[test]
    fn tuple_key_keeps_netns_cookie_only_for_loopback() {
        let t = FourTuple {
            client: "10.0.0.2:40000".parse().unwrap(),
            proxy: "169.254.1.1:15001".parse().unwrap(),
            protocol: Protocol::Tcp,
            netns_cookie: 99,
        };
        let k = t.key().unwrap();
        assert_eq!(k.netns_cookie, 0);
        assert_eq!(k.src_port.to_ne_bytes(), 40000u16.to_be_bytes());
        let lo = FourTuple {
            client: "127.0.0.1:40000".parse().unwrap(),
            proxy: "127.0.0.1:15001".parse().unwrap(),
            ..t
        };
        assert_eq!(lo.key().unwrap().netns_cookie, 99);
        let mixed = FourTuple {
            client: "[fd00::1]:1".parse().unwrap(),
            ..t
        };
        assert!(mixed.key().is_err());
    }

    #[test]
    fn ipcache_prefix_lengths() {
        let k = ipcache_key("10.0.0.0".parse().unwrap(), 8).unwrap();
        assert_eq!((k.family, k.prefixlen), (FAMILY_V4, 40));
        let k = ipcache_key("::ffff:10.0.0.0".parse().unwrap(), 104).unwrap();
        assert_eq!((k.family, k.prefixlen), (FAMILY_V4, 40));
        let k = ipcache_key("fd00::".parse().unwrap(), 64).unwrap();
        assert_eq!((k.family, k.prefixlen), (FAMILY_V6, 96));
        assert!(ipcache_key("10.0.0.0".parse().unwrap(), 33).is_err());
    }
}
