// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level load balancing: cgroup sock_addr programs, attached to the
 * cgroup that holds the node's pods (semantics in myelin_abi.h).
 *
 *   sock4_connect      cgroup/connect4      TCP connect()/UDP connect() to a
 *                                           frontend -> a backend
 *   sock4_sendmsg      cgroup/sendmsg4      unconnected UDP sendto() likewise
 *   sock4_recvmsg      cgroup/recvmsg4      replies appear to come from the
 *                                           frontend
 *   sock4_getpeername  cgroup/getpeername4  the peer is the frontend
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* BTF anchor: the services' types for the Rust skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_lb(struct lb4_key *k, struct lb4_service *s,
						       struct lb4_backend *b, struct lb4_reverse_nat *r,
						       struct lb4_sock_key *sk)
{
	return (int)k->proto + (int)s->count + (int)b->proto + (int)r->port + (int)sk->port;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	/* ctx->protocol is 0 for a socket created with protocol 0. */
	if (ctx->protocol)
		return (__u8)ctx->protocol;
	return ctx->type == 2 /* SOCK_DGRAM */ ? IPPROTO_UDP : IPPROTO_TCP;
}

/* Translate a frontend to a backend; remember the frontend per socket. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = sock_proto(ctx);
	struct lb4_service *svc;
	struct lb4_backend *be;
	struct lb4_sock_key sk = {};
	struct lb4_reverse_nat rn = {};

	svc = lb4_lookup_service(addr, port, proto);
	if (!svc)
		return 1;
	be = lb4_pick_backend(svc, addr, port, proto);
	if (!be)
		return 1; /* no backend: the connection goes to the frontend and fails there */
	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.address = be->address;
	sk.port = be->port;
	rn.address = addr;
	rn.port = port;
	bpf_map_update_elem(&lb4_sock_revnat, &sk, &rn, BPF_ANY);
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return 1;
}

/* Show the frontend again for a socket translated by sock4_xlate_fwd. */
static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_sock_key sk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_reverse_nat *rn = bpf_map_lookup_elem(&lb4_sock_revnat, &sk);

	if (rn) {
		ctx->user_ip4 = rn->address;
		ctx->user_port = rn->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_fwd(ctx);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_xlate_rev(ctx);
}
