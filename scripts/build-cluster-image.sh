#!/usr/bin/env bash
# Assembles a cluster image (sealer's layout, as bootstrap reads it) from binaries and
# image archives you supply, and packs it as a .tar.zst with its .sha256 beside it:
#
#   scripts/build-cluster-image.sh --distro k3s --version v1.31.4+k3s1 --arch amd64 \
#     --bin ./k3s --bin ./registry --images ./k3s-airgap-images-amd64.tar.zst --out dist
#
# writes dist/k3s-v1.31.4+k3s1-amd64/ (Metadata, bin/, images/, manifests/, cni/bin/,
# registry/), dist/k3s-v1.31.4+k3s1-amd64.tar.zst and its .sha256 (sha256sum format,
# which `bootstrap rootfs unpack` and `up` check). Run with --help for every option.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: build-cluster-image.sh --distro k3s|k0s|kubeadm --version VERSION --out DIR
                              [--arch amd64|arm64] [--bin [NAME=]PATH]...
                              [--images PATH]... [--manifests DIR] [--cni DIR]
                              [--registry-storage DIR] [--name NAME] [--level N]
                              [--no-registry] [--force]

  --distro            k3s, k0s or kubeadm (Metadata ClusterRuntime k3s, k0s, kubernetes)
  --version           the distro version, e.g. v1.31.4+k3s1, v1.31.3+k0s.0, v1.31.4
  --arch              amd64 or arm64 [default: this machine's]
  --bin [NAME=]PATH   a binary for bin/, named NAME or after PATH; repeatable. Needed:
                        k3s: k3s   k0s: k0s
                        kubeadm: kubeadm kubelet kubectl containerd runc
                                 containerd-shim-runc-v2 (ctr recommended)
                      and registry (the CNCF distribution registry) unless --no-registry
  --images PATH       an image archive (docker save or OCI; .tar, .tar.gz, .tgz or
                      .tar.zst) for images/; repeatable
  --manifests DIR     files for manifests/
  --cni DIR           CNI plugins for cni/bin/ (kubeadm installs them on every node)
  --registry-storage DIR
                      a pre-populated registry storage tree (docker/registry/v2) for
                      registry/
  --name NAME         the image's name [default: DISTRO-VERSION-ARCH]
  --level N           zstd level, 1-19 [default: 9]
  --no-registry       the image is for nodes with registry.enabled: false
  --force             replace OUT/NAME and its archive if they exist
EOF
}

die() {
  echo "build-cluster-image: $*" >&2
  exit 1
}

distro="" version="" arch="" out="" name="" manifests="" cni="" storage=""
level=9 registry=1 force=0
bins=() images=()
while [ $# -gt 0 ]; do
  case "$1" in
    --distro) distro=${2:?--distro needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --arch) arch=${2:?--arch needs a value}; shift 2 ;;
    --bin) bins+=("${2:?--bin needs a path}"); shift 2 ;;
    --images) images+=("${2:?--images needs a path}"); shift 2 ;;
    --manifests) manifests=${2:?--manifests needs a folder}; shift 2 ;;
    --cni) cni=${2:?--cni needs a folder}; shift 2 ;;
    --registry-storage) storage=${2:?--registry-storage needs a folder}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --level) level=${2:?--level needs a value}; shift 2 ;;
    --no-registry) registry=0; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ -n "$distro" ] || die "--distro is required (k3s, k0s or kubeadm)"
[ -n "$version" ] || die "--version is required"
[ -n "$out" ] || die "--out is required"
case "$distro" in
  k3s) runtime=k3s; required=(k3s) ;;
  k0s) runtime=k0s; required=(k0s) ;;
  kubeadm) runtime=kubernetes; required=(kubeadm kubelet kubectl containerd runc containerd-shim-runc-v2) ;;
  *) die "--distro: expected k3s, k0s or kubeadm, got '$distro'" ;;
esac
[ "$registry" -eq 1 ] && required+=(registry)
# Written into JSON and file names as they are: keep them to plain characters.
[[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9.+_-]*$ ]] || die "--version: expected something like v1.31.4+k3s1, got '$version'"
if [ -z "$arch" ]; then
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    *) die "--arch is required on $(uname -m)" ;;
  esac
fi
case "$arch" in amd64|arm64) ;; *) die "--arch: expected amd64 or arm64, got '$arch'" ;; esac
if ! [[ "$level" =~ ^[0-9]+$ ]] || [ "$level" -lt 1 ] || [ "$level" -gt 19 ]; then
  die "--level: expected 1 to 19, got '$level'"
fi
name=${name:-$distro-$version-$arch}
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9.+_-]*$ ]] || die "--name: expected letters, digits and . + _ -, got '$name'"
for tool in tar zstd sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install $([ "$tool" = sha256sum ] && echo coreutils || echo "$tool"))"
done

