#!/usr/bin/env bash
# Runs a unit's ExecStart the way it would run on a node whose `/` is STANDIN_ROOT, without
# touching the machine: inside a private mount namespace (the caller uses
# `unshare --mount --propagation private`), /etc, /usr/local and /opt become overlays with
# the root's folders on top, and /var/lib and /run are the root's own (bound, not
# overlaid: containerd's snapshots cannot live on an overlay).
#   _run_unit.sh ROOT -- COMMAND [ARGS…]
set -euo pipefail
root=$1; shift
[ "${1:-}" = "--" ] && shift
work="$root/.standin-overlay"
for d in etc usr/local opt; do
  mkdir -p "$root/$d" "$work/$d"
  if [ -d "/$d" ]; then
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$root/$d,workdir=$work/$d" "/$d"
  fi
done
for d in var/lib run; do
  mkdir -p "$root/$d"
  mount --bind "$root/$d" "/$d"
done
exec "$@"
