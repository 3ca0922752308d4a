// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Pod veth programs, attached on the host-side veth (node netns).
 *
 *   from_container  ingress  packets sent BY the pod:
 *                            ARP requests -> answered here (gateway MAC =
 *                            host veth MAC); IPv4 -> anti-spoofing, policy,
 *                            conntrack, then local pod -> bpf_redirect_peer()
 *                            straight into the destination pod's netns (no
 *                            routing, works with ip_forward=0), anything else
 *                            -> the node's stack.
 *   to_container    egress   packets the node's stack sends to the pod (from
 *                            the node itself, other nodes, or the world).
 *
 * Policy and connection tracking (lib/policy.h, lib/conntrack.h):
 *   from_container: after anti-spoofing, CT lookup. Replies and related ICMP
 *     errors pass. Anything else runs the sender's EGRESS policy against the
 *     destination's identity and, when the destination is a local pod, that
 *     pod's INGRESS policy against the sender's identity (the redirect skips
 *     the destination's to_container). The first allowed packet creates the
 *     CT entry (with both identities); later packets of the original
 *     direction re-run policy.
 *   to_container: CT lookup (replies to the pod's own connections pass),
 *     else the pod's INGRESS policy against the source's identity; traffic
 *     from identity host passes unless NODE_F_NO_ALLOW_LOCALHOST.
 *
 * Every packet leaves through one of the verdict exits of lib/verdict.h,
 * which count it and report it as a flow event.
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/ctx.h"
#include "lib/endpoint.h"
#include "lib/ipcache.h"
#include "lib/ipv4.h"
#include "lib/arp.h"
#include "lib/l4.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/verdict.h"
#include "lib/tunnel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Never called: their prototypes put the ABI enums and the structs no map
 * names into BTF, so the Rust skeleton gets them as types (no hand-copied
 * constants). libbpf does not load unreferenced global functions. (BPF
 * functions take at most five arguments, hence several anchors.) */
__attribute__((noinline)) int myelin_abi_btf_anchor(enum metric_dir dir, enum myelin_reason reason,
						    enum policy_verdict verdict)
{
	return (int)dir + (int)reason + (int)verdict;
}

__attribute__((noinline)) int myelin_abi_btf_anchor_policy(enum reserved_identity id,
							   enum policy_prefix prefix,
							   enum policy_entry_flags flags,
							   enum policy_match match)
{
	return (int)id + (int)prefix + (int)flags + (int)match;
}

__attribute__((noinline)) int myelin_abi_btf_anchor_ct(enum ct_flags flags, enum node_flags nflags,
						       enum ct_default_timeout timeout)
{
	return (int)flags + (int)nflags + (int)timeout;
}

__attribute__((noinline)) int myelin_abi_btf_anchor_events(enum event_type type, enum trace_point point,
							   enum trace_reason reason, enum event_flags flags,
							   enum monitor_aggregation agg)
{
	return (int)type + (int)point + (int)reason + (int)flags + (int)agg;
}

/* The key and value of the inner policy tries appear in no map definition
 * (see lib/policy.h), and events are not map values: this puts them in BTF. */
__attribute__((noinline)) int myelin_abi_btf_anchor_types(struct policy_key *k, struct policy_entry *e,
							  struct event *ev)
{
	return (int)k->prefixlen + (int)e->verdict + (int)ev->type;
}

/* The Ethernet/IPv4 ARP frame at the start of the packet: 0 and its parts,
 * or -1 if it is not one (or too short). */
static __always_inline int arp_parse(struct __sk_buff *skb, struct ethhdr **eth, struct arphdr **arp,
				     struct arp_eth_ipv4 **body)
{
	if (skb_ensure_linear(skb, ARP_ETH_IPV4_LEN))
		return -1;
	*eth = skb_ptr(skb, 0, ETH_HLEN);
	*arp = skb_ptr(skb, ETH_HLEN, sizeof(**arp));
	*body = skb_ptr(skb, ETH_HLEN + sizeof(**arp), sizeof(**body));
	if (!*eth || !*arp || !*body || !arp_is_eth_ipv4(*arp))
		return -1;
	return 0;
}

/* ARP from the pod: requests from its own address for another address are
 * answered here with the host veth's MAC (the pod's gateway MAC); the rest
 * (its replies, DAD probes, gratuitous ARP, anything from another address)
 * goes on to the stack, counted against the pod when the sender address is
 * its own. */
static __always_inline int handle_arp(struct pkt_ctx *c, struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct arphdr *arp;
	struct arp_eth_ipv4 *body;
	struct endpoint_info *ep;
	__u32 sip, tip;

	c->ct_status = CT_UNTRACKED;
	if (arp_parse(skb, &eth, &arp, &body))
		return ctx_not_ours(c);
	sip = arp_ip(body->sip);
	tip = arp_ip(body->tip);
	if (sip == 0)
		return ctx_not_ours(c); /* a DAD probe */
	ep = endpoint_lookup4(sip);
	if (!ep || ep->ifindex != skb->ifindex)
		return ctx_not_ours(c); /* not the pod's address: never answered */
	c->ep_id = ep->endpoint_id;
	c->src_id = endpoint_identity(ep);
	/* Replies (to the node's requests) and gratuitous ARP (tip == sip) go to the stack. */
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST) || tip == sip)
		return ctx_not_ours(c);

	arp_make_reply(eth, arp, body, ep->host_mac);
	/* The frame is now the node's answer to the pod. */
	c->dst_id = c->src_id;
	c->src_id = IDENTITY_HOST;
	return ctx_arp_reply(c);
}

