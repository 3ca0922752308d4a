/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The verdict exits. Every packet a datapath program sees leaves through
 * exactly one of these, and they are the only places that count packets and
 * report events: a capability that wants to see verdicts (flows, metrics,
 * the overlay's tunnel endpoint, ...) reads the per-packet context here.
 *
 *   ctx_drop()            drop; always reported (EVENT_DROP, sub_type = reason)
 *   ctx_deny()            drop for the reason policy set (after ctx_policy())
 *   ctx_to_stack()        hand to the node's stack (TO_HOST / TO_STACK)
 *   ctx_redirect_peer()   deliver straight into a local pod (TO_LXC)
 *   ctx_from_stack()      let the stack's packet reach the pod (TO_LXC)
 *   ctx_arp_reply()       send back the ARP reply built in place (TO_LXC)
 *   ctx_pass_on()         let a packet the hook only observes go on, reported
 *                         at the hook's point (the uplink); ctx_pass() names
 *                         the point
 *   ctx_not_ours()        let a frame the datapath does not handle (not IPv4,
 *                         not parsed, not for this hook) go on unchanged:
 *                         counted as the hook counts, never reported
 *   ctx_drop_xdp()        XDP: drop (EVENT_DROP)
 *   ctx_pass_xdp()        XDP: let the packet on to the tc programs
 *
 * and ctx_policy(), the one place policy decisions are made and reported
 * (EVENT_POLICY_VERDICT: every denial, allows of new connections).
 *
 * The exits count and report from the context alone: (c->ep_id, c->dir,
 * c->reason) is the metrics key, c->obs_point the observation point. An exit
 * that decides something sets those fields itself (a redirect is
 * REASON_FORWARDED at TO_LXC); the rest comes from what the program set
 * along the way: at entry the hook's default outcome (from_container: to the
 * stack, counted TO_STACK; the uplink: observed FROM_NETWORK, not counted),
 * the drop reason from policy.
 *
 * XDP programs define MYELIN_VERDICT_XDP before including this header: they
 * get the XDP exits without the policy maps.
 */
#ifndef MYELIN_LIB_VERDICT_H
#define MYELIN_LIB_VERDICT_H

#include "common.h"
#include "ctx.h"
#include "events.h"
#include "metrics.h"
#ifndef MYELIN_VERDICT_XDP
#include "policy.h"
#endif

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

/* Count the packet: c->reason for (c->ep_id, c->dir), unless there is
 * nothing to count (CTX_REASON_NONE). */
static __always_inline void ctx_count(const struct pkt_ctx *c)
{
	if (c->reason != CTX_REASON_NONE)
		metrics_add(c->ep_id, c->dir, c->reason, c->len);
}

/* Report the packet at c->obs_point for (c->ep_id, c->dir), as monitor
 * aggregation allows. */
static __always_inline void ctx_trace(const struct pkt_ctx *c)
{
	if (c->obs_point != CTX_POINT_NONE && trace_wanted(c, c->obs_point))
		event_emit(c, EVENT_TRACE, c->obs_point, c->ep_id, c->dir);
}

/* The one drop path of the tc programs: count and report c->reason. */
static __always_inline int ctx_drop_counted(struct pkt_ctx *c)
{
	metrics_add(c->ep_id, c->dir, c->reason, c->len);
	event_emit(c, EVENT_DROP, c->reason, c->ep_id, c->dir);
	return TC_ACT_SHOT;
}

/* Drop for `reason`, counted against the context's endpoint and direction. */
static __always_inline int ctx_drop(struct pkt_ctx *c, __u8 reason)
{
	c->reason = reason;
	return ctx_drop_counted(c);
}

#ifndef MYELIN_VERDICT_XDP
/* Run endpoint `ep`'s policy for direction `dir` against the peer, report
 * the decision; 0 = allowed, else the drop reason. A denial also becomes the
 * context's: c->reason is the drop reason and (c->ep_id, c->dir) the
 * endpoint and direction whose policy denied, for ctx_deny(). */
static __always_inline int ctx_policy(struct pkt_ctx *c, __u32 ep, __u32 peer, __u32 peer_ip4, __u8 dir)
{
	int reason = policy_check(c, ep, peer, peer_ip4, dir);

	/* Every denial; allows when a connection starts (as Cilium: policy is
	 * re-run on later packets here, but they are not new decisions). */
	if (c->policy_verdict && (reason || c->agg == MONITOR_AGG_NONE || c->ct_status == CT_NEW))
		event_emit(c, EVENT_POLICY_VERDICT, 0, ep, dir);
	if (reason) {
		c->reason = reason;
		c->ep_id = ep;
		c->dir = dir;
	}
	return reason;
}
#endif

/* Drop for the reason ctx_policy() put in the context. */
static __always_inline int ctx_deny(struct pkt_ctx *c)
{
	return ctx_drop_counted(c);
}

