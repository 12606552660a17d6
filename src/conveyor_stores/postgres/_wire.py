"""PostgreSQL connections that run natively under asyncio and trio.

psycopg's async API (``AsyncConnection``) runs on asyncio only, and its sync API blocks. Under
both sits psycopg's protocol layer: generators (``psycopg.generators``) that drive libpq and
yield whenever they must wait for the socket, leaving the waiting to the caller. This module
does that waiting with AnyIO (``wait_readable`` / ``wait_writable`` on the socket), so one code
path serves both event loops with no thread hop: one network round trip per call.
Parameters and results go through psycopg's ``Transformer``, that is psycopg's own adapters
(``jsonb``, ``timestamptz``, arrays...), results in the binary format.

Queries use PostgreSQL's own placeholders (``$1``, ``$2``...) and are sent as they are: callers
build every identifier with ``psycopg.sql`` and pass every value as a parameter. Parameters go
in the binary format (no escaping to do, as a text array of JSON records would need).

Statements are prepared (named) on each connection the first time it runs them, in the same
round trip, unless the connection is made with ``prepare=False`` (for poolers in transaction
mode that do not keep prepared statements): planning a statement of the store's can cost more
than running it. A statement is prepared once per set of parameter types (a Python int is
sent as int2, int4 or int8 by its size), up to ``_PREPARED_LIMIT`` per connection.

A call that is cancelled, times out or fails at the network level leaves the connection in
an unknown state (a query half sent, results unread): the connection closes itself and
reports ``broken``, and the pool drops it. PostgreSQL rolls back whatever transaction it had.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg import generators, pq
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader, PyFormat, Transformer
from psycopg.waiting import Ready, Wait

__all__ = ["PgConnection", "PgPool", "Rows"]

Rows = list[tuple[Any, ...]]

_FATAL = pq.ExecStatus.FATAL_ERROR
_PREPARED_LIMIT = 500
_UNPREPARED = (b"BEGIN", b"COMMIT", b"ROLLBACK", b"SET", b"LISTEN", b"UNLISTEN")
"""Statements sent as they are: nothing to plan."""
_OK_STATUSES = frozenset(
    {pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY}
)

_scan_json: Callable[[str, int], tuple[Any, int]]
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""One JSON value at a position of a text: its value and where it ends. (``JSONDecoder``
sets ``scan_once`` in ``__init__``; typeshed does not declare it.)"""


class _JsonLoader(Loader):
    """``json`` values (text in either format), read by the decoder's scanner directly:
    ``json.loads`` adds two whitespace matches and, on bytes, an encoding sniff, which were
    half the cost of reading a claimed job's record (~1.5 of ~3 us). Anything but one
    value with nothing around it goes to ``json.loads``, which reads or refuses it."""

    def load(self, data: Buffer) -> Any:
        text = str(data, "utf-8")
        try:
            value, end = _scan_json(text, 0)
        except StopIteration:
            return json.loads(text)
        return value if end == len(text) else json.loads(text)


class _JsonBinaryLoader(_JsonLoader):
    format = pq.Format.BINARY


_ADAPTERS = AdaptersMap(psycopg.adapters)
_ADAPTERS.register_loader("json", _JsonLoader)
_ADAPTERS.register_loader("json", _JsonBinaryLoader)


class _Context:
    """The adapters every statement of this module goes through: psycopg's, as they were
    when conveyor was imported, with the ``json`` loader above (and so untouched by what an
    application registers on psycopg's global adapters later)."""

    adapters = _ADAPTERS
    connection = None


_CONTEXT = _Context()


async def _ready(fileno: int, wait: Wait) -> Ready:
    """Wait until the socket can do what the generator asked for."""
    if wait == Wait.R:
        await anyio.wait_readable(fileno)
        return Ready.R
    if wait == Wait.W:
        await anyio.wait_writable(fileno)
        return Ready.W
    # Either: libpq is flushing a large message and must also read, or the server, blocked
    # writing to us, would never read the rest.
    ready = Ready.NONE
    async with anyio.create_task_group() as tg:

        async def on(side: Ready) -> None:
            nonlocal ready
            if side == Ready.R:
                await anyio.wait_readable(fileno)
            else:
                await anyio.wait_writable(fileno)
            ready = side
            tg.cancel_scope.cancel()

        tg.start_soon(on, Ready.R)
        tg.start_soon(on, Ready.W)
    return ready


