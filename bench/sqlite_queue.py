"""SqliteStore beside huey's SqliteHuey and a raw sqlite3 loop, in one run.

    .bench-venv/bin/python bench/sqlite_queue.py [--jobs 10000] [--single 2000] [--repeat 3]
        [--samples 50] [--backend asyncio|trio|both] [--no-huey]

Needs huey, which conveyor does not depend on: run it with the benchmark venv
(``python3 -m venv .bench-venv && .bench-venv/bin/pip install -e . huey trio``).

Every measurement starts from a fresh database file in a new temporary folder. Throughputs are
the median of ``--repeat`` runs, taken round robin (every figure once per round, so a burst of
other load on the machine hits every column alike).

* enqueue one by one: ``--single`` jobs, one call (one transaction) each. conveyor:
  ``await queue.add("noop", {"n": i})``; huey: calling the task; raw: one autocommit INSERT.
* bulk enqueue: ``--jobs`` jobs in chunks of 1,000 per call / transaction. conveyor:
  ``queue.add_bulk``; raw: ``executemany`` in one transaction per chunk; huey has no bulk
  enqueue (n/a).
* drain: ``--jobs`` jobs are added first, then timed from the worker's start to the last
  completion. conveyor: ``open_worker(..., concurrency=10)`` counting its ``completed``
  events; huey: an in-process consumer with 10 worker threads, counting executions, with its
  empty-queue polling set to every 1 ms (``initial_delay=0.001, backoff=1.0,
  max_delay=0.001``) so it does not measure sleep; raw, synchronous, one thread: (a) one
  transaction to claim one job (``UPDATE ... WHERE id = (SELECT id ... LIMIT 1) RETURNING``),
  another to mark it done; (b) the same with 10 jobs per transaction.
* pickup latency (``--samples`` jobs, p50 / p95): an idle worker in another process on the
  same file; one job at a time carries ``time.time()`` from just before it is added, the
  processor returns ``time.time()`` at its start, the figure is the difference. conveyor:
  ``open_worker(concurrency=1, poll_interval=60)`` so only the cross-process event (the
  store's event poller, every 5 ms by default) wakes it; huey: a consumer with one thread,
  polling every 1 ms as above.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
from _common import CHUNK, drain, fill, latencies, rate
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from conveyor import Job, Queue, StoreEvent, open_worker
from conveyor_stores.sqlite import SqliteStore

HUEY_POLL = {"initial_delay": 0.001, "backoff": 1.0, "max_delay": 0.001}
"""huey's consumer polling when the queue looks empty (its defaults: 0.1 s, x1.15, up to 10 s)."""
TARGET_DRAIN = 5_000
TARGET_SHARE = 0.5
TARGET_BULK = 50_000


@contextmanager
def fresh_file(folder: str | None, name: str = "bench.db") -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=folder) as tmp:
        yield os.path.join(tmp, name)


# -- conveyor ---------------------------------------------------------------------------------


async def conveyor_single(path: str, count: int) -> float:
    async with SqliteStore(path) as store:
        queue = Queue("bench", store=store)
        started = time.perf_counter()
        for i in range(count):
            await queue.add("noop", {"n": i})
        return count / (time.perf_counter() - started)


async def conveyor_bulk(path: str, count: int) -> float:
    async with SqliteStore(path) as store:
        queue = Queue("bench", store=store)
        started = time.perf_counter()
        await fill(queue, count)
        return count / (time.perf_counter() - started)


async def conveyor_drain(path: str, count: int) -> float:
    async with SqliteStore(path) as store:
        await fill(Queue("bench", store=store), count)
        elapsed = await drain(store, count, 10)
        return count / elapsed


async def child_ready(process: Process) -> None:
    """Wait for the child's ``ready`` line."""
    assert process.stdout is not None
    with anyio.fail_after(60):
        line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1000)
    if line.strip() != b"ready":
        raise RuntimeError(f"unexpected line from the child process: {line!r}")


