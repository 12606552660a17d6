"""Helpers for the multi-process tests: real worker processes (tests/worker_process.py) on a
shared store, and a watch on the events they publish through it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from conveyor import StoreEvent
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
