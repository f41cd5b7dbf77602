"""k3s: `--version`, `server` / `agent` (the daemon, see kube/k3s_daemon.py), `token
create|list|delete|generate`, `kubectl`, `crictl`, `ctr`. Config keys and flags follow
/work/shared/reference/distros.md §1.2 (docs cli/server.md and cli/agent.md).

Stand-in policy, stricter than k3s on purpose (each is a secret or a silent misconfig):
  - `--token`/`-t` on argv and $K3S_TOKEN are refused (visible in ps / the unit's env);
  - a `token` or `agent-token` key in config.yaml is refused: tokens come only from
    `token-file` / `agent-token-file`, which must be mode 0600 (no group/other bits);
  - an unknown config key fails the start (real k3s logs "Unknown flag --x found in
    config.yaml, skipping" and goes on), and so does a server-only key in an agent config.
"""
import ipaddress
import os
from pathlib import Path

from kube import state

GIT_COMMIT = "0a1b2c3d"
GO_VERSION = "go1.22.8"

# Keys (flag names without dashes) `k3s agent` takes (distros.md §1.2, docs cli/agent.md).
AGENT_KEYS = {
    "config", "debug", "v", "vmodule", "log", "alsologtostderr", "token", "token-file",
    "server", "data-dir", "node-name", "with-node-id", "node-label", "node-taint",
    "image-credential-provider-bin-dir", "image-credential-provider-config", "selinux",
    "lb-server-port", "protect-kernel-defaults", "docker", "container-runtime-endpoint",
    "default-runtime", "image-service-endpoint", "disable-default-registry-endpoint",
    "nonroot-devices", "pause-image", "snapshotter", "private-registry", "node-ip",
    "node-external-ip", "node-internal-dns", "node-external-dns", "resolv-conf",
    "flannel-iface", "flannel-conf", "flannel-cni-conf-file", "kubelet-arg", "kube-proxy-arg",
    "rootless", "prefer-bundled-bin", "enable-pprof", "vpn-auth", "vpn-auth-file",
    "disable-apiserver-lb", "bind-address", "airgap-extra-registry",
}
# `k3s server` takes the agent's keys and these (docs cli/server.md).
SERVER_KEYS = AGENT_KEYS | {
    "https-listen-port", "supervisor-port", "apiserver-port", "apiserver-bind-address",
    "advertise-address", "advertise-port", "tls-san", "tls-san-security", "cluster-cidr",
    "service-cidr", "service-node-port-range", "cluster-dns", "cluster-domain",
    "flannel-backend", "flannel-ipv6-masq", "flannel-external-ip", "egress-selector-mode",
    "servicelb-namespace", "write-kubeconfig", "write-kubeconfig-mode",
    "write-kubeconfig-group", "helm-job-image", "agent-token", "agent-token-file",
    "cluster-init", "cluster-reset", "cluster-reset-restore-path", "kube-apiserver-arg",
    "etcd-arg", "kube-controller-manager-arg", "kube-scheduler-arg",
    "kube-cloud-controller-manager-arg", "kine-tls", "datastore-endpoint",
    "datastore-cafile", "datastore-certfile", "datastore-keyfile", "etcd-expose-metrics",
    "etcd-disable-snapshots", "etcd-snapshot-name", "etcd-snapshot-schedule-cron",
    "etcd-snapshot-retention", "etcd-snapshot-dir", "etcd-snapshot-compress",
    "default-local-storage-path", "disable", "disable-scheduler", "disable-cloud-controller",
    "disable-kube-proxy", "disable-network-policy", "disable-helm-controller",
    "embedded-registry", "supervisor-metrics", "system-default-registry",
    "secrets-encryption", "secrets-encryption-provider", "disable-apiserver",
    "disable-controller-manager", "disable-etcd",
}
BOOL_KEYS = {
    "debug", "alsologtostderr", "with-node-id", "selinux", "protect-kernel-defaults",
    "docker", "disable-default-registry-endpoint", "rootless", "prefer-bundled-bin",
    "enable-pprof", "disable-apiserver-lb", "flannel-ipv6-masq", "flannel-external-ip",
    "cluster-init", "cluster-reset", "kine-tls", "etcd-expose-metrics",
    "etcd-disable-snapshots", "etcd-snapshot-compress", "disable-scheduler",
    "disable-cloud-controller", "disable-kube-proxy", "disable-network-policy",
    "disable-helm-controller", "embedded-registry", "supervisor-metrics",
    "secrets-encryption", "disable-apiserver", "disable-controller-manager", "disable-etcd",
    "tls-san-security",
}
LIST_KEYS = {
    "node-label", "node-taint", "kubelet-arg", "kube-proxy-arg", "tls-san", "disable",
    "kube-apiserver-arg", "etcd-arg", "kube-controller-manager-arg", "kube-scheduler-arg",
    "kube-cloud-controller-manager-arg", "node-ip", "node-external-ip", "cluster-cidr",
    "service-cidr", "cluster-dns", "airgap-extra-registry", "nonroot-devices",
}
SHORT = {"c": "config", "d": "data-dir", "s": "server", "i": "node-ip", "o": "write-kubeconfig",
         "l": "log"}
