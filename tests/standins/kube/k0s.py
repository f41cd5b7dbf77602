"""k0s stand-in: `k0s install|start|stop|status|token create|kubeconfig admin|kubectl|etcd|
reset|version`, and the daemon (`k0s controller|worker …` run by the stand-in systemctl with
STANDIN_DAEMON=1, STANDIN_STOP=1 when stopped).

Flags and config keys follow upstream k0s (distros.md §2; code cmd/install/{controller,
worker,util}.go, pkg/config/cli.go, pkg/install/{service,systemd_linux}.go): unknown flags
fail like pflag (`Error: unknown flag: --x`), unknown ClusterConfig keys like its strict
decoder. Join tokens are base64(gzip(kubeconfig)) carrying a bootstrap token that must be
live in the fake cluster (kube/state.py); on argv they are refused (argv is world-readable).
Cluster state under c["k0s"]: {config, ca_key, controllers {name: {...}}}.
"""
import base64
import binascii
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zlib

from kube import state

UNITS = {"controller": "k0scontroller.service", "worker": "k0sworker.service"}
DATA_DIR = "/var/lib/k0s"
RUN_DIR = "/run/k0s"
CONFIG = "/etc/k0s/k0s.yaml"
DEFAULT_BIN = "/usr/local/bin/k0s"

# --- flags (pkg/config/cli.go, cmd/install/install.go; distros.md §2.2) ---------------------
# Root persistent flags: -d/--debug, -v/--verbose, --debugListenOn.
ROOT_FLAGS = {"debug": False, "verbose": False, "debugListenOn": True}
ROOT_ALIASES = {"d": "debug", "v": "verbose"}
# GetPersistentFlagSet.
PERSISTENT = {"data-dir": True, "status-socket": True}
# GetWorkerFlags (+ --ignore-pre-flight-checks, distros.md §2.2). `cidr-range` is deprecated.
WORKER = {"kubelet-root-dir": True, "profile": True, "enable-cloud-provider": False,
          "token-file": True, "logging": True, "labels": "list", "taints": "list",
          "kubelet-extra-args": True, "iptables-mode": True, "cri-socket": True,
          "ignore-pre-flight-checks": False, "cidr-range": True}
WORKER_ALIASES = {"l": "logging"}
# GetControllerFlags + FileInputFlag (-c/--config). NOT accepted by `install worker`/`worker`.
CONTROLLER = {"enable-worker": False, "disable-components": "list", "single": False,
              "no-taints": False, "enable-k0s-cloud-provider": False,
              "k0s-cloud-provider-update-frequency": True, "k0s-cloud-provider-port": True,
              "enable-dynamic-config": False, "enable-metrics-scraper": False,
              "kube-controller-manager-extra-args": True, "init-only": False,
              "feature-gates": True, "api-server-stop-timeout": True, "config": True}
CONTROLLER_ALIASES = {"c": "config"}
# `k0s install` persistent flags; cmdFlagsToArgs leaves these out of ExecStart.
INSTALL = {"force": False, "env": "list", "start": False}
INSTALL_ONLY = ("force", "env", "start")
# pkg/config/cli.go availableComponents.
COMPONENTS = ("applier-manager", "autopilot", "control-api", "coredns", "csr-approver",
              "endpoint-reconciler", "helm", "konnectivity-server", "kube-controller-manager",
              "kube-proxy", "kube-scheduler", "metrics-server", "network-provider",
              "node-role", "system-rbac", "update-prober", "windows-node", "worker-config")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def spec_for(role, install=False):
    spec, aliases = dict(ROOT_FLAGS), dict(ROOT_ALIASES)
    spec.update(PERSISTENT)
    spec.update(WORKER)
    aliases.update(WORKER_ALIASES)
    if role == "controller":
        spec.update(CONTROLLER)
        aliases.update(CONTROLLER_ALIASES)
    if install:
        spec.update(INSTALL)
        aliases["e"] = "env"
    return spec, aliases


def split_list(values):
    """pflag string slices: repeatable, each value comma-separated."""
    out = []
    for v in values or []:
        out.extend(p for p in v.split(",") if p)
    return out


