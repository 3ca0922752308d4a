//! Compiles every `bpf/<area>/*.bpf.c` with clang and generates a libbpf-rs
//! skeleton for each into `OUT_DIR/<name>.skel.rs` (the object itself is
//! `OUT_DIR/<name>.bpf.o`).
//!
//! The programs never see the host's C library or kernel headers: clang runs
//! with `-nostdinc` and exactly two include directories, `bpf/include` (the
//! ABI header and Myelin's own kernel UAPI definitions) and libbpf's helper
//! headers as vendored by `libbpf-sys` (`DEP_BPF_INCLUDE`). Reaching for
//! `<sys/socket.h>` or `<linux/if_arp.h>` is a build error on every machine,
//! not only on machines that lack `libc6-dev-i386`. The exact clang arguments
//! are written to `OUT_DIR/bpf-cflags` (one per line) so tests can compile
//! probe sources with the very same flags.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

/// Directories under `bpf/` whose `*.bpf.c` files are programs, and whether
/// they get a skeleton (frozen test objects only need the object).
const AREAS: &[(&str, bool)] = &[("datapath", true), ("testdata/abi-v1", false)];

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by panicking; say what to do.
        #[allow(clippy::panic)]
        {
            panic!("myelin-bpf build: {e}");
        }
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the workspace root above crates/myelin-bpf")?
        .to_path_buf();
    let bpf = root.join("bpf");
    let include = bpf.join("include");
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // libbpf-sys (a direct dependency, `links = "bpf"`) installs libbpf's
    // headers (bpf/bpf_helpers.h, ...) and tells us where.
    let libbpf_include = PathBuf::from(
        env::var("DEP_BPF_INCLUDE").map_err(|_| "DEP_BPF_INCLUDE is not set: myelin-bpf must depend on libbpf-sys")?,
    );

    println!("cargo:rerun-if-changed={}", bpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(format!(
                "`{clang}` not found or not working: the eBPF programs in {} are compiled with clang. \
                 Install it (Debian: `apt-get install clang llvm`, or run scripts/setup.sh) or set CLANG=/path/to/clang.",
                bpf.display()
            ))
        }
    }

    let target_arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        Ok("x86_64") | Err(_) => "x86",
        Ok(other) => other,
    }
    .to_string();
    let cflags: Vec<String> = vec![
        "-target".into(),
        "bpf".into(),
        "-O2".into(),
        "-g".into(),
        "-Wall".into(),
        "-Werror".into(),
        "-nostdinc".into(),
        format!("-D__TARGET_ARCH_{target_arch}"),
        "-I".into(),
        include.display().to_string(),
        "-I".into(),
        libbpf_include.display().to_string(),
    ];
    // The ABI version, for the loader's upgrade record.
    let abi =
        std::fs::read_to_string(include.join("myelin_abi.h")).map_err(|e| format!("reading myelin_abi.h: {e}"))?;
    let version = abi
        .lines()
        .find_map(|l| l.strip_prefix("#define MYELIN_ABI_VERSION "))
        .map(str::trim)
        .filter(|v| v.parse::<u32>().is_ok())
        .ok_or("bpf/include/myelin_abi.h has no `#define MYELIN_ABI_VERSION <number>`")?;
    println!("cargo:rustc-env=MYELIN_ABI_VERSION={version}");
    // Tests compile probe sources with the same flags and load the objects.
    println!("cargo:rustc-env=MYELIN_BPF_OUT_DIR={}", out.display());
    std::fs::write(out.join("bpf-cflags"), cflags.join("\n") + "\n")
        .map_err(|e| format!("writing {}: {e}", out.join("bpf-cflags").display()))?;

    // Rebuild when any header or source below bpf/ changes.
    let mut dirs = vec![include.clone(), include.join("myelin")];
    for (area, _) in AREAS {
        dirs.push(bpf.join(area));
        dirs.push(bpf.join(area).join("lib"));
    }
    for dir in &dirs {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.filter_map(Result::ok) {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }

    for (area, skeleton) in AREAS {
        let dir = bpf.join(area);
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.ends_with(".bpf.c")))
            .collect();
        sources.sort();
        for src in sources {
            compile(&clang, &cflags, &src, &out, *skeleton)?;
        }
    }
    Ok(())
}

fn compile(clang: &str, cflags: &[String], src: &Path, out: &Path, skeleton: bool) -> Result<(), String> {
    let file = src.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let name = file.trim_end_matches(".bpf.c");
    let obj = out.join(format!("{name}.bpf.o"));
    let dir = src.parent().ok_or("source without a directory")?;
    let status = Command::new(clang)
        .args(cflags)
        .arg("-I")
        .arg(dir)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .status()
        .map_err(|e| format!("running {clang} on {}: {e}", src.display()))?;
    if !status.success() {
        return Err(format!(
            "clang failed to compile {} (see the compiler output above). The programs are built with \
             -nostdinc: include only bpf/include/myelin/*.h, myelin_abi.h and <bpf/...> (libbpf), never \
             host headers such as <linux/...> or <sys/...>.",
            src.display()
        ));
    }
    if !skeleton {
        return Ok(());
    }
    SkeletonBuilder::new()
        .obj(&obj)
        .generate(out.join(format!("{name}.skel.rs")))
        .map_err(|e| format!("generating the skeleton for {}: {e:#}", obj.display()))
}
