"""What the contract suite needs from a store's author, and the small assertions it uses.

The suite imports no test runner: a check is a plain coroutine function taking a
:class:`StoreFixture`, raising :class:`ContractViolation` (an ``AssertionError``) when the store
breaks the contract. Any runner can call them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import attrs

from conveyor.store import FetchOptions, JobData, JobOptions, Store, StoreEvent

__all__ = [
    "ContractViolation",
    "StoreFactory",
    "StoreFixture",
    "expect",
    "expect_eq",
    "expect_raises",
]

E = TypeVar("E", bound=BaseException)


@attrs.define
class StoreFixture:
    """A connected store under test, and a way to move its clock.

    :param store: a connected store with no jobs.
    :param advance: moves the store's time forward by that many seconds (a ``ManualClock``
        for stores keeping their own time; a clock offset for database servers).
    """

    store: Store
    advance: Callable[[float], Awaitable[None]]


StoreFactory = Callable[[], AbstractAsyncContextManager[StoreFixture]]
"""Opens a fresh, empty, connected store for one check, and cleans it up afterwards."""


class ContractViolation(AssertionError):
    """The store broke the contract."""


def expect(condition: object, message: str) -> None:
    if not condition:
        raise ContractViolation(message)


def expect_eq(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise ContractViolation(f"{what}: expected {expected!r}, got {actual!r}")


async def expect_raises(
    kind: type[E], call: Callable[[], Awaitable[Any]], what: str, *, argument: str | None = None
) -> E:
    """Await ``call()`` and require it to raise ``kind`` (naming ``argument``, if given)."""
    try:
        await call()
    except kind as exc:
        if argument is not None:
            named = getattr(exc, "argument", None)
            expect(
                named == argument or (isinstance(named, str) and named.startswith(argument)),
                f"{what}: the error should name {argument!r}, it names {named!r} ({exc})",
            )
        return exc
    except Exception as exc:
        raise ContractViolation(
            f"{what}: expected {kind.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise ContractViolation(f"{what}: expected {kind.__name__}, nothing was raised")


def make_job(
    queue: str = "q",
    name: str = "job",
    data: Any = None,
    *,
    job_id: str | None = None,
    parent: JobData | None = None,
    dedup_key: str | None = None,
    **opts: Any,
) -> JobData:
    """A new job record as a producer would hand it to ``save_job``.

    ::

        saved = await store.save_job(make_job("emails", "send", {"to": "a"}, priority=2))

    :param queue: the job's queue.
    :param name: the job's name.
    :param data: its payload.
    :param job_id: its id (default: a fresh one).
    :param parent: a parent record, for a flow child.
    :param dedup_key: a deduplication key.
    :param opts: :class:`~conveyor.JobOptions` fields.
    """
    options = JobOptions(**opts)
    return JobData(
        id=job_id or options.job_id or uuid.uuid4().hex,
        queue_name=queue,
        name=name,
        data=data,
        opts=options,
        parent_id=None if parent is None else parent.id,
        parent_queue_name=None if parent is None else parent.queue_name,
        deduplication_key=dedup_key,
    )


async def claim(
    store: Store,
    queue: str = "q",
    limit: int = 1,
    *,
    worker: str = "worker-1",
    lock: float = 30.0,
    **fetch: Any,
) -> list[JobData]:
    return await store.fetch_next_jobs(queue, worker, lock, limit, FetchOptions(**fetch))


async def claim_ids(store: Store, queue: str = "q", limit: int = 1, **kw: Any) -> list[str]:
    return [job.id for job in await claim(store, queue, limit, **kw)]


class Recorder:
    """Collects the events a store publishes."""

    def __init__(self) -> None:
        self.events: list[StoreEvent] = []

    def __call__(self, event: StoreEvent) -> None:
        self.events.append(event)

    def types(self, job_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if job_id is None or e.job_id == job_id]

    def clear(self) -> None:
        self.events.clear()
