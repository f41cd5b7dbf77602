"""kubectl's mutating verbs against the stand-in cluster: drain, cordon, uncordon,
delete node, label node, taint node, apply -f (see kube/kubectl.py for the rest)."""
import hashlib
import json
import re
import sys
from pathlib import Path

from kube import state
from kube.kubectl import Conn, NODE_ALIASES, fail, parse, parse_taint

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _timeout(flags):
    if "timeout" in flags:
        try:
            state.parse_duration(flags["timeout"])
        except ValueError as e:
            fail(f'error: invalid argument "{flags["timeout"]}" for "--timeout" flag: {e}')


def _node_targets(pos, verb):
    """`node NAME…`, `nodes NAME…` or `node/NAME…` → names."""
    if not pos:
        fail("error: resource(s) were provided, but no name was specified" if verb == "delete"
             else "error: you must specify the type of resource")
    if "/" in pos[0]:
        names = []
        for p in pos:
            kind, _, name = p.partition("/")
            if kind not in NODE_ALIASES:
                fail(f"error: the stand-in kubectl {verb}s only nodes, not {kind}")
            names.append(name)
        return names
    if pos[0] not in NODE_ALIASES:
        fail(f'error: the server doesn\'t have a resource type "{pos[0]}"')
    if len(pos) < 2:
        fail("error: resource(s) were provided, but no name was specified")
    return pos[1:]


def _get(c, name):
    node = c["nodes"].get(name)
    if node is None:
        fail(f'Error from server (NotFound): nodes "{name}" not found')
    return node


def cmd_drain(args, default_kubeconfig):
    flags, pos = parse(args, {"ignore-daemonsets": False, "delete-emptydir-data": False,
                              "force": False, "timeout": True, "grace-period": True,
                              "disable-eviction": False, "selector": True,
                              "pod-selector": True, "skip-wait-for-delete-timeout": True},
                       {"l": "selector"})
    _timeout(flags)
    if len(pos) != 1:
        fail("error: USAGE: drain NODE [flags]" if not pos else
             "error: the stand-in kubectl drains exactly one node")
    conn = Conn(flags, default_kubeconfig)
    conn.forbid_node_identity(f'pods "{pos[0]}"/eviction')
    with state.cluster() as c:
        conn.check(c)
        node = _get(c, pos[0])
        node["unschedulable"] = True
    name = pos[0]
    print(f"node/{name} cordoned")
    # Every node runs DaemonSet pods (the CNI, kube-proxy or svclb) and some pod with an
    # emptyDir (metrics-server), so kubectl refuses without these two flags.
    if not flags.get("ignore-daemonsets"):
        fail(f'error: unable to drain node "{name}" due to error: cannot delete DaemonSet-'
             "managed Pods (use --ignore-daemonsets to ignore): kube-system/node-agent-x7k2p, "
             "continuing command...\nThere are pending nodes to be drained:\n " + name)
    if not flags.get("delete-emptydir-data"):
        fail(f'error: unable to drain node "{name}" due to error: cannot delete Pods with '
             "local storage (use --delete-emptydir-data to override): "
             "kube-system/metrics-server-5985cbc9d7-q4l9n, continuing command...\n"
             "There are pending nodes to be drained:\n " + name)
    print(f"node/{name} drained")
    return 0


def _cordon(args, default_kubeconfig, value):
    flags, pos = parse(args, {"selector": True, "dry-run": True}, {"l": "selector"})
    if not pos:
        fail(f"error: USAGE: {'cordon' if value else 'uncordon'} NODE [flags]")
    conn = Conn(flags, default_kubeconfig)
    conn.forbid_node_identity(f'nodes "{pos[0]}"')
    with state.cluster() as c:
        conn.check(c)
        done = []
        for name in pos:
            node = _get(c, name)
            was = bool(node.get("unschedulable"))
            node["unschedulable"] = value
            done.append((name, was == value))
    word = "cordoned" if value else "uncordoned"
    for name, same in done:
        print(f"node/{name} already {word}" if same else f"node/{name} {word}")
    return 0


def cmd_cordon(args, default_kubeconfig):
    return _cordon(args, default_kubeconfig, True)


def cmd_uncordon(args, default_kubeconfig):
    return _cordon(args, default_kubeconfig, False)


