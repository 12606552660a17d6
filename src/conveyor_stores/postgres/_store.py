"""PgStore: the store contract on PostgreSQL, for workers on many hosts.

How it runs:

* Connections are psycopg's libpq protocol driven by AnyIO (``_wire``): native under asyncio
  and trio, one round trip per statement, several statements per round trip where they do not
  depend on each other (``bench/pg_call_modes.py`` measured the choices).
* Claims of plain jobs (no group waiting, no queue-wide limit, FIFO) are one ``FOR UPDATE SKIP
  LOCKED`` statement, simple completions (see ``_complete_claimed``) one statement per batch,
  and adds of plain new jobs (see ``_insert_plain``) one round trip: they run side by side
  across processes, without the schema lock.
* Every other write runs in one transaction that first takes a transaction-level advisory lock
  keyed on the schema, so those writers run one at a time, as on SQLite: limits, groups,
  deduplication and pauses hold across every process and host by construction. They lock the
  job rows they read (``FOR UPDATE``), so they and the side-by-side statements wait for each
  other instead of overwriting each other. Reads run without locks, on PostgreSQL's snapshots:
  a read of one statement on its own (one round trip), a read of several in one read-only
  transaction.
* Time is the database server's clock (``clock_timestamp()``, read once per transaction, in
  the round trip that begins it): hosts' clocks may drift, lock expiry and delays do not.
  Tests pass a :class:`~conveyor.store.ManualClock` instead.
* Job records are ``json`` (the text as written; ``jsonb`` would turn ``1e300`` into an int).
* Events: each write transaction publishes its events with ``NOTIFY`` (delivered at commit,
  in commit order, payloads kept under PostgreSQL's 8,000 bytes); a listener thread per store
  delivers other processes' events to this store's subscribers while it has any. Claims and
  completions send theirs only while some process listens to every event (``_QUIET``). With
  ``listen=False`` (for transaction-mode poolers, which drop ``LISTEN``) subscribers see this
  process's events only, and workers find other processes' jobs by polling.
* A lost connection raises :class:`~conveyor.store.StoreError` to the caller; the next call
  opens a new one. A cancelled call drops its connection, and PostgreSQL rolls back whatever
  it had not committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import select
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import attrs
import psycopg
from anyio.lowlevel import checkpoint
from psycopg import sql

from conveyor.store import (
    ALL_JOB_NAMES,
    TERMINAL_STATES,
    WAKE_EVENTS,
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
    check_int,
    check_name,
    copy_json,
    from_timestamp,
    parse_duration,
    structure,
)
from conveyor.store._base import Lifecycle, StoreBase
from conveyor.store._validate import (
    HandedOver,
    check_jobs,
    take_handed_over,
)

from .._jobs import (
    BEFORE_EVERY_LANE,
    JobTx,
    Lane,
    Row,
    first_in_claim_order,
    lane_page,
    record_fields,
    record_json,
)
from ._schema import MIGRATIONS, SCHEMA_VERSION, SHARDS, qualified
from ._wire import PgConnection, PgPool, Rows

__all__ = ["PgStore"]

T = TypeVar("T")
log = logging.getLogger("conveyor.stores.postgres")

_JOB_COLUMNS = (
    "pk, record, state, processed_at, lock_until, locked_by, lock_token, created_at, delay_until"
)
"""What a read of a job selects. A record need not hold ``created_at`` and ``delay_until``
(a plain add leaves them out: the record is made before the server's time is known), so every
read takes them from their columns, which every write keeps."""
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_NOTIFY_LIMIT = 7_900
"""Bytes per NOTIFY payload (PostgreSQL refuses 8,000 and more)."""
_PLACEHOLDER = re.compile(r"\?")
_STAMP = datetime(1, 1, 1, tzinfo=UTC)
"""A stand-in for the server's time in a record made before the statement that writes it."""
_STAMP_ISO = _STAMP.isoformat()
_STAMP_JSON = _ENCODER.encode(_STAMP_ISO)
_WAITING_ITEM = '"waiting",'
_DELAYED_ITEM = '"delayed",'
_ADDED_DATA = '{"prev":null}'
_HEAD_ROOM = 80
"""Bytes a NOTIFY payload's head (origin, time) takes, with room to spare."""
_INSERT_CHUNK = 250
"""Jobs per INSERT statement of a bulk add."""
_FIRST_CHUNK = 50
"""Jobs in a bulk add's first INSERT: the server starts on it while the rest are made."""
_CLAIM_PLANNING = """set_config('enable_seqscan', 'off', true) AS scan,
    set_config('enable_bitmapscan', 'off', true) AS bitmap,
    set_config('jit', 'off', true) AS jit"""
"""Settings (in a ``FROM`` list) for the rest of a claim's transaction.

* They keep its plan on the claim indexes: an index scan in claim order that stops at the
  limit. Left to the statistics, a claim after an ``ANALYZE`` that ran while the queue was
  paused (the paused check then looks like it leaves no job) or nearly empty chose to read
  every waiting job and sort them, at each claim: ~100 times the work at 3,000 waiting jobs,
  and growing with them.
* No JIT compilation. The plain claim's plan holds the paused-names branch, which runs only
  while names are paused but is costed as a sort of every waiting job. Once the table held
  ~50,000 jobs (finished ones count), the plan's cost passed ``jit_above_cost`` (100,000 by
  default), and every claim compiled its expressions first: ~55 ms a claim, for a statement
  that runs in ~3. A single worker at concurrency 10 went from ~4,500 jobs/s to ~180.
"""
_QUIET = """set_config('conveyor.quiet',
    pg_try_advisory_xact_lock_shared(hashtextextended(?, 0))::text, true) AS quiet"""
"""A setting (in a ``FROM`` list) that says, for the rest of the transaction, whether it may
leave out the events of its claims and completions: ``true`` when it holds the listeners'
barrier lock (shared, never waited for), which a process about to listen to every event takes
exclusively once it has said so in ``conveyor_listeners`` (see ``_Listener._register``). Set
by a statement of its own, before the one that sends the events: that one's snapshot, taken
after the lock, sees every listener that registered before the lock was taken."""
_EVENTS_WANTED = """(current_setting('conveyor.quiet', true) IS DISTINCT FROM 'true'
    OR EXISTS (SELECT 1 FROM {listeners}))"""
"""Whether a claim or a completion sends its events: some process listens to every event, or
the transaction could not rule that out (``_QUIET``)."""
_WAITING_NAMES = """WITH RECURSIVE seen(name) AS (
    (SELECT j.name FROM {jobs} AS j
    WHERE j.queue = ? AND j.lane = ? AND j.state = 'waiting'
    ORDER BY j.name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.name FROM {jobs} AS j
        WHERE j.queue = ? AND j.lane = ? AND j.state = 'waiting' AND j.name > seen.name
        ORDER BY j.name LIMIT 1)
    FROM seen WHERE seen.name IS NOT NULL)"""
"""The names of a lane's waiting jobs, one seek each on the claim-by-name index: the rows of
``seen`` (the last one NULL). Parameters: queue, lane, queue, lane."""
_FIRST_OF_EACH_NAME = f"""{_WAITING_NAMES}
SELECT c.pk, c.priority, c.seq FROM seen CROSS JOIN LATERAL (
    SELECT j.pk, j.priority, j.seq FROM {{jobs}} AS j
    WHERE j.queue = ? AND j.lane = ? AND j.state = 'waiting' AND j.name = seen.name
    ORDER BY j.priority, j.seq LIMIT ? FOR UPDATE OF j SKIP LOCKED) AS c
WHERE seen.name IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM {{paused}} AS p WHERE p.queue = ? AND p.name = seen.name)
ORDER BY c.priority, c.seq LIMIT ?"""
"""A lane's first ``limit`` claimable jobs in claim order while names are paused: the first
jobs of each waiting name not paused, not a walk past every waiting job of the paused names.
Parameters: queue, lane (twice, for the names), queue, lane, limit, queue, limit."""
_LANES_AFTER = """SELECT lane, served, active FROM {lanes} WHERE queue = ? AND waiting > 0
    AND (served, lane) > (?, ?) ORDER BY served, lane LIMIT ?"""
"""A page of a claim's group lanes with waiting jobs, in turn order, after ``(served, lane)``
(see ``JobTx.lanes_after``; the first page is after ``BEFORE_EVERY_LANE``)."""
_SHARD = f"(pg_backend_pid() % {SHARDS})::smallint"
"""The shard of the queue totals and metrics rows a transaction adds to: its connection's."""
_CLAIM_CACHE = 10_000
"""Claims remembered for completing them without a read (see ``_Claim``)."""


def _event_item(row: tuple[Any, ...]) -> str:
    """One event ``(queue, type, job_id, data(, at))`` as it goes into a NOTIFY payload; one
    too big for any payload goes without its data (other processes read the job for it)."""
    item = _ENCODER.encode(row)  # (ASCII: one byte a character)
    if len(item) + _HEAD_ROOM > _NOTIFY_LIMIT:
        item = _ENCODER.encode((*row[:3], {"truncated": True}, *row[4:]))
    return item


def _iso_sql(seconds: str) -> str:
    """SQL for the JSON string of the time ``seconds`` (an SQL expression, seconds since the
    epoch) as this store writes it into a record: Python's ``isoformat`` of an aware UTC time
    with microseconds. Statements that fill the server's time into records made beforehand
    (see ``_STAMP``) put this where the stand-in was."""
    return (
        f"""('"' || to_char(to_timestamp({seconds}) AT TIME ZONE 'UTC', """
        """'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00"')"""
    )


def _pack(items: list[str]) -> list[str]:
    """Event items (JSON arrays in ASCII, each small enough) packed greedily into NOTIFY
    payload bodies that leave room for a head: what ``conveyor_notify`` does on the server,
    for the statements that send events made here."""
    room = _NOTIFY_LIMIT - _HEAD_ROOM
    bodies: list[str] = []
    body: list[str] = []
    size = 0
    for item in items:
        if body and size + len(item) >= room:
            bodies.append(",".join(body))
            body, size = [], 0
        body.append(item)
        size += len(item) + 1
    if body:
        bodies.append(",".join(body))
    return bodies


def _plain_new(job: JobData) -> bool:
    """A new job whose adding needs nothing read first: no deduplication key, no parent, no
    group size limit, no ``delay_until`` of its own (``opts.delay`` is fine)."""
    group = job.opts.group
    return (
        job.deduplication_key is None
        and job.parent_id is None
        and job.delay_until is None
        and (group is None or group.max_size is None)
    )


def _channel_name(prefix: str, schema: str) -> str:
    """A ``NOTIFY`` channel of the schema, within PostgreSQL's 63 bytes for a name: a schema
    name too long for that goes by a digest of it."""
    name = prefix + schema
    if len(name.encode()) > 63:
        name = prefix + hashlib.sha256(schema.encode()).hexdigest()[:40]
    return name


def _runs(rows: list[tuple[Any, ...]], wake: str, other: str) -> list[tuple[str, list[str]]]:
    """A transaction's events ``(queue, type, job_id, data(, at))`` as NOTIFY items, in runs
    by channel: wake-ups (:data:`WAKE_EVENTS`) on ``wake``, the others on ``other``. Sent run
    after run, they arrive in order at a process listening to both."""
    runs: list[tuple[str, list[str]]] = []
    for row in rows:
        channel = wake if row[1] in WAKE_EVENTS else other
        if not runs or runs[-1][0] != channel:
            runs.append((channel, []))
        runs[-1][1].append(_event_item(row))
    return runs


def _dt(value: float | None) -> datetime | None:
    return None if value is None else from_timestamp(value)


class _Taken(Exception):
    """An insert met a job id already taken in its queue (the transaction rolls back)."""


class _NotPlain(Exception):
    """A job turned out to need the general way of adding (its event would not fit in a
    payload). Raised before anything is sent."""


@attrs.frozen
class _Claim:
    """What a store remembers of a job it claimed, to complete it without reading it back:
    the record as claimed and the row version that record belongs to."""

    pk: int
    version: int
    queue: str
    job_id: str
    record: Any
    """The record as psycopg loaded it (the claim fields are in their columns)."""
    worker_id: str
    started_at: str
    """When the claim took it, as the attempt record's ``started_at`` writes it (made once
    per claim: every job of a claim shares the time)."""

    @property
    def simple(self) -> bool:
        """No parent to tell and nothing to remove: a completion is one row update."""
        record = self.record
        if record.get("parent_id") is not None:
            return False
        opts = record.get("opts") or {}
        return opts.get("remove_on_complete", False) is False


def _load(row: Sequence[Any]) -> Row:
    job = structure(row[1], JobData)
    job.state = JobState(row[2])
    job.processed_at = row[3]
    job.lock_until = row[4]
    job.locked_by = row[5]
    job.lock_token = row[6]
    job.created_at = row[7]
    job.delay_until = row[8]
    return Row(row[0], job)


class _Tx(JobTx):
    """One transaction on one connection: statements, and the store's job primitives."""

    def __init__(self, store: PgStore, conn: PgConnection, now: float, *, write: bool) -> None:
        super().__init__(now, local=bool(store._subscribers))
        self.store = store
        self.conn = conn
        self.write = write
        """A write transaction locks the job rows it reads (``FOR UPDATE``): claims and
        completions that run beside it without the schema lock wait for it, and it for them."""
        self._seqs: list[int] = []

    # -- statements --------------------------------------------------------------------------------

    async def execute(self, query: str, params: Sequence[Any] = ()) -> Rows:
        return await self.conn.execute(self.store._sql(query), params)

    async def one(self, query: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = await self.execute(query, params)
        return rows[0] if rows else None

    async def commit(self) -> None:
        """Write what the transaction kept in memory (queue counters, metrics, events) and
        commit, in one round trip."""
        statements: list[tuple[bytes, Sequence[Any]]] = []
        store = self.store
        # The queue rows, then the totals, then the metrics: the order every writer of this
        # store locks them in (the shard rows: the connection's, see _SHARD).
        for queue, (_seq, tick, plain, _completed, _failed) in self.counters.items():
            statements.append(
                (
                    store._sql(
                        """UPDATE {queues} SET tick = greatest(tick, ?),
                            plain_served = greatest(plain_served, ?) WHERE name = ?"""
                    ),
                    (tick, plain, queue),
                )
            )
        for queue, (_seq, _tick, _plain, completed, failed) in self.counters.items():
            if completed or failed:
                statements.append(
                    (
                        store._sql(
                            f"""INSERT INTO {{totals}} AS t (queue, shard, completed, failed)
                            VALUES (?, {_SHARD}, ?, ?) ON CONFLICT (queue, shard) DO UPDATE
                            SET completed = t.completed + excluded.completed,
                                failed = t.failed + excluded.failed"""
                        ),
                        (queue, completed, failed),
                    )
                )
        minute = int(self.now // 60)
        for (queue, kind), count in self.finished.items():
            statements.append(
                (
                    store._sql(
                        f"""INSERT INTO {{metrics}} AS m (queue, kind, minute, shard, count)
                        VALUES (?, ?, ?, {_SHARD}, ?) ON CONFLICT (queue, kind, minute, shard)
                        DO UPDATE SET count = m.count + excluded.count"""
                    ),
                    (queue, kind, minute, count),
                )
            )
            statements.append(
                (
                    store._sql(
                        f"""DELETE FROM {{metrics}} WHERE queue = ? AND kind = ?
                        AND shard = {_SHARD} AND minute < ?"""
                    ),
                    (queue, kind, minute - store._metrics_minutes),
                )
            )
        # Packed into payloads by conveyor_notify, as the one-statement writes do.
        head = self.notify_head() if self.rows else ""
        for channel, items in _runs(self.rows, store._wake_channel, store._event_channel):
            statements.append(
                (store._sql("SELECT {notify_fn}(?, ?, ?::text[])"), (channel, head, items))
            )
        statements.append((b"COMMIT", ()))
        await self.conn.pipeline(statements)

    def notify_head(self) -> str:
        """The start of this transaction's NOTIFY payloads: origin, time, then the events."""
        return f'{{"o":{_ENCODER.encode(self.store._origin)},"at":{self.now!r},"e":['

    # -- the job primitives ------------------------------------------------------------------------

    async def queue_counters(self, queue: str) -> list[int]:
        counters = self.counters.get(queue)
        if counters is None:
            # Read without locking the row: completions running beside this transaction
            # add to its totals, and a lock taken this early could deadlock with them over a
            # job row. Only writers holding the schema lock change the tick.
            store = self.store
            _created, rows = await self.conn.pipeline(
                [
                    (
                        store._sql(
                            "INSERT INTO {queues} (name) VALUES (?) ON CONFLICT (name) DO NOTHING"
                        ),
                        (queue,),
                    ),
                    (
                        store._sql("SELECT tick, plain_served FROM {queues} WHERE name = ?"),
                        (queue,),
                    ),
                ]
            )
            [(tick, plain)] = rows
            counters = self.counters[queue] = [0, tick, plain, 0, 0]
        return counters

    async def reserve_seqs(self, count: int) -> None:
        missing = count - len(self._seqs)
        if missing > 0:
            rows = await self.execute(
                "SELECT nextval({seq_name}) FROM generate_series(1, ?)", (max(missing, 8),)
            )
            self._seqs.extend(row[0] for row in reversed(rows))

    def take_seq(self, counters: list[int]) -> int:
        return self._seqs.pop()

    async def rows_of(self, where: str, params: Sequence[Any]) -> list[Row]:
        """The jobs ``WHERE ...`` (SQL with ``?`` placeholders), loaded; locked in a write
        transaction."""
        lock = " FOR UPDATE" if self.write else ""
        rows = await self.execute(
            f"SELECT {_JOB_COLUMNS} FROM {{jobs}} WHERE {where}{lock}", params
        )
        return [_load(row) for row in rows]

    async def find(self, queue: str | None, job_id: str | None) -> Row | None:
        if queue is None or job_id is None:
            return None
        rows = await self.rows_of("queue = ? AND id = ?", (queue, job_id))
        return rows[0] if rows else None

    async def held(self, queue: str, job_id: str, token: str) -> Row | None:
        rows = await self.rows_of(
            "queue = ? AND id = ? AND state = 'active' AND lock_token = ?", (queue, job_id, token)
        )
        return rows[0] if rows else None

    async def children(self, queue: str, job_id: str) -> list[Row]:
        return await self.rows_of("parent_queue = ? AND parent_id = ? ORDER BY pk", (queue, job_id))

    async def save(self, row: Row, *, seq: int | None = None) -> None:
        job = row.job
        finished = job.completed_at if job.state is JobState.COMPLETED else job.failed_at
        await self.execute(
            """UPDATE {jobs} SET name = ?, state = ?, lane = ?, priority = ?,
                seq = coalesce(?::bigint, seq), processed_at = ?, delay_until = ?, lock_until = ?,
                locked_by = ?, lock_token = ?, finished_at = ?, dedup_key = ?, dedup_until = ?,
                parent_queue = ?, parent_id = ?, record = ?::json, version = version + 1
            WHERE pk = ?""",
            (
                job.name,
                job.state.value,
                job.group_id or "",
                job.opts.priority,
                seq,
                job.processed_at,
                job.delay_until,
                job.lock_until,
                job.locked_by,
                job.lock_token,
                finished,
                job.deduplication_key,
                job.deduplication_until,
                job.parent_queue_name,
                job.parent_id,
                record_json(job),
                row.pk,
            ),
        )

    async def delete_row(self, row: Row) -> None:
        await self.execute("DELETE FROM {jobs} WHERE pk = ?", (row.pk,))

    async def keep_newest(self, queue: str, state: JobState, keep: int) -> None:
        await self.execute(
            """DELETE FROM {jobs} WHERE pk IN (
                SELECT pk FROM {jobs} WHERE queue = ? AND state = ? ORDER BY seq DESC OFFSET ?)""",
            (queue, state.value, keep),
        )

    async def dedup_holder(self, queue: str, key: str) -> str | None:
        row = await self.one(
            """SELECT id FROM {jobs} WHERE queue = ? AND dedup_key = ? AND (
                dedup_until > ? OR (dedup_until IS NULL AND state NOT IN ('completed', 'failed')))
            ORDER BY pk DESC LIMIT 1""",
            (queue, key, _dt(self.now)),
        )
        return None if row is None else str(row[0])

    async def group_queued(self, queue: str, group: str) -> int:
        row = await self.one(
            "SELECT queued FROM {lanes} WHERE queue = ? AND lane = ?", (queue, group)
        )
        return 0 if row is None else int(row[0])

    async def count_state(self, queue: str, state: JobState) -> int:
        row = await self.one(
            "SELECT count(*) FROM {jobs} WHERE queue = ? AND state = ?", (queue, state.value)
        )
        assert row is not None
        return int(row[0])

    async def window(self, queue: str, scope: str, limiter: Limiter) -> int:
        store = self.store
        _deleted, [(count,)] = await self.conn.pipeline(
            [
                (
                    store._sql("DELETE FROM {rate} WHERE queue = ? AND scope = ? AND at <= ?"),
                    (queue, scope, _dt(self.now - limiter.duration)),
                ),
                (
                    store._sql("SELECT count(*) FROM {rate} WHERE queue = ? AND scope = ?"),
                    (queue, scope),
                ),
            ]
        )
        return int(count)

    async def lanes_after(self, queue: str, after: tuple[int, str], count: int) -> list[Lane]:
        rows = await self.execute(_LANES_AFTER, (queue, *after, count))
        return [(str(lane), int(served), int(active)) for lane, served, active in rows]

    async def candidates(
        self, queue: str, lane: str, fetch: FetchOptions, paused: set[str], limit: int
    ) -> list[int]:
        where = "queue = ? AND lane = ? AND state = 'waiting'"
        args: list[Any] = [queue, lane]
        if fetch.job_name is not None:
            where += " AND name = ?"
            args.append(fetch.job_name)
        elif paused and not fetch.lifo:
            # Not past every waiting job of the paused names: the first jobs of each other
            # waiting name (one index seek a name), the first of those in claim order.
            rows = await self.execute(
                _FIRST_OF_EACH_NAME, (queue, lane, queue, lane, queue, lane, limit, queue, limit)
            )
            return [row[0] for row in rows]
        elif paused:
            # (newest first: the same, with each name's jobs read one priority at a time)
            [(names,)] = await self.execute(
                f"""{_WAITING_NAMES}
                SELECT ARRAY(SELECT name FROM seen WHERE name IS NOT NULL)""",
                (queue, lane, queue, lane),
            )
            heads = [
                await self._newest_first(f"{where} AND name = ?", [*args, name], limit)
                for name in names
                if name not in paused
            ]
            return first_in_claim_order(heads, limit)
        # Rows that a claim running beside this one holds are skipped, as that claim skips ours.
        if not fetch.lifo:
            rows = await self.execute(
                f"""SELECT pk FROM {{jobs}} WHERE {where} ORDER BY priority, seq LIMIT ?
                FOR UPDATE SKIP LOCKED""",
                (*args, limit),
            )
            return [row[0] for row in rows]
        return [pk for _key, pk in await self._newest_first(where, args, limit)]

    async def _newest_first(
        self, where: str, args: list[Any], limit: int
    ) -> list[tuple[tuple[int, int], int]]:
        """Up to ``limit`` waiting jobs ``WHERE ...`` in LIFO claim order, as ``((priority,
        -seq), pk)``: the newest of the most urgent priority first, one priority at a time
        (so the index serves each step; mixed sort directions would sort the whole lane)."""
        out: list[tuple[tuple[int, int], int]] = []
        priority: int | None = None
        while len(out) < limit:
            row = await self.one(
                f"SELECT min(priority) FROM {{jobs}} WHERE {where}"
                + ("" if priority is None else " AND priority > ?"),
                (*args,) if priority is None else (*args, priority),
            )
            if row is None or row[0] is None:
                break
            priority = int(row[0])
            rows = await self.execute(
                f"""SELECT seq, pk FROM {{jobs}} WHERE {where} AND priority = ?
                ORDER BY seq DESC LIMIT ? FOR UPDATE SKIP LOCKED""",
                (*args, priority, limit - len(out)),
            )
            out.extend(((priority, -seq), pk) for seq, pk in rows)
        return out


class _Listener:
    """A thread holding a ``LISTEN`` connection; hands other processes' events to the loop.

    It always listens to the wake-up channel, and to the channel of every other event once
    told to (:meth:`listen_to_everything`): a process that only runs workers is then not
    woken by each claim and completion.
    """

    def __init__(
        self,
        conninfo: str,
        channels: tuple[str, str],
        registry: tuple[str, str],
        origin: str,
        token: anyio.lowlevel.EventLoopToken,
        deliver: Callable[[list[StoreEvent]], None],
        *,
        everything: bool,
    ) -> None:
        self._conninfo = conninfo
        self._wake_channel, self._event_channel = channels
        self._listeners, self._barrier = registry
        self._everything = everything
        self._origin = origin
        self._token = token
        self._deliver = deliver
        self._own = f'{{"o":{json.dumps(origin)},'
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._wanted = threading.Lock()
        """Held while what to listen to changes, and while the thread says it is ready."""
        self._poke, self._poked = socket.socketpair()
        self._poked.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="conveyor-pg-listen", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Listening to every channel wanted (or, after a failure, retrying)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> None:
        self._ready.wait(timeout)

    @property
    def everything(self) -> bool:
        """Told to listen to every event (see :meth:`listen_to_everything`)."""
        return self._everything

    def listen_to_everything(self) -> None:
        """Listen to every event from now on, not only wake-ups (``ready`` once it does)."""
        with self._wanted:
            if self._everything:
                return
            self._everything = True
            self._ready.clear()
        self._poke.send(b"!")

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    # (notifications that arrive during a LISTEN statement go through psycopg)
                    conn.add_notify_handler(lambda notify: self._handle(notify.payload))
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._wake_channel)))
                    everything = False
                    backoff = 0.05
                    # libpq directly: this loop runs as often as notifications come, beside
                    # the event loop's thread.
                    pgconn = conn.pgconn
                    encoding = conn.info.encoding
                    while not self._stop.is_set():
                        if self._everything and not everything:
                            channel = sql.Identifier(self._event_channel)
                            conn.execute(sql.SQL("LISTEN {}").format(channel))
                            self._register(conn)
                            everything = True
                        with self._wanted:  # ready only once listening to what is wanted
                            if everything or not self._everything:
                                self._ready.set()
                        poked = self._poked.fileno()
                        readable, _, _ = select.select([pgconn.socket, poked], [], [], 0.1)
                        if poked in readable:
                            with contextlib.suppress(BlockingIOError):
                                self._poked.recv(64)
                        if pgconn.socket not in readable:
                            continue
                        pgconn.consume_input()
                        while (notify := pgconn.notifies()) is not None:
                            self._handle(notify.extra.decode(encoding))
                    if everything:
                        self._unregister(conn)
            except psycopg.Error as exc:
                log.warning("listening on PostgreSQL failed, trying again: %s", exc)
                self._ready.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except RuntimeError:  # the event loop is gone
                return

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        """Say that this connection takes every event (claims and completions leave theirs out
        while no connection does), then wait for the claims and completions that chose to
        leave theirs out before it said so: each holds the barrier lock, shared, until it
        commits. Those that start later see this connection's row, or fail to take the lock
        while this waits for it, and send their events. Rows of server processes that are gone
        (a process that died while listening) are cleared on the way."""
        registry = sql.SQL(self._listeners)
        conn.execute(
            sql.SQL(
                """DELETE FROM {} WHERE pid <> pg_backend_pid()
                AND pid NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)"""
            ).format(registry)
        )
        conn.execute(
            sql.SQL(
                """INSERT INTO {} (pid) VALUES (pg_backend_pid())
                ON CONFLICT (pid) DO UPDATE SET since = excluded.since"""
            ).format(registry)
        )
        with conn.transaction():
            # (bounded: stopping the store waits for this thread; a claim or completion holds
            # the lock for milliseconds, and a failure here is retried like a lost connection)
            conn.execute("SET LOCAL lock_timeout = '5s'")
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (self._barrier,))

    def _unregister(self, conn: psycopg.Connection[Any]) -> None:
        """Take this connection's row out of the listeners (on the way out: it may be gone)."""
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE pid = pg_backend_pid()").format(
                    sql.SQL(self._listeners)
                )
            )

    def _handle(self, payload: str) -> None:
        if payload.startswith(self._own):
            return  # this store's own events (its subscribers had them at commit)
        try:
            message = json.loads(payload)
            if message["o"] == self._origin:
                return
            at = float(message["at"])
            events = [
                StoreEvent(
                    item[1],
                    item[0],
                    item[2],
                    item[3] or {},
                    from_timestamp(item[4] if len(item) > 4 else at),
                )
                for item in message["e"]
            ]
        except (ValueError, KeyError, TypeError, IndexError):
            return  # not ours
        anyio.from_thread.run_sync(self._deliver, events, token=self._token)

    def stop(self) -> None:
        self._stop.set()
        self._poke.send(b"!")
        self._thread.join()
        self._poke.close()
        self._poked.close()


