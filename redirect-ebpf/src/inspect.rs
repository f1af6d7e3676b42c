//! Read-only view of the pinned redirect state for operators (`tollgate bpf list`, `tollgate status`): every map's
//! fill level, the redirect (policy) map, the FQDN gate, the ipcache, the enrolled endpoints and the pinned links.
//!
//! Opens the pins by path and never writes; no program is loaded. Decoding a raw map entry into the readable form is
//! pure (`*_entry` functions) and tested without a kernel; [`inspect`] only walks the maps.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, LpmTrie, Map, MapData};

use crate::error::RedirectError;
use crate::maps::*;
use crate::model::{Direction, L7Kind, Protocol};
use crate::redirect::IpcacheData;

/// One pinned map and how full it is. `entries` is `None` for maps whose entries cannot be counted (the ring
/// buffer: its capacity is in bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: Option<usize>,
    pub max_entries: u32,
}

/// One entry of the redirect (policy) map, readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectEntry {
    pub identity: u32,
    pub direction: Direction,
    /// `None` for the per-identity flags entry.
    pub protocol: Option<Protocol>,
    pub port: u16,
    /// `None`: no L7 kind (a flags entry, or a port diverted only for authentication).
    pub l7: Option<L7Kind>,
    /// 0 = the config map's listener for the kind.
    pub proxy_port: u16,
    pub fqdn_restricted: bool,
}

/// One IP an identity may reach because DNS answered it (the kernel FQDN gate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnEntry {
    pub identity: u32,
    pub ip: IpAddr,
    /// `None` = any protocol (with port 0 = any port).
    pub protocol: Option<Protocol>,
    pub port: u16,
    /// Time left; `None` = never expires. Zero once expired (garbage collection removes it later).
    pub expires_in: Option<Duration>,
}

/// One ipcache prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcacheEntry {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub identity: u32,
    /// The endpoint lives on this node (TC ingress may steer to it).
    pub local: bool,
}

/// One enrolled pod cgroup: the endpoint entry and the programs pinned on it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CgroupAttachment {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// From `tg_endpoints`; `None` for the proxy's own cgroup (programs, no endpoint).
    pub identity: Option<u32>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// Program names pinned under `links/cg-<id>/`, sorted.
    pub programs: Vec<String>,
}

/// Everything [`inspect`] reads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Inspection {
    pub maps: Vec<MapFill>,
    pub redirects: Vec<RedirectEntry>,
    pub fqdn: Vec<FqdnEntry>,
    pub ipcache: Vec<IpcacheEntry>,
    pub cgroups: Vec<CgroupAttachment>,
    /// TC links pinned under `links/` (`tc-<netns inode>-<ifname>`).
    pub tc_links: Vec<String>,
}

/// Decodes a redirect-map entry; `None` for a direction or protocol the header does not define.
pub fn redirect_entry(key: &PolicyKey, value: &PolicyValue) -> Option<RedirectEntry> {
    let direction = match key.direction {
        DIR_INGRESS => Direction::Ingress,
        DIR_EGRESS => Direction::Egress,
        _ => return None,
    };
    let protocol = match key.proto {
        0 => None,
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => return None,
    };
    let l7 = match value.l7_kind {
        L7_HTTP => Some(L7Kind::Http),
        L7_KAFKA => Some(L7Kind::Kafka),
        L7_DNS => Some(L7Kind::Dns),
        _ => None,
    };
    Some(RedirectEntry {
        identity: key.identity,
        direction,
        protocol,
        port: u16::from_be(key.port),
        l7,
        proxy_port: value.proxy_port,
        fqdn_restricted: value.flags & POLICY_F_FQDN_RESTRICTED != 0,
    })
}

/// Decodes an FQDN-gate entry against `now_boot_ns` (CLOCK_BOOTTIME, as the programs compare it).
pub fn fqdn_entry(key: &FqdnKey, value: &FqdnValue, now_boot_ns: u64) -> Option<FqdnEntry> {
    let protocol = match key.proto {
        0 => None,
        IPPROTO_TCP => Some(Protocol::Tcp),
        IPPROTO_UDP => Some(Protocol::Udp),
        _ => return None,
    };
    Some(FqdnEntry {
        identity: key.identity,
        ip: words_ip(key.family, key.ip)?,
        protocol,
        port: u16::from_be(key.port),
        expires_in: (value.expires_ns != 0)
            .then(|| Duration::from_nanos(value.expires_ns.saturating_sub(now_boot_ns))),
    })
}

