/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ARP: answer a pod's requests for any address with the host veth's MAC. */
#ifndef MYELIN_LIB_ARP_H
#define MYELIN_LIB_ARP_H

#include "common.h"

/* Ethernet/IPv4 ARP payload that follows struct arphdr. */
struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__u8 sip[4];
	__u8 tha[ETH_ALEN];
	__u8 tip[4];
} __attribute__((packed));

#define ARP_ETH_IPV4_LEN (ETH_HLEN + sizeof(struct arphdr) + sizeof(struct arp_eth_ipv4))

/* Is this Ethernet/IPv4 ARP (a struct arp_eth_ipv4 follows)? */
static __always_inline int arp_is_eth_ipv4(const struct arphdr *arp)
{
	return arp->ar_hrd == bpf_htons(ARPHRD_ETHER) &&
	       arp->ar_pro == bpf_htons(ETH_P_IP) &&
	       arp->ar_hln == ETH_ALEN && arp->ar_pln == 4;
}

/* Is this an Ethernet/IPv4 ARP request? */
static __always_inline int arp_is_eth_ipv4_request(const struct arphdr *arp)
{
	return arp_is_eth_ipv4(arp) && arp->ar_op == bpf_htons(ARPOP_REQUEST);
}

static __always_inline __u32 arp_ip(const __u8 *b)
{
	__u32 v;

	__builtin_memcpy(&v, b, 4);
	return v;
}

/* Turn a request into the reply "tip is at mac", in place, addressed back to
 * the requester. */
static __always_inline void arp_make_reply(struct ethhdr *eth, struct arphdr *arp,
					   struct arp_eth_ipv4 *body, const __u8 *mac)
{
	__u8 sip[4], tip[4];

	__builtin_memcpy(sip, body->sip, 4);
	__builtin_memcpy(tip, body->tip, 4);

	mac_copy(eth->h_dest, body->sha);
	mac_copy(eth->h_source, mac);

	arp->ar_op = bpf_htons(ARPOP_REPLY);
	mac_copy(body->tha, body->sha);
	__builtin_memcpy(body->tip, sip, 4);
	mac_copy(body->sha, mac);
	__builtin_memcpy(body->sip, tip, 4);
}

#endif /* MYELIN_LIB_ARP_H */
