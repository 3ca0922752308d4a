/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map definitions. Every map is pinned by name under the pin root the loader
 * chooses (one directory per node), so a restarted agent reuses the maps and
 * the programs of pinned links keep seeing the same state.
 */
#ifndef MYELIN_LIB_MAPS_H
#define MYELIN_LIB_MAPS_H

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, MYELIN_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, MYELIN_MAX_METRICS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} metrics SEC(".maps");

/* Peer identities of non-local addresses (node addresses, other nodes' pods,
 * CIDR identities). Longest prefix wins; no match = world. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, MYELIN_MAX_IPCACHE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* Template of the per-endpoint policy tries. User space creates each inner
 * trie itself (same type, key, value and flags; max_entries may differ).
 * Sizes rather than __type(): clang records types reached only through this
 * nested template as forward declarations, which libbpf cannot size (the
 * complete types reach BTF through an anchor in lxc.bpf.c). */
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
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} policy_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct policy_stats_key);
	__type(value, struct metrics_value);
	__uint(max_entries, MYELIN_MAX_POLICY_STATS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_stats SEC(".maps");

/* Connection tracking (see myelin_abi.h). LRU: evicts the least recently
 * used connections under pressure; user space also collects expired ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, MYELIN_MAX_CT4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct4 SEC(".maps");

/* Ports of fragmented datagrams, for their later fragments (myelin_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag4_key);
	__type(value, struct frag4_ports);
	__uint(max_entries, MYELIN_MAX_FRAG4);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frag4 SEC(".maps");

#endif /* MYELIN_LIB_MAPS_H */
