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

/* The tunnel device, when the node has an overlay and a node holds `ip4`. */
static __always_inline __u32 overlay_ifindex_for(__u32 ip4)
{
	struct tunnel_key tk = { .prefixlen = 32, .ip4 = ip4 };
	struct overlay_dev *od;
	__u32 zero = 0;

	od = bpf_map_lookup_elem(&overlay_dev, &zero);
	if (!od || !od->ifindex || !bpf_map_lookup_elem(&tunnel_map, &tk))
		return 0;
	return od->ifindex;
}

#endif /* MYELIN_LIB_TUNNEL_H */
