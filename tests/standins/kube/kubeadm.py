"""kubeadm stand-in: version, init (+ phase upload-certs), join, token create|list, certs
certificate-key, reset, upgrade apply|node.

Like upstream kubeadm (distros.md §3; field sets from the v1beta4/v1beta3 Go types): unknown
flags fail as pflag does; config files are decoded strictly (`strict decoding error: unknown
field "x"`); v1beta4 needs Kubernetes >= 1.31 and its extraArgs are lists of {name, value}
(v1beta3: maps); kubernetesVersion must be pinned (else kubeadm would fetch "stable-1" from
dl.k8s.io). Our policy on top: secrets (tokens, certificate keys) never on argv, config files
0600, discovery never unsafeSkipCAVerification. Config files are `---`-separated JSON
documents (which is YAML; bootstrap writes JSON). State in the fake cluster under
c["kubeadm"]: {certificate_key, certs_uploaded (epoch), certs {pki file: text}, endpoint,
api_version, kubelet_config, upgraded {node: version}}.
"""
import json
import re
import secrets
import shutil
import subprocess
import sys
import time

from kube import state

KUBEADM_GROUP = "kubeadm.k8s.io"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
CERTS_TTL = 2 * 3600  # DefaultCertTokenDuration: the kubeadm-certs Secret lives 2 h
CRI_SOCKETS = ("unix:///var/run/containerd/containerd.sock", "unix:///var/run/crio/crio.sock",
               "unix:///var/run/cri-dockerd.sock")
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"

# --- flags (cmd/kubeadm/app/cmd/*.go) -------------------------------------------------------
GLOBAL = {"v": True, "rootfs": True, "log-file": True, "one-output": False,
          "add-dir-header": False, "skip-headers": False, "skip-log-headers": False}
ALIASES = {"v": "v"}
INIT = {"apiserver-advertise-address": True, "apiserver-bind-port": True,
        "apiserver-cert-extra-sans": True, "cert-dir": True, "certificate-key": True,
        "config": True, "control-plane-endpoint": True, "cri-socket": True, "dry-run": False,
        "feature-gates": True, "ignore-preflight-errors": "list", "image-repository": True,
        "kubernetes-version": True, "node-name": True, "patches": True,
        "pod-network-cidr": True, "service-cidr": True, "service-dns-domain": True,
        "skip-certificate-key-print": False, "skip-phases": "list", "skip-token-print": False,
        "token": True, "token-ttl": True, "upload-certs": False}
JOIN = {"apiserver-advertise-address": True, "apiserver-bind-port": True,
        "certificate-key": True, "config": True, "control-plane": False, "cri-socket": True,
        "discovery-file": True, "discovery-token": True,
        "discovery-token-ca-cert-hash": "list",
        "discovery-token-unsafe-skip-ca-verification": False, "dry-run": False,
        "ignore-preflight-errors": "list", "node-name": True, "patches": True,
        "skip-phases": "list", "tls-bootstrap-token": True, "token": True}
# Flags that may be given with --config (validation.isAllowedFlag; `skip-*` too).
MIX_OK = {"config", "ignore-preflight-errors", "dry-run", "kubeconfig", "node-name",
          "upload-certs", "print-join-command", "rootfs", "v", "log-file", "yes",
          "one-output", "add-dir-header", "skip-headers", "skip-log-headers"}
# Our policy (DESIGN.md "Secrets stay secret"): argv is world-readable in /proc.
SECRET_FLAGS = ("token", "certificate-key", "discovery-token", "tls-bootstrap-token")


def parse(args, spec, aliases=None):
    full = dict(GLOBAL)
    full.update(spec)
    al = dict(ALIASES)
    al.update(aliases or {})
    flags, pos = state.parse_flags(args, full, al, error_prefix="error")
    for name in SECRET_FLAGS:
        if name in flags:
            state.die(f"stand-in kubeadm: --{name} on the command line is refused: argv is "
                      "world-readable in /proc; put it in the --config file (0600)")
    if "config" in flags:
        mixed = sorted(f for f in flags if f not in MIX_OK and not f.startswith("skip-"))
        if mixed:
            state.die(f"can not mix '--config' with arguments {mixed}")
    if flags.get("dry-run"):
        state.die("stand-in kubeadm: --dry-run is not implemented")
    return flags, pos


def split_list(values):
    return [p for v in values or [] for p in v.split(",") if p]


# --- config schema (k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4, v1beta3) --------
ARGS = "args"  # v1beta4: [{name, value}]; v1beta3: {name: value}
ARG = {"name": None, "value": None}
ENV = {"name": None, "value": None, "valueFrom": None}
VOLUME = {"name": None, "hostPath": None, "mountPath": None, "readOnly": None,
          "pathType": None}
TAINT = {"key": None, "value": None, "effect": None, "timeAdded": None}
NODE_REGISTRATION = {"name": None, "criSocket": None, "taints": [TAINT], "kubeletExtraArgs": ARGS,
                     "ignorePreflightErrors": None, "imagePullPolicy": None,
                     "imagePullSerial": None}
ENDPOINT = {"advertiseAddress": None, "bindPort": None}
PATCHES = {"directory": None}
TIMEOUTS = {k: None for k in ("controlPlaneComponentHealthCheck", "kubeletHealthCheck",
                              "kubernetesAPICall", "etcdAPICall", "tlsBootstrap", "discovery",
                              "upgradeManifests")}
BOOTSTRAP_TOKEN = {"token": None, "description": None, "ttl": None, "expires": None,
                   "usages": None, "groups": None}
