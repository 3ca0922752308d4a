/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery of a packet that another node sent to a local pod: the uplink
 * (natively routed, sender identity from the ipcache) and the overlay (sender
 * identity from the VNI) differ only in where the identity comes from. */
#ifndef MYELIN_LIB_REMOTE_H
#define MYELIN_LIB_REMOTE_H

#include "common.h"
#include "conntrack.h"
#include "ctx.h"
#include "endpoint.h"
#include "ipv4.h"
#include "l4.h"
#include "policy.h"
#include "verdict.h"

/* `c` holds the sender's identity (c->src_id) and the destination's; `dst` is
 * the local pod. Runs the pod's ingress policy and conntrack, then delivers
 * straight into the pod (bpf_redirect_peer), or hands an expiring TTL to the
 * stack. Exits through the verdict exits only. */
static __always_inline int deliver_from_node(struct pkt_ctx *c, struct __sk_buff *skb, struct ethhdr *eth,
					     struct iphdr *ip4, const struct endpoint_info *dst)
{
	struct ct4_entry *ct;

	c->ep_id = dst->endpoint_id;
	if (flow4_parse(skb, ip4, &c->f))
		return ctx_drop(c, DROP_INVALID);

	ct = ctx_ct(c);
	if (c->ct_status != CT_REPLY && c->ct_status != CT_RELATED) {
		if (ctx_policy(c, dst->endpoint_id, c->src_id, ip4->saddr, METRIC_DIR_INGRESS))
			return ctx_deny(c);
		ctx_ct_commit(c, ct, 0, c->rule_id);
	}
	if (ip4->ttl <= 1)
		return ctx_to_stack(c); /* the stack sends time exceeded */
	ipv4_dec_ttl(ip4);
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, dst->host_mac);
	c->ep_id = 0; /* the sender is not a local endpoint */
	return ctx_redirect_peer(c, dst);
}

#endif /* MYELIN_LIB_REMOTE_H */
