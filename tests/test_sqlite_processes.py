"""SqliteStore shared by several processes on one file: exactly-once claims, crash recovery,
cross-process wake-ups. Each worker is a real process (tests/worker_process.py)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from conveyor import JobState, Queue
from conveyor_stores.sqlite import SqliteStore

from .processes import Watch, completions, workers

pytestmark = pytest.mark.anyio


def _db(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "jobs.db"
    return db, f"sqlite:///{db}"


async def test_four_processes_complete_every_job_exactly_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    total = 5000
    db, url = _db(tmp_path)
    with workers(url, tmp_path) as group:
        async with SqliteStore(db) as store:
            watch = Watch(store)
            queue = Queue("q", store=store)
            outs = [group.start(f"w{i}", backend="trio" if i % 2 else "asyncio") for i in range(4)]
            with anyio.fail_after(60):
                await watch.until(lambda: watch.count("test-ready") == 4)
            # Added while the workers run, in batches, so claims and inserts contend.
            for start in range(0, total, 250):
                await queue.add_bulk([("n", n, {}) for n in range(start, start + 250)])
            with anyio.fail_after(300):
                await watch.until(lambda: watch.count("completed") >= total)
            counts = await queue.get_job_counts()
        results = group.stop_all()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    for _code, stderr in results:
        assert "locked" not in stderr
    lines = await completions(outs)
    by_id = Counter(line[0] for line in lines)
    assert len(by_id) == total
    assert set(by_id.values()) == {1}, "a job ran twice"
    assert sorted(int(line[3]) for line in lines) == list(range(total))
    assert len({line[1] for line in lines}) == 4, "every process took part"
    assert counts[JobState.COMPLETED] == total
    assert counts[JobState.WAITING] == counts[JobState.ACTIVE] == counts[JobState.FAILED] == 0


async def test_sigkilled_worker_job_is_recovered_by_another(
    tmp_path: Path, anyio_backend: str
) -> None:
    fast = ["--lock-duration", "1", "--stalled-interval", "0.2", "--poll-interval", "0.5"]
    db, url = _db(tmp_path)
    with workers(url, tmp_path) as group:
        async with SqliteStore(db) as store:
            watch = Watch(store)
            queue = Queue("q", store=store)
            victim = await queue.add("victim", "v")
            await queue.add_bulk([("n", n, {}) for n in range(20)])
            doomed = group.start("doomed", "--hang", "victim", "--concurrency", "1", *fast)
            with anyio.fail_after(60):
                await watch.until(lambda: watch.count("test-hung") == 1)
            assert watch.of("test-hung")[0].job_id == victim.id
            group.procs[0][0].send_signal(signal.SIGKILL)
            group.procs[0][0].wait()
            survivor = group.start("survivor", *fast)
            with anyio.fail_after(60):
                await watch.until(lambda: watch.count("completed") == 21)
            found = await queue.get_job(victim.id)
            assert found is not None
            job = found.record
            assert job.state is JobState.COMPLETED
            assert job.stalled_count == 1
            assert job.attempts_made == 1
            assert [a.outcome for a in job.attempt_logs] == ["stalled", "completed"]
        results = group.stop_all()
    assert results[1][0] == 0, results[1]
    lines = await completions([doomed, survivor])
    assert Counter(line[0] for line in lines)[victim.id] == 1
    assert len(lines) == 21


async def test_adding_a_job_wakes_a_worker_in_another_process(
    tmp_path: Path, anyio_backend: str
) -> None:
    # poll_interval 60 s: only the event from this process can wake the worker in time.
    db, url = _db(tmp_path)
    with workers(url, tmp_path) as group:
        async with SqliteStore(db) as store:
            watch = Watch(store)
            queue = Queue("q", store=store)
            out = group.start("idle", "--poll-interval", "60", "--concurrency", "1")
            with anyio.fail_after(60):
                await watch.until(lambda: watch.count("test-ready") == 1)
            latencies = []
            for n in range(10):
                added = time.time()
                await queue.add("ping", n)
                with anyio.fail_after(10):
                    await watch.until(lambda: watch.count("completed") > n)  # noqa: B023
                started = float((await completions([out]))[n][2])
                latencies.append(started - added)
        results = group.stop_all()
    assert results[0][0] == 0, results
    assert max(latencies) < 2.0, latencies  # generous; the benchmark reports the p50
