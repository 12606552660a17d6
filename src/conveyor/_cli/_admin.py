"""Commands that look at and look after queues: stores, queues, jobs, job, add, pause, resume,
drain, clean, retry, promote, cancel, remove, obliterate, migrate.

Each maps onto :class:`~conveyor.Queue` (or :class:`~conveyor.Job`) where the public API has the
operation, and onto the store contract otherwise (listing queues, a job's children).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .._job import Job
from .._open_store import available_stores, open_store, store_from_url
from .._queue import JobOptionsDict, Queue
from ..store import (
    ALL_JOB_NAMES,
    ArgumentTypeError,
    Backoff,
    ConveyorError,
    Deduplication,
    Group,
    JobNotFoundError,
    JobState,
    JsonValue,
    Repeat,
    Store,
    check_json,
)
from ._app import (
    DURATION,
    STATE,
    CliError,
    cli,
    console,
    describe,
    display_url,
    json_option,
    print_json,
    run,
    store_option,
)
from ._output import STATE_ORDER, counts_json, counts_table, job_json, job_table, jobs_table

__all__: list[str] = []

F = TypeVar("F", bound=Callable[..., Any])

_queue_argument = click.argument("queue", metavar="QUEUE")


def _report(as_json: bool, shape: dict[str, Any], text: str) -> None:
    """What a command that changes things did: ``shape`` as JSON, or ``text`` for a person."""
    if as_json:
        print_json(shape)
    else:
        console.print(text)


def _confirm(question: str, yes: bool) -> None:
    """Ask before a destructive command, unless ``--yes``."""
    if yes:
        return
    try:
        agreed = click.confirm(question, default=False, err=True)
    except click.Abort:  # no answer (end of input)
        agreed = False
    if not sys.stdin.isatty():
        click.echo(err=True)  # a piped answer is not echoed: end the question's line
    if not agreed:
        raise CliError("aborted; nothing was changed (--yes skips the question)")


async def _read_job(store: Store, queue: str, job_id: str) -> Job:
    data = await store.get_job(queue, job_id)
    if data is None:
        raise JobNotFoundError(queue, job_id)
    return Job(data, store)


async def _each(
    store: Store,
    queue: str,
    job_ids: tuple[str, ...],
    done_verb: str,
    action: Callable[[Job], Awaitable[object]],
) -> list[Job]:
    """Apply ``action`` to each job given by id, in order (an id given twice counts once).

    Every id is looked up before anything changes, so a mistyped one changes nothing. A job
    the store then refuses stops the command, with an error that names it and says how many
    jobs before it were already ``done_verb`` (a past participle).
    """
    found = [await _read_job(store, queue, job_id) for job_id in dict.fromkeys(job_ids)]
    for done, job in enumerate(found):
        try:
            await action(job)
        except ConveyorError as exc:
            described = describe(exc)
            assert described is not None
            message = described.message
            if repr(job.id) not in message:
                message = f"job {job.id!r}: {message}"
            if done:
                message += f" ({done} job{' was' if done == 1 else 's were'} {done_verb} before it)"
            raise CliError(message, described.exit_code) from None
    return found


# -- stores, queues, jobs, job ------------------------------------------------------------------


@cli.command()
@json_option
def stores(as_json: bool) -> None:
    """List the installed stores.

    Each URL scheme and the class that serves it."""
    found = available_stores()
    if as_json:
        print_json([{"scheme": scheme, "object": target} for scheme, target in found.items()])
        return
    for scheme, target in found.items():
        console.print(f"{scheme + '://':<16} {target}")


@cli.command()
@store_option
@json_option
def queues(store_url: str, as_json: bool) -> None:
    """List the queues, with their count of jobs per state."""

    async def body() -> list[tuple[str, list[str], dict[JobState, int]]]:
        async with open_store(store_url) as store:
            return [
                (
                    name,
                    await store.get_paused_job_names(name),
                    await store.get_job_counts(name),
                )
                for name in await store.list_queues()
            ]

    rows = run(body)
    if as_json:
        print_json(
            [
                {
                    "name": name,
                    "paused": ALL_JOB_NAMES in paused,
                    "paused_names": [n for n in paused if n != ALL_JOB_NAMES],
                    "counts": counts_json(counts),
                }
                for name, paused, counts in rows
            ]
        )
    elif not rows:
        console.print(f"no queues in {display_url(store_url)}")
    else:
        console.print(
            counts_table([(name, ALL_JOB_NAMES in paused, counts) for name, paused, counts in rows])
        )


@cli.command()
@_queue_argument
@click.option(
    "--state",
    "states",
    type=STATE,
    multiple=True,
    help="Only jobs in this state (repeatable; default: every state).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="At most this many jobs per state.",
)
@click.option(
    "--offset", type=click.IntRange(min=0), default=0, help="Skip this many jobs of each state."
)
@store_option
@json_option
def jobs(
    queue: str,
    states: tuple[JobState, ...],
    limit: int,
    offset: int,
    store_url: str,
    as_json: bool,
) -> None:
    """List the jobs of QUEUE.

    State by state, in each state's order: waiting by priority, delayed by due time, finished
    ones newest first."""
    chosen = [state for state in STATE_ORDER if not states or state in states]

    async def body() -> list[Job]:
        async with open_store(store_url) as store:
            q = Queue(queue, store=store)
            found: list[Job] = []
            for state in chosen:
                found += await q.get_jobs(state, offset, offset + limit - 1)
            return found

    listed = [job.record for job in run(body)]
    if as_json:
        print_json([job_json(job) for job in listed])
    elif not listed:
        wanted = " or ".join(state.value for state in chosen) if states else "any state"
        console.print(f"no jobs in {wanted} in queue {queue!r}")
    else:
        console.print(jobs_table(listed))


@cli.command()
@_queue_argument
@click.argument("job_id", metavar="ID")
@store_option
@json_option
def job(queue: str, job_id: str, store_url: str, as_json: bool) -> None:
    """Show one job in full.

    Its data, options, state, result or failure, logs and children."""

    async def body() -> tuple[Job, list[Job]]:
        async with open_store(store_url) as store:
            found = await _read_job(store, queue, job_id)
            return found, await found.get_children()

    found, children = run(body)
    if as_json:
        shape = job_json(found.record)
        shape["children"] = [
            {"queue": c.queue_name, "id": c.id, "name": c.name, "state": c.state.value}
            for c in children
        ]
        print_json(shape)
    else:
        console.print(job_table(found.record, [c.record for c in children]))


# -- add ----------------------------------------------------------------------------------------


def _read_data(value: str | None) -> JsonValue:
    """``--data``: JSON text, ``@path`` for a file's, ``-`` for standard input's."""
    if value is None:
        return None
    text = value
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {value[1:]!r}: {exc.strerror}", param_hint="'--data'"
            ) from None
    try:
        return check_json(json.loads(text), "data")
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="'--data'") from None
    except ConveyorError as exc:
        raise click.BadParameter(str(exc), param_hint="'--data'") from None


def _backoff(spec: str | None, jitter: float, max_delay: float | None) -> Backoff | None:
    """``--backoff``: ``fixed:DELAY``, ``exponential:DELAY`` or ``custom:MODULE:FUNCTION``."""
    hint = "'--backoff'"
    if spec is None:
        if jitter or max_delay is not None:
            hint = "'--backoff-jitter' / '--backoff-max-delay'"
            raise click.BadParameter("needs --backoff", param_hint=hint)
        return None
    kind, _, rest = spec.partition(":")
    if kind == "fixed" and max_delay is not None:
        raise click.BadParameter("a fixed backoff has no max delay", param_hint=hint)
    try:
        if kind == "custom":
            return Backoff.custom(rest, jitter=jitter, max_delay=max_delay)
        if kind in ("fixed", "exponential") and rest:
            delay = DURATION.convert(rest, None, None)
            if kind == "fixed":
                return Backoff.fixed(delay, jitter=jitter)
            return Backoff.exponential(delay, jitter=jitter, max_delay=max_delay)
    except ConveyorError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint=hint) from None
    raise click.BadParameter(
        f"expected fixed:DELAY, exponential:DELAY or custom:MODULE:FUNCTION, got {spec!r}",
        param_hint="'--backoff'",
    )


@cli.command()
@_queue_argument
@click.argument("name")
@click.option(
    "--data", "data_text", metavar="JSON", help="The job's data: JSON, @FILE, or - for stdin."
)
@click.option("--delay", type=DURATION, help="Run no sooner than this from now (5s, 2m, ...).")
@click.option(
    "--priority",
    type=click.IntRange(-(2**31), 2**31 - 1),
    help="Lower runs first (default 0).",
)
@click.option("--attempts", type=click.IntRange(min=1), help="Tries before failing (default 1).")
@click.option(
    "--backoff",
    "backoff_spec",
    metavar="SPEC",
    help="Wait between tries: fixed:5s, exponential:1s or custom:MODULE:FUNCTION.",
)
@click.option("--backoff-jitter", type=click.FloatRange(0, 1), default=0.0, help="0..1.")
@click.option("--backoff-max-delay", type=DURATION, help="Cap on an exponential backoff.")
@click.option("--job-id", help="The job's id (refused if the queue already has it).")
@click.option("--dedup", is_flag=True, help="Deduplicate by name and data.")
@click.option("--dedup-key", metavar="KEY", help="Deduplicate by this key.")
@click.option("--dedup-ttl", type=DURATION, help="Hold the deduplication key this long.")
@click.option("--lifo", is_flag=True, help="Run before the jobs already waiting.")
@click.option("--timeout", type=DURATION, help="Fail a run that takes longer.")
@click.option("--group", "group_id", metavar="ID", help="The group (round-robin, group limits).")
@click.option("--group-max-size", type=click.IntRange(min=1), help="Refuse when the group is full.")
@click.option("--remove-on-complete", is_flag=True, help="Remove the job once completed.")
@click.option("--remove-on-fail", is_flag=True, help="Remove the job once failed.")
@click.option("--every", type=DURATION, help="Repeat at this interval.")
@click.option("--cron", metavar="EXPR", help="Repeat on this cron schedule.")
@click.option("--tz", metavar="ZONE", help="The time zone of --cron (IANA name; default UTC).")
@click.option("--repeat-limit", type=click.IntRange(min=1), help="Repeat at most this many times.")
@store_option
@json_option
def add(
    queue: str,
    name: str,
    data_text: str | None,
    delay: float | None,
    priority: int | None,
    attempts: int | None,
    backoff_spec: str | None,
    backoff_jitter: float,
    backoff_max_delay: float | None,
    job_id: str | None,
    dedup: bool,
    dedup_key: str | None,
    dedup_ttl: float | None,
    lifo: bool,
    timeout: float | None,
    group_id: str | None,
    group_max_size: int | None,
    remove_on_complete: bool,
    remove_on_fail: bool,
    every: float | None,
    cron: str | None,
    tz: str | None,
    repeat_limit: int | None,
    store_url: str,
    as_json: bool,
) -> None:
    """Add a job named NAME to QUEUE.

    Prints the job's id and state (with --json, the job)."""
    data = _read_data(data_text)
    options: JobOptionsDict = {}
    if delay is not None:
        options["delay"] = delay
    if priority is not None:
        options["priority"] = priority
    if attempts is not None:
        options["attempts"] = attempts
    backoff = _backoff(backoff_spec, backoff_jitter, backoff_max_delay)
    if backoff is not None:
        options["backoff"] = backoff
    if job_id is not None:
        options["job_id"] = job_id
    if dedup or dedup_key is not None or dedup_ttl is not None:
        options["deduplication"] = Deduplication(dedup_key, dedup_ttl)
    if lifo:
        options["lifo"] = True
    if timeout is not None:
        options["timeout"] = timeout
    if group_id is not None:
        options["group"] = Group(group_id, group_max_size)
    elif group_max_size is not None:
        raise click.BadParameter("needs --group", param_hint="'--group-max-size'")
    if remove_on_complete:
        options["remove_on_complete"] = True
    if remove_on_fail:
        options["remove_on_fail"] = True
    if every is not None or cron is not None:
        options["repeat"] = Repeat(cron=cron, every=every, limit=repeat_limit, tz=tz)
    elif tz is not None or repeat_limit is not None:
        hint = "'--tz' / '--repeat-limit'"
        raise click.BadParameter("needs --every or --cron", param_hint=hint)

    async def body() -> Job:
        async with open_store(store_url) as store:
            return await Queue(queue, store=store).add(name, data, **options)

    added = run(body)
    if as_json:
        print_json(job_json(added.record))
    else:
        when = ""
        if added.state is JobState.DELAYED and added.delay_until is not None:
            when = f" until {added.delay_until:%Y-%m-%d %H:%M:%S} UTC"
        console.print(f"{added.id} {added.name} in {queue!r}: {added.state.value}{when}")


