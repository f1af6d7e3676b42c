//! The Rust mirror of every map key and value in `bpf/lib/maps.h`.
//!
//! Each struct is `#[repr(C)]`, names the C struct it mirrors, spells out padding as fields, and documents the byte
//! order of every multi-byte field ("NBO" = network byte order, "host" = host byte order). `tests/layout.rs` compares
//! sizes, alignments and offsets with what the C compiler produced for the same header.
//!
//! Addresses are four `u32` words holding the raw network-order bytes: IPv4 in `ip[0]` (family 4), IPv6 in all four
//! (family 6); [`ip_words`] and [`words_ip`] convert.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Map names, exactly as in `bpf/lib/maps.h` (they are also the pin file names under `<pin root>/maps/`).
pub const MAP_IPCACHE: &str = "tg_ipcache";
pub const MAP_POLICY: &str = "tg_policy";
pub const MAP_ENDPOINTS: &str = "tg_endpoints";
pub const MAP_ODST_COOKIE: &str = "tg_odst_cookie";
pub const MAP_ODST_TUPLE: &str = "tg_odst_tuple";
pub const MAP_FQDN_ALLOW: &str = "tg_fqdn_allow";
pub const MAP_CONFIG: &str = "tg_config";
pub const MAP_FQDN_DENIALS: &str = "tg_fqdn_denials";
pub const ALL_MAPS: [&str; 8] = [
    MAP_IPCACHE,
    MAP_POLICY,
    MAP_ENDPOINTS,
    MAP_ODST_COOKIE,
    MAP_ODST_TUPLE,
    MAP_FQDN_ALLOW,
    MAP_CONFIG,
    MAP_FQDN_DENIALS,
];

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;
pub const L7_NONE: u16 = 0;
pub const L7_HTTP: u16 = 1;
pub const L7_KAFKA: u16 = 2;
pub const L7_DNS: u16 = 3;
pub const IPCACHE_F_LOCAL: u32 = 1;
pub const POLICY_F_FQDN_RESTRICTED: u32 = 1;
pub const CFG_F_ENABLED: u32 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// C `struct tg_ipcache_key` (LPM trie key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheKey {
    /// host; bits from `family` on: 32 + IP prefix length.
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    /// NBO words.
    pub ip: [u32; 4],
}

/// C `struct tg_ipcache_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    /// host.
    pub identity: u32,
    /// host; `IPCACHE_F_*`.
    pub flags: u32,
}

/// C `struct tg_policy_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// host.
    pub identity: u32,
    /// `DIR_*`.
    pub direction: u8,
    /// `IPPROTO_*`; 0 for the per-identity flags entry.
    pub proto: u8,
    /// NBO; 0 for the per-identity flags entry.
    pub port: u16,
}

/// C `struct tg_policy_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// host; `L7_*`.
    pub l7_kind: u16,
    /// host; 0 = the config map's port for `l7_kind`.
    pub proxy_port: u16,
    /// host; `POLICY_F_*`.
    pub flags: u32,
}

/// C `struct tg_endpoint` (value of `tg_endpoints`, keyed by the cgroup id as a host-order `u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// host.
    pub identity: u32,
    /// host; reserved, zero.
    pub flags: u32,
    /// NBO; 0 if none.
    pub ip4: u32,
    /// NBO words; zero if none.
    pub ip6: [u32; 4],
}

/// C `struct tg_orig_dst` (value of `tg_odst_cookie` and `tg_odst_tuple`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDstValue {
    /// NBO words.
    pub ip: [u32; 4],
    /// NBO.
    pub port: u16,
    pub family: u8,
    pub proto: u8,
    /// host.
    pub src_identity: u32,
    /// host.
    pub dst_identity: u32,
    /// host; `L7_*`.
    pub l7_kind: u16,
    /// host; the proxy listener the flow was sent to.
    pub proxy_port: u16,
}

/// C `struct tg_tuple_key`: a flow as the CLIENT sees it (src = client, dst = proxy listener).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleKey {
    /// NBO words.
    pub src_ip: [u32; 4],
    /// NBO words.
    pub dst_ip: [u32; 4],
    /// NBO.
    pub src_port: u16,
    /// NBO.
    pub dst_port: u16,
    pub family: u8,
    pub proto: u8,
    pub pad: u16,
    /// host; netns cookie for loopback destinations, else 0.
    pub netns_cookie: u64,
}