def check_flag_values(flags):
    for comp in split_list(flags.get("disable-components")):
        if comp not in COMPONENTS:
            state.die(f"Error: unknown component {comp}")
    labels = {}
    for item in split_list(flags.get("labels")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            state.die(f'Error: invalid argument "{item}" for "--labels" flag: '
                      f"{item} must be formatted as key=value")
        labels[key] = value
    for t in split_list(flags.get("taints")):
        kv, colon, effect = t.rpartition(":")
        if not colon or not kv or effect not in TAINT_EFFECTS:
            state.die(f'Error: invalid taint "{t}": want key[=value]:effect with effect one of '
                      + ", ".join(TAINT_EFFECTS))
    return labels


def to_args(flags):
    """cmdFlagsToArgs: every flag set, `--name=value`, in pflag's (sorted) visit order."""
    out = []
    for name in sorted(flags):
        if name in INSTALL_ONLY:
            continue
        v = flags[name]
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, list):
            v = ",".join(split_list(v))
        elif name in ("data-dir", "kubelet-root-dir", "token-file", "config"):
            v = os.path.abspath(v)
        out.append(f"--{name}={v}")
    return out


def data_dir(flags):
    return flags.get("data-dir") or DATA_DIR


def refuse_token_args(pos, what):
    if pos:
        state.die(f"Error: {what}: unexpected argument(s) {len(pos)}: a join token on the "
                  "command line is world-readable in /proc; use --token-file (stand-in)")


# --- ClusterConfig (k0s.k0sproject.io/v1beta1), strict like k0s's decoder -------------------
IMAGE_NAMES = ("konnectivity", "pushgateway", "metricsserver", "kubeproxy", "coredns",
               "pause", "calico", "kuberouter")
# Known fields per path (distros.md §2.2, k0s pkg/apis/k0s/v1beta1); None = not checked deeper.
SCHEMA = {
    "": ("apiVersion", "kind", "metadata", "spec"),
    "spec": ("api", "storage", "network", "images", "telemetry", "workerProfiles",
             "installConfig", "extensions", "controllerManager", "scheduler", "konnectivity",
             "featureGates", "podSecurityPolicy"),
    "spec.api": ("address", "externalAddress", "sans", "port", "k0sApiPort",
                 "onlyBindToAddress", "extraArgs", "ca"),
    "spec.api.ca": ("expiresAfter", "certificatesExpireAfter"),
    "spec.network": ("provider", "podCIDR", "serviceCIDR", "clusterDomain", "kubeProxy",
                     "nodeLocalLoadBalancing", "controlPlaneLoadBalancing", "kuberouter",
                     "calico", "dualStack"),
    "spec.network.nodeLocalLoadBalancing": ("enabled", "type", "envoyProxy"),
    "spec.network.nodeLocalLoadBalancing.envoyProxy": ("image", "imagePullPolicy",
                                                       "apiServerBindPort",
                                                       "konnectivityServerBindPort"),
    "spec.images": ("repository", "default_pull_policy") + IMAGE_NAMES,
    "spec.telemetry": ("enabled",),
    "spec.storage": ("type", "etcd", "kine"),
    "spec.storage.etcd": ("peerAddress", "externalCluster", "extraArgs", "ca"),
    "spec.storage.kine": ("dataSource",),
}
ENUMS = {
    "spec.network.provider": ("kuberouter", "calico", "custom"),
    "spec.storage.type": ("etcd", "kine"),
    "spec.images.default_pull_policy": ("Always", "Never", "IfNotPresent"),
}


def _strict(doc, path):
    if path not in SCHEMA or not isinstance(doc, dict):
        return
    for key, value in doc.items():
        if key not in SCHEMA[path]:
            raise ValueError(f'error unmarshaling JSON: while decoding JSON: json: unknown '
                             f'field "{key}"')
        _strict(value, f"{path}.{key}" if path else key)


