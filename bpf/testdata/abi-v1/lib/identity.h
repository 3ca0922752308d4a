/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Security identity of a peer address. */
#ifndef MYELIN_LIB_IDENTITY_H
#define MYELIN_LIB_IDENTITY_H

#include "common.h"
#include "maps.h"

static __always_inline struct node_config *node_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&node_config, &zero);
}

/* Identity of a local endpoint entry: the node's own entry is host. */
static __always_inline __u32 endpoint_identity(const struct endpoint_info *ep)
{
	return (ep->flags & EP_F_HOST) ? IDENTITY_HOST : ep->identity;
}

/* Identity of `ip4` (network order) given its local endpoint entry `ep`
 * (NULL if it has none): the endpoint's, else the longest ipcache prefix,
 * else host for the configured node address, else world. */
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

#endif /* MYELIN_LIB_IDENTITY_H */
