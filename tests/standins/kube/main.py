"""Dispatch for the kube stand-ins.

`run(name, version, argv)` is called by the launcher (tests/standins/kube-standin):
  - the personality is basename(argv[0]) when it is one of PERSONALITIES (kubectl, crictl
    and ctr may be symlinks to k3s), else `name` (what the harness substituted);
  - `state.NAME` / `state.VERSION` are set before the personality runs, so modules read the
    version from there;
  - the call is recorded ($STANDIN_LOG, same format as _common.sh) and STANDIN_SLEEP /
    STANDIN_FAIL applied HERE, once: personality modules must not record the call again;
  - a personality module is imported lazily and its entry point called with the arguments
    after the program name (argv[1:]): `<personality>_main(args)` if the module has it,
    else `main(args)`; a `version` keyword is passed when the function takes one.
    Whatever it returns (None = 0) is the exit code.
  - STANDIN_STOP=1 (the stand-in systemctl stopping a unit) is not recorded as a call.
"""
import os
import sys

from kube import state

PERSONALITIES = ("k3s", "k0s", "kubeadm", "kubelet", "kubectl", "crictl", "ctr")


def personality(name, argv0):
    base = os.path.basename(argv0 or "")
    return base if base in PERSONALITIES else name


def _call(module, personality_name, args):
    fn = getattr(module, f"{personality_name}_main", None) or getattr(module, "main")
    kwargs = {}
    # The function's own parameter names (importing `inspect` costs a call 20 ms).
    code = getattr(fn, "__code__", None)
    if code is not None and "version" in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
        kwargs["version"] = state.VERSION
    return fn(args, **kwargs)


def run(name, version, argv):
    who = personality(name, argv[0] if argv else name)
    args = list(argv[1:])
    state.NAME = who
    state.VERSION = version
    if os.environ.get("STANDIN_STOP") != "1":
        state.record(who, args)
        state.maybe_sleep(who, args)
        state.maybe_fail(who, args)
    code = dispatch(who, args)
    sys.exit(code or 0)


def dispatch(who, args):
    if who == "k3s":
        from kube import k3s

        return k3s.k3s_main(args)
    if who == "kubectl":
        from kube import kubectl

        return kubectl.kubectl_main(args, default_kubeconfig=state.host("/root/.kube/config"))
    if who in ("crictl", "ctr"):
        from kube import runtime_cli

        return runtime_cli.main(who, args)
    if who == "k0s":
        from kube import k0s

        return _call(k0s, "k0s", args)
    if who == "kubeadm":
        from kube import kubeadm

        return _call(kubeadm, "kubeadm", args)
    if who == "kubelet":
        from kube import kubelet

        return _call(kubelet, "kubelet", args)
    state.die(f"{who}: not a kube stand-in personality", 2)
