/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint L3/L4 policy lookup (semantics in myelin_abi.h). */
#ifndef MYELIN_LIB_POLICY_H
#define MYELIN_LIB_POLICY_H

#include "common.h"
#include "ctx.h"
#include "ipcache.h"
#include "metrics.h"

/* Template of the per-endpoint policy tries. User space creates each inner
 * trie itself (same type, key, value and flags; max_entries may differ).
 * Sizes rather than __type(): clang records types reached only through this
 * nested template as forward declarations, which libbpf cannot size (the
 * complete types reach BTF through an anchor in each program file). */
struct policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
	__uint(max_entries, MYELIN_MAX_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

/* endpoint_id -> that endpoint's policy trie (see myelin_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, MYELIN_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
	__array(values, struct policy_inner);
} policy_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct policy_stats_key);
	__type(value, struct metrics_value);
	__uint(max_entries, MYELIN_MAX_POLICY_STATS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} policy_stats SEC(".maps");

static __always_inline void policy_stats_add(__u32 endpoint_id, __u32 rule_id, __u8 dir,
					     __u8 verdict, __u64 bytes)
{
	struct policy_stats_key key = {
		.endpoint_id = endpoint_id,
		.rule_id = rule_id,
		.direction = dir,
		.verdict = verdict,
		._pad = 0,
	};

	counter_add(&policy_stats, &key, bytes);
}

/* One LPM lookup; entries that only restore the default count as no match,
 * but are remembered in *dflt (they carry the direction's default verdict). */
static __always_inline struct policy_entry *policy_lookup(void *inner, struct policy_key *key,
							  struct policy_entry **dflt)
{
	struct policy_entry *e = bpf_map_lookup_elem(inner, key);

	if (e && (e->flags & POLICY_F_DEFAULT)) {
		*dflt = e;
		return NULL;
	}
	return e;
}

/* A policy question and its answer, scalars only: the global function below
 * may write anywhere in it, so it must not hold the caller's pointers. */
struct policy_query {
	__u32 endpoint_id;
	__u32 peer;
	__u32 peer_ip4;
	__u32 len;
	__be16 port;
	__u8 dir;
	__u8 protocol;
	/* answer */
	__u32 rule_id;
	__u8 verdict;              /* enum policy_verdict, 0 = no policy */
	__u8 match;                /* enum policy_match */
	__u8 _pad[2];
};

/*
 * Decide endpoint q->endpoint_id in direction q->dir against the peer of
 * identity q->peer at address q->peer_ip4 for (q->protocol, q->port).
 * Returns 0 when allowed, else the drop reason; fills the answer. At most two
 * LPM lookups for any peer (three, plus one in policy_cidrs, for a pod peer
 * that no rule of its identity or of any peer decided), whatever the number
 * of rules. An endpoint without a policy map allows everything (and counts
 * nothing). A BPF global function: verified once, not at every call site.
 */
__attribute__((noinline)) int myelin_policy_check(struct policy_query *q)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
	};
	struct policy_entry *e, *dflt = NULL;
	__u32 endpoint_id, cidr;
	void *inner;

	if (!q)
		return DROP_POLICY;
	endpoint_id = q->endpoint_id;
	key.identity = q->peer;
	key.direction = q->dir;
	key.protocol = q->protocol;
	key.dport = q->port;
	q->rule_id = 0;
	q->verdict = 0;
	q->match = POLICY_MATCH_NONE;
	inner = bpf_map_lookup_elem(&policy_maps, &endpoint_id);
	if (!inner)
		return 0;
	e = policy_lookup(inner, &key, &dflt);
	if (!e && q->peer != IDENTITY_UNKNOWN) {
		key.identity = IDENTITY_UNKNOWN; /* the "any peer" entries */
		e = policy_lookup(inner, &key, &dflt);
	}
	if (!e && identity_is_workload(q->peer) && q->peer_ip4) {
		cidr = policy_cidr_of4(q->peer_ip4);
		if (cidr) {
			key.identity = cidr | POD_IN_CIDR_FLAG;
			e = policy_lookup(inner, &key, &dflt);
		}
	}
	if (!e && dflt && dflt->verdict == POLICY_VERDICT_ALLOW) {
		/* The default of a non-enforced direction, restored. */
		q->verdict = POLICY_VERDICT_ALLOW;
		policy_stats_add(endpoint_id, 0, q->dir, POLICY_VERDICT_ALLOW, q->len);
		return 0;
	}
	if (!e) {
		q->verdict = POLICY_VERDICT_DEFAULT_DENY;
		policy_stats_add(endpoint_id, 0, q->dir, POLICY_VERDICT_DEFAULT_DENY, q->len);
		return DROP_POLICY;
	}
	q->rule_id = e->rule_id;
	q->match = e->match;
	if (e->verdict == POLICY_VERDICT_ALLOW) {
		q->verdict = POLICY_VERDICT_ALLOW;
		policy_stats_add(endpoint_id, e->rule_id, q->dir, POLICY_VERDICT_ALLOW, q->len);
		return 0;
	}
	/* DENY, or anything unknown: fail closed. */
	q->verdict = POLICY_VERDICT_DENY;
	policy_stats_add(endpoint_id, e->rule_id, q->dir, POLICY_VERDICT_DENY, q->len);
	return DROP_POLICY_DENY;
}

/* Decide for the packet in `c`; sets c->rule_id, c->policy_verdict, c->match_type. */
static __always_inline int policy_check(struct pkt_ctx *c, __u32 endpoint_id, __u32 peer, __u32 peer_ip4,
					__u8 dir)
{
	struct policy_query q = {
		.endpoint_id = endpoint_id,
		.peer = peer,
		.peer_ip4 = peer_ip4,
		.len = c->len,
		.port = c->f.policy_port,
		.dir = dir,
		.protocol = c->f.tuple.protocol,
	};
	int reason = myelin_policy_check(&q);

	c->rule_id = q.rule_id;
	c->policy_verdict = q.verdict;
	c->match_type = q.match;
	return reason;
}

#endif /* MYELIN_LIB_POLICY_H */
