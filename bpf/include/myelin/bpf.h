/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The parts of the kernel's BPF UAPI (linux/bpf.h, linux/pkt_cls.h) that
 * Myelin's programs use: map types and flags, helper flags, program return
 * codes and the context structures. Numbers and layouts are the kernel's
 * stable ABI; tests/kernel_headers.rs checks the structures against the
 * running kernel's BTF.
 */
#ifndef MYELIN_BPF_H
#define MYELIN_BPF_H

#include "types.h"

/* enum bpf_map_type */
enum {
	BPF_MAP_TYPE_HASH            = 1,
	BPF_MAP_TYPE_ARRAY           = 2,
	BPF_MAP_TYPE_PROG_ARRAY      = 3,
	BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
	BPF_MAP_TYPE_PERCPU_HASH     = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY    = 6,
	BPF_MAP_TYPE_LRU_HASH        = 9,
	BPF_MAP_TYPE_LRU_PERCPU_HASH = 10,
	BPF_MAP_TYPE_LPM_TRIE        = 11,
	BPF_MAP_TYPE_ARRAY_OF_MAPS   = 12,
	BPF_MAP_TYPE_HASH_OF_MAPS    = 13,
	BPF_MAP_TYPE_SOCKHASH        = 18,
	BPF_MAP_TYPE_SK_STORAGE      = 24,
	BPF_MAP_TYPE_RINGBUF         = 27,
};

/* Map creation flags. */
#define BPF_F_NO_PREALLOC   (1U << 0)
#define BPF_F_RDONLY_PROG   (1U << 7)

/* bpf_map_update_elem() flags. */
#define BPF_ANY     0
#define BPF_NOEXIST 1
#define BPF_EXIST   2

/* bpf_redirect() / bpf_redirect_peer() flags. */
#define BPF_F_INGRESS (1ULL << 0)

/* bpf_perf_event_output() / bpf_skb_output(): the current CPU's buffer. */
#define BPF_F_CURRENT_CPU 0xffffffffULL

/* Ring buffer flags and queries. */
#define BPF_RB_NO_WAKEUP    (1ULL << 0)
#define BPF_RB_FORCE_WAKEUP (1ULL << 1)
#define BPF_RB_AVAIL_DATA   0
#define BPF_RB_RING_SIZE    1
#define BPF_RB_CONS_POS     2
#define BPF_RB_PROD_POS     3

/* bpf_skb_{set,get}_tunnel_key() flags. */
#define BPF_F_TUNINFO_IPV6 (1ULL << 0)
#define BPF_F_ZERO_CSUM_TX (1ULL << 1)
#define BPF_F_DONT_FRAGMENT (1ULL << 2)
#define BPF_F_SEQ_NUMBER   (1ULL << 3)
#define BPF_F_NO_TUNNEL_KEY (1ULL << 4)

/* bpf_skb_store_bytes() / checksum helper flags. */
#define BPF_F_RECOMPUTE_CSUM (1ULL << 0)
#define BPF_F_PSEUDO_HDR     (1ULL << 4)
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#define BPF_F_HDR_FIELD_MASK 0xfULL

/* tc (cls_act / TCX) verdicts, from linux/pkt_cls.h. */
#define TC_ACT_UNSPEC     (-1)
#define TC_ACT_OK         0
#define TC_ACT_SHOT       2
#define TC_ACT_REDIRECT   7

/* XDP verdicts (enum xdp_action). */
enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP,
	XDP_PASS,
	XDP_TX,
	XDP_REDIRECT,
};

/* A pointer field of a context structure: 8 bytes, 8-aligned on every arch. */
#define __bpf_md_ptr(type, name) \
	union {                  \
		type name;       \
		__u64 :64;       \
	} __attribute__((aligned(8)))

struct bpf_flow_keys;
struct bpf_sock;

/* Context of tc/TCX programs (and cgroup_skb). The kernel rewrites accesses
 * to these fields by offset: the layout must be exact. */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 data_meta;
	__bpf_md_ptr(struct bpf_flow_keys *, flow_keys);
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	__bpf_md_ptr(struct bpf_sock *, sk);
	__u32 gso_size;
	__u8  tstamp_type;
	__u32 :24;
	__u64 hwtstamp;
};

/* Context of XDP programs. */
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

/* Context of cgroup sock_addr programs (connect4, sendmsg4, ...). */
struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;            /* network order */
	__u32 user_ip6[4];
	__u32 user_port;           /* network order, in the low 16 bits */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__bpf_md_ptr(struct bpf_sock *, sk);
};

/* Tunnel metadata of collect-metadata (external) tunnel devices. */
struct bpf_tunnel_key {
	__u32 tunnel_id;
	union {
		__u32 remote_ipv4;
		__u32 remote_ipv6[4];
	};
	__u8  tunnel_tos;
	__u8  tunnel_ttl;
	union {
		__u16 tunnel_ext;
		__be16 tunnel_flags;
	};
	__u32 tunnel_label;
	union {
		__u32 local_ipv4;
		__u32 local_ipv6[4];
	};
};

/* bpf_fib_lookup(): the kernel's route and neighbour for a packet (UAPI layout). */
#define MYELIN_AF_INET 2

enum {
	BPF_FIB_LKUP_RET_SUCCESS,
	BPF_FIB_LKUP_RET_BLACKHOLE,
	BPF_FIB_LKUP_RET_UNREACHABLE,
	BPF_FIB_LKUP_RET_PROHIBIT,
	BPF_FIB_LKUP_RET_NOT_FWDED,
	BPF_FIB_LKUP_RET_FWD_DISABLED,
	BPF_FIB_LKUP_RET_UNSUPP_LWT,
	BPF_FIB_LKUP_RET_NO_NEIGH,
	BPF_FIB_LKUP_RET_FRAG_NEEDED,
	BPF_FIB_LKUP_RET_NO_SRC_ADDR,
};

struct bpf_fib_lookup {
	__u8  family;
	__u8  l4_protocol;
	__be16 sport;
	__be16 dport;
	union {
		__u16 tot_len;     /* input: the L3 length */
		__u16 mtu_result;  /* output */
	} __attribute__((packed, aligned(2)));
	__u32 ifindex;             /* input: ingress device; output: egress device */
	union {
		__u8  tos;
		__be32 flowinfo;
		__u32 rt_metric;
	};
	union {
		__be32 ipv4_src;
		__u32 ipv6_src[4];
	};
	union {
		__be32 ipv4_dst;   /* output: the gateway, for a gateway route */
		__u32 ipv6_dst[4];
	};
	union {
		struct {
			__be16 h_vlan_proto;
			__be16 h_vlan_TCI;
		};
		__u32 tbid;
	};
	union {
		struct {
			__u32 mark;
		};
		struct {
			__u8 smac[6];
			__u8 dmac[6];
		};
	};
};

/* bpf_redirect_neigh(): the next hop whose neighbour the kernel resolves. */
struct bpf_redir_neigh {
	__u32 nh_family;
	union {
		__be32 ipv4_nh;
		__u32 ipv6_nh[4];
	};
};

#endif /* MYELIN_BPF_H */
