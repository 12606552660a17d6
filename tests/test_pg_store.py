"""PgStore beyond the contract suite: migrations, names, URLs, events across stores."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import psycopg
import pytest
from psycopg import sql

from conveyor import GroupLimits, Job, Queue, open_worker, store_from_url
from conveyor.store import (
    WAKE_EVENTS,
    FetchOptions,
    Group,
    JobOutcome,
    JobState,
    ManualClock,
    MetricKind,
    StoreError,
    StoreEvent,
)
from conveyor.testing import make_job
from conveyor_stores.postgres import PgStore
from conveyor_stores.postgres._schema import SCHEMA_VERSION
from conveyor_stores.postgres._store import _CLAIM_PLANNING

from .conftest import wake_up_run_wake_up

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
    options = f"schema=url_{anyio_backend}&listen=false&prepare=false"
    url = pg_dsn + ("&" if "?" in pg_dsn else "?") + options
    store = store_from_url(url, max_connections=1)
    assert isinstance(store, PgStore)
    assert store.schema == f"url_{anyio_backend}"
    async with store:
        await store.save_job(make_job(job_id="u"))
        assert await store.count_jobs("q", "waiting") == 1  # type: ignore[arg-type]
        [job] = await store.fetch_next_jobs("q", "w", 30, 1)
        assert await store.finish_jobs([JobOutcome.completed(job, None)]) == [True]
        async with store._pool.connection() as conn:  # (for a pooler: nothing left prepared)
            assert await conn.execute(b"SELECT count(*) FROM pg_prepared_statements") == [(0,)]
    assert isinstance(store_from_url(pg_dsn.replace("postgresql://", "postgres://")), PgStore)


async def test_an_unreachable_server_is_a_store_error(anyio_backend: str) -> None:
    store = PgStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=5)
    with pytest.raises(StoreError, match="cannot use PostgreSQL"):
        await store.connect()


async def _listen(
    store: PgStore, done: Callable[[list[StoreEvent]], bool]
) -> tuple[list[StoreEvent], anyio.Event]:
    """Subscribe to queue ``q`` of ``store`` once its ``LISTEN`` connection is up: the events
    seen, and an event set once ``done(seen)`` holds."""
    seen: list[StoreEvent] = []
    arrived = anyio.Event()

    def on_event(event: StoreEvent) -> None:
        seen.append(event)
        if done(seen):
            arrived.set()

    store.subscribe("q", on_event)
    assert store._listener is not None
    await anyio.to_thread.run_sync(store._listener.wait_ready, 10.0)
    return seen, arrived


async def test_other_stores_events_arrive_through_listen(pg_dsn: str, anyio_backend: str) -> None:
    async with (
        PgStore(pg_dsn, schema=f"events_{anyio_backend}") as listener,
        PgStore(pg_dsn, schema=f"events_{anyio_backend}") as producer,
    ):
        seen, arrived = await _listen(listener, lambda seen: seen[-1].type == "completed")
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


async def _run_one(producer: PgStore, job_id: str, arrived: anyio.Event, **opts: Any) -> None:
    """Add job ``job_id`` to queue ``q`` of ``producer``, claim it and complete it, then wait
    for ``arrived`` (another store's subscriber saw what it waits for)."""
    await producer.save_job(make_job(job_id=job_id, **opts))
    [job] = await producer.fetch_next_jobs("q", "w", 30, 1)
    await producer.finish_jobs([JobOutcome.completed(job, None)])
    with anyio.fail_after(10):
        await arrived.wait()


def _lifecycle(events: list[StoreEvent]) -> list[tuple[str, str | None]]:
    return [(event.type, event.job_id) for event in events]


async def test_a_process_of_workers_hears_only_wake_ups(pg_dsn: str, anyio_backend: str) -> None:
    """Claims and completions notify on a channel of their own: a store whose subscribers take
    only wake-ups (as a worker's does) does not listen to it, so it hears other processes' new
    jobs but not each of their claims and completions. A subscriber that wants every event
    has the store listen to both channels, and sees the events in order."""
    schema = f"wake_ups_{anyio_backend}"
    async with (
        PgStore(pg_dsn, schema=schema) as listener,
        PgStore(pg_dsn, schema=schema) as producer,
    ):
        woken: list[StoreEvent] = []
        second = anyio.Event()

        @attrs.define
        class WakeUps:
            event_types: frozenset[str] = WAKE_EVENTS

            def __call__(self, event: StoreEvent) -> None:
                woken.append(event)
                if event.job_id == "b":
                    second.set()

        listener.subscribe("q", WakeUps())
        assert listener._listener is not None
        await anyio.to_thread.run_sync(listener._listener.wait_ready, 10.0)
        await wake_up_run_wake_up(producer, "a", "b")
        with anyio.fail_after(10):
            await second.wait()
        assert [(e.type, e.job_id) for e in woken] == [("waiting", "a"), ("waiting", "b")]

        seen, arrived = await _listen(listener, lambda seen: seen[-1].type == "completed")
        await _run_one(producer, "c", arrived, priority=-1)
        assert _lifecycle(seen) == [("waiting", "c"), ("active", "c"), ("completed", "c")]


async def test_a_schema_name_of_63_bytes_has_its_events(pg_dsn: str, anyio_backend: str) -> None:
    """NOTIFY channel names are at most 63 bytes; the store's are, whatever its schema name."""
    schema = ("é" if anyio_backend == "asyncio" else "ü") * 31 + "x"
    async with PgStore(pg_dsn, schema=schema) as listener, PgStore(pg_dsn, schema=schema) as other:
        seen, arrived = await _listen(listener, lambda seen: seen[-1].type == "completed")
        await _run_one(other, "a", arrived)
        assert _lifecycle(seen) == [("waiting", "a"), ("active", "a"), ("completed", "a")]


async def test_claims_and_completions_side_by_side_run_each_job_once(
    pg_dsn: str, anyio_backend: str
) -> None:
    """Plain claims and simple completions run without the schema lock, beside the locked
    path (groups, progress writes, retries): three stores with three workers each, every job
    completed once, round robin and group limits still held."""
    schema = f"side_by_side_{anyio_backend}"
    plain, grouped, flaky = 300, 150, 30
    seen: list[str] = []
    active_per_group: dict[str, int] = {}
    overlaps: list[str] = []
    done = anyio.Event()

    async def process(job: Job) -> str:
        group = job.opts.group.id if job.opts.group is not None else None
        if group is not None:
            active_per_group[group] = active_per_group.get(group, 0) + 1
            if active_per_group[group] > 1:
                overlaps.append(group)
        try:
            if job.name == "progress":
                await job.update_progress(50)  # writes the row: its completion reads it afresh
            await anyio.lowlevel.checkpoint()
            if job.name == "flaky" and job.attempts_made == 0:
                raise RuntimeError("first attempt fails")
            return str(job.id)
        finally:
            if group is not None:
                active_per_group[group] -= 1

    def on_completed(event: StoreEvent) -> None:
        assert event.job_id is not None
        seen.append(event.job_id)
        if len(seen) >= plain + grouped + flaky:
            done.set()

    async with (
        PgStore(pg_dsn, schema=schema) as a,
        PgStore(pg_dsn, schema=schema) as b,
        PgStore(pg_dsn, schema=schema) as c,
    ):
        queue = Queue("q", store=a)
        async with contextlib.AsyncExitStack() as stack:
            for store in (a, b, c):
                worker = await stack.enter_async_context(
                    open_worker(
                        "q", process, store=store, concurrency=5, group=GroupLimits(concurrency=1)
                    )
                )
                worker.events.on("completed", on_completed)
            jobs: list[tuple[str, Any, Any]] = []
            await queue.add_bulk(
                jobs
                + [("plain" if i % 2 else "progress", {"i": i}, {}) for i in range(plain)]
                + [("grouped", {"i": i}, {"group": Group(id=f"g{i % 3}")}) for i in range(grouped)]
                + [("flaky", {"i": i}, {"attempts": 2}) for i in range(flaky)]
            )
            with anyio.fail_after(120):
                await done.wait()
        assert len(seen) == len(set(seen)) == plain + grouped + flaky
        assert overlaps == []  # one job per group at a time, across the three stores
        counts = await a.get_job_counts("q")
        assert counts[JobState.COMPLETED] == plain + grouped + flaky
        assert (await a.get_metrics("q", MetricKind.COMPLETED)).total == plain + grouped + flaky


async def test_a_completion_written_without_a_read_equals_the_general_one(
    pg_dsn: str, anyio_backend: str
) -> None:
    """The side-by-side completion patches the record as claimed; the general path reads the
    job and saves it. Both must store the same job (progress aside)."""
    data = {"f": 1e300, "tiny": 5e-324, "big": 2**70, "text": 'ü "q" \\ 0001-01-01T00:00:00'}
    async with PgStore(pg_dsn, schema=f"paths_{anyio_backend}") as store:
        await store.truncate_all()
        await store.save_bulk([make_job(job_id=job_id, data=data) for job_id in ("a", "b")])
        first = await store.fetch_next_jobs("q", "w", 30, 2)
        retried = [JobOutcome.retry(job, "once more") for job in first]
        assert await store.finish_jobs(retried) == [True, True]
        second = {job.id: job for job in await store.fetch_next_jobs("q", "w", 30, 2)}
        assert await store.update_job("q", "b", {"progress": 50})  # b's row written since
        outcomes = [JobOutcome.completed(second[job_id], {"r": [1.5, None]}) for job_id in "ab"]
        assert await store.finish_jobs(outcomes) == [True, True]
        a, b = await store.get_job("q", "a"), await store.get_job("q", "b")
        assert a is not None
        assert b is not None
        for job in (a, b):
            assert job.state is JobState.COMPLETED
            assert job.attempts_made == 2
            assert [log.outcome for log in job.attempt_logs] == ["retry", "completed"]
            assert job.attempt_logs[-1].finished_at == job.completed_at
            assert job.attempt_logs[-1].worker_id == "w"
            assert job.returnvalue == {"r": [1.5, None]}
            assert job.data == data
            assert job.lock_token is None
        assert attrs.evolve(b, id="a", progress=0, completed_at=a.completed_at) == attrs.evolve(
            a,
            attempt_logs=[*a.attempt_logs[:-1], b.attempt_logs[-1]],
            attempts_made=a.attempts_made,
        )


async def test_an_add_without_the_schema_lock_stores_what_the_general_one_does(
    pg_dsn: str, anyio_backend: str
) -> None:
    """Plain new jobs are added in one statement that appends the server's times to records
    made beforehand (``save_bulk``); a flow's are added the general way (``save_flow``). Both
    store the same job, and each call returns exactly what it stored."""
    data: dict[str, Any] = {
        "f": 1e300, "tiny": 5e-324, "big": 2**70, "text": 'ü "q" \\ }',
        "stamp": "0001-01-01T00:00:00+00:00", "nested": [{"a": None}, [], {}],
    }  # fmt: skip
    async with PgStore(pg_dsn, schema=f"adds_{anyio_backend}") as store:
        await store.truncate_all()
        plain = await store.save_bulk(
            [make_job(job_id="a", data=data), make_job(job_id="c", data=data, delay=30)]
        )
        general = await store.save_flow(
            [make_job(job_id="b", data=data), make_job(job_id="d", data=data, delay=30)]
        )
        for returned in (*plain, *general):
            stored = await store.get_job("q", returned.id)
            assert stored == returned
            assert stored.data == data
        a, c, b, d = (*plain, *general)
        assert (a.state, c.state) == (JobState.WAITING, JobState.DELAYED)
        for x, y in ((a, b), (c, d)):
            assert x.created_at is not None
            assert y.created_at is not None
            assert attrs.evolve(y, id=x.id, created_at=x.created_at,
                                delay_until=x.delay_until) == x  # fmt: skip
        assert c.delay_until is not None
        assert c.created_at is not None
        assert (c.delay_until - c.created_at).total_seconds() == 30
        assert [job.id for job in await store.fetch_next_jobs("q", "w", 30, 5)] == ["a", "b"]


async def test_ids_too_long_for_a_notify_payload_are_added_the_general_way(
    pg_dsn: str, anyio_backend: str
) -> None:
    """A job whose event would not fit in a NOTIFY payload (its id and queue escape to more
    than 8,000 bytes), here in a bulk add's second chunk, sends the add the general way before
    anything is sent: the jobs are added, and the store's connection goes on working."""
    queue = "q-" + "é" * 700
    long_id = "ü" * 1024
    async with PgStore(pg_dsn, schema=f"long_ids_{anyio_backend}", max_connections=1) as store:
        await store.truncate_all()
        short = [make_job(queue=queue, job_id=f"short-{i}") for i in range(300)]
        added = await store.save_bulk([*short, make_job(queue=queue, job_id=long_id)])
        assert [job.id for job in added] == [*(job.id for job in short), long_id]
        assert all(job.state is JobState.WAITING for job in added)
        again = await store.save_bulk([make_job(queue=queue, job_id="after")])
        assert again[0].created_at is not None
        assert (await store.get_job_counts(queue))[JobState.WAITING] == 302


async def test_a_bulk_add_reaches_other_stores_as_one_event_a_job(
    pg_dsn: str, anyio_backend: str
) -> None:
    """A bulk add's events are packed into several NOTIFY payloads; each job's arrives once,
    in order, with its state, and with the time the job was created at."""
    ids = [f"job-{i}-" + "ü" * (i % 50) for i in range(1_200)]
    async with (
        PgStore(pg_dsn, schema=f"bulk_events_{anyio_backend}") as listener,
        PgStore(pg_dsn, schema=f"bulk_events_{anyio_backend}") as producer,
    ):
        seen, arrived = await _listen(listener, lambda seen: len(seen) == len(ids))
        added = await producer.save_bulk(
            [make_job(job_id=job_id, delay=60 if i % 3 == 0 else 0) for i, job_id in enumerate(ids)]
        )
        with anyio.fail_after(10):
            await arrived.wait()
        assert [(e.type, e.job_id) for e in seen] == [
            ("delayed" if i % 3 == 0 else "waiting", job_id) for i, job_id in enumerate(ids)
        ]
        assert {e.timestamp for e in seen} == {added[0].created_at}
        assert all(e.data == {"prev": None} for e in seen)


async def _claim_plan(
    pg_dsn: str, store: PgStore, monkeypatch: pytest.MonkeyPatch, count: int
) -> tuple[str, list[str]]:
    """``EXPLAIN ANALYZE`` of the claim ``store.fetch_next_jobs("q", ...)`` sends, run again
    in a transaction rolled back, once the claim itself has claimed ``count`` jobs; and the
    names of those jobs."""
    from conveyor_stores.postgres._wire import PgConnection

    sent: list[list[tuple[bytes, Any]]] = []
    pipeline = PgConnection.pipeline

    async def spy(self: PgConnection, statements: Any) -> Any:
        sent.append(list(statements))
        return await pipeline(self, sent[-1])

    monkeypatch.setattr(PgConnection, "pipeline", spy)
    claimed = await store.fetch_next_jobs("q", "w", 30, count)
    monkeypatch.undo()
    assert len(claimed) == count
    [(gate, claim)] = [s for s in sent if len(s) == 2 and b"FOR UPDATE" in s[1][0]]
    wire = await PgConnection.connect(pg_dsn, prepare=False)
    try:
        _begin, _gate, plan, _rollback = await wire.pipeline(
            [(b"BEGIN", ()), gate, (b"EXPLAIN ANALYZE " + claim[0], claim[1]), (b"ROLLBACK", ())]
        )
    finally:
        wire.close()
    return "\n".join(row[0] for row in plan), [job.name for job in claimed]


def _most_rows_read(plan: str) -> int:
    """The most rows any node of an ``EXPLAIN ANALYZE`` returned or filtered out."""
    counts = re.findall(r"actual time=[\d.]+\.\.[\d.]+ rows=(\d+)", plan)
    counts += re.findall(r"Rows Removed by Filter: (\d+)", plan)
    return max(int(count) for count in counts)


async def test_a_claim_reads_the_claim_index_whatever_the_statistics_say(
    pg_dsn: str, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statistics taken while a queue was paused (the paused check then looks like it leaves
    no job) once had every claim read and sort all the waiting jobs: its plan must walk the
    claim index in claim order and stop at the limit, whatever ANALYZE saw."""
    schema = f"planning_{anyio_backend}"
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.truncate_all()
        queue = Queue("q", store=store)
        await queue.pause()
        await queue.add_bulk([("n", i, {}) for i in range(2000)])
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for table in ("conveyor_jobs", "conveyor_paused", "conveyor_lanes"):
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, table)))
        await queue.resume()
        plan, _names = await _claim_plan(pg_dsn, store, monkeypatch, 5)
        assert "Index Scan using conveyor_jobs_claim on" in plan, plan
        assert "Seq Scan on conveyor_jobs" not in plan, plan
        assert _most_rows_read(plan) < 20, plan  # (not the 2,000 waiting jobs)


async def test_a_claim_does_not_walk_past_the_jobs_of_paused_names(
    pg_dsn: str, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a job name paused, a claim once walked the claim index past every waiting job of
    that name ahead of the others, at every claim. It now seeks each waiting name once and
    reads the first jobs of the names that are not paused."""
    schema = f"paused_names_{anyio_backend}"
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.truncate_all()
        queue = Queue("q", store=store)
        await queue.add_bulk([("paused", i, {}) for i in range(2000)])
        await queue.add_bulk([(name, i, {}) for i in range(10) for name in ("b", "c")])
        await queue.add("urgent", priority=-1)
        await queue.pause("paused")
        plan, names = await _claim_plan(pg_dsn, store, monkeypatch, 5)
        assert _most_rows_read(plan) < 100, plan  # (not the 2,000 jobs of the paused name)
        assert names == ["urgent", "b", "c", "b", "c"]  # (claim order, across names)
        claimed = await store.fetch_next_jobs("q", "w", 30, 30)
        assert [job.name for job in claimed] == ["b", "c"] * 8
        await queue.resume("paused")
        [job] = await store.fetch_next_jobs("q", "w", 30, 1)
        assert job.name == "paused"


@pytest.mark.parametrize("lifo", [False, True])
async def test_a_locked_claim_does_not_walk_past_the_jobs_of_paused_names(
    pg_dsn: str, anyio_backend: str, monkeypatch: pytest.MonkeyPatch, lifo: bool
) -> None:
    """The claim that takes the schema lock (jobs of groups waiting, limits, LIFO) reads a
    lane's candidates the same way while names are paused: each waiting name once."""
    from conveyor_stores.postgres._wire import PgConnection

    schema = f"paused_locked_{anyio_backend}_{lifo}"
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.truncate_all()
        queue = Queue("q", store=store)
        await queue.add_bulk([("paused", i, {}) for i in range(2000)])
        await queue.add_bulk([("b", i, {}) for i in range(3)])
        await queue.add("b", group=Group("g"))
        await queue.pause("paused")
        sent: list[tuple[bytes, Any]] = []
        pipeline = PgConnection.pipeline

        async def spy(self: PgConnection, statements: Any) -> Any:
            statements = list(statements)
            sent.extend(statements)
            return await pipeline(self, statements)

        monkeypatch.setattr(PgConnection, "pipeline", spy)
        claimed = await store.fetch_next_jobs("q", "w", 30, 4, FetchOptions(lifo=lifo))
        monkeypatch.undo()
        assert [job.name for job in claimed] == ["b"] * 4
        # (the side-by-side claim, which found jobs of a group waiting, begins WITH clock)
        lanes = [
            s
            for s in sent
            if (b"SKIP LOCKED" in s[0] or b"min(priority)" in s[0])
            and not s[0].startswith(b"WITH clock")
        ]
        assert lanes  # (the candidates of each lane: the group's, the group-less one)
        wire = await PgConnection.connect(pg_dsn, prepare=False)
        try:
            for query, params in lanes:
                *_, plan, _rollback = await wire.pipeline(
                    [(b"BEGIN", ()), (store._sql(f"SELECT 1 FROM {_CLAIM_PLANNING}"), ()),
                     (b"EXPLAIN ANALYZE " + query, params), (b"ROLLBACK", ())]
                )  # fmt: skip
                text = "\n".join(row[0] for row in plan)
                assert _most_rows_read(text) < 100, text  # (not the paused name's 2,000 jobs)
        finally:
            wire.close()


async def test_totals_and_metrics_move_to_shard_rows_whole(pg_dsn: str, anyio_backend: str) -> None:
    """Schema version 4 spreads a queue's totals and metrics over rows per shard (completions
    of many processes no longer wait on one row): what a version 3 schema held in the queue
    row and in one metrics row per minute reads the same after the migration, and completions
    from two stores (two connections, two shards or one) add up."""
    schema = f"shards_{anyio_backend}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    async with PgStore(pg_dsn, schema=schema) as store:
        await store.save_bulk([make_job(job_id=f"j{i}") for i in range(4)])
    minute = 29_000_000

    def table(name: str) -> sql.Composable:
        return sql.Identifier(schema, f"conveyor_{name}")

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # back to version 3, with totals
        conn.execute(sql.SQL("DROP TABLE {}").format(table("totals")))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT conveyor_metrics_pkey").format(
            table("metrics")))  # fmt: skip
        conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN shard").format(table("metrics")))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (queue, kind, minute)").format(
            table("metrics")))  # fmt: skip
        conn.execute(sql.SQL("DROP TABLE {}").format(table("listeners")))  # (version 5)
        conn.execute(sql.SQL("DELETE FROM {} WHERE version >= 4").format(table("migrations")))
        conn.execute(
            sql.SQL("UPDATE {} SET completed = 5, failed = 2 WHERE name = 'q'").format(
                table("queues")
            )
        )
        conn.execute(
            sql.SQL("INSERT INTO {} VALUES ('q', 'completed', %s, 5)").format(table("metrics")),
            (minute,),
        )
    clock = ManualClock(minute * 60 + 30)
    async with (
        PgStore(pg_dsn, schema=schema, clock=clock) as a,
        PgStore(pg_dsn, schema=schema, clock=clock) as b,
    ):
        assert _migrations(pg_dsn, schema)[-1] == (SCHEMA_VERSION,)
        completed = await a.get_metrics("q", MetricKind.COMPLETED)
        assert (completed.total, [m.count for m in completed.buckets]) == (5, [5])
        assert (await a.get_metrics("q", MetricKind.FAILED)).total == 2
        for store, n in ((a, 3), (b, 1)):
            jobs = await store.fetch_next_jobs("q", "w", 30, n)
            assert await store.finish_jobs([JobOutcome.completed(j) for j in jobs]) == [True] * n
        completed = await b.get_metrics("q", MetricKind.COMPLETED)
        assert (completed.total, [m.count for m in completed.buckets]) == (9, [9])
        await a.obliterate("q", force=True)
        assert (await b.get_metrics("q", MetricKind.COMPLETED)).total == 0


