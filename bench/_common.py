"""What the queue benchmarks share: the conveyor side of a run and the report's formatting."""

from __future__ import annotations

import time

import anyio

from conveyor import Job, Queue, Store, StoreEvent, open_worker

CHUNK = 1_000
"""Jobs per bulk add (``queue.add_bulk``) when a benchmark fills its queue."""


async def noop(job: Job) -> None:
    """The processor of every drain: it does nothing, so the queue's own cost is measured."""
    return


async def fill(queue: Queue, count: int) -> None:
    """Add ``count`` jobs named ``noop`` (data ``{"n": i}``), ``CHUNK`` per call."""
    for start in range(0, count, CHUNK):
        await queue.add_bulk(
            [("noop", {"n": i}, {}) for i in range(start, min(start + CHUNK, count))]
        )


async def drain(store: Store, count: int, concurrency: int, stall: float = 30.0) -> float:
    """Seconds a worker at ``concurrency`` takes to complete the ``count`` jobs of queue
    ``bench``, from its start to the last ``completed`` event; fail when none completes for
    ``stall`` seconds."""
    done = anyio.Event()
    completed = 0

    def on_completed(event: StoreEvent) -> None:
        nonlocal completed
        completed += 1
        if completed == count:
            done.set()

    started = time.perf_counter()
    async with open_worker("bench", noop, store=store, concurrency=concurrency) as worker:
        worker.events.on("completed", on_completed)
        seen = -1
        while not done.is_set():
            if completed == seen:
                raise RuntimeError(f"conveyor: {completed} of {count} jobs done, then none")
            seen = completed
            with anyio.move_on_after(stall):
                await done.wait()
        return time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * share), len(ordered) - 1)]


def rate(value: float | None) -> str:
    """A throughput for the report (``n/a`` when not measured)."""
    return "n/a" if value is None else f"{value:,.0f}"


def latencies(values: list[float] | None) -> str:
    """Latencies in seconds as ``p50 / p95`` in milliseconds (``n/a`` when not measured)."""
    if not values:
        return "n/a"
    return f"{percentile(values, 0.5) * 1e3:.2f} / {percentile(values, 0.95) * 1e3:.2f}"
