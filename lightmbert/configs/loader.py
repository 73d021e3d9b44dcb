"""Typed YAML config loading shared by data_prep and trainer.

A config is a tree of dataclasses (one per section, see schema.py). `load()` reads a YAML
file, applies `--section.key=value` overrides, and builds the dataclasses, checking every
key and type on the way. Errors name the full key path and where the value came from:

    packing.seq_len: expected int, got 'abc' in configs/data/x.yaml

Precedence: CLI override > YAML file > dataclass default. String values may use
`${VAR}` / `${VAR:-default}` environment expansion and a leading `~` (for paths).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

__all__ = ["ConfigError", "load", "from_dict", "to_dict", "dump", "parse_overrides",
           "field_docs", "describe"]


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type (message names key + source)."""


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(s: str) -> str:
    """`${VAR}` / `${VAR:-default}` from the environment, then `~` at the start."""
    def sub(m: re.Match) -> str:
        val = os.environ.get(m.group(1))
        if val is None or val == "":
            if m.group(2) is None:
                raise KeyError(m.group(1))
            return m.group(2)
        return val
    return os.path.expanduser(_ENV_RE.sub(sub, s))


# ---------------------------------------------------------------------------- type checks
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, where: str) -> Any:
    """Check/convert one value against a type hint; raise ConfigError naming `path`."""
    def fail(expected: str | None = None) -> ConfigError:
        return ConfigError(f"{path}: expected {expected or _type_name(tp)}, got {value!r}{where}")

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise fail(f"a mapping (section {tp.__name__})")
        return _build(tp, value, path, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, where)
            except ConfigError:
                pass
        raise fail()
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise fail(f"one of {_type_name(tp)}")
    if origin in (list, tuple):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected: `files: a.txt`
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        out = [_convert(v, item_tp, f"{path}[{i}]", where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail()
        ktp, vtp = typing.get_args(tp) or (Any, Any)
        return {_convert(k, ktp, f"{path}", where): _convert(v, vtp, f"{path}.{k}", where)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads `1e-4` as a string
        raise fail()
    if tp is str:
        if isinstance(value, str):
            try:
                return expand_env(value)
            except KeyError as e:
                raise ConfigError(f"{path}: environment variable {e.args[0]} is not set "
                                  f"(in {value!r}; use ${{VAR:-default}}){where}") from None
        raise fail()
    raise ConfigError(f"{path}: unsupported type {tp!r} in schema")  # a bug in schema.py


def _build(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            p = f"{prefix}.{key}" if prefix else str(key)
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{p}: unknown key{where} (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        p = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], p, where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _convert({}, hints[name], p, where)
            else:
                raise ConfigError(f"{p}: missing required value ({_type_name(hints[name])}){where}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks raise these
        msg = str(e)
        head, sep, rest = msg.partition(": ")
        if sep and head in fields:  # "seq_len: ..." → "packing.seq_len: ..."
            key = f"{prefix}.{head}" if prefix else head
            raise ConfigError(f"{key}: {rest}{where}") from None
        raise ConfigError(f"{prefix or cls.__name__}: {msg}{where}") from None
    return obj


# ---------------------------------------------------------------------------- overrides
class _Replace(dict):
    """A mapping given literally on the command line (`--a.b={...}`): it replaces the file's
    value instead of being merged into it (`--a.b.c=v` still sets one key)."""


def _hint_at(cls: type, dotted: str) -> Any:
    """Type hint of `a.b.c` in the schema (None where the path leaves the schema). A part under
    a dict-typed field is a key of that dict: `eval.sets.ood.pairs` is EvalSetConfig's `pairs`
    (str), so such an override is typed (a path `123` stays a string) and checked as any other."""
    tp: Any = cls
    for part in dotted.split("."):
        if typing.get_origin(tp) is dict:
            tp = (typing.get_args(tp) or (Any, Any))[1]
            continue
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def parse_overrides(args: list[str], cls: type) -> dict:
    """`--a.b=value` (or `--a.b value`) → nested dict. Values are YAML scalars/lists,
    except where the schema wants a string (then the text is kept as given)."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"override {arg!r}: expected --section.key=value")
        body = arg[2:]
        if "=" in body:
            key, text = body.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, text = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg!r}: missing value (use --{body}=VALUE)")
        i += 1
        tp = _hint_at(cls, key)
        if tp is str or (typing.get_origin(tp) in (Union, types.UnionType)
                         and str in typing.get_args(tp) and text not in ("null", "~")):
            value: Any = text
        else:
            try:
                value = yaml.safe_load(text) if text != "" else ""
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: cannot parse {text!r} (from --{key}): {e}") from None
            if isinstance(value, dict):
                value = _Replace(value)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key}: {part} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and not isinstance(v, _Replace) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and not isinstance(v, _Replace):
            out.update(_flatten(v, p))
        else:
            out[p] = v
    return out


# ---------------------------------------------------------------------------- public API
def from_dict(cls: type, raw: dict, source: str = "") -> Any:
    where = f" in {source}" if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"top level: expected a mapping of sections{where}")
    return _build(cls, raw, "", where)


def load(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Any:
    """Build `cls` from a YAML file (optional) plus CLI overrides (CLI > file > defaults)."""
    raw: dict = {}
    src = ""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"top level: expected a mapping of sections in {p}")
        src = str(p)
    over = parse_overrides(list(overrides or []), cls)
    if over:
        # Validate override values first so an error names the flag, not the file.
        merged_file = raw
        for key, value in _flatten(over).items():
            tp = _hint_at(cls, key)
            if tp is None:
                parent, _, leaf = key.rpartition(".")
                ptp = _hint_at(cls, parent) if parent else cls
                if not dataclasses.is_dataclass(ptp):
                    # inside a dict-typed field (e.g. input.languages.xx): checked on build
                    continue
                known = ", ".join(sorted(f.name for f in dataclasses.fields(ptp)))
                raise ConfigError(f"{key}: unknown key (from --{key}; known keys here: {known})")
            _convert(value, tp, key, f" (from --{key})")
        raw = _merge(merged_file, over)
        src = f"{src} + command-line overrides" if src else "command-line overrides"
    return from_dict(cls, raw, src)


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def dump(cfg: Any, path: str | os.PathLike, header: str = "") -> None:
    """Write the resolved config as YAML, atomically (temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- documentation
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every leaf field: the config reference."""
    rows = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default, docs.get(f.name, "")))
        # a dict of sections (eval.sets): its entries' keys are documented as `key.<name>.field`
        if typing.get_origin(tp) is dict and dataclasses.is_dataclass((typing.get_args(tp) or (0, 0))[1]):
            rows += describe(typing.get_args(tp)[1], f"{key}.<name>")
    return rows


def print_help(cls: type, prog: str, file=None) -> None:
    file = file or sys.stdout  # looked up now: a redirected sys.stdout gets the help
    print(f"usage: {prog} --config FILE.yaml [--section.key=value ...]\n", file=file)
    print("Config keys (CLI override > YAML file > default):", file=file)
    for key, tp, default, doc in describe(cls):
        print(f"  {key}  [{tp}, default {default}]", file=file)
        if doc:
            print(textwrap.fill(doc, 88, initial_indent="      ", subsequent_indent="      "),
                  file=file)


def parse_cli(cls: type, argv: list[str], prog: str, doc: str = "") -> Any | None:
    """`--config FILE [--section.key=value ...]` → config; prints help and returns None for
    -h/--help. Raises ConfigError for bad input."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        if doc:
            print(doc.strip().split("\n\n")[0] + "\n")
        print_help(cls, prog)
        return None
    config = None
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config: missing file name")
            config, i = argv[i + 1], i + 2
            continue
        if a.startswith("--config="):
            config, i = a.split("=", 1)[1], i + 1
            continue
        rest.append(a)
        i += 1
    return load(cls, config, rest)
