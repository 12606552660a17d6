"""open_worker: a worker is one task group.

::

    open_worker ─┬─ event listener  (a store subscription) store events -> wake-ups, cancels
                 └─ task group ─┬─ lock renewer   extends running jobs' locks; a lost lock or
                                │                 a cancel request stops that job
                                ├─ stall sweeper  takes back jobs whose lock expired anywhere
                                ├─ promoter       moves due delayed jobs to waiting
                                ├─ completer      writes the outcomes of jobs finishing together
                                │                 in one finish_jobs call
                                └─ fetcher ── slot tasks (2 x ``concurrency``), each running
                                                  one job (or batch) at a time in the slot's
                                                  CancelScope, which only the job running in
                                                  it may cancel (timeout: fail_after)

Shutdown, when the ``async with`` block is left:

1. the fetcher stops claiming;
2. running jobs get ``shutdown_timeout`` to finish (forever when ``None``; none at all when the
   block is left by an exception or a cancellation);
3. the rest are cancelled; each cancelled job's lock is released, so another worker takes the
   job at once;
4. the side tasks are cancelled. No task outlives the block.

Outcome writes (and lock releases) run shielded and bounded, so a cancellation never loses a
result that was already computed.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import inspect
import logging
import math
import random
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from ._events import EventBus
from ._job import Job
from ._schedules import next_run, run_record, save_run
from .store import (
    WAKE_EVENTS,
    ArgumentTypeError,
    Backoff,
    BackoffType,
    Duration,
    EventType,
    FetchOptions,
    JobData,
    JobOutcome,
    JsonValue,
    Limiter,
    LockStatus,
    OutcomeKind,
    SerializationError,
    Store,
    StoreError,
    StoreEvent,
    check_int,
    check_job_name,
    check_json,
    check_name,
    parse_duration,
)

__all__ = ["Batch", "BatchResult", "GroupLimits", "Processor", "Worker", "open_worker"]

_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 5.0
"""Seconds between attempts when the store cannot be reached (doubling, jittered)."""

log = logging.getLogger("conveyor.worker")

Processor = Callable[[Job], Any]
"""``async def f(job) -> result``, or a plain ``def`` (run in a worker thread)."""

BatchProcessor = Callable[[list[Job]], Any]
"""With ``batch=``: ``async def f(jobs) -> list[BatchResult] | None`` (or a plain ``def``)."""

_WRITE_TIMEOUT = 30.0
"""How long a shielded outcome write may take before the worker gives up on it (seconds)."""

_LOCKS_PER_CONCURRENCY = 3
"""A worker holds at most this many times its ``concurrency`` in locks (see ``Worker._room``)."""


@attrs.frozen
class GroupLimits:
    """Limits that apply to each group separately, across every worker of the queue.

    :param concurrency: at most this many active jobs per group.
    :param limiter: at most ``limiter.max`` jobs started per group per ``limiter.duration``.
    """

    concurrency: int | None = attrs.field(default=None)
    limiter: Limiter | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if self.concurrency is not None:
            check_int(self.concurrency, "group.concurrency", minimum=1)
        if self.limiter is not None and not isinstance(self.limiter, Limiter):
            raise ArgumentTypeError("group.limiter", "expected a Limiter")


def _batch_wait(value: Duration | None) -> float | None:
    return None if value is None else parse_duration(value, "batch.wait")


class _Stop(enum.Enum):
    SHUTDOWN = "worker shutting down"
    LOCK_LOST = "lock lost"
    CANCELLED = "cancelled"


@attrs.define(eq=False)
class _Running:
    """A claimed job this worker holds: renewed by the lock renewer until its unit ends."""

    job: Job
    token: str
    unit: _Unit | None = None
    stop: _Stop | None = None

    def cancel(self, why: _Stop) -> None:
        """Stop this job. A batch is stopped once every job in it is (or at shutdown); until
        then the batch goes on for the others. A unit that has not started yet never will."""
        if self.stop is None:
            self.stop = why
        unit = self.unit
        if unit is not None and unit.scope is not None and unit.stopped:
            unit.scope.cancel()


@attrs.define(eq=False)
class _Unit:
    """What one slot task runs at a time: a job, or a batch of jobs."""

    entries: list[_Running]
    scope: anyio.CancelScope | None = None
    """The cancel scope of the slot task while it runs this unit's processor, else None:
    cancelling it stops this unit and nothing else (see ``Worker._run_slot``)."""

    @property
    def stopped(self) -> bool:
        """Stopped from outside: at shutdown, or once every job of it is."""
        stops = [entry.stop for entry in self.entries]
        return _Stop.SHUTDOWN in stops or None not in stops


@attrs.define(eq=False)
class _Flush:
    """Outcomes waiting for the completer's next ``finish_jobs`` call."""

    outcomes: list[JobOutcome] = attrs.field(factory=list)
    done: anyio.Event = attrs.field(factory=anyio.Event)
    results: list[bool] = attrs.field(factory=list)
    error: BaseException | None = None
    handed: list[tuple[_Unit, int, int]] = attrs.field(factory=list)
    """Units handed over whole (see ``Worker._hand_over``), with their outcomes' range: the
    completer announces those outcomes and forgets the units' jobs once written."""


