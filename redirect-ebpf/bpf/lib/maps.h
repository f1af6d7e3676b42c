/* Every map Tollgate's eBPF programs share, with its key and value layout.
 *
 * This is the ONE C declaration of each struct; src/maps.rs mirrors them with
 * #[repr(C)] and the layout test (tests/layout.rs) proves sizes and offsets
 * agree. Rules: fixed-width fields only, explicit padding fields, no bool,
 * and a comment naming the byte order of every multi-byte field.
 * "NBO" = network byte order (big endian), "host" = host byte order.
 *
 * Addresses: IPv4 lives in ip[0] with ip[1..3] = 0 and family = 4; IPv6
 * fills ip[0..3] with family = 6. IPv4-mapped IPv6 addresses are normalised
 * to family 4 before they are used as keys.
 *
 * All maps are pinned by name under the loader's pin root (<root>/maps/<name>)
 * so a proxy restart keeps state. */
#ifndef TG_MAPS_H
#define TG_MAPS_H

#include "common.h"

#define TG_FAMILY_V4 4
#define TG_FAMILY_V6 6

#define TG_DIR_INGRESS 0
#define TG_DIR_EGRESS 1

#define TG_L7_NONE 0
#define TG_L7_HTTP 1
#define TG_L7_KAFKA 2
#define TG_L7_DNS 3

/* ---- ipcache: IP prefix -> identity (LPM trie) ---- */
#define TG_IPCACHE_F_LOCAL 1 /* endpoint lives on this node (TC ingress steering) */

struct tg_ipcache_key {
	__u32 prefixlen; /* host; bits counted from `family` on: 32 + IP prefix length */
	__u8 family;     /* TG_FAMILY_V4 / TG_FAMILY_V6 */
	__u8 pad[3];     /* zero */
	__u32 ip[4];     /* NBO */
};

struct tg_ipcache_value {
	__u32 identity; /* host */
	__u32 flags;    /* host; TG_IPCACHE_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct tg_ipcache_key);
	__type(value, struct tg_ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_ipcache SEC(".maps");

/* ---- policy: {identity, direction, proto, port} -> L7 redirect ----
 * Ingress entries are keyed by the destination's identity, egress entries by
 * the source's. The entry {identity, EGRESS, proto 0, port 0} carries
 * per-identity flags (TG_POLICY_F_FQDN_RESTRICTED). */
#define TG_POLICY_F_FQDN_RESTRICTED 1

struct tg_policy_key {
	__u32 identity;  /* host */
	__u8 direction;  /* TG_DIR_* */
	__u8 proto;      /* IPPROTO_TCP / IPPROTO_UDP; 0 for the flags entry */
	__u16 port;      /* NBO; 0 for the flags entry */
};

struct tg_policy_value {
	__u16 l7_kind;    /* host; TG_L7_* */
	__u16 proxy_port; /* host; 0 = the config map's port for l7_kind */
	__u32 flags;      /* host; TG_POLICY_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct tg_policy_key);
	__type(value, struct tg_policy_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_policy SEC(".maps");

/* ---- endpoints: cgroup id -> enrolled pod ----
 * Written by the loader when a pod's cgroup is enrolled; the sock_addr
 * programs find the connecting pod's identity through it. */
struct tg_endpoint {
	__u32 identity; /* host */
	__u32 flags;    /* host; reserved, zero */
	__u32 ip4;      /* NBO; 0 if none */
	__u32 ip6[4];   /* NBO; zero if none */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64); /* host; cgroup v2 id (inode number of the cgroup directory) */
	__type(value, struct tg_endpoint);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_endpoints SEC(".maps");

/* ---- original destination of a redirected connection ---- */
struct tg_orig_dst {
	__u32 ip[4];         /* NBO */
	__u16 port;          /* NBO */
	__u8 family;         /* TG_FAMILY_* */
	__u8 proto;          /* IPPROTO_* */
	__u32 src_identity;  /* host */
	__u32 dst_identity;  /* host */
	__u16 l7_kind;       /* host; TG_L7_* */
	__u16 proxy_port;    /* host; the proxy listener the flow was sent to */
};

/* by socket cookie (client socket from connect/sendmsg; proxy's accepted socket from sockops) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* host; SO_COOKIE */
	__type(value, struct tg_orig_dst);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_odst_cookie SEC(".maps");

/* by 4-tuple as the CLIENT sees it: src = client, dst = proxy listener. */
struct tg_tuple_key {
	__u32 src_ip[4];     /* NBO */
	__u32 dst_ip[4];     /* NBO */
	__u16 src_port;      /* NBO */
	__u16 dst_port;      /* NBO */
	__u8 family;         /* TG_FAMILY_* */
	__u8 proto;          /* IPPROTO_* */
	__u16 pad;           /* zero */
	__u64 netns_cookie;  /* host; only for loopback destinations (else 0): 127.0.0.1 is per netns */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tg_tuple_key);
	__type(value, struct tg_orig_dst);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_odst_tuple SEC(".maps");

/* ---- toFQDNs: IPs an identity may reach because DNS answered them ---- */
struct tg_fqdn_key {
	__u32 identity; /* host; the source endpoint's identity */
	__u8 family;    /* TG_FAMILY_* */
	__u8 proto;     /* IPPROTO_TCP/UDP the toFQDNs rule allows, or 0 = any (with port 0) */
	__u16 port;     /* NBO; the rule's port, or 0 = any */
	__u32 ip[4];    /* NBO */
};

struct tg_fqdn_value {
	__u64 expires_ns; /* host; CLOCK_BOOTTIME (bpf_ktime_get_boot_ns); 0 = never */
	__u32 flags;      /* host; reserved, zero */
	__u32 pad;        /* zero */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct tg_fqdn_key);
	__type(value, struct tg_fqdn_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_fqdn_allow SEC(".maps");

/* ---- FQDN gate refusals, read by the proxy for DROPPED flow records ---- */
struct tg_fqdn_denial {
	__u32 identity; /* host; the refused endpoint's identity */
	__u8 family;    /* TG_FAMILY_* of ip */
	__u8 proto;     /* IPPROTO_TCP / IPPROTO_UDP */
	__u16 port;     /* NBO; the destination port */
	__u32 ip[4];    /* NBO; the destination */
	__u32 src_ip4;  /* NBO; the endpoint's IPv4 (0 if none) */
	__u32 pad;      /* zero */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_fqdn_denials SEC(".maps");

/* ---- config: one entry, index 0 ---- */
#define TG_CFG_F_ENABLED 1

struct tg_config {
	__u32 flags;        /* host; TG_CFG_F_* (nothing is redirected until ENABLED) */
	__u32 proxy_ip4;    /* NBO; address pods reach the proxy at; 0 = no IPv4 redirect */
	__u32 proxy_ip6[4]; /* NBO; zero = no IPv6 redirect */
	__u32 proxy_mark;   /* host; SO_MARK of the proxy's sockets: never redirected; 0 = none */
	__u32 tproxy_mark;  /* host; skb mark set on steered ingress packets (policy routing) */
	__u16 http_port;    /* host; egress listener for TG_L7_HTTP */
	__u16 kafka_port;   /* host; egress listener for TG_L7_KAFKA */
	__u16 dns_port;     /* host; DNS listener (UDP and TCP) */
	__u16 tproxy_port;  /* host; transparent ingress listener (TC sk_assign) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tg_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_config SEC(".maps");

#endif