# Must match on every server (distros.md §1.2 "Critical values"), with k3s's defaults.
CRITICAL_DEFAULTS = {
    "cluster-cidr": "10.42.0.0/16", "service-cidr": "10.43.0.0/16",
    "cluster-dns": "10.43.0.10", "cluster-domain": "cluster.local",
    "disable-cloud-controller": False, "disable-helm-controller": False,
    "disable-network-policy": False, "disable=servicelb": False,
    "egress-selector-mode": "agent", "flannel-backend": "vxlan",
    "flannel-external-ip": False, "flannel-ipv6-masq": False, "secrets-encryption": False,
}
DEFAULT_CONFIG = "/etc/rancher/k3s/config.yaml"
DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"


def usage(msg):
    state.die(f"Incorrect Usage: {msg}\n\nNAME:\n   k3s - Kubernetes, but small and simple", 1)


def k3s_main(args):
    if args in (["--version"], ["-v"], ["version"]):
        print(f"k3s version {state.VERSION} ({GIT_COMMIT})")
        print(f"go version {GO_VERSION}")
        return 0
    if not args or args[0] in ("--help", "-h", "help"):
        print("NAME:\n   k3s - Kubernetes, but small and simple\n\nCOMMANDS:\n   server, agent, "
              "kubectl, crictl, ctr, token, etcd-snapshot, secrets-encrypt, certificate")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd in ("server", "agent"):
        from kube import k3s_daemon

        return k3s_daemon.daemon(cmd, rest)
    if cmd == "kubectl":
        from kube.kubectl import kubectl_main

        return kubectl_main(rest, default_kubeconfig=state.host(KUBECONFIG))
    if cmd in ("crictl", "ctr"):
        from kube import runtime_cli

        return runtime_cli.main(cmd, rest)
    if cmd == "token":
        return token_cmd(rest)
    usage(f'unknown command "{cmd}"' if not cmd.startswith("-") else f"flag provided but not defined: {cmd}")


# --- configuration -------------------------------------------------------------------------


def refuse_argv_token(args):
    for a in args:
        if a in ("--token", "-t", "-token") or a.startswith(("--token=", "-t=", "-token=")):
            state.die("k3s stand-in: refusing a token on the command line (any user can read it "
                      "in ps and /proc); use token-file in config.yaml (bootstrap policy)")
    if os.environ.get("K3S_TOKEN"):
        state.die("k3s stand-in: refusing K3S_TOKEN from the environment; use token-file "
                  "(bootstrap policy)")


def as_list(v, split=False):
    if v is None:
        return []
    items = [str(x) if not isinstance(x, bool) else str(x).lower() for x in (v if isinstance(v, list) else [v])]
    if split:
        items = [p.strip() for i in items for p in i.split(",") if p.strip()]
    return items


