"""The web example (examples/web): its app served by uvicorn and its worker under trio, each a
real process on one SQLite file, driven over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "web"
DEADLINE = 30.0
"""Seconds any one wait may take: generous, the waits end as soon as their condition holds."""

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], deadline: float = DEADLINE) -> T:
    """Call ``check`` until it returns something other than ``None``; fail after ``deadline``."""
    end = time.monotonic() + deadline
    while (value := check()) is None:
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        time.sleep(0.05)
    return value


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL if it will not go); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def started(args: list[str], env: dict[str, str], log: Path) -> Iterator[Process]:
    """A process with its output in ``log``, stopped when the block ends, however it ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    process = Process(proc, log)
    try:
        yield process
    finally:
        process.stop()


def environment(store_url: str, **extra: str) -> dict[str, str]:
    """This environment with the store's URL, and no proxy between the processes."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, "CONVEYOR_STORE_URL": store_url, **extra}


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[tuple[Process, str]]:
    """uvicorn serving the app on a free port; yields the process and its base URL."""
    args = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(EXAMPLE),
            "--host", "127.0.0.1", "--port", "0"]  # fmt: skip
    with started(args, env, log) as server:

        def port() -> str | None:
            server.check_alive()
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", server.output())
            return None if found is None else found.group(1)

        yield server, f"http://127.0.0.1:{wait_for('uvicorn to listen', port)}"


def assert_graceful(server: Process) -> None:
    """SIGTERM stops uvicorn after the app's shutdown; uvicorn then re-raises the signal, so
    its exit code is -SIGTERM (or 0 on versions that do not re-raise)."""
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete" in server.output()


@dataclass
class Web:
    base: str
    client: httpx.Client
    server: Process
    worker: Process

    def add(self, url: str) -> dict[str, Any]:
        response = self.client.post(f"{self.base}/previews", json={"url": url})
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        assert response.headers["location"] == body["status_url"]
        return body

    def finished(self, status_url: str) -> dict[str, Any]:
        """Poll the job's status URL until it completes or fails."""

        def check() -> dict[str, Any] | None:
            self.server.check_alive()
            self.worker.check_alive()
            response = self.client.get(status_url)
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            return job if job["state"] in ("completed", "failed") else None

        return wait_for(f"the job at {status_url} to finish", check)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """The app under uvicorn (asyncio) and a worker under trio, on one SQLite file."""
    tmp = tmp_path_factory.mktemp("web")
    env = environment(f"sqlite:///{tmp}/web.db")
    worker_args = [sys.executable, str(EXAMPLE / "worker.py"), "--trio"]
    with ExitStack() as stack:
        server, base = stack.enter_context(serve(env, tmp / "server.log"))
        worker = stack.enter_context(started(worker_args, env, tmp / "worker.log"))

        def worker_ready() -> bool | None:
            worker.check_alive()
            return "ready (trio)" in worker.output() or None

        # (a SIGTERM before the worker listens for it would kill it, not stop it gracefully)
        wait_for("the worker to start", worker_ready)
        client = stack.enter_context(httpx.Client(trust_env=False, timeout=DEADLINE))
        yield Web(base, client, server, worker)
        assert worker.stop() == 0, worker.output()
        assert_graceful(server)
        assert "(trio)" in worker.output()


def test_a_job_added_over_http_completes_on_a_trio_worker(web: Web) -> None:
    added = web.add(f"{web.base}/")
    assert added["state"] == "waiting"
    job = web.finished(added["status_url"])
    assert job["id"] == added["id"]
    assert job["state"] == "completed", job
    assert job["result"]["status"] == 200
    assert job["result"]["title"] == "conveyor link previews"
    assert job["result"]["description"].startswith("A Starlette app")
    assert (job["attempts_made"], job["max_attempts"], job["progress"]) == (1, 3, 100)
    assert job["failed_reason"] is None
    counts = web.client.get(f"{web.base}/queues/previews").json()["counts"]
    assert counts["completed"] >= 1


def test_a_missing_page_fails_at_once_without_retries(web: Web) -> None:
    job = web.finished(web.add(f"{web.base}/no-such-page")["status_url"])
    assert job["state"] == "failed", job
    assert job["failed_reason"].startswith("PermanentError: HTTP 404")
    assert job["attempts_made"] == 1
    assert job["result"] is None


def test_the_same_url_within_a_minute_gets_the_same_job(web: Web) -> None:
    url = f"{web.base}/?same"
    assert web.add(url)["id"] == web.add(url)["id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body must be JSON"),
        (b'["https://example.com"]', "the body must be a JSON object"),
        (b"{}", 'missing field "url"'),
        (b'{"url": "https://example.com", "x": 1}', "unknown field 'x'"),
        (b'{"url": 42}', '"url" must be a non-empty string'),
        (b'{"url": "ftp://example.com/a"}', '"url" must be an absolute http:// or https:// URL'),
        (b'{"url": "/relative"}', '"url" must be an absolute http:// or https:// URL'),
    ],
)
def test_a_bad_request_gets_400_saying_why(web: Web, body: bytes, message: str) -> None:
    response = web.client.post(
        f"{web.base}/previews", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_an_unknown_job_is_404_and_a_bad_queue_name_400(web: Web) -> None:
    response = web.client.get(f"{web.base}/jobs/no-such-job")
    assert response.status_code == 404
    assert "no job 'no-such-job'" in response.json()["error"]
    response = web.client.get(f"{web.base}/queues/a%00b")
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]


def test_the_app_can_run_the_jobs_itself(tmp_path: Path) -> None:
    env = environment(f"sqlite:///{tmp_path}/web.db", CONVEYOR_WEB_WORKER="1")
    with (
        serve(env, tmp_path / "server.log") as (server, base),
        httpx.Client(trust_env=False, timeout=DEADLINE) as client,
    ):
        web = Web(base, client, server, server)
        job = web.finished(web.add(f"{base}/")["status_url"])
        assert job["state"] == "completed", job
        assert job["result"]["title"] == "conveyor link previews"
        assert_graceful(server)
