"""Durations and timestamps at the API edge.

Every duration conveyor accepts may be given as

* a number of seconds (``int`` or ``float``, not ``bool``),
* a :class:`datetime.timedelta`,
* a human string parsed by `pytimeparse2 <https://pypi.org/project/pytimeparse2/>`_:
  ``"5s"``, ``"250ms"``, ``"2 minutes"``, ``"1h30m"``, ``"1 hour, 30 minutes"``, ``"1:30"``,
  optionally prefixed with ``"in "`` (``"in 10 minutes"``).

and is stored as float seconds. Timestamps are timezone-aware :class:`datetime.datetime` values,
normalised to UTC; a naive datetime is refused because its meaning depends on the host.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytimeparse2

from ._errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["Duration", "parse_duration", "to_utc"]

Duration = float | int | timedelta | str
"""What a duration argument accepts: seconds, a ``timedelta`` or a human string."""


def parse_duration(
    value: object, argument: str, *, allow_zero: bool = True, allow_negative: bool = False
) -> float:
    """Return ``value`` as float seconds, or raise an error naming ``argument``.

    >>> parse_duration("1h30m", "delay")
    5400.0
    """
    seconds: float
    if isinstance(value, bool):
        raise ArgumentTypeError(
            argument, "expected a duration (seconds, timedelta or str), got bool"
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("in "):
            text = text[3:].strip()
        parsed = pytimeparse2.parse(text) if text else None
        if parsed is None:
            raise InvalidArgumentError(
                argument,
                f"cannot read {value!r} as a duration "
                "(try seconds, a timedelta, or a string like '5s', '250ms', '2 minutes', '1h30m')",
            )
        seconds = float(parsed)
    else:
        raise ArgumentTypeError(
            argument,
            f"expected a duration (seconds, timedelta or str), got {type(value).__name__}",
        )
    if not math.isfinite(seconds):
        raise InvalidArgumentError(argument, f"must be a finite duration, got {value!r}")
    if seconds < 0 and not allow_negative:
        raise InvalidArgumentError(argument, f"must not be negative, got {value!r}")
    if seconds == 0 and not allow_zero:
        raise InvalidArgumentError(argument, f"must be greater than zero, got {value!r}")
    return seconds


def to_utc(value: object, argument: str) -> datetime:
    """Return an aware ``datetime`` in UTC, refusing naive ones and other types."""
    if not isinstance(value, datetime):
        raise ArgumentTypeError(argument, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is UTC:
        return value  # the common case (every time a store makes), and the cheap one
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(
            argument, "must be timezone-aware (a naive datetime means different times on each host)"
        )
    return value.astimezone(UTC)
