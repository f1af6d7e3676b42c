/* TC ingress classifier on the node side of pod veths (and the uplink):
 * steers TCP flows to local pods whose identity has ingress L7 policy on the
 * destination port into the proxy's transparent listener with bpf_sk_assign,
 * no iptables needed. Packets of flows the proxy already accepted are
 * assigned to the proxy's socket found by their own 4-tuple; other
 * non-SYN packets pass (flows that predate the policy stay untouched).
 * The node must route marked packets locally:
 *   ip rule add fwmark <tproxy_mark> lookup 100
 *   ip route add local 0.0.0.0/0 dev lo table 100      (and the -6 pair)
 * IPv6 packets with extension headers before TCP are not steered. */
#include "lib/redirect.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>

char LICENSE[] SEC("license") = "GPL";

/* The packet's flow, parsed once. Ports NBO. */
struct tg_flow {
	__u8 family;
	__u8 syn_only; /* SYN without ACK: a new connection */
	__u16 dport;
	__u32 daddr[4];
};

static __always_inline int tg_assign(struct __sk_buff *skb, const struct tg_config *cfg,
				     struct bpf_sock_tuple *tuple, __u32 tuple_size,
				     const struct tg_flow *flow)
{
	struct bpf_sock *sk;
	long err;

	sk = bpf_skc_lookup_tcp(skb, tuple, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* A socket of this very flow in the node namespace can only be
		 * the proxy's (the pod's sockets live in the pod's netns). */
		if (sk->state != BPF_TCP_LISTEN)
			goto assign;
		bpf_sk_release(sk);
	}
	if (!flow->syn_only)
		return TC_ACT_OK;

	if (flow->family == TG_FAMILY_V4) {
		tuple->ipv4.daddr = cfg->proxy_ip4 ? cfg->proxy_ip4 : flow->daddr[0];
		tuple->ipv4.dport = bpf_htons(cfg->tproxy_port);
	} else {
		int have6 = cfg->proxy_ip6[0] | cfg->proxy_ip6[1] | cfg->proxy_ip6[2] | cfg->proxy_ip6[3];

		tuple->ipv6.daddr[0] = have6 ? cfg->proxy_ip6[0] : flow->daddr[0];
		tuple->ipv6.daddr[1] = have6 ? cfg->proxy_ip6[1] : flow->daddr[1];
		tuple->ipv6.daddr[2] = have6 ? cfg->proxy_ip6[2] : flow->daddr[2];
		tuple->ipv6.daddr[3] = have6 ? cfg->proxy_ip6[3] : flow->daddr[3];
		tuple->ipv6.dport = bpf_htons(cfg->tproxy_port);
	}
	sk = bpf_skc_lookup_tcp(skb, tuple, tuple_size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err == 0)
		skb->mark = cfg->tproxy_mark;
	return TC_ACT_OK;
}

/* Does the flow's destination have ingress L7 policy and live on this node? */
static __always_inline int tg_wants_proxy(const struct tg_flow *flow)
{
	struct tg_ipcache_value *dst = tg_ipcache_get(flow->family, flow->daddr);
	struct tg_policy_value *pv;

	if (!dst || !(dst->flags & TG_IPCACHE_F_LOCAL))
		return 0;
	pv = tg_policy_get(dst->identity, TG_DIR_INGRESS, IPPROTO_TCP, flow->dport);
	return pv && pv->l7_kind != TG_L7_NONE;
}

SEC("classifier")
int tg_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct tg_flow flow = {};
	struct tg_config *cfg;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	cfg = tg_config_get();
	if (!cfg || !cfg->tproxy_port)
		return TC_ACT_OK;
	if (cfg->proxy_mark && skb->mark == cfg->proxy_mark)
		return TC_ACT_OK;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > end || iph->protocol != IPPROTO_TCP || iph->ihl != 5)
			return TC_ACT_OK;
		tcp = (void *)(iph + 1);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		flow.family = TG_FAMILY_V4;
		flow.daddr[0] = iph->daddr;
		flow.dport = tcp->dest;
		flow.syn_only = tcp->syn && !tcp->ack;
		if (!tg_wants_proxy(&flow))
			return TC_ACT_OK;
		tuple.ipv4.saddr = iph->saddr;
		tuple.ipv4.daddr = iph->daddr;
		tuple.ipv4.sport = tcp->source;
		tuple.ipv4.dport = tcp->dest;
		return tg_assign(skb, cfg, &tuple, sizeof(tuple.ipv4), &flow);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_OK;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		flow.family = TG_FAMILY_V6;
		__builtin_memcpy(flow.daddr, &ip6->daddr, 16);
		flow.dport = tcp->dest;
		flow.syn_only = tcp->syn && !tcp->ack;
		if (!tg_wants_proxy(&flow))
			return TC_ACT_OK;
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, 16);
		tuple.ipv6.sport = tcp->source;
		tuple.ipv6.dport = tcp->dest;
		return tg_assign(skb, cfg, &tuple, sizeof(tuple.ipv6), &flow);
	}
	return TC_ACT_OK;
}
