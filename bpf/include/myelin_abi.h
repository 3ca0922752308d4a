/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Myelin datapath ABI: the single definition of every map key/value and
 * constant shared between the eBPF programs and user space. Rust gets these
 * types from the libbpf-cargo skeleton (never a hand-copied mirror).
 *
 * Byte order: every IPv4 address field is in network byte order, exactly as
 * it appears in the packet. Ports likewise.
 */
#ifndef MYELIN_ABI_H
#define MYELIN_ABI_H

#include "myelin/types.h"

/*
 * Version of the layouts below. Bump it whenever a map's key or value layout
 * changes, freeze the previous datapath under bpf/testdata/abi-v<N>/, and
 * teach crates/myelin-bpf/src/migrate.rs to convert the old entries: an
 * agent upgrade migrates pinned maps and swaps programs on live links, it
 * never stops forwarding.
 *   1  the first datapath (no version recorded in the pin directory)
 *   2  per-packet context: identities in conntrack, flow events, monitor
 *      aggregation and capture settings in node_config, policy_cidrs
 */
#define MYELIN_ABI_VERSION 2

#define MYELIN_MAX_ENDPOINTS   65535
#define MYELIN_MAX_METRICS     65536

/* endpoint_info.flags */
#define EP_F_HOST              (1u << 0)  /* reserved: the node itself */

/* Key of the `endpoints` map: a local pod address. */
struct endpoint_key {
	__u32 ip4;                 /* network byte order */
};

/* Value of the `endpoints` map: how to deliver to a local pod. */
struct endpoint_info {
	__u32 ifindex;             /* host-side veth ifindex (in the node netns) */
	__u32 endpoint_id;         /* agent-assigned, stable for the endpoint's life */
	__u32 identity;            /* security identity (policy issue); 0 = unknown */
	__u32 flags;               /* EP_F_* */
	__u8  mac[6];              /* pod-side interface MAC */
	__u8  host_mac[6];         /* host-side veth MAC: the pod's gateway MAC */
};

/* node_config.flags. Every flag is chosen so that 0 (a fresh, all-zero
 * node_config) means the default. */
enum node_flags {
	NODE_F_NO_ALLOW_LOCALHOST = 1 << 0, /* do NOT let identity host (the node)
					     * through a pod's ingress policy */
};

/* Single-entry array `node_config`, written by the agent at start. */
struct node_config {
	__u32 node_ip4;            /* the node's primary (uplink) address */
	__u32 gateway_ip4;         /* the pods' default gateway address */
	__u32 pod_cidr4;           /* this node's pod CIDR, network address */
	__u32 pod_cidr4_mask;      /* netmask of pod_cidr4 */
	__u32 flags;               /* NODE_F_* */
	__u32 _pad;
	/* Connection-tracking lifetimes in seconds; 0 = the default
	 * (CT_DEFAULT_*). Refreshed by every packet of the connection. */
	__u32 ct_tcp_syn_s;        /* TCP before the handshake completed */
	__u32 ct_tcp_established_s;/* TCP established */
	__u32 ct_tcp_closing_s;    /* TCP after FIN both ways or RST */
	__u32 ct_other_s;          /* UDP, ICMP, everything else */
	/* Flow events (see "Events" below). 0 = the default everywhere. */
	__u8  monitor_aggregation; /* enum monitor_aggregation + 1; 0 = medium */
	__u8  _pad1;
	__u16 capture_len;         /* packet bytes per event; 0 = 128, 0xffff = none */
	__u32 monitor_interval_s;  /* re-report an active connection after; 0 = 5 */
	__u32 wakeup_bytes;        /* wake the reader once this much is queued; 0 = 64 KiB */
	__u32 _pad2;
};

enum monitor_aggregation {
	MONITOR_AGG_NONE    = 0,   /* an event for every packet */
	MONITOR_AGG_LOW     = 1,   /* every packet, but no from-* traces */
	MONITOR_AGG_MEDIUM  = 2,   /* drops; traces and verdicts when a connection starts,
				    * sees a new TCP flag, or every monitor interval */
	MONITOR_AGG_MAXIMUM = 3,   /* drops; traces and verdicts when a connection starts
				    * or closes, or every monitor interval */
	MONITOR_AGG_OFF     = 4,   /* no events at all (observability off) */
};