COMPONENT = {"extraArgs": ARGS, "extraVolumes": [VOLUME], "extraEnvs": [ENV]}
SCHEMA = {
    "InitConfiguration": {
        "apiVersion": None, "kind": None, "bootstrapTokens": [BOOTSTRAP_TOKEN],
        "nodeRegistration": NODE_REGISTRATION, "localAPIEndpoint": ENDPOINT,
        "certificateKey": None, "skipPhases": None, "patches": PATCHES, "dryRun": None,
        "timeouts": TIMEOUTS},
    "ClusterConfiguration": {
        "apiVersion": None, "kind": None, "kubernetesVersion": None,
        "controlPlaneEndpoint": None, "imageRepository": None, "certificatesDir": None,
        "clusterName": None, "featureGates": None, "encryptionAlgorithm": None,
        "certificateValidityPeriod": None, "caCertificateValidityPeriod": None,
        "networking": {"podSubnet": None, "serviceSubnet": None, "dnsDomain": None},
        "etcd": {"local": {"imageRepository": None, "imageTag": None, "dataDir": None,
                           "extraArgs": ARGS, "extraEnvs": [ENV], "serverCertSANs": None,
                           "peerCertSANs": None},
                 "external": {"endpoints": None, "caFile": None, "certFile": None,
                              "keyFile": None}},
        "apiServer": dict(COMPONENT, certSANs=None, timeoutForControlPlane=None),
        "controllerManager": COMPONENT, "scheduler": COMPONENT,
        "dns": {"imageRepository": None, "imageTag": None, "disabled": None},
        "proxy": {"disabled": None}},
    "JoinConfiguration": {
        "apiVersion": None, "kind": None, "dryRun": None, "nodeRegistration": NODE_REGISTRATION,
        "caCertPath": None, "skipPhases": None, "patches": PATCHES, "timeouts": TIMEOUTS,
        "discovery": {"bootstrapToken": {"token": None, "apiServerEndpoint": None,
                                         "caCertHashes": None,
                                         "unsafeSkipCAVerification": None},
                      "file": {"kubeConfigPath": None}, "tlsBootstrapToken": None,
                      "timeout": None},
        "controlPlane": {"localAPIEndpoint": ENDPOINT, "certificateKey": None}},
}
# Field names that exist in only one of the two versions.
V1BETA4_ONLY = {"dryRun", "timeouts", "imagePullSerial", "proxy", "encryptionAlgorithm",
                "certificateValidityPeriod", "caCertificateValidityPeriod", "extraEnvs",
                "disabled"}
V1BETA3_ONLY = {"timeoutForControlPlane", "timeout"}


def _strict(doc, schema, path, v4):
    if schema is None:
        return
    if schema == ARGS:
        if v4 and not isinstance(doc, list):
            raise ValueError(f"json: cannot unmarshal {type(doc).__name__} into Go struct "
                             f'field "{path}" of type []v1beta4.Arg')
        if not v4 and not isinstance(doc, dict):
            raise ValueError(f"json: cannot unmarshal {type(doc).__name__} into Go struct "
                             f'field "{path}" of type map[string]string')
        if v4:
            for i, item in enumerate(doc):
                _strict(item, ARG, f"{path}[{i}]", v4)
        return
    if isinstance(schema, list):
        if not isinstance(doc, list):
            raise ValueError(f'json: cannot unmarshal {type(doc).__name__} into Go struct '
                             f'field "{path}" of type array')
        for i, item in enumerate(doc):
            _strict(item, schema[0], f"{path}[{i}]", v4)
        return
    if not isinstance(doc, dict):
        raise ValueError(f'json: cannot unmarshal {type(doc).__name__} into Go struct field '
                         f'"{path}" of type object')
    for key, value in doc.items():
        sub = f"{path}.{key}" if path else key
        if key not in schema or (not v4 and key in V1BETA4_ONLY) or (
                v4 and key in V1BETA3_ONLY):
            raise ValueError(f'strict decoding error: unknown field "{sub}"')
        _strict(value, schema[key], sub, v4)


def minor(v):
    k = state.version_key(v)
    return k[:2] if len(k) >= 2 else (0, 0)


def read_config(path, wanted):
    """{kind: doc} of the multi-document config at `path`; kinds outside `wanted` are
    ignored with kubeadm's warning."""
    p = state.host(path)
    try:
        st = p.stat()
        text = p.read_text()
    except OSError as e:
        state.die(f"unable to read config from {path!r}: open {path}: {e.strerror.lower()}")
    if st.st_mode & 0o077:
        state.die(f"stand-in kubeadm: {path} has mode {st.st_mode & 0o777:04o}; it may hold a "
                  "token or certificate key and must be 0600")
    docs = {}
    for i, chunk in enumerate(re.split(r"(?m)^---[ \t]*$", text)):
        if not chunk.strip():
            continue
        try:
            doc = json.loads(chunk)
        except ValueError as e:
            state.die(f"{path}: document {i}: the stand-in reads JSON documents only "
                      f"(bootstrap writes JSON, which is YAML): {e}")
        if not isinstance(doc, dict):
            state.die(f"{path}: document {i} is not a map")
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if not api or not kind:
            state.die(f"{path}: invalid configuration: kind and apiVersion is mandatory "
                      "information that must be specified")
        group, _, version = api.partition("/")
        if group == KUBEADM_GROUP:
            if version not in ("v1beta3", "v1beta4"):
                state.die(f'{path}: your configuration file uses an old API spec: "{api}". '
                          "Please use kubeadm v1.22 instead and run 'kubeadm config migrate'")
            if version == "v1beta4" and minor(state.VERSION) < (1, 31):
                state.die(f'{path}: no kind "{kind}" is registered for version "{api}" in '
                          'scheme "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/'
                          'scheme.go:31"')
            if kind not in SCHEMA and kind not in ("UpgradeConfiguration", "ResetConfiguration"):
                state.die(f'{path}: no kind "{kind}" is registered for version "{api}"')
        elif (api, kind) not in ((KUBELET_API, "KubeletConfiguration"),
                                 (PROXY_API, "KubeProxyConfiguration")):
            state.die(f'{path}: no kind "{kind}" is registered for version "{api}"')
        if kind not in wanted:
            print(f"W0000 [config] WARNING: Ignored YAML document with GroupVersionKind "
                  f"{group}/{version}, Kind={kind}", file=sys.stderr)
            continue
        if kind in docs:
            state.die(f"{path}: invalid configuration: kind {kind!r} is specified twice")
        if kind in SCHEMA:
            try:
                _strict(doc, SCHEMA[kind], "", version == "v1beta4")
            except ValueError as e:
                state.die(f'error converting YAML to JSON or decoding {path} '
                          f'({api}, Kind={kind}): {e}')
        docs[kind] = doc
    return docs


