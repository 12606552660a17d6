"""Queue management, job options and the event bus through the public API, on every store and
both backends."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import (
    Deduplication,
    EventBus,
    FlowJob,
    FlowProducer,
    Job,
    JobFailedError,
    JobState,
    Queue,
    StoreEvent,
    open_worker,
)

from .conftest import FAST, StoreFactoryT

pytestmark = pytest.mark.anyio


async def ok_or_fail(job: Job) -> str:
    if job.name == "fail":
        raise RuntimeError("failed on purpose")
    return "ok"


async def run_all(fx: Any, jobs: list[Job]) -> None:
    async with open_worker("q", ok_or_fail, store=fx.store, **FAST):
        for job in jobs:
            with contextlib.suppress(JobFailedError):
                await job.wait_until_finished(timeout=10)


async def test_clean_retry_and_obliterate(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        jobs = [await queue.add(name) for name in ("ok", "fail", "fail")]
        await run_all(fx, jobs)
        assert await queue.count("failed") == 2
        assert await queue.retry_jobs() == 2
        assert await queue.count(JobState.WAITING) == 2
        await run_all(fx, jobs[1:])
        await fx.advance(3600)
        assert await queue.clean("completed", "30 minutes") == 1
        assert await queue.clean("failed", 0, limit=1) == 1
        await queue.pause("fail")
        assert await queue.get_paused_job_names() == ["fail"]
        await queue.obliterate()
        assert await queue.get_job_counts() == dict.fromkeys(JobState, 0)
        assert await queue.get_paused_job_names() == []


async def test_job_id_dedup_ttl_and_remove_on_fail(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        await queue.add("ok", job_id="order-42")
        with pytest.raises(conveyor.DuplicateJobError):
            await queue.add("ok", job_id="order-42")
        throttled = await queue.add("ok", deduplication=Deduplication("k", ttl="1m"))
        await run_all(fx, [throttled])
        again = await queue.add("ok", deduplication=Deduplication("k", ttl="1m"))
        assert again.id == throttled.id, "held for the TTL even after completion"
        await fx.advance(60)
        fresh = await queue.add("ok", deduplication=Deduplication("k", ttl="1m"))
        assert fresh.id != throttled.id
        doomed = await queue.add("fail", remove_on_fail=True)
        async with open_worker("q", ok_or_fail, store=fx.store, **FAST) as worker:
            failed = anyio.Event()
            worker.events.on("failed", lambda event: failed.set())
            with anyio.fail_after(10):
                await failed.wait()
        assert await queue.get_job(doomed.id) is None


async def test_contradicting_options_are_refused(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        with pytest.raises(conveyor.InvalidArgumentError) as info:
            await queue.every(5, "x", deduplication=Deduplication("k"))
        assert info.value.argument == "deduplication"
        with pytest.raises(conveyor.InvalidArgumentError) as info:
            await queue.add("x", repeat=conveyor.Repeat(every=5, limit=0))
        assert info.value.argument == "limit"
        assert sum((await queue.get_job_counts()).values()) == 0


async def test_flow_child_removed_on_failure(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        result = await FlowProducer(store=fx.store).add(
            FlowJob("ok", "q", children=[
                FlowJob("fail", "q", opts={"fail_parent_on_child_failure": "remove"}),
                FlowJob("ok", "q"),
            ])
        )  # fmt: skip
        await run_all(fx, [result.job])
        assert (await result.job.refresh()).state is JobState.COMPLETED
        assert len(await result.job.get_children()) == 1


async def test_worker_close_stops_claiming(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        first = await queue.add("ok")
        async with open_worker("q", ok_or_fail, store=fx.store, **FAST) as worker:
            await first.wait_until_finished(timeout=10)
            worker.close()
            later = await queue.add("ok")
            with pytest.raises(TimeoutError):
                await later.wait_until_finished(timeout=0.2)
        assert (await later.refresh()).state is JobState.WAITING


def test_event_bus_on_off_and_wildcard() -> None:
    seen: list[str] = []
    bus = EventBus()

    def named(event: StoreEvent) -> None:
        seen.append("named:" + event.type)

    def everything(event: StoreEvent) -> None:
        seen.append("all:" + event.type)

    bus.on("completed", named)
    bus.on("*", everything)
    bus.emit(StoreEvent("completed", "q"))
    bus.emit(StoreEvent("failed", "q"))
    bus.off("completed", named)
    bus.emit(StoreEvent("completed", "q"))
    bus.off("*")
    bus.emit(StoreEvent("completed", "q"))
    assert seen == ["named:completed", "all:completed", "all:failed", "all:completed"]
    with pytest.raises(conveyor.InvalidArgumentError):
        bus.on("", named)


def test_new_job_ids_are_unique_and_grow_with_time() -> None:
    from conveyor._queue import new_job_id

    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    stamps = [i[:12] for i in ids]
    assert stamps == sorted(stamps)  # the millisecond prefix never goes back


async def test_bulk_adds_share_nothing_with_the_callers_data(store_factory: StoreFactoryT) -> None:
    """Queue and FlowProducer hand their new records over to the store (no copy is made of
    them); the data a caller passed in is still copied, so changing it changes nothing."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        data: dict[str, list[Any]] = {"list": [1]}
        [added] = await queue.add_bulk([("work", data, {})])
        flow = await FlowProducer(store=fx.store).add(
            FlowJob("parent", "q", data, children=[FlowJob("child", "q", data)])
        )
        data["list"].append("caller")
        for job in (added, flow.job, flow.children[0].job):
            assert job.data == {"list": [1]}
            stored = await queue.get_job(job.id)
            assert stored is not None
            assert stored.data == {"list": [1]}
            assert stored.created_at == job.created_at is not None


