"""MemoryStore: claim + complete cost per job, with 10,000 and with 100,000 jobs waiting.

    python bench/memory_claim.py [--jobs 10000] [--repeat 5] [--batch 100]

For each queue size the store is filled with that many waiting jobs (varied priorities, names
and, in the "groups" case, 50 round-robin groups), then ``--jobs`` jobs are claimed in batches
of ``--batch`` with ``fetch_next_jobs`` and completed with one ``finish_jobs`` call per batch.
The figure is the median over ``--repeat`` runs. The claim must not be a scan, so the per-job
cost at 100,000 waiting should match the cost at 10,000 (the "ratio" column).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import anyio

from conveyor import FetchOptions, Group, JobData, JobOptions, JobOutcome
from conveyor_stores.memory import MemoryStore

SIZES = (10_000, 100_000)


def make_jobs(count: int, groups: bool) -> list[JobData]:
    return [
        JobData(
            id=uuid.uuid4().hex,
            queue_name="bench",
            name=("resize", "email", "report")[i % 3],
            data={"i": i, "payload": "x" * 32},
            opts=JobOptions(priority=i % 5, group=Group(f"tenant-{i % 50}") if groups else None),
        )
        for i in range(count)
    ]


async def one_run(size: int, jobs: int, batch: int, groups: bool, batch_one: bool) -> float:
    """Seconds per job for ``jobs`` claim + complete cycles with ``size`` jobs waiting."""
    async with MemoryStore() as store:
        await store.save_bulk(make_jobs(size, groups))
        fetch = FetchOptions(group_concurrency=1000) if groups else None
        done = 0
        started = time.perf_counter()
        while done < jobs:
            if batch_one:
                job = await store.fetch_next_job("bench", "w", 30, fetch)
                assert job is not None
                await store.finish_jobs([JobOutcome.completed(job, None)])
                done += 1
                continue
            claimed = await store.fetch_next_jobs("bench", "w", 30, batch, fetch)
            await store.finish_jobs([JobOutcome.completed(job, None) for job in claimed])
            done += len(claimed)
        return (time.perf_counter() - started) / done


async def main(args: argparse.Namespace, backend: str) -> None:
    print(f"\n## backend: {backend}  (claim + complete {args.jobs} jobs, median of {args.repeat})")
    print(f"{'case':<28}{'waiting':>10}{'us/job':>10}{'jobs/s':>12}{'ratio':>8}")
    for label, groups, batch_one in (
        (f"batch {args.batch}", False, False),
        (f"batch {args.batch}, 50 groups", True, False),
        ("one job per call", False, True),
    ):
        base = None
        for size in SIZES:
            runs = [await one_run(size, args.jobs, args.batch, groups, batch_one)
                    for _ in range(args.repeat)]  # fmt: skip
            per_job = statistics.median(runs)
            base = base or per_job
            print(f"{label:<28}{size:>10,}{per_job * 1e6:>10.1f}{1 / per_job:>12,.0f}"
                  f"{per_job / base:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    options = parser.parse_args()
    for name in ("asyncio", "trio") if options.backend == "both" else (options.backend,):
        anyio.run(main, options, name, backend=name)
