"""The PostgreSQL server tests use: ``CONVEYOR_TEST_PG_DSN`` when set, else the local one.

Each test run works in a database of its own, created here (``conveyor_test_<pid>``) and
dropped at the end. When the server cannot be reached the PostgreSQL tests skip, unless
``CONVEYOR_REQUIRE_PG=1`` (set by ``.ci/run``), under which they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_dsn() -> str:
    return os.environ.get("CONVEYOR_TEST_PG_DSN") or DEFAULT_DSN


def _unreachable(reason: str) -> None:
    if os.environ.get("CONVEYOR_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (CONVEYOR_REQUIRE_PG=1) but {reason}")
    pytest.skip(f"PostgreSQL not reachable: {reason}")


def fresh_database() -> Iterator[str]:
    """A conninfo for a fresh database of this test run's own (the ``pg_dsn`` fixture)."""
    base = server_dsn()
    name = f"conveyor_test_{os.getpid()}"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unreachable(str(exc).strip())
        raise  # (not reached)
    with admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(base, dbname=name)
    try:
        yield dsn
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
