"""SqliteStore: the store contract on one SQLite file, shared safely by the processes of a host.

How it runs (the measurements behind these choices are in ``bench/sqlite_call_modes.py``):

* One connection per store, called directly on the event loop. A claim or an outcome write is
  a transaction of well under a millisecond, and a thread hop per call costs more than the call
  (at one job per transaction: 2.5-4x fewer jobs per second through ``anyio.to_thread`` or a
  dedicated connection thread than direct calls). Large bulk inserts, which can take longer, run
  in a worker thread while the store's other calls wait for them.
* WAL checkpoints, with their disk syncs, run in the store's background thread (see
  ``_background``), never inside a commit on the event loop.
* Every write is one ``BEGIN IMMEDIATE`` transaction with no await inside it, so nothing can
  interleave with it in this process and the write lock is taken before anything is read. The
  connection has no busy timeout (a blocked ``BEGIN`` would freeze the event loop): when another
  process holds the write lock, the call sleeps on the event loop with jittered exponential
  backoff and tries again, for up to ``lock_wait`` seconds before it raises ``StoreError``.
  Contention is waiting, never an error the user sees.
* WAL journal: readers never block the writer or each other. ``synchronous=NORMAL`` by default:
  a committed transaction survives a crash of any process; a power cut may lose the last few
  (``synchronous="full"`` trades speed for that).
* A cancelled call changes nothing: cancellation can only land on the awaits before or between
  attempts, never inside a transaction.
"""

from __future__ import annotations

import enum
import json
import os
import random
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
from anyio.lowlevel import checkpoint

from conveyor.store import (
    TERMINAL_STATES,
    WAKE_EVENTS,
    AttemptRecord,
    Clock,
    DuplicateJobError,
    Duration,
    EventType,
    FetchOptions,
    InvalidArgumentError,
    InvalidJobStateError,
    JobData,
    JobOutcome,
    JobState,
    Limiter,
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
    from_json,
    from_timestamp,
    parse_duration,
    unstructure,
)
from conveyor.store._base import Lifecycle, StoreBase

from .._jobs import (
    BEFORE_EVERY_LANE,
    JobTx,
    Lane,
    Row,
    first_in_claim_order,
    lane_page,
    record_json,
    run_now,
)
from ._background import Background
from ._schema import check_database, migrate

__all__ = ["SqliteStore"]


T = TypeVar("T")

_JOB_COLUMNS = "pk, record, state, processed_at, lock_until, locked_by, lock_token"
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_OFFLOAD_ROWS = 2000
"""Bulk inserts of more jobs than this run in a worker thread."""
_CHECKPOINT_INTERVAL = 0.1
"""Seconds between the background thread's WAL checkpoints."""
_CLAIM_CACHE = 10_000
"""How many claimed records a store keeps to finish them without reading them back."""


class _Synchronous(enum.StrEnum):
    NORMAL = "normal"
    FULL = "full"


_IN_STATE = {
    state: f"state = '{state.value}'"
    + (
        ""
        if state in (JobState.WAITING, JobState.DELAYED)
        else " AND state NOT IN ('waiting', 'delayed')"
    )
    for state in JobState
}
"""``state = '<state>'`` as SQL, spelt so that SQLite can use the partial index that holds the
jobs of that state (the values are the enum's own, never a caller's text).

SQLite's planner takes a partial index only when the query repeats the index's own ``WHERE``
terms: it cannot tell that ``state = 'active'`` implies ``state NOT IN ('waiting',
'delayed')`` (``conveyor_jobs_state``), and it never can from a bound parameter. Left to it,
counting the active jobs, finding expired locks and listing finished jobs read the whole table,
every finished job kept included: a worker with ``max_global_concurrency``, which counts the
active jobs at each claim, fell from ~1,100 jobs/s to 88 beside 100,000 finished jobs."""


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else from_timestamp(value)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


@attrs.frozen
class _Claim:
    """What a store remembers of a job it claimed, to complete it without reading it."""

    queue: str
    job_id: str
    pk: int
    version: int
    attempts_made: int
    has_attempt_logs: bool
    simple: bool
    """No parent to tell, no removal to apply."""
    worker_id: str | None
    processed_at: datetime | None

    @classmethod
    def of(cls, job: JobData, pk: int, version: int) -> _Claim:
        return cls(
            job.queue_name,
            job.id,
            pk,
            version,
            job.attempts_made,
            bool(job.attempt_logs),
            job.parent_id is None and job.opts.remove_on_complete is False,
            job.locked_by,
            job.processed_at,
        )


def _load(row: Sequence[Any]) -> Row:
    job = from_json(row[1], JobData)
    job.state = JobState(row[2])
    job.processed_at = _dt(row[3])
    job.lock_until = _dt(row[4])
    job.locked_by = row[5]
    job.lock_token = row[6]
    return Row(row[0], job)


