// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Pod veth programs, attached with TCX on the host-side veth (node netns).
 *
 *   from_container  tcx/ingress  packets sent BY the pod:
 *                                ARP requests -> answered here (gateway MAC =
 *                                host veth MAC); IPv4 -> anti-spoofing, then
 *                                local pod -> bpf_redirect_peer() straight into
 *                                the destination pod's netns (no routing, works
 *                                with ip_forward=0), anything else -> stack.
 *   to_container    tcx/egress   packets the node's stack sends to the pod:
 *                                counted; later, ingress policy runs here.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/endpoint.h"
#include "lib/ipv4.h"
#include "lib/arp.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never called: its prototype puts the ABI enums into BTF so the Rust
 * skeleton gets them as types (no hand-copied constants). libbpf does not
 * load unreferenced global functions. */
__attribute__((noinline)) int myelin_abi_btf_anchor(enum metric_dir dir, enum myelin_reason reason)
{
	return (int)dir + (int)reason;
}

static __always_inline int handle_arp(struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct arphdr *arp;
	struct arp_eth_ipv4 *body;
	struct endpoint_info *ep;
	__u32 sip, tip;

	if (skb_ensure_linear(skb, ARP_ETH_IPV4_LEN))
		return TC_ACT_OK;
	eth = skb_ptr(skb, 0, ETH_HLEN);
	arp = skb_ptr(skb, ETH_HLEN, sizeof(*arp));
	body = skb_ptr(skb, ETH_HLEN + sizeof(*arp), sizeof(*body));
	if (!eth || !arp || !body)
		return TC_ACT_OK;
	if (!arp_is_eth_ipv4_request(arp))
		return TC_ACT_OK;

	sip = arp_ip(body->sip);
	tip = arp_ip(body->tip);
	/* DAD probes (sip 0) and gratuitous ARP (tip == sip) go to the stack. */
	if (sip == 0 || tip == sip)
		return TC_ACT_OK;

	ep = endpoint_lookup4(sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_OK;

	arp_make_reply(eth, arp, body, ep->host_mac);
	metrics_add(ep->endpoint_id, METRIC_DIR_EGRESS, REASON_ARP_REPLY, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}

static __always_inline int handle_ipv4(struct __sk_buff *skb)
{
	struct endpoint_info *src, *dst;
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 len = skb->len;

	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		goto invalid;
	eth = skb_ptr(skb, 0, ETH_HLEN);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!eth || !ip4 || !ipv4_hdr_valid(ip4, len))
		goto invalid;

	/* Anti-spoofing: the source must be the endpoint behind this veth. */
	src = endpoint_lookup4(ip4->saddr);
	if (!src || src->ifindex != skb->ifindex) {
		metrics_add(0, METRIC_DIR_EGRESS, DROP_INVALID_SIP, len);
		return TC_ACT_SHOT;
	}

	dst = endpoint_lookup4(ip4->daddr);
	if (!dst || (dst->flags & EP_F_HOST) || ip4->ttl <= 1) {
		/* Node, world, or TTL expiring: the stack decides (and sends
		 * ICMP time exceeded where it forwards). */
		metrics_add(src->endpoint_id, METRIC_DIR_EGRESS, REASON_TO_STACK, len);
		return TC_ACT_OK;
	}

	ipv4_dec_ttl(ip4);
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, dst->host_mac);

	metrics_add(src->endpoint_id, METRIC_DIR_EGRESS, REASON_FORWARDED, len);
	metrics_add(dst->endpoint_id, METRIC_DIR_INGRESS, REASON_FORWARDED, len);
	return bpf_redirect_peer(dst->ifindex, 0);

invalid:
	metrics_add(0, METRIC_DIR_EGRESS, DROP_INVALID, len);
	return TC_ACT_SHOT;
}

SEC("tcx/ingress")
int from_container(struct __sk_buff *skb)
{
	switch (skb->protocol) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(skb);
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(skb);
	default:
		/* IPv6 and the rest: not handled yet, the stack decides. */
		return TC_ACT_OK;
	}
}

SEC("tcx/egress")
int to_container(struct __sk_buff *skb)
{
	struct endpoint_info *ep;
	struct iphdr *ip4;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return TC_ACT_OK;
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!ip4)
		return TC_ACT_OK;

	ep = endpoint_lookup4(ip4->daddr);
	if (ep && ep->ifindex == skb->ifindex)
		metrics_add(ep->endpoint_id, METRIC_DIR_INGRESS, REASON_FROM_STACK, skb->len);
	return TC_ACT_OK;
}
