/* cgroup sock_addr programs, attached to enrolled pods' cgroups:
 *  connect4/6     redirect L7-policy flows to the proxy, record the original
 *                 destination by socket cookie; FQDN gate (EPERM)
 *  sendmsg4/6     the same for unconnected UDP (DNS), also recorded by 4-tuple
 *  recvmsg4/6     replies from the DNS listener appear to come from the
 *                 original resolver
 *  getpeername4/6 the client keeps seeing its original peer */
#include "lib/redirect.h"

char LICENSE[] SEC("license") = "GPL";

/* Tells the proxy about a connect the FQDN gate refused (best effort: a full
 * ring drops the report, never the verdict). */
static __always_inline void tg_report_fqdn_denial(struct bpf_sock_addr *ctx, const struct tg_endpoint *ep,
						  __u32 src_id, __u8 family, const __u32 ip[4])
{
	struct tg_fqdn_denial ev = {};

	ev.identity = src_id;
	ev.family = family;
	ev.proto = (__u8)ctx->protocol;
	ev.port = (__u16)ctx->user_port;
	ev.ip[0] = ip[0];
	ev.ip[1] = ip[1];
	ev.ip[2] = ip[2];
	ev.ip[3] = ip[3];
	ev.src_ip4 = ep->ip4;
	bpf_ringbuf_output(&tg_fqdn_denials, &ev, sizeof(ev), 0);
}

/* Common part of connect and sendmsg. `ip`/`family` is the destination as
 * normalised (IPv4-mapped -> family 4). Returns the proxy port (host order),
 * 0 to leave the flow alone, or -1 to refuse it. */
static __always_inline int tg_redirect(struct bpf_sock_addr *ctx, const struct tg_config *cfg,
				       __u8 family, const __u32 ip[4], struct tg_orig_dst *od)
{
	struct tg_endpoint *ep;
	__u32 src_id, dst_id;
	__u16 port = (__u16)ctx->user_port;
	int port_out;
	__u8 proto = (__u8)ctx->protocol;

	if (tg_is_proxy_socket(cfg, ctx->sk))
		return 0;
	ep = tg_current_endpoint();
	if (!ep)
		return 0;
	src_id = ep->identity;
	dst_id = tg_identity_of(family, ip);
	port_out = tg_decide(cfg, src_id, dst_id, family, ip, port, proto, od);
	/* Flows with L7 policy go to the proxy, which enforces toFQDNs itself
	 * (and must see DNS to learn names); the kernel gate covers the rest. */
	if (port_out && (proto == IPPROTO_TCP || od->l7_kind == TG_L7_DNS))
		return port_out;
	if (!tg_fqdn_allowed(src_id, dst_id, family, ip, proto, (__u16)ctx->user_port)) {
		tg_report_fqdn_denial(ctx, ep, src_id, family, ip);
		return -1;
	}
	return 0;
}

/* Records a UDP flow by the 4-tuple the proxy's DNS listener will see, so it
 * can find the original resolver and the source identity of a datagram. */
static __always_inline void tg_record_udp_tuple(struct bpf_sock_addr *ctx, __u8 family,
						const __u32 src[4], const __u32 proxy[4],
						__u16 proxy_port, const struct tg_orig_dst *od)
{
	struct tg_tuple_key key = {};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || !sk->src_port)
		return;
	key.family = family;
	key.proto = IPPROTO_UDP;
	key.src_ip[0] = src[0];
	key.src_ip[1] = src[1];
	key.src_ip[2] = src[2];
	key.src_ip[3] = src[3];
	key.dst_ip[0] = proxy[0];
	key.dst_ip[1] = proxy[1];
	key.dst_ip[2] = proxy[2];
	key.dst_ip[3] = proxy[3];
	key.src_port = bpf_htons((__u16)sk->src_port);
	key.dst_port = bpf_htons(proxy_port);
	if (tg_is_loopback(family, proxy))
		key.netns_cookie = bpf_get_netns_cookie(ctx);
	bpf_map_update_elem(&tg_odst_tuple, &key, od, BPF_ANY);
}

