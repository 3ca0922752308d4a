/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Scalar types of the eBPF programs. The programs are compiled with
 * -nostdinc: they see no host C library and no host kernel headers, only
 * bpf/include (these headers) and libbpf's helper headers. Everything the
 * kernel defines that the programs use is written out here from the kernel's
 * UAPI, and crates/myelin-bpf/tests/kernel_headers.rs checks the layouts
 * against the running kernel's BTF.
 */
#ifndef MYELIN_TYPES_H
#define MYELIN_TYPES_H

typedef signed char        __s8;
typedef unsigned char      __u8;
typedef signed short       __s16;
typedef unsigned short     __u16;
typedef signed int         __s32;
typedef unsigned int       __u32;
typedef signed long long   __s64;
typedef unsigned long long __u64;

/* Byte-order annotated types (sparse's __bitwise is meaningless here). */
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u16 __le16;
typedef __u32 __le32;
typedef __u16 __sum16;
typedef __u32 __wsum;

typedef _Bool bool;
#define true  1
#define false 0

#ifndef NULL
#define NULL ((void *)0)
#endif

#define offsetof(type, member) __builtin_offsetof(type, member)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif /* MYELIN_TYPES_H */
