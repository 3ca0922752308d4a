#!/usr/bin/env bash
# fresh-check: proves the README's quick start on a fresh Debian 12 root filesystem.
#
# What it does, as root, on this machine:
#   1. root      debootstrap --variant=minbase bookworm into WORK/root, from the mirror this
#                machine's own apt sources use for "bookworm main" (or a pristine tarball of
#                that, cached by date in /var/cache/myelin-fresh; --no-cache skips it).
#                debootstrap itself is installed on the HOST if missing (apt-get): it is a tool
#                of this check, not something the fresh machine needs, so it is not in setup.sh.
#   2. mounts    the root onto itself (so / is a mount point), /proc, /sys (rbind, rslave: the cgroup mounts come along), /dev (rbind, rslave,
#                /dev/pts with it), /run (a new tmpfs), a NEW bpffs at /sys/fs/bpf (not the
#                host's), the host's /etc/resolv.conf and site-local CA certificates (copied:
#                how this machine reaches the network), the Rust toolchain read-only:
#                RUSTUP_HOME at /opt/rustup and CARGO_HOME/bin at /opt/cargo/bin. CARGO_HOME
#                inside is /opt/cargo, a writable directory of the root; its registry/ is an
#                overlay whose lower layer is the host's cargo registry (read-only) and whose
#                upper layer is in WORK, so nothing is downloaded twice and nothing the root
#                does reaches the host's cargo. The host's apt download cache
#                (/var/cache/apt/archives: .deb files, not installed packages) is bind-mounted
#                too, so a second run does not download the packages again. A cargo target
#                directory is never cached or reused: the build starts from nothing.
#   3. clone     git clone of the repository at the commit checked (default HEAD of the
#                repository this script is in; --rev REV): committed files only.
#   4. in the root (chroot, env -i: HOME, PATH with the toolchain, RUSTUP_HOME, CARGO_HOME),
#      what the README has a new user run, one timed step each:
#        setup     bash scripts/setup.sh
#        build     cargo build --workspace --bins
#        demo      MYELIN_LAB=fresh ./demo.sh    (the README's main command, literally: setup, build,
#                  the default lab up, pod-to-pod and pod-to-world pings, a policy, flows)
#        ping      myelin lab exec --name fresh <pod A> -- ping -c 3 <IP of pod B>  (the lab
#                  the demo left up still forwards)
#        lab-down  myelin lab down --name fresh
#        leftovers nothing of the lab is left: network namespaces, netns mounts, cgroups,
#                  bpffs pins, processes
#   5. cleanup (always, also on failure, Ctrl-C or TERM): lab down if it was brought up, kill
#      every process whose root directory is the fresh root, unmount everything below WORK in
#      reverse order (lazily only as a last resort), remove WORK (unless --keep). A leftover of
#      an earlier aborted run in the same WORK is cleaned up first.
#
# Prints each step's time and a summary table; exits non-zero when a step fails, after printing
# the end of that step's output.
#
# Usage: scripts/fresh-check.sh [--work DIR] [--keep] [--no-cache] [--rev REV] [--skip-lab]
#                               [--no-registry-cache] [--mirror URL]
set -uo pipefail

LAB=fresh
WORK=/var/tmp/myelin-fresh
KEEP=0
USE_CACHE=1
REV=HEAD
SKIP_LAB=0
REGISTRY=1
MIRROR=
CACHE_DIR=/var/cache/myelin-fresh
SUITE=bookworm

usage() {
  sed -n '2,/^set -uo/p' "$0" | sed -e '/^set -uo/d' -e 's/^# \{0,1\}//'
  cat <<'EOF'
Options:
  --work DIR     work directory (default /var/tmp/myelin-fresh); removed at the end
  --keep         keep the work directory (root, logs) after the run; mounts are still removed
  --no-cache     neither use nor write the cached pristine root tarball
  --rev REV      commit to check (default HEAD of the repository containing this script)
  --skip-lab     stop after the build (no lab up, ping, lab down)
  --no-registry-cache
                 start with an empty cargo registry (cargo downloads every crate, as on a
                 machine that never built Rust code)
  --mirror URL   Debian mirror for debootstrap (default: from this machine's apt sources)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=${2:?--work needs a directory}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-cache) USE_CACHE=0; shift ;;
    --rev) REV=${2:?--rev needs a commit}; shift 2 ;;
    --skip-lab) SKIP_LAB=1; shift ;;
    --no-registry-cache) REGISTRY=0; shift ;;
    --mirror) MIRROR=${2:?--mirror needs a URL}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fresh-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "fresh-check: $*"; }
