"""JSON values: checking what a caller hands in, and copying what a store hands out.

Job data, return values, progress and event data must be JSON: ``None``, ``bool``, ``int``,
finite ``float``, ``str``, lists (tuples are accepted and become lists) and dicts with ``str``
keys. Anything else is refused at the API edge with a :class:`SerializationError` naming the
argument and the path to the bad value, so every store can hold it and it reads back equal.
"""

from __future__ import annotations

import math
from typing import Any

from ._errors import SerializationError

__all__ = ["JsonValue", "check_json", "copy_json"]

JsonValue = Any
"""A value JSON can hold (see the module docstring); typed ``Any`` for callers' convenience."""

_MAX_DEPTH = 200


def check_json(value: object, argument: str) -> JsonValue:
    """Return a deep copy of ``value`` if JSON can hold it exactly, else raise.

    Tuples become lists. The copy shares nothing mutable with ``value``.
    """
    try:
        return _checked(value, 0)
    except _Refused as refused:
        path = argument + "".join(reversed(refused.path))
        raise SerializationError(path, refused.reason) from None


class _Refused(Exception):
    """A value JSON cannot hold; ``path`` is built on the way out (only ever on failure)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


_PLAIN = frozenset({str, int, bool, type(None)})
"""Types whose values are kept as they are (exactly these: subclasses are converted)."""


def _checked(value: object, depth: int) -> JsonValue:
    # The common shapes first, by exact type: a dict or list of plain scalars costs one call.
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict and depth < _MAX_DEPTH:
        out: dict[str, Any] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return _checked_slow(value, depth)  # the slow path names the bad key
            if type(item) in _PLAIN:
                out[key] = item
            else:
                try:
                    out[key] = _checked(item, depth + 1)
                except _Refused as refused:
                    refused.path.append(f".{key}")
                    raise
        return out
    if kind is list and depth < _MAX_DEPTH:
        items: list[Any] = []
        for i, item in enumerate(value):  # type: ignore[arg-type]
            if type(item) in _PLAIN:
                items.append(item)
            else:
                try:
                    items.append(_checked(item, depth + 1))
                except _Refused as refused:
                    refused.path.append(f"[{i}]")
                    raise
        return items
    return _checked_slow(value, depth)


def _checked_slow(value: object, depth: int) -> JsonValue:
    """The rare shapes: subclasses of the JSON types (converted to the types themselves),
    keys that are not ``str``, too deep a nesting, and what JSON cannot hold."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"JSON cannot hold the float {value!r}")
        return float(value)
    if depth >= _MAX_DEPTH:
        raise _Refused(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise _Refused(
                    f"JSON object keys must be str, got {type(key).__name__} key {key!r}"
                )
        return _checked({str(key): item for key, item in value.items()}, depth)
    if isinstance(value, list | tuple):
        return _checked(list(value), depth)
    raise _Refused(f"JSON cannot hold a value of type {type(value).__name__}: {value!r:.80}")


def copy_json(value: JsonValue) -> JsonValue:
    """Deep-copy a value already known to be JSON (fast path for stores handing out copies)."""
    if isinstance(value, dict):
        return {k: copy_json(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) if isinstance(v, dict | list) else v for v in value]
    return value
