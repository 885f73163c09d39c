"""Fixtures of the integration tests: real servers, and unique names for
the tables, keys and backends each test creates and removes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.services import (
    PG_DATABASE,
    PG_HOST,
    PG_PORT,
    PG_USER,
    REDIS_HOST,
    REDIS_PORT,
    HttpBackend,
    pg_fetch,
    redis_client,
    require_service,
)


@pytest.fixture
def pg_uri() -> str:
    """``postgres-lookup://`` up to the database; skips without PostgreSQL."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    return f"postgres-lookup://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"


@pytest.fixture
def pg_scratch(pg_uri: str) -> Iterator[Callable[[str], str]]:
    """Makes tables ``enrichlog_test_<random> (<columns>)`` on demand; drops
    them afterwards."""
    made: list[str] = []

    def make(columns: str) -> str:
        table = f"enrichlog_test_{uuid.uuid4().hex[:12]}"
        pg_fetch(f"CREATE TABLE {table} ({columns})")
        made.append(table)
        return table

    yield make
    for table in made:
        pg_fetch(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def pg_table(pg_uri: str) -> Iterator[str]:
    """A fresh table ``enrichlog_test_<random>`` (id int, name, email, tier)
    with users 1 (ann), 2 (bob) and 3 (cid); dropped afterwards."""
    table = f"enrichlog_test_{uuid.uuid4().hex[:12]}"
    pg_fetch(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, email text, tier text)")
    pg_fetch(
        f"INSERT INTO {table} VALUES "
        "(1, 'ann', 'ann@example.com', 'gold'), "
        "(2, 'bob', 'bob@example.com', 'free'), "
        "(3, 'cid', NULL, 'free')"
    )
    try:
        yield table
    finally:
        pg_fetch(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix ``enrichlog_test_<random>:``; its keys are deleted
    afterwards. Skips without Redis."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    prefix = f"enrichlog_test_{uuid.uuid4().hex[:12]}:"
    client = redis_client()
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def http_backend() -> Iterator[HttpBackend]:
    """A started local JSON HTTP server (see :class:`tests.services.JsonBackend`)."""
    backend = HttpBackend()
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
