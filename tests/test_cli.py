"""The ``conveyor`` command line, run as a user runs it: each command in its own process, on
SQLite and on PostgreSQL (a schema of its own per test), checked by its output and exit status.

Worker processes run tests/cli_jobs.py's processors; the tests wait on what those processors
and the worker print or write (with deadlines), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Unpack

import anyio
import pytest

from conveyor import JobData, JobState, Queue, open_store, open_worker
from conveyor._queue import JobOptionsDict

from .cli_jobs import echo

REPO = Path(__file__).parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"}
ENV.pop("CONVEYOR_STORE_URL", None)
TIMEOUT = 60.0


def conveyor(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m conveyor ARGS`` from the repository root (where ``tests.cli_jobs``
    imports) and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=TIMEOUT,
    )


def ok(*args: str, stdin: str | None = None) -> str:
    """Run a command that must succeed; return its stdout."""
    done = conveyor(*args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store of the test's own: a SQLite file, or a PostgreSQL schema of the run's database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cli.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn + ("&" if "?" in dsn else "?") + f"schema=cli_{uuid.uuid4().hex[:12]}"


# -- in-process helpers (setting up and checking, on the same store) ---------------------------


def add_jobs(url: str, jobs: list[tuple[str, Any]], **options: Unpack[JobOptionsDict]) -> list[str]:
    async def body() -> list[str]:
        async with open_store(url) as store:
            added = await Queue("q", store=store).add_bulk([(n, d, options) for n, d in jobs])
            return [job.id for job in added]

    return anyio.run(body)


def read_jobs(url: str, queue: str = "q") -> dict[str, JobData]:
    async def body() -> dict[str, JobData]:
        async with open_store(url) as store:
            found = {}
            for state in JobState:
                for job in await Queue(queue, store=store).get_jobs(state, 0, -1):
                    found[job.id] = job.record
            return found

    return anyio.run(body)


def run_jobs(url: str, queue: str = "q") -> None:
    """Run the queue's waiting jobs through an in-process worker (tests/cli_jobs.echo)."""

    async def body() -> None:
        async with open_store(url) as store:
            q = Queue(queue, store=store)
            async with open_worker(queue, echo, store=store, concurrency=4, poll_interval=0.05):
                with anyio.fail_after(TIMEOUT):
                    while True:
                        counts = await q.get_job_counts()
                        if not counts[JobState.WAITING] and not counts[JobState.ACTIVE]:
                            return
                        await anyio.sleep(0.02)

    anyio.run(body)


# -- queues and jobs ------------------------------------------------------------------------------


