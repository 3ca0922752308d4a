/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 connection tracking (semantics in myelin_abi.h). */
#ifndef MYELIN_LIB_CONNTRACK_H
#define MYELIN_LIB_CONNTRACK_H

#include "common.h"
#include "maps.h"
#include "l4.h"

#define NSEC_PER_SEC 1000000000ULL

enum ct_status {
	CT_NEW,          /* no entry: policy decides, an allowed packet creates one */
	CT_ESTABLISHED,  /* original direction of a tracked connection: policy re-runs */
	CT_REPLY,        /* reply direction: passes */
	CT_RELATED,      /* ICMP error about a tracked connection: passes */
};

static __always_inline void ct4_reverse(const struct ct4_key *k, struct ct4_key *r)
{
	r->saddr = k->daddr;
	r->daddr = k->saddr;
	r->sport = k->dport;
	r->dport = k->sport;
	r->protocol = k->protocol;
	r->_pad[0] = r->_pad[1] = r->_pad[2] = 0;
}

static __always_inline int ct4_tuple_lookup(const struct ct4_key *k, struct ct4_entry **fwd,
					    struct ct4_entry **rev)
{
	struct ct4_key r;

	*fwd = bpf_map_lookup_elem(&ct4, k);
	if (*fwd)
		return CT_ESTABLISHED;
	ct4_reverse(k, &r);
	*rev = bpf_map_lookup_elem(&ct4, &r);
	if (*rev)
		return CT_REPLY;
	return CT_NEW;
}

/* Classify the packet; *e is the entry for ESTABLISHED and REPLY. */
static __always_inline enum ct_status ct4_lookup(const struct flow4 *f, struct ct4_entry **e)
{
	struct ct4_entry *fwd = NULL, *rev = NULL;

	*e = NULL;
	if (f->icmp_error) {
		if (ct4_tuple_lookup(&f->inner, &fwd, &rev) != CT_NEW)
			return CT_RELATED;
		return CT_NEW;
	}
	switch (ct4_tuple_lookup(&f->tuple, &fwd, &rev)) {
	case CT_ESTABLISHED:
		*e = fwd;
		return CT_ESTABLISHED;
	case CT_REPLY:
		*e = rev;
		return CT_REPLY;
	default:
		return CT_NEW;
	}
}

static __always_inline __u32 ct_secs(__u32 configured, __u32 dflt)
{
	return configured ? configured : dflt;
}

static __always_inline __u64 ct_lifetime_ns(const struct node_config *cfg, __u8 proto,
					    __u32 flags)
{
	__u32 s;

	if (proto != IPPROTO_TCP)
		s = ct_secs(cfg ? cfg->ct_other_s : 0, CT_DEFAULT_OTHER_S);
	else if ((flags & CT_F_RST) ||
		 (flags & (CT_F_FIN_FWD | CT_F_FIN_REV)) == (CT_F_FIN_FWD | CT_F_FIN_REV))
		s = ct_secs(cfg ? cfg->ct_tcp_closing_s : 0, CT_DEFAULT_TCP_CLOSING_S);
	else if (flags & CT_F_ESTABLISHED)
		s = ct_secs(cfg ? cfg->ct_tcp_established_s : 0, CT_DEFAULT_TCP_ESTABLISHED_S);
	else
		s = ct_secs(cfg ? cfg->ct_tcp_syn_s : 0, CT_DEFAULT_TCP_SYN_S);
	return (__u64)s * NSEC_PER_SEC;
}

/* TCP state after a packet with `tcp` flags in direction `reply`. */
static __always_inline __u32 ct_tcp_flags(__u32 flags, __u8 tcp, int reply)
{
	if (!reply && (tcp & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
	    (flags & (CT_F_RST | CT_F_FIN_FWD | CT_F_FIN_REV)))
		flags = 0; /* a new connection reusing a closed one's tuple */
	if (tcp & TCP_FLAG_SYN) {
		if (!reply)
			flags |= CT_F_SYN_SEEN;
	} else {
		flags |= CT_F_ESTABLISHED;
	}
	if (tcp & TCP_FLAG_FIN)
		flags |= reply ? CT_F_FIN_REV : CT_F_FIN_FWD;
	if (tcp & TCP_FLAG_RST)
		flags |= CT_F_RST;
	return flags;
}

/* Account a packet to an existing entry and refresh its lifetime. */
static __always_inline void ct4_update(struct ct4_entry *e, const struct flow4 *f, int reply,
				       const struct node_config *cfg, __u64 bytes)
{
	__u32 flags = e->flags, nf = flags;
	__u64 expires;

	if (f->tuple.protocol == IPPROTO_TCP)
		nf = ct_tcp_flags(flags, f->tcp_flags, reply);
	if (reply)
		nf |= CT_F_REPLY_SEEN;
	if (nf != flags)
		e->flags = nf;
	expires = bpf_ktime_get_ns() + ct_lifetime_ns(cfg, f->tuple.protocol, nf);
	/* Writing the same cache line on every packet of a busy flow costs;
	 * refresh only when it moved by a second or more. */
	if (expires > e->expires_ns + NSEC_PER_SEC || nf != flags)
		e->expires_ns = expires;
	if (reply) {
		__sync_fetch_and_add(&e->rev_packets, 1);
		__sync_fetch_and_add(&e->rev_bytes, bytes);
	} else {
		__sync_fetch_and_add(&e->fwd_packets, 1);
		__sync_fetch_and_add(&e->fwd_bytes, bytes);
	}
}

/* Track a new connection whose first packet was allowed. */
static __always_inline void ct4_create(const struct flow4 *f, const struct node_config *cfg,
				       __u32 egress_rule, __u32 ingress_rule, __u64 bytes)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 flags = 0;
	struct ct4_entry n = {};

	if (f->tuple.protocol == IPPROTO_TCP)
		flags = ct_tcp_flags(0, f->tcp_flags, 0);
	n.created_ns = now;
	n.expires_ns = now + ct_lifetime_ns(cfg, f->tuple.protocol, flags);
	n.fwd_packets = 1;
	n.fwd_bytes = bytes;
	n.egress_rule_id = egress_rule;
	n.ingress_rule_id = ingress_rule;
	n.flags = flags;
	bpf_map_update_elem(&ct4, &f->tuple, &n, BPF_ANY);
}

#endif /* MYELIN_LIB_CONNTRACK_H */
