"""The worker on MemoryStore: drain throughput and pickup latency, asyncio and trio.

    python bench/worker_drain.py [--jobs 20000] [--repeat 3]

Drain: ``--jobs`` no-op jobs are added in bulk, then one worker runs them all at concurrency
1, 10 and 100; the figure is jobs per second from the worker's start to the last completion
(median of ``--repeat`` runs). The baseline printed beside it is the store alone doing the same
claim + complete in batches of 100 (bench/memory_claim.py's loop), the practical limit.

Pickup latency: an idle worker (concurrency 1); a job is added and the time from the start of
``queue.add`` to the start of the processor is measured, 300 times; p50 and p95.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import anyio
from _common import drain, percentile

from conveyor import Job, JobData, JobOutcome, Queue, open_worker
from conveyor_stores.memory import MemoryStore


def records(count: int) -> list[JobData]:
    return [JobData(id=uuid.uuid4().hex, queue_name="bench", name="noop", data=i)
            for i in range(count)]  # fmt: skip


async def drain_rate(jobs: int, concurrency: int) -> float:
    async with MemoryStore() as store:
        await store.save_bulk(records(jobs))
        return jobs / await drain(store, jobs, concurrency)


async def store_only(jobs: int) -> float:
    async with MemoryStore() as store:
        await store.save_bulk(records(jobs))
        started = time.perf_counter()
        while claimed := await store.fetch_next_jobs("bench", "w", 30, 100):
            await store.finish_jobs([JobOutcome.completed(job) for job in claimed])
        return jobs / (time.perf_counter() - started)


async def pickup(samples: int) -> list[float]:
    latencies: list[float] = []
    async with MemoryStore() as store:
        queue = Queue("bench", store=store)
        picked = anyio.Event()
        picked_at = 0.0

        async def mark(job: Job) -> None:
            nonlocal picked_at
            picked_at = time.perf_counter()
            picked.set()

        async with open_worker("bench", mark, store=store):
            for _ in range(samples):
                picked = anyio.Event()
                await anyio.sleep(0.001)  # let the worker go idle
                added_at = time.perf_counter()
                await queue.add("ping")
                await picked.wait()
                latencies.append(picked_at - added_at)
    return latencies


async def main(args: argparse.Namespace, backend: str) -> None:
    print(f"\n## backend: {backend}")
    base = statistics.median([await store_only(args.jobs) for _ in range(args.repeat)])
    print(f"store alone, batches of 100: {base:>10,.0f} jobs/s (baseline)")
    for concurrency in (1, 10, 100):
        runs = [await drain_rate(args.jobs, concurrency) for _ in range(args.repeat)]
        rate = statistics.median(runs)
        share = f"{rate / base:.0%} of the baseline"
        print(f"drain, concurrency {concurrency:>3}:   {rate:>10,.0f} jobs/s  ({share})")
    lat = await pickup(300)
    p50, p95 = percentile(lat, 0.5), percentile(lat, 0.95)
    print(f"pickup latency: p50 {p50 * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    options = parser.parse_args()
    for name in ("asyncio", "trio") if options.backend == "both" else (options.backend,):
        anyio.run(main, options, name, backend=name)
