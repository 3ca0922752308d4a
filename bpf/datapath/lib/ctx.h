/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-packet context: everything the datapath learns about a packet on
 * its way to a verdict (tuple, both identities, the endpoint concerned, the
 * direction, the deciding rule, connection-tracking state, what monitor
 * aggregation says, where the packet is observed and the reason it will be
 * counted under). The verdict exits (verdict.h) count and report from it,
 * so every counter and every event sees the same facts.
 *
 * A program sets what it knows as it learns it: at entry the hook's default
 * outcome (obs_point, reason: where a packet nobody decides about goes and
 * how that is counted), then identities, connection tracking, the policy
 * decision (which sets the drop reason on a denial), and finally one exit.
 */
#ifndef MYELIN_LIB_CTX_H
#define MYELIN_LIB_CTX_H

#include "common.h"
#include "config.h"
#include "l4.h"

/* Connection-tracking state of the packet (pkt_ctx.ct_status). */
enum ct_status {
	CT_NEW,          /* no entry: policy decides, an allowed packet creates one */
	CT_ESTABLISHED,  /* original direction of a tracked connection: policy re-runs */
	CT_REPLY,        /* reply direction: passes */
	CT_RELATED,      /* ICMP error about a tracked connection: passes */
	CT_UNTRACKED,    /* never tracked (ARP, not IPv4, not parsed): events say "unknown" */
};

/* pkt_ctx.reason: nothing to count (e.g. what the uplink only observes).
 * Not an enum myelin_reason value; never written to a map. */
#define CTX_REASON_NONE 0xff
/* pkt_ctx.obs_point: nowhere to report. Not an enum trace_point value. */
#define CTX_POINT_NONE  0xff

struct pkt_ctx {
	/* The program's context: struct __sk_buff (tc), struct xdp_md (XDP).
	 * Typed void: a struct pointer member would make clang describe
	 * __sk_buff as a forward declaration in BTF, and the verifier needs the
	 * full type to pass the context on to the global functions (events.h,
	 * policy.h). */
	void *skb;
	const struct node_config *cfg;
	struct flow4 f;
	__u32 len;             /* skb->len at entry */
	__u32 ep_id;           /* the local endpoint concerned (0: none) */
	__u32 src_id;          /* identity of the packet's source */
	__u32 dst_id;          /* identity of the packet's destination */
	__u32 rule_id;         /* the rule that decided (0: none) */
	__u32 handshake_us;    /* set when this packet completed a handshake measurement */
	__u32 tunnel_remote;   /* overlay: the other node (0: none) */
	__u32 ifindex;         /* the interface the program runs on */
	__u8  dir;             /* enum metric_dir, from ep_id's view */
	__u8  ct_status;       /* enum ct_status */
	__u8  report;          /* monitor aggregation: emit trace and verdict events */
	__u8  agg;             /* enum monitor_aggregation in force */
	__u8  policy_verdict;  /* enum policy_verdict of the last decision (0: none) */
	__u8  match_type;      /* enum policy_match of the last decision */
	__u8  obs_point;       /* enum trace_point the exit reports at (CTX_POINT_NONE: none) */
	__u8  reason;          /* enum myelin_reason the exit counts: the drop reason, or
				* how the packet went on (CTX_REASON_NONE: not counted) */
};

static __always_inline void ctx_init_common(struct pkt_ctx *c, __u8 dir)
{
	c->cfg = node_config_get();
	c->dir = dir;
	c->agg = cfg_aggregation(c->cfg);
	/* Until connection tracking says otherwise, report as for a new flow. */
	c->report = 1;
	/* Until the program says where the packet goes, nothing to count or report. */
	c->obs_point = CTX_POINT_NONE;
	c->reason = CTX_REASON_NONE;
}

static __always_inline void ctx_init(struct pkt_ctx *c, struct __sk_buff *skb, __u8 dir)
{
	c->skb = skb;
	c->len = skb->len;
	c->ifindex = skb->ifindex;
	ctx_init_common(c, dir);
}

/* XDP: no skb yet; never connection-tracked. */
static __always_inline void ctx_init_xdp(struct pkt_ctx *c, struct xdp_md *xdp, __u8 dir)
{
	c->skb = xdp;
	c->len = (__u32)((long)xdp->data_end - (long)xdp->data);
	c->ifindex = xdp->ingress_ifindex;
	ctx_init_common(c, dir);
	c->ct_status = CT_UNTRACKED;
}

#endif /* MYELIN_LIB_CTX_H */