def args_map(value):
    """extraArgs in either version as {name: value} (v1beta4 may repeat a name)."""
    if isinstance(value, list):
        return {a.get("name"): a.get("value") for a in value}
    return dict(value or {})


def taint_strings(taints):
    out = []
    for t in taints:
        if t.get("effect") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            state.die(f'nodeRegistration.taints: Unsupported value: "{t.get("effect")}": '
                      'supported values: "NoExecute", "NoSchedule", "PreferNoSchedule"')
        if not t.get("key"):
            state.die("nodeRegistration.taints: Required value: taint key")
        kv = f"{t['key']}={t['value']}" if t.get("value") else t["key"]
        out.append(f"{kv}:{t['effect']}")
    return out


def node_fields(reg, control_plane, fallback_address=""):
    """name, taints, labels and address from nodeRegistration."""
    reg = reg or {}
    extra = args_map(reg.get("kubeletExtraArgs"))
    labels = {}
    for item in [p for p in (extra.get("node-labels") or "").split(",") if p]:
        k, eq, v = item.partition("=")
        if not eq:
            state.die(f"invalid node label {item!r} in kubeletExtraArgs node-labels")
        labels[k] = v
    if control_plane:
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    if "taints" in reg:
        taints = taint_strings(reg.get("taints") or [])
    else:
        taints = [CONTROL_PLANE_TAINT] if control_plane else []
    return {"name": reg.get("name") or state.hostname(), "taints": taints, "labels": labels,
            "address": extra.get("node-ip") or fallback_address}


def preflight(checks, ignored):
    """kubeadm's preflight: each failing check is `[ERROR Name]: msg` unless ignored."""
    ignored = {i.lower() for i in ignored}
    errors = [f"\t[ERROR {name}]: {msg}" for name, msg in checks
              if name.lower() not in ignored and "all" not in ignored]
    if errors:
        state.die("error execution phase preflight: [preflight] Some fatal errors occurred:\n"
                  + "\n".join(errors) + "\n[preflight] If you know what you are doing, you "
                  "can make a check non-fatal with `--ignore-preflight-errors=...`")


def cri_check(reg):
    sock = (reg or {}).get("criSocket")
    if not sock:
        found = [s for s in CRI_SOCKETS if _socket_exists(s)]
        if not found:
            return [("CRI", "container runtime is not running: no known CRI socket found")]
        if len(found) > 1:
            state.die(f"found multiple CRI endpoints on the host. Please define which one do "
                      f"you wish to use by setting the 'criSocket' field: {found}")
        return []
    if not _socket_exists(sock):
        return [("CRI", f"container runtime is not running: output: validate service "
                        f"connection: dial {sock}: connect: no such file or directory")]
    return []


def _socket_exists(sock):
    path = sock.removeprefix("unix://")
    if not path.startswith("/"):
        return False
    alt = "/run/" + path[len("/var/run/"):] if path.startswith("/var/run/") else path
    return state.host(path).exists() or state.host(alt).exists()


def common_checks(reg, control_plane):
    checks = cri_check(reg)
    fwd = state.host("/proc/sys/net/ipv4/ip_forward")
    if fwd.exists() and fwd.read_text().strip() != "1":
        checks.append(("FileContent--proc-sys-net-ipv4-ip_forward",
                       "/proc/sys/net/ipv4/ip_forward contents are not set to 1"))
    for f in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/bootstrap-kubelet.conf"):
        if state.host(f).exists():
            checks.append((f"FileAvailable-{f.replace('/', '-')}", f"{f} already exists"))
    man = state.host("/etc/kubernetes/manifests")
    if control_plane and man.is_dir() and any(man.iterdir()):
        checks.append(("DirAvailable--etc-kubernetes-manifests",
                       "/etc/kubernetes/manifests is not empty"))
    return checks


def ignored_errors(flags, reg):
    return split_list(flags.get("ignore-preflight-errors")) + list(
        (reg or {}).get("ignorePreflightErrors") or [])


# --- what kubeadm writes ---------------------------------------------------------------------
PKI = "/etc/kubernetes/pki"
SHARED_CERTS = ("ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt",
                "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key")
KUBECONFIGS = ("admin.conf", "super-admin.conf", "kubelet.conf", "controller-manager.conf",
               "scheduler.conf")


def fresh_pki():
    """The init CA (reused when pre-created, distros.md §3.2) and the other shared certs."""
    if not (state.host(f"{PKI}/ca.crt").exists() and state.host(f"{PKI}/ca.key").exists()):
        state.make_ca(f"{PKI}/ca.crt", f"{PKI}/ca.key", "kubernetes")
    for base, cn in (("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")):
        if not state.host(f"{PKI}/{base}.crt").exists():
            state.make_ca(f"{PKI}/{base}.crt", f"{PKI}/{base}.key", cn)
    for f in ("sa.key", "sa.pub"):
        if not state.host(f"{PKI}/{f}").exists():
            state.write_file(f"{PKI}/{f}", f"stand-in {f}\n", 0o600)
    return state.host(f"{PKI}/ca.crt").read_text()


def shared_certs():
    return {f: state.host(f"{PKI}/{f}").read_text() for f in SHARED_CERTS}


def write_control_plane(c, name, version, endpoint, advertise, repo, super_admin):
    ca = c["ca_pem"]
    for f in ("apiserver", "apiserver-kubelet-client", "front-proxy-client",
              "etcd/server", "etcd/peer", "etcd/healthcheck-client", "apiserver-etcd-client"):
        state.write_file(f"{PKI}/{f}.crt", f"stand-in {f} certificate\n", 0o644)
        state.write_file(f"{PKI}/{f}.key", f"stand-in {f} key\n", 0o600)
    server = f"https://{endpoint}"
    confs = [("admin.conf", "kubernetes-admin"), ("controller-manager.conf",
             "system:kube-controller-manager"), ("scheduler.conf", "system:kube-scheduler")]
    if super_admin:
        confs.append(("super-admin.conf", "kubernetes-super-admin"))
    for f, user in confs:
        state.write_file(f"/etc/kubernetes/{f}", state.kubeconfig_text(server, ca, user), 0o600)
    write_manifests(version, advertise, repo)


