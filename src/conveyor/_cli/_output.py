"""What the read commands print: the JSON shapes (documented in docs/cli.md) and rich tables."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from ..store import JobData, JobState, JsonValue, unstructure

__all__ = [
    "STATE_ORDER",
    "counts_json",
    "counts_table",
    "job_json",
    "job_table",
    "jobs_table",
    "short",
]

STATE_ORDER = (
    JobState.WAITING,
    JobState.DELAYED,
    JobState.ACTIVE,
    JobState.WAITING_CHILDREN,
    JobState.COMPLETED,
    JobState.FAILED,
)
"""The order states are listed in, by what comes first in a job's life."""

_STYLES = {
    JobState.WAITING: "cyan",
    JobState.DELAYED: "magenta",
    JobState.ACTIVE: "yellow",
    JobState.WAITING_CHILDREN: "blue",
    JobState.COMPLETED: "green",
    JobState.FAILED: "red",
}


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def counts_json(counts: dict[JobState, int]) -> dict[str, int]:
    """``{"waiting": 3, ...}``: every state, in :data:`STATE_ORDER`."""
    return {state.value: counts.get(state, 0) for state in STATE_ORDER}


def job_json(job: JobData) -> dict[str, Any]:
    """A job for scripts: every key always present (``null`` when unset)."""
    return {
        "id": job.id,
        "queue": job.queue_name,
        "name": job.name,
        "state": job.state.value,
        "data": job.data,
        "opts": unstructure(job.opts),
        "priority": job.priority,
        "group": job.group_id,
        "progress": job.progress,
        "returnvalue": job.returnvalue,
        "failed_reason": job.failed_reason,
        "attempts_made": job.attempts_made,
        "stalled_count": job.stalled_count,
        "created_at": _time(job.created_at),
        "processed_at": _time(job.processed_at),
        "completed_at": _time(job.completed_at),
        "failed_at": _time(job.failed_at),
        "cancelled_at": _time(job.cancelled_at),
        "delay_until": _time(job.delay_until),
        "locked_by": job.locked_by,
        "lock_until": _time(job.lock_until),
        "parent": (
            None if job.parent_id is None else {"queue": job.parent_queue_name, "id": job.parent_id}
        ),
        "pending_children": job.pending_children,
        "children_values": job.children_values,
        "deduplication_key": job.deduplication_key,
        "logs": job.logs,
        "stacktrace": job.stacktrace,
    }


def short(value: JsonValue, width: int = 60) -> str:
    """A JSON value on one line, cut to ``width`` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _state(state: JobState) -> Text:
    return Text(state.value, style=_STYLES[state])


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def counts_table(rows: list[tuple[str, bool, dict[JobState, int]]]) -> Table:
    """One row per queue: its name, whether it is paused, and its count of every state."""
    table = Table(box=None, header_style="bold")
    table.add_column("queue")
    table.add_column("paused")
    for state in STATE_ORDER:
        table.add_column(state.value, justify="right", style=_STYLES[state])
    for name, paused, counts in rows:
        table.add_row(
            name, "yes" if paused else "", *(str(counts.get(state, 0)) for state in STATE_ORDER)
        )
    return table


def _outcome(job: JobData) -> str:
    if job.state is JobState.FAILED:
        return job.failed_reason or ""
    if job.state is JobState.COMPLETED:
        return "-> " + short(job.returnvalue, 40)
    if job.state is JobState.DELAYED:
        return f"until {_when(job.delay_until)}"
    if job.state is JobState.WAITING_CHILDREN:
        return f"{job.pending_children} children pending"
    if job.state is JobState.ACTIVE:
        return f"progress {short(job.progress, 20)} on {job.locked_by}"
    return f"priority {job.priority}" if job.priority else ""


def jobs_table(jobs: list[JobData]) -> Table:
    """One row per job; ids whole, the rest cut to fit."""
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=max(len(job.id) for job in jobs))
    longest = max(len(job.name) for job in jobs)
    table.add_column("name", no_wrap=True, min_width=min(max(longest, 4), 16), max_width=24)
    table.add_column("state", no_wrap=True, min_width=max(len(job.state.value) for job in jobs))
    table.add_column("tries", justify="right", no_wrap=True, min_width=5)
    table.add_column("created", no_wrap=True, min_width=14)
    table.add_column("data", no_wrap=True, min_width=4, max_width=30)
    table.add_column("info", no_wrap=True, min_width=4)
    for job in jobs:
        table.add_row(
            job.id,
            job.name,
            _state(job.state),
            str(job.attempts_made),
            "" if job.created_at is None else job.created_at.strftime("%m-%d %H:%M:%S"),
            short(job.data, 30),
            _outcome(job),
        )
    return table


def job_table(job: JobData, children: list[JobData]) -> Table:
    """One job, a field per row."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("id", job.id),
        ("queue", job.queue_name),
        ("name", job.name),
        ("state", _state(job.state)),
        ("data", json.dumps(job.data, ensure_ascii=False)),
        ("options", json.dumps(unstructure(job.opts), ensure_ascii=False)),
        ("attempts", f"{job.attempts_made} of {job.opts.attempts}"),
        ("progress", short(job.progress, 200)),
    ]
    if job.state is JobState.COMPLETED:
        rows.append(("returnvalue", json.dumps(job.returnvalue, ensure_ascii=False)))
    if job.failed_reason is not None:
        rows.append(("failed reason", job.failed_reason))
    for label, when in (
        ("created", job.created_at),
        ("delayed until", job.delay_until),
        ("processed", job.processed_at),
        ("completed", job.completed_at),
        ("failed", job.failed_at),
        ("cancelled", job.cancelled_at),
        ("locked until", job.lock_until),
    ):
        if when is not None:
            rows.append((label, _when(when)))
    if job.locked_by is not None:
        rows.append(("locked by", job.locked_by))
    if job.parent_id is not None:
        rows.append(("parent", f"{job.parent_queue_name}:{job.parent_id}"))
    if children:
        listed = ", ".join(f"{c.name} {c.id} ({c.state.value})" for c in children)
        rows.append(("children", listed))
    for i, line in enumerate(job.logs):
        rows.append(("logs" if i == 0 else "", line))
    if job.stacktrace:
        rows.append(("last stack trace", job.stacktrace[-1].rstrip()))
    for label, value in rows:
        table.add_row(label, value)
    return table
