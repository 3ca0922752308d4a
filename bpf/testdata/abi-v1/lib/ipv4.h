/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv4 header validation and TTL handling. */
#ifndef MYELIN_LIB_IPV4_H
#define MYELIN_LIB_IPV4_H

#include "common.h"

/* Decrement the TTL and update the header checksum incrementally
 * (RFC 1624; same arithmetic as the kernel's ip_decrease_ttl()).
 * The caller has checked ttl > 1. */
static __always_inline void ipv4_dec_ttl(struct iphdr *ip4)
{
	__u32 check = (__u32)ip4->check;

	check += (__u32)bpf_htons(0x0100);
	ip4->check = (__sum16)(check + (check >= 0xFFFF));
	ip4->ttl--;
}

/* Basic sanity of an IPv4 header whose first 20 bytes are readable. */
static __always_inline int ipv4_hdr_valid(const struct iphdr *ip4, __u32 skb_len)
{
	__u32 tot_len = bpf_ntohs(ip4->tot_len);

	if (ip4->version != 4 || ip4->ihl < 5)
		return 0;
	/* IPv4 BIG TCP: a GSO packet over 64 KiB carries tot_len 0. */
	if (tot_len == 0)
		return skb_len > ETH_HLEN + 0xFFFF;
	if (tot_len < (__u32)ip4->ihl * 4)
		return 0;
	if (skb_len < ETH_HLEN + tot_len)
		return 0;
	return 1;
}

#endif /* MYELIN_LIB_IPV4_H */