def write_manifests(version, advertise, repo):
    repo = repo or "registry.k8s.io"
    tags = {"kube-apiserver": version, "kube-controller-manager": version,
            "kube-scheduler": version, "etcd": "3.5.15-0"}
    for comp, tag in tags.items():
        state.write_file(f"/etc/kubernetes/manifests/{comp}.yaml", (
            "apiVersion: v1\nkind: Pod\nmetadata:\n"
            f"  name: {comp}\n  namespace: kube-system\n"
            f"  annotations:\n    stand-in/advertise-address: {advertise}\n"
            "spec:\n  hostNetwork: true\n  containers:\n"
            f"  - name: {comp}\n    image: {repo}/{comp}:{tag}\n"), 0o600)


def write_kubelet(c, name, server, reg, kubelet_cfg):
    state.write_file("/etc/kubernetes/kubelet.conf",
                     state.kubeconfig_text(server, c["ca_pem"], f"system:node:{name}"), 0o600)
    cfg = {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "systemd",
           "clusterDNS": ["10.96.0.10"], "clusterDomain": "cluster.local",
           "rotateCertificates": True, "staticPodPath": "/etc/kubernetes/manifests"}
    cfg.update(kubelet_cfg or {})
    state.write_file("/var/lib/kubelet/config.yaml", json.dumps(cfg, indent=2) + "\n", 0o644)
    flags = [f"--container-runtime-endpoint={(reg or {}).get('criSocket') or CRI_SOCKETS[0]}",
             "--pod-infra-container-image=registry.k8s.io/pause:3.10"]
    if name != state.hostname():
        flags.append(f"--hostname-override={name}")
    flags += [f"--{k}={v}" for k, v in args_map((reg or {}).get("kubeletExtraArgs")).items()]
    state.write_file("/var/lib/kubelet/kubeadm-flags.env",
                     f'KUBELET_KUBEADM_ARGS="{" ".join(flags)}"\n', 0o644)


def restart_kubelet():
    """kubeadm's kubelet-start phase: `systemctl restart kubelet` when the unit exists
    (call it outside `with state.cluster()`: the kubelet stand-in takes the lock)."""
    if state.host("/etc/systemd/system/kubelet.service").exists() or state.host(
            "/usr/lib/systemd/system/kubelet.service").exists():
        print("[kubelet-start] Starting the kubelet")
        subprocess.run(["systemctl", "restart", "kubelet.service"], check=False)
    else:
        print("[kubelet-start] WARNING: the kubelet service does not exist; not starting it",
              file=sys.stderr)


def check_token_text(t, field):
    m = state.BOOTSTRAP_TOKEN_RE.match(t or "")
    if not m:
        state.die(f'{field}: Invalid value: "{(t or "")[:6]}…": the bootstrap token was not of '
                  'the form "^([a-z0-9]{6})\\.([a-z0-9]{16})$"')
    return m.group(1)


def check_certificate_key(key, field):
    if key and not re.fullmatch(r"[0-9a-f]{64}", key):
        state.die(f"{field}: Invalid value: the certificate key must be 64 hex characters "
                  "(a 32-byte AES key); error decoding certificate key")


def record_bootstrap_tokens(c, init):
    tokens = init.get("bootstrapTokens")
    if tokens is None:  # kubeadm makes one with the defaults
        tokens = [{"token": "{}.{}".format(*state.new_token())}]
    for i, bt in enumerate(tokens):
        field = f"bootstrapTokens[{i}]"
        tid = check_token_text(bt.get("token"), f"{field}.token")
        usages = bt.get("usages") or ["signing", "authentication"]
        bad = [u for u in usages if u not in ("signing", "authentication")]
        if bad:
            state.die(f'{field}.usages: Invalid value: "{",".join(bad)}": invalid bootstrap '
                      'token usage string: valid usages are "signing", "authentication"')
        for g in bt.get("groups") or []:
            if not re.fullmatch(r"system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]", g):
                state.die(f'{field}.groups: Invalid value: "{g}": bootstrap group must match '
                          "system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]")
        try:
            ttl = state.parse_duration(bt.get("ttl", "24h0m0s"))
        except ValueError as e:
            state.die(f"{field}.ttl: {e}")
        state.add_token(c, tid, bt["token"].split(".")[1], ttl if ttl > 0 else None, usages)


def check_kubernetes_version(kv):
    if not kv:
        state.die("stand-in kubeadm: ClusterConfiguration.kubernetesVersion is not set: kubeadm "
                  'would fetch "stable-1" from https://dl.k8s.io/release/stable-1.txt, which an '
                  "air-gapped node cannot reach (kubernetes#54188); pin it")
    if not re.fullmatch(r"v?\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?", kv):
        state.die(f'kubernetesVersion: Invalid value: "{kv}": a version label like "stable-1" '
                  "needs dl.k8s.io; pin a version such as v1.31.4")
    want, own = minor(kv), minor(state.VERSION)
    if want < (own[0], own[1] - 1):
        state.die(f"this version of kubeadm only supports deploying clusters with the control "
                  f"plane version >= {own[0]}.{own[1] - 1}.0. Current version: {kv}")
    if want > own:
        return [("KubernetesVersion", "Kubernetes version is greater than kubeadm version. "
                 f"Please consider to upgrade kubeadm. Kubernetes version: {kv}. Kubeadm "
                 f"version: {own[0]}.{own[1]}.x")]
    return []


def fresh_cluster(c):
    """`kubeadm init` starts a new cluster: the fake cluster forgets the previous one."""
    for key, empty in (("nodes", {}), ("etcd", {}), ("tokens", {}), ("api_up", {}),
                       ("applied", [])):
        c[key] = empty
    c["kubeadm"] = {}


