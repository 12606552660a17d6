"""Schedules: a job every 200 ms and one on a cron expression. Runs are created once each,
however many producers add the same schedule."""

from __future__ import annotations

import anyio
from _run import run

import conveyor


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queues = [conveyor.Queue("ticks", store=store) for _ in range(3)]  # three producers
        firsts = {(await q.every("200ms", "tick", limit=5)).id for q in queues}
        print("producers added", len(firsts), "schedule")
        nightly = await queues[0].cron("0 3 * * *", "backup", tz="Europe/Paris")
        print("next backup at", nightly.delay_until)
        done = anyio.Event()
        ticks = 0

        async def tick(job: conveyor.Job) -> None:
            nonlocal ticks
            ticks += 1
            run_ = job.repeat_run
            assert run_ is not None
            # Counted here, not by run_.count: producers that add the schedule just either
            # side of a grid point start it one point apart (each point still runs once).
            print(f"tick {ticks} due at {run_.at:%H:%M:%S.%f}")
            if ticks == 5:
                done.set()

        async with conveyor.open_worker("ticks", tick, store=store, poll_interval=0.05,
                                        job_name="tick"):  # fmt: skip
            with anyio.fail_after(10):
                await done.wait()


if __name__ == "__main__":
    run(main)
