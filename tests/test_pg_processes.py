"""PgStore shared by worker processes: exactly-once claims, crash recovery, a server restart.
Each worker is a real process (tests/worker_process.py); they and the test share one schema."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from conveyor import JobState, Queue
from conveyor_stores.postgres import PgStore

from .pg import server_dsn
from .processes import (
    completions,
    four_processes_exactly_once,
    sigkilled_job_is_recovered,
    workers,
)

pytestmark = pytest.mark.anyio


async def _fresh(pg_dsn: str, schema: str) -> str:
    """The URL of an emptied schema of the test database."""
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.truncate_all()
    return pg_dsn + ("&" if "?" in pg_dsn else "?") + f"schema={schema}"


async def test_four_processes_complete_every_job_exactly_once(
    pg_dsn: str, tmp_path: Path, anyio_backend: str
) -> None:
    schema = f"four_{anyio_backend}"
    url = await _fresh(pg_dsn, schema)
    async with PgStore(pg_dsn, schema=schema) as store:
        await four_processes_exactly_once(url, store, tmp_path, total=10_000, batch=500)


async def test_sigkilled_worker_job_is_recovered_by_another(
    pg_dsn: str, tmp_path: Path, anyio_backend: str
) -> None:
    schema = f"kill_{anyio_backend}"
    url = await _fresh(pg_dsn, schema)
    async with PgStore(pg_dsn, schema=schema) as store:
        await sigkilled_job_is_recovered(url, store, tmp_path)


def _restart_command() -> list[str] | None:
    """How to restart the test server, when it is this machine's own cluster."""
    if "127.0.0.1" not in server_dsn() and "localhost" not in server_dsn():
        return None
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


async def test_workers_ride_out_a_server_restart(
    pg_dsn: str, tmp_path: Path, anyio_backend: str
) -> None:
    command = _restart_command()
    if command is None:
        pytest.skip("the test server is not this machine's own cluster: cannot restart it")
    total = 2000
    schema = f"restart_{anyio_backend}"
    url = await _fresh(pg_dsn, schema)
    with workers(url, tmp_path) as group:
        async with PgStore(pg_dsn, schema=schema) as store:
            queue = Queue("q", store=store)
            await queue.add_bulk([("n", n, {}) for n in range(total)])
            # The workers report the connection errors they ride out: allowed here.
            options = ["--allow-errors", "--poll-interval", "0.5"]
            outs = [group.start("w0", *options), group.start("w1", *options, backend="trio")]
            with anyio.fail_after(120):
                while True:  # the workers' own record of what they ran: polled
                    if len(await completions(outs)) >= total // 10:
                        break
                    await anyio.sleep(0.05)
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run(command, capture_output=True, text=True, timeout=120)
            )
            assert done.returncode == 0, done.stderr
        # The test's own store lost its connections in the restart: use a fresh one.
        async with PgStore(pg_dsn, schema=schema) as store:
            queue = Queue("q", store=store)
            with anyio.fail_after(300):
                while True:  # the database's state: polled
                    if await queue.count(JobState.COMPLETED) >= total:
                        break
                    await anyio.sleep(0.1)
            counts = await queue.get_job_counts()
        results = group.stop_all()
    assert [code for code, _ in results] == [0, 0], results
    assert counts[JobState.COMPLETED] == total
    lines = await completions(outs)
    assert {int(line[3]) for line in lines} == set(range(total)), "a job was lost"
