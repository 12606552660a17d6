"""How to call PostgreSQL from code that runs under asyncio and trio: the same claim + complete
round trips, made four ways.

    .venv/bin/python bench/pg_call_modes.py [--jobs 5000] [--repeat 3] [--dsn URL]

A table ``bench_jobs(id bigserial, state text, payload jsonb)`` with a partial index on waiting
jobs, in a scratch database (``conveyor_bench_modes``, created and dropped on the server of
``--dsn``, default ``CONVEYOR_TEST_PG_DSN`` or the local one). Each run first fills it with
``--jobs`` waiting jobs, then claims them all (``UPDATE ... WHERE id IN (SELECT id ... WHERE
state = 'waiting' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, payload``) and
completes them (``UPDATE ... SET state = 'done' WHERE id = ANY($1)``), one statement each, in
autocommit, at 1 and 10 jobs per statement. Also: the round trip of ``SELECT 1`` (p50).

* ``plain loop``: psycopg's sync connection in a plain loop, no event loop (the baseline);
* ``psycopg async``: psycopg's ``AsyncConnection`` (asyncio only: psycopg's async API does
  not run under trio);
* ``to_thread``: the sync connection, each statement through ``anyio.to_thread.run_sync``;
* ``wire``: ``conveyor_stores.postgres._wire.PgConnection``: psycopg's libpq generators driven
  by AnyIO's ``wait_readable`` / ``wait_writable`` on the socket, on the event loop.

Figures: jobs per second (claim + complete), median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg import sql

from conveyor_stores.postgres._wire import PgConnection

DB = "conveyor_bench_modes"
CLAIM = (
    "UPDATE bench_jobs SET state = 'active' WHERE id IN (SELECT id FROM bench_jobs"
    " WHERE state = 'waiting' ORDER BY id LIMIT {} FOR UPDATE SKIP LOCKED) RETURNING id, payload"
)
COMPLETE = "UPDATE bench_jobs SET state = 'done' WHERE id = ANY({})"
FILL = "INSERT INTO bench_jobs (state, payload) SELECT 'waiting', jsonb_build_object('n', g)"
FILL += " FROM generate_series(1, %s) g"

Run = Callable[[str, int, int], Awaitable[float]]


def reset(dsn: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_jobs")
        conn.execute(
            "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, state text, payload jsonb)"
        )
        conn.execute("CREATE INDEX bench_waiting ON bench_jobs (id) WHERE state = 'waiting'")
        conn.execute(FILL, (jobs,))
        conn.execute("VACUUM ANALYZE bench_jobs")


def plain(dsn: str, jobs: int, batch: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        claim, complete = CLAIM.format("%s"), COMPLETE.format("%s")
        started = time.perf_counter()
        done = 0
        while done < jobs:
            rows = conn.execute(claim, (batch,), prepare=True).fetchall()
            conn.execute(complete, ([r[0] for r in rows],), prepare=True)
            done += len(rows)
        return jobs / (time.perf_counter() - started)


async def psycopg_async(dsn: str, jobs: int, batch: int) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        claim, complete = CLAIM.format("%s"), COMPLETE.format("%s")
        started = time.perf_counter()
        done = 0
        while done < jobs:
            cur = await conn.execute(claim, (batch,), prepare=True)
            rows = await cur.fetchall()
            await conn.execute(complete, ([r[0] for r in rows],), prepare=True)
            done += len(rows)
        return jobs / (time.perf_counter() - started)


async def to_thread(dsn: str, jobs: int, batch: int) -> float:
    conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    claim, complete = CLAIM.format("%s"), COMPLETE.format("%s")
    try:
        started = time.perf_counter()
        done = 0
        while done < jobs:
            rows = await anyio.to_thread.run_sync(
                lambda: conn.execute(claim, (batch,), prepare=True).fetchall()
            )
            ids = [r[0] for r in rows]
            await anyio.to_thread.run_sync(
                functools.partial(conn.execute, complete, (ids,), prepare=True)
            )
            done += len(rows)
        return jobs / (time.perf_counter() - started)
    finally:
        conn.close()


async def wire(dsn: str, jobs: int, batch: int) -> float:
    conn = await PgConnection.connect(dsn)
    claim, complete = CLAIM.format("$1").encode(), COMPLETE.format("$1").encode()
    try:
        started = time.perf_counter()
        done = 0
        while done < jobs:
            rows = await conn.execute(claim, (batch,))
            await conn.execute(complete, ([r[0] for r in rows],))
            done += len(rows)
        return jobs / (time.perf_counter() - started)
    finally:
        conn.close()


async def round_trips(dsn: str, backend: str, count: int = 2000) -> dict[str, float]:
    """p50 of ``SELECT 1`` in ms, per mode available on this backend."""
    out: dict[str, float] = {}

    async def timed(call: Callable[[], Awaitable[Any]]) -> float:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await call()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    if backend == "asyncio":
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            out["psycopg async"] = await timed(lambda: aconn.execute("SELECT 1"))
    sync = psycopg.connect(dsn, autocommit=True)
    try:
        out["to_thread"] = await timed(
            lambda: anyio.to_thread.run_sync(lambda: sync.execute("SELECT 1"))
        )
    finally:
        sync.close()
    conn = await PgConnection.connect(dsn)
    try:
        out["wire"] = await timed(lambda: conn.execute(b"SELECT 1"))
    finally:
        conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CONVEYOR_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=DB)
    try:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}; nproc {os.cpu_count()}; "
              f"{args.jobs:,} jobs, median of {args.repeat}")  # fmt: skip
        results: dict[tuple[str, str, int], list[float]] = {}
        modes: list[tuple[str, str | None, Run | None]] = [
            ("plain loop", None, None),
            ("psycopg async", "asyncio", psycopg_async),
            ("to_thread", "asyncio", to_thread),
            ("to_thread", "trio", to_thread),
            ("wire", "asyncio", wire),
            ("wire", "trio", wire),
        ]
        for _round in range(args.repeat):
            for batch in (1, 10):
                for name, backend, run in modes:
                    reset(dsn, args.jobs)
                    if run is None or backend is None:
                        rate = plain(dsn, args.jobs, batch)
                    else:
                        rate = anyio.run(run, dsn, args.jobs, batch, backend=backend)
                    results.setdefault((name, backend or "-", batch), []).append(rate)
        header = f"{'1 per stmt':>14}{'10 per stmt':>14}{'SELECT 1 p50':>16}"
        print(f"\n{'mode':<16}{'backend':<10}{header}")
        latency = {b: anyio.run(round_trips, dsn, b, backend=b) for b in ("asyncio", "trio")}
        for name, backend, _run in modes:
            b = backend or "-"
            one = statistics.median(results[(name, b, 1)])
            ten = statistics.median(results[(name, b, 10)])
            p50 = latency.get(b, {}).get(name)
            shown = f"{p50:.3f} ms" if p50 is not None else "-"
            print(f"{name:<16}{b:<10}{one:>14,.0f}{ten:>14,.0f}{shown:>16}")
        print("\njobs/s = claim + complete, one statement each, autocommit")
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB))
            )


if __name__ == "__main__":
    main()
