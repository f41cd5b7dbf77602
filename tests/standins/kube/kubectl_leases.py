"""`kubectl get|create|replace|delete lease` as an API server does them for
coordination.k8s.io/v1 Leases: kept in cluster.json["leases"] ("namespace/name" -> object),
every write bumps metadata.resourceVersion, a `replace` whose resourceVersion is not the
stored one fails with Conflict, a `create` of an existing name with AlreadyExists.
Objects come on standard input (`-f -`), as JSON."""
import json
import sys

from kube import state
from kube.kubectl import Conn, fail, parse

KINDS = ("lease", "leases", "leases.coordination.k8s.io")
SHOWN = "leases.coordination.k8s.io"


def _key(flags, name):
    return f"{flags.get('namespace') or 'default'}/{name}"


def _read_object(flags):
    if flags.get("filename") != "-":
        fail("error: the lease stand-in only reads objects from standard input (-f -)")
    try:
        obj = json.loads(sys.stdin.read())
    except ValueError as e:
        fail(f"error: error parsing STDIN: {e}")
    if obj.get("kind") != "Lease" or obj.get("apiVersion") != "coordination.k8s.io/v1":
        fail("error: the lease stand-in takes only coordination.k8s.io/v1 Lease objects")
    meta = obj.get("metadata") or {}
    if not meta.get("name"):
        fail("error: resource name may not be empty")
    flags.setdefault("namespace", meta.get("namespace"))
    if meta.get("namespace") and meta["namespace"] != flags["namespace"]:
        fail("error: the namespace from the provided object does not match the namespace "
             "sent on the request")
    return obj


def _store(c, key, obj, verb):
    """Keeps `obj` at `key` with the next resourceVersion, and logs the write."""
    version = c.get("lease_version", 0) + 1
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["resourceVersion"] = str(version)
    c.setdefault("leases", {})[key] = obj
    c["lease_version"] = version
    c.setdefault("lease_log", []).append(
        [verb, obj["metadata"]["name"], obj.get("spec", {}).get("holderIdentity")])
    # bootstrap's upgrade lease: who was upgrading after each write, as [node, role] pairs.
    note = (obj["metadata"].get("annotations") or {}).get("bootstrap/upgrade")
    if note is not None:
        record = json.loads(note)
        c.setdefault("upgrade_log", []).append(sorted(
            [node, turn["role"]] for node, turn in (record.get("upgrading") or {}).items()))


def get(args, default_kubeconfig, names):
    flags, _ = parse(args, {"output": True}, {"o": "output"})
    conn = Conn(flags, default_kubeconfig)
    with state.cluster() as c:
        conn.check(c)
        leases = c.get("leases", {})
        items = []
        for name in names:
            obj = leases.get(_key(flags, name))
            if obj is None:
                fail(f'Error from server (NotFound): {SHOWN} "{name}" not found')
            items.append(obj)
    if flags.get("output") != "json" or len(items) != 1:
        fail("error: the lease stand-in prints one lease, with -o json")
    print(json.dumps(items[0], indent=2))
    return 0


def _write(args, default_kubeconfig, verb, refuse):
    """`kubectl create|replace -f -`: `refuse(current, obj, name)` fails the write as the
    API server would (`current`: the stored object, or None)."""
    flags, pos = parse(args, {"filename": True}, {"f": "filename"})
    if pos:
        fail("error: Unexpected args: " + str(pos))
    obj = _read_object(flags)
    conn = Conn(flags, default_kubeconfig)
    name = obj["metadata"]["name"]
    with state.cluster() as c:
        conn.check(c)
        key = _key(flags, name)
        refuse(c.get("leases", {}).get(key), obj, name)
        _store(c, key, obj, verb)
    print(f"lease.coordination.k8s.io/{name} {verb}d")
    return 0


def _refuse_create(current, obj, name):
    if current is not None:
        fail(f'Error from server (AlreadyExists): {SHOWN} "{name}" already exists')
    if obj["metadata"].get("resourceVersion"):
        fail("Error from server (BadRequest): resourceVersion should not be set on objects "
             "to be created")


def _refuse_replace(current, obj, name):
    if current is None:
        fail(f'Error from server (NotFound): {SHOWN} "{name}" not found')
    wanted = obj["metadata"].get("resourceVersion")
    if wanted and wanted != current["metadata"]["resourceVersion"]:
        fail(f'Error from server (Conflict): Operation cannot be fulfilled on {SHOWN} '
             f'"{name}": the object has been modified; please apply your changes to the '
             "latest version and try again")


def create(args, default_kubeconfig):
    return _write(args, default_kubeconfig, "create", _refuse_create)


def replace(args, default_kubeconfig):
    return _write(args, default_kubeconfig, "replace", _refuse_replace)