def test_read_and_manage_commands(store_url: str) -> None:
    s = ("--store", store_url)
    hello = ok_json("add", "q", "hello", "--data", '{"to": "a@example.com"}', *s)
    assert (hello["queue"], hello["state"]) == ("q", "waiting")
    assert hello["data"] == {"to": "a@example.com"}
    later = ok_json(
        "add", "q", "later", "--delay", "1h", "--priority", "3", "--attempts", "2",
        "--backoff", "exponential:1s", "--job-id", "later-1", *s,
    )  # fmt: skip
    assert (later["id"], later["state"], later["priority"]) == ("later-1", "delayed", 3)
    assert later["opts"]["attempts"] == 2
    assert later["opts"]["backoff"] == {"type": "exponential", "delay": 1.0}
    first = ok_json("add", "q", "mail", "--data", "[1]", "--dedup-key", "k", "--group", "g1", *s)
    again = ok_json("add", "q", "mail", "--data", "[2]", "--dedup-key", "k", *s)
    assert again["id"] == first["id"]
    assert first["group"] == "g1"
    boom = ok("add", "q", "boom", *s).split()[0]  # human output: the id first

    [queue] = ok_json("queues", *s)
    assert (queue["name"], queue["paused"]) == ("q", False)
    assert queue["counts"] == {
        "waiting": 3, "delayed": 1, "active": 0, "waiting-children": 0, "completed": 0,
        "failed": 0,
    }  # fmt: skip
    listed = ok_json("jobs", "q", *s)
    assert [job["id"] for job in listed] == [hello["id"], first["id"], boom, "later-1"]
    delayed = ok("jobs", "q", "--state", "delayed", *s)
    assert "later-1" in delayed
    assert hello["id"] not in delayed
    shown = ok_json("job", "q", hello["id"], *s)
    assert (shown["name"], shown["children"], shown["returnvalue"]) == ("hello", [], None)
    assert set(shown) >= {"id", "state", "data", "opts", "failed_reason", "logs", "parent"}
    human = ok("job", "q", hello["id"], *s)
    assert hello["id"] in human
    assert "a@example.com" in human

    assert ok_json("pause", "q", *s) == {"queue": "q", "paused": True, "paused_names": []}
    assert ok_json("pause", "q", "--name", "boom", *s)["paused_names"] == ["boom"]
    assert ok_json("resume", "q", *s) == {"queue": "q", "paused": False, "paused_names": ["boom"]}
    assert ok("resume", "q", "--name", "boom", *s) == "queue 'q' runs\n"
    assert ok_json("promote", "q", "later-1", *s) == {"queue": "q", "promoted": 1}

    run_jobs(store_url)  # boom fails, the rest complete
    counts = {job.state for job in read_jobs(store_url).values()}
    assert counts == {JobState.COMPLETED, JobState.FAILED}
    assert ok_json("retry", "q", *s) == {"queue": "q", "retried": 1}
    cleaned = ok_json("clean", "q", "--state", "completed", "--grace", "0s", "--yes", *s)
    assert cleaned == {"queue": "q", "state": "completed", "removed": 3}
    [cancelled] = ok_json("cancel", "q", boom, *s)  # waiting: it fails at once
    assert cancelled["state"] == "failed"
    assert cancelled["cancelled_at"] is not None
    assert ok_json("remove", "q", boom, *s) == {"queue": "q", "removed": [boom]}
    add_jobs(store_url, [("x", None)], delay="5m")
    assert ok_json("drain", "q", "--yes", *s) == {"queue": "q", "removed": 1}
    add_jobs(store_url, [("y", None)])
    assert ok_json("obliterate", "q", "--yes", *s) == {"queue": "q", "obliterated": True}
    assert read_jobs(store_url) == {}
    assert ok_json("migrate", *s)["migrated"] is True


def test_destructive_commands_ask_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ask.db"
    add_jobs(url, [("a", None), ("b", None)])
    refused = conveyor("drain", "q", "--store", url, stdin="n\n")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1].startswith("error: aborted; nothing was changed")
    assert refused.stderr.splitlines()[0].endswith("? [y/N]: ")
    no_answer = conveyor("obliterate", "q", "--store", url)  # stdin at its end: no
    assert no_answer.returncode == 1
    assert len(read_jobs(url)) == 2
    assert "removed 2 waiting and delayed jobs" in ok("drain", "q", "--store", url, stdin="y\n")
    assert read_jobs(url) == {}