async def conveyor_pickup(path: str, samples: int, backend: str) -> list[float]:
    """Cross-process pickup: the worker runs in a child process (``--child conveyor``)."""
    latencies: list[float] = []
    send, receive = anyio.create_memory_object_stream[tuple[str, float]](math.inf)

    def on_event(event: StoreEvent) -> None:  # other processes' events, on the event loop
        value = event.data.get("returnvalue")
        if event.type == "completed" and event.job_id and isinstance(value, int | float):
            send.send_nowait((event.job_id, float(value)))

    async with SqliteStore(path) as store:
        queue = Queue("bench", store=store)
        store.subscribe("bench", on_event)
        command = [sys.executable, __file__, "--child", "conveyor", "--path", path]
        child = [*command, "--backend", backend]
        async with await anyio.open_process(child, stderr=None) as process:
            await child_ready(process)
            for _ in range(samples):
                await anyio.sleep(0.02)  # let the worker go idle again
                added = time.time()
                job = await queue.add("ping", {"added": added})
                with anyio.fail_after(30):
                    async for job_id, started in receive:
                        if job_id == job.id:
                            latencies.append(started - added)
                            break
            assert process.stdin is not None
            await process.stdin.aclose()  # the child leaves its worker block and exits
            with anyio.fail_after(30):
                await process.wait()
        store.unsubscribe("bench", on_event)
    return latencies


async def conveyor_child(path: str) -> None:
    async def stamp(job: Job) -> float:
        return time.time()

    async with (
        SqliteStore(path) as store,
        open_worker("bench", stamp, store=store, concurrency=1, poll_interval=60),
    ):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


# -- huey -------------------------------------------------------------------------------------


def huey_app(path: str, task: Callable[..., Any]) -> tuple[Any, Any]:
    """A SqliteHuey on ``path`` and ``task`` registered on it (under a fixed name)."""
    from huey import SqliteHuey

    huey = SqliteHuey(filename=path)
    return huey, huey.task(name="bench_task")(task)


