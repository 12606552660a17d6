"""PgStore beside procrastinate, pgqueuer and a raw psycopg ``SKIP LOCKED`` loop, in one run.

    .bench-venv/bin/python bench/pg_queue.py [--jobs 10000] [--single 2000] [--repeat 3]
        [--samples 50] [--backend asyncio|trio|both] [--only NAME[,NAME]] [--dsn URL]
        [--out FILE] [--note TEXT] [-v]

Needs procrastinate, pgqueuer and asyncpg (pgqueuer's own driver), which conveyor does not
depend on: run it with the benchmark venv (``.bench-venv/bin/pip install -e '.[postgres]' trio
procrastinate pgqueuer asyncpg``). Without asyncpg, pgqueuer runs on its psycopg driver (one
connection) and the table says so.

Columns (``--only`` takes these names; ``--backend`` picks the conveyor ones otherwise):
``conveyor-asyncio``, ``conveyor-trio`` (``Queue`` + ``open_worker`` on ``PgStore``, its
defaults: 10 connections, ``LISTEN`` on), ``procrastinate``, ``pgqueuer`` and ``raw``.

Every measurement runs in a fresh database (``conveyor_bench_pgq_<pid>``, created on the server
of ``--dsn`` and dropped after it) and in a fresh Python process that imports only the system it
measures, as a user's would (the others' modules in the heap make every full collection of the
garbage collector slower); each system creates its own tables there before the clock starts.
Throughputs are the median of ``--repeat`` runs, taken round robin (every figure once
per round, so a burst of other load on the machine hits every column alike).

* enqueue one by one: ``--single`` jobs, one call (one transaction) each. conveyor:
  ``await queue.add("noop", {"n": i})``; procrastinate: ``await task.defer_async(n=i)``;
  pgqueuer: ``await queries.enqueue("noop", payload)``; raw: one autocommit ``INSERT``.
* bulk enqueue: ``--jobs`` jobs in chunks of 1,000 per call / transaction. conveyor:
  ``queue.add_bulk``; procrastinate: ``task.batch_defer_async``; pgqueuer: ``queries.enqueue``
  with lists; raw: one ``COPY ... FROM STDIN`` per chunk, one transaction each.
* drain at concurrency 10 and 100: ``--jobs`` jobs are added first (each system's bulk enqueue,
  then ``ANALYZE``), then timed from the worker's start to the last completion; the processor
  does nothing. conveyor: ``open_worker(..., concurrency=N)`` counting its ``completed`` events
  (each sent after its outcome's commit); procrastinate: ``run_worker_async(concurrency=N,
  wait=False)``, which returns once the queue is empty and every outcome is written;
  pgqueuer: ``QueueManager.run(mode=drain)``, which returns once the queue is empty, every task
  has finished and its status buffer is flushed (see ``PGQUEUER_LIMITS`` for how N is set).
  raw: a psycopg loop over one ``jobs(id, state, payload jsonb)`` table with a partial index on
  waiting jobs, claiming with ``UPDATE jobs SET state = 'active' WHERE id IN (SELECT id ...
  WHERE state = 'waiting' ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED) RETURNING id, payload``
  and marking them done with a second statement, each autocommitted (its own transaction):
  (a) one job per claim, one connection, synchronous; (b) 10 per claim, the same; (c) the c10
  equivalent: 10 asyncio tasks, one ``AsyncConnection`` each, one job per claim, so 10 jobs
  are in flight as in a worker at concurrency 10; (d) the c100 equivalent: the same 10 tasks
  claiming 10 jobs each, 100 in flight. (c) is no upper bound: each job costs it two commits,
  where a worker may batch its claims; (b) is the batched bound.
* pickup latency (``--samples`` jobs, p50 / p95): an idle worker in another process; one job
  at a time carries ``time.time()`` from just before it is added, the processor takes
  ``time.time()`` at its start and prints the difference on its stdout, which this process
  reads; 20 ms pause between jobs, two warm-up jobs not counted. conveyor:
  ``open_worker(concurrency=1, poll_interval=60)``, so only the store's ``LISTEN`` wakes it;
  procrastinate: ``concurrency=1``, ``listen_notify=True``, its default
  ``fetch_job_polling_interval`` (5 s); pgqueuer: its defaults (``LISTEN`` on its table's
  trigger, ``dequeue_timeout`` 30 s); raw: a child blocked in ``LISTEN``, the job added with
  ``INSERT ... RETURNING`` and ``pg_notify`` in one statement, claimed as above on wake-up.

Every run checks its system did all the work: after an enqueue the waiting jobs are counted in
the database; after a drain, every job must have run once and be recorded done (conveyor:
``completed`` counts; procrastinate: ``succeeded`` rows; pgqueuer: an empty queue table and one
execution per job; raw: ``done`` rows). A short count raises instead of printing a figure.

The report's first lines name what was measured: the checkout's revision (and whether ``src/``
has uncommitted changes), or the folder conveyor was imported from when it is not this
checkout's ``src/`` (``PYTHONPATH=<a git archive of src/>`` pins a revision while the store is
being edited); the server's version and durability settings; the peers' versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from _common import CHUNK, drain, fill, latencies, percentile, rate
from _pg import fresh_database
from anyio.streams.buffered import BufferedByteReceiveStream

import conveyor
from conveyor import Job, JobState, Queue, open_worker
from conveyor_stores.postgres import PgStore

STALL = 30.0
"""Seconds without progress after which a drain or a pickup gives up."""
PROCRASTINATE_POOL = {"min_size": 10, "max_size": 10}
"""procrastinate's psycopg pool (its default: 4 connections); PgStore's default is 10."""
PGQUEUER_POOL = 10
"""asyncpg pool size for pgqueuer's worker (``AsyncpgPoolDriver``); one of them listens."""
PGQUEUER_LIMITS = "worker"
"""How pgqueuer's worker is held to N jobs at once: ``worker`` (``max_concurrent_tasks=N``,
with the largest ``batch_size`` it allows, N // 2) or ``entrypoint`` (``concurrency_limit=N``
on the entrypoint, ``batch_size=N``). Both are documented; ``worker`` drained as fast at c10
and 15-30% faster at c100 in trials on this machine."""
RAW_TASKS = 10
TARGET_DRAIN = 5_000
TARGET_BULK = 50_000
TARGET_PICKUP = 0.005
COLUMNS = ("conveyor-asyncio", "conveyor-trio", "procrastinate", "pgqueuer", "raw")
TITLES = {
    "conveyor-asyncio": "conveyor/asyncio",
    "conveyor-trio": "conveyor/trio",
    "procrastinate": "procrastinate",
    "pgqueuer": "pgqueuer",
    "raw": "raw psycopg",
}
OUTPUT: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)
    OUTPUT.append(text)


