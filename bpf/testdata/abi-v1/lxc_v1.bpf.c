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
 *   to_container    tcx/egress   packets the node's stack sends to the pod
 *                                (from the node itself, or the world).
 *
 * Policy and connection tracking (lib/policy.h, lib/conntrack.h):
 *   from_container: after anti-spoofing, CT lookup. Replies and related ICMP
 *     errors pass. Anything else runs the sender's EGRESS policy against the
 *     destination's identity and, when the destination is a local pod, that
 *     pod's INGRESS policy against the sender's identity (the redirect skips
 *     the destination's to_container). The first allowed packet creates the
 *     CT entry; later packets of the original direction re-run policy.
 *   to_container: CT lookup (replies to the pod's own connections pass),
 *     else the pod's INGRESS policy against the source's identity; traffic
 *     from identity host passes unless NODE_F_NO_ALLOW_LOCALHOST.
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/endpoint.h"
#include "lib/ipv4.h"
#include "lib/arp.h"
#include "lib/l4.h"
#include "lib/identity.h"
#include "lib/conntrack.h"
#include "lib/policy.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never called: their prototypes put the ABI enums into BTF so the Rust
 * skeleton gets them as types (no hand-copied constants). libbpf does not
 * load unreferenced global functions. (BPF functions take at most five
 * arguments, hence several anchors.) */
__attribute__((noinline)) int myelin_abi_btf_anchor(enum metric_dir dir, enum myelin_reason reason,
						    enum policy_verdict verdict)
{
	return (int)dir + (int)reason + (int)verdict;
}

__attribute__((noinline)) int myelin_abi_btf_anchor_policy(enum reserved_identity id,
							   enum policy_prefix prefix,
							   enum policy_entry_flags flags)
{
	return (int)id + (int)prefix + (int)flags;
}

__attribute__((noinline)) int myelin_abi_btf_anchor_ct(enum ct_flags flags, enum node_flags nflags,
						       enum ct_default_timeout timeout)
{
	return (int)flags + (int)nflags + (int)timeout;
}

/* The key and value of the inner policy tries appear in no map definition
 * (see lib/maps.h): this puts them in BTF for the skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_types(struct policy_key *k,
							  struct policy_entry *e)
{
	return (int)k->prefixlen + (int)e->verdict;
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
	struct node_config *cfg;
	struct ct4_entry *ct;
	struct flow4 f = {};
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 len = skb->len;
	__u32 egress_rule, ingress_rule = 0;
	int status, reason, to_pod;

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
	if (flow4_parse(skb, ip4, &f))
		goto invalid_src;

	dst = endpoint_lookup4(ip4->daddr);
	to_pod = dst && !(dst->flags & EP_F_HOST);
	cfg = node_config_get();

	status = ct4_lookup(&f, &ct);
	if (status == CT_REPLY || status == CT_RELATED) {
		if (ct)
			ct4_update(ct, &f, 1, cfg, len);
		goto forward;
	}

	reason = policy_check(src->endpoint_id, identity_of4(dst, ip4->daddr, cfg),
			      METRIC_DIR_EGRESS, f.tuple.protocol, f.policy_port, len,
			      &egress_rule);
	if (reason) {
		metrics_add(src->endpoint_id, METRIC_DIR_EGRESS, reason, len);
		return TC_ACT_SHOT;
	}
	if (to_pod) {
		reason = policy_check(dst->endpoint_id, src->identity, METRIC_DIR_INGRESS,
				      f.tuple.protocol, f.policy_port, len, &ingress_rule);
		if (reason) {
			metrics_add(dst->endpoint_id, METRIC_DIR_INGRESS, reason, len);
			return TC_ACT_SHOT;
		}
	}
	if (ct) {
		ct4_update(ct, &f, 0, cfg, len);
		if (ct->egress_rule_id != egress_rule)
			ct->egress_rule_id = egress_rule;
		if (ct->ingress_rule_id != ingress_rule)
			ct->ingress_rule_id = ingress_rule;
	} else if (!f.icmp_error) {
		ct4_create(&f, cfg, egress_rule, ingress_rule, len);
	}

forward:
	if (!to_pod || ip4->ttl <= 1) {
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

invalid_src:
	metrics_add(src->endpoint_id, METRIC_DIR_EGRESS, DROP_INVALID, len);
	return TC_ACT_SHOT;
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
	struct node_config *cfg;
	struct ct4_entry *ct;
	struct flow4 f = {};
	struct iphdr *ip4;
	__u32 len = skb->len;
	__u32 peer, rule = 0;
	int status, reason;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return TC_ACT_OK;
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!ip4)
		return TC_ACT_OK;

	ep = endpoint_lookup4(ip4->daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return TC_ACT_OK;
	if (!ipv4_hdr_valid(ip4, len) || flow4_parse(skb, ip4, &f)) {
		metrics_add(ep->endpoint_id, METRIC_DIR_INGRESS, DROP_INVALID, len);
		return TC_ACT_SHOT;
	}
	cfg = node_config_get();

	status = ct4_lookup(&f, &ct);
	if (status == CT_REPLY || status == CT_RELATED) {
		if (ct)
			ct4_update(ct, &f, 1, cfg, len);
		goto pass;
	}

	peer = identity_of4(endpoint_lookup4(ip4->saddr), ip4->saddr, cfg);
	if (peer == IDENTITY_HOST && !(cfg && (cfg->flags & NODE_F_NO_ALLOW_LOCALHOST))) {
		reason = 0; /* the node always reaches its pods */
	} else {
		reason = policy_check(ep->endpoint_id, peer, METRIC_DIR_INGRESS, f.tuple.protocol,
				      f.policy_port, len, &rule);
	}
	if (reason) {
		metrics_add(ep->endpoint_id, METRIC_DIR_INGRESS, reason, len);
		return TC_ACT_SHOT;
	}
	if (ct) {
		ct4_update(ct, &f, 0, cfg, len);
		if (ct->ingress_rule_id != rule)
			ct->ingress_rule_id = rule;
	} else if (!f.icmp_error) {
		ct4_create(&f, cfg, 0, rule, len);
	}

pass:
	metrics_add(ep->endpoint_id, METRIC_DIR_INGRESS, REASON_FROM_STACK, len);
	return TC_ACT_OK;
}