/* Hand the packet to the node's stack. */
static __always_inline int ctx_to_stack(struct pkt_ctx *c)
{
	c->reason = REASON_TO_STACK;
	ctx_count(c);
	c->obs_point = TRACE_FROM_LXC;
	ctx_trace(c);
	c->obs_point = c->dst_id == IDENTITY_HOST ? TRACE_TO_HOST : TRACE_TO_STACK;
	ctx_trace(c);
	return TC_ACT_OK;
}

/* Send the packet to another node's pod without the node's routing: into the
 * tunnel device (key already set; observed at `point` TO_OVERLAY, with the
 * tunnel endpoint), or out of the uplink to the next hop the kernel's FIB gave
 * (MACs already set; with `nh`, the kernel resolves the neighbour; observed
 * TO_NETWORK). Counted as forwarded for the sender. */
static __always_inline int ctx_redirect_node(struct pkt_ctx *c, __u32 ifindex, struct bpf_redir_neigh *nh,
					     __u8 point)
{
	c->reason = REASON_FORWARDED;
	ctx_count(c);
	c->obs_point = point;
	ctx_trace(c);
	if (nh)
		return bpf_redirect_neigh(ifindex, nh, sizeof(*nh), 0);
	return bpf_redirect(ifindex, 0);
}

/* Deliver into the local pod `dst` (whose entry the caller looked up; MACs
 * and TTL already rewritten). Counted as forwarded for the sender (when it
 * is a local endpoint) and for the receiver. */
static __always_inline int ctx_redirect_peer(struct pkt_ctx *c, const struct endpoint_info *dst)
{
	c->reason = REASON_FORWARDED;
	if (c->ep_id) {
		c->obs_point = TRACE_FROM_LXC;
		ctx_count(c);
		ctx_trace(c);
	}
	/* From here on, the receiver's view. */
	c->ep_id = dst->endpoint_id;
	c->dir = METRIC_DIR_INGRESS;
	c->obs_point = TRACE_TO_LXC;
	ctx_count(c);
	ctx_trace(c);
	return bpf_redirect_peer(dst->ifindex, 0);
}

/* The stack's packet reaches the context's endpoint. */
static __always_inline int ctx_from_stack(struct pkt_ctx *c)
{
	c->reason = REASON_FROM_STACK;
	c->dir = METRIC_DIR_INGRESS;
	ctx_count(c);
	c->obs_point = TRACE_FROM_STACK;
	ctx_trace(c);
	c->obs_point = TRACE_TO_LXC;
	ctx_trace(c);
	return TC_ACT_OK;
}

/* The endpoint's ARP request was answered in place (the frame now holds the
 * reply, and the context its identities). Counted as REASON_ARP_REPLY for
 * the request (c->ep_id, c->dir: the endpoint's egress); reported as the
 * reply delivered to the endpoint (TO_LXC, ingress), which it is: it goes
 * back out of the interface the request came in on. */
static __always_inline int ctx_arp_reply(struct pkt_ctx *c)
{
	c->reason = REASON_ARP_REPLY;
	ctx_count(c);
	c->dir = METRIC_DIR_INGRESS;
	c->obs_point = TRACE_TO_LXC;
	ctx_trace(c);
	return bpf_redirect(c->ifindex, 0);
}

/* A packet the hook observes but does not decide (the uplink): reported at
 * the point the program set (c->obs_point), counted if it set a reason. */
static __always_inline int ctx_pass_on(struct pkt_ctx *c)
{
	ctx_count(c);
	ctx_trace(c);
	return TC_ACT_OK;
}

/* The same, at `point`. */
static __always_inline int ctx_pass(struct pkt_ctx *c, __u8 point)
{
	c->obs_point = point;
	return ctx_pass_on(c);
}

/* A frame the datapath does not handle (not IPv4, too short to parse, not
 * for this hook's endpoint, the node's own traffic on the uplink): it goes
 * on unchanged, counted like anything else the hook lets through (c->reason
 * as the program set it: the pod veth counts TO_STACK / FROM_STACK, the
 * uplink nothing). Not a flow: never reported, at any aggregation (a node
 * with nothing to say stays quiet even at "none"). */
static __always_inline int ctx_not_ours(struct pkt_ctx *c)
{
	ctx_count(c);
	return TC_ACT_OK;
}

/* XDP: drop for `reason` (counted for (c->ep_id, c->dir), always reported). */
static __always_inline int ctx_drop_xdp(struct pkt_ctx *c, __u8 reason)
{
	c->reason = reason;
	metrics_add(c->ep_id, c->dir, c->reason, c->len);
	event_emit_xdp(c, EVENT_DROP, c->reason, c->ep_id, c->dir);
	return XDP_DROP;
}

/* XDP: on to the tc programs, which count and report it. */
static __always_inline int ctx_pass_xdp(struct pkt_ctx *c)
{
	ctx_count(c);
	return XDP_PASS;
}

#endif /* MYELIN_LIB_VERDICT_H */