/// C `struct tg_fqdn_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnKey {
    /// host.
    pub identity: u32,
    pub family: u8,
    /// IPPROTO_TCP/UDP, or 0 = any (with port 0).
    pub proto: u8,
    /// NBO; 0 = any port.
    pub port: u16,
    /// NBO words.
    pub ip: [u32; 4],
}

/// C `struct tg_fqdn_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnValue {
    /// host; CLOCK_BOOTTIME nanoseconds; 0 = never expires.
    pub expires_ns: u64,
    /// host; reserved, zero.
    pub flags: u32,
    pub pad: u32,
}

/// C `struct tg_fqdn_denial`: one record of the `tg_fqdn_denials` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnDenial {
    /// host; the refused endpoint's identity.
    pub identity: u32,
    pub family: u8,
    pub proto: u8,
    /// NBO.
    pub port: u16,
    /// NBO words.
    pub ip: [u32; 4],
    /// NBO; the endpoint's IPv4 (0 if none).
    pub src_ip4: u32,
    pub pad: u32,
}

impl FqdnDenial {
    /// Decodes one ring-buffer record; `None` if it is not exactly one record.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length matches and every bit pattern is a valid FqdnDenial (integers only).
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Self>()) })
    }

    /// The refused destination.
    pub fn destination(&self) -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::new(
            words_ip(self.family, self.ip)?,
            u16::from_be(self.port),
        ))
    }

    /// The endpoint's IPv4 address, when it has one.
    pub fn source_ip(&self) -> Option<IpAddr> {
        (self.src_ip4 != 0).then(|| IpAddr::V4(Ipv4Addr::from(self.src_ip4.to_ne_bytes())))
    }
}

/// C `struct tg_config` (the single entry of the `tg_config` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigValue {
    /// host; `CFG_F_*`.
    pub flags: u32,
    /// NBO; 0 = no IPv4 redirect.
    pub proxy_ip4: u32,
    /// NBO words; zero = no IPv6 redirect.
    pub proxy_ip6: [u32; 4],
    /// host; SO_MARK of the proxy's own sockets; 0 = none.
    pub proxy_mark: u32,
    /// host; skb mark set on steered ingress packets.
    pub tproxy_mark: u32,
    /// host.
    pub http_port: u16,
    /// host.
    pub kafka_port: u16,
    /// host.
    pub dns_port: u16,
    /// host.
    pub tproxy_port: u16,
}

// SAFETY: all of these are #[repr(C)] structs of plain integers with explicit padding fields, so every bit pattern is
// valid and there are no implicit padding bytes (the layout test proves the sizes equal the sum the C side expects).
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for OrigDstValue {}
unsafe impl aya::Pod for TupleKey {}
unsafe impl aya::Pod for FqdnKey {}
unsafe impl aya::Pod for FqdnValue {}
unsafe impl aya::Pod for ConfigValue {}

/// An address as the maps hold it: family and four NBO words. IPv4-mapped IPv6 addresses become IPv4, as the eBPF
/// side normalises them.
pub fn ip_words(ip: IpAddr) -> (u8, [u32; 4]) {
    match ip {
        IpAddr::V4(v4) => (FAMILY_V4, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_words(IpAddr::V4(v4));
            }
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (FAMILY_V6, [w(0), w(4), w(8), w(12)])
        }
    }
}

/// The inverse of [`ip_words`]; `None` for an unknown family.
pub fn words_ip(family: u8, ip: [u32; 4]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(ip[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, w) in ip.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_words_round_trip_and_byte_order() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let (f, w) = ip_words(v4);
        assert_eq!(f, FAMILY_V4);
        // The bytes in memory are the address in network order, as the kernel's user_ip4 holds them.
        assert_eq!(w[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(words_ip(f, w), Some(v4));

        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        let (f, w) = ip_words(v6);
        assert_eq!(f, FAMILY_V6);
        assert_eq!(w[3].to_ne_bytes(), [0, 1, 0, 2]);
        assert_eq!(words_ip(f, w), Some(v6));

        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_words(mapped), ip_words(v4));
        assert_eq!(words_ip(9, w), None);
    }
}