# --- init, join ----------------------------------------------------------------------------
def endpoint_of(cluster_cfg, advertise, port):
    ep = cluster_cfg.get("controlPlaneEndpoint") or ""
    if ep and not re.search(r":\d+$", ep):
        ep = f"{ep}:{port}"
    return ep or f"{advertise}:{port}"


def cmd_init(args):
    if args and args[0] == "phase":
        return cmd_phase(args[1:])
    flags, pos = parse(args, INIT)
    if pos:
        state.die(f'unknown command "{pos[0]}" for "kubeadm init"')
    if "config" not in flags:
        state.die("stand-in kubeadm: init without --config is not supported (bootstrap keeps "
                  "the token and certificate key in a 0600 config file)")
    docs = read_config(flags["config"], ("InitConfiguration", "ClusterConfiguration",
                                         "KubeletConfiguration", "KubeProxyConfiguration"))
    init = docs.get("InitConfiguration") or {}
    ccfg = docs.get("ClusterConfiguration") or {}
    api = (init or ccfg).get("apiVersion") or f"{KUBEADM_GROUP}/v1beta4"
    kv = ccfg.get("kubernetesVersion")
    reg = init.get("nodeRegistration") or {}
    ep_cfg = init.get("localAPIEndpoint") or {}
    node_ip = args_map(reg.get("kubeletExtraArgs")).get("node-ip")
    advertise = ep_cfg.get("advertiseAddress") or node_ip or "127.0.0.1"
    port = ep_cfg.get("bindPort") or 6443
    endpoint = endpoint_of(ccfg, advertise, port)
    key = init.get("certificateKey")
    check_certificate_key(key, "certificateKey")
    checks = check_kubernetes_version(kv) + common_checks(reg, True)
    preflight(checks, ignored_errors(flags, reg))
    fields = node_fields(reg, True, advertise)
    name = fields.pop("name")
    if flags.get("upload-certs") and not key:
        key = secrets.token_hex(32)
        if not flags.get("skip-certificate-key-print"):
            print(f"[upload-certs] Using certificate key:\n{key}")
    with state.cluster() as c:
        others = sorted(n for n, up in c["api_up"].items() if up and n != name)
        if others:
            state.die(f"stand-in kubeadm: the fake cluster already has a control plane on "
                      f"{others}; `kubeadm init` here would start a second cluster")
        fresh_cluster(c)
        c["ca_pem"] = fresh_pki()
        c["version"] = kv if kv.startswith("v") else f"v{kv}"
        record_bootstrap_tokens(c, init)
        external = "external" in (ccfg.get("etcd") or {})
        k = c["kubeadm"]
        k.update(endpoint=endpoint, endpoints=[f"{advertise}:{port}", endpoint],
                 endpoint_stable=bool(ccfg.get("controlPlaneEndpoint")), api_version=api,
                 kubelet_config=docs.get("KubeletConfiguration") or {},
                 image_repository=ccfg.get("imageRepository"), upgraded={})
        if flags.get("upload-certs"):
            k.update(certificate_key=key, certs_uploaded=time.time(), certs=shared_certs())
        write_control_plane(c, name, c["version"], endpoint, advertise,
                            ccfg.get("imageRepository"), super_admin=True)
        write_kubelet(c, name, f"https://{endpoint}", reg, k["kubelet_config"])
        if not external:
            c["etcd"][name] = advertise
        c["api_up"][name] = True
        state.register_node(c, name, role="control-plane", version=state.VERSION,
                            distro="kubeadm", ready=True, **fields)
        c["version"] = kv if kv.startswith("v") else f"v{kv}"
    restart_kubelet()
    print("\nYour Kubernetes control-plane has initialized successfully!\n")
    token = "<value withheld>" if flags.get("skip-token-print") else "<see the config file>"
    print(f"Then you can join any number of worker nodes by running the following on each as "
          f"root:\n\nkubeadm join {endpoint} --token {token} \\\n\t"
          "--discovery-token-ca-cert-hash sha256:<hash>")
    return 0


def endpoint_known(c, endpoint):
    k = c.get("kubeadm") or {}
    return endpoint in (k.get("endpoints") or []) and any(c["api_up"].values())


