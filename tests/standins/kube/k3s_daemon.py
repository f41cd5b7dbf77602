"""`k3s server` / `k3s agent` as the stand-in systemctl runs them (STANDIN_DAEMON=1): the
start is done synchronously (exit 0 = the unit came up, 1 = it failed); with
STANDIN_STOP=1 the unit is being stopped and the node's apiserver goes down.

First server (no `server`, not yet initialised): real CA, K10 token files, k3s.yaml,
kubelet.kubeconfig, the cluster state. Extra server / agent (`server: https://…`): the
join checks of distros.md §1.2-1.3 (CA hash, credential, critical values, node
password). A node already initialised with the cluster's CA just restarts: it re-registers
with this binary's version (that is how an upgrade shows)."""
import hashlib
import os
import secrets

from kube import state
from kube.k3s import (CRITICAL_DEFAULTS, KUBECONFIG, as_list, critical, data_dir, first,
                      load_config, node_name, read_secret_file, refuse_argv_token)

NODE_PASSWORD = "/etc/rancher/node/password"


def daemon(cmd, args):
    if os.environ.get("STANDIN_STOP") == "1":
        return stop(cmd, args)
    refuse_argv_token(args)
    cfg = load_config(cmd, args)
    ddir = data_dir(cfg)
    name = node_name(cfg)
    with state.cluster() as c:
        local_ca = state.host(f"{ddir}/server/tls/server-ca.crt" if cmd == "server"
                              else f"{ddir}/agent/server-ca.crt")
        initialised = (local_ca.is_file() and c.get("ca_pem")
                       and local_ca.read_text() == c["ca_pem"]
                       and (state.host(f"{ddir}/server/token").exists() if cmd == "server"
                            else state.host(f"{ddir}/agent/kubelet.kubeconfig").exists()))
        if initialised:
            restart(c, cmd, cfg, ddir, name)
        elif cmd == "agent" or cfg.get("server"):
            join(c, cmd, cfg, ddir, name)
        else:
            init(c, cfg, ddir, name)
    print(f"k3s {cmd}: node {name} is up ({state.VERSION})")
    return 0


def stop(cmd, args):
    """Best effort, never fails: the node's apiserver (servers) and kubelet go down."""
    try:
        cfg = load_config(cmd, args)
        name = node_name(cfg)
    except SystemExit:
        name = state.hostname()
    with state.cluster() as c:
        node = c["nodes"].get(name)
        if node is not None and node.get("root") == str(state.ROOT):
            node["ready"] = False
            if name in c["api_up"]:
                c["api_up"][name] = False
    return 0


# --- shared pieces ---------------------------------------------------------------------------


def node_password():
    """This root's node password (created on first use), as k3s keeps it."""
    p = state.host(NODE_PASSWORD)
    if not p.is_file():
        state.write_file(p, secrets.token_hex(16) + "\n", 0o600)
    return p.read_text().strip()


def check_password(c, name, password):
    node = c["nodes"].get(name)
    if node is not None and node.get("password") and node["password"] != password:
        state.die(f"Node password rejected, duplicate hostname or contents of "
                  f"'{NODE_PASSWORD}' may not match server node-passwd entry, try enabling a "
                  f"unique node name with the --with-node-id flag (node {name})")


