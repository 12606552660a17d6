"""The job logic the SQL stores share, written once.

SqliteStore and PgStore keep jobs the same way (a row per job: the record, plus columns for
what queries filter on) and change them the same way: a retry, a failure with its parent's
policy, a stalled job taken back, a removal with its descendants. That logic lives here, as
``async`` code over :class:`JobTx`, a transaction that each store implements with its own SQL.

PgStore awaits it. SqliteStore never awaits inside a transaction (nothing may interleave with
it on its one connection), and its primitives never suspend, so it drives the same coroutines
to completion on the spot with :func:`run_now`.
"""

from __future__ import annotations

import abc
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import attrs

from conveyor.store import (
    ALL_JOB_NAMES,
    TERMINAL_STATES,
    ChildFailurePolicy,
    EventType,
    FetchOptions,
    GroupFullError,
    InvalidArgumentError,
    InvalidJobStateError,
    JobData,
    JobNotFoundError,
    JobOutcome,
    JobState,
    Limiter,
    OutcomeKind,
    StoreEvent,
    copy_json,
    from_timestamp,
    to_json,
)
from conveyor.store._base import add_attempt
from conveyor.store._serializer import _encode_job as encode_job

__all__ = [
    "BEFORE_EVERY_LANE",
    "JobTx",
    "Lane",
    "Row",
    "first_in_claim_order",
    "lane_page",
    "record_fields",
    "record_json",
    "run_now",
]

T = TypeVar("T")

_PREV_DATA: dict[JobState | None, dict[str, str | None]] = {
    state: {"prev": state and state.value} for state in (None, *JobState)
}
"""The data of a plain state-change event, shared (only ever encoded, never handed out)."""


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, here and now (no event loop)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a transaction body waited on something; it must not")


def first_in_claim_order(
    heads: Iterable[Iterable[tuple[tuple[int, int], int]]], limit: int
) -> list[int]:
    """The first ``limit`` job keys of several lists, each already in claim order, as
    ``((priority, order), key)``: a claim's candidates, merged across job names."""
    return [key for _order, key in heapq.nsmallest(limit, itertools.chain.from_iterable(heads))]


def record_json(job: JobData) -> str:
    """The job's JSON without the claim fields, which live in their own columns."""
    saved = (job.state, job.processed_at, job.lock_until, job.locked_by, job.lock_token)
    job.state = JobState.WAITING
    job.processed_at = job.lock_until = job.locked_by = job.lock_token = None
    try:
        return to_json(job)
    finally:
        job.state, job.processed_at, job.lock_until, job.locked_by, job.lock_token = saved


def record_fields(job: JobData) -> dict[str, Any]:
    """What :func:`record_json` encodes, for a new job (no claim fields to leave out), as a
    dict to encode with others; it shares the job's JSON values (data...), so encode it and
    drop it, never keep or change it."""
    return encode_job(job)  # type: ignore[no-any-return]


Lane = tuple[str, int, int]
"""A group lane with waiting jobs, as a claim sees it: ``(lane, served, active)``."""

_LANE_PAGE_MARGIN = 16

BEFORE_EVERY_LANE = (-1, "")
"""A ``(served, lane)`` before any lane's (ticks start at 0): ``lanes_after`` from here reads
a claim's first page."""


def lane_page(limit: int) -> int:
    """How many group lanes a claim of ``limit`` jobs reads at a time: enough for one job from
    each, and some to spare for lanes that give none (at their limits, or only paused names
    waiting). Reading every lane with waiting jobs at each claim made a claim's work grow with
    the number of groups."""
    return limit + _LANE_PAGE_MARGIN


class _Turns:
    """The first turns of a claim: the queue's group lanes with waiting jobs in turn order, read
    a page at a time, with the lane of jobs without a group ('') in its place among them."""

    def __init__(
        self, tx: JobTx, queue: str, first: list[Lane], plain_served: int | None, page: int
    ) -> None:
        self._tx = tx
        self._queue = queue
        self._rows = deque(first)
        self._page = page
        self._more = len(first) >= page  # (a short page is the last)
        self._after = (first[-1][1], first[-1][0]) if first else BEFORE_EVERY_LANE
        self._plain: Lane | None = None if plain_served is None else ("", plain_served, 0)

    async def next(self) -> Lane | None:
        """The next lane, or None once every one has had its first turn."""
        rows = self._rows
        if not rows and self._more:
            page = await self._tx.lanes_after(self._queue, self._after, self._page)
            self._more = len(page) >= self._page
            if page:
                self._after = (page[-1][1], page[-1][0])
                rows.extend(page)
        plain = self._plain
        if plain is not None and (not rows or plain[1] <= rows[0][1]):  # ('' sorts first)
            self._plain = None
            return plain
        return rows.popleft() if rows else None