def expect(what: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeError(f"{what}: {got!r}, expected {want!r}")


# -- databases --------------------------------------------------------------------------------


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def analyze(dsn: str) -> None:
    """Statistics for the freshly filled tables, as a queue in steady use would have."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")


def peer(module: str) -> Any:
    """Import a peer's module (not installed in the dev venv: typed as Any)."""
    return importlib.import_module(module)


def has_asyncpg() -> bool:
    try:
        importlib.import_module("asyncpg")
    except ImportError:
        return False
    return True


async def watch(
    what: str, run: Coroutine[Any, Any, Any], progress: Callable[[], int], count: int
) -> None:
    """Await ``run`` (asyncio); fail when ``progress()`` stays put for ``STALL`` seconds."""
    task = asyncio.ensure_future(run)
    seen = -1
    while True:
        finished, _ = await asyncio.wait({task}, timeout=STALL)
        if finished:
            task.result()
            return
        if progress() == seen:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise RuntimeError(f"{what}: {seen} of {count} jobs run, then none for {STALL} s")
        seen = progress()


# -- conveyor ---------------------------------------------------------------------------------


async def conveyor_waiting(store: PgStore, count: int) -> None:
    counts = await store.get_job_counts("bench")
    expect("conveyor: waiting jobs after the enqueue", counts[JobState.WAITING], count)


async def conveyor_single(dsn: str, count: int) -> float:
    async with PgStore(dsn) as store:
        queue = Queue("bench", store=store)
        started = time.perf_counter()
        for i in range(count):
            await queue.add("noop", {"n": i})
        elapsed = time.perf_counter() - started
        await conveyor_waiting(store, count)
    return count / elapsed


async def conveyor_bulk(dsn: str, count: int) -> float:
    async with PgStore(dsn) as store:
        queue = Queue("bench", store=store)
        started = time.perf_counter()
        await fill(queue, count)
        elapsed = time.perf_counter() - started
        await conveyor_waiting(store, count)
    return count / elapsed


async def conveyor_drain(dsn: str, count: int, concurrency: int) -> float:
    async with PgStore(dsn) as store:
        await fill(Queue("bench", store=store), count)
        analyze(dsn)
        elapsed = await drain(store, count, concurrency, STALL)
        counts = await store.get_job_counts("bench")
    expect("conveyor: completed jobs after the drain", counts[JobState.COMPLETED], count)
    expect("conveyor: jobs in all states after the drain", sum(counts.values()), count)
    return count / elapsed


async def conveyor_pickup(dsn: str, samples: int, backend: str) -> list[float]:
    async with PgStore(dsn) as store:
        queue = Queue("bench", store=store)

        async def add(added: float) -> None:
            await queue.add("ping", {"added": added})

        return await pickup(["conveyor", "--backend", backend], dsn, add, samples)


async def conveyor_child(dsn: str) -> None:
    async def stamp(job: Job) -> None:
        started = time.time()
        print(repr(started - job.data["added"]), flush=True)

    async with (
        PgStore(dsn) as store,
        open_worker("bench", stamp, store=store, concurrency=1, poll_interval=60),
    ):
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)


