/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint L3/L4 policy lookup (semantics in myelin_abi.h). */
#ifndef MYELIN_LIB_POLICY_H
#define MYELIN_LIB_POLICY_H

#include "common.h"
#include "maps.h"
#include "metrics.h"

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

/* Decide (endpoint, direction) against `peer` for (proto, port). Returns 0
 * when allowed, else the drop reason; *rule_id gets the deciding rule (0:
 * none). At most two LPM lookups, whatever the number of rules. An endpoint
 * without a policy map allows everything (and counts nothing). */
static __always_inline int policy_check(__u32 endpoint_id, __u32 peer, __u8 dir, __u8 proto,
					__be16 port, __u64 bytes, __u32 *rule_id)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.identity = peer,
		.direction = dir,
		.protocol = proto,
		.dport = port,
	};
	struct policy_entry *e;
	void *inner;
	__u8 verdict;

	*rule_id = 0;
	inner = bpf_map_lookup_elem(&policy_maps, &endpoint_id);
	if (!inner)
		return 0;
	e = bpf_map_lookup_elem(inner, &key);
	if (!e && peer != IDENTITY_UNKNOWN) {
		key.identity = IDENTITY_UNKNOWN; /* the "any peer" entries */
		e = bpf_map_lookup_elem(inner, &key);
	}
	if (!e) {
		policy_stats_add(endpoint_id, 0, dir, POLICY_VERDICT_DEFAULT_DENY, bytes);
		return DROP_POLICY;
	}
	verdict = e->verdict;
	*rule_id = e->rule_id;
	if (verdict == POLICY_VERDICT_ALLOW) {
		policy_stats_add(endpoint_id, *rule_id, dir, POLICY_VERDICT_ALLOW, bytes);
		return 0;
	}
	/* DENY, or anything unknown: fail closed. */
	policy_stats_add(endpoint_id, *rule_id, dir, POLICY_VERDICT_DENY, bytes);
	return DROP_POLICY_DENY;
}

#endif /* MYELIN_LIB_POLICY_H */
