"""Batches: the processor receives up to 50 jobs at once and reports a result per job."""

from __future__ import annotations

import contextlib

from _run import run

import conveyor
from conveyor import BatchResult


async def index(jobs: list[conveyor.Job]) -> list[BatchResult]:
    print(f"indexing {len(jobs)} documents in one call")
    return [BatchResult.failed("empty document") if not job.data else BatchResult.ok(len(job.data))
            for job in jobs]  # fmt: skip


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queue = conveyor.Queue("search", store=store)
        jobs = await queue.add_bulk([("index", "word " * n, {}) for n in range(120)])
        batch = conveyor.Batch(size=50, wait="100ms")
        async with conveyor.open_worker("search", index, store=store, batch=batch):
            for job in jobs:
                with contextlib.suppress(conveyor.JobFailedError):
                    await job.wait_until_finished(timeout=10)
        counts = await queue.get_job_counts()
        print({state.value: n for state, n in counts.items() if n})


if __name__ == "__main__":
    run(main)
