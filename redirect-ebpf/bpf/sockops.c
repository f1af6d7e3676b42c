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
	if (family == AF_INET) {
		local[0] = skops->local_ip4;
		remote[0] = skops->remote_ip4;
	} else if (family == AF_INET6) {
		local[0] = skops->local_ip6[0];
		local[1] = skops->local_ip6[1];
		local[2] = skops->local_ip6[2];
		local[3] = skops->local_ip6[3];
		remote[0] = skops->remote_ip6[0];
		remote[1] = skops->remote_ip6[1];
		remote[2] = skops->remote_ip6[2];
		remote[3] = skops->remote_ip6[3];
	} else {
		return 1;
	}
	lport = bpf_htons((__u16)skops->local_port);
	rport = tg_remote_port(skops->remote_port);

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
