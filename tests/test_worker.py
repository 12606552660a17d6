"""The core runtime through the public API: Queue, Job and open_worker, on every store and both
backends. Waiting is on events with generous ``fail_after`` bounds, never on sleeps."""

from __future__ import annotations

import contextlib
import gc
import threading
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

import conveyor
import conveyor.testing
import conveyor_stores.memory
from conveyor import (
    ArgumentTypeError,
    Backoff,
    InvalidArgumentError,
    Job,
    JobCancelledError,
    JobFailedError,
    JobState,
    Queue,
    StoreEvent,
    open_worker,
)

from .conftest import FAST, START, StoreFactoryT

pytestmark = pytest.mark.anyio


async def wait_for_state(job: Job, state: JobState, attempts_made: int | None = None) -> None:
    """Poll the job's record until it reaches ``state`` (after ``attempts_made`` attempts)."""
    with anyio.fail_after(10):
        while True:
            await job.refresh()
            if job.state is state and attempts_made in (None, job.attempts_made):
                return
            await anyio.sleep(0.01)


async def test_add_process_and_wait(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("emails", store=fx.store)

        async def send(job: Job) -> str:
            await job.update_progress(50)
            await job.log("talking to SMTP")
            return f"sent to {job.data['to']}"

        job = await queue.add("send", {"to": "a@example.com"}, attempts=3)
        assert job.state is JobState.WAITING
        async with open_worker("emails", send, store=fx.store, **FAST):
            assert await job.wait_until_finished(timeout=10) == "sent to a@example.com"
        await job.refresh()
        assert (job.state, job.progress, job.logs) == (JobState.COMPLETED, 50, ["talking to SMTP"])
        assert job.attempts_made == 1


async def test_retries_with_backoff_then_success(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        calls: list[int] = []

        async def flaky(job: Job) -> str:
            calls.append(job.attempts_made)
            if len(calls) < 3:
                raise RuntimeError(f"failure {len(calls)}")
            return "ok"

        job = await queue.add("flaky", attempts=3, backoff=Backoff.fixed(5))
        async with open_worker("q", flaky, store=fx.store, **FAST) as worker:
            retrying = anyio.Event()
            worker.events.on("retrying", lambda event: retrying.set())
            for attempt in (1, 2):
                await wait_for_state(job, JobState.DELAYED, attempts_made=attempt)
                assert job.failed_reason is not None
                assert job.failed_reason.startswith("RuntimeError: failure")
                await fx.advance(5)
            assert await job.wait_until_finished(timeout=10) == "ok"
        assert calls == [0, 1, 2]
        assert retrying.is_set()
        assert [r.outcome for r in (await job.refresh()).attempt_logs] == [
            "retry",
            "retry",
            "completed",
        ]


async def test_final_failure_and_discard(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        async def process(job: Job) -> None:
            if job.name == "discard":
                await job.discard()
            raise ValueError("bad input")

        failing = await queue.add("fail", attempts=1)
        discarded = await queue.add("discard", attempts=5)
        async with open_worker("q", process, store=fx.store, **FAST):
            with pytest.raises(JobFailedError, match="ValueError: bad input"):
                await failing.wait_until_finished(timeout=10)
            with pytest.raises(JobFailedError):
                await discarded.wait_until_finished(timeout=10)
        assert (await discarded.refresh()).attempts_made == 1
        assert "ValueError: bad input" in (await failing.refresh()).stacktrace[0]


async def test_timeout_fails_the_attempt(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        async def hang(job: Job) -> None:
            await anyio.sleep_forever()

        job = await queue.add("hang", timeout=0.05)
        async with open_worker("q", hang, store=fx.store, **FAST):
            with pytest.raises(JobFailedError, match="timed out"):
                await job.wait_until_finished(timeout=10)


async def test_sync_processor_runs_in_a_thread(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        main_thread = threading.get_ident()

        def blocking(job: Job) -> dict[str, Any]:
            return {"thread_differs": threading.get_ident() != main_thread, "n": job.data}

        job = await queue.add("sync", 7)
        async with open_worker("q", blocking, store=fx.store, **FAST):
            assert await job.wait_until_finished(timeout=10) == {"thread_differs": True, "n": 7}


async def test_concurrency_limits_running_jobs(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        release = anyio.Event()
        running = 0
        peak = 0
        three_running = anyio.Event()

        async def slow(job: Job) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 3:
                three_running.set()
            await release.wait()
            running -= 1

        jobs = [await queue.add("slow", i) for i in range(6)]
        async with open_worker("q", slow, store=fx.store, concurrency=3, **FAST):
            with anyio.fail_after(10):
                await three_running.wait()
            assert await queue.count(JobState.WAITING) == 3
            release.set()
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        assert peak == 3


async def test_no_task_outlives_the_worker(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        started = anyio.Event()
        cleaned_up = False

        async def forever(job: Job) -> None:
            nonlocal cleaned_up
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cleaned_up = True

        job = await queue.add("forever")
        before = len(anyio.get_running_tasks())
        async with open_worker("q", forever, store=fx.store, shutdown_timeout=0.05, **FAST):
            with anyio.fail_after(10):
                await started.wait()
        assert len(anyio.get_running_tasks()) == before
        assert cleaned_up
        released = await job.refresh()
        assert (released.state, released.attempts_made) == (JobState.WAITING, 0)


async def test_a_result_returned_at_shutdown_is_recorded(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        returned = anyio.Event()

        async def quick(job: Job) -> str:
            returned.set()
            return "kept"

        job = await queue.add("quick")
        async with open_worker("q", quick, store=fx.store, shutdown_timeout=0, **FAST):
            with anyio.fail_after(10):
                await returned.wait()
        assert (await job.refresh()).returnvalue == "kept"


async def test_graceful_shutdown_waits_for_running_jobs(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        started = anyio.Event()
        finish = anyio.Event()

        async def slow(job: Job) -> str:
            started.set()
            await finish.wait()
            return "finished"

        job = await queue.add("slow")
        async with anyio.create_task_group() as tg, open_worker("q", slow, store=fx.store, **FAST):
            with anyio.fail_after(10):
                await started.wait()
            tg.start_soon(_set_soon, finish)  # runs while the worker is shutting down
        assert (await job.refresh()).returnvalue == "finished"


class _Forever:
    """A processor that says it started, then runs until it is cancelled."""

    def __init__(self) -> None:
        self.started = anyio.Event()

    async def __call__(self, job: Job) -> None:
        self.started.set()
        await anyio.sleep_forever()


async def _set_soon(event: anyio.Event) -> None:
    await anyio.lowlevel.checkpoint()
    event.set()


async def test_lost_lock_cannot_overwrite_the_new_owner(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        started = anyio.Event()
        proceed = anyio.Event()

        async def slow(job: Job) -> str:
            started.set()
            await proceed.wait()
            return "stale result"

        job = await queue.add("slow")
        errors: list[StoreEvent] = []
        reported = anyio.Event()

        def on_error(event: StoreEvent) -> None:
            errors.append(event)
            reported.set()

        async with open_worker(
            "q", slow, store=fx.store, lock_duration=30, stalled_interval=3600, poll_interval=3600
        ) as worker:
            worker.events.on("error", on_error)
            with anyio.fail_after(10):
                await started.wait()
            await fx.advance(31)  # the lock expires; another worker takes the job over
            await fx.store.recover_stalled_jobs("q", 5)
            [taken] = await fx.store.fetch_next_jobs("q", "other-worker", 30, 1)
            assert taken.id == job.id
            await fx.store.finish_jobs([conveyor.JobOutcome.completed(taken, "fresh result")])
            proceed.set()
            with anyio.fail_after(10):
                await reported.wait()
        assert (await job.refresh()).returnvalue == "fresh result"
        assert "lock lost" in errors[0].data["message"]


async def test_cancel_a_running_job(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        forever = _Forever()
        started = forever.started

        job = await queue.add("forever", attempts=3)
        async with open_worker("q", forever, store=fx.store, lock_duration=0.2, **FAST):
            with anyio.fail_after(10):
                await started.wait()
            await job.cancel()
            with pytest.raises(JobCancelledError):
                await job.wait_until_finished(timeout=10)
        assert (await job.refresh()).attempts_made == 1


async def test_a_slot_goes_on_after_its_job_is_cancelled(store_factory: StoreFactoryT) -> None:
    """Jobs run in their slot task's cancel scope; cancelling one job ends that scope, and the
    slot's next jobs run in a new one."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        started = anyio.Event()

        async def work(job: Job) -> str:
            if job.name == "forever":
                started.set()
                await anyio.sleep_forever()
            if job.name == "stubborn":  # swallows the cancellation: the scope stays cancelled
                started.set()
                with contextlib.suppress(anyio.get_cancelled_exc_class()):
                    await anyio.sleep_forever()
                return "swallowed"
            await anyio.lowlevel.checkpoint()  # would raise in a cancelled scope
            return f"done {job.data}"

        for name in ("forever", "stubborn"):
            started = anyio.Event()
            stuck = await queue.add(name)
            async with open_worker("q", work, store=fx.store, concurrency=1, **FAST):
                with anyio.fail_after(10):
                    await started.wait()
                later = [await queue.add("quick", n) for n in range(3)]
                await stuck.cancel()
                if name == "forever":
                    with pytest.raises(JobCancelledError):
                        await stuck.wait_until_finished(timeout=10)
                for n, job in enumerate(later):
                    assert await job.wait_until_finished(timeout=10) == f"done {n}"


async def test_a_worker_cancelled_from_outside_gives_its_jobs_back(
    store_factory: StoreFactoryT,
) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        forever = _Forever()
        started = forever.started

        job = await queue.add("forever")
        with anyio.CancelScope() as outer:
            async with open_worker("q", forever, store=fx.store, **FAST):
                with anyio.fail_after(10):
                    await started.wait()
                outer.cancel()
                await anyio.sleep_forever()
        released = await job.refresh()
        assert (released.state, released.attempts_made) == (JobState.WAITING, 0)


async def test_cancel_a_waiting_job(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        job = await Queue("q", store=fx.store).add("later", delay=60)
        await job.cancel()
        with pytest.raises(JobCancelledError):
            await job.wait_until_finished(timeout=10)


async def test_a_raising_callback_does_not_stop_the_worker(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        def broken(event: StoreEvent) -> None:
            raise RuntimeError("callback bug")

        async def work(job: Job) -> int:
            return int(job.data)

        errors: list[StoreEvent] = []
        async with open_worker("q", work, store=fx.store, **FAST) as worker:
            worker.events.on("completed", broken)
            worker.events.on("error", errors.append)
            first = await queue.add("n", 1)
            assert await first.wait_until_finished(timeout=10) == 1
            second = await queue.add("n", 2)
            assert await second.wait_until_finished(timeout=10) == 2
        assert errors
        assert "callback bug" in errors[0].data["message"]


async def test_pause_and_resume(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        await queue.pause()
        assert await queue.is_paused()
        job = await queue.add("x", 1)

        async def work(job: Job) -> int:
            return int(job.data)

        async with open_worker("q", work, store=fx.store, **FAST):
            with pytest.raises(TimeoutError):
                await job.wait_until_finished(timeout=0.2)
            await queue.resume()
            assert await job.wait_until_finished(timeout=10) == 1


async def test_delayed_job_runs_when_due(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        job = await queue.add("later", "v", delay="10s")
        assert job.state is JobState.DELAYED

        async def work(job: Job) -> Any:
            return job.data

        async with open_worker("q", work, store=fx.store, **FAST):
            await fx.advance(10)
            assert await job.wait_until_finished(timeout=10) == "v"


async def test_stalled_job_is_recovered_and_run(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        job = await queue.add("orphan", "x")
        [claimed] = await fx.store.fetch_next_jobs("q", "dead-worker", 1, 1)
        await fx.advance(2)
        stalled = anyio.Event()

        async def work(job: Job) -> Any:
            return job.data

        async with open_worker("q", work, store=fx.store, **FAST) as worker:
            worker.events.on("stalled", lambda event: stalled.set())
            assert await job.wait_until_finished(timeout=10) == "x"
        assert stalled.is_set()
        assert claimed.id == job.id


async def test_queue_events_carry_store_events(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        async with queue.events.subscribe("waiting", "completed") as events:
            job = await queue.add("x", 1)

            async def work(job: Job) -> int:
                return 2

            async with open_worker("q", work, store=fx.store, **FAST):
                with anyio.fail_after(10):
                    seen = [(await anext(events)).type, (await anext(events)).type]
        assert seen == ["waiting", "completed"]
        assert job.id


async def _noop(job: Job) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"concurrency": 0}, InvalidArgumentError, "concurrency"),
        ({"concurrency": 1.5}, ArgumentTypeError, "concurrency"),
        ({"lock_duration": -1}, InvalidArgumentError, "lock_duration"),
        ({"max_stalled_count": -1}, InvalidArgumentError, "max_stalled_count"),
        ({"max_global_concurrency": 0}, InvalidArgumentError, "max_global_concurrency"),
        ({"limiter": (5, 1)}, ArgumentTypeError, "limiter"),
        ({"shutdown_timeout": "whenever"}, InvalidArgumentError, "shutdown_timeout"),
        ({"job_name": ""}, InvalidArgumentError, "job_name"),
    ],
)
async def test_bad_worker_arguments(
    store_factory: StoreFactoryT, kwargs: dict[str, Any], error: type[Exception], argument: str
) -> None:
    async with store_factory() as fx:
        with pytest.raises(error) as info:
            async with open_worker("q", _noop, store=fx.store, **kwargs):
                pass
        assert getattr(info.value, "argument", None) == argument


async def test_bad_processor_and_queue_input(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        with pytest.raises(ArgumentTypeError) as info:
            async with open_worker("q", "not callable", store=fx.store):  # type: ignore[arg-type]
                pass
        assert info.value.argument == "processor"
        queue = Queue("q", store=fx.store)
        with pytest.raises(ArgumentTypeError) as info:
            await queue.add("x", colour="red")  # type: ignore[call-arg]
        assert info.value.argument == "colour"
        with pytest.raises(InvalidArgumentError) as bad:
            await queue.add("x", attempts=0)
        assert bad.value.argument == "attempts"
        with pytest.raises(InvalidArgumentError) as bad:
            await queue.add("x", {"when": {1, 2}})
        assert bad.value.argument == "data.when"
        with pytest.raises(InvalidArgumentError) as bad:
            await queue.cron("every tuesday", "x")
        assert bad.value.argument == "repeat.cron"
        with pytest.raises(InvalidArgumentError) as bad:
            await queue.cron("0 9 * * *", "x", tz="Mars/Olympus")
        assert bad.value.argument == "repeat.tz"
        with pytest.raises(InvalidArgumentError) as bad:
            await queue.every(0, "x")
        assert bad.value.argument == "repeat.every"
        assert await queue.get_job_counts() == dict.fromkeys(JobState, 0)


async def test_queue_management(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        jobs = await queue.add_bulk(
            [("a", 1, {}), ("b", 2, {"priority": -1}), ("c", 3, {"delay": 5})]
        )
        assert [j.name for j in await queue.get_jobs("waiting")] == ["b", "a"]
        assert await queue.promote_jobs() == 1
        dup = await queue.add("d", 4, deduplication=conveyor.Deduplication("k"))
        again = await queue.add("d", 5, deduplication=conveyor.Deduplication("k"))
        assert again.id == dup.id
        content = await queue.add("e", {"x": 1}, deduplication=conveyor.Deduplication())
        same = await queue.add("e", {"x": 1}, deduplication=conveyor.Deduplication())
        assert same.id == content.id
        await jobs[0].change_priority(-5)
        assert (await queue.get_jobs("waiting", 0, 0))[0].id == jobs[0].id
        assert await queue.drain() == 5
        assert await queue.count("waiting") == 0


async def test_processor_moves_its_job_to_delayed_or_failed(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        runs: list[str] = []

        async def process(job: Job) -> str:
            runs.append(job.name)
            if job.name == "later" and len(runs) == 1:
                await job.move_to_delayed("1 minute")
                return "ignored"
            if job.name == "give-up":
                await job.move_to_failed("not worth retrying")
            return "done"

        later = await queue.add("later", attempts=1)
        async with open_worker("q", process, store=fx.store, **FAST):
            await wait_for_state(later, JobState.DELAYED)
            assert later.attempts_made == 0
            await fx.advance(60)
            assert await later.wait_until_finished(timeout=10) == "done"
            give_up = await queue.add("give-up", attempts=5)
            with pytest.raises(JobFailedError, match="not worth retrying"):
                await give_up.wait_until_finished(timeout=10)
        with pytest.raises(conveyor.InvalidJobStateError):
            await later.move_to_delayed(5)


async def test_observe_follows_a_job_to_the_end(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        job = await queue.add("watched")

        async def work(job: Job) -> str:
            await job.update_progress(50)
            return "ok"

        seen: list[tuple[JobState, Any]] = []
        async with open_worker("q", work, store=fx.store, **FAST):
            with anyio.fail_after(10):
                async for record in job.observe():
                    seen.append((record.state, record.progress))
        assert seen[0] == (JobState.WAITING, 0)
        assert seen[-1] == (JobState.COMPLETED, 50)


async def test_job_methods_for_producers(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        job = await queue.add("x", {"v": 1}, delay=60)
        await job.update_data({"v": 2})
        await job.log("one")
        await job.clear_logs()
        assert (job.data, job.logs) == ({"v": 2}, [])
        await job.change_delay(120)
        assert job.delay_until == datetime.fromtimestamp(START + 120, UTC)
        await job.promote()
        assert job.state is JobState.WAITING
        with pytest.raises(conveyor.InvalidJobStateError):
            await job.promote()
        [claimed] = await fx.store.fetch_next_jobs("q", "w", 30, 1)
        await fx.store.finish_jobs([conveyor.JobOutcome.failed(claimed, "x")])
        await job.retry()
        assert (job.state, job.attempts_made, job.failed_reason) == (JobState.WAITING, 0, None)
        await job.remove()
        with pytest.raises(conveyor.JobNotFoundError):
            await job.refresh()
        assert await queue.get_job(job.id) is None


async def test_get_dependencies(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        result = await conveyor.FlowProducer(store=fx.store).add(
            conveyor.FlowJob("parent", "q", children=[
                conveyor.FlowJob("ok", "kids", 1),
                conveyor.FlowJob("bad", "kids", opts={"fail_parent_on_child_failure": "ignore"}),
                conveyor.FlowJob("later", "kids", opts={"delay": 60}),
            ])
        )  # fmt: skip
        ok, bad, later = (child.job for child in result.children)

        async def work(job: Job) -> Any:
            if job.name == "bad":
                raise RuntimeError("no")
            return job.data

        async with open_worker("kids", work, store=fx.store, **FAST):
            await ok.wait_until_finished(timeout=10)
            with pytest.raises(JobFailedError):
                await bad.wait_until_finished(timeout=10)
        deps = await result.job.get_dependencies()
        assert deps.processed == {f"kids:{ok.id}": 1}
        assert deps.failed == [f"kids:{bad.id}"]
        assert deps.pending == [f"kids:{later.id}"]


async def test_batches_with_per_job_results(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        sizes: list[int] = []

        async def process(jobs: list[Job]) -> list[conveyor.BatchResult]:
            sizes.append(len(jobs))
            return [
                conveyor.BatchResult.failed(ValueError("odd"))
                if job.data % 2 and job.attempts_made == 0
                else conveyor.BatchResult.ok(job.data * 10)
                for job in jobs
            ]

        jobs = [await queue.add("n", i, attempts=2) for i in range(7)]
        async with open_worker("q", process, store=fx.store, batch=conveyor.Batch(3), **FAST):
            values = [await job.wait_until_finished(timeout=10) for job in jobs]
        assert values == [i * 10 for i in range(7)]
        assert max(sizes) == 3
        assert sum(sizes) == 7 + 3, "the three odd jobs ran twice"
        retried = await jobs[1].refresh()
        assert [r.outcome for r in retried.attempt_logs] == ["retry", "completed"]


async def test_batch_waits_to_fill(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        sizes: list[int] = []

        async def process(jobs: list[Job]) -> None:
            sizes.append(len(jobs))

        first = await queue.add("n", 0)
        batch = conveyor.Batch(3, wait="30s")
        async with open_worker("q", process, store=fx.store, batch=batch, **FAST):
            rest = [await queue.add("n", i) for i in (1, 2)]
            for job in (first, *rest):
                assert await job.wait_until_finished(timeout=10) is None
        assert sizes == [3]


async def test_pausing_a_worker_hands_back_the_batch_it_is_filling(
    store_factory: StoreFactoryT,
) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        sizes: list[int] = []
        claimed = anyio.Semaphore(0)
        fx.store.subscribe("q", lambda e: claimed.release() if e.type == "active" else None)

        async def process(jobs: list[Job]) -> None:
            sizes.append(len(jobs))

        first = [await queue.add("n", i) for i in (0, 1)]
        batch = conveyor.Batch(3, wait="30s")
        async with open_worker("q", process, store=fx.store, batch=batch, **FAST) as worker:
            with anyio.fail_after(10):
                for _ in first:
                    await claimed.acquire()  # both claimed; the batch waits for a third
                worker.pause()
            for job in first:
                await wait_for_state(job, JobState.WAITING)
                assert (await job.refresh()).record.attempts_made == 0
            assert sizes == []
            worker.resume()
            last = await queue.add("n", 2)
            for job in (*first, last):
                assert await job.wait_until_finished(timeout=10) is None
        assert sizes == [3]


async def test_a_failing_batch_fails_every_job_in_it(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        async def broken(jobs: list[Job]) -> Any:
            if jobs[0].name == "wrong":
                return ["not", "results"]
            raise RuntimeError("batch exploded")

        jobs = [await queue.add("n", i) for i in range(2)]
        async with open_worker("q", broken, store=fx.store, batch=conveyor.Batch(5), **FAST):
            for job in jobs:
                with pytest.raises(JobFailedError, match="batch exploded"):
                    await job.wait_until_finished(timeout=10)
            wrong = await queue.add("wrong")
            with pytest.raises(JobFailedError, match="batch result"):
                await wrong.wait_until_finished(timeout=10)


async def test_queue_metrics_count_worker_outcomes(store_factory: StoreFactoryT) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        async def work(job: Job) -> None:
            if job.data == "bad":
                raise RuntimeError("no")

        jobs = [await queue.add("n", d) for d in ("ok", "ok", "bad")]
        async with open_worker("q", work, store=fx.store, **FAST):
            for job in jobs:
                with contextlib.suppress(JobFailedError):
                    await job.wait_until_finished(timeout=10)
        assert (await queue.get_metrics("completed")).total == 2
        failed = await queue.get_metrics(conveyor.MetricKind.FAILED)
        assert (failed.total, [b.count for b in failed.buckets]) == (1, [1])


async def test_metrics_retention() -> None:
    clock = conveyor.testing.ManualClock(START)
    async with conveyor_stores.memory.MemoryStore(clock=clock, metrics_retention="2m") as store:
        queue = Queue("q", store=store)
        for _ in range(4):
            job = await queue.add("n")
            [claimed] = await store.fetch_next_jobs("q", "w", 30, 1)
            await store.finish_jobs([conveyor.JobOutcome.completed(claimed)])
            clock.advance(60)
        metrics = await queue.get_metrics("completed")
        assert (metrics.total, len(metrics.buckets)) == (4, 3)
        assert job.id


async def test_cancel_reaches_the_worker_through_lock_renewal(store_factory: StoreFactoryT) -> None:
    """With no event reaching the worker (another process, a lost notification), the next
    lock renewal reports the cancellation and the job stops."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        forever = _Forever()
        started = forever.started

        job = await queue.add("forever")
        async with open_worker("q", forever, store=fx.store, lock_duration=0.2, **FAST) as worker:
            # deaf to events from here on
            fx.store.unsubscribe("q", conveyor._worker._StoreEvents(worker))
            with anyio.fail_after(10):
                await started.wait()
            await job.cancel()
            with pytest.raises(JobCancelledError):
                await job.wait_until_finished(timeout=10)


async def test_sync_processor_reports_progress_through_from_thread(
    store_factory: StoreFactoryT,
) -> None:
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)

        def work(job: Job) -> str:
            anyio.from_thread.run(job.update_progress, 70)
            return "done"

        job = await queue.add("sync")
        async with open_worker("q", work, store=fx.store, **FAST):
            assert await job.wait_until_finished(timeout=10) == "done"
        assert (await job.refresh()).progress == 70


class _Unreachable(conveyor_stores.memory.MemoryStore):
    """A MemoryStore whose claims and outcome writes fail the first few times, as a store
    whose server restarts would."""

    def __init__(self, fetch_failures: int, finish_failures: int) -> None:
        super().__init__()
        self.fetch_failures = fetch_failures
        self.finish_failures = finish_failures

    async def fetch_next_jobs(self, *args: Any, **kwargs: Any) -> list[conveyor.JobData]:
        if self.fetch_failures:
            self.fetch_failures -= 1
            raise conveyor.StoreError("connection lost (test)")
        return await super().fetch_next_jobs(*args, **kwargs)

    async def finish_jobs(self, outcomes: Any) -> list[bool]:
        if self.finish_failures:
            self.finish_failures -= 1
            raise conveyor.StoreError("connection lost (test)")
        return await super().finish_jobs(outcomes)


async def test_a_worker_rides_out_an_unreachable_store(anyio_backend: str) -> None:
    async with _Unreachable(fetch_failures=3, finish_failures=2) as store:
        queue = Queue("q", store=store)
        jobs = [await queue.add("work", {"n": n}) for n in range(5)]
        errors: list[StoreEvent] = []

        async def work(job: Job) -> int:
            return int(job.data["n"])

        async with open_worker("q", work, store=store, **FAST) as worker:
            worker.events.on("error", errors.append)
            for job in jobs:
                assert await job.wait_until_finished(timeout=30) == job.data["n"]
        assert (store.fetch_failures, store.finish_failures) == (0, 0)
        assert any("fetching jobs failed" in e.data["message"] for e in errors)
        for job in jobs:
            await job.refresh()
            assert (job.state, job.attempts_made) == (JobState.COMPLETED, 1)


async def test_leaving_the_block_does_not_wait_for_a_poll(store_factory: StoreFactoryT) -> None:
    """A job that finished just before the block is left ends the shutdown's wait at once, not
    at the next poll (a minute here): the shutdown hears that the job is gone."""
    async with store_factory() as fx:
        queue = Queue("q", store=fx.store)
        started = anyio.Event()
        release = anyio.Event()

        async def slow(job: Job) -> None:
            started.set()
            await release.wait()

        await queue.add("slow", None)
        with anyio.fail_after(10):
            async with open_worker("q", slow, store=fx.store, poll_interval=60):
                await started.wait()
                release.set()  # the job finishes while the shutdown waits for it


class _Silent(conveyor_stores.memory.MemoryStore):
    """A MemoryStore whose outcome writes never answer, as a server that stopped responding
    without closing the connection."""

    async def finish_jobs(self, outcomes: Any) -> list[bool]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_store_that_never_answers_cannot_hold_the_shutdown(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each outcome write gives up after a bound (shortened here): the job's lock then
    expires and another worker takes it; the worker reports the failure and shuts down."""
    monkeypatch.setattr(conveyor._worker, "_WRITE_TIMEOUT", 0.2)
    async with _Silent() as store:
        queue = Queue("q", store=store)
        errors: list[StoreEvent] = []
        gave_up = anyio.Event()

        def on_error(event: StoreEvent) -> None:
            errors.append(event)
            if "did not answer" in event.data["message"]:
                gave_up.set()

        async def work(job: Job) -> str:
            return "done"

        await queue.add("work")
        with anyio.fail_after(30):
            async with open_worker("q", work, store=store, lock_duration=1, **FAST) as worker:
                worker.events.on("error", on_error)
                await gave_up.wait()
        assert any("recording outcomes failed" in e.data["message"] for e in errors)


class _SlowWrites(conveyor_stores.memory.MemoryStore):
    """A MemoryStore whose outcome writes wait for ``release``; every claim checks that the
    worker holds at most ``bound`` locks with it."""

    def __init__(self, bound: int) -> None:
        super().__init__()
        self.bound = bound
        self.release = anyio.Event()
        self.claims = 0

    async def fetch_next_jobs(self, queue_name: str, worker_id: str, lock_duration: Any,
                              limit: int, opts: Any = None) -> list[conveyor.JobData]:  # fmt: skip
        held = await self.count_jobs(queue_name, JobState.ACTIVE)
        assert held + limit <= self.bound, f"{held} locks held, claiming {limit} more"
        self.claims += 1
        return await super().fetch_next_jobs(queue_name, worker_id, lock_duration, limit, opts)

    async def finish_jobs(self, outcomes: Any) -> list[bool]:
        await self.release.wait()
        return await super().finish_jobs(outcomes)


async def test_a_worker_holds_at_most_three_times_its_concurrency_in_locks(
    anyio_backend: str,
) -> None:
    """Finished jobs keep their locks until their outcomes are written; while writes lag, the
    worker stops claiming at three times its concurrency in locks, and goes on once they land."""
    async with _SlowWrites(bound=6) as store:
        queue = Queue("q", store=store)
        jobs = [await queue.add("quick", {"n": n}) for n in range(20)]
        active = 0
        full = anyio.Event()

        def on_active(event: StoreEvent) -> None:
            nonlocal active
            active += 1
            if active == 6:
                full.set()

        store.subscribe("q", lambda e: on_active(e) if e.type == "active" else None)

        async def quick(job: Job) -> None:
            return None

        async with open_worker("q", quick, store=store, concurrency=2, **FAST):
            with anyio.fail_after(10):
                await full.wait()
            store.release.set()
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        assert (await store.get_job_counts("q"))[JobState.COMPLETED] == 20


class _HeldClaims(conveyor_stores.memory.MemoryStore):
    """A MemoryStore whose first claim, once it has its jobs, waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.claiming = anyio.Event()
        self.release = anyio.Event()

    async def fetch_next_jobs(self, queue_name: str, worker_id: str, lock_duration: Any,
                              limit: int, opts: Any = None) -> list[conveyor.JobData]:  # fmt: skip
        claimed = await super().fetch_next_jobs(queue_name, worker_id, lock_duration, limit, opts)
        if not self.claiming.is_set():
            self.claiming.set()
            await self.release.wait()
        return claimed


@pytest.mark.parametrize("stop", ["pause", "close"])
async def test_a_claim_in_flight_at_pause_or_close_is_handed_back_unstarted(
    anyio_backend: str, stop: str
) -> None:
    """No job starts after ``pause()`` or ``close()``: jobs a claim brings back after it are
    returned to ``waiting``, their attempts not counted (and, after a pause, run on resume)."""
    async with _HeldClaims() as store:
        queue = Queue("q", store=store)
        job = await queue.add("n")
        given_back = anyio.Event()
        store.subscribe("q", lambda e: given_back.set() if e.type == "waiting" else None)
        ran: list[str] = []

        async def work(job: Job) -> None:
            ran.append(job.id)

        async with open_worker("q", work, store=store, **FAST) as worker:
            with anyio.fail_after(10):
                await store.claiming.wait()
            worker.pause() if stop == "pause" else worker.close()
            store.release.set()
            with anyio.fail_after(10):
                await given_back.wait()
            data = (await job.refresh()).record
            assert (data.state, data.attempts_made, data.locked_by, ran) == (
                JobState.WAITING, 0, None, [])  # fmt: skip
            if stop == "pause":
                worker.resume()
                await job.wait_until_finished(timeout=10)
                assert ran == [job.id]
        assert ran == ([job.id] if stop == "pause" else [])


async def test_finished_jobs_leave_no_reference_cycles(anyio_backend: str) -> None:
    """A job's worker-side objects are freed when it ends, not left for the garbage collector:
    with a cycle per job, a fast drain spends a fifth of its time in full collections."""
    async with conveyor_stores.memory.MemoryStore() as store:
        queue = Queue("q", store=store)
        jobs = [await queue.add("quick", {"n": n}) for n in range(50)]

        async def quick(job: Job) -> None:
            return None

        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            async with open_worker("q", quick, store=store, concurrency=5, **FAST):
                for job in jobs:
                    await job.wait_until_finished(timeout=10)
            gc.collect()
            left = {type(obj).__name__ for obj in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert not left & {"Job", "JobData", "_Running", "_Unit", "CancelScope"}, left