#define MYELIN_CAPTURE_DEFAULT 128
#define MYELIN_CAPTURE_MAX     256
#define MYELIN_CAPTURE_NONE    0xffff
#define MYELIN_MONITOR_INTERVAL_DEFAULT_S 5
#define MYELIN_WAKEUP_DEFAULT_BYTES (64 * 1024)

enum ct_default_timeout {
	CT_DEFAULT_TCP_SYN_S         = 60,
	CT_DEFAULT_TCP_ESTABLISHED_S = 21600,
	CT_DEFAULT_TCP_CLOSING_S     = 10,
	CT_DEFAULT_OTHER_S           = 60,
};

/* Direction of traffic, from the endpoint's point of view. */
enum metric_dir {
	METRIC_DIR_INGRESS = 0,    /* towards the endpoint */
	METRIC_DIR_EGRESS  = 1,    /* sent by the endpoint */
};

/*
 * Reasons. Values below 128 are forwarding outcomes; 130 and above are drop
 * reasons with Cilium's stable numbers, so tools that decode one decode both.
 */
enum myelin_reason {
	REASON_FORWARDED        = 0,   /* redirected by eBPF straight to its target */
	REASON_TO_STACK         = 1,   /* handed to the node's kernel stack */
	REASON_ARP_REPLY        = 2,   /* ARP request answered by the datapath */
	REASON_FROM_STACK       = 3,   /* delivered to the endpoint from the stack */

	DROP_INVALID_SMAC       = 130,
	DROP_INVALID_DMAC       = 131,
	DROP_INVALID_SIP        = 132, /* source address not the endpoint's own */
	DROP_POLICY             = 133, /* policy denied */
	DROP_INVALID            = 134, /* invalid packet */
	DROP_UNSUPPORTED_L3     = 139,
	DROP_NO_TUNNEL_ENDPOINT = 160, /* overlay: no node holds the destination, or no tunnel key */
	DROP_FIB_LOOKUP_FAILED  = 169,
	DROP_UNKNOWN_SENDER     = 172,
	DROP_POLICY_DENY        = 181, /* policy denied by an explicit deny rule */
};

/* Key of the per-CPU `metrics` hash: per endpoint, direction and reason. */
struct metrics_key {
	__u32 endpoint_id;
	__u8  direction;           /* enum metric_dir */
	__u8  reason;              /* enum myelin_reason */
	__u16 _pad;
};

struct metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ------------------------------------------------------------------------
 * Identities
 * ------------------------------------------------------------------------ */

/* Reserved security identities (Cilium's numbers). */
enum reserved_identity {
	IDENTITY_UNKNOWN = 0,      /* also the wildcard "any peer" in policy keys */
	IDENTITY_HOST    = 1,      /* the node itself */
	IDENTITY_WORLD   = 2,      /* anything outside the cluster not in ipcache */
	IDENTITY_REMOTE_NODE = 6,  /* another node of the cluster (its own traffic) */
};

#define MYELIN_MAX_IPCACHE 262144

/* ------------------------------------------------------------------------
 * Overlay
 *
 * `tunnel_map` (LPM trie, pinned, overlay object): a prefix of pod addresses
 * (another node's pod CIDR) -> the address of the node that holds it, for
 * the tunnel key the overlay's egress program sets. The VNI of the tunnel is
 * the sender's security identity, as in Cilium: the receiving node enforces
 * with it without looking the sender up.
 * ------------------------------------------------------------------------ */

#define MYELIN_MAX_TUNNEL 65536

/* `overlay_dev` (array of one, pinned): the node's tunnel device. Pods'
 * packets to another node's pod are redirected straight into it (the
 * overlay's egress program sets the key), skipping the node's routing.
 * ifindex 0: no overlay (native routing: the kernel's FIB is asked instead). */
struct overlay_dev {
	__u32 ifindex;
	__u32 flags;               /* reserved, 0 */
};

struct tunnel_key {
	__u32 prefixlen;
	__u32 ip4;                 /* network byte order */
};

