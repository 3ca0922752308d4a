/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Node-wide settings written by the agent (struct node_config) and the
 * record of the ABI that created the pinned maps (struct abi_meta). */
#ifndef MYELIN_LIB_CONFIG_H
#define MYELIN_LIB_CONFIG_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	MYELIN_PINNED;
} node_config SEC(".maps");

/* Written by the loader (never by programs); declared in every object so
 * that every pin directory records its ABI. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct abi_meta);
	__uint(max_entries, 1);
	MYELIN_PINNED;
} abi_meta SEC(".maps");

static __always_inline const struct node_config *node_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&node_config, &zero);
}

static __always_inline __u8 cfg_aggregation(const struct node_config *cfg)
{
	/* Stored +1 so that an all-zero node_config means the default. */
	if (!cfg || cfg->monitor_aggregation == 0 || cfg->monitor_aggregation > MONITOR_AGG_OFF + 1)
		return MONITOR_AGG_MEDIUM;
	return cfg->monitor_aggregation - 1;
}

static __always_inline __u32 cfg_capture_len(const struct node_config *cfg)
{
	if (!cfg || cfg->capture_len == 0)
		return MYELIN_CAPTURE_DEFAULT;
	if (cfg->capture_len == MYELIN_CAPTURE_NONE)
		return 0;
	return cfg->capture_len > MYELIN_CAPTURE_MAX ? MYELIN_CAPTURE_MAX : cfg->capture_len;
}

static __always_inline __u32 cfg_monitor_interval_s(const struct node_config *cfg)
{
	return cfg && cfg->monitor_interval_s ? cfg->monitor_interval_s : MYELIN_MONITOR_INTERVAL_DEFAULT_S;
}

static __always_inline __u32 cfg_wakeup_bytes(const struct node_config *cfg)
{
	return cfg && cfg->wakeup_bytes ? cfg->wakeup_bytes : MYELIN_WAKEUP_DEFAULT_BYTES;
}

#endif /* MYELIN_LIB_CONFIG_H */