# -- managing ----------------------------------------------------------------------------------


def _name_option(verb: str) -> Callable[[F], F]:
    return click.option(
        "--name",
        "job_name",
        metavar="JOBNAME",
        help=f"{verb} only jobs of this name (default: the whole queue).",
    )


def _pause_or_resume(queue: str, job_name: str | None, store_url: str, pause: bool) -> list[str]:
    async def body() -> list[str]:
        async with open_store(store_url) as store:
            q = Queue(queue, store=store)
            await (q.pause if pause else q.resume)(job_name)
            return await q.get_paused_job_names()

    return run(body)


def _paused_report(queue: str, paused: list[str], as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "queue": queue,
                "paused": ALL_JOB_NAMES in paused,
                "paused_names": [n for n in paused if n != ALL_JOB_NAMES],
            }
        )
    elif ALL_JOB_NAMES in paused:
        console.print(f"queue {queue!r} is paused")
    elif paused:
        console.print(f"queue {queue!r} runs, except jobs named: {', '.join(paused)}")
    else:
        console.print(f"queue {queue!r} runs")


@cli.command()
@_queue_argument
@_name_option("Pause")
@store_option
@json_option
def pause(queue: str, job_name: str | None, store_url: str, as_json: bool) -> None:
    """Pause QUEUE, or one job name of it.

    Workers start no job of it until it is resumed; running jobs finish."""
    _paused_report(queue, _pause_or_resume(queue, job_name, store_url, True), as_json)