struct tunnel_value {
	__u32 remote_ip4;          /* the node's underlay address, network byte order */
	__u32 flags;               /* reserved, 0 */
};

/* Key of the `ipcache` LPM trie: an IPv4 prefix. prefixlen counts bits of
 * ip4 (0..=32). */
struct ipcache_key {
	__u32 prefixlen;
	__u32 ip4;                 /* network byte order */
};

struct ipcache_value {
	__u32 identity;            /* security identity of the prefix */
	__u32 flags;               /* reserved, 0 */
};

/* ------------------------------------------------------------------------
 * Policy
 *
 * `policy_maps` (HASH_OF_MAPS, pinned) maps endpoint_id -> an inner LPM trie
 * of policy_key -> policy_entry holding the WHOLE policy of that endpoint,
 * both directions. User space replaces an endpoint's policy by building a
 * new inner trie and swapping it in with one update of the outer map, so a
 * packet sees the old policy or the new one, never a mix. Many endpoints
 * change together through ONE BPF_MAP_UPDATE_BATCH of the outer map (each
 * slot still swapped atomically): the kernel makes every map-in-map write
 * from user space wait for an RCU grace period, once per syscall, so a
 * change touching N endpoints costs one grace period, not N. An endpoint absent
 * from `policy_maps` has no policy: everything is allowed (and not counted
 * in policy_stats).
 *
 * Lookup for a packet (peer identity P, direction D, protocol, port):
 *   1. key {P, D, proto, port} with prefixlen 64 (full);
 *   2. if nothing matched: the same key with identity 0 ("any peer");
 *   3. if nothing matched: deny (DROP_POLICY, 133).
 *   A matching entry decides: ALLOW, or DENY (DROP_POLICY_DENY, 181).
 *
 * Enforcement: a direction that is NOT enforced holds the entry
 *   {identity 0, direction D, prefixlen 40} (any peer, any protocol) = ALLOW
 *   with flags POLICY_F_UNENFORCED(|POLICY_F_SYNTHETIC), written by user space
 *   in the same inner trie as the rules. It is the least specific key of
 *   lookup 2, so it only decides when no rule matched: "no match -> allow".
 *   In an enforced direction there is no such entry (unless a rule itself is
 *   "any peer, any protocol"), so no match -> default deny. Enforcement thus
 *   swaps atomically with the rules and costs no extra lookup: at most two
 *   LPM lookups per direction and packet, whatever the number of rules.
 *   If a rule occupies that very key, the rule's verdict and rule_id are
 *   kept and only POLICY_F_UNENFORCED is added (the result is identical:
 *   the rule would have matched before the default applied).
 *
 * Key layout; the LPM prefix runs over the bytes after prefixlen:
 *   identity  32 bits, always fully specified (host byte order: entries
 *             never split it, so byte order does not matter);
 *   direction  8 bits, always specified (enum metric_dir: 0 ingress,
 *             1 egress, from the endpoint's point of view);
 *   protocol   8 bits (IPPROTO_*); omitted (prefixlen 40) = any protocol,
 *             then the port is omitted too;
 *   dport     16 bits, NETWORK byte order so that a prefix of k bits is the
 *             aligned block of 2^(16-k) ports; prefixlen = 48 + k.
 *             ICMP (protocol 1) has no ports: its "port" is the ICMP TYPE,
 *             as a 16-bit number (echo request = 8 -> dport htons(8)).
 *             Other port-less protocols use port 0.
 * ------------------------------------------------------------------------ */

enum policy_prefix {
	POLICY_PREFIX_ANY_PROTO = 40,  /* identity + direction */
	POLICY_PREFIX_ANY_PORT  = 48,  /* + protocol */
	POLICY_PREFIX_FULL      = 64,  /* + 16 bits of port */
};

#define MYELIN_MAX_POLICY_ENTRIES 65536 /* per endpoint (template size) */
#define MYELIN_MAX_POLICY_STATS   65536

struct policy_key {
	__u32 prefixlen;
	__u32 identity;            /* peer identity; 0 = any peer */
	__u8  direction;           /* enum metric_dir */
	__u8  protocol;            /* IPPROTO_*; ignored when prefixlen <= 40 */
	__be16 dport;              /* network order; ICMP: the type */
};

