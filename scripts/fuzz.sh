#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, nightly) for SECONDS each (default 60),
# starting from the checked-in seeds in fuzz/corpus/<target>/. Fails when a target
# crashes, panics, hangs or runs out of memory (the input is kept in
# fuzz/artifacts/<target>/); prints each target's executions.
#
# What the fuzzer finds is kept in a temp folder, not in fuzz/corpus/ (the seeds stay
# small and reviewed); the targets' own temp folders (unpacking, seeding) live there too
# and go with it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
# `scripts/fuzz.sh build` only installs what is missing and builds the targets.
seconds=${1:-60}
case "$seconds" in
  build) ;;
  ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS|build]" >&2; exit 2 ;;
esac

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# The fuzz build (nightly, instrumented, release) shares nothing with the main build and
# costs minutes from cold: it is kept outside the checkout, so a fresh clone on the same
# machine (CI) builds only what changed.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${HOME:-/root}/.cache/bootstrap-fuzz-target}

# Release code with overflow checks and debug assertions on: an overflow on hostile
# input is a bug to find, not to wrap silently. AddressSanitizer (the default) catches
# huge allocations and memory errors in the C parts (zstd).
flags=(--release --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"
[ "$seconds" = build ] && exit 0

# In memory where there is a tmpfs: the unpack target syncs the file system of its temp
# folder once per input (as a real unpack must), which on a disk would flush everything
# else being written there too.
tmp_parent=${FUZZ_TMPDIR:-$( [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}")}
work=$(mktemp -d -p "$tmp_parent" bootstrap-fuzz.XXXXXX)
trap 'chmod -R u+rwx "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/tmp"
failed=()
summary=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$work/corpus/$target" "artifacts/$target"
  log="$work/$target.log"
  echo "-- $target: $seconds s"
  # New inputs go to the first folder (the temp one); the seeds are only read.
  if TMPDIR="$work/tmp" cargo +nightly fuzz run "${flags[@]}" "$target" \
      "$work/corpus/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
    tail -n 40 "$log" >&2
  fi
  execs=$(awk '/stat::number_of_executed_units:/ { n = $2 } END { print n + 0 }' "$log")
  speed=$(awk '/stat::average_exec_per_sec:/ { n = $2 } END { print n + 0 }' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  summary+=("$(printf '%-26s %-6s %10s execs %7s/s  cov %s' "$target" "$status" "$execs" "$speed" "${cov:-?}")")
done

echo "== fuzz results ($seconds s each)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: ${failed[*]} failed; the inputs are in fuzz/artifacts/" >&2
  exit 1
fi