def _event_notifications(conn: psycopg.Connection[Any], channel: str) -> list[str]:
    """The payloads ``conn`` (listening on ``channel``) received before a marker sent now: a
    notification is delivered in commit order, so the marker comes after every notification
    of a transaction that committed before it was sent."""
    with psycopg.connect(conn.info.dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, 'marker')", (channel,))
    payloads: list[str] = []
    for notify in conn.notifies(timeout=10):
        if notify.payload == "marker":
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"no marker within 10 s; got {payloads}")


async def test_claims_and_completions_send_events_only_while_a_process_takes_them(
    pg_dsn: str, anyio_backend: str
) -> None:
    """A claim or a completion sends its events (``active``, ``completed``) only while some
    process listens to every event: a database whose processes only run workers is spared a
    ``NOTIFY`` (a database-wide lock at commit) per claim and per completion. The listening
    connection says so in ``conveyor_listeners`` while it listens, and only there."""
    schema = f"listeners_{anyio_backend}"
    async with PgStore(pg_dsn, schema=schema) as worker, PgStore(pg_dsn, schema=schema) as app:
        channel = worker._event_channel
        registry = sql.Identifier(schema, "conveyor_listeners")
        with psycopg.connect(pg_dsn, autocommit=True) as tap:  # hears, but never registers
            tap.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

            async def run(job_id: str) -> list[str]:
                await worker.save_job(make_job(job_id=job_id))
                [job] = await worker.fetch_next_jobs("q", "w", 30, 1)
                assert await worker.finish_jobs([JobOutcome.completed(job)]) == [True]
                return await anyio.to_thread.run_sync(_event_notifications, tap, channel)

            assert await run("a") == []

            seen, arrived = await _listen(app, lambda seen: seen[-1].type == "completed")
            assert len(tap.execute(sql.SQL("SELECT pid FROM {}").format(registry)).fetchall()) == 1
            sent = await run("b")
            told = [item[1:3] for payload in sent for item in json.loads(payload)["e"]]
            assert told == [["active", "b"], ["completed", "b"]]
            with anyio.fail_after(10):
                await arrived.wait()
            assert _lifecycle(seen) == [("waiting", "b"), ("active", "b"), ("completed", "b")]

            await app.disconnect()
            assert tap.execute(sql.SQL("SELECT pid FROM {}").format(registry)).fetchall() == []
            assert await run("c") == []

            # A row whose server process is gone (its process died) only costs events nobody
            # reads, until the next process that listens to every event clears it.
            tap.execute(sql.SQL("INSERT INTO {} (pid) VALUES (-1)").format(registry))
            assert len(await run("d")) == 2
            async with PgStore(pg_dsn, schema=schema) as other:
                await _listen(other, lambda seen: False)
                rows = tap.execute(sql.SQL("SELECT pid FROM {}").format(registry)).fetchall()
                assert len(rows) == 1
                assert rows != [(-1,)]
            assert await run("e") == []


async def test_a_listener_waits_for_the_claims_that_left_their_events_out(
    pg_dsn: str, anyio_backend: str
) -> None:
    """A claim or a completion that found no listener holds the listeners' barrier lock,
    shared, until it commits. A process that starts listening to every event registers, then
    takes that lock: it is ready (its subscribers see every later event) only once each such
    transaction has committed, so none of those can send nothing after it is ready."""
    schema = f"barrier_{anyio_backend}"
    async with PgStore(pg_dsn, schema=schema) as app:
        with psycopg.connect(pg_dsn) as claim:  # a claim that left its events out, uncommitted
            [(quiet,)] = claim.execute(
                "SELECT pg_try_advisory_xact_lock_shared(hashtextextended(%s, 0))",
                (app._listeners_key,),
            ).fetchall()
            assert quiet
            app.subscribe("q", lambda event: None)
            assert app._listener is not None
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            with anyio.fail_after(10):  # (the server has no event for "a lock is waited for")
                while claim.execute(waiting).fetchall() != [(1,)]:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert not app._listener.ready
            claim.commit()
        await anyio.to_thread.run_sync(app._listener.wait_ready, 10.0)
        assert app._listener.ready