enum policy_verdict {
	POLICY_VERDICT_ALLOW        = 1,
	POLICY_VERDICT_DENY         = 2,
	/* Only in policy_stats: no entry matched in an enforced direction. */
	POLICY_VERDICT_DEFAULT_DENY = 3,
};

/* policy_entry.flags: bookkeeping of user space; the datapath ignores them. */
enum policy_entry_flags {
	POLICY_F_UNENFORCED = 1 << 0, /* the default allow of a non-enforced direction */
	POLICY_F_SYNTHETIC  = 1 << 1, /* written only for that default: not a rule */
	POLICY_F_DEFAULT    = 1 << 2, /* restores the direction's default under a wider
				       * entry: the datapath treats it as "no match" */
};

/*
 * Kubernetes NetworkPolicy ipBlock selects pod addresses too, exactly per
 * address (two pods sharing an identity may be on either side of a block).
 * The compiler writes such rules for the pseudo-identity
 * POD_IN_CIDR_FLAG | <CIDR identity>; when the two lookups above give no
 * decision for a peer that is a pod (workload identity), the datapath looks
 * the peer's address up in `policy_cidrs` (LPM: every policy CIDR prefix ->
 * its CIDR identity) and tries that pseudo-identity once more. Only allows
 * live there, so deny precedence is unaffected.
 */
#define POD_IN_CIDR_FLAG (1u << 30)
#define MIN_WORKLOAD_IDENTITY 256
#define LOCAL_SCOPE_FLAG (1u << 24)

/* The match of a policy decision, Cilium's numbers (Hubble policy_match_type). */
enum policy_match {
	POLICY_MATCH_NONE     = 0,
	POLICY_MATCH_L3_ONLY  = 1,   /* peer identity, any port */
	POLICY_MATCH_L3_L4    = 2,   /* peer identity and port */
	POLICY_MATCH_L4_ONLY  = 3,   /* any peer, port */
	POLICY_MATCH_ALL      = 4,   /* any peer, any port */
};

struct policy_entry {
	__u8  verdict;             /* enum policy_verdict: ALLOW or DENY */
	__u8  flags;               /* POLICY_F_* */
	__u8  match;               /* enum policy_match of the entry's key (for events) */
	__u8  _pad;
	__u32 rule_id;             /* the agent's id of the deciding rule; 0 = none */
};

/* Key of the per-CPU `policy_stats` hash: which rule decided what. */
struct policy_stats_key {
	__u32 endpoint_id;
	__u32 rule_id;             /* 0 for DEFAULT_DENY and for non-enforced allows */
	__u8  direction;           /* enum metric_dir, from endpoint_id's view */
	__u8  verdict;             /* enum policy_verdict */
	__u16 _pad;
};

/* Value of policy_stats: struct metrics_value (packets, bytes). */

/* ------------------------------------------------------------------------
 * Connection tracking
 *
 * `ct4` (LRU_HASH, pinned): one entry per connection, keyed by the tuple of
 * its FIRST packet (the original direction). A packet whose tuple is the
 * reverse of an entry is a reply and passes without policy; a packet in the
 * original direction re-runs policy every time (revoking a rule cuts
 * established connections). ICMP echo uses the echo identifier as both
 * ports; other ICMP messages and port-less protocols use 0; non-first
 * fragments get the ports of their first fragment (`frag4`). ICMP errors
 * (dest unreachable, time exceeded, parameter problem) whose embedded
 * tuple belongs to a tracked connection (either direction) pass as related.
 * ------------------------------------------------------------------------ */

#define MYELIN_MAX_CT4   131072
#define MYELIN_MAX_FRAG4 8192

/* `frag4` (LRU_HASH): the ports of fragmented IPv4 datagrams. The first
 * fragment records them; later fragments (no L4 header) take them from here,
 * so policy and CT see every fragment with the datagram's real ports.
 * Fragments arriving before their first fragment are seen with ports 0. */
struct frag4_key {
	__u32 saddr;
	__u32 daddr;
	__be16 id;                 /* IPv4 identification */
	__u8  protocol;
	__u8  _pad;
};

