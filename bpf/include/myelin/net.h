/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet headers and protocol numbers (from the kernel's UAPI: if_ether.h,
 * if_arp.h, in.h, ip.h, ipv6.h, tcp.h, udp.h, icmp.h, icmpv6.h). Wire
 * formats, so their layouts are fixed by the protocols themselves.
 */
#ifndef MYELIN_NET_H
#define MYELIN_NET_H

#include "types.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the bitfield layouts below are written for little-endian targets (bpfel)"
#endif

#define ETH_ALEN    6
#define ETH_HLEN    14
#define ETH_P_IP    0x0800
#define ETH_P_ARP   0x0806
#define ETH_P_8021Q 0x8100
#define ETH_P_IPV6  0x86DD

#define ARPHRD_ETHER  1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY   2

/* IP protocol numbers (enum in linux/in.h). */
enum {
	IPPROTO_IP      = 0,
	IPPROTO_ICMP    = 1,
	IPPROTO_TCP     = 6,
	IPPROTO_UDP     = 17,
	IPPROTO_IPV6    = 41,
	IPPROTO_GRE     = 47,
	IPPROTO_ICMPV6  = 58,
	IPPROTO_SCTP    = 132,
	IPPROTO_UDPLITE = 136,
};

struct ethhdr {
	__u8   h_dest[ETH_ALEN];
	__u8   h_source[ETH_ALEN];
	__be16 h_proto;
};

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8   ar_hln;
	__u8   ar_pln;
	__be16 ar_op;
};

struct iphdr {
	__u8    ihl:4,
		version:4;
	__u8    tos;
	__be16  tot_len;
	__be16  id;
	__be16  frag_off;
	__u8    ttl;
	__u8    protocol;
	__sum16 check;
	__be32  saddr;
	__be32  daddr;
};

struct in6_addr {
	union {
		__u8   u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ipv6hdr {
	__u8   priority:4,
	       version:4;
	__u8   flow_lbl[3];
	__be16 payload_len;
	__u8   nexthdr;
	__u8   hop_limit;
	struct in6_addr saddr;
	struct in6_addr daddr;
};

struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u16  ae:1,
	       res1:3,
	       doff:4,
	       fin:1,
	       syn:1,
	       rst:1,
	       psh:1,
	       ack:1,
	       urg:1,
	       ece:1,
	       cwr:1;
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

struct udphdr {
	__be16  source;
	__be16  dest;
	__be16  len;
	__sum16 check;
};

struct icmphdr {
	__u8    type;
	__u8    code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
	} un;
};

#endif /* MYELIN_NET_H */
