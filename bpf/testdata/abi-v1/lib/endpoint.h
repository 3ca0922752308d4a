/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Local endpoint lookup. */
#ifndef MYELIN_LIB_ENDPOINT_H
#define MYELIN_LIB_ENDPOINT_H

#include "common.h"
#include "maps.h"

/* ip4 in network byte order. */
static __always_inline struct endpoint_info *endpoint_lookup4(__u32 ip4)
{
	struct endpoint_key key = { .ip4 = ip4 };

	return bpf_map_lookup_elem(&endpoints, &key);
}

#endif /* MYELIN_LIB_ENDPOINT_H */