class PgConnection:
    """One connection. Not for concurrent use: one call at a time (the pool sees to it)."""

    def __init__(self, pgconn: pq.abc.PGconn, *, prepare: bool = True) -> None:
        self.pgconn = pgconn
        self._encoding = pgconn._encoding if hasattr(pgconn, "_encoding") else "utf-8"
        self._busy = False
        self._prepare = prepare
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        self._names = 0
        self.notifies: deque[tuple[str, str]] = deque()
        """Notifications received (channel, payload), in order, until taken."""

    @classmethod
    async def connect(
        cls, conninfo: str, *, connect_timeout: float = 10.0, prepare: bool = True
    ) -> PgConnection:
        """Open a connection (``conninfo``: a libpq URL or ``key=value`` string)."""
        gen = generators.connect(conninfo)
        with anyio.fail_after(connect_timeout):
            try:
                fileno, wait = next(gen)
                while True:
                    ready = await _ready(fileno, wait)
                    fileno, wait = gen.send(ready)
            except StopIteration as stop:
                pgconn: pq.abc.PGconn = stop.value
        pgconn.nonblocking = 1
        return cls(pgconn, prepare=prepare)

    @property
    def broken(self) -> bool:
        """Closed, or lost: the pool drops it."""
        return self.pgconn.status != pq.ConnStatus.OK

    @property
    def in_transaction(self) -> bool:
        return self.pgconn.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self._break()

    async def _drive(self, gen: Any) -> Any:
        fileno = self.pgconn.socket
        try:
            wait = next(gen)
            while True:
                wait = gen.send(await _ready(fileno, wait))
        except StopIteration as stop:
            return stop.value

    async def execute_script(self, script: bytes) -> None:
        """Run several statements given as one text, without parameters (the simple query
        protocol), for schema migrations. The first error is raised."""
        if self._busy:
            raise RuntimeError("a PgConnection runs one call at a time")
        self._busy = True
        try:
            self.pgconn.send_query(script)
            results = await self._drive(generators.execute(self.pgconn))
            for result in results:
                if result.status == _FATAL:
                    raise psycopg.errors.error_from_result(result, encoding=self._encoding)
        except psycopg.Error as exc:
            if exc.sqlstate is None or self.pgconn.status != pq.ConnStatus.OK:
                self._break()
            raise
        except BaseException:
            self._break()
            raise
        finally:
            self._busy = False

    async def execute(self, query: bytes, params: Sequence[Any] = ()) -> Rows:
        """Run one statement; return its rows (none for a command)."""
        [rows] = await self.pipeline([(query, params)])
        return rows

    def _dump(
        self,
        query: bytes,
        params: Sequence[Any],
        pending: dict[tuple[bytes, tuple[int, ...]], bytes],
    ) -> tuple[Any, Sequence[Any] | None, bytes | None, tuple[Any, bytes] | None]:
        """A statement's parameters dumped, the name it runs under if prepared, and the
        preparation to send first if it is new."""
        tx = Transformer(_CONTEXT)
        dumped = tx.dump_sequence(params, [PyFormat.BINARY] * len(params)) if params else None
        name: bytes | None = None
        prep = None
        if self._prepare and not query.startswith(_UNPREPARED):
            key = (query, tuple(tx.types or ()) if params else ())
            name = self._prepared.get(key) or pending.get(key)
            if name is None and len(self._prepared) < _PREPARED_LIMIT:
                self._names += 1
                name = pending[key] = b"conveyor_%d" % self._names
                prep = (key, name)
        return tx, dumped, name, prep

    def _send(
        self, query: bytes, tx: Any, dumped: Sequence[Any] | None, name: bytes | None, prep: Any
    ) -> None:
        pgconn = self.pgconn
        types = tx.types if dumped is not None else None
        formats = tx.formats if dumped is not None else None
        if prep is not None:
            pgconn.send_prepare(prep[1], query, param_types=types)
        if name is not None:
            pgconn.send_query_prepared(
                name, dumped, param_formats=formats, result_format=pq.Format.BINARY
            )
        else:
            pgconn.send_query_params(
                query, dumped, param_types=types, param_formats=formats,
                result_format=pq.Format.BINARY,
            )  # fmt: skip

    async def pipeline(self, statements: Iterable[tuple[bytes, Sequence[Any]]]) -> list[Rows]:
        """Run several statements in one round trip (libpq's pipeline mode); return the rows of
        each. They run in order; the first error stops the rest and is raised.

        Outside an explicit transaction they run as one implicit transaction (one ``Sync``):
        all or nothing. ``statements`` may be a generator: each statement is sent as soon as
        it is made, so the server runs one while the next is being made (a large bulk add).
        """
        if self._busy:
            raise RuntimeError("a PgConnection runs one call at a time")
        self._busy = True
        pgconn = self.pgconn
        try:
            pending: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
            sent: list[tuple[Any, tuple[Any, bytes] | None]] = []
            first = None
            single = False
            if isinstance(statements, Sequence) and len(statements) == 1:
                query, params = statements[0]
                first = (query, *self._dump(query, params, pending))
                single = first[4] is None
            if single:
                assert first is not None
                self._send(*first)
                sent.append((first[1], None))
                results = await self._drive(generators.execute(pgconn))
            else:
                pgconn.enter_pipeline_mode()
                stream = (
                    [first]
                    if first is not None
                    else ((q, *self._dump(q, p, pending)) for q, p in statements)
                )
                # A generator's statements are sent as each is made, so the server runs one
                # while the next is made; a list's go out together (one write).
                streaming = not isinstance(statements, Sequence)
                for query, tx, dumped, name, prep in stream:
                    self._send(query, tx, dumped, name, prep)
                    sent.append((tx, prep))
                    if streaming:
                        pgconn.flush()
                pgconn.pipeline_sync()
                results = await self._pipeline_results()
                pgconn.exit_pipeline_mode()
            self._take_notifies()
            # The results of the preparations come first, each before its statement's: keep
            # the names of those that took; a failed one is the call's error.
            error: psycopg.Error | None = None
            statement_results: list[pq.abc.PGresult] = []
            position = 0
            for _tx, prep in sent:
                if prep is not None and position < len(results):
                    result = results[position]
                    position += 1
                    if result.status == pq.ExecStatus.COMMAND_OK:
                        self._prepared[prep[0]] = prep[1]
                    elif result.status == _FATAL and error is None:
                        error = psycopg.errors.error_from_result(result, encoding=self._encoding)
                if position < len(results):
                    statement_results.append(results[position])
                    position += 1
            out: list[Rows] = []
            for (tx, _prep), result in zip(sent, statement_results, strict=False):
                if result.status == _FATAL:
                    error = error or psycopg.errors.error_from_result(
                        result, encoding=self._encoding
                    )
                    continue
                if result.status not in _OK_STATUSES:
                    continue  # pipeline aborted after an error: that error is raised
                tx.set_pgresult(result)
                out.append(tx.load_rows(0, result.ntuples, tuple) if result.ntuples else [])
            if error is not None:
                raise error
            return out
        except psycopg.Error as exc:
            if pgconn.status != pq.ConnStatus.OK:
                # Lost. libpq may say so only indirectly ("connection not in pipeline mode":
                # a connection it dropped mid-pipeline has left pipeline mode): say it plainly,
                # with what libpq knows of why.
                why = " ".join(pgconn.get_error_message().split()) or str(exc)
                self._break()
                raise psycopg.OperationalError(
                    f"the connection to the server was lost: {why}"
                ) from exc
            if exc.sqlstate is None:
                self._break()  # an error of the protocol: the connection's state is unknown
            raise
        except BaseException:  # cancelled or timed out mid-call: the protocol state is lost
            self._break()
            raise
        finally:
            self._busy = False

    async def _pipeline_results(self) -> list[pq.abc.PGresult]:
        """Flush the pipeline and read one result per statement, up to the sync point."""
        pgconn = self.pgconn
        fileno = pgconn.socket
        while pgconn.flush() != 0:
            if await _ready(fileno, Wait.RW) == Ready.R:
                pgconn.consume_input()
        results: list[pq.abc.PGresult] = []
        while True:
            while pgconn.is_busy():
                await anyio.wait_readable(fileno)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                continue  # end of one statement's results
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)

    def _take_notifies(self) -> None:
        encoding = self._encoding
        while (notify := self.pgconn.notifies()) is not None:
            self.notifies.append((notify.relname.decode(encoding), notify.extra.decode(encoding)))

    async def wait_notify(self) -> None:
        """Wait until at least one notification has arrived (``notifies`` holds it)."""
        if self._busy:
            raise RuntimeError("a PgConnection runs one call at a time")
        self._busy = True
        try:
            while not self.notifies:
                await anyio.wait_readable(self.pgconn.socket)
                self.pgconn.consume_input()
                if self.pgconn.status != pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the connection was lost")
                self._take_notifies()
        except psycopg.OperationalError:
            self._break()
            raise
        except BaseException:
            # A wait that is cancelled sent nothing: the connection stays usable.
            if self.pgconn.status != pq.ConnStatus.OK:
                self._break()
            raise
        finally:
            self._busy = False

    def _break(self) -> None:
        if self.pgconn.status != pq.ConnStatus.BAD:
            self.pgconn.finish()


