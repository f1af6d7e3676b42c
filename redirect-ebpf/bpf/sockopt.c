/* cgroup/getsockopt, attached to the proxy's cgroup: answers SO_ORIGINAL_DST
 * (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6) for the proxy's accepted
 * sockets from the 4-tuple map, as iptables REDIRECT would. Everything else
 * passes through untouched. */
#include "lib/redirect.h"

char LICENSE[] SEC("license") = "GPL";

/* struct sockaddr_in / sockaddr_in6, declared here to stay libc-free. */
struct tg_sockaddr_in {
	__u16 family;  /* host */
	__u16 port;    /* NBO */
	__u32 addr;    /* NBO */
	__u8 zero[8];
};

struct tg_sockaddr_in6 {
	__u16 family;   /* host */
	__u16 port;     /* NBO */
	__u32 flowinfo; /* NBO */
	__u32 addr[4];  /* NBO */
	__u32 scope_id; /* host */
};

SEC("cgroup/getsockopt")
int tg_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct tg_tuple_key key = {};
	struct tg_orig_dst *od;
	__u32 local[4] = {}, peer[4] = {};
	__u32 family;
	__u16 src_port, dst_port;
	__u8 l4proto;

	if (ctx->optname != TG_SO_ORIGINAL_DST)
		return 1;
	if (ctx->level != TG_SOL_IP && ctx->level != TG_SOL_IPV6)
		return 1;
	if (!sk)
		return 1;
	family = sk->family;
	{
		/* One basic block of loads, pinned in registers (see tg_barrier_var). */
		__u32 s4 = sk->src_ip4, d4 = sk->dst_ip4;
		__u32 s6_0 = sk->src_ip6[0], s6_1 = sk->src_ip6[1], s6_2 = sk->src_ip6[2], s6_3 = sk->src_ip6[3];
		__u32 d6_0 = sk->dst_ip6[0], d6_1 = sk->dst_ip6[1], d6_2 = sk->dst_ip6[2], d6_3 = sk->dst_ip6[3];
		__u32 sp = sk->src_port, proto = sk->protocol;
		__u16 dp = sk->dst_port;

		tg_barrier_var(s4);
		tg_barrier_var(d4);
		tg_barrier_var(s6_0);
		tg_barrier_var(s6_1);
		tg_barrier_var(s6_2);
		tg_barrier_var(s6_3);
		tg_barrier_var(d6_0);
		tg_barrier_var(d6_1);
		tg_barrier_var(d6_2);
		tg_barrier_var(d6_3);
		tg_barrier_var(sp);
		tg_barrier_var(dp);
		tg_barrier_var(proto);
		if (family == AF_INET) {
			local[0] = s4;
			peer[0] = d4;
		} else if (family == AF_INET6) {
			local[0] = s6_0;
			local[1] = s6_1;
			local[2] = s6_2;
			local[3] = s6_3;
			peer[0] = d6_0;
			peer[1] = d6_1;
			peer[2] = d6_2;
			peer[3] = d6_3;
		} else {
			return 1;
		}
		src_port = dp;
		dst_port = bpf_htons((__u16)sp);
		l4proto = (__u8)proto;
	}
	/* The accepted socket's peer is the client: it is the key's source. */
	tg_tuple_fill(&key, family, l4proto, peer, src_port, local, dst_port);
	if (tg_is_loopback(key.family, key.dst_ip))
		key.netns_cookie = bpf_get_netns_cookie(ctx);
	od = bpf_map_lookup_elem(&tg_odst_tuple, &key);
	if (!od)
		return 1;

	if (ctx->level == TG_SOL_IP) {
		struct tg_sockaddr_in *sin = ctx->optval;

		if (od->family != TG_FAMILY_V4)
			return 1;
		if ((void *)(sin + 1) > ctx->optval_end)
			return 1;
		sin->family = AF_INET;
		sin->port = od->port;
		sin->addr = od->ip[0];
		__builtin_memset(sin->zero, 0, sizeof(sin->zero));
		ctx->optlen = sizeof(*sin);
	} else {
		struct tg_sockaddr_in6 *sin6 = ctx->optval;

		if ((void *)(sin6 + 1) > ctx->optval_end)
			return 1;
		sin6->family = AF_INET6;
		sin6->port = od->port;
		sin6->flowinfo = 0;
		sin6->scope_id = 0;
		if (od->family == TG_FAMILY_V4) {
			sin6->addr[0] = 0;
			sin6->addr[1] = 0;
			sin6->addr[2] = bpf_htonl(0x0000ffff);
			sin6->addr[3] = od->ip[0];
		} else {
			sin6->addr[0] = od->ip[0];
			sin6->addr[1] = od->ip[1];
			sin6->addr[2] = od->ip[2];
			sin6->addr[3] = od->ip[3];
		}
		ctx->optlen = sizeof(*sin6);
	}
	ctx->retval = 0;
	return 1;
}
