"""Cancellation and timeouts: a running job is cancelled through its worker's cancel scope, a
job over its time limit fails, and leaving the worker block gives unfinished jobs back."""

from __future__ import annotations

import anyio
from _run import run

import conveyor


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queue = conveyor.Queue("media", store=store)
        started = anyio.Event()

        async def transcode(job: conveyor.Job) -> None:
            started.set()
            await anyio.sleep_forever()  # a long job; cancellation interrupts it here

        long_job = await queue.add("transcode", attempts=3)
        slow_job = await queue.add("transcode", timeout="100ms")
        async with conveyor.open_worker("media", transcode, store=store, concurrency=2):
            await started.wait()
            await long_job.cancel()
            for job in (long_job, slow_job):
                try:
                    await job.wait_until_finished(timeout=10)
                except conveyor.JobFailedError as exc:
                    print(f"{type(exc).__name__}: {exc.failed_reason}")
        leftover = await queue.add("transcode")
        async with conveyor.open_worker("media", transcode, store=store, shutdown_timeout=0.1):
            await anyio.sleep(0.2)
        print("after shutdown the unfinished job is", (await leftover.refresh()).state.value)


if __name__ == "__main__":
    run(main)
