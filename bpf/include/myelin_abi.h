/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Myelin datapath ABI: the single definition of every map key/value and
 * constant shared between the eBPF programs and user space. Rust gets these
 * types from the libbpf-cargo skeleton (never a hand-copied mirror).
 *
 * Byte order: every IPv4 address field is in network byte order, exactly as
 * it appears in the packet. Ports likewise.
 */
#ifndef MYELIN_ABI_H
#define MYELIN_ABI_H

#include <linux/types.h>

#define MYELIN_MAX_ENDPOINTS   65535
#define MYELIN_MAX_METRICS     65536

/* endpoint_info.flags */
#define EP_F_HOST              (1u << 0)  /* reserved: the node itself */

/* Key of the `endpoints` map: a local pod address. */
struct endpoint_key {
	__u32 ip4;                 /* network byte order */
};

/* Value of the `endpoints` map: how to deliver to a local pod. */
struct endpoint_info {
	__u32 ifindex;             /* host-side veth ifindex (in the node netns) */
	__u32 endpoint_id;         /* agent-assigned, stable for the endpoint's life */
	__u32 identity;            /* security identity (policy issue); 0 = unknown */
	__u32 flags;               /* EP_F_* */
	__u8  mac[6];              /* pod-side interface MAC */
	__u8  host_mac[6];         /* host-side veth MAC: the pod's gateway MAC */
};

/* Single-entry array `node_config`, written by the agent at start. */
struct node_config {
	__u32 node_ip4;            /* the node's primary (uplink) address */
	__u32 gateway_ip4;         /* the pods' default gateway address */
	__u32 pod_cidr4;           /* this node's pod CIDR, network address */
	__u32 pod_cidr4_mask;      /* netmask of pod_cidr4 */
	__u32 flags;               /* reserved */
	__u32 _pad;
};

/* Direction of traffic, from the endpoint's point of view. */
enum metric_dir {
	METRIC_DIR_INGRESS = 0,    /* towards the endpoint */
	METRIC_DIR_EGRESS  = 1,    /* sent by the endpoint */
};

/*
 * Reasons. Values below 128 are forwarding outcomes; 130 and above are drop
 * reasons with Cilium's stable numbers, so tools that decode one decode both.
 */
enum myelin_reason {
	REASON_FORWARDED        = 0,   /* redirected by eBPF straight to its target */
	REASON_TO_STACK         = 1,   /* handed to the node's kernel stack */
	REASON_ARP_REPLY        = 2,   /* ARP request answered by the datapath */
	REASON_FROM_STACK       = 3,   /* delivered to the endpoint from the stack */

	DROP_INVALID_SMAC       = 130,
	DROP_INVALID_DMAC       = 131,
	DROP_INVALID_SIP        = 132, /* source address not the endpoint's own */
	DROP_POLICY             = 133, /* policy denied */
	DROP_INVALID            = 134, /* invalid packet */
	DROP_UNSUPPORTED_L3     = 139,
	DROP_FIB_LOOKUP_FAILED  = 169,
	DROP_UNKNOWN_SENDER     = 172,
	DROP_POLICY_DENY        = 181, /* policy denied by an explicit deny rule */
};

/* Key of the per-CPU `metrics` hash: per endpoint, direction and reason. */
struct metrics_key {
	__u32 endpoint_id;
	__u8  direction;           /* enum metric_dir */
	__u8  reason;              /* enum myelin_reason */
	__u16 _pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

#endif /* MYELIN_ABI_H */
