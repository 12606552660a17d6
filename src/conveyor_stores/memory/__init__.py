"""An in-memory store: ``memory://``. See :class:`MemoryStore`."""

from ._store import MemoryStore as MemoryStore

__all__ = ["MemoryStore"]
