"""Finding and opening a store by URL, through the ``conveyor.stores`` entry points.

A store package registers its store class (or any callable taking ``(url, **options)``) under
the URL scheme it serves::

    [project.entry-points."conveyor.stores"]
    mystore = "my_package:MyStore"     # MyStore.from_url(url, **options), or MyStore(url, ...)

Only the entry point of the scheme asked for is imported, so a broken or heavy plugin costs
nothing to users of another store.
"""

from __future__ import annotations

import importlib.metadata
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .store import ArgumentTypeError, InvalidArgumentError, Store, StoreError, UnknownStoreError

__all__ = ["ENTRY_POINT_GROUP", "available_stores", "open_store", "store_from_url"]

ENTRY_POINT_GROUP = "conveyor.stores"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def available_stores() -> dict[str, str]:
    """The installed stores: URL scheme -> the object its entry point names.

    >>> available_stores()["memory"]
    'conveyor_stores.memory:MemoryStore'
    """
    return {ep.name: ep.value for ep in _entry_points()}


def store_from_url(url: str, **options: Any) -> Store:
    """Build (without connecting) the store that serves ``url``'s scheme.

    Keyword options go to the store and win over options in the URL's query string.

    :raises UnknownStoreError: no installed store serves the scheme.
    :raises StoreError: the store's package fails to import or builds something that is not a
        :class:`~conveyor.store.Store`.
    """
    if not isinstance(url, str):
        raise ArgumentTypeError("url", f"expected str, got {type(url).__name__}")
    scheme = urllib.parse.urlsplit(url).scheme
    if not scheme:
        raise InvalidArgumentError(
            "url", f"{url!r} has no scheme; try 'memory://' or 'sqlite:///jobs.db'"
        )
    entry_points = _entry_points()
    matches = [ep for ep in entry_points if ep.name == scheme]
    if not matches:
        raise UnknownStoreError(url, scheme, sorted({ep.name for ep in entry_points}))
    if len({ep.value for ep in matches}) > 1:
        found = ", ".join(ep.value for ep in matches)
        raise StoreError(f"several installed stores claim the scheme {scheme!r}: {found}")
    entry_point = matches[0]
    try:
        factory = entry_point.load()
    except Exception as exc:
        raise StoreError(
            f"the store for scheme {scheme!r} ({entry_point.value}) failed to import: {exc}"
        ) from exc
    build = getattr(factory, "from_url", factory)
    store = build(url, **options)
    if not isinstance(store, Store):
        raise StoreError(
            f"{entry_point.value} built a {type(store).__name__}, which does not implement the "
            "conveyor.store.Store contract"
        )
    return store


@asynccontextmanager
async def open_store(url: str, **options: Any) -> AsyncIterator[Store]:
    """Open the store a URL names, connected, and disconnect it on leaving the block.

    ::

        async with conveyor.open_store("memory://") as store:
            ...

    URLs: ``memory://``; ``sqlite:///relative.db`` or ``sqlite:////absolute.db``;
    ``postgresql://user@host/db``; or any scheme an installed plugin registers under the
    ``conveyor.stores`` entry-point group (see :func:`available_stores`).
    """
    store = store_from_url(url, **options)
    async with store:
        yield store