def cmd_join(args):
    flags, pos = parse(args, JOIN)
    if pos:
        state.die("stand-in kubeadm: `kubeadm join ENDPOINT` with flags is not supported: the "
                  "endpoint, token and CA hash go in the --config file")
    if "config" not in flags:
        state.die("stand-in kubeadm: join needs --config (the token must not be on argv)")
    docs = read_config(flags["config"], ("JoinConfiguration",))
    j = docs.get("JoinConfiguration")
    if j is None:
        state.die(f"no JoinConfiguration kind was found in {flags['config']}")
    disc = j.get("discovery") or {}
    bt = disc.get("bootstrapToken")
    if disc.get("file"):
        state.die("stand-in kubeadm: file discovery is not implemented (bootstrap uses a "
                  "bootstrap token)")
    if not bt:
        state.die('discovery: Invalid value: "": bootstrapToken or file must be set')
    token = bt.get("token") or ""
    tid = check_token_text(token, "discovery.bootstrapToken.token")
    endpoint = bt.get("apiServerEndpoint")
    if not endpoint:
        state.die("discovery.bootstrapToken.apiServerEndpoint: Required value: "
                  "apiServerEndpoint must be set")
    if bt.get("unsafeSkipCAVerification"):
        state.die("stand-in kubeadm: discovery.bootstrapToken.unsafeSkipCAVerification: true "
                  "is refused (our policy: the cluster CA is always pinned with caCertHashes)")
    hashes = bt.get("caCertHashes") or []
    if not hashes:
        state.die("discovery.bootstrapToken.caCertHashes: Invalid value: []: using token-based "
                  "discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification "
                  "as true in your kubeadm config file or pass "
                  "--discovery-token-unsafe-skip-ca-verification flag to continue")
    for h in hashes:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", h):
            state.die(f'invalid hash "{h}", expected a "type:value" hash of type sha256 (64 '
                      "lowercase hex digits)")
    tls = disc.get("tlsBootstrapToken") or token
    tls_id = check_token_text(tls, "discovery.tlsBootstrapToken")
    reg = j.get("nodeRegistration") or {}
    cp = j.get("controlPlane")
    cp_ep = (cp or {}).get("localAPIEndpoint") or {}
    node_ip = args_map(reg.get("kubeletExtraArgs")).get("node-ip")
    advertise = cp_ep.get("advertiseAddress") or node_ip or "127.0.0.1"
    key = (cp or {}).get("certificateKey")
    check_certificate_key(key, "controlPlane.certificateKey")
    checks = common_checks(reg, cp is not None)
    ca_path = j.get("caCertPath") or f"{PKI}/ca.crt"
    if state.host(ca_path).exists():
        checks.append((f"FileAvailable-{ca_path.replace('/', '-')}", f"{ca_path} already exists"))
    preflight(checks, ignored_errors(flags, reg))
    fields = node_fields(reg, cp is not None, advertise)
    name = fields.pop("name")
    phase = "error execution phase preflight: "
    with state.cluster() as c:
        k = c.get("kubeadm") or {}
        if not endpoint_known(c, endpoint):
            state.die(f"{phase}couldn't validate the identity of the API Server: Get "
                      f'"https://{endpoint}/api/v1/namespaces/kube-public/configmaps/'
                      f'cluster-info?timeout=10s": dial tcp {endpoint}: connect: connection '
                      "refused")
        if state.check_token(c, token, "signing"):
            state.die(f"{phase}couldn't validate the identity of the API Server: could not find "
                      f'a JWS signature in the cluster-info ConfigMap for token ID "{tid}"')
        want = "sha256:" + state.spki_sha256(c["ca_pem"])
        if want not in hashes:
            state.die(f"{phase}couldn't validate the identity of the API Server: cluster CA "
                      "found in cluster-info ConfigMap is invalid: none of the public keys "
                      f'"{want}" are pinned')
        if state.check_token(c, tls, "authentication"):
            state.die("error execution phase kubelet-start: error uploading crisocket: "
                      f'Unauthorized (TLS bootstrap token "{tls_id}" is not valid)')
        if cp is not None:
            join_control_plane(c, k, name, key, advertise, cp_ep.get("bindPort") or 6443)
        else:
            state.write_file(ca_path, c["ca_pem"], 0o644)
        write_kubelet(c, name, f"https://{endpoint}", reg, k.get("kubelet_config"))
        version = c.get("version")  # the control plane's, not this kubelet's
        state.register_node(c, name, role="control-plane" if cp is not None else "worker",
                            version=state.VERSION, distro="kubeadm", ready=True, **fields)
        c["version"] = version
    restart_kubelet()
    print("\nThis node has joined the cluster" + (
        " and a new control plane instance was created" if cp is not None else "") + ".")
    return 0


def join_control_plane(c, k, name, key, advertise, port):
    phase = "error execution phase control-plane-prepare/download-certs: "
    if not k.get("endpoint_stable"):
        state.die("error execution phase preflight: One or more conditions for hosting a new "
                  "control plane instance is not satisfied.\n\nunable to add a new control "
                  "plane instance to a cluster that doesn't have a stable controlPlaneEndpoint "
                  "address")
    if not key:
        state.die("stand-in kubeadm: controlPlane.certificateKey is empty: the shared "
                  "certificates would have to be copied by hand, which bootstrap does not do")
    if not k.get("certs_uploaded") or time.time() - k["certs_uploaded"] > CERTS_TTL:
        state.die(f"{phase}error downloading certs: error downloading the secret: Secret "
                  '"kubeadm-certs" was not found')
    if key != k.get("certificate_key"):
        state.die(f"{phase}error downloading certs: error decoding certificate key: cipher: "
                  "message authentication failed")
    if advertise in c["etcd"].values():
        # etcd's MemberAdd refuses a peer URL a member (a dead one, say) still has.
        state.die("error execution phase control-plane-join/etcd: error creating local etcd "
                  "static pod manifest file: etcdserver: Peer URLs already exists "
                  f"(https://{advertise}:2380)")
    for f, text in (k.get("certs") or {}).items():
        state.write_file(f"{PKI}/{f}", text, 0o600 if f.endswith(".key") else 0o644)
    write_control_plane(c, name, c["version"], k["endpoint"], advertise,
                        k.get("image_repository"), super_admin=False)
    c["etcd"][name] = advertise
    c["api_up"][name] = True
    k.setdefault("endpoints", []).append(f"{advertise}:{port}")


def cmd_phase(args):
    if args[:1] != ["upload-certs"]:
        state.die(f"stand-in kubeadm: `kubeadm init phase {' '.join(args[:1])}` is not "
                  "implemented (bootstrap uses only upload-certs)")
    flags, pos = parse(args[1:], {"config": True, "upload-certs": False, "kubeconfig": True,
                                  "skip-certificate-key-print": False, "certificate-key": True})
    if pos:
        state.die(f'unknown command "{pos[0]}" for "kubeadm init phase upload-certs"')
    if not flags.get("upload-certs"):
        print("[upload-certs] Skipping phase. Please see --upload-certs")
        return 0
    key = None
    if "config" in flags:
        docs = read_config(flags["config"], ("InitConfiguration", "ClusterConfiguration"))
        key = (docs.get("InitConfiguration") or {}).get("certificateKey")
    check_certificate_key(key, "certificateKey")
    key = key or secrets.token_hex(32)
    admin = admin_conn(flags)
    with state.cluster() as c:
        api_check(c, admin)
        c.setdefault("kubeadm", {}).update(certificate_key=key, certs_uploaded=time.time(),
                                           certs=shared_certs())
    print('[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the '
          '"kube-system" Namespace')
    if not flags.get("skip-certificate-key-print"):
        print(f"[upload-certs] Using certificate key:\n{key}")
    return 0


# --- token, certs, reset, upgrade, version ---------------------------------------------------
def admin_conn(flags, default="/etc/kubernetes/admin.conf"):
    path = flags.get("kubeconfig") or default
    kc = state.read_kubeconfig(path)
    if kc is None:
        state.die(f"failed to load admin kubeconfig: open {path}: no such file or directory")
    return kc