die() { echo "fresh-check: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: it builds a root filesystem, mounts and runs the lab (sudo $0)"
case "$WORK" in
  /*) ;;
  *) die "--work must be an absolute path, not '$WORK'" ;;
esac
WORK=${WORK%/}
[ "$WORK" != "" ] && [ "$WORK" != "/" ] || die "--work must not be /"

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null) ||
  die "$SCRIPT_DIR is not inside a git repository: the check clones the repository this script is in"
COMMIT=$(git -C "$REPO" rev-parse --verify --quiet "$REV^{commit}") ||
  die "--rev $REV is not a commit of $REPO (try a branch name or a hash from 'git log')"

ROOT=$WORK/root
LOGS=$WORK/logs
SRC=/src/myelin
IN_PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

now() { echo "${EPOCHREALTIME/,/.}"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- mounts and processes

# Mount points below $1 (not $1 itself: a --work that is a mount point stays) in this mount
# namespace, latest first.
mounts_below() {
  local prefix=$1
  awk -v p="$prefix" '{
      m = $5
      # mountinfo escapes space, tab, newline and backslash as \ooo
      while (match(m, /\\[0-7][0-7][0-7]/)) {
        c = sprintf("%c", (substr(m, RSTART + 1, 1) * 64) + (substr(m, RSTART + 2, 1) * 8) + substr(m, RSTART + 3, 1))
        m = substr(m, 1, RSTART - 1) c substr(m, RSTART + 4)
      }
      if (index(m, p "/") == 1) print m
    }' /proc/self/mountinfo | tac
}

# Pids of processes whose root directory is $ROOT or below it.
root_pids() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    r=${r% (deleted)}
    if [ "$r" = "$ROOT" ] || [ "${r#"$ROOT"/}" != "$r" ]; then
      echo "${p#/proc/}"
    fi
  done
}

# TERM everything running in the root, wait up to 10 s, then KILL.
kill_root_procs() {
  local pids deadline
  pids=$(root_pids)
  [ -n "$pids" ] || return 0
  say "stopping $(echo "$pids" | wc -w) process(es) still running in $ROOT"
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null
  deadline=$((SECONDS + 10))
  while [ -n "$(root_pids)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  pids=$(root_pids)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null
    deadline=$((SECONDS + 10))
    while [ -n "$(root_pids)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  fi
  pids=$(root_pids)
  [ -z "$pids" ] || { echo "fresh-check: processes survived SIGKILL in $ROOT: $pids" >&2; return 1; }
}

# Unmount everything below $WORK, deepest first; lazy unmount only for what refuses.
unmount_all() {
  local m left
  for m in $(mounts_below "$WORK"); do
    umount "$m" 2>/dev/null || umount -R "$m" 2>/dev/null || true
  done
  left=$(mounts_below "$WORK")
  if [ -n "$left" ]; then
    say "lazy-unmounting what refused to unmount: $(echo "$left" | tr '\n' ' ')"
    for m in $left; do umount -l "$m" 2>/dev/null || true; done
  fi
  left=$(mounts_below "$WORK")
  [ -z "$left" ] || { echo "fresh-check: still mounted: $left" >&2; return 1; }
}

# Run a command in the root, with the clean environment the README's user has.
# The machine's proxy settings (if any) pass through; nothing else of this shell does.
in_root() {
  local proxy=() v
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!v:-}" ] || proxy+=("$v=${!v}")
  done
  env -i HOME=/root USER=root LOGNAME=root PATH="$IN_PATH" LANG=C.UTF-8 TERM=dumb \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo CARGO_TERM_COLOR=never "${proxy[@]}" \
    chroot "$ROOT" /bin/bash -c "cd $SRC 2>/dev/null || cd /; $1"
}

root_mounted() { mountpoint -q "$ROOT/run" && mountpoint -q "$ROOT/proc"; }

# cgroup v2 mount of the host (the root sees the same hierarchy through the /sys rbind).
cgroup2_dir() { awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts; }

# Everything of lab $LAB still present. Needs the root's mounts (its /run holds the netns files).
lab_leftovers() {
  local cg
  if [ -d "$ROOT/run/netns" ]; then
    find "$ROOT/run/netns" -mindepth 1 -maxdepth 1 -name "myl-$LAB-*" -printf 'netns file %p\n' 2>/dev/null
  fi
  awk -v l="myl-$LAB-" '$9 == "nsfs" && index($5, l) { print "netns mount " $5 }' /proc/self/mountinfo
  [ -d /run/netns ] && find /run/netns -mindepth 1 -maxdepth 1 -name "myl-$LAB-*" -printf 'host netns %p\n'
  cg=$(cgroup2_dir)
  [ -n "$cg" ] && [ -d "$cg/myelin/$LAB" ] && echo "cgroup $cg/myelin/$LAB"
  [ -e "$ROOT/sys/fs/bpf/myelin/lab/$LAB" ] && echo "bpffs pins $ROOT/sys/fs/bpf/myelin/lab/$LAB"
  [ -e "/sys/fs/bpf/myelin/lab/$LAB" ] && echo "host bpffs pins /sys/fs/bpf/myelin/lab/$LAB"
  [ -e "$ROOT/run/myelin/lab/$LAB" ] && echo "lab state $ROOT/run/myelin/lab/$LAB"
  find /sys/class/net -mindepth 1 -maxdepth 1 -name "myl-$LAB*" -printf 'host link %f\n'
  true
}

# Remove what lab down left (after its processes are gone): netns, cgroups.
force_remove_lab() {
  local f cg
  if [ -d "$ROOT/run/netns" ]; then
    for f in "$ROOT"/run/netns/myl-"$LAB"-*; do
      [ -e "$f" ] || continue
      umount "$f" 2>/dev/null || umount -l "$f" 2>/dev/null
      rm -f "$f"
    done
  fi
  cg=$(cgroup2_dir)
  if [ -n "$cg" ] && [ -d "$cg/myelin/$LAB" ]; then
    find "$cg/myelin/$LAB" -depth -type d -exec rmdir {} + 2>/dev/null
    rmdir "$cg/myelin" 2>/dev/null
  fi
  rm -rf "$ROOT/sys/fs/bpf/myelin/lab/$LAB" 2>/dev/null
  true
}

# Tear down whatever a run (this one or an aborted earlier one) left in $WORK.
teardown() {
  local rc=0 left
  [ -d "$WORK" ] || return 0
  if [ -d "$ROOT" ]; then
    kill_root_procs || rc=1
    if root_mounted && [ -x "$ROOT$SRC/target/debug/myelin" ] && [ -e "$ROOT/run/myelin/lab/$LAB" ]; then
      say "removing lab $LAB left in the root (lab down)"
      in_root "timeout 120 target/debug/myelin lab down --name $LAB" >>"$LOGS/cleanup-lab-down.log" 2>&1 && say "lab down: ok" ||
        { say "lab down in cleanup failed (see below)"; tail -n 20 "$LOGS/cleanup-lab-down.log"; }
      kill_root_procs || rc=1
    fi
    left=$(lab_leftovers)
    if [ -n "$left" ]; then
      say "removing what is left of lab $LAB:"; echo "$left" | sed 's/^/    /'
      force_remove_lab
      kill_root_procs || rc=1
    fi
  fi
  unmount_all || rc=1
  return $rc
}

remove_work() {
  if [ -n "$(mounts_below "$WORK")" ]; then
    echo "fresh-check: NOT removing $WORK: something is still mounted below it" >&2
    return 1
  fi
  # --one-file-system: never descend into anything mounted (there should be nothing).
  rm -rf --one-file-system "$WORK"
}

# ---------------------------------------------------------------- steps

STEP_NAMES=()
STEP_TIMES=()
STEP_RESULTS=()
FAILED=
CURRENT_PID=
CURRENT_STEP=
CURRENT_T0=
T_START=$(now)

record() { STEP_NAMES+=("$1"); STEP_TIMES+=("$2"); STEP_RESULTS+=("$3"); }

# Compiler messages of a failed cargo build: the output without cargo's build-script
# directives and progress lines, last 60 lines.
tail_of() {
  local name=$1 log=$2
  if [ "$name" = build ]; then
    grep -v -E '^[[:space:]]*cargo:|^[[:space:]]*(Compiling|Downloaded|Downloading|Locking|Updating|Adding) ' "$log" | tail -n 60
  else
    tail -n 60 "$log"
  fi
}

# The lines of a passed step's output worth seeing in a CI log.
ok_note() {
  case "$1" in
    setup) grep -E '^setup: installing' "$2" | fold -s -w 100 ;;
    ping) grep -E ' -> |packets transmitted|min/avg/max' "$2" ;;
    demo) grep -E '^== |packets transmitted|DROPPED' "$2" | head -n 20 ;;
  esac
  true
}

# run_step NAME DESCRIPTION FUNCTION-OR-COMMAND...: runs it in the background (so INT and TERM
# are handled at once), its output in $LOGS/NAME.log; records time and result.
run_step() {
  local name=$1 desc=$2 t0 rc log=$LOGS/$1.log
  shift 2
  echo "==> $name: $desc"
  t0=$(now)
  CURRENT_STEP=$name
  CURRENT_T0=$t0
  "$@" >"$log" 2>&1 </dev/null &
  CURRENT_PID=$!
  wait "$CURRENT_PID"
  rc=$?
  CURRENT_PID=
  CURRENT_STEP=
  local t
  t=$(secs "$t0" "$(now)")
  if [ $rc -eq 0 ]; then
    record "$name" "$t" PASS
    echo "    $name: ok in $t s"
    ok_note "$name" "$log" | sed 's/^/    | /'
    return 0
  fi
  record "$name" "$t" FAIL
  FAILED=$name
  echo "    $name: FAILED (exit $rc) after $t s; end of its output ($log):"
  echo "    ------------------------------------------------------------------"
  tail_of "$name" "$log" | sed 's/^/    | /'
  echo "    ------------------------------------------------------------------"
  return 1
}

summary() {
  local i total overall=PASS
  total=$(secs "$T_START" "$(now)")
  [ -z "$FAILED" ] || overall=FAIL
  echo
  echo "fresh-check summary ($COMMIT_SHORT, Debian $SUITE minbase root, work dir $WORK)"
  printf '  %-10s %9s  %s\n' STEP SECONDS RESULT
  for i in "${!STEP_NAMES[@]}"; do
    printf '  %-10s %9s  %s\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}" "${STEP_RESULTS[$i]}"
  done
  printf '  %-10s %9s  %s\n' total "$total" "$overall"
  [ -z "$DISK_NOTE" ] || echo "  disk: $DISK_NOTE"
}

DISK_NOTE=
CLEANED=0
on_exit() {
  local rc=$? t0 t1 t2 t
  trap - EXIT INT TERM
  set +e
  if [ -n "$CURRENT_PID" ]; then
    # Interrupted in the middle of a step: it counts as failed.
    kill -TERM "$CURRENT_PID" 2>/dev/null
    wait "$CURRENT_PID" 2>/dev/null
    record "$CURRENT_STEP" "$(secs "$CURRENT_T0" "$(now)")" INTERRUPTED
    FAILED=${FAILED:-$CURRENT_STEP}
  fi
  if [ "$CLEANED" -eq 0 ]; then
    echo "==> cleanup: processes, lab, mounts, work dir"
    t0=$(now)
    mkdir -p "$LOGS" 2>/dev/null
    if teardown; then
      t1=$(now)
      if [ -d "$WORK" ]; then
        DISK_NOTE="work dir $(du -sh --one-file-system "$WORK" 2>/dev/null | cut -f1) at the end"
        [ -d "$ROOT$SRC/target" ] && DISK_NOTE+=" (target/ $(du -sh "$ROOT$SRC/target" | cut -f1))"
      fi
      t2=$(now)
      if [ "$KEEP" -eq 1 ]; then
        say "kept $WORK (--keep); logs in $LOGS"
      else
        remove_work || rc=1
      fi
      t=$(secs "$t0" "$(now)")
      record cleanup "$t" PASS
      echo "    cleanup: ok in $t s (processes, lab and mounts $(secs "$t0" "$t1") s, measuring disk $(secs "$t1" "$t2") s, removing $WORK $(secs "$t2" "$(now)") s)"
    else
      t=$(secs "$t0" "$(now)")
      record cleanup "$t" FAIL
      FAILED=${FAILED:-cleanup}
      echo "    cleanup: FAILED; $WORK kept (mounts or processes remain)"
      rc=1
    fi
  fi
  summary
  [ -z "$FAILED" ] || [ $rc -ne 0 ] || rc=1
  exit $rc
}
on_signal() {
  echo
  say "interrupted ($1): cleaning up"
  FAILED=${FAILED:-interrupted}
  exit 130
}
trap on_exit EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

COMMIT_SHORT=$(git -C "$REPO" rev-parse --short "$COMMIT")

# ---------------------------------------------------------------- step bodies

# URI and suite of every "deb ... main" source of this machine, one per line.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" {
        i = 2
        if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i, $(i + 1); break }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush(   n, m, a, b, U, S) {
          if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && comps ~ /(^| )main( |$)/) {
            n = split(uris, U, " "); m = split(suites, S, " ")
            for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print U[a], S[b]
          }
          types = uris = suites = comps = enabled = ""
        }
        /^#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[^ \t]/ {
          k = tolower($1); sub(/:$/, "", k); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
          if (k == "types") types = v; else if (k == "uris") uris = v
          else if (k == "suites") suites = v; else if (k == "components") comps = v
          else if (k == "enabled") enabled = v
        }
        END { flush() }' "$f"
  done
}

pick_mirror() {
  local sources
  sources=$(apt_sources | awk -v s="$SUITE" '$2 == s')
  # Prefer a Debian archive (…/debian) when several sources name the suite.
  MIRROR=$(echo "$sources" | awk '$1 ~ /\/debian\/?$/ { print $1; exit }')
  [ -n "$MIRROR" ] || MIRROR=$(echo "$sources" | awk 'NF { print $1; exit }')
  [ -n "$MIRROR" ] || die "no apt source of this machine serves '$SUITE main' (looked in /etc/apt/sources.list and /etc/apt/sources.list.d/*.list, *.sources); pass --mirror URL"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  say "installing debootstrap on this host (a tool of the check itself, not of the fresh machine)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
    die "could not install debootstrap (apt-get install debootstrap)"
}

# Compressor for the cached tarball: zstd when present, else gzip.
cache_ext() { if command -v zstd >/dev/null; then echo tar.zst; else echo tar.gz; fi; }

make_root() {
  local ext key tarball tmp
  ext=$(cache_ext)
  key=$(date +%Y%m%d)
  tarball=$CACHE_DIR/$SUITE-minbase-$key.$ext
  mkdir -p "$ROOT"
  if [ "$USE_CACHE" -eq 1 ] && [ -s "$tarball" ]; then
    echo "extracting the cached pristine root $tarball"
    tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tarball" || return 1
  else
    echo "debootstrap --variant=minbase $SUITE $ROOT $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" || {
      echo "--- debootstrap.log:"; tail -n 40 "$ROOT/debootstrap/debootstrap.log" 2>/dev/null; return 1; }
    if [ "$USE_CACHE" -eq 1 ]; then
      mkdir -p "$CACHE_DIR"
      tmp=$tarball.tmp.$$
      echo "caching the pristine root as $tarball"
      tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -cpf "$tmp" \
        --use-compress-program="$([ "$ext" = tar.zst ] && echo 'zstd -T0 -3 -q' || echo gzip)" . &&
        mv "$tmp" "$tarball" || { rm -f "$tmp"; echo "(caching failed; going on without)"; }
      # Keep only the newest pristine root.
      find "$CACHE_DIR" -maxdepth 1 -name "$SUITE-minbase-*.tar.*" ! -name "$(basename "$tarball")" -delete
    fi
  fi
  # The machine's apt setup, as a fresh Debian 12 machine of this kind has it: its bookworm
  # sources (main, with updates and security when it has them) and its Acquire:: settings
  # (how it reaches the mirror). Nothing of the project.
  apt_sources | awk -v s="$SUITE" '$2 == s || $2 == s "-updates" || $2 == s "-security" { print "deb " $1 " " $2 " main" }' |
    awk '!seen[$0]++' >"$ROOT/etc/apt/sources.list"
  [ -s "$ROOT/etc/apt/sources.list" ] || echo "deb $MIRROR $SUITE main" >"$ROOT/etc/apt/sources.list"
  apt-config dump 2>/dev/null | grep -E '^Acquire::(Check-Valid-Until|Check-Date|(http|https|ftp)::Proxy)' \
    >"$ROOT/etc/apt/apt.conf.d/99host-acquire" || true
  # Package installs must not start daemons (there is no init in a chroot; they would run on
  # this host). The check kills anything left in the root anyway.
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d" && chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  # Like resolv.conf, how this machine reaches the network: its site-local CA certificates (a
  # TLS-inspecting egress proxy's, say), where Debian keeps them. They only count once
  # ca-certificates is installed (by setup.sh); minbase has no CA store at all.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  fi
  echo "sources in the root:"; sed 's/^/  /' "$ROOT/etc/apt/sources.list"
}

RUSTUP_DIR=
CARGO_DIR=

find_toolchain() {
  local cargo
  cargo=$(command -v cargo) || die "cargo is not on PATH: install Rust stable (rustup); the root uses this host's toolchain"
  CARGO_DIR=${CARGO_HOME:-}
  if [ -z "$CARGO_DIR" ]; then
    # …/.cargo/bin/cargo -> …/.cargo
    CARGO_DIR=$(dirname "$(dirname "$(readlink -f "$cargo")")")
    [ -d "$CARGO_DIR/bin" ] || CARGO_DIR=$HOME/.cargo
  fi
  RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
  [ -d "$CARGO_DIR/bin" ] || die "no cargo bin directory at $CARGO_DIR/bin (set CARGO_HOME)"
  [ -d "$RUSTUP_DIR/toolchains" ] || die "no rustup toolchains at $RUSTUP_DIR (set RUSTUP_HOME); the check needs a rustup-installed toolchain"
}

bind_ro() {
  mkdir -p "$2" && mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"
}

mount_root() {
  set -e
  # The root directory is a mount point, as / is on a machine: `ip -n NS` and `ip netns exec`
  # make / rslave in their own mount namespace, which fails on a plain directory. Private, so
  # nothing mounted below it propagates anywhere else (or back).
  mount --bind "$ROOT" "$ROOT"
  mount --make-private "$ROOT"
  mount -t proc proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount --make-rslave "$ROOT/sys"
  mount --rbind /dev "$ROOT/dev"
  mount --make-rslave "$ROOT/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
  mkdir -p "$ROOT/sys/fs/bpf"
  mount -t bpf bpf "$ROOT/sys/fs/bpf"
  # Toolchain, read-only.
  bind_ro "$RUSTUP_DIR" "$ROOT/opt/rustup"
  bind_ro "$CARGO_DIR/bin" "$ROOT/opt/cargo/bin"
  for f in config.toml config; do
    if [ -f "$CARGO_DIR/$f" ]; then cp "$CARGO_DIR/$f" "$ROOT/opt/cargo/$f"; fi
  done
  mkdir -p "$ROOT/opt/cargo/registry"
  if [ "$REGISTRY" -eq 1 ] && [ -d "$CARGO_DIR/registry" ]; then
    mkdir -p "$WORK/cargo-registry/upper" "$WORK/cargo-registry/work"
    mount -t overlay overlay \
      -o "lowerdir=$CARGO_DIR/registry,upperdir=$WORK/cargo-registry/upper,workdir=$WORK/cargo-registry/work" \
      "$ROOT/opt/cargo/registry"
  fi
  # The host's apt download cache (.deb files).
  if [ -d /var/cache/apt/archives ]; then
    mkdir -p "$ROOT/var/cache/apt/archives"
    mount --bind /var/cache/apt/archives "$ROOT/var/cache/apt/archives"
  fi
  set +e
  echo "mounted:"; mounts_below "$ROOT" | tac | sed "s|^$ROOT|  <root>|"
  # The bpffs must be a new instance, not the host's.
  if [ "$(stat -c %d /sys/fs/bpf 2>/dev/null)" = "$(stat -c %d "$ROOT/sys/fs/bpf")" ]; then
    echo "the root's /sys/fs/bpf is the host's bpffs, not a new instance"
    return 1
  fi
}

clone_repo() {
  mkdir -p "$ROOT/src"
  git clone --quiet --no-hardlinks --no-checkout "$REPO" "$ROOT$SRC" &&
    git -C "$ROOT$SRC" -c advice.detachedHead=false checkout --quiet --detach "$COMMIT" &&
    git -C "$ROOT$SRC" log --oneline -1 &&
    echo "files: $(git -C "$ROOT$SRC" ls-files | wc -l) (committed only; no target/)" &&
    [ ! -e "$ROOT$SRC/target" ]
}

ping_pods() {
  local json a b ip
  json=$(in_root "target/debug/myelin lab status --name $LAB -o json") || return 1
  # Two pods with an address: the first pings the second.
  read -r a b ip < <(echo "$json" | in_root "python3 -c '
import json, sys
pods = [p for p in json.load(sys.stdin)[\"pods\"] if p.get(\"ip\")]
if len(pods) < 2:
    sys.exit(\"fewer than two pods have an address: %r\" % pods)
a, b = pods[0], pods[1]
print(a[\"namespace\"] + \"/\" + a[\"name\"], b[\"namespace\"] + \"/\" + b[\"name\"], b[\"ip\"])
'") || { echo "could not find two pods with addresses in: $json"; return 1; }
  echo "$a -> $b ($ip)"
  in_root "target/debug/myelin lab exec --name $LAB $a -- ping -c 3 -i 0.2 -W 2 $ip"
}

check_leftovers() {
  local left
  echo "inside the root: ip netns list"
  in_root "ip netns list" | sed 's/^/  /'
  left=$(lab_leftovers)
  if [ -n "$left" ]; then
    echo "lab down left:"; echo "$left" | sed 's/^/  /'
    return 1
  fi
  echo "nothing of lab $LAB is left (netns files and mounts, cgroup, bpffs pins, state, links)"
  left=$(root_pids)
  if [ -n "$left" ]; then
    echo "processes still running in the root:"
    for p in $left; do echo "  $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"; done
    return 1
  fi
  echo "no process is running in the root"
}

# ---------------------------------------------------------------- main

say "checking $COMMIT_SHORT ($(git -C "$REPO" log -1 --format=%s "$COMMIT")) of $REPO"
if [ "$REV" = HEAD ] && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  say "note: $REPO has uncommitted changes; they are not part of the check (it clones $COMMIT_SHORT)"
fi
find_toolchain
[ -n "$MIRROR" ] || pick_mirror
ensure_debootstrap
if [ -d "$WORK" ]; then
  say "cleaning up a leftover of an earlier run in $WORK"
  if ! teardown; then
    CLEANED=1
    die "could not clean up the leftover in $WORK (see above); fix it by hand"
  fi
  remove_work || { CLEANED=1; die "could not remove $WORK"; }
fi
if [ -d /run/netns ] && find /run/netns -mindepth 1 -maxdepth 1 -name "myl-$LAB-*" | grep -q .; then
  CLEANED=1
  die "this host has network namespaces of a lab named '$LAB' (ip netns list): remove it (myelin lab down --name $LAB) first"
fi
mkdir -p "$LOGS"
say "mirror $MIRROR; toolchain RUSTUP_HOME=$RUSTUP_DIR CARGO_HOME=$CARGO_DIR (read-only); work dir $WORK"

run_step root "minimal Debian $SUITE root ($([ "$USE_CACHE" -eq 1 ] && echo 'cached pristine tarball if today'\''s exists, else ' )debootstrap)" make_root || exit 1
run_step mounts "proc, sys, dev, run, a new bpffs, toolchain (ro), cargo registry, apt cache" mount_root || exit 1
run_step clone "git clone of $COMMIT_SHORT into <root>$SRC" clone_repo || exit 1
run_step setup "bash scripts/setup.sh (the install step)" in_root "bash scripts/setup.sh" || exit 1
run_step build "cargo build --workspace --bins" in_root "cargo build --workspace --bins" || exit 1
if [ "$SKIP_LAB" -eq 0 ]; then
  run_step demo "MYELIN_LAB=$LAB ./demo.sh (the README's main command; it leaves lab $LAB up)" \
    in_root "MYELIN_LAB=$LAB ./demo.sh" || exit 1
  run_step ping "pod-to-pod ping in lab $LAB" ping_pods || exit 1
  run_step lab-down "target/debug/myelin lab down --name $LAB" \
    in_root "target/debug/myelin lab down --name $LAB" || exit 1
  run_step leftovers "nothing of lab $LAB left" check_leftovers || exit 1
fi
exit 0
