"""What the PostgreSQL benchmarks share: a scratch database for each measurement."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
from psycopg import sql


@contextlib.contextmanager
def fresh_database(admin: str, prefix: str) -> Iterator[str]:
    """A new empty database, ``<prefix>_<pid>``, on ``admin``'s server while in the block;
    yields its conninfo."""
    name = f"{prefix}_{os.getpid()}"
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(drop)
