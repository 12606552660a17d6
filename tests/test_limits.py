"""Worker-level limits and options through the public API, on every store and both backends."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

import conveyor
from conveyor import GroupLimits, Job, JobState, Limiter, Queue, open_worker

from .conftest import FAST, StoreFactoryT

pytestmark = pytest.mark.anyio


class Gate:
    """Counts jobs running at once (per key) and holds them until released."""

    def __init__(self) -> None:
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.started: list[str] = []
        self.release = anyio.Event()
        self.changed = anyio.Event()

    async def __call__(self, job: Job) -> None:
        key = job.group_id or "all"
        self.running[key] += 1
        self.running["all"] += key != "all"
        for name in (key, "all"):
            self.peak[name] = max(self.peak[name], self.running[name])
        self.started.append(job.name)
        self.changed.set()
        await self.release.wait()
        self.running[key] -= 1
        self.running["all"] -= key != "all"

    async def wait_started(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.started) < count:
                await self.changed.wait()
                self.changed = anyio.Event()


async def test_max_global_concurrency_across_workers(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        jobs = [await queue.add("n", i) for i in range(8)]
        gate = Gate()
        options = {"concurrency": 5, "max_global_concurrency": 3, **FAST}
        async with (
            open_worker("q", gate, store=fx.store, **options),
            open_worker("q", gate, store=fx.store, **options),
        ):
            await gate.wait_started(3)
            assert await queue.count("active") == 3
            gate.release.set()
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        assert gate.peak["all"] == 3


async def test_group_limits_cap_each_group(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        jobs = [await queue.add("n", i, group=conveyor.Group(f"g{i % 2}")) for i in range(6)]
        gate = Gate()
        async with open_worker("q", gate, store=fx.store, concurrency=6,
                               group=GroupLimits(concurrency=1), **FAST):  # fmt: skip
            await gate.wait_started(2)
            assert await queue.count("active") == 2
            gate.release.set()
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        assert (gate.peak["g0"], gate.peak["g1"]) == (1, 1)


async def test_rate_limiter_spaces_starts(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        jobs = [await queue.add("n", i) for i in range(3)]

        async def work(job: Job) -> None:
            return None

        async with open_worker("q", work, store=fx.store, concurrency=3,
                               limiter=Limiter(2, "1 minute"), **FAST):  # fmt: skip
            await jobs[0].wait_until_finished(timeout=10)
            await jobs[1].wait_until_finished(timeout=10)
            with pytest.raises(TimeoutError):
                await jobs[2].wait_until_finished(timeout=0.2)
            await fx.advance(60)
            await jobs[2].wait_until_finished(timeout=10)


async def test_job_name_filter_lifo_and_worker_pause(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        a = [await queue.add("a", i) for i in range(3)]
        b = await queue.add("b")
        order: list[int] = []

        async def work(job: Job) -> None:
            order.append(job.data)

        async with open_worker("q", work, store=fx.store, job_name="a", lifo=True, **FAST) as w:
            for job in a:
                await job.wait_until_finished(timeout=10)
            w.pause()
            late = await queue.add("a", 9)
            with pytest.raises(TimeoutError):
                await late.wait_until_finished(timeout=0.2)
            w.resume()
            await late.wait_until_finished(timeout=10)
        assert order == [2, 1, 0, 9]
        assert (await b.refresh()).state is JobState.WAITING


async def test_group_full_and_remove_on_complete(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        await queue.add("n", group=conveyor.Group("g", max_size=1))
        with pytest.raises(conveyor.GroupFullError):
            await queue.add("n", group=conveyor.Group("g", max_size=1))
        gone = await queue.add("gone", remove_on_complete=True)

        async def work(job: Job) -> str:
            return "done"

        async with open_worker("q", work, store=fx.store, **FAST) as worker:
            completed = anyio.Event()
            worker.events.on("completed", lambda event: completed.set())
            with anyio.fail_after(10):
                while await queue.get_job(gone.id) is not None:
                    await completed.wait()
                    completed = anyio.Event()


def double_backoff(attempts_made: int, error: BaseException | None) -> float:
    return 7.0 * attempts_made


async def test_custom_backoff_function(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        job = await queue.add("n", attempts=2, backoff=conveyor.Backoff.custom(double_backoff))

        async def fail_once(job: Job) -> str:
            if job.attempts_made == 0:
                raise RuntimeError("first")
            return "second"

        async with open_worker("q", fail_once, store=fx.store, **FAST) as worker:
            retrying = anyio.Event()
            worker.events.on("retrying", lambda event: retrying.set())
            with anyio.fail_after(10):
                await retrying.wait()
            assert (await job.refresh()).state is JobState.DELAYED
            assert job.delay_until is not None
            assert job.processed_at is not None
            assert (job.delay_until - job.processed_at).total_seconds() == 7.0
            await fx.advance(7)
            assert await job.wait_until_finished(timeout=10) == "second"
