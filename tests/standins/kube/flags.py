"""Command-line flags the way cobra/pflag (k3s uses urfave/cli, close enough) parse them.

parse_flags(argv, spec, aliases=None, error_prefix="Error") -> (flags, positionals)
  spec     {name: takes_value}; names with or without leading dashes. takes_value is
           True (string), False (boolean) or "list" (repeatable; values collected in a list).
  aliases  {short: name}, e.g. {"o": "output"}: `-o json`, `-ojson`, `-o=json`.
  Accepts `--x=v`, `--x v`, `--flag`, `--flag=false`; `--` ends the flags. An unknown
  flag dies with `<error_prefix>: unknown flag: --x` (kubectl says `error:`), a missing
  value with `<error_prefix>: flag needs an argument: --x`.
"""
import sys

_TRUE = {"true", "1", "t", "yes"}
_FALSE = {"false", "0", "f", "no"}


def _die(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def parse_flags(argv, spec, aliases=None, error_prefix="Error"):
    spec = {k.lstrip("-"): v for k, v in spec.items()}
    aliases = {k.lstrip("-"): v.lstrip("-") for k, v in (aliases or {}).items()}
    flags, positionals = {}, []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            positionals.extend(args[i:])
            break
        if not a.startswith("-") or a == "-":
            positionals.append(a)
            continue
        if a.startswith("--"):
            name, eq, value = a[2:].partition("=")
            shown = f"--{name}"
        else:
            short, rest = a[1], a[2:]
            if short not in aliases:
                _die(f"{error_prefix}: unknown shorthand flag: '{short}' in {a}")
            name = aliases[short]
            shown = f"-{short}"
            eq, value = ("=", rest[1:]) if rest.startswith("=") else (("=", rest) if rest else ("", ""))
        if name not in spec:
            _die(f"{error_prefix}: unknown flag: {shown}")
        kind = spec[name]
        if kind is False:
            if not eq:
                flags[name] = True
            elif value.lower() in _TRUE:
                flags[name] = True
            elif value.lower() in _FALSE:
                flags[name] = False
            else:
                _die(f'{error_prefix}: invalid argument "{value}" for "{shown}" flag: '
                     f'strconv.ParseBool: parsing "{value}": invalid syntax')
            continue
        if not eq:
            if i >= len(args):
                _die(f"{error_prefix}: flag needs an argument: {shown}")
            value = args[i]
            i += 1
        if kind == "list":
            flags.setdefault(name, []).append(value)
        else:
            flags[name] = value
    return flags, positionals
