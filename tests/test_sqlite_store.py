"""SqliteStore beyond the contract suite: files, URLs, migrations, lock contention, and rules
that must hold between two stores (two connections, as two processes have) on one file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from conveyor import store_from_url
from conveyor.store import (
    WAKE_EVENTS,
    FetchOptions,
    Group,
    InvalidArgumentError,
    JobOutcome,
    JobState,
    ManualClock,
    StoreError,
    StoreEvent,
)
from conveyor.testing import make_job
from conveyor.testing._harness import claim, claim_ids
from conveyor_stores.sqlite import SqliteStore, _schema, _store
from conveyor_stores.sqlite._schema import SCHEMA_VERSION

from .conftest import START, wake_up_run_wake_up

pytestmark = pytest.mark.anyio


async def vm_steps(store: SqliteStore, work: Callable[[], Awaitable[None]]) -> int:
    """How many steps SQLite's virtual machine takes for ``work`` on the store's connection: a
    measure of a query's work that no clock or other load on the machine changes."""
    count = 0

    def step() -> int:
        nonlocal count
        count += 1
        return 0  # (go on)

    assert store._conn is not None
    store._conn.set_progress_handler(step, 1)
    try:
        await work()
    finally:
        store._conn.set_progress_handler(None, 1)
    return count


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- files and schema ------------------------------------------------------------------------------


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="not an SQLite database"):
        await SqliteStore(path).connect()
    assert snapshot(tmp_path) == before


async def test_another_applications_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"not a conveyor one \(it has tables users"):
        await SqliteStore(path).connect()
    assert snapshot(tmp_path) == before


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteStore(path) as store:
        await store.save_job(make_job())
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO conveyor_migrations (version, name, applied_at) VALUES (?, 'future', 0)",
        (SCHEMA_VERSION + 1,),
    )
    conn.commit()
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer"):
        await SqliteStore(path).connect()
    assert snapshot(tmp_path) == before


