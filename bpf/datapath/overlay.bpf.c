// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Programs on the node's tunnel device (VXLAN or Geneve in collect-metadata
 * mode: one device for all remote nodes, the tunnel key per packet), attached
 * at tc ingress and egress of that device.
 *
 *   from_overlay  ingress  a packet another node sent through the tunnel. The
 *                          sender's security identity is the tunnel key's id
 *                          (the VNI), as in Cilium: the sending node put it
 *                          there, so this node enforces with it and never
 *                          looks the sender's address up. For a local pod the
 *                          pod's ingress policy and conntrack run here and the
 *                          packet goes straight into the pod
 *                          (bpf_redirect_peer); anything else goes on to the
 *                          node's stack (observed as from-overlay).
 *   to_overlay    egress   a packet the node routed into the tunnel device:
 *                          the tunnel key is set here, remote = the node that
 *                          holds the destination (`tunnel_map`), VNI = the
 *                          source's identity. No node for the destination is
 *                          a drop (no tunnel endpoint), never a packet sent
 *                          without a key.
 *
 * Frames that are not IPv4 (or not parsed) go on unchanged through
 * ctx_not_ours(), counted for no endpoint as the pod veths count them:
 * from_overlay's to-stack (ingress), to_overlay's from-stack (egress; without
 * a key the device drops them: nothing else belongs in the tunnel). Never
 * reported. Every packet leaves through one of the verdict exits of
 * lib/verdict.h.
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
#include "lib/tunnel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";



/* VNIs are 24 bits; 0 carries no identity (a sender that is not Myelin). */
static __always_inline __u32 identity_of_vni(__u32 vni)
{
	return vni ? vni : IDENTITY_WORLD;
}

SEC("tc")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt_ctx c = {};
	struct endpoint_info *dst;
	struct ethhdr *eth;
	struct iphdr *ip4;

	ctx_init(&c, skb, METRIC_DIR_INGRESS);
	/* Until parsed as IPv4: not ours, on to the stack, counted to-stack. */
	c.reason = REASON_TO_STACK;
	c.ct_status = CT_UNTRACKED;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return ctx_not_ours(&c);
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_not_ours(&c);
	eth = skb_ptr(skb, 0, ETH_HLEN);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!eth || !ip4)
		return ctx_not_ours(&c);
	/* IPv4 on to the stack: observed as from-overlay, not counted (the
	 * stack counts its own). */
	c.reason = CTX_REASON_NONE;
	c.ct_status = CT_NEW;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return ctx_drop(&c, DROP_NO_TUNNEL_ENDPOINT); /* not from a collect-metadata tunnel */
	c.tunnel_remote = bpf_htonl(key.remote_ipv4);
	c.src_id = identity_of_vni(key.tunnel_id);
	if (!ipv4_hdr_valid(ip4, c.len))
		return ctx_pass(&c, TRACE_FROM_OVERLAY); /* the stack counts its own errors */

	dst = endpoint_lookup4(ip4->daddr);
	c.dst_id = identity_of4(dst, ip4->daddr, c.cfg);
	if (!dst || (dst->flags & EP_F_HOST))
		return ctx_pass(&c, TRACE_FROM_OVERLAY);
	return deliver_from_node(&c, skb, eth, ip4, dst);
}

SEC("tc")
int to_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct pkt_ctx c = {};
	struct endpoint_info *src;
	struct iphdr *ip4;

	ctx_init(&c, skb, METRIC_DIR_EGRESS);
	/* Until parsed as IPv4: not ours, counted from-stack. */
	c.reason = REASON_FROM_STACK;
	c.ct_status = CT_UNTRACKED;
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return ctx_not_ours(&c);
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_not_ours(&c);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!ip4)
		return ctx_not_ours(&c);
	/* IPv4: only the drop below is counted. */
	c.reason = CTX_REASON_NONE;
	c.ct_status = CT_NEW;
	src = endpoint_lookup4(ip4->saddr);
	if (src && !(src->flags & EP_F_HOST))
		c.ep_id = src->endpoint_id;
	if (ipv4_hdr_valid(ip4, c.len) && !flow4_parse(skb, ip4, &c.f) && c.ep_id)
		ctx_ct_seen(&c);
	c.src_id = identity_of4(src, ip4->saddr, c.cfg);
	c.dst_id = identity_of4(NULL, ip4->daddr, c.cfg);

	/* A pod's packet arrives with its key set (from_container); what the node
	 * routed here gets it now. */
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0 && key.tunnel_id && key.remote_ipv4) {
		c.tunnel_remote = bpf_htonl(key.remote_ipv4);
		return ctx_pass(&c, TRACE_TO_OVERLAY);
	}
	if (tunnel_key_set(skb, ip4->daddr, c.src_id, &c.tunnel_remote))
		return ctx_drop(&c, DROP_NO_TUNNEL_ENDPOINT);
	return ctx_pass(&c, TRACE_TO_OVERLAY);
}
