/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 connection tracking (semantics in myelin_abi.h). Entries carry the
 * identities of both ends and the state monitor aggregation needs. */
#ifndef MYELIN_LIB_CONNTRACK_H
#define MYELIN_LIB_CONNTRACK_H

#include "common.h"
#include "config.h"
#include "ctx.h"
#include "l4.h"

#define NSEC_PER_SEC  1000000000ULL
#define NSEC_PER_USEC 1000ULL

/* Connection tracking. LRU: evicts the least recently used connections
 * under pressure; user space also collects expired ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, MYELIN_MAX_CT4);
	MYELIN_PINNED;
} ct4 SEC(".maps");

/* enum ct_status (the state a packet carries in its context) is in ctx.h. */

/* TCP flags whose first appearance in a direction is reported at medium
 * aggregation (Cilium's default "syn,fin,rst"); maximum reports only the
 * closing ones after the first packet. */
#define CT_REPORT_FLAGS_MEDIUM  (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST)
#define CT_REPORT_FLAGS_MAXIMUM (TCP_FLAG_FIN | TCP_FLAG_RST)

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

/* Classify the packet; *e is the entry for ESTABLISHED, REPLY and RELATED
 * (the connection the ICMP error is about). */
static __always_inline enum ct_status ct4_lookup(const struct flow4 *f, struct ct4_entry **e)
{
	struct ct4_entry *fwd = NULL, *rev = NULL;

	*e = NULL;
	if (f->icmp_error) {
		if (ct4_tuple_lookup(&f->inner, &fwd, &rev) != CT_NEW) {
			*e = fwd ? fwd : rev;
			return CT_RELATED;
		}
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

/* Monitor aggregation: does the packet of entry `e` deserve an event? (No
 * side effects: callers may ask before policy has allowed the packet.) */
static __always_inline int ct4_report(const struct ct4_entry *e, const struct flow4 *f, int reply,
				      const struct node_config *cfg, __u8 agg)
{
	__u32 now_s = (__u32)(bpf_ktime_get_ns() / NSEC_PER_SEC);
	__u8 seen = reply ? e->rev_tcp_seen : e->fwd_tcp_seen;
	__u8 mask = agg == MONITOR_AGG_MAXIMUM ? CT_REPORT_FLAGS_MAXIMUM : CT_REPORT_FLAGS_MEDIUM;

	if (agg <= MONITOR_AGG_LOW)
		return 1;
	/* The first reply of a connection is news (the first packet of the
	 * original direction was, as a new connection). */
	if (reply && !(e->flags & CT_F_REPLY_SEEN))
		return 1;
	if (f->tuple.protocol == IPPROTO_TCP && (f->tcp_flags & mask & ~seen))
		return 1;
	return now_s - e->last_report_s >= cfg_monitor_interval_s(cfg);
}

/* What ct4_update() tells the caller about the packet. */
struct ct_update {
	__u8 report;        /* monitor aggregation: emit trace/verdict events */
	__u8 handshake;     /* the SYN-ACK that completed the handshake measurement */
};

/* Account a packet to an existing entry and refresh its lifetime; decide
 * whether monitor aggregation `agg` reports it. */
static __always_inline struct ct_update ct4_update(struct ct4_entry *e, const struct flow4 *f, int reply,
						   const struct node_config *cfg, __u64 bytes, __u8 agg)
{
	struct ct_update u = {};
	__u32 flags = e->flags, nf = flags;
	__u64 now = bpf_ktime_get_ns();
	__u32 now_s = (__u32)(now / NSEC_PER_SEC);
	__u64 expires;
	__u8 seen;
	int report = ct4_report(e, f, reply, cfg, agg);

	if (f->tuple.protocol == IPPROTO_TCP) {
		nf = ct_tcp_flags(flags, f->tcp_flags, reply);
		if (!reply && (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
		    (flags & (CT_F_RST | CT_F_FIN_FWD | CT_F_FIN_REV))) {
			/* A reused tuple: a new connection starts (ct_tcp_flags
			 * cleared the state the same way). */
			e->fwd_tcp_seen = 0;
			e->rev_tcp_seen = 0;
			e->handshake_us = 0;
			e->created_ns = now;
		}
	}
	if (reply)
		nf |= CT_F_REPLY_SEEN;
	if (nf != flags)
		e->flags = nf;
	expires = now + ct_lifetime_ns(cfg, f->tuple.protocol, nf);
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

	/* Handshake latency: the first SYN-ACK of the reply direction. */
	if (reply && f->tuple.protocol == IPPROTO_TCP &&
	    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK) &&
	    !(e->rev_tcp_seen & TCP_FLAG_SYN) && e->created_ns && now > e->created_ns) {
		__u64 us = (now - e->created_ns) / NSEC_PER_USEC;

		e->handshake_us = us > 0xffffffffULL ? 0xffffffff : (us ? (__u32)us : 1);
		u.handshake = 1;
	}

	/* Monitor aggregation (decided on the state before this packet). */
	u.report = report || u.handshake;
	seen = reply ? e->rev_tcp_seen : e->fwd_tcp_seen;
	if (f->tuple.protocol == IPPROTO_TCP && (f->tcp_flags & ~seen & CT_REPORT_FLAGS_MEDIUM)) {
		if (reply)
			e->rev_tcp_seen = seen | (f->tcp_flags & CT_REPORT_FLAGS_MEDIUM);
		else
			e->fwd_tcp_seen = seen | (f->tcp_flags & CT_REPORT_FLAGS_MEDIUM);
	}
	if (u.report && e->last_report_s != now_s)
		e->last_report_s = now_s;
	return u;
}

/* Track a new connection whose first packet was allowed. */
static __always_inline void ct4_create(const struct flow4 *f, const struct node_config *cfg,
				       __u32 egress_rule, __u32 ingress_rule, __u32 src_identity,
				       __u32 dst_identity, __u64 bytes)
{
	__u64 now = bpf_ktime_get_ns();
	__u32 flags = 0;
	struct ct4_entry n = {};

	if (f->tuple.protocol == IPPROTO_TCP) {
		flags = ct_tcp_flags(0, f->tcp_flags, 0);
		n.fwd_tcp_seen = f->tcp_flags & CT_REPORT_FLAGS_MEDIUM;
	}
	n.created_ns = now;
	n.expires_ns = now + ct_lifetime_ns(cfg, f->tuple.protocol, flags);
	n.fwd_packets = 1;
	n.fwd_bytes = bytes;
	n.egress_rule_id = egress_rule;
	n.ingress_rule_id = ingress_rule;
	n.src_identity = src_identity;
	n.dst_identity = dst_identity;
	n.last_report_s = (__u32)(now / NSEC_PER_SEC);
	n.flags = flags;
	bpf_map_update_elem(&ct4, &f->tuple, &n, BPF_ANY);
}

/* Classify the context's packet. Replies and related ICMP errors are
 * accounted here and attributed with the identities the connection was
 * decided with; the original direction is accounted by ctx_ct_commit()
 * once policy allowed it. */
/* On a device after the pod's program (the uplink's or the tunnel's egress):
 * the pod's program tracked and reported the connection as monitor
 * aggregation allows, so report here only what conntrack has not seen
 * (read-only: nothing is created or refreshed). */
static __always_inline void ctx_ct_seen(struct pkt_ctx *c)
{
	struct ct4_entry *e;

	c->ct_status = ct4_lookup(&c->f, &e);
	if (c->ct_status != CT_NEW)
		c->report = 0;
}

static __always_inline struct ct4_entry *ctx_ct(struct pkt_ctx *c)
{
	struct ct4_entry *e;
	struct ct_update u;

	c->ct_status = ct4_lookup(&c->f, &e);
	if (!e)
		return NULL;
	if (c->ct_status == CT_ESTABLISHED)
		c->report = ct4_report(e, &c->f, 0, c->cfg, c->agg);
	if (c->ct_status == CT_REPLY) {
		u = ct4_update(e, &c->f, 1, c->cfg, c->len, c->agg);
		c->report = u.report;
		if (u.handshake)
			c->handshake_us = e->handshake_us;
	}
	if (c->ct_status == CT_REPLY || c->ct_status == CT_RELATED) {
		/* The reply's source is the original destination. */
		if (e->dst_identity)
			c->src_id = e->dst_identity;
		if (e->src_identity)
			c->dst_id = e->src_identity;
	}
	return e;
}

/* The original-direction packet in `c` was allowed by policy (rules
 * `egress_rule` of the sender, `ingress_rule` of the receiver): track it. */
static __always_inline void ctx_ct_commit(struct pkt_ctx *c, struct ct4_entry *e, __u32 egress_rule,
					  __u32 ingress_rule)
{
	struct ct_update u;

	if (!e) {
		if (!c->f.icmp_error)
			ct4_create(&c->f, c->cfg, egress_rule, ingress_rule, c->src_id, c->dst_id, c->len);
		return;
	}
	u = ct4_update(e, &c->f, 0, c->cfg, c->len, c->agg);
	c->report = u.report;
	if (e->egress_rule_id != egress_rule)
		e->egress_rule_id = egress_rule;
	if (e->ingress_rule_id != ingress_rule)
		e->ingress_rule_id = ingress_rule;
	if (e->src_identity != c->src_id)
		e->src_identity = c->src_id;
	if (e->dst_identity != c->dst_id)
		e->dst_identity = c->dst_id;
}

#endif /* MYELIN_LIB_CONNTRACK_H */