struct frag4_ports {
	__be16 sport;              /* as in ct4_key */
	__be16 dport;
	__be16 policy_port;        /* as looked up in policy (ICMP: the type) */
	__u16 _pad;
};

struct ct4_key {
	__u32 saddr;               /* network order */
	__u32 daddr;
	__be16 sport;              /* network order; ICMP echo: the identifier */
	__be16 dport;
	__u8  protocol;
	__u8  _pad[3];
};

/* ct4_entry.flags */
enum ct_flags {
	CT_F_SYN_SEEN    = 1 << 0, /* TCP SYN seen in the original direction */
	CT_F_ESTABLISHED = 1 << 1, /* TCP: a non-SYN packet seen (handshake done) */
	CT_F_REPLY_SEEN  = 1 << 2, /* any packet seen in the reply direction */
	CT_F_FIN_FWD     = 1 << 3, /* FIN seen in the original direction */
	CT_F_FIN_REV     = 1 << 4, /* FIN seen in the reply direction */
	CT_F_RST         = 1 << 5, /* RST seen (either direction) */
};

struct ct4_entry {
	__u64 expires_ns;          /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
	__u64 created_ns;          /* bpf_ktime_get_ns() at creation */
	__u64 fwd_packets;         /* original direction */
	__u64 fwd_bytes;
	__u64 rev_packets;         /* reply direction */
	__u64 rev_bytes;
	__u32 egress_rule_id;      /* rule that allowed the sender's egress (0: none/no policy) */
	__u32 ingress_rule_id;     /* rule that allowed the receiver's ingress */
	__u32 flags;               /* CT_F_* */
	/* Identities of the original direction's source and destination as
	 * the datapath saw them when it last ran policy: replies and related
	 * ICMP are attributed with them. */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 handshake_us;        /* TCP: SYN to SYN-ACK seen at the endpoint, in us (0: none) */
	__u32 last_report_s;       /* monitor aggregation: last event, ktime seconds */
	__u8  fwd_tcp_seen;        /* TCP flags seen in the original direction */
	__u8  rev_tcp_seen;        /* TCP flags seen in the reply direction */
	__u16 _pad;
};

/* ------------------------------------------------------------------------
 * Events
 *
 * Every datapath program reports through ONE ring buffer, `events`
 * (RINGBUF, pinned, shared by all objects), from one place: the verdict
 * exits in bpf/datapath/lib/verdict.h. A record is a struct event followed
 * by cap_len bytes of the packet from its Ethernet header. Types and
 * sub-types are Cilium's monitor numbers, so a Hubble decoder reads them:
 *   EVENT_DROP            sub_type = drop reason (enum myelin_reason >= 130)
 *   EVENT_TRACE           sub_type = observation point (enum trace_point)
 *   EVENT_POLICY_VERDICT  sub_type = 0; verdict, match, rule, direction
 * Reservations that fail (ring full) are counted per CPU in `events_lost`.
 * The reader is woken only when `wakeup_bytes` are queued; it also polls on
 * a short timer, so a quiet ring is still drained.
 * ------------------------------------------------------------------------ */

enum event_type {
	EVENT_DROP           = 1,
	EVENT_TRACE          = 4,
	EVENT_POLICY_VERDICT = 5,
};

/* Cilium's trace observation points (the sub_type of EVENT_TRACE). */
enum trace_point {
	TRACE_TO_LXC       = 0,    /* delivered to an endpoint */
	TRACE_TO_PROXY     = 1,
	TRACE_TO_HOST      = 2,    /* handed to the node, for the node itself */
	TRACE_TO_STACK     = 3,    /* handed to the node's stack to be routed */
	TRACE_TO_OVERLAY   = 4,
	TRACE_FROM_LXC     = 5,    /* sent by an endpoint */
	TRACE_FROM_PROXY   = 6,
	TRACE_FROM_HOST    = 7,
	TRACE_FROM_STACK   = 8,    /* from the node's stack towards an endpoint */
	TRACE_FROM_OVERLAY = 9,
	TRACE_FROM_NETWORK = 10,   /* arrived on the node's uplink */
	TRACE_TO_NETWORK   = 11,   /* leaving through the node's uplink */
};

