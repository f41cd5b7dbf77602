"""crictl and ctr (symlinks to k3s, or the host's ctr for kubeadm): enough to answer
`--version` and list nothing; the image import the distro does itself is not simulated."""
from kube import state

VERSIONS = {"crictl": "crictl version v1.31.0-k3s2", "ctr": "ctr github.com/k3s-io/containerd v1.7.23-k3s2"}


def main(who, args):
    if args in (["--version"], ["-v"], ["version"]):
        print(VERSIONS[who])
        return 0
    flags, pos = state.parse_flags(
        args,
        {"namespace": True, "address": True, "runtime-endpoint": True, "image-endpoint": True,
         "quiet": False, "all-platforms": False, "timeout": True, "debug": False},
        {"n": "namespace", "a": "address", "r": "runtime-endpoint", "i": "image-endpoint",
         "q": "quiet", "t": "timeout", "D": "debug"},
        error_prefix="Incorrect Usage" if who == "ctr" else "Error",
    )
    listing = {("crictl", "ps"), ("crictl", "pods"), ("crictl", "images"),
               ("ctr", "images"), ("ctr", "containers"), ("ctr", "tasks")}
    if pos and (who, pos[0]) in listing and (who == "crictl" or pos[1:2] in (["ls"], ["list"])):
        return 0
    if who == "ctr" and pos[:2] in (["images", "import"], ["image", "import"]):
        missing = [p for p in pos[2:] if not state.host(p).exists()]
        if not pos[2:] or missing:
            state.die(f"ctr: open {missing[0] if missing else ''}: no such file or directory")
        return 0
    state.die(f"{who}: the stand-in does not implement `{' '.join(args)}`")
