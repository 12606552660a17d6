"""Where a store's time comes from.

Every time rule of the contract (delays, lock expiry, deduplication TTL, rate windows) is judged
by the store's clock, never the caller's: a PostgreSQL store reads its server's clock, because
hosts' clocks drift. Stores that keep time themselves take a :class:`Clock`, so tests can drive
time with :class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import attrs

from ._durations import parse_duration

__all__ = ["Clock", "ManualClock", "SystemClock", "from_timestamp"]


@runtime_checkable
class Clock(Protocol):
    """A source of the current time, as POSIX seconds."""

    def time(self) -> float:
        """Seconds since the epoch, as :func:`time.time` gives them."""
        ...


class SystemClock:
    """The host's wall clock: what stores that keep their own time use by default."""

    def time(self) -> float:
        """Seconds since the epoch: :func:`time.time`."""
        return time.time()


@attrs.define
class ManualClock:
    """A clock that moves only when told to, for tests.

    >>> clock = ManualClock(1_700_000_000.0)
    >>> clock.advance("1m")
    >>> clock.time()
    1700000060.0
    """

    now: float = attrs.field(factory=time.time)
    """The clock's time, as POSIX seconds (default: the host's time when it was made)."""

    def time(self) -> float:
        """The clock's time, :attr:`now`."""
        return self.now

    def advance(self, seconds: float | str) -> None:
        """Move forward by a duration. Time never goes backwards."""
        self.now += parse_duration(seconds, "seconds")


def from_timestamp(seconds: float) -> datetime:
    """An aware UTC datetime from POSIX seconds."""
    return datetime.fromtimestamp(seconds, UTC)