# -- procrastinate ----------------------------------------------------------------------------


def procrastinate_app(dsn: str, name: str, fn: Callable[..., Any]) -> tuple[Any, Any]:
    """A procrastinate App on its psycopg connector and ``fn`` as its task ``name``."""
    procrastinate = peer("procrastinate")
    # It warns when an App is made in __main__, for workers importing tasks by module path;
    # here each process registers its tasks itself, under fixed names.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, **PROCRASTINATE_POOL)
    )
    return app, app.task(name=name, queue="bench")(fn)


async def procrastinate_waiting(dsn: str, count: int) -> None:
    waiting = scalar(dsn, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
    expect("procrastinate: waiting jobs after the enqueue", waiting, count)


async def procrastinate_single(dsn: str, count: int) -> float:
    async def work(n: int) -> None:
        return None

    app, task = procrastinate_app(dsn, "noop", work)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        for i in range(count):
            await task.defer_async(n=i)
        elapsed = time.perf_counter() - started
    await procrastinate_waiting(dsn, count)
    return count / elapsed


async def procrastinate_fill(task: Any, count: int) -> None:
    for start in range(0, count, CHUNK):
        await task.batch_defer_async(*({"n": i} for i in range(start, min(start + CHUNK, count))))


async def procrastinate_bulk(dsn: str, count: int) -> float:
    async def work(n: int) -> None:
        return None

    app, task = procrastinate_app(dsn, "noop", work)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        started = time.perf_counter()
        await procrastinate_fill(task, count)
        elapsed = time.perf_counter() - started
    await procrastinate_waiting(dsn, count)
    return count / elapsed


async def procrastinate_drain(dsn: str, count: int, concurrency: int) -> float:
    executed: set[int] = set()

    async def work(n: int) -> None:
        executed.add(n)

    app, task = procrastinate_app(dsn, "noop", work)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await procrastinate_fill(task, count)
        analyze(dsn)
        started = time.perf_counter()
        worker = app.run_worker_async(
            queues=["bench"], concurrency=concurrency, wait=False, install_signal_handlers=False
        )
        await watch("procrastinate", worker, lambda: len(executed), count)
        elapsed = time.perf_counter() - started
    expect("procrastinate: distinct jobs run", len(executed), count)
    done = scalar(dsn, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
    expect("procrastinate: succeeded jobs after the drain", done, count)
    return count / elapsed


async def procrastinate_pickup(dsn: str, samples: int) -> list[float]:
    app, task = procrastinate_app(dsn, "ping", lambda added: None)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        async def add(added: float) -> None:
            await task.defer_async(added=added)

        return await pickup(["procrastinate"], dsn, add, samples)


async def procrastinate_child(dsn: str) -> None:
    async def stamp(added: float) -> None:
        started = time.time()
        print(repr(started - added), flush=True)

    app, _task = procrastinate_app(dsn, "ping", stamp)
    async with app.open_async():
        worker = asyncio.ensure_future(
            app.run_worker_async(
                queues=["bench"], concurrency=1, listen_notify=True, install_signal_handlers=False
            )
        )
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


# -- pgqueuer ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pgqueuer_queries(dsn: str, pool: bool) -> Any:
    """pgqueuer's ``Queries`` on asyncpg (a pool of ``PGQUEUER_POOL`` when ``pool``, else
    one connection), or on psycopg's one ``AsyncConnection`` when asyncpg is missing."""
    pgqueuer = peer("pgqueuer")
    if has_asyncpg():
        asyncpg = peer("asyncpg")
        if pool:
            async with asyncpg.create_pool(
                min_size=PGQUEUER_POOL, max_size=PGQUEUER_POOL, **asyncpg_params(dsn)
            ) as connections:
                yield pgqueuer.Queries(pgqueuer.AsyncpgPoolDriver(connections))
        else:
            conn = await asyncpg.connect(**asyncpg_params(dsn))
            try:
                yield pgqueuer.Queries(pgqueuer.AsyncpgDriver(conn))
            finally:
                await conn.close()
    else:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            yield pgqueuer.Queries(pgqueuer.PsycopgDriver(aconn))


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg's keyword arguments for a libpq conninfo (it takes URLs, not key=value)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    names = {"host": "host", "port": "port", "user": "user", "password": "password"}
    names["dbname"] = "database"
    return {names[k]: v for k, v in params.items() if k in names and v is not None}


def pgqueuer_payload(value: object) -> bytes:
    return json.dumps(value).encode()


async def pgqueuer_waiting(dsn: str, count: int) -> None:
    waiting = scalar(dsn, "SELECT count(*) FROM pgqueuer WHERE status = 'queued'")
    expect("pgqueuer: waiting jobs after the enqueue", waiting, count)


async def pgqueuer_single(dsn: str, count: int) -> float:
    async with pgqueuer_queries(dsn, pool=False) as queries:
        await queries.install()
        started = time.perf_counter()
        for i in range(count):
            await queries.enqueue("noop", pgqueuer_payload({"n": i}))
        elapsed = time.perf_counter() - started
    await pgqueuer_waiting(dsn, count)
    return count / elapsed


async def pgqueuer_fill(queries: Any, count: int) -> None:
    for start in range(0, count, CHUNK):
        size = min(start + CHUNK, count) - start
        payloads = [pgqueuer_payload({"n": i}) for i in range(start, start + size)]
        await queries.enqueue(["noop"] * size, payloads, [0] * size)


async def pgqueuer_bulk(dsn: str, count: int) -> float:
    async with pgqueuer_queries(dsn, pool=False) as queries:
        await queries.install()
        started = time.perf_counter()
        await pgqueuer_fill(queries, count)
        elapsed = time.perf_counter() - started
    await pgqueuer_waiting(dsn, count)
    return count / elapsed


def pgqueuer_manager(queries: Any, concurrency: int) -> tuple[Any, dict[str, Any], int]:
    """A QueueManager, the ``run`` options for ``concurrency``, and the entrypoint's limit."""
    pgqueuer = peer("pgqueuer")
    modes = peer("pgqueuer.domain.types").QueueExecutionMode
    options: dict[str, Any] = {"mode": modes.drain}
    if PGQUEUER_LIMITS == "worker":
        options.update(batch_size=max(concurrency // 2, 1), max_concurrent_tasks=concurrency)
        limit = 0
    else:
        options.update(batch_size=concurrency)
        limit = concurrency
    return pgqueuer.QueueManager(queries), options, limit


async def pgqueuer_drain(dsn: str, count: int, concurrency: int) -> float:
    executed: set[int] = set()
    async with pgqueuer_queries(dsn, pool=False) as queries:
        await queries.install()
        await pgqueuer_fill(queries, count)
    analyze(dsn)
    async with pgqueuer_queries(dsn, pool=True) as queries:
        manager, options, limit = pgqueuer_manager(queries, concurrency)

        async def work(job: Any) -> None:
            executed.add(job.id)

        manager.entrypoint("noop", concurrency_limit=limit)(work)

        started = time.perf_counter()
        await watch("pgqueuer", manager.run(**options), lambda: len(executed), count)
        elapsed = time.perf_counter() - started
    expect("pgqueuer: distinct jobs run", len(executed), count)
    left = scalar(dsn, "SELECT count(*) FROM pgqueuer")
    expect("pgqueuer: jobs left in its queue table", left, 0)
    return count / elapsed


async def pgqueuer_pickup(dsn: str, samples: int) -> list[float]:
    async with pgqueuer_queries(dsn, pool=False) as queries:
        await queries.install()

        async def add(added: float) -> None:
            await queries.enqueue("ping", pgqueuer_payload({"added": added}))

        return await pickup(["pgqueuer"], dsn, add, samples)


async def pgqueuer_child(dsn: str) -> None:
    async with pgqueuer_queries(dsn, pool=True) as queries:
        manager = peer("pgqueuer").QueueManager(queries)

        async def stamp(job: Any) -> None:
            started = time.time()
            print(repr(started - json.loads(job.payload)["added"]), flush=True)

        manager.entrypoint("ping")(stamp)

        run = asyncio.ensure_future(manager.run())
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        manager.shutdown.set()
        await run


# -- raw psycopg ------------------------------------------------------------------------------

RAW_TABLE = (
    "CREATE TABLE jobs (id bigserial PRIMARY KEY, state text NOT NULL, payload jsonb NOT NULL)",
    "CREATE INDEX jobs_waiting ON jobs (id) WHERE state = 'waiting'",
)
RAW_CLAIM = (
    "UPDATE jobs SET state = 'active' WHERE id IN (SELECT id FROM jobs WHERE state = 'waiting'"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, payload"
)
RAW_DONE = "UPDATE jobs SET state = 'done' WHERE id = ANY(%s)"
RAW_ADD = (
    "WITH new AS (INSERT INTO jobs (state, payload) VALUES ('waiting', %s) RETURNING id)"
    " SELECT pg_notify('bench_jobs', id::text) FROM new"
)


def raw_connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(dsn, autocommit=True)
    if conn.execute("SELECT to_regclass('jobs')").fetchone() == (None,):
        for statement in RAW_TABLE:
            conn.execute(statement.encode())
    return conn


def raw_count(dsn: str, state: str) -> int:
    return int(scalar(dsn, f"SELECT count(*) FROM jobs WHERE state = '{state}'"))


def raw_single(dsn: str, count: int) -> float:
    with raw_connect(dsn) as conn:
        insert = "INSERT INTO jobs (state, payload) VALUES ('waiting', %s)"
        started = time.perf_counter()
        for i in range(count):
            conn.execute(insert, (json.dumps({"n": i}),), prepare=True)
        elapsed = time.perf_counter() - started
    expect("raw: waiting jobs after the enqueue", raw_count(dsn, "waiting"), count)
    return count / elapsed


def raw_fill(conn: psycopg.Connection[tuple[Any, ...]], count: int) -> None:
    for start in range(0, count, CHUNK):
        with (
            conn.transaction(),
            conn.cursor().copy("COPY jobs (state, payload) FROM STDIN") as copy,
        ):
            for i in range(start, min(start + CHUNK, count)):
                copy.write_row(("waiting", json.dumps({"n": i})))


def raw_bulk(dsn: str, count: int) -> float:
    with raw_connect(dsn) as conn:
        started = time.perf_counter()
        raw_fill(conn, count)
        elapsed = time.perf_counter() - started
    expect("raw: waiting jobs after the enqueue", raw_count(dsn, "waiting"), count)
    return count / elapsed


def raw_drain(dsn: str, count: int, batch: int) -> float:
    """(a) / (b): one connection, ``batch`` jobs per claim, until none is left."""
    with raw_connect(dsn) as conn:
        raw_fill(conn, count)
        analyze(dsn)
        done = 0
        started = time.perf_counter()
        while True:
            rows = conn.execute(RAW_CLAIM, (batch,), prepare=True).fetchall()
            if not rows:
                break
            conn.execute(RAW_DONE, ([r[0] for r in rows],), prepare=True)
            done += len(rows)
        elapsed = time.perf_counter() - started
    expect("raw: jobs claimed", done, count)
    expect("raw: done jobs after the drain", raw_count(dsn, "done"), count)
    return count / elapsed


async def raw_drain_tasks(dsn: str, count: int, batch: int) -> float:
    """(c) / (d): ``RAW_TASKS`` asyncio tasks, one connection each, ``batch`` per claim."""
    with raw_connect(dsn) as setup:
        raw_fill(setup, count)
    analyze(dsn)
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(RAW_TASKS)]

    async def loop(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> int:
        done = 0
        while True:
            cursor = await conn.execute(RAW_CLAIM, (batch,), prepare=True)
            rows = await cursor.fetchall()
            if not rows:
                return done
            await conn.execute(RAW_DONE, ([r[0] for r in rows],), prepare=True)
            done += len(rows)

    try:
        started = time.perf_counter()
        done = await asyncio.gather(*(loop(conn) for conn in conns))
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    expect("raw: jobs claimed", sum(done), count)
    expect("raw: done jobs after the drain", raw_count(dsn, "done"), count)
    return count / elapsed


async def raw_pickup(dsn: str, samples: int) -> list[float]:
    with raw_connect(dsn) as conn:

        async def add(added: float) -> None:
            conn.execute(RAW_ADD, (json.dumps({"added": added}),), prepare=True).fetchall()

        return await pickup(["raw"], dsn, add, samples)


def raw_child(dsn: str) -> None:
    closed = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        closed.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    with raw_connect(dsn) as conn:
        conn.execute("LISTEN bench_jobs")
        print("ready", flush=True)
        while not closed.is_set():
            # notifies() holds the connection until it returns: claim after it.
            if not list(conn.notifies(timeout=0.1, stop_after=1)):
                continue
            rows = conn.execute(RAW_CLAIM, (1,), prepare=True).fetchall()
            for _id, payload in rows:
                started = time.time()
                print(repr(started - payload["added"]), flush=True)
            if rows:
                conn.execute(RAW_DONE, ([r[0] for r in rows],), prepare=True)


# -- pickup -----------------------------------------------------------------------------------


async def pickup(
    child: list[str], dsn: str, add: Callable[[float], Awaitable[None]], samples: int
) -> list[float]:
    """Start ``--child ...`` on ``dsn``, add ``samples`` jobs one at a time, read the child's
    latencies (the first two jobs warm up and are not counted)."""
    command = [sys.executable, __file__, "--dsn", dsn, "--child", *child]
    latencies: list[float] = []
    async with await anyio.open_process(command, stderr=None) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        lines = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(60):
            line = await lines.receive_until(b"\n", 1000)
        if line.strip() != b"ready":
            raise RuntimeError(f"unexpected line from the child process: {line!r}")
        for i in range(samples + 2):
            await anyio.sleep(0.02)  # let the worker go idle again
            await add(time.time())
            with anyio.fail_after(STALL):
                line = await lines.receive_until(b"\n", 1000)
            if i >= 2:
                latencies.append(float(line))
        await process.stdin.aclose()  # the child stops its worker and exits
        with anyio.fail_after(STALL):
            await process.wait()
    return latencies


# -- report -----------------------------------------------------------------------------------


def check(what: str, ok: bool) -> None:
    say(f"  {what:<60}{'met' if ok else 'NOT met'}")


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    columns = list(results)
    width = max(17, *(len(TITLES[c]) + 2 for c in columns))
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        (f"enqueue one by one, {args.single:,} (jobs/s)", lambda r: rate(r.get("single"))),
        (f"bulk enqueue, {args.jobs:,} by 1,000 (jobs/s)", lambda r: rate(r.get("bulk"))),
        (f"drain {args.jobs:,}, c10 / raw (c) (jobs/s)", lambda r: rate(r.get("drain10"))),
        (f"drain {args.jobs:,}, c100 / raw (d) (jobs/s)", lambda r: rate(r.get("drain100"))),
        ("drain, raw (a) 1 job per claim (jobs/s)", lambda r: rate(r.get("drain_a"))),
        ("drain, raw (b) 10 jobs per claim (jobs/s)", lambda r: rate(r.get("drain_b"))),
        (f"pickup p50 / p95, {args.samples} (ms)", lambda r: latencies(r.get("pickup"))),
    ]
    say()
    say(f"{'':<44}" + "".join(f"{TITLES[c]:>{width}}" for c in columns))
    for label, cell in rows:
        say(f"{label:<44}" + "".join(f"{cell(results[c]):>{width}}" for c in columns))
    say()
    if any(c.startswith("conveyor") for c in columns):
        say("conveyor: PgStore defaults (10 connections, LISTEN on); open_worker(concurrency=N);")
        say("  pickup: concurrency=1, poll_interval=60")
    if "procrastinate" in columns:
        pool = ", ".join(f"{k}={v}" for k, v in PROCRASTINATE_POOL.items())
        say(f"procrastinate: PsycopgConnector({pool}); run_worker_async(concurrency=N,")
        say("  wait=False), its defaults otherwise (listen_notify=True, delete_jobs=never);")
        say("  pickup: concurrency=1, fetch_job_polling_interval 5 s (default)")
    if "pgqueuer" in columns:
        if has_asyncpg():
            driver = f"AsyncpgPoolDriver (asyncpg pool of {PGQUEUER_POOL})"
        else:
            driver = "PsycopgDriver (one psycopg AsyncConnection: asyncpg is not installed)"
        if PGQUEUER_LIMITS == "worker":
            limits = "max_concurrent_tasks=N, batch_size=N/2"
        else:
            limits = "entrypoint concurrency_limit=N, batch_size=N"
        say(f"pgqueuer: QueueManager on {driver}, durable tables (its default);")
        say(f"  drain: run(mode=drain, {limits});")
        say("  pickup: run() with its defaults (batch_size=10, dequeue_timeout 30 s)")
    if "raw" in columns:
        say("raw: claim (UPDATE ... FOR UPDATE SKIP LOCKED ... RETURNING) and mark done, each")
        say("  autocommitted; (a) 1 job per claim, (b) 10, one connection, synchronous;")
        say(f"  (c) {RAW_TASKS} asyncio tasks x 1 job per claim, (d) {RAW_TASKS} tasks x 10,")
        say("  one AsyncConnection per task; pickup: LISTEN, INSERT + pg_notify in one statement")

    peers = [c for c in ("procrastinate", "pgqueuer") if c in results]
    raw = results.get("raw")
    for column in columns:
        if not column.startswith("conveyor"):
            continue
        mine = results[column]
        say(f"\n{TITLES[column]}, against the targets:")
        for row, level in (("drain10", "c10"), ("drain100", "c100")):
            drain = mine[row]
            check(f"drain {level} {drain:,.0f} jobs/s (target >= {TARGET_DRAIN:,})",
                  drain >= TARGET_DRAIN)  # fmt: skip
            for name in peers:
                ratio = drain / results[name][row]
                check(f"drain {level} / {name} {ratio:.2f}x (target > 1x)", ratio > 1)
            if raw is not None:
                # c10: raw (b), a batch of 10, and raw (c), 10 tasks; c100: raw (d).
                shares = [("b", "drain_b"), ("c", row)] if level == "c10" else [("d", row)]
                text = ", ".join(f"/ raw ({name}) {drain / raw[key]:.0%}" for name, key in shares)
                say(f"  drain {level} {text} (no target)")
        bulk = mine["bulk"]
        check(f"bulk enqueue {bulk:,.0f} jobs/s (target >= {TARGET_BULK:,})", bulk >= TARGET_BULK)
        if "pickup" in mine:
            p50 = percentile(mine["pickup"], 0.5)
            check(
                f"pickup p50 {p50 * 1e3:.2f} ms (target < {TARGET_PICKUP * 1e3:.0f} ms)",
                p50 < TARGET_PICKUP,
            )


Measure = Callable[[str], float]
"""One timed run on a fresh database; returns jobs per second."""


def on_asyncio(fn: Callable[..., Awaitable[float]], *args: Any) -> Measure:
    return lambda dsn: anyio.run(fn, dsn, *args, backend="asyncio")


def measures(args: argparse.Namespace, columns: list[str]) -> list[tuple[str, str, Measure]]:
    """(column, row, run) for every throughput figure."""
    jobs, single = args.jobs, args.single
    out: list[tuple[str, str, Measure]] = []
    for column in columns:
        if column.startswith("conveyor-"):
            backend = column.split("-")[1]

            def on(fn: Callable[..., Awaitable[float]], *extra: Any, b: str = backend) -> Measure:
                return lambda dsn: anyio.run(fn, dsn, *extra, backend=b)

            out.append((column, "single", on(conveyor_single, single)))
            out.append((column, "bulk", on(conveyor_bulk, jobs)))
            out.append((column, "drain10", on(conveyor_drain, jobs, 10)))
            out.append((column, "drain100", on(conveyor_drain, jobs, 100)))
        elif column == "procrastinate":
            out.append((column, "single", on_asyncio(procrastinate_single, single)))
            out.append((column, "bulk", on_asyncio(procrastinate_bulk, jobs)))
            out.append((column, "drain10", on_asyncio(procrastinate_drain, jobs, 10)))
            out.append((column, "drain100", on_asyncio(procrastinate_drain, jobs, 100)))
        elif column == "pgqueuer":
            out.append((column, "single", on_asyncio(pgqueuer_single, single)))
            out.append((column, "bulk", on_asyncio(pgqueuer_bulk, jobs)))
            out.append((column, "drain10", on_asyncio(pgqueuer_drain, jobs, 10)))
            out.append((column, "drain100", on_asyncio(pgqueuer_drain, jobs, 100)))
        else:
            out.append((column, "single", lambda dsn: raw_single(dsn, single)))
            out.append((column, "bulk", lambda dsn: raw_bulk(dsn, jobs)))
            out.append((column, "drain10", on_asyncio(raw_drain_tasks, jobs, 1)))
            out.append((column, "drain100", on_asyncio(raw_drain_tasks, jobs, 10)))
            out.append((column, "drain_a", lambda dsn: raw_drain(dsn, jobs, 1)))
            out.append((column, "drain_b", lambda dsn: raw_drain(dsn, jobs, 10)))
    return out


def pickups(column: str, dsn: str, samples: int) -> list[float]:
    if column.startswith("conveyor-"):
        backend = column.split("-")[1]
        return anyio.run(conveyor_pickup, dsn, samples, backend, backend=backend)
    run = {"procrastinate": procrastinate_pickup, "pgqueuer": pgqueuer_pickup, "raw": raw_pickup}
    return anyio.run(run[column], dsn, samples, backend="asyncio")


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        for name in names:
            if name not in COLUMNS:
                raise SystemExit(f"--only: unknown column {name!r} (one of {', '.join(COLUMNS)})")
        return [c for c in COLUMNS if c in names]
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    return [f"conveyor-{b}" for b in backends] + ["procrastinate", "pgqueuer", "raw"]


def header(args: argparse.Namespace, columns: list[str]) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    source = os.path.dirname(os.path.dirname(os.path.abspath(conveyor.__file__)))
    if source == os.path.join(root, "src"):
        revision = "conveyor at " + (git("rev-parse", "--short", "HEAD") or "?")
        if git("status", "--porcelain", "--", "src"):
            revision += " + uncommitted changes in src/"
    else:
        revision = f"conveyor imported from {source}"
    argv: list[str] = []
    given = iter(sys.argv[1:])
    for arg in given:  # the command as run, less where its report goes
        if arg in ("--out", "--note"):
            next(given, None)
        elif not arg.startswith(("--out=", "--note=")):
            argv.append(arg)
    command = " ".join(["bench/pg_queue.py", *argv])
    if args.note:
        say(f"# {args.note}")
    say(f"# {os.path.relpath(sys.executable, root)} {command}   ({revision})")
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    server = scalar(args.dsn, "SELECT current_setting('server_version')")
    settings = scalar(
        args.dsn,
        "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings WHERE"
        " name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections')",
    )
    say(f"{stamp}; nproc {os.cpu_count()}; python {sys.version.split()[0]}; "
        f"PostgreSQL {server} ({settings})")  # fmt: skip
    versions = [f"psycopg {importlib.metadata.version('psycopg')}"]
    for name in ("procrastinate", "pgqueuer", "asyncpg"):
        wanted = name in columns or (name == "asyncpg" and "pgqueuer" in columns)
        if wanted:
            try:
                versions.append(f"{name} {importlib.metadata.version(name)}")
            except importlib.metadata.PackageNotFoundError:
                versions.append(f"{name} not installed")
    say(", ".join(versions))
    say(f"{args.jobs:,} jobs for bulk and drain, {args.single:,} one by one, "
        f"median of {args.repeat}; pickup {args.samples} samples")  # fmt: skip


def isolated(args: argparse.Namespace, column: str, row: str, dsn: str) -> Any:
    """Run one measurement in a process of its own, which imports only the system measured
    (as a user's worker would): the others' modules would otherwise sit in the heap of every
    later run, and a full collection of the garbage collector walks all of it."""
    command = [sys.executable, os.path.abspath(__file__), "--measure", f"{column}:{row}",
               "--dsn", dsn, "--jobs", str(args.jobs), "--single", str(args.single),
               "--samples", str(args.samples)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{column} {row} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_here(args: argparse.Namespace) -> None:
    """``--measure COLUMN:ROW``: one measurement in this process, its result printed as JSON."""
    column, _, row = args.measure.partition(":")
    if row == "pickup":
        print(json.dumps(pickups(column, args.dsn, args.samples)))
        return
    [run] = [run for c, r, run in measures(args, [column]) if (c, r) == (column, row)]
    print(json.dumps(run(args.dsn)))


def main(args: argparse.Namespace) -> None:
    columns = selected(args)
    header(args, columns)
    runs = measures(args, columns)
    rates: dict[tuple[str, str], list[float]] = {}
    began = time.perf_counter()
    # Round robin, one run of each figure per round: a burst of load elsewhere on the machine
    # then lands on every column alike rather than on one system.
    for _ in range(args.repeat):
        for column, row, _run in runs:
            with fresh_database(args.dsn, "conveyor_bench_pgq") as dsn:
                rates.setdefault((column, row), []).append(isolated(args, column, row, dsn))
            if args.verbose:
                print(f"  {column} {row}: {rates[(column, row)][-1]:,.0f}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {column: {} for column in columns}
    for (column, row), values in rates.items():
        results[column][row] = statistics.median(values)
    if args.samples:
        for column in columns:
            with fresh_database(args.dsn, "conveyor_bench_pgq") as dsn:
                results[column]["pickup"] = isolated(args, column, "pickup", dsn)
    report(args, results)
    say(f"\n(run took {time.perf_counter() - began:,.0f} s)")
    if args.out:
        with open(args.out, "w") as out:
            out.write("\n".join(OUTPUT) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs for bulk and drain")
    parser.add_argument("--single", type=int, default=2_000, help="jobs added one by one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50, help="pickup samples (0: skip)")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    parser.add_argument("--only", help=f"columns to run, comma-separated: {', '.join(COLUMNS)}")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CONVEYOR_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where the scratch databases may be created and dropped",
    )
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--note", help="a line to put first in the report")
    parser.add_argument("-v", "--verbose", action="store_true", help="each run's figure")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", choices=["conveyor", "procrastinate", "pgqueuer", "raw"], help=argparse.SUPPRESS
    )
    return parser.parse_args()


if __name__ == "__main__":
    options = parse_args()
    if options.child == "conveyor":
        anyio.run(conveyor_child, options.dsn, backend=options.backend)
    elif options.child == "procrastinate":
        asyncio.run(procrastinate_child(options.dsn))
    elif options.child == "pgqueuer":
        asyncio.run(pgqueuer_child(options.dsn))
    elif options.child == "raw":
        raw_child(options.dsn)
    elif options.measure:
        measure_here(options)
    else:
        main(options)
