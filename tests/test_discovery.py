"""Stores are found by URL scheme through the ``conveyor.stores`` entry points, including a
separately installed plugin package (examples/snapshot_store)."""

from __future__ import annotations

from pathlib import Path

import pytest

import conveyor
from conveyor import (
    ArgumentTypeError,
    InvalidArgumentError,
    JobData,
    JobState,
    StoreError,
    UnknownStoreError,
)
from conveyor.testing import make_job
from conveyor_stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

PLUGIN_HINT = "install the example plugin: pip install -e examples/snapshot_store"


def test_available_stores_lists_builtin_and_plugin() -> None:
    stores = conveyor.available_stores()
    assert stores["memory"] == "conveyor_stores.memory:MemoryStore"
    assert stores.get("snapshot") == "conveyor_snapshot:SnapshotStore", PLUGIN_HINT


async def test_open_store_memory() -> None:
    async with conveyor.open_store("memory://") as store:
        assert isinstance(store, MemoryStore)
        assert isinstance(store, conveyor.Store)
        await store.save_job(make_job())
        assert await store.count_jobs("q", JobState.WAITING) == 1
    with pytest.raises(StoreError):
        await store.count_jobs("q", JobState.WAITING)


async def test_unknown_scheme_names_installed_ones() -> None:
    with pytest.raises(UnknownStoreError) as info:
        async with conveyor.open_store("nosuch://x"):
            pass
    message = str(info.value)
    assert "'nosuch'" in message
    assert "installed schemes: memory, " in message
    assert "snapshot" in message, PLUGIN_HINT
    assert info.value.installed == sorted(conveyor.available_stores())


def test_missing_postgres_store_names_the_extra() -> None:
    error = UnknownStoreError("postgresql://localhost/db", "postgresql", ["memory"])
    assert "pip install 'conveyor[postgres]'" in str(error)
    assert "installed schemes: memory" in str(error)


@pytest.mark.parametrize(
    ("url", "error", "argument"),
    [
        (123, ArgumentTypeError, "url"),
        ("no-scheme-here", InvalidArgumentError, "url"),
        ("memory://somehost", InvalidArgumentError, "url"),
        ("memory://?size=3", InvalidArgumentError, "url"),
        ("snapshot://", InvalidArgumentError, "url"),
    ],
)
def test_bad_urls(url: object, error: type[Exception], argument: str) -> None:
    with pytest.raises(error) as info:
        conveyor.store_from_url(url)  # type: ignore[arg-type]
    assert getattr(info.value, "argument", None) == argument


def test_unknown_store_option() -> None:
    with pytest.raises(TypeError):
        conveyor.store_from_url("memory://", colour="red")


async def test_plugin_store_persists_across_connections(tmp_path: Path) -> None:
    url = f"snapshot:///{tmp_path}/queue.json"
    jobs = [make_job(data={"i": i}, priority=i % 2) for i in range(6)]
    async with conveyor.open_store(url) as store:
        assert type(store).__module__ == "conveyor_snapshot", PLUGIN_HINT
        await store.save_bulk(jobs)
        await store.pause_job_name("q", "other")
        [claimed] = await store.fetch_next_jobs("q", "w", 30, 1)
    async with conveyor.open_store(url) as store:
        assert (await store.get_job("q", claimed.id)) == claimed
        assert await store.get_paused_job_names("q") == ["other"]
        order = [j.id for j in await store.fetch_next_jobs("q", "w", 30, 10)]
        assert order == [jobs[i].id for i in (2, 4, 1, 3, 5)]


async def test_plugin_refuses_a_file_that_is_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"hello": "world"}')
    with pytest.raises(StoreError, match="not an export"):
        async with conveyor.open_store(f"snapshot:///{path}"):
            pass
    assert path.read_text() == '{"hello": "world"}'


async def test_memory_export_import_round_trip() -> None:
    async with MemoryStore() as a, MemoryStore() as b:
        parent = make_job("p")
        child = JobData(
            id="c", queue_name="k", name="n", parent_id=parent.id, parent_queue_name="p"
        )
        await a.save_flow([parent, child])
        await a.save_job(make_job(dedup_key="key", delay=30))
        b.import_state(a.export_state())
        assert b.export_state() == a.export_state()
        assert [j.id for j in await b.get_children_jobs("p", parent.id)] == ["c"]
        assert await b.find_by_deduplication_key("q", "key") is not None
        with pytest.raises(StoreError, match="empty"):
            b.import_state(a.export_state())
