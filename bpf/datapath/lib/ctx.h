/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The per-packet context: everything the datapath learns about a packet on
 * its way to a verdict (tuple, both identities, the endpoint concerned, the
 * direction, the deciding rule, connection-tracking state, what monitor
 * aggregation says). The verdict exits (verdict.h) count and report from
 * it, so every counter and every event sees the same facts.
 */
#ifndef MYELIN_LIB_CTX_H
#define MYELIN_LIB_CTX_H

#include "common.h"
#include "config.h"
#include "l4.h"

struct pkt_ctx {
	/* The program's struct __sk_buff. Typed void: a struct pointer member
	 * would make clang describe __sk_buff as a forward declaration in BTF,
	 * and the verifier needs the full type to pass the context on to the
	 * global functions (events.h, policy.h). */
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
	__u8  dir;             /* enum metric_dir, from ep_id's view */
	__u8  ct_status;       /* enum ct_status */
	__u8  report;          /* monitor aggregation: emit trace and verdict events */
	__u8  agg;             /* enum monitor_aggregation in force */
	__u8  policy_verdict;  /* enum policy_verdict of the last decision (0: none) */
	__u8  match_type;      /* enum policy_match of the last decision */
};

static __always_inline void ctx_init(struct pkt_ctx *c, struct __sk_buff *skb, __u8 dir)
{
	c->skb = skb;
	c->cfg = node_config_get();
	c->len = skb->len;
	c->dir = dir;
	c->agg = cfg_aggregation(c->cfg);
	/* Until connection tracking says otherwise, report as for a new flow. */
	c->report = 1;
}

#endif /* MYELIN_LIB_CTX_H */
