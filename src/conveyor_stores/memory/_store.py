"""MemoryStore: the whole store contract in one process's memory.

Layout (per queue, in :class:`_Queue`):

* ``jobs``: id -> the record. Records never leave the store: every read hands out a copy.
* waiting jobs are indexed twice, by sorted lists of ``(priority, order, id)``: one for the whole
  queue (listing) and one per lane and job name (claiming). A lane is a group, or ``""`` for
  jobs without a group. ``order`` grows with each job entering ``waiting``; a job that must go
  to the head of its priority (``opts.lifo``, a released or stalled job) gets a negative one.
* ``lanes_by_turn``: ``(last_served_tick, lane_id)`` for every lane holding waiting jobs, so the
  least recently served lane is found first and a claim never scans jobs.
* delayed jobs: a sorted list of ``(delay_until, seq, id)``; active, completed, failed and
  waiting-children jobs: insertion-ordered dicts (completed and failed in finishing order).

Every method checks its arguments, yields once (``checkpoint``), then runs without awaiting, so a
method is atomic without a lock (DESIGN.md draws an ``anyio.Lock``; with no await inside a
critical section it would never be contended, so the store does without and saves its cost).
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs
from anyio.lowlevel import checkpoint
from sortedcontainers import SortedList

from conveyor.store import (
    ALL_JOB_NAMES,
    TERMINAL_STATES,
    ChildFailurePolicy,
    Clock,
    ConveyorError,
    DuplicateJobError,
    Duration,
    EventType,
    FetchOptions,
    GroupFullError,
    InvalidArgumentError,
    InvalidJobStateError,
    JobData,
    JobNotFoundError,
    JobOutcome,
    JobState,
    LockStatus,
    MetricKind,
    Metrics,
    MetricsBucket,
    OutcomeKind,
    StoreError,
    StoreEvent,
    SystemClock,
    check_name,
    copy_json,
    from_timestamp,
    parse_duration,
    structure,
    unstructure,
)
from conveyor.store._base import Lifecycle, StoreBase, add_attempt

__all__ = ["MemoryStore"]


_WaitKey = tuple[int, int, str]  # (priority, order, job id)
_DelayKey = tuple[float, int, str]  # (delay_until, seq, job id)


@attrs.define
class _Lane:
    waiting: SortedList[_WaitKey] = attrs.field(factory=SortedList)
    """Every waiting job of the lane, in claim order: a claim with no name paused or chosen
    takes the first, whatever the number of names."""
    by_name: dict[str, SortedList[_WaitKey]] = attrs.field(factory=dict)
    """The same jobs by name, for claims of one name and claims past paused names."""


@attrs.define
class _Queue:
    name: str
    jobs: dict[str, JobData] = attrs.field(factory=dict)
    waiting: SortedList[_WaitKey] = attrs.field(factory=SortedList)
    wait_key: dict[str, _WaitKey] = attrs.field(factory=dict)
    lanes: dict[str, _Lane] = attrs.field(factory=dict)
    lanes_by_turn: SortedList[tuple[int, str]] = attrs.field(factory=SortedList)
    lane_served: dict[str, int] = attrs.field(factory=dict)
    tick: int = 0
    delayed: SortedList[_DelayKey] = attrs.field(factory=SortedList)
    delay_key: dict[str, _DelayKey] = attrs.field(factory=dict)
    active: dict[str, None] = attrs.field(factory=dict)
    completed: dict[str, None] = attrs.field(factory=dict)
    failed: dict[str, None] = attrs.field(factory=dict)
    waiting_children: dict[str, None] = attrs.field(factory=dict)
    paused: set[str] = attrs.field(factory=set)
    dedup: dict[str, str] = attrs.field(factory=dict)
    group_active: Counter[str] = attrs.field(factory=Counter)
    group_waiting: Counter[str] = attrs.field(factory=Counter)
    group_queued: Counter[str] = attrs.field(factory=Counter)
    claims: deque[float] = attrs.field(factory=deque)
    metrics: dict[JobState, dict[int, int]] = attrs.field(
        factory=lambda: {JobState.COMPLETED: {}, JobState.FAILED: {}}
    )
    """Finished jobs per minute (minute number since the epoch -> count), oldest first."""
    totals: Counter[JobState] = attrs.field(factory=Counter)
    group_claims: dict[str, deque[float]] = attrs.field(factory=dict)

    def by_state(self, state: JobState) -> dict[str, None]:
        if state is JobState.ACTIVE:
            return self.active
        if state is JobState.COMPLETED:
            return self.completed
        if state is JobState.FAILED:
            return self.failed
        return self.waiting_children

    def count(self, state: JobState) -> int:
        if state is JobState.WAITING:
            return len(self.waiting)
        if state is JobState.DELAYED:
            return len(self.delayed)
        return len(self.by_state(state))


def _ts(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp()


def _trim(window: deque[float], since: float) -> deque[float]:
    while window and window[0] <= since:
        window.popleft()
    return window


class MemoryStore(StoreBase):
    """The whole store contract in memory: for tests, development and single-process tools.

    Nothing survives the process, and :meth:`disconnect` forgets everything. Events reach
    subscribers in this process only, synchronously.

    :param clock: where time comes from (:class:`~conveyor.store.ManualClock` in tests).
    :param on_event_error: called with the exception when a subscriber raises (default: log it).
    :param metrics_retention: how long per-minute metrics are kept (default 7 days).

    ::

        async with MemoryStore() as store:
            ...
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        on_event_error: Callable[[BaseException], None] | None = None,
        metrics_retention: Duration = "7 days",
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidArgumentError("clock", "expected an object with a time() method")
        self._clock: Clock = clock or SystemClock()
        retention = parse_duration(metrics_retention, "metrics_retention", allow_zero=False)
        self._metrics_minutes = max(int(retention // 60), 1)
        super().__init__(on_event_error=on_event_error)
        self._queues: dict[str, _Queue] = {}
        self._children: dict[tuple[str, str], dict[tuple[str, str], None]] = {}
        self._seq = itertools.count(1)
        self._tokens = itertools.count(1)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        """Build from ``memory://`` (the URL takes no options)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "memory":
            raise InvalidArgumentError("url", f"MemoryStore takes memory:// URLs, not {url!r}")
        if parts.netloc or parts.path.strip("/") or parts.query:
            raise InvalidArgumentError(
                "url", f"memory:// takes no host, path or options, got {url!r}"
            )
        return cls(**options)

    def __repr__(self) -> str:
        return f"<MemoryStore {self._lifecycle.value}, {len(self._queues)} queues>"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        await checkpoint()
        self._check_connectable()
        self._lifecycle = Lifecycle.CONNECTED

    async def disconnect(self) -> None:
        await checkpoint()
        self._lifecycle = Lifecycle.CLOSED
        self.reset()
        self._subscribers.clear()

    def reset(self) -> None:
        """Forget every job, queue and paused name (subscribers stay). For tests."""
        self._queues.clear()
        self._children.clear()

    def export_state(self) -> dict[str, Any]:
        """Everything the store holds, as JSON-ready data (the converter's wire form).

        Jobs are listed per queue in the order each state keeps them, so that
        :meth:`import_state` restores claim order exactly.
        """
        queues = []
        for q in self._queues.values():
            ordered = [key[2] for key in q.waiting] + [key[2] for key in q.delayed]
            for state in (JobState.WAITING_CHILDREN, JobState.ACTIVE, *TERMINAL_STATES):
                ordered.extend(q.by_state(state))
            queues.append(
                {
                    "name": q.name,
                    "paused": sorted(q.paused),
                    "lane_served": dict(q.lane_served),
                    "tick": q.tick,
                    "jobs": [unstructure(q.jobs[job_id]) for job_id in ordered],
                }
            )
        return {"format": "conveyor-memory-store", "version": 1, "queues": queues}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`export_state` produced into this (empty) store.

        :raises StoreError: the store already holds jobs, or ``state`` is not such an export.
        """
        if self._queues:
            raise StoreError("import_state() needs an empty store")
        if not isinstance(state, Mapping) or state.get("format") != "conveyor-memory-store":
            raise StoreError("not an export of a MemoryStore")
        if state.get("version") != 1:
            raise StoreError(f"unsupported MemoryStore export version {state.get('version')!r}")
        try:
            for raw in state["queues"]:
                q = self._queue(raw["name"])
                q.paused.update(raw["paused"])
                q.lane_served.update(raw["lane_served"])
                q.tick = raw["tick"]
                for record in raw["jobs"]:
                    job = structure(record, JobData)
                    q.jobs[job.id] = job
                    order = next(self._seq) if job.state is JobState.WAITING else None
                    self._index(q, job, order=order)
                    key = job.deduplication_key
                    if key is not None:  # the newest job with a key is the one that holds it
                        current = q.jobs.get(q.dedup.get(key, ""))
                        if current is None or _ts(current.created_at) <= _ts(job.created_at):
                            q.dedup[key] = job.id
                    if job.parent_id is not None and job.parent_queue_name is not None:
                        self._children.setdefault((job.parent_queue_name, job.parent_id), {})[
                            (q.name, job.id)
                        ] = None
        except (KeyError, TypeError, ConveyorError) as exc:
            self.reset()
            raise StoreError(f"cannot import MemoryStore state: {exc}") from exc

    async def now(self) -> datetime:
        await self._enter()
        return from_timestamp(self._clock.time())

    async def _enter(self) -> None:
        await checkpoint()
        self._check_connected()

    # -- helpers -----------------------------------------------------------------------------------

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue(name)
        return q

    def _find(self, queue_name: str | None, job_id: str | None) -> JobData | None:
        if queue_name is None or job_id is None:
            return None
        q = self._queues.get(queue_name)
        return None if q is None else q.jobs.get(job_id)

    def _emit(
        self, queue_name: str, type_: str, job_id: str | None, now: float, **data: Any
    ) -> None:
        if queue_name not in self._subscribers and None not in self._subscribers:
            return  # nobody listens: build nothing
        self._deliver((StoreEvent(type_, queue_name, job_id, data, from_timestamp(now)),))

    def _emit_state(self, job: JobData, prev: JobState | None, now: float, **data: Any) -> None:
        if self._subscribers:
            self._emit(
                job.queue_name, job.state.value, job.id, now, prev=prev and prev.value, **data
            )

    # indexing: every state change goes through _unindex / _index

    def _index(
        self, q: _Queue, job: JobData, *, head: bool = False, order: int | None = None
    ) -> None:
        state = job.state
        group = job.group_id
        if state is JobState.WAITING:
            if order is None:
                seq = next(self._seq)
                order = -seq if head or job.opts.lifo else seq
            key = (job.opts.priority, order, job.id)
            q.waiting.add(key)
            q.wait_key[job.id] = key
            lane_id = group or ""
            lane = q.lanes.get(lane_id)
            if lane is None:
                lane = q.lanes[lane_id] = _Lane()
            if not lane.waiting:
                q.lanes_by_turn.add((q.lane_served.get(lane_id, 0), lane_id))
            lane.waiting.add(key)
            names = lane.by_name.get(job.name)
            if names is None:
                names = lane.by_name[job.name] = SortedList()
            names.add(key)
            if group is not None:
                q.group_waiting[group] += 1
                q.group_queued[group] += 1
        elif state is JobState.DELAYED:
            dkey = (_ts(job.delay_until), next(self._seq), job.id)
            q.delayed.add(dkey)
            q.delay_key[job.id] = dkey
            if group is not None:
                q.group_queued[group] += 1
        else:
            q.by_state(state)[job.id] = None
            if state is JobState.ACTIVE and group is not None:
                q.group_active[group] += 1

    def _unindex(self, q: _Queue, job: JobData) -> int | None:
        """Remove a job from its state's index; return its waiting order, if it was waiting."""
        state = job.state
        group = job.group_id
        if state is JobState.WAITING:
            key = q.wait_key.pop(job.id)
            q.waiting.remove(key)
            lane_id = group or ""
            lane = q.lanes[lane_id]
            names = lane.by_name[job.name]
            names.remove(key)
            if not names:
                del lane.by_name[job.name]
            lane.waiting.remove(key)
            if not lane.waiting:
                q.lanes_by_turn.remove((q.lane_served.get(lane_id, 0), lane_id))
                del q.lanes[lane_id]
            if group is not None:
                q.group_waiting[group] -= 1
                q.group_queued[group] -= 1
            return key[1]
        if state is JobState.DELAYED:
            q.delayed.remove(q.delay_key.pop(job.id))
            if group is not None:
                q.group_queued[group] -= 1
        else:
            del q.by_state(state)[job.id]
            if state is JobState.ACTIVE and group is not None:
                q.group_active[group] -= 1
        return None

    def _move(self, q: _Queue, job: JobData, state: JobState, *, head: bool = False) -> JobState:
        prev = job.state
        self._unindex(q, job)
        job.state = state
        self._index(q, job, head=head)
        if state in TERMINAL_STATES:
            self._count_finished(q, state)
        return prev

    def _count_finished(self, q: _Queue, state: JobState) -> None:
        minute = int(self._clock.time() // 60)
        buckets = q.metrics[state]
        buckets[minute] = buckets.get(minute, 0) + 1
        q.totals[state] += 1
        oldest = minute - self._metrics_minutes
        while buckets and (first := next(iter(buckets))) < oldest:
            del buckets[first]

    def _delete(self, q: _Queue, job: JobData, now: float) -> None:
        """Remove one job; a child removed before finishing stops counting for its parent."""
        self._unindex(q, job)
        del q.jobs[job.id]
        key = job.deduplication_key
        if key is not None and q.dedup.get(key) == job.id:
            del q.dedup[key]
        self._children.pop((q.name, job.id), None)
        if job.parent_id is not None and job.parent_queue_name is not None:
            siblings = self._children.get((job.parent_queue_name, job.parent_id))
            if siblings is not None:
                siblings.pop((q.name, job.id), None)
            if job.state not in TERMINAL_STATES:
                self._child_done(job.parent_queue_name, job.parent_id, now)

    def _clear_lock(self, job: JobData) -> None:
        job.lock_until = None
        job.locked_by = None
        job.lock_token = None

    def _holds_key(self, job: JobData, now: float) -> bool:
        if job.deduplication_until is not None:
            return now < _ts(job.deduplication_until)
        return job.state not in TERMINAL_STATES

    # -- adding ------------------------------------------------------------------------------------

    async def _save_jobs(self, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        await self._enter()
        return self._insert(jobs, flow=flow)

    def _insert(self, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        now = self._clock.time()
        # Decide everything first, so that a refused job leaves nothing half-added.
        holders: list[str | None] = []
        keys_here: dict[tuple[str, str], str] = {}
        group_here: Counter[tuple[str, str]] = Counter()
        for job in jobs:
            q = self._queues.get(job.queue_name)
            key = job.deduplication_key
            if key is not None and not flow:
                holder = keys_here.get((job.queue_name, key))
                if holder is None and q is not None:
                    held_by = q.dedup.get(key)
                    if held_by is not None and self._holds_key(q.jobs[held_by], now):
                        holder = held_by
                if holder is not None:
                    holders.append(holder)
                    continue
                keys_here[(job.queue_name, key)] = job.id
            if q is not None and job.id in q.jobs:
                raise DuplicateJobError(job.queue_name, job.id)
            group = job.opts.group
            if group is not None and group.max_size is not None:
                slot = (job.queue_name, group.id)
                queued = (q.group_queued[group.id] if q is not None else 0) + group_here[slot]
                if queued >= group.max_size:
                    raise GroupFullError(job.queue_name, group.id, group.max_size)
                group_here[slot] += 1
            holders.append(None)

        pending: Counter[tuple[str, str]] = Counter()
        if flow:
            for job in jobs:
                if job.parent_id is not None and job.parent_queue_name is not None:
                    pending[(job.parent_queue_name, job.parent_id)] += 1
        created = from_timestamp(now)
        out: list[JobData] = []
        for job, holder in zip(jobs, holders, strict=True):
            if holder is not None:
                out.append(self._queues[job.queue_name].jobs[holder].copy())
                continue
            q = self._queue(job.queue_name)
            job.created_at = created
            if job.opts.delay > 0:
                job.delay_until = from_timestamp(now + job.opts.delay)
            children = pending.get((job.queue_name, job.id), 0)
            if children:
                job.state = JobState.WAITING_CHILDREN
                job.pending_children = children
            elif job.delay_until is not None and _ts(job.delay_until) > now:
                job.state = JobState.DELAYED
            else:
                job.state = JobState.WAITING
                job.delay_until = None
            dedup = job.opts.deduplication
            if flow:
                job.deduplication_key = None
            elif job.deduplication_key is not None:
                if dedup is not None and dedup.ttl is not None:
                    job.deduplication_until = from_timestamp(now + dedup.ttl)
                q.dedup[job.deduplication_key] = job.id
            q.jobs[job.id] = job
            self._index(q, job)
            if job.parent_id is not None and job.parent_queue_name is not None:
                self._children.setdefault((job.parent_queue_name, job.parent_id), {})[
                    (job.queue_name, job.id)
                ] = None
            self._emit_state(job, None, now)
            out.append(job.copy())
        return out

    # -- reading -----------------------------------------------------------------------------------

    async def _get_job(self, queue_name: str, job_id: str) -> JobData | None:
        await self._enter()
        job = self._find(queue_name, job_id)
        return None if job is None else job.copy()

    async def _find_job_by_id(self, job_id: str) -> JobData | None:
        await self._enter()
        for q in self._queues.values():
            job = q.jobs.get(job_id)
            if job is not None:
                return job.copy()
        return None

    async def _find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None or (job_id := q.dedup.get(key)) is None:
            return None
        job = q.jobs[job_id]
        return job.copy() if self._holds_key(job, self._clock.time()) else None

    # -- changing ----------------------------------------------------------------------------------

    async def _update_job(
        self,
        queue_name: str,
        job_id: str,
        clean: dict[str, Any],
        expected_state: JobState | None,
    ) -> bool:
        await self._enter()
        q = self._queues.get(queue_name)
        job = None if q is None else q.jobs.get(job_id)
        if (
            q is None
            or job is None
            or (expected_state is not None and job.state is not expected_state)
        ):
            return False
        new_state = clean.pop("state", job.state)
        if new_state is not job.state:
            if job.state is JobState.ACTIVE:
                raise InvalidJobStateError(
                    f"job {job_id!r} is active: its worker ends it (finish, release or cancel)"
                )
            if new_state not in (JobState.WAITING, JobState.DELAYED):
                raise InvalidJobStateError(
                    f"update_job moves a job only to waiting or delayed, not {new_state.value}"
                )
        delay_until = clean.get("delay_until", job.delay_until)
        if new_state is JobState.DELAYED and delay_until is None:
            raise InvalidArgumentError("updates.delay_until", "a delayed job needs a delay_until")
        now = self._clock.time()
        prev = job.state
        group = clean["opts"].group if "opts" in clean else job.opts.group
        new_group = None if group is None else group.id
        reindex = (
            new_state is not prev
            or new_group != job.group_id  # group counters follow the job
            or (
                prev in (JobState.WAITING, JobState.DELAYED)
                and ("opts" in clean or "delay_until" in clean)
            )
        )
        order = self._unindex(q, job) if reindex else None
        for key, value in clean.items():
            setattr(job, key, value)
        if new_state is JobState.WAITING and prev is not JobState.WAITING:
            job.delay_until = None
        job.state = new_state
        if reindex:
            self._index(q, job, order=order if new_state is prev else None)
        if new_state is not prev:
            self._emit_state(job, prev, now)
        if "progress" in clean:
            self._emit(
                queue_name, EventType.PROGRESS, job_id, now, progress=copy_json(job.progress)
            )
        return True

    async def _add_log(self, queue_name: str, job_id: str, message: str) -> int:
        await self._enter()
        job = self._find(queue_name, job_id)
        if job is None:
            raise JobNotFoundError(queue_name, job_id)
        job.logs.append(message)
        return len(job.logs)

    async def _remove_job(self, queue_name: str, job_id: str) -> bool:
        await self._enter()
        job = self._find(queue_name, job_id)
        if job is None:
            return False
        doomed = self._descendants(job)
        for item in doomed:
            if item.state is JobState.ACTIVE:
                raise InvalidJobStateError(
                    f"job {item.queue_name}:{item.id} is active; cancel it or wait for it to finish"
                )
        now = self._clock.time()
        for item in reversed(doomed):
            self._delete(self._queues[item.queue_name], item, now)
            self._emit(item.queue_name, EventType.REMOVED, item.id, now, prev=item.state.value)
        return True

    def _descendants(self, job: JobData) -> list[JobData]:
        """The job, then its children, depth first (parents before children)."""
        out = [job]
        for queue_name, child_id in list(self._children.get((job.queue_name, job.id), ())):
            child = self._find(queue_name, child_id)
            if child is not None:
                out.extend(self._descendants(child))
        return out

    async def _cancel_job(self, queue_name: str, job_id: str) -> JobData | None:
        await self._enter()
        q = self._queues.get(queue_name)
        job = None if q is None else q.jobs.get(job_id)
        if q is None or job is None:
            return None
        now = self._clock.time()
        if job.state in TERMINAL_STATES:
            raise InvalidJobStateError(f"job {job_id!r} already {job.state.value}")
        if job.state is JobState.ACTIVE:
            if job.cancelled_at is None:
                job.cancelled_at = from_timestamp(now)
                self._emit(queue_name, EventType.CANCEL_REQUESTED, job_id, now)
            return job.copy()
        self._fail(q, job, "cancelled", now, cancelled=True)
        return job.copy()

    # -- claiming ----------------------------------------------------------------------------------

    async def _fetch_next_jobs(
        self, queue_name: str, worker_id: str, duration: float, limit: int, fetch: FetchOptions
    ) -> list[JobData]:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None or not q.waiting or ALL_JOB_NAMES in q.paused:
            return []
        now = self._clock.time()
        if fetch.max_global_concurrency is not None:
            limit = min(limit, fetch.max_global_concurrency - len(q.active))
        if fetch.limiter is not None:
            window = _trim(q.claims, now - fetch.limiter.duration)
            limit = min(limit, fetch.limiter.max - len(window))
        claimed: list[JobData] = []
        processed = from_timestamp(now)
        lock_until = from_timestamp(now + duration)
        while len(claimed) < limit:
            picked = self._pick(q, fetch, now)
            if picked is None:
                break
            lane_id, key = picked
            job = q.jobs[key[2]]
            self._unindex(q, job)
            job.state = JobState.ACTIVE
            self._index(q, job)
            job.processed_at = processed
            job.lock_until = lock_until
            job.locked_by = worker_id
            job.lock_token = f"{worker_id}:{next(self._tokens)}"
            q.tick += 1
            if lane_id in q.lanes:
                q.lanes_by_turn.remove((q.lane_served.get(lane_id, 0), lane_id))
                q.lanes_by_turn.add((q.tick, lane_id))
            q.lane_served[lane_id] = q.tick
            if fetch.limiter is not None:
                q.claims.append(now)
            if fetch.group_limiter is not None and lane_id:
                q.group_claims.setdefault(lane_id, deque()).append(now)
            self._emit_state(job, JobState.WAITING, now)
            claimed.append(job.copy())
        return claimed

    def _pick(self, q: _Queue, fetch: FetchOptions, now: float) -> tuple[str, _WaitKey] | None:
        """The lane to serve and its next job, by the claim order of :class:`FetchOptions`."""
        paused = q.paused
        for _served, lane_id in q.lanes_by_turn:
            if lane_id:
                if lane_id in fetch.exclude_groups:
                    continue
                if (
                    fetch.group_concurrency is not None
                    and q.group_active[lane_id] >= fetch.group_concurrency
                ):
                    continue
                if fetch.group_limiter is not None:
                    window = q.group_claims.get(lane_id)
                    if window is not None and (
                        len(_trim(window, now - fetch.group_limiter.duration))
                        >= fetch.group_limiter.max
                    ):
                        continue
            lane = q.lanes[lane_id]
            if fetch.job_name is None and not paused:
                names: Iterable[tuple[str, SortedList[_WaitKey]]] = [("", lane.waiting)]
            elif fetch.job_name is not None:
                names = (
                    []
                    if fetch.job_name in paused or fetch.job_name not in lane.by_name
                    else [(fetch.job_name, lane.by_name[fetch.job_name])]
                )
            else:
                names = lane.by_name.items()
            best: _WaitKey | None = None
            for name, keys in names:
                if name in paused:
                    continue
                if fetch.lifo:
                    top = keys[0][0]
                    candidate = keys[keys.bisect_left((top + 1, -(2**63), "")) - 1]
                    if best is None or (candidate[0], -candidate[1]) < (best[0], -best[1]):
                        best = candidate
                else:
                    candidate = keys[0]
                    if best is None or candidate < best:
                        best = candidate
            if best is not None:
                return lane_id, best
        return None

    def _check_lock(self, q: _Queue | None, job_id: str, token: str) -> JobData | None:
        job = None if q is None else q.jobs.get(job_id)
        if job is None or job.state is not JobState.ACTIVE or job.lock_token != token:
            return None
        return job

    async def _extend_locks(
        self, queue_name: str, locks: Mapping[str, str], seconds: float
    ) -> dict[str, LockStatus]:
        await self._enter()
        q = self._queues.get(queue_name)
        now = self._clock.time()
        until = from_timestamp(now + seconds)
        out: dict[str, LockStatus] = {}
        for job_id, token in locks.items():
            job = self._check_lock(q, job_id, token)
            if job is None:
                out[job_id] = LockStatus.LOST
                continue
            job.lock_until = until
            out[job_id] = (
                LockStatus.EXTENDED if job.cancelled_at is None else LockStatus.CANCEL_REQUESTED
            )
        return out

    async def _release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool:
        await self._enter()
        q = self._queues.get(queue_name)
        job = self._check_lock(q, job_id, lock_token)
        if q is None or job is None:
            return False
        now = self._clock.time()
        add_attempt(job, from_timestamp(now), "released", None, count=False)
        self._clear_lock(job)
        prev = self._move(q, job, JobState.WAITING, head=True)
        self._emit_state(job, prev, now)
        return True

    async def _finish_jobs(self, clean: list[JobOutcome]) -> list[bool]:
        await self._enter()
        now = self._clock.time()
        return [self._finish(outcome, now) for outcome in clean]

    def _finish(self, outcome: JobOutcome, now: float) -> bool:
        q = self._queues.get(outcome.queue_name)
        job = self._check_lock(q, outcome.job_id, outcome.lock_token)
        if q is None or job is None:
            return False
        kind = outcome.kind
        if job.cancelled_at is not None and kind in (OutcomeKind.RETRY, OutcomeKind.DELAY):
            kind = OutcomeKind.FAILED
            outcome = attrs.evolve(outcome, failed_reason=outcome.failed_reason or "cancelled")
        add_attempt(
            job,
            from_timestamp(now),
            kind.value,
            outcome.failed_reason,
            count=kind is not OutcomeKind.DELAY,
        )
        self._clear_lock(job)
        if outcome.stacktrace is not None:
            job.stacktrace.append(outcome.stacktrace)
        if kind is OutcomeKind.COMPLETED:
            job.returnvalue = outcome.returnvalue
            job.completed_at = from_timestamp(now)
            self._move(q, job, JobState.COMPLETED)
            self._emit_state(job, JobState.ACTIVE, now, returnvalue=copy_json(outcome.returnvalue))
            self._child_completed(job, now)
            self._apply_removal(q, job, job.opts.remove_on_complete, q.completed, now)
        elif kind is OutcomeKind.FAILED:
            self._fail(q, job, outcome.failed_reason or "failed", now, cancelled=outcome.cancelled)
        else:
            if kind is OutcomeKind.RETRY:
                job.failed_reason = outcome.failed_reason
            if outcome.delay > 0:
                job.delay_until = from_timestamp(now + outcome.delay)
                self._move(q, job, JobState.DELAYED)
            else:
                self._move(q, job, JobState.WAITING)
            self._emit_state(
                job, JobState.ACTIVE, now, failed_reason=job.failed_reason,
                delay_until=job.delay_until and job.delay_until.isoformat(),
            )  # fmt: skip
        return True

    def _fail(self, q: _Queue, job: JobData, reason: str, now: float, *, cancelled: bool) -> None:
        """Fail a job that is not yet finished, then apply its parent's policy and removal."""
        job.failed_reason = reason
        job.failed_at = from_timestamp(now)
        if cancelled and job.cancelled_at is None:
            job.cancelled_at = job.failed_at
        self._clear_lock(job)
        prev = self._move(q, job, JobState.FAILED)
        self._emit_state(
            job, prev, now, failed_reason=reason, cancelled=job.cancelled_at is not None
        )
        self._child_failed(job, reason, now)
        self._apply_removal(q, job, job.opts.remove_on_fail, q.failed, now)

    def _apply_removal(
        self, q: _Queue, job: JobData, policy: bool | int, finished: dict[str, None], now: float
    ) -> None:
        if policy is True:
            if job.id in q.jobs:
                self._delete(q, job, now)
        elif policy is not False:
            while len(finished) > policy:
                oldest = q.jobs[next(iter(finished))]
                self._delete(q, oldest, now)

    # -- flows -------------------------------------------------------------------------------------

    def _child_completed(self, child: JobData, now: float) -> None:
        parent = self._find(child.parent_queue_name, child.parent_id)
        if parent is None:
            return
        parent.children_values[f"{child.queue_name}:{child.id}"] = copy_json(child.returnvalue)
        self._child_done(parent.queue_name, parent.id, now)

    def _child_done(self, parent_queue_name: str, parent_id: str, now: float) -> JobState | None:
        parent = self._find(parent_queue_name, parent_id)
        if parent is None:
            return None
        if parent.pending_children > 0:
            parent.pending_children -= 1
        if parent.pending_children == 0 and parent.state is JobState.WAITING_CHILDREN:
            q = self._queues[parent_queue_name]
            prev = self._move(q, parent, JobState.WAITING)
            self._emit_state(parent, prev, now)
        return parent.state

    def _child_failed(self, child: JobData, reason: str, now: float) -> None:
        parent = self._find(child.parent_queue_name, child.parent_id)
        if parent is None:
            return
        policy = child.opts.fail_parent_on_child_failure
        if policy is ChildFailurePolicy.FAIL:
            self._fail_parent(parent, f"child {child.queue_name}:{child.id} failed: {reason}", now)
        elif policy is ChildFailurePolicy.IGNORE:
            self._child_done(parent.queue_name, parent.id, now)
        else:
            siblings = self._children.get((parent.queue_name, parent.id))
            if siblings is not None:
                siblings.pop((child.queue_name, child.id), None)
            child.parent_id = None
            child.parent_queue_name = None
            self._child_done(parent.queue_name, parent.id, now)

    def _fail_parent(self, parent: JobData, reason: str, now: float) -> bool:
        if parent.state is not JobState.WAITING_CHILDREN:
            return False
        self._fail(self._queues[parent.queue_name], parent, reason, now, cancelled=False)
        return True

    async def _notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None:
        await self._enter()
        return self._child_done(parent_queue_name, parent_id, self._clock.time())

    async def _fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool:
        await self._enter()
        parent = self._find(parent_queue_name, parent_id)
        return parent is not None and self._fail_parent(parent, reason, self._clock.time())

    async def _get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]:
        await self._enter()
        out = []
        for queue_name, child_id in self._children.get((parent_queue_name, parent_id), ()):
            child = self._find(queue_name, child_id)
            if child is not None:
                out.append(child.copy())
        return out

    # -- stalled jobs ------------------------------------------------------------------------------

    def _expired(self, q: _Queue, now: float) -> list[JobData]:
        return [
            job
            for job in (q.jobs[job_id] for job_id in q.active)
            if job.lock_until is not None and _ts(job.lock_until) <= now
        ]

    async def _get_stalled_jobs(self, queue_name: str) -> list[JobData]:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return []
        return [job.copy() for job in self._expired(q, self._clock.time())]

    async def _recover_stalled_jobs(self, queue_name: str, max_stalled_count: int) -> list[JobData]:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return []
        now = self._clock.time()
        out = []
        for job in self._expired(q, now):
            job.stalled_count += 1
            add_attempt(job, from_timestamp(now), "stalled", None, count=False)
            self._emit(queue_name, EventType.STALLED, job.id, now, stalled_count=job.stalled_count)
            if job.cancelled_at is not None:
                self._fail(q, job, "cancelled", now, cancelled=True)
            elif job.stalled_count > max_stalled_count:
                self._fail(q, job, "job stalled more than allowable limit", now, cancelled=False)
            else:
                self._clear_lock(job)
                prev = self._move(q, job, JobState.WAITING, head=True)
                self._emit_state(job, prev, now)
            out.append(job.copy())
        return out

    # -- queries -----------------------------------------------------------------------------------

    async def _list_jobs(
        self, queue_name: str, state: JobState, start: int, end: int
    ) -> list[JobData]:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return []
        stop = None if end == -1 else end + 1
        ids: Iterable[str]
        if state is JobState.WAITING:
            ids = (key[2] for key in q.waiting.islice(start, stop))
        elif state is JobState.DELAYED:
            ids = (key[2] for key in q.delayed.islice(start, stop))
        elif state in TERMINAL_STATES:
            ids = itertools.islice(reversed(q.by_state(state)), start, stop)
        else:
            ids = itertools.islice(q.by_state(state), start, stop)
        return [q.jobs[job_id].copy() for job_id in ids]

    async def _count_jobs(self, queue_name: str, state: JobState) -> int:
        await self._enter()
        q = self._queues.get(queue_name)
        return 0 if q is None else q.count(state)

    async def _get_job_counts(self, queue_name: str) -> dict[JobState, int]:
        await self._enter()
        q = self._queues.get(queue_name)
        return {state: 0 if q is None else q.count(state) for state in JobState}

    async def _get_next_delayed_timestamp(self, queue_name: str) -> datetime | None:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None or not q.delayed:
            return None
        return from_timestamp(q.delayed[0][0])

    async def list_queues(self) -> list[str]:
        await self._enter()
        return sorted(name for name, q in self._queues.items() if q.jobs or q.paused)

    async def get_group_active_count(self, queue_name: str, group_id: str) -> int:
        check_name(queue_name, "queue_name")
        check_name(group_id, "group_id")
        await self._enter()
        q = self._queues.get(queue_name)
        return 0 if q is None else q.group_active[group_id]

    async def get_waiting_group_count(self, queue_name: str, group_id: str) -> int:
        check_name(queue_name, "queue_name")
        check_name(group_id, "group_id")
        await self._enter()
        q = self._queues.get(queue_name)
        return 0 if q is None else q.group_waiting[group_id]

    async def _get_metrics(
        self, queue_name: str, kind: MetricKind, first: float, last: float
    ) -> Metrics:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return Metrics(kind, 0, [])
        state = JobState(kind.value)
        buckets = [
            MetricsBucket(from_timestamp(minute * 60), count)
            for minute, count in q.metrics[state].items()
            if first <= minute <= last
        ]
        return Metrics(kind, q.totals[state], buckets)

    # -- delays ------------------------------------------------------------------------------------

    async def _promote_delayed_jobs(self, queue_name: str) -> int:
        await self._enter()
        return self._promote(queue_name, self._clock.time())

    async def _promote_jobs(self, queue_name: str) -> int:
        await self._enter()
        return self._promote(queue_name, None)

    def _promote(self, queue_name: str, due: float | None) -> int:
        q = self._queues.get(queue_name)
        if q is None:
            return 0
        now = self._clock.time()
        count = 0
        while q.delayed and (due is None or q.delayed[0][0] <= due):
            job = q.jobs[q.delayed[0][2]]
            job.delay_until = None
            prev = self._move(q, job, JobState.WAITING)
            self._emit_state(job, prev, now)
            count += 1
        return count

    # -- pause / resume ----------------------------------------------------------------------------

    async def _pause_job_name(self, queue_name: str, job_name: str) -> None:
        await self._enter()
        self._queue(queue_name).paused.add(job_name)
        self._emit(queue_name, EventType.PAUSED, None, self._clock.time(), job_name=job_name)

    async def _resume_job_name(self, queue_name: str, job_name: str) -> None:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is not None:
            q.paused.discard(job_name)
        self._emit(queue_name, EventType.RESUMED, None, self._clock.time(), job_name=job_name)

    async def _get_paused_job_names(self, queue_name: str) -> list[str]:
        await self._enter()
        q = self._queues.get(queue_name)
        return [] if q is None else sorted(q.paused)

    # -- maintenance -------------------------------------------------------------------------------

    async def _clean(
        self, queue_name: str, state: JobState, seconds: float, limit: int | None
    ) -> int:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return 0
        now = self._clock.time()
        cutoff = now - seconds
        doomed: list[JobData] = []
        if state in TERMINAL_STATES:
            for job_id in q.by_state(state):
                job = q.jobs[job_id]
                finished = job.completed_at if state is JobState.COMPLETED else job.failed_at
                if _ts(finished) > cutoff or (limit is not None and len(doomed) >= limit):
                    break
                doomed.append(job)
        else:
            if state is JobState.WAITING:
                ids: Iterable[str] = [key[2] for key in q.waiting]
            elif state is JobState.DELAYED:
                ids = [key[2] for key in q.delayed]
            else:
                ids = list(q.waiting_children)
            old = [q.jobs[i] for i in ids if _ts(q.jobs[i].created_at) <= cutoff]
            old.sort(key=lambda job: _ts(job.created_at))
            doomed = old[:limit] if limit is not None else old
        for job in doomed:
            self._delete(q, job, now)
        self._emit(queue_name, EventType.CLEANED, None, now, state=state.value, count=len(doomed))
        return len(doomed)

    async def _drain(self, queue_name: str) -> int:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return 0
        now = self._clock.time()
        doomed = [q.jobs[key[2]] for key in q.waiting] + [q.jobs[key[2]] for key in q.delayed]
        for job in doomed:
            self._delete(q, job, now)
        self._emit(queue_name, EventType.DRAINED, None, now, count=len(doomed))
        return len(doomed)

    async def _obliterate(self, queue_name: str, force: bool) -> None:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return
        if q.active and not force:
            raise InvalidJobStateError(
                f"queue {queue_name!r} has {len(q.active)} active jobs; pass force=True to remove "
                "it anyway"
            )
        now = self._clock.time()
        for job in list(q.jobs.values()):
            self._delete(q, job, now)
        del self._queues[queue_name]
        self._emit(queue_name, EventType.OBLITERATED, None, now)

    async def _retry_jobs(self, queue_name: str, state: JobState) -> int:
        await self._enter()
        q = self._queues.get(queue_name)
        if q is None:
            return 0
        now = self._clock.time()
        jobs = [q.jobs[job_id] for job_id in q.by_state(state)]
        for job in jobs:
            job.attempts_made = 0
            job.stalled_count = 0
            job.failed_reason = None
            job.returnvalue = None
            job.processed_at = job.completed_at = job.failed_at = job.cancelled_at = None
            job.discarded = False
            prev = self._move(q, job, JobState.WAITING)
            self._emit_state(job, prev, now)
        return len(jobs)

    # -- events ------------------------------------------------------------------------------------

    async def _publish(self, clean: StoreEvent) -> None:
        await self._enter()
        if clean.timestamp is None:
            clean = attrs.evolve(clean, timestamp=from_timestamp(self._clock.time()))
        self._deliver((clean,))
