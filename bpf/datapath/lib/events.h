/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow events: one ring buffer for every program (see "Events" in
 * myelin_abi.h). Only verdict.h calls these.
 */
#ifndef MYELIN_LIB_EVENTS_H
#define MYELIN_LIB_EVENTS_H

#include "common.h"
#include "config.h"
#include "ctx.h"

#define MYELIN_EVENTS_RING_BYTES (8 * 1024 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MYELIN_EVENTS_RING_BYTES);
	MYELIN_PINNED;
} events SEC(".maps");

/* Events that did not fit in the ring, per CPU (key 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	MYELIN_PINNED;
} events_lost SEC(".maps");

static __always_inline void events_count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&events_lost, &zero);

	if (n)
		*n += 1;
}

/* Wake the reader only once enough is queued: one wakeup per batch, not per
 * event (the reader also polls on a short timer). */
static __always_inline __u64 events_wakeup_flag(const struct node_config *cfg)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes(cfg) ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* The header of an event about the packet in `c`. */
static __always_inline void event_header(struct event *ev, const struct pkt_ctx *c, __u8 type, __u8 sub_type,
					 __u32 ep_id, __u8 dir)
{
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->sub_type = sub_type;
	ev->direction = dir;
	ev->orig_len = c->len;
	ev->ifindex = c->ifindex;
	ev->endpoint_id = ep_id;
	ev->src_identity = c->src_id;
	ev->dst_identity = c->dst_id;
	ev->rule_id = c->rule_id;
	ev->verdict = c->policy_verdict;
	ev->match_type = c->match_type;
	switch (c->ct_status) {
	case CT_NEW:
		ev->trace_reason = TRACE_REASON_NEW;
		break;
	case CT_ESTABLISHED:
		ev->trace_reason = TRACE_REASON_ESTABLISHED;
		break;
	case CT_REPLY:
		ev->trace_reason = TRACE_REASON_REPLY;
		ev->flags |= EVENT_F_REPLY;
		break;
	case CT_RELATED:
		ev->trace_reason = TRACE_REASON_RELATED;
		break;
	default: /* CT_UNTRACKED: TRACE_REASON_UNKNOWN */
		break;
	}
	if (c->handshake_us) {
		ev->handshake_us = c->handshake_us;
		ev->flags |= EVENT_F_HANDSHAKE;
	}
	if (c->tunnel_remote) {
		ev->tunnel_remote = c->tunnel_remote;
		ev->flags |= EVENT_F_TUNNEL;
	}
}

/* Reserve a record with room for N packet bytes (N a constant power of two:
 * the verifier wants constant reservations), copy the header and 1..N bytes
 * of the packet, submit. */
#define EVENT_EMIT_SIZED(N, skb, hdr, want)                                                    \
	({                                                                                     \
		struct event *__ev = bpf_ringbuf_reserve(&events, sizeof(struct event) + (N), 0);   \
		if (!__ev) {                                                                   \
			events_count_lost();                                                   \
		} else {                                                                       \
			__builtin_memcpy(__ev, (hdr), sizeof(struct event));                   \
			__ev->cap_len = 0;                                                     \
			if ((N) > 0) {                                                         \
				/* want is 1..N: masking keeps it and gives the verifier  \
				 * the bounds it needs. */                                 \
				__u32 __n = ((((__u32)(want)) - 1) & ((N) - 1)) + 1;           \
				if (bpf_skb_load_bytes((skb), 0, (void *)(__ev + 1), __n) == 0)  \
					__ev->cap_len = __n;                                   \
			}                                                                      \
			bpf_ringbuf_submit(__ev, events_wakeup_flag(node_config_get()));        \
		}                                                                              \
	})

/* The one place events are written: a BPF global function, verified once
 * for the whole program rather than at every exit that reports. */
__attribute__((noinline)) int myelin_event_output(struct __sk_buff *skb __arg_ctx, const struct event *hdr)
{
	__u32 want;

	if (!skb || !hdr)
		return 0;
	want = cfg_capture_len(node_config_get());
	if (want > skb->len)
		want = skb->len;
	if (want == 0)
		EVENT_EMIT_SIZED(0, skb, hdr, 0);
	else if (want <= 64)
		EVENT_EMIT_SIZED(64, skb, hdr, want);
	else if (want <= 128)
		EVENT_EMIT_SIZED(128, skb, hdr, want);
	else
		EVENT_EMIT_SIZED(MYELIN_CAPTURE_MAX, skb, hdr, want);
	return 0;
}

/* Emit an event about the packet in `c`, for endpoint `ep` seen in `dir`. */
static __always_inline void event_emit(const struct pkt_ctx *c, __u8 type, __u8 sub_type, __u32 ep, __u8 dir)
{
	struct event hdr = {};

	if (c->agg == MONITOR_AGG_OFF)
		return;

	event_header(&hdr, c, type, sub_type, ep, dir);
	myelin_event_output(c->skb, &hdr);
}

/* The same for an XDP program (c->skb is its struct xdp_md): the same
 * header, and up to 64 bytes of the packet when capture is on. */
static __always_inline void event_emit_xdp(const struct pkt_ctx *c, __u8 type, __u8 sub_type, __u32 ep,
					   __u8 dir)
{
	struct event *ev;
	/* 1..64 bytes; the mask gives the verifier its bounds. */
	__u32 n = c->len > 64 ? 64 : c->len;

	if (c->agg == MONITOR_AGG_OFF)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(struct event) + 64, 0);
	if (!ev) {
		events_count_lost();
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	event_header(ev, c, type, sub_type, ep, dir);
	n = ((n - 1) & 63) + 1;
	if (cfg_capture_len(c->cfg) && c->len > 0 &&
	    bpf_xdp_load_bytes((struct xdp_md *)c->skb, 0, (void *)(ev + 1), n) == 0)
		ev->cap_len = n;
	bpf_ringbuf_submit(ev, events_wakeup_flag(c->cfg));
}

#endif /* MYELIN_LIB_EVENTS_H */
