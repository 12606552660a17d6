"""The PostgreSQL connection layer (conveyor_stores.postgres._wire), under asyncio and trio."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import psycopg
import psycopg.types.json
import pytest
from psycopg.types.json import Jsonb

from conveyor_stores.postgres._wire import PgConnection, PgPool

pytestmark = pytest.mark.anyio


async def test_parameters_and_results_round_trip(pg_dsn: str, anyio_backend: str) -> None:
    conn = await PgConnection.connect(pg_dsn)
    try:
        when = datetime(2026, 11, 24, 12, 30, tzinfo=UTC)
        name = "it's; DROP TABLE x; -- ünïcødé " + "z" * 200
        rows = await conn.execute(
            b"SELECT $1::bigint + 1, $2::text, $3::jsonb, $4::float8, $5::boolean,"
            b" $6::timestamptz, $7::text IS NULL, $8::text[]",
            (41, name, Jsonb({"a": [1, None, "x"]}), 1.5, True, when, None, ["a", "b'c"]),
        )
        assert rows == [(42, name, {"a": [1, None, "x"]}, 1.5, True, when, True, ["a", "b'c"])]
        assert await conn.execute(b"CREATE TEMP TABLE t (x int)") == []
        assert await conn.execute(b"SELECT x FROM t") == []
    finally:
        conn.close()


async def test_json_values_read_as_json_loads_reads_them(pg_dsn: str, anyio_backend: str) -> None:
    """``json`` keeps its text as written: values with space around them, inside them, or
    numbers ``jsonb`` would change all read as ``json.loads`` reads their text; and psycopg's
    global loaders, which an application may change, are not the connection's."""
    texts = [
        '{"a":[1,2.5,"x"],"b":null}',
        '  {"spaced" : [ 1 , 2 ] }  ',
        '{"big":1e300,"tiny":5e-324,"int":123456789012345678901234567890}',
        '"ünïcødé \\u00e9 \\"quoted\\""',
        "[]",
        "7",
    ]
    psycopg.types.json.set_json_loads(lambda _text: "changed globally")
    conn = await PgConnection.connect(pg_dsn)
    try:
        rows = await conn.execute(
            b"SELECT t::json FROM unnest($1::text[]) WITH ORDINALITY AS v(t, n) ORDER BY n",
            (texts,),
        )
        assert [row[0] for row in rows] == [json.loads(text) for text in texts]
        with pytest.raises(psycopg.DataError):
            await conn.execute(b"SELECT 'nope'::json")
    finally:
        psycopg.types.json.set_json_loads(json.loads)
        conn.close()


async def test_a_refused_statement_raises_and_leaves_the_connection_usable(
    pg_dsn: str, anyio_backend: str
) -> None:
    conn = await PgConnection.connect(pg_dsn)
    try:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            await conn.execute(b"SELECT nope")
        assert not conn.broken
        assert await conn.execute(b"SELECT 1") == [(1,)]
    finally:
        conn.close()


