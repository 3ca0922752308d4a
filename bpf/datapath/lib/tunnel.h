// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The overlay's maps, shared (pinned by name) by the overlay object, which
 * sets tunnel keys from them, and the pod programs, which send other nodes'
 * pods straight into the tunnel device. */
#ifndef MYELIN_LIB_TUNNEL_H
#define MYELIN_LIB_TUNNEL_H

#include "common.h"

/* Pod prefixes of other nodes -> the node's underlay address. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, MYELIN_MAX_TUNNEL);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} tunnel_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct overlay_dev);
	__uint(max_entries, 1);
	MYELIN_PINNED;
} overlay_dev SEC(".maps");

/* The node's tunnel device; 0 without an overlay. */
static __always_inline __u32 overlay_ifindex(void)
{
	struct overlay_dev *od;
	__u32 zero = 0;

	od = bpf_map_lookup_elem(&overlay_dev, &zero);
	return od ? od->ifindex : 0;
}

/* Set the tunnel key towards the node holding `daddr` (network order):
 * VNI = the sender's security identity, as Cilium does (the node's own
 * packets: remote-node, so that a policy admitting `host` does not admit
 * every node). 0 and the remote node's address (network order) in *remote;
 * -1 when no node holds the address or the key cannot be set. */
static __always_inline int tunnel_key_set(struct __sk_buff *skb, __u32 daddr, __u32 identity, __u32 *remote)
{
	struct tunnel_key tk = { .prefixlen = 32, .ip4 = daddr };
	struct bpf_tunnel_key key = {};
	struct tunnel_value *tv;

	tv = bpf_map_lookup_elem(&tunnel_map, &tk);
	if (!tv || !tv->remote_ip4)
		return -1;
	key.remote_ipv4 = bpf_ntohl(tv->remote_ip4);
	key.tunnel_id = identity == IDENTITY_HOST ? IDENTITY_REMOTE_NODE : identity;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return -1;
	*remote = tv->remote_ip4;
	return 0;
}

#endif /* MYELIN_LIB_TUNNEL_H */
