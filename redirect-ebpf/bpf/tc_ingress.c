/* TC ingress classifier on the node side of pod veths (and the uplink):
 * steers TCP flows to local pods whose identity has ingress L7 policy on the
 * destination port into the proxy's transparent listener with bpf_sk_assign,
 * no iptables needed. Packets of flows the proxy already accepted are
 * assigned to the proxy's socket found by their own 4-tuple; other
 * non-SYN packets pass (flows that predate the policy stay untouched).
 * The node must route marked packets locally:
 *   ip rule add fwmark <tproxy_mark> lookup 100
 *   ip route add local 0.0.0.0/0 dev lo table 100
 * IPv4 only so far. */
#include "lib/redirect.h"
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>

char LICENSE[] SEC("license") = "GPL";

SEC("classifier")
int tg_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct tg_ipcache_value *dst;
	struct tg_policy_value *pv;
	struct tg_config *cfg;
	struct bpf_sock *sk;
	struct iphdr *iph;
	struct tcphdr *tcp;
	__u32 ip[4] = {};
	long err;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	cfg = tg_config_get();
	if (!cfg || !cfg->tproxy_port)
		return TC_ACT_OK;
	if (cfg->proxy_mark && skb->mark == cfg->proxy_mark)
		return TC_ACT_OK;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > end || iph->protocol != IPPROTO_TCP || iph->ihl != 5)
		return TC_ACT_OK;
	tcp = (void *)(iph + 1);
	if ((void *)(tcp + 1) > end)
		return TC_ACT_OK;

	ip[0] = iph->daddr;
	dst = tg_ipcache_get(TG_FAMILY_V4, ip);
	if (!dst || !(dst->flags & TG_IPCACHE_F_LOCAL))
		return TC_ACT_OK;
	pv = tg_policy_get(dst->identity, TG_DIR_INGRESS, IPPROTO_TCP, tcp->dest);
	if (!pv || pv->l7_kind == TG_L7_NONE)
		return TC_ACT_OK;

	tuple.ipv4.saddr = iph->saddr;
	tuple.ipv4.daddr = iph->daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* A socket of this very flow in the node namespace can only be
		 * the proxy's (the pod's sockets live in the pod's netns). */
		if (sk->state != BPF_TCP_LISTEN)
			goto assign;
		bpf_sk_release(sk);
	}
	if (!tcp->syn || tcp->ack)
		return TC_ACT_OK;

	tuple.ipv4.daddr = cfg->proxy_ip4 ? cfg->proxy_ip4 : iph->daddr;
	tuple.ipv4.dport = bpf_htons(cfg->tproxy_port);
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
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