class PgPool:
    """Up to ``max_size`` connections, opened when needed and kept while healthy.

    A connection handed back broken (lost, or left mid-call by a cancellation) is dropped, and
    one handed back inside a transaction is rolled back first (or dropped if that fails).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        prepare: bool = True,
    ):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.conninfo = conninfo
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.prepare = prepare
        self._idle: list[PgConnection] = []
        self._slots = anyio.Semaphore(max_size)
        self._open: set[PgConnection] = set()
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        if self._closed:
            raise RuntimeError("the pool is closed")
        async with self._slots:
            conn = await self._take()
            try:
                yield conn
            finally:
                await self._give_back(conn)

    async def _take(self) -> PgConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.broken:
                return conn
            self._open.discard(conn)
        conn = await PgConnection.connect(
            self.conninfo, connect_timeout=self.connect_timeout, prepare=self.prepare
        )
        self._open.add(conn)
        return conn

    async def _give_back(self, conn: PgConnection) -> None:
        if not conn.broken and conn.in_transaction:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.connect_timeout):
                try:
                    await conn.execute(b"ROLLBACK")
                except psycopg.Error:
                    conn.close()
        if conn.broken or conn.in_transaction or self._closed:
            conn.close()
            self._open.discard(conn)
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close every connection (those in use close when handed back)."""
        self._closed = True
        for conn in self._idle:
            conn.close()
            self._open.discard(conn)
        self._idle.clear()

    @property
    def size(self) -> int:
        """Open connections, idle or in use."""
        return len(self._open)
