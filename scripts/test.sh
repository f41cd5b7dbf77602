#!/usr/bin/env bash
# Runs every check and test: installs what they need, then formatting, lints, the static
# build (checked to be static), all tests, and a short run of every fuzz target. CI calls
# exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need from Debian: `file` for the static check, musl-gcc for the static
# build, bash for the stand-ins, the real containerd, runc, distribution registry and
# skopeo for the runtime tests, systemd-analyze for the units, a static busybox to put
# in test images, unshare/nsenter for running units in a private mount namespace, and
# Debian's Python 3.11+ at /usr/bin/python3 for the stand-ins (the containerd one reads
# config.toml with tomllib). They name it in their first line rather than take the
# python3 on PATH, which may be a version manager's shim: a quarter of a second more per
# call, and a test run makes thousands.
missing=()
command -v file >/dev/null || missing+=(file)
command -v musl-gcc >/dev/null || missing+=(musl-tools)
command -v bash >/dev/null || missing+=(bash)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q static || missing+=(busybox-static)
command -v unshare >/dev/null || missing+=(util-linux)
/usr/bin/python3 -c 'import tomllib' 2>/dev/null || missing+=(python3)
command -v cloud-init >/dev/null || missing+=(cloud-init)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
command -v zstd >/dev/null || missing+=(zstd)
command -v man >/dev/null || missing+=(man-db)
command -v openssl >/dev/null || missing+=(openssl)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# Builds are kept between runs outside the checkout, so a fresh clone on the same machine
# (CI) compiles only this crate, not its dependencies again (several minutes on 2 cores).
# Cargo's fingerprints decide what is stale; CARGO_TARGET_DIR=target builds in the clone.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/bootstrap-target}
echo "builds in $CARGO_TARGET_DIR"
# The tests bake their checkout's path in (env!("CARGO_MANIFEST_DIR")), and cargo judges
# this crate's artifacts by the mtimes of its files relative to the checkout: a cache last
# built from another checkout, with newer files, would be reused as it is and point the
# tests at that checkout. So this crate's own debug artifacts go when the checkout changes;
# the dependencies' stay.
checkout_mark=$CARGO_TARGET_DIR/.bootstrap-checkout
if [ -d "$CARGO_TARGET_DIR" ] && [ "$(cat "$checkout_mark" 2>/dev/null)" != "$PWD" ]; then
  echo "the build cache was last used by another checkout: rebuilding this crate"
  cargo clean --quiet -p bootstrap
fi
mkdir -p "$CARGO_TARGET_DIR"
echo "$PWD" >"$checkout_mark"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

echo "== module layers: floors, no import cycles, short files (tests/architecture.rs)"
cargo test --locked --test architecture --quiet

# The static release build and the fuzz build only need the CPU, which the tests (mostly
# waiting on clusters to settle) leave idle much of the time: both run in the background
# at the lowest priority and are checked after the crash step. Their folders' locks are
# not the tests' (release and the fuzz crate's own target vs. debug).
background=$(mktemp -d)
# Its own process group, so that a failing run stops it too.
setsid bash -c '
  rc=0; nice -n 19 scripts/build-static.sh >"$1/static.log" 2>&1 || rc=$?; echo $rc >"$1/static.rc"
  rc=0; nice -n 19 scripts/fuzz.sh build >"$1/fuzz-build.log" 2>&1 || rc=$?; echo $rc >"$1/fuzz-build.rc"
' background-builds "$background" &
builds=$!
trap 'kill -- -"$builds" 2>/dev/null || true; rm -rf "$background"' EXIT

echo "== cargo test (every test binary; several at a time: scripts/run-tests.sh)"
scripts/run-tests.sh --lib --bins --tests

# CI's share of the sweep: every CRASH_EVERY-th point of each scenario (its first and last
# always); `CRASH_EVERY=1 scripts/test.sh` runs all of them (docs/reliability.md).
export CRASH_EVERY=${CRASH_EVERY:-12}
echo "== crash points: every ${CRASH_EVERY}th fault point of every scenario killed and re-run (docs/reliability.md)"
# Its own build with the fault-injection feature (the step above skips this target).
crash_log=$background/crash.log
if ! cargo test --locked --features fault-injection --test crash_points -- --nocapture >"$crash_log" 2>&1; then
  cat "$crash_log"
  echo "test.sh: crash points failed" >&2
  exit 1
fi
grep -E '^crash points:|^test result:' "$crash_log"

echo "== static build (built in the background)"
wait "$builds"
cat "$background/static.log"
[ "$(cat "$background/static.rc")" = 0 ] || { echo "test.sh: the static build failed" >&2; exit 1; }
static_bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/bootstrap
description=$(file -L "$static_bin")
echo "$description"
case "$description" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) echo "test.sh: $static_bin is not statically linked" >&2; exit 1 ;;
esac
"$static_bin" --root examples/single-node plan >/dev/null
echo "static binary runs: ok"
# Fault injection (src/fault.rs) is for the crash tests only: not one of its names may be
# in the release binary.
if grep -aq BOOTSTRAP_FAULT_ "$static_bin"; then
  echo "test.sh: $static_bin contains the fault-injection code (BOOTSTRAP_FAULT_*)" >&2
  exit 1
fi
echo "no fault injection in the release binary: ok"

if [ "$(id -u)" -eq 0 ]; then echo "== .deb: build, dpkg -i, check, dpkg -r"; scripts/test-deb.sh; else echo "== .deb: SKIPPED (scripts/test-deb.sh needs root for dpkg -i)"; fi

# Each target gets a short run: enough to catch a regression on the seeds and the
# shapes near them; longer runs are `scripts/fuzz.sh 600` by hand.
fuzz_seconds=10
echo "== fuzz: each target for $fuzz_seconds s"
if [ "$(cat "$background/fuzz-build.rc")" != 0 ]; then
  cat "$background/fuzz-build.log"
  echo "test.sh: the fuzz build failed" >&2
  exit 1
fi
scripts/fuzz.sh "$fuzz_seconds"
