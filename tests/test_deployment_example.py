"""The PostgreSQL deployment example (examples/postgres_deployment) run as it would be in
production: its launcher supervising worker processes, its producer adding a batch, its monitor
reading the counts, each a real process on the test database; and its roles.sql, with the
application role doing all of it on a schema the owner role migrated."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import psycopg
import pytest
from psycopg import sql

from conveyor import JobState, Queue, open_store

from .pg import as_url

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).parent.parent / "examples" / "postgres_deployment"
DEADLINE = 60.0
"""Seconds any one wait may take: generous, the waits end as soon as their condition holds."""


def with_params(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


def make_files(root: Path, count: int) -> dict[str, str]:
    """``count`` files of different contents under ``root``; returns path -> SHA-256."""
    root.mkdir()
    expected = {}
    for i in range(count):
        content = f"file {i}\n".encode() * (i % 13 + 1)
        path = root / f"{i:04d}.txt"
        path.write_bytes(content)
        expected[str(path.resolve())] = hashlib.sha256(content).hexdigest()
    return expected


def environment(url: str) -> dict[str, str]:
    return {**os.environ, "CONVEYOR_STORE_URL": url}


@asynccontextmanager
async def launched(url: str, log: Path, *args: str) -> AsyncIterator[anyio.abc.Process]:
    """launcher.py with ``args``, its output (and its workers') in ``log``. The launcher leads
    a process group of its own: if it has not exited when the block ends, the group is killed,
    workers included."""
    command = [sys.executable, str(EXAMPLE / "launcher.py"), *args]
    with log.open("wb") as out:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environment(url),
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()


async def wait_for_log(log: Path, text: str, count: int, process: anyio.abc.Process) -> None:
    """Wait until ``text`` appears ``count`` times in ``log``."""
    with anyio.fail_after(DEADLINE):
        while (output := await anyio.Path(log).read_text()).count(text) < count:
            assert process.returncode is None, output
            await anyio.sleep(0.05)


async def run_script(script: str, url: str, *args: str) -> str:
    """Run one of the example's scripts to the end; return its output (stdout, then stderr)."""
    command = [sys.executable, str(EXAMPLE / script), *args]
    with anyio.fail_after(DEADLINE):
        done = await anyio.run_process(command, env=environment(url), check=False)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    return output


async def deploy_and_check(
    admin_url: str,
    app_url: str,
    tmp_path: Path,
    *,
    processes: int,
    total: int,
    worker_args: tuple[str, ...] = (),
) -> str:
    """Start the launcher (as ``app_url``'s role), produce ``total`` jobs once its workers are
    ready, wait until the store says every job completed, SIGTERM the launcher; then check it
    exited 0, every job completed exactly once with the right checksum, every process took
    part and the monitor agrees. ``admin_url`` is how the test itself reads the store.
    Returns the launcher's output."""
    expected = make_files(tmp_path / "files", total)
    log = tmp_path / "launcher.log"
    args = ("--processes", str(processes), "--concurrency", "4", *worker_args)
    async with open_store(admin_url) as store, launched(app_url, log, *args) as launcher:
        queue = Queue("checksums", store=store)
        await wait_for_log(log, "ready", processes, launcher)
        files = str(tmp_path / "files")
        produced = await run_script("producer.py", app_url, files, "--batch", "100")
        assert f"queued {total} files on 'checksums'" in produced
        with anyio.fail_after(DEADLINE):
            while (await queue.get_job_counts())[JobState.COMPLETED] < total:
                assert launcher.returncode is None, await anyio.Path(log).read_text()
                await anyio.sleep(0.1)
        launcher.send_signal(signal.SIGTERM)
        with anyio.fail_after(DEADLINE):
            code = await launcher.wait()
        output = await anyio.Path(log).read_text()
        assert code == 0, output
        counts = await queue.get_job_counts()
        jobs = await queue.get_jobs(JobState.COMPLETED, 0, -1)

    assert output.count("exited with 0") == processes, output
    assert "restarting" not in output
    assert counts[JobState.COMPLETED] == total
    assert sum(counts.values()) == total, counts
    # Exactly once: one attempt per job in the store, one run per job in the workers' logs.
    assert len(jobs) == total
    workers = set()
    for job in jobs:
        assert job.record.stalled_count == 0
        assert [a.outcome for a in job.attempt_logs] == ["completed"], job.id
        workers.add(job.attempt_logs[0].worker_id)
    assert {job.returnvalue["path"]: job.returnvalue["sha256"] for job in jobs} == expected
    runs = Counter(re.findall(r"checksummed (\w+) ", output))
    assert set(runs) == {job.id for job in jobs}
    assert set(runs.values()) == {1}, "a job ran twice"
    assert len(workers) == processes, "every worker process took part"
    [row] = map(json.loads, (await run_script("monitor.py", app_url, "--json")).splitlines())
    assert (row["queue"], row["completed"], row["waiting"], row["active"]) == (
        "checksums",
        total,
        0,
        0,
    )
    return output


async def test_the_launcher_runs_every_job_exactly_once(
    pg_dsn: str, tmp_path: Path, anyio_backend: str
) -> None:
    """Two worker processes (under the test's backend) and 400 files."""
    url = with_params(pg_dsn, schema=f"deployment_{anyio_backend}")
    backend = ("--trio",) if anyio_backend == "trio" else ()
    output = await deploy_and_check(url, url, tmp_path, processes=2, total=400, worker_args=backend)
    assert output.count(f"ready ({anyio_backend}, ") == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_roles_of_roles_sql_suffice(pg_dsn: str, tmp_path: Path) -> None:
    """roles.sql's owner migrates the schema; its application role, with
    ``auto_migrate=false``, then runs the producer, the launcher and the monitor."""
    database = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
    owner, app, schema = f"conveyor_owner_{suffix}", f"conveyor_app_{suffix}", "jobs"
    script = (EXAMPLE / "roles.sql").read_text()
    variables = {"db": database, "schema": schema, "owner": owner, "app": app}
    # psql's :"name" is the variable quoted as an identifier; \set lines are psql's own.
    statements = re.sub(
        r':"(\w+)"', lambda m: sql.Identifier(str(variables[m[1]])).as_string(None), script
    )
    statements = "\n".join(line for line in statements.splitlines() if not line.startswith("\\"))
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        try:
            admin.execute(statements.encode())
        except psycopg.errors.InsufficientPrivilege as exc:
            pytest.skip(f"the test server's user cannot create roles: {exc}")
        try:
            owner_url = as_url(psycopg.conninfo.make_conninfo(pg_dsn, user=owner))
            app_url = as_url(psycopg.conninfo.make_conninfo(pg_dsn, user=app))
            try:
                psycopg.connect(owner_url, connect_timeout=5).close()
            except psycopg.OperationalError as exc:
                pytest.skip(f"the test server does not let a new role log in: {exc}")
            async with open_store(with_params(owner_url, schema=schema)):
                pass  # the owner migrates
            await deploy_and_check(
                with_params(pg_dsn, schema=schema),
                with_params(app_url, schema=schema, auto_migrate="false"),
                tmp_path,
                processes=1,
                total=50,
            )
        finally:
            for role in (app, owner):  # one at a time: both hold the default privileges
                admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
