"""Configuration: one dataclass per concern, loaded from YAML, with ``key.sub=value`` overrides.

Example::

    cfg = load_config(TrainConfig, "configs/ivif.yaml", ["optim.lr=2e-4", "fusion.dim=8"])

Values in overrides are parsed as YAML scalars (``1e-4``, ``true``, ``[1, 2]``), then coerced to
the field's declared type; unknown keys are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from refusion.errors import UserError

T = TypeVar("T")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}' expects a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            value = [value]
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        fixed = origin is tuple and len(args) > 1 and args[-1] is not Ellipsis
        if fixed and len(value) != len(args):  # a fixed-length tuple, e.g. Adam's two betas
            raise UserError(f"config key '{key}' expects {len(args)} values, got "
                                f"{list(value)!r}")
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}' expects true/false, got {value!r}")
    if tp in (int, float, str):
        if value is None:  # YAML null (or an empty value): "unset" for text, never "None"
            if tp is str:
                return ""
            raise UserError(f"config key '{key}' expects {tp.__name__}, got null")
        if tp is not str and isinstance(value, bool):  # YAML true is not the number 1
            raise UserError(f"config key '{key}' expects {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}' expects {tp.__name__}, got {value!r}") from None
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise UserError(f"config key '{key}' must be one of {choices}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        known = ", ".join(sorted(names))
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (known: {known})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain nested dict (tuples become lists), suitable for YAML/JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(obj)


def override_key(item: str) -> tuple[str, str]:
    """``(key, raw value)`` of one ``key.sub=value`` override; one line when malformed."""
    if "=" not in item:
        raise UserError(f"override '{item}' is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    if not all(key.strip().split(".")):
        raise UserError(f"override '{item}' has an empty key part")
    return key.strip(), raw


def apply_overrides(data: dict, overrides: Iterable[str],
                    literal: Mapping[str, Any] | None = None) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict (values parsed as YAML scalars), then
    ``literal`` ``{"key.sub": value}`` items as given (a command-line option's path, which YAML
    would turn into a number, a boolean or cut at a ``#``)."""
    out = dict(data)
    items = []
    for item in overrides:
        key, raw = override_key(item)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        items.append((key, value))
    for key, value in [*items, *(literal or {}).items()]:
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            child = node.get(p)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = ()
) -> T:
    """Load dataclass ``cls`` from defaults, then a YAML file, then overrides."""
    data: dict = to_dict(cls())
    if path is not None:
        data = _merge(data, read_yaml_mapping(path))
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the
    last silently: a setting written twice in a config file must not vanish unnoticed)."""

    def construct_mapping(self, node, deep=False):  # noqa: D102
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The mapping in YAML file ``path``; a read or parse problem (a key given twice included)
    is one :class:`UserError` line."""
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = yaml.load(fh, Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(loaded, Mapping):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return dict(loaded)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where, then what (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out