class _Tx(JobTx):
    """One transaction on the store's connection, and the store's job primitives.

    Every primitive is synchronous underneath (no await inside a transaction): the shared
    job logic runs through :func:`run_now`, and the hot paths call the ``*_now`` forms.
    """

    def __init__(self, store: SqliteStore, conn: sqlite3.Connection, now: float) -> None:
        super().__init__(now, local=bool(store._subscribers))
        self.store = store
        self.conn = conn
        self._origin = store._origin

    def flush(self) -> None:
        """Write what the transaction kept in memory: queue counters, events, metrics."""
        if self.counters:
            self.conn.executemany(
                """UPDATE conveyor_queues SET seq = ?, tick = ?, plain_served = ?,
                    completed = completed + ?, failed = failed + ? WHERE name = ?""",
                [(*counters, queue) for queue, counters in self.counters.items()],
            )
        if self.rows:
            self.conn.execute(
                "INSERT INTO conveyor_events (origin, written, at, events) VALUES (?, ?, ?, ?)",
                (self._origin, time.time(), self.now, _ENCODER.encode(self.rows)),
            )
        minute = int(self.now // 60)
        for (queue, kind), count in self.finished.items():
            self.conn.execute(
                """INSERT INTO conveyor_metrics (queue, kind, minute, count) VALUES (?, ?, ?, ?)
                ON CONFLICT (queue, kind, minute) DO UPDATE SET count = count + excluded.count""",
                (queue, kind, minute, count),
            )
            self.conn.execute(
                "DELETE FROM conveyor_metrics WHERE queue = ? AND kind = ? AND minute < ?",
                (queue, kind, minute - self.store._metrics_minutes),
            )

    # -- the job primitives, and synchronous forms for the hot paths -------------------------------

    def counters_now(self, queue: str) -> list[int]:
        counters = self.counters.get(queue)
        if counters is None:
            row = self.conn.execute(
                "SELECT seq, tick, plain_served FROM conveyor_queues WHERE name = ?", (queue,)
            ).fetchone()
            if row is None:
                self.conn.execute("INSERT INTO conveyor_queues (name) VALUES (?)", (queue,))
                row = (0, 0, 0)
            counters = self.counters[queue] = [row[0], row[1], row[2], 0, 0]
        return counters

    async def queue_counters(self, queue: str) -> list[int]:
        return self.counters_now(queue)

    def next_seq_now(self, queue: str) -> int:
        counters = self.counters_now(queue)
        counters[0] += 1
        return counters[0]

    def rows_of(self, where: str, params: Sequence[Any]) -> list[Row]:
        """The jobs ``WHERE ...``, loaded."""
        rows = self.conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM conveyor_jobs WHERE {where}", params
        ).fetchall()
        return [_load(row) for row in rows]

    def find_now(self, queue: str | None, job_id: str | None) -> Row | None:
        if queue is None or job_id is None:
            return None
        rows = self.rows_of("queue = ? AND id = ?", (queue, job_id))
        return rows[0] if rows else None

    async def find(self, queue: str | None, job_id: str | None) -> Row | None:
        return self.find_now(queue, job_id)

    async def held(self, queue: str, job_id: str, token: str) -> Row | None:
        rows = self.rows_of(
            "queue = ? AND id = ? AND state = 'active' AND lock_token = ?", (queue, job_id, token)
        )
        return rows[0] if rows else None

    async def children(self, queue: str, job_id: str) -> list[Row]:
        return self.rows_of("parent_queue = ? AND parent_id = ? ORDER BY pk", (queue, job_id))

    async def save(self, row: Row, *, seq: int | None = None) -> None:
        job = row.job
        finished = job.completed_at if job.state is JobState.COMPLETED else job.failed_at
        self.conn.execute(
            """UPDATE conveyor_jobs SET name = ?, state = ?, lane = ?, priority = ?,
                seq = coalesce(?, seq), processed_at = ?, delay_until = ?, lock_until = ?,
                locked_by = ?, lock_token = ?, finished_at = ?, dedup_key = ?, dedup_until = ?,
                parent_queue = ?, parent_id = ?, record = ?, version = version + 1
            WHERE pk = ?""",
            (
                job.name,
                job.state.value,
                job.group_id or "",
                job.opts.priority,
                seq,
                _ts(job.processed_at),
                _ts(job.delay_until),
                _ts(job.lock_until),
                job.locked_by,
                job.lock_token,
                _ts(finished),
                job.deduplication_key,
                _ts(job.deduplication_until),
                job.parent_queue_name,
                job.parent_id,
                record_json(job),
                row.pk,
            ),
        )

    async def delete_row(self, row: Row) -> None:
        self.conn.execute("DELETE FROM conveyor_jobs WHERE pk = ?", (row.pk,))

    async def keep_newest(self, queue: str, state: JobState, keep: int) -> None:
        self.conn.execute(
            f"""DELETE FROM conveyor_jobs WHERE pk IN (
                SELECT pk FROM conveyor_jobs WHERE queue = ? AND {_IN_STATE[state]}
                ORDER BY seq DESC LIMIT -1 OFFSET ?)""",
            (queue, keep),
        )

    async def dedup_holder(self, queue: str, key: str) -> str | None:
        return self.dedup_holder_now(queue, key)

    def dedup_holder_now(self, queue: str, key: str) -> str | None:
        row = self.conn.execute(
            """SELECT id FROM conveyor_jobs WHERE queue = ? AND dedup_key = ? AND (
                dedup_until > ? OR (dedup_until IS NULL AND state NOT IN ('completed', 'failed')))
            ORDER BY pk DESC LIMIT 1""",
            (queue, key, self.now),
        ).fetchone()
        return None if row is None else str(row[0])

    async def group_queued(self, queue: str, group: str) -> int:
        row = self.conn.execute(
            "SELECT queued FROM conveyor_lanes WHERE queue = ? AND lane = ?", (queue, group)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def count_now(self, queue: str, state: JobState) -> int:
        row = self.conn.execute(
            f"SELECT count(*) FROM conveyor_jobs WHERE queue = ? AND {_IN_STATE[state]}",
            (queue,),
        ).fetchone()
        return int(row[0])

    async def count_state(self, queue: str, state: JobState) -> int:
        return self.count_now(queue, state)

    async def window(self, queue: str, scope: str, limiter: Limiter) -> int:
        self.conn.execute(
            "DELETE FROM conveyor_rate WHERE queue = ? AND scope = ? AND at <= ?",
            (queue, scope, self.now - limiter.duration),
        )
        row = self.conn.execute(
            "SELECT count(*) FROM conveyor_rate WHERE queue = ? AND scope = ?", (queue, scope)
        ).fetchone()
        return int(row[0])

    async def candidates(
        self, queue: str, lane: str, fetch: FetchOptions, paused: set[str], limit: int
    ) -> list[int]:
        where = "queue = ? AND lane = ? AND state = 'waiting'"
        args: list[Any] = [queue, lane]
        if fetch.job_name is not None:
            where += " AND name = ?"
            args.append(fetch.job_name)
        elif paused:
            # Not past every waiting job of the paused names: the first jobs of each other
            # waiting name (one index seek a name), the first of those in claim order.
            heads = [
                self._ordered(f"{where} AND name = ?", [*args, name], fetch.lifo, limit)
                for name in self._waiting_names(queue, lane)
                if name not in paused
            ]
            return first_in_claim_order(heads, limit)
        return [pk for _key, pk in self._ordered(where, args, fetch.lifo, limit)]

    async def lanes_after(self, queue: str, after: tuple[int, str], count: int) -> list[Lane]:
        return self.lanes_now(queue, after, count)

    def lanes_now(self, queue: str, after: tuple[int, str], count: int) -> list[Lane]:
        rows = self.conn.execute(
            """SELECT lane, served, active FROM conveyor_lanes
            WHERE queue = ? AND waiting > 0 AND (served, lane) > (?, ?)
            ORDER BY served, lane LIMIT ?""",
            (queue, *after, count),
        )
        return [(str(lane), int(served), int(active)) for lane, served, active in rows]

    def _waiting_names(self, queue: str, lane: str) -> list[str]:
        """The names of a lane's waiting jobs, one index seek each."""
        rows = self.conn.execute(
            """WITH RECURSIVE seen(name) AS (
                SELECT (SELECT name FROM conveyor_jobs
                    WHERE queue = ?1 AND lane = ?2 AND state = 'waiting'
                    ORDER BY name LIMIT 1)
                UNION ALL
                SELECT (SELECT name FROM conveyor_jobs
                    WHERE queue = ?1 AND lane = ?2 AND state = 'waiting' AND name > seen.name
                    ORDER BY name LIMIT 1)
                FROM seen WHERE seen.name IS NOT NULL)
            SELECT name FROM seen WHERE name IS NOT NULL""",
            (queue, lane),
        )
        return [str(row[0]) for row in rows]

    def _ordered(
        self, where: str, args: list[Any], lifo: bool, limit: int
    ) -> list[tuple[tuple[int, int], int]]:
        """Up to ``limit`` waiting jobs ``WHERE ...`` in claim order: ``((priority, order),
        pk)``, the order ``seq`` (or ``-seq``, newest first, with ``lifo``)."""
        conn = self.conn
        if not lifo:
            rows = conn.execute(
                f"""SELECT priority, seq, pk FROM conveyor_jobs WHERE {where}
                ORDER BY priority, seq LIMIT ?""",
                (*args, limit),
            ).fetchall()
            return [((priority, seq), pk) for priority, seq, pk in rows]
        # LIFO: the newest of the most urgent priority first, one priority at a time (so the
        # index serves each step; mixed sort directions would sort the whole lane).
        out: list[tuple[tuple[int, int], int]] = []
        priority: int | None = None
        while len(out) < limit:
            row = conn.execute(
                f"SELECT min(priority) FROM conveyor_jobs WHERE {where}"
                + ("" if priority is None else " AND priority > ?"),
                (*args,) if priority is None else (*args, priority),
            ).fetchone()
            if row is None or row[0] is None:
                break
            priority = int(row[0])
            rows = conn.execute(
                f"""SELECT seq, pk FROM conveyor_jobs WHERE {where} AND priority = ?
                ORDER BY seq DESC LIMIT ?""",
                (*args, priority, limit - len(out)),
            ).fetchall()
            out.extend(((priority, -seq), pk) for seq, pk in rows)
        return out


class SqliteStore(StoreBase):
    """The store contract on an SQLite file: the embedded default, safe for many processes.

    Any number of processes on one host may open the same file: claims, limits, groups,
    deduplication and pauses hold across all of them, and each process's subscribers see the
    others' events (read from an events table every ``event_poll_interval``).

    :param path: the database file (created if missing), or ``":memory:"`` for a private
        database that lives as long as the store (one process, one store).
    :param clock: where time comes from (:class:`~conveyor.store.ManualClock` in tests).
    :param lock_wait: how long a call waits for another process's write lock before it raises
        :class:`~conveyor.store.StoreError` (default 60 s).
    :param synchronous: ``"normal"`` (default: survives any process crash) or ``"full"`` (also
        survives a power cut, at some speed).
    :param event_poll_interval: how often other processes' events are looked for (default
        5 ms; only while someone subscribes).
    :param event_retention: how long events stay in the file for other processes (default 60 s).
    :param metrics_retention: how long per-minute metrics are kept (default 7 days).
    :param auto_migrate: create or upgrade the schema on :meth:`connect` (default ``True``).
    :param on_event_error: called with the exception when a subscriber raises (default: log).

    ::

        async with SqliteStore("jobs.db") as store:
            ...
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        lock_wait: Duration = 60.0,
        synchronous: str = "normal",
        event_poll_interval: Duration = 0.005,
        event_retention: Duration = 60.0,
        metrics_retention: Duration = "7 days",
        auto_migrate: bool = True,
        on_event_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise InvalidArgumentError("path", f"expected a file path, got {type(path).__name__}")
        path = os.fspath(path)
        if not path:
            raise InvalidArgumentError("path", "empty; use ':memory:' for a private database")
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidArgumentError("clock", "expected an object with a time() method")
        try:
            self._synchronous = _Synchronous(str(synchronous).lower())
        except ValueError:
            raise InvalidArgumentError(
                "synchronous", f"expected 'normal' or 'full', got {synchronous!r}"
            ) from None
        if not isinstance(auto_migrate, bool):
            raise InvalidArgumentError("auto_migrate", "expected True or False")
        self._path = path
        self._memory = path == ":memory:"
        self._clock: Clock = clock or SystemClock()
        self._lock_wait = parse_duration(lock_wait, "lock_wait", allow_zero=False)
        self._poll_interval = parse_duration(
            event_poll_interval, "event_poll_interval", allow_zero=False
        )
        self._event_retention = parse_duration(event_retention, "event_retention", allow_zero=False)
        retention = parse_duration(metrics_retention, "metrics_retention", allow_zero=False)
        self._metrics_minutes = max(int(retention // 60), 1)
        self._auto_migrate = auto_migrate
        super().__init__(on_event_error=on_event_error)
        self._conn: sqlite3.Connection | None = None
        self._origin = uuid.uuid4().hex
        self._background: Background | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._offloaded: anyio.Event | None = None
        self._next_prune = 0.0
        self._claimed: dict[str, _Claim] = {}
        """Jobs this store claimed, by lock token. An outcome for one of them whose row has
        not been written since needs no read (see _complete_claimed)."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteStore:
        """Build from ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or
        ``sqlite://:memory:``. Query parameters are options (``?lock_wait=10``); keyword
        options win over them."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sqlite":
            raise InvalidArgumentError("url", f"SqliteStore takes sqlite:// URLs, not {url!r}")
        if parts.netloc == ":memory:" or (not parts.netloc and parts.path == "/:memory:"):
            path = ":memory:"
        elif parts.netloc:
            raise InvalidArgumentError(
                "url",
                f"{url!r} names a host; write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db",
            )
        else:
            path = urllib.parse.unquote(parts.path[1:])
            if not path:
                raise InvalidArgumentError("url", f"{url!r} names no file")
        query: dict[str, Any] = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if "auto_migrate" in query:
            query["auto_migrate"] = query["auto_migrate"].lower() in ("1", "true", "yes", "on")
        known = {"lock_wait", "synchronous", "event_poll_interval", "event_retention"}
        known |= {"metrics_retention", "auto_migrate"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise InvalidArgumentError(
                "url", f"unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(path, **{**query, **options})

    @property
    def path(self) -> str:
        """The database file (``":memory:"`` for a private database)."""
        return self._path

    def __repr__(self) -> str:
        return f"<SqliteStore {self._path!r} {self._lifecycle.value}>"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        self._check_connectable()
        self._token = anyio.lowlevel.current_token()
        # Opening and migrating may wait on other processes: do it off the event loop.
        self._conn = await anyio.to_thread.run_sync(self._open)
        self._lifecycle = Lifecycle.CONNECTED
        if not self._memory:
            self._background = Background(
                self._path,
                self._origin,
                self._token,
                self._deliver_foreign,
                poll_interval=self._poll_interval,
                checkpoint_interval=_CHECKPOINT_INTERVAL,
            )
            if self._subscribers:
                self._subscribed()

    def _open(self) -> sqlite3.Connection:
        """Open, check and migrate the file (in a worker thread: it may wait on others)."""
        where = "the in-memory database" if self._memory else repr(self._path)
        if not self._memory:
            folder = os.path.dirname(os.path.abspath(self._path))
            if not os.path.isdir(folder):
                raise StoreError(f"cannot open {where}: folder {folder!r} does not exist")
        deadline = time.monotonic() + self._lock_wait
        backoff = 0.005
        while True:
            try:
                return self._open_once(where)
            except sqlite3.OperationalError as exc:
                # Switching to WAL and the first migration need locks that SQLite refuses
                # at once, without its busy handler, when processes start together: retry.
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise StoreError(f"cannot use {where}: {exc}") from exc
                time.sleep(random.uniform(0.0, backoff))
                backoff = min(backoff * 2, 0.2)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot use {where}: {exc}") from exc

    def _open_once(self, where: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {where}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._lock_wait * 1000)}")
            # Checked (reading only) before anything is written: a foreign file stays as it was.
            check_database(conn, where)
            if not self._memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot put {where} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self._synchronous.value.upper()}")
            # A bigger page cache than the 2 MB default: index pages stay in memory as the
            # queue grows (custom job ids land anywhere in the id index).
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("PRAGMA foreign_keys = OFF")
            migrate(conn, where, apply=self._auto_migrate)
            # From now on the event loop never blocks on another process's lock (see _run),
            # nor on a checkpoint's disk syncs (the background thread checkpoints).
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    async def disconnect(self) -> None:
        await checkpoint()
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        self._subscribers.clear()
        background, self._background = self._background, None
        if background is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(background.stop)
        if self._offloaded is not None:
            with anyio.CancelScope(shield=True):
                await self._offloaded.wait()
        conn, self._conn = self._conn, None
        if conn is not None:
            # The last connection to close checkpoints the WAL and syncs: not on the loop.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)

    async def now(self) -> datetime:
        await self._enter()
        return from_timestamp(self._clock.time())

    async def _enter(self) -> sqlite3.Connection:
        await checkpoint()
        while self._offloaded is not None:
            await self._offloaded.wait()
        self._check_connected()
        assert self._conn is not None  # connected means opened
        return self._conn

    # -- running transactions ----------------------------------------------------------------------

    async def _write(self, body: Callable[[_Tx], T], *, offload: bool = False) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction, waiting out other writers."""
        return await self._run(body, write=True, offload=offload)

    async def _read(self, body: Callable[[_Tx], T]) -> T:
        """Run ``body`` in one read transaction (a consistent snapshot)."""
        return await self._run(body, write=False, offload=False)

    async def _run(self, body: Callable[[_Tx], T], *, write: bool, offload: bool) -> T:
        conn = await self._enter()
        deadline: float | None = None
        backoff = 0.0005
        while True:
            tx = _Tx(self, conn, self._clock.time())
            try:
                if offload:
                    done = self._offloaded = anyio.Event()
                    try:
                        with anyio.CancelScope(shield=True):
                            result = await anyio.to_thread.run_sync(self._attempt, tx, body, write)
                    finally:
                        self._offloaded = None
                        done.set()
                else:
                    result = self._attempt(tx, body, write)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"SQLite error on {self._path!r}: {exc}") from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._lock_wait
                elif now >= deadline:
                    raise StoreError(
                        f"{self._path!r} stayed locked by another connection for "
                        f"{self._lock_wait:g} s (lock_wait); is a process stuck in a transaction?"
                    ) from exc
                await anyio.sleep(random.uniform(0.0, backoff))
                backoff = min(backoff * 2, 0.05)
                conn = await self._enter()
                continue
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite error on {self._path!r}: {exc}") from exc
            for callback in tx.callbacks:
                callback()
            if tx.events:
                self._deliver(tx.events)
            return result

    def _attempt(self, tx: _Tx, body: Callable[[_Tx], T], write: bool) -> T:
        conn = tx.conn
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = body(tx)
            if write:
                tx.flush()
                self._maybe_prune(tx)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _maybe_prune(self, tx: _Tx) -> None:
        """Now and then, inside a write: drop events older than ``event_retention``."""
        wall = time.monotonic()
        if wall < self._next_prune:
            return
        self._next_prune = wall + 1.0
        # By the wall clock (the store's clock may be a test's), oldest rows first, and never
        # the newest row: it keeps event ids growing (see _schema).
        cutoff = time.time() - self._event_retention
        row = tx.conn.execute(
            """SELECT coalesce(
                (SELECT id FROM conveyor_events WHERE written >= ? ORDER BY id LIMIT 1),
                (SELECT max(id) FROM conveyor_events))""",
            (cutoff,),
        ).fetchone()
        if row[0] is not None:
            tx.conn.execute("DELETE FROM conveyor_events WHERE id < ?", (row[0],))

    # -- adding ------------------------------------------------------------------------------------

    async def _save_jobs(self, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        return await self._write(
            lambda tx: self._insert(tx, jobs, flow=flow), offload=len(jobs) > _OFFLOAD_ROWS
        )

    def _insert(self, tx: _Tx, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        conn = tx.conn
        out, fresh = run_now(tx.plan_insert(jobs, flow=flow))
        now = tx.now
        rows = [
            (
                job.queue_name,
                job.id,
                job.name,
                job.state.value,
                job.group_id or "",
                job.opts.priority,
                seq,
                now,
                _ts(job.delay_until),
                job.deduplication_key,
                _ts(job.deduplication_until),
                job.parent_queue_name,
                job.parent_id,
                record_json(job),
            )
            for job, seq in fresh
        ]
        queues = {job.queue_name for job, _seq in fresh}
        conn.executemany(
            "UPDATE conveyor_queues SET live = 1 WHERE name = ? AND live = 0",
            [(q,) for q in queues],
        )
        try:
            conn.executemany(
                """INSERT INTO conveyor_jobs (queue, id, name, state, lane, priority, seq,
                    created_at, delay_until, dedup_key, dedup_until, parent_queue, parent_id,
                    record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                rows,
            )
        except sqlite3.IntegrityError:
            for row in rows:
                exists = conn.execute(
                    "SELECT 1 FROM conveyor_jobs WHERE queue = ? AND id = ?", row[:2]
                ).fetchone()
                if exists is not None:
                    raise DuplicateJobError(row[0], row[1]) from None
            raise
        return out

    # -- reading -----------------------------------------------------------------------------------

    async def _get_job(self, queue_name: str, job_id: str) -> JobData | None:
        def body(tx: _Tx) -> JobData | None:
            row = tx.find_now(queue_name, job_id)
            return None if row is None else row.job

        return await self._read(body)

    async def _find_job_by_id(self, job_id: str) -> JobData | None:
        def body(tx: _Tx) -> JobData | None:
            rows = tx.rows_of("id = ? ORDER BY pk LIMIT 1", (job_id,))
            return rows[0].job if rows else None

        return await self._read(body)

    async def _find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None:
        def body(tx: _Tx) -> JobData | None:
            holder = tx.dedup_holder_now(queue_name, key)
            row = None if holder is None else tx.find_now(queue_name, holder)
            return None if row is None else row.job

        return await self._read(body)

    # -- changing ----------------------------------------------------------------------------------

    async def _update_job(
        self,
        queue_name: str,
        job_id: str,
        clean: dict[str, Any],
        expected_state: JobState | None,
    ) -> bool:
        return await self._write(
            lambda tx: run_now(tx.update_job(queue_name, job_id, clean, expected_state))
        )

    async def _add_log(self, queue_name: str, job_id: str, message: str) -> int:
        return await self._write(lambda tx: run_now(tx.add_log(queue_name, job_id, message)))

    async def _remove_job(self, queue_name: str, job_id: str) -> bool:
        return await self._write(lambda tx: run_now(tx.remove_job(queue_name, job_id)))

    async def _cancel_job(self, queue_name: str, job_id: str) -> JobData | None:
        return await self._write(lambda tx: run_now(tx.cancel_job(queue_name, job_id)))

    # -- claiming ----------------------------------------------------------------------------------

    async def _fetch_next_jobs(
        self, queue_name: str, worker_id: str, duration: float, limit: int, fetch: FetchOptions
    ) -> list[JobData]:
        return await self._write(
            lambda tx: self._claim(tx, queue_name, worker_id, duration, limit, fetch)
        )

    def _claim(
        self,
        tx: _Tx,
        queue: str,
        worker_id: str,
        duration: float,
        limit: int,
        fetch: FetchOptions,
    ) -> list[JobData]:
        conn = tx.conn
        # The first group lanes with waiting jobs in turn order (trigger-kept counts; the rest
        # are read as the turns reach them), and when the lane of jobs without a group was
        # served if it has one waiting (an index probe: those jobs keep no counts).
        first = tx.lanes_now(queue, BEFORE_EVERY_LANE, lane_page(limit))
        plain = conn.execute(
            """SELECT plain_served FROM conveyor_queues WHERE name = ? AND EXISTS (
                SELECT 1 FROM conveyor_jobs WHERE queue = ? AND lane = '' AND state = 'waiting')""",
            (queue, queue),
        ).fetchone()
        if not first and plain is None:
            return []
        paused = {
            row[0]
            for row in conn.execute("SELECT name FROM conveyor_paused WHERE queue = ?", (queue,))
        }
        plain_served = None if plain is None else int(plain[0])
        picks = run_now(tx.pick(queue, first, plain_served, paused, fetch, limit))
        if not picks:
            return []
        seqs, tokens, served, scopes = run_now(tx.plan_claims(queue, worker_id, picks, fetch))
        now = tx.now
        claimed: list[JobData] = []
        remember: list[tuple[str, _Claim]] = []
        processed = from_timestamp(now)
        lock_until = now + duration
        for (pk, _lane), seq, token in zip(picks, seqs, tokens, strict=True):
            record, version = conn.execute(
                """UPDATE conveyor_jobs SET state = 'active', seq = ?, processed_at = ?,
                    lock_until = ?, locked_by = ?, lock_token = ?, version = version + 1
                WHERE pk = ? RETURNING record, version""",
                (seq, now, lock_until, worker_id, token, pk),
            ).fetchone()
            job = from_json(record, JobData)
            job.state = JobState.ACTIVE
            job.processed_at = processed
            job.lock_until = from_timestamp(lock_until)
            job.locked_by = worker_id
            job.lock_token = token
            tx.emit_state(job, JobState.WAITING)
            claimed.append(job)
            remember.append((token, _Claim.of(job, pk, version)))
        if served:
            conn.executemany(
                "UPDATE conveyor_lanes SET served = ? WHERE queue = ? AND lane = ?",
                [(tick, queue, lane) for lane, tick in served.items()],
            )
        if scopes:
            conn.executemany(
                "INSERT INTO conveyor_rate (queue, scope, at) VALUES (?, ?, ?)",
                [(queue, scope, now) for scope in scopes],
            )
        tx.after_commit(lambda: self._remember(remember))
        return claimed

    def _complete_claimed(self, tx: _Tx, claim: _Claim, outcome: JobOutcome) -> bool:
        """The common outcome, written without reading the job: it completed, it has no
        parent and nothing to remove, and its row was not written since this store claimed
        it (the version says so). The record is patched in place by SQLite's JSON functions.
        Returns ``False``, having changed nothing, when the row was written since (progress,
        logs, a cancel request...): the caller then reads it afresh.
        """
        finished = from_timestamp(tx.now)
        attempt = _ENCODER.encode(
            unstructure(
                AttemptRecord(
                    attempt=claim.attempts_made + 1,
                    worker_id=claim.worker_id,
                    started_at=claim.processed_at,
                    finished_at=finished,
                    outcome=OutcomeKind.COMPLETED.value,
                )
            )
        )
        # One json_set call: each JSON function call parses and writes the whole record again.
        logs = (
            "'$.attempt_logs[#]', json(?)"
            if claim.has_attempt_logs
            else ("'$.attempt_logs', json_array(json(?))")
        )
        returnvalue = outcome.returnvalue
        cursor = tx.conn.execute(
            f"""UPDATE conveyor_jobs SET state = 'completed', seq = ?, lock_until = NULL,
                locked_by = NULL, lock_token = NULL, finished_at = ?, version = version + 1,
                record = json_set(record, {logs}, '$.returnvalue', json(?),
                    '$.completed_at', ?, '$.attempts_made', ?)
            WHERE pk = ? AND version = ?""",
            (
                tx.next_seq_now(claim.queue),
                tx.now,
                attempt,
                _ENCODER.encode(returnvalue),
                finished.isoformat(),
                claim.attempts_made + 1,
                claim.pk,
                claim.version,
            ),
        )
        if cursor.rowcount != 1:
            return False
        tx.tally(tx.counters_now(claim.queue), claim.queue, JobState.COMPLETED)
        tx.emit(
            claim.queue,
            JobState.COMPLETED.value,
            claim.job_id,
            prev=JobState.ACTIVE.value,
            returnvalue=copy_json(returnvalue),
        )
        tx.after_commit(lambda: self._claimed.pop(outcome.lock_token, None))
        return True

    def _remember(self, claimed: list[tuple[str, _Claim]]) -> None:
        cache = self._claimed
        cache.update(claimed)
        while len(cache) > _CLAIM_CACHE:  # jobs finished elsewhere (stalled, taken over)
            del cache[next(iter(cache))]

    async def _extend_locks(
        self, queue_name: str, locks: Mapping[str, str], seconds: float
    ) -> dict[str, LockStatus]:
        pairs = list(locks.items())

        def body(tx: _Tx) -> dict[str, LockStatus]:
            out: dict[str, LockStatus] = {}
            until = tx.now + seconds
            for job_id, token in pairs:
                row = tx.conn.execute(
                    """UPDATE conveyor_jobs SET lock_until = ?
                    WHERE queue = ? AND id = ? AND state = 'active' AND lock_token = ?
                    RETURNING json_extract(record, '$.cancelled_at') IS NOT NULL""",
                    (until, queue_name, job_id, token),
                ).fetchone()
                if row is None:
                    out[job_id] = LockStatus.LOST
                else:
                    out[job_id] = LockStatus.CANCEL_REQUESTED if row[0] else LockStatus.EXTENDED
            return out

        return await self._write(body)

    async def _release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool:
        return await self._write(
            lambda tx: run_now(tx.release_lock(queue_name, job_id, lock_token))
        )

    async def _finish_jobs(self, clean: list[JobOutcome]) -> list[bool]:
        return await self._write(lambda tx: [self._finish(tx, outcome) for outcome in clean])

    def _finish(self, tx: _Tx, outcome: JobOutcome) -> bool:
        claim = self._claimed.get(outcome.lock_token)
        if (
            claim is not None
            and claim.simple
            and outcome.kind is OutcomeKind.COMPLETED
            and outcome.failed_reason is None
            and outcome.stacktrace is None
            and claim.queue == outcome.queue_name
            and claim.job_id == outcome.job_id
            and self._complete_claimed(tx, claim, outcome)
        ):
            return True
        return run_now(tx.finish(outcome))

    # -- flows -------------------------------------------------------------------------------------

    async def _notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None:
        return await self._write(lambda tx: run_now(tx.child_done(parent_queue_name, parent_id)))

    async def _fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool:
        return await self._write(
            lambda tx: run_now(
                tx.fail_parent_on_child_failure(parent_queue_name, parent_id, reason)
            )
        )

    async def _get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]:
        return await self._read(
            lambda tx: [row.job for row in run_now(tx.children(parent_queue_name, parent_id))]
        )

    # -- stalled jobs ------------------------------------------------------------------------------

    def _expired(self, tx: _Tx, queue: str) -> list[Row]:
        return tx.rows_of(
            f"queue = ? AND {_IN_STATE[JobState.ACTIVE]} AND lock_until <= ? ORDER BY seq",
            (queue, tx.now),
        )

    async def _get_stalled_jobs(self, queue_name: str) -> list[JobData]:
        return await self._read(lambda tx: [row.job for row in self._expired(tx, queue_name)])

    async def _recover_stalled_jobs(self, queue_name: str, max_stalled_count: int) -> list[JobData]:
        return await self._write(
            lambda tx: run_now(
                tx.recover_stalled(queue_name, self._expired(tx, queue_name), max_stalled_count)
            )
        )

    # -- queries -----------------------------------------------------------------------------------

    async def _list_jobs(
        self, queue_name: str, state: JobState, start: int, end: int
    ) -> list[JobData]:
        order = {
            JobState.WAITING: "priority, seq",
            JobState.DELAYED: "delay_until, seq",
            JobState.COMPLETED: "seq DESC",
            JobState.FAILED: "seq DESC",
        }.get(state, "seq")
        count = -1 if end == -1 else max(end - start + 1, 0)

        def body(tx: _Tx) -> list[JobData]:
            rows = tx.rows_of(
                f"queue = ? AND {_IN_STATE[state]} ORDER BY {order} LIMIT ? OFFSET ?",
                (queue_name, count, start),
            )
            return [row.job for row in rows]

        return await self._read(body)

    async def _count_jobs(self, queue_name: str, state: JobState) -> int:
        return await self._read(lambda tx: tx.count_now(queue_name, state))

    async def _get_job_counts(self, queue_name: str) -> dict[JobState, int]:
        return await self._read(
            lambda tx: {state: tx.count_now(queue_name, state) for state in JobState}
        )

    async def _get_next_delayed_timestamp(self, queue_name: str) -> datetime | None:
        def body(tx: _Tx) -> datetime | None:
            row = tx.conn.execute(
                """SELECT delay_until FROM conveyor_jobs WHERE queue = ? AND state = 'delayed'
                ORDER BY delay_until LIMIT 1""",
                (queue_name,),
            ).fetchone()
            return None if row is None else from_timestamp(row[0])

        return await self._read(body)

    async def list_queues(self) -> list[str]:
        def body(tx: _Tx) -> list[str]:
            # Distinct queue names by index seeks, one per queue (not a scan of every job).
            rows = tx.conn.execute(
                """WITH RECURSIVE names(name) AS (
                    SELECT min(queue) FROM conveyor_jobs
                    UNION ALL
                    SELECT (SELECT min(queue) FROM conveyor_jobs WHERE queue > names.name)
                    FROM names WHERE names.name IS NOT NULL
                )
                SELECT name FROM names WHERE name IS NOT NULL
                UNION SELECT queue FROM conveyor_paused ORDER BY 1"""
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._read(body)

    async def _lane_count(self, queue_name: str, group_id: str, column: str) -> int:
        check_name(queue_name, "queue_name")
        check_name(group_id, "group_id")

        def body(tx: _Tx) -> int:
            row = tx.conn.execute(
                f"SELECT {column} FROM conveyor_lanes WHERE queue = ? AND lane = ?",
                (queue_name, group_id),
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(body)

    async def get_group_active_count(self, queue_name: str, group_id: str) -> int:
        return await self._lane_count(queue_name, group_id, "active")

    async def get_waiting_group_count(self, queue_name: str, group_id: str) -> int:
        return await self._lane_count(queue_name, group_id, "waiting")

    async def _get_metrics(
        self, queue_name: str, kind: MetricKind, first: float, last: float
    ) -> Metrics:
        column = "completed" if kind is MetricKind.COMPLETED else "failed"

        def body(tx: _Tx) -> Metrics:
            total = tx.conn.execute(
                f"SELECT {column} FROM conveyor_queues WHERE name = ?", (queue_name,)
            ).fetchone()
            oldest = int(tx.now // 60) - self._metrics_minutes
            rows = tx.conn.execute(
                """SELECT minute, count FROM conveyor_metrics
                WHERE queue = ? AND kind = ? AND minute >= ? ORDER BY minute""",
                (queue_name, kind.value, oldest),
            ).fetchall()
            buckets = [
                MetricsBucket(from_timestamp(minute * 60), count)
                for minute, count in rows
                if first <= minute <= last
            ]
            return Metrics(kind, 0 if total is None else int(total[0]), buckets)

        return await self._read(body)

    # -- delays ------------------------------------------------------------------------------------

    async def _promote_delayed_jobs(self, queue_name: str) -> int:
        return await self._write(lambda tx: self._promote(tx, queue_name, due=True))

    async def _promote_jobs(self, queue_name: str) -> int:
        return await self._write(lambda tx: self._promote(tx, queue_name, due=False))

    def _promote(self, tx: _Tx, queue: str, *, due: bool) -> int:
        where = "queue = ? AND state = 'delayed'" + (" AND delay_until <= ?" if due else "")
        params = (queue, tx.now) if due else (queue,)
        return run_now(tx.promote(tx.rows_of(where + " ORDER BY delay_until, seq", params)))

    # -- pause / resume ----------------------------------------------------------------------------

    async def _pause_job_name(self, queue_name: str, job_name: str) -> None:
        def body(tx: _Tx) -> None:
            tx.conn.execute(
                "INSERT OR IGNORE INTO conveyor_paused (queue, name) VALUES (?, ?)",
                (queue_name, job_name),
            )
            tx.conn.execute(
                """INSERT INTO conveyor_queues (name) VALUES (?)
                ON CONFLICT (name) DO UPDATE SET live = 1""",
                (queue_name,),
            )
            tx.emit(queue_name, EventType.PAUSED, None, job_name=job_name)

        await self._write(body)

    async def _resume_job_name(self, queue_name: str, job_name: str) -> None:
        def body(tx: _Tx) -> None:
            tx.conn.execute(
                "DELETE FROM conveyor_paused WHERE queue = ? AND name = ?", (queue_name, job_name)
            )
            tx.emit(queue_name, EventType.RESUMED, None, job_name=job_name)

        await self._write(body)

    async def _get_paused_job_names(self, queue_name: str) -> list[str]:
        def body(tx: _Tx) -> list[str]:
            rows = tx.conn.execute(
                "SELECT name FROM conveyor_paused WHERE queue = ? ORDER BY name", (queue_name,)
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._read(body)

    # -- maintenance -------------------------------------------------------------------------------

    async def _clean(
        self, queue_name: str, state: JobState, seconds: float, limit: int | None
    ) -> int:
        def body(tx: _Tx) -> int:
            cutoff = tx.now - seconds
            if state in TERMINAL_STATES:
                where, order = "finished_at <= ?", "seq"
            else:
                where = "created_at <= ?"
                order = {
                    JobState.WAITING: "created_at, priority, seq",
                    JobState.DELAYED: "created_at, delay_until, seq",
                }.get(state, "created_at, seq")
            rows = tx.rows_of(
                f"queue = ? AND {_IN_STATE[state]} AND {where} ORDER BY {order} LIMIT ?",
                (queue_name, cutoff, -1 if limit is None else limit),
            )
            count = run_now(tx.delete_all(rows))
            tx.emit(queue_name, EventType.CLEANED, None, state=state.value, count=count)
            return count

        return await self._write(body)

    async def _drain(self, queue_name: str) -> int:
        def body(tx: _Tx) -> int:
            rows = [  # (a state at a time: each on its partial index, see _IN_STATE)
                *tx.rows_of(f"queue = ? AND {_IN_STATE[JobState.WAITING]}", (queue_name,)),
                *tx.rows_of(f"queue = ? AND {_IN_STATE[JobState.DELAYED]}", (queue_name,)),
            ]
            count = run_now(tx.delete_all(rows))
            tx.emit(queue_name, EventType.DRAINED, None, count=count)
            return count

        return await self._write(body)

    async def _obliterate(self, queue_name: str, force: bool) -> None:
        def body(tx: _Tx) -> None:
            active = tx.count_now(queue_name, JobState.ACTIVE)
            if active and not force:
                raise InvalidJobStateError(
                    f"queue {queue_name!r} has {active} active jobs; pass force=True to remove "
                    "it anyway"
                )
            conn = tx.conn
            exists = conn.execute(
                "SELECT 1 FROM conveyor_queues WHERE name = ? AND live UNION ALL "
                "SELECT 1 FROM conveyor_paused WHERE queue = ? LIMIT 1",
                (queue_name, queue_name),
            ).fetchone()
            if exists is None:
                return
            # Children in other queues of this queue's jobs lose their parent; parents in
            # other queues of this queue's unfinished jobs stop waiting for them.
            rows = tx.rows_of(
                """queue = ? AND parent_id IS NOT NULL AND parent_queue != ?
                AND state NOT IN ('completed', 'failed')""",
                (queue_name, queue_name),
            )
            conn.execute("DELETE FROM conveyor_jobs WHERE queue = ?", (queue_name,))
            for row in rows:
                parent_queue, parent_id = row.job.parent_queue_name, row.job.parent_id
                if parent_queue is not None and parent_id is not None:
                    run_now(tx.child_done(parent_queue, parent_id))
            for table, column in (
                ("conveyor_paused", "queue"),
                ("conveyor_lanes", "queue"),
                ("conveyor_rate", "queue"),
                ("conveyor_metrics", "queue"),
            ):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (queue_name,))
            # The row stays for its sequence: lock tokens of the queue never repeat.
            conn.execute(
                """UPDATE conveyor_queues SET live = 0, tick = 0, plain_served = 0,
                    completed = 0, failed = 0 WHERE name = ?""",
                (queue_name,),
            )
            counters = tx.counters.get(queue_name)
            if counters is not None:
                counters[1:] = [0, 0, 0, 0]
            tx.emit(queue_name, EventType.OBLITERATED, None)

        await self._write(body)

    async def _retry_jobs(self, queue_name: str, state: JobState) -> int:
        def body(tx: _Tx) -> int:
            where = f"queue = ? AND {_IN_STATE[state]} ORDER BY seq"
            return run_now(tx.retry(tx.rows_of(where, (queue_name,))))

        return await self._write(body)

    async def truncate_all(self) -> None:
        """Remove every job, queue, paused name, metric and event from the file. For tests."""

        def body(tx: _Tx) -> None:
            for table in (
                "conveyor_jobs",
                "conveyor_lanes",
                "conveyor_queues",
                "conveyor_paused",
                "conveyor_rate",
                "conveyor_metrics",
                "conveyor_events",
            ):
                tx.conn.execute(f"DELETE FROM {table}")

        await self._write(body)

    # -- events ------------------------------------------------------------------------------------

    def _subscribed(self) -> None:
        if self._background is not None:
            # Once a subscriber wants more than wake-ups, every event, from then on (as
            # PgStore listens to its second channel).
            background = self._background
            if background.only is not None or not background.listening:
                background.only = None if self._wants_beyond(WAKE_EVENTS) else WAKE_EVENTS
            background.listen(self._path)

    def _unsubscribed(self) -> None:
        if self._background is not None:
            self._background.mute()

    async def _publish(self, clean: StoreEvent) -> None:
        def body(tx: _Tx) -> None:
            tx.publish(clean)

        await self._write(body)

    def _deliver_foreign(self, events: list[StoreEvent]) -> None:
        if self._lifecycle is Lifecycle.CONNECTED:
            self._deliver(events)
