"""Queue a checksum job for every file under a folder, in bulk.

::

    CONVEYOR_STORE_URL=postgresql://... python producer.py /srv/archive [--batch 500]

Each batch is one ``add_bulk`` call: one transaction and one statement on PostgreSQL, however
many jobs it holds. Workers already running are woken at commit (``NOTIFY``) and start on the
batch while the next one is being added.

A file whose current version (path, size, modification time) already has a job waiting or
running is not queued again, so running the producer twice in a row queues each file once.
The last 10,000 completed jobs are kept for inspection, older ones removed; failed jobs stay
until someone looks at them (``queue.retry_jobs()`` or ``queue.clean(...)``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
from checksum_worker import LOG_FORMAT, QUEUE, store_url

import conveyor

log = logging.getLogger("producer")


def files_under(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, by path, as absolute paths."""
    for path in sorted(root.resolve().rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path


def deduplication(path: Path) -> conveyor.Deduplication:
    """One unfinished job per version of a file (path, size, modification time)."""
    stat = path.stat()
    return conveyor.Deduplication(key=f"{path}:{stat.st_size}:{stat.st_mtime_ns}", hash=True)


def batches(paths: Iterator[Path], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for path in paths:
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def produce(root: Path, batch_size: int) -> int:
    """Add the jobs; return how many files were queued."""
    added = 0
    async with conveyor.open_store(store_url()) as store:
        queue = conveyor.Queue(QUEUE, store=store)
        for batch in batches(files_under(root), batch_size):
            jobs = await queue.add_bulk(
                [
                    (
                        "checksum",
                        {"path": str(path)},
                        {
                            "attempts": 3,
                            "backoff": conveyor.Backoff.exponential("5s", jitter=0.5),
                            "timeout": "10 minutes",
                            "remove_on_complete": 10_000,
                            "deduplication": deduplication(path),
                        },
                    )
                    for path in batch
                ]
            )
            added += len(jobs)
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description="Queue a checksum job for every file.")
    parser.add_argument("root", type=Path, help="the folder to walk")
    parser.add_argument("--batch", type=int, default=500, help="jobs per add_bulk call (500)")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a folder")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    added = anyio.run(produce, args.root, args.batch)
    log.info("queued %d files on %r", added, QUEUE)


if __name__ == "__main__":
    main()
