"""The SQLite store: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite://:memory:``.

The embedded default: one file, safe for any number of processes on one host.
"""

from ._store import SqliteStore as SqliteStore

__all__ = ["SqliteStore"]