@attrs.frozen
class Batch:
    """Hand the processor jobs in batches: ``f(jobs: list[Job]) -> list[BatchResult] | None``.

    ::

        async with conveyor.open_worker("emails", send_all, store=store,
                                        batch=conveyor.Batch(100, wait="200ms")):
            ...

    The processor returns one :class:`BatchResult` per job, in order, or ``None`` when every
    job completed (with ``None`` as its value); an exception fails this attempt of every job
    of the batch.

    :param size: at most this many jobs per call.
    :param wait: how long to wait for a batch to fill before running it part-full
        (``None``: run whatever is there at once).
    """

    size: int = attrs.field()
    wait: float | None = attrs.field(default=None, converter=_batch_wait)

    def __attrs_post_init__(self) -> None:
        check_int(self.size, "batch.size", minimum=1)


@attrs.frozen
class BatchResult:
    """The result of one job of a batch: ``BatchResult.ok(value)`` or ``.failed(error)``.

    A failed job retries by its own ``attempts`` and ``backoff``; the others complete.

    ::

        async def send_all(jobs: list[conveyor.Job]) -> list[conveyor.BatchResult]:
            sent = await smtp.send_many([job.data for job in jobs])
            return [
                conveyor.BatchResult.ok() if ok else conveyor.BatchResult.failed("rejected")
                for ok in sent
            ]
    """

    value: JsonValue = None
    error: str | None = None

    @classmethod
    def ok(cls, value: JsonValue = None) -> BatchResult:
        """The job completed with ``value`` (JSON)."""
        return cls(value)

    @classmethod
    def failed(cls, error: BaseException | str) -> BatchResult:
        """The job's attempt failed with ``error`` (an exception, or the reason as text)."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        return cls(None, error)


class Worker:
    """A running worker, as :func:`open_worker` yields it: its identity, its events, and
    pause, resume and close.

    ::

        async with conveyor.open_worker("emails", send_email, store=store) as worker:
            worker.events.on("failed", lambda event: print(event.job_id, event.data))
            await anyio.sleep_forever()
    """

    def __init__(
        self,
        queue_name: str,
        processor: Processor | BatchProcessor,
        store: Store,
        *,
        concurrency: int,
        lock_duration: float,
        stalled_interval: float,
        max_stalled_count: int,
        fetch: FetchOptions,
        poll_interval: float,
        batch: Batch | None = None,
    ) -> None:
        self.id = f"{queue_name}:{uuid.uuid4().hex[:12]}"
        """This worker's id, ``"<queue>:<12 hex digits>"``: the ``locked_by`` of the jobs it
        claims, and the ``worker_id`` of their attempt records."""
        self.queue_name = queue_name
        """The queue this worker runs jobs of."""
        self.events = EventBus()
        """This worker's events: ``active``, ``completed``, ``failed``, ``retrying``,
        ``progress``, ``stalled``, ``error``."""
        self._processor = processor
        self._is_async = _is_async(processor)
        self._store = store
        self._concurrency = concurrency
        self._lock_duration = lock_duration
        self._stalled_interval = stalled_interval
        self._max_stalled_count = max_stalled_count
        self._fetch = fetch
        self._poll_interval = poll_interval
        self._batch = batch
        self._units = 0
        """Units (jobs, or batches) running."""
        self._writing = 0
        """Units whose processor is done and whose outcome is not written yet."""
        self._running: dict[str, _Running] = {}
        self._ready: deque[_Unit] = deque()
        self._idle_slots: deque[anyio.Event] = deque()
        """One event per slot task waiting for a unit (see ``_signal_work``)."""
        self._waking = 0
        """Slot tasks woken for a unit that have not run yet."""
        self._flush = _Flush()
        self._outcomes_ready = anyio.Event()
        self._completer_alive = True
        self._wakeup = anyio.Event()
        self._promoter_wakeup = anyio.Event()
        self._paused = False
        self._closing = False
        self._grace: float | None = None
        self._strategies: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return f"<Worker {self.id} running={len(self._running)}>"

    # -- control --------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """How many jobs this worker is running now."""
        return len(self._running)

    def pause(self) -> None:
        """Stop claiming new jobs: no job starts after this (a claim in flight is handed
        back), and running ones go on."""
        self._paused = True
        self._wake()  # a batch being filled stops filling and is handed back

    def resume(self) -> None:
        """Claim jobs again after :meth:`pause`."""
        self._paused = False
        self._wake()

    def close(self) -> None:
        """Stop claiming and begin the shutdown: no job starts after this (a claim in flight
        is handed back). The ``async with`` block still waits for running jobs."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()

    def _emit(self, type_: str, job_id: str | None = None, **data: Any) -> None:
        if self.events.listening(type_):
            self.events.emit(StoreEvent(type_, self.queue_name, job_id, data))

    def _job_progress(self, job: Job, progress: Any) -> None:
        self._emit(EventType.PROGRESS, job.id, progress=progress)

    # -- the fetcher ----------------------------------------------------------------------------

    async def _run_fetcher(self, done: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as slots:
                # Twice as many slot tasks as units may run: a unit whose processor returned
                # keeps its task while its outcome is written, and the next one runs meanwhile.
                for n in range(2 * self._concurrency):
                    slots.start_soon(self._run_slot, name=f"{self.id} slot {n}")
                try:
                    await self._fetch_until_closed()
                    await self._drain()
                finally:
                    self._closing = True
                    with anyio.CancelScope(shield=True):
                        await self._release_ready()  # claimed, never started: give back now
                    self._signal_work()  # idle slots see the close and return
        finally:
            done.set()

    async def _fetch_until_closed(self) -> None:
        backoff = 0.0
        while not self._closing:
            claimed_any = False
            while self._room() and not self._paused and not self._closing:
                try:
                    claimed = await self._claim(self._concurrency - self._units)
                except StoreError as exc:
                    # The store is unreachable (a lost connection, a restarting server): say
                    # so, wait, try again; running jobs go on meanwhile.
                    backoff = min(max(backoff * 2, _FIRST_BACKOFF), _MAX_BACKOFF)
                    log.warning("worker %s: fetching jobs failed: %s", self.id, exc)
                    self._emit(EventType.ERROR, message=f"fetching jobs failed: {exc}")
                    with anyio.move_on_after(random.uniform(backoff / 2, backoff)):
                        while not self._closing:
                            await self._sleep()
                    break
                backoff = 0.0
                if not claimed:
                    break
                units = [self._unit(entries) for entries in claimed]
                if self._paused and not self._closing:
                    # Paused while claiming: nothing starts after pause(). (Closed while
                    # claiming, the units are handed back with the others, below.)
                    with anyio.CancelScope(shield=True):
                        for unit in units:
                            await self._give_back(unit)
                    break
                self._ready.extend(units)
                if self._closing:  # closed while claiming: nothing starts after close()
                    break
                self._signal_work()
                claimed_any = True
            if not claimed_any or not self._room() or self._paused:
                await self._sleep()

    def _room(self) -> bool:
        """Whether to claim: fewer than ``concurrency`` units run, and fewer than three times
        that many run or wait for their outcome to be written (the locks a worker holds).

        Three, because the completer writes one ``finish_jobs`` call at a time: while one
        call is written, the jobs finishing meanwhile wait for the next. With room for one
        claim's jobs running, one call being written and one waiting, the claim, the jobs and
        the writes all go on at once. At twice, a worker of quick jobs claimed only after each
        write had landed (claim and write took turns): a single worker drained about 15% fewer
        jobs a second at concurrency 10 on PostgreSQL (bench/README.md)."""
        units = self._units
        return (
            units < self._concurrency
            and units + self._writing < _LOCKS_PER_CONCURRENCY * self._concurrency
        )

    def _signal_work(self) -> None:
        """See that a slot task comes for the units ready to run (every idle one when closing).

        One slot at a time is woken: the slot that takes a unit wakes the next while units
        remain (``_run_slot``). A job that awaits something has the next slot on its way at
        once; jobs that finish without waiting are run one after another by the slot already
        running, instead of waking a slot each for nothing (a task step per job, a tenth of
        a no-op job's cost on asyncio).
        """
        idle = self._idle_slots
        if self._closing:
            self._waking += len(idle)
            while idle:
                idle.popleft().set()
        elif self._ready and not self._waking and idle:
            self._waking += 1
            idle.popleft().set()

    async def _run_slot(self) -> None:
        """One of the slot tasks: runs claimed units one after another (a task per job costs
        ~20 us to spawn under AnyIO, a third of a no-op job's cost; bench/worker_drain.py).

        The units run in one cancel scope, the slot's, made anew only after a unit was stopped
        from outside (cancelled, its lock lost, the shutdown): a scope per job cost a no-op
        job a quarter of the worker's time on MemoryStore. A unit holds the scope
        (``_Unit.scope``) only while its processor runs, so cancelling it can stop no other.
        """
        while not self._closing:
            scope = anyio.CancelScope()
            unit: _Unit | None = None
            try:
                with scope:
                    while not scope.cancel_called:
                        if self._closing:
                            return  # queued units are handed back by the fetcher
                        if not self._ready:
                            # (a slot woken for a unit another took first just waits again)
                            woken = anyio.Event()
                            self._idle_slots.append(woken)
                            await woken.wait()
                            self._waking -= 1
                            continue
                        unit = self._ready.popleft()
                        self._signal_work()  # the next slot, for the units left
                        outcomes = await self._attempt(unit, scope)
                        ended, unit = unit, None
                        await self._settle(ended, outcomes)
            finally:
                if unit is not None:  # stopped while its processor ran (also from outside
                    await self._settle(unit, None)  # the worker: its jobs are given back)

    def _unit(self, entries: list[_Running]) -> _Unit:
        """A unit of claimed jobs, counted as running from now until it ends or is given back."""
        unit = _Unit(entries)
        for entry in entries:
            entry.unit = unit
        self._units += 1
        return unit

    async def _release_ready(self) -> None:
        while self._ready:
            unit = self._ready.popleft()
            for entry in unit.entries:
                entry.stop = entry.stop or _Stop.SHUTDOWN
            await self._give_back(unit)

    async def _give_back(self, unit: _Unit) -> None:
        """Hand back a unit that never started: its jobs return to ``waiting``, their
        attempts not counted."""
        await self._record(unit, None)
        self._drop(unit)
        self._units -= 1

    def _track(self, claimed: list[JobData]) -> list[_Running]:
        entries = [_Running(Job(data, self._store, worker=self), data.lock_token or "")
                   for data in claimed]  # fmt: skip
        for entry in entries:
            self._running[entry.job.id] = entry  # from now on, its lock is renewed
        return entries

    async def _claim(self, free: int) -> list[list[_Running]]:
        """Claim work for up to ``free`` units, in one call: a job per unit, or one batch
        (waiting up to ``batch.wait`` for it to fill)."""
        limit = free if self._batch is None else self._batch.size
        entries = self._track(
            await self._store.fetch_next_jobs(
                self.queue_name, self.id, self._lock_duration, limit, self._fetch
            )
        )
        if self._batch is None:
            return [[entry] for entry in entries]
        if not entries:
            return []
        if self._batch.wait is None:
            return [entries]
        with anyio.move_on_after(self._batch.wait):
            while len(entries) < limit and not (self._closing or self._paused):
                await self._sleep()
                entries += self._track(
                    await self._store.fetch_next_jobs(
                        self.queue_name, self.id, self._lock_duration, limit - len(entries),
                        self._fetch,
                    )
                )  # fmt: skip
        return [entries]

    async def _sleep(self) -> None:
        timeout = self._poll_interval
        if self._fetch.limiter is not None:
            timeout = min(timeout, self._fetch.limiter.duration / self._fetch.limiter.max)
        with anyio.move_on_after(timeout):
            await self._wakeup.wait()
        self._wakeup = anyio.Event()

    async def _drain(self) -> None:
        """Give back jobs not yet started; give running jobs their grace, then cancel the rest
        (their locks are released)."""
        with anyio.CancelScope(shield=True):
            await self._release_ready()
        if self._running and self._grace != 0:
            with anyio.move_on_after(math.inf if self._grace is None else self._grace):
                while self._running:
                    await self._sleep()
        for entry in list(self._running.values()):
            entry.cancel(_Stop.SHUTDOWN)

    # -- one unit: a job, or a batch --------------------------------------------------------------

    async def _attempt(
        self, unit: _Unit, scope: anyio.CancelScope
    ) -> list[JobOutcome | None] | None:
        """Run a unit's processor in the slot's ``scope``: its outcomes, or None when it was
        stopped before it started. A stop while it runs cancels ``scope``, and the
        cancellation leaves through here."""
        if unit.stopped:
            return None
        unit.scope = scope
        try:
            return await self._process(unit)
        except Exception as exc:  # the processor raised or timed out
            unit.scope = None
            return [await self._failure(entry.job, exc) for entry in unit.entries]
        finally:
            unit.scope = None

    async def _settle(self, unit: _Unit, outcomes: list[JobOutcome | None] | None) -> None:
        # The processor is done: its slot can be claimed for while the outcome is written
        # (the claim and the write overlap; the jobs still hold their locks until then).
        self._units -= 1
        self._writing += 1
        self._wake()
        if not self._hand_over(unit, outcomes):
            # Shielded, so a cancellation never loses a computed result. (Bounded all the
            # same: each write gives up after _WRITE_TIMEOUT, see _finish.)
            with anyio.CancelScope(shield=True):
                await self._record(unit, outcomes)
            self._forget(unit)

    def _hand_over(self, unit: _Unit, outcomes: list[JobOutcome | None] | None) -> bool:
        """Leave the unit's outcomes to the completer, which writes them with those of every
        job finishing at the same time, then announces them and forgets the jobs (their locks
        are renewed until then): the unit's task goes on at once, with nothing to wait for.
        False when the unit must see to its outcomes itself (see ``_record``): a job stopped
        from outside (cancelled, its lock lost, given back at shutdown), or no completer any
        more."""
        if outcomes is None or not self._completer_alive:
            return False
        finish: list[JobOutcome] = []
        for entry, outcome in zip(unit.entries, outcomes, strict=True):
            if entry.job._settled:  # the processor ended the run itself (move_to_*)
                continue
            if outcome is None:
                return False
            finish.append(outcome)
        if not finish:
            self._forget(unit)
            return True
        flush = self._flush
        start = len(flush.outcomes)
        flush.outcomes.extend(finish)
        flush.handed.append((unit, start, len(flush.outcomes)))
        self._outcomes_ready.set()
        return True

    def _forget(self, unit: _Unit) -> None:
        """The unit's jobs are done with: stop renewing their locks."""
        self._drop(unit)
        self._writing -= 1
        self._wake()  # the fetcher may claim again; a shutdown waiting for jobs sees them gone

    def _drop(self, unit: _Unit) -> None:
        """Stop renewing the locks of the unit's jobs, and unlink the unit from its jobs: the
        two refer to each other, and left so, every job would wait for the garbage collector
        (a full collection every few thousand jobs, ~a fifth of a no-op drain's time)."""
        for entry in unit.entries:
            self._running.pop(entry.job.id, None)
            entry.unit = None

    async def _process(self, unit: _Unit) -> list[JobOutcome | None]:
        jobs = [entry.job for entry in unit.entries]
        for job in jobs:
            self._emit(EventType.ACTIVE, job.id, name=job.name)
            if job.opts.repeat is not None and job._data.repeat_run is not None:
                await self._schedule_next(job)
        timeouts = [job.opts.timeout for job in jobs if job.opts.timeout is not None]
        limit = min(timeouts) if timeouts else None
        arg = jobs if self._batch is not None else jobs[0]
        if limit is None:
            raw = await self._call(arg)
        else:
            try:
                with anyio.fail_after(limit):
                    raw = await self._call(arg)
            except TimeoutError as exc:
                raise TimeoutError(f"timed out after {limit}s") from exc
        if self._batch is None:
            return [JobOutcome.completed(jobs[0]._data, check_json(raw, "returnvalue"))]
        return await self._batch_outcomes(jobs, raw)

    async def _batch_outcomes(self, jobs: list[Job], raw: Any) -> list[JobOutcome | None]:
        if raw is None:
            return [JobOutcome.completed(job._data) for job in jobs]
        if not isinstance(raw, list | tuple) or len(raw) != len(jobs):
            raise ArgumentTypeError(
                "batch result", f"expected None or a list of {len(jobs)} BatchResult"
            )
        outcomes: list[JobOutcome | None] = []
        for job, result in zip(jobs, raw, strict=True):
            if not isinstance(result, BatchResult):
                raise ArgumentTypeError("batch result", f"expected BatchResult, got {result!r:.60}")
            if result.error is not None:
                outcomes.append(await self._failure(job, None, result.error))
                continue
            try:
                outcomes.append(JobOutcome.completed(job._data, check_json(result.value, "value")))
            except SerializationError as exc:
                outcomes.append(await self._failure(job, exc))
        return outcomes

    async def _schedule_next(self, job: Job) -> None:
        """Add the run after this one, before this one starts (see ``_schedules``)."""
        repeat, run = job.opts.repeat, job._data.repeat_run
        assert repeat is not None
        assert run is not None
        try:
            at = next_run(repeat, run, await self._store.now())
            if at is not None:
                await save_run(self._store, run_record(job._data, run.key, run.count + 1, at))
        except Exception as exc:
            self._emit(EventType.ERROR, job.id, message=f"scheduling the next run failed: {exc}")

    async def _call(self, arg: Any) -> Any:
        if self._is_async:
            return await self._processor(arg)
        return await anyio.to_thread.run_sync(self._processor, arg, abandon_on_cancel=True)

    async def _failure(
        self, job: Job, exc: BaseException | None, reason: str | None = None
    ) -> JobOutcome:
        """The outcome of a failed attempt: a retry while attempts and backoff allow, else a
        final failure."""
        if reason is None:
            assert exc is not None
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        trace = None if exc is None else "".join(traceback.format_exception(exc))
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await job.refresh()  # discard() or cancel() may have happened meanwhile
        attempt = job.attempts_made + 1
        if job.discarded or job.cancelled_at is not None or attempt >= job.opts.attempts:
            return JobOutcome.failed(job._data, reason, stacktrace=trace)
        delay = self._backoff(job.opts.backoff, attempt, exc)
        return JobOutcome.retry(job._data, reason, delay=delay, stacktrace=trace)

    def _backoff(self, backoff: Backoff | None, attempt: int, exc: BaseException | None) -> float:
        if backoff is None:
            return 0.0
        if backoff.type is not BackoffType.CUSTOM:
            return backoff.delay_for(attempt)
        assert backoff.strategy is not None
        strategy = self._strategies.get(backoff.strategy)
        if strategy is None:
            module, _, qualname = backoff.strategy.partition(":")
            target: Any = importlib.import_module(module)
            for part in qualname.split("."):
                target = getattr(target, part)
            strategy = self._strategies[backoff.strategy] = target
        return backoff.finish(parse_duration(strategy(attempt, exc), "backoff delay"))

    async def _record(self, unit: _Unit, outcomes: list[JobOutcome | None] | None) -> None:
        """Write what a unit ended with, in one ``finish_jobs`` call; give back the jobs that
        ended without a result."""
        finish: list[JobOutcome] = []
        release: list[_Running] = []
        for i, entry in enumerate(unit.entries):
            outcome = None if outcomes is None else outcomes[i]
            if entry.job._settled:  # the processor ended the run itself (move_to_*)
                continue
            if outcome is not None:
                finish.append(outcome)
            elif entry.stop is _Stop.CANCELLED:
                finish.append(JobOutcome.failed(entry.job._data, "cancelled", cancelled=True))
            elif entry.stop is _Stop.LOCK_LOST:
                self._emit(EventType.ERROR, entry.job.id, message="lock lost; result not recorded")
            else:  # shutting down, or cancelled from outside: give the job back at once
                release.append(entry)
        try:
            applied = await self._write(finish) if finish else []
            for entry in release:
                await self._store.release_lock(self.queue_name, entry.job.id, entry.token)
        except Exception as exc:
            log.exception("recording the outcome of jobs of worker %s failed", self.id)
            self._emit(EventType.ERROR, message=f"recording outcomes failed: {exc}")
            return
        for outcome, ok in zip(finish, applied, strict=True):
            self._announce(outcome, ok)

    async def _write(self, outcomes: list[JobOutcome]) -> list[bool]:
        """Have the completer write these outcomes with those of every other job finishing at
        the same time, in one ``finish_jobs`` call; wait for the write and return its results."""
        if not self._completer_alive:
            return await self._finish(outcomes)
        flush = self._flush
        start = len(flush.outcomes)
        flush.outcomes.extend(outcomes)
        self._outcomes_ready.set()
        await flush.done.wait()
        if flush.error is not None:
            raise flush.error
        return flush.results[start : start + len(outcomes)]

    async def _finish(self, outcomes: list[JobOutcome]) -> list[bool]:
        """One ``finish_jobs`` call, given up after ``_WRITE_TIMEOUT``: a store that never
        answers cannot hold the jobs waiting for the write, or the shutdown, forever. (One
        timer for a whole batch of outcomes, not one per job.)"""
        with anyio.move_on_after(_WRITE_TIMEOUT):
            return await self._store.finish_jobs(outcomes)
        raise StoreError(f"the store did not answer within {_WRITE_TIMEOUT:g} s")

    async def _run_completer(self) -> None:
        try:
            while True:
                await self._outcomes_ready.wait()
                self._outcomes_ready = anyio.Event()
                await anyio.lowlevel.checkpoint()  # let jobs finishing now join this write
                await self._flush_outcomes()
        finally:
            with anyio.CancelScope(shield=True):
                while self._flush.outcomes:
                    await self._flush_outcomes()
                self._completer_alive = False

    async def _flush_outcomes(self) -> None:
        flush, self._flush = self._flush, _Flush()
        # A store that cannot be reached gets asked again, with backoff, while the jobs' locks
        # would still hold; past that, other workers take the jobs back as stalled anyway.
        # (Asking again is safe: an outcome applies only while its lock token holds the job.)
        give_up = anyio.current_time() + self._lock_duration
        backoff = _FIRST_BACKOFF
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    flush.results = await self._finish(flush.outcomes)
                except StoreError as exc:
                    if anyio.current_time() + backoff >= give_up:
                        flush.error = exc
                        break
                    log.warning("worker %s: recording outcomes failed, retrying: %s", self.id, exc)
                    await anyio.sleep(random.uniform(backoff / 2, backoff))
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                except Exception as exc:
                    flush.error = exc
                break
        flush.done.set()
        if not flush.handed:
            return
        if flush.error is not None:
            log.error("recording the outcome of jobs of worker %s failed: %s", self.id, flush.error)
            self._emit(EventType.ERROR, message=f"recording outcomes failed: {flush.error}")
        for unit, start, end in flush.handed:
            if flush.error is None:
                for outcome, ok in zip(
                    flush.outcomes[start:end], flush.results[start:end], strict=True
                ):
                    self._announce(outcome, ok)
            self._forget(unit)

    def _announce(self, outcome: JobOutcome, applied: bool) -> None:
        if not applied:
            self._emit(EventType.ERROR, outcome.job_id, message="lock lost; result not recorded")
        elif outcome.kind is OutcomeKind.COMPLETED:
            self._emit(EventType.COMPLETED, outcome.job_id, returnvalue=outcome.returnvalue)
        elif outcome.kind is OutcomeKind.FAILED:
            self._emit(EventType.FAILED, outcome.job_id, failed_reason=outcome.failed_reason)
        else:
            self._emit(
                "retrying", outcome.job_id, failed_reason=outcome.failed_reason,
                delay=outcome.delay,
            )  # fmt: skip
            self._promoter_wakeup.set()

    # -- side tasks -----------------------------------------------------------------------------

    async def _run_lock_renewer(self) -> None:
        while True:
            await anyio.sleep(self._lock_duration / 2)
            locks = {job_id: entry.token for job_id, entry in self._running.items()}
            if not locks:
                continue
            try:
                statuses = await self._store.extend_locks(
                    self.queue_name, locks, self._lock_duration
                )
            except Exception as exc:
                self._emit(EventType.ERROR, message=f"lock renewal failed: {exc}")
                continue
            for job_id, status in statuses.items():
                entry = self._running.get(job_id)
                if entry is None:
                    continue
                if status is LockStatus.LOST:
                    entry.cancel(_Stop.LOCK_LOST)
                elif status is LockStatus.CANCEL_REQUESTED:
                    entry.cancel(_Stop.CANCELLED)

    async def _run_stall_sweeper(self) -> None:
        while True:
            try:
                recovered = await self._store.recover_stalled_jobs(
                    self.queue_name, self._max_stalled_count
                )
            except Exception as exc:
                self._emit(EventType.ERROR, message=f"stall sweep failed: {exc}")
                recovered = []
            for data in recovered:
                self._emit(EventType.STALLED, data.id, state=data.state.value)
            if recovered:
                self._wake()
            await anyio.sleep(self._stalled_interval)

    async def _run_promoter(self) -> None:
        while True:
            try:
                if await self._store.promote_delayed_jobs(self.queue_name):
                    self._wake()
                next_at = await self._store.get_next_delayed_timestamp(self.queue_name)
                now = await self._store.now()
            except Exception as exc:
                self._emit(EventType.ERROR, message=f"promoting delayed jobs failed: {exc}")
                next_at = None
                now = None
            timeout = self._poll_interval
            if next_at is not None and now is not None:
                timeout = min(timeout, max((next_at - now).total_seconds(), 0.0))
            with anyio.move_on_after(timeout):
                await self._promoter_wakeup.wait()
            self._promoter_wakeup = anyio.Event()

    def _on_store_event(self, event: StoreEvent) -> None:
        """The event listener: the store calls it for every event of the queue. It only sets
        wake-ups and cancels scopes, so it runs inline rather than as a task (a task would cost
        two task switches per job, for events every job produces)."""
        if event.type in (EventType.WAITING, EventType.RESUMED):
            self._wake()
        elif event.type == EventType.DELAYED:
            self._promoter_wakeup.set()
        elif event.type == EventType.CANCEL_REQUESTED and event.job_id is not None:
            entry = self._running.get(event.job_id)
            if entry is not None:
                entry.cancel(_Stop.CANCELLED)


@attrs.frozen
class _StoreEvents:
    """A worker's subscription to its store. ``event_types`` names the events it acts on; a
    store may skip making the others for it (the ``active`` and ``completed`` events of every
    job the worker runs)."""

    worker: Worker
    event_types: frozenset[str] = WAKE_EVENTS

    def __call__(self, event: StoreEvent) -> None:
        self.worker._on_store_event(event)


def _is_async(processor: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(processor):
        return True
    call = getattr(processor, "__call__", None)  # noqa: B004 - a callable object's method
    return inspect.iscoroutinefunction(call)


@asynccontextmanager
async def open_worker(
    queue_name: str,
    processor: Processor | BatchProcessor,
    *,
    store: Store,
    concurrency: int = 1,
    max_global_concurrency: int | None = None,
    limiter: Limiter | None = None,
    lock_duration: Duration = 30,
    stalled_interval: Duration = 30,
    max_stalled_count: int = 1,
    lifo: bool = False,
    batch: Batch | None = None,
    group: GroupLimits | None = None,
    job_name: str | None = None,
    shutdown_timeout: Duration | None = None,
    poll_interval: Duration = 5,
) -> AsyncIterator[Worker]:
    """Run a worker for ``queue_name`` while in the block (an async context manager yielding
    the :class:`Worker`).

    ::

        async def send_email(job: conveyor.Job) -> str:
            return f"sent to {job.data['to']}"

        async with conveyor.open_worker("emails", send_email, store=store, concurrency=10):
            await anyio.sleep_forever()

    The worker is one task group; nothing it starts outlives the block. Leaving the block
    stops claiming, gives running jobs ``shutdown_timeout`` to finish (no grace at all when
    the block is left by an exception or a cancellation), then cancels the rest and releases
    their locks, so another worker takes them at once. A result computed before the shutdown
    is always recorded.

    :param queue_name: the queue to take jobs from.
    :param processor: ``async def f(job) -> result`` (or a plain function, run in a thread).
        The result must be JSON; an exception fails the attempt.
    :param store: the store the queue lives in.
    :param concurrency: jobs run at once by this worker.
    :param max_global_concurrency: jobs of the queue run at once by all workers together.
    :param limiter: jobs of the queue started per period by all workers together.
    :param lock_duration: how long a claim holds a job; renewed every half of it.
    :param stalled_interval: how often to take back jobs whose lock expired.
    :param max_stalled_count: stalls after which a job fails instead of running again.
    :param lifo: claim the newest job first.
    :param batch: hand the processor lists of jobs (:class:`Batch`); ``concurrency`` then
        counts batches.
    :param group: per-group limits (:class:`GroupLimits`).
    :param job_name: only run jobs of this name.
    :param shutdown_timeout: how long running jobs may finish when the block is left
        (``None``: as long as they take).
    :param poll_interval: the longest the worker sleeps without looking for jobs, in case a
        wake-up event was missed.
    """
    check_name(queue_name, "queue_name")
    if not callable(processor):
        raise ArgumentTypeError("processor", f"must be callable, got {type(processor).__name__}")
    if not isinstance(store, Store):
        raise ArgumentTypeError("store", f"expected a Store, got {type(store).__name__}")
    check_int(concurrency, "concurrency", minimum=1)
    check_int(max_stalled_count, "max_stalled_count", minimum=0)
    if batch is not None and not isinstance(batch, Batch):
        raise ArgumentTypeError("batch", "expected Batch")
    if group is not None and not isinstance(group, GroupLimits):
        raise ArgumentTypeError("group", "expected GroupLimits")
    if limiter is not None and not isinstance(limiter, Limiter):
        raise ArgumentTypeError("limiter", "expected a Limiter")
    if job_name is not None:
        check_job_name(job_name, "job_name")
    grace = (
        None if shutdown_timeout is None else parse_duration(shutdown_timeout, "shutdown_timeout")
    )
    fetch = FetchOptions(
        lifo=lifo,
        job_name=job_name,
        group_concurrency=None if group is None else group.concurrency,
        group_limiter=None if group is None else group.limiter,
        max_global_concurrency=max_global_concurrency,
        limiter=limiter,
    )
    worker = Worker(
        queue_name,
        processor,
        store,
        concurrency=concurrency,
        lock_duration=parse_duration(lock_duration, "lock_duration", allow_zero=False),
        stalled_interval=parse_duration(stalled_interval, "stalled_interval", allow_zero=False),
        max_stalled_count=max_stalled_count,
        fetch=fetch,
        poll_interval=parse_duration(poll_interval, "poll_interval", allow_zero=False),
        batch=batch,
    )
    worker._grace = grace
    fetcher_done = anyio.Event()
    subscription = _StoreEvents(worker)
    store.subscribe(queue_name, subscription)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker._run_lock_renewer, name="lock renewer")
        tg.start_soon(worker._run_stall_sweeper, name="stall sweeper")
        tg.start_soon(worker._run_promoter, name="promoter")
        tg.start_soon(worker._run_completer, name="completer")
        tg.start_soon(worker._run_fetcher, fetcher_done, name="fetcher")
        left_cleanly = False
        try:
            yield worker
            left_cleanly = True
        finally:
            if not left_cleanly:
                worker._grace = 0
            worker.close()
            with anyio.CancelScope(shield=True):
                await fetcher_done.wait()
            tg.cancel_scope.cancel()
            store.unsubscribe(queue_name, subscription)