static __always_inline int tg_addr4(struct bpf_sock_addr *ctx, int is_sendmsg)
{
	struct tg_config *cfg = tg_config_get();
	struct tg_orig_dst od = {};
	__u32 ip[4] = { ctx->user_ip4, 0, 0, 0 };
	__u64 cookie;
	int port;

	if (!cfg || !cfg->proxy_ip4)
		return TG_ALLOW;
	port = tg_redirect(ctx, cfg, TG_FAMILY_V4, ip, &od);
	if (port < 0)
		return TG_REJECT;
	if (port == 0)
		return TG_ALLOW;
	/* sendmsg only carries UDP; only DNS is proxied over UDP. */
	if (od.proto == IPPROTO_UDP && od.l7_kind != TG_L7_DNS)
		return TG_ALLOW;
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&tg_odst_cookie, &cookie, &od, BPF_ANY);
	if (od.proto == IPPROTO_UDP) {
		__u32 proxy[4] = { cfg->proxy_ip4, 0, 0, 0 };
		__u32 src[4] = { 0, 0, 0, 0 };
		struct tg_endpoint *ep = tg_current_endpoint();

		if (is_sendmsg)
			src[0] = ctx->msg_src_ip4;
		if (!src[0] && ctx->sk)
			src[0] = ctx->sk->src_ip4;
		if (!src[0])
			src[0] = tg_is_loopback(TG_FAMILY_V4, proxy) ? bpf_htonl(0x7f000001) : (ep ? ep->ip4 : 0);
		tg_record_udp_tuple(ctx, TG_FAMILY_V4, src, proxy, (__u16)port, &od);
	}
	ctx->user_ip4 = cfg->proxy_ip4;
	ctx->user_port = bpf_htons((__u16)port);
	return TG_ALLOW;
}

static __always_inline int tg_addr6(struct bpf_sock_addr *ctx, int is_sendmsg)
{
	struct tg_config *cfg = tg_config_get();
	struct tg_orig_dst od = {};
	__u32 ip[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
	__u32 proxy[4] = {};
	__u8 family = TG_FAMILY_V6;
	__u64 cookie;
	int port;

	if (!cfg)
		return TG_ALLOW;
	if (tg_is_v4_mapped(ip)) {
		/* A dual-stack socket talking IPv4: decide as IPv4, answer mapped. */
		family = TG_FAMILY_V4;
		ip[0] = ip[3];
		ip[1] = ip[2] = ip[3] = 0;
		if (!cfg->proxy_ip4)
			return TG_ALLOW;
		proxy[2] = bpf_htonl(0x0000ffff);
		proxy[3] = cfg->proxy_ip4;
	} else {
		proxy[0] = cfg->proxy_ip6[0];
		proxy[1] = cfg->proxy_ip6[1];
		proxy[2] = cfg->proxy_ip6[2];
		proxy[3] = cfg->proxy_ip6[3];
		if (!(proxy[0] | proxy[1] | proxy[2] | proxy[3]))
			return TG_ALLOW;
	}
	port = tg_redirect(ctx, cfg, family, ip, &od);
	if (port < 0)
		return TG_REJECT;
	if (port == 0)
		return TG_ALLOW;
	if (od.proto == IPPROTO_UDP && od.l7_kind != TG_L7_DNS)
		return TG_ALLOW;
	cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&tg_odst_cookie, &cookie, &od, BPF_ANY);
	if (od.proto == IPPROTO_UDP) {
		struct tg_endpoint *ep = tg_current_endpoint();
		__u32 src[4] = {};

		if (family == TG_FAMILY_V4) {
			__u32 p4[4] = { cfg->proxy_ip4, 0, 0, 0 };

			if (is_sendmsg)
				src[0] = ctx->msg_src_ip6[3];
			if (!src[0])
				src[0] = tg_is_loopback(TG_FAMILY_V4, p4) ? bpf_htonl(0x7f000001) : (ep ? ep->ip4 : 0);
			tg_record_udp_tuple(ctx, TG_FAMILY_V4, src, p4, (__u16)port, &od);
		} else {
			if (is_sendmsg) {
				src[0] = ctx->msg_src_ip6[0];
				src[1] = ctx->msg_src_ip6[1];
				src[2] = ctx->msg_src_ip6[2];
				src[3] = ctx->msg_src_ip6[3];
			}
			if (!(src[0] | src[1] | src[2] | src[3])) {
				if (tg_is_loopback(TG_FAMILY_V6, proxy)) {
					src[3] = bpf_htonl(1);
				} else if (ep) {
					src[0] = ep->ip6[0];
					src[1] = ep->ip6[1];
					src[2] = ep->ip6[2];
					src[3] = ep->ip6[3];
				}
			}
			tg_record_udp_tuple(ctx, TG_FAMILY_V6, src, proxy, (__u16)port, &od);
		}
	}
	ctx->user_ip6[0] = proxy[0];
	ctx->user_ip6[1] = proxy[1];
	ctx->user_ip6[2] = proxy[2];
	ctx->user_ip6[3] = proxy[3];
	ctx->user_port = bpf_htons((__u16)port);
	return TG_ALLOW;
}

