//! Compiles every `bpf/datapath/*.bpf.c` with clang and generates a libbpf-rs
//! skeleton for each into `OUT_DIR/<name>.skel.rs`.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

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
    let datapath = bpf.join("datapath");
    let include = bpf.join("include");
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());

    println!("cargo:rerun-if-changed={}", bpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(format!(
                "`{clang}` not found or not working: the eBPF programs in {} are compiled with clang. \
                 Install it (Debian: `apt-get install clang llvm libbpf-dev`) or set CLANG=/path/to/clang.",
                datapath.display()
            ))
        }
    }

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&datapath)
        .map_err(|e| format!("reading {}: {e}", datapath.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.ends_with(".bpf.c")))
        .collect();
    sources.sort();

    // Rebuild when any header or source below bpf/ changes.
    for dir in [&datapath, &datapath.join("lib"), &include] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.filter_map(Result::ok) {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }

    let multiarch =
        format!("/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into()));
    let target_arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        Ok("x86_64") | Err(_) => "x86",
        Ok(other) => other,
    }
    .to_string();

    for src in sources {
        let file = src.file_name().and_then(OsStr::to_str).unwrap_or_default();
        let name = file.trim_end_matches(".bpf.c");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{target_arch}"))
            .arg("-I")
            .arg(&include)
            .arg("-I")
            .arg(&datapath)
            .arg("-idirafter")
            .arg(&multiarch)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .map_err(|e| format!("running {clang} on {}: {e}", src.display()))?;
        if !status.success() {
            return Err(format!(
                "clang failed to compile {} (see the compiler output above). \
                 If headers are missing, install libbpf-dev and linux-libc-dev.",
                src.display()
            ));
        }
        SkeletonBuilder::new()
            .obj(&obj)
            .generate(out.join(format!("{name}.skel.rs")))
            .map_err(|e| format!("generating the skeleton for {}: {e:#}", obj.display()))?;
    }
    Ok(())
}
