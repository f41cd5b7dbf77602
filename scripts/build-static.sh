#!/usr/bin/env bash
# Builds the static release binary: target/x86_64-unknown-linux-musl/release/bootstrap.
# Installs the musl target (rustup) and musl-gcc (Debian's musl-tools) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-static: musl-gcc is missing; install Debian's musl-tools" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools
fi

CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/bootstrap"
size=$(stat -c %s "$bin")
echo "build-static: $bin, $((size / 1024)) KiB"