SEC("cgroup/connect4")
int tg_connect4(struct bpf_sock_addr *ctx)
{
	return tg_addr4(ctx, 0);
}

SEC("cgroup/connect6")
int tg_connect6(struct bpf_sock_addr *ctx)
{
	return tg_addr6(ctx, 0);
}

SEC("cgroup/sendmsg4")
int tg_sendmsg4(struct bpf_sock_addr *ctx)
{
	return tg_addr4(ctx, 1);
}

SEC("cgroup/sendmsg6")
int tg_sendmsg6(struct bpf_sock_addr *ctx)
{
	return tg_addr6(ctx, 1);
}

/* Peer rewrite back to the original destination, for recvmsg (datagram
 * source) and getpeername. Only when the address shown is the proxy's. */
static __always_inline int tg_unredirect4(struct bpf_sock_addr *ctx)
{
	struct tg_config *cfg = tg_config_get();
	struct tg_orig_dst *od;
	__u64 cookie;

	if (!cfg)
		return TG_ALLOW;
	cookie = bpf_get_socket_cookie(ctx);
	od = bpf_map_lookup_elem(&tg_odst_cookie, &cookie);
	if (!od || od->family != TG_FAMILY_V4)
		return TG_ALLOW;
	if (ctx->user_ip4 != cfg->proxy_ip4 || (__u16)ctx->user_port != bpf_htons(od->proxy_port))
		return TG_ALLOW;
	ctx->user_ip4 = od->ip[0];
	ctx->user_port = od->port;
	return TG_ALLOW;
}

static __always_inline int tg_unredirect6(struct bpf_sock_addr *ctx)
{
	struct tg_config *cfg = tg_config_get();
	struct tg_orig_dst *od;
	__u32 shown[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
	__u64 cookie;

	if (!cfg)
		return TG_ALLOW;
	cookie = bpf_get_socket_cookie(ctx);
	od = bpf_map_lookup_elem(&tg_odst_cookie, &cookie);
	if (!od || (__u16)ctx->user_port != bpf_htons(od->proxy_port))
		return TG_ALLOW;
	if (od->family == TG_FAMILY_V4) {
		if (!tg_is_v4_mapped(shown) || shown[3] != cfg->proxy_ip4)
			return TG_ALLOW;
		ctx->user_ip6[3] = od->ip[0];
	} else {
		if (shown[0] != cfg->proxy_ip6[0] || shown[1] != cfg->proxy_ip6[1] ||
		    shown[2] != cfg->proxy_ip6[2] || shown[3] != cfg->proxy_ip6[3])
			return TG_ALLOW;
		ctx->user_ip6[0] = od->ip[0];
		ctx->user_ip6[1] = od->ip[1];
		ctx->user_ip6[2] = od->ip[2];
		ctx->user_ip6[3] = od->ip[3];
	}
	ctx->user_port = od->port;
	return TG_ALLOW;
}

SEC("cgroup/recvmsg4")
int tg_recvmsg4(struct bpf_sock_addr *ctx)
{
	return tg_unredirect4(ctx);
}

SEC("cgroup/recvmsg6")
int tg_recvmsg6(struct bpf_sock_addr *ctx)
{
	return tg_unredirect6(ctx);
}

SEC("cgroup/getpeername4")
int tg_getpeername4(struct bpf_sock_addr *ctx)
{
	return tg_unredirect4(ctx);
}

SEC("cgroup/getpeername6")
int tg_getpeername6(struct bpf_sock_addr *ctx)
{
	return tg_unredirect6(ctx);
}