def cmd_delete(args, default_kubeconfig):
    flags, pos = parse(args, {"timeout": True, "wait": False, "force": False,
                              "grace-period": True, "ignore-not-found": False,
                              "now": False}, {})
    _timeout(flags)
    if pos[:1] in (["secret"], ["secrets"]):
        return _delete_secret(flags, pos[1:], default_kubeconfig)
    names = _node_targets(pos, "delete")
    conn = Conn(flags, default_kubeconfig)
    conn.forbid_node_identity(f'nodes "{names[0]}"')
    with state.cluster() as c:
        conn.check(c)
        gone = []
        for name in names:
            if name not in c["nodes"]:
                if flags.get("ignore-not-found"):
                    continue
                fail(f'Error from server (NotFound): nodes "{name}" not found')
            # Deleting a k3s Node also removes its etcd member (k3s's etcd controller) and
            # its password Secret; k0s and kubeadm members stay until removed in etcd.
            k3s = c["nodes"][name].get("distro") == "k3s"
            del c["nodes"][name]
            c["api_up"].pop(name, None)
            if k3s:
                c["etcd"].pop(name, None)
            gone.append(name)
    for name in gone:
        print(f'node "{name}" deleted')
    return 0


def _delete_secret(flags, names, default_kubeconfig):
    """`delete secret kubeadm-certs -n kube-system`: the one Secret the stand-ins keep
    (kubeadm's uploaded control-plane certificates, in cluster.json["kubeadm"])."""
    if names != ["kubeadm-certs"] or flags.get("namespace") != "kube-system":
        fail(f"error: the stand-in kubectl deletes only the kube-system/kubeadm-certs "
             f"Secret, not {names}")
    conn = Conn(flags, default_kubeconfig)
    conn.forbid_node_identity('secrets "kubeadm-certs"')
    with state.cluster() as c:
        conn.check(c)
        k = c.get("kubeadm") or {}
        if not k.get("certs_uploaded"):
            if flags.get("ignore-not-found"):
                return 0
            fail('Error from server (NotFound): secrets "kubeadm-certs" not found')
        for key in ("certs_uploaded", "certificate_key", "certs"):
            k.pop(key, None)
    print('secret "kubeadm-certs" deleted')
    return 0


def cmd_label(args, default_kubeconfig):
    flags, pos = parse(args, {"overwrite": False, "list": False, "dry-run": True}, {})
    if len(pos) < 2:
        fail("error: one or more resources must be specified as <resource> <name> or <resource>/<name>")
    if "/" in pos[0]:
        names, changes = _node_targets(pos[:1], "label"), pos[1:]
    else:
        names, changes = _node_targets(pos[:2], "label"), pos[2:]
    if not changes:
        fail("error: at least one label update is required")
    sets, removes = {}, []
    for ch in changes:
        if ch.endswith("-") and "=" not in ch:
            removes.append(ch[:-1])
            continue
        key, eq, value = ch.partition("=")
        if not eq or not LABEL_KEY.match(key) or not LABEL_VALUE.match(value) or len(value) > 63:
            fail(f'error: invalid label spec: {ch}')
        sets[key] = value
    conn = Conn(flags, default_kubeconfig)
    with state.cluster() as c:
        conn.check(c)
        for name in names:
            labels = _get(c, name).setdefault("labels", {})
            for k, v in sets.items():
                if k in labels and labels[k] != v and not flags.get("overwrite"):
                    fail(f"error: '{k}' already has a value ({labels[k]}), and --overwrite is false")
                labels[k] = v
            for k in removes:
                labels.pop(k, None)
    for name in names:
        print(f"node/{name} labeled")
    return 0


