"""The SQLite schema, and the versioned migrations that build it (``conveyor_migrations``).

Tables:

* ``conveyor_jobs``: one row per job. ``record`` holds the job as the converter's JSON, minus the
  claim fields (state, processed_at, lock_until, locked_by, lock_token), which live in columns
  and win over the record on reading. The other columns are copies of record fields that queries
  filter or sort on. ``seq`` orders a job within its state: waiting jobs by (priority, seq), with
  a negative seq for the head of a priority; delayed by (delay_until, seq); active by claim;
  completed and failed by finishing; waiting-children by arrival.
  ``version`` grows with every write of the row, so a record read earlier can be checked
  for staleness in the same statement that overwrites it.
* ``conveyor_lanes``: per queue and group, when the group was last served and how many of its
  jobs are waiting, active, and queued (waiting or delayed). Triggers keep the counts, so no
  code path can forget them; jobs without a group skip them (a trigger costs more than the
  insert it rides on).
* ``conveyor_queues``: one row of counters per queue, written at most once per transaction:
  the sequence that orders its jobs and makes its lock tokens unique (never reset, not even
  by obliterate), the round-robin tick and when the group-less lane was last served, lifetime
  finished totals, and whether the queue exists (``live``).
* ``conveyor_paused``, ``conveyor_rate`` (claim times for rate limits), ``conveyor_metrics``
  (finished jobs per minute), ``conveyor_events`` (events for other processes, read by rowid;
  since version 2, one row per transaction holding all its events as a JSON array).

Every transaction touches as few pages as it can: each page it changes is written to the WAL
at commit, and that, not the statements, is most of what a small transaction costs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import sqlite_utils

from conveyor.store import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_database", "migrate"]

_ADD_TO_LANE = """
    INSERT INTO conveyor_lanes (queue, lane, waiting, active, queued)
    SELECT new.queue, new.lane, new.state = 'waiting', new.state = 'active',
           new.state IN ('waiting', 'delayed')
    WHERE new.lane != ''
    ON CONFLICT (queue, lane) DO UPDATE SET
        waiting = waiting + excluded.waiting,
        active = active + excluded.active,
        queued = queued + excluded.queued;
"""

_REMOVE_FROM_LANE = """
    UPDATE conveyor_lanes SET
        waiting = waiting - (old.state = 'waiting'),
        active = active - (old.state = 'active'),
        queued = queued - (old.state IN ('waiting', 'delayed'))
    WHERE queue = old.queue AND lane = old.lane AND old.lane != '';
