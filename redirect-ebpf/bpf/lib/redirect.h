/* The redirect decision shared by the sock_addr programs (connect, sendmsg)
 * and the helpers that build map keys. Everything here is inline: each
 * program object carries its own copy, the maps are shared through pins. */
#ifndef TG_REDIRECT_H
#define TG_REDIRECT_H

#include "maps.h"

/* Deepest cgroup level searched for an enrolled ancestor (pods nest their
 * containers a few levels below the pod cgroup). */
#define TG_MAX_CGROUP_LEVEL 12

static __always_inline struct tg_config *tg_config_get(void)
{
	__u32 zero = 0;
	struct tg_config *cfg = bpf_map_lookup_elem(&tg_config, &zero);

	if (!cfg || !(cfg->flags & TG_CFG_F_ENABLED))
		return 0;
	return cfg;
}

/* The enrolled pod the current task belongs to: its own cgroup, or the
 * deepest enrolled ancestor (containers live below the pod cgroup). */
static __always_inline struct tg_endpoint *tg_current_endpoint(void)
{
	struct tg_endpoint *found = 0, *ep;
	__u64 id = bpf_get_current_cgroup_id();
	int level;

	ep = bpf_map_lookup_elem(&tg_endpoints, &id);
	if (ep)
		return ep;
#pragma unroll
	for (level = 1; level <= TG_MAX_CGROUP_LEVEL; level++) {
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		ep = bpf_map_lookup_elem(&tg_endpoints, &id);
		if (ep)
			found = ep;
	}
	return found;
}