def api_check(c, kc):
    host = re.sub(r"^https://", "", kc["server"]).rstrip("/")
    if not any(c["api_up"].values()):
        state.die(f'Get "{kc["server"]}/api/v1/namespaces/kube-system/configmaps/kubeadm-config'
                  f'?timeout=10s": dial tcp {host}: connect: connection refused')
    if (kc.get("ca_pem") or "").strip() != (c.get("ca_pem") or "").strip():
        state.die(f'Get "{kc["server"]}/api": tls: failed to verify certificate: x509: '
                  "certificate signed by unknown authority")


def cmd_token(args):
    sub = args[0] if args else ""
    spec = {"kubeconfig": True, "config": True, "dry-run": False}
    if sub == "create":
        spec.update({"ttl": True, "description": True, "usages": "list", "groups": "list",
                     "print-join-command": False, "certificate-key": True})
    elif sub != "list":
        state.die(f'stand-in kubeadm: `kubeadm token {sub}` is not implemented')
    else:
        spec.update({"output": True, "allow-missing-template-keys": False,
                     "show-managed-fields": False})
    flags, pos = parse(args[1:], spec, {"o": "output"} if sub == "list" else None)
    if pos:
        state.die("stand-in kubeadm: a token on the command line is refused: argv is "
                  "world-readable in /proc" if sub == "create" else
                  f'unknown command "{pos[0]}" for "kubeadm token {sub}"')
    kc = admin_conn(flags)
    if sub == "list":
        with state.cluster() as c:
            api_check(c, kc)
            tokens = dict(c["tokens"])
        print("TOKEN                     TTL         EXPIRES                USAGES")
        for tid, t in sorted(tokens.items()):
            exp = t.get("expires")
            if exp is not None and exp < time.time():
                continue
            ttl = "<forever>" if exp is None else f"{int((exp - time.time()) // 3600)}h"
            when = "<never>" if exp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime(exp))
            print(f"{tid}.{t['secret']}   {ttl:<10}  {when:<21}  {','.join(t['usages'])}")
        return 0
    try:
        ttl = state.parse_duration(flags.get("ttl", "24h0m0s"))
    except ValueError as e:
        state.die(f'invalid argument "{flags["ttl"]}" for "--ttl" flag: {e}')
    usages = split_list(flags.get("usages")) or ["signing", "authentication"]
    bad = [u for u in usages if u not in ("signing", "authentication")]
    if bad:
        state.die(f"invalid bootstrap token usage string: {bad[0]}, valid usage options: "
                  "signing, authentication")
    for g in split_list(flags.get("groups")):
        if not re.fullmatch(r"system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]", g):
            state.die(f'bootstrap group "{g}" is invalid (must match '
                      "system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9])")
    if flags.get("print-join-command"):
        state.die("stand-in kubeadm: --print-join-command prints the token inside a command "
                  "line; bootstrap does not use it")
    tid, secret = state.new_token()
    with state.cluster() as c:
        api_check(c, kc)
        state.add_token(c, tid, secret, ttl if ttl > 0 else None, usages)
    print(f"{tid}.{secret}")
    return 0


def cmd_certs(args):
    if args[:1] != ["certificate-key"]:
        state.die(f"stand-in kubeadm: `kubeadm certs {' '.join(args[:1])}` is not implemented")
    _, pos = parse(args[1:], {})
    if pos:
        state.die(f'unknown command "{pos[0]}" for "kubeadm certs certificate-key"')
    print(secrets.token_hex(32))
    return 0


