"""Repeating jobs: when each run is due, and the job that carries it.

A repeating job is a chain of ordinary jobs, one per run. Runs sit on a fixed grid: the fire
times of a cron expression (read by ``croniter`` in the repeat's time zone, so daylight-saving
changes fall where the wall clock says), or multiples of ``every`` counted from ``start`` (from
the epoch when there is no start). A run's job id is ``repeat:<key>:<grid time in ms>``, so a run
is created once however many producers add the schedule or workers extend it: a second save of
the same run is refused by the store as a duplicate id, and ignored here.

When a worker claims a run, before the processor starts, it adds the next run: the first grid
point after both this run and the store's current time (missed runs are skipped, not replayed),
unless ``limit`` runs were made or the next point is past ``end``. Removing a chain's pending run
ends the schedule.
"""

from __future__ import annotations

import hashlib
import json
import math
import zoneinfo
from datetime import UTC, datetime, timedelta

import attrs
from croniter import croniter

from .store import (
    DuplicateJobError,
    JobData,
    JobOptions,
    JsonValue,
    Repeat,
    RepeatRun,
    Store,
)

__all__ = ["first_run", "next_run", "repeat_key", "save_run"]


def repeat_key(name: str, data: JsonValue, opts: JobOptions) -> str:
    """The schedule's identity: ``opts.job_id`` if given, else a hash of what defines it."""
    repeat = opts.repeat
    assert repeat is not None
    if opts.job_id is not None:
        return opts.job_id
    start = repeat.start and repeat.start.isoformat()
    end = repeat.end and repeat.end.isoformat()
    spec = [name, data, repeat.cron, repeat.every, repeat.tz, start, end]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return digest[:24]


def _grid_after(repeat: Repeat, after: datetime, *, inclusive: bool) -> datetime:
    """The first grid point after ``after`` (or at it, when ``inclusive``)."""
    if repeat.every is not None:
        anchor = repeat.start.timestamp() if repeat.start is not None else 0.0
        steps = (after.timestamp() - anchor) / repeat.every
        n = math.ceil(steps) if inclusive else math.floor(steps) + 1
        n = max(n, 0)
        return datetime.fromtimestamp(anchor + n * repeat.every, UTC)
    assert repeat.cron is not None
    zone = zoneinfo.ZoneInfo(repeat.tz or "UTC")
    base = after.astimezone(zone)
    if inclusive:
        base -= timedelta(microseconds=1)
    fire: datetime = croniter(repeat.cron, base).get_next(datetime)
    return fire.astimezone(UTC)


def _within(repeat: Repeat, at: datetime, count: int) -> bool:
    if repeat.limit is not None and count > repeat.limit:
        return False
    return repeat.end is None or at <= repeat.end


def first_run(repeat: Repeat, now: datetime) -> datetime | None:
    """When the first run of a schedule added at ``now`` is due, or ``None`` if never."""
    start = max(now, repeat.start) if repeat.start is not None else now
    at = _grid_after(repeat, start, inclusive=True)
    return at if _within(repeat, at, 1) else None


def next_run(repeat: Repeat, run: RepeatRun, now: datetime) -> datetime | None:
    """When the run after ``run`` is due (skipping points already past), or ``None``."""
    at = _grid_after(repeat, max(run.at, now), inclusive=run.at < now)
    if at <= run.at:
        at = _grid_after(repeat, run.at, inclusive=False)
    return at if _within(repeat, at, run.count + 1) else None


def run_record(template: JobData, key: str, count: int, at: datetime) -> JobData:
    """The job of one run, built from the schedule's first job."""
    return attrs.evolve(
        template,
        id=f"repeat:{key}:{round(at.timestamp() * 1000)}",
        opts=attrs.evolve(template.opts, job_id=None, delay=0.0),
        delay_until=at,
        repeat_run=RepeatRun(key, count, at),
    )


async def save_run(store: Store, record: JobData) -> JobData | None:
    """Save one run and return it as stored; ``None`` when it exists already (someone else
    scheduled it), which is not an error."""
    try:
        return await store.save_job(record)
    except DuplicateJobError:
        return None
