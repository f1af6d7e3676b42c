//! Proves that src/maps.rs lays out every map key and value exactly as the C compiler lays out bpf/lib/maps.h:
//! build.rs compiles bpf/layout.c (which includes maps.h) for the host, runs it, and leaves its table in OUT_DIR.

use std::mem::{align_of, offset_of, size_of};

use redirect_ebpf::maps::*;

#[derive(Debug)]
pub struct CStruct {
    name: &'static str,
    size: usize,
    align: usize,
    fields: &'static [(&'static str, usize, usize)],
}

include!(concat!(env!("OUT_DIR"), "/layout_c.rs"));

struct RustStruct {
    c_name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<(&'static str, usize, usize)>,
}

/// Size of a field's type, without constructing a value.
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! rust_struct {
    ($c:literal, $t:ty, [$($f:ident),* $(,)?]) => {
        RustStruct {
            c_name: $c,
            size: size_of::<$t>(),
            align: align_of::<$t>(),
            fields: vec![$((stringify!($f), offset_of!($t, $f), field_size(|s: &$t| &s.$f))),*],
        }
    };
}

fn rust_structs() -> Vec<RustStruct> {
    vec![
        rust_struct!("tg_ipcache_key", IpcacheKey, [prefixlen, family, pad, ip]),
        rust_struct!("tg_ipcache_value", IpcacheValue, [identity, flags]),
        rust_struct!(
            "tg_policy_key",
            PolicyKey,
            [identity, direction, proto, port]
        ),
        rust_struct!("tg_policy_value", PolicyValue, [l7_kind, proxy_port, flags]),
        rust_struct!("tg_endpoint", EndpointValue, [identity, flags, ip4, ip6]),
        rust_struct!(
            "tg_orig_dst",
            OrigDstValue,
            [
                ip,
                port,
                family,
                proto,
                src_identity,
                dst_identity,
                l7_kind,
                proxy_port
            ]
        ),
        rust_struct!(
            "tg_tuple_key",
            TupleKey,
            [
                src_ip,
                dst_ip,
                src_port,
                dst_port,
                family,
                proto,
                pad,
                netns_cookie
            ]
        ),
        rust_struct!("tg_fqdn_key", FqdnKey, [identity, family, proto, port, ip]),
        rust_struct!("tg_fqdn_value", FqdnValue, [expires_ns, flags, pad]),
        rust_struct!(
            "tg_fqdn_denial",
            FqdnDenial,
            [identity, family, proto, port, ip, src_ip4, pad]
        ),
        rust_struct!(
            "tg_config",
            ConfigValue,
            [
                flags,
                proxy_ip4,
                proxy_ip6,
                proxy_mark,
                tproxy_mark,
                http_port,
                kafka_port,
                dns_port,
                tproxy_port
            ]
        ),
    ]
}

#[test]
fn every_map_struct_matches_its_c_declaration() {
    let rust = rust_structs();
    assert_eq!(
        rust.len(),
        C_STRUCTS.len(),
        "bpf/layout.c and this test must list the same structs"
    );
    for c in C_STRUCTS {
        let r = rust
            .iter()
            .find(|r| r.c_name == c.name)
            .unwrap_or_else(|| panic!("struct {} has no Rust mirror in src/maps.rs", c.name));
        assert_eq!(
            r.size, c.size,
            "sizeof(struct {}) C={} Rust={}",
            c.name, c.size, r.size
        );
        assert_eq!(r.align, c.align, "alignof(struct {}) differs", c.name);
        assert_eq!(
            r.fields.len(),
            c.fields.len(),
            "struct {}: field count differs (C {:?}, Rust {:?})",
            c.name,
            c.fields,
            r.fields
        );
        for (name, off, size) in c.fields {
            let (_, roff, rsize) = r
                .fields
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{}.{} missing in Rust", c.name, name));
            assert_eq!(
                (roff, rsize),
                (off, size),
                "{}.{}: (offset, size) Rust vs C",
                c.name,
                name
            );
        }
        // No implicit padding: the fields tile the struct (aya::Pod relies on it).
        let covered: usize = c.fields.iter().map(|(_, _, s)| s).sum();
        assert_eq!(covered, c.size, "struct {} has implicit padding", c.name);
    }
}
