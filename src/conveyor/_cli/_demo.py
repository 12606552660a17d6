"""``conveyor demo``: a few hundred jobs of several kinds through one worker, on one screen."""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import attrs
import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._flow import FlowJob, FlowProducer
from .._job import Job
from .._open_store import open_store
from .._queue import JobOptionsDict, Queue
from .._worker import open_worker
from ..store import Backoff, Deduplication, Group, JobState, JsonValue, StoreEvent
from ._app import backend_option, cli, console, display_url, run, store_option
from ._output import STATE_ORDER

__all__: list[str] = []

TENANTS = ("acme", "globex", "initech")
_SHOWN_FAILURES = 4


async def process(job: Job) -> JsonValue:
    """The demo's work: a little waiting, a few failures."""
    if job.name == "resize":
        await anyio.sleep(random.uniform(0.005, 0.04))
        return {"thumbnail": f"{job.data['image']}-small.png"}
    if job.name == "flaky":
        if job.attempts_made < 2:
            raise RuntimeError(f"flaky failure on attempt {job.attempts_made + 1}")
        return "paid"
    if job.name == "charge":
        raise ValueError("card declined")
    if job.name == "assemble":
        values = await job.get_children_values()
        return sorted(str(value) for value in values.values())
    await anyio.sleep(0.01)
    return job.data


@attrs.frozen
class _Added:
    total: int
    urgent_id: str
    parent_id: str
    tenants: dict[str, str]
    """The group jobs' ids -> their tenant."""


async def _add_jobs(queue: Queue, flows: FlowProducer) -> _Added:
    """Add the demo's jobs."""
    bulk: list[tuple[str, JsonValue, JobOptionsDict]] = [
        ("resize", {"image": f"img{i:03}"}, {"priority": i % 3}) for i in range(200)
    ]
    bulk += [
        ("flaky", {"payment": n}, {"attempts": 3, "backoff": Backoff.exponential("100ms")})
        for n in range(12)
    ]
    bulk += [
        ("charge", {"card": n}, {"attempts": 2, "backoff": Backoff.fixed("100ms")})
        for n in range(2)
    ]
    bulk += [
        ("sync", {"tenant": tenant, "n": n}, {"group": Group(tenant)})
        for n in range(8)
        for tenant in TENANTS
    ]
    bulk.append(("report", "nightly", {"delay": "1s"}))
    added = await queue.add_bulk(bulk)
    once = Deduplication("welcome:a@example.com")
    first = await queue.add("email", {"to": "a@example.com"}, deduplication=once)
    again = await queue.add("email", {"to": "a@example.com"}, deduplication=once)
    assert first.id == again.id
    flow = await flows.add(
        FlowJob(
            "assemble",
            queue.name,
            "car",
            children=[FlowJob("part", queue.name, part) for part in ("wheels", "engine", "seats")],
        )
    )
    urgent = await queue.add("urgent", "added last, runs first", priority=-10)
    tenants = {job.id: str(job.data["tenant"]) for job in added if job.name == "sync"}
    return _Added(len(added) + 1 + 4 + 1, urgent.id, flow.job.id, tenants)


@cli.command()
@store_option
@backend_option
@click.option("--queue", default="demo", show_default=True, help="The demo's queue (emptied).")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=20, show_default=True, help="Jobs at once."
)
def demo(store_url: str, backend: str, queue: str, concurrency: int) -> None:
    """Run a few hundred demo jobs through a worker.

    Adds them (priorities, retries with backoff, a flow, round-robin groups, a delayed job,
    deduplication) to an emptied demo queue, runs them, and shows the counts per state."""
    run(_demo, store_url, queue, concurrency, backend, backend=backend)


async def _demo(store_url: str, queue_name: str, concurrency: int, backend: str) -> None:
    async with open_store(store_url) as store:
        console.print(f"store: {display_url(store_url)} ({type(store).__name__}), {backend}")
        queue = Queue(queue_name, store=store)
        await queue.obliterate(force=True)  # every run starts from an empty demo queue
        added = await _add_jobs(queue, FlowProducer(store=store))
        counts = await queue.get_job_counts()
        states = ", ".join(f"{counts[s]} {s.value}" for s in STATE_ORDER if counts[s])
        console.print(
            f"added {added.total} jobs ({states}); two adds with one deduplication key: 1 job"
        )

        started = time.perf_counter()
        tally = _Tally(added.total)
        async with open_worker(
            queue_name, process, store=store, concurrency=concurrency, poll_interval=0.5
        ) as worker:
            worker.events.on("*", tally.on_event)
            with anyio.fail_after(60), tally.progress:
                await tally.finished.wait()
        elapsed = time.perf_counter() - started

        order = tally.started
        console.print(
            f"priority: the urgent job, added last, started #{order.index(added.urgent_id) + 1}"
        )
        tenants = [added.tenants[job_id] for job_id in order if job_id in added.tenants]
        console.print(f"groups served round-robin: {' '.join(tenants[:9])} ...")
        parent = await queue.get_job(added.parent_id)
        if parent is not None:
            console.print(f"flow: assemble ran after its 3 parts -> {parent.returnvalue}")
        counts = await queue.get_job_counts()
        table = Table(title=f"queue {queue_name!r} after {elapsed:.1f}s", box=None)
        for state in STATE_ORDER:
            table.add_column(state.value, justify="right")
        table.add_row(*(str(counts[state]) for state in STATE_ORDER))
        console.print(table)
        console.print(
            f"{counts[JobState.COMPLETED]} completed, {counts[JobState.FAILED]} failed "
            f"(the 'charge' jobs always fail), {tally.retries} retries"
        )


class _Tally:
    """The worker's events, as a progress bar (or, off a terminal, a line every quarter)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.retries = 0
        self.failures_shown = 0
        self.started: list[str] = []
        self.names: dict[str, str] = {}
        self.finished = anyio.Event()
        self.progress = Progress(
            TextColumn("[bold]jobs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("jobs", total=total, detail="")
        self._next_line = total // 4

    def on_event(self, event: StoreEvent) -> None:
        job_id = event.job_id or ""
        if event.type == "active":
            self.started.append(job_id)
            self.names[job_id] = str(event.data.get("name"))
            return
        if event.type == "retrying" or event.type == "failed":
            self._show(event)
        if event.type == "retrying":
            self.retries += 1
        elif event.type in ("completed", "failed"):
            self.done += 1
            detail = f"retries {self.retries}"
            self.progress.update(self.task, completed=self.done, detail=detail)
            if not console.is_terminal and (
                self.done >= self._next_line or self.done == self.total
            ):
                console.print(f"  {self.done}/{self.total} jobs finished ({detail})")
                self._next_line += max(self.total // 4, 1)
            if self.done >= self.total:
                self.finished.set()

    def _show(self, event: StoreEvent) -> None:
        if self.failures_shown >= _SHOWN_FAILURES:
            return
        self.failures_shown += 1
        reason = event.data.get("failed_reason")
        what: Any = "failed for good"
        if event.type == "retrying":
            what = f"retrying in {event.data.get('delay') or 0:.2f}s"
        name = self.names.get(event.job_id or "", "")
        console.print(f"  {name} {event.job_id}: {reason}; {what}")
