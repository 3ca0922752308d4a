/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Local endpoints (pods of this node), keyed by address. */
#ifndef MYELIN_LIB_ENDPOINT_H
#define MYELIN_LIB_ENDPOINT_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, MYELIN_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} endpoints SEC(".maps");

/* ip4 in network byte order. */
static __always_inline struct endpoint_info *endpoint_lookup4(__u32 ip4)
{
	struct endpoint_key key = { .ip4 = ip4 };

	return bpf_map_lookup_elem(&endpoints, &key);
}

/* Identity of a local endpoint entry: the node's own entry is host. */
static __always_inline __u32 endpoint_identity(const struct endpoint_info *ep)
{
	return (ep->flags & EP_F_HOST) ? IDENTITY_HOST : ep->identity;
}

#endif /* MYELIN_LIB_ENDPOINT_H */
