#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/ (checked in; run again only to change them).

Each target starts from a few valid inputs, so the fuzzer mutates real shapes instead of
having to discover a tar header or a JSON request from nothing. Small on purpose.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORPUS = HERE / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def tar_of(entries):
    """entries: (name, bytes) files, (name, None) folders, (name, '->target') links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
            elif isinstance(data, str):
                info.type = tarfile.SYMTYPE
                info.linkname = data[2:]
                t.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755 if name.startswith(("bin/", "./bin/")) else 0o644
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True).stdout


def gz(data):
    return gzip.compress(data, mtime=0)


def config():
    for src in ["examples/single-node/etc/bootstrap/config.yaml", "tests/golden/config-single-node.yaml",
                "packaging/config.example.yaml"]:
        put("config_load", Path(src).name.replace(".yaml", "") + ".yaml", (REPO / src).read_bytes())
    put("config_load", "worker.yaml",
        "role: worker\ncluster:\n  distro: k3s\n  controllers: [10.0.0.1]\n"
        "  join_secret_file: /etc/bootstrap/join-secret\n")
    put("config_load", "registry.yaml",
        "registry:\n  port: 5000\n  username: pull\n  password_file: /etc/bootstrap/registry-password\n"
        "join:\n  timeout: 10m\n  token_ttl: 1h\n")


def metadata():
    meta = (REPO / "examples/single-node/var/lib/bootstrap/rootfs/Metadata").read_bytes()
    for distro in ["k3s", "k0s", "kubeadm"]:
        kubefile = (REPO / f"packaging/cluster-images/{distro}/Kubefile").read_bytes()
        put("image_metadata_kubefile", f"{distro}-kubefile-only", kubefile)
    k3s = (REPO / "packaging/cluster-images/k3s/Kubefile").read_bytes()
    put("image_metadata_kubefile", "k3s-metadata-and-kubefile", meta + b"\0" + k3s)
    put("image_metadata_kubefile", "apps",
        b'{"version":"v1.30.1","arch":"amd64"}\0FROM scratch\n'
        b'LABEL "cluster.alpha.sealer.io/cluster-runtime-type"=kubernetes \\\n  a=b\n'
        b'APP calico local://calico.yaml\nAPPCMDS calico ["kubectl apply -f calico.yaml"]\n'
        b'LAUNCH ["calico"]\nCMDS ["kubectl get nodes", "echo ok"]\nCMD ["kubectl", "version"]\n')


def image_tree():
    meta = (REPO / "examples/single-node/var/lib/bootstrap/rootfs/Metadata").read_bytes()
    return [("Metadata", meta), ("bin", None), ("bin/k3s", b"#!/bin/sh\necho k3s\n"),
            ("bin/kubectl", "->k3s"), ("images", None), ("manifests/app.yaml", b"kind: List\n")]


def unpack():
    plain = tar_of(image_tree())
    put("rootfs_unpack", "k3s-image.tar", plain)
    put("rootfs_unpack", "k3s-image.tar.gz", gz(plain))
    put("rootfs_unpack", "k3s-image.tar.zst", zstd(plain))
    put("rootfs_unpack", "per-arch.tar", tar_of(
        [("amd64/Metadata", b'{"version":"v1.31.4+k3s1","arch":"amd64","ClusterRuntime":"k3s"}'),
         ("amd64/bin/k3s", b"k3s"), ("arm64/bin/k3s", b"k3s"), ("./", None)]))
    put("rootfs_unpack", "containerd-bundle.tar.gz", gz(tar_of(
        [("bin/containerd", b"containerd"), ("bin/ctr", "->containerd"), ("etc/", None)])))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def image_archive(oci, docker):
    layer = tar_of([("bin/registry", b"#!/bin/sh\n"), ("etc/docker/registry/config.yml", b"version: 0.1\n")])
    layer_gz = gz(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(layer)]},
                         "config": {}}).encode()
    entries = []
    if oci:
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": "sha256:" + sha(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                           "digest": "sha256:" + sha(layer_gz), "size": len(layer_gz)}]}).encode()
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                           "digest": "sha256:" + sha(manifest), "size": len(manifest),
                                           "annotations": {"io.containerd.image.name": "docker.io/library/registry:2.8.3",
                                                           "org.opencontainers.image.ref.name": "2.8.3"}}]}).encode()
        entries += [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
        for blob in (config, layer_gz, manifest):
            entries.append((f"blobs/sha256/{sha(blob)}", blob))
    if docker:
        if not oci:
            entries += [(f"{sha(config)}.json", config), ("layer/layer.tar", layer)]
            layers, cfg = ["layer/layer.tar"], f"{sha(config)}.json"
        else:
            layers, cfg = [f"blobs/sha256/{sha(layer_gz)}"], f"blobs/sha256/{sha(config)}"
        entries.append(("manifest.json", json.dumps(
            [{"Config": cfg, "RepoTags": ["registry:2.8.3"], "Layers": layers}]).encode()))
    return tar_of(entries)


def seed():
    put("images_seed", "oci-layout.tar", image_archive(oci=True, docker=False))
    put("images_seed", "docker-save.tar", image_archive(oci=False, docker=True))
    put("images_seed", "docker-25-both.tar.gz", gz(image_archive(oci=True, docker=True)))
    put("images_seed", "docker-save.tar.zst", zstd(image_archive(oci=False, docker=True)))


def frame(body, tag=b"\0" * 32):
    return len(body).to_bytes(4, "big") + body + tag


def join():
    requests = [
        {"version": 1, "kind": "join", "role": "worker", "node": "worker-1", "credential": "fuzz-line"},
        {"version": 1, "kind": "join", "role": "controller", "node": "cp-2"},
        {"version": 1, "kind": "leave", "role": "worker", "node": "worker-1", "credential": "node:worker-1",
         "drain_timeout_secs": 30},
        {"version": 1, "kind": "release", "role": "controller", "node": "cp-2", "credential": "fuzz-line"},
        {"version": 1, "kind": "cluster", "role": "controller", "node": "cp-3"},
    ]
    for i, r in enumerate(requests):
        put("join_server_request", f"{r['kind']}-{i}", bytes([i * 37 % 256]) + frame(json.dumps(r).encode()))
    material = json.dumps({"format": 1, "distro": "kubeadm", "version": "v1.31.4", "role": "controller",
                           "endpoint": "10.0.0.1:6443", "token": "abcdef.0123456789abcdef",
                           "ca_cert_hash": "sha256:" + "ab" * 32, "certificate_key": "cd" * 32,
                           "expires_at": "2026-12-08T00:00:00Z", "cluster_name": "prod",
                           "join_services": ["10.0.0.1:7443"], "join_pin": "ef" * 32})
    responses = [
        {"status": "ok", "message": "ok", "material": material},
        {"status": "ok", "message": "ok", "cluster": {"id": "c1", "distro": "k3s", "version": "v1.31.4+k3s1",
                                                      "members": ["10.0.0.1"]}},
        {"status": "busy", "message": "admission busy"},
        {"status": "refused", "message": "not authenticated"},
    ]
    for i, r in enumerate(responses):
        body = json.dumps(r).encode()
        put("join_client_response", f"body-{r['status']}-{i}", b"\x01" + body)
        put("join_client_response", f"frame-{r['status']}-{i}", b"\x00" + frame(body))


def join_lines():
    pin = "ab" * 32
    secret = "0123456789abcdef" * 3
    lines = {
        "worker": f"bootstrap-join://10.0.0.10:7443/?role=worker&pin={pin}&credential=a1b2c3d4.{secret}",
        "controller-v6": f"bootstrap-join://[fd00::10]:7443/?role=controller&pin={pin}&credential=a1b2c3d4.{secret}\n",
        "short-secret": f"bootstrap-join://10.0.0.10:7443/?role=worker&pin={pin}&credential=a1b2c3d4.short",
        "unknown-part": f"bootstrap-join://host.example:7443/?role=worker&pin={pin}&x=1&credential=a.{secret}",
    }
    for name, text in lines.items():
        put("join_line", name, text.encode())


if __name__ == "__main__":
    # Inputs fuzzing found (kept as seeds so every run tries them again) are not
    # generated here: keep them.
    found = {p: p.read_bytes() for p in CORPUS.rglob("*") if p.is_file() and p.name.endswith(("-oom", "-found"))} if CORPUS.exists() else {}
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    for path, data in found.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    config(); metadata(); unpack(); seed(); join(); join_lines()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    print(f"seeds: {sum(1 for f in CORPUS.rglob('*') if f.is_file())} files, {total} bytes")
