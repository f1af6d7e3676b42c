/* cgroup_skb/egress, attached to enrolled pods' cgroups: records UDP flows
 * redirected to the DNS listener by the 4-tuple actually on the wire.
 *
 * Needed for CONNECTED UDP sockets (glibc's resolver connects): connect4/6
 * runs before the kernel picks the source port, and send() on a connected
 * socket never runs the sendmsg hooks, so only the first packet tells us the
 * tuple the DNS listener will see. It also corrects the source address the
 * sendmsg hook had to guess. Never drops anything. */
#include "lib/redirect.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

char LICENSE[] SEC("license") = "GPL";

#define TG_SKB_PASS 1

static __always_inline void tg_record(struct __sk_buff *skb, struct tg_tuple_key *key,
				      const struct tg_orig_dst *od)
{
	struct tg_orig_dst *have = bpf_map_lookup_elem(&tg_odst_tuple, key);

	/* One write per flow, not per packet. */
	if (have && have->port == od->port && have->ip[0] == od->ip[0] && have->ip[3] == od->ip[3])
		return;
	bpf_map_update_elem(&tg_odst_tuple, key, od, BPF_ANY);
}

SEC("cgroup_skb/egress")
int tg_udp_egress(struct __sk_buff *skb)
{
	struct tg_config *cfg = tg_config_get();
	struct tg_tuple_key key = {};
	struct tg_orig_dst *od;
	struct udphdr udp;
	__u64 cookie;

	if (!cfg)
		return TG_SKB_PASS;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (!cfg->proxy_ip4 || bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)))
			return TG_SKB_PASS;
		if (ip.protocol != IPPROTO_UDP || ip.daddr != cfg->proxy_ip4 || ip.ihl != 5)
			return TG_SKB_PASS;
		if (bpf_skb_load_bytes(skb, sizeof(ip), &udp, sizeof(udp)))
			return TG_SKB_PASS;
		key.family = TG_FAMILY_V4;
		key.src_ip[0] = ip.saddr;
		key.dst_ip[0] = ip.daddr;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)))
			return TG_SKB_PASS;
		if (ip6.nexthdr != IPPROTO_UDP)
			return TG_SKB_PASS;
		__builtin_memcpy(key.src_ip, &ip6.saddr, 16);
		__builtin_memcpy(key.dst_ip, &ip6.daddr, 16);
		if (key.dst_ip[0] != cfg->proxy_ip6[0] || key.dst_ip[1] != cfg->proxy_ip6[1] ||
		    key.dst_ip[2] != cfg->proxy_ip6[2] || key.dst_ip[3] != cfg->proxy_ip6[3] ||
		    !(cfg->proxy_ip6[0] | cfg->proxy_ip6[1] | cfg->proxy_ip6[2] | cfg->proxy_ip6[3]))
			return TG_SKB_PASS;
		if (bpf_skb_load_bytes(skb, sizeof(ip6), &udp, sizeof(udp)))
			return TG_SKB_PASS;
		key.family = TG_FAMILY_V6;
	} else {
		return TG_SKB_PASS;
	}
	cookie = bpf_get_socket_cookie(skb);
	od = bpf_map_lookup_elem(&tg_odst_cookie, &cookie);
	if (!od || od->proto != IPPROTO_UDP || udp.dest != bpf_htons(od->proxy_port))
		return TG_SKB_PASS;
	key.proto = IPPROTO_UDP;
	key.src_port = udp.source;
	key.dst_port = udp.dest;
	/* Loopback proxies need the netns cookie in the key; the sendmsg hooks
	 * record those (cgroup_skb has no netns cookie helper). */
	if (tg_is_loopback(key.family, key.dst_ip))
		return TG_SKB_PASS;
	tg_record(skb, &key, od);
	return TG_SKB_PASS;
}