async def test_an_older_schema_is_migrated_in_place_keeping_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    # A file written by a conveyor that knew only the first migration (one event row per event).
    monkeypatch.setattr(_schema, "MIGRATIONS", _schema.MIGRATIONS[:1])
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", 1)
    flush = _store._Tx.flush

    def flush_without_events(tx: _store._Tx) -> None:  # today's event rows would not fit
        tx.rows.clear()
        flush(tx)

    monkeypatch.setattr(_store._Tx, "flush", flush_without_events)
    async with SqliteStore(path) as old:
        await old.save_bulk([make_job(job_id=f"j{i}") for i in range(3)])
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO conveyor_events (origin, queue, type, job_id, at, written, data) "
        "VALUES ('old', 'q', 'waiting', 'j0', 1.0, 1.0, NULL)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="needs migrating"):
        await SqliteStore(path, auto_migrate=False).connect()
    async with SqliteStore(path) as store:
        assert await store.count_jobs("q", JobState.WAITING) == 3
        [job] = await store.fetch_next_jobs("q", "w", 30, 1)
        assert await store.finish_jobs([JobOutcome.completed(job, 1)]) == [True]
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT version FROM conveyor_migrations ORDER BY version").fetchall()
    conn.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_missing_folder_and_refused_migration(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SqliteStore(tmp_path / "nowhere" / "jobs.db").connect()
    with pytest.raises(StoreError, match="needs migrating"):
        await SqliteStore(tmp_path / "new.db", auto_migrate=False).connect()


async def test_many_stores_connecting_at_once_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    errors: list[BaseException] = []

    def connect_one() -> None:
        async def run() -> None:
            async with SqliteStore(path):
                pass

        try:
            anyio.run(run)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=connect_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT version FROM conveyor_migrations").fetchall()
    conn.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


async def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = store_from_url("sqlite:///data/jobs.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == "data/jobs.db"
    absolute = store_from_url(f"sqlite:///{tmp_path}/jobs.db?lock_wait=5&synchronous=full")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == f"{tmp_path}/jobs.db"
    memory = store_from_url("sqlite://:memory:")
    assert isinstance(memory, SqliteStore)
    assert memory.path == ":memory:"
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        store_from_url("sqlite:///jobs.db?timeout=3")
    with pytest.raises(InvalidArgumentError, match="names a host"):
        store_from_url("sqlite://host/jobs.db")
    with pytest.raises(InvalidArgumentError) as info:
        SqliteStore("jobs.db", synchronous="sometimes")
    assert info.value.argument == "synchronous"


async def test_in_memory_database(anyio_backend: str) -> None:
    async with store_from_url("sqlite://:memory:") as store:
        await store.save_job(make_job(job_id="a"))
        assert await claim_ids(store) == ["a"]


# -- contention ------------------------------------------------------------------------------------


async def test_a_held_write_lock_is_waited_out_not_reported(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteStore(path) as store, SqliteStore(path, lock_wait=0.2) as impatient:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # held until the COMMIT below
        with pytest.raises(StoreError, match="lock_wait"):
            await impatient.save_job(make_job(job_id="x"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.save_job, make_job(job_id="a"))  # waits for the COMMIT
            await anyio.sleep(0.2)  # lets it meet the lock (it succeeds either way)
            blocker.execute("COMMIT")
        blocker.close()
        assert await claim_ids(store) == ["a"]


# -- rules across connections ----------------------------------------------------------------------


async def two_stores(path: Path) -> tuple[SqliteStore, SqliteStore, ManualClock]:
    clock = ManualClock(START)
    return SqliteStore(path, clock=clock), SqliteStore(path, clock=clock), clock


async def test_rules_hold_across_connections(tmp_path: Path, anyio_backend: str) -> None:
    a, b, _clock = await two_stores(tmp_path / "jobs.db")
    async with a, b:
        # dedup: the second store sees the first one's key
        first = await a.save_job(make_job(job_id="1", dedup_key="k"))
        assert (await b.save_job(make_job(job_id="2", dedup_key="k"))).id == first.id
        # global concurrency counts the other store's active jobs
        await a.save_bulk([make_job(job_id=f"g{i}") for i in range(4)])
        assert len(await claim_ids(a, limit=2, max_global_concurrency=3)) == 2
        assert len(await claim_ids(b, limit=5, max_global_concurrency=3)) == 1
        # pause in one store stops claims in the other
        await a.pause_job_name("q", "job")
        assert await claim_ids(b, limit=5) == []
        await a.resume_job_name("q", "job")
        # group concurrency and round robin across stores
        jobs = [make_job(job_id=f"{g}{i}", group=Group(g)) for g in "xy" for i in range(3)]
        await b.save_bulk(jobs)
        got_a = await a.fetch_next_jobs("q", "wa", 30, 10, FetchOptions(group_concurrency=1))
        got_b = await b.fetch_next_jobs("q", "wb", 30, 10, FetchOptions(group_concurrency=1))
        assert {job.group_id for job in got_a if job.group_id} == {"x", "y"}
        assert [job.group_id for job in got_b if job.group_id] == []
        assert await b.get_group_active_count("q", "x") == 1


async def test_subscribers_see_other_connections_events(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "jobs.db"
    async with SqliteStore(path) as producer, SqliteStore(path) as listener:
        seen: list[StoreEvent] = []
        arrived = anyio.Event()

        def on_event(event: StoreEvent) -> None:
            seen.append(event)
            if event.type == JobState.COMPLETED.value:
                arrived.set()

        listener.subscribe("q", on_event)
        await producer.save_job(make_job(job_id="a"))
        [job] = await producer.fetch_next_jobs("q", "w", 30, 1)
        await producer.finish_jobs([JobOutcome.completed(job, 42)])
        with anyio.fail_after(10):
            await arrived.wait()
        assert [(e.type, e.job_id) for e in seen] == [
            ("waiting", "a"),
            ("active", "a"),
            ("completed", "a"),
        ]
        assert seen[-1].data["returnvalue"] == 42


async def test_a_process_of_workers_is_handed_only_wake_ups(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a store's subscribers take only wake-ups (a worker's do), its background thread
    hands the event loop only the wake-ups of other processes: not each of their claims and
    completions. A subscriber that wants every event gets them all from then on."""
    path = tmp_path / "jobs.db"
    async with SqliteStore(path) as producer, SqliteStore(path) as listener:
        handed: list[str] = []
        deliver = listener._deliver_foreign

        def spy(events: list[StoreEvent]) -> None:
            handed.extend(f"{event.type}:{event.job_id}" for event in events)
            deliver(events)

        assert listener._background is not None
        monkeypatch.setattr(listener._background, "_deliver", spy)
        second = anyio.Event()

        class WakeUps:
            event_types = WAKE_EVENTS

            def __call__(self, event: StoreEvent) -> None:
                if event.job_id == "b":
                    second.set()

        listener.subscribe("q", WakeUps())
        await wake_up_run_wake_up(producer, "a", "b")
        with anyio.fail_after(10):
            await second.wait()
        assert handed == ["waiting:a", "waiting:b"]

        seen: list[str] = []
        done = anyio.Event()

        def everything(event: StoreEvent) -> None:
            seen.append(f"{event.type}:{event.job_id}")
            if event.type == "completed" and event.job_id == "c":
                done.set()

        listener.subscribe("q", everything)
        await producer.save_job(make_job(job_id="c"))
        jobs = await producer.fetch_next_jobs("q", "w", 30, 2)  # b (still waiting), then c
        await producer.finish_jobs([JobOutcome.completed(job, None) for job in jobs])
        with anyio.fail_after(10):
            await done.wait()
        assert seen == ["waiting:c", "active:b", "active:c", "completed:b", "completed:c"]


async def test_events_are_pruned_by_the_wall_clock_keeping_the_newest(
    tmp_path: Path, anyio_backend: str
) -> None:
    path = tmp_path / "jobs.db"

    def event_ids() -> list[int]:
        conn = sqlite3.connect(path)
        try:
            return [row[0] for row in conn.execute("SELECT id FROM conveyor_events ORDER BY id")]
        finally:
            conn.close()

    # The store's clock is decades behind the wall clock: age is judged by the wall clock.
    async with SqliteStore(path, clock=ManualClock(1_000.0), event_retention=0.2) as store:
        await store.save_bulk([make_job(job_id=f"a{i}") for i in range(3)])
        await store.save_job(make_job(job_id="b"))
        assert event_ids() == [1, 2]  # one row per transaction
        await anyio.sleep(1.3)  # past the retention and the once-a-second pruning
        await store.save_job(make_job(job_id="c"))  # its write prunes the two old rows
        assert event_ids() == [3]
        await anyio.sleep(1.3)
        await store.save_job(make_job(job_id="d"))
        assert event_ids() == [4]  # ids keep growing after pruning


async def test_a_large_bulk_add_runs_beside_the_loop_and_other_calls_wait(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with SqliteStore(tmp_path / "jobs.db") as store:
        await store.save_job(make_job(job_id="first"))
        jobs = [make_job(job_id=f"j{i}") for i in range(2500)]  # above the offload threshold
        reads: list[bool] = []

        async def read_meanwhile() -> None:
            for _ in range(20):
                reads.append(await store.get_job("q", "first") is not None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_meanwhile)
            saved = await store.save_bulk(jobs)
        assert [job.id for job in saved] == [job.id for job in jobs]
        assert reads == [True] * 20
        assert await store.count_jobs("q", JobState.WAITING) == 2501


async def test_truncate_all_empties_the_file_but_keeps_the_schema(
    tmp_path: Path, anyio_backend: str
) -> None:
    async with SqliteStore(tmp_path / "jobs.db") as store:
        await store.save_bulk([make_job(job_id=f"j{i}", group=Group("g")) for i in range(3)])
        await store.pause_job_name("q", "other")
        await store.truncate_all()
        assert await store.list_queues() == []
        assert await store.get_group_active_count("q", "g") == 0
        await store.save_job(make_job(job_id="again"))
        assert await claim_ids(store) == ["again"]


@pytest.mark.parametrize("lifo", [False, True])
async def test_a_claim_does_not_walk_past_the_jobs_of_paused_names(
    tmp_path: Path, anyio_backend: str, lifo: bool
) -> None:
    """With a job name paused, a claim once stepped through every waiting job of that name
    ahead of the others, at every claim. It now seeks each waiting name once: the work of a
    claim (SQLite's virtual machine steps) does not grow with the paused jobs ahead."""

    async def steps(paused_jobs: int) -> int:
        async with SqliteStore(tmp_path / f"paused_{paused_jobs}.db") as store:
            await store.save_bulk([make_job(name="paused") for _ in range(paused_jobs)])
            await store.save_bulk([make_job(name=name) for _ in range(10) for name in "bc"])
            await store.pause_job_name("q", "paused")

            async def claim_five() -> None:
                assert len(await claim_ids(store, limit=5, lifo=lifo)) == 5

            return await vm_steps(store, claim_five)

    few, many = await steps(20), await steps(2000)
    assert many < 2 * few, (few, many)


async def test_work_on_active_jobs_does_not_grow_with_the_finished_jobs_kept(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Counting the active jobs (at each claim of a worker with ``max_global_concurrency``),
    finding expired locks, listing the active jobs and draining the queue each read the whole
    table once, every finished job kept included: SQLite takes a partial index only when the
    query repeats the index's own terms. Their work (SQLite's virtual machine steps) no longer
    grows with the finished jobs."""

    async def steps(finished: int) -> int:
        async with SqliteStore(tmp_path / f"kept_{finished}.db") as store:
            await store.save_bulk([make_job() for _ in range(finished)])
            done = await claim(store, limit=finished)
            await store.finish_jobs([JobOutcome.completed(job, None) for job in done])
            await store.save_bulk([make_job() for _ in range(10)])

            async def work_on_active_jobs() -> None:
                assert len(await claim_ids(store, limit=5, max_global_concurrency=8)) == 5
                assert await store.count_jobs("q", JobState.ACTIVE) == 5
                assert len(await store.list_jobs("q", JobState.ACTIVE)) == 5
                assert await store.get_stalled_jobs("q") == []
                assert await store.recover_stalled_jobs("q", 1) == []
                assert await store.drain("q") == 5  # (the 5 left waiting)

            return await vm_steps(store, work_on_active_jobs)

    few, many = await steps(20), await steps(2000)
    assert many < 2 * few, (few, many)


async def test_a_claim_of_groups_does_not_read_every_group(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A claim of jobs of groups read every group lane with waiting jobs, and sorted them, at
    every claim. It now reads them in turn order, a page at a time, as far as it needs: its
    work (SQLite's virtual machine steps) does not grow with the groups waiting."""

    async def steps(groups: int) -> int:
        async with SqliteStore(tmp_path / f"groups_{groups}.db") as store:
            await store.save_bulk([make_job(group=Group(f"g{n}")) for n in range(groups)])

            async def claim_five() -> None:
                assert len(await claim_ids(store, limit=5)) == 5

            return await vm_steps(store, claim_five)

    few, many = await steps(20), await steps(2000)
    assert many < 2 * few, (few, many)
