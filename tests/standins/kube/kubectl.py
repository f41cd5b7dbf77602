"""kubectl against the stand-in cluster (kube/state.py).

kubectl_main(args, default_kubeconfig=None): args are what follows `kubectl` (or
`k3s kubectl`, `k0s kubectl`). The kubeconfig is --kubeconfig, else $KUBECONFIG (first
entry), else default_kubeconfig; it must exist and name a `server:`, else kubectl's
"localhost:8080 was refused". The API answers iff some node's apiserver is up
(any(cluster["api_up"].values())); a kubeconfig whose CA is not the cluster's fails TLS.

Verbs: get (--raw /readyz|/livez|/healthz|/version; nodes [NAME…] [-l SEL]
[-o name|json|wide|jsonpath=EXPR]), drain, cordon, uncordon, delete node, label node,
taint node, apply -f, version [--client] [-o json|yaml]; see kube/kubectl_ops.py for the
mutating verbs. Unknown verbs, flags and output formats fail the way kubectl does.
"""
import json
import os
import re
import sys

from kube import state

GLOBAL = {"kubeconfig": True, "namespace": True, "context": True, "request-timeout": True,
          "v": True, "server": True, "insecure-skip-tls-verify": False}
GLOBAL_ALIASES = {"n": "namespace", "v": "v", "s": "server"}
GLOBAL_VALUED = {"--kubeconfig", "--namespace", "-n", "--context", "--request-timeout",
                 "--v", "-v", "--server", "-s"}

KUBECTL_VERSION_FALLBACK = "v1.31.4"
NODE_ALIASES = ("node", "nodes", "no")
# Resource types `get` knows (besides nodes); they list as empty.
OTHER_TYPES = {"pods", "pod", "po", "deployments", "deployment", "deploy", "daemonsets",
               "daemonset", "ds", "services", "service", "svc", "namespaces", "namespace",
               "ns", "configmaps", "configmap", "cm", "secrets", "secret", "events", "ev"}


def fail(msg):
    state.die(msg, 1)


def verb_of(args):
    """The first positional argument (global flags with values skipped)."""
    i = 0
    while i < len(args):
        a = args[i]
        if a in GLOBAL_VALUED:
            i += 2
            continue
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
        i += 1
    return None


def parse(args, verb_spec, verb_aliases=None):
    spec = dict(GLOBAL)
    spec.update(verb_spec)
    aliases = dict(GLOBAL_ALIASES)
    aliases.update(verb_aliases or {})
    flags, pos = state.parse_flags(args, spec, aliases, error_prefix="error")
    verb = verb_of(args)
    if pos and pos[0] == verb:
        pos = pos[1:]
    return flags, pos


class Conn:
    """What the kubeconfig says, checked against the cluster."""

    def __init__(self, flags, default_kubeconfig):
        path = flags.get("kubeconfig") or (os.environ.get("KUBECONFIG") or "").split(":")[0]
        path = path or (str(default_kubeconfig) if default_kubeconfig else "")
        kc = state.read_kubeconfig(path) if path else None
        if kc is None:
            fail("The connection to the server localhost:8080 was refused - did you specify "
                 "the right host or port?")
        self.server = flags.get("server") or kc["server"]
        self.ca_pem = kc["ca_pem"]
        self.user = kc.get("user") or ""
        self.hostport = re.sub(r"^[a-z]+://", "", self.server).rstrip("/")

    def forbid_node_identity(self, what):
        """RBAC as a real API server has it: a kubelet's identity (system:node:NAME) may
        read nodes but not evict pods, cordon or delete nodes."""
        if self.user.startswith("system:node:"):
            fail(f'Error from server (Forbidden): {what} is forbidden: User "{self.user}" '
                 "cannot do this: RBAC: the node authorizer allows kubelets only their own "
                 "node's status and pods")

    def check(self, c):
        if not any(c["api_up"].values()) or not self.reaches(c):
            fail(f"The connection to the server {self.hostport} was refused - did you "
                 "specify the right host or port?")
        if self.ca_pem and c.get("ca_pem") and self.ca_pem.strip() != c["ca_pem"].strip():
            fail("Unable to connect to the server: tls: failed to verify certificate: "
                 "x509: certificate signed by unknown authority")


    def reaches(self, c):
        """Whether the server this kubeconfig names answers: a node's own address only
        while that node's API server is up; loopback and names (a node-local balancer,
        a load balancer) while any is."""
        host = self.hostport.rsplit(":", 1)[0].strip("[]")
        owners = {}
        for name, node in (c.get("nodes") or {}).items():
            if node.get("address"):
                owners[node["address"]] = name
        for name, ctl in ((c.get("k0s") or {}).get("controllers") or {}).items():
            if ctl.get("address"):
                owners[ctl["address"]] = name
        owner = owners.get(host)
        if owner is None:
            return True
        return bool(c["api_up"].get(owner))


