"""The PostgreSQL store: ``postgresql://`` URLs (also ``postgres://``)."""

try:
    import psycopg  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "conveyor's PostgreSQL store needs psycopg: pip install 'conveyor[postgres]'"
    ) from exc

from ._store import PgStore

__all__ = ["PgStore"]
