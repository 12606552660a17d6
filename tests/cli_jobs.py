"""Processors for tests/test_cli.py's ``conveyor worker`` processes (imported by MODULE:FUNCTION).

A job's data names a folder (``{"dir": ...}``) the test watches: ``hold`` (and ``sync_hold``)
touches ``started-<job id>`` there when it starts, then runs until the test creates
``release``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio

from conveyor import Job

NOT_CALLABLE = 42


async def hold(job: Job) -> str:
    if job.name == "boom":
        raise ValueError("boom")
    folder = anyio.Path(str(job.data["dir"]))
    await (folder / f"started-{job.id}").touch()
    # The test, another process, decides when: a file it creates is what this one can watch.
    while not await (folder / "release").exists():  # noqa: ASYNC110
        await anyio.sleep(0.02)
    return f"done {job.data['n']}"


async def echo(job: Job) -> Any:
    if job.name == "boom":
        raise ValueError("boom")
    return job.data


def sync_echo(job: Job) -> Any:
    """A plain function: the worker runs it in a thread."""
    return job.data


def sync_hold(job: Job) -> str:
    """``hold`` as a plain function, which the worker runs in a thread it cannot interrupt."""
    folder = Path(str(job.data["dir"]))
    (folder / f"started-{job.id}").touch()
    while not (folder / "release").exists():
        time.sleep(0.02)
    return "done"
