"""A hypothesis state machine that drives a store and a reference model with the same random
operations and checks that they agree after every step.

::

    from conveyor.testing.state_machine import make_store_state_machine

    TestMyStore = make_store_state_machine(my_store_factory, backend="trio").TestCase

Operations: add, bulk add (with deduplication keys, TTLs, groups with a max size, delays,
priorities, LIFO), claim (batch size, LIFO, job name filter, group concurrency), complete,
fail, retry with and without delay, delay, release, extend lock (with the current token or a
stale one), advance the clock, stall sweep, promote, pause / resume (a name or the queue),
cancel and remove. After every step the job counts, the waiting and delayed orders, and each
job's state, attempts, stall count and lock agree with the model.

The store runs in a blocking portal (its own event loop thread) because hypothesis drives
state machines synchronously.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.from_thread
import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conveyor.store import (
    ALL_JOB_NAMES,
    ConveyorError,
    Deduplication,
    FetchOptions,
    Group,
    JobData,
    JobOptions,
    JobOutcome,
    JobState,
    LockStatus,
)

from ._harness import ContractViolation, StoreFactory, StoreFixture, expect, expect_eq
from ._model import JobSpec, ReferenceQueue

__all__ = ["START_TIME", "make_store_state_machine"]

T = TypeVar("T")
START_TIME = 1_800_000_000.0
"""The model's clock starts here; the store factory's clock must start at the same time."""

QUEUE = "q"
NAMES = ("alpha", "beta", "gamma")
GROUPS = (None, None, "g1", "g2", "g3")
DURATIONS = (0.5, 1.0, 5.0, 30.0)

specs = st.builds(
    JobSpec,
    name=st.sampled_from(NAMES),
    priority=st.integers(-1, 2),
    lifo=st.booleans(),
    group=st.sampled_from(GROUPS),
    delay=st.sampled_from((0.0, 0.0, 0.0, 1.0, 5.0)),
    dedup_key=st.sampled_from((None, None, None, "k1", "k2")),
    dedup_ttl=st.sampled_from((None, 5.0)),
).map(lambda s: attrs.evolve(s, max_size=3) if s.group == "g3" else s)
"""Jobs to add; group ``g3`` holds at most 3 waiting or delayed jobs."""


def _to_job(job_id: str, spec: JobSpec) -> JobData:
    dedup = None
    if spec.dedup_key is not None:
        dedup = Deduplication(spec.dedup_key, ttl=spec.dedup_ttl)
    opts = JobOptions(
        priority=spec.priority,
        lifo=spec.lifo,
        delay=spec.delay,
        group=None if spec.group is None else Group(spec.group, max_size=spec.max_size),
        deduplication=dedup,
    )
    return JobData(
        id=job_id, queue_name=QUEUE, name=spec.name, data={"id": job_id}, opts=opts,
        deduplication_key=spec.dedup_key,
    )  # fmt: skip


def make_store_state_machine(
    factory: StoreFactory, backend: str = "asyncio"
) -> type[RuleBasedStateMachine]:
    """A state machine class checking the store made by ``factory`` against the model.

    ``factory``'s store must start its clock at :data:`START_TIME`. The class's ``TestCase``
    is a :class:`unittest.TestCase` that pytest (or unittest) collects::

        TestMyStoreStateMachine = make_store_state_machine(my_store, backend="trio").TestCase

    :param factory: opens a fresh store for each example hypothesis runs.
    :param backend: the AnyIO backend the store runs on, ``"asyncio"`` or ``"trio"``.
    """

    class StoreStateMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self._portal_cm = anyio.from_thread.start_blocking_portal(backend)
            self.portal = self._portal_cm.__enter__()
            self._fixture_cm = self.portal.wrap_async_context_manager(factory())
            self.fixture: StoreFixture = self._fixture_cm.__enter__()
            self.model = ReferenceQueue(START_TIME)
            self.ids = (f"job-{n}" for n in itertools.count())
            self.workers = itertools.cycle(["w1", "w2"])

        def teardown(self) -> None:
            try:
                self._fixture_cm.__exit__(None, None, None)
            finally:
                self._portal_cm.__exit__(None, None, None)

        def call(self, fn: Callable[[], Awaitable[T]]) -> T:
            async def run() -> T:
                return await fn()

            return self.portal.call(run)

        def both(
            self, store_call: Callable[[], Awaitable[T]], model_call: Callable[[], Any], what: str
        ) -> T | None:
            """Run the same operation on both; they must agree on the result or on the error."""
            try:
                expected = model_call()
            except ConveyorError as exc:
                try:
                    self.call(store_call)
                except type(exc):
                    return None
                raise ContractViolation(
                    f"{what}: the store did not raise {type(exc).__name__}"
                ) from None
            actual = self.call(store_call)
            expect_eq(actual, expected, what)
            return actual

        @property
        def store(self) -> Any:
            return self.fixture.store

        def _pick(self, states: tuple[JobState, ...], pick: int) -> str | None:
            ids = sorted(j.id for j in self.model.jobs.values() if j.state in states)
            return ids[pick % len(ids)] if ids else None

        def _token(self, job_id: str, stale: bool) -> str:
            job = self.model.jobs[job_id]
            if stale and job.old_tokens:
                return job.old_tokens[-1]
            return job.token or "no-token"

        # -- rules

        @initialize()
        def start(self) -> None:
            now = self.call(self.store.now)
            expect_eq(now.timestamp(), START_TIME, "the factory's store starts at START_TIME")

        @rule(spec=specs)
        def add(self, spec: JobSpec) -> None:
            job_id = next(self.ids)

            async def save() -> str:
                return str((await self.store.save_job(_to_job(job_id, spec))).id)

            self.both(save, lambda: self.model.add(job_id, spec), "save_job")

        @rule(batch=st.lists(specs, min_size=1, max_size=5))
        def add_bulk(self, batch: list[JobSpec]) -> None:
            items = [(next(self.ids), spec) for spec in batch]

            async def save() -> list[str]:
                saved = await self.store.save_bulk([_to_job(i, s) for i, s in items])
                return [job.id for job in saved]

            self.both(save, lambda: self.model.add_bulk(items), "save_bulk")

        @rule(
            limit=st.integers(1, 4),
            lifo=st.booleans(),
            job_name=st.sampled_from((None, None, *NAMES)),
            group_concurrency=st.sampled_from((None, None, 1, 2)),
            lock=st.sampled_from(DURATIONS),
        )
        def claim(
            self, limit: int, lifo: bool, job_name: str | None, group_concurrency: int | None,
            lock: float,
        ) -> None:  # fmt: skip
            opts = FetchOptions(lifo=lifo, job_name=job_name, group_concurrency=group_concurrency)
            worker = next(self.workers)
            claimed = self.call(
                lambda: self.store.fetch_next_jobs(QUEUE, worker, lock, limit, opts)
            )
            expected = self.model.claim(
                limit, lifo=lifo, job_name=job_name, group_concurrency=group_concurrency
            )
            expect_eq([j.id for j in claimed], expected, "claimed jobs")
            for job in claimed:
                expect(job.lock_token is not None, "a claimed job has a token")
                for other in self.model.jobs.values():
                    expect(job.lock_token not in other.old_tokens, "tokens are never reused")
                self.model.set_token(job.id, job.lock_token, lock)

        @precondition(lambda self: self.model.in_state(JobState.ACTIVE) or self.model.jobs)
        @rule(
            pick=st.integers(0, 1000),
            kind=st.sampled_from(("completed", "failed", "retry", "delay")),
            delay=st.sampled_from((0.0, 1.0)),
            stale=st.booleans(),
        )
        def finish(self, pick: int, kind: str, delay: float, stale: bool) -> None:
            job_id = self._pick((JobState.ACTIVE,), pick) or self._pick(tuple(JobState), pick)
            if job_id is None:
                return
            token = self._token(job_id, stale)
            job = JobData(id=job_id, queue_name=QUEUE, name="x", lock_token=token)
            outcome = {
                "completed": lambda: JobOutcome.completed(job, {"done": job_id}),
                "failed": lambda: JobOutcome.failed(job, "boom"),
                "retry": lambda: JobOutcome.retry(job, "flaky", delay=delay),
                "delay": lambda: JobOutcome.delay_job(job, delay),
            }[kind]()
            self.both(
                lambda: self.store.finish_jobs([outcome]),
                lambda: [self.model.finish(kind, job_id, token, delay)],
                "finish_jobs",
            )

        @precondition(lambda self: self.model.in_state(JobState.ACTIVE))
        @rule(pick=st.integers(0, 1000), stale=st.booleans(), duration=st.sampled_from(DURATIONS))
        def extend(self, pick: int, stale: bool, duration: float) -> None:
            job_id = self._pick((JobState.ACTIVE,), pick)
            assert job_id is not None
            token = self._token(job_id, stale)
            statuses = self.call(lambda: self.store.extend_locks(QUEUE, {job_id: token}, duration))
            held = self.model.extend(job_id, token, duration)
            expect_eq(statuses[job_id] is not LockStatus.LOST, held, "extend_locks")
            cancelled = self.model.jobs[job_id].cancelled
            if held:
                expect_eq(statuses[job_id] is LockStatus.CANCEL_REQUESTED, cancelled,
                          "extend_locks reports cancellation")  # fmt: skip

        @precondition(lambda self: self.model.in_state(JobState.ACTIVE))
        @rule(pick=st.integers(0, 1000), stale=st.booleans())
        def release(self, pick: int, stale: bool) -> None:
            job_id = self._pick((JobState.ACTIVE,), pick)
            assert job_id is not None
            token = self._token(job_id, stale)
            self.both(lambda: self.store.release_lock(QUEUE, job_id, token),
                      lambda: self.model.release(job_id, token), "release_lock")  # fmt: skip

        @rule(seconds=st.sampled_from(DURATIONS))
        def advance(self, seconds: float) -> None:
            self.call(lambda: self.fixture.advance(seconds))
            self.model.now += seconds

        @rule(max_stalled=st.integers(0, 2))
        def sweep(self, max_stalled: int) -> None:
            recovered = self.call(lambda: self.store.recover_stalled_jobs(QUEUE, max_stalled))
            expected = self.model.recover_stalled(max_stalled)
            expect_eq([(j.id, j.state) for j in recovered], expected, "recover_stalled_jobs")

        @precondition(lambda self: self.model.in_state(JobState.ACTIVE))
        @rule(max_stalled=st.integers(0, 2))
        def crash(self, max_stalled: int) -> None:
            """Every worker dies: time passes every lock, and a sweeper takes the jobs back."""
            self.advance(31.0)
            self.sweep(max_stalled)

        @rule()
        def promote(self) -> None:
            self.both(lambda: self.store.promote_delayed_jobs(QUEUE), self.model.promote_due,
                      "promote_delayed_jobs")  # fmt: skip

        @rule(name=st.sampled_from((ALL_JOB_NAMES, *NAMES)), pause=st.booleans())
        def pause_or_resume(self, name: str, pause: bool) -> None:
            if pause:
                self.call(lambda: self.store.pause_job_name(QUEUE, name))
                self.model.paused.add(name)
            else:
                self.call(lambda: self.store.resume_job_name(QUEUE, name))
                self.model.paused.discard(name)

        @precondition(lambda self: self.model.jobs)
        @rule(pick=st.integers(0, 1000))
        def cancel(self, pick: int) -> None:
            job_id = self._pick(tuple(JobState), pick)
            assert job_id is not None

            async def store_cancel() -> JobState | None:
                job = await self.store.cancel_job(QUEUE, job_id)
                return None if job is None else job.state

            self.both(store_cancel, lambda: self.model.cancel(job_id), "cancel_job")

        @precondition(lambda self: self.model.jobs)
        @rule(pick=st.integers(0, 1000))
        def remove(self, pick: int) -> None:
            job_id = self._pick(tuple(JobState), pick)
            assert job_id is not None
            self.both(lambda: self.store.remove_job(QUEUE, job_id),
                      lambda: self.model.remove(job_id), "remove_job")  # fmt: skip

        # -- invariants

        @invariant()
        def agree(self) -> None:
            async def read() -> tuple[Any, ...]:
                counts = await self.store.get_job_counts(QUEUE)
                waiting = await self.store.list_jobs(QUEUE, JobState.WAITING, 0, -1)
                delayed = await self.store.list_jobs(QUEUE, JobState.DELAYED, 0, -1)
                jobs = {j: await self.store.get_job(QUEUE, j) for j in self.model.jobs}
                return counts, waiting, delayed, jobs

            counts, waiting, delayed, jobs = self.call(read)
            expect_eq(counts, self.model.counts(), "job counts")
            expect_eq([j.id for j in waiting], self.model.waiting_order(), "waiting order")
            expect_eq([j.id for j in delayed], self.model.delayed_order(), "delayed order")
            for job_id, job in jobs.items():
                expect(job is not None, f"job {job_id} exists")
                actual = {
                    "state": job.state,
                    "attempts_made": job.attempts_made,
                    "stalled_count": job.stalled_count,
                    "cancelled": job.cancelled_at is not None,
                    "locked": job.lock_token is not None,
                }
                expect_eq(actual, self.model.snapshot(job_id), f"job {job_id}")

    StoreStateMachine.__name__ = StoreStateMachine.__qualname__ = f"StoreStateMachine_{backend}"
    return StoreStateMachine
