"""Shared by the examples: run ``main`` under asyncio, or trio with ``--trio``."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import anyio


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend="trio" if "--trio" in sys.argv else "asyncio")
