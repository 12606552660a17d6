"""conveyor's demo: jobs through a store, claimed in batches and finished, on one page.

    python examples/demo.py                 # SQLite, the default store: ./demo.db
    python examples/demo.py memory://       # or any store URL

It speaks to the store contract directly (the layer every store implements): jobs with
priorities, a delayed job, a deduplicated add, round-robin groups, a parent waiting for its
children, a failing job retried with exponential backoff, and a claim loop that finishes jobs in
batches. Runs unchanged under asyncio and trio (``--trio``).
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import anyio

import conveyor
from conveyor import Backoff, Deduplication, Group, JobData, JobOptions, JobOutcome, JobState

QUEUE = "demo"


def job(name: str, data: Any, **opts: Any) -> JobData:
    return JobData(
        id=uuid.uuid4().hex, queue_name=QUEUE, name=name, data=data, opts=JobOptions(**opts)
    )


def process(item: JobData) -> Any:
    """The 'work': what a worker's processor would do."""
    if item.name == "flaky" and item.attempts_made < 2:
        raise RuntimeError(f"flaky failure on attempt {item.attempts_made + 1}")
    if item.name == "resize":
        return {"thumbnail": f"{item.data['image']}-small.png"}
    if item.name == "assemble":
        return {"parts": sorted(value["ok"] for value in item.children_values.values())}
    return {"ok": item.data}


async def main(url: str) -> None:
    async with conveyor.open_store(url) as store:
        print(f"store: {url} ({type(store).__name__})")
        await store.obliterate(QUEUE, force=True)  # start from an empty queue on every run
        await store.save_bulk(
            [job("resize", {"image": f"img{i}"}, priority=i % 3) for i in range(200)]
        )
        await store.save_job(job("report", "nightly", delay="1s"))
        first = job("email", {"to": "a@example.com"}, deduplication=Deduplication("a@example.com"))
        first.deduplication_key = "a@example.com"
        again = job("email", {"to": "a@example.com"})
        again.deduplication_key = "a@example.com"
        ids = [(await store.save_job(first)).id, (await store.save_job(again)).id]
        print(f"two adds with one deduplication key -> {len(set(ids))} job")
        for tenant in ("acme", "globex", "initech"):
            await store.save_bulk([job("sync", {"tenant": tenant, "n": n}, group=Group(tenant))
                                   for n in range(3)])  # fmt: skip
        parent = job("assemble", "car")
        parts = [job("part", name) for name in ("wheels", "engine", "seats")]
        for part in parts:
            part.parent_id, part.parent_queue_name = parent.id, QUEUE
        await store.save_flow([parent, *parts])
        await store.save_job(job("flaky", "payment", attempts=3, backoff=Backoff.exponential(0.1)))
        counts = await store.get_job_counts(QUEUE)
        print("added:", {state.value: n for state, n in counts.items() if n})

        started = time.perf_counter()
        order: list[str] = []
        while True:
            await store.promote_delayed_jobs(QUEUE)
            batch = await store.fetch_next_jobs(QUEUE, "demo-worker", 30, 50)
            if not batch:
                counts = await store.get_job_counts(QUEUE)
                if counts[JobState.DELAYED] == 0 and counts[JobState.WAITING_CHILDREN] == 0:
                    break
                await anyio.sleep(0.05)
                continue
            outcomes = []
            for item in batch:
                order.append(item.data["tenant"] if item.name == "sync" else item.name)
                try:
                    outcomes.append(JobOutcome.completed(item, process(item)))
                except Exception as exc:
                    if item.attempts_made + 1 < item.opts.attempts and item.opts.backoff:
                        delay = item.opts.backoff.delay_for(item.attempts_made + 1)
                        print(f"  {item.name}: {exc}; retrying in {delay:.1f}s")
                        outcomes.append(JobOutcome.retry(item, str(exc), delay=delay))
                    else:
                        outcomes.append(JobOutcome.failed(item, str(exc)))
            await store.finish_jobs(outcomes)
        elapsed = time.perf_counter() - started

        tenants = [name for name in order if name in ("acme", "globex", "initech")]
        print(f"groups served round-robin: {' '.join(tenants[:6])} ...")
        assembled = await store.get_job(QUEUE, parent.id)
        assert assembled is not None
        print(f"flow: {assembled.name} ran after its children -> {assembled.returnvalue}")
        counts = await store.get_job_counts(QUEUE)
        print("final:", {state.value: n for state, n in counts.items() if n},
              f"in {elapsed * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    anyio.run(
        main,
        args[0] if args else "sqlite:///demo.db",
        backend="trio" if "--trio" in sys.argv else "asyncio",
    )
