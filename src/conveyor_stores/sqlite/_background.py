"""The store's background thread: WAL checkpoints, and events from other processes.

Checkpoints. SQLite normally checkpoints the WAL inside whichever commit crosses 1,000 pages,
and a checkpoint syncs both files to disk: on the event loop, that is a pause of milliseconds
every hundred-odd transactions. The store's own connection turns automatic checkpoints off and
this thread runs a ``PASSIVE`` checkpoint every ``checkpoint_interval`` instead, beside the
loop (SQLite releases the GIL while it works, and a passive checkpoint never blocks writers).

Events. Each store writes the events of a transaction into ``conveyor_events`` inside that
transaction, tagged with its own ``origin``, and delivers them to its own subscribers at once
after the commit. While the store has subscribers, this thread delivers the rest: events
written by other processes (or other stores on the same file). Every ``poll_interval`` it asks
SQLite whether anyone committed (``PRAGMA data_version``, no I/O when nothing changed) and, if
so, reads the events past the last id it saw, then hands them to the event loop through
``anyio.from_thread.run_sync``. While the store's subscribers take only wake-ups (``only``:
a process that only runs workers), it hands over only those, and does not enter the event
loop at all for the claims and completions of other processes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

import anyio.from_thread
from anyio.lowlevel import EventLoopToken

from conveyor.store import StoreEvent, from_timestamp

__all__ = ["Background"]

log = logging.getLogger("conveyor.stores.sqlite")

_BATCH = 100
"""Rows (transactions) read per query; each holds all the events of one transaction."""
_time = from_timestamp


class Background:
    """One thread per connected file-backed store: checkpoints, and (when asked) events."""

    def __init__(
        self,
        path: str,
        origin: str,
        token: EventLoopToken,
        deliver: Callable[[list[StoreEvent]], None],
        *,
        poll_interval: float,
        checkpoint_interval: float,
    ) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 1000")
        self._origin = origin
        self._poll_interval = poll_interval
        self._checkpoint_interval = checkpoint_interval
        self._token = token
        self._deliver = deliver
        self._listening = False
        self.only: frozenset[str] | None = None
        """The event types the store's subscribers take (None: every type). Set on the event
        loop; the thread reads it after reading a batch of rows, so a subscriber that wants
        more gets every event committed after it subscribed."""
        self._wake = threading.Event()
        self._stop = False
        row = self._conn.execute("SELECT coalesce(max(id), 0) FROM conveyor_events").fetchone()
        self._last_id = int(row[0])
        self._thread = threading.Thread(target=self._run, name="conveyor-sqlite", daemon=True)
        self._thread.start()

    def listen(self, path: str) -> None:
        """Start delivering other processes' events, from those committed after now.

        Called on the event loop: it reads the last event id on a connection of its own (the
        thread's connection is the thread's).
        """
        if self._listening:
            return
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM conveyor_events").fetchone()
        finally:
            conn.close()
        self._last_id = int(row[0])
        self._listening = True
        self._wake.set()

    @property
    def listening(self) -> bool:
        """Whether it delivers other processes' events (see :meth:`listen`)."""
        return self._listening

    def mute(self) -> None:
        """Stop delivering other processes' events (nobody listens any more)."""
        self._listening = False

    def stop(self) -> None:
        """Stop the thread and wait for it (call from a worker thread, not the event loop)."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        version = None
        next_checkpoint = time.monotonic() + self._checkpoint_interval
        while not self._stop:
            interval = self._poll_interval if self._listening else self._checkpoint_interval
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop:
                break
            try:
                if self._listening:
                    current = self._conn.execute("PRAGMA data_version").fetchone()[0]
                    if current != version:
                        version = current
                        self._pump()
                now = time.monotonic()
                if now >= next_checkpoint:
                    next_checkpoint = now + self._checkpoint_interval
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except RuntimeError:  # the event loop is gone
                return
            except sqlite3.Error as exc:
                log.warning("conveyor's SQLite background thread: %s", exc)

    def _pump(self) -> None:
        while not self._stop:
            rows = self._conn.execute(
                "SELECT id, origin, at, events FROM conveyor_events "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (self._last_id, _BATCH),
            ).fetchall()
            if not rows:
                return
            self._last_id = rows[-1][0]
            only = self.only
            events = [
                StoreEvent(
                    event[1],
                    event[0],
                    event[2],
                    event[3] or {},
                    _time(event[4] if len(event) > 4 else at),
                )
                for _id, origin, at, batch in rows
                if origin != self._origin
                for event in json.loads(batch)
                if only is None or event[1] in only
            ]
            if events:
                anyio.from_thread.run_sync(self._deliver, events, token=self._token)
            if len(rows) < _BATCH:
                return
