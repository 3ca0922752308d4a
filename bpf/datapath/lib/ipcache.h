/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Security identities of peer addresses: local endpoints first, then the
 * ipcache (longest prefix), else host for the node address, else world. */
#ifndef MYELIN_LIB_IPCACHE_H
#define MYELIN_LIB_IPCACHE_H

#include "common.h"
#include "config.h"
#include "endpoint.h"

/* Peer identities of non-local addresses (node addresses, other nodes' pods,
 * CIDR identities). Longest prefix wins; no match = world. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, MYELIN_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} ipcache SEC(".maps");

/* Every policy CIDR prefix -> its CIDR identity, for the pod-in-CIDR step of
 * policy lookups (see POD_IN_CIDR_FLAG in myelin_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, MYELIN_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} policy_cidrs SEC(".maps");

/* Identity of `ip4` (network order) given its local endpoint entry `ep`
 * (NULL if it has none). */
static __always_inline __u32 identity_of4(const struct endpoint_info *ep, __u32 ip4,
					  const struct node_config *cfg)
{
	struct ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };
	struct ipcache_value *v;

	if (ep)
		return endpoint_identity(ep);
	v = bpf_map_lookup_elem(&ipcache, &key);
	if (v)
		return v->identity;
	if (cfg && ip4 && ip4 == cfg->node_ip4)
		return IDENTITY_HOST;
	return IDENTITY_WORLD;
}

/* The CIDR identity of the longest policy prefix holding `ip4`, 0 if none. */
static __always_inline __u32 policy_cidr_of4(__u32 ip4)
{
	struct ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };
	struct ipcache_value *v = bpf_map_lookup_elem(&policy_cidrs, &key);

	return v ? v->identity : 0;
}

static __always_inline int identity_is_workload(__u32 id)
{
	return id >= MIN_WORKLOAD_IDENTITY && !(id & LOCAL_SCOPE_FLAG) && !(id & POD_IN_CIDR_FLAG);
}

#endif /* MYELIN_LIB_IPCACHE_H */