@contextmanager
def huey_consumer(huey: Any, workers: int) -> Iterator[None]:
    """Run a consumer with ``workers`` threads in this process while in the block."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    consumer = huey.create_consumer(
        workers=workers, worker_type="thread", periodic=False, check_worker_health=False,
        **HUEY_POLL,
    )  # fmt: skip
    consumer.start()  # threads; it also installs signal handlers (restored below)
    try:
        yield
    finally:
        consumer.stop(graceful=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def huey_single(path: str, count: int) -> float:
    huey, task = huey_app(path, lambda n: None)
    started = time.perf_counter()
    for i in range(count):
        task(i)
    elapsed = time.perf_counter() - started
    huey.storage.close()
    return count / elapsed


def huey_drain(path: str, count: int) -> float:
    done = threading.Event()
    lock = threading.Lock()
    executed = 0

    def work(n: int) -> None:
        nonlocal executed
        with lock:
            executed += 1
            if executed == count:
                done.set()

    huey, task = huey_app(path, work)
    for i in range(count):
        task(i)
    started = time.perf_counter()
    with huey_consumer(huey, 10):
        seen = -1
        while not done.wait(30):  # give up when nothing runs for 30 s
            if executed == seen:
                raise RuntimeError(f"huey: {executed} of {count} tasks run, then none")
            seen = executed
        elapsed = time.perf_counter() - started
    if huey.pending_count() != 0:
        raise RuntimeError("huey's queue is not empty after the drain")
    huey.storage.close()
    return count / elapsed


def huey_pickup(path: str, samples: int) -> list[float]:
    """Cross-process pickup: the consumer runs in a child process (``--child huey``)."""
    huey, task = huey_app(path, lambda added: time.time())
    command = [sys.executable, __file__, "--child", "huey", "--path", path]
    latencies = []
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        if child.stdout.readline().strip() != b"ready":
            raise RuntimeError("the huey child process did not start")
        for _ in range(samples):
            time.sleep(0.02)
            added = time.time()
            result = task(added)
            started = result.get(blocking=True, timeout=30, backoff=1.0, max_delay=0.001)
            latencies.append(started - added)
        child.stdin.close()
        child.wait(30)
    huey.storage.close()
    return latencies


def huey_child(path: str) -> None:
    huey, _task = huey_app(path, lambda added: time.time())
    with huey_consumer(huey, 1):
        print("ready", flush=True)
        sys.stdin.read()


# -- raw sqlite3 ------------------------------------------------------------------------------


def raw_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # autocommit unless BEGIN
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, state TEXT, payload TEXT)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (id) WHERE state = 'waiting'")
    return conn


def raw_fill(conn: sqlite3.Connection, count: int) -> None:
    for start in range(0, count, CHUNK):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs (state, payload) VALUES ('waiting', ?)",
            [(json.dumps({"n": i}),) for i in range(start, min(start + CHUNK, count))],
        )
        conn.execute("COMMIT")


def raw_single(path: str, count: int) -> float:
    conn = raw_connect(path)
    started = time.perf_counter()
    for i in range(count):
        conn.execute(
            "INSERT INTO jobs (state, payload) VALUES ('waiting', ?)", (json.dumps({"n": i}),)
        )
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_bulk(path: str, count: int) -> float:
    conn = raw_connect(path)
    started = time.perf_counter()
    raw_fill(conn, count)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


def raw_drain(path: str, count: int, batch: int) -> float:
    """Claim ``batch`` jobs in one transaction, mark them done in another, until none is left."""
    conn = raw_connect(path)
    raw_fill(conn, count)
    where = "id = (SELECT id" if batch == 1 else "id IN (SELECT id"
    claim = (
        f"UPDATE jobs SET state = 'active' WHERE {where} FROM jobs WHERE state = 'waiting' "
        f"ORDER BY id LIMIT {batch}) RETURNING id, payload"
    )
    done = 0
    started = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(claim).fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        for _id, payload in rows:
            json.loads(payload)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE jobs SET state = 'done' WHERE id = ?", [(r[0],) for r in rows])
        conn.execute("COMMIT")
        done += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    assert done == count, (done, count)
    return count / elapsed


# -- report -----------------------------------------------------------------------------------


def check(what: str, ok: bool) -> None:
    print(f"  {what:<56}{'met' if ok else 'NOT met'}")


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    columns = list(results)
    width = max(17, *(len(c) + 2 for c in columns))
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (f"enqueue one by one, {args.single:,} (jobs/s)", lambda r: rate(r.get("single"))),
        (f"bulk enqueue, {args.jobs:,} by 1,000 (jobs/s)", lambda r: rate(r.get("bulk"))),
        (f"drain {args.jobs:,}, c10 / raw (a) (jobs/s)", lambda r: rate(r.get("drain"))),
        ("drain, raw (b) 10 jobs per tx (jobs/s)", lambda r: rate(r.get("drain10"))),
        (f"pickup p50 / p95, {args.samples} (ms)", lambda r: latencies(r.get("pickup"))),
    ]
    print()
    print(f"{'':<42}" + "".join(f"{c:>{width}}" for c in columns))
    for label, cell in rows:
        print(f"{label:<42}" + "".join(f"{cell(results[c]):>{width}}" for c in columns))
    print()
    if "huey" in results:
        poll = ", ".join(f"{key}={value}" for key, value in HUEY_POLL.items())
        print("huey: bulk n/a (huey has no bulk enqueue); drain: a consumer with 10 threads in")
        print("  this process; pickup: a consumer with 1 thread in another process; both polling")
        print(f"  an empty queue with {poll}")
    print("raw: drain (a) claims 1 job per transaction and marks it done in another, (b) 10 jobs")
    print("  per transaction; synchronous, one thread, no event loop; no pickup (nothing to wake)")

    raw = results.get("raw sqlite3")
    huey = results.get("huey")
    for column in columns:
        if not column.startswith("conveyor"):
            continue
        drain, bulk = results[column]["drain"], results[column]["bulk"]
        print(f"\n{column}, against the targets:")
        check(f"drain {drain:,.0f} jobs/s (target >= {TARGET_DRAIN:,})", drain >= TARGET_DRAIN)
        if raw is not None:
            share = drain / raw["drain"]
            check(
                f"drain / raw (a) {share:.0%} (target >= {TARGET_SHARE:.0%})", share >= TARGET_SHARE
            )
            print(f"  drain / raw (b) {drain / raw['drain10']:.0%} (no target)")
        if huey is not None:
            ratio = drain / huey["drain"]
            check(f"drain / huey drain {ratio:.2f}x (target > 1x, ahead of huey)", ratio > 1)
        check(f"bulk enqueue {bulk:,.0f} jobs/s (target >= {TARGET_BULK:,})", bulk >= TARGET_BULK)


Measure = Callable[[str], float]
"""One timed run on a fresh database file; returns jobs per second."""


def measures(args: argparse.Namespace) -> list[tuple[str, str, Measure]]:
    """(column, row, run) for every throughput figure."""
    jobs, single = args.jobs, args.single
    out: list[tuple[str, str, Measure]] = []
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    for backend in backends:

        def on(fn: Callable[[str, int], Awaitable[float]], count: int, b: str = backend) -> Measure:
            return lambda path: anyio.run(fn, path, count, backend=b)

        column = f"conveyor/{backend}"
        out.append((column, "single", on(conveyor_single, single)))
        out.append((column, "bulk", on(conveyor_bulk, jobs)))
        out.append((column, "drain", on(conveyor_drain, jobs)))
    if not args.no_huey:
        out.append(("huey", "single", lambda path: huey_single(path, single)))
        out.append(("huey", "drain", lambda path: huey_drain(path, jobs)))
    out.append(("raw sqlite3", "single", lambda path: raw_single(path, single)))
    out.append(("raw sqlite3", "bulk", lambda path: raw_bulk(path, jobs)))
    out.append(("raw sqlite3", "drain", lambda path: raw_drain(path, jobs, 1)))
    out.append(("raw sqlite3", "drain10", lambda path: raw_drain(path, jobs, 10)))
    return out


def main(args: argparse.Namespace) -> None:
    runs = measures(args)
    rates: dict[tuple[str, str], list[float]] = {}
    # Round robin, one run of each figure per round: a burst of load elsewhere on the machine
    # then lands on every column alike rather than on one system.
    for _ in range(args.repeat):
        for column, row, run in runs:
            with fresh_file(args.dir) as path:
                rates.setdefault((column, row), []).append(run(path))
    results: dict[str, dict[str, Any]] = {}
    for (column, row), values in rates.items():
        results.setdefault(column, {})[row] = statistics.median(values)
    if args.samples:
        for column in results:
            with fresh_file(args.dir) as path:
                if column.startswith("conveyor/"):
                    backend = column.split("/")[1]
                    latencies = anyio.run(
                        conveyor_pickup, path, args.samples, backend, backend=backend
                    )
                elif column == "huey":
                    latencies = huey_pickup(path, args.samples)
                else:
                    continue
                results[column]["pickup"] = latencies
    report(args, results)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs for bulk and drain")
    parser.add_argument("--single", type=int, default=2_000, help="jobs added one by one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50, help="pickup samples (0: skip)")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    parser.add_argument("--no-huey", action="store_true", help="skip huey")
    parser.add_argument("--dir", default=None, help="where the database files go (default: tmp)")
    parser.add_argument("--child", choices=["conveyor", "huey"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse_args()
    if options.child == "conveyor":
        anyio.run(conveyor_child, options.path, backend=options.backend)
    elif options.child == "huey":
        huey_child(options.path)
    else:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        print(f"{stamp}; nproc {os.cpu_count()}; python {sys.version.split()[0]}")
        print(
            f"{options.jobs:,} jobs for bulk and drain, {options.single:,} one by one, "
            f"median of {options.repeat}; pickup {options.samples} samples"
        )
        main(options)
