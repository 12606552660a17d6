"""Print the job counts of every queue in the store: once, or every few seconds.

::

    CONVEYOR_STORE_URL=postgresql://... python monitor.py [--watch 5] [--json]

    queue         waiting  delayed  active  completed  failed  head age  done/5 min  failed/5 min
    checksums         120        0      16       3864       2      1.2s        3864             2

``head age`` is how long the job at the head of the queue (the next one a worker will take)
has waited: the number to alert on, since it grows when the workers fall behind whatever the
reason. ``done/5 min`` and ``failed/5 min`` come from the store's per-minute metrics, counted
across every worker. ``--json`` prints one JSON object per queue and sample, for scripts.
"""

from __future__ import annotations

import argparse
import json
import signal
from datetime import timedelta
from typing import Any

import anyio
from checksum_worker import store_url

import conveyor

STATES = ["waiting", "delayed", "active", "completed", "failed"]
COLUMNS = ["queue", *STATES, "head age", "done/5 min", "failed/5 min"]


async def sample(store: conveyor.Store) -> list[dict[str, Any]]:
    """One row per queue: counts by state, the head's age, and the last 5 minutes' outcomes."""
    now = await store.now()
    since = now - timedelta(minutes=5)
    rows = []
    for name in await store.list_queues():
        queue = conveyor.Queue(name, store=store)
        counts = await queue.get_job_counts()
        head = await queue.get_jobs(conveyor.JobState.WAITING, 0, 0)
        created = head[0].created_at if head else None
        done = await queue.get_metrics(conveyor.MetricKind.COMPLETED, start=since)
        failed = await queue.get_metrics(conveyor.MetricKind.FAILED, start=since)
        rows.append(
            {
                "queue": name,
                "paused": await queue.is_paused(),
                **{state: counts[conveyor.JobState(state)] for state in STATES},
                "waiting_children": counts[conveyor.JobState.WAITING_CHILDREN],
                "head_age_seconds": None if created is None else (now - created).total_seconds(),
                "completed_5min": sum(bucket.count for bucket in done.buckets),
                "failed_5min": sum(bucket.count for bucket in failed.buckets),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [COLUMNS]
    for row in rows:
        age = row["head_age_seconds"]
        name = row["queue"] + (" (paused)" if row["paused"] else "")
        lines.append(
            [name, *(str(row[state]) for state in STATES),
             "-" if age is None else f"{age:.1f}s",
             str(row["completed_5min"]), str(row["failed_5min"])]
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )  # fmt: skip


async def monitor(watch: float | None, as_json: bool) -> None:
    async with conveyor.open_store(store_url()) as store:
        while True:
            rows = await sample(store)
            if as_json:
                for row in rows:
                    print(json.dumps(row), flush=True)
            else:
                print(table(rows) if rows else "(no queues)", flush=True)
            if watch is None:
                return
            await anyio.sleep(watch)
            if not as_json:
                print(flush=True)


async def main(args: argparse.Namespace) -> None:
    """Run the monitor; SIGINT or SIGTERM ends ``--watch`` quietly."""
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _signum in signals:
                    tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        await monitor(args.watch, args.json)
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the job counts of every queue.")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS")
    parser.add_argument("--json", action="store_true", help="one JSON object per queue")
    parsed = parser.parse_args()
    if parsed.watch is not None and not parsed.watch > 0:
        parser.error("--watch takes a positive number of seconds")
    anyio.run(main, parsed)