def client_version():
    v = state.VERSION if state.NAME in ("k3s", "k0s", "kubectl") else KUBECTL_VERSION_FALLBACK
    return v if v.startswith("v") else KUBECTL_VERSION_FALLBACK


def kubectl_main(args, default_kubeconfig=None):
    verb = verb_of(args)
    if verb is None:
        if "--help" in args or "-h" in args or not args:
            print("kubectl controls the Kubernetes cluster manager.\n\nUsage:\n  kubectl [flags] [options]")
            return 0
        state.parse_flags(args, GLOBAL, GLOBAL_ALIASES, error_prefix="error")
        fail("error: you must specify a command")
    if verb == "get":
        return cmd_get(args, default_kubeconfig)
    if verb == "version":
        return cmd_version(args, default_kubeconfig)
    from kube import kubectl_ops

    if verb in ("create", "replace"):
        from kube import kubectl_leases

        return getattr(kubectl_leases, verb)(args, default_kubeconfig)
    if verb in kubectl_ops.VERBS:
        return kubectl_ops.VERBS[verb](args, default_kubeconfig)
    fail(f'error: unknown command "{verb}" for "kubectl"')


# --- get ---------------------------------------------------------------------------------


def node_object(name, n):
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": n.get("arch", "amd64"),
        "beta.kubernetes.io/os": "linux",
    }
    if n.get("role") == "control-plane":
        k3s = n.get("distro") == "k3s"
        labels["node-role.kubernetes.io/control-plane"] = "true" if k3s else ""
        if k3s:
            labels["node-role.kubernetes.io/master"] = "true"
            labels["node-role.kubernetes.io/etcd"] = "true"
    labels.update(n.get("labels") or {})
    taints = []
    for t in n.get("taints") or []:
        taints.append(parse_taint(t) if isinstance(t, str) else t)
    spec = {"taints": taints} if taints else {}
    if n.get("unschedulable"):
        spec["unschedulable"] = True
    ready = n.get("ready", True) is not False
    runtime = {"k3s": "containerd://1.7.23-k3s2", "k0s": "containerd://1.7.24"}.get(
        n.get("distro"), "containerd://1.7.24")
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": n.get("address") or ""},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "nodeInfo": {"kubeletVersion": n.get("version") or "",
                         "kubeProxyVersion": n.get("version") or "",
                         "containerRuntimeVersion": runtime,
                         "operatingSystem": "linux", "architecture": n.get("arch", "amd64"),
                         "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "kernelVersion": "6.1.0-28-amd64"},
        },
    }


def parse_taint(text):
    """`key[=value]:Effect` as a taint object (no validation: see kubectl_ops)."""
    kv, _, effect = text.rpartition(":")
    key, eq, value = kv.partition("=")
    t = {"key": key, "effect": effect}
    if eq:
        t["value"] = value
    return t


def parse_selector(sel):
    reqs = []
    for part in [p.strip() for p in sel.split(",") if p.strip()]:
        m = re.fullmatch(r"(!?)([A-Za-z0-9./_-]+)(?:\s*(==|=|!=)\s*([A-Za-z0-9._-]*))?", part)
        if not m or (m.group(1) and m.group(3)):
            fail(f'error: unable to parse requirement: found \'{part}\', expected: '
                 "identifier, ',', '!=', '==', '='")
        reqs.append((m.group(1) == "!", m.group(2), m.group(3), m.group(4)))
    return reqs


