"""Argument checks every store runs at its edge, before it changes anything.

They live in the contract package so that every store, ours or a third party's, refuses the same
input with the same error naming the same argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from ._durations import parse_duration, to_utc
from ._errors import ArgumentTypeError, InvalidArgumentError
from ._json import check_json
from ._models import (
    JOB_FIELDS,
    FetchOptions,
    JobData,
    JobOptions,
    JobOutcome,
    JobState,
    MetricKind,
    OutcomeKind,
    RepeatRun,
    StoreEvent,
    check_int,
    check_job_name,
    check_name,
)

__all__ = [
    "UPDATABLE_FIELDS",
    "HandedOver",
    "check_fetch",
    "check_metrics_query",
    "check_outcomes",
    "check_text",
    "check_updates",
    "validate_new_job",
]

UPDATABLE_FIELDS = frozenset(
    {
        "data", "progress", "opts", "returnvalue", "failed_reason", "stacktrace",
        "attempts_made", "stalled_count", "processed_at", "completed_at", "failed_at",
        "cancelled_at", "delay_until", "logs", "discarded", "state",
    }
)  # fmt: skip


class HandedOver(list[JobData]):
    """New jobs a producer hands to a store and will not touch again, made as
    ``conveyor._queue.build_job`` makes them (nothing a run writes is set, and the producer
    keeps no reference to them): :func:`check_jobs` takes them over, checked, instead of
    copying them. Only conveyor's own producers (``Queue``, ``FlowProducer``) make one; a
    plain list is always copied."""


def validate_new_job(job: object, argument: str = "job") -> JobData:
    """Check a job handed to ``save_job`` and friends; return a clean copy of it.

    The copy keeps what the caller may set (id, queue, name, data, opts, ``delay_until``,
    parent link, deduplication key) and resets everything a run writes.
    """
    job, data, delay_until = _check_new_job(job, argument)
    return JobData(
        id=job.id,
        queue_name=job.queue_name,
        name=job.name,
        data=data,
        opts=job.opts,
        delay_until=delay_until,
        parent_id=job.parent_id,
        parent_queue_name=job.parent_queue_name,
        deduplication_key=job.deduplication_key,
        repeat_run=job.repeat_run,
    )


def _check_new_job(job: object, argument: str) -> tuple[JobData, Any, datetime | None]:
    """The checks of :func:`validate_new_job`; the job, a checked copy of its data and its
    ``delay_until`` in UTC."""
    if not isinstance(job, JobData):
        raise ArgumentTypeError(argument, f"expected JobData, got {type(job).__name__}")
    check_name(job.id, f"{argument}.id")
    check_name(job.queue_name, f"{argument}.queue_name")
    check_job_name(job.name, f"{argument}.name")
    if not isinstance(job.opts, JobOptions):
        raise ArgumentTypeError(
            f"{argument}.opts", f"expected JobOptions, got {type(job.opts).__name__}"
        )
    if job.opts.job_id is not None and job.opts.job_id != job.id:
        raise InvalidArgumentError(f"{argument}.id", "must equal opts.job_id when that is set")
    data = check_json(job.data, "data")
    delay_until = None if job.delay_until is None else to_utc(job.delay_until, "delay_until")
    if job.deduplication_key is not None:
        check_name(job.deduplication_key, f"{argument}.deduplication_key")
    if job.repeat_run is not None and not isinstance(job.repeat_run, RepeatRun):
        raise ArgumentTypeError(f"{argument}.repeat_run", "expected RepeatRun")
    if (job.parent_id is None) != (job.parent_queue_name is None):
        raise InvalidArgumentError(
            f"{argument}.parent_id", "parent_id and parent_queue_name go together"
        )
    if job.parent_id is not None:
        check_name(job.parent_id, f"{argument}.parent_id")
        check_name(job.parent_queue_name, f"{argument}.parent_queue_name")
    return job, data, delay_until


def check_jobs(jobs: object, argument: str = "jobs") -> list[JobData]:
    """Validate a sequence of new jobs; refuse two jobs with one id in one queue. Returns
    clean copies, as :func:`validate_new_job` makes them, except for jobs handed over
    (:class:`HandedOver`): those are returned themselves, with their data checked (a copy:
    the producer's caller may still hold it) and ``delay_until`` in UTC. That spares a bulk
    add a second record and four lists per job, which cost more than the rest of the check
    (and the garbage collector's time on top)."""
    if isinstance(jobs, str | bytes) or not isinstance(jobs, Sequence):
        raise ArgumentTypeError(
            argument, f"expected a sequence of JobData, got {type(jobs).__name__}"
        )
    if type(jobs) is HandedOver:
        take_handed_over(jobs, 0, len(jobs), set(), argument)
        return jobs
    clean = [validate_new_job(job, f"{argument}[{i}]") for i, job in enumerate(jobs)]
    _refuse_twice(clean, 0, set(), argument)
    return clean


def take_handed_over(
    jobs: HandedOver, start: int, stop: int, seen: set[tuple[str, str]], argument: str = "jobs"
) -> None:
    """The check :func:`check_jobs` makes of handed-over jobs, for ``jobs[start:stop]``
    only: a store may check a large call chunk by chunk, sending each as soon as it is
    checked, as long as it stores nothing unless every chunk passes. ``seen`` holds the
    (queue, id) of the jobs checked before (the same set for every chunk of one call)."""
    for i in range(start, stop):
        job = jobs[i]
        taken, data, delay_until = _check_new_job(job, f"{argument}[{i}]")
        taken.data = data
        taken.delay_until = delay_until
    _refuse_twice(jobs[start:stop], start, seen, argument)


def _refuse_twice(
    jobs: Sequence[JobData], start: int, seen: set[tuple[str, str]], argument: str
) -> None:
    for i, job in enumerate(jobs, start):
        key = (job.queue_name, job.id)
        if key in seen:
            raise InvalidArgumentError(
                f"{argument}[{i}].id",
                f"job id {job.id!r} appears twice in queue {job.queue_name!r}",
            )
        seen.add(key)


def check_lock_duration(value: object, argument: str = "lock_duration") -> float:
    return parse_duration(value, argument, allow_zero=False)


def check_fetch(
    worker_id: object, lock_duration: object, limit: object, opts: object
) -> tuple[float, int, FetchOptions]:
    """Validate the arguments of ``fetch_next_jobs``."""
    check_name(worker_id, "worker_id")
    duration = check_lock_duration(lock_duration)
    count = check_int(limit, "limit", minimum=1)
    if opts is None:
        opts = FetchOptions()
    elif not isinstance(opts, FetchOptions):
        raise ArgumentTypeError("opts", f"expected FetchOptions, got {type(opts).__name__}")
    return duration, count, opts


def check_outcomes(outcomes: object) -> list[JobOutcome]:
    """Validate ``finish_jobs``'s argument; return the outcomes with JSON values copied."""
    if isinstance(outcomes, str | bytes) or not isinstance(outcomes, Sequence):
        raise ArgumentTypeError(
            "outcomes", f"expected a sequence of JobOutcome, got {type(outcomes).__name__}"
        )
    clean: list[JobOutcome] = []
    for i, outcome in enumerate(outcomes):
        where = f"outcomes[{i}]"
        if not isinstance(outcome, JobOutcome):
            raise ArgumentTypeError(where, f"expected JobOutcome, got {type(outcome).__name__}")
        check_name(outcome.queue_name, f"{where}.queue_name")
        check_name(outcome.job_id, f"{where}.job_id")
        check_name(outcome.lock_token, f"{where}.lock_token")
        if not isinstance(outcome.kind, OutcomeKind):
            raise ArgumentTypeError(f"{where}.kind", "expected an OutcomeKind")
        if outcome.failed_reason is not None and not isinstance(outcome.failed_reason, str):
            raise ArgumentTypeError(f"{where}.failed_reason", "expected str")
        if outcome.stacktrace is not None and not isinstance(outcome.stacktrace, str):
            raise ArgumentTypeError(f"{where}.stacktrace", "expected str")
        parse_duration(outcome.delay, f"{where}.delay")
        returnvalue = check_json(outcome.returnvalue, "returnvalue")
        # Scalars come back as themselves; only a container needs the copy swapped in.
        if returnvalue is not outcome.returnvalue:
            outcome = attrs.evolve(outcome, returnvalue=returnvalue)
        clean.append(outcome)
    return clean


def _optional_datetime(value: object, argument: str) -> datetime | None:
    return None if value is None else to_utc(value, argument)


def _optional_str(value: object, argument: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ArgumentTypeError(argument, f"expected str or None, got {type(value).__name__}")
    return value


def _str_list(value: object, argument: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ArgumentTypeError(argument, "expected a list of str")
    return list(value)


def check_updates(updates: object) -> dict[str, Any]:
    """Validate ``update_job``'s ``updates``; return a clean copy."""
    if not isinstance(updates, Mapping):
        raise ArgumentTypeError("updates", f"expected a mapping, got {type(updates).__name__}")
    clean: dict[str, Any] = {}
    for key, value in updates.items():
        where = f"updates.{key}"
        if key not in UPDATABLE_FIELDS:
            why = "is not a job field" if key not in JOB_FIELDS else "cannot be updated"
            raise InvalidArgumentError(where, why)
        if key in ("data", "progress", "returnvalue"):
            clean[key] = check_json(value, where)
        elif key == "opts":
            if not isinstance(value, JobOptions):
                raise ArgumentTypeError(where, f"expected JobOptions, got {type(value).__name__}")
            clean[key] = value
        elif key == "state":
            clean[key] = JobState.parse(value, where)
        elif key in ("attempts_made", "stalled_count"):
            clean[key] = check_int(value, where, minimum=0)
        elif key in ("processed_at", "completed_at", "failed_at", "cancelled_at", "delay_until"):
            clean[key] = _optional_datetime(value, where)
        elif key == "failed_reason":
            clean[key] = _optional_str(value, where)
        elif key in ("stacktrace", "logs"):
            clean[key] = _str_list(value, where)
        elif key == "discarded":
            if not isinstance(value, bool):
                raise ArgumentTypeError(where, f"expected bool, got {type(value).__name__}")
            clean[key] = value
    return clean


def check_event(event: object) -> StoreEvent:
    """Validate ``publish``'s argument; return it with its data copied."""
    if not isinstance(event, StoreEvent):
        raise ArgumentTypeError("event", f"expected StoreEvent, got {type(event).__name__}")
    check_name(event.type, "event.type")
    check_name(event.queue_name, "event.queue_name")
    if event.job_id is not None:
        check_name(event.job_id, "event.job_id")
    if not isinstance(event.data, Mapping):
        raise ArgumentTypeError("event.data", "expected a mapping")
    data = check_json(dict(event.data), "event.data")
    timestamp = None if event.timestamp is None else to_utc(event.timestamp, "event.timestamp")
    return attrs.evolve(event, data=data, timestamp=timestamp)


def check_text(value: object, argument: str) -> str:
    """Validate free text (a log line, a failure reason): any ``str``, empty included."""
    if not isinstance(value, str):
        raise InvalidArgumentError(argument, f"expected str, got {type(value).__name__}")
    return value


def check_metrics_query(
    kind: object, start: datetime | None, end: datetime | None
) -> tuple[MetricKind, float, float]:
    """Validate ``get_metrics``'s arguments; return the kind and the first and last minute
    asked for (minutes since the epoch, unbounded ends as infinities)."""
    try:
        metric = MetricKind(str(kind))
    except ValueError:
        raise InvalidArgumentError(
            "kind", f"unknown metric {kind!r} (known: completed, failed)"
        ) from None
    first = -math.inf if start is None else to_utc(start, "start").timestamp() // 60
    last = math.inf if end is None else to_utc(end, "end").timestamp() // 60
    return metric, first, last