static __always_inline int tg_is_v4_mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int tg_is_loopback(__u8 family, const __u32 ip[4])
{
	if (family == TG_FAMILY_V4)
		return (bpf_ntohl(ip[0]) >> 24) == 127;
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline struct tg_ipcache_value *tg_ipcache_get(__u8 family, const __u32 ip[4])
{
	struct tg_ipcache_key key = {};

	key.family = family;
	key.prefixlen = 32 + (family == TG_FAMILY_V4 ? 32 : 128);
	key.ip[0] = ip[0];
	key.ip[1] = ip[1];
	key.ip[2] = ip[2];
	key.ip[3] = ip[3];
	return bpf_map_lookup_elem(&tg_ipcache, &key);
}

/* Unknown addresses are "the world", like the policy model's EndpointTable. */
static __always_inline __u32 tg_identity_of(__u8 family, const __u32 ip[4])
{
	struct tg_ipcache_value *v = tg_ipcache_get(family, ip);

	return v ? v->identity : TG_ID_WORLD;
}

static __always_inline struct tg_policy_value *
tg_policy_get(__u32 identity, __u8 direction, __u8 proto, __u16 port_nbo)
{
	struct tg_policy_key key = {};

	key.identity = identity;
	key.direction = direction;
	key.proto = proto;
	key.port = port_nbo;
	return bpf_map_lookup_elem(&tg_policy, &key);
}

static __always_inline __u16 tg_kind_port(const struct tg_config *cfg, __u16 kind)
{
	switch (kind) {
	case TG_L7_HTTP:
		return cfg->http_port;
	case TG_L7_KAFKA:
		return cfg->kafka_port;
	case TG_L7_DNS:
		return cfg->dns_port;
	}
	return 0;
}

/* FQDN gate: an identity whose egress policy is FQDN-restricted may only
 * reach out-of-cluster IPs that DNS answers allowed. Returns 1 = allowed. */
static __always_inline int tg_fqdn_allowed(__u32 src_id, __u32 dst_id, __u8 family, const __u32 ip[4],
					   __u8 proto, __u16 port_nbo)
{
	struct tg_policy_value *flags = tg_policy_get(src_id, TG_DIR_EGRESS, 0, 0);
	struct tg_fqdn_key key = {};
	struct tg_fqdn_value *v;

	if (!flags || !(flags->flags & TG_POLICY_F_FQDN_RESTRICTED))
		return 1;
	/* Only out-of-cluster destinations are gated; in-cluster traffic is
	 * governed by identity-based rules in the proxy. */
	if (dst_id >= TG_ID_FIRST_ALLOCATED || dst_id == TG_ID_HOST)
		return 1;
	/* Loopback inside the pod never leaves it. */
	if (tg_is_loopback(family, ip))
		return 1;
	key.identity = src_id;
	key.family = family;
	key.ip[0] = ip[0];
	key.ip[1] = ip[1];
	key.ip[2] = ip[2];
	key.ip[3] = ip[3];
	/* The rule's port first, then an any-port entry. */
	key.proto = proto;
	key.port = port_nbo;
	v = bpf_map_lookup_elem(&tg_fqdn_allow, &key);
	if (!v) {
		key.proto = 0;
		key.port = 0;
		v = bpf_map_lookup_elem(&tg_fqdn_allow, &key);
	}
	if (!v)
		return 0;
	if (v->expires_ns && v->expires_ns < bpf_ktime_get_boot_ns())
		return 0;
	return 1;
}

/* Decides whether a flow to (ip, port) needs the proxy. Fills `od` and
 * returns the proxy port (host order), or 0 for "leave it alone". */
static __always_inline __u16 tg_decide(const struct tg_config *cfg, __u32 src_id, __u32 dst_id,
				       __u8 family, const __u32 ip[4], __u16 port_nbo, __u8 proto,
				       struct tg_orig_dst *od)
{
	struct tg_policy_value *pv;
	__u16 port;

	/* The destination's ingress L7 rules first, then the source's egress. */
	pv = tg_policy_get(dst_id, TG_DIR_INGRESS, proto, port_nbo);
	if (!pv || pv->l7_kind == TG_L7_NONE)
		pv = tg_policy_get(src_id, TG_DIR_EGRESS, proto, port_nbo);
	if (!pv || pv->l7_kind == TG_L7_NONE)
		return 0;
	port = pv->proxy_port ? pv->proxy_port : tg_kind_port(cfg, pv->l7_kind);
	if (!port)
		return 0;
	od->ip[0] = ip[0];
	od->ip[1] = ip[1];
	od->ip[2] = ip[2];
	od->ip[3] = ip[3];
	od->port = port_nbo;
	od->family = family;
	od->proto = proto;
	od->src_identity = src_id;
	od->dst_identity = dst_id;
	od->l7_kind = pv->l7_kind;
	od->proxy_port = port;
	return port;
}

/* A socket the proxy owns (its SO_MARK) is never redirected. */
static __always_inline int tg_is_proxy_socket(const struct tg_config *cfg, struct bpf_sock *sk)
{
	return cfg->proxy_mark && sk && sk->mark == cfg->proxy_mark;
}

/* Fills a tuple key from both ends of a TCP/UDP socket as seen by the CLIENT
 * (src = client, dst = proxy listener); IPv4-mapped IPv6 becomes family 4. */
static __always_inline void tg_tuple_fill(struct tg_tuple_key *key, __u16 sk_family, __u8 proto,
					  const __u32 src[4], __u16 src_port_nbo,
					  const __u32 dst[4], __u16 dst_port_nbo)
{
	key->proto = proto;
	key->src_port = src_port_nbo;
	key->dst_port = dst_port_nbo;
	if (sk_family == AF_INET) {
		key->family = TG_FAMILY_V4;
		key->src_ip[0] = src[0];
		key->dst_ip[0] = dst[0];
	} else if (tg_is_v4_mapped(src) && tg_is_v4_mapped(dst)) {
		key->family = TG_FAMILY_V4;
		key->src_ip[0] = src[3];
		key->dst_ip[0] = dst[3];
	} else {
		key->family = TG_FAMILY_V6;
		key->src_ip[0] = src[0];
		key->src_ip[1] = src[1];
		key->src_ip[2] = src[2];
		key->src_ip[3] = src[3];
		key->dst_ip[0] = dst[0];
		key->dst_ip[1] = dst[1];
		key->dst_ip[2] = dst[2];
		key->dst_ip[3] = dst[3];
	}
}

#endif
