"""The PostgreSQL server tests use: ``CONVEYOR_TEST_PG_DSN`` when set, else the local one.

A test run works in a database of its own (``conveyor_test_<pid>``), created on first use and
dropped when the run ends. When the server cannot be reached the PostgreSQL tests skip, unless
``CONVEYOR_REQUIRE_PG=1`` (set by ``.ci/run``), under which they fail.
"""

from __future__ import annotations

import atexit
import os
import urllib.parse

import psycopg
import pytest
from psycopg import sql

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

_database: str | None = None


def server_dsn() -> str:
    return os.environ.get("CONVEYOR_TEST_PG_DSN") or DEFAULT_DSN


def _unreachable(reason: str) -> None:
    if os.environ.get("CONVEYOR_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL is required (CONVEYOR_REQUIRE_PG=1) but {reason}")
    pytest.skip(f"PostgreSQL not reachable: {reason}")


def test_database() -> str:
    """A conninfo for this run's own database (created on the first call)."""
    global _database
    if _database is not None:
        return _database
    base = server_dsn()
    name = f"conveyor_test_{os.getpid()}"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unreachable(str(exc).strip())
        raise  # (not reached)
    with admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    atexit.register(_drop, base, name)
    _database = as_url(psycopg.conninfo.make_conninfo(base, dbname=name))
    return _database


def as_url(conninfo: str) -> str:
    """A ``postgresql://`` URL for a libpq connection string (what ``store_from_url`` takes)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = urllib.parse.quote(str(params.pop("user", "")), safe="")
    password = params.pop("password", None)
    auth = user + (":" + urllib.parse.quote(str(password), safe="") if password else "")
    host = str(params.pop("host", "localhost"))
    port = params.pop("port", None)
    dbname = urllib.parse.quote(str(params.pop("dbname", "")), safe="")
    netloc = (auth + "@" if auth else "") + host + (f":{port}" if port else "")
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")


def _drop(base: str, name: str) -> None:
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    except psycopg.Error:
        pass  # the server went away: nothing left to clean
