"""simple_yaml(text) -> dict: the flat block YAML bootstrap writes for k3s (serde_yaml
output) and nothing more:

    key: scalar            # plain, 'single' ('' escapes a quote) or "double" quoted
    key: [a, 'b', "c"]     # flow list of scalars; [] and {} are empty
    key:                   # block list of scalars
    - item
    key:                   # nothing follows: null

Plain true/false become booleans, null/~ None; every other plain scalar stays a string
(k3s reads config values as flag strings). Anything else (nested maps, anchors, block
scalars, several documents) raises YamlError naming the line.
"""
import re


class YamlError(ValueError):
    pass


_KEY = re.compile(r"^([A-Za-z0-9_.+/-]+|'[^']*'|\"[^\"]*\"):(?:\s+(.*))?$")


def _strip_comment(s):
    """Drops a trailing ` # comment` outside quotes."""
    quote = None
    for i, ch in enumerate(s):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or s[i - 1] in " \t"):
            return s[:i].rstrip()
    return s.rstrip()


def _scalar(s, lineno):
    s = s.strip()
    if not s:
        return None
    if s[0] == "'":
        if len(s) < 2 or s[-1] != "'":
            raise YamlError(f"line {lineno}: unterminated single-quoted string: {s}")
        return s[1:-1].replace("''", "'")
    if s[0] == '"':
        if len(s) < 2 or s[-1] != '"':
            raise YamlError(f"line {lineno}: unterminated double-quoted string: {s}")
        body = s[1:-1]
        return re.sub(r'\\(["\\/nt])', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)
    if s[0] in "&*!|>%@`{[":
        raise YamlError(f"line {lineno}: unsupported YAML (stand-in parser): {s}")
    if s in ("true", "True", "TRUE"):
        return True
    if s in ("false", "False", "FALSE"):
        return False
    if s in ("null", "Null", "NULL", "~"):
        return None
    if ": " in s or s.endswith(":"):
        raise YamlError(f"line {lineno}: nested mappings are not supported: {s}")
    return s


def _flow_list(s, lineno):
    inner = s[1:-1].strip()
    if not inner:
        return []
    items, cur, quote = [], "", None
    for ch in inner:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur += ch
        elif ch == ",":
            items.append(cur)
            cur = ""
        elif ch in "[]{}":
            raise YamlError(f"line {lineno}: nested flow collections are not supported: {s}")
        else:
            cur += ch
    items.append(cur)
    return [_scalar(i, lineno) for i in items if i.strip()]


def _value(rest, lineno):
    if rest in ("[]",):
        return []
    if rest == "{}":
        return {}
    if rest.startswith("["):
        if not rest.endswith("]"):
            raise YamlError(f"line {lineno}: unterminated flow list: {rest}")
        return _flow_list(rest, lineno)
    return _scalar(rest, lineno)


def simple_yaml(text):
    out = {}
    pending = None  # key whose value may be a block list
    for lineno, raw in enumerate(text.splitlines(), 1):
        if raw.strip() in ("", "---") or raw.lstrip().startswith("#"):
            if raw.strip() == "---" and out:
                raise YamlError(f"line {lineno}: several YAML documents are not supported")
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"line {lineno}: tabs are not allowed for indentation")
        line = _strip_comment(raw)
        stripped = line.lstrip()
        if stripped.startswith("- ") or stripped == "-":
            if pending is None:
                raise YamlError(f"line {lineno}: list item without a key: {raw.strip()}")
            item = stripped[1:].strip()
            if item.startswith("[") or (_KEY.match(item) and not item[:1] in "'\""):
                raise YamlError(f"line {lineno}: only scalar list items are supported: {item}")
            if out[pending] is None:
                out[pending] = []
            out[pending].append(_scalar(item, lineno))
            continue
        if line != stripped:
            raise YamlError(f"line {lineno}: nested mappings are not supported: {raw.strip()}")
        m = _KEY.match(line)
        if not m:
            raise YamlError(f"line {lineno}: expected `key: value`: {raw.strip()}")
        key = m.group(1)
        if key[0] in "'\"":
            key = key[1:-1]
        if key in out:
            raise YamlError(f"line {lineno}: duplicate key {key!r}")
        rest = (m.group(2) or "").strip()
        out[key] = _value(rest, lineno) if rest else None
        pending = key if not rest else None
    return out
