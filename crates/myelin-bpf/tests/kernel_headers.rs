//! The eBPF programs are built without the host's C library or kernel headers
//! (`-nostdinc`, see build.rs). These tests prove both halves of that:
//! host headers are unreachable, and Myelin's own UAPI definitions in
//! `bpf/include/myelin/*.h` have exactly the kernel's layouts (checked member by
//! member, bit offsets included, against the running kernel's BTF).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_rs::btf::types::{Composite, MemberAttr};
use libbpf_rs::btf::{Btf, BtfType};

fn out_dir() -> PathBuf {
    PathBuf::from(env!("MYELIN_BPF_OUT_DIR"))
}

/// The exact clang arguments build.rs compiles the programs with.
fn cflags() -> Vec<String> {
    let text = std::fs::read_to_string(out_dir().join("bpf-cflags")).expect("bpf-cflags written by build.rs");
    text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// Compile `source` with the programs' flags; Ok(object path) or Err(compiler stderr).
fn compile(name: &str, source: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("myelin-hdr-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    let obj = dir.join(format!("{name}.o"));
    std::fs::write(&src, source).unwrap();
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let out = Command::new(&clang)
        .args(cflags())
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap_or_else(|e| panic!("running {clang}: {e} (install clang: scripts/setup.sh)"));
    let _ = std::fs::remove_file(&src);
    if out.status.success() {
        Ok(obj)
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn cleanup(obj: &Path) {
    if let Some(dir) = obj.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn host_c_library_headers_are_a_build_error() {
    for header in ["sys/socket.h", "linux/if_arp.h", "stdint.h", "linux/bpf.h"] {
        let src = format!("#include <{header}>\nint x;\n");
        let err = compile("hostinc", &src).expect_err(&format!("<{header}> must not be reachable from eBPF C"));
        assert!(
            err.contains(&format!("'{header}' file not found")),
            "unexpected compiler message for <{header}>:\n{err}"
        );
    }
}

#[test]
fn own_headers_and_libbpf_headers_compile() {
    let obj = compile(
        "ownhdr",
        "#include \"myelin/bpf.h\"\n#include \"myelin/net.h\"\n#include <bpf/bpf_helpers.h>\n\
         #include <bpf/bpf_endian.h>\n#include \"myelin_abi.h\"\n\
         SEC(\"tc\") int f(struct __sk_buff *skb) { return skb->len > 0 ? TC_ACT_OK : TC_ACT_SHOT; }\n\
         char LICENSE[] SEC(\"license\") = \"GPL\";\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    cleanup(&obj);
}

/// Every member of a struct, anonymous unions/structs flattened: (name, bit offset, bitfield size).
fn members(btf: &Btf<'_>, ty: BtfType<'_>, base: u32, out: &mut Vec<(String, u32, u8)>) {
    let ty = ty.skip_mods_and_typedefs();
    let comp = Composite::try_from(ty).unwrap_or_else(|_| panic!("{:?} is not a struct or union", ty.name()));
    for m in comp.iter() {
        let (off, size) = match m.attr {
            MemberAttr::Normal { offset } => (offset, 0),
            MemberAttr::BitField { size, offset } => (offset, size),
        };
        let name = m.name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.is_empty() {
            let inner: BtfType<'_> = btf.type_by_id(m.ty).expect("member type");
            if Composite::try_from(inner.skip_mods_and_typedefs()).is_ok() {
                members(btf, inner, base + off, out);
            }
            continue; // an unnamed padding bitfield
        }
        out.push((name, base + off, size));
    }
}

fn layout(btf: &Btf<'_>, name: &str) -> Vec<(String, u32, u8)> {
    let ty: BtfType<'_> = btf.type_by_name(name).unwrap_or_else(|| panic!("no struct {name} in BTF"));
    let mut out = Vec::new();
    members(btf, ty, 0, &mut out);
    out
}

#[test]
fn own_uapi_structs_match_the_running_kernel() {
    const STRUCTS: &[&str] = &[
        "__sk_buff",
        "xdp_md",
        "bpf_sock_addr",
        "bpf_tunnel_key",
        "bpf_fib_lookup",
        "bpf_redir_neigh",
        "ethhdr",
        "arphdr",
        "iphdr",
        "ipv6hdr",
        "tcphdr",
        "udphdr",
        "icmphdr",
    ];
    let mut src = String::from("#include \"myelin/bpf.h\"\n#include \"myelin/net.h\"\n");
    for (i, s) in STRUCTS.iter().enumerate() {
        src += &format!("struct {s} anchor{i};\n");
    }
    let obj = compile("layouts", &src).unwrap_or_else(|e| panic!("{e}"));
    let ours = Btf::from_path(&obj).expect("BTF of the probe object");
    let kernel = Btf::from_vmlinux().expect("the kernel's BTF (/sys/kernel/btf/vmlinux)");
    let mut wrong = Vec::new();
    for s in STRUCTS {
        let k = layout(&kernel, s);
        for (name, off, size) in layout(&ours, s) {
            match k.iter().find(|(n, ..)| *n == name) {
                Some((_, koff, ksize)) if *koff == off && *ksize == size => {}
                Some((_, koff, ksize)) => wrong.push(format!(
                    "struct {s}.{name}: ours at bit {off} (bitfield {size}), kernel at bit {koff} (bitfield {ksize})"
                )),
                None => wrong.push(format!("struct {s}.{name}: the kernel has no such member")),
            }
        }
    }
    cleanup(&obj);
    assert!(wrong.is_empty(), "bpf/include/myelin differs from the kernel's UAPI:\n{}", wrong.join("\n"));
}
