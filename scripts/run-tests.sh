#!/usr/bin/env bash
# Builds every test binary (`cargo test --no-run`, with the arguments given, e.g.
# `--lib --bins --tests`) and runs them several at a time: most of the suite's time is
# spent waiting (clusters of namespaced nodes settling, retries, timeouts), not computing,
# so one binary after another — as `cargo test` runs them — leaves the machine idle.
# Each binary's output is printed whole when it ends (a failure's in full); the last line
# sums up the whole run. Fails when any binary fails.
#
#   TEST_JOBS=N   binaries at a time (default 4); TEST_JOBS=1 is `cargo test`'s order
#
# The binaries are independent: network tests use namespaces named after their process,
# or ports they pick free; every node lives in its own temp root.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${TEST_JOBS:-4}
case "$jobs" in
  ''|*[!0-9]*|0) echo "run-tests: TEST_JOBS must be a positive number (got '$jobs')" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo test --locked --no-run --message-format=json-render-diagnostics "$@" >"$work/build.json"
# "name path" per test binary, from cargo's own account of what it built.
python3 - "$work/build.json" >"$work/binaries" <<'EOF'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("profile", {}).get("test"):
        continue
    exe = msg.get("executable")
    if not exe or exe in seen:
        continue
    seen.add(exe)
    target = msg["target"]
    kind = target["kind"][0]
    name = target["name"] if kind in ("test", "bench") else f"{kind}:{target['name']}"
    print(name, exe)
EOF

# The slowest first (measured: each takes one to two and a half minutes alone), so the
# run does not end waiting on one of them; the rest in cargo's order.
slow=" bare_metal fleet_upgrade distro_e2e lose_controller join_protocol join_netns basefs up "
{
  for name in $slow; do grep "^$name " "$work/binaries" || true; done
  while read -r name exe; do
    [[ "$slow" == *" $name "* ]] || echo "$name $exe"
  done <"$work/binaries"
} >"$work/queue"

passed=0 failed=0 broken=()
declare -A started_at=() names=()
report() {  # pid: print the finished binary's output and count its results
  local pid=$1 rc=$2 name=${names[$1]} took=$(( $(date +%s) - started_at[$1] ))
  local log="$work/$name.log"
  if [ "$rc" -eq 0 ]; then
    echo "--- $name: ok (${took} s)"
    grep -E '^(test result:|SKIPPED|.*SKIPPED)' "$log" || true
  else
    echo "--- $name: FAILED (exit $rc, ${took} s)"
    cat "$log"
    broken+=("$name")
  fi
  local p f
  p=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
  f=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i+1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
  passed=$((passed + p)) failed=$((failed + f))
}
wait_one() {
  local pid rc=0
  wait -n -p pid "${!names[@]}" || rc=$?
  report "$pid" "$rc"
  unset "names[$pid]" "started_at[$pid]"
}

start=$(date +%s)
while read -r name exe; do
  while [ "${#names[@]}" -ge "$jobs" ]; do wait_one; done
  # As cargo runs a test binary: from the package's folder.
  "$exe" >"$work/$name.log" 2>&1 &
  names[$!]=$name
  started_at[$!]=$(date +%s)
done <"$work/queue"
while [ "${#names[@]}" -gt 0 ]; do wait_one; done

echo "tests: $passed passed, $failed failed ($(( $(date +%s) - start )) s, $jobs binaries at a time)"
if [ ${#broken[@]} -gt 0 ] || [ "$failed" -gt 0 ]; then
  echo "run-tests: failed: ${broken[*]}" >&2
  exit 1
fi
