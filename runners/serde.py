"""JSON (de)serialisation of the frozen config dataclasses, by walking their fields.

Configs (`EvalConfig`, `LatencyConfig`, `BuildConfig`, `RecoveryConfig`, `GateTrainConfig`) are
plain frozen dataclasses of scalars and nested configs. Rather than each growing its own
``to_dict``/``from_dict`` (and drifting from its fields), `to_json` and `from_json` read the
field list and the type hints, so a field added to a config is persisted with no other edit.

`from_json` checks every value against its field's type and raises `ConfigFormatError` with the
dotted path of the bad field (``eval.latency.rel_tol``); a missing field takes its default, so a
file written before a field existed still loads. Unknown fields are an error: they mean a newer
writer, whose meaning this version cannot honour.

Example:
    >>> from runners.latency import LatencyConfig
    >>> config = LatencyConfig(rel_tol=0.05)
    >>> from_json(LatencyConfig, to_json(config)) == config
    True
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigFormatError(ValueError):
    """A stored config does not fit its dataclass (``path`` names the field)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def to_json(config: Any) -> Any:
    """``config`` (a dataclass instance, or a value inside one) as JSON-ready data."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_json(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, tuple | list):
        return [to_json(v) for v in config]
    if isinstance(config, Mapping):
        return {str(k): to_json(v) for k, v in config.items()}
    return config


def from_json(cls: type[T], data: Any, path: str = "") -> T:
    """Rebuild a ``cls`` instance from `to_json` data.

    Raises:
        ConfigFormatError: a value has the wrong type, a field is unknown, or the dataclass
            rejects the values (its ``__post_init__`` message, under the config's path).
    """
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigFormatError(where, f"expected an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigFormatError(
            where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    values = {
        name: _value(hints[name], data[name], f"{path}.{name}" if path else name)
        for name in known
        if name in data
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigFormatError):
            raise
        raise ConfigFormatError(where, str(exc)) from exc


def _value(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked (and minimally converted) against the type hint ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _value(option, value, path)
            except ConfigFormatError as exc:
                errors.append(exc.problem)
        raise ConfigFormatError(path, " / ".join(errors))
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigFormatError(path, f"expected one of {allowed}, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_json(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigFormatError(path, f"expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif origin is list:
            args = (args[0] if args else Any,) * len(value)
        if len(args) != len(value):
            raise ConfigFormatError(path, f"expected {len(args)} items, got {len(value)}")
        pairs = enumerate(zip(args, value, strict=True))
        items = [_value(a, v, f"{path}[{i}]") for i, (a, v) in pairs]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigFormatError(path, f"expected an object, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigFormatError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigFormatError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigFormatError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigFormatError(path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigFormatError(path, f"expected a path string, got {value!r}")
        return Path(value)
    raise ConfigFormatError(path, f"cannot read a value of type {tp!r}")  # a new kind of field


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, ±inf) replaced by ``None``: what
    ``json.dumps(..., allow_nan=False)`` accepts, so every parser reads the file (a bare
    ``NaN`` is not JSON).

    Example:
        >>> strict_json({"a": float("nan"), "b": [1.5, float("inf")]})
        {'a': None, 'b': [1.5, None]}
    """
    import math

    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(v) for v in data]
    return data


def strict_dumps(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``data`` that any parser reads: values JSON lacks become text
    (``default=str``), non-finite floats ``null`` (`strict_json`)."""
    import json

    plain = json.loads(json.dumps(data, default=str))
    return json.dumps(strict_json(plain), allow_nan=False, **kwargs)


__all__ = ["ConfigFormatError", "from_json", "strict_dumps", "strict_json", "to_json"]