# Check every input before writing anything.
declare -A bin_src=()
for spec in "${bins[@]}"; do
  if [[ "$spec" == *=* ]]; then bin_name=${spec%%=*} path=${spec#*=}; else bin_name=$(basename "$spec") path=$spec; fi
  [[ "$bin_name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--bin $spec: '$bin_name' is not a plain file name"
  [ -f "$path" ] || die "--bin $spec: $path is not a file"
  [ -z "${bin_src[$bin_name]:-}" ] || die "--bin $spec: bin/$bin_name is given twice"
  bin_src[$bin_name]=$path
done
missing=()
for needed in "${required[@]}"; do
  [ -n "${bin_src[$needed]:-}" ] || missing+=("$needed")
done
if [ ${#missing[@]} -gt 0 ]; then
  hint=""
  [[ " ${missing[*]} " == *" registry "* ]] && hint=" (registry: the CNCF distribution registry, e.g. Debian's docker-registry as --bin registry=/usr/bin/docker-registry; or --no-registry)"
  die "$distro needs binaries that were not given: $(printf 'bin/%s ' "${missing[@]}")- pass --bin PATH for each$hint"
fi
if [ "$distro" = kubeadm ]; then
  [ -n "${bin_src[ctr]:-}" ] || echo "build-cluster-image: note: no bin/ctr; nodes get containerd without its client" >&2
  [ -n "$cni" ] || echo "build-cluster-image: note: no --cni; the nodes need CNI plugins from elsewhere" >&2
fi
for archive in "${images[@]}"; do
  [ -f "$archive" ] || die "--images $archive: not a file"
  case "$archive" in
    *.tar) list=(tar -tf "$archive") ;;
    *.tar.gz|*.tgz) list=(tar -tzf "$archive") ;;
    *.tar.zst) list=(tar --zstd -tf "$archive") ;;
    *) die "--images $archive: expected a .tar, .tar.gz, .tgz or .tar.zst archive" ;;
  esac
  # docker save writes manifest.json, an OCI layout index.json; bootstrap reads either.
  members=$("${list[@]}" 2>/dev/null) || die "--images $archive: not a readable archive"
  grep -qxE '(\./)?(manifest|index)\.json' <<<"$members" ||
    die "--images $archive: no manifest.json or index.json; expected the output of docker save, skopeo copy or an OCI layout"
done
for dir in "$manifests" "$cni" "$storage"; do
  [ -z "$dir" ] || [ -d "$dir" ] || die "$dir: not a folder"
done

image="$out/$name"
archive="$out/$name.tar.zst"
if [ -e "$image" ] || [ -e "$archive" ]; then
  [ "$force" -eq 1 ] || die "$image or $archive exists; pass --force to replace them"
fi
mkdir -p "$out"
# Build beside the result and rename, so a failed run leaves no half image.
staging=$(mktemp -d "$out/.$name.XXXXXX")
trap 'rm -rf "$staging" "$archive.partial"' EXIT
mkdir -p "$staging"/{bin,images,manifests}

printf '{"version": "%s", "arch": "%s", "ClusterRuntime": "%s"}\n' "$version" "$arch" "$runtime" >"$staging/Metadata"
for bin_name in "${!bin_src[@]}"; do
  install -m 0755 "${bin_src[$bin_name]}" "$staging/bin/$bin_name"
done
for src in "${images[@]}"; do
  dest="$staging/images/$(basename "$src")"
  [ ! -e "$dest" ] || die "--images: two archives named $(basename "$src")"
  install -m 0644 "$src" "$dest"
done
[ -z "$manifests" ] || cp -R "$manifests/." "$staging/manifests/"
if [ -n "$cni" ]; then
  mkdir -p "$staging/cni/bin"
  cp -R "$cni/." "$staging/cni/bin/"
fi
if [ -n "$storage" ]; then
  mkdir -p "$staging/registry"
  cp -R "$storage/." "$staging/registry/"
fi
chmod 0755 "$staging"

# GNU tar: members named without a leading ./, in a stable order, owned by root.
# Modification times stay real: bootstrap compares them to find changed binaries.
# The staging folder holds only what was made above: Metadata, bin, images, manifests,
# cni, registry (no dot files for * to miss).
(cd "$staging" && tar --sort=name --owner=0 --group=0 --numeric-owner -cf - -- *) |
  zstd -q -T0 "-$level" -o "$archive.partial"
if [ -e "$image" ]; then rm -rf "$image"; fi
mv "$staging" "$image"
mv -f "$archive.partial" "$archive"
(cd "$out" && sha256sum "$name.tar.zst" >"$name.tar.zst.sha256")
trap - EXIT

size=$(stat -c %s "$archive")
echo "build-cluster-image: $image/"
echo "build-cluster-image: $archive ($((size / 1024)) KiB), $archive.sha256"