"""


def _v1(db: sqlite_utils.Database) -> None:
    db.create_table(
        "conveyor_jobs",
        {
            "pk": int,
            "queue": str,
            "id": str,
            "name": str,
            "state": str,
            "lane": str,
            "priority": int,
            "seq": int,
            "created_at": float,
            "processed_at": float,
            "delay_until": float,
            "lock_until": float,
            "locked_by": str,
            "lock_token": str,
            "finished_at": float,
            "dedup_key": str,
            "dedup_until": float,
            "parent_queue": str,
            "parent_id": str,
            "version": int,
            "record": str,
        },
        pk="pk",
        defaults={"version": 0},
        not_null={
            "queue",
            "id",
            "name",
            "state",
            "lane",
            "priority",
            "seq",
            "created_at",
            "record",
        },
    )
    db.create_table(
        "conveyor_lanes",
        {
            "queue": str,
            "lane": str,
            "served": int,
            "waiting": int,
            "active": int,
            "queued": int,
        },
        pk=("queue", "lane"),
        not_null={"served", "waiting", "active", "queued"},
        defaults={"served": 0, "waiting": 0, "active": 0, "queued": 0},
    )
    counters = ("live", "seq", "tick", "plain_served", "completed", "failed")
    db.create_table(
        "conveyor_queues",
        {"name": str, **dict.fromkeys(counters, int)},
        pk="name",
        not_null=set(counters),
        defaults={**dict.fromkeys(counters, 0), "live": 1},
    )
    db.create_table("conveyor_paused", {"queue": str, "name": str}, pk=("queue", "name"))
    db.create_table(
        "conveyor_rate",
        {"queue": str, "scope": str, "at": float},
        not_null={"queue", "scope", "at"},
    )
    db.create_table(
        "conveyor_metrics",
        {"queue": str, "kind": str, "minute": int, "count": int},
        pk=("queue", "kind", "minute"),
        not_null={"count"},
    )
    # Event ids only grow, so a reader that remembers the last id it saw never misses a new
    # event: pruning never deletes the newest row (an INTEGER PRIMARY KEY takes max + 1;
    # AUTOINCREMENT would guarantee the same at the cost of a page write per transaction).
    # ``at`` is the event's time (the store's clock); ``written`` the wall clock, for pruning.
    db.create_table(
        "conveyor_events",
        {
            "id": int,
            "origin": str,
            "queue": str,
            "type": str,
            "job_id": str,
            "at": float,
            "written": float,
            "data": str,
        },
        pk="id",
        not_null={"origin", "queue", "type", "at", "written"},
    )
    # sqlite-utils does not write partial indexes or triggers: plain SQL.
    for statement in (
        # (id, queue): serves lookups by queue and id, and by id alone (find_job_by_id)
        "CREATE UNIQUE INDEX conveyor_jobs_key ON conveyor_jobs (id, queue)",
        # claim: the next waiting job of a lane, with or without a job name
        """CREATE INDEX conveyor_jobs_claim ON conveyor_jobs (queue, lane, priority, seq)
           WHERE state = 'waiting'""",
        """CREATE INDEX conveyor_jobs_claim_name
           ON conveyor_jobs (queue, lane, name, priority, seq) WHERE state = 'waiting'""",
        """CREATE INDEX conveyor_jobs_delayed ON conveyor_jobs (queue, delay_until, seq)
           WHERE state = 'delayed'""",
        """CREATE INDEX conveyor_jobs_state ON conveyor_jobs (queue, state, seq)
           WHERE state NOT IN ('waiting', 'delayed')""",
        """CREATE INDEX conveyor_jobs_dedup ON conveyor_jobs (queue, dedup_key)
           WHERE dedup_key IS NOT NULL""",
        """CREATE INDEX conveyor_jobs_parent ON conveyor_jobs (parent_queue, parent_id)
           WHERE parent_id IS NOT NULL""",
        """CREATE INDEX conveyor_lanes_turn ON conveyor_lanes (queue, served, lane)
           WHERE waiting > 0""",
        "CREATE INDEX conveyor_rate_window ON conveyor_rate (queue, scope, at)",
        # Group lanes only: jobs without a group pay nothing for these counts.
        f"""CREATE TRIGGER conveyor_jobs_added AFTER INSERT ON conveyor_jobs
            WHEN new.lane != '' BEGIN {_ADD_TO_LANE} END""",
        f"""CREATE TRIGGER conveyor_jobs_removed AFTER DELETE ON conveyor_jobs
            WHEN old.lane != '' BEGIN {_REMOVE_FROM_LANE} END""",
        f"""CREATE TRIGGER conveyor_jobs_moved AFTER UPDATE OF state, lane ON conveyor_jobs
            WHEN (old.lane != '' OR new.lane != '')
                AND (old.state IS NOT new.state OR old.lane IS NOT new.lane)
            BEGIN {_REMOVE_FROM_LANE} {_ADD_TO_LANE} END""",
    ):
        db.execute(statement)


def _v2(db: sqlite_utils.Database) -> None:
    """Events: one row per transaction instead of one per event.

    A drained job publishes two events and an added one, one; a row each cost a B-tree insert
    and its share of WAL pages, 5 to 15% of a drain. Now a transaction writes one row whose
    ``events`` column is a JSON array of ``[queue, type, job_id, data]``, with the event's time
    appended only when it is not the transaction's ``at`` (the store's clock). Events are
    transient (kept ``event_retention``), so the old table is dropped, not converted: a reader
    still running the older version stops seeing new events, and refuses the file when it
    opens it again (the version is newer than it knows).
    """
    db.execute("DROP TABLE conveyor_events")
    db.create_table(
        "conveyor_events",
        {"id": int, "origin": str, "written": float, "at": float, "events": str},
        pk="id",
        not_null={"origin", "written", "at", "events"},
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("jobs, lanes, queues, pauses, rate windows, metrics and events", _v1),
    ("events: one row per transaction", _v2),
]
"""Migration ``n`` (1-based) brings the schema from version ``n - 1`` to ``n``. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)


def check_database(conn: sqlite3.Connection, where: str) -> int:
    """The schema version of the database, checking it is ours and not newer than this code.

    Reads only: a file that is not a conveyor database is left exactly as it was.
    """
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError:
        raise  # locked by another connection, or similar: the caller retries
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{where} is not an SQLite database ({exc})") from exc
    if "conveyor_migrations" not in tables:
        others = sorted(t for t in tables if not t.startswith("sqlite_"))
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise StoreError(
                f"{where} is an SQLite database but not a conveyor one (it has tables {shown} "
                "and no conveyor_migrations); point the store at a new or conveyor file"
            )
        return 0
    row = conn.execute("SELECT max(version) FROM conveyor_migrations").fetchone()
    version = int(row[0] or 0)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has conveyor schema version {version}, newer than this conveyor "
            f"understands ({SCHEMA_VERSION}); upgrade conveyor to use it"
        )
    return version


def migrate(conn: sqlite3.Connection, where: str, *, apply: bool) -> int:
    """Bring the database up to :data:`SCHEMA_VERSION` in one ``BEGIN IMMEDIATE`` transaction.

    Several processes may call this at once: the write lock serializes them, and each checks
    the version again once it holds the lock, so every migration runs exactly once.
    ``conn`` must be in autocommit mode (``isolation_level=None``) and have a busy timeout.
    With ``apply=False`` a database that needs migrating raises :class:`StoreError` instead.
    """
    if check_database(conn, where) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    if not apply:
        raise StoreError(
            f"{where} needs migrating to conveyor schema version {SCHEMA_VERSION}; connect with "
            "auto_migrate=True (the default) or run `conveyor migrate`"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = check_database(conn, where)
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        if version == 0:
            db.create_table(
                "conveyor_migrations",
                {"version": int, "name": str, "applied_at": float},
                pk="version",
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            name, step = MIGRATIONS[number - 1]
            step(db)
            db.table("conveyor_migrations").insert(
                {"version": number, "name": name, "applied_at": time.time()}
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION
