/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The verdict exits. Every packet a datapath program decides leaves through
 * exactly one of these, and they are the only places that count packets and
 * report events: a capability that wants to see verdicts (flows, metrics,
 * the overlay's tunnel endpoint, ...) reads the per-packet context here.
 *
 *   ctx_drop()            drop; always reported (EVENT_DROP, sub_type = reason)
 *   ctx_to_stack()        hand to the node's stack (TO_HOST / TO_STACK)
 *   ctx_redirect_peer()   deliver straight into a local pod (TO_LXC)
 *   ctx_from_stack()      let the stack's packet reach the pod (TO_LXC)
 *   ctx_pass()            let a packet not ours go on (uplink observation)
 *
 * and ctx_policy(), the one place policy decisions are made and reported
 * (EVENT_POLICY_VERDICT: every denial, allows of new connections).
 */
#ifndef MYELIN_LIB_VERDICT_H
#define MYELIN_LIB_VERDICT_H

#include "common.h"
#include "ctx.h"
#include "events.h"
#include "metrics.h"
#include "policy.h"

static __always_inline int trace_is_from(__u8 point)
{
	return point == TRACE_FROM_LXC || point == TRACE_FROM_PROXY || point == TRACE_FROM_HOST ||
	       point == TRACE_FROM_STACK || point == TRACE_FROM_OVERLAY || point == TRACE_FROM_NETWORK;
}

/* Monitor aggregation: is a trace at `point` reported? Drops always are. */
static __always_inline int trace_wanted(const struct pkt_ctx *c, __u8 point)
{
	if (c->agg == MONITOR_AGG_OFF)
		return 0;
	if (c->agg == MONITOR_AGG_NONE)
		return 1;
	if (trace_is_from(point))
		return 0;
	if (c->agg == MONITOR_AGG_LOW)
		return 1;
	return c->report;
}

static __always_inline void ctx_trace(const struct pkt_ctx *c, __u8 point, __u32 ep, __u8 dir)
{
	if (trace_wanted(c, point))
		event_emit(c, EVENT_TRACE, point, ep, dir);
}

/* Drop, counted against (ep, dir). */
static __always_inline int ctx_drop_at(struct pkt_ctx *c, __u32 ep, __u8 dir, __u8 reason)
{
	metrics_add(ep, dir, reason, c->len);
	event_emit(c, EVENT_DROP, reason, ep, dir);
	return TC_ACT_SHOT;
}

/* Drop, counted against the context's endpoint and direction. */
static __always_inline int ctx_drop(struct pkt_ctx *c, __u8 reason)
{
	return ctx_drop_at(c, c->ep_id, c->dir, reason);
}

/* Run endpoint `ep`'s policy for direction `dir` against the peer, report
 * the decision; 0 = allowed, else the drop reason (for ctx_drop_at). */
static __always_inline int ctx_policy(struct pkt_ctx *c, __u32 ep, __u32 peer, __u32 peer_ip4, __u8 dir)
{
	int reason = policy_check(c, ep, peer, peer_ip4, dir);

	/* Every denial; allows when a connection starts (as Cilium: policy is
	 * re-run on later packets here, but they are not new decisions). */
	if (c->policy_verdict && (reason || c->agg == MONITOR_AGG_NONE || c->ct_status == 0 /* CT_NEW */))
		event_emit(c, EVENT_POLICY_VERDICT, 0, ep, dir);
	return reason;
}

/* Hand the packet to the node's stack. */
static __always_inline int ctx_to_stack(struct pkt_ctx *c)
{
	__u8 point = c->dst_id == IDENTITY_HOST ? TRACE_TO_HOST : TRACE_TO_STACK;

	metrics_add(c->ep_id, c->dir, REASON_TO_STACK, c->len);
	ctx_trace(c, TRACE_FROM_LXC, c->ep_id, c->dir);
	ctx_trace(c, point, c->ep_id, c->dir);
	return TC_ACT_OK;
}

/* Deliver into the local pod `dst` (whose entry the caller looked up; MACs
 * and TTL already rewritten). Counted as forwarded for the sender (when it
 * is a local endpoint) and for the receiver. */
static __always_inline int ctx_redirect_peer(struct pkt_ctx *c, const struct endpoint_info *dst)
{
	__u32 dst_ep = dst->endpoint_id;

	if (c->ep_id) {
		metrics_add(c->ep_id, c->dir, REASON_FORWARDED, c->len);
		ctx_trace(c, TRACE_FROM_LXC, c->ep_id, c->dir);
	}
	metrics_add(dst_ep, METRIC_DIR_INGRESS, REASON_FORWARDED, c->len);
	ctx_trace(c, TRACE_TO_LXC, dst_ep, METRIC_DIR_INGRESS);
	return bpf_redirect_peer(dst->ifindex, 0);
}

/* The stack's packet reaches the context's endpoint. */
static __always_inline int ctx_from_stack(struct pkt_ctx *c)
{
	metrics_add(c->ep_id, METRIC_DIR_INGRESS, REASON_FROM_STACK, c->len);
	ctx_trace(c, TRACE_FROM_STACK, c->ep_id, METRIC_DIR_INGRESS);
	ctx_trace(c, TRACE_TO_LXC, c->ep_id, METRIC_DIR_INGRESS);
	return TC_ACT_OK;
}

/* A packet the datapath observes but does not decide (the uplink). */
static __always_inline int ctx_pass(struct pkt_ctx *c, __u8 point)
{
	ctx_trace(c, point, c->ep_id, c->dir);
	return TC_ACT_OK;
}

#endif /* MYELIN_LIB_VERDICT_H */
