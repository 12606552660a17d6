"""Flows and repeating jobs through the public API, on every store and both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from conveyor import (
    FlowJob,
    FlowProducer,
    Job,
    JobFailedError,
    JobState,
    Queue,
    Repeat,
    open_worker,
)

from .conftest import FAST, START, StoreFactoryT

pytestmark = pytest.mark.anyio


async def build(job: Job) -> Any:
    if job.name == "fail":
        raise RuntimeError("part broke")
    if job.name == "assemble":
        values = await job.get_children_values()
        return sorted(str(v) for v in values.values())
    return job.data


async def test_flow_parent_runs_after_children(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        flows = FlowProducer(store=fx.store)
        result = await flows.add(
            FlowJob("assemble", "cars", "car", children=[
                FlowJob("part", "parts", "wheels"),
                FlowJob("assemble", "parts", "engine", children=[
                    FlowJob("part", "parts", "pistons"), FlowJob("part", "parts", "valves"),
                ]),
            ])
        )  # fmt: skip
        assert result.job.state is JobState.WAITING_CHILDREN
        assert len(list(result.walk())) == 5
        async with (
            open_worker("parts", build, store=fx.store, concurrency=3, **FAST),
            open_worker("cars", build, store=fx.store, **FAST),
        ):
            value = await result.job.wait_until_finished(timeout=10)
        assert value == ["['pistons', 'valves']", "wheels"]
        engine = result.children[1].job
        assert (await engine.get_parent()) is not None
        assert len(await result.job.get_children()) == 2


async def test_flow_child_failure_fails_the_parent(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        result = await FlowProducer(store=fx.store).add(
            FlowJob(
                "assemble", "cars", children=[FlowJob("fail", "parts"), FlowJob("part", "parts")]
            )
        )
        async with open_worker("parts", build, store=fx.store, **FAST):
            with pytest.raises(JobFailedError, match="part broke"):
                await result.job.wait_until_finished(timeout=10)


async def test_flow_ignored_failure_lets_the_parent_run(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        result = await FlowProducer(store=fx.store).add(
            FlowJob("assemble", "cars", children=[
                FlowJob("fail", "parts", opts={"fail_parent_on_child_failure": "ignore"}),
                FlowJob("part", "parts", "ok"),
            ])
        )  # fmt: skip
        async with (
            open_worker("parts", build, store=fx.store, **FAST),
            open_worker("cars", build, store=fx.store, **FAST),
        ):
            assert await result.job.wait_until_finished(timeout=10) == ["ok"]


async def test_schedule_and_now(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        later = await queue.schedule("1 minute", "later", 1)
        soon = await queue.now("soon", 2)
        assert (later.state, soon.state) == (JobState.DELAYED, JobState.WAITING)
        assert later.delay_until == datetime.fromtimestamp(START + 60, UTC)


async def test_every_runs_once_per_interval_with_many_producers_and_workers(
    store_factory: StoreFactoryT,
) -> None:
    async with store_factory() as fx:
        producers = [Queue("q", store=fx.store) for _ in range(3)]
        firsts = [await p.every(10, "tick", {"n": 1}) for p in producers]
        assert len({job.id for job in firsts}) == 1, "one schedule, however many producers"
        runs: list[str] = []
        progressed = anyio.Event()

        async def tick(job: Job) -> None:
            nonlocal progressed
            runs.append(job.id)
            progressed.set()

        async with (
            open_worker("q", tick, store=fx.store, concurrency=2, **FAST),
            open_worker("q", tick, store=fx.store, concurrency=2, **FAST),
        ):
            for expected in range(1, 6):
                with anyio.fail_after(10):
                    while len(runs) < expected:
                        await progressed.wait()
                        progressed = anyio.Event()
                await fx.advance(10)
            with anyio.fail_after(10):
                while len(runs) < 6:
                    await progressed.wait()
                    progressed = anyio.Event()
        assert len(runs) == len(set(runs)) == 6
        assert await producers[0].count(JobState.DELAYED) == 1, "exactly one next run pending"


async def test_repeat_limit_and_cron_in_a_time_zone(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        # START is 2027-01-15 08:00 UTC, 09:00 in Paris: the next 09:30 there is 08:30 UTC.
        morning = await queue.cron("30 9 * * *", "report", tz="Europe/Paris")
        assert morning.delay_until == datetime(2027, 1, 15, 8, 30, tzinfo=UTC)
        limited = await queue.add("twice", repeat=Repeat(every=5, limit=2))
        assert limited.repeat_run is not None
        assert limited.repeat_run.count == 1
        runs = [anyio.Event(), anyio.Event()]
        names: list[str] = []

        async def work(job: Job) -> None:
            names.append(job.name)
            runs[names.count("twice") - 1].set()

        async with open_worker("q", work, store=fx.store, **FAST):
            with anyio.fail_after(10):
                await runs[0].wait()
            await fx.advance(5)
            with anyio.fail_after(10):
                await runs[1].wait()
            await fx.advance(5)
        assert names.count("twice") == 2
        pending = [j.name for j in await queue.get_jobs("delayed")]
        assert pending == ["report"], "no third run of a limit=2 schedule"
