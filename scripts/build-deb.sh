#!/usr/bin/env bash
# Builds the .deb: the static binary (scripts/build-static.sh), its man pages and shell
# completions (examples/gen-docs.rs), then `cargo deb` over them; see
# [package.metadata.deb] in Cargo.toml for what goes where.
#   scripts/build-deb.sh            amd64 (x86_64)
#   scripts/build-deb.sh aarch64    arm64
# Fails when the stripped static binary is over 12 MiB. Installs cargo-deb when missing
# (cargo install, about a minute on two cores). Prints the .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-x86_64}" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) echo "build-deb: unknown architecture '$1'; expected x86_64 or aarch64" >&2; exit 2 ;;
esac
target=$arch-unknown-linux-musl
release_dir="${CARGO_TARGET_DIR:-target}/$target/release"
max_mib=12

echo "== static binary ($target)"
scripts/build-static.sh "$arch"
bin="$release_dir/bootstrap"
size=$(stat -c %s "$bin")
mib=$(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1048576 }')
echo "build-deb: stripped static binary: $mib MiB (limit $max_mib MiB)"
if [ "$size" -gt $((max_mib * 1048576)) ]; then
  echo "build-deb: $bin is $mib MiB, over the $max_mib MiB limit" >&2
  exit 1
fi

echo "== man pages and completions"
# Where [package.metadata.deb] looks for them (its target/release/gen-docs).
cargo run --locked --quiet --example gen-docs -- "$release_dir/gen-docs" >/dev/null
# Debian ships man pages gzipped (-n: no name or time stamp, so builds are reproducible).
gzip -9 -n -k -f "$release_dir"/gen-docs/man/*.1
ls "$release_dir/gen-docs/man" "$release_dir/gen-docs/completions"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "== cargo install cargo-deb"
  start=$(date +%s)
  cargo install cargo-deb --locked --version '^3'
  echo "build-deb: cargo-deb installed in $(($(date +%s) - start))s"
fi

echo "== cargo deb"
# --no-build: the binary and docs above are what goes in. --no-strip: the release
# profile strips already.
deb=$(cargo deb --no-build --no-strip --target "$target" | tail -n 1)
[ -f "$deb" ] || { echo "build-deb: cargo deb did not report a .deb (got '$deb')" >&2; exit 1; }
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"
echo "build-deb: $(stat -c %s "$deb" | awk '{ printf "%.2f MiB", $1 / 1048576 }') $deb"
echo "$deb"