/// Decodes an ipcache entry (the LPM prefix length counts from the family byte on: 32 + IP prefix).
fn ipcache_entry(prefixlen: u32, data: &IpcacheData, value: &IpcacheValue) -> Option<IpcacheEntry> {
    Some(IpcacheEntry {
        ip: words_ip(data.family, data.ip)?,
        prefix_len: u8::try_from(prefixlen.checked_sub(32)?).ok()?,
        identity: value.identity,
        local: value.flags & IPCACHE_F_LOCAL != 0,
    })
}

fn open(pin_root: &Path, name: &'static str) -> Result<MapData, RedirectError> {
    let path = pin_root.join("maps").join(name);
    MapData::from_pin(&path).map_err(|e| {
        RedirectError::Invalid(format!(
            "opening pinned map {}: {e}; is the redirect layer loaded with --bpf-pin-root {}?",
            path.display(),
            pin_root.display()
        ))
    })
}

fn fill(
    name: &'static str,
    data: &MapData,
    entries: Option<usize>,
) -> Result<MapFill, RedirectError> {
    let info = data.info().map_err(RedirectError::map(name))?;
    Ok(MapFill {
        name,
        entries,
        max_entries: info.max_entries(),
    })
}

/// Opens a pinned hash (or LRU hash) map as a typed map; returns its fill and its entries.
fn hash_entries<K: aya::Pod, V: aya::Pod>(
    pin_root: &Path,
    name: &'static str,
) -> Result<(MapFill, Vec<(K, V)>), RedirectError> {
    let data = open(pin_root, name)?;
    let max = data.info().map_err(RedirectError::map(name))?.max_entries();
    let map: HashMap<MapData, K, V> =
        HashMap::try_from(Map::from_map_data(data).map_err(RedirectError::map(name))?)
            .map_err(RedirectError::map(name))?;
    // Entries can vanish between the key walk and the lookup (LRU eviction, GC): skip those.
    let entries: Vec<(K, V)> = map.iter().filter_map(Result::ok).collect();
    Ok((
        MapFill {
            name,
            entries: Some(entries.len()),
            max_entries: max,
        },
        entries,
    ))
}

/// Reads everything under `pin_root`.
pub fn inspect(pin_root: &Path) -> Result<Inspection, RedirectError> {
    let mut out = Inspection::default();
    let now = crate::redirect::boottime_ns();

    let data = open(pin_root, MAP_IPCACHE)?;
    let max = data
        .info()
        .map_err(RedirectError::map(MAP_IPCACHE))?
        .max_entries();
    let trie: LpmTrie<MapData, IpcacheData, IpcacheValue> =
        LpmTrie::try_from(Map::from_map_data(data).map_err(RedirectError::map(MAP_IPCACHE))?)
            .map_err(RedirectError::map(MAP_IPCACHE))?;
    let ipcache: Vec<_> = trie.iter().filter_map(Result::ok).collect();
    out.maps.push(MapFill {
        name: MAP_IPCACHE,
        entries: Some(ipcache.len()),
        max_entries: max,
    });
    out.ipcache = ipcache
        .iter()
        .filter_map(|(k, v)| ipcache_entry(k.prefix_len(), &k.data(), v))
        .collect();

    let (f, policy) = hash_entries::<PolicyKey, PolicyValue>(pin_root, MAP_POLICY)?;
    out.maps.push(f);
    out.redirects = policy
        .iter()
        .filter_map(|(k, v)| redirect_entry(k, v))
        .collect();
    out.redirects
        .sort_by_key(|r| (r.identity, r.direction, r.protocol, r.port));

    let (f, endpoints) = hash_entries::<u64, EndpointValue>(pin_root, MAP_ENDPOINTS)?;
    out.maps.push(f);
    // Original-destination records: only their number matters to an operator.
    out.maps
        .push(hash_entries::<u64, OrigDstValue>(pin_root, MAP_ODST_COOKIE)?.0);
    out.maps
        .push(hash_entries::<TupleKey, OrigDstValue>(pin_root, MAP_ODST_TUPLE)?.0);

    let (f, fqdn) = hash_entries::<FqdnKey, FqdnValue>(pin_root, MAP_FQDN_ALLOW)?;
    out.maps.push(f);
    out.fqdn = fqdn
        .iter()
        .filter_map(|(k, v)| fqdn_entry(k, v, now))
        .collect();
    out.fqdn
        .sort_by_key(|e| (e.identity, e.ip, e.protocol, e.port));

    let data = open(pin_root, MAP_CONFIG)?;
    out.maps.push(fill(MAP_CONFIG, &data, Some(1))?);
    let data = open(pin_root, MAP_FQDN_DENIALS)?;
    out.maps.push(fill(MAP_FQDN_DENIALS, &data, None)?);

    out.cgroups = attachments(pin_root, &endpoints);
    out.tc_links = tc_links(pin_root);
    Ok(out)
}

