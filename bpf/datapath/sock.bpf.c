// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level load balancing: cgroup sock_addr and sock programs, attached
 * to the cgroup that holds the node's pods (semantics in myelin_abi.h).
 *
 *   sock4_connect      cgroup/connect4      TCP connect()/UDP connect() to a
 *                                           frontend -> a backend
 *   sock4_sendmsg      cgroup/sendmsg4      unconnected UDP sendto() likewise
 *   sock4_recvmsg      cgroup/recvmsg4      replies appear to come from the
 *                                           frontend
 *   sock4_getpeername  cgroup/getpeername4  the peer is the frontend
 *   sock_release       cgroup/sock_release  forget the socket's translations
 *                                           (its lb4_sock_revnat entries)
 *   sock4_post_bind    cgroup/post_bind4    refuse bind() to a frontend (EPERM)
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/lb.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The context of cgroup sock programs (sock_release, post_bind4): the
 * kernel's struct bpf_sock, which myelin/bpf.h only declares. The kernel
 * rewrites accesses by offset: the layout is the UAPI's. */
struct bpf_sock {
	__u32  bound_dev_if;
	__u32  family;
	__u32  type;
	__u32  protocol;
	__u32  mark;
	__u32  priority;
	__u32  src_ip4;            /* network order */
	__u32  src_ip6[4];
	__u32  src_port;           /* host order */
	__be16 dst_port;           /* network order */
	__u16  :16;
	__u32  dst_ip4;            /* network order */
	__u32  dst_ip6[4];
	__u32  state;
	__s32  rx_queue_mapping;
};

#define MYELIN_AF_INET 2
#define MYELIN_SOCK_DGRAM 2
#define BPF_SK_STORAGE_GET_F_CREATE (1ULL << 0)

/* The backends each socket was translated to (myelin_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct lb4_sock_backends);
	MYELIN_PINNED;
} lb4_sock_slots SEC(".maps");

/* BTF anchor: the services' types for the Rust skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_lb(struct lb4_key *k, struct lb4_service *s,
						       struct lb4_backend *b, struct lb4_reverse_nat *r,
						       struct lb4_sock_key *sk)
{
	return (int)k->proto + (int)s->count + (int)b->proto + (int)r->port + (int)sk->port;
}

/* BTF anchor: the per-socket storage type. */
__attribute__((noinline)) int myelin_abi_btf_anchor_lb_sock(struct lb4_sock_backends *sb)
{
	return (int)sb->next;
}

static __always_inline __u8 sock_proto(struct bpf_sock_addr *ctx)
{
	/* ctx->protocol is 0 for a socket created with protocol 0. */
	if (ctx->protocol)
		return (__u8)ctx->protocol;
	return ctx->type == MYELIN_SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
}

/* Remember in the socket's storage that it owns the lb4_sock_revnat entry of
 * backend addr:port (for sock_release). */
static __always_inline void sock4_remember_backend(struct bpf_sock_addr *ctx, __be32 addr, __be16 port)
{
	struct bpf_sock *sk = ctx->sk;
	struct lb4_sock_backends *s;
	__u32 i;

	if (!sk)
		return;
	s = bpf_sk_storage_get(&lb4_sock_slots, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		return;
#pragma unroll
	for (i = 0; i < MYELIN_LB4_SOCK_SLOTS; i++) {
		if (s->slot[i].address == addr && s->slot[i].port == port)
			return;
	}
	i = s->next & (MYELIN_LB4_SOCK_SLOTS - 1);
	s->slot[i].address = addr;
	s->slot[i].port = port;
	s->slot[i]._pad = 0;
	s->next = i + 1;
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
	sock4_remember_backend(ctx, be->address, be->port);
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

/* The socket goes away: delete the lb4_sock_revnat entries it owns (the one
 * of its connected peer, and those its storage lists), so that the map does
 * not fill with the translations of every socket that ever existed. */
SEC("cgroup/sock_release")
int sock_release(struct bpf_sock *ctx)
{
	struct lb4_sock_key key = {};
	struct lb4_sock_backends *s;
	__u32 i;

	if (ctx->family != MYELIN_AF_INET)
		return 1;
	key.cookie = bpf_get_socket_cookie(ctx);
	key.address = ctx->dst_ip4;
	key.port = ctx->dst_port;
	if (key.address)
		bpf_map_delete_elem(&lb4_sock_revnat, &key);
	s = bpf_sk_storage_get(&lb4_sock_slots, ctx, 0, 0);
	if (!s)
		return 1;
#pragma unroll
	for (i = 0; i < MYELIN_LB4_SOCK_SLOTS; i++) {
		if (!s->slot[i].address)
			continue;
		key.address = s->slot[i].address;
		key.port = s->slot[i].port;
		bpf_map_delete_elem(&lb4_sock_revnat, &key);
	}
	return 1;
}

/* bind() to a service frontend: refused (0 -> EPERM). A pod cannot take a
 * service address:port over, e.g. with IP_FREEBIND. A wildcard bind
 * (0.0.0.0:port) is let through: it cannot receive a ClusterIP frontend's
 * traffic, whose address is not local and whose connect() is translated
 * before routing. (Cilium refuses wildcard binds only where a frontend is a
 * local address: NodePort, LoadBalancer and ExternalIP services, which this
 * datapath does not have yet.) */
SEC("cgroup/post_bind4")
int sock4_post_bind(struct bpf_sock *ctx)
{
	__u8 proto = (__u8)ctx->protocol;

	if (!proto)
		proto = ctx->type == MYELIN_SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;
	if (lb4_lookup_service(ctx->src_ip4, bpf_htons((__u16)ctx->src_port), proto))
		return 0;
	return 1;
}
