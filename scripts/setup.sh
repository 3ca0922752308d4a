#!/usr/bin/env bash
# Installs what Myelin's build, lab and tests need on a fresh Debian 12 machine,
# and mounts the kernel filesystems the agent and tests use. Idempotent: it only
# installs what is missing. Run as root.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: Myelin loads eBPF programs and builds network namespaces: run as root (sudo $0)" >&2
    exit 1
  fi
}
need_root

# Debian packages: build (clang for the eBPF C; libelf, zlib, pkg-config, make, gcc for the
# libbpf that libbpf-sys vendors and builds; protoc and the well-known .proto files it
# imports, from libprotobuf-dev),
# kernel tools (bpftool, iproute2, nftables), tests and lab (iputils-ping, python3,
# podman + runc + CNI plugins + busybox-static for the real-client test, iperf3,
# python3-grpcio + python3-protobuf for the test that reads flows with Python's gRPC,
# prometheus for promtool and the real server the metrics and dashboard tests scrape with
# (the tests start their own instance; the package's service is not needed), etcd-server for
# the real etcd v3 the kvstore tests and multi-node labs start (their own instances), tshark
# for the multi-node test that decodes the overlay's VXLAN on the fabric (VNI = identity), and
# ca-certificates: cargo fetches crates over https (a minimal Debian has no CA store).
PKGS=(ca-certificates clang llvm libelf-dev zlib1g-dev pkg-config make gcc libc6-dev
      bpftool iproute2 nftables iptables iputils-ping procps python3
      protobuf-compiler libprotobuf-dev podman runc containernetworking-plugins busybox-static
      iperf3 uidmap python3-grpcio python3-protobuf prometheus etcd-server tshark)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs for pinned maps and links (the agent mounts it too; tests expect it).
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing; install Rust stable (rustup) first" >&2
  exit 1
fi
echo "setup: ok"