def _get(doc, dotted):
    for part in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def validate_config(doc):
    """Raises ValueError with k0s's wording for what k0s would refuse."""
    if not isinstance(doc, dict):
        raise ValueError("error unmarshaling JSON: the config is not a map")
    if doc.get("apiVersion") not in (None, "k0s.k0sproject.io/v1beta1"):
        raise ValueError(f'no kind "ClusterConfig" is registered for version '
                         f'"{doc.get("apiVersion")}"')
    if doc.get("kind") not in (None, "ClusterConfig"):
        raise ValueError(f'no kind "{doc.get("kind")}" is registered for version '
                         '"k0s.k0sproject.io/v1beta1"')
    _strict(doc, "")
    for path, allowed in ENUMS.items():
        v = _get(doc, path)
        if v is not None and v not in allowed:
            raise ValueError(f"{path}: Unsupported value: {json.dumps(v)}: supported values: "
                             + ", ".join(f'"{a}"' for a in allowed))
    for path in ("spec.api.port", "spec.api.k0sApiPort"):
        v = _get(doc, path)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 65536):
            raise ValueError(f"{path}: Invalid value: {json.dumps(v)}: must be a valid port")
    sans = _get(doc, "spec.api.sans")
    if sans is not None and not (isinstance(sans, list) and all(isinstance(s, str) for s in sans)):
        raise ValueError("json: cannot unmarshal spec.api.sans into []string")
    enabled = _get(doc, "spec.telemetry.enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise ValueError("json: cannot unmarshal spec.telemetry.enabled into bool")
    addr = _get(doc, "spec.api.address")
    if addr is not None and not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", str(addr)):
        raise ValueError(f"spec.api.address: Invalid value: {json.dumps(addr)}: invalid IP "
                         "address")


def load_config(path):
    """The ClusterConfig at host path `path` (JSON, which bootstrap writes), validated; with
    no -c and no /etc/k0s/k0s.yaml, k0s runs on its defaults."""
    if path is None:
        if not state.host(CONFIG).exists():
            return {}
        path = CONFIG
    try:
        text = state.host(path).read_text()
    except OSError as e:
        state.die(f"Error: failed to load node config: open {path}: {e.strerror.lower()}")
    try:
        doc = json.loads(text)
    except ValueError:
        state.die(f"Error: failed to load node config: {path}: the stand-in reads JSON only "
                  "(bootstrap writes JSON, which is YAML)")
    try:
        validate_config(doc)
    except ValueError as e:
        state.die(f"Error: failed to load node config: {e}")
    return doc


def api_host(cfg):
    return _get(cfg, "spec.api.externalAddress") or _get(cfg, "spec.api.address") or "127.0.0.1"


def api_port(cfg, role):
    if role == "controller":
        return _get(cfg, "spec.api.k0sApiPort") or 9443
    return _get(cfg, "spec.api.port") or 6443


# --- join tokens (pkg/token: base64(gzip(kubeconfig))) --------------------------------------
TOKEN_USER = {"worker": "kubelet-bootstrap", "controller": "controller-bootstrap"}
TOKEN_USAGE = {"worker": "authentication", "controller": "controller-join"}


def encode_token(kubeconfig):
    return base64.b64encode(gzip.compress(kubeconfig.encode(), compresslevel=9)).decode()


def parse_kubeconfig(text):
    def field(name):
        m = re.search(rf"^\s*-?\s*{re.escape(name)}:\s*['\"]?([^'\"\s]+)", text, re.M)
        return m.group(1) if m else None

    user = re.search(r"^users:\s*\n-\s*name:\s*(\S+)", text, re.M)
    ca = field("certificate-authority-data")
    try:
        ca_pem = base64.b64decode(ca).decode() if ca else None
    except (ValueError, UnicodeDecodeError):
        ca_pem = None
    return {"server": field("server"), "ca_pem": ca_pem, "token": field("token"),
            "user": user.group(1) if user else None}


def decode_token(text):
    """The kubeconfig inside a join token, or raises ValueError with k0s's wording."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"failed to decode join token: illegal base64 data ({e})")
    try:
        kc = gzip.decompress(raw).decode()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise ValueError(f"failed to decode join token: gzip: {e}")
    return parse_kubeconfig(kc)


def read_token_file(path):
    p = state.host(path)
    try:
        st = p.stat()
        text = p.read_text()
    except OSError as e:
        state.die(f"Error: failed to read token file {path}: {e.strerror.lower()}")
    if st.st_mode & 0o077:
        state.die(f"Error: stand-in: {path} has mode {st.st_mode & 0o777:04o}; a join token "
                  "file must be 0600")
    if not text.strip():
        state.die(f"Error: the token file {path} is empty")
    return text.strip()


def check_join_token(c, text, role):
    """None if `text` is a join token valid for `role` in cluster `c`, else why not."""
    try:
        kc = decode_token(text)
    except ValueError as e:
        return str(e)
    if kc["user"] != TOKEN_USER[role]:
        return (f"the join token is for user {kc['user']!r}, not {TOKEN_USER[role]!r}: "
                f"it is not a {role} token")
    m = re.fullmatch(r"https://([^/]+):(\d+)/?", kc["server"] or "")
    cfg = (c.get("k0s") or {}).get("config") or {}
    want_port = api_port(cfg, role)
    if not m or int(m.group(2)) != want_port:
        return f"the join token's URL {kc['server']!r} is not https://<address>:{want_port}"
    if not c.get("ca_pem") or (kc["ca_pem"] or "").strip() != c["ca_pem"].strip():
        return ("x509: certificate signed by unknown authority (the join token's CA is not "
                "the cluster's)")
    why = state.check_token(c, kc["token"], TOKEN_USAGE[role])
    if why:
        return f"401 Unauthorized: {why}"
    if not any(c["api_up"].values()):
        return f"dial tcp {m.group(1)}:{m.group(2)}: connect: connection refused"
    return None


# --- install, start, stop ------------------------------------------------------------------
def k0s_path():
    """The stand-in's own path as the node sees it (os.Executable in k0s)."""
    me = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    root = str(state.ROOT).rstrip("/")
    if me.startswith(root + "/"):
        return me[len(root):]
    return DEFAULT_BIN


def unit_path(role):
    return f"/etc/systemd/system/{UNITS[role]}"


def unit_text(role, args, env):
    """pkg/install/systemd_linux.go's template, as kardianos/service fills it in."""
    exe = k0s_path()
    lines = ["[Unit]", "Description=k0s - Zero Friction Kubernetes",
             "Documentation=https://docs.k0sproject.io", f"ConditionFileIsExecutable={exe}",
             "", "After=network-online.target", "Wants=network-online.target", "",
             "[Service]", "StartLimitInterval=5", "StartLimitBurst=10",
             "ExecStart=" + " ".join([exe, role, *args])]
    lines += [f'Environment="{e}"' for e in env]
    lines += ["", "RestartSec=10", "Delegate=yes", "KillMode=process", "LimitCORE=infinity",
              "TasksMax=infinity", "TimeoutStartSec=0", "LimitNOFILE=999999", "Restart=always",
              "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def installed_role():
    for role in ("controller", "worker"):
        if state.host(unit_path(role)).exists():
            return role
    return None


def unit_args(role):
    """The flags in the installed unit's ExecStart, parsed."""
    text = state.host(unit_path(role)).read_text()
    m = re.search(r"^ExecStart=(.*)$", text, re.M)
    words = m.group(1).split() if m else []
    spec, aliases = spec_for(role)
    flags, _ = state.parse_flags(words[2:], spec, aliases)
    return flags


def cmd_install(args):
    if not args or args[0] not in ("controller", "worker", "server"):
        if args and not args[0].startswith("-"):
            state.die(f'Error: unknown command "{args[0]}" for "k0s install"')
        state.die("Error: k0s install needs a subcommand: controller or worker")
    role = "controller" if args[0] in ("controller", "server") else "worker"
    spec, aliases = spec_for(role, install=True)
    flags, pos = state.parse_flags(args[1:], spec, aliases)
    refuse_token_args(pos, f"k0s install {role}")
    check_flag_values(flags)
    if role == "controller":
        load_config(flags.get("config"))
    for e in flags.get("env") or []:
        if "=" not in e:
            state.die(f'Error: invalid environment variable "{e}": want NAME=value')
    joined = state.host(f"{data_dir(flags)}/pki/ca.crt" if role == "controller"
                        else f"{data_dir(flags)}/kubelet.conf").exists()
    if flags.get("token-file") and not joined:
        text = read_token_file(flags["token-file"])
        with state.cluster() as c:
            why = check_join_token(c, text, role)
        if why:
            state.die(f"Error: {why}")
    path = state.host(unit_path(role))
    if path.exists() and not flags.get("force"):
        state.die(f"Error: failed to install {role} service: Init already exists: "
                  f"{unit_path(role)}")
    state.write_file(unit_path(role), unit_text(role, to_args(flags), flags.get("env") or []),
                     0o644)
    # kardianos/service runs `systemctl enable` on install: the stand-in systemctl's marker.
    enabled = state.ROOT / ".standin-systemd" / "enabled"
    enabled.mkdir(parents=True, exist_ok=True)
    (enabled / UNITS[role]).touch()
    if flags.get("start"):
        return systemctl("start", UNITS[role])
    return 0


def systemctl(verb, unit):
    return subprocess.run(["systemctl", verb, unit]).returncode


def cmd_start_stop(verb, args):
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    _, pos = state.parse_flags(args, spec, ROOT_ALIASES)
    if pos:
        state.die(f'Error: unknown command "{pos[0]}" for "k0s {verb}"')
    role = installed_role()
    if role is None:
        state.die("Error: failed to find installed k0s service: k0s has not been installed as "
                  "a service")
    return systemctl(verb, UNITS[role])


# --- the daemon ----------------------------------------------------------------------------
def status_file():
    return state.host(f"{RUN_DIR}/standin-status.json")


def node_taints(flags, controller):
    taints = split_list(flags.get("taints"))
    if controller and not flags.get("no-taints") and not flags.get("single"):
        taints.insert(0, "node-role.kubernetes.io/master:NoSchedule")
    return taints


def node_ip(flags):
    m = re.search(r"--node-ip[= ](\S+)", flags.get("kubelet-extra-args") or "")
    return m.group(1) if m else ""


def register(c, name, flags, role, address):
    fields = {"version": state.VERSION, "ready": True, "distro": "k0s"}
    if name not in c["nodes"]:
        # Labels and taints only count at the first registration (docs worker-node-config.md).
        labels = check_flag_values(flags)
        if role == "control-plane":
            labels.update({"node.k0sproject.io/role": "control-plane",
                           "node-role.kubernetes.io/control-plane": "true"})
        fields.update(role=role, labels=labels, address=address,
                      taints=node_taints(flags, role == "control-plane"))
    state.register_node(c, name, **fields)


def daemon_controller(flags, c, name):
    d = data_dir(flags)
    cfg = load_config(flags.get("config"))
    k = c.setdefault("k0s", {})
    ca_crt = state.host(f"{d}/pki/ca.crt")
    if not ca_crt.exists() and flags.get("token-file"):
        why = check_join_token(c, read_token_file(flags["token-file"]), "controller")
        if why:
            state.die(f"Error: failed to join controller: {why}")
        peer = (_get(cfg, "spec.storage.etcd.peerAddress") or _get(cfg, "spec.api.address")
                or "")
        if peer and peer in c["etcd"].values():
            # etcd's MemberAdd refuses a peer URL a member (a dead one, say) still has.
            state.die(f"Error: failed to join controller: etcdserver: Peer URLs already exists "
                      f"(https://{peer}:2380)")
        state.write_file(f"{d}/pki/ca.crt", c["ca_pem"], 0o644)
        state.write_file(f"{d}/pki/ca.key", k.get("ca_key") or "", 0o600)
    elif not ca_crt.exists():
        others = [n for n, up in c["api_up"].items() if up and n != name]
        if others:
            state.die(f"Error: stand-in: the fake cluster already runs controller(s) {others}; "
                      "a second controller without --token-file would start a new cluster")
        # A new cluster: the fake cluster forgets any previous one.
        for key, empty in (("nodes", {}), ("etcd", {}), ("tokens", {}), ("api_up", {}),
                           ("applied", [])):
            c[key] = empty
        c["k0s"] = k = {}
        state.host(f"{d}/pki").mkdir(parents=True, exist_ok=True)
        os.chmod(state.host(f"{d}/pki"), 0o751)
        c["ca_pem"] = state.make_ca(f"{d}/pki/ca.crt", f"{d}/pki/ca.key", "kubernetes-ca")
        k["ca_key"] = state.host(f"{d}/pki/ca.key").read_text()
        k["config"] = cfg
        c["version"] = state.VERSION
    elif (c.get("ca_pem") or "").strip() != ca_crt.read_text().strip():
        state.die(f"Error: stand-in: {d}/pki/ca.crt is not the fake cluster's CA")
    for f in ("sa.key", "sa.pub", "etcd/ca.crt", "etcd/ca.key"):
        if not state.host(f"{d}/pki/{f}").exists():
            state.write_file(f"{d}/pki/{f}", f"stand-in {f}\n", 0o600)
    state.write_file(f"{d}/pki/admin.conf",
                     state.kubeconfig_text("https://127.0.0.1:6443", c["ca_pem"], "admin"), 0o600)
    for sub in ("bin", "manifests", "etcd"):
        state.host(f"{d}/{sub}").mkdir(parents=True, exist_ok=True)
    storage = _get(cfg, "spec.storage.type") or "etcd"
    address = _get(cfg, "spec.api.address") or ""
    if storage == "etcd":
        c["etcd"][name] = _get(cfg, "spec.storage.etcd.peerAddress") or address or "127.0.0.1"
    c["api_up"][name] = True
    if state.version_key(state.VERSION) > state.version_key(c.get("version")):
        c["version"] = state.VERSION
    k.setdefault("controllers", {})[name] = {
        "version": state.VERSION, "address": address, "root": str(state.ROOT),
        "single": bool(flags.get("single")), "storage": storage}
    if flags.get("enable-worker") or flags.get("single"):
        state.write_file(f"{d}/kubelet.conf", state.kubeconfig_text(
            "https://127.0.0.1:6443", c["ca_pem"], f"system:node:{name}"), 0o600)
        register(c, name, flags, "control-plane", address)


def daemon_worker(flags, c, name):
    d = data_dir(flags)
    conf = state.host(f"{d}/kubelet.conf")
    if not conf.exists():
        if not flags.get("token-file"):
            state.die("Error: normal worker needs a join token: use --token-file")
        text = read_token_file(flags["token-file"])
        why = check_join_token(c, text, "worker")
        if why:
            state.die(f"Error: failed to bootstrap kubelet client configuration: {why}")
        server = decode_token(text)["server"]
        nllb = _get((c.get("k0s") or {}).get("config") or {},
                    "spec.network.nodeLocalLoadBalancing") or {}
        if nllb.get("enabled"):
            # k0s points the kubelet at the node-local envoy, which balances over every
            # controller.
            port = (nllb.get("envoyProxy") or {}).get("apiServerBindPort") or 7443
            server = f"https://127.0.0.1:{port}"
        state.write_file(f"{d}/kubelet.conf", state.kubeconfig_text(
            server, c["ca_pem"], f"system:node:{name}"), 0o600)
    state.host(f"{d}/bin").mkdir(parents=True, exist_ok=True)
    register(c, name, flags, "worker", node_ip(flags))


DROPIN_DIR = "/etc/k0s/containerd.d"


def check_containerd_dropins():
    """k0s merges every /etc/k0s/containerd.d/*.toml into its containerd's config when it
    starts: from 1.36 it runs containerd 2.x, which refuses a version 2 drop-in; before,
    containerd 1.7, which refuses version 3."""
    folder = state.host(DROPIN_DIR)
    if not folder.is_dir():
        return
    want = 3 if state.version_key(state.VERSION)[:2] >= (1, 36) else 2
    for f in sorted(folder.glob("*.toml")):
        try:
            doc = tomllib.loads(f.read_text())
        except (OSError, ValueError) as e:
            state.die(f"Error: failed to start containerd: {DROPIN_DIR}/{f.name}: {e}")
        if doc.get("version") != want:
            state.die(f"Error: failed to start containerd: {DROPIN_DIR}/{f.name}: config "
                      f"version {doc.get('version')} is not supported by k0s {state.VERSION} "
                      f"(version {want} expected)")


def cmd_daemon(role, args):
    spec, aliases = spec_for(role)
    flags, pos = state.parse_flags(args, spec, aliases)
    refuse_token_args(pos, f"k0s {role}")
    name = state.hostname()
    if os.environ.get("STANDIN_STOP") == "1":
        with state.cluster() as c:
            if role == "controller":
                c["api_up"][name] = False
            if name in c["nodes"]:
                c["nodes"][name]["ready"] = False
        status_file().unlink(missing_ok=True)
        return 0
    if os.environ.get("STANDIN_DAEMON") != "1":
        state.die(f"k0s {role}: the stand-in runs daemons only under the stand-in systemctl "
                  "(STANDIN_DAEMON=1)")
    check_flag_values(flags)
    if role == "worker" or flags.get("enable-worker") or flags.get("single"):
        check_containerd_dropins()
    with state.cluster() as c:
        (daemon_controller if role == "controller" else daemon_worker)(flags, c, name)
    workloads = role == "worker" or bool(flags.get("enable-worker") or flags.get("single"))
    shown = "worker" if role == "worker" else ("controller+worker" if workloads else "controller")
    state.write_file(f"{RUN_DIR}/standin-status.json", json.dumps({
        "Version": state.VERSION, "Pid": os.getpid(), "Role": shown, "Workloads": workloads,
        "SingleNode": bool(flags.get("single")), "Args": [k0s_path(), role, *args],
    }), 0o644)
    return 0


# --- status, tokens, kubeconfig, kubectl, etcd, reset ---------------------------------------
NOT_RUNNING = 'Error: status: can\'t get "status" via "/run/k0s/status.sock"'


def running_status():
    """The status of the running k0s, or None when its unit is not active."""
    role = installed_role()
    if role is None or not state.unit_active(UNITS[role]):
        return None
    try:
        st = json.loads(status_file().read_text())
    except (OSError, ValueError):
        flags = unit_args(role)
        workloads = role == "worker" or bool(flags.get("enable-worker") or flags.get("single"))
        st = {"Version": state.VERSION, "Pid": os.getpid(), "Workloads": workloads,
              "Role": "worker" if role == "worker" else
              ("controller+worker" if workloads else "controller"),
              "SingleNode": bool(flags.get("single")), "Args": []}
    st.update({"SysInit": "linux-systemd", "StubFile": unit_path(role)})
    return st


def cmd_status(args):
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    spec["output"] = True
    aliases = dict(ROOT_ALIASES)
    aliases["o"] = "output"
    flags, pos = state.parse_flags(args, spec, aliases)
    if pos:
        state.die(f'Error: unknown command "{pos[0]}" for "k0s status"')
    out = flags.get("output", "")
    if out not in ("", "json", "yaml"):
        state.die(f'Error: unknown output format "{out}"')
    st = running_status()
    if st is None:
        state.die(NOT_RUNNING)
    if out == "json":
        print(json.dumps(st, indent=2))
    elif out == "yaml":
        for key, v in st.items():
            print(f"{key}: {json.dumps(v)}")
    else:
        print(f"Version: {st['Version']}\nProcess ID: {st['Pid']}\nRole: {st['Role']}\n"
              f"Workloads: {str(st['Workloads']).lower()}\n"
              f"SingleNode: {str(st['SingleNode']).lower()}\n"
              f"Init System: {st['SysInit']}\nService file: {st['StubFile']}")
    return 0


def local_config():
    """This controller's ClusterConfig (the unit's --config), else the cluster's."""
    if installed_role() == "controller":
        return load_config(unit_args("controller").get("config"))
    with state.cluster() as c:
        return (c.get("k0s") or {}).get("config") or {}


def cmd_token(args):
    if not args or args[0] not in ("create", "list", "invalidate"):
        state.die(f'Error: unknown command "{args[0] if args else ""}" for "k0s token"')
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    spec.update({"role": True, "expiry": True, "wait": False, "config": True,
                 "kubeconfig": True})
    aliases = dict(ROOT_ALIASES)
    aliases["c"] = "config"
    flags, pos = state.parse_flags(args[1:], spec, aliases)
    if args[0] != "create":
        state.die(f"Error: stand-in: `k0s token {args[0]}` is not used by bootstrap")
    if pos:
        state.die(f'Error: unknown command "{pos[0]}" for "k0s token create"')
    role = flags.get("role", "worker")
    if role not in ("worker", "controller"):
        state.die(f'Error: unsupported role "{role}"; supported roles are "worker" and '
                  '"controller"')
    try:
        ttl = state.parse_duration(flags.get("expiry", "0s"))
    except ValueError as e:
        state.die(f'Error: invalid argument "{flags["expiry"]}" for "--expiry" flag: {e}')
    st = running_status()
    if st is None or st["Role"] == "worker":
        state.die("Error: failed to create join token: " + NOT_RUNNING[len("Error: "):])
    if st.get("SingleNode"):
        state.die("Error: refusing to create a join token: cannot join into a single node "
                  "cluster")
    cfg = local_config()
    if role == "controller" and (_get(cfg, "spec.storage.type") or "etcd") != "etcd":
        state.die("Error: refusing to create a controller token: the storage is not joinable")
    ca = state.host(f"{data_dir(unit_args('controller'))}/pki/ca.crt").read_text()
    tid, secret = state.new_token()
    with state.cluster() as c:
        usages = ["controller-join"] if role == "controller" else ["authentication", "signing"]
        state.add_token(c, tid, secret, ttl if ttl > 0 else None, usages)
    server = f"https://{api_host(cfg)}:{api_port(cfg, role)}"
    print(encode_token(state.kubeconfig_text(server, ca, TOKEN_USER[role],
                                             token=f"{tid}.{secret}")))
    return 0


def cmd_kubeconfig(args):
    if not args or args[0] != "admin":
        state.die("Error: stand-in: only `k0s kubeconfig admin` is implemented")
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    flags, pos = state.parse_flags(args[1:], spec, ROOT_ALIASES)
    path = state.host(f"{data_dir(flags)}/pki/admin.conf")
    if not path.exists():
        state.die(f"Error: failed to read admin config: open {data_dir(flags)}/pki/admin.conf: "
                  "no such file or directory")
    cfg = local_config()
    text = path.read_text().replace("https://127.0.0.1:6443",
                                    f"https://{api_host(cfg)}:{api_port(cfg, 'worker')}")
    sys.stdout.write(text)
    return 0


def cmd_kubectl(args):
    from kube.kubectl import kubectl_main

    d = DATA_DIR
    rest = []
    i = 0
    while i < len(args):  # `k0s kubectl` takes --data-dir itself (GetKubeCtlFlagSet)
        if args[i] == "--data-dir" and i + 1 < len(args):
            d, i = args[i + 1], i + 2
            continue
        if args[i].startswith("--data-dir="):
            d = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return kubectl_main(rest, default_kubeconfig=state.host(f"{d}/pki/admin.conf"))


def cmd_etcd(args):
    if not args or args[0] not in ("member-list", "leave"):
        state.die(f'Error: unknown command "{args[0] if args else ""}" for "k0s etcd"')
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    spec.update({"config": True, "peer-address": True})
    aliases = dict(ROOT_ALIASES)
    aliases["c"] = "config"
    flags, pos = state.parse_flags(args[1:], spec, aliases)
    if pos:
        state.die(f'Error: unknown command "{pos[0]}" for "k0s etcd {args[0]}"')
    st = running_status()
    if st is None or st["Role"] == "worker":
        state.die("Error: can't connect to etcd: this node runs no k0s controller")
    with state.cluster() as c:
        if args[0] == "member-list":
            print(json.dumps({"members": {n: f"https://{p}:2380"
                                          for n, p in sorted(c["etcd"].items())}}))
            return 0
        peer = flags.get("peer-address") or _get(local_config(), "spec.storage.etcd.peerAddress")
        if not peer:
            state.die("Error: can't leave etcd cluster: peer address is empty")
        names = [n for n, p in c["etcd"].items() if p == peer]
        if not names:
            state.die(f"Error: can't leave etcd cluster: no member with peer address "
                      f"https://{peer}:2380")
        for n in names:
            del c["etcd"][n]
    print(json.dumps({"level": "info", "msg": "Successfully deleted",
                      "peerAddress": f"https://{peer}:2380"}), file=sys.stderr)
    return 0


def remove_tree(p):
    p = state.host(p)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def cmd_reset(args):
    spec = dict(ROOT_FLAGS)
    spec.update(PERSISTENT)
    spec.update({"config": True, "cri-socket": True, "kubelet-root-dir": True})
    aliases = dict(ROOT_ALIASES)
    aliases["c"] = "config"
    flags, pos = state.parse_flags(args, spec, aliases)
    if pos:
        state.die(f'Error: unknown command "{pos[0]}" for "k0s reset"')
    if any(state.unit_active(u) for u in UNITS.values()):
        state.die("Error: k0s seems to be running! please stop k0s before reset")
    d = data_dir(flags)
    for p in (d, RUN_DIR, flags.get("kubelet-root-dir") or f"{d}/kubelet"):
        remove_tree(p)
    for role, unit in UNITS.items():
        remove_tree(unit_path(role))
        (state.ROOT / ".standin-systemd" / "enabled" / unit).unlink(missing_ok=True)
    with state.cluster() as c:
        c["api_up"].pop(state.hostname(), None)
    print("k0s cleanup operations done.", file=sys.stderr)
    return 0


def k0s_main(args, version=None):
    if version:
        state.VERSION = version
    if not args:
        state.die("Error: stand-in: k0s needs a command")
    cmd, rest = args[0], args[1:]
    if cmd == "version":
        print(state.VERSION)
        return 0
    handlers = {"install": cmd_install, "status": cmd_status, "token": cmd_token,
                "kubeconfig": cmd_kubeconfig, "kubectl": cmd_kubectl, "etcd": cmd_etcd,
                "reset": cmd_reset}
    if cmd in ("start", "stop"):
        return cmd_start_stop(cmd, rest)
    if cmd in ("controller", "server", "worker"):
        return cmd_daemon("worker" if cmd == "worker" else "controller", rest)
    if cmd in handlers:
        return handlers[cmd](rest)
    state.die(f'Error: unknown command "{cmd}" for "k0s"')


def main(name, version, argv):
    """The brief's entry point: argv includes the program name."""
    state.NAME = name
    return k0s_main(list(argv[1:]), version=version)
