// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP on the node's uplink: the prefilter. Packets from a source in a
 * prefix of `prefilter4` are dropped before an skb exists, counted per
 * prefix and reported as drops (reason DROP_POLICY_DENY: the deny list).
 */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/events.h"
#include "lib/metrics.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct prefilter_value);
	__uint(max_entries, MYELIN_MAX_PREFILTER4);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	MYELIN_PINNED;
} prefilter4 SEC(".maps");

/* BTF anchor for the Rust skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_prefilter(struct prefilter_value *v)
{
	return (int)v->packets;
}

static __always_inline void prefilter_report(struct xdp_md *ctx, __u32 saddr, __u32 daddr, __u32 len)
{
	const struct node_config *cfg = node_config_get();
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(struct event) + 64, 0);
	/* 1..64 bytes; the mask gives the verifier its bounds. */
	__u32 n = len > 64 ? 64 : len;

	n = ((n - 1) & 63) + 1;

	if (!ev) {
		events_count_lost();
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->type = EVENT_DROP;
	ev->sub_type = DROP_POLICY_DENY;
	ev->direction = METRIC_DIR_INGRESS;
	ev->orig_len = len;
	ev->ifindex = ctx->ingress_ifindex;
	ev->src_identity = IDENTITY_WORLD;
	ev->dst_identity = IDENTITY_HOST;
	if (cfg_capture_len(cfg) && len > 0 && bpf_xdp_load_bytes(ctx, 0, (void *)(ev + 1), n) == 0)
		ev->cap_len = n;
	bpf_ringbuf_submit(ev, events_wakeup_flag(cfg));
}

SEC("xdp")
int prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct ipcache_key key = { .prefixlen = 32 };
	struct prefilter_value *hit;
	__u32 len = (__u32)(data_end - data);

	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	key.ip4 = ip4->saddr;
	hit = bpf_map_lookup_elem(&prefilter4, &key);
	if (!hit)
		return XDP_PASS;
	__sync_fetch_and_add(&hit->packets, 1);
	__sync_fetch_and_add(&hit->bytes, len);
	metrics_add(0, METRIC_DIR_INGRESS, DROP_POLICY_DENY, len);
	prefilter_report(ctx, ip4->saddr, ip4->daddr, len);
	return XDP_DROP;
}
