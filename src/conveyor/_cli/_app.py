"""The ``conveyor`` group, what every command shares, and how errors reach the terminal.

Every failure a user can cause ends as one line on stderr, ``error: ...``, and an exit status:
2 for bad input (a usage error, a bad value, an unknown store scheme, a processor that does not
import), 1 when the store refuses the operation or cannot be reached. A traceback is shown only
for a bug in conveyor itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click
from rich.console import Console

from ..store import (
    ArgumentTypeError,
    ConveyorError,
    InvalidArgumentError,
    JobState,
    Limiter,
    UnknownStoreError,
    parse_duration,
)

__all__ = [
    "DEFAULT_STORE_URL",
    "DURATION",
    "LIMITER",
    "POSITIVE_DURATION",
    "STATE",
    "STORE_ENV",
    "CliError",
    "backend_option",
    "cli",
    "console",
    "describe",
    "display_url",
    "json_option",
    "main",
    "print_json",
    "run",
    "store_option",
]

DEFAULT_STORE_URL = "sqlite:///conveyor.db"
STORE_ENV = "CONVEYOR_STORE_URL"

USAGE = 2
"""Exit status for bad input (click's own usage errors exit 2 too)."""
REFUSED = 1
"""Exit status when the store refuses the operation or cannot be reached."""

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

console = Console(highlight=False, markup=False, soft_wrap=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160  # to a file or a pipe: tables as wide as they need, not 80 columns
"""Where human output goes (stdout). No markup: queue and job names are printed as they are.
JSON output bypasses rich: it must stay one document, unwrapped."""


class CliError(Exception):
    """A failure to report as one ``error:`` line and an exit status."""

    def __init__(self, message: str, exit_code: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


# -- parameter types ----------------------------------------------------------------------------

if TYPE_CHECKING:  # generic from click 8.4 on; plain before
    _FloatType = click.ParamType[float]
    _StateType = click.ParamType[JobState]
    _LimiterType = click.ParamType[Limiter]
else:
    _FloatType = _StateType = _LimiterType = click.ParamType


class _Duration(_FloatType):
    """Seconds (``2.5``) or a human duration (``250ms``, ``5s``, ``1h30m``), as float seconds."""

    name = "duration"

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        given: float | str = value if isinstance(value, float | int) else str(value)
        with contextlib.suppress(ValueError):
            given = float(given)
        try:
            return parse_duration(given, "duration", allow_zero=not self.positive)
        except ConveyorError as exc:
            message = str(exc).removeprefix("duration: ")
            if message.startswith("cannot read"):
                message = f"cannot read {value!r} as a duration (try 2.5, 250ms, 5s, 2m, 1h30m)"
            self.fail(message, param, ctx)


class _State(_StateType):
    """A job state by name (``waiting``, ``failed``, ...)."""

    name = "state"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> JobState:
        if isinstance(value, JobState):
            return value
        try:
            return JobState(str(value).strip().lower())
        except ValueError:
            states = ", ".join(state.value for state in JobState)
            self.fail(f"unknown state {value!r} (states: {states})", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "STATE"


class _Limiter(_LimiterType):
    """``MAX/DURATION``: at most MAX jobs started per DURATION (``100/1m``, ``10/1s``)."""

    name = "limiter"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Limiter:
        if isinstance(value, Limiter):
            return value
        count, sep, period = str(value).partition("/")
        if not sep:
            self.fail(f"expected MAX/DURATION such as 100/1m, got {value!r}", param, ctx)
        try:
            maximum = int(count)
        except ValueError:
            self.fail(f"{count!r} is not a whole number of jobs (MAX/DURATION)", param, ctx)
        seconds = DURATION.convert(period, param, ctx)
        try:
            return Limiter(maximum, seconds)
        except ConveyorError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
POSITIVE_DURATION = _Duration(positive=True)
STATE = _State()
LIMITER = _Limiter()


# -- shared options -----------------------------------------------------------------------------


def store_option(func: F) -> F:
    return click.option(
        "--store",
        "store_url",
        envvar=STORE_ENV,
        default=DEFAULT_STORE_URL,
        show_default=True,
        show_envvar=True,
        metavar="URL",
        help="The store: memory://, sqlite:///path.db, postgresql://user@host/db, ...",
    )(func)


def json_option(func: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts (see docs/cli.md)."
    )(func)


def backend_option(func: F) -> F:
    return click.option(
        "--backend",
        type=click.Choice(["asyncio", "trio"]),
        default="asyncio",
        show_default=True,
        help="The event loop to run on.",
    )(func)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def display_url(url: str) -> str:
    """The URL without its password, for printing."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def run(func: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio") -> T:
    """Run a coroutine function on the chosen event loop."""
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        raise CliError("trio is not installed (pip install 'conveyor[trio]')", USAGE)
    return anyio.run(func, *args, backend=backend)


# -- errors -------------------------------------------------------------------------------------


def _leaf(exc: BaseException) -> BaseException:
    """The error inside exception groups (task groups wrap what their tasks raise)."""
    while isinstance(exc, BaseExceptionGroup):
        inner: list[BaseException] = list(exc.exceptions)
        ours = [e for e in inner if isinstance(e, CliError | ConveyorError)]
        exc = (ours or inner)[0]
    return exc


def describe(exc: BaseException) -> CliError | None:
    """The error line and exit status for an error a user can cause; ``None`` for a bug."""
    if isinstance(exc, CliError):
        return exc
    if (
        isinstance(exc, click.UsageError)
        and not isinstance(exc, click.BadParameter)
        and exc.ctx is not None
    ):
        return CliError(f"{exc.format_message()} (see '{exc.ctx.command_path} --help')", USAGE)
    if isinstance(exc, click.ClickException):
        return CliError(exc.format_message(), exc.exit_code)
    if isinstance(exc, UnknownStoreError):
        installed = ", ".join(exc.installed) or "none"
        hint = ""
        if exc.scheme in ("postgresql", "postgres"):
            hint = "; pip install 'conveyor[postgres]'"
        return CliError(
            f"unknown store scheme {exc.scheme!r} (installed: {installed}{hint})", USAGE
        )
    if isinstance(exc, InvalidArgumentError | ArgumentTypeError):
        return CliError(str(exc), USAGE)
    if isinstance(exc, ConveyorError):
        return CliError(str(exc), REFUSED)
    return None


def fail(exc: CliError) -> NoReturn:
    message = " ".join(exc.message.split())  # one line, whatever the message held
    click.echo(f"error: {message}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="conveyor", prog_name="conveyor")
def cli() -> None:
    """conveyor: run workers and look after queues from the command line.

    Every command that uses a store takes --store URL, else $CONVEYOR_STORE_URL, else
    sqlite:///conveyor.db in the current directory.
    """


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``conveyor`` console script."""
    try:
        status = cli.main(args=argv, prog_name="conveyor", standalone_mode=False)
    except (click.Abort, KeyboardInterrupt):
        fail(CliError("aborted", 130))
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        described = describe(_leaf(exc))
        if described is None:
            raise
        fail(described)
    sys.exit(status if isinstance(status, int) else 0)
