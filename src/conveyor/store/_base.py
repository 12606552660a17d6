"""What every store writes the same way, written once: the argument checks at the API edge,
lifecycle checks, subscribers and event delivery, the one-job forms of the batch methods, and
the attempt record of a finished run.

``StoreBase`` is optional for a store author (the contract is the :class:`Store` protocol), but
the built-in stores use it, and so may a plugin.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from ._durations import Duration, parse_duration
from ._errors import InvalidArgumentError, StoreError
from ._models import (
    TERMINAL_STATES,
    AttemptRecord,
    FetchOptions,
    JobData,
    JobOutcome,
    JobState,
    LockStatus,
    MetricKind,
    Metrics,
    StoreEvent,
    check_int,
    check_name,
)
from ._protocol import EventCallback
from ._validate import (
    check_event,
    check_fetch,
    check_jobs,
    check_lock_duration,
    check_metrics_query,
    check_outcomes,
    check_text,
    check_updates,
    validate_new_job,
)

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

    # -- the API edge ------------------------------------------------------------------------------
    #
    # Each public method checks its arguments (a typed error naming the bad one, before
    # anything is read or changed), then calls the store's own ``_`` form with them clean.

    async def save_job(self, job: JobData) -> JobData:
        clean = validate_new_job(job)
        if clean.parent_id is not None:
            raise InvalidArgumentError("job.parent_id", "children are added with save_flow()")
        [saved] = await self._save_jobs([clean], flow=False)
        return saved

    async def save_bulk(self, jobs: Sequence[JobData]) -> list[JobData]:
        clean = check_jobs(jobs)
        for i, job in enumerate(clean):
            if job.parent_id is not None:
                raise InvalidArgumentError(
                    f"jobs[{i}].parent_id", "children are added with save_flow()"
                )
        return await self._save_jobs(clean, flow=False)

    async def save_flow(self, jobs: Sequence[JobData]) -> list[JobData]:
        clean = check_jobs(jobs)
        members = {(job.queue_name, job.id) for job in clean}
        for i, job in enumerate(clean):
            if job.parent_id is not None and (job.parent_queue_name, job.parent_id) not in members:
                raise InvalidArgumentError(
                    f"jobs[{i}].parent_id",
                    f"parent {job.parent_queue_name}:{job.parent_id} is not part of the flow",
                )
        return await self._save_jobs(clean, flow=True)

    @abc.abstractmethod
    async def _save_jobs(self, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        """Add checked jobs in one transaction: every one or none (``flow``: parents and
        children together, see ``save_flow``)."""

    async def get_job(self, queue_name: str, job_id: str) -> JobData | None:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        return await self._get_job(queue_name, job_id)

    @abc.abstractmethod
    async def _get_job(self, queue_name: str, job_id: str) -> JobData | None: ...

    async def find_job_by_id(self, job_id: str) -> JobData | None:
        check_name(job_id, "job_id")
        return await self._find_job_by_id(job_id)

    @abc.abstractmethod
    async def _find_job_by_id(self, job_id: str) -> JobData | None: ...

    async def find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None:
        check_name(queue_name, "queue_name")
        check_name(key, "key")
        return await self._find_by_deduplication_key(queue_name, key)

    @abc.abstractmethod
    async def _find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None: ...

    async def update_job(
        self,
        queue_name: str,
        job_id: str,
        updates: Mapping[str, Any],
        *,
        expected_state: JobState | None = None,
    ) -> bool:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        clean = check_updates(updates)
        if expected_state is not None:
            expected_state = JobState.parse(expected_state, "expected_state")
        return await self._update_job(queue_name, job_id, clean, expected_state)

    @abc.abstractmethod
    async def _update_job(
        self,
        queue_name: str,
        job_id: str,
        clean: dict[str, Any],
        expected_state: JobState | None,
    ) -> bool: ...

    async def add_log(self, queue_name: str, job_id: str, message: str) -> int:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        check_text(message, "message")
        return await self._add_log(queue_name, job_id, message)

    @abc.abstractmethod
    async def _add_log(self, queue_name: str, job_id: str, message: str) -> int: ...

    async def remove_job(self, queue_name: str, job_id: str) -> bool:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        return await self._remove_job(queue_name, job_id)

    @abc.abstractmethod
    async def _remove_job(self, queue_name: str, job_id: str) -> bool: ...

    async def cancel_job(self, queue_name: str, job_id: str) -> JobData | None:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        return await self._cancel_job(queue_name, job_id)

    @abc.abstractmethod
    async def _cancel_job(self, queue_name: str, job_id: str) -> JobData | None: ...

    async def fetch_next_jobs(
        self,
        queue_name: str,
        worker_id: str,
        lock_duration: Duration,
        limit: int,
        opts: FetchOptions | None = None,
    ) -> list[JobData]:
        check_name(queue_name, "queue_name")
        duration, limit, fetch = check_fetch(worker_id, lock_duration, limit, opts)
        return await self._fetch_next_jobs(queue_name, worker_id, duration, limit, fetch)

    @abc.abstractmethod
    async def _fetch_next_jobs(
        self, queue_name: str, worker_id: str, duration: float, limit: int, fetch: FetchOptions
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

    async def extend_locks(
        self, queue_name: str, locks: Mapping[str, str], duration: Duration
    ) -> dict[str, LockStatus]:
        check_name(queue_name, "queue_name")
        if not isinstance(locks, Mapping):
            raise InvalidArgumentError("locks", "expected a mapping of job id to lock token")
        for job_id, token in locks.items():
            check_name(job_id, "locks")
            check_name(token, f"locks[{job_id!r}]")
        seconds = check_lock_duration(duration, "duration")
        return await self._extend_locks(queue_name, locks, seconds)

    @abc.abstractmethod
    async def _extend_locks(
        self, queue_name: str, locks: Mapping[str, str], seconds: float
    ) -> dict[str, LockStatus]: ...

    async def extend_lock(
        self, queue_name: str, job_id: str, lock_token: str, duration: Duration
    ) -> bool:
        check_name(job_id, "job_id")
        check_name(lock_token, "lock_token")
        statuses = await self.extend_locks(queue_name, {job_id: lock_token}, duration)
        return statuses[job_id] is not LockStatus.LOST

    async def release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool:
        check_name(queue_name, "queue_name")
        check_name(job_id, "job_id")
        check_name(lock_token, "lock_token")
        return await self._release_lock(queue_name, job_id, lock_token)

    @abc.abstractmethod
    async def _release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool: ...

    async def finish_jobs(self, outcomes: Sequence[JobOutcome]) -> list[bool]:
        return await self._finish_jobs(check_outcomes(outcomes))

    @abc.abstractmethod
    async def _finish_jobs(self, clean: list[JobOutcome]) -> list[bool]: ...

    async def notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None:
        check_name(parent_queue_name, "parent_queue_name")
        check_name(parent_id, "parent_id")
        return await self._notify_child_completed(parent_queue_name, parent_id)

    @abc.abstractmethod
    async def _notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None: ...

    async def fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool:
        check_name(parent_queue_name, "parent_queue_name")
        check_name(parent_id, "parent_id")
        check_text(reason, "reason")
        return await self._fail_parent_on_child_failure(parent_queue_name, parent_id, reason)

    @abc.abstractmethod
    async def _fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool: ...

    async def get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]:
        check_name(parent_queue_name, "parent_queue_name")
        check_name(parent_id, "parent_id")
        return await self._get_children_jobs(parent_queue_name, parent_id)

    @abc.abstractmethod
    async def _get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]: ...

    async def get_stalled_jobs(self, queue_name: str) -> list[JobData]:
        check_name(queue_name, "queue_name")
        return await self._get_stalled_jobs(queue_name)

    @abc.abstractmethod
    async def _get_stalled_jobs(self, queue_name: str) -> list[JobData]: ...

    async def recover_stalled_jobs(self, queue_name: str, max_stalled_count: int) -> list[JobData]:
        check_name(queue_name, "queue_name")
        check_int(max_stalled_count, "max_stalled_count", minimum=0)
        return await self._recover_stalled_jobs(queue_name, max_stalled_count)

    @abc.abstractmethod
    async def _recover_stalled_jobs(
        self, queue_name: str, max_stalled_count: int
    ) -> list[JobData]: ...

    async def list_jobs(
        self, queue_name: str, state: JobState, start: int = 0, end: int = 100
    ) -> list[JobData]:
        check_name(queue_name, "queue_name")
        state = JobState.parse(state)
        check_int(start, "start", minimum=0)
        check_int(end, "end", minimum=-1)
        return await self._list_jobs(queue_name, state, start, end)

    @abc.abstractmethod
    async def _list_jobs(
        self, queue_name: str, state: JobState, start: int, end: int
    ) -> list[JobData]: ...

    async def count_jobs(self, queue_name: str, state: JobState) -> int:
        check_name(queue_name, "queue_name")
        return await self._count_jobs(queue_name, JobState.parse(state))

    @abc.abstractmethod
    async def _count_jobs(self, queue_name: str, state: JobState) -> int: ...

    async def get_active_count(self, queue_name: str) -> int:
        return await self.count_jobs(queue_name, JobState.ACTIVE)

    async def get_job_counts(self, queue_name: str) -> dict[JobState, int]:
        check_name(queue_name, "queue_name")
        return await self._get_job_counts(queue_name)

    @abc.abstractmethod
    async def _get_job_counts(self, queue_name: str) -> dict[JobState, int]: ...

    async def get_next_delayed_timestamp(self, queue_name: str) -> datetime | None:
        check_name(queue_name, "queue_name")
        return await self._get_next_delayed_timestamp(queue_name)

    @abc.abstractmethod
    async def _get_next_delayed_timestamp(self, queue_name: str) -> datetime | None: ...

    async def get_metrics(
        self,
        queue_name: str,
        kind: MetricKind,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Metrics:
        check_name(queue_name, "queue_name")
        kind, first, last = check_metrics_query(kind, start, end)
        return await self._get_metrics(queue_name, kind, first, last)

    @abc.abstractmethod
    async def _get_metrics(
        self, queue_name: str, kind: MetricKind, first: float, last: float
    ) -> Metrics:
        """The metrics of minutes ``first`` to ``last`` (epoch seconds, whole minutes)."""

    async def promote_delayed_jobs(self, queue_name: str) -> int:
        check_name(queue_name, "queue_name")
        return await self._promote_delayed_jobs(queue_name)

    @abc.abstractmethod
    async def _promote_delayed_jobs(self, queue_name: str) -> int: ...

    async def promote_jobs(self, queue_name: str) -> int:
        check_name(queue_name, "queue_name")
        return await self._promote_jobs(queue_name)

    @abc.abstractmethod
    async def _promote_jobs(self, queue_name: str) -> int: ...

    async def pause_job_name(self, queue_name: str, job_name: str) -> None:
        check_name(queue_name, "queue_name")
        check_name(job_name, "job_name")
        await self._pause_job_name(queue_name, job_name)

    @abc.abstractmethod
    async def _pause_job_name(self, queue_name: str, job_name: str) -> None: ...

    async def resume_job_name(self, queue_name: str, job_name: str) -> None:
        check_name(queue_name, "queue_name")
        check_name(job_name, "job_name")
        await self._resume_job_name(queue_name, job_name)

    @abc.abstractmethod
    async def _resume_job_name(self, queue_name: str, job_name: str) -> None: ...

    async def get_paused_job_names(self, queue_name: str) -> list[str]:
        check_name(queue_name, "queue_name")
        return await self._get_paused_job_names(queue_name)

    @abc.abstractmethod
    async def _get_paused_job_names(self, queue_name: str) -> list[str]: ...

    async def clean(
        self, queue_name: str, state: JobState, grace: Duration, limit: int | None = None
    ) -> int:
        check_name(queue_name, "queue_name")
        state = JobState.parse(state)
        if state is JobState.ACTIVE:
            raise InvalidArgumentError("state", "active jobs cannot be cleaned")
        seconds = parse_duration(grace, "grace")
        if limit is not None:
            check_int(limit, "limit", minimum=1)
        return await self._clean(queue_name, state, seconds, limit)

    @abc.abstractmethod
    async def _clean(
        self, queue_name: str, state: JobState, seconds: float, limit: int | None
    ) -> int: ...

    async def drain(self, queue_name: str) -> int:
        check_name(queue_name, "queue_name")
        return await self._drain(queue_name)

    @abc.abstractmethod
    async def _drain(self, queue_name: str) -> int: ...

    async def obliterate(self, queue_name: str, *, force: bool = False) -> None:
        check_name(queue_name, "queue_name")
        await self._obliterate(queue_name, force)

    @abc.abstractmethod
    async def _obliterate(self, queue_name: str, force: bool) -> None: ...

    async def retry_jobs(self, queue_name: str, state: JobState = JobState.FAILED) -> int:
        check_name(queue_name, "queue_name")
        state = JobState.parse(state)
        if state not in TERMINAL_STATES:
            raise InvalidArgumentError("state", "only failed or completed jobs can be retried")
        return await self._retry_jobs(queue_name, state)

    @abc.abstractmethod
    async def _retry_jobs(self, queue_name: str, state: JobState) -> int: ...

    async def publish(self, event: StoreEvent) -> None:
        await self._publish(check_event(event))

    @abc.abstractmethod
    async def _publish(self, clean: StoreEvent) -> None: ...

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