/* Connection-tracking state of the packet (Hubble's TraceReason numbers). */
enum trace_reason {
	TRACE_REASON_UNKNOWN     = 0,
	TRACE_REASON_NEW         = 1,
	TRACE_REASON_ESTABLISHED = 2,
	TRACE_REASON_REPLY       = 3,
	TRACE_REASON_RELATED     = 4,
};

/* event.flags */
enum event_flags {
	EVENT_F_REPLY       = 1 << 0, /* the packet is a reply of a tracked connection */
	EVENT_F_HANDSHAKE   = 1 << 1, /* handshake_us was measured on this packet */
	EVENT_F_TUNNEL      = 1 << 2, /* tunnel_remote is set */
};

struct event {
	__u64 ktime_ns;            /* bpf_ktime_get_ns() */
	__u8  type;                /* enum event_type */
	__u8  sub_type;            /* see above */
	__u8  direction;           /* enum metric_dir, from endpoint_id's view */
	__u8  trace_reason;        /* enum trace_reason */
	__u8  verdict;             /* POLICY_VERDICT: enum policy_verdict */
	__u8  match_type;          /* POLICY_VERDICT: enum policy_match */
	__u8  flags;               /* EVENT_F_* */
	__u8  _pad0;
	__u16 cap_len;             /* bytes of packet after this header */
	__u16 _pad1;
	__u32 orig_len;            /* skb->len */
	__u32 ifindex;             /* where the program runs */
	__u32 endpoint_id;         /* the local endpoint concerned (0: none) */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;             /* the rule that decided (0: none / default) */
	__u32 handshake_us;        /* EVENT_F_HANDSHAKE */
	__u32 tunnel_remote;       /* EVENT_F_TUNNEL: the other node's address */
	__u32 _pad2;
};

/* ------------------------------------------------------------------------
 * Socket-level load balancing (cgroup sock_addr programs, sock.bpf.c)
 *
 * A service is a frontend (address, port, protocol) with backends. connect()
 * and sendmsg() of sockets in the attached cgroup to a frontend are
 * rewritten to a backend chosen at random, before any packet exists: pods
 * talk to backends directly, no per-packet NAT. getpeername() and
 * recvmsg() show the frontend again (the translation is remembered per
 * socket cookie in lb4_sock_revnat).
 *
 * `lb4_services` (HASH) key {frontend, backend_slot}: slot 0 holds the
 * service (count = number of backends, rev_nat_index), slots 1..count hold
 * backend ids. `lb4_backends` (HASH) backend id -> address and port.
 * `lb4_reverse_nat` (HASH) rev_nat_index -> frontend.
 * ------------------------------------------------------------------------ */

#define MYELIN_MAX_LB4_SERVICES 65536
#define MYELIN_MAX_LB4_BACKENDS 65536
#define MYELIN_MAX_LB4_SOCK_REVNAT 262144

struct lb4_key {
	__be32 address;            /* frontend address */
	__be16 dport;              /* frontend port */
	__u16  backend_slot;       /* 0: the service; 1..count: its backends */
	__u8   proto;              /* IPPROTO_TCP / IPPROTO_UDP */
	__u8   _pad[3];
};

struct lb4_service {
	__u32 backend_id;          /* slots >= 1: the backend */
	__u16 count;               /* slot 0: number of backends */
	__u16 rev_nat_index;       /* slot 0: key of lb4_reverse_nat */
	__u32 flags;               /* reserved, 0 */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8   proto;
	__u8   flags;              /* reserved, 0 */
};

struct lb4_reverse_nat {
	__be32 address;            /* the frontend */
	__be16 port;
	__u16  _pad;
};

struct lb4_sock_key {
	__u64  cookie;             /* bpf_get_socket_cookie() */
	__be32 address;            /* the backend the socket talks to */
	__be16 port;
	__u16  _pad;
};