async def test_a_bulk_add_refused_late_in_the_call_stores_none_of_it(
    store_factory: StoreFactoryT,
) -> None:
    """A store may check a large bulk add chunk by chunk while it sends the chunks before
    (PgStore does): a job refused far into the call still leaves nothing of the call, raises
    the same typed error, and the store goes on."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        await queue.add("before")
        good: list[tuple[str, Any, Any]] = [("n", {"i": i}, {}) for i in range(700)]
        bad_data: list[tuple[str, Any, Any]] = [*good, ("n", {"s": {1, 2}}, {})]
        with pytest.raises(conveyor.SerializationError, match=r"data\.s"):
            await queue.add_bulk(bad_data)
        twice: list[tuple[str, Any, Any]] = [
            *good[:400],
            ("n", 1, {"job_id": "x"}),
            *good[400:],
            ("n", 2, {"job_id": "x"}),
        ]
        with pytest.raises(conveyor.InvalidArgumentError, match=r"jobs\[701\]\.id.*twice"):
            await queue.add_bulk(twice)
        assert await queue.get_job_counts() == {**dict.fromkeys(JobState, 0), JobState.WAITING: 1}
        added = await queue.add_bulk(good)
        assert [job.data for job in added] == [{"i": i} for i in range(700)]
        assert await queue.count("waiting") == 701


async def test_a_bulk_add_with_an_id_too_long_for_an_event_stores_all_of_it(
    store_factory: StoreFactoryT,
) -> None:
    """An id whose event would not fit in one notification (PgStore sends a call with one
    the general way, and finds it only in the middle of the call) is added with the rest."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        long_id = "\N{GRINNING FACE}" * 1024  # 12 characters each in JSON's ASCII
        items: list[tuple[str, Any, Any]] = [("n", {"i": i}, {}) for i in range(600)]
        items.insert(500, ("n", "long", {"job_id": long_id}))
        added = await queue.add_bulk(items)
        assert added[500].id == long_id
        assert await queue.count("waiting") == 601
        stored = await queue.get_job(long_id)
        assert stored is not None
        assert stored.data == "long"
        assert stored.created_at == added[0].created_at


def test_only_handed_over_jobs_are_taken_over() -> None:
    """check_jobs copies the records of a plain sequence, and takes over those handed over:
    the same objects, their data checked into a copy and their delay_until in UTC."""
    from datetime import datetime, timedelta, timezone

    from conveyor.store import JobData
    from conveyor.store._validate import HandedOver, check_jobs

    data = {"t": (1, 2)}
    paris = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))

    def fresh() -> JobData:
        return JobData(id="a", queue_name="q", name="n", data=data, delay_until=paris)

    plain = fresh()
    [copy] = check_jobs([plain])
    assert copy is not plain
    assert plain.data is data
    assert plain.delay_until is paris
    handed = fresh()
    [taken] = check_jobs(HandedOver([handed]))
    assert taken is handed
    for job in (copy, taken):
        assert job.data == {"t": [1, 2]}
        assert job.data is not data
        assert job.delay_until == paris
        assert job.delay_until.utcoffset() == timedelta(0)
    with pytest.raises(conveyor.InvalidArgumentError, match=r"jobs\[1\]\.id"):
        check_jobs(HandedOver([fresh(), fresh()]))