class PgStore(StoreBase):
    """The store contract on PostgreSQL: many workers, many hosts.

    :param conninfo: a libpq connection string or URL (``postgresql://user@host:5432/db``).
    :param schema: where conveyor's tables live (default ``public``; created if missing).
    :param clock: a :class:`~conveyor.store.ManualClock` for tests; by default the database
        server's clock.
    :param max_connections: the most connections the store opens at once (default 10).
    :param listen: deliver other processes' events through ``LISTEN`` (default ``True``; set
        ``False`` behind a transaction-mode pooler such as PgBouncer's).
    :param prepare: prepare each statement once per connection (default ``True``; set
        ``False`` behind a transaction-mode pooler that does not keep prepared statements,
        such as PgBouncer before 1.21 or without ``max_prepared_statements``).
    :param metrics_retention: how long per-minute metrics are kept (default 7 days).
    :param auto_migrate: create or upgrade the schema on :meth:`connect` (default ``True``).
    :param connect_timeout: seconds to wait for a new connection (default 10).
    :param on_event_error: called with the exception when a subscriber raises (default: log).

    ::

        async with PgStore("postgresql://app@db.internal/jobs") as store:
            ...

    Roles and grants: the role connecting needs ``CONNECT`` on the database, ``USAGE`` and
    ``CREATE`` on the schema while migrations run (``auto_migrate``; otherwise run
    ``conveyor migrate`` with such a role; ``CREATE`` on the database too if the schema does
    not exist yet), ``SELECT, INSERT, UPDATE, DELETE`` on the ``conveyor_*`` tables, ``USAGE``
    on the ``conveyor_seq`` sequence, and ``TRUNCATE`` for :meth:`truncate_all`.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        clock: Clock | None = None,
        max_connections: int = 10,
        listen: bool = True,
        prepare: bool = True,
        metrics_retention: Duration = "7 days",
        auto_migrate: bool = True,
        connect_timeout: Duration = 10.0,
        on_event_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not isinstance(conninfo, str) or not conninfo:
            raise InvalidArgumentError("conninfo", "expected a libpq connection string or URL")
        try:
            psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise InvalidArgumentError("conninfo", f"not a connection string: {exc}") from None
        check_name(schema, "schema")
        if len(schema.encode()) > 63:
            raise InvalidArgumentError("schema", "PostgreSQL names are at most 63 bytes")
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidArgumentError("clock", "expected an object with a time() method")
        check_int(max_connections, "max_connections", minimum=1)
        for flag, value in (
            ("listen", listen),
            ("prepare", prepare),
            ("auto_migrate", auto_migrate),
        ):
            if not isinstance(value, bool):
                raise InvalidArgumentError(flag, "expected True or False")
        self._conninfo = conninfo
        self._schema = schema
        self._names = qualified(schema)
        self._wake_channel = _channel_name("conveyor:", schema)
        """The ``NOTIFY`` channel of wake-ups (:data:`WAKE_EVENTS`: new jobs, resumed queues,
        cancel requests), which every listening process takes."""
        self._event_channel = _channel_name("conveyor+:", schema)
        """The channel of every other event (``active``, ``completed``...), taken only by a
        process with a subscriber that wants more than wake-ups: a process that only runs
        workers is not woken by every claim and completion of every worker."""
        self._listeners_key = f"conveyor-listeners:{schema}"
        """The advisory lock (its key's text) that a process about to listen to every event
        takes to wait for the claims and completions that chose to send none (``_QUIET``)."""
        self._clock = clock
        self._listen = listen
        retention = parse_duration(metrics_retention, "metrics_retention", allow_zero=False)
        self._metrics_minutes = max(int(retention // 60), 1)
        self._auto_migrate = auto_migrate
        self._connect_timeout = parse_duration(connect_timeout, "connect_timeout", allow_zero=False)
        self._pool = PgPool(
            conninfo,
            max_size=max_connections,
            connect_timeout=self._connect_timeout,
            prepare=prepare,
        )
        super().__init__(on_event_error=on_event_error)
        self._origin = uuid.uuid4().hex
        self._queries: dict[str, bytes] = {}
        self._listener: _Listener | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._write_lock = f"conveyor-write:{schema}"
        self._grouped: set[str] = set()
        """Queues whose last claim found jobs of groups waiting: their claims go straight to
        the locked path (which takes them off this set when no group has jobs waiting)."""
        self._claimed: dict[str, _Claim] = {}
        """Jobs this store claimed, by lock token: a completion of one whose row has not been
        written since needs no read (see ``_complete_claimed``)."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PgStore:
        """Build from ``postgresql://...`` or ``postgres://...``. The conveyor options among
        the query parameters (``schema``, ``max_connections``, ``listen``, ``prepare``,
        ``auto_migrate``, ``metrics_retention``, ``connect_timeout``) are taken out; the rest go
        to libpq.
        Keyword options win."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise InvalidArgumentError("url", f"PgStore takes postgresql:// URLs, not {url!r}")
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ours = {"schema", "max_connections", "listen", "auto_migrate", "metrics_retention"}
        ours |= {"connect_timeout", "prepare"}
        taken: dict[str, Any] = {}
        rest = []
        for key, value in query:
            if key in ours:
                taken[key] = value
            else:
                rest.append((key, value))
        for flag in ("listen", "prepare", "auto_migrate"):
            if flag in taken:
                taken[flag] = str(taken[flag]).lower() in ("1", "true", "yes", "on")
        if "max_connections" in taken:
            try:
                taken["max_connections"] = int(taken["max_connections"])
            except ValueError:
                raise InvalidArgumentError("url", "max_connections must be a number") from None
        conninfo = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(rest), "")
        )
        return cls(conninfo, **{**taken, **options})

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding this store's tables (``public`` by default)."""
        return self._schema

    def __repr__(self) -> str:
        host = psycopg.conninfo.conninfo_to_dict(self._conninfo).get("host", "")
        return f"<PgStore {host!s} schema={self._schema!r} {self._lifecycle.value}>"

    def _sql(self, query: str) -> bytes:
        """The statement as sent: names filled in, ``?`` turned into ``$1, $2...``."""
        cached = self._queries.get(query)
        if cached is None:
            counter = iter(range(1, 10_000))
            # Placeholders first: a schema name may hold a "?" of its own.
            text = _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", query).format(**self._names)
            cached = self._queries[query] = text.encode()
        return cached

    # -- lifecycle ---------------------------------------------------------------------------------

    async def connect(self) -> None:
        self._check_connectable()
        self._token = anyio.lowlevel.current_token()
        try:
            async with self._pool.connection() as conn:
                await self._migrate(conn)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot use PostgreSQL ({self._where()}): {exc}") from exc
        except BaseException:
            self._pool.close()
            raise
        self._lifecycle = Lifecycle.CONNECTED
        if self._subscribers:
            self._start_listening()

    def _where(self) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        return f"host {params.get('host', 'default')!s}, database {params.get('dbname', '')!s}"

    async def _migrate(self, conn: PgConnection) -> None:
        names = self._names
        await conn.execute(b"BEGIN")
        try:
            await conn.execute(
                b"SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                (f"conveyor-migrate:{self._schema}",),
            )
            [(has_schema, has_migrations, has_jobs)] = await conn.execute(
                b"""SELECT to_regnamespace($1) IS NOT NULL, to_regclass($2) IS NOT NULL,
                    to_regclass($3) IS NOT NULL""",
                (names["s"], names["migrations"], names["jobs"]),
            )
            if has_jobs and not has_migrations:
                raise StoreError(
                    f"schema {self._schema!r} has a conveyor_jobs table that conveyor did not "
                    "make (no conveyor_migrations); use another schema"
                )
            version = 0
            if has_migrations:
                [(version,)] = await conn.execute(
                    self._sql("SELECT coalesce(max(version), 0) FROM {migrations}")
                )
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"schema {self._schema!r} has conveyor schema version {version}, newer than "
                    f"this conveyor understands ({SCHEMA_VERSION}); upgrade conveyor to use it"
                )
            if version < SCHEMA_VERSION and not self._auto_migrate:
                raise StoreError(
                    f"schema {self._schema!r} needs migrating to conveyor schema version "
                    f"{SCHEMA_VERSION}; connect with auto_migrate=True (the default) or run "
                    "`conveyor migrate`"
                )
            if version < SCHEMA_VERSION:
                if not has_schema:  # (CREATE SCHEMA needs CREATE on the database, even
                    # with IF NOT EXISTS: a role that owns an existing schema need not have it)
                    await conn.execute_script("CREATE SCHEMA {s}".format(**names).encode())
                await conn.execute_script(
                    """CREATE TABLE IF NOT EXISTS {migrations} (
                        version integer PRIMARY KEY,
                        name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())""".format(**names).encode()
                )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    name, script = MIGRATIONS[number - 1]
                    await conn.execute_script(script.format(**names).encode())
                    await conn.execute(
                        self._sql("INSERT INTO {migrations} (version, name) VALUES (?, ?)"),
                        (number, name),
                    )
            await conn.execute(b"COMMIT")
        except BaseException:
            if not conn.broken and conn.in_transaction:
                with anyio.CancelScope(shield=True):
                    await conn.execute(b"ROLLBACK")
            raise

    async def disconnect(self) -> None:
        await checkpoint()
        if self._lifecycle is Lifecycle.CLOSED:
            return
        self._lifecycle = Lifecycle.CLOSED
        self._subscribers.clear()
        listener, self._listener = self._listener, None
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(listener.stop)
        self._pool.close()

    async def now(self) -> datetime:
        self._check_connected()
        if self._clock is not None:
            await checkpoint()
            return from_timestamp(self._clock.time())
        return from_timestamp(await self._server_time())

    async def _server_time(self) -> float:
        async def body(conn: PgConnection) -> float:
            [(now,)] = await conn.execute(b"SELECT extract(epoch FROM clock_timestamp())::float8")
            return float(now)

        return await self._with_connection(body)

    async def _with_connection(self, body: Callable[[PgConnection], Awaitable[T]]) -> T:
        self._check_connected()
        try:
            async with self._pool.connection() as conn:
                return await body(conn)
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error ({self._where()}): {exc}") from exc

    # -- running transactions ----------------------------------------------------------------------

    async def _write(self, body: Callable[[_Tx], Awaitable[T]], *, locked: bool = True) -> T:
        """Run ``body`` in one write transaction, holding the schema's write lock unless
        ``locked`` is false (for writes that one guarded statement makes safe on its own)."""
        return await self._run(body, write=True, locked=locked)

    async def _read(self, body: Callable[[_Tx], Awaitable[T]]) -> T:
        """Run ``body`` in one read-only transaction (a consistent snapshot)."""
        return await self._run(body, write=False, locked=False)

    async def _read_alone(self, body: Callable[[_Tx], Awaitable[T]]) -> T:
        """Run ``body``, a read of one statement, on its own (its own snapshot, outside any
        transaction): one round trip, where a read transaction takes three. ``body`` gets a
        ``_Tx`` with no time (``now`` is NaN): reads that need the time, or more than one
        statement, go through :meth:`_read`."""
        self._check_connected()
        try:
            async with self._pool.connection() as conn:
                return await body(_Tx(self, conn, math.nan, write=False))
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error ({self._where()}): {exc}") from exc

    async def _query_alone(self, query: str, params: Sequence[Any] = ()) -> Rows:
        """The rows of one reading statement run on its own (see :meth:`_read_alone`)."""
        return await self._read_alone(lambda tx: tx.execute(query, params))

    async def _run(self, body: Callable[[_Tx], Awaitable[T]], *, write: bool, locked: bool) -> T:
        self._check_connected()
        try:
            async with self._pool.connection() as conn:
                begin: list[tuple[bytes, Sequence[Any]]] = [
                    (b"BEGIN" if write else b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", ())
                ]
                if locked:
                    begin.append(
                        (
                            b"SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                            (self._write_lock,),
                        )
                    )
                if self._clock is None:
                    begin.append((b"SELECT extract(epoch FROM clock_timestamp())::float8", ()))
                results = await conn.pipeline(begin)
                now = self._clock.time() if self._clock is not None else float(results[-1][0][0])
                tx = _Tx(self, conn, now, write=write)
                try:
                    result = await body(tx)
                    if write:
                        await tx.commit()
                    else:
                        await conn.execute(b"COMMIT")
                except BaseException:
                    if not conn.broken and conn.in_transaction:
                        with anyio.CancelScope(shield=True):
                            await conn.execute(b"ROLLBACK")
                    raise
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error ({self._where()}): {exc}") from exc
        for callback in tx.callbacks:
            callback()
        if tx.events:
            self._deliver(tx.events)
        return result

    # -- adding ------------------------------------------------------------------------------------

    async def save_bulk(self, jobs: Sequence[JobData]) -> list[JobData]:
        if type(jobs) is HandedOver and all(map(_plain_new, jobs)):
            # Made by conveyor's own producer and needing nothing read first (no parent among
            # them): checked chunk by chunk as they are sent (see _insert_plain).
            return await self._add(jobs, flow=False, checked=False)
        return await super().save_bulk(jobs)

    async def _save_jobs(self, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        return await self._add(jobs, flow=flow)

    async def _add(self, jobs: list[JobData], *, flow: bool, checked: bool = True) -> list[JobData]:
        """Add checked jobs, or (``checked=False``) plain jobs handed over, which the plain
        insert checks as it sends them (the caller has seen that they are plain)."""
        try:
            if not flow and (not checked or all(map(_plain_new, jobs))):
                try:
                    return await self._insert_plain(jobs, checked=checked)
                except _NotPlain:
                    pass
            if not checked:
                check_jobs(jobs)
            return await self._write(lambda tx: self._insert(tx, jobs, flow=flow))
        except _Taken:
            pass
        # An id already taken in its queue: the insert failed and rolled back. Which one?
        keys = [(job.queue_name, job.id) for job in jobs]

        async def body(tx: _Tx) -> list[tuple[Any, ...]]:
            return await tx.execute(
                """SELECT queue, id FROM {jobs} WHERE (id, queue) IN (
                    SELECT * FROM unnest(?::text[], ?::text[]))""",
                ([job_id for _queue, job_id in keys], [queue for queue, _job_id in keys]),
            )

        stored = {(queue, job_id) for queue, job_id in await self._read(body)}
        seen: set[tuple[str, str]] = set()
        for key in keys:
            if key in stored or key in seen:
                raise DuplicateJobError(*key)
            seen.add(key)
        raise StoreError("adding jobs failed on a duplicate id that is gone now; try again")

    async def _insert_plain(self, jobs: list[JobData], *, checked: bool) -> list[JobData]:
        """Add jobs that need no decision made under the schema lock (see ``_plain_new``):
        one round trip, side by side with every other writer, as claims and completions.

        The statements run as one implicit transaction, so the call adds every job or none.
        Their time is the server's, at the start of that transaction. Each chunk of jobs goes
        as one JSON document: per job, its columns and its record, stored as sent (``json``,
        not ``jsonb``: the text is not parsed again). The record leaves out the job's times,
        which only the server knows: they go in their columns, where every read takes them
        from (see ``_JOB_COLUMNS``).

        Each chunk is sent as soon as it is made, so the server inserts one while the next is
        being made. Jobs handed over unchecked (``checked=False``, see ``save_bulk``) are
        checked chunk by chunk too: the first before anything is sent, each other one after
        the chunks before it went out. A job refused then raises out of the pipeline, which
        closes the connection: the server rolls the call back, and nothing is stored. The
        first chunk is small, so the server starts early.

        The new jobs' events are made here too and sent by the last statement, which adds
        their head with the server's time. The queue's row comes after the jobs: every writer
        locks job rows before queue rows. A call of one chunk (every ``queue.add``) is one
        statement: its queue's row and its events are written by parts of the insert that
        first read all of the inserted rows.
        """
        inserting = """WITH now AS MATERIALIZED (
                SELECT coalesce(?::float8, extract(epoch FROM now())::float8) AS t),
            v AS (SELECT * FROM json_to_recordset(?::json)
                AS v(i text, n text, l text, p int, f bool, d float8, r json)),
            added AS (
                INSERT INTO {jobs} (queue, id, name, state, lane, priority, seq, created_at,
                    delay_until, record)
                SELECT ?, v.i, v.n, CASE WHEN v.d IS NULL THEN 'waiting' ELSE 'delayed' END,
                    coalesce(v.l, ''), coalesce(v.p, 0),
                    CASE WHEN v.f AND v.d IS NULL THEN -nextval({seq_name})
                        ELSE nextval({seq_name}) END,
                    to_timestamp(now.t), to_timestamp(now.t + v.d), v.r
                FROM v, now
                RETURNING id, created_at, delay_until)"""
        result = """SELECT min(a.created_at),
                array_agg(a.id) FILTER (WHERE a.delay_until IS NOT NULL),
                array_agg(a.delay_until) FILTER (WHERE a.delay_until IS NOT NULL)
            FROM added AS a"""
        insert = self._sql(f"{inserting}\n{result}")
        # (count(*): the queue's row is written once every job is in, whatever order the
        # parts of the statement run in)
        insert_alone = self._sql(
            f"""{inserting},
            fresh AS (INSERT INTO {{queues}} (name) SELECT ?
                WHERE (SELECT count(*) FROM added) > 0 ON CONFLICT (name) DO NOTHING),
            revived AS (UPDATE {{queues}} SET live = 1
                WHERE name = ? AND live = 0 AND (SELECT count(*) FROM added) > 0),
            told AS (SELECT count(pg_notify(?, '{{{{"o":"' || ? || '","at":' || now.t
                || ',"e":[' || body || ']}}}}')) AS sent FROM unnest(?::text[]) AS body, now)
            {result} CROSS JOIN told"""
        )
        # The events, packed here into payload bodies: the server adds the head, with its time.
        notify = self._sql(
            """SELECT pg_notify(?, '{{"o":"' || ? || '","at":'
                || coalesce(?::float8, extract(epoch FROM now())::float8) || ',"e":[' || body
                || ']}}') FROM unnest(?::text[]) AS body"""
        )
        at = None if self._clock is None else self._clock.time()
        # Chunks: runs of jobs of one queue, in the call's order.
        chunks: list[tuple[str, int, int]] = []
        start, count, size = 0, len(jobs), _FIRST_CHUNK
        while start < count:
            queue = jobs[start].queue_name
            stop = min(start + size, count)
            for k in range(start + 1, stop):
                if jobs[k].queue_name != queue:
                    stop = k
                    break
            chunks.append((queue, start, stop))
            start, size = stop, _INSERT_CHUNK
        queues = sorted({queue for queue, _start, _stop in chunks})
        seen: set[tuple[str, str]] = set()
        items: list[str] = []

        def take(queue: str, start: int, stop: int) -> None:
            """Check a chunk if need be; make its events. An id too long for a payload sends
            the call the general way. (The encoder writes ASCII: one byte a character.)"""
            if not checked:
                take_handed_over(cast(HandedOver, jobs), start, stop, seen)
            quoted = _ENCODER.encode(queue)
            for job in jobs[start:stop]:
                state = _DELAYED_ITEM if job.opts.delay > 0 else _WAITING_ITEM
                item = f"[{quoted},{state}{_ENCODER.encode(job.id)},{_ADDED_DATA}]"
                if len(item) + _HEAD_ROOM >= _NOTIFY_LIMIT:
                    raise _NotPlain
                items.append(item)

        if chunks:
            take(*chunks[0])  # before anything is sent: refusing it costs no connection

        def statements() -> Iterator[tuple[bytes, Sequence[Any]]]:
            for k, (queue, start, stop) in enumerate(chunks):
                if k:
                    take(queue, start, stop)
                rows: list[dict[str, Any]] = []
                for job in jobs[start:stop]:
                    opts = job.opts
                    row: dict[str, Any] = {"i": job.id, "n": job.name, "r": record_fields(job)}
                    if job.group_id:
                        row["l"] = job.group_id
                    if opts.priority:
                        row["p"] = opts.priority
                    if opts.lifo:
                        row["f"] = True
                    if opts.delay > 0:
                        row["d"] = opts.delay
                    rows.append(row)
                if len(chunks) == 1:
                    channel = self._wake_channel
                    events = (channel, self._origin, _pack(items))
                    yield (insert_alone, (at, _ENCODER.encode(rows), queue, queue, queue, *events))
                    return
                yield (insert, (at, _ENCODER.encode(rows), queue))
            yield (
                self._sql(
                    """WITH fresh AS (INSERT INTO {queues} (name) SELECT unnest(?::text[])
                        ON CONFLICT (name) DO NOTHING)
                    UPDATE {queues} SET live = 1 WHERE name = ANY(?::text[]) AND live = 0"""
                ),
                (queues, queues),
            )
            yield (notify, (self._wake_channel, self._origin, at, _pack(items)))

        try:
            results = await self._with_connection(lambda conn: conn.pipeline(statements()))
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise _Taken from exc
            raise
        local = bool(self._subscribers)
        events: list[StoreEvent] = []
        for (queue, start, stop), [(created, delayed_ids, delayed_until)] in zip(
            chunks, results, strict=False
        ):
            until = dict(zip(delayed_ids or (), delayed_until or (), strict=True))
            for job in jobs[start:stop]:
                job.created_at = created
                job.delay_until = until.get(job.id)
                job.state = JobState.WAITING if job.delay_until is None else JobState.DELAYED
                if local:
                    events.append(
                        StoreEvent(job.state.value, queue, job.id, {"prev": None}, created)
                    )
        if events:
            self._deliver(events)
        return jobs

    async def _insert(self, tx: _Tx, jobs: list[JobData], *, flow: bool) -> list[JobData]:
        before = len(tx.rows)
        out, fresh = await tx.plan_insert(jobs, flow=flow)
        if not fresh:
            return out
        # The new jobs' events are sent by the statements that insert them (the server makes
        # them, on its own core, instead of this process encoding each one).
        del tx.rows[before:]
        head = tx.notify_head()
        created = from_timestamp(tx.now)
        queues = sorted({job.queue_name for job, _seq in fresh})
        insert = self._sql(
            """WITH added AS (
                INSERT INTO {jobs} (queue, id, name, state, lane, priority, seq, created_at,
                    delay_until, dedup_key, dedup_until, parent_queue, parent_id, record)
                SELECT q, i, n, s, l, p, sq, ?::timestamptz, d, dk, du, pq, pi, r::json
                FROM unnest(?::text[], ?::text[], ?::text[], ?::text[], ?::text[], ?::int[],
                    ?::bigint[], ?::timestamptz[], ?::text[], ?::timestamptz[], ?::text[],
                    ?::text[], ?::text[]) AS v(q, i, n, s, l, p, sq, d, dk, du, pq, pi, r)
                RETURNING queue, state, id)
            SELECT {notify_fn}(?, ?, array_agg(json_build_array(queue, state, id,
                json_build_object('prev', NULL))::text)) FROM added"""
        )

        def statements() -> Iterator[tuple[bytes, Sequence[Any]]]:
            yield (
                self._sql("UPDATE {queues} SET live = 1 WHERE name = ANY(?::text[]) AND live = 0"),
                (queues,),
            )
            # In chunks, each sent as soon as it is made: the server inserts one while the
            # next is being serialized.
            for start in range(0, len(fresh), _INSERT_CHUNK):
                columns: list[list[Any]] = [[] for _ in range(13)]
                for job, seq in fresh[start : start + _INSERT_CHUNK]:
                    values = (
                        job.queue_name,
                        job.id,
                        job.name,
                        job.state.value,
                        job.group_id or "",
                        job.opts.priority,
                        seq,
                        job.delay_until,
                        job.deduplication_key,
                        job.deduplication_until,
                        job.parent_queue_name,
                        job.parent_id,
                        record_json(job),
                    )
                    for column, value in zip(columns, values, strict=True):
                        column.append(value)
                # A column that is all NULL goes as an empty array (unnest pads it with
                # NULLs): most jobs have no delay, deduplication or parent.
                for column in columns[7:12]:
                    if not any(value is not None for value in column):
                        column.clear()
                yield (insert, (created, *columns, self._wake_channel, head))

        # A plain insert (ON CONFLICT costs a fifth more): an id already taken in its queue
        # fails it, and the whole call rolls back (see _add).
        try:
            await tx.conn.pipeline(statements())
        except psycopg.errors.UniqueViolation as exc:
            raise _Taken from exc
        return out

    # -- reading -----------------------------------------------------------------------------------

    async def _get_job(self, queue_name: str, job_id: str) -> JobData | None:
        row = await self._read_alone(lambda tx: tx.find(queue_name, job_id))
        return None if row is None else row.job

    async def _find_job_by_id(self, job_id: str) -> JobData | None:
        rows = await self._read_alone(
            lambda tx: tx.rows_of("id = ? ORDER BY pk LIMIT 1", (job_id,))
        )
        return rows[0].job if rows else None

    async def _find_by_deduplication_key(self, queue_name: str, key: str) -> JobData | None:
        async def body(tx: _Tx) -> JobData | None:
            holder = await tx.dedup_holder(queue_name, key)
            row = None if holder is None else await tx.find(queue_name, holder)
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
            lambda tx: tx.update_job(queue_name, job_id, clean, expected_state)
        )

    async def _add_log(self, queue_name: str, job_id: str, message: str) -> int:
        return await self._write(lambda tx: tx.add_log(queue_name, job_id, message))

    async def _remove_job(self, queue_name: str, job_id: str) -> bool:
        return await self._write(lambda tx: tx.remove_job(queue_name, job_id))

    async def _cancel_job(self, queue_name: str, job_id: str) -> JobData | None:
        return await self._write(lambda tx: tx.cancel_job(queue_name, job_id))

    # -- claiming ----------------------------------------------------------------------------------

    async def _fetch_next_jobs(
        self, queue_name: str, worker_id: str, duration: float, limit: int, fetch: FetchOptions
    ) -> list[JobData]:
        listener = self._listener
        if listener is not None and not listener.ready:
            # A worker that subscribed a moment ago and finds nothing now must hear of the
            # next job: claim once the LISTEN connection is up.
            await anyio.to_thread.run_sync(listener.wait_ready, self._connect_timeout)
        plain = fetch.limiter is None and fetch.max_global_concurrency is None and not fetch.lifo
        if plain and queue_name not in self._grouped:
            claimed = await self._claim_plain(queue_name, worker_id, duration, limit, fetch)
            if claimed is not None:
                return claimed
            self._grouped.add(queue_name)  # the locked claim says when groups are gone
        return await self._write(
            lambda tx: self._claim(tx, queue_name, worker_id, duration, limit, fetch)
        )

    async def _claim_plain(
        self, queue: str, worker_id: str, duration: float, limit: int, fetch: FetchOptions
    ) -> list[JobData] | None:
        """The claim of a queue whose waiting jobs have no group, when no queue-wide limit
        applies: one statement in one round trip, no schema lock, side by side with other
        claims (``FOR UPDATE SKIP LOCKED``); it sends its own ``active`` events. ``None`` when
        jobs of groups are waiting: round robin between lanes then needs the locked claim.

        It moves the queue's round-robin tick, so groups added later take their turn after the
        group-less lane's latest (the contract's order). The queue row is the last row any
        transaction of this store locks (a locked writer writes it when it commits), so none
        waits for another in a cycle; completions no longer write it (their totals are in
        shard rows). Paused names are read once, into an array: as a join, the planner judged
        them by the statistics.

        While some job names of the queue are paused, a claim does not walk the claim index
        past their waiting jobs (every one of them, at every claim: 6.5 ms a claim of 10 behind
        20,000 paused jobs, and growing with them): it takes the queue's waiting job names one
        index seek each, and the first jobs of each name not paused, and keeps the first of
        those in claim order.
        """
        args: list[Any] = [None if self._clock is None else self._clock.time()]
        if fetch.job_name is not None:
            picked = """picked AS (
                SELECT j.pk, j.priority, j.seq FROM {jobs} AS j
                WHERE j.queue = ? AND j.lane = '' AND j.state = 'waiting' AND j.name = ?
                    AND j.name <> ALL(ARRAY(SELECT p.name FROM {paused} AS p
                        WHERE p.queue = ?))
                    AND NOT EXISTS (SELECT 1 FROM {paused} AS p
                        WHERE p.queue = ? AND p.name = ?)
                    AND NOT EXISTS (SELECT 1 FROM {lanes} AS l
                        WHERE l.queue = ? AND l.waiting > 0)
                ORDER BY j.priority, j.seq LIMIT ? FOR UPDATE OF j SKIP LOCKED)"""
            args += [queue, fetch.job_name, queue, queue, ALL_JOB_NAMES, queue, limit]
        else:
            picked = f"""paused AS MATERIALIZED (
                SELECT ARRAY(SELECT p.name FROM {{paused}} AS p WHERE p.queue = ?) AS names),
            gate AS MATERIALIZED (
                SELECT cardinality(paused.names) = 0 AS plain,
                    NOT ?::text = ANY(paused.names) AND NOT EXISTS (SELECT 1 FROM {{lanes}} AS l
                        WHERE l.queue = ? AND l.waiting > 0) AS open
                FROM paused),
            picked AS (
                SELECT s.pk, s.priority, s.seq FROM (
                    SELECT j.pk, j.priority, j.seq FROM {{jobs}} AS j
                    WHERE (SELECT g.plain AND g.open FROM gate AS g)
                        AND j.queue = ? AND j.lane = '' AND j.state = 'waiting'
                    ORDER BY j.priority, j.seq LIMIT ? FOR UPDATE OF j SKIP LOCKED) AS s
                UNION ALL
                SELECT t.pk, t.priority, t.seq FROM ({_FIRST_OF_EACH_NAME}) AS t
                WHERE (SELECT NOT g.plain AND g.open FROM gate AS g))"""
            args += [queue, ALL_JOB_NAMES, queue, queue, limit]
            args += [queue, "", queue, "", queue, "", limit, queue, limit]
        claim = self._sql(
            f"""WITH clock AS MATERIALIZED (
                SELECT coalesce(?::float8, extract(epoch FROM clock_timestamp())::float8) AS t),
            {picked},
            chosen AS MATERIALIZED (
                SELECT ARRAY(SELECT pk FROM picked ORDER BY priority, seq) AS pks),
            numbers AS MATERIALIZED (
                SELECT ARRAY(SELECT nextval({{seq_name}})
                    FROM generate_series(1, cardinality(chosen.pks))) AS seqs FROM chosen),
            claimed AS (
                UPDATE {{jobs}} AS j SET state = 'active',
                    seq = numbers.seqs[array_position(chosen.pks, j.pk)],
                    processed_at = to_timestamp(clock.t), lock_until = to_timestamp(clock.t + ?),
                    locked_by = ?, lock_token = ? || ':' || j.pk || '.' || (j.version + 1),
                    version = j.version + 1
                FROM chosen, numbers, clock WHERE j.pk = ANY(chosen.pks)
                RETURNING array_position(chosen.pks, j.pk) AS place, j.pk, j.version, j.id,
                    j.record, j.processed_at, j.lock_until, j.lock_token, j.created_at,
                    j.delay_until),
            ticked AS (
                UPDATE {{queues}} AS q SET tick = q.tick + n.c, plain_served = q.tick + n.c
                FROM (SELECT count(*) AS c FROM claimed) AS n WHERE q.name = ? AND n.c > 0),
            told AS (
                SELECT {{notify_fn}}(?, '{{{{"o":"' || ? || '","at":' || clock.t || ',"e":[',
                    array_agg(json_build_array(?::text, 'active', c.id,
                        json_build_object('prev', 'waiting'))::text)) AS sent
                FROM claimed AS c, clock WHERE {_EVENTS_WANTED} GROUP BY clock.t)
            SELECT c.place, c.pk, c.version, c.record, c.processed_at, c.lock_until,
                c.lock_token, c.created_at, c.delay_until, clock.t
            FROM claimed AS c CROSS JOIN clock LEFT JOIN told ON told.sent >= 0"""
        )
        args += [duration, worker_id, worker_id, queue, self._event_channel, self._origin, queue]
        # The gate also sets how the claim is planned, for this transaction only:
        # * once, generically: its plan reaches the rows through the primary key whatever the
        #   parameters, and planning it anew for each claim, as PostgreSQL otherwise chooses
        #   to, cost as much as running it;
        # * through the claim index, in claim order, stopping after ``limit`` rows, whatever
        #   the statistics say (see _CLAIM_PLANNING). Statistics taken while the queue was
        #   paused, or nearly empty, had it read and sort every waiting job at each claim.
        gate = self._sql(
            f"""SELECT EXISTS (SELECT 1 FROM {{lanes}} WHERE queue = ? AND waiting > 0)
            FROM set_config('plan_cache_mode', 'force_generic_plan', true) AS plan,
                {_CLAIM_PLANNING}, {_QUIET}"""
        )
        try:
            async with self._pool.connection() as conn:
                [(grouped,)], rows = await conn.pipeline(
                    [(gate, (queue, self._listeners_key)), (claim, args)]
                )
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error ({self._where()}): {exc}") from exc
        if not rows:
            return None if grouped else []
        rows.sort(key=lambda row: row[0])  # claim order
        at = from_timestamp(float(rows[0][-1]))
        local = self._wants(queue, EventType.ACTIVE)
        events: list[StoreEvent] = []
        claimed: list[JobData] = []
        remember: list[tuple[str, _Claim]] = []
        started: tuple[datetime | None, str] = (None, "")
        for _place, pk, version, record, processed, lock_until, token, created, delay, _t in rows:
            if processed != started[0]:  # (the same for every job of the claim)
                started = (processed, processed.astimezone(UTC).isoformat())
            job = structure(record, JobData)
            job.created_at = created
            job.delay_until = delay
            job.state = JobState.ACTIVE
            job.processed_at = processed
            job.lock_until = lock_until
            job.locked_by = worker_id
            job.lock_token = token
            claimed.append(job)
            remember.append(
                (token, _Claim(pk, version, queue, job.id, record, worker_id, started[1]))
            )
            if local:
                data = {"prev": JobState.WAITING.value}
                events.append(StoreEvent(JobState.ACTIVE.value, queue, job.id, data, at))
        self._remember(remember)
        if events:
            self._deliver(events)
        return claimed

    def _remember(self, claimed: list[tuple[str, _Claim]]) -> None:
        cache = self._claimed
        cache.update(claimed)
        while len(cache) > _CLAIM_CACHE:  # jobs finished elsewhere (stalled, taken over)
            del cache[next(iter(cache))]

    async def _claim(
        self,
        tx: _Tx,
        queue: str,
        worker_id: str,
        duration: float,
        limit: int,
        fetch: FetchOptions,
    ) -> list[JobData]:
        # Group lanes with waiting jobs (trigger-kept counts), the lane of jobs without a group
        # when it has one waiting, and the paused names: one round trip. (Planned on the claim
        # indexes from here on, as the side-by-side claim is: see _CLAIM_PLANNING.)
        _planning, lanes, plain, paused_rows = await tx.conn.pipeline(
            [
                (self._sql(f"SELECT 1 FROM {_CLAIM_PLANNING}"), ()),
                (self._sql(_LANES_AFTER), (queue, *BEFORE_EVERY_LANE, lane_page(limit))),
                (
                    self._sql(
                        """SELECT plain_served FROM {queues} WHERE name = ? AND EXISTS (
                            SELECT 1 FROM {jobs}
                            WHERE queue = ? AND lane = '' AND state = 'waiting')"""
                    ),
                    (queue, queue),
                ),
                (self._sql("SELECT name FROM {paused} WHERE queue = ?"), (queue,)),
            ]
        )
        if not lanes:
            self._grouped.discard(queue)  # the next claim may take the side-by-side path
            if not plain:
                return []
        paused = {row[0] for row in paused_rows}
        first = [(str(lane), int(served), int(active)) for lane, served, active in lanes]
        plain_served = int(plain[0][0]) if plain else None
        picks = await tx.pick(queue, first, plain_served, paused, fetch, limit)
        if not picks:
            return []
        seqs, tokens, served, rate_scopes = await tx.plan_claims(queue, worker_id, picks, fetch)
        processed = from_timestamp(tx.now)
        started_at = processed.astimezone(UTC).isoformat()
        lock_until = from_timestamp(tx.now + duration)
        rows = await tx.execute(
            """UPDATE {jobs} AS j SET state = 'active', seq = v.seq, processed_at = ?,
                lock_until = ?, locked_by = ?, lock_token = v.token, version = j.version + 1
            FROM unnest(?::bigint[], ?::bigint[], ?::text[]) WITH ORDINALITY
                AS v(pk, seq, token, ord)
            WHERE j.pk = v.pk
            RETURNING v.ord, j.record, j.pk, j.version, j.created_at, j.delay_until""",
            (processed, lock_until, worker_id, [pk for pk, _lane in picks], seqs, tokens),
        )
        claimed: list[JobData] = []
        remember: list[tuple[str, _Claim]] = []
        for ordinal, record, pk, version, created, delay in sorted(rows, key=lambda row: row[0]):
            job = structure(record, JobData)
            job.created_at = created
            job.delay_until = delay
            job.state = JobState.ACTIVE
            job.processed_at = processed
            job.lock_until = lock_until
            job.locked_by = worker_id
            job.lock_token = token = tokens[int(ordinal) - 1]
            tx.emit_state(job, JobState.WAITING)
            claimed.append(job)
            claim = _Claim(pk, version, queue, job.id, record, worker_id, started_at)
            remember.append((token, claim))
        tx.after_commit(lambda: self._remember(remember))
        statements: list[tuple[bytes, Sequence[Any]]] = []
        if served:
            statements.append(
                (
                    self._sql(
                        """UPDATE {lanes} AS l SET served = v.tick
                        FROM unnest(?::text[], ?::bigint[]) AS v(lane, tick)
                        WHERE l.queue = ? AND l.lane = v.lane"""
                    ),
                    (list(served), list(served.values()), queue),
                )
            )
        if rate_scopes:
            statements.append(
                (
                    self._sql(
                        """INSERT INTO {rate} (queue, scope, at)
                        SELECT ?, s, ? FROM unnest(?::text[]) AS s"""
                    ),
                    (queue, processed, rate_scopes),
                )
            )
        if statements:
            await tx.conn.pipeline(statements)
        return claimed

    async def _extend_locks(
        self, queue_name: str, locks: Mapping[str, str], seconds: float
    ) -> dict[str, LockStatus]:
        ids = list(locks)
        tokens = [locks[job_id] for job_id in ids]

        async def body(tx: _Tx) -> dict[str, LockStatus]:
            rows = await tx.execute(
                """UPDATE {jobs} AS j SET lock_until = ?
                FROM unnest(?::text[], ?::text[]) AS v(id, token)
                WHERE j.queue = ? AND j.id = v.id AND j.state = 'active'
                    AND j.lock_token = v.token
                RETURNING j.id, (j.record->>'cancelled_at') IS NOT NULL""",
                (_dt(tx.now + seconds), ids, tokens, queue_name),
            )
            held: dict[str, bool] = dict(rows)
            return {
                job_id: LockStatus.LOST
                if job_id not in held
                else (LockStatus.CANCEL_REQUESTED if held[job_id] else LockStatus.EXTENDED)
                for job_id in ids
            }

        # One statement guarded by each lock token: no schema lock needed.
        return await self._write(body, locked=False)

    async def _release_lock(self, queue_name: str, job_id: str, lock_token: str) -> bool:
        return await self._write(lambda tx: tx.release_lock(queue_name, job_id, lock_token))

    async def _finish_jobs(self, clean: list[JobOutcome]) -> list[bool]:
        results: list[bool | None] = [None] * len(clean)
        quick: list[tuple[int, JobOutcome, _Claim]] = []
        for i, outcome in enumerate(clean):
            claim = self._claimed.get(outcome.lock_token)
            if (
                claim is not None
                and outcome.kind is OutcomeKind.COMPLETED
                and outcome.failed_reason is None
                and outcome.stacktrace is None
                and claim.queue == outcome.queue_name
                and claim.job_id == outcome.job_id
                and claim.simple
            ):
                quick.append((i, outcome, claim))
        if quick:
            for i in await self._complete_claimed(quick):
                results[i] = True
        rest = [i for i, result in enumerate(results) if result is None]
        if rest:

            async def body(tx: _Tx) -> list[bool]:
                return [await tx.finish(clean[i]) for i in rest]

            for i, result in zip(rest, await self._write(body), strict=True):
                results[i] = result
        for outcome in clean:
            self._claimed.pop(outcome.lock_token, None)
        return [bool(result) for result in results]

    async def _complete_claimed(self, quick: list[tuple[int, JobOutcome, _Claim]]) -> list[int]:
        """The common outcome, written without reading the jobs or taking the schema lock:
        they completed, they have no parent and nothing to remove, and their rows were not
        written since this store claimed them (the version says so). One statement in one
        round trip writes the jobs, the queue totals and the metrics and sends the events.
        Returns the indexes it completed; the others (progress, logs or a cancel request wrote
        the row since) take the general path.

        The records are made here, but the time is the server's: each record is sent in three
        parts around its two timestamps (``completed_at`` and the attempt's ``finished_at``),
        which the statement fills in.
        """
        pks: list[int] = []
        versions: list[int] = []
        tokens: list[str] = []
        parts: tuple[list[str], list[str], list[str]] = ([], [], [])
        items: list[str] = []
        jobs: dict[int, tuple[int, JobOutcome]] = {}
        for i, outcome, claim in quick:
            # The record as claimed, changed as a completion changes it (see JobTx.finish),
            # in its JSON form: reading it into a JobData and back would cost twice as much.
            record = dict(claim.record)
            made = int(record.get("attempts_made", 0)) + 1
            record["attempts_made"] = made
            attempt = {
                "attempt": made,
                "worker_id": claim.worker_id,
                "started_at": claim.started_at,
                "finished_at": _STAMP_ISO,
                "outcome": OutcomeKind.COMPLETED.value,
            }
            record["attempt_logs"] = [*record.get("attempt_logs", ()), attempt]
            if outcome.returnvalue is None:
                record.pop("returnvalue", None)
            else:
                record["returnvalue"] = outcome.returnvalue
            record["completed_at"] = _STAMP_ISO
            pieces = _ENCODER.encode(record).split(_STAMP_JSON)
            if len(pieces) != 3:
                continue  # the stamp's text is in the job's own data: the general path
            for column, piece in zip(parts, pieces, strict=True):
                column.append(piece)
            pks.append(claim.pk)
            versions.append(claim.version)
            tokens.append(outcome.lock_token)
            items.append(
                _event_item(
                    (
                        claim.queue,
                        JobState.COMPLETED.value,
                        claim.job_id,
                        {"prev": JobState.ACTIVE.value, "returnvalue": outcome.returnvalue},
                    )
                )
            )
            jobs[claim.pk] = (i, outcome)
        if not pks:
            return []
        self._check_connected()
        try:
            async with self._pool.connection() as conn:
                # The jobs first, then the queue's totals, then the metrics rows (the shard
                # rows of this connection, see _SHARD), each in its own statement (the
                # data-changing parts of one statement run in no set order): the order every
                # writer of this store locks them in, so none waits for another in a cycle.
                # One implicit transaction, one round trip. A statement before them says
                # whether the events may be left out (_QUIET); the jobs' statement
                # leaves what it completed, per queue and minute, in a
                # transaction-local setting that the other three read.
                tally = (
                    "json_array_elements(coalesce(nullif("
                    "current_setting('conveyor.completed', true), ''), '[]')::json)"
                )
                _quiet, rows, _totals, _added, _pruned = await conn.pipeline(
                    [
                        (self._sql(f"SELECT 1 FROM {_QUIET}"), (self._listeners_key,)),
                        (
                            self._sql(
                                f"""WITH clock AS MATERIALIZED (SELECT coalesce(?::float8,
                                    extract(epoch FROM clock_timestamp())::float8) AS t),
                                stamp AS MATERIALIZED (SELECT t, {_iso_sql("t")} AS iso FROM clock),
                                v AS (SELECT * FROM unnest(?::bigint[], ?::bigint[], ?::text[],
                                    ?::text[], ?::text[], ?::text[], ?::text[])
                                    AS v(pk, version, token, a, b, c, item)),
                                done AS (
                                    UPDATE {{jobs}} AS j SET state = 'completed',
                                        seq = nextval({{seq_name}}), lock_until = NULL,
                                        locked_by = NULL, lock_token = NULL,
                                        finished_at = to_timestamp(stamp.t),
                                        record = (v.a || stamp.iso || v.b || stamp.iso
                                            || v.c)::json,
                                        version = j.version + 1
                                    -- (IS TRUE: no index condition, so the rows are
                                    -- reached by primary key whatever the statistics say)
                                    FROM v, stamp WHERE j.pk = v.pk AND j.version = v.version
                                        AND j.lock_token = v.token AND (j.state = 'active') IS TRUE
                                    RETURNING j.pk, j.queue, v.item),
                                told AS (
                                    SELECT {{notify_fn}}(?, '{{{{"o":"' || ? || '","at":' || stamp.t
                                        || ',"e":[', array_agg(d.item)) AS sent
                                    FROM done AS d, stamp WHERE {_EVENTS_WANTED}
                                    GROUP BY stamp.t),
                                tallied AS (
                                    SELECT set_config('conveyor.completed', json_agg(
                                        json_build_array(c.queue, c.minute, c.n))::text, true)
                                        AS tally
                                    FROM (SELECT d.queue, floor(stamp.t / 60)::bigint AS minute,
                                        count(*) AS n FROM done AS d, stamp
                                        GROUP BY 1, 2) AS c)
                                SELECT d.pk, stamp.t FROM done AS d CROSS JOIN stamp
                                    LEFT JOIN told ON told.sent >= 0
                                    LEFT JOIN tallied ON tallied.tally IS NOT NULL"""
                            ),
                            (
                                None if self._clock is None else self._clock.time(),
                                pks,
                                versions,
                                tokens,
                                *parts,
                                items,
                                self._event_channel,
                                self._origin,
                            ),
                        ),
                        (
                            self._sql(
                                f"""INSERT INTO {{totals}} AS t (queue, shard, completed)
                                SELECT e->>0, {_SHARD}, sum((e->>2)::bigint)
                                FROM {tally} AS e GROUP BY 1
                                ON CONFLICT (queue, shard)
                                DO UPDATE SET completed = t.completed + excluded.completed"""
                            ),
                            (),
                        ),
                        (
                            self._sql(
                                f"""INSERT INTO {{metrics}} AS m (queue, kind, minute, shard, count)
                                SELECT e->>0, 'completed', (e->>1)::bigint, {_SHARD},
                                    (e->>2)::bigint
                                FROM {tally} AS e
                                ON CONFLICT (queue, kind, minute, shard)
                                DO UPDATE SET count = m.count + excluded.count"""
                            ),
                            (),
                        ),
                        (
                            self._sql(
                                f"""DELETE FROM {{metrics}} AS m USING {tally} AS e
                                WHERE m.kind = 'completed' AND m.queue = e->>0
                                    AND m.shard = {_SHARD} AND m.minute < (e->>1)::bigint - ?"""
                            ),
                            (self._metrics_minutes,),
                        ),
                    ]
                )
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL error ({self._where()}): {exc}") from exc
        if not rows:
            return []
        now = float(rows[0][1])
        completed: list[int] = []
        wanted: dict[str, bool] = {}
        events: list[StoreEvent] = []
        for pk, _t in rows:
            i, outcome = jobs[pk]
            completed.append(i)
            local = wanted.get(outcome.queue_name)
            if local is None:
                local = wanted[outcome.queue_name] = self._wants(
                    outcome.queue_name, EventType.COMPLETED
                )
            if local:
                value = copy_json(outcome.returnvalue)
                data = {"prev": JobState.ACTIVE.value, "returnvalue": value}
                at = from_timestamp(now)
                events.append(
                    StoreEvent(
                        JobState.COMPLETED.value, outcome.queue_name, outcome.job_id, data, at
                    )
                )
        if events:
            self._deliver(events)
        return sorted(completed)

    # -- flows -------------------------------------------------------------------------------------

    async def _notify_child_completed(
        self, parent_queue_name: str, parent_id: str
    ) -> JobState | None:
        return await self._write(lambda tx: tx.child_done(parent_queue_name, parent_id))

    async def _fail_parent_on_child_failure(
        self, parent_queue_name: str, parent_id: str, reason: str
    ) -> bool:
        return await self._write(
            lambda tx: tx.fail_parent_on_child_failure(parent_queue_name, parent_id, reason)
        )

    async def _get_children_jobs(self, parent_queue_name: str, parent_id: str) -> list[JobData]:
        rows = await self._read_alone(lambda tx: tx.children(parent_queue_name, parent_id))
        return [row.job for row in rows]

    # -- stalled jobs ------------------------------------------------------------------------------

    async def _expired(self, tx: _Tx, queue: str) -> list[Row]:
        return await tx.rows_of(
            "queue = ? AND state = 'active' AND lock_until <= ? ORDER BY seq", (queue, _dt(tx.now))
        )

    async def _get_stalled_jobs(self, queue_name: str) -> list[JobData]:
        async def body(tx: _Tx) -> list[JobData]:
            return [row.job for row in await self._expired(tx, queue_name)]

        return await self._read(body)

    async def _recover_stalled_jobs(self, queue_name: str, max_stalled_count: int) -> list[JobData]:
        async def body(tx: _Tx) -> list[JobData]:
            expired = await self._expired(tx, queue_name)
            return await tx.recover_stalled(queue_name, expired, max_stalled_count)

        return await self._write(body)

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
        count = None if end == -1 else max(end - start + 1, 0)

        rows = await self._read_alone(
            lambda tx: tx.rows_of(
                f"queue = ? AND state = ? ORDER BY {order} LIMIT ? OFFSET ?",
                (queue_name, state.value, count, start),
            )
        )
        return [row.job for row in rows]

    async def _count_jobs(self, queue_name: str, state: JobState) -> int:
        return await self._read_alone(lambda tx: tx.count_state(queue_name, state))

    async def _get_job_counts(self, queue_name: str) -> dict[JobState, int]:
        rows = await self._query_alone(
            "SELECT state, count(*) FROM {jobs} WHERE queue = ? GROUP BY state", (queue_name,)
        )
        found = {str(state): int(count) for state, count in rows}
        return {state: found.get(state.value, 0) for state in JobState}

    async def _get_next_delayed_timestamp(self, queue_name: str) -> datetime | None:
        rows = await self._query_alone(
            """SELECT delay_until FROM {jobs} WHERE queue = ? AND state = 'delayed'
            ORDER BY delay_until LIMIT 1""",
            (queue_name,),
        )
        return rows[0][0] if rows else None

    async def list_queues(self) -> list[str]:
        # Distinct queue names by index seeks, one per queue (not a scan of every job).
        rows = await self._query_alone(
            """WITH RECURSIVE names(name) AS (
                SELECT min(queue) FROM {jobs}
                UNION ALL
                SELECT (SELECT min(queue) FROM {jobs} WHERE queue > names.name)
                FROM names WHERE names.name IS NOT NULL
            )
            SELECT name FROM (
                SELECT name FROM names WHERE name IS NOT NULL
                UNION SELECT queue FROM {paused}
            ) AS all_names ORDER BY name COLLATE "C"
            """
        )
        return [str(row[0]) for row in rows]

    async def _lane_count(self, queue_name: str, group_id: str, column: str) -> int:
        check_name(queue_name, "queue_name")
        check_name(group_id, "group_id")

        rows = await self._query_alone(
            f"SELECT {column} FROM {{lanes}} WHERE queue = ? AND lane = ?", (queue_name, group_id)
        )
        return int(rows[0][0]) if rows else 0

    async def get_group_active_count(self, queue_name: str, group_id: str) -> int:
        return await self._lane_count(queue_name, group_id, "active")

    async def get_waiting_group_count(self, queue_name: str, group_id: str) -> int:
        return await self._lane_count(queue_name, group_id, "waiting")

    async def _get_metrics(
        self, queue_name: str, kind: MetricKind, first: float, last: float
    ) -> Metrics:
        column = "completed" if kind is MetricKind.COMPLETED else "failed"

        async def body(tx: _Tx) -> Metrics:
            total = await tx.one(
                f"SELECT coalesce(sum({column}), 0) FROM {{totals}} WHERE queue = ?", (queue_name,)
            )
            oldest = int(tx.now // 60) - self._metrics_minutes
            rows = await tx.execute(
                """SELECT minute, sum(count) FROM {metrics}
                WHERE queue = ? AND kind = ? AND minute >= ? GROUP BY minute ORDER BY minute""",
                (queue_name, kind.value, oldest),
            )
            buckets = [
                MetricsBucket(from_timestamp(minute * 60), int(count))
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

    async def _promote(self, tx: _Tx, queue: str, *, due: bool) -> int:
        where = "queue = ? AND state = 'delayed'" + (" AND delay_until <= ?" if due else "")
        params = (queue, _dt(tx.now)) if due else (queue,)
        return await tx.promote(await tx.rows_of(where + " ORDER BY delay_until, seq", params))

    # -- pause / resume ----------------------------------------------------------------------------

    async def _pause_job_name(self, queue_name: str, job_name: str) -> None:
        async def body(tx: _Tx) -> None:
            await tx.conn.pipeline(
                [
                    (
                        self._sql(
                            """INSERT INTO {paused} (queue, name) VALUES (?, ?)
                            ON CONFLICT DO NOTHING"""
                        ),
                        (queue_name, job_name),
                    ),
                    (
                        self._sql(
                            """INSERT INTO {queues} (name) VALUES (?)
                            ON CONFLICT (name) DO UPDATE SET live = 1"""
                        ),
                        (queue_name,),
                    ),
                ]
            )
            tx.emit(queue_name, EventType.PAUSED, None, job_name=job_name)

        await self._write(body)

    async def _resume_job_name(self, queue_name: str, job_name: str) -> None:
        async def body(tx: _Tx) -> None:
            await tx.execute(
                "DELETE FROM {paused} WHERE queue = ? AND name = ?", (queue_name, job_name)
            )
            tx.emit(queue_name, EventType.RESUMED, None, job_name=job_name)

        await self._write(body)

    async def _get_paused_job_names(self, queue_name: str) -> list[str]:
        rows = await self._query_alone(
            'SELECT name FROM {paused} WHERE queue = ? ORDER BY name COLLATE "C"', (queue_name,)
        )
        return [str(row[0]) for row in rows]

    # -- maintenance -------------------------------------------------------------------------------

    async def _clean(
        self, queue_name: str, state: JobState, seconds: float, limit: int | None
    ) -> int:
        async def body(tx: _Tx) -> int:
            cutoff = _dt(tx.now - seconds)
            if state in TERMINAL_STATES:
                where, order = "finished_at <= ?", "seq"
            else:
                where = "created_at <= ?"
                order = {
                    JobState.WAITING: "created_at, priority, seq",
                    JobState.DELAYED: "created_at, delay_until, seq",
                }.get(state, "created_at, seq")
            rows = await tx.rows_of(
                f"queue = ? AND state = ? AND {where} ORDER BY {order} LIMIT ?",
                (queue_name, state.value, cutoff, limit),
            )
            count = await tx.delete_all(rows)
            tx.emit(queue_name, EventType.CLEANED, None, state=state.value, count=count)
            return count

        return await self._write(body)

    async def _drain(self, queue_name: str) -> int:
        async def body(tx: _Tx) -> int:
            rows = await tx.rows_of("queue = ? AND state IN ('waiting', 'delayed')", (queue_name,))
            count = await tx.delete_all(rows)
            tx.emit(queue_name, EventType.DRAINED, None, count=count)
            return count

        return await self._write(body)

    async def _obliterate(self, queue_name: str, force: bool) -> None:
        async def body(tx: _Tx) -> None:
            active = await tx.count_state(queue_name, JobState.ACTIVE)
            if active and not force:
                raise InvalidJobStateError(
                    f"queue {queue_name!r} has {active} active jobs; pass force=True to remove "
                    "it anyway"
                )
            exists = await tx.one(
                "SELECT 1 FROM {queues} WHERE name = ? AND live = 1 UNION ALL "
                "SELECT 1 FROM {paused} WHERE queue = ? LIMIT 1",
                (queue_name, queue_name),
            )
            if exists is None:
                return
            rows = await tx.rows_of(
                """queue = ? AND parent_id IS NOT NULL AND parent_queue <> ?
                AND state NOT IN ('completed', 'failed')""",
                (queue_name, queue_name),
            )
            await tx.execute("DELETE FROM {jobs} WHERE queue = ?", (queue_name,))
            for row in rows:
                parent_queue, parent_id = row.job.parent_queue_name, row.job.parent_id
                if parent_queue is not None and parent_id is not None:
                    await tx.child_done(parent_queue, parent_id)
            await tx.conn.pipeline(
                [
                    (self._sql(f"DELETE FROM {{{table}}} WHERE queue = ?"), (queue_name,))
                    for table in ("paused", "lanes", "rate", "metrics", "totals")
                ]
            )
            # The row stays for its sequence: lock tokens of the queue never repeat.
            await tx.execute(
                """UPDATE {queues} SET live = 0, tick = 0, plain_served = 0,
                    completed = 0, failed = 0 WHERE name = ?""",
                (queue_name,),
            )
            counters = tx.counters.get(queue_name)
            if counters is not None:
                counters[1:] = [0, 0, 0, 0]
            tx.emit(queue_name, EventType.OBLITERATED, None)

        await self._write(body)

    async def _retry_jobs(self, queue_name: str, state: JobState) -> int:
        async def body(tx: _Tx) -> int:
            rows = await tx.rows_of(
                "queue = ? AND state = ? ORDER BY seq", (queue_name, state.value)
            )
            return await tx.retry(rows)

        return await self._write(body)

    async def truncate_all(self) -> None:
        """Remove every job, queue, paused name and metric of this schema. For tests."""

        async def body(tx: _Tx) -> None:
            await tx.execute(
                "TRUNCATE {jobs}, {lanes}, {queues}, {paused}, {rate}, {metrics}, {totals}"
            )

        await self._write(body)

    # -- events ------------------------------------------------------------------------------------

    def _start_listening(self) -> None:
        if self._listener is None and self._listen and self._token is not None:
            self._listener = _Listener(
                self._conninfo,
                (self._wake_channel, self._event_channel),
                (self._names["listeners"], self._listeners_key),
                self._origin,
                self._token,
                self._deliver_foreign,
                everything=self._wants_beyond(WAKE_EVENTS),
            )
        elif (
            self._listener is not None
            and not self._listener.everything
            and self._wants_beyond(WAKE_EVENTS)  # (a worker's subscription takes only those)
        ):
            self._listener.listen_to_everything()

    def _subscribed(self) -> None:
        if self._lifecycle is Lifecycle.CONNECTED:
            self._start_listening()

    async def _publish(self, clean: StoreEvent) -> None:
        async def body(tx: _Tx) -> None:
            tx.publish(clean)

        await self._write(body, locked=False)

    def _deliver_foreign(self, events: list[StoreEvent]) -> None:
        if self._lifecycle is Lifecycle.CONNECTED:
            self._deliver(events)