def labels_taints(cfg):
    labels = {}
    for item in as_list(cfg.get("node-label")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            state.die(f"k3s: invalid node-label {item!r}: want key=value")
        labels[key] = value
    taints = []
    for item in as_list(cfg.get("node-taint")):
        kv, colon, effect = item.rpartition(":")
        if not colon or not kv or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            state.die(f"k3s: invalid node-taint {item!r}: want key[=value]:Effect")
        taints.append(item)
    return labels, taints


def write_server_files(c, cfg, ddir, name):
    """What every server has once up: CA, token files, k3s.yaml."""
    k = c["k3s"]
    state.write_file(f"{ddir}/server/tls/server-ca.crt", c["ca_pem"], 0o644)
    state.write_file(f"{ddir}/server/tls/server-ca.key", k["ca_key"], 0o600)
    token = f"K10{k['ca_hash']}::server:{k['secret']}"
    state.write_file(f"{ddir}/server/token", token + "\n", 0o600)
    link(f"{ddir}/server/node-token", "token")
    if k.get("agent_secret"):
        state.write_file(f"{ddir}/server/agent-token",
                         f"K10{k['ca_hash']}::node:{k['agent_secret']}\n", 0o600)
    else:
        link(f"{ddir}/server/agent-token", "token")
    mode_text = str(cfg.get("write-kubeconfig-mode") or "0600")
    try:
        mode = int(mode_text, 8)
    except ValueError:
        state.die(f"k3s: invalid write-kubeconfig-mode {mode_text!r}")
    path = cfg.get("write-kubeconfig") or KUBECONFIG
    state.write_file(path, state.kubeconfig_text("https://127.0.0.1:6443", c["ca_pem"], "default"), mode)


def write_agent_files(c, ddir, name):
    state.write_file(f"{ddir}/agent/server-ca.crt", c["ca_pem"], 0o644)
    state.write_file(f"{ddir}/agent/client-ca.crt", c["ca_pem"], 0o644)
    state.write_file(f"{ddir}/agent/kubelet.kubeconfig",
                     state.kubeconfig_text("https://127.0.0.1:6444", c["ca_pem"],
                                           f"system:node:{name}"), 0o600)


def link(path, target):
    p = state.host(path)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)


def register(c, cmd, cfg, name, password):
    labels, taints = labels_taints(cfg)
    address = first(cfg, "node-ip")
    server = cmd == "server"
    node = c["nodes"].get(name) or {}
    state.register_node(c, name, role="control-plane" if server else "worker",
                        version=state.VERSION, labels={**node.get("labels", {}), **labels},
                        taints=taints, distro="k3s", address=address,
                        root=str(state.ROOT), password=password, ready=True)
    if server:
        c["api_up"][name] = True
        if c["k3s"].get("datastore") == "etcd":
            c["etcd"][name] = f"https://{address or '127.0.0.1'}:2380"


def apply_manifests(c, ddir):
    """The deploy controller applies server/manifests/*.yaml (errors only get logged)."""
    from kube.kubectl_ops import _yaml_objects

    d = state.host(f"{ddir}/server/manifests")
    if not d.is_dir():
        return
    for f in sorted(d.iterdir()):
        if f.suffix in (".yaml", ".yml") and f.is_file():
            try:
                objs = _yaml_objects(f.read_text(), str(f))
            except SystemExit:
                print(f"k3s: failed to apply {f}: not valid", flush=True)
                continue
            for kind, obj in objs:
                if f"{kind}/{obj}" not in c["applied"]:
                    c["applied"].append(f"{kind}/{obj}")


# --- the three starts ----------------------------------------------------------------------


def init(c, cfg, ddir, name):
    others = [n for n, v in c["nodes"].items() if v.get("root") != str(state.ROOT)]
    if c.get("ca_pem") and others:
        state.die(f"k3s stand-in: this stand-in cluster was already initialised (nodes "
                  f"{', '.join(sorted(others))}); a second first server would start another "
                  "cluster. Set `server` to join it")
    c.clear()
    c.update(nodes={}, etcd={}, tokens={}, ca_pem=None, version=None, api_up={}, applied=[])
    secret = read_secret_file(cfg, "token-file")
    cert = state.host(f"{ddir}/server/tls/server-ca.crt")
    key = state.host(f"{ddir}/server/tls/server-ca.key")
    custom = cert.is_file() and key.is_file()
    if not custom:
        state.make_ca(cert, key, "k3s-server-ca")
    ca_hash = hashlib.sha256(cert.read_bytes()).hexdigest()
    if secret and secret.startswith("K10"):
        want, _, cred = secret[3:].partition("::")
        if want != ca_hash:
            state.die("token CA hash does not match the Cluster CA certificate hash")
        secret = cred.split(":", 1)[1] if cred.startswith("server:") else cred
    elif secret and "::" in secret:
        state.die("k3s: invalid token format")
    agent_secret = read_secret_file(cfg, "agent-token-file")
    if agent_secret and "::" in agent_secret:
        agent_secret = agent_secret.split("::", 1)[1].removeprefix("node:")
    c["ca_pem"] = cert.read_text()
    c["k3s"] = {
        "secret": secret or secrets.token_hex(16),
        "agent_secret": agent_secret,
        "ca_hash": ca_hash,
        "ca_key": key.read_text(),
        "critical": critical(cfg),
        "datastore": "etcd" if cfg.get("cluster-init") else "sqlite",
    }
    c["version"] = state.VERSION
    password = node_password()
    write_server_files(c, cfg, ddir, name)
    write_agent_files(c, ddir, name)
    if cfg.get("cluster-init"):
        state.write_file(f"{ddir}/server/db/etcd/name", name + "\n", 0o600)
    register(c, "server", cfg, name, password)
    apply_manifests(c, ddir)