@cli.command()
@_queue_argument
@_name_option("Resume")
@store_option
@json_option
def resume(queue: str, job_name: str | None, store_url: str, as_json: bool) -> None:
    """Resume QUEUE, or one job name of it."""
    _paused_report(queue, _pause_or_resume(queue, job_name, store_url, False), as_json)


_yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@cli.command()
@_queue_argument
@_yes_option
@store_option
@json_option
def drain(queue: str, yes: bool, store_url: str, as_json: bool) -> None:
    """Remove every waiting and delayed job of QUEUE."""
    _confirm(
        f"Remove every waiting and delayed job of queue {queue!r} in {display_url(store_url)}?",
        yes,
    )

    async def body() -> int:
        async with open_store(store_url) as store:
            return await Queue(queue, store=store).drain()

    removed = run(body)
    _report(
        as_json,
        {"queue": queue, "removed": removed},
        f"removed {removed} waiting and delayed jobs from {queue!r}",
    )


@cli.command()
@_queue_argument
@click.option(
    "--state",
    type=STATE,
    default=JobState.COMPLETED.value,
    show_default=True,
    help="Remove jobs in this state (not active).",
)
@click.option(
    "--grace",
    type=DURATION,
    default=0.0,
    help="Keep jobs younger than this (finished ones count from when they finished).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Remove at most this many.")
