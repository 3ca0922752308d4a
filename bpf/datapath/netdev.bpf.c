// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Programs on the node's uplink (the interface towards other nodes and the
 * world), attached at tc ingress and egress of that device.
 *
 *   from_netdev  ingress  IPv4 for a local pod from another node's pod (a
 *                         workload identity in the ipcache: natively routed,
 *                         never masqueraded): the pod's ingress policy and
 *                         conntrack run here and the packet goes straight
 *                         into the pod (bpf_redirect_peer), skipping the
 *                         node's routing. Everything else goes on to the
 *                         stack (observed as from-network): the world's
 *                         traffic must meet the node's conntrack, or the
 *                         masquerade would rewrite the pod's replies.
 *   to_netdev    egress   observes what leaves the node (to-network); pod
 *                         traffic that leaves unmasqueraded is attributed to
 *                         its endpoint.
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/ctx.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/ipv4.h"
#include "lib/l4.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/remote.h"
#include "lib/verdict.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt_ctx c = {};
	struct endpoint_info *dst;
	struct ethhdr *eth;
	struct iphdr *ip4;

	ctx_init(&c, skb, METRIC_DIR_INGRESS);
	/* Unless delivered to a pod here, it goes on to the stack, observed as
	 * from-network and not counted (the stack counts its own). */
	c.obs_point = TRACE_FROM_NETWORK;
	c.ct_status = CT_UNTRACKED; /* until parsed */
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return ctx_not_ours(&c);
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_not_ours(&c);
	eth = skb_ptr(skb, 0, ETH_HLEN);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!eth || !ip4)
		return ctx_not_ours(&c);
	c.ct_status = CT_NEW;
	if (!ipv4_hdr_valid(ip4, c.len))
		return ctx_pass_on(&c); /* the stack counts its own errors */

	dst = endpoint_lookup4(ip4->daddr);
	c.src_id = identity_of4(NULL, ip4->saddr, c.cfg);
	c.dst_id = identity_of4(dst, ip4->daddr, c.cfg);
	if (!dst || (dst->flags & EP_F_HOST) || !identity_is_workload(c.src_id) || endpoint_lookup4(ip4->saddr))
		return ctx_pass_on(&c);
	return deliver_from_node(&c, skb, eth, ip4, dst);
}

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	struct pkt_ctx c = {};
	struct endpoint_info *src;
	struct iphdr *ip4;

	ctx_init(&c, skb, METRIC_DIR_EGRESS);
	/* Observed as to-network, not counted. */
	c.obs_point = TRACE_TO_NETWORK;
	c.ct_status = CT_UNTRACKED; /* until parsed */
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return ctx_not_ours(&c);
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_not_ours(&c);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!ip4)
		return ctx_not_ours(&c);
	c.ct_status = CT_NEW;
	src = endpoint_lookup4(ip4->saddr);
	if (src && !(src->flags & EP_F_HOST)) {
		c.ep_id = src->endpoint_id;
		if (ipv4_hdr_valid(ip4, c.len) && !flow4_parse(skb, ip4, &c.f))
			ctx_ct_seen(&c);
	} else if (c.agg != MONITOR_AGG_NONE) {
		/* The node's own traffic: reported only when everything is wanted
		 * (then by ctx_pass_on() below, with its identities). */
		return ctx_not_ours(&c);
	}
	c.src_id = identity_of4(src, ip4->saddr, c.cfg);
	c.dst_id = identity_of4(NULL, ip4->daddr, c.cfg);
	return ctx_pass_on(&c);
}
