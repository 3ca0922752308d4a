/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-endpoint, per-direction, per-reason packet and byte counters. */
#ifndef MYELIN_LIB_METRICS_H
#define MYELIN_LIB_METRICS_H

#include "common.h"
#include "maps.h"

/* Add one packet of `bytes` bytes to `key` of the per-CPU hash `map` whose
 * values are struct metrics_value. Per-CPU, so plain adds are race-free; a
 * concurrent first insert on another CPU is handled by looking up again
 * after -EEXIST. */
static __always_inline void counter_add(void *map, const void *key, __u64 bytes)
{
	struct metrics_value *val;

	val = bpf_map_lookup_elem(map, key);
	if (!val) {
		struct metrics_value init = { .packets = 1, .bytes = bytes };

		if (bpf_map_update_elem(map, key, &init, BPF_NOEXIST) == 0)
			return;
		val = bpf_map_lookup_elem(map, key);
		if (!val)
			return; /* map full: nothing sensible to do */
	}
	val->packets += 1;
	val->bytes += bytes;
}

/* Add one packet of `bytes` bytes to (endpoint_id, dir, reason). */
static __always_inline void metrics_add(__u32 endpoint_id, enum metric_dir dir,
					enum myelin_reason reason, __u64 bytes)
{
	struct metrics_key key = {
		.endpoint_id = endpoint_id,
		.direction = (__u8)dir,
		.reason = (__u8)reason,
		._pad = 0,
	};

	counter_add(&metrics, &key, bytes);
}

#endif /* MYELIN_LIB_METRICS_H */