/* A pod of another node (the ipcache names it, it is not here): with an
 * overlay, the tunnel key set here (remote = the node holding the address,
 * VNI = the pod's identity) and straight into the tunnel device; else out of the device the kernel's FIB gives, with its next hop's
 * MACs (Cilium's BPF host routing). Whatever the FIB cannot answer goes to the
 * stack, which decides and reports. */
static __always_inline int to_other_node(struct pkt_ctx *c, struct __sk_buff *skb, struct ethhdr *eth,
					 struct iphdr *ip4)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	__u32 ifindex = overlay_ifindex();
	int r;

	if (ifindex) {
		if (tunnel_key_set(skb, ip4->daddr, c->src_id, &c->tunnel_remote))
			return ctx_drop(c, DROP_NO_TUNNEL_ENDPOINT);
		ipv4_dec_ttl(ip4);
		return ctx_redirect_node(c, ifindex, NULL, TRACE_TO_OVERLAY);
	}
	fib.family = MYELIN_AF_INET;
	fib.ifindex = skb->ifindex;
	fib.tos = ip4->tos;
	fib.l4_protocol = ip4->protocol;
	/* tot_len 0: the kernel checks the skb against the egress MTU itself,
	 * GSO-aware (a GSO packet's IP length is above any MTU). */
	fib.tot_len = 0;
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = ip4->daddr;
	r = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (r == BPF_FIB_LKUP_RET_SUCCESS) {
		ipv4_dec_ttl(ip4);
		mac_copy(eth->h_dest, fib.dmac);
		mac_copy(eth->h_source, fib.smac);
		return ctx_redirect_node(c, fib.ifindex, NULL, TRACE_TO_NETWORK);
	}
	if (r == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = MYELIN_AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
		ipv4_dec_ttl(ip4);
		return ctx_redirect_node(c, fib.ifindex, &nh, TRACE_TO_NETWORK);
	}
	return ctx_to_stack(c);
}

static __always_inline int from_container_ipv4(struct pkt_ctx *c, struct __sk_buff *skb)
{
	struct endpoint_info *src, *dst;
	struct ct4_entry *ct;
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 egress_rule, ingress_rule = 0;
	int to_pod;

	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_drop(c, DROP_INVALID);
	eth = skb_ptr(skb, 0, ETH_HLEN);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!eth || !ip4 || !ipv4_hdr_valid(ip4, c->len))
		return ctx_drop(c, DROP_INVALID);

	/* Anti-spoofing: the source must be the endpoint behind this veth. */
	src = endpoint_lookup4(ip4->saddr);
	if (!src || src->ifindex != skb->ifindex)
		return ctx_drop(c, DROP_INVALID_SIP);
	c->ep_id = src->endpoint_id;
	c->src_id = endpoint_identity(src);
	if (flow4_parse(skb, ip4, &c->f))
		return ctx_drop(c, DROP_INVALID);

	dst = endpoint_lookup4(ip4->daddr);
	to_pod = dst && !(dst->flags & EP_F_HOST);
	c->dst_id = identity_of4(dst, ip4->daddr, c->cfg);

	ct = ctx_ct(c);
	if (c->ct_status == CT_REPLY || c->ct_status == CT_RELATED)
		goto forward;

	if (ctx_policy(c, src->endpoint_id, c->dst_id, ip4->daddr, METRIC_DIR_EGRESS))
		return ctx_deny(c);
	egress_rule = c->rule_id;
	if (to_pod) {
		/* A denial here is the destination's: counted for its ingress. */
		if (ctx_policy(c, dst->endpoint_id, c->src_id, ip4->saddr, METRIC_DIR_INGRESS))
			return ctx_deny(c);
		ingress_rule = c->rule_id;
	}
	ctx_ct_commit(c, ct, egress_rule, ingress_rule);

