"""The store contract: the one seam between conveyor's core and every backend.

A store is any object with these methods; :mod:`conveyor.testing` checks that it keeps them.
Every rule that must hold across processes is the store's to enforce: the atomic claim, claim
order, paused names, groups, global concurrency, rate limits, deduplication and the fence.

Conventions that hold for every method:

* Every method is a coroutine and a cancellation point. A cancelled call changes nothing or
  completes whole: a store never leaves a half-written change.
* Arguments are checked before anything is stored: a bad one raises an
  :class:`~conveyor.store.InvalidArgumentError` / :class:`~conveyor.store.ArgumentTypeError`
  naming it, and data JSON cannot hold raises :class:`~conveyor.store.SerializationError`.
* Records handed out are copies: changing one never changes the store.
* Time is the store's: ``created_at``, delays, lock expiry, TTLs and rate windows are judged by
  the store's clock (its server's, for a database server).
* Using a store before :meth:`Store.connect` or after :meth:`Store.disconnect` raises
  :class:`~conveyor.store.StoreError`; so does losing the connection.
* Operations publish events (:class:`~conveyor.store.StoreEvent`) to subscribers (see each
  method).
  A job event is named after the state the job entered, with ``data["prev"]`` the state it left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from ._durations import Duration
from ._models import (
    FetchOptions,
    JobData,
    JobOutcome,
    JobState,
    LockStatus,
    MetricKind,
    Metrics,
    StoreEvent,
)

__all__ = ["EventCallback", "Store"]

EventCallback = Callable[[StoreEvent], None]
"""A subscriber. It runs synchronously where the event is delivered and must not block."""


@runtime_checkable
class Store(Protocol):
    """What conveyor needs from a place that keeps jobs: the store contract.

    The built-in stores (:class:`~conveyor_stores.memory.MemoryStore`,
    :class:`~conveyor_stores.sqlite.SqliteStore`, :class:`~conveyor_stores.postgres.PgStore`)
    implement it, and so may any class: ``isinstance(obj, Store)`` checks that the methods are
    there, :mod:`conveyor.testing` that they keep the rules. The conventions of the module
    docstring hold for every method; each method's docstring is the normative text for it.
    """

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open connections and apply pending migrations (unless the store was told not to).

        Safe to call when several processes connect at once. A store connects once.
        """
        ...

    async def disconnect(self) -> None:
        """Release connections and subscribers. Idempotent."""
        ...

    async def __aenter__(self) -> Self:
        """``connect()``, then return the store."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``disconnect()``."""
        ...

    async def now(self) -> datetime:
        """The store's current time (aware UTC): the clock every time rule is judged by."""
        ...

    # -- adding and reading jobs ----------------------------------------------------------------

    async def save_job(self, job: JobData) -> JobData:
        """Add a job and return the job that now stands for it, as stored (a copy).

        The caller sets ``id``, ``queue_name``, ``name``, ``data`` and ``opts``; the store sets
        ``created_at`` (its clock), ``delay_until`` (``created_at + opts.delay`` when
        ``opts.delay`` > 0, else the given ``delay_until``, which may be absolute) and the state:
        ``delayed`` when ``delay_until`` is in the future, else ``waiting``. Fields that record
        a run (attempts, locks, results) are reset. ``parent_id`` must be ``None``: children
        are added with :meth:`save_flow`.

        Deduplication is atomic with the insert: when ``job.deduplication_key`` is set and a job
        of the queue holds that key (see :meth:`find_by_deduplication_key`), nothing is added and
        that job is returned. With ``opts.deduplication.ttl`` the new job holds the key
        until ``created_at + ttl`` (``deduplication_until``).

        Publishes ``waiting`` or ``delayed``.

        :raises DuplicateJobError: a job with this id exists in the queue.
        :raises GroupFullError: ``opts.group.max_size`` jobs of the group are waiting or delayed.
        """
        ...

    async def save_bulk(self, jobs: Sequence[JobData]) -> list[JobData]:
        """:meth:`save_job` for many jobs in one transaction: all are added or none.

        Returns the stored jobs in input order. A job deduplicated against an earlier one of
        the same call gets that job. Publishes one event per added job.
        """
        ...

    async def save_flow(self, jobs: Sequence[JobData]) -> list[JobData]:
        """Add a tree of jobs (parents and children, any queues) in one transaction.

        A child names its parent with ``parent_id`` / ``parent_queue_name``; every parent named
        must be in ``jobs``. A parent's ``pending_children`` is set to its number of children
        and it starts in ``waiting-children``; leaves start as :meth:`save_job` says. Returns
        the stored jobs in input order. Deduplication does not apply inside a flow.

        :raises InvalidArgumentError: a child names a parent that is not in ``jobs``.
        """
        ...

    async def get_job(self, queue_name: str, job_id: str) -> JobData | None:
        """The job, or ``None`` if the queue has no job with that id."""
        ...

    async def find_job_by_id(self, job_id: str) -> JobData | None:
        """A job with that id in any queue (the first found), or ``None``."""
        ...

    async def find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None:
        """The job holding a deduplication key, or ``None``.

        A job holds its key while it exists and: with a TTL, until ``deduplication_until``
        (whatever its state); without, until it completes or fails.
        """
        ...

    async def update_job(
        self,
        queue_name: str,
        job_id: str,
        updates: Mapping[str, Any],
        *,
        expected_state: JobState | None = None,
    ) -> bool:
        """Change fields of a job. Returns ``False`` (and changes nothing) when the job does not
        exist or is not in ``expected_state``.

        Updatable: ``data``, ``progress``, ``opts``, ``returnvalue``, ``failed_reason``,
        ``stacktrace``, ``attempts_made``, ``stalled_count``, ``processed_at``,
        ``completed_at``, ``failed_at``, ``cancelled_at``, ``delay_until``, ``logs``,
        ``discarded`` and ``state``, which may only move a job that is not active to
        ``waiting`` or ``delayed`` (with a ``delay_until``). Claims, outcomes, cancellation and
        flows have their own methods.

        Publishes an event named after the new state when the state changes, and ``progress``
        when ``progress`` does.

        :raises InvalidArgumentError: a field that cannot be updated, or a bad value.
        :raises InvalidJobStateError: a state change the store does not allow.
        """
        ...

    async def add_log(self, queue_name: str, job_id: str, message: str) -> int:
        """Append a line to the job's logs; return how many lines it now has.

        :raises JobNotFoundError: no such job.
        """
        ...

    async def remove_job(self, queue_name: str, job_id: str) -> bool:
        """Remove a job and, recursively, its children. ``False`` if it did not exist.

        A child removed while its parent waits for it no longer counts as pending.
        Publishes ``removed``.

        :raises InvalidJobStateError: the job or one of its children is active.
        """
        ...

    async def cancel_job(self, queue_name: str, job_id: str) -> JobData | None:
        """Cancel a job; return it as it now is, or ``None`` if it does not exist.

        A waiting, delayed or waiting-children job fails at once with ``cancelled_at`` set
        (its parent's policy applies, publishes ``failed``). An active job gets ``cancelled_at``
        and stays active until its worker records the failure; its worker learns of it from
        :meth:`extend_locks` or the ``cancel-requested`` event.

        :raises InvalidJobStateError: the job already completed or failed.
        """
        ...

    # -- claiming and finishing ------------------------------------------------------------------

    async def fetch_next_job(
        self,
        queue_name: str,
        worker_id: str,
        lock_duration: Duration,
        opts: FetchOptions | None = None,
    ) -> JobData | None:
        """:meth:`fetch_next_jobs` with ``limit=1``."""
        ...

    async def fetch_next_jobs(
        self,
        queue_name: str,
        worker_id: str,
        lock_duration: Duration,
        limit: int,
        opts: FetchOptions | None = None,
    ) -> list[JobData]:
        """Atomically claim up to ``limit`` waiting jobs, in claim order (see
        :class:`FetchOptions`), skipping paused names and honouring every limit in ``opts``.

        Each claimed job becomes ``active`` with ``processed_at`` = now,
        ``lock_until`` = now + ``lock_duration``, ``locked_by`` = ``worker_id`` and a new
        ``lock_token`` that no earlier claim of any job had. No job is ever handed to two
        claimers. Publishes ``active`` for each.
        """
        ...

    async def extend_lock(
        self, queue_name: str, job_id: str, lock_token: str, duration: Duration
    ) -> bool:
        """Extend one lock to now + ``duration``; ``False`` if ``lock_token`` no longer holds it."""
        ...

    async def extend_locks(
        self, queue_name: str, locks: Mapping[str, str], duration: Duration
    ) -> dict[str, LockStatus]:
        """Extend many locks (``{job_id: lock_token}``) in one call. A lock is extended only
        while its token still holds it; the status says, per job, whether it was extended,
        extended but cancellation was requested, or lost.
        """
        ...

    async def release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool:
        """Give a claimed job back unfinished: it returns to ``waiting`` at the head of its
        priority, its attempt not counted. ``False`` if ``lock_token`` no longer holds it.
        Publishes ``waiting``.
        """
        ...

    async def finish_jobs(self, outcomes: Sequence[JobOutcome]) -> list[bool]:
        """Record many outcomes in one transaction; return, per outcome, whether it applied.

        The fence: an outcome applies only while its ``lock_token`` still holds the job's lock
        (the job is active and was claimed with that token). Otherwise nothing changes and the
        result is ``False``: a worker that lost its lock never overwrites the next run.

        Every applied outcome counts the attempt (``attempts_made`` + 1, except ``delay``),
        clears the lock and appends an :class:`AttemptRecord`. Then:

        * ``completed``: ``returnvalue``, ``completed_at``; ``opts.remove_on_complete`` applies;
          the parent records the value in ``children_values`` and, when it has no pending child
          left, moves from ``waiting-children`` to ``waiting``.
        * ``failed``: ``failed_reason``, ``failed_at``, the stack trace appended;
          ``opts.remove_on_fail`` applies; the parent's policy
          (``opts.fail_parent_on_child_failure`` of the child) applies.
        * ``retry``: back to ``waiting``, or ``delayed`` until now + ``delay``, with
          ``failed_reason`` and the stack trace recorded.
        * ``delay``: to ``delayed`` until now + ``delay``.

        Publishes an event for the state each job entered.
        """
        ...

    async def get_stalled_jobs(self, queue_name: str) -> list[JobData]:
        """Active jobs whose lock has expired."""
        ...

    async def recover_stalled_jobs(self, queue_name: str, max_stalled_count: int) -> list[JobData]:
        """Atomically take back every active job whose lock has expired; return them as they now
        are. Each one's ``stalled_count`` grows by one; if it now exceeds ``max_stalled_count``,
        or the job was cancelled, it fails (parent policy and ``remove_on_fail`` apply), else it
        returns to ``waiting`` at the head of its priority. Publishes ``stalled`` then the event
        of the new state for each.
        """
        ...

    # -- queries ----------------------------------------------------------------------------------

    async def get_active_count(self, queue_name: str) -> int:
        """How many jobs of the queue are active."""
        ...

    async def list_jobs(
        self, queue_name: str, state: JobState, start: int = 0, end: int = 100
    ) -> list[JobData]:
        """Jobs in a state, positions ``start`` to ``end`` inclusive (as BullMQ's ranges).

        Order: ``waiting`` by priority then claim order (ignoring groups), ``delayed`` by
        ``delay_until``, ``active`` by claim time, ``completed`` / ``failed`` newest first,
        ``waiting-children`` oldest first.
        """
        ...

    async def count_jobs(self, queue_name: str, state: JobState) -> int:
        """How many jobs of the queue are in a state."""
        ...

    async def get_job_counts(self, queue_name: str) -> dict[JobState, int]:
        """The count of every state (each state present, zero included)."""
        ...

    async def get_next_delayed_timestamp(self, queue_name: str) -> datetime | None:
        """The earliest ``delay_until`` of the queue's delayed jobs, or ``None``."""
        ...

    async def list_queues(self) -> list[str]:
        """Names of the queues that hold jobs or paused names, sorted."""
        ...

    async def get_group_active_count(self, queue_name: str, group_id: str) -> int:
        """How many jobs of the group are active."""
        ...

    async def get_waiting_group_count(self, queue_name: str, group_id: str) -> int:
        """How many jobs of the group are waiting."""
        ...

    async def get_metrics(
        self,
        queue_name: str,
        kind: MetricKind,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Metrics:
        """Jobs of the queue that completed (or failed for good) per minute, between ``start``
        and ``end`` (inclusive, any minute they touch), as far back as the store keeps them.

        Every final outcome counts, whatever ended the job: ``finish_jobs``, ``cancel_job``,
        stall recovery, a child's failure failing its parent.
        """
        ...

    # -- delays ------------------------------------------------------------------------------------

    async def promote_delayed_jobs(self, queue_name: str) -> int:
        """Move delayed jobs whose ``delay_until`` has come to ``waiting``; return how many.
        Publishes ``waiting`` for each."""
        ...

    async def promote_jobs(self, queue_name: str) -> int:
        """Move every delayed job to ``waiting`` now; return how many."""
        ...

    # -- pause / resume ----------------------------------------------------------------------------

    async def pause_job_name(self, queue_name: str, job_name: str) -> None:
        """Stop claims of jobs with this name; ``"__all__"`` pauses the whole queue.
        Idempotent. Publishes ``paused`` with ``data["job_name"]``."""
        ...

    async def resume_job_name(self, queue_name: str, job_name: str) -> None:
        """Undo :meth:`pause_job_name`. Idempotent. Publishes ``resumed``."""
        ...

    async def get_paused_job_names(self, queue_name: str) -> list[str]:
        """The paused names, sorted (``"__all__"`` when the whole queue is paused)."""
        ...

    # -- maintenance -------------------------------------------------------------------------------

    async def clean(
        self, queue_name: str, state: JobState, grace: Duration, limit: int | None = None
    ) -> int:
        """Remove up to ``limit`` jobs in ``state`` older than ``grace`` seconds, oldest first;
        return how many. Age counts from ``completed_at`` / ``failed_at`` for finished jobs,
        else from ``created_at``. Active jobs cannot be cleaned. Publishes ``cleaned`` with
        ``data["count"]``.

        :raises InvalidArgumentError: ``state`` is ``active``.
        """
        ...

    async def drain(self, queue_name: str) -> int:
        """Remove every waiting and delayed job; return how many. Publishes ``drained``."""
        ...

    async def obliterate(self, queue_name: str, *, force: bool = False) -> None:
        """Remove the queue entirely: its jobs, paused names and deduplication keys.

        :raises InvalidJobStateError: jobs are active and ``force`` is not set.
        """
        ...

    async def retry_jobs(self, queue_name: str, state: JobState = JobState.FAILED) -> int:
        """Move every ``failed`` (or ``completed``) job back to ``waiting`` with its attempts,
        result, failure and cancellation cleared; return how many. Publishes ``waiting``.

        :raises InvalidArgumentError: ``state`` is not ``failed`` or ``completed``.
        """
        ...

    # -- flows -------------------------------------------------------------------------------------

    async def notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None:
        """Count one child of the parent as done; when none is pending, the parent moves from
        ``waiting-children`` to ``waiting``. Returns the parent's state, ``None`` if it is gone.
        (:meth:`finish_jobs` does this itself; this is for children that end otherwise.)
        """
        ...

    async def fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool:
        """Fail a parent that waits for its children; ``False`` if it is not waiting for them."""
        ...

    async def get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]:
        """The parent's children still attached to it, in the order they were added."""
        ...

    # -- events ------------------------------------------------------------------------------------

    def subscribe(self, queue_name: str | None, callback: EventCallback) -> None:
        """Call ``callback`` for every event of a queue (``None``: of every queue)."""
        ...

    def unsubscribe(self, queue_name: str | None, callback: EventCallback | None = None) -> None:
        """Remove one callback, or every callback of ``queue_name`` when ``callback`` is None."""
        ...

    async def publish(self, event: StoreEvent) -> None:
        """Deliver an event to the queue's subscribers (in other processes too, where the store
        can). ``timestamp`` is set to the store's time when missing."""
        ...
