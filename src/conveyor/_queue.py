"""Queue: adding jobs to a named queue and managing it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

import attrs

from ._events import EventBus
from ._job import Job
from ._schedules import first_run, repeat_key, run_record, save_run
from .store import (
    ALL_JOB_NAMES,
    ArgumentTypeError,
    Backoff,
    ChildFailurePolicy,
    Deduplication,
    Duration,
    Group,
    InvalidArgumentError,
    JobData,
    JobNotFoundError,
    JobOptions,
    JobState,
    JsonValue,
    MetricKind,
    Metrics,
    Repeat,
    Store,
    check_job_name,
    check_json,
    check_name,
)
from .store._models import NO_OPTIONS
from .store._validate import HandedOver

__all__ = ["JobOptionsDict", "Queue", "build_job"]


class JobOptionsDict(TypedDict, total=False):
    """The keyword options of :meth:`Queue.add` (see :class:`~conveyor.store.JobOptions`)."""

    priority: int
    delay: Duration
    attempts: int
    backoff: Backoff | None
    lifo: bool
    job_id: str | None
    deduplication: Deduplication | None
    remove_on_complete: bool | int
    remove_on_fail: bool | int
    timeout: Duration | None
    repeat: Repeat | None
    group: Group | None
    fail_parent_on_child_failure: ChildFailurePolicy | str


_OPTION_NAMES = frozenset(JobOptionsDict.__annotations__)


def make_options(base: JobOptions, options: Mapping[str, Any]) -> JobOptions:
    """``base`` with ``options`` applied; unknown option names are refused by name."""
    if not options:
        return base  # frozen: sharing it is safe
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        known = ", ".join(sorted(_OPTION_NAMES))
        raise ArgumentTypeError(unknown[0], f"unknown job option (known: {known})")
    return attrs.evolve(base, **options)


def _dedup_key(name: str, data: JsonValue, dedup: Deduplication) -> str:
    key = dedup.key
    if key is None:
        key = json.dumps([name, data], sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    if dedup.hash:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def new_job_id() -> str:
    """A fresh job id: 32 hex digits, the first 12 the milliseconds since the epoch, the
    rest 80 random bits (the layout of a UUIDv7).

    Ids that grow with time land next to each other in a store's id index, where random ones
    would touch a different page each: about a third less work per insert on SQLite.
    """
    return new_job_ids(1)[0]


def new_job_ids(count: int) -> list[str]:
    """``count`` fresh job ids, as :func:`new_job_id` describes them, for one bulk add (one
    clock read and one call for the random bits: a tenth of the cost of one call each)."""
    now = f"{time.time_ns() // 1_000_000:012x}"
    bits = os.urandom(10 * count).hex()
    return [now + bits[i : i + 20] for i in range(0, 20 * count, 20)]


def build_job(
    queue_name: str, name: str, data: JsonValue, opts: JobOptions, job_id: str | None = None
) -> JobData:
    """The record a producer hands to the store for a new job (``job_id``: the id it takes
    unless its options name one; default, a fresh one)."""
    check_job_name(name, "name")
    if opts.deduplication is None:
        # The store checks (and copies) data at its edge. (Positional: keywords cost a third
        # of the time, in a bulk add's hottest line.)
        return JobData(opts.job_id or job_id or new_job_id(), queue_name, name, data, opts)
    clean = check_json(data, "data")  # read here to hash it
    job = JobData(opts.job_id or job_id or new_job_id(), queue_name, name, clean, opts)
    job.deduplication_key = _dedup_key(name, clean, opts.deduplication)
    return job


class Queue:
    """A named queue in a store: add jobs to it, look at them, manage it.

    ::

        queue = conveyor.Queue("emails", store=store)
        job = await queue.add("send", {"to": "a@example.com"}, attempts=3,
                              backoff=conveyor.Backoff.exponential("1s"))

    A queue object holds no state of its own: any number of them, in any number of processes,
    may name the same queue of a store. Workers are started with :func:`~conveyor.open_worker`.

    :param name: the queue's name (a non-empty string).
    :param store: the store the queue lives in (see :func:`~conveyor.open_store`).
    :param default_job_options: options every job of this queue starts from; the keyword
        options of :meth:`add` override them one by one.
    """

    def __init__(
        self, name: str, *, store: Store, default_job_options: JobOptions | None = None
    ) -> None:
        self.name = check_name(name, "name")
        """The queue's name."""
        if not isinstance(store, Store):
            raise ArgumentTypeError("store", f"expected a Store, got {type(store).__name__}")
        if default_job_options is not None and not isinstance(default_job_options, JobOptions):
            raise ArgumentTypeError("default_job_options", "expected JobOptions")
        self.store = store
        """The store the queue lives in."""
        self.default_job_options = default_job_options or NO_OPTIONS
        """The options every job added through this object starts from."""
        self.events = EventBus(on_first=self._start_events, on_last=self._stop_events)
        """The queue's events, as its store publishes them (subscribed while anyone listens)."""

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    def _start_events(self) -> None:
        self.store.subscribe(self.name, self.events.emit)

    def _stop_events(self) -> None:
        self.store.unsubscribe(self.name, self.events.emit)

    def _job(self, data: JobData) -> Job:
        return Job(data, self.store)

    # -- adding -----------------------------------------------------------------------------------

    async def add(
        self, name: str, data: JsonValue = None, **options: Unpack[JobOptionsDict]
    ) -> Job:
        """Add a job; return it. With ``deduplication``, returns the job already holding the
        key when there is one.

        ::

            await queue.add("send", {"to": "a@example.com"}, priority=1, delay="5s",
                            attempts=5, backoff=conveyor.Backoff.exponential("1s"))

        Everything is checked before the store is touched: an unknown option, a bad value or
        data JSON cannot hold raises an error naming it.

        :param name: the job's name; a worker can be limited to one name (``job_name=``).
        :param data: the payload, any JSON value.
        :param options: the fields of :class:`~conveyor.JobOptions`: ``priority``, ``delay``,
            ``attempts``, ``backoff``, ``lifo``, ``job_id``, ``deduplication``,
            ``remove_on_complete``, ``remove_on_fail``, ``timeout``, ``repeat``, ``group``,
            ``fail_parent_on_child_failure``.
        :raises GroupFullError: the job's group is full.
        :raises DuplicateJobError: ``job_id`` is taken in this queue.
        :raises InvalidArgumentError: an option has a bad value.
        :raises ArgumentTypeError: an unknown option, or a value of the wrong type.
        :raises SerializationError: ``data`` is not JSON.
        """
        return await self._add(name, data, options)

    async def _add(self, name: str, data: JsonValue, options: Mapping[str, Any]) -> Job:
        opts = make_options(self.default_job_options, options)
        job = build_job(self.name, name, data, opts)
        if opts.repeat is not None:
            return await self._add_schedule(job)
        return self._job(await self.store.save_job(job))

    async def _add_schedule(self, job: JobData) -> Job:
        repeat = job.opts.repeat
        assert repeat is not None
        at = first_run(repeat, await self.store.now())
        if at is None:
            raise InvalidArgumentError("repeat", "the schedule has no run left (end or limit)")
        key = repeat_key(job.name, job.data, job.opts)
        record = run_record(job, key, 1, at)
        saved = await save_run(self.store, record)
        return self._job(saved) if saved is not None else await self._read(record.id)

    async def schedule(
        self,
        delay: Duration,
        name: str,
        data: JsonValue = None,
        /,
        **options: Unpack[JobOptionsDict],
    ) -> Job:
        """Add a job that runs ``delay`` from now (by the store's clock).

        ::

            await queue.schedule("10 minutes", "remind", {"user": 42})
        """
        return await self._add(name, data, {**options, "delay": delay})

    async def now(
        self, name: str, data: JsonValue = None, **options: Unpack[JobOptionsDict]
    ) -> Job:
        """Add a job that runs as soon as a worker is free."""
        return await self._add(name, data, {**options, "delay": 0})

    async def every(
        self,
        interval: Duration,
        name: str,
        data: JsonValue = None,
        *,
        limit: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptionsDict],
    ) -> Job:
        """Run a job every ``interval`` (at most ``limit`` times, between ``start`` and
        ``end``); return its first run. Runs fall on multiples of the interval, so every
        producer adding the same schedule adds the same runs.

        ::

            await queue.every("30s", "poll", {"feed": "news"}, limit=100)
        """
        repeat = Repeat(every=interval, limit=limit, start=start, end=end)
        return await self._add(name, data, {**options, "repeat": repeat})

    async def cron(
        self,
        expr: str,
        name: str,
        data: JsonValue = None,
        *,
        tz: str | None = None,
        limit: int | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        **options: Unpack[JobOptionsDict],
    ) -> Job:
        """Run a job on a cron schedule read in time zone ``tz`` (IANA name, default UTC);
        return its first run.

        ::

            await queue.cron("0 9 * * 1-5", "report", tz="Europe/Paris")  # weekdays at 9:00
        """
        repeat = Repeat(cron=expr, tz=tz, limit=limit, start=start, end=end)
        return await self._add(name, data, {**options, "repeat": repeat})

    async def add_bulk(self, jobs: Sequence[tuple[str, JsonValue, JobOptionsDict]]) -> list[Job]:
        """Add many jobs in one transaction, all or none; return them in order.

        ::

            await queue.add_bulk([("send", {"to": a}, {}), ("send", {"to": b}, {"priority": 1})])
        """
        if isinstance(jobs, str | bytes) or not isinstance(jobs, Sequence):
            raise ArgumentTypeError("jobs", "expected a sequence of (name, data, options)")
        records = HandedOver()  # made here and never touched again: the store takes them over
        ids = new_job_ids(len(jobs))
        for i, item in enumerate(jobs):
            if not isinstance(item, tuple) or len(item) != 3 or not isinstance(item[2], Mapping):
                raise ArgumentTypeError(f"jobs[{i}]", "expected a (name, data, options) tuple")
            name, data, options = item
            opts = make_options(self.default_job_options, options)
            records.append(build_job(self.name, name, data, opts, ids[i]))
        return [self._job(saved) for saved in await self.store.save_bulk(records)]

    async def _read(self, job_id: str) -> Job:
        data = await self.store.get_job(self.name, job_id)
        if data is None:  # removed between the add and the read (remove_on_complete, ...)
            raise JobNotFoundError(self.name, job_id)
        return self._job(data)

    # -- reading ----------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        """The job with this id, or ``None`` if the queue has none."""
        data = await self.store.get_job(self.name, job_id)
        return None if data is None else self._job(data)

    async def get_jobs(self, state: JobState | str, start: int = 0, end: int = 100) -> list[Job]:
        """Jobs in a state, positions ``start`` to ``end`` inclusive (``end=-1``: all)."""
        jobs = await self.store.list_jobs(self.name, JobState.parse(state), start, end)
        return [self._job(data) for data in jobs]

    async def count(self, state: JobState | str) -> int:
        """How many jobs of the queue are in ``state``."""
        return await self.store.count_jobs(self.name, JobState.parse(state))

    async def get_job_counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero included)."""
        return await self.store.get_job_counts(self.name)

    # -- managing ---------------------------------------------------------------------------------

    async def pause(self, job_name: str | None = None) -> None:
        """Stop workers from starting jobs of this queue (or only jobs named ``job_name``).
        Running jobs finish."""
        await self.store.pause_job_name(self.name, ALL_JOB_NAMES if job_name is None else job_name)

    async def resume(self, job_name: str | None = None) -> None:
        """Undo :meth:`pause` for the whole queue (or for ``job_name``)."""
        await self.store.resume_job_name(self.name, ALL_JOB_NAMES if job_name is None else job_name)

    async def is_paused(self) -> bool:
        """Whether the whole queue is paused (a paused job name does not count)."""
        return ALL_JOB_NAMES in await self.store.get_paused_job_names(self.name)

    async def get_paused_job_names(self) -> list[str]:
        """Paused job names (``"__all__"`` when the whole queue is paused)."""
        return await self.store.get_paused_job_names(self.name)

    async def drain(self) -> int:
        """Remove every waiting and delayed job; return how many."""
        return await self.store.drain(self.name)

    async def clean(
        self, state: JobState | str, grace: Duration = 0, limit: int | None = None
    ) -> int:
        """Remove up to ``limit`` jobs in ``state`` older than ``grace``, oldest first; return
        how many. Finished jobs age from when they finished, others from their creation;
        active jobs are never cleaned.

        ::

            await queue.clean("completed", grace="1 day")
        """
        return await self.store.clean(self.name, JobState.parse(state), grace, limit)

    async def obliterate(self, *, force: bool = False) -> None:
        """Remove the queue and everything in it: jobs, paused names, deduplication keys.

        :raises InvalidJobStateError: jobs are running and ``force`` is not set.
        """
        await self.store.obliterate(self.name, force=force)

    async def retry_jobs(self, state: JobState | str = JobState.FAILED) -> int:
        """Send every failed (or, with ``state="completed"``, every completed) job back to
        waiting, its attempts, result and failure cleared; return how many."""
        return await self.store.retry_jobs(self.name, JobState.parse(state))

    async def get_metrics(
        self,
        kind: MetricKind | str,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Metrics:
        """Completed (or failed) jobs per minute, across every worker of the queue.

        ::

            metrics = await queue.get_metrics("failed", start=an_hour_ago)
            print(metrics.total, [(b.minute, b.count) for b in metrics.buckets])

        :param kind: ``"completed"`` or ``"failed"`` (a :class:`~conveyor.MetricKind`).
        :param start: the first minute wanted (default: as far back as the store keeps them).
        :param end: the last minute wanted (default: now).
        """
        return await self.store.get_metrics(self.name, MetricKind(kind), start, end)

    async def promote_jobs(self) -> int:
        """Run every delayed job now; return how many."""
        return await self.store.promote_jobs(self.name)