def cmd_taint(args, default_kubeconfig):
    flags, pos = parse(args, {"overwrite": False, "all": False, "selector": True,
                              "dry-run": True}, {"l": "selector"})
    if len(pos) < 2:
        fail("error: at least one taint update is required")
    if "/" in pos[0]:
        names, changes = _node_targets(pos[:1], "taint"), pos[1:]
    else:
        names, changes = _node_targets(pos[:2], "taint"), pos[2:]
    if not changes:
        fail("error: at least one taint update is required")
    adds, removes = [], []
    for ch in changes:
        if ch.endswith("-"):
            removes.append(ch[:-1])
            continue
        t = parse_taint(ch)
        if ":" not in ch or not t["key"] or not LABEL_KEY.match(t["key"]):
            fail(f'error: invalid taint spec: {ch}, ')
        if t["effect"] not in TAINT_EFFECTS:
            fail(f"error: invalid taint spec: {ch}, invalid taint effect: {t['effect']}, "
                 "unsupported taint effect")
        adds.append(t)
    conn = Conn(flags, default_kubeconfig)
    with state.cluster() as c:
        conn.check(c)
        for name in names:
            node = _get(c, name)
            taints = [parse_taint(t) if isinstance(t, str) else t for t in node.get("taints") or []]
            for t in adds:
                same = [o for o in taints if o["key"] == t["key"] and o["effect"] == t["effect"]]
                if same and not flags.get("overwrite"):
                    fail(f"error: node {name} already has {t['key']} taint(s) with same effect(s) "
                         "and --overwrite is false")
                taints = [o for o in taints if o not in same] + [t]
            for r in removes:
                key, _, effect = r.partition(":")
                key = key.partition("=")[0]
                before = len(taints)
                taints = [o for o in taints if not (o["key"] == key and (not effect or o["effect"] == effect))]
                if len(taints) == before:
                    fail(f"error: taint {r!r} not found")
            node["taints"] = [f"{t['key']}={t['value']}:{t['effect']}" if "value" in t
                              else f"{t['key']}:{t['effect']}" for t in taints]
    for name in names:
        print(f"node/{name} {'tainted' if adds else 'untainted'}")
    return 0


# --- apply ---------------------------------------------------------------------------------

_GROUPS = {"Deployment": "apps", "DaemonSet": "apps", "StatefulSet": "apps",
           "ReplicaSet": "apps", "ClusterRole": "rbac.authorization.k8s.io",
           "ClusterRoleBinding": "rbac.authorization.k8s.io",
           "Role": "rbac.authorization.k8s.io", "RoleBinding": "rbac.authorization.k8s.io",
           "CustomResourceDefinition": "apiextensions.k8s.io"}


def _yaml_objects(text, source):
    """(kind, name) of each document, found by its `apiVersion:`, `kind:` and
    `metadata: name:` lines (the stand-in does not parse YAML fully)."""
    objs = []
    for doc in re.split(r"(?m)^---[^\n]*$", text):
        body = "\n".join(line for line in doc.splitlines() if not line.lstrip().startswith("#"))
        if not body.strip():
            continue
        kind = re.search(r"(?m)^kind:\s*['\"]?([A-Za-z0-9]+)", body)
        api = re.search(r"(?m)^apiVersion:\s*\S+", body)
        if not kind or not api:
            missing = "kind" if not kind else "apiVersion"
            fail(f'error: error validating "{source}": error validating data: {missing} not '
                 "set; if you choose to ignore these errors, turn validation off with "
                 "--validate=false")
        meta = re.search(r"(?m)^metadata:\s*\n((?:[ \t]+.*\n?)*)", body)
        name = re.search(r"(?m)^[ \t]+name:\s*['\"]?([^'\"\s]+)", meta.group(1)) if meta else None
        if not name:
            fail(f'error: error when retrieving current configuration of "{source}": '
                 "resource name may not be empty")
        objs.append((kind.group(1), name.group(1)))
    return objs


def _json_objects(text, source):
    try:
        doc = json.loads(text)
    except ValueError as e:
        fail(f'error: error parsing {source}: {e}')
    docs = doc.get("items", []) if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
    objs = []
    for d in docs:
        if not isinstance(d, dict) or not d.get("kind") or not d.get("apiVersion"):
            missing = "kind" if not (isinstance(d, dict) and d.get("kind")) else "apiVersion"
            fail(f'error: error validating "{source}": error validating data: {missing} not set')
        name = (d.get("metadata") or {}).get("name")
        if not name:
            fail(f'error: error when retrieving current configuration of "{source}": '
                 "resource name may not be empty")
        objs.append((d["kind"], name))
    return objs


