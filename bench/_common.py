"""What the queue benchmarks share: the conveyor side of a run and the report's formatting."""

from __future__ import annotations

from conveyor import Job, Queue

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
