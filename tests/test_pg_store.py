"""PgStore beyond the contract suite: migrations, names, URLs, events across stores."""

from __future__ import annotations

import subprocess
import sys

import anyio
import psycopg
import pytest
from psycopg import sql

from conveyor import store_from_url
from conveyor.store import JobOutcome, StoreError, StoreEvent
from conveyor.testing import make_job
from conveyor_stores.postgres import PgStore
from conveyor_stores.postgres._schema import SCHEMA_VERSION

pytestmark = pytest.mark.anyio

_CONNECT = """
import sys, anyio
from conveyor_stores.postgres import PgStore
async def main():
    async with PgStore(sys.argv[1], schema=sys.argv[2]):
        pass
anyio.run(main)
"""


def _migrations(dsn: str, schema: str) -> list[tuple[int]]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT version FROM {} ORDER BY version").format(
            sql.Identifier(schema, "conveyor_migrations")
        )
        return [(int(row[0]),) for row in conn.execute(query)]


def test_twenty_processes_connecting_at_once_migrate_once(pg_dsn: str) -> None:
    schema = "racing"
    processes = [
        subprocess.Popen([sys.executable, "-c", _CONNECT, pg_dsn, schema], stderr=subprocess.PIPE)
        for _ in range(20)
    ]
    failures = []
    for process in processes:
        _out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(err.decode())
    assert failures == []
    assert _migrations(pg_dsn, schema) == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_a_schema_name_is_only_a_name(pg_dsn: str, anyio_backend: str) -> None:
    schema = f'my "jobs"; DROP TABLE x; -- ü {anyio_backend}'
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.save_job(make_job(job_id="a"))
        assert (await store.get_job("q", "a")) is not None
    assert _migrations(pg_dsn, schema) == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_newer_foreign_and_unmigrated_schemas_are_refused(
    pg_dsn: str, anyio_backend: str
) -> None:
    future, foreign = f"future_{anyio_backend}", f"foreign_{anyio_backend}"
    async with PgStore(pg_dsn, schema=future):
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (version, name) VALUES (%s, 'future')").format(
                sql.Identifier(future, "conveyor_migrations")
            ),
            (SCHEMA_VERSION + 1,),
        )
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(foreign)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(foreign, "conveyor_jobs"))
        )
    with pytest.raises(StoreError, match=rf"version {SCHEMA_VERSION + 1}, newer"):
        await PgStore(pg_dsn, schema=future).connect()
    with pytest.raises(StoreError, match="did not make"):
        await PgStore(pg_dsn, schema=foreign).connect()
    with pytest.raises(StoreError, match="needs migrating"):
        await PgStore(pg_dsn, schema="never_migrated", auto_migrate=False).connect()


async def test_urls_take_conveyor_options_out(pg_dsn: str, anyio_backend: str) -> None:
    url = pg_dsn + ("&" if "?" in pg_dsn else "?") + f"schema=url_{anyio_backend}&listen=false"
    store = store_from_url(url, max_connections=3)
    assert isinstance(store, PgStore)
    assert store.schema == f"url_{anyio_backend}"
    async with store:
        await store.save_job(make_job(job_id="u"))
        assert await store.count_jobs("q", "waiting") == 1  # type: ignore[arg-type]
    assert isinstance(store_from_url(pg_dsn.replace("postgresql://", "postgres://")), PgStore)


async def test_an_unreachable_server_is_a_store_error(anyio_backend: str) -> None:
    store = PgStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=5)
    with pytest.raises(StoreError, match="cannot use PostgreSQL"):
        await store.connect()


async def test_other_stores_events_arrive_through_listen(pg_dsn: str, anyio_backend: str) -> None:
    async with (
        PgStore(pg_dsn, schema=f"events_{anyio_backend}") as listener,
        PgStore(pg_dsn, schema=f"events_{anyio_backend}") as producer,
    ):
        seen: list[StoreEvent] = []
        arrived = anyio.Event()

        def on_event(event: StoreEvent) -> None:
            seen.append(event)
            if event.type == "completed":
                arrived.set()

        listener.subscribe("q", on_event)
        assert listener._listener is not None
        await anyio.to_thread.run_sync(listener._listener.wait_ready, 10.0)
        await producer.save_job(make_job(job_id="a", data={"big": "x" * 20_000}))
        [job] = await producer.fetch_next_jobs("q", "w", 30, 1)
        await producer.finish_jobs([JobOutcome.completed(job, "y" * 20_000)])
        with anyio.fail_after(10):
            await arrived.wait()
        assert [(e.type, e.job_id) for e in seen] == [
            ("waiting", "a"),
            ("active", "a"),
            ("completed", "a"),
        ]
        # NOTIFY payloads stay under 8,000 bytes: an event too big to fit comes without its data
        assert seen[-1].data == {"truncated": True}