def test_store_from_the_environment_and_the_console_script(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/env.db"
    script = Path(sys.executable).with_name("conveyor")
    done = subprocess.run(
        [script, "add", "q", "n", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT,
        env={**ENV, "CONVEYOR_STORE_URL": url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] in read_jobs(url)
    stores = ok_json("stores")
    assert {"scheme": "sqlite", "object": "conveyor_stores.sqlite:SqliteStore"} in stores


# -- bad input ------------------------------------------------------------------------------------

BAD_INPUT = [
    (["queues", "--store", "foo://x"], "unknown store scheme 'foo' (installed: memory, "),
    (["worker", "no_such_module:f", "-q", "q"], "cannot import module 'no_such_module'"),
    (["worker", "tests.cli_jobs:nope", "-q", "q"], "has no attribute 'nope'"),
    (["worker", "tests.cli_jobs:NOT_CALLABLE", "-q", "q"], "is not callable"),
    (["worker", "tests.cli_jobs", "-q", "q"], "expected MODULE:FUNCTION"),
    (["add", "q", "n", "--data", "{oops"], "'--data': not JSON"),
    (["jobs", "q", "--state", "stuck"], "unknown state 'stuck'"),
    (["add", "q", "n", "--delay", "soonish"], "cannot read 'soonish' as a duration"),
    (["worker", "tests.cli_jobs:echo", "-q", "q", "--lock-duration", "0"], "greater than zero"),
    (["worker", "tests.cli_jobs:echo", "-q", "q", "--limiter", "ten"], "MAX/DURATION"),
    (["add", "q", "n", "--backoff", "linear:1s"], "expected fixed:DELAY"),
    (["jobs"], "Missing argument 'QUEUE'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_status_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = conveyor(*args, *([] if "--store" in args else ["--store", "memory://"]))
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    assert message in line


def test_what_the_store_refuses_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/refuse.db"
    done = conveyor("job", "q", "nope", "--store", url)
    assert (done.returncode, done.stderr) == (1, "error: no job 'nope' in queue 'q'\n")
    missing = conveyor("queues", "--store", f"sqlite:///{tmp_path}/no/such/dir.db")
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()
    assert line.startswith("error: ")
    assert "does not exist" in line


def test_commands_given_ids_check_every_id_first_and_name_the_job_refused(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/ids.db"
    s = ("--store", url)
    first, second = add_jobs(url, [("a", None), ("b", None)])
    missing = conveyor("remove", "q", first, "nope", *s)  # looked up first: nothing removed
    assert (missing.returncode, missing.stderr) == (1, "error: no job 'nope' in queue 'q'\n")
    assert set(read_jobs(url)) == {first, second}
    ok("cancel", "q", first, *s)  # waiting: it fails at once
    refused = conveyor("retry", "q", first, second, *s)  # the second is waiting
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: job '{second}': only failed or completed jobs can be retried "
        "(1 job was retried before it)\n"
    )
    assert read_jobs(url)[first].state is JobState.WAITING
    assert ok_json("remove", "q", first, first, *s) == {"queue": "q", "removed": [first]}


def test_migrate_says_when_a_store_has_no_schema() -> None:
    assert ok("migrate", "--store", "memory://") == (
        "memory://: this store has no schema; nothing to migrate\n"
    )
    assert ok_json("migrate", "--store", "memory://")["migrated"] is False


# -- worker processes -----------------------------------------------------------------------------


class Worker:
    """A ``conveyor worker`` process; its output read as it comes."""

    def __init__(self, url: str, *options: str, processor: str = "tests.cli_jobs:hold") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", processor, "-q", "q",
             "--store", url, "-v", *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        with stream:
            for line in stream:
                lines.append(line)

    def lines(self, word: str) -> list[str]:
        return [line for line in self.out if f" {word} " in f" {line}"]

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proc.poll() is None or condition(), f"exited before {what}: {self}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self}"
            time.sleep(0.01)

    def exit_code(self) -> int:
        """Wait for the process to exit, and for its output to be read to the end."""
        code = self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(TIMEOUT)
        return code

    def __repr__(self) -> str:
        return f"<worker out={''.join(self.out)!r} err={''.join(self.err)!r}>"


@pytest.fixture
def worker_processes() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.exit_code()


def started(folder: Path) -> int:
    return len(list(folder.glob("started-*")))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_lets_running_jobs_finish_and_exits_0(
    store_url: str, backend: str, tmp_path: Path, worker_processes: list[Worker]
) -> None:
    ids = add_jobs(store_url, [("hold", {"dir": str(tmp_path), "n": n}) for n in range(4)])
    worker = Worker(store_url, "--concurrency", "3", "--backend", backend)
    worker_processes.append(worker)
    worker.wait_for(lambda: started(tmp_path) == 3, "three jobs running")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for(lambda: bool(worker.lines("SIGTERM:")), "the worker to say it stops")
    assert worker.proc.poll() is None  # still running: its jobs are not done
    (tmp_path / "release").touch()
    assert worker.exit_code() == 0, worker
    assert len(worker.lines("completed")) == 3
    assert len(worker.lines("started")) == 3
    assert any(line.startswith("stopped: 3 completed") for line in worker.out), worker
    states = {job_id: job.state for job_id, job in read_jobs(store_url).items()}
    assert sorted(states.values()) == ["completed"] * 3 + ["waiting"]  # no claim after SIGTERM
    assert states[ids[3]] is JobState.WAITING


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_second_signal_cancels_running_jobs_for_the_next_worker(
    store_url: str, backend: str, tmp_path: Path, worker_processes: list[Worker]
) -> None:
    ids = add_jobs(store_url, [("hold", {"dir": str(tmp_path), "n": n}) for n in range(2)])
    # Locks and stall sweeps far beyond the test's deadlines: only a released lock lets the
    # second worker run these jobs in time.
    slow = ("--lock-duration", "5m", "--stalled-interval", "5m", "--backend", backend)
    first = Worker(store_url, "--concurrency", "2", *slow)
    worker_processes.append(first)
    first.wait_for(lambda: started(tmp_path) == 2, "two jobs running")
    first.proc.send_signal(signal.SIGINT)
    first.wait_for(lambda: bool(first.lines("SIGINT:")), "the worker to say it stops")
    first.proc.send_signal(signal.SIGTERM)
    assert first.exit_code() == 128 + signal.SIGTERM, first
    assert "cancelling 2 running jobs" in "".join(first.lines("SIGTERM:"))
    jobs = read_jobs(store_url)
    assert [(jobs[i].state, jobs[i].attempts_made, jobs[i].locked_by) for i in ids] == [
        (JobState.WAITING, 0, None)
    ] * 2

    (tmp_path / "release").touch()
    [boom] = add_jobs(store_url, [("boom", None)])
    second = Worker(store_url, "--concurrency", "2", *slow)
    worker_processes.append(second)
    second.wait_for(
        lambda: len(second.lines("completed")) == 2 and len(second.lines("failed")) == 1,
        "the jobs to complete and boom to fail",
    )
    second.proc.send_signal(signal.SIGTERM)
    assert second.exit_code() == 0, second
    jobs = read_jobs(store_url)
    assert [jobs[i].state for i in ids] == [JobState.COMPLETED] * 2
    assert [jobs[i].returnvalue for i in ids] == ["done 0", "done 1"]
    assert jobs[boom].failed_reason == "ValueError: boom"
    assert f"boom {boom}" in "".join(second.lines("failed"))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_shutdown_timeout_hands_back_a_job_its_thread_still_runs(
    backend: str, tmp_path: Path, worker_processes: list[Worker]
) -> None:
    url = f"sqlite:///{tmp_path}/thread.db"
    [job_id] = add_jobs(url, [("hold", {"dir": str(tmp_path), "n": 0})])
    worker = Worker(
        url, "--shutdown-timeout", "200ms", "--backend", backend,
        processor="tests.cli_jobs:sync_hold",
    )  # fmt: skip
    worker_processes.append(worker)
    worker.wait_for(lambda: started(tmp_path) == 1, "the job to run")
    worker.proc.send_signal(signal.SIGTERM)
    # The thread runs until "release", which never comes: the process must not wait for it.
    assert worker.exit_code() == 0, worker
    assert "stopped: 0 completed, 0 failed, 0 retried, 1 handed back to waiting" in worker.out[-1]
    job = read_jobs(url)[job_id]
    assert (job.state, job.attempts_made, job.locked_by) == (JobState.WAITING, 0, None)


# -- demo -----------------------------------------------------------------------------------------


def test_demo_runs_jobs_through_a_worker_and_shows_the_counts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/demo.db"
    for _run in range(2):  # the second run starts from an empty demo queue again
        started_at = time.monotonic()
        out = ok("demo", "--store", url)
        took = time.monotonic() - started_at
        assert "added 245 jobs" in out
        assert "245/245 jobs finished" in out
        assert "retrying in" in out
        assert "groups served round-robin: " in out
        assert "flow: assemble ran after its 3 parts" in out
        assert "243 completed, 2 failed" in out
        assert took < 10, took
