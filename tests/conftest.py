from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from hypothesis import settings

from conveyor import store_from_url
from conveyor.testing import ManualClock, StoreFixture
from conveyor_stores.memory import MemoryStore

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.register_profile("quick", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

START = 1_800_000_000.0

FAST: dict[str, Any] = {"poll_interval": 0.05, "stalled_interval": 0.05}
"""Worker options for tests: short fallback polls. Tests wait on events; these only bound how
late a missed wake-up is noticed."""


@asynccontextmanager
async def memory_fixture() -> AsyncIterator[StoreFixture]:
    clock = ManualClock(START)
    async with MemoryStore(clock=clock) as store:

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        yield StoreFixture(store, advance)


@asynccontextmanager
async def snapshot_fixture() -> AsyncIterator[StoreFixture]:
    """The example plugin store (examples/snapshot_store), found through its entry point."""
    clock = ManualClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        store = store_from_url(f"snapshot:///{tmp}/jobs.json", clock=clock)
        async with store:

            async def advance(seconds: float) -> None:
                clock.advance(seconds)

            yield StoreFixture(store, advance)


@asynccontextmanager
async def sqlite_fixture() -> AsyncIterator[StoreFixture]:
    """SqliteStore on a fresh file, found through its entry point like a user's URL."""
    clock = ManualClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        async with store_from_url(f"sqlite:///{tmp}/jobs.db", clock=clock) as store:

            async def advance(seconds: float) -> None:
                clock.advance(seconds)

            yield StoreFixture(store, advance)


StoreFactoryT = Callable[[], AbstractAsyncContextManager[StoreFixture]]

STORE_FACTORIES: dict[str, StoreFactoryT] = {
    "memory": memory_fixture,
    "snapshot": snapshot_fixture,
    "sqlite": sqlite_fixture,
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactoryT:
    return STORE_FACTORIES[str(request.param)]
