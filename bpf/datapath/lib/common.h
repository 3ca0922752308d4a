/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes and small packet helpers shared by every datapath program. */
#ifndef MYELIN_LIB_COMMON_H
#define MYELIN_LIB_COMMON_H

#include "myelin/bpf.h"
#include "myelin/net.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "myelin_abi.h"

/* Every map of the datapath is pinned by name in the per-node pin directory
 * the loader chooses: objects that declare the same map (by including the
 * same lib header) share it, and a restarted agent finds it again. */
#define MYELIN_PINNED __uint(pinning, LIBBPF_PIN_BY_NAME)

/* Bounds-checked pointer into the linear packet data: NULL if [off, off+len)
 * is not within data..data_end. */
static __always_inline void *skb_ptr(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + off + len > data_end)
		return NULL;
	return data + off;
}

/* Make sure the first `len` bytes are in the linear area, pulling them in if
 * needed. Returns 0 on success. Invalidates previously derived pointers. */
static __always_inline int skb_ensure_linear(struct __sk_buff *skb, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + len <= data_end)
		return 0;
	if (skb->len < len)
		return -1;
	return bpf_skb_pull_data(skb, len);
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	__u32 a4, b4;
	__u16 a2, b2;

	__builtin_memcpy(&a4, a, 4);
	__builtin_memcpy(&b4, b, 4);
	__builtin_memcpy(&a2, a + 4, 2);
	__builtin_memcpy(&b2, b + 4, 2);
	return a4 == b4 && a2 == b2;
}

#endif /* MYELIN_LIB_COMMON_H */
