"""One worker process of the PostgreSQL deployment example: it checksums files, a job per file.

::

    CONVEYOR_STORE_URL=postgresql://conveyor_app@db.internal/app?schema=conveyor \\
        python checksum_worker.py [--concurrency 8] [--trio]

This module is the worker's entry point and holds its processors. Start as many processes as
the work needs, on as many hosts as reach the database (``launcher.py`` starts N of them, or
see ``Procfile`` and ``conveyor-checksum@.service``). Each one:

- opens the store once and runs one worker for the ``checksums`` queue;
- on SIGTERM or SIGINT stops claiming, gives running jobs ``--shutdown-timeout`` seconds to
  finish, hands the rest back to the queue (another process takes them at once), and exits 0;
- logs a line per job it runs (``checksummed <job id> ...``), and per failure.

The jobs read files by path, so every worker host must see the same files (a shared volume).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
from pathlib import Path

import anyio
import anyio.to_thread

import conveyor

QUEUE = "checksums"
DEFAULT_STORE_URL = "postgresql://postgres@127.0.0.1/conveyor"
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("checksums")


def store_url() -> str:
    """``CONVEYOR_STORE_URL``, the one setting every process of the deployment shares."""
    return os.environ.get("CONVEYOR_STORE_URL") or DEFAULT_STORE_URL


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read 1 MiB at a time (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def checksum(job: conveyor.Job) -> dict[str, conveyor.store.JsonValue]:
    """The processor of ``checksum`` jobs: ``{"path": ...}`` -> its SHA-256 and size.

    The hashing runs in a thread, so a big file never holds up the event loop (nor the lock
    renewals of the other jobs). A file that is not there fails the job at once: retrying
    would not bring it back. Other errors (a flaky network mount, say) are retried as the job's
    ``attempts`` allow.
    """
    data = job.data
    path = Path(str(data.get("path"))) if isinstance(data, dict) else None
    if path is None or not path.is_absolute():
        await job.discard()
        raise ValueError(f"expected {{'path': <absolute path>}}, got {data!r:.100}")
    try:
        sha256, size = await anyio.to_thread.run_sync(hash_file, path)
    except FileNotFoundError:
        await job.discard()
        raise
    log.info("checksummed %s %s sha256=%s size=%d", job.id, path, sha256, size)
    return {"path": str(path), "sha256": sha256, "size": size}


def log_events(worker: conveyor.Worker) -> None:
    worker.events.on("retrying", lambda e: log.warning("%s will retry: %s", e.job_id, e.data))
    worker.events.on("failed", lambda e: log.warning("%s failed: %s", e.job_id, e.data))
    worker.events.on("stalled", lambda e: log.warning("%s stalled: %s", e.job_id, e.data))
    worker.events.on("error", lambda e: log.error("worker error: %s", e.data))


async def run(args: argparse.Namespace) -> None:
    """Run one worker until SIGTERM or SIGINT, then shut it down gracefully."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            conveyor.open_store(store_url()) as store,
            conveyor.open_worker(
                QUEUE,
                checksum,
                store=store,
                concurrency=args.concurrency,
                lock_duration=args.lock_duration,
                stalled_interval=args.lock_duration,
                shutdown_timeout=args.shutdown_timeout,
                poll_interval=args.poll_interval,
            ) as worker,
        ):
            log_events(worker)
            log.info(
                "worker %s ready (%s, %s, concurrency %d)",
                worker.id, args.backend, store, args.concurrency,
            )  # fmt: skip
            async for signum in signals:
                log.info("%s: stopping after the running jobs", signal.Signals(signum).name)
                break
    log.info("worker stopped")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one checksum worker process.")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs run at once (8)")
    parser.add_argument("--trio", dest="backend", action="store_const", const="trio",
                        default="asyncio", help="run under trio instead of asyncio")  # fmt: skip
    parser.add_argument("--shutdown-timeout", type=float, default=20.0,
                        help="seconds running jobs get to finish on SIGTERM (20)")  # fmt: skip
    parser.add_argument("--lock-duration", type=float, default=30.0,
                        help="seconds a claim holds a job without renewal: how long a crashed "
                             "process's jobs wait before another takes them back (30)")  # fmt: skip
    parser.add_argument("--poll-interval", type=float, default=5.0,
                        help="seconds between looks for jobs when no event wakes the worker; "
                             "lower it with listen=false (5)")  # fmt: skip
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    anyio.run(run, parsed, backend=parsed.backend)
