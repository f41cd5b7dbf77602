#!/usr/bin/env bash
# Benchmark: `bootstrap rootfs unpack` against `tar --zstd -xf` on a ~1 GiB cluster-image
# archive (one 600 MB image blob plus ~20,000 small files), several alternating runs each,
# in the same run of this script. Prints each time, the median ratio (ours / tar; goal
# <= 1.0) and both peak RSS figures (goal for ours <= 64 MiB).
#
#   scripts/bench-unpack.sh [RUNS]      (default 5; needs ~4 GiB free in $BENCH_DIR or /var/tmp)
#
# bootstrap verifies the archive's SHA-256 (from the .sha256 file beside it) and syncs the
# unpacked tree to disk before publishing it; GNU tar does neither. Both are timed as a user
# would run them; `tar … && sync` is timed too, as the like-for-like durability baseline.
# BENCH_DIR=/dev/shm measures the CPU side without the disk.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd; }

cargo build --release --locked -q
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/bootstrap

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-unpack.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src/bin" "$src/images" "$src/manifests"
echo "building the image in $work ..."
printf '{"version":"v1.31.4+k3s1","arch":"amd64","ClusterRuntime":"k3s"}' > "$src/Metadata"
head -c 64M /dev/urandom > "$src/bin/k3s"; chmod 755 "$src/bin/k3s"
head -c 600M /dev/urandom > "$src/images/k3s-airgap-images.tar"
# ~20,000 small files, 4-32 KiB each, half-compressible, in 200 folders (a registry-like tree).
python3 - "$src" <<'PY'
import os, random, sys, base64
root = os.path.join(sys.argv[1], "registry/docker/registry/v2/blobs/sha256")
rnd = random.Random(42)
for i in range(20000):
    d = os.path.join(root, "%02x" % (i % 200), "blob%05d" % i)
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(4096, 32768)
    raw = rnd.randbytes(n // 2)
    with open(os.path.join(d, "data"), "wb") as f:
        f.write(base64.b64encode(raw)[:n])
PY
archive=$work/image.tar.zst
tar -C "$src" --zstd -cf "$archive" .
sha256sum "$archive" | awk '{print $1"  image.tar.zst"}' > "$archive.sha256"
rm -rf "$src"
echo "archive: $(du -h "$archive" | cut -f1), $(tar --zstd -tf "$archive" | wc -l) entries"

measure() { # label command... ; prints "seconds peak_kib"
  local out=$work/time.out
  /usr/bin/time -f '%e %M' -o "$out" "$@" >/dev/null 2>"$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
  cat "$out"
}

ours_t=(); tar_t=(); sync_t=(); ours_rss=0; tar_rss=0
for i in $(seq "$runs"); do
  rm -rf "$work/ours" "$work/ours.versions" "$work/tar"; mkdir "$work/tar"; sync
  read -r t m < <(measure tar --zstd -xf "$archive" -C "$work/tar")
  tar_t+=("$t"); (( m > tar_rss )) && tar_rss=$m
  rm -rf "$work/tar"; mkdir "$work/tar"; sync
  read -r t _ < <(measure sh -c 'tar --zstd -xf "$1" -C "$2" && sync' sh "$archive" "$work/tar")
  sync_t+=("$t")
  rm -rf "$work/tar"; sync
  read -r t m < <(measure "$bin" rootfs unpack "$archive" "$work/ours")
  ours_t+=("$t"); (( m > ours_rss )) && ours_rss=$m
  echo "run $i: tar ${tar_t[-1]} s, tar+sync ${sync_t[-1]} s, bootstrap ${ours_t[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mt=$(median "${tar_t[@]}"); ms=$(median "${sync_t[@]}"); mo=$(median "${ours_t[@]}")
echo "median: tar --zstd -xf ${mt} s, tar+sync ${ms} s, bootstrap rootfs unpack ${mo} s"
awk -v o="$mo" -v t="$mt" 'BEGIN {printf "ratio (bootstrap / tar): %.2f (goal <= 1.0)\n", o / t}'
awk -v o="$mo" -v t="$ms" 'BEGIN {printf "ratio (bootstrap / tar+sync): %.2f\n", o / t}'
echo "peak RSS: bootstrap $((ours_rss / 1024)) MiB (goal <= 64), tar $((tar_rss / 1024)) MiB (tar process only; zstd runs beside it)"