async def test_a_pipeline_is_one_transaction(pg_dsn: str, anyio_backend: str) -> None:
    conn = await PgConnection.connect(pg_dsn)
    try:
        await conn.execute(b"CREATE TEMP TABLE t (x int PRIMARY KEY)")
        results = await conn.pipeline(
            [
                (b"INSERT INTO t VALUES ($1)", (1,)),
                (b"INSERT INTO t VALUES ($1) RETURNING x * 10", (2,)),
                (b"SELECT count(*) FROM t", ()),
            ]
        )
        assert results == [[], [(20,)], [(2,)]]
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.pipeline(
                [
                    (b"INSERT INTO t VALUES ($1)", (3,)),
                    (b"INSERT INTO t VALUES ($1)", (1,)),  # refused: the pipeline rolls back
                    (b"INSERT INTO t VALUES ($1)", (4,)),
                ]
            )
        assert not conn.broken
        assert await conn.execute(b"SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    finally:
        conn.close()


async def test_a_cancelled_call_breaks_the_connection_and_the_server_rolls_back(
    pg_dsn: str, anyio_backend: str
) -> None:
    async with await_pool(pg_dsn) as pool:
        async with pool.connection() as conn:
            await conn.execute(b"CREATE TABLE IF NOT EXISTS wire_cancel (x int)")
            await conn.execute(b"TRUNCATE wire_cancel")
        with anyio.move_on_after(0.2) as scope:
            async with pool.connection() as conn:
                await conn.pipeline(
                    [
                        (b"BEGIN", ()),
                        (b"INSERT INTO wire_cancel VALUES (1)", ()),
                        (b"SELECT pg_sleep(2)", ()),
                    ]  # (a COMMIT sent in the same pipeline would run anyway: it was sent)
                )
        assert scope.cancelled_caught
        assert conn.broken
        assert pool.size == 0  # dropped
        async with pool.connection() as fresh:
            assert fresh is not conn
            with anyio.fail_after(30):  # the server notices the closed socket and rolls back
                while True:  # the server's own state: no event to wait on
                    sleeping = await fresh.execute(
                        b"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%'"
                        b" AND pid <> pg_backend_pid()"
                    )
                    if sleeping == [(0,)]:
                        break
                    await anyio.sleep(0.05)
            assert await fresh.execute(b"SELECT count(*) FROM wire_cancel") == [(0,)]


@pytest.mark.parametrize("shape", ["one statement", "a pipeline", "a streamed pipeline"])
async def test_a_lost_connection_raises_and_the_pool_replaces_it(
    pg_dsn: str, anyio_backend: str, shape: str
) -> None:
    """A call on a connection whose server process is gone says the connection was lost,
    with libpq's reason, whatever the call's shape (libpq reports a pipeline's loss as
    "connection not in pipeline mode")."""
    statements = [(b"SELECT 1", ()), (b"SELECT 2", ())]
    calls = {
        "one statement": lambda conn: conn.execute(b"SELECT 1"),
        "a pipeline": lambda conn: conn.pipeline(statements),
        "a streamed pipeline": lambda conn: conn.pipeline(iter(statements)),
    }
    async with await_pool(pg_dsn) as pool:
        async with pool.connection() as conn:
            [(pid,)] = await conn.execute(b"SELECT pg_backend_pid()")
        other = await PgConnection.connect(pg_dsn)
        try:
            await other.execute(b"SELECT pg_terminate_backend($1)", (pid,))
        finally:
            other.close()
        async with pool.connection() as same:
            assert same is conn
            with (
                pytest.raises(psycopg.OperationalError, match="connection to the server was lost"),
                anyio.fail_after(10),
            ):
                await calls[shape](same)
        assert conn.broken
        async with pool.connection() as fresh:
            assert await fresh.execute(b"SELECT 1") == [(1,)]
        assert pool.size == 1


async def test_notifications_arrive(pg_dsn: str, anyio_backend: str) -> None:
    listener = await PgConnection.connect(pg_dsn)
    sender = await PgConnection.connect(pg_dsn)
    try:
        await listener.execute(b'LISTEN "wire test"')
        await sender.execute(b"SELECT pg_notify($1, $2)", ("wire test", "héllo"))
        with anyio.fail_after(10):
            await listener.wait_notify()
        assert listener.notifies.popleft() == ("wire test", "héllo")
        # a wait that is cancelled leaves the connection usable
        with anyio.move_on_after(0.05):
            await listener.wait_notify()
        assert not listener.broken
        assert await listener.execute(b"SELECT 2") == [(2,)]
    finally:
        listener.close()
        sender.close()


async def test_the_pool_never_opens_more_than_its_size(pg_dsn: str, anyio_backend: str) -> None:
    async with await_pool(pg_dsn, max_size=2) as pool:
        seen: list[int] = []

        async def use() -> None:
            async with pool.connection() as conn:
                seen.append(pool.size)
                await conn.execute(b"SELECT pg_sleep(0.01)")

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(use)
        assert max(seen) <= 2
        assert pool.size == 2
        async with pool.connection() as conn:  # a transaction left open is rolled back
            await conn.execute(b"BEGIN")
        assert not conn.in_transaction
        assert pool.size == 2


class await_pool:
    def __init__(self, dsn: str, max_size: int = 4) -> None:
        self.pool = PgPool(dsn, max_size=max_size)

    async def __aenter__(self) -> PgPool:
        return self.pool

    async def __aexit__(self, *exc: object) -> None:
        self.pool.close()


async def test_statements_are_prepared_once_per_set_of_parameter_types(
    pg_dsn: str, anyio_backend: str
) -> None:
    conn = await PgConnection.connect(pg_dsn)
    try:
        query = b"SELECT $1::bigint * 2"
        # A Python int goes as int2, int4 or int8 by its size: one preparation per type.
        for value in (1, 70_000, 2**40, 3, 2**40 + 1):
            assert await conn.execute(query, (value,)) == [(value * 2,)]
        prepared = b"SELECT count(*) FROM pg_prepared_statements WHERE statement = $1"
        assert await conn.execute(prepared, (query.decode(),)) == [(3,)]
        # One that fails to prepare raises, is not remembered, and leaves the connection usable.
        for _attempt in range(2):
            with pytest.raises(psycopg.errors.UndefinedColumn):
                await conn.pipeline([(b"SELECT 1", ()), (b"SELECT nope WHERE $1", (True,))])
        assert not conn.broken
        assert await conn.pipeline([(query, (5,)), (b"SELECT 2", ())]) == [[(10,)], [(2,)]]
        # The same statement twice in one pipeline is prepared once.
        assert await conn.pipeline([(b"SELECT $1::int", (7,)), (b"SELECT $1::int", (8,))]) == [
            [(7,)],
            [(8,)],
        ]
    finally:
        conn.close()