def as_bool(key, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    state.die(f'k3s: invalid boolean value "{v}" for {key} in config')


def load_config(cmd, args):
    """config.yaml + config.yaml.d/*.yaml (sorted; `key+` appends), then argv flags."""
    allowed = SERVER_KEYS if cmd == "server" else AGENT_KEYS
    spec = {k: (False if k in BOOL_KEYS else "list" if k in LIST_KEYS else True) for k in allowed}
    flags, pos = state.parse_flags(args, spec, {k: v for k, v in SHORT.items() if v in allowed},
                                   error_prefix="Incorrect Usage")
    if pos:
        usage(f"unexpected argument {pos[0]}")
    path = flags.get("config") or os.environ.get("K3S_CONFIG_FILE") or DEFAULT_CONFIG
    main_file = state.host(path)
    if "config" in flags and not main_file.exists():
        state.die(f"k3s: open {path}: no such file or directory")
    files = [main_file] + sorted(Path(str(main_file) + ".d").glob("*.yaml"))
    merged = {}
    for f in files:
        if not f.is_file():
            continue
        try:
            data = state.simple_yaml(f.read_text())
        except state.YamlError as e:
            state.die(f"k3s: failed to parse config file {f}: {e}")
        for key, value in data.items():
            base = key[:-1] if key.endswith("+") else key
            if base not in allowed:
                other = "server" if base in SERVER_KEYS else None
                why = f" (a {other}-only key)" if other else ""
                state.die(f"k3s {cmd}: unknown flag --{base} found in {f}{why}; "
                          f"`k3s {cmd}` does not take it")
            if base in ("token", "agent-token"):
                state.die(f"k3s stand-in: refusing `{base}` in {f}: put the secret in a file "
                          f"with mode 0600 and use {base}-file (bootstrap policy)")
            if key.endswith("+"):
                merged[base] = as_list(merged.get(base)) + as_list(value)
            else:
                merged[base] = value
    merged.update(flags)
    for key in list(merged):
        if key in BOOL_KEYS:
            merged[key] = as_bool(key, merged[key])
    return merged


def read_secret_file(cfg, key):
    """The trimmed content of `key` (token-file / agent-token-file), mode-checked."""
    if key not in cfg:
        return None
    p = state.host(cfg[key])
    if not p.is_file():
        state.die(f"k3s: {key} {cfg[key]}: no such file or directory")
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        state.die(f"k3s stand-in: {key} {cfg[key]} is readable by others (mode {mode:04o}); "
                  "it must be 0600 (bootstrap policy)")
    text = p.read_text().strip()
    if not text:
        state.die(f"k3s: {key} {cfg[key]} is empty")
    return text


def critical(cfg, explicit_only=False):
    """The critical values this server runs with (explicit, else k3s's defaults)."""
    out = {}
    for key, default in CRITICAL_DEFAULTS.items():
        if key == "disable=servicelb":
            if "disable" in cfg or not explicit_only:
                out[key] = "servicelb" in as_list(cfg.get("disable"), split=True)
            continue
        if key in cfg:
            v = cfg[key]
            out[key] = ",".join(as_list(v, split=True)) if key in LIST_KEYS else v
        elif not explicit_only:
            out[key] = default
    if "cluster-dns" not in cfg and "cluster-dns" in out:
        # k3s derives the DNS address from the service CIDR (its .10).
        cidr = as_list(cfg.get("service-cidr"), split=True) or [CRITICAL_DEFAULTS["service-cidr"]]
        try:
            out["cluster-dns"] = str(ipaddress.ip_network(cidr[0], strict=False)[10])
        except ValueError:
            state.die(f"k3s: invalid service-cidr {cidr[0]!r}")
    return out


def data_dir(cfg):
    return cfg.get("data-dir") or DEFAULT_DATA_DIR


def node_name(cfg):
    name = cfg.get("node-name") or state.hostname()
    if cfg.get("with-node-id"):
        import hashlib

        name += "-" + hashlib.sha256(str(state.ROOT).encode()).hexdigest()[:8]
    return name


def first(cfg, key):
    items = as_list(cfg.get(key), split=True)
    return items[0] if items else ""


# --- token ---------------------------------------------------------------------------------


def token_cmd(args):
    if not args or args[0] not in ("create", "list", "delete", "generate"):
        usage(f'unknown token subcommand "{args[0] if args else ""}"')
    sub, rest = args[0], args[1:]
    spec = {"data-dir": True, "kubeconfig": True, "server": True, "output": True,
            "description": True, "groups": "list", "ttl": True, "usages": "list"}
    flags, pos = state.parse_flags(rest, spec, {"d": "data-dir", "o": "output"},
                                   error_prefix="Incorrect Usage")
    if sub == "generate":
        tid, secret = state.new_token()
        print(f"{tid}.{secret}")
        return 0
    if not state.unit_active("k3s.service"):
        state.die("k3s is not running: k3s token needs a running server (k3s.service is not active)")
    ddir = flags.get("data-dir") or DEFAULT_DATA_DIR
    with state.cluster() as c:
        k = c.get("k3s")
        if not k or not c["api_up"] or not any(c["api_up"].values()):
            state.die("k3s is not running: the connection to the apiserver was refused")
        if not state.host(f"{ddir}/server/token").exists():
            state.die(f"k3s: {ddir}/server/token: no such file or directory (not a server)")
        if sub == "create":
            try:
                ttl = state.parse_duration(flags.get("ttl", "24h"))
            except ValueError:
                usage(f'invalid value "{flags.get("ttl")}" for flag -ttl: parse error')
            usages = [u for us in flags.get("usages", ["signing", "authentication"]) for u in us.split(",")]
            tid, secret = pos[0].split(".", 1) if pos else state.new_token()
            state.add_token(c, tid, secret, ttl, usages)
            c["tokens"][tid]["description"] = flags.get("description", "")
            print(f"K10{k['ca_hash']}::{tid}.{secret}")
        elif sub == "delete":
            for tid in pos:
                c["tokens"].pop(tid.split(".")[0], None)
                print(f"bootstrap token \"{tid}\" deleted")
        else:
            print("TOKEN                    TTL         EXPIRES   USAGES   DESCRIPTION   EXTRA GROUPS")
            for tid, t in sorted(c["tokens"].items()):
                print(f"{tid}.<redacted>   {'<forever>' if t['expires'] is None else int(t['expires'])}   "
                      f"{','.join(t['usages'])}   {t.get('description', '')}")
    return 0