def matches(labels, reqs):
    for neg, key, op, value in reqs:
        if op is None:
            if (key in labels) == neg:
                return False
        elif op in ("=", "=="):
            if labels.get(key) != value:
                return False
        elif labels.get(key) == value:
            return False
    return True


def cmd_get(args, default_kubeconfig):
    flags, pos = parse(args, {"output": True, "selector": True, "raw": True,
                              "no-headers": False, "all-namespaces": False,
                              "show-labels": False},
                       {"o": "output", "l": "selector", "A": "all-namespaces"})
    conn = Conn(flags, default_kubeconfig)
    output = flags.get("output", "")
    if output == "yaml":
        output = "json"  # JSON is YAML; nobody parses it as more than that here
    if output and not (output in ("name", "json", "wide") or output.startswith("jsonpath=")):
        fail(f'error: unable to match a printer suitable for the output format "{output}", '
             "allowed formats are: json,jsonpath,name,wide,yaml")
    if "raw" in flags:
        if pos:
            fail("error: arguments may not be passed when --raw is specified")
        with state.cluster() as c:
            conn.check(c)
            version = c.get("version")
        raw = flags["raw"]
        if raw in ("/readyz", "/livez", "/healthz"):
            print("ok")
            return 0
        if raw == "/version":
            print(json.dumps(server_version(version), indent=2))
            return 0
        fail("Error from server (NotFound): the server could not find the requested resource")
    if not pos:
        fail("You must specify the type of resource to get. Use \"kubectl api-resources\" "
             "for a complete list of supported resources.")
    kind, names = pos[0], pos[1:]
    if "/" in kind:
        kind, _, first = kind.partition("/")
        names = [first, *names]
    from kube import kubectl_leases

    if kind in kubectl_leases.KINDS:
        return kubectl_leases.get(args, default_kubeconfig, names)
    with state.cluster() as c:
        conn.check(c)
        nodes = dict(c["nodes"])
    if kind not in NODE_ALIASES:
        if kind in OTHER_TYPES:
            if output == "json" or output.startswith("jsonpath="):
                print_items([], output)
            else:
                print("No resources found", file=sys.stderr)
            return 0
        fail(f'error: the server doesn\'t have a resource type "{kind}"')
    reqs = parse_selector(flags["selector"]) if "selector" in flags else []
    if names and reqs:
        fail("error: name cannot be provided when a selector is specified")
    for n in names:
        if n not in nodes:
            fail(f'Error from server (NotFound): nodes "{n}" not found')
    chosen = names or sorted(nodes)
    items = [node_object(n, nodes[n]) for n in chosen]
    items = [o for o in items if matches(o["metadata"]["labels"], reqs)]
    if not items and not output.startswith("jsonpath=") and output != "json":
        print("No resources found", file=sys.stderr)
        return 0
    print_items(items, output, flags.get("no-headers", False), single=len(names) == 1)
    return 0


