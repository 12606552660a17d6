"""Run N checksum worker processes on this host and look after them.

::

    CONVEYOR_STORE_URL=postgresql://... python launcher.py --processes 4 [WORKER OPTIONS...]

Options it does not know (``--concurrency 8``, ``--trio``, ...) go to every
``checksum_worker.py`` it starts. For a container whose one command is "the workers", or a
development machine; under systemd, prefer one unit per process (``conveyor-checksum@.service``).

- **Restarts.** A worker that exits on its own (a crash, an out-of-memory kill) is started
  again after a pause that doubles from 1 s up to 30 s while it keeps failing, and starts
  over at 1 s once a run lasted a minute. The jobs it was running come back through the other
  workers' stall sweeps when their locks expire.
- **Shutdown.** SIGTERM or SIGINT is passed on to every worker as SIGTERM; each finishes its
  running jobs and exits. A worker still running after ``--stop-timeout`` seconds is killed.
  The launcher exits 0 when every worker exited 0, else 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
from checksum_worker import LOG_FORMAT

WORKER = Path(__file__).with_name("checksum_worker.py")
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN = 60.0
"""Seconds after which a run counts as healthy: the next restart waits the first delay again."""

log = logging.getLogger("launcher")


class Launcher:
    """The supervisor: one task per worker slot, one for signals."""

    def __init__(self, processes: int, worker_args: list[str], stop_timeout: float) -> None:
        self.command = [sys.executable, str(WORKER), *worker_args]
        self.slots = processes
        self.stop_timeout = stop_timeout
        self.running: dict[int, anyio.abc.Process] = {}
        self.exit_codes: dict[int, int] = {}
        self.stopping = anyio.Event()

    async def run(self) -> int:
        async with anyio.create_task_group() as tg:
            await tg.start(self._handle_signals)
            async with anyio.create_task_group() as slots:
                for slot in range(self.slots):
                    slots.start_soon(self._supervise, slot, name=f"worker slot {slot}")
            tg.cancel_scope.cancel()  # every worker is gone: stop listening for signals
        failed = {slot: code for slot, code in self.exit_codes.items() if code != 0}
        if failed:
            log.error("workers that did not stop cleanly (slot: exit code): %s", failed)
        return 1 if failed else 0

    async def _supervise(self, slot: int) -> None:
        """Keep one worker process running until the launcher stops."""
        delay = FIRST_RESTART_DELAY
        while True:
            started = anyio.current_time()
            # The worker shares the launcher's stdout and stderr (and so its log).
            async with await anyio.open_process(
                self.command, stdin=subprocess.DEVNULL, stdout=None, stderr=None
            ) as process:
                self.running[slot] = process
                log.info("slot %d: started worker pid %d", slot, process.pid)
                if self.stopping.is_set():  # the signal came while it was starting
                    process.send_signal(signal.SIGTERM)
                code = await process.wait()
                del self.running[slot]
            if self.stopping.is_set():
                self.exit_codes[slot] = code
                log.info("slot %d: worker pid %d exited with %d", slot, process.pid, code)
                return
            if anyio.current_time() - started >= HEALTHY_RUN:
                delay = FIRST_RESTART_DELAY
            log.warning(
                "slot %d: worker pid %d exited with %d; restarting in %.0f s",
                slot, process.pid, code, delay,
            )  # fmt: skip
            with anyio.move_on_after(delay):
                await self.stopping.wait()
            if self.stopping.is_set():
                self.exit_codes[slot] = code  # it died, and was not stopped: that is a failure
                return
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _handle_signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.running))
                self.stopping.set()
                for process in self.running.values():
                    process.send_signal(signal.SIGTERM)
                break
        await anyio.sleep(self.stop_timeout)
        for slot, process in self.running.items():
            log.error("slot %d: worker pid %d still running; killing it", slot, process.pid)
            process.kill()


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="Run N checksum worker processes; other options go to each worker."
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="seconds workers get to exit after SIGTERM before SIGKILL (30); "
                             "keep it above the workers' --shutdown-timeout")  # fmt: skip
    args, worker_args = parser.parse_known_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if not math.isfinite(args.stop_timeout) or args.stop_timeout < 0:
        parser.error("--stop-timeout must be a number of seconds")
    return args, worker_args


def main() -> None:
    args, worker_args = parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    launcher = Launcher(args.processes, worker_args, args.stop_timeout)
    sys.exit(anyio.run(launcher.run))


if __name__ == "__main__":
    main()
