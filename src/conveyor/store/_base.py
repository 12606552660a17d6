"""What every store writes the same way, written once: lifecycle checks, subscribers and event
delivery, the one-job forms of the batch methods, and the attempt record of a finished run.

``StoreBase`` is optional for a store author (the contract is the :class:`Store` protocol), but
the built-in stores use it, and so may a plugin.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Self

from ._durations import Duration
from ._errors import InvalidArgumentError, StoreError
from ._models import (
    AttemptRecord,
    FetchOptions,
    JobData,
    JobState,
    LockStatus,
    StoreEvent,
    check_name,
)
from ._protocol import EventCallback

__all__ = ["Lifecycle", "StoreBase", "add_attempt"]

log = logging.getLogger("conveyor.stores")


class Lifecycle(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    CLOSED = "closed"


def add_attempt(
    job: JobData, finished_at: datetime, outcome: str, error: str | None, *, count: bool
) -> None:
    """Append the run that just ended to ``job.attempt_logs``; ``count`` it in
    ``attempts_made`` (every outcome but a delay, a release or a stall)."""
    if count:
        job.attempts_made += 1
    job.attempt_logs.append(
        AttemptRecord(
            attempt=job.attempts_made if count else job.attempts_made + 1,
            worker_id=job.locked_by,
            started_at=job.processed_at,
            finished_at=finished_at,
            outcome=outcome,
            error=error,
        )
    )


class StoreBase(abc.ABC):
    """The parts of a store that do not depend on where it keeps jobs.

    :param on_event_error: called with the exception when a subscriber raises (default: log).
    """

    def __init__(self, *, on_event_error: Callable[[BaseException], None] | None) -> None:
        self._lifecycle = Lifecycle.NEW
        self._subscribers: dict[str | None, list[EventCallback]] = {}
        self._on_event_error = on_event_error

    # -- lifecycle ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def disconnect(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    @property
    def connected(self) -> bool:
        """Whether the store is connected (and not yet disconnected)."""
        return self._lifecycle is Lifecycle.CONNECTED

    def _check_connectable(self) -> None:
        name = type(self).__name__
        if self._lifecycle is Lifecycle.CLOSED:
            raise StoreError(f"this {name} was disconnected; create a new one")
        if self._lifecycle is Lifecycle.CONNECTED:
            raise StoreError(f"this {name} is already connected")

    def _check_connected(self) -> None:
        if self._lifecycle is not Lifecycle.CONNECTED:
            state = (
                "was disconnected" if self._lifecycle is Lifecycle.CLOSED else "is not connected"
            )
            raise StoreError(
                f"this {type(self).__name__} {state}; use `async with store:` or "
                "`await store.connect()`"
            )

    # -- the one-job forms -------------------------------------------------------------------------

    @abc.abstractmethod
    async def fetch_next_jobs(
        self,
        queue_name: str,
        worker_id: str,
        lock_duration: Duration,
        limit: int,
        opts: FetchOptions | None = None,
    ) -> list[JobData]: ...

    async def fetch_next_job(
        self,
        queue_name: str,
        worker_id: str,
        lock_duration: Duration,
        opts: FetchOptions | None = None,
    ) -> JobData | None:
        jobs = await self.fetch_next_jobs(queue_name, worker_id, lock_duration, 1, opts)
        return jobs[0] if jobs else None

    @abc.abstractmethod
    async def extend_locks(
        self, queue_name: str, locks: Mapping[str, str], duration: Duration
    ) -> dict[str, LockStatus]: ...

    async def extend_lock(
        self, queue_name: str, job_id: str, lock_token: str, duration: Duration
    ) -> bool:
        check_name(job_id, "job_id")
        check_name(lock_token, "lock_token")
        statuses = await self.extend_locks(queue_name, {job_id: lock_token}, duration)
        return statuses[job_id] is not LockStatus.LOST

    @abc.abstractmethod
    async def count_jobs(self, queue_name: str, state: JobState) -> int: ...

    async def get_active_count(self, queue_name: str) -> int:
        return await self.count_jobs(queue_name, JobState.ACTIVE)

    # -- events ------------------------------------------------------------------------------------

    def subscribe(self, queue_name: str | None, callback: EventCallback) -> None:
        if queue_name is not None:
            check_name(queue_name, "queue_name")
        if not callable(callback):
            raise InvalidArgumentError("callback", "must be callable")
        self._subscribers.setdefault(queue_name, []).append(callback)
        self._subscribed()

    def unsubscribe(self, queue_name: str | None, callback: EventCallback | None = None) -> None:
        callbacks = self._subscribers.get(queue_name)
        if callbacks is None:
            return
        if callback is None:
            callbacks.clear()
        else:
            self._subscribers[queue_name] = [c for c in callbacks if c != callback]
        if not self._subscribers[queue_name]:
            del self._subscribers[queue_name]
        if not self._subscribers:
            self._unsubscribed()

    def _wants(self, queue_name: str, type_: str) -> bool:
        """Whether a subscriber takes events of ``type_`` for this queue, so that a store can
        skip making those nobody takes. A callback with an ``event_types`` attribute (a
        collection of event types) takes only those; any other takes every event. (A worker's
        subscription takes the few it acts on, not the ``active`` and ``completed`` events
        of every job it runs.)"""
        subscribers = self._subscribers
        if not subscribers:
            return False
        for key in (queue_name, None):
            for callback in subscribers.get(key, ()):
                types = _event_types(callback)
                if types is None or type_ in types:
                    return True
        return False

    def _wants_beyond(self, types: frozenset[str]) -> bool:
        """Whether a subscriber, of any queue, takes events other than ``types`` (see
        :meth:`_wants`): a store that carries some events apart from the rest need only
        receive the rest from other processes then."""
        for callbacks in self._subscribers.values():
            for callback in callbacks:
                taken = _event_types(callback)
                if taken is None or not types.issuperset(taken):
                    return True
        return False

    def _subscribed(self) -> None:  # noqa: B027 (a hook; doing nothing is its default)
        """Called after every :meth:`subscribe` (a store that listens elsewhere starts here)."""

    def _unsubscribed(self) -> None:  # noqa: B027 (a hook; doing nothing is its default)
        """Called when the last subscriber has left."""

    def _deliver(self, events: Iterable[StoreEvent]) -> None:
        """Call the subscribers of each event's queue, and those of every queue. A raising
        subscriber goes to ``on_event_error`` (or the log) and the others still run."""
        subscribers = self._subscribers
        if not subscribers:
            return
        everything = subscribers.get(None, ())
        for event in events:
            for callback in [*subscribers.get(event.queue_name, ()), *everything]:
                try:
                    callback(event)
                except Exception as exc:
                    if self._on_event_error is not None:
                        self._on_event_error(exc)
                    else:
                        log.warning("event subscriber %r raised", callback, exc_info=exc)


def _event_types(callback: object) -> Collection[str] | None:
    """The events a subscriber takes: its ``event_types``, or None for every event."""
    return getattr(callback, "event_types", None)
