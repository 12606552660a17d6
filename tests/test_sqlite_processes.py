"""SqliteStore shared by several processes on one file: exactly-once claims, crash recovery,
cross-process wake-ups. Each worker is a real process (tests/worker_process.py)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from conveyor import Queue
from conveyor_stores.sqlite import SqliteStore

from .processes import (
    Watch,
    completions,
    four_processes_exactly_once,
    sigkilled_job_is_recovered,
    workers,
)

pytestmark = pytest.mark.anyio


def _db(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "jobs.db"
    return db, f"sqlite:///{db}"


async def test_four_processes_complete_every_job_exactly_once(
    tmp_path: Path, anyio_backend: str
) -> None:
    db, url = _db(tmp_path)
    async with SqliteStore(db) as store:
        await four_processes_exactly_once(url, store, tmp_path, total=5000, batch=250)


async def test_sigkilled_worker_job_is_recovered_by_another(
    tmp_path: Path, anyio_backend: str
) -> None:
    db, url = _db(tmp_path)
    async with SqliteStore(db) as store:
        await sigkilled_job_is_recovered(url, store, tmp_path)


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
