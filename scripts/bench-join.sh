#!/usr/bin/env bash
# Benchmark (not a test): N concurrent joiners (default 1000) against one `bootstrap serve`
# on loopback. Prints joins per second, p50 and p99 latency, failures, and the server's
# peak RSS (VmHWM). Goal: zero failures, p99 under 1 s, peak RSS under 64 MiB.
#
#   scripts/bench-join.sh [N] [RETRY_SECS]      defaults 1000, 60
#
# The server is a k3s controller in a temp root (the kube stand-in from tests/standins
# as the cluster image, as the tests set one up), `bootstrap up`, then `bootstrap serve
# --listen 127.0.0.1:PORT`, both release builds. The load is examples/join-bench.rs: N
# threads released together, each asking once for worker material with the library's
# client (bootstrap::join::client::ask), each request timed.
#
# Every joiner connects from 127.0.0.1, where the service's cap on connections per address
# (`serve --max-per-peer`, default 32) would meet them all at once. Two runs, each against
# a fresh `serve`:
#   1. the goal: all at once, one ask each, the cap raised to N so that one address
#      stands in for N nodes' addresses;
#   2. the default cap against a burst from one address: a joiner whose ask fails asks
#      again (full jitter, 50 ms base, 1 s cap) for up to RETRY_SECS, as real joiners
#      retry; latency is time to material.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
retry_secs=${2:-60}

# Only what this script sets reaches bootstrap and the stand-ins.
for v in $(compgen -e); do
  case "$v" in BOOTSTRAP_* | STANDIN_*) unset "$v" ;; esac
done
for tool in python3 openssl; do
  command -v "$tool" >/dev/null || { echo "bench-join: needs $tool (the k3s stand-in uses it)" >&2; exit 1; }
done
# N client sockets in one process, as many on the server side.
[ "$(ulimit -n)" -ge $((n + 256)) ] || ulimit -n $((n + 256)) 2>/dev/null || {
  echo "bench-join: cannot raise the open-files limit to $((n + 256)) (ulimit -Hn is $(ulimit -Hn))" >&2
  exit 1
}

echo "bench-join: building (release) ..."
cargo build --release -q --bin bootstrap --example join-bench
target=${CARGO_TARGET_DIR:-$PWD/target}
bin=$target/release/bootstrap
bench=$target/release/examples/join-bench

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-join.XXXXXX")
root=$work/root
serve_pid=
stop_serve() {
  if [ -n "$serve_pid" ]; then
    kill "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
    serve_pid=
  fi
}
cleanup() { stop_serve; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# A root shaped like a fresh Debian node (see tests/common/mod.rs, Node::new).
put() { # HOST_PATH TEXT [MODE]
  mkdir -p "$(dirname "$root$1")"
  printf '%s' "$2" > "$root$1"
  [ -z "${3:-}" ] || chmod "$3" "$root$1"
}
put /proc/sys/kernel/hostname $'bench-controller\n'
put /proc/sys/net/ipv4/ip_forward $'0\n'
put /proc/modules ''
put /proc/swaps $'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n'
put /sys/fs/cgroup/cgroup.controllers $'cpuset cpu io memory pids\n'
put /etc/os-release $'ID=debian\nVERSION_ID="12"\n'
mkdir -p "$root/run/systemd/system" "$root/etc/systemd/system"
version=v1.31.4+k3s1
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
put /var/lib/bootstrap/rootfs/bin/k3s \
  "$(sed -e 's/@NAME@/k3s/g' -e "s/@VERSION@/$version/g" tests/standins/kube-standin)" 755
put /var/lib/bootstrap/rootfs/bin/registry $'#!/bin/sh\n' 755
put /var/lib/bootstrap/rootfs/Metadata \
  "{\"version\":\"$version\",\"arch\":\"$arch\",\"ClusterRuntime\":\"k3s\"}"
put /etc/bootstrap/join-secret "$("$bin" secret generate)" 600
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
put /etc/bootstrap/config.yaml "node: {name: bench-controller, address: 127.0.0.1}
preflight: {ignore: [address]}
registry: {enabled: false}
cluster:
  name: bench
  controllers: [127.0.0.1]
  join_secret_file: /etc/bootstrap/join-secret
join: {port: $port}
"
standin_env=(
  PATH="$PWD/tests/standins:$PATH"
  STANDIN_ROOT="$root"
  STANDIN_LOG="$work/standin.log"
  STANDIN_LIB="$PWD/tests/standins"
  STANDIN_CLUSTER="$work/cluster"
)
flags=(--root "$root")
[ "$(id -u)" -eq 0 ] || flags+=(--ignore-preflight root)

echo "bench-join: bootstrap up (k3s stand-in controller in $root) ..."
if ! env "${standin_env[@]}" timeout 120 "$bin" "${flags[@]}" up > "$work/up.log" 2>&1; then
  cat "$work/up.log" >&2
  echo "bench-join: bootstrap up failed" >&2
  exit 1
fi

start_serve() { # LOG [SERVE-ARGS...]
  local log=$1
  shift
  # exec: $! is the serve process itself, whose /proc/PID/status we read.
  (exec env "${standin_env[@]}" "$bin" "${flags[@]}" serve --listen "127.0.0.1:$port" "$@") 2> "$log" &
  serve_pid=$!
  for _ in $(seq 200); do
    grep -q "listening on" "$log" 2>/dev/null && return 0
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  echo "bench-join: bootstrap serve did not start" >&2
  exit 1
}

report() { # LOG
  local hwm rss capped
  hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$serve_pid/status")
  rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$serve_pid/status")
  capped=$(grep -c "too many connections from this address" "$1" || true)
  echo "server: peak RSS (VmHWM) $hwm MiB (now $rss MiB); connections closed by the per-peer cap: $capped"
}

run() { # TITLE LOG SERVE-ARGS -- BENCH-ARGS...
  local title=$1 log=$2 status=0
  shift 2
  local serve_args=()
  while [ "$1" != -- ]; do serve_args+=("$1"); shift; done
  shift
  echo "== $title"
  start_serve "$log" "${serve_args[@]}"
  echo "server: listening on 127.0.0.1:$port, pid $serve_pid, RSS $(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$serve_pid/status") MiB at start"
  echo "load:   $bench 127.0.0.1:$port SECRET_FILE bench $*"
  timeout 600 "$bench" "127.0.0.1:$port" "$root/etc/bootstrap/join-secret" bench "$@" || status=$?
  report "$log"
  stop_serve
  return $status
}

status=0
# The goal: N nodes booting at once, each from its own address. All joiners here share
# 127.0.0.1, so the cap per address is raised to N to stand in for N addresses.
run "$n joiners at once, one ask each (cap per address raised to $n: $n distinct nodes)" \
  "$work/serve-nodes.log" --max-per-peer "$n" -- "$n" || status=$?
# What the default cap (32 per address) does to a burst from one address: joiners retry.
run "$n joiners at once from ONE address, default cap, retrying for up to ${retry_secs} s" \
  "$work/serve-one-address.log" -- "$n" --retry-for "$retry_secs" || status=$?
exit $status
