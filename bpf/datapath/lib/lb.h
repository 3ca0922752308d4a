/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service frontends and backends for socket-level load balancing
 * (semantics in myelin_abi.h). */
#ifndef MYELIN_LIB_LB_H
#define MYELIN_LIB_LB_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, MYELIN_MAX_LB4_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, MYELIN_MAX_LB4_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, MYELIN_MAX_LB4_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sock_key);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, MYELIN_MAX_LB4_SOCK_REVNAT);
	MYELIN_PINNED;
} lb4_sock_revnat SEC(".maps");

/* The service behind a frontend, if any (slot 0). */
static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = port, .backend_slot = 0, .proto = proto };

	return bpf_map_lookup_elem(&lb4_services, &key);
}

/* A backend of `svc` chosen uniformly at random; NULL if it has none. */
static __always_inline struct lb4_backend *lb4_pick_backend(const struct lb4_service *svc, __be32 addr,
							    __be16 port, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto };
	struct lb4_service *slot;
	__u32 id;

	if (svc->count == 0)
		return NULL;
	key.backend_slot = (__u16)(bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&lb4_services, &key);
	if (!slot)
		return NULL;
	id = slot->backend_id;
	return bpf_map_lookup_elem(&lb4_backends, &id);
}

#endif /* MYELIN_LIB_LB_H */