/* Per-socket local storage of the socket load balancer (`lb4_sock_backends`,
 * SK_STORAGE, pinned): the backends (at most MYELIN_LB4_SOCK_SLOTS) that
 * connect4/sendmsg4 translated this socket to, i.e. the lb4_sock_revnat
 * entries it owns. sock_release (cgroup/sock_release) deletes those entries
 * when the socket goes away; a socket that reached more backends leaves the
 * oldest ones to the LRU. The storage itself is freed with the socket.
 *
 * post_bind4 (cgroup/post_bind4) refuses bind() to an address:port that is
 * a service frontend (slot 0 of lb4_services for the socket's protocol):
 * the caller gets EPERM, so a pod cannot take over a service address. */
#define MYELIN_LB4_SOCK_SLOTS 4

struct lb4_sock_backend {
	__be32 address;            /* 0: slot unused */
	__be16 port;
	__u16  _pad;
};

struct lb4_sock_backends {
	__u32 next;                /* the slot to reuse when all are taken */
	__u32 _pad;
	struct lb4_sock_backend slot[MYELIN_LB4_SOCK_SLOTS];
};

/* ------------------------------------------------------------------------
 * Per-cgroup traffic accounting (cgroup_skb.bpf.c): cgroup_skb/ingress and
 * cgroup_skb/egress programs on the pods' cgroup count every packet a socket
 * of a cgroup below it receives or sends, keyed by the socket's cgroup v2 id
 * (bpf_skb_cgroup_id(): the pod's own cgroup), in `cgroup_traffic`
 * (LRU_PERCPU_HASH, __u64 cgroup id -> struct cgroup_traffic_value).
 * Bytes are skb->len (the IP packet). The programs always allow (return 1):
 * they observe, they do not filter.
 * ------------------------------------------------------------------------ */

#define MYELIN_MAX_CGROUP_TRAFFIC 16384

struct cgroup_traffic_value {
	__u64 ingress_packets;
	__u64 ingress_bytes;
	__u64 egress_packets;
	__u64 egress_bytes;
};

/* ------------------------------------------------------------------------
 * XDP prefilter on the uplink (xdp.bpf.c): packets whose source lies in a
 * prefix of `prefilter4` (LPM, ipcache_key -> prefilter_value) are dropped
 * before the stack sees them (drop reason DROP_POLICY_DENY, "denied by the
 * deny list"), and counted per prefix.
 * ------------------------------------------------------------------------ */

#define MYELIN_MAX_PREFILTER4 16384

struct prefilter_value {
	__u64 packets;             /* dropped (atomic adds) */
	__u64 bytes;
};

/* ------------------------------------------------------------------------
 * Process events (process.bpf.c): the start of runtime visibility.
 *
 * `process_exec` (tp_btf/sched_process_exec) and `process_exit`
 * (tracepoint/sched/sched_process_exit, thread-group leaders only) report
 * through their own ring buffer, `process_events` (RINGBUF, pinned), one
 * struct process_event per record. cgroup_id is the task's cgroup v2 id:
 * user space maps it to a pod (each pod has its own cgroup). Reservations
 * that fail are counted per CPU in `process_events_lost`.
 * ------------------------------------------------------------------------ */

#define MYELIN_PROCESS_FILENAME_LEN 256

enum process_event_type {
	PROCESS_EVENT_EXEC = 1,
	PROCESS_EVENT_EXIT = 2,
};

struct process_event {
	__u64 ktime_ns;            /* bpf_ktime_get_ns() */
	__u64 cgroup_id;           /* bpf_get_current_cgroup_id() */
	__u32 type;                /* enum process_event_type */
	__u32 pid;                 /* thread-group id (what user space calls the pid) */
	__u32 tid;
	__u32 ppid;                /* the parent's thread-group id */
	__u32 uid;
	__u32 gid;
	__u32 exit_code;           /* EXIT: the task's exit_code (status << 8 | signal) */
	__u32 _pad;
	char  comm[16];
	char  filename[MYELIN_PROCESS_FILENAME_LEN]; /* EXEC: the path executed */
};

/* Key 0 of the single-entry array `abi_meta`: the ABI of the pinned maps. */
struct abi_meta {
	__u32 version;             /* MYELIN_ABI_VERSION of the datapath that created the maps */
	__u32 _pad;
};

#endif /* MYELIN_ABI_H */