@attrs.define
class Row:
    """A job read inside a transaction: its row id and its record, to change and save."""

    pk: int
    job: JobData


class JobTx(abc.ABC):
    """One write (or read) transaction of a SQL store: the time it runs at, the events it
    publishes, and the job logic on top of the store's primitives."""

    def __init__(self, now: float, *, local: bool) -> None:
        self.now = now
        self.rows: list[tuple[Any, ...]] = []
        """Events for other processes, ``(queue, type, job_id, data)`` (``+ (at,)`` when not
        at the transaction's time), written by the store at the end."""
        self.events: list[StoreEvent] = []
        """The same events for the store's own subscribers (only built when it has some)."""
        self._local = local
        self.callbacks: list[Callable[[], Any]] = []
        self.counters: dict[str, list[int]] = {}
        """Queue rows read by this transaction: [seq, tick, plain_served, completed, failed],
        written back once at the end."""
        self.finished: dict[tuple[str, str], int] = {}
        """Jobs that entered ``completed`` / ``failed``, per queue and state, for metrics."""

    # -- the store's primitives ----------------------------------------------------------------

    @abc.abstractmethod
    async def queue_counters(self, queue: str) -> list[int]:
        """The queue's counter row (created if missing), kept in ``counters``."""

    @abc.abstractmethod
    async def find(self, queue: str | None, job_id: str | None) -> Row | None: ...

    @abc.abstractmethod
    async def held(self, queue: str, job_id: str, token: str) -> Row | None:
        """The job, if it is active and ``token`` holds its lock."""

    @abc.abstractmethod
    async def children(self, queue: str, job_id: str) -> list[Row]: ...

    @abc.abstractmethod
    async def save(self, row: Row, *, seq: int | None = None) -> None:
        """Write the whole job back (``seq``: its new place in its state, if it moved)."""

    @abc.abstractmethod
    async def delete_row(self, row: Row) -> None: ...

    @abc.abstractmethod
    async def keep_newest(self, queue: str, state: JobState, keep: int) -> None:
        """Delete the queue's jobs in ``state`` but the ``keep`` most recent."""

    @abc.abstractmethod
    async def dedup_holder(self, queue: str, key: str) -> str | None:
        """The id of the job holding deduplication ``key`` in ``queue`` now, if any."""

    @abc.abstractmethod
    async def group_queued(self, queue: str, group: str) -> int:
        """How many of the group's jobs are waiting or delayed."""

    @abc.abstractmethod
    async def count_state(self, queue: str, state: JobState) -> int: ...

    @abc.abstractmethod
    async def window(self, queue: str, scope: str, limiter: Limiter) -> int:
        """Claims of a rate window still inside it (older ones are forgotten)."""

    @abc.abstractmethod
    async def candidates(
        self, queue: str, lane: str, fetch: FetchOptions, paused: set[str], limit: int
    ) -> list[int]:
        """Up to ``limit`` claimable jobs (row ids) of a lane, in claim order."""

    @abc.abstractmethod
    async def lanes_after(self, queue: str, after: tuple[int, str], count: int) -> list[Lane]:
        """Up to ``count`` group lanes of the queue with waiting jobs, as ``(lane, served,
        active)``, in turn order (``served``, then ``lane``), after ``after`` (``(served,
        lane)``): the next page of a claim's turns (see :func:`lane_page`)."""

    # -- events ----------------------------------------------------------------------------------

    def after_commit(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` once the transaction has committed (not if it rolls back)."""
        self.callbacks.append(callback)

    def emit(self, queue: str, type_: str, job_id: str | None, **data: Any) -> None:
        self.rows.append((queue, type_, job_id, data or None))
        if self._local:
            self.events.append(StoreEvent(type_, queue, job_id, data, from_timestamp(self.now)))

    def emit_state(self, job: JobData, prev: JobState | None, **data: Any) -> None:
        if data:
            self.emit(job.queue_name, job.state.value, job.id, prev=prev and prev.value, **data)
            return
        # The common event (a state change and nothing more), without building its data.
        self.rows.append((job.queue_name, job.state.value, job.id, _PREV_DATA[prev]))
        if self._local:
            event_data = {"prev": prev and prev.value}
            self.events.append(
                StoreEvent(
                    job.state.value, job.queue_name, job.id, event_data, from_timestamp(self.now)
                )
            )

    def publish(self, event: StoreEvent) -> None:
        at = self.now if event.timestamp is None else event.timestamp.timestamp()
        row = (event.queue_name, event.type, event.job_id, event.data or None)
        self.rows.append(row if at == self.now else (*row, at))
        if self._local:
            if event.timestamp is None:
                event = attrs.evolve(event, timestamp=from_timestamp(self.now))
            self.events.append(event)

    # -- sequence and counts ---------------------------------------------------------------------

    async def next_seq(self, queue: str) -> int:
        counters = await self.queue_counters(queue)
        await self.reserve_seqs(1)
        return self.take_seq(counters)

    async def reserve_seqs(self, count: int) -> None:
        """Make sure the next ``count`` calls of :meth:`take_seq` have numbers ready (a store
        whose numbers come from elsewhere than the queue's counter row fetches them here)."""
        return  # the counter row needs no preparation

    def take_seq(self, counters: list[int]) -> int:
        """The next sequence number, from the queue's ``counters`` by default."""
        counters[0] += 1
        return counters[0]

    async def seq_for(self, job: JobData, *, head: bool = False) -> int:
        return self.place(job, await self.next_seq(job.queue_name), head=head)

    @staticmethod
    def place(job: JobData, seq: int, *, head: bool = False) -> int:
        """The ``seq`` column for a job taking sequence number ``seq`` in its state: waiting
        jobs at the head of their priority (and LIFO ones) go negative, so they sort first."""
        if job.state is JobState.WAITING and (head or job.opts.lifo):
            return -seq
        return seq

    async def count_finished(self, queue: str, state: JobState) -> None:
        self.tally(await self.queue_counters(queue), queue, state)

    def tally(self, counters: list[int], queue: str, state: JobState) -> None:
        """Count a job that entered ``completed`` or ``failed`` (``counters``: its queue's)."""
        key = (queue, state.value)
        self.finished[key] = self.finished.get(key, 0) + 1
        counters[3 if state is JobState.COMPLETED else 4] += 1

    # -- moving jobs -----------------------------------------------------------------------------

    async def move(self, row: Row, state: JobState, *, head: bool = False) -> JobState:
        """Put the job in ``state`` (at the head of its priority, for ``head``) and save it."""
        job = row.job
        prev = job.state
        job.state = state
        await self.save(row, seq=await self.seq_for(job, head=head))
        if state in TERMINAL_STATES:
            await self.count_finished(job.queue_name, state)
        return prev

    async def delete(self, row: Row) -> None:
        """Remove one job; a child removed before finishing stops counting for its parent."""
        job = row.job
        await self.delete_row(row)
        if (
            job.parent_id is not None
            and job.parent_queue_name is not None
            and job.state not in TERMINAL_STATES
        ):
            await self.child_done(job.parent_queue_name, job.parent_id)

    def clear_lock(self, job: JobData) -> None:
        job.lock_until = None
        job.locked_by = None
        job.lock_token = None

    def record_attempt(self, job: JobData, outcome: str, error: str | None, *, count: bool) -> None:
        add_attempt(job, from_timestamp(self.now), outcome, error, count=count)

    async def fail(self, row: Row, reason: str, *, cancelled: bool) -> None:
        """Fail a job that is not yet finished, then apply its parent's policy and removal."""
        job = row.job
        job.failed_reason = reason
        job.failed_at = from_timestamp(self.now)
        if cancelled and job.cancelled_at is None:
            job.cancelled_at = job.failed_at
        self.clear_lock(job)
        prev = await self.move(row, JobState.FAILED)
        self.emit_state(job, prev, failed_reason=reason, cancelled=job.cancelled_at is not None)
        await self.child_failed(row, reason)
        await self.apply_removal(row, job.opts.remove_on_fail)

    async def apply_removal(self, row: Row, policy: bool | int) -> None:
        if policy is True:
            await self.delete_row(row)
        elif policy is not False:
            await self.keep_newest(row.job.queue_name, row.job.state, policy)

    # -- flows -----------------------------------------------------------------------------------

    async def child_completed(self, child: JobData) -> None:
        parent = await self.find(child.parent_queue_name, child.parent_id)
        if parent is None:
            return
        key = f"{child.queue_name}:{child.id}"
        parent.job.children_values[key] = copy_json(child.returnvalue)
        await self.save(parent)
        await self.child_done(parent.job.queue_name, parent.job.id)

    async def child_done(self, parent_queue: str, parent_id: str) -> JobState | None:
        parent = await self.find(parent_queue, parent_id)
        if parent is None:
            return None
        job = parent.job
        if job.pending_children > 0:
            job.pending_children -= 1
        if job.pending_children == 0 and job.state is JobState.WAITING_CHILDREN:
            prev = await self.move(parent, JobState.WAITING)
            self.emit_state(job, prev)
        else:
            await self.save(parent)
        return job.state

    async def child_failed(self, child: Row, reason: str) -> None:
        job = child.job
        parent = await self.find(job.parent_queue_name, job.parent_id)
        if parent is None:
            return
        policy = job.opts.fail_parent_on_child_failure
        if policy is ChildFailurePolicy.FAIL:
            await self.fail_parent(parent, f"child {job.queue_name}:{job.id} failed: {reason}")
        elif policy is ChildFailurePolicy.IGNORE:
            await self.child_done(parent.job.queue_name, parent.job.id)
        else:
            job.parent_id = None
            job.parent_queue_name = None
            await self.save(child)
            await self.child_done(parent.job.queue_name, parent.job.id)

    async def fail_parent(self, parent: Row, reason: str) -> bool:
        if parent.job.state is not JobState.WAITING_CHILDREN:
            return False
        await self.fail(parent, reason, cancelled=False)
        return True

    async def descendants(self, row: Row) -> list[Row]:
        """The job, then its children, depth first (parents before children)."""
        out = [row]
        for child in await self.children(row.job.queue_name, row.job.id):
            out.extend(await self.descendants(child))
        return out

    # -- adding ----------------------------------------------------------------------------------

    async def plan_insert(
        self, jobs: list[JobData], *, flow: bool
    ) -> tuple[list[JobData], list[tuple[JobData, int]]]:
        """Decide how new jobs are added, before anything is written (so that a refused job
        leaves nothing half-added): what the call returns for each job (the new job, or the
        job already holding its deduplication key), and the jobs to insert with their ``seq``,
        their state, times and events set. Raises ``GroupFullError``."""
        holders: list[str | None] = []
        keys_here: dict[tuple[str, str], str] = {}
        group_here: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = job.deduplication_key
            if key is not None and not flow:
                holder = keys_here.get((job.queue_name, key)) or await self.dedup_holder(
                    job.queue_name, key
                )
                if holder is not None:
                    holders.append(holder)
                    continue
                keys_here[(job.queue_name, key)] = job.id
            group = job.opts.group
            if group is not None and group.max_size is not None:
                slot = (job.queue_name, group.id)
                if slot not in group_here:
                    group_here[slot] = await self.group_queued(job.queue_name, group.id)
                if group_here[slot] >= group.max_size:
                    raise GroupFullError(job.queue_name, group.id, group.max_size)
                group_here[slot] += 1
            holders.append(None)

        pending: dict[tuple[str, str], int] = {}
        if flow:
            for job in jobs:
                if job.parent_id is not None and job.parent_queue_name is not None:
                    parent = (job.parent_queue_name, job.parent_id)
                    pending[parent] = pending.get(parent, 0) + 1
        now = self.now
        created = from_timestamp(now)
        out: list[JobData] = []
        fresh: list[tuple[JobData, int]] = []
        added: dict[tuple[str, str], JobData] = {}
        counters: dict[str, list[int]] = {}
        await self.reserve_seqs(len(jobs))
        for job, holder in zip(jobs, holders, strict=True):
            if holder is not None:
                in_call = added.get((job.queue_name, holder))
                if in_call is None:
                    stored = await self.find(job.queue_name, holder)
                    assert stored is not None  # dedup_holder found it in this transaction
                    in_call = stored.job
                out.append(in_call)
                continue
            job.created_at = created
            if job.opts.delay > 0:
                job.delay_until = from_timestamp(now + job.opts.delay)
            children = pending.get((job.queue_name, job.id), 0)
            if children:
                job.state = JobState.WAITING_CHILDREN
                job.pending_children = children
            elif job.delay_until is not None and job.delay_until.timestamp() > now:
                job.state = JobState.DELAYED
            else:
                job.state = JobState.WAITING
                job.delay_until = None
            dedup = job.opts.deduplication
            if flow:
                job.deduplication_key = None
            elif job.deduplication_key is not None and dedup is not None and dedup.ttl is not None:
                job.deduplication_until = from_timestamp(now + dedup.ttl)
            # (the queue's counters once per queue, not a call per job: bulk adds are hot)
            queue_counters = counters.get(job.queue_name)
            if queue_counters is None:
                queue_counters = counters[job.queue_name] = await self.queue_counters(
                    job.queue_name
                )
            fresh.append((job, self.place(job, self.take_seq(queue_counters))))
            self.emit_state(job, None)
            out.append(job)  # a clean copy made by validation: the caller may keep it
            added[(job.queue_name, job.id)] = job
        return out, fresh

    # -- claiming --------------------------------------------------------------------------------

    async def pick(
        self,
        queue: str,
        first: list[Lane],
        plain_served: int | None,
        paused: set[str],
        fetch: FetchOptions,
        limit: int,
    ) -> list[tuple[int, str]]:
        """Which jobs a claim takes, in order, as ``(row id, lane)``.

        ``first``: the first ``lane_page(limit)`` of the queue's group lanes with waiting jobs,
        in turn order (least recently served first), as ``(lane, served, active)``; the rest are
        read a page at a time as the turns reach them. ``plain_served``: when the lane of jobs
        without a group ('') was last served, None when none of them waits. ``paused``: the
        queue's paused names. Round robin: the least recently served lane gives one job per
        turn; a lane at its group concurrency or rate limit drops out of the call.
        """
        if ALL_JOB_NAMES in paused or (fetch.job_name is not None and fetch.job_name in paused):
            return []
        turns = _Turns(self, queue, first, plain_served, lane_page(limit))
        if fetch.max_global_concurrency is not None:
            active_now = await self.count_state(queue, JobState.ACTIVE)
            limit = min(limit, fetch.max_global_concurrency - active_now)
        if fetch.limiter is not None:
            limit = min(limit, fetch.limiter.max - await self.window(queue, "", fetch.limiter))
        if limit <= 0:
            return []
        again: deque[list[Any]] = deque()  # lanes served this call, for their next turn
        found: dict[str, deque[int]] = {}
        window_used: dict[str, int] = {}
        picks: list[tuple[int, str]] = []
        entry: list[Any]  # [lane, active]
        while len(picks) < limit:
            # Every lane's first turn comes before any lane's second, as in one list of them all.
            lane_row = await turns.next()
            if lane_row is not None:
                lane, _served, active = lane_row
                if lane and lane in fetch.exclude_groups:
                    continue
                entry = [lane, active]
            elif again:
                entry = again.popleft()
                lane, active = entry[0], entry[1]
            else:
                break
            if lane and fetch.group_concurrency is not None and active >= fetch.group_concurrency:
                continue
            if lane and fetch.group_limiter is not None:
                if lane not in window_used:
                    window_used[lane] = await self.window(queue, f"g:{lane}", fetch.group_limiter)
                if window_used[lane] >= fetch.group_limiter.max:
                    continue
            in_lane = found.get(lane)
            if in_lane is None:
                in_lane = found[lane] = deque(
                    await self.candidates(queue, lane, fetch, paused, limit - len(picks))
                )
            if not in_lane:
                continue  # nothing claimable in this lane (paused names, job_name)
            picks.append((in_lane.popleft(), lane))
            entry[1] += 1
            if lane in window_used:
                window_used[lane] += 1
            again.append(entry)
        return picks

    async def plan_claims(
        self, queue: str, worker_id: str, picks: list[tuple[int, str]], fetch: FetchOptions
    ) -> tuple[list[int], list[str], dict[str, int], list[str]]:
        """The bookkeeping of a claim of ``picks``: each job's new ``seq`` and lock token, the
        round-robin tick each group lane was served at, and the rate-limit scopes to record.
        Moves the queue's tick (and when the group-less lane was served) in its counters."""
        counters = await self.queue_counters(queue)
        await self.reserve_seqs(len(picks))
        tick = counters[1]
        seqs: list[int] = []
        tokens: list[str] = []
        served: dict[str, int] = {}
        scopes: list[str] = []
        for _pk, lane in picks:
            seq = self.take_seq(counters)
            seqs.append(seq)
            tokens.append(f"{worker_id}:{seq}")
            tick += 1
            served[lane] = tick
            if fetch.limiter is not None:
                scopes.append("")
            if fetch.group_limiter is not None and lane:
                scopes.append(f"g:{lane}")
        counters[1] = tick
        if "" in served:
            counters[2] = served.pop("")
        return seqs, tokens, served, scopes

    # -- operations (the bodies of the store methods of the same names) --------------------------

    async def update_job(
        self,
        queue: str,
        job_id: str,
        clean: Mapping[str, Any],
        expected_state: JobState | None,
    ) -> bool:
        row = await self.find(queue, job_id)
        if row is None or (expected_state is not None and row.job.state is not expected_state):
            return False
        job = row.job
        changes = dict(clean)
        new_state = changes.pop("state", job.state)
        if new_state is not job.state:
            if job.state is JobState.ACTIVE:
                raise InvalidJobStateError(
                    f"job {job_id!r} is active: its worker ends it (finish, release or cancel)"
                )
            if new_state not in (JobState.WAITING, JobState.DELAYED):
                raise InvalidJobStateError(
                    f"update_job moves a job only to waiting or delayed, not {new_state.value}"
                )
        delay_until = changes.get("delay_until", job.delay_until)
        if new_state is JobState.DELAYED and delay_until is None:
            raise InvalidArgumentError("updates.delay_until", "a delayed job needs a delay_until")
        prev = job.state
        for key, value in changes.items():
            setattr(job, key, value)
        if new_state is JobState.WAITING and prev is not JobState.WAITING:
            job.delay_until = None
        job.state = new_state
        if new_state is not prev or (
            prev is JobState.DELAYED and ("opts" in changes or "delay_until" in changes)
        ):
            await self.save(row, seq=await self.seq_for(job))
        else:
            await self.save(row)
        if new_state is not prev:
            self.emit_state(job, prev)
        if "progress" in changes:
            self.emit(queue, EventType.PROGRESS, job_id, progress=copy_json(job.progress))
        return True

    async def add_log(self, queue: str, job_id: str, message: str) -> int:
        row = await self.find(queue, job_id)
        if row is None:
            raise JobNotFoundError(queue, job_id)
        row.job.logs.append(message)
        await self.save(row)
        return len(row.job.logs)

    async def remove_job(self, queue: str, job_id: str) -> bool:
        row = await self.find(queue, job_id)
        if row is None:
            return False
        doomed = await self.descendants(row)
        for item in doomed:
            if item.job.state is JobState.ACTIVE:
                raise InvalidJobStateError(
                    f"job {item.job.queue_name}:{item.job.id} is active; cancel it or wait "
                    "for it to finish"
                )
        for item in reversed(doomed):
            # Removing a child may have moved its parent: read each one afresh.
            fresh = await self.find(item.job.queue_name, item.job.id)
            if fresh is None:
                continue
            await self.delete(fresh)
            self.emit(
                fresh.job.queue_name, EventType.REMOVED, fresh.job.id, prev=fresh.job.state.value
            )
        return True

    async def cancel_job(self, queue: str, job_id: str) -> JobData | None:
        row = await self.find(queue, job_id)
        if row is None:
            return None
        job = row.job
        if job.state in TERMINAL_STATES:
            raise InvalidJobStateError(f"job {job_id!r} already {job.state.value}")
        if job.state is JobState.ACTIVE:
            if job.cancelled_at is None:
                job.cancelled_at = from_timestamp(self.now)
                await self.save(row)
                self.emit(queue, EventType.CANCEL_REQUESTED, job_id)
            return job
        await self.fail(row, "cancelled", cancelled=True)
        return job

    async def release_lock(self, queue: str, job_id: str, token: str) -> bool:
        row = await self.held(queue, job_id, token)
        if row is None:
            return False
        job = row.job
        self.record_attempt(job, "released", None, count=False)
        self.clear_lock(job)
        prev = await self.move(row, JobState.WAITING, head=True)
        self.emit_state(job, prev)
        return True

    async def finish(self, outcome: JobOutcome) -> bool:
        """Apply one outcome (the general path: the job is read, changed and saved)."""
        row = await self.held(outcome.queue_name, outcome.job_id, outcome.lock_token)
        if row is None:
            return False
        job = row.job
        kind = outcome.kind
        if job.cancelled_at is not None and kind in (OutcomeKind.RETRY, OutcomeKind.DELAY):
            kind = OutcomeKind.FAILED
            outcome = attrs.evolve(outcome, failed_reason=outcome.failed_reason or "cancelled")
        self.record_attempt(
            job, kind.value, outcome.failed_reason, count=kind is not OutcomeKind.DELAY
        )
        self.clear_lock(job)
        if outcome.stacktrace is not None:
            job.stacktrace.append(outcome.stacktrace)
        if kind is OutcomeKind.COMPLETED:
            job.returnvalue = outcome.returnvalue
            job.completed_at = from_timestamp(self.now)
            await self.move(row, JobState.COMPLETED)
            self.emit_state(job, JobState.ACTIVE, returnvalue=copy_json(outcome.returnvalue))
            await self.child_completed(job)
            await self.apply_removal(row, job.opts.remove_on_complete)
        elif kind is OutcomeKind.FAILED:
            await self.fail(row, outcome.failed_reason or "failed", cancelled=outcome.cancelled)
        else:
            if kind is OutcomeKind.RETRY:
                job.failed_reason = outcome.failed_reason
            if outcome.delay > 0:
                job.delay_until = from_timestamp(self.now + outcome.delay)
                await self.move(row, JobState.DELAYED)
            else:
                await self.move(row, JobState.WAITING)
            self.emit_state(
                job, JobState.ACTIVE, failed_reason=job.failed_reason,
                delay_until=job.delay_until and job.delay_until.isoformat(),
            )  # fmt: skip
        return True

    async def fail_parent_on_child_failure(self, queue: str, parent_id: str, reason: str) -> bool:
        parent = await self.find(queue, parent_id)
        return parent is not None and await self.fail_parent(parent, reason)

    async def recover_stalled(
        self, queue: str, expired: list[Row], max_stalled_count: int
    ) -> list[JobData]:
        """Take back ``expired`` (active jobs whose lock ran out)."""
        out = []
        for row in expired:
            job = row.job
            job.stalled_count += 1
            self.record_attempt(job, "stalled", None, count=False)
            self.emit(queue, EventType.STALLED, job.id, stalled_count=job.stalled_count)
            if job.cancelled_at is not None:
                await self.fail(row, "cancelled", cancelled=True)
            elif job.stalled_count > max_stalled_count:
                await self.fail(row, "job stalled more than allowable limit", cancelled=False)
            else:
                self.clear_lock(job)
                prev = await self.move(row, JobState.WAITING, head=True)
                self.emit_state(job, prev)
            out.append(job)
        return out

    async def promote(self, delayed: list[Row]) -> int:
        for row in delayed:
            row.job.delay_until = None
            prev = await self.move(row, JobState.WAITING)
            self.emit_state(row.job, prev)
        return len(delayed)

    async def retry(self, finished: list[Row]) -> int:
        """Send finished jobs back to waiting, as new."""
        for row in finished:
            job = row.job
            job.attempts_made = 0
            job.stalled_count = 0
            job.failed_reason = None
            job.returnvalue = None
            job.processed_at = job.completed_at = job.failed_at = job.cancelled_at = None
            job.discarded = False
            prev = await self.move(row, JobState.WAITING)
            self.emit_state(job, prev)
        return len(finished)

    async def delete_all(self, rows: list[Row]) -> int:
        for row in rows:
            await self.delete(row)
        return len(rows)
