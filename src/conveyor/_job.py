"""Job: a handle on one stored job, for producers and for the processor running it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .store import (
    TERMINAL_STATES,
    ArgumentTypeError,
    AttemptRecord,
    Duration,
    InvalidJobStateError,
    JobCancelledError,
    JobData,
    JobFailedError,
    JobNotFoundError,
    JobOptions,
    JobOutcome,
    JobState,
    JsonValue,
    RepeatRun,
    Store,
    StoreEvent,
    check_int,
    check_json,
    parse_duration,
)

if TYPE_CHECKING:
    from ._worker import Worker

__all__ = ["Dependencies", "Job"]


@attrs.frozen
class Dependencies:
    """A parent's children: ``processed`` values by ``"<queue>:<id>"``, and the keys of the
    children still ``pending`` and of those that ``failed``."""

    processed: dict[str, JsonValue]
    pending: list[str]
    failed: list[str]


_FALLBACK_POLL = 1.0
"""How often ``wait_until_finished`` re-reads the job in case an event was missed (seconds)."""


class Job:
    """A job in a store: its fields as of the last read, and what can be done with it.

    Attributes mirror the stored record (:class:`~conveyor.store.JobData`) as of the last read;
    :meth:`refresh` reads it again. Methods write through to the store at once. A producer gets
    one from :meth:`Queue.add <conveyor.Queue.add>` or :meth:`Queue.get_job
    <conveyor.Queue.get_job>`; a processor is handed the one it runs::

        async def resize(job: conveyor.Job) -> dict[str, int]:
            await job.log(f"resizing {job.data['path']}")
            await job.update_progress(50)
            return {"width": 640, "height": 480}

    A method that writes raises :class:`~conveyor.JobNotFoundError` when the job was removed
    meanwhile.
    """

    def __init__(self, data: JobData, store: Store, *, worker: Worker | None = None) -> None:
        self._data = data
        self._store = store
        self._worker = worker
        self._settled = False

    def __repr__(self) -> str:
        return f"<Job {self.queue_name}:{self.id} {self.name!r} {self.state.value}>"

    # -- the record ----------------------------------------------------------------------------

    @property
    def record(self) -> JobData:
        """The stored record as of the last read (a copy you may keep)."""
        return self._data.copy()

    id = property(lambda self: self._data.id, doc="The job's id, unique in its queue.")
    name = property(lambda self: self._data.name, doc="The job's name.")
    queue_name = property(lambda self: self._data.queue_name, doc="The queue it belongs to.")

    @property
    def data(self) -> JsonValue:
        """The payload."""
        return self._data.data

    @property
    def opts(self) -> JobOptions:
        """The options the job was added with."""
        return self._data.opts

    @property
    def state(self) -> JobState:
        """Where the job is in its life (:class:`~conveyor.JobState`)."""
        return self._data.state

    @property
    def progress(self) -> JsonValue:
        """The last progress recorded with :meth:`update_progress` (0 until then)."""
        return self._data.progress

    @property
    def returnvalue(self) -> JsonValue:
        """What the processor returned, once the job completed."""
        return self._data.returnvalue

    @property
    def failed_reason(self) -> str | None:
        """Why the last attempt failed, or ``None``."""
        return self._data.failed_reason

    @property
    def attempts_made(self) -> int:
        """How many attempts have finished (stalls and delays do not count)."""
        return self._data.attempts_made

    @property
    def created_at(self) -> datetime | None:
        """When the job was added, by the store's clock."""
        return self._data.created_at

    @property
    def processed_at(self) -> datetime | None:
        """When the current or last run started."""
        return self._data.processed_at

    @property
    def completed_at(self) -> datetime | None:
        """When the job completed."""
        return self._data.completed_at

    @property
    def failed_at(self) -> datetime | None:
        """When the job failed for good."""
        return self._data.failed_at

    @property
    def cancelled_at(self) -> datetime | None:
        """When the job was cancelled (see :meth:`cancel`)."""
        return self._data.cancelled_at

    @property
    def delay_until(self) -> datetime | None:
        """When a delayed job becomes due."""
        return self._data.delay_until

    @property
    def logs(self) -> list[str]:
        """The lines added with :meth:`log`, oldest first (a copy)."""
        return list(self._data.logs)

    @property
    def stacktrace(self) -> list[str]:
        """One traceback per failed attempt, oldest first (a copy)."""
        return list(self._data.stacktrace)

    @property
    def discarded(self) -> bool:
        """Whether :meth:`discard` was called: no attempt runs after the current one."""
        return self._data.discarded

    @property
    def group_id(self) -> str | None:
        """The id of the job's group (:class:`~conveyor.Group`), if it has one."""
        return self._data.group_id

    @property
    def parent_id(self) -> str | None:
        """The id of this job's parent in a flow, if it has one."""
        return self._data.parent_id

    @property
    def parent_queue_name(self) -> str | None:
        """The queue of this job's parent in a flow, if it has one."""
        return self._data.parent_queue_name

    @property
    def attempt_logs(self) -> list[AttemptRecord]:
        """One :class:`~conveyor.AttemptRecord` per finished run, oldest first (a copy)."""
        return list(self._data.attempt_logs)

    @property
    def repeat_run(self) -> RepeatRun | None:
        """For a run of a repeating job: its schedule key, run number and due time."""
        return self._data.repeat_run

    # -- reading -------------------------------------------------------------------------------

    async def refresh(self) -> Job:
        """Read the job again; return ``self``.

        :raises JobNotFoundError: the job no longer exists.
        """
        data = await self._store.get_job(self.queue_name, self.id)
        if data is None:
            raise JobNotFoundError(self.queue_name, self.id)
        self._data = data
        return self

    async def get_parent(self) -> Job | None:
        """The parent job of a flow child, or ``None``."""
        if self.parent_id is None or self.parent_queue_name is None:
            return None
        data = await self._store.get_job(self.parent_queue_name, self.parent_id)
        return None if data is None else Job(data, self._store)

    async def get_children_values(self) -> dict[str, JsonValue]:
        """Return values of the completed children, keyed ``"<queue_name>:<job_id>"``."""
        await self.refresh()
        return dict(self._data.children_values)

    async def get_children(self) -> list[Job]:
        """The children still attached to this job."""
        children = await self._store.get_children_jobs(self.queue_name, self.id)
        return [Job(child, self._store) for child in children]

    # -- writing -------------------------------------------------------------------------------

    async def _update(self, updates: dict[str, Any], expected: JobState | None = None) -> None:
        if not await self._store.update_job(
            self.queue_name, self.id, updates, expected_state=expected
        ):
            current = await self._store.get_job(self.queue_name, self.id)
            if current is None:
                raise JobNotFoundError(self.queue_name, self.id)
            self._data = current
            raise InvalidJobStateError(
                f"job {self.id!r} is {current.state.value}, not {expected and expected.value}"
            )
        await self.refresh()

    async def update_progress(self, progress: JsonValue) -> None:
        """Record progress (a number such as a percentage, or any JSON object)."""
        value = check_json(progress, "progress")
        await self._update({"progress": value})
        if self._worker is not None:
            self._worker._job_progress(self, value)

    async def log(self, message: str) -> int:
        """Append a line to the job's logs; return how many lines it has."""
        count = await self._store.add_log(self.queue_name, self.id, message)
        self._data.logs.append(message)
        return count

    async def clear_logs(self) -> None:
        """Remove every line of the job's logs."""
        await self._update({"logs": []})

    async def update_data(self, data: JsonValue) -> None:
        """Replace the job's data."""
        await self._update({"data": check_json(data, "data")})

    async def discard(self) -> None:
        """Run no more attempts: if this attempt fails, the job fails for good."""
        await self._update({"discarded": True})

    async def change_priority(self, priority: int) -> None:
        """Give the job a new priority (lower runs first); it applies to the job's next claim."""
        check_int(priority, "priority")
        await self._update({"opts": attrs.evolve(self.opts, priority=priority)})

    async def change_delay(self, delay: Duration) -> None:
        """Move a delayed job's run to ``delay`` from now (by the store's clock).

        :raises InvalidJobStateError: the job is not delayed.
        """
        seconds = parse_duration(delay, "delay")
        until = await self._store.now() + timedelta(seconds=seconds)
        await self._update({"delay_until": until}, JobState.DELAYED)

    async def promote(self) -> None:
        """Run a delayed job now.

        :raises InvalidJobStateError: the job is not delayed.
        """
        await self._update({"state": JobState.WAITING}, JobState.DELAYED)

    async def retry(self, state: JobState = JobState.FAILED) -> None:
        """Send a failed (or, with ``state=JobState.COMPLETED``, a completed) job back to
        waiting, its attempts, result and failure cleared.

        :raises InvalidJobStateError: the job is not in ``state``.
        """
        if state not in TERMINAL_STATES:
            raise InvalidJobStateError("only failed or completed jobs can be retried")
        reset: dict[str, Any] = {
            "state": JobState.WAITING, "attempts_made": 0, "stalled_count": 0,
            "failed_reason": None, "returnvalue": None, "processed_at": None,
            "completed_at": None, "failed_at": None, "cancelled_at": None, "discarded": False,
        }  # fmt: skip
        await self._update(reset, state)

    async def remove(self) -> None:
        """Remove the job (and its children).

        :raises InvalidJobStateError: the job, or one of its children, is active.
        :raises JobNotFoundError: the job no longer exists.
        """
        if not await self._store.remove_job(self.queue_name, self.id):
            raise JobNotFoundError(self.queue_name, self.id)

    async def cancel(self) -> None:
        """Cancel the job: a job not yet running fails at once; a running one is stopped by
        its worker (within one lock renewal) and recorded as cancelled.

        :raises InvalidJobStateError: the job already finished.
        :raises JobNotFoundError: the job no longer exists.
        """
        data = await self._store.cancel_job(self.queue_name, self.id)
        if data is None:
            raise JobNotFoundError(self.queue_name, self.id)
        self._data = data

    async def get_dependencies(self) -> Dependencies:
        """Where this job's children stand: values of the completed ones, keys of the rest."""
        await self.refresh()
        pending: list[str] = []
        failed: list[str] = []
        for child in await self._store.get_children_jobs(self.queue_name, self.id):
            key = f"{child.queue_name}:{child.id}"
            if child.state is JobState.FAILED:
                failed.append(key)
            elif child.state is not JobState.COMPLETED:
                pending.append(key)
        return Dependencies(dict(self._data.children_values), pending, failed)

    # -- ending a run from the processor -----------------------------------------------------

    async def move_to_delayed(self, delay: Duration) -> None:
        """From the processor: end this run without using an attempt; the job runs again
        ``delay`` from now. Return from the processor afterwards; its result is ignored.

        ::

            async def poll(job: conveyor.Job) -> None:
                if not await ready(job.data["url"]):
                    await job.move_to_delayed("30s")  # look again later, no attempt used
                    return
                ...

        :raises InvalidJobStateError: called from outside the processor running this job, or
            the run was already ended, or this worker no longer holds the job's lock.
        """
        seconds = parse_duration(delay, "delay")
        await self._settle(JobOutcome.delay_job(self._claimed(), seconds))

    async def move_to_failed(self, reason: str) -> None:
        """From the processor: fail the job now, with no further attempt. Return afterwards.

        :raises InvalidJobStateError: as for :meth:`move_to_delayed`.
        """
        if not isinstance(reason, str):
            raise ArgumentTypeError("reason", f"expected str, got {type(reason).__name__}")
        await self._settle(JobOutcome.failed(self._claimed(), reason))

    def _claimed(self) -> JobData:
        if self._worker is None or self._data.lock_token is None:
            raise InvalidJobStateError("only the processor running this job can end its run")
        if self._settled:
            raise InvalidJobStateError("this run was already ended")
        return self._data

    async def _settle(self, outcome: JobOutcome) -> None:
        [applied] = await self._store.finish_jobs([outcome])
        if not applied:
            raise InvalidJobStateError(f"job {self.id!r}: this worker no longer holds its lock")
        self._settled = True

    # -- waiting -------------------------------------------------------------------------------

    @asynccontextmanager
    async def _watch(self) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """While in the block, follow this job's events; yields a function that waits for the
        next one, or at most ``_FALLBACK_POLL`` seconds in case an event was missed."""
        changed = anyio.Event()

        def on_event(event: StoreEvent) -> None:
            if event.job_id == self.id:
                changed.set()

        async def next_change() -> None:
            nonlocal changed
            with anyio.move_on_after(_FALLBACK_POLL):
                await changed.wait()
            changed = anyio.Event()

        self._store.subscribe(self.queue_name, on_event)
        try:
            yield next_change
        finally:
            self._store.unsubscribe(self.queue_name, on_event)

    async def observe(self) -> AsyncIterator[JobData]:
        """Yield the job's record now and after each change, until it completes or fails.

        ::

            async for record in job.observe():
                print(record.state, record.progress)
        """
        async with self._watch() as next_change:
            last = None
            while True:
                await self.refresh()
                if self._data != last:
                    last = self._data.copy()
                    yield last
                if self.state in TERMINAL_STATES:
                    return
                await next_change()

    async def wait_until_finished(self, timeout: Duration | None = None) -> JsonValue:  # noqa: ASYNC109 - DESIGN.md names it
        """Wait until the job completes and return its value.

        ::

            job = await queue.add("send", {"to": "a@example.com"})
            value = await job.wait_until_finished(timeout="30s")

        :raises JobFailedError: it failed (:class:`JobCancelledError` if it was cancelled).
        :raises TimeoutError: ``timeout`` passed first.
        :raises JobNotFoundError: it was removed.
        """
        seconds = None if timeout is None else parse_duration(timeout, "timeout")
        with anyio.fail_after(seconds):
            async with self._watch() as next_change:
                while True:
                    await self.refresh()
                    if self.state in TERMINAL_STATES:
                        return self._outcome()
                    await next_change()

    def _outcome(self) -> JsonValue:
        if self.state is JobState.COMPLETED:
            return self.returnvalue
        error: Callable[[str, str | None], JobFailedError] = (
            JobCancelledError if self.cancelled_at is not None else JobFailedError
        )
        raise error(self.id, self.failed_reason)
