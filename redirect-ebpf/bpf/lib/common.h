/* Shared includes and constants for every Tollgate eBPF program.
 *
 * Built against the kernel's uapi headers (linux-libc-dev) and libbpf's helper
 * definitions (libbpf-dev), so the same headers also compile for the host in
 * the layout test (see build.rs and bpf/layout.c). */
#ifndef TG_COMMON_H
#define TG_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
/* Pins a value in a register at this point, so clang cannot sink or merge
 * the ctx load that produced it into branches (the verifier rejects ctx
 * loads through a pointer the compiler offset per branch). */
#define tg_barrier_var(v) asm volatile("" : "+r"(v))

#endif
#ifndef AF_INET6
#define AF_INET6 10
/* Pins a value in a register at this point, so clang cannot sink or merge
 * the ctx load that produced it into branches (the verifier rejects ctx
 * loads through a pointer the compiler offset per branch). */
#define tg_barrier_var(v) asm volatile("" : "+r"(v))

#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
/* Pins a value in a register at this point, so clang cannot sink or merge
 * the ctx load that produced it into branches (the verifier rejects ctx
 * loads through a pointer the compiler offset per branch). */
#define tg_barrier_var(v) asm volatile("" : "+r"(v))

#endif
#ifndef IPPROTO_UDP
#define IPPROTO_UDP 17
/* Pins a value in a register at this point, so clang cannot sink or merge
 * the ctx load that produced it into branches (the verifier rejects ctx
 * loads through a pointer the compiler offset per branch). */
#define tg_barrier_var(v) asm volatile("" : "+r"(v))

#endif
#define TG_SOL_IP 0
#define TG_SOL_IPV6 41
/* SO_ORIGINAL_DST (netfilter) and IP6T_SO_ORIGINAL_DST share the number 80. */
#define TG_SO_ORIGINAL_DST 80

/* Return codes of cgroup sock_addr / sockopt programs. */
#define TG_ALLOW 1
#define TG_REJECT 0 /* connect() fails with EPERM */

/* Reserved identities (policy-model's Identity consts). */
#define TG_ID_UNKNOWN 0
#define TG_ID_HOST 1
#define TG_ID_WORLD 2
/* Identities below this are reserved; at or above are cluster endpoints. */
#define TG_ID_FIRST_ALLOCATED 256

/* Pins a value in a register at this point, so clang cannot sink or merge
 * the ctx load that produced it into branches (the verifier rejects ctx
 * loads through a pointer the compiler offset per branch). */
#define tg_barrier_var(v) asm volatile("" : "+r"(v))

#endif
