"""The `Strategy`: the one value that describes a candidate.

It is the agent's output, the MLflow artifact, the cache key and the input of ``evaluate`` and
``export``. On disk it is JSON::

    {"_type": "layerpilot.Strategy", "_version": 1,
     "units": {"*": {"precision": "int8"}, "layer1.0.conv1": {"prune": 0.5},
               "layer2.1": {"skip": true}}}

A bare mapping of unit names (``{"layer1.0.conv1": {"prune": 0.5}}``) is accepted as version 1.
The ``"*"`` entry is the default for every unit that allows those actions; an explicit entry for
a unit overrides it action by action.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from search_spaces.errors import MalformedStrategyError

STRATEGY_TYPE = "layerpilot.Strategy"
STRATEGY_VERSION = 1
DEFAULT_KEY = "*"


MAX_STRATEGY_BYTES = 1 << 20
"""The largest strategy text read (1 MiB: ~10 000 units with three actions each); a bigger
one is refused before it is parsed, not after minutes and gigabytes."""


def _freeze(units: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    frozen = {}
    for unit in sorted(units):
        actions = units[unit]
        if not isinstance(unit, str) or not unit:
            raise MalformedStrategyError(f"unit names must be non-empty strings, got {unit!r}")
        if not isinstance(actions, Mapping):
            raise MalformedStrategyError(
                f'unit {unit!r}: expected an object of actions like {{"prune": 0.5}}, '
                f"got {type(actions).__name__} {actions!r}"
            )
        for action, value in actions.items():
            if not isinstance(action, str):
                raise MalformedStrategyError(f"unit {unit!r}: action names must be strings")
            if not isinstance(value, bool | int | float | str):
                raise MalformedStrategyError(
                    f"unit {unit!r}, action {action!r}: values must be numbers, strings or "
                    f"booleans, got {type(value).__name__}"
                )
        frozen[unit] = MappingProxyType(dict(sorted(actions.items())))
    return MappingProxyType(frozen)


@dataclass(frozen=True)
class Strategy:
    """A per-unit plan: unit name (or ``"*"``) -> {action name: value}.

    Construction checks only the shape; whether units exist and values are legal depends on the
    model, and is checked by :func:`search_spaces.resolve` against its decision units.

    Example:
        >>> s = Strategy.from_dict({"*": {"precision": "int8"}, "fc": {"precision": "fp32"}})
        >>> Strategy.from_json(s.to_json()) == s
        True
    """

    units: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Unit name or ``"*"`` -> actions. Stored sorted and read-only."""
    version: int = STRATEGY_VERSION
    """Schema version of the JSON form."""

    def __post_init__(self) -> None:
        if self.version != STRATEGY_VERSION:
            raise MalformedStrategyError(
                f"strategy version {self.version} is not supported (this layerpilot reads "
                f"version {STRATEGY_VERSION})"
            )
        object.__setattr__(self, "units", _freeze(self.units))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Strategy) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.key())

    @property
    def is_identity(self) -> bool:
        """True when no unit has any action (the unchanged model)."""
        return all(not actions for actions in self.units.values())

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON-ready form, with ``_type`` and ``_version``."""
        return {
            "_type": STRATEGY_TYPE,
            "_version": self.version,
            "units": {unit: dict(actions) for unit, actions in self.units.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Canonical JSON (sorted keys): equal strategies give equal text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def key(self) -> str:
        """A stable content hash (16 hex chars), used as the cache key's strategy part."""
        compact = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(compact.encode()).hexdigest()[:16]

    def with_unit(self, unit: str, **actions: Any) -> Strategy:
        """A copy with ``actions`` set on ``unit`` (merged over what it had)."""
        units = {name: dict(acts) for name, acts in self.units.items()}
        units.setdefault(unit, {}).update(actions)
        return Strategy(units, self.version)

    @classmethod
    def from_dict(cls, data: Any) -> Strategy:
        """Read the canonical form or a bare ``{unit: {action: value}}`` mapping."""
        if not isinstance(data, Mapping):
            raise MalformedStrategyError(f"a strategy is a JSON object, got {type(data).__name__}")
        if "_type" in data or "_version" in data or "units" in data:
            if data.get("_type", STRATEGY_TYPE) != STRATEGY_TYPE:
                raise MalformedStrategyError(
                    f"_type is {data.get('_type')!r}, expected {STRATEGY_TYPE!r}"
                )
            version = data.get("_version", STRATEGY_VERSION)
            if not isinstance(version, int) or isinstance(version, bool):
                raise MalformedStrategyError(f"_version must be an integer, got {version!r}")
            extra = set(data) - {"_type", "_version", "units"}
            if extra:
                raise MalformedStrategyError(
                    f"unexpected top-level keys {sorted(extra)}; a strategy has "
                    "'_type', '_version' and 'units'"
                )
            units = data.get("units", {})
            if not isinstance(units, Mapping):
                raise MalformedStrategyError("'units' must be an object of unit -> actions")
            return cls(units, version)
        return cls(data)

    @classmethod
    def from_json(cls, text: str) -> Strategy:
        """Parse JSON text (see :meth:`from_dict`); at most `MAX_STRATEGY_BYTES`."""
        if len(text) > MAX_STRATEGY_BYTES:
            raise MalformedStrategyError(
                f"strategy is {len(text):,} characters; the limit is {MAX_STRATEGY_BYTES:,} "
                "(a strategy names at most one entry per unit)"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MalformedStrategyError(
                f"strategy is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
        except RecursionError:
            raise MalformedStrategyError("strategy JSON is nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a strategy file; a missing, oversized or non-UTF-8 file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise MalformedStrategyError(f"strategy file {str(path)!r} does not exist")
        size = path.stat().st_size
        if size > MAX_STRATEGY_BYTES:
            raise MalformedStrategyError(
                f"strategy file {str(path)!r} is {size:,} bytes; the limit is "
                f"{MAX_STRATEGY_BYTES:,} (a strategy names at most one entry per unit)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedStrategyError(
                f"strategy file {str(path)!r} is not UTF-8 text (byte {exc.start})"
            ) from None
        return cls.from_json(text)

    def save(self, path: str | Path) -> Path:
        """Write the canonical JSON to ``path``."""
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path
