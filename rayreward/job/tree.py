"""Machinery behind the job config: YAML, dotted overrides, dataclass trees, type checks.

Kept apart from ``rayreward.job.config`` so that module reads as the list of sections and their
rules, and this one as the (generic) way a nested dict becomes typed dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Iterable, Mapping

import yaml


class ConfigError(ValueError):
    """A job config has problems; ``problems`` lists every one of them.

    The message has one line per problem, each ``field: got X; expected Y``.
    """

    def __init__(self, problems: list[str], source: str | None = None, what: str = "job config"):
        self.problems = list(problems)
        self.source = source
        head = f"{len(self.problems)} problem(s) in the {what}" + (f" {source}" if source else "")
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    yaml.constructor.SafeConstructor,
    yaml.resolver.BaseResolver,
):
    """YAML with 1.2's core-schema scalars: ``2e-5`` is a float (1.1 wants ``2.0e-5``) and
    only true/false are booleans (1.1 turns ``eval_strategy: no`` into False).

    Assembled like ``yaml.SafeLoader`` but on ``BaseResolver``, which resolves no plain
    scalar implicitly; the four scalar kinds are added with the public
    ``add_implicit_resolver`` below, so nothing of PyYAML's resolver tables is edited.
    """

    def __init__(self, stream):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.BaseResolver.__init__(self)


_Loader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
_Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_scalar(text: str) -> Any:
    """Parses one override value as a YAML scalar (``1e-5`` -> float, ``null`` -> None)."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def load_yaml(path: str) -> dict[str, Any]:
    """Reads a YAML mapping; an empty file is an empty mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError([f"--config: got {path!r}; the file does not exist"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"--config: {path} is not valid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"--config: got a {type(data).__name__} in {path}; expected a mapping of sections"])
    return data


def apply_overrides(config_dict: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Returns a copy of ``config_dict`` with dotted overrides applied.

    Args:
        config_dict: a nested mapping, as read from YAML (not modified).
        overrides: ``"section.key=value"`` strings (values parsed as YAML scalars), or
            a mapping of dotted keys to values used as they are (what Tune samples).

    Returns:
        The new nested dict. Unknown keys are kept; validation reports them.

    Raises:
        ConfigError: an override string without ``=`` or with an empty key, or one
            that descends into a non-mapping value.

    Example:
        >>> apply_overrides({"train": {"learning_rate": 1e-5}}, ["train.learning_rate=2e-5", "lora.r=16"])
        {'train': {'learning_rate': 2e-05}, 'lora': {'r': 16}}
    """
    result = copy.deepcopy(dict(config_dict))
    problems = []
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                problems.append(f"override {item!r}: expected KEY=VALUE, e.g. train.learning_rate=2e-5")
                continue
            pairs.append((key.strip(), parse_scalar(value)))
    for key, value in pairs:
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"{'.'.join(parts[:depth + 1])}: got {child!r}; expected a mapping to set {key} in")
                break
            node = child
        else:
            node[parts[-1]] = copy.deepcopy(value)
    if problems:
        raise ConfigError(problems)
    return result


def unknown_key(path: str, name: str, valid: Iterable[str]) -> str:
    """``"data.max_lenght: unknown key; did you mean 'data.max_length'?"``."""
    valid = sorted(valid)
    parent = path[: -len(name)]
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if match:
        return f"{path}: unknown key; did you mean '{parent}{match[0]}'?"
    shown = ", ".join(valid) if len(valid) <= 12 else ", ".join(valid[:12]) + ", ..."
    return f"{path}: unknown key; valid keys here: {shown}"


def build(cls, data: Any, path: str, problems: list[str]):
    """Builds dataclass ``cls`` from a mapping, nested dataclasses included.

    Unknown keys and non-mapping sections are appended to ``problems``; known keys are
    set as given (type checks are the section's ``validate``).
    """
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        problems.append(f"{path}: got {data!r}; expected a mapping of {cls.__name__} fields")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        if key not in known:
            problems.append(unknown_key(f"{path}.{key}" if path else key, key, known))
            continue
        nested = _dataclass_of(hints[key])
        kwargs[key] = build(nested, value, f"{path}.{key}" if path else key, problems) if nested else value
    return cls(**kwargs)


def _dataclass_of(tp) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def type_problems(obj, prefix: str) -> list[str]:
    """Checks each field of dataclass ``obj`` against its annotation (scalars, lists, dicts)."""
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        expected = _describe(hints[f.name])
        if not _matches(value, hints[f.name]):
            problems.append(f"{prefix}.{f.name}: got {value!r}; expected {expected}")
    return problems


def _matches(value, tp) -> bool:
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _describe(tp) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list" + (f" of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s" if typing.get_args(tp) else "")
    if origin is dict:
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def field_docs(cls, prefix: str) -> list[tuple[str, Any, str]]:
    """``(dotted key, default, help)`` for every field of ``cls``, nested ones included."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        nested = _dataclass_of(hints[f.name])
        if nested:
            rows += field_docs(nested, key)
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((key, default, f.metadata.get("help", "")))
    return rows
