"""Helpers for the multi-process tests: real worker processes (tests/worker_process.py) on a
shared store, and a watch on the events they publish through it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from conveyor import JobState, Queue, StoreEvent
from conveyor.store import Store

WORKER = Path(__file__).with_name("worker_process.py")


class Workers:
    """Worker processes (tests/worker_process.py) on the store at ``url``."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[str], Path]] = []

    def start(self, name: str, *options: str, backend: str = "asyncio") -> Path:
        out = self.tmp / f"{name}.out"
        proc = subprocess.Popen(
            [sys.executable, WORKER, self.url, "q", out, "--backend", backend, *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append((proc, out))
        return out

    def stop_all(self) -> list[tuple[int, str]]:
        """SIGTERM every live worker; return (exit code, stderr) of each."""
        results = []
        for proc, _out in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _stdout, stderr = proc.communicate(timeout=60)
            results.append((proc.returncode, stderr))
        return results


@contextmanager
def workers(url: str, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(url, tmp_path)
    try:
        yield group
    finally:
        for proc, _out in group.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


class Watch:
    """Events of the queue from every process (the store reads them from the file)."""

    def __init__(self, store: Store) -> None:
        self.events: list[StoreEvent] = []
        self._changed = anyio.Event()
        store.subscribe("q", self._on_event)

    def _on_event(self, event: StoreEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def count(self, type_: str) -> int:
        return sum(1 for e in self.events if e.type == type_)

    def of(self, type_: str) -> list[StoreEvent]:
        return [e for e in self.events if e.type == type_]

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait (under the caller's ``fail_after``) until ``condition()`` holds."""
        while not condition():
            await self._changed.wait()


async def completions(outs: list[Path]) -> list[list[str]]:
    lines: list[list[str]] = []
    for out in outs:
        path = anyio.Path(out)
        if await path.exists():
            text = await path.read_text()
            lines.extend(line.split(" ", 3) for line in text.splitlines())
    return lines


async def four_processes_exactly_once(
    url: str, store: Store, tmp_path: Path, *, total: int, batch: int
) -> None:
    """Four worker processes (two asyncio, two trio) on the store at ``url``; ``total`` jobs
    added in batches while they run: each completes exactly once, every process takes part,
    each exits 0 and none reports a "locked" error. ``store`` is the test's own store on the
    same database."""
    with workers(url, tmp_path) as group:
        watch = Watch(store)
        queue = Queue("q", store=store)
        outs = [group.start(f"w{i}", backend="trio" if i % 2 else "asyncio") for i in range(4)]
        with anyio.fail_after(60):
            await watch.until(lambda: watch.count("test-ready") == 4)
        for start in range(0, total, batch):  # added while the workers run: claims contend
            await queue.add_bulk([("n", n, {}) for n in range(start, start + batch)])
        with anyio.fail_after(600):
            await watch.until(lambda: watch.count("completed") >= total)
        counts = await queue.get_job_counts()
        results = group.stop_all()
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    for _code, stderr in results:
        assert "locked" not in stderr
    lines = await completions(outs)
    by_id = Counter(line[0] for line in lines)
    assert len(by_id) == total
    assert set(by_id.values()) == {1}, "a job ran twice"
    assert sorted(int(line[3]) for line in lines) == list(range(total))
    assert len({line[1] for line in lines}) == 4, "every process took part"
    assert counts[JobState.COMPLETED] == total
    assert counts[JobState.WAITING] == counts[JobState.ACTIVE] == counts[JobState.FAILED] == 0


async def sigkilled_job_is_recovered(url: str, store: Store, tmp_path: Path) -> None:
    """A worker process is SIGKILLed inside a job (short locks and stall sweeps); another
    process takes the job back and completes it once, with the 20 other jobs."""
    fast = ["--lock-duration", "1", "--stalled-interval", "0.2", "--poll-interval", "0.5"]
    with workers(url, tmp_path) as group:
        watch = Watch(store)
        queue = Queue("q", store=store)
        victim = await queue.add("victim", "v")
        await queue.add_bulk([("n", n, {}) for n in range(20)])
        doomed = group.start("doomed", "--hang", "victim", "--concurrency", "1", *fast)
        with anyio.fail_after(60):
            await watch.until(lambda: watch.count("test-hung") == 1)
        assert watch.of("test-hung")[0].job_id == victim.id
        group.procs[0][0].send_signal(signal.SIGKILL)
        group.procs[0][0].wait()
        survivor = group.start("survivor", *fast)
        with anyio.fail_after(60):
            await watch.until(lambda: watch.count("completed") == 21)
        found = await queue.get_job(victim.id)
        assert found is not None
        job = found.record
        assert (job.state, job.stalled_count, job.attempts_made) == (JobState.COMPLETED, 1, 1)
        assert [a.outcome for a in job.attempt_logs] == ["stalled", "completed"]
        results = group.stop_all()
    assert results[1][0] == 0, results[1]
    lines = await completions([doomed, survivor])
    assert Counter(line[0] for line in lines)[victim.id] == 1
    assert len(lines) == 21
