// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * XDP on the node's uplink: the prefilter. Packets from a source in a
 * prefix of `prefilter4` are dropped before an skb exists, counted per
 * prefix and reported as drops (reason DROP_POLICY_DENY: the deny list).
 */
#define MYELIN_VERDICT_XDP /* the XDP exits, no policy maps */
#include "lib/common.h"
#include "lib/config.h"
#include "lib/ctx.h"
#include "lib/verdict.h"

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

SEC("xdp")
int prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	struct ipcache_key key = { .prefixlen = 32 };
	struct prefilter_value *hit;
	struct pkt_ctx c = {};

	ctx_init_xdp(&c, ctx, METRIC_DIR_INGRESS);
	if ((void *)(ip4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return ctx_pass_xdp(&c);
	key.ip4 = ip4->saddr;
	hit = bpf_map_lookup_elem(&prefilter4, &key);
	if (!hit)
		return ctx_pass_xdp(&c);
	__sync_fetch_and_add(&hit->packets, 1);
	__sync_fetch_and_add(&hit->bytes, c.len);
	c.src_id = IDENTITY_WORLD;
	c.dst_id = IDENTITY_HOST;
	return ctx_drop_xdp(&c, DROP_POLICY_DENY);
}