def print_items(items, output, no_headers=False, single=False):
    if output == "name":
        for o in items:
            print(f"node/{o['metadata']['name']}")
    elif output == "json":
        doc = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items,
                                       "metadata": {"resourceVersion": ""}}
        print(json.dumps(doc, indent=4))
    elif output.startswith("jsonpath="):
        doc = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
        print(jsonpath(output[len("jsonpath="):], doc), end="")
    else:
        wide = output == "wide"
        header = ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
        if wide:
            header += ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION",
                       "CONTAINER-RUNTIME"]
        rows = [] if no_headers else [header]
        for o in items:
            labels = o["metadata"]["labels"]
            roles = sorted(k.split("/", 1)[1] for k in labels
                           if k.startswith("node-role.kubernetes.io/"))
            status = "Ready" if o["status"]["conditions"][0]["status"] == "True" else "NotReady"
            if o["spec"].get("unschedulable"):
                status += ",SchedulingDisabled"
            info = o["status"]["nodeInfo"]
            row = [o["metadata"]["name"], status, ",".join(roles) or "<none>", "5m",
                   info["kubeletVersion"]]
            if wide:
                row += [o["status"]["addresses"][0]["address"] or "<none>", "<none>",
                        info["osImage"], info["kernelVersion"], info["containerRuntimeVersion"]]
            rows.append(row)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))] if rows else []
        for r in rows:
            print("   ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())


# --- jsonpath ------------------------------------------------------------------------------


def _path_steps(expr):
    steps, i = [], 0
    if expr.startswith("$"):
        i = 1
    while i < len(expr):
        ch = expr[i]
        if ch == ".":
            i += 1
            name = ""
            while i < len(expr) and expr[i] not in ".[":
                if expr[i] == "\\" and i + 1 < len(expr):
                    i += 1
                name += expr[i]
                i += 1
            if name:
                steps.append(("key", name))
        elif ch == "[":
            end = expr.find("]", i)
            if end < 0:
                fail(f"error: error parsing jsonpath {{{expr}}}, unterminated array")
            inner = expr[i + 1:end].strip()
            i = end + 1
            if inner == "*":
                steps.append(("all", None))
            elif re.fullmatch(r"-?\d+", inner):
                steps.append(("index", int(inner)))
            elif inner[:1] in "'\"" and inner[-1:] == inner[:1]:
                steps.append(("key", inner[1:-1]))
            else:
                fail(f"error: error parsing jsonpath {{{expr}}}: unsupported [{inner}] (stand-in)")
        else:
            fail(f"error: error parsing jsonpath {{{expr}}}, unrecognized character {ch!r}")
    return steps


def jsonpath(template, doc):
    out, pos = [], 0
    for m in re.finditer(r"\{([^{}]*)\}", template):
        out.append(template[pos:m.start()])
        pos = m.end()
        expr = m.group(1).strip()
        if not expr.startswith((".", "$")):
            fail(f"error: error parsing jsonpath {{{expr}}}: unsupported in the stand-in")
        values = [doc]
        for kind, arg in _path_steps(expr):
            nxt = []
            for v in values:
                if kind == "key" and isinstance(v, dict) and arg in v:
                    nxt.append(v[arg])
                elif kind == "all" and isinstance(v, list):
                    nxt.extend(v)
                elif kind == "all" and isinstance(v, dict):
                    nxt.extend(v.values())
                elif kind == "index" and isinstance(v, list) and -len(v) <= arg < len(v):
                    nxt.append(v[arg])
            values = nxt
        out.append(" ".join(v if isinstance(v, str) else json.dumps(v) for v in values))
    out.append(template[pos:])
    return "".join(out)


# --- version -------------------------------------------------------------------------------


def _info(v):
    m = re.match(r"v(\d+)\.(\d+)", v or "")
    return {"major": m.group(1) if m else "", "minor": m.group(2) if m else "",
            "gitVersion": v or "", "platform": "linux/amd64"}


def server_version(v):
    return _info(v)


def cmd_version(args, default_kubeconfig):
    flags, pos = parse(args, {"client": False, "output": True}, {"o": "output"})
    if pos:
        fail(f"error: unknown command \"{pos[0]}\" for \"kubectl version\"")
    output = flags.get("output", "")
    if output not in ("", "json", "yaml"):
        fail("error: --output must be 'yaml' or 'json'")
    doc = {"clientVersion": _info(client_version()), "kustomizeVersion": "v5.4.2"}
    if not flags.get("client"):
        conn = Conn(flags, default_kubeconfig)
        with state.cluster() as c:
            conn.check(c)
            doc["serverVersion"] = server_version(c.get("version"))
    if output == "json":
        print(json.dumps(doc, indent=2))
    elif output == "yaml":
        for k, v in doc.items():
            if isinstance(v, dict):
                print(f"{k}:")
                for kk, vv in v.items():
                    print(f"  {kk}: {vv}")
            else:
                print(f"{k}: {v}")
    else:
        print(f"Client Version: {doc['clientVersion']['gitVersion']}")
        print(f"Kustomize Version: {doc['kustomizeVersion']}")
        if "serverVersion" in doc:
            print(f"Server Version: {doc['serverVersion']['gitVersion']}")
    return 0