def restart(c, cmd, cfg, ddir, name):
    k = c["k3s"]
    if cmd == "server":
        secret = read_secret_file(cfg, "token-file")
        if secret:
            cred = secret.split("::", 1)[1] if secret.startswith("K10") else secret
            if cred.removeprefix("server:") != k["secret"]:
                state.die("bootstrap data already found and encrypted with different token")
    if name not in c["nodes"]:
        if cmd == "server" and state.host(f"{ddir}/server/db/etcd").is_dir():
            state.die("etcdserver: the member has been permanently removed from the cluster; "
                      f"wipe {ddir}/server/db before rejoining")
    password = node_password()
    check_password(c, name, password)
    if cmd == "server":
        write_server_files(c, cfg, ddir, name)
    write_agent_files(c, ddir, name)
    register(c, cmd, cfg, name, password)
    if cmd == "server":
        apply_manifests(c, ddir)


def join(c, cmd, cfg, ddir, name):
    url = cfg.get("server")
    if not url:
        state.die("k3s agent: --server is required")
    if not str(url).startswith("https://"):
        state.die(f"k3s: server URL {url!r} must start with https://")
    token = read_secret_file(cfg, "token-file")
    if not token:
        state.die("k3s: --token is required (set token-file)")
    if not token.startswith("K10") or "::" not in token:
        state.die("k3s stand-in: token-file must hold the full K10<ca-hash>::<credentials> token; "
                  "the short form does not pin the cluster CA (bootstrap policy)")
    hostport = url[len("https://"):].rstrip("/")
    if not c.get("ca_pem") or not any(c["api_up"].values()):
        state.die(f'failed to get CA certs: Get "{url}/cacerts": dial tcp {hostport}: '
                  "connect: connection refused")
    k = c["k3s"]
    want, _, cred = token[3:].partition("::")
    if want != hashlib.sha256(c["ca_pem"].encode()).hexdigest():
        state.die("token CA hash does not match the Cluster CA certificate hash")
    ok = cred == f"server:{k['secret']}"
    if cmd == "agent" and not ok:
        ok = (k.get("agent_secret") and cred == f"node:{k['agent_secret']}") or (
            "." in cred and state.check_token(c, cred, "authentication") is None)
    if not ok:
        state.die(f"failed to validate token: {url}/v1-k3s/server-bootstrap: 401 Unauthorized")
    if cmd == "server":
        if k.get("datastore") != "etcd":
            state.die("k3s: cannot join a server that does not run embedded etcd (no cluster-init)")
        mine = critical(cfg, explicit_only=False)
        for key in CRITICAL_DEFAULTS:
            if mine.get(key) != k["critical"].get(key):
                state.die(f"critical configuration value mismatch between servers: {key} "
                          f"(this server {mine.get(key)!r}, the cluster {k['critical'].get(key)!r})")
        agent_secret = read_secret_file(cfg, "agent-token-file")
        if agent_secret and agent_secret.split("::")[-1].removeprefix("node:") != k.get("agent_secret"):
            state.die("critical configuration value mismatch between servers: agent-token")
    password = node_password()
    check_password(c, name, password)
    if cmd == "server":
        write_server_files(c, cfg, ddir, name)
        state.write_file(f"{ddir}/server/db/etcd/name", name + "\n", 0o600)
    write_agent_files(c, ddir, name)
    register(c, cmd, cfg, name, password)
