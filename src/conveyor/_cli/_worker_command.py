"""``conveyor worker MODULE:FUNCTION``: a worker in the foreground, stopped by signals.

::

    open_store ─┬─ signal watcher    SIGINT / SIGTERM: the first stops claiming (running jobs
                │                    finish, within --shutdown-timeout), the second cancels
                │                    them, a third exits at once
                └─ forced scope ── open_worker ── waits for the first signal

Leaving ``open_worker``'s block cleanly is the graceful stop: the worker claims nothing more
and gives running jobs ``shutdown_timeout``. The second signal cancels the scope around the
worker; a job cancelled from outside is handed back (its lock released, its attempt not
counted), so the next worker takes it at once. The store is closed outside that scope, so it
always closes cleanly.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import click
from rich.console import RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from .._open_store import open_store
from .._worker import Batch, GroupLimits, Worker, open_worker
from ..store import Limiter, StoreEvent
from ._app import (
    DURATION,
    LIMITER,
    POSITIVE_DURATION,
    USAGE,
    CliError,
    backend_option,
    cli,
    console,
    display_url,
    run,
    store_option,
)
from ._output import short

__all__ = ["load_processor"]


def load_processor(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNCTION`` (``FUNCTION`` may be dotted), with the current directory on
    ``sys.path``; raise a :class:`CliError` that says what is wrong."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise CliError(f"expected MODULE:FUNCTION (such as tasks:send_email), got {spec!r}", USAGE)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(
                f"cannot import module {module_name!r}: no module named {exc.name!r} "
                f"(looked in {cwd} and the installed packages)",
                USAGE,
            ) from None
        raise CliError(f"importing {module_name!r} failed: {_one_line(exc)}", USAGE) from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {_one_line(exc)}", USAGE) from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(
                f"{spec!r}: {module_name!r} has no attribute {qualname!r}", USAGE
            ) from None
    if not callable(target):
        raise CliError(
            f"{spec!r} is not callable (it is {type(target).__name__}); name a function", USAGE
        )
    return target  # type: ignore[no-any-return]


def _one_line(exc: BaseException) -> str:
    text = _squeeze(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _squeeze(text: str) -> str:
    """``text`` on one line (a driver's message may span several)."""
    return " ".join(text.split())


_STYLES = {"completed": "green", "failed": "red", "retrying": "yellow", "stalled": "magenta"}


@attrs.define
class _Status:
    """What the worker did, from its events: the live line and the --verbose log."""

    queue: str
    where: str
    concurrency: int
    verbose: bool
    worker_id: str = ""
    running: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    completed: int = 0
    failed: int = 0
    retried: int = 0
    stalled: int = 0
    errors: int = 0
    phase: str = "running"
    spinner: Spinner = attrs.field(factory=lambda: Spinner("dots"))

    def on_event(self, event: StoreEvent) -> None:
        job_id = event.job_id or ""
        now = time.monotonic()
        if event.type == "active":
            name = str(event.data.get("name", ""))
            self.running[job_id] = (name, now)
            self._log("started", job_id, name)
            return
        if event.type == "error":  # what the worker rides out: the one report of it
            self.errors += 1
            message = _squeeze(str(event.data.get("message", "")))
            self.running.pop(job_id, None)
            click.echo(f"warning: {message}" + (f" (job {job_id})" if job_id else ""), err=True)
            return
        if event.type == "stalled":
            self.stalled += 1
            self._log("stalled", job_id, "", f"taken back ({event.data.get('state')})")
            return
        name, started = self.running.pop(job_id, ("", now))
        took = f"after {now - started:.2f}s"
        if event.type == "completed":
            self.completed += 1
            result = short(event.data.get("returnvalue"))
            self._log("completed", job_id, name, f"{took} -> {result}")
        elif event.type == "failed":
            self.failed += 1
            self._log("failed", job_id, name, f"{took}: {event.data.get('failed_reason')}")
        elif event.type == "retrying":
            self.retried += 1
            delay = event.data.get("delay") or 0
            reason = event.data.get("failed_reason")
            self._log("retrying", job_id, name, f"{took}, again in {delay:.2f}s: {reason}")

    def _log(self, what: str, job_id: str, name: str, detail: str = "") -> None:
        if not self.verbose:
            return
        line = Text(time.strftime("%H:%M:%S "))
        line.append(f"{what:<9}", style=_STYLES.get(what, "cyan"))
        line.append(f" {name} {job_id}" + (f" {detail}" if detail else ""))
        console.print(line, soft_wrap=True)

    def summary(self) -> str:
        if self.running:  # cancelled by a second signal or the shutdown timeout: given back
            return f"{self._counts()}, {len(self.running)} handed back to waiting"
        return self._counts()

    def _counts(self) -> str:
        return f"{self.completed} completed, {self.failed} failed, {self.retried} retried" + (
            f", {self.stalled} stalled jobs taken back" if self.stalled else ""
        )

    def render(self) -> RenderableType:
        style = {"running": "bold", "stopping": "bold yellow", "cancelling": "bold red"}
        line = Text(self.phase, style=style[self.phase])
        line.append(f" {len(self.running)}/{self.concurrency} · ")
        line.append(f"{self.completed} completed", style="green")
        line.append(" · ")
        line.append(f"{self.failed} failed", style="red" if self.failed else "")
        line.append(f" · {self.retried} retried")
        if self.errors:
            line.append(f" · {self.errors} errors", style="red")
        line.append(f" · {self.queue}", style="dim")
        self.spinner.update(text=line)
        return self.spinner


@attrs.define
class _Signals:
    """What the signals asked for so far."""

    status: _Status
    worker: Worker | None = None
    stop: anyio.Event = attrs.field(factory=anyio.Event)
    forced: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    forced_by: int | None = None
    count: int = 0

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        except NotImplementedError:  # (Windows): Ctrl-C interrupts as usual
            task_status.started()
            return
        with receiver as signals:
            task_status.started()
            async for signum in signals:
                self.received(signum)

    def received(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        running = len(self.status.running)
        if self.count == 1:
            if self.worker is not None:
                self.worker.close()  # no claim after this line is printed
            self.status.phase = "stopping"
            console.print(
                f"{name}: stopping; claiming no more jobs, waiting for {running} running "
                "(signal again to cancel them)"
            )
            self.stop.set()
        elif self.count == 2:
            self.status.phase = "cancelling"
            console.print(
                f"{name}: cancelling {running} running jobs; they go back to waiting for the "
                "next worker (signal again to exit at once)"
            )
            self.forced_by = signum
            self.forced.cancel()
        else:
            click.echo(
                f"error: {name}: exiting at once; running jobs stay locked until their lock "
                "expires",
                err=True,
            )
            os._exit(128 + signum)


class _LogHandler(logging.Handler):
    """conveyor's log records on stderr, one line each (the trace with --verbose).

    The worker's own records (``conveyor.worker``) each come with an ``error`` event, which
    :class:`_Status` prints: of those, only the trace is printed, with --verbose.
    """

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.WARNING)
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "conveyor.worker":
            message = f"{record.levelname.lower()}: {_squeeze(record.getMessage())}"
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {_one_line(record.exc_info[1])}"
            click.echo(message, err=True)
        if self.verbose and record.exc_info:
            click.echo(logging.Formatter().formatException(record.exc_info), err=True)


@attrs.frozen
class _Settings:
    processor: Callable[..., Any]
    spec: str
    queue: str
    store_url: str
    backend: str
    verbose: bool
    options: dict[str, Any]


async def _serve(settings: _Settings) -> int:
    status = _Status(
        settings.queue,
        display_url(settings.store_url),
        settings.options["concurrency"],
        settings.verbose,
    )
    signals = _Signals(status)
    live = Live(
        get_renderable=status.render,
        console=console,
        refresh_per_second=8,
        transient=True,
        redirect_stderr=False,
    )
    async with open_store(settings.store_url) as store, anyio.create_task_group() as tg:
        await tg.start(signals.watch)
        try:
            with signals.forced:
                async with open_worker(
                    settings.queue, settings.processor, store=store, **settings.options
                ) as worker:
                    status.worker_id = worker.id
                    signals.worker = worker
                    worker.events.on("*", status.on_event)
                    console.print(
                        f"worker {worker.id} on {status.where}: running {settings.spec}, "
                        f"concurrency {status.concurrency}, {settings.backend} "
                        "(SIGINT / SIGTERM to stop)"
                    )
                    if console.is_terminal:
                        live.start()
                    await signals.stop.wait()
                # left cleanly: open_worker gave running jobs their shutdown_timeout
        finally:
            live.stop()  # (the terminal gets its cursor back whatever happened)
        tg.cancel_scope.cancel()
    if signals.forced_by is not None:
        console.print(f"stopped after cancelling running jobs: {status.summary()}")
        return 128 + signals.forced_by
    console.print(f"stopped: {status.summary()}")
    return 0


@cli.command()
@click.argument("processor_spec", metavar="MODULE:FUNCTION")
@click.option("--queue", "-q", required=True, help="The queue to take jobs from.")
@store_option
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once by this worker.",
)
@backend_option
@click.option(
    "--lock-duration",
    type=POSITIVE_DURATION,
    default=30.0,
    show_default=True,
    help="How long a claim holds a job (renewed every half of it).",
)
@click.option(
    "--stalled-interval",
    type=POSITIVE_DURATION,
    default=30.0,
    show_default=True,
    help="How often to take back jobs whose lock expired.",
)
@click.option(
    "--max-stalled-count",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Stalls after which a job fails instead of running again.",
)
@click.option("--lifo", is_flag=True, help="Claim the newest job first.")
@click.option("--job-name", metavar="NAME", help="Only run jobs of this name.")
@click.option(
    "--shutdown-timeout",
    type=DURATION,
    help="After SIGINT / SIGTERM, how long running jobs may finish before they are cancelled "
    "(default: as long as they take; a second signal cancels them).",
)
@click.option(
    "--poll-interval",
    type=POSITIVE_DURATION,
    default=5.0,
    show_default=True,
    help="The longest the worker waits without looking for jobs.",
)
@click.option(
    "--global-concurrency",
    type=click.IntRange(min=1),
    help="Jobs of the queue run at once by all workers together.",
)
@click.option(
    "--limiter",
    type=LIMITER,
    metavar="MAX/DURATION",
    help="Jobs of the queue started per period by all workers together (100/1m).",
)
@click.option(
    "--group-concurrency", type=click.IntRange(min=1), help="Active jobs per group, at most."
)
@click.option(
    "--group-limiter",
    type=LIMITER,
    metavar="MAX/DURATION",
    help="Jobs started per group per period.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Hand the function lists of up to this many jobs.",
)
@click.option("--batch-wait", type=DURATION, help="How long a batch may wait to fill.")
@click.option("--verbose", "-v", is_flag=True, help="Print a line as each job starts and ends.")
def worker(
    processor_spec: str,
    queue: str,
    store_url: str,
    concurrency: int,
    backend: str,
    lock_duration: float,
    stalled_interval: float,
    max_stalled_count: int,
    lifo: bool,
    job_name: str | None,
    shutdown_timeout: float | None,
    poll_interval: float,
    global_concurrency: int | None,
    limiter: Limiter | None,
    group_concurrency: int | None,
    group_limiter: Limiter | None,
    batch_size: int | None,
    batch_wait: float | None,
    verbose: bool,
) -> int:
    """Run a worker until SIGINT or SIGTERM.

    FUNCTION (async def f(job), or a plain def, run in a thread) processes each job of QUEUE;
    its return value is the job's result.

    SIGINT / SIGTERM stop it: it claims no more jobs and lets running ones finish (within
    --shutdown-timeout), then exits 0. A second signal cancels the running jobs, which go back
    to waiting for the next worker at once; the exit status is then 128 + the signal number.
    """
    if batch_wait is not None and batch_size is None:
        raise click.BadParameter("needs --batch-size", param_hint="'--batch-wait'")
    processor = load_processor(processor_spec)
    group = None
    if group_concurrency is not None or group_limiter is not None:
        group = GroupLimits(group_concurrency, group_limiter)
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "lock_duration": lock_duration,
        "stalled_interval": stalled_interval,
        "max_stalled_count": max_stalled_count,
        "lifo": lifo,
        "job_name": job_name,
        "shutdown_timeout": shutdown_timeout,
        "poll_interval": poll_interval,
        "max_global_concurrency": global_concurrency,
        "limiter": limiter,
        "group": group,
        "batch": None if batch_size is None else Batch(batch_size, batch_wait),
    }
    handler = _LogHandler(verbose)
    logging.getLogger("conveyor").addHandler(handler)
    logging.getLogger("conveyor").propagate = False
    settings = _Settings(processor, processor_spec, queue, store_url, backend, verbose, options)
    status = run(_serve, settings, backend=backend)
    _exit_without_abandoned_threads(status)
    return status


def _exit_without_abandoned_threads(status: int) -> None:
    """Exit now if threads are left running.

    A plain-function processor runs in a worker thread, which a cancellation abandons (its job
    is handed back all the same). Python would wait for such a thread before exiting, however
    long it runs; the worker is done, so exit without it.
    """
    deadline = time.monotonic() + 0.5
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(deadline - time.monotonic(), 0))  # idle ones are stopping anyway
        if thread.is_alive():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
