"""Groups: tenants are served round-robin, and GroupLimits caps how many jobs of one tenant run
at once, so a tenant with many jobs cannot starve the others."""

from __future__ import annotations

from collections import Counter

import anyio
from _run import run

import conveyor

TENANTS = (("big-corp", 6), ("small-shop", 2), ("startup", 2))


async def add_reports(queue: conveyor.Queue) -> list[conveyor.Job]:
    return await queue.add_bulk(
        [("report", {"tenant": t, "n": n}, {"group": conveyor.Group(t)})
         for t, count in TENANTS for n in range(count)]
    )  # fmt: skip


async def main() -> None:
    async with conveyor.open_store("memory://") as store:
        queue = conveyor.Queue("reports", store=store)
        order: list[str] = []

        async def report(job: conveyor.Job) -> None:
            order.append(job.data["tenant"])

        jobs = await add_reports(queue)
        async with conveyor.open_worker("reports", report, store=store):  # one job at a time
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        print("served:", " ".join(order))

        running: Counter[str] = Counter()
        most: Counter[str] = Counter()

        async def slow_report(job: conveyor.Job) -> None:
            tenant = job.data["tenant"]
            running[tenant] += 1
            most[tenant] = max(most[tenant], running[tenant])
            await anyio.sleep(0.01)
            running[tenant] -= 1

        jobs = await add_reports(queue)
        limits = conveyor.GroupLimits(concurrency=1)
        async with conveyor.open_worker(
            "reports", slow_report, store=store, concurrency=3, group=limits
        ):
            for job in jobs:
                await job.wait_until_finished(timeout=10)
        print("most jobs at once per tenant:", dict(most))


if __name__ == "__main__":
    run(main)