forward:
	/* Node, world, or TTL expiring: the stack decides (and sends ICMP
	 * time exceeded where it forwards). */
	if (ip4->ttl <= 1)
		return ctx_to_stack(c);
	if (!to_pod)
		return identity_is_workload(c->dst_id) ? to_other_node(c, skb, eth, ip4) : ctx_to_stack(c);

	ipv4_dec_ttl(ip4);
	mac_copy(eth->h_dest, dst->mac);
	mac_copy(eth->h_source, dst->host_mac);
	return ctx_redirect_peer(c, dst);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	struct pkt_ctx c = {};

	ctx_init(&c, skb, METRIC_DIR_EGRESS);
	/* Until an exit decides otherwise, what the pod sends goes on to the
	 * node's stack (counted TO_STACK). */
	c.reason = REASON_TO_STACK;
	c.obs_point = TRACE_TO_STACK;
	switch (skb->protocol) {
	case bpf_htons(ETH_P_ARP):
		return handle_arp(&c, skb);
	case bpf_htons(ETH_P_IP):
		return from_container_ipv4(&c, skb);
	default:
		/* IPv6 and the rest: not handled yet, the stack decides. */
		c.ct_status = CT_UNTRACKED;
		return ctx_not_ours(&c);
	}
}

/* ARP the node sends to the pod (requests for its address, replies): counted
 * against the pod when the target address is its own. The replies
 * from_container built (from the gateway MAC, the host veth's) pass here on
 * their way back out: its ARP-reply exit counted and reported them already,
 * so there is nothing left to count or report. */
static __always_inline void arp_to_endpoint(struct pkt_ctx *c, struct __sk_buff *skb)
{
	struct ethhdr *eth;
	struct arphdr *arp;
	struct arp_eth_ipv4 *body;
	struct endpoint_info *ep;

	if (arp_parse(skb, &eth, &arp, &body))
		return;
	ep = endpoint_lookup4(arp_ip(body->tip));
	if (!ep || ep->ifindex != skb->ifindex)
		return;
	if (arp->ar_op == bpf_htons(ARPOP_REPLY) && mac_eq(body->sha, ep->host_mac)) {
		c->reason = CTX_REASON_NONE;
		c->obs_point = CTX_POINT_NONE;
		return;
	}
	c->ep_id = ep->endpoint_id;
	c->dst_id = endpoint_identity(ep);
	c->src_id = IDENTITY_HOST;
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	struct pkt_ctx c = {};
	struct endpoint_info *ep;
	struct ct4_entry *ct;
	struct iphdr *ip4;

	ctx_init(&c, skb, METRIC_DIR_INGRESS);
	/* Until an exit decides otherwise, what the stack sends reaches the pod
	 * (counted FROM_STACK). */
	c.reason = REASON_FROM_STACK;
	c.obs_point = TRACE_TO_LXC;
	if (skb->protocol != bpf_htons(ETH_P_IP)) {
		c.ct_status = CT_UNTRACKED;
		if (skb->protocol == bpf_htons(ETH_P_ARP))
			arp_to_endpoint(&c, skb);
		return ctx_not_ours(&c);
	}
	c.ct_status = CT_UNTRACKED; /* until parsed */
	if (skb_ensure_linear(skb, ETH_HLEN + sizeof(struct iphdr)))
		return ctx_not_ours(&c);
	ip4 = skb_ptr(skb, ETH_HLEN, sizeof(*ip4));
	if (!ip4)
		return ctx_not_ours(&c);

	ep = endpoint_lookup4(ip4->daddr);
	if (!ep || ep->ifindex != skb->ifindex)
		return ctx_not_ours(&c);
	c.ct_status = CT_NEW;
	c.ep_id = ep->endpoint_id;
	c.dst_id = endpoint_identity(ep);
	if (!ipv4_hdr_valid(ip4, c.len) || flow4_parse(skb, ip4, &c.f))
		return ctx_drop(&c, DROP_INVALID);
	c.src_id = identity_of4(endpoint_lookup4(ip4->saddr), ip4->saddr, c.cfg);

	ct = ctx_ct(&c);
	if (c.ct_status == CT_REPLY || c.ct_status == CT_RELATED)
		return ctx_from_stack(&c);

	/* The node always reaches its pods (allow-localhost) unless told not to. */
	if ((c.src_id != IDENTITY_HOST || (c.cfg && (c.cfg->flags & NODE_F_NO_ALLOW_LOCALHOST))) &&
	    ctx_policy(&c, ep->endpoint_id, c.src_id, ip4->saddr, METRIC_DIR_INGRESS))
		return ctx_deny(&c);
	ctx_ct_commit(&c, ct, 0, c.rule_id);
	return ctx_from_stack(&c);
}
