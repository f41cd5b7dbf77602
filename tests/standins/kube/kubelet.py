"""kubelet stand-in: `kubelet --version`, and the daemon the stand-in systemctl runs for
kubelet.service (STANDIN_DAEMON=1; the unit's `$VAR` arguments are dropped by systemctl).

Like the packaged kubelet under kubeadm (distros.md §3.1): until kubeadm has written
/etc/kubernetes/kubelet.conf it has nothing to run with (the real one crash-loops; the
stand-in just exits 0 so the unit stays enabled); once it exists, the node this root
registered reports this kubelet's version (upgrades: a restart on the new binary).
"""
import os

from kube import state

# Flags the kubelet takes in the kubeadm drop-in (10-kubeadm.conf) and kubeadm-flags.env.
FLAGS = {"version": False, "bootstrap-kubeconfig": True, "kubeconfig": True, "config": True,
         "container-runtime-endpoint": True, "pod-infra-container-image": True,
         "node-ip": True, "node-labels": True, "hostname-override": True, "v": True,
         "register-with-taints": True, "cloud-provider": True}


def kubelet_main(args, version=None):
    if version:
        state.VERSION = version
    flags, pos = state.parse_flags(args, FLAGS, {"v": "v"})
    if pos:
        state.die(f"kubelet: unexpected arguments {pos}")
    if flags.get("version"):
        print(f"Kubernetes {state.VERSION}")
        return 0
    if os.environ.get("STANDIN_STOP") == "1":
        return 0
    if os.environ.get("STANDIN_DAEMON") != "1":
        state.die("kubelet: the stand-in runs only as kubelet.service under the stand-in "
                  "systemctl (STANDIN_DAEMON=1)")
    kubeconfig = flags.get("kubeconfig") or "/etc/kubernetes/kubelet.conf"
    if not state.host(kubeconfig).exists():
        print(f"kubelet: {kubeconfig} does not exist yet (kubeadm init/join writes it)")
        return 0
    with state.cluster() as c:
        for node in c["nodes"].values():
            if node.get("root") == str(state.ROOT):
                node["version"] = state.VERSION
                node["ready"] = True
    return 0


def main(name, version, argv):
    """The brief's entry point: argv includes the program name."""
    state.NAME = name
    return kubelet_main(list(argv[1:]), version=version)