@_yes_option
@store_option
@json_option
def clean(
    queue: str,
    state: JobState,
    grace: float,
    limit: int | None,
    yes: bool,
    store_url: str,
    as_json: bool,
) -> None:
    """Remove old jobs of QUEUE.

    Those in a state (default completed) older than the grace period, oldest first."""
    older = f" older than {grace:g}s" if grace else ""
    _confirm(f"Remove {state.value} jobs{older} of queue {queue!r}?", yes)

    async def body() -> int:
        async with open_store(store_url) as store:
            return await Queue(queue, store=store).clean(state, grace, limit)

    removed = run(body)
    _report(
        as_json,
        {"queue": queue, "state": state.value, "removed": removed},
        f"removed {removed} {state.value} jobs from {queue!r}",
    )


@cli.command()
@_queue_argument
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@click.option(
    "--state",
    type=STATE,
    default=JobState.FAILED.value,
    show_default=True,
    help="Without IDs: retry every job in this state (failed or completed).",
)
@store_option
@json_option
def retry(
    queue: str, job_ids: tuple[str, ...], state: JobState, store_url: str, as_json: bool
) -> None:
    """Send failed jobs back to waiting.

    Those given by ID, or every job of QUEUE in --state (failed or completed)."""

    async def body() -> int:
        async with open_store(store_url) as store:
            if not job_ids:
                return await Queue(queue, store=store).retry_jobs(state)
            retried = await _each(
                store, queue, job_ids, "retried", lambda job: job.retry(job.state)
            )
            return len(retried)

    retried = run(body)
    _report(
        as_json,
        {"queue": queue, "retried": retried},
        f"sent {retried} jobs of {queue!r} back to waiting",
    )


