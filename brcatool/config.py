"""Typed configs: dataclasses that load from YAML, reject unknown keys and dump what ran.

Each stage module defines its own ``@dataclass`` config; this module holds the shared
machinery so that every stage behaves the same.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from brcatool.errors import InputError

T = TypeVar("T")


def key(name: str) -> str:
    """YAML keys may be spelt like CLI options (``min-tissue``) or like fields (``min_tissue``)."""
    return name.strip().lstrip("-").replace("-", "_")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, or fail with one line naming the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError("config file not found", path=path, fix="check the --config path") from None
    except OSError as exc:
        raise InputError(f"cannot read config file ({exc.strerror})", path=path) from None
    except UnicodeDecodeError:
        raise InputError("is not a text (UTF-8) file", path=path, fix="pass a YAML file") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise InputError(f"config file is {len(text)} characters, more than {MAX_CONFIG_CHARS}",
                         path=path, fix="a config holds option values: keep it short")
    try:
        data = safe_load_bounded(text, path=path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"is not valid YAML{where}", path=path,
                         fix="fix the syntax, e.g. `patches: 35` (key, colon, space, value)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"must hold a mapping of option names to values, found {type(data).__name__}",
                         path=path, fix="write one `option: value` per line")
    return data


#: Limits on a config file: characters, and values after expanding YAML aliases (``*name``),
#: so a few hundred bytes of nested aliases (an "alias bomb") cannot cost gigabytes.
MAX_CONFIG_CHARS = 1_000_000
MAX_YAML_VALUES = 100_000


def safe_load_bounded(text: str, *, path: str | Path | None = None,
                      max_values: int = MAX_YAML_VALUES) -> Any:
    """``yaml.safe_load`` that first counts the values the document expands to (aliases included)
    and refuses, with one line, a document of more than ``max_values``."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, max_values)
        if size > max_values:
            raise InputError(f"expands to more than {max_values} values (nested YAML aliases?)",
                             path=path, fix="write the values out; anchors/aliases (&a, *a) are for "
                             "small reuse only")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: Any, memo: dict[int, int], cap: int) -> int:
    """Values ``node`` stands for once aliases are expanded (stops counting above ``cap``)."""
    import yaml

    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = cap + 1  # a node inside itself (recursive alias) counts as too big
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, memo, cap)
        if total > cap:
            break
    memo[id(node)] = min(total, cap + 1)
    return memo[id(node)]


def from_mapping(cls: type[T], values: Mapping[str, Any], *, source: str | Path | None = None) -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        name = key(str(raw_key))
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise InputError(f"unknown key {raw_key!r} for {cls.__name__}", path=source,
                             fix=f"use one of: {valid}")
        kwargs[name] = _coerce(value, hints[name], name, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str, source: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name, source)
            except InputError:
                continue
        raise InputError(f"key {name!r} has value {value!r} of the wrong type", path=source)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"key {name!r} must be one of {list(args)}, got {value!r}", path=source)
        return value
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        inner = args[0] if args else Any
        out = [_coerce(v, inner, name, source) for v in items]
        return tuple(out) if origin is tuple else out
    if hint is Any:
        return value
    if hint is Path:
        return Path(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"key {name!r} must be true or false, got {value!r}", path=source)
    if hint in (int, float, str):
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise InputError(f"key {name!r} must be a whole number, got {value!r}", path=source)
        if hint in (int, float) and isinstance(value, bool):
            raise InputError(f"key {name!r} must be a number, got {value!r}", path=source)
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise InputError(f"key {name!r} must be {hint.__name__}, got {value!r}", path=source) from None
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-friendly dict of a config (Paths as strings, tuples as lists)."""
    from brcatool.artifacts import normalise

    return normalise(dataclasses.asdict(cfg))


def write_yaml(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config so a run can be repeated with ``--config``."""
    import yaml

    from brcatool.artifacts import write_text

    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return write_text(path, yaml.safe_dump(data, sort_keys=False))