def clean_dir(path):
    """Removes what is inside `path` (kubeadm's CleanDir), keeping the folder."""
    p = state.host(path)
    if not p.is_dir():
        return
    for child in p.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def cmd_reset(args):
    flags, pos = parse(args, {"force": False, "cleanup-tmp-dir": False, "cri-socket": True,
                              "cert-dir": True, "config": True, "dry-run": False,
                              "ignore-preflight-errors": "list", "kubeconfig": True,
                              "skip-phases": "list"}, {"f": "force"})
    if pos:
        state.die(f'unknown command "{pos[0]}" for "kubeadm reset"')
    if flags.get("cri-socket") and not flags["cri-socket"].startswith("unix://"):
        print(f"W0000 [reset] the criSocket {flags['cri-socket']!r} has no URL scheme",
              file=sys.stderr)
    if not flags.get("force"):
        sys.stdout.write("[reset] Are you sure you want to proceed? [y/N]: ")
        sys.stdout.flush()
        answer = sys.stdin.readline()
        if not answer:
            state.die("error execution phase preflight: won't proceed; the user didn't answer "
                      "(Y|n) in order to continue")
        if answer.strip().lower() not in ("y", "yes"):
            state.die("error execution phase preflight: aborted reset operation")
    control_plane = state.host("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    with state.cluster() as c:
        mine = [n for n, node in c["nodes"].items() if node.get("root") == str(state.ROOT)]
        for name in mine or [state.hostname()]:
            if control_plane:
                c["etcd"].pop(name, None)
                c["api_up"].pop(name, None)
            if name in c["nodes"]:
                c["nodes"][name]["ready"] = False
    print("[reset] Stopping the kubelet service")
    subprocess.run(["systemctl", "stop", "kubelet.service"], check=False)
    cert_dir = flags.get("cert-dir") or PKI
    clean_dir("/etc/kubernetes/manifests")
    clean_dir("/var/lib/kubelet")
    if control_plane:
        clean_dir("/var/lib/etcd")
    if state.host(cert_dir).is_dir():
        shutil.rmtree(state.host(cert_dir))
    for f in KUBECONFIGS + ("bootstrap-kubelet.conf",):
        state.host(f"/etc/kubernetes/{f}").unlink(missing_ok=True)
    if flags.get("cleanup-tmp-dir"):
        clean_dir("/etc/kubernetes/tmp")
    print("The reset process does not clean CNI configuration. To do so, you must remove "
          "/etc/cni/net.d")
    return 0


def confirm(flags, question):
    if flags.get("yes"):
        return
    sys.stdout.write(f"[upgrade] {question} [y/N]: ")
    sys.stdout.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        state.die("won't proceed; the user didn't answer (Y|n) in order to continue")


def cmd_upgrade(args):
    sub = args[0] if args else ""
    spec = {"config": True, "dry-run": False, "etcd-upgrade": True, "certificate-renewal": True,
            "ignore-preflight-errors": "list", "kubeconfig": True, "patches": True,
            "skip-phases": "list"}
    if sub == "apply":
        spec.update({"yes": False, "force": False, "allow-experimental-upgrades": False,
                     "allow-release-candidate-upgrades": False, "print-config": False})
    elif sub != "node":
        state.die(f"stand-in kubeadm: `kubeadm upgrade {sub}` is not implemented")
    flags, pos = parse(args[1:], spec, {"y": "yes", "f": "force"} if sub == "apply" else None)
    control_plane = state.host("/etc/kubernetes/manifests/kube-apiserver.yaml").exists()
    default_kc = "/etc/kubernetes/admin.conf" if control_plane else "/etc/kubernetes/kubelet.conf"
    kc = admin_conn(flags, default_kc)
    own = state.VERSION
    if sub == "node":
        if pos:
            state.die(f'unknown command "{pos[0]}" for "kubeadm upgrade node"')
        with state.cluster() as c:
            api_check(c, kc)
            mine = [n for n, node in c["nodes"].items() if node.get("root") == str(state.ROOT)]
            cluster = c.get("version") or ""
            if state.version_key(cluster) > state.version_key(own):
                state.die(f"the kubeadm version {own} is lower than the cluster version "
                          f"{cluster}; upgrade kubeadm first")
            if control_plane and minor(cluster) != minor(own):
                state.die(f"stand-in kubeadm: the cluster runs {cluster}; `kubeadm upgrade apply "
                          f"{own}` must run on the first control plane before `kubeadm upgrade "
                          "node` here")
            for n in mine:
                c.setdefault("kubeadm", {}).setdefault("upgraded", {})[n] = cluster
            kubelet_cfg = (c.get("kubeadm") or {}).get("kubelet_config") or {}
            repo = (c.get("kubeadm") or {}).get("image_repository")
        if control_plane:
            write_manifests(cluster, "", repo)
        cfg = {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "systemd"}
        cfg.update(kubelet_cfg)
        state.write_file("/var/lib/kubelet/config.yaml", json.dumps(cfg, indent=2) + "\n", 0o644)
        print("[upgrade] The configuration for this node was successfully updated!")
        return 0
    if len(pos) != 1:
        state.die("missing or too many arguments: kubeadm upgrade apply [version]")
    target = pos[0]
    if not re.fullmatch(r"v\d+\.\d+\.\d+", target):
        state.die(f'unable to parse version "{target}"')
    if not control_plane:
        state.die("stand-in kubeadm: `kubeadm upgrade apply` runs on a control plane")
    if state.version_key(target) > state.version_key(own):
        state.die(f'Specified version to upgrade to "{target}" is higher than the kubeadm version '
                  f'"{own}". Upgrade kubeadm first using the tool you used to install kubeadm')
    if minor(target) != minor(own):
        state.die(f"Kubeadm version {own} can only be used to upgrade to Kubernetes version "
                  f"{minor(own)[0]}.{minor(own)[1]}")
    with state.cluster() as c:
        api_check(c, kc)
        cluster = c.get("version") or ""
    if minor(target)[1] > minor(cluster)[1] + 1 or minor(target)[0] != minor(cluster)[0]:
        state.die(f'Specified version to upgrade to "{target}" is too high; kubeadm can upgrade '
                  "only 1 minor version at a time")
    if state.version_key(target) < state.version_key(cluster):
        state.die(f'Specified version to upgrade to "{target}" is equal to or lower than the '
                  f'cluster version "{cluster}". Downgrades are not supported yet')
    confirm(flags, "Are you sure you want to proceed?")
    with state.cluster() as c:
        c["version"] = target
        up = c.setdefault("kubeadm", {}).setdefault("upgraded", {})
        for n, node in c["nodes"].items():
            if node.get("root") == str(state.ROOT):
                up[n] = target
        repo = c["kubeadm"].get("image_repository")
    write_manifests(target, "", repo)
    print(f'[upgrade/successful] SUCCESS! Your cluster was upgraded to "{target}". Enjoy!')
    return 0


def cmd_version(args):
    flags, pos = parse(args, {"output": True}, {"o": "output"})
    if pos:
        state.die(f'unknown command "{pos[0]}" for "kubeadm version"')
    out = flags.get("output", "")
    v = state.VERSION
    k = minor(v)
    info = {"major": str(k[0]), "minor": str(k[1]), "gitVersion": v, "gitTreeState": "clean",
            "goVersion": "go1.22.10", "compiler": "gc", "platform": "linux/amd64"}
    if out == "short":
        print(v)
    elif out == "json":
        print(json.dumps({"clientVersion": info}, indent=2))
    elif out == "yaml":
        print("clientVersion:\n" + "".join(f"  {a}: {b}\n" for a, b in info.items()), end="")
    elif out == "":
        print(f'kubeadm version: &version.Info{{Major:"{k[0]}", Minor:"{k[1]}", '
              f'GitVersion:"{v}", GitTreeState:"clean", GoVersion:"go1.22.10", '
              'Compiler:"gc", Platform:"linux/amd64"}')
    else:
        state.die(f'invalid output format: {out}')
    return 0


def kubeadm_main(args, version=None):
    if version:
        state.VERSION = version
    handlers = {"init": cmd_init, "join": cmd_join, "token": cmd_token, "certs": cmd_certs,
                "reset": cmd_reset, "upgrade": cmd_upgrade, "version": cmd_version}
    if not args or args[0] not in handlers:
        state.die(f'unknown command "{args[0] if args else ""}" for "kubeadm"')
    return handlers[args[0]](args[1:])


def main(name, version, argv):
    """The brief's entry point: argv includes the program name."""
    state.NAME = name
    return kubeadm_main(list(argv[1:]), version=version)
