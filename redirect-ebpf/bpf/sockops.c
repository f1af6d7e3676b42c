/* sockops, attached to enrolled pods' cgroups AND to the proxy's cgroup.
 *
 * The proxy's accepted socket has a different cookie than the client socket
 * connect4 recorded, so the original destination is re-keyed twice:
 *  ACTIVE_ESTABLISHED  (client side): cookie entry -> 4-tuple entry
 *  PASSIVE_ESTABLISHED (proxy side):  4-tuple entry -> accepted socket's cookie
 * Both callbacks fire without BPF_SOCK_OPS_*_CB_FLAGS being set. */
#include "lib/redirect.h"

char LICENSE[] SEC("license") = "GPL";

/* sock_ops stores remote_port as a network-order u16 shifted into the upper
 * half on little-endian kernels; accept either placement. */
static __always_inline __u16 tg_remote_port(__u32 raw)
{
	return raw > 0xffff ? (__u16)(raw >> 16) : (__u16)raw;
}

SEC("sockops")
int tg_sockops(struct bpf_sock_ops *skops)
{
	struct tg_tuple_key key = {};
	struct tg_orig_dst *od;
	__u32 local[4] = {}, remote[4] = {};
	__u16 lport, rport;
	__u32 op = skops->op;
	__u32 family = skops->family;
	__u64 cookie;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	/* Read every address field up front, in one basic block: the verifier
	 * rejects ctx loads through a pointer the compiler offset per branch. */
	__u32 l4 = skops->local_ip4, r4 = skops->remote_ip4;
	__u32 l6_0 = skops->local_ip6[0], l6_1 = skops->local_ip6[1];
	__u32 l6_2 = skops->local_ip6[2], l6_3 = skops->local_ip6[3];
	__u32 r6_0 = skops->remote_ip6[0], r6_1 = skops->remote_ip6[1];
	__u32 r6_2 = skops->remote_ip6[2], r6_3 = skops->remote_ip6[3];
	__u32 lp = skops->local_port, rp = skops->remote_port;

	tg_barrier_var(l4);
	tg_barrier_var(r4);
	tg_barrier_var(l6_0);
	tg_barrier_var(l6_1);
	tg_barrier_var(l6_2);
	tg_barrier_var(l6_3);
	tg_barrier_var(r6_0);
	tg_barrier_var(r6_1);
	tg_barrier_var(r6_2);
	tg_barrier_var(r6_3);
	tg_barrier_var(lp);
	tg_barrier_var(rp);

	if (family == AF_INET) {
		local[0] = l4;
		remote[0] = r4;
	} else if (family == AF_INET6) {
		local[0] = l6_0;
		local[1] = l6_1;
		local[2] = l6_2;
		local[3] = l6_3;
		remote[0] = r6_0;
		remote[1] = r6_1;
		remote[2] = r6_2;
		remote[3] = r6_3;
	} else {
		return 1;
	}
	lport = bpf_htons((__u16)lp);
	rport = tg_remote_port(rp);

	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		cookie = bpf_get_socket_cookie(skops);
		od = bpf_map_lookup_elem(&tg_odst_cookie, &cookie);
		if (!od)
			return 1;
		tg_tuple_fill(&key, family, IPPROTO_TCP, local, lport, remote, rport);
		if (tg_is_loopback(key.family, key.dst_ip))
			key.netns_cookie = bpf_get_netns_cookie(skops);
		bpf_map_update_elem(&tg_odst_tuple, &key, od, BPF_ANY);
		return 1;
	}

	tg_tuple_fill(&key, family, IPPROTO_TCP, remote, rport, local, lport);
	if (tg_is_loopback(key.family, key.dst_ip))
		key.netns_cookie = bpf_get_netns_cookie(skops);
	od = bpf_map_lookup_elem(&tg_odst_tuple, &key);
	if (!od)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_update_elem(&tg_odst_cookie, &cookie, od, BPF_ANY);
	return 1;
}
