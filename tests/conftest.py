from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from hypothesis import settings

from conveyor import store_from_url
from conveyor.store import JobOutcome, Store
from conveyor.testing import ManualClock, StoreFixture, make_job
from conveyor_stores.memory import MemoryStore

from .pg import test_database

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.register_profile("quick", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

START = 1_800_000_000.0

FAST: dict[str, Any] = {"poll_interval": 0.05, "stalled_interval": 0.05}
"""Worker options for tests: short fallback polls. Tests wait on events; these only bound how
late a missed wake-up is noticed."""


def _fixture(clock: ManualClock, store: Store) -> StoreFixture:
    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    return StoreFixture(store, advance)


@asynccontextmanager
async def memory_fixture() -> AsyncIterator[StoreFixture]:
    clock = ManualClock(START)
    async with MemoryStore(clock=clock) as store:
        yield _fixture(clock, store)


def _file_fixture(url: str) -> Callable[[], AbstractAsyncContextManager[StoreFixture]]:
    """A store found through its entry point, like a user's URL, on a file in a fresh folder
    (``{dir}`` in ``url``)."""

    @asynccontextmanager
    async def factory() -> AsyncIterator[StoreFixture]:
        clock = ManualClock(START)
        with tempfile.TemporaryDirectory() as tmp:
            async with store_from_url(url.format(dir=tmp), clock=clock) as store:
                yield _fixture(clock, store)

    return factory


snapshot_fixture = _file_fixture("snapshot:///{dir}/jobs.json")
"""The example plugin store (examples/snapshot_store)."""
sqlite_fixture = _file_fixture("sqlite:///{dir}/jobs.db")


@asynccontextmanager
async def postgres_fixture() -> AsyncIterator[StoreFixture]:
    """PgStore on this run's test database, emptied first; its clock is a ManualClock."""
    clock = ManualClock(START)
    async with store_from_url(test_database(), clock=clock, schema="contract") as store:
        await store.truncate_all()  # type: ignore[attr-defined]
        yield _fixture(clock, store)


StoreFactoryT = Callable[[], AbstractAsyncContextManager[StoreFixture]]

STORE_FACTORIES: dict[str, StoreFactoryT] = {
    "memory": memory_fixture,
    "snapshot": snapshot_fixture,
    "sqlite": sqlite_fixture,
    "postgres": postgres_fixture,
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactoryT:
    return STORE_FACTORIES[str(request.param)]


@pytest.fixture
def pg_dsn() -> str:
    """A conninfo for a database of this test run's own on the test PostgreSQL server."""
    return test_database()


async def wake_up_run_wake_up(producer: Store, first: str, then: str) -> None:
    """Add job ``first`` to queue ``q``, claim and complete it, then add job ``then``: two
    wake-ups with a claim and a completion between them, for tests of who hears what."""
    await producer.save_job(make_job(job_id=first))
    [job] = await producer.fetch_next_jobs("q", "w", 30, 1)
    await producer.finish_jobs([JobOutcome.completed(job, None)])
    await producer.save_job(make_job(job_id=then))
