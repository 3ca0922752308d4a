/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint, per-direction, per-reason packet and byte counters. */
#ifndef MYELIN_LIB_METRICS_H
#define MYELIN_LIB_METRICS_H

#include "common.h"
#include "maps.h"

/* Add one packet of `bytes` bytes to (endpoint_id, dir, reason). The map is
 * per-CPU, so plain adds are race-free; a concurrent first insert on another
 * CPU is handled by looking up again after -EEXIST. */
static __always_inline void metrics_add(__u32 endpoint_id, enum metric_dir dir,
					enum myelin_reason reason, __u64 bytes)
{
	struct metrics_key key = {
		.endpoint_id = endpoint_id,
		.direction = (__u8)dir,
		.reason = (__u8)reason,
		._pad = 0,
	};
	struct metrics_value *val;

	val = bpf_map_lookup_elem(&metrics, &key);
	if (!val) {
		struct metrics_value init = { .packets = 1, .bytes = bytes };

		if (bpf_map_update_elem(&metrics, &key, &init, BPF_NOEXIST) == 0)
			return;
		val = bpf_map_lookup_elem(&metrics, &key);
		if (!val)
			return; /* map full: nothing sensible to do */
	}
	val->packets += 1;
	val->bytes += bytes;
}

#endif /* MYELIN_LIB_METRICS_H */