def _files(arg):
    if arg == "-":
        return [("-", sys.stdin.read())]
    p = state.host(arg)
    if not p.exists():
        fail(f'error: the path "{arg}" does not exist')
    if p.is_dir():
        return [(str(Path(arg) / f.name), f.read_text()) for f in sorted(p.iterdir())
                if f.is_file() and f.suffix in (".yaml", ".yml", ".json")]
    return [(arg, p.read_text())]


def cmd_apply(args, default_kubeconfig):
    flags, pos = parse(args, {"filename": "list", "server-side": False,
                              "force-conflicts": False, "field-manager": True,
                              "validate": True, "wait": False, "prune": False,
                              "dry-run": True}, {"f": "filename"})
    if pos:
        fail("error: Unexpected args: " + str(pos))
    if not flags.get("filename"):
        fail("error: must specify one of -f and -k")
    objs = []
    for arg in flags["filename"]:
        for source, text in _files(arg):
            objs += _json_objects(text, source) if source.endswith(".json") else _yaml_objects(text, source)
    if not objs:
        fail("error: no objects passed to apply")
    conn = Conn(flags, default_kubeconfig)
    with state.cluster() as c:
        conn.check(c)
        lines = []
        for kind, name in objs:
            key = f"{kind}/{name}"
            group = _GROUPS.get(kind)
            shown = f"{kind.lower()}{'.' + group if group else ''}/{name}"
            if key in c["applied"]:
                lines.append(f"{shown} {'serverside-applied' if flags.get('server-side') else 'unchanged'}")
            else:
                c["applied"].append(key)
                lines.append(f"{shown} {'serverside-applied' if flags.get('server-side') else 'created'}")
    print("\n".join(lines))
    return 0


def cmd_exec(args, default_kubeconfig):
    """`kubectl exec etcd-NODE -- etcdctl … member list -w json | member remove HEXID`:
    the one exec bootstrap does, into a kubeadm control plane's etcd static pod."""
    if "--" not in args:
        fail("error: you must specify at least one command for the container")
    cut = args.index("--")
    flags, pos = parse(args[:cut], {"container": True, "stdin": False, "tty": False},
                       {"c": "container", "i": "stdin", "t": "tty"})
    command = args[cut + 1:]
    if len(pos) != 1 or not pos[0].startswith("etcd-") or command[:1] != ["etcdctl"]:
        fail("error: the stand-in execs only etcdctl in an etcd-NODE pod")
    if flags.get("namespace") != "kube-system":
        fail(f'Error from server (NotFound): pods "{pos[0]}" not found')
    words = [w for w in command[1:] if not w.startswith("--")]
    needed = ("--endpoints=", "--cacert=", "--cert=", "--key=")
    if not all(any(w.startswith(n) for w in command) for n in needed):
        fail("Error: context deadline exceeded (etcdctl needs --endpoints and the client TLS "
             "files inside the pod)")
    conn = Conn(flags, default_kubeconfig)
    conn.forbid_node_identity(f'pods "{pos[0]}"')

    def member_id(name):
        return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)

    with state.cluster() as c:
        conn.check(c)
        if pos[0][len("etcd-"):] not in c["etcd"]:
            fail(f'Error from server (NotFound): pods "{pos[0]}" not found')
        if words[:2] == ["member", "list"]:
            members = [{"ID": member_id(n), "name": n,
                        "peerURLs": [f"https://{p}:2380"],
                        "clientURLs": [f"https://{p}:2379"]}
                       for n, p in sorted(c["etcd"].items())]
            print(json.dumps({"header": {"cluster_id": 1}, "members": members}))
            return 0
        if words[:2] == ["member", "remove"] and len(words) == 3:
            for n in list(c["etcd"]):
                if format(member_id(n), "x") == words[2]:
                    del c["etcd"][n]
                    print(f"Member {words[2]} removed from cluster 1")
                    return 0
            fail(f"Error: etcdserver: member not found ({words[2]})")
    fail(f"Error: unknown command {' '.join(words)!r} for the etcdctl stand-in")


VERBS = {"exec": cmd_exec, "drain": cmd_drain, "cordon": cmd_cordon, "uncordon": cmd_uncordon,
         "delete": cmd_delete, "label": cmd_label, "taint": cmd_taint, "apply": cmd_apply}
