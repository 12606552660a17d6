"""PgStore on a table that keeps its finished jobs: does a drain slow down as the table grows?

    .bench-venv/bin/python bench/pg_big_table.py [--sizes 0,100000,300000] [--jobs 5000]
        [--repeat 3] [--backend asyncio|trio|both]

Queues that keep their completed jobs (conveyor's default) end up with tables far larger than
their waiting work. For each ``--sizes`` figure, a fresh database gets that many jobs (one
bulk add), marked completed by one ``UPDATE``, then ``VACUUM ANALYZE``; then, ``--repeat``
times, ``--jobs`` new jobs are added in bulk, ``ANALYZE`` takes the statistics while they wait
(as autovacuum does during a backlog), and a single worker at concurrency 10 drains them
(from its start to the last ``completed`` event). The figure is the median, and its ratio to
the first size (the baseline of the same run): a flat row is what a queue should show.

It found a cliff. The plain claim's plan holds a branch that runs only while job names are
paused, costed as a sort of every waiting job; from ~50,000 jobs in the table the plan's cost
passed PostgreSQL's ``jit_above_cost``, and each claim spent ~55 ms compiling expressions for
a statement that runs in ~3: 4,500 jobs/s fell to ~180. Claims now run with ``jit`` off
(``_CLAIM_PLANNING`` in conveyor_stores/postgres/_store.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import anyio
import psycopg
from _common import drain, fill
from _pg import fresh_database

from conveyor import Queue
from conveyor_stores.postgres import PgStore


def finish_all(dsn: str) -> None:
    """Mark every job completed, as if drained long ago, and give the planner its statistics."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """UPDATE conveyor_jobs SET state = 'completed', finished_at = now(),
                seq = nextval('conveyor_seq') WHERE state = 'waiting'"""
        )
        conn.execute("VACUUM ANALYZE conveyor_jobs")


def analyze(dsn: str) -> None:
    """Statistics taken while the new jobs wait, as autovacuum takes them during a backlog."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE conveyor_jobs")


async def rates(dsn: str, size: int, jobs: int, repeat: int) -> list[float]:
    async with PgStore(dsn) as store:
        queue = Queue("bench", store=store)
        if size:
            await fill(queue, size)
            await anyio.to_thread.run_sync(finish_all, dsn)
        out = []
        for _ in range(repeat):
            await fill(queue, jobs)
            await anyio.to_thread.run_sync(analyze, dsn)
            out.append(jobs / await drain(store, jobs, 10))
        return out


def main(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; nproc {os.cpu_count()}; {args.jobs:,} jobs a "
          f"drain at concurrency 10, median of {args.repeat}")  # fmt: skip
    for backend in backends:
        print(f"\n## {backend}\n\n| finished jobs in the table | drain (jobs/s) | vs. the first |")
        print("|---|---|---|")
        first = None
        for size in sizes:
            with fresh_database(args.dsn, "conveyor_bench_big") as dsn:
                runs = anyio.run(rates, dsn, size, args.jobs, args.repeat, backend=backend)
            rate = statistics.median(runs)
            first = first or rate
            print(f"| {size:,} | {rate:,.0f} | {rate / first:.2f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="0,100000,300000", help="finished jobs, comma-separated")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs a drain")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="asyncio")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CONVEYOR_TEST_PG_DSN")
        or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where a scratch database may be created and dropped",
    )
    main(parser.parse_args())
