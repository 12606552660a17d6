"""Events from other processes: a thread that reads ``conveyor_events`` by rowid.

Each store writes the events of a transaction into ``conveyor_events`` inside that transaction,
tagged with its own ``origin``, and delivers them to its own subscribers at once after the
commit. The poller delivers the rest: events written by other processes (or other stores on the
same file). It runs in a thread with its own connection, so the event loop never waits on it:
every ``interval`` it asks SQLite whether anyone committed (``PRAGMA data_version``, no I/O when
nothing changed) and, if so, reads the events past the last id it saw, then hands them to the
event loop through ``anyio.from_thread.run_sync``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable

import anyio.from_thread
from anyio.lowlevel import EventLoopToken

from conveyor.store import StoreEvent, from_timestamp

__all__ = ["EventPoller"]

log = logging.getLogger("conveyor.stores.sqlite")

_BATCH = 1000


class EventPoller:
    """Reads other processes' events and delivers them on the event loop."""

    def __init__(
        self,
        path: str,
        origin: str,
        interval: float,
        token: EventLoopToken,
        deliver: Callable[[list[StoreEvent]], None],
    ) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 1000")
        self._origin = origin
        self._interval = interval
        self._token = token
        self._deliver = deliver
        self._stop = threading.Event()
        row = self._conn.execute("SELECT coalesce(max(id), 0) FROM conveyor_events").fetchone()
        self._last_id = int(row[0])
        self._thread = threading.Thread(
            target=self._run, name="conveyor-sqlite-events", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (call from a worker thread, not the loop)."""
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        version = None
        while not self._stop.wait(self._interval):
            try:
                current = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if current == version:
                    continue
                version = current
                while not self._stop.is_set():
                    events, read = self._read()
                    if events:
                        anyio.from_thread.run_sync(self._deliver, events, token=self._token)
                    if read < _BATCH:
                        break
            except RuntimeError:  # the event loop is gone
                return
            except sqlite3.Error as exc:
                log.warning("reading events from other processes failed: %s", exc)

    def _read(self) -> tuple[list[StoreEvent], int]:
        rows = self._conn.execute(
            "SELECT id, origin, queue, type, job_id, at, data FROM conveyor_events "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (self._last_id, _BATCH),
        ).fetchall()
        if not rows:
            return [], 0
        self._last_id = rows[-1][0]
        events = [
            StoreEvent(type_, queue, job_id, json.loads(data) if data else {}, from_timestamp(at))
            for _id, origin, queue, type_, job_id, at, data in rows
            if origin != self._origin
        ]
        return events, len(rows)
