/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* L4 parsing: the connection tuple, the policy "port" and TCP flags of an
 * IPv4 packet, and the tuple embedded in ICMP errors. */
#ifndef MYELIN_LIB_L4_H
#define MYELIN_LIB_L4_H

#include "common.h"
#include "maps.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_ECHOREPLY      0
#define ICMP_DEST_UNREACH   3
#define ICMP_ECHO           8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define IPV4_FRAG_OFFSET_MASK 0x1FFF
#define IPV4_FRAG_MORE        0x2000

struct flow4 {
	struct ct4_key tuple;      /* as the packet travels */
	struct ct4_key inner;      /* ICMP error: the embedded (original) tuple */
	__be16 policy_port;        /* dport; ICMP: the type, network order */
	__u8 tcp_flags;
	__u8 icmp_error;           /* inner is valid */
};

static __always_inline int proto_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP ||
	       proto == IPPROTO_UDPLITE;
}

static __always_inline int icmp_is_echo(__u8 type)
{
	return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
}

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

/* The tuple of the datagram embedded in an ICMP error at `off` (its IPv4
 * header). Returns 0 if it could be read. */
static __always_inline int flow4_parse_inner(struct __sk_buff *skb, __u32 off, struct ct4_key *k)
{
	struct iphdr in;
	__u8 l4[8];
	__u32 ihl;

	if (bpf_skb_load_bytes(skb, off, &in, sizeof(in)))
		return -1;
	ihl = (__u32)in.ihl * 4;
	if (in.version != 4 || ihl < sizeof(in))
		return -1;
	k->saddr = in.saddr;
	k->daddr = in.daddr;
	k->protocol = in.protocol;
	if (in.frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK))
		return 0; /* no L4 header here: ports unknown (0) */
	if (proto_has_ports(in.protocol)) {
		if (bpf_skb_load_bytes(skb, off + ihl, l4, 4))
			return -1;
		__builtin_memcpy(&k->sport, &l4[0], 2);
		__builtin_memcpy(&k->dport, &l4[2], 2);
	} else if (in.protocol == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(skb, off + ihl, l4, 8))
			return -1;
		if (icmp_is_echo(l4[0])) {
			__builtin_memcpy(&k->sport, &l4[4], 2);
			k->dport = k->sport;
		}
	}
	return 0;
}

/* Fill `f` from the packet whose (valid, linear) IPv4 header is `ip4`.
 * Returns 0, or -1 if the L4 header of a first fragment is truncated. */
static __always_inline int flow4_parse(struct __sk_buff *skb, const struct iphdr *ip4,
				       struct flow4 *f)
{
	__u32 off = ETH_HLEN + (__u32)ip4->ihl * 4;
	__u8 l4[14];

	f->tuple.saddr = ip4->saddr;
	f->tuple.daddr = ip4->daddr;
	f->tuple.protocol = ip4->protocol;

	/* Non-first fragments carry no L4 header: their first fragment left
	 * the ports in frag4 (else they are seen with ports 0). */
	if (ip4->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK)) {
		struct frag4_key fk = {
			.saddr = ip4->saddr,
			.daddr = ip4->daddr,
			.id = ip4->id,
			.protocol = ip4->protocol,
		};
		struct frag4_ports *fp = bpf_map_lookup_elem(&frag4, &fk);

		if (fp) {
			f->tuple.sport = fp->sport;
			f->tuple.dport = fp->dport;
			f->policy_port = fp->policy_port;
		}
		return 0;
	}

	switch (ip4->protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off, l4, 14))
			return -1;
		f->tcp_flags = l4[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
	case IPPROTO_UDPLITE:
		if (bpf_skb_load_bytes(skb, off, l4, 4))
			return -1;
		break;
	case IPPROTO_ICMP:
		if (bpf_skb_load_bytes(skb, off, l4, 8))
			return -1;
		f->policy_port = bpf_htons((__u16)l4[0]);
		if (icmp_is_echo(l4[0])) {
			__builtin_memcpy(&f->tuple.sport, &l4[4], 2);
			f->tuple.dport = f->tuple.sport;
		} else if (icmp_is_error(l4[0])) {
			f->icmp_error = flow4_parse_inner(skb, off + 8, &f->inner) == 0;
		}
		goto first_fragment;
	default:
		return 0;
	}
	__builtin_memcpy(&f->tuple.sport, &l4[0], 2);
	__builtin_memcpy(&f->tuple.dport, &l4[2], 2);
	f->policy_port = f->tuple.dport;

first_fragment:
	if (ip4->frag_off & bpf_htons(IPV4_FRAG_MORE)) {
		struct frag4_key fk = {
			.saddr = ip4->saddr,
			.daddr = ip4->daddr,
			.id = ip4->id,
			.protocol = ip4->protocol,
		};
		struct frag4_ports fp = {
			.sport = f->tuple.sport,
			.dport = f->tuple.dport,
			.policy_port = f->policy_port,
		};

		bpf_map_update_elem(&frag4, &fk, &fp, BPF_ANY);
	}
	return 0;
}

#endif /* MYELIN_LIB_L4_H */
