"""A worker process on a shared store, for the multi-process tests (tests/processes.py).

    python tests/worker_process.py STORE_URL QUEUE OUT [--concurrency N] [--hang NAME]
        [--lock-duration S] [--stalled-interval S] [--poll-interval S] [--allow-errors]

Runs a worker until SIGTERM or SIGINT, then stops gracefully and exits 0, or 3 if the worker
reported any error (a "database is locked" among them) and ``--allow-errors`` is not given.
Each job it completes appends a line ``<job id> <pid> <start time> <data>`` to OUT. A job named
``--hang`` never finishes (for the SIGKILL test). The process tells the test through the store's
events, which cross processes: ``test-ready`` once its worker runs, ``test-hung`` for a hung job.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import anyio

from conveyor import Job, StoreEvent, open_store, open_worker


async def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    errors: list[str] = []

    async def process(job: Job) -> str:
        started = time.time()
        if args.hang is not None and job.name == args.hang:
            await store.publish(StoreEvent("test-hung", args.queue, job.id, {}))
            await anyio.sleep_forever()
        line = f"{job.id} {os.getpid()} {started!r} {json.dumps(job.data)}\n"
        async with await anyio.open_file(out, "a") as f:
            await f.write(line)
        return "ok"

    def on_error(event: StoreEvent) -> None:
        errors.append(repr(event.data))
        print(f"worker error: {event.data}", file=sys.stderr, flush=True)

    async with open_store(args.store) as store:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_worker(
                args.queue,
                process,
                store=store,
                concurrency=args.concurrency,
                lock_duration=args.lock_duration,
                stalled_interval=args.stalled_interval,
                poll_interval=args.poll_interval,
            ) as worker:
                worker.events.on("error", on_error)
                await store.publish(StoreEvent("test-ready", args.queue, None, {}))
                async for _signal in signals:
                    break
    return 3 if errors and not args.allow_errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("queue")
    parser.add_argument("out")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--hang")
    parser.add_argument("--lock-duration", type=float, default=30.0)
    parser.add_argument("--stalled-interval", type=float, default=30.0)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--allow-errors", action="store_true")
    parsed = parser.parse_args()
    sys.exit(anyio.run(main, parsed, backend=parsed.backend))
