"""The web example's worker: runs the link-preview jobs that ``app.py`` adds.

::

    CONVEYOR_STORE_URL=sqlite:///web-demo.db python examples/web/worker.py [--trio]
        [--concurrency N] [--shutdown-timeout SECONDS]

The app and the worker share nothing but the store, so the app can run under asyncio (uvicorn)
while this worker runs under trio. Run as many workers as you like, on any host that reaches
the store (for SQLite: the same host). SIGINT or SIGTERM stops claiming jobs, lets the running
ones finish within ``--shutdown-timeout``, hands back the rest, and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

import anyio
import previews

import conveyor

log = logging.getLogger("previews.worker")


def log_events(worker: conveyor.Worker) -> None:
    """Log what the worker does: one line per finished attempt, and its errors."""
    worker.events.on("completed", lambda e: log.info("%s completed: %s", e.job_id, e.data))
    worker.events.on("retrying", lambda e: log.warning("%s will retry: %s", e.job_id, e.data))
    worker.events.on("failed", lambda e: log.warning("%s failed: %s", e.job_id, e.data))
    worker.events.on("error", lambda e: log.error("worker error: %s", e.data))


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get("CONVEYOR_STORE_URL") or "sqlite:///web-demo.db"
    async with conveyor.open_store(url) as store, previews.http_client() as client:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with conveyor.open_worker(
                previews.QUEUE,
                previews.Previewer(client),
                store=store,
                concurrency=args.concurrency,
                shutdown_timeout=args.shutdown_timeout,
            ) as worker:
                log_events(worker)
                log.info("worker %s on %s ready (%s)", worker.id, url, args.backend)
                async for signum in signals:
                    log.info("%s: finishing running jobs", signal.Signals(signum).name)
                    break
    log.info("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trio", dest="backend", action="store_const", const="trio",
                        default="asyncio", help="run under trio instead of asyncio")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=20, help="jobs run at once")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0,
                        help="seconds running jobs get to finish on SIGTERM")  # fmt: skip
    parsed = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    anyio.run(main, parsed, backend=parsed.backend)
