"""How to call sqlite3 from async code: the same claim + complete transactions, called three ways.

    .bench-venv/bin/python bench/sqlite_call_modes.py [--jobs 10000] [--repeat 5] [--backend both]

One WAL file (``synchronous=NORMAL``) with one table ``jobs(id, state, payload)`` and a partial
index on waiting jobs. Before each run it holds ``--jobs`` waiting jobs; the run claims them all
and completes them, one transaction to claim (``BEGIN IMMEDIATE``; ``UPDATE ... WHERE id IN
(SELECT id ... WHERE state = 'waiting' ORDER BY id LIMIT n) RETURNING id, payload``; ``COMMIT``)
and one to complete (``UPDATE ... SET state = 'done'``), one after the other, at batch size 1
and 10 jobs per transaction. The transactions are called:

* ``plain loop``: from a plain synchronous loop, no event loop (the baseline);
* ``direct``: as a plain sync call inside the async function, on the event loop (after an
  ``anyio.lowlevel.checkpoint()``, as a store call must yield somewhere);
* ``to_thread``: through ``anyio.to_thread.run_sync``, one thread hop per transaction;
* ``own thread``: by one dedicated thread that owns the connection, fed through a
  ``queue.Queue`` of requests; the result comes back by setting an ``anyio.Event`` on the
  event loop, either with ``anyio.from_thread.run_sync`` (which also waits for the loop to run
  it) or with the backend's non-blocking ``run_sync_soon`` (what ``from_thread`` uses inside).

Figures: jobs per second (claim + complete), median of ``--repeat`` runs taken round robin
(every mode once per round), asyncio and trio.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

Row = tuple[int, str]
Call = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def create(path: str) -> None:
    conn = connect(path)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT, payload TEXT)")
    conn.execute("CREATE INDEX jobs_waiting ON jobs (id) WHERE state = 'waiting'")
    conn.close()


def refill(path: str, jobs: int) -> None:
    """Empty the table, then add ``jobs`` waiting jobs."""
    conn = connect(path)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM jobs")
    conn.executemany(
        "INSERT INTO jobs (state, payload) VALUES ('waiting', ?)",
        [(json.dumps({"n": i}),) for i in range(jobs)],
    )
    conn.execute("COMMIT")
    conn.close()


def claimer(batch: int) -> Callable[[sqlite3.Connection], list[Row]]:
    """One claim transaction of up to ``batch`` jobs (batch 1: bench/sqlite_queue.py's raw (a))."""
    where = "id = (SELECT id" if batch == 1 else "id IN (SELECT id"
    sql = (
        f"UPDATE jobs SET state = 'active' WHERE {where} FROM jobs WHERE state = 'waiting' "
        f"ORDER BY id LIMIT {batch}) RETURNING id, payload"
    )

    def claim(conn: sqlite3.Connection) -> list[Row]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(sql).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for _id, payload in rows:
            json.loads(payload)  # what a worker does with the job's data
        return rows

    return claim


def completer(rows: list[Row]) -> Callable[[sqlite3.Connection], None]:
    """One transaction marking the claimed jobs done."""
    ids = [(row[0],) for row in rows]

    def complete(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("UPDATE jobs SET state = 'done' WHERE id = ?", ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    return complete


def plain_loop(path: str, jobs: int, batch: int) -> float:
    refill(path, jobs)
    conn = connect(path)
    claim = claimer(batch)
    started = time.perf_counter()
    done = 0
    while rows := claim(conn):
        completer(rows)(conn)
        done += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    assert done == jobs, (done, jobs)
    return jobs / elapsed


class OwnThread:
    """A thread that owns one connection and runs the functions it is sent, in order."""

    def __init__(self, path: str, *, blocking_handback: bool) -> None:
        self._path = path
        self._blocking = blocking_handback
        self._token = anyio.lowlevel.current_token()
        self._requests: queue.Queue[tuple[Callable[[sqlite3.Connection], Any], Any] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._run, name="sqlite-owner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while (request := self._requests.get()) is not None:
                fn, reply = request
                try:
                    outcome: tuple[bool, Any] = (True, fn(conn))
                except BaseException as exc:
                    outcome = (False, exc)
                if self._blocking:
                    anyio.from_thread.run_sync(reply, outcome, token=self._token)
                else:
                    token = self._token
                    token.backend_class.run_sync_soon(reply, (outcome,), token.native_token)
        finally:
            conn.close()

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        done = anyio.Event()
        result: list[tuple[bool, Any]] = []

        def reply(outcome: tuple[bool, Any]) -> None:  # runs on the event loop
            result.append(outcome)
            done.set()

        self._requests.put_nowait((fn, reply))
        with anyio.CancelScope(shield=True):  # the thread runs it anyway: wait for the result
            await done.wait()
        ok, value = result[0]
        if not ok:
            raise value
        return value

    async def close(self) -> None:
        self._requests.put_nowait(None)
        await anyio.to_thread.run_sync(self._thread.join)


async def timed(jobs: int, batch: int, call: Call) -> float:
    claim = claimer(batch)
    started = time.perf_counter()
    done = 0
    while rows := await call(claim):
        await call(completer(rows))
        done += len(rows)
    elapsed = time.perf_counter() - started
    assert done == jobs, (done, jobs)
    return jobs / elapsed


async def run_mode(path: str, jobs: int, batch: int, mode: str) -> float:
    refill(path, jobs)
    if mode.startswith("own thread"):
        owner = OwnThread(path, blocking_handback="from_thread" in mode)
        try:
            return await timed(jobs, batch, owner.call)
        finally:
            await owner.close()
    conn = connect(path)
    try:
        if mode == "direct":

            async def direct(fn: Callable[[sqlite3.Connection], Any]) -> Any:
                await anyio.lowlevel.checkpoint()
                return fn(conn)

            return await timed(jobs, batch, direct)

        async def hop(fn: Callable[[sqlite3.Connection], Any]) -> Any:
            return await anyio.to_thread.run_sync(fn, conn)

        return await timed(jobs, batch, hop)
    finally:
        conn.close()


MODES = (
    "direct",
    "to_thread",
    "own thread, from_thread.run_sync",
    "own thread, run_sync_soon",
)
BATCHES = (1, 10)


def row(label: str, rates: dict[int, float], base: dict[int, float]) -> str:
    cells = "".join(f"{rates[b]:>12,.0f} ({rates[b] / base[b]:>4.0%})" for b in BATCHES)
    return f"{label:<42}{cells}"


def main(args: argparse.Namespace, path: str) -> None:
    backends = ("asyncio", "trio") if args.backend == "both" else (args.backend,)
    rows = [("plain", "plain loop, no event loop")]
    rows += [(backend, f"{backend}, {mode}") for backend in backends for mode in MODES]
    plain_loop(path, args.jobs, 1)  # warm-up: file size, page cache
    rates: dict[tuple[str, int], list[float]] = {}
    # Round robin, one run of each figure per round: a burst of load elsewhere on the machine
    # then lands on every mode alike.
    for _ in range(args.repeat):
        for backend, label in rows:
            for batch in BATCHES:
                if backend == "plain":
                    rate = plain_loop(path, args.jobs, batch)
                else:
                    mode = label.split(", ", 1)[1]
                    rate = anyio.run(run_mode, path, args.jobs, batch, mode, backend=backend)
                rates.setdefault((label, batch), []).append(rate)
    median = {key: statistics.median(values) for key, values in rates.items()}
    base = {b: median[rows[0][1], b] for b in BATCHES}
    header = "".join(f"{f'batch {b}':>19}" for b in BATCHES)
    print(f"\n{'jobs/s (share of the plain loop)':<42}{header}")
    for _backend, label in rows:
        print(row(label, {b: median[label, b] for b in BATCHES}, base))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--dir", default=None, help="where the database file goes (default: tmp)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-", dir=options.dir) as folder:
        db = os.path.join(folder, "modes.db")
        create(db)
        print(f"{options.jobs:,} jobs per run, median of {options.repeat}; file: {db}")
        print("jobs/s = claim + complete; (x%) = share of the plain loop at the same batch size")
        main(options, db)
