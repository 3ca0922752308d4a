// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Per-cgroup traffic accounting: cgroup_skb programs on the pods' cgroup
 * (semantics in myelin_abi.h).
 *
 *   traffic_ingress  cgroup_skb/ingress  a socket below the cgroup received a packet
 *   traffic_egress   cgroup_skb/egress   a socket below the cgroup sent a packet
 *
 * Both count packets and bytes under the socket's cgroup v2 id and always
 * allow the packet (return 1).
 */
#include "lib/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, __u64);
	__type(value, struct cgroup_traffic_value);
	__uint(max_entries, MYELIN_MAX_CGROUP_TRAFFIC);
	MYELIN_PINNED;
} cgroup_traffic SEC(".maps");

/* BTF anchor: the value type for the Rust skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_cgroup_traffic(struct cgroup_traffic_value *v)
{
	return (int)v->ingress_packets;
}

static __always_inline int cgroup_count(struct __sk_buff *skb, int egress)
{
	__u64 id = bpf_skb_cgroup_id(skb);
	struct cgroup_traffic_value *v = bpf_map_lookup_elem(&cgroup_traffic, &id);

	if (!v) {
		struct cgroup_traffic_value zero = {};

		/* BPF_NOEXIST: another CPU may have created it meanwhile. */
		bpf_map_update_elem(&cgroup_traffic, &id, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&cgroup_traffic, &id);
		if (!v)
			return 1;
	}
	/* Per-CPU values: plain adds. */
	if (egress) {
		v->egress_packets += 1;
		v->egress_bytes += skb->len;
	} else {
		v->ingress_packets += 1;
		v->ingress_bytes += skb->len;
	}
	return 1;
}

SEC("cgroup_skb/ingress")
int traffic_ingress(struct __sk_buff *skb)
{
	return cgroup_count(skb, 0);
}

SEC("cgroup_skb/egress")
int traffic_egress(struct __sk_buff *skb)
{
	return cgroup_count(skb, 1);
}
