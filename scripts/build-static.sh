#!/usr/bin/env bash
# Builds the static release binary: target/<arch>-unknown-linux-musl/release/bootstrap.
#   scripts/build-static.sh            x86_64 (the default)
#   scripts/build-static.sh aarch64    arm64, cross-compiled
# Installs the musl target (rustup) and the C compiler ring and zstd-sys need when
# missing: musl-gcc (Debian's musl-tools) for x86_64; for aarch64 Debian's cross gcc
# (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross), which also links: Rust's musl target
# brings its own C library and start files, so the static binary has no glibc in it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-x86_64}" in
  x86_64|amd64) arch=x86_64 cc=musl-gcc header=/usr/include/stdlib.h packages=(musl-tools) ;;
  aarch64|arm64) arch=aarch64 cc=aarch64-linux-gnu-gcc header=/usr/aarch64-linux-gnu/include/stdlib.h
    packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross) ;;
  *) echo "build-static: unknown architecture '$1'; expected x86_64 or aarch64" >&2; exit 2 ;;
esac
target=$arch-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
if ! command -v "$cc" >/dev/null || [ ! -e "$header" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-static: $cc is missing; install Debian's ${packages[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

# The cc crate reads CC_<target>; cargo reads the linker from CARGO_TARGET_<TARGET>_LINKER.
target_env=${target//-/_}
export "CC_$target_env=$cc"
if [ "$arch" = aarch64 ]; then
  export "CARGO_TARGET_${target_env^^}_LINKER=$cc"
fi
cargo build --release --locked --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/bootstrap"
size=$(stat -c %s "$bin")
echo "build-static: $bin, $((size / 1024)) KiB"