@cli.command()
@_queue_argument
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@store_option
@json_option
def promote(queue: str, job_ids: tuple[str, ...], store_url: str, as_json: bool) -> None:
    """Run delayed jobs now.

    Those given by ID, or every delayed job of QUEUE."""

    async def body() -> int:
        async with open_store(store_url) as store:
            if not job_ids:
                return await Queue(queue, store=store).promote_jobs()
            return len(await _each(store, queue, job_ids, "promoted", Job.promote))

    promoted = run(body)
    _report(
        as_json,
        {"queue": queue, "promoted": promoted},
        f"promoted {promoted} delayed jobs of {queue!r} to waiting",
    )


@cli.command()
@_queue_argument
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@store_option
@json_option
def cancel(queue: str, job_ids: tuple[str, ...], store_url: str, as_json: bool) -> None:
    """Cancel jobs.

    One not yet running fails at once; a running one is stopped by its worker."""

    async def body() -> list[Job]:
        async with open_store(store_url) as store:
            return await _each(store, queue, job_ids, "cancelled", Job.cancel)

    cancelled = run(body)
    if as_json:
        print_json([job_json(found.record) for found in cancelled])
    else:
        for found in cancelled:
            console.print(f"{found.id} {found.name}: cancelled ({found.state.value})")


@cli.command()
@_queue_argument
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@store_option
@json_option
def remove(queue: str, job_ids: tuple[str, ...], store_url: str, as_json: bool) -> None:
    """Remove jobs and their children.

    Active jobs cannot be removed."""

    async def body() -> list[Job]:
        async with open_store(store_url) as store:
            return await _each(store, queue, job_ids, "removed", Job.remove)

    removed = [found.id for found in run(body)]
    _report(
        as_json, {"queue": queue, "removed": removed}, f"removed {len(removed)} jobs from {queue!r}"
    )


@cli.command()
@_queue_argument
@click.option("--force", is_flag=True, help="Even while jobs of the queue are running.")
@_yes_option
@store_option
@json_option
def obliterate(queue: str, force: bool, yes: bool, store_url: str, as_json: bool) -> None:
    """Remove QUEUE and everything in it.

    Every job in every state, its paused names and deduplication keys."""
    _confirm(f"Remove queue {queue!r} and every job in it from {display_url(store_url)}?", yes)

    async def body() -> None:
        async with open_store(store_url) as store:
            await Queue(queue, store=store).obliterate(force=force)

    run(body)
    _report(as_json, {"queue": queue, "obliterated": True}, f"obliterated queue {queue!r}")


@cli.command()
@store_option
@json_option
def migrate(store_url: str, as_json: bool) -> None:
    """Create or upgrade the store's schema.

    What a store opened with auto_migrate=false needs before use (a store without a schema,
    such as memory://, has nothing to migrate)."""
    migrates = True
    try:
        store = store_from_url(store_url, auto_migrate=True)
    except ArgumentTypeError:
        raise
    except TypeError:  # a store without migrations (memory://) takes no such option
        store = store_from_url(store_url)
        migrates = False

    async def body() -> None:
        async with store:
            pass

    run(body)
    scheme = urllib.parse.urlsplit(store_url).scheme
    if as_json:
        print_json({"store": display_url(store_url), "scheme": scheme, "migrated": migrates})
    elif migrates:
        console.print(f"{display_url(store_url)}: schema up to date")
    else:
        console.print(f"{display_url(store_url)}: this store has no schema; nothing to migrate")
