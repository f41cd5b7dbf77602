"""Shared state and helpers of the kube stand-ins.

ROOT is the node's root ($STANDIN_ROOT): every host path the stand-ins touch is mapped
under it with host(). The fake cluster lives in $STANDIN_CLUSTER/cluster.json (default
$STANDIN_ROOT/.standin-cluster), shared by every node of a multi-node test when they point
STANDIN_CLUSTER at the same directory. Open it only through `with cluster() as c:`.

cluster.json keys: nodes {name: {role, version, labels, taints, unschedulable, distro,
address, root, password}}, etcd {name: peer-address}, tokens {id: {secret, expires,
usages}}, ca_pem, version, api_up {node: bool}, applied [kind/name], plus per-distro keys
(k3s: {secret, ca_hash, critical}; kubeadm: {certificate_key, certs_uploaded, endpoint}).
"""
import base64
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from kube.flags import parse_flags  # noqa: F401  (re-exported API)
from kube.yamlish import simple_yaml, YamlError  # noqa: F401  (re-exported API)

# Set by kube.main.run before a personality runs.
NAME = "kube-standin"
VERSION = "v0.0.0"


def _root():
    r = os.environ.get("STANDIN_ROOT")
    if not r:
        print("kube stand-in: STANDIN_ROOT must be set", file=sys.stderr)
        sys.exit(2)
    return Path(r)


ROOT = _root()


def die(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


def host(p):
    """The real path of host path `p`; a path already under ROOT is returned unchanged, and
    a relative path is left relative (to the caller's working directory)."""
    s = str(p)
    for r in {str(ROOT), os.path.realpath(ROOT)}:
        if s == r or s.startswith(r.rstrip("/") + "/"):
            return Path(s)
    if not s.startswith("/"):
        return Path(s)
    return ROOT / s.lstrip("/")


# --- calls -------------------------------------------------------------------------------


def record(name, argv):
    """One line `<name> <args…>` in $STANDIN_LOG and the environment in $STANDIN_LOG.env, as
    _common.sh does."""
    log = os.environ.get("STANDIN_LOG")
    if not log:
        die(f"{name}: STANDIN_LOG must be set", 2)
    line = name + "".join(f" {a}" for a in argv)
    with open(log, "a") as f:
        f.write(line + "\n")
    with open(log + ".env", "a") as f:
        f.write(f"--- {name} {' '.join(argv)}\n")
        for k, v in os.environ.items():
            f.write(f"{k}={v}\n")


def maybe_fail(name, argv):
    """STANDIN_FAIL holds space-separated `name:arg` pairs; a matching arg fails the call."""
    for pair in os.environ.get("STANDIN_FAIL", "").split():
        for a in argv:
            if pair == f"{name}:{a}":
                die(f"{name}: failing as asked by STANDIN_FAIL ({pair})")


def maybe_sleep(name, argv):
    """STANDIN_SLEEP holds space-separated `name:arg=seconds` pairs."""
    for pair in os.environ.get("STANDIN_SLEEP", "").split():
        want, _, secs = pair.partition("=")
        if secs and any(want == f"{name}:{a}" for a in argv):
            time.sleep(float(secs))


# --- the cluster ---------------------------------------------------------------------------

_DEFAULTS = {
    "nodes": {},
    "etcd": {},
    "tokens": {},
    "ca_pem": None,
    "version": None,
    "api_up": {},
    "applied": [],
}


def cluster_dir():
    return Path(os.environ.get("STANDIN_CLUSTER") or ROOT / ".standin-cluster")


@contextlib.contextmanager
def cluster():
    """The cluster as a dict, under an exclusive lock; saved (atomically) unless the body
    raises (die() included)."""
    d = cluster_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "cluster.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = d / "cluster.json"
        text = path.read_text() if path.exists() else ""
        c = json.loads(text) if text.strip() else {}
        for k, v in _DEFAULTS.items():
            c.setdefault(k, copy.deepcopy(v))
        yield c
        tmp = d / f"cluster.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def version_key(v):
    """Orders v1.31.4+k3s1 < v1.32.0 (build metadata ignored)."""
    nums = re.findall(r"\d+", str(v or "").split("+")[0])
    return tuple(int(n) for n in nums[:3])


def register_node(c, name, **fields):
    """Adds or updates node `name`; the cluster version never goes down and follows the
    newest control-plane node."""
    node = c["nodes"].setdefault(
        name,
        {
            "role": "worker",
            "version": VERSION,
            "labels": {},
            "taints": [],
            "unschedulable": False,
            "distro": NAME,
            "address": "",
            "root": str(ROOT),
            "password": None,
        },
    )
    node.update(fields)
    cp = [n["version"] for n in c["nodes"].values() if n.get("role") == "control-plane" and n.get("version")]
    if cp:
        newest = max(cp, key=version_key)
        if not c.get("version") or version_key(newest) > version_key(c["version"]):
            c["version"] = newest
    return node


def unit_active(unit):
    return (ROOT / ".standin-systemd" / "active" / unit).exists()


def unit_enabled(unit):
    return (ROOT / ".standin-systemd" / "enabled" / unit).exists()


def hostname():
    try:
        name = (ROOT / "proc/sys/kernel/hostname").read_text().strip()
    except OSError:
        name = ""
    return name or "localhost"


# --- tokens --------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
BOOTSTRAP_TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


def new_token():
    """(id, secret) of a bootstrap token: [a-z0-9]{6}, [a-z0-9]{16}."""
    pick = lambda n: "".join(secrets.choice(_ALNUM) for _ in range(n))  # noqa: E731
    return pick(6), pick(16)


def add_token(c, token_id, secret, ttl_seconds, usages):
    """Records a bootstrap token; a ttl of None or 0 never expires."""
    c["tokens"][token_id] = {
        "secret": secret,
        "expires": (time.time() + ttl_seconds) if ttl_seconds else None,
        "usages": list(usages),
    }


def check_token(c, token, usage):
    """None if `id.secret` is a live bootstrap token allowing `usage`, else why not."""
    m = BOOTSTRAP_TOKEN_RE.match(token or "")
    if not m:
        return f"the bootstrap token {token!r} was not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}"
    tid, secret = m.groups()
    t = c["tokens"].get(tid)
    if t is None or t.get("secret") != secret:
        return f'bootstrap token "{tid}" is invalid for this cluster or it has expired'
    if t.get("expires") is not None and t["expires"] < time.time():
        return f'bootstrap token "{tid}" has expired'
    if usage not in t.get("usages", []):
        return f'bootstrap token "{tid}" may not be used for {usage}'
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_duration(s):
    """Seconds in a Go duration (`1h0m0s`, `30m`, `0s`, `0`, `1.5h`); ValueError otherwise."""
    text = str(s).strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            raise ValueError(f'time: invalid duration "{s}"')
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f'time: invalid duration "{s}"')
    return sign * total