fn attachments(pin_root: &Path, endpoints: &[(u64, EndpointValue)]) -> Vec<CgroupAttachment> {
    let mut by_id: std::collections::BTreeMap<u64, CgroupAttachment> = endpoints
        .iter()
        .map(|(id, ep)| {
            let ipv4 = (ep.ip4 != 0).then(|| std::net::Ipv4Addr::from(ep.ip4.to_ne_bytes()));
            (
                *id,
                CgroupAttachment {
                    cgroup_id: *id,
                    identity: Some(ep.identity),
                    ipv4,
                    programs: Vec::new(),
                },
            )
        })
        .collect();
    for entry in std::fs::read_dir(pin_root.join("links"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name.strip_prefix("cg-").and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let mut programs: Vec<String> = std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|p| p.file_name().to_string_lossy().to_string())
            .collect();
        programs.sort();
        let a = by_id.entry(id).or_insert_with(|| CgroupAttachment {
            cgroup_id: id,
            ..Default::default()
        });
        a.programs = programs;
    }
    by_id.into_values().collect()
}

fn tc_links(pin_root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(pin_root.join("links"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("tc-"))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_entries_decode_port_order_kind_and_flags() {
        let key = PolicyKey {
            identity: 300,
            direction: DIR_INGRESS,
            proto: IPPROTO_TCP,
            port: 8080u16.to_be(),
        };
        let value = PolicyValue {
            l7_kind: L7_KAFKA,
            proxy_port: 0,
            flags: 0,
        };
        let e = redirect_entry(&key, &value).unwrap();
        assert_eq!(
            (
                e.identity,
                e.direction,
                e.protocol,
                e.port,
                e.l7,
                e.fqdn_restricted
            ),
            (
                300,
                Direction::Ingress,
                Some(Protocol::Tcp),
                8080,
                Some(L7Kind::Kafka),
                false
            )
        );
        let flags = PolicyKey {
            identity: 301,
            direction: DIR_EGRESS,
            proto: 0,
            port: 0,
        };
        let e = redirect_entry(
            &flags,
            &PolicyValue {
                l7_kind: L7_NONE,
                proxy_port: 0,
                flags: POLICY_F_FQDN_RESTRICTED,
            },
        )
        .unwrap();
        assert_eq!((e.protocol, e.l7, e.fqdn_restricted), (None, None, true));
        // Garbage from a foreign writer is skipped, not shown as something it is not.
        let bad = PolicyKey {
            direction: 7,
            ..key
        };
        assert_eq!(redirect_entry(&bad, &value), None);
    }

    #[test]
    fn fqdn_entries_show_time_left_and_never() {
        let (family, ip) = ip_words("192.0.2.7".parse().unwrap());
        let key = FqdnKey {
            identity: 260,
            family,
            proto: IPPROTO_TCP,
            port: 443u16.to_be(),
            ip,
        };
        let value = FqdnValue {
            expires_ns: 5_000_000_000,
            flags: 0,
            pad: 0,
        };
        let e = fqdn_entry(&key, &value, 2_000_000_000).unwrap();
        assert_eq!(e.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!((e.port, e.protocol), (443, Some(Protocol::Tcp)));
        assert_eq!(e.expires_in, Some(Duration::from_secs(3)));
        // Expired: zero left, not a wrapped-around huge number.
        assert_eq!(
            fqdn_entry(&key, &value, 9_000_000_000).unwrap().expires_in,
            Some(Duration::ZERO)
        );
        let never = FqdnValue {
            expires_ns: 0,
            ..value
        };
        assert_eq!(fqdn_entry(&key, &never, 1).unwrap().expires_in, None);
    }

    #[test]
    fn ipcache_prefix_counts_from_the_family_byte() {
        let (family, ip) = ip_words("10.0.5.20".parse().unwrap());
        let data = IpcacheData {
            family,
            pad: [0; 3],
            ip,
        };
        let v = IpcacheValue {
            identity: 257,
            flags: IPCACHE_F_LOCAL,
        };
        let e = ipcache_entry(64, &data, &v).unwrap();
        assert_eq!((e.prefix_len, e.identity, e.local), (32, 257, true));
        assert_eq!(ipcache_entry(8, &data, &v), None);
    }
}
