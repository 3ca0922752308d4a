//! Kernel feature probes: what this kernel lets us load and attach.

use std::path::Path;
use std::time::Instant;

use libbpf_rs::libbpf_sys;

use crate::sys;

/// One probed feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureProbe {
    /// Stable short name (`tcx`, `xdp`, `bpf_redirect_peer`, ...).
    pub name: String,
    /// Whether it can be used on this kernel.
    pub available: bool,
    /// What was checked and, when unavailable, why.
    pub detail: String,
}

fn row(name: &str, available: bool, detail: impl Into<String>) -> FeatureProbe {
    FeatureProbe { name: name.to_string(), available, detail: detail.into() }
}

fn from_probe(name: &str, what: &str, r: std::io::Result<bool>) -> FeatureProbe {
    match r {
        Ok(true) => row(name, true, format!("{what}: supported")),
        Ok(false) => row(name, false, format!("{what}: not supported by this kernel")),
        Err(e) => row(name, false, format!("{what}: probe failed: {e}")),
    }
}

fn from_load(name: &str, what: &str, r: std::io::Result<()>) -> FeatureProbe {
    match r {
        Ok(()) => row(name, true, format!("{what}: loads")),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            row(name, false, format!("{what}: refused with EPERM (kernel lockdown or missing CAP_BPF/CAP_PERFMON)"))
        }
        Err(e) => row(name, false, format!("{what}: {e}")),
    }
}

/// Probe the kernel features Myelin can use. Fast (well under a second):
/// type/helper probes load tiny programs, `fentry`/`lsm` load one trivial
/// BTF-attached program each, nothing is attached anywhere.
#[must_use]
pub fn probe_features() -> Vec<FeatureProbe> {
    let started = Instant::now();
    let mut out = Vec::new();

    out.push(match sys::tcx_query_lo() {
        Ok(()) => row("tcx", true, "TCX link query on lo: supported (kernel >= 6.6)"),
        Err(e) => row("tcx", false, format!("TCX link query on lo: {e}; fall back to clsact (netlink tc)")),
    });
    out.push(from_probe("tc", "BPF_PROG_TYPE_SCHED_CLS", sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS)));
    out.push(from_probe(
        "bpf_redirect_peer",
        "helper bpf_redirect_peer in tc programs",
        sys::probe_helper(libbpf_sys::BPF_PROG_TYPE_SCHED_CLS, libbpf_sys::BPF_FUNC_redirect_peer),
    ));
    out.push(from_probe("xdp", "BPF_PROG_TYPE_XDP", sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_XDP)));
    out.push(from_probe("ringbuf", "BPF_MAP_TYPE_RINGBUF", sys::probe_map_type(libbpf_sys::BPF_MAP_TYPE_RINGBUF)));
    out.push(from_probe(
        "tracepoint",
        "BPF_PROG_TYPE_TRACEPOINT",
        sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_TRACEPOINT),
    ));
    out.push(from_probe(
        "raw_tracepoint",
        "BPF_PROG_TYPE_RAW_TRACEPOINT",
        sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_RAW_TRACEPOINT),
    ));
    out.push(from_load(
        "tp_btf",
        "tp_btf program on sched_process_exec",
        sys::probe_btf_prog_load(libbpf_sys::BPF_PROG_TYPE_TRACING, libbpf_sys::BPF_TRACE_RAW_TP, "sched_process_exec"),
    ));
    out.push(from_probe(
        "cgroup_sock_addr",
        "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR),
    ));
    out.push(from_probe(
        "cgroup_sock",
        "BPF_PROG_TYPE_CGROUP_SOCK",
        sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK),
    ));
    out.push(from_load(
        "cgroup_sock_release",
        "cgroup sock program for BPF_CGROUP_INET_SOCK_RELEASE (kernel >= 5.9)",
        sys::probe_attach_type_load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK, libbpf_sys::BPF_CGROUP_INET_SOCK_RELEASE),
    ));
    out.push(from_load(
        "cgroup_post_bind4",
        "cgroup sock program for BPF_CGROUP_INET4_POST_BIND",
        sys::probe_attach_type_load(libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK, libbpf_sys::BPF_CGROUP_INET4_POST_BIND),
    ));
    out.push(from_probe(
        "cgroup_skb",
        "BPF_PROG_TYPE_CGROUP_SKB",
        sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_CGROUP_SKB),
    ));

    // kprobe: the program type may load while the kprobe PMU (what attaching
    // needs) is missing from the kernel build.
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    out.push(match sys::probe_prog_type(libbpf_sys::BPF_PROG_TYPE_KPROBE) {
        Ok(true) if kprobe_pmu => row("kprobe", true, "BPF_PROG_TYPE_KPROBE loads, kprobe PMU present"),
        Ok(true) => row(
            "kprobe",
            false,
            "BPF_PROG_TYPE_KPROBE loads but the kprobe PMU is missing (kernel built without CONFIG_KPROBE_EVENTS)",
        ),
        other => from_probe("kprobe", "BPF_PROG_TYPE_KPROBE", other),
    });

    out.push(from_load(
        "fentry",
        "fentry program on bpf_fentry_test1",
        sys::probe_btf_prog_load(libbpf_sys::BPF_PROG_TYPE_TRACING, libbpf_sys::BPF_TRACE_FENTRY, "bpf_fentry_test1"),
    ));
    let mut lsm = from_load(
        "lsm",
        "BPF LSM program on bpf_lsm_file_open",
        sys::probe_btf_prog_load(libbpf_sys::BPF_PROG_TYPE_LSM, libbpf_sys::BPF_LSM_MAC, "file_open"),
    );
    if lsm.available {
        // Loading works with CONFIG_BPF_LSM; attaching also needs "bpf" in the active LSM list.
        match std::fs::read_to_string("/sys/kernel/security/lsm") {
            Ok(list) if list.split(',').any(|l| l.trim() == "bpf") => lsm.detail.push_str(", \"bpf\" is an active LSM"),
            Ok(list) => {
                lsm.available = false;
                lsm.detail = format!("BPF LSM loads but \"bpf\" is not in the active LSMs ({}); add lsm=...,bpf to the kernel command line", list.trim());
            }
            Err(_) => {
                lsm.detail.push_str(" (active LSM list unreadable: securityfs not mounted; attach may still fail)")
            }
        }
    }
    out.push(lsm);

    debug_assert!(started.elapsed().as_secs() < 5, "feature probes are meant to be fast");
    out
}
