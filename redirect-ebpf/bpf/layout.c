/* Host program run by build.rs: prints the size, alignment and field offsets
 * of every struct in lib/maps.h as a Rust table, so tests/layout.rs can prove
 * src/maps.rs agrees with the C declarations byte for byte. */
#include <stddef.h>
#include <stdio.h>
#include "lib/maps.h"

#define S(s) printf("    CStruct { name: \"%s\", size: %zu, align: %zu, fields: &[\n", #s, sizeof(struct s), _Alignof(struct s))
#define F(s, f) printf("        (\"%s\", %zu, %zu),\n", #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
#define E() printf("    ]},\n")

int main(void)
{
	printf("pub const C_STRUCTS: &[CStruct] = &[\n");
	S(tg_ipcache_key); F(tg_ipcache_key, prefixlen); F(tg_ipcache_key, family); F(tg_ipcache_key, pad); F(tg_ipcache_key, ip); E();
	S(tg_ipcache_value); F(tg_ipcache_value, identity); F(tg_ipcache_value, flags); E();
	S(tg_policy_key); F(tg_policy_key, identity); F(tg_policy_key, direction); F(tg_policy_key, proto); F(tg_policy_key, port); E();
	S(tg_policy_value); F(tg_policy_value, l7_kind); F(tg_policy_value, proxy_port); F(tg_policy_value, flags); E();
	S(tg_endpoint); F(tg_endpoint, identity); F(tg_endpoint, flags); F(tg_endpoint, ip4); F(tg_endpoint, ip6); E();
	S(tg_orig_dst); F(tg_orig_dst, ip); F(tg_orig_dst, port); F(tg_orig_dst, family); F(tg_orig_dst, proto);
	F(tg_orig_dst, src_identity); F(tg_orig_dst, dst_identity); F(tg_orig_dst, l7_kind); F(tg_orig_dst, proxy_port); E();
	S(tg_tuple_key); F(tg_tuple_key, src_ip); F(tg_tuple_key, dst_ip); F(tg_tuple_key, src_port); F(tg_tuple_key, dst_port);
	F(tg_tuple_key, family); F(tg_tuple_key, proto); F(tg_tuple_key, pad); F(tg_tuple_key, netns_cookie); E();
	S(tg_fqdn_key); F(tg_fqdn_key, identity); F(tg_fqdn_key, family); F(tg_fqdn_key, proto); F(tg_fqdn_key, port); F(tg_fqdn_key, ip); E();
	S(tg_fqdn_value); F(tg_fqdn_value, expires_ns); F(tg_fqdn_value, flags); F(tg_fqdn_value, pad); E();
	S(tg_fqdn_denial); F(tg_fqdn_denial, identity); F(tg_fqdn_denial, family); F(tg_fqdn_denial, proto);
	F(tg_fqdn_denial, port); F(tg_fqdn_denial, ip); F(tg_fqdn_denial, src_ip4); F(tg_fqdn_denial, pad); E();
	S(tg_config); F(tg_config, flags); F(tg_config, proxy_ip4); F(tg_config, proxy_ip6); F(tg_config, proxy_mark);
	F(tg_config, tproxy_mark); F(tg_config, http_port); F(tg_config, kafka_port); F(tg_config, dns_port); F(tg_config, tproxy_port); E();
	printf("];\n");
	return 0;
}