# --- files, certificates, kubeconfigs -------------------------------------------------------


def write_file(path, text, mode=0o644):
    """Writes `text` (str or bytes) at host path `path` (mapped with host()), atomically,
    with `mode`; parent directories are created."""
    p = host(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, p)
    return p


def _openssl(args, data=None):
    out = subprocess.run(["openssl", *args], input=data, capture_output=True)
    if out.returncode != 0:
        die(f"{NAME} stand-in: openssl {' '.join(args)}: {out.stderr.decode().strip()}")
    return out.stdout


def make_ca(cert, key, cn):
    """A real self-signed EC P-256 CA at host paths `cert` and `key` (key mode 0600)."""
    cert, key = host(cert), host(key)
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-days", "3650", "-subj", f"/CN={cn}",
              "-keyout", str(key), "-out", str(cert)])
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert.read_text()


def spki_sha256(pem_text):
    """Hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (kubeadm's CA pin)."""
    data = pem_text.encode() if isinstance(pem_text, str) else pem_text
    pub = _openssl(["x509", "-pubkey", "-noout"], data)
    der = _openssl(["pkey", "-pubin", "-outform", "der"], pub)
    return hashlib.sha256(der).hexdigest()


def kubeconfig_text(server, ca_pem, user, token=None):
    """A kubeconfig for `server` trusting `ca_pem`, as `user` (bearer token if given, else a
    placeholder client certificate)."""
    ca = base64.b64encode((ca_pem or "").encode()).decode()
    if token is not None:
        cred = f"    token: {token}\n"
    else:
        fake = base64.b64encode(f"stand-in client certificate for {user}\n".encode()).decode()
        cred = f"    client-certificate-data: {fake}\n    client-key-data: {fake}\n"
    return (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        f"    certificate-authority-data: {ca}\n"
        f"    server: {server}\n"
        "  name: default\n"
        "contexts:\n"
        "- context:\n"
        "    cluster: default\n"
        f"    user: {user}\n"
        "  name: default\n"
        "current-context: default\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"{cred}"
    )


def read_kubeconfig(path):
    """{server, ca_pem, token, user} of the kubeconfig at host path `path`, or None when it
    is missing or names no server."""
    try:
        text = host(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None

    def field(name):
        m = re.search(rf"^\s*-?\s*{re.escape(name)}:\s*['\"]?([^'\"\s]+)", text, re.M)
        return m.group(1) if m else None

    server = field("server")
    if not server:
        return None
    ca = field("certificate-authority-data")
    try:
        ca_pem = base64.b64decode(ca).decode() if ca else None
    except (ValueError, UnicodeDecodeError):
        ca_pem = None
    users = re.search(r"^\s+user:\s*(\S+)", text, re.M)
    return {"server": server, "ca_pem": ca_pem, "token": field("token"),
            "user": users.group(1) if users else None}
