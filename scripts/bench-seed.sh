#!/usr/bin/env bash
# Benchmark: bootstrap's image seeding (archives written straight into the registry's
# filesystem storage) against pushing the same archives into a running registry with
# `skopeo copy docker-archive:... docker://127.0.0.1:PORT/...`, as a push-based
# installer would. Several alternating runs of each, each into a fresh storage folder, in
# the same run of this script; prints each time, the medians and the ratio
# (skopeo / bootstrap; goal >= 5).
#
#   scripts/bench-seed.sh [RUNS] [ARCHIVES] [MIB_PER_ARCHIVE]
#       defaults 3, 8, 128: ~1 GiB of docker-save archives with random (incompressible)
#       layers; needs ~3.5 GiB free in $BENCH_DIR or /var/tmp.
#
# The registry is the Debian docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP
# (TLS would only slow skopeo down). skopeo gzips layers on the way into a registry, as
# every push does; bootstrap stores them as the archive has them. Neither run ends with a
# sync; the page cache is flushed before each.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
count=${2:-8}
mib=${3:-128}
registry_bin=/usr/bin/docker-registry

missing=()
[ -x "$registry_bin" ] || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench-seed: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --example seed -q
seed_bin=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/seed

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-seed.XXXXXX")
registry_pid=
stop_registry() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
    registry_pid=
  fi
}
cleanup() { stop_registry; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

images=$work/images
mkdir -p "$images"
echo "building $count archives of ${mib} MiB in $work ..."
# docker-save archives (manifest.json, <config>.json, <id>/layer.tar), four random
# layers each, so every byte is new to both the storage and gzip.
python3 - "$images" "$count" "$mib" <<'PY'
import hashlib, io, json, os, sys, tarfile
out, count, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
layers_per_image = 4
layer_bytes = mib * 1024 * 1024 // layers_per_image

def member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))

for i in range(count):
    layers = []
    for j in range(layers_per_image):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as layer:
            member(layer, "data/blob-%d-%d" % (i, j), os.urandom(layer_bytes))
        layers.append(buf.getvalue())
    diff_ids = ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    path = os.path.join(out, "bench-%02d.tar" % i)
    with tarfile.open(path, mode="w", format=tarfile.GNU_FORMAT) as tar:
        paths = []
        for j, layer in enumerate(layers):
            layer_id = hashlib.sha256(("%d-%d" % (i, j)).encode()).hexdigest()
            member(tar, layer_id + "/layer.tar", layer)
            paths.append(layer_id + "/layer.tar")
        member(tar, config_name, config)
        manifest = [{"Config": config_name,
                     "RepoTags": ["docker.io/library/bench-%02d:1" % i],
                     "Layers": paths}]
        member(tar, "manifest.json", json.dumps(manifest).encode())
PY
echo "archives: $(du -sh "$images" | cut -f1) in $(ls "$images" | wc -l) files"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

start_registry() { # storage folder
  cat > "$work/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $1
http:
  addr: 127.0.0.1:$port
EOF
  "$registry_bin" serve "$work/config.yml" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  # At most 10 s (100 polls of 0.1 s) for /v2/ to answer.
  python3 - "$port" <<'PY' || { cat "$work/registry.log" >&2; exit 1; }
import sys, time, urllib.request
url = "http://127.0.0.1:%s/v2/" % sys.argv[1]
for _ in range(100):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit("registry did not answer %s within 10 s" % url)
PY
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

ours_t=(); skopeo_t=()
for i in $(seq "$runs"); do
  rm -rf "$work/ours" "$work/theirs"; sync
  t0=$(now)
  "$seed_bin" "$images" "$work/ours" >"$work/seed.out"
  t1=$(now)
  ours_t+=("$(elapsed "$t0" "$t1")")
  rm -rf "$work/ours"; sync

  start_registry "$work/theirs"
  t0=$(now)
  for archive in "$images"/*.tar; do
    name=$(basename "$archive" .tar)
    timeout 600 skopeo --insecure-policy copy -q --dest-tls-verify=false \
      "docker-archive:$archive" "docker://127.0.0.1:$port/library/$name:1" >/dev/null
  done
  t1=$(now)
  skopeo_t+=("$(elapsed "$t0" "$t1")")
  stop_registry
  echo "run $i: bootstrap seed ${ours_t[-1]} s ($(cut -d: -f2- "$work/seed.out" | sed 's/^ //')), skopeo copy ${skopeo_t[-1]} s"
done
rm -rf "$work/theirs"

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mo=$(median "${ours_t[@]}"); ms=$(median "${skopeo_t[@]}")
echo "median: bootstrap seed ${mo} s, skopeo copy ${ms} s ($count archives, $(du -sh "$images" | cut -f1))"
awk -v o="$mo" -v s="$ms" 'BEGIN {printf "ratio (skopeo / bootstrap): %.1f (goal >= 5)\n", s / o}'
