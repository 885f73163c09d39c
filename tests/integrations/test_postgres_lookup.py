"""``postgres-lookup://`` against a real PostgreSQL server.

Each test creates its own table (``pg_table``) and drops it; the enricher's
connections carry ``application_name=enrichlog``, which is how the tests find
(and kill) them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from enrichlog.container import LoggingContainer, configure_logging, get_logger
from enrichlog.enrichers import PostgresLookupEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.settings import LoggingSettings
from enrichlog.uri.factory import EnricherFactory
from tests.helpers import read_lines
from tests.services import PG_DATABASE, PG_HOST, PG_PORT, PG_USER, pg_fetch, tcp_proxy

ERRORS = "enrichment_errors"


def configure(log_file: Path, *uris: str, **overrides: Any) -> LoggingContainer:
    """``configure_logging`` with enricher URIs, JSON lines to ``log_file``."""
    return configure_logging(
        settings=LoggingSettings(enrichers=list(uris)), output=str(log_file), **overrides
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (for
    state a server changes on its own time: a backend that exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def enrichlog_pids(application_name: str = "enrichlog") -> set[int]:
    """Server process ids of the connections that carry ``application_name``.

    Other test runs on the same server may have connections named
    ``enrichlog`` too, so tests compare these sets before and after rather
    than counting.
    """
    rows = pg_fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
    )
    return {row["pid"] for row in rows}


class CountingLookup(PostgresLookupEnricher):
    """Counts the queries it sends and the values each carried."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queries: list[list[Any]] = []

    async def fetch(self, values: list[Any]) -> Sequence[Any]:
        self.queries.append(values)
        return await super().fetch(values)


# -- end to end ----------------------------------------------------------------


@pytest.mark.services
def test_events_get_the_row_end_to_end(pg_uri: str, pg_table: str, log_file: Path) -> None:
    container = configure(
        log_file,
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name,email&into=user",
    )
    log = get_logger()

    log.info("known", user_id=1)
    log.info("known as text", user_id="2")
    log.info("null column", user_id=3)
    log.info("no such row", user_id=999)
    log.info("no user at all")
    container.shutdown()

    lines = {line["event"]: line for line in read_lines(log_file)}
    assert {"name": "ann", "email": "ann@example.com"} == lines["known"]["user"]
    assert {"name": "bob", "email": "bob@example.com"} == lines["known as text"]["user"]
    assert {"name": "cid", "email": None} == lines["null column"]["user"]
    for quiet in ("no such row", "no user at all"):
        assert "user" not in lines[quiet]
        assert ERRORS not in lines[quiet]


@pytest.mark.services
def test_without_into_columns_join_the_event_and_call_site_values_win(
    pg_uri: str, pg_table: str, log_file: Path
) -> None:
    container = configure(
        log_file, f"{pg_uri}?table={pg_table}&key=id&from=user_id&columns=name,tier"
    )

    get_logger().info("checkout", user_id=1, tier="override")
    container.shutdown()

    (line,) = read_lines(log_file)
    assert ("ann", "override") == (line["name"], line["tier"])
    assert ERRORS not in line


@pytest.mark.services
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_call_site_values_win_over_cached_and_batched_rows(
    pg_uri: str, pg_table: str, log_file: Path, delivery: str
) -> None:
    # Found by an outside tester: the row's changes were worked out on the
    # first event of a key and cached, so that event's call-site value
    # decided for every later event of its key: fields lost (first event had
    # its own) or call-site values overwritten (first event had none).
    container = configure(
        log_file,
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&into=user&name=u",
        f"{pg_uri}?table={pg_table}&key=id&from=user_id&columns=tier&name=t",
        delivery=delivery,
    )
    log = get_logger()

    log.info("a1", user_id=1, user="call site", tier="call site")
    container.flush()
    log.info("a2", user_id=1)  # cache hits
    log.info("b1", user_id=2)
    container.flush()
    log.info("b2", user_id=2, user="call site", tier="call site")  # cache hits
    for n in range(3):  # one batch (background): the same key with and without
        log.info(f"c{n}", user_id=3, **({"tier": "call site"} if n == 1 else {}))
    container.shutdown()

    lines = {line["event"]: (line.get("user"), line.get("tier")) for line in read_lines(log_file)}
    assert {
        "a1": ("call site", "call site"),
        "a2": ({"name": "ann"}, "gold"),
        "b1": ({"name": "bob"}, "free"),
        "b2": ("call site", "call site"),
        "c0": ({"name": "cid"}, "free"),
        "c1": ({"name": "cid"}, "call site"),
        "c2": ({"name": "cid"}, "free"),
    } == lines


@pytest.mark.services
def test_two_lookups_of_one_scheme_coexist_by_name(
    pg_uri: str, pg_table: str, log_file: Path
) -> None:
    container = configure(
        log_file,
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&into=user&name=user",
        f"{pg_uri}?table={pg_table}&from=referrer_id&columns=name&into=referrer&name=referrer",
    )

    get_logger().info("signup", user_id=1, referrer_id=2)
    container.shutdown()

    (line,) = read_lines(log_file)
    assert {"name": "ann"} == line["user"]
    assert {"name": "bob"} == line["referrer"]


@pytest.mark.services
def test_the_cache_answers_repeated_keys(pg_uri: str, pg_table: str, log_file: Path) -> None:
    enricher = CountingLookup(
        params=PostgresLookupEnricher.Params(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            path=f"/{PG_DATABASE}",
            table=pg_table,
            from_="user_id",
            columns=("name",),
            into="user",
        )
    )
    container = configure_logging(enrichers=[enricher], output=str(log_file), delivery="inline")
    log = get_logger()

    for _ in range(5):
        log.info("again", user_id=1)
    container.shutdown()

    assert [[1]] == enricher.queries
    assert [{"name": "ann"}] * 5 == [line["user"] for line in read_lines(log_file)]


# -- batching --------------------------------------------------------------------


def _stat_statements_calls(table: str) -> int | None:
    """Calls of the lookup query per pg_stat_statements, or None when the
    extension is not loaded on this server."""
    try:
        pg_fetch("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = pg_fetch(
            "SELECT coalesce(sum(calls), 0) AS calls FROM pg_stat_statements WHERE query LIKE $1",
            f'SELECT "id", "name" FROM "{table}"%',
        )
    except Exception:  # not in shared_preload_libraries: no statistics
        return None
    calls: int = rows[0]["calls"]
    return calls


@pytest.mark.services
async def test_enrich_many_sends_one_query_for_many_keys(pg_uri: str, pg_table: str) -> None:
    enricher = EnricherFactory.build(f"{pg_uri}?table={pg_table}&from=user_id&columns=name")
    counting = CountingLookup(params=enricher.params)  # type: ignore[attr-defined]
    await counting.startup()
    before = _stat_statements_calls(pg_table)
    keys = [(1,), (2,), ("3",), (3,), (999,), ("1'; DROP TABLE x;--",), ("abc",), (1.5,)]

    try:
        found = await counting.enrich_many(keys)
    finally:
        await counting.shutdown()

    assert 1 == len(counting.queries)
    # Values that cannot be an int4 never reach the server; equal ones go once.
    assert [1, 2, 3, 999] == sorted(counting.queries[0])
    assert {
        (1,): {"name": "ann"},
        (2,): {"name": "bob"},
        ("3",): {"name": "cid"},
        (3,): {"name": "cid"},
    } == found
    after = _stat_statements_calls(pg_table)
    if before is not None and after is not None:
        assert 1 == after - before


@pytest.mark.services
async def test_concurrent_events_run_within_the_pool(pg_uri: str, pg_table: str) -> None:
    enricher = EnricherFactory.build(
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&into=user&max_size=3"
    )
    assert isinstance(enricher, PostgresLookupEnricher)
    assert 3 == enricher.max_concurrency  # the pool's size unless the URI says
    await enricher.startup()
    try:
        events = await asyncio.gather(
            *(enricher.enrich_async(None, "info", {"user_id": 1 + i % 4}) for i in range(40))
        )
        healthy = await enricher.health_check()
    finally:
        await enricher.shutdown()

    names = [event.get("user", {}).get("name") for event in events if event is not None]
    assert ["ann", "bob", "cid", None] * 10 == names
    assert healthy


@pytest.mark.services
def test_max_concurrency_in_the_uri_wins(pg_uri: str) -> None:
    enricher = EnricherFactory.build(
        f"{pg_uri}?table=users&from=user_id&columns=name&max_size=3&max_concurrency=2&ttl=5"
    )

    assert isinstance(enricher, PostgresLookupEnricher)
    assert (2, 5.0) == (enricher.max_concurrency, enricher.cache_ttl)


# -- key column types ------------------------------------------------------------------


@pytest.mark.services
async def test_text_and_uuid_key_columns(pg_uri: str) -> None:
    table = f"enrichlog_test_{uuid.uuid4().hex[:12]}"
    pg_fetch(f"CREATE TABLE {table} (login text PRIMARY KEY, account uuid, plan text)")
    pg_fetch(
        f"INSERT INTO {table} VALUES ('ann', '0b8c1fd6-51f5-4a6f-9c5e-6b1f2b3c4d5e', 'pro'), "
        "('42', NULL, 'numeric login')"
    )
    by_login = EnricherFactory.build(f"{pg_uri}?table={table}&key=login&columns=plan&name=by_login")
    by_account = EnricherFactory.build(
        f"{pg_uri}?table={table}&key=account&from=account_id&columns=login&name=by_account"
    )
    try:
        await by_login.startup()
        await by_account.startup()
        logins = await by_login.enrich_many([("ann",), (42,), ("nobody",)])  # type: ignore[attr-defined]
        accounts = await by_account.enrich_many(  # type: ignore[attr-defined]
            [("0B8C1FD6-51F5-4A6F-9C5E-6B1F2B3C4D5E",), ("not-a-uuid",)]
        )
    finally:
        await by_login.shutdown()
        await by_account.shutdown()
        pg_fetch(f"DROP TABLE {table}")

    assert {("ann",): {"plan": "pro"}, (42,): {"plan": "numeric login"}} == logins
    assert {("0B8C1FD6-51F5-4A6F-9C5E-6B1F2B3C4D5E",): {"login": "ann"}} == accounts


@pytest.mark.services
@pytest.mark.parametrize(
    ("column", "stored", "asked", "unusable"),
    [
        (
            "numeric",
            "12.50",
            ["12.5", 12.5, "12.50"],
            ["n/a", "NaN", "Infinity", "1e1000000", "1e-20000"],
        ),
        ("float8", "0.25", ["0.25", 0.25], ["n/a", "inf"]),
        ("float4", "0.1", ["0.1", 0.1], ["n/a", "1e300"]),
        ("date", "2024-01-02", ["2024-01-02", " 2024-01-02 "], ["n/a", "2024-13-01", 20240102]),
        (
            "timestamptz",
            "2024-01-02 03:04:05+00",
            ["2024-01-02T03:04:05Z", "2024-01-02T05:04:05+02:00", "2024-01-02 03:04:05"],
            ["n/a", "2024-01-02T25:00"],
        ),
        (
            "timestamp",
            "2024-01-02 03:04:05",
            ["2024-01-02T03:04:05", "2024-01-02T03:04:05+02:00"],  # the offset dropped
            ["n/a"],
        ),
        ("time", "03:04:05", ["03:04:05", "03:04:05+02:00"], ["n/a"]),
        ("char(6)", "ab", ["ab", "ab  "], []),
    ],
)
async def test_key_columns_of_other_types_take_the_values_that_can_match(
    pg_uri: str,
    pg_scratch: Callable[[str], str],
    column: str,
    stored: str,
    asked: list[Any],
    unusable: list[Any],
) -> None:
    # Found by an outside tester: with a numeric key, one value such as 'n/a'
    # failed its whole batch (DataError, remembered for the good keys too);
    # with a date key, every value did (ISO text was not converted).
    table = pg_scratch(f"k {column} PRIMARY KEY, plan text")
    pg_fetch(f"INSERT INTO {table} VALUES ($1::text::{column}, 'pro')", stored)
    enricher = CountingLookup(
        params=EnricherFactory.build(f"{pg_uri}?table={table}&key=k&columns=plan").params  # type: ignore[attr-defined]
    )
    keys = [(value,) for value in [*asked, *unusable]]
    try:
        await enricher.startup()
        cache_keys = [enricher.cache_key({"k": value}) for value in [*asked, *unusable]]
        found = await enricher.enrich_many(keys)
        # What the engine sends: the cache keys.
        by_cache_key = await enricher.enrich_many([cache_keys[0]])
    finally:
        await enricher.shutdown()

    assert {(value,): {"plan": "pro"} for value in asked} == found
    assert 1 == len(enricher.queries[0])  # one row: one value asked; the unusable not sent
    assert {cache_keys[0]: {"plan": "pro"}} == by_cache_key
    assert 2 == len(enricher.queries)


@pytest.mark.services
def test_a_bad_value_leaves_the_good_keys_of_its_batch_enriched(
    pg_uri: str, pg_scratch: Callable[[str], str], log_file: Path
) -> None:
    # Found by an outside tester (end to end, as the unit above did not):
    # a numeric key column, five good keys and 'n/a' in one batch.
    table = pg_scratch("id numeric PRIMARY KEY, v text")
    pg_fetch(f"INSERT INTO {table} SELECT g, 'n' || g FROM generate_series(1, 10) g")
    container = configure(log_file, f"{pg_uri}?table={table}&from=k&key=id&columns=v&into=r")
    get_logger().info("alone", k=7)
    container.flush(10)
    for value in (1, "2", 3.0, "n/a", 4, "5.00"):
        get_logger().info("batch", k=value)
    container.shutdown()

    assert [
        ("alone", {"v": "n7"}),
        *[("batch", {"v": f"n{i}"}) for i in (1, 2, 3)],
        ("batch", None),
        *[("batch", {"v": f"n{i}"}) for i in (4, 5)],
    ] == [(line["event"], line.get("r")) for line in read_lines(log_file)]
    assert all(ERRORS not in line for line in read_lines(log_file))


@pytest.mark.services
async def test_a_value_asyncpg_cannot_send_fails_its_key_alone(
    pg_uri: str, pg_scratch: Callable[[str], str]
) -> None:
    # A key column of a type enrichlog does not convert (inet): asyncpg
    # decides, and a value it refuses fails its own key, not the batch.
    table = pg_scratch("k inet PRIMARY KEY, plan text")
    pg_fetch(f"INSERT INTO {table} VALUES ('10.0.0.1', 'pro')")
    enricher = EnricherFactory.build(f"{pg_uri}?table={table}&key=k&columns=plan")
    try:
        await enricher.startup()
        found = await enricher.enrich_many([("10.0.0.1",), ("n/a",)])  # type: ignore[attr-defined]
    finally:
        await enricher.shutdown()

    assert {"plan": "pro"} == found[("10.0.0.1",)]
    assert isinstance(found[("n/a",)], asyncpg.DataError)


@pytest.mark.services
def test_an_int_flag_member_finds_its_row_in_an_integer_column(
    pg_uri: str, pg_table: str, log_file: Path
) -> None:
    # Found by a re-test: asyncpg refused an IntFlag member (DataError) when
    # it was looked up alone, and found the row when batched with a plain 1.
    import enum

    class Flag(enum.IntFlag):
        FIRST = 1

    container = configure(log_file, f"{pg_uri}?table={pg_table}&from=k&columns=name&into=u")
    get_logger().info("flag", k=Flag.FIRST)
    container.shutdown()

    (line,) = read_lines(log_file)
    assert ({"name": "ann"}, None) == (line.get("u"), line.get(ERRORS))


@pytest.mark.services
def test_values_python_finds_equal_find_their_own_rows_in_a_text_column(
    pg_uri: str, pg_scratch: Callable[[str], str], log_file: Path
) -> None:
    # Found by an outside tester: 1, 1.0 and -0.0 shared one cache entry (and
    # one key in a batch): login=1.0 got the row of '1'.
    table = pg_scratch("login text PRIMARY KEY, plan text")
    pg_fetch(
        f"INSERT INTO {table} VALUES ('1', 'one'), ('1.0', 'one point oh'), ('0', 'zero'), "
        "('-0.0', 'minus zero')"
    )
    container = configure(log_file, f"{pg_uri}?table={table}&key=login&columns=plan")
    for value in (1, 1.0, 0, -0.0):  # in one batch
        get_logger().info("together", login=value)
    container.flush(10)
    for value in (1.0, 1, -0.0, 0):  # then from the cache
        get_logger().info("one by one", login=value)
    container.shutdown()

    assert [
        *("one", "one point oh", "zero", "minus zero"),
        *("one point oh", "one", "minus zero", "zero"),
    ] == [line.get("plan") for line in read_lines(log_file)]


@pytest.mark.services
def test_uuid_and_numeric_columns_are_written_as_their_text(
    pg_uri: str, pg_scratch: Callable[[str], str], log_file: Path
) -> None:
    # Found by an outside tester: "UUID('6f1b...')" and "Decimal('12.50')".
    table = pg_scratch("id int PRIMARY KEY, account uuid, balance numeric")
    pg_fetch(f"INSERT INTO {table} VALUES (1, '0b8c1fd6-51f5-4a6f-9c5e-6b1f2b3c4d5e', 12.50)")
    container = configure(log_file, f"{pg_uri}?table={table}&columns=account,balance&into=row")
    get_logger().info("checkout", id=1)
    container.shutdown()

    assert {"account": "0b8c1fd6-51f5-4a6f-9c5e-6b1f2b3c4d5e", "balance": "12.50"} == read_lines(
        log_file
    )[0]["row"]


# -- hostile data and configuration ----------------------------------------------------


@pytest.mark.services
def test_hostile_event_values_change_nothing(pg_uri: str, pg_table: str, log_file: Path) -> None:
    container = configure(
        log_file,
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&into=user&name=by_id",
        f"{pg_uri}?table={pg_table}&key=name&from=login&columns=email&into=account&name=by_name",
        delivery="inline",
    )
    log = get_logger()
    hostile = [
        "1'; DROP TABLE x;--",
        f"1; DROP TABLE {pg_table};--",
        "ann' OR '1'='1",
        "../admin",
        "\x00",
        "x" * 1_000_000,
        {"$ne": None},
    ]

    for value in hostile:
        log.info("hostile", user_id=value, login=value)
    log.info("after", user_id=1, login="bob")
    container.shutdown()

    *attacks, after = read_lines(log_file)
    assert len(hostile) == len(attacks)
    for line in attacks:
        assert "user" not in line
        assert "account" not in line
        assert ERRORS not in line
    assert len(attacks[5]["user_id"]) == 1_000_000  # the event keeps its value
    assert {"name": "ann"} == after["user"]
    assert {"email": "bob@example.com"} == after["account"]
    assert 3 == pg_fetch(f"SELECT count(*) AS n FROM {pg_table}")[0]["n"]


@pytest.mark.parametrize(
    ("query", "culprit"),
    [
        ("table=users;drop&columns=name", "query key 'table'"),
        ('table=users"&columns=name', "query key 'table'"),
        ("table=a.b.c&columns=name", "query key 'table'"),
        ("table=users&key=id)--&columns=name", "query key 'key'"),
        ("table=users&columns=name,email%20FROM%20pg_user", "query key 'columns'"),
        ("table=users&columns=name&frm=user_id", "frm"),
        ("table=users&columns=name&min_size=5&max_size=2", "min_size"),
        ("table=users", "columns"),
    ],
)
def test_invalid_configuration_is_a_configure_time_error(
    query: str, culprit: str, log_file: Path
) -> None:
    uri = f"postgres-lookup://app:s3cret-pw@127.0.0.1:5432/test?{query}"

    with pytest.raises(EnricherConfigError) as caught:
        configure(log_file, uri)

    message = str(caught.value)
    assert culprit in message
    assert "postgres-lookup://app:***@127.0.0.1:5432/test" in message
    assert "s3cret-pw" not in message
    # The rejected value is not echoed (it may be a secret in the wrong
    # place), in the URI or in the detail.
    for rejected in ("users;drop", 'users"', "a.b.c", "id)--", "email FROM pg_user"):
        assert rejected not in message


def test_the_password_never_shows() -> None:
    enricher = EnricherFactory.build(
        "postgres-lookup://app:s3cret-pw@db.internal/app?table=users&columns=name&from=user_id"
    )

    assert "s3cret-pw" not in repr(enricher)
    assert "s3cret-pw" not in repr(enricher.params)  # type: ignore[attr-defined]
    assert "s3cret-pw" not in EnricherFactory.to_uri(enricher)
    again = EnricherFactory.build(EnricherFactory.to_uri(enricher, reveal_secrets=True))
    assert again.params == enricher.params  # type: ignore[attr-defined]


def test_constructible_in_code_with_from_or_its_field_name() -> None:
    by_alias = PostgresLookupEnricher.Params.model_validate(
        {"table": "users", "from": "user_id", "columns": "name,email"}
    )
    by_name = PostgresLookupEnricher.Params(
        table="users", from_="user_id", columns=("name", "email")
    )

    enricher = PostgresLookupEnricher(params=by_name, name="user", timeout=0.5)

    assert by_alias == by_name
    assert ("user", 0.5, 10) == (enricher.name, enricher.timeout, enricher.max_concurrency)
    assert 'SELECT "id", "name", "email" FROM "users" WHERE "id" = ANY($1)' == enricher.query
    assert ("name", "email") == enricher.provides
    assert (42,) == enricher.cache_key({"user_id": 42})
    # Not usable as keys: no lookup, no error.
    for value in (None, True, "", "\x00", "\ud800", "x" * 1025, 2**129, float("nan"), [1]):
        assert enricher.cache_key({"user_id": value}) is None, value


def test_schema_qualified_table_is_quoted_per_part() -> None:
    enricher = EnricherFactory.build(
        "postgres-lookup://db/app?table=crm.Users&key=user_id&columns=name&into=user"
    )

    assert 'SELECT "user_id", "name" FROM "crm"."Users" WHERE "user_id" = ANY($1)' == (
        enricher.query  # type: ignore[attr-defined]
    )
    assert ("user",) == enricher.provides


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if not installed

    with pytest.raises(EnricherConfigError, match=r"pip install 'enrichlog\[postgres\]'"):
        EnricherFactory.build("postgres-lookup://db/app?table=users&columns=name")


# -- start-up, failures and shutdown --------------------------------------------------


@pytest.mark.services
def test_a_missing_table_fails_the_start_up_not_the_events(
    pg_uri: str, log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    application_name = f"enrichlog-test-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.ERROR, logger="enrichlog"):
        container = configure(
            log_file,
            f"{pg_uri}?table=enrichlog_test_no_such_table&from=user_id&columns=name"
            f"&application_name={application_name}",
            delivery="inline",
        )
    get_logger().info("still written", user_id=1)
    container.shutdown()

    (line,) = read_lines(log_file)
    assert {"postgres_lookup": "unavailable"} == line[ERRORS]
    assert "UndefinedTableError" in caplog.text
    assert "enrichlog_test_no_such_table" in caplog.text
    assert wait_until(lambda: not enrichlog_pids(application_name))  # the failed pool is closed


@pytest.mark.services
def test_no_connection_is_left_after_shutdown(pg_uri: str, pg_table: str, log_file: Path) -> None:
    before = enrichlog_pids()
    container = configure(
        log_file, f"{pg_uri}?table={pg_table}&from=user_id&columns=name&min_size=2"
    )
    get_logger().info("one", user_id=1)
    container.flush()
    ours = enrichlog_pids() - before
    assert len(ours) >= 2  # min_size=2, named application_name=enrichlog

    container.shutdown()

    assert wait_until(lambda: not ours & enrichlog_pids())


def enriched_again(log_file: Path, user_id: int) -> Callable[[], bool]:
    """A condition that logs one more event and says whether it got its user."""

    def condition() -> bool:
        get_logger().info("probe", user_id=user_id)
        return "user" in read_lines(log_file)[-1]

    return condition


# ttl=0.001: the cache would hide the backend's state from these tests.
RESILIENCE = {"delivery": "inline", "cache_error_ttl": 0.001, "breaker_recovery_timeout": 0.05}


@pytest.mark.services
def test_killed_connections_are_replaced_and_events_keep_flowing(
    pg_uri: str, pg_table: str, log_file: Path
) -> None:
    before = enrichlog_pids()
    container = configure(
        log_file,
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&into=user&ttl=0.001&min_size=2",
        **RESILIENCE,
    )
    log = get_logger()
    log.info("before", user_id=1)
    old = enrichlog_pids() - before
    assert len(old) >= 2

    killed = pg_fetch(
        "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity "
        "WHERE application_name = 'enrichlog' AND pid = ANY($1)",
        list(old),
    )
    assert [True] * len(old) == [row["ok"] for row in killed]
    assert wait_until(lambda: not old & enrichlog_pids())
    for user_id in (1, 2, 3, 1, 2, 3):
        log.info("after the kill", user_id=user_id)
    recovered = wait_until(enriched_again(log_file, 2))
    new = enrichlog_pids() - before
    container.shutdown()

    assert recovered
    assert new  # fresh connections replaced the killed ones
    assert not new & old
    lines = [line for line in read_lines(log_file) if line["event"] == "after the kill"]
    assert 6 == len(lines)  # every event is written: enriched, or with the reason
    for line in lines:
        assert "user" in line or line[ERRORS]["postgres_lookup"].startswith("error: ")
    assert wait_until(lambda: not new & enrichlog_pids())


@pytest.mark.services
async def test_lost_connections_fail_with_transient_errors(pg_uri: str, pg_table: str) -> None:
    application_name = f"enrichlog-test-{uuid.uuid4().hex[:8]}"
    enricher = EnricherFactory.build(
        f"{pg_uri}?table={pg_table}&from=user_id&columns=name&min_size=2"
        f"&application_name={application_name}"
    )
    assert isinstance(enricher, PostgresLookupEnricher)
    await enricher.startup()
    kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1"
    failures: list[Exception] = []

    async def lookup(user_id: int) -> object:
        # As many tries as the pool has connections that may be dead: each
        # dead one fails once, then the pool opens a fresh one.
        for _ in range(3):
            try:
                return await enricher.enrich_many([(user_id,)])  # type: ignore[attr-defined]
            except Exception as exc:
                failures.append(exc)
        return None

    try:
        # Killed while idle and used at once: asyncpg may not have noticed.
        pg_fetch(kill, application_name)
        after_idle_kill = await lookup(1)
        # Killed in the middle of a query: the query waits for a lock that
        # another connection holds until the kill.
        locker = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, database=PG_DATABASE
        )
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE")
            slow = asyncio.create_task(enricher.fetch([1, 2]))
            waiting = (
                "SELECT count(*) AS n FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'"
            )
            async with asyncio.timeout(10):
                while not (await asyncio.to_thread(pg_fetch, waiting, application_name))[0]["n"]:
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(pg_fetch, kill, application_name)
            with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as in_flight:
                await slow
        await locker.close()
        after_busy_kill = await lookup(2)
    finally:
        await enricher.shutdown()

    assert {(1,): {"name": "ann"}} == after_idle_kill
    assert {(2,): {"name": "bob"}} == after_busy_kill
    for failure in [*failures, in_flight.value]:
        assert enricher.is_transient(failure), failure


@pytest.mark.services
def test_a_server_that_goes_away_and_comes_back(pg_table: str, log_file: Path) -> None:
    with tcp_proxy(PG_HOST, PG_PORT) as proxy:
        container = configure(
            log_file,
            f"postgres-lookup://{PG_USER}@127.0.0.1:{proxy.port}/{PG_DATABASE}"
            f"?table={pg_table}&from=user_id&columns=name&into=user&ttl=0.001&timeout=1",
            **{**RESILIENCE, "breaker_failure_threshold": 3, "breaker_recovery_timeout": 0.5},
        )
        log = get_logger()
        log.info("up", user_id=1)

        proxy.stop()
        for user_id in range(100, 106):  # one key each: no cached failure answers
            log.info("down", user_id=user_id)
        proxy.start()
        recovered = wait_until(enriched_again(log_file, 1))
        container.shutdown()

    assert recovered
    lines = read_lines(log_file)
    assert {"name": "ann"} == lines[0]["user"]
    down = [line for line in lines if line["event"] == "down"]
    assert 6 == len(down)
    reasons = [line[ERRORS]["postgres_lookup"] for line in down]
    assert all(reason.startswith("error: ") or reason == "circuit_open" for reason in reasons)
    assert ["circuit_open"] * 3 == reasons[3:]  # three failures opened the breaker
    assert all("user" not in line for line in down)
    assert {"name": "ann"} == lines[-1]["user"]


@pytest.mark.services
def test_a_query_cut_short_over_a_stalled_network_is_not_abandoned(
    pg_table: str, log_file: Path
) -> None:
    # Found by an outside tester: with the server's replies held back (a
    # slow or broken network path), a query past its timeout waited for
    # asyncpg's cancellation handshake: the call ignored its cancellation,
    # was abandoned with a warning, and shutdown waited seconds for it.
    with tcp_proxy(PG_HOST, PG_PORT) as proxy:
        container = configure(
            log_file,
            f"postgres-lookup://{PG_USER}@127.0.0.1:{proxy.port}/{PG_DATABASE}"
            f"?table={pg_table}&from=user_id&columns=name&into=user&timeout=0.3",
        )
        log = get_logger()
        log.info("up", user_id=1)
        assert container.flush(10)
        proxy.holding_replies = True
        log.info("stalled", user_id=2)
        assert container.flush(10)
        metrics = container.metrics()["enrichers"]["postgres_lookup"]
        report = container.shutdown()
        proxy.holding_replies = False

    lines = read_lines(log_file)
    assert {"name": "ann"} == lines[0]["user"]
    assert "timeout" == lines[1][ERRORS]["postgres_lookup"]
    assert (0, 1) == (metrics["abandoned"], metrics["failures_by_reason"]["timeout"])
    assert 0 == report["abandoned"]


class _OddStr(str):
    """A str whose comparison raises (found by an outside tester)."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no compare")

    __hash__ = str.__hash__


class _OddInt(int):
    """An int whose conversions raise."""

    def __index__(self) -> int:
        raise RuntimeError("no index")

    def __int__(self) -> int:
        raise RuntimeError("no int")


@pytest.mark.services
@pytest.mark.parametrize("runtime", ["thread", "loop"])
@pytest.mark.parametrize(
    ("column", "odd", "plain"),
    [("text", _OddStr("1"), "1"), ("int", _OddInt(1), 1)],
    ids=["str-with-raising-eq", "int-with-raising-int"],
)
def test_an_odd_key_value_does_not_fail_the_other_keys_of_its_batch(
    pg_uri: str,
    pg_scratch: Callable[[str], str],
    log_file: Path,
    runtime: str,
    column: str,
    odd: object,
    plain: object,
) -> None:
    # Such a value failed every key of its batch with error: RuntimeError,
    # and that failure was then remembered for the plain keys.
    table = pg_scratch(f"id {column} PRIMARY KEY, name text")
    pg_fetch(f"INSERT INTO {table} VALUES ('1', 'one'), ('2', 'two')")
    uri = f"{pg_uri}?table={table}&from=k&columns=name&into=r&batch_window=0.05"

    async def log_on_the_loop() -> None:
        container = configure(log_file, uri, runtime="loop")
        await container.astartup()
        for value in (odd, plain, 2):
            get_logger().info("batch", k=value)
        await container.aflush(10)
        get_logger().info("later", k=plain)
        await container.ashutdown()

    if runtime == "loop":
        asyncio.run(log_on_the_loop())
    else:
        container = configure(log_file, uri)
        for value in (odd, plain, 2):
            get_logger().info("batch", k=value)
        container.flush(10)
        get_logger().info("later", k=plain)
        container.shutdown()

    lines = read_lines(log_file)
    assert [(line["event"], line.get("r")) for line in lines[1:]] == [
        ("batch", {"name": "one"}),
        ("batch", {"name": "two"}),
        ("later", {"name": "one"}),
    ]
    assert all(ERRORS not in line for line in lines[1:])
    assert len(lines) == 4  # the odd value's own event is written, whatever it got


@pytest.mark.parametrize(
    ("part", "field"),
    [
        ("postgres-lookup://127.0.0.1/test?application_name=x%00y&", "application_name"),
        ("postgres-lookup://us%00er@127.0.0.1/test?", "user"),
        ("postgres-lookup://127.0.0.1/te%00st?", "path"),
    ],
)
def test_a_nul_in_a_connection_name_is_a_configure_time_error(
    part: str, field: str, log_file: Path
) -> None:
    # Accepted, then every connection was refused ("invalid startup packet
    # layout"): the enricher stayed unavailable for as long as the process ran.
    with pytest.raises(EnricherConfigError, match=rf"{field}.*NUL"):
        configure(log_file, f"{part}table=t&columns=name")


def test_a_nul_in_the_password_is_refused_without_showing_it(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match=r"NUL.*in the password") as caught:
        configure(log_file, "postgres-lookup://app:s3cr%00et@127.0.0.1/test?table=t&columns=name")
    assert "s3cr" not in str(caught.value)


@pytest.mark.services
def test_an_array_key_column_fails_the_start_up_saying_why(
    pg_uri: str,
    pg_scratch: Callable[[str], str],
    log_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = pg_scratch("id int[], name text")
    with caplog.at_level(logging.ERROR, logger="enrichlog"):
        container = configure(
            log_file, f"{pg_uri}?table={table}&from=k&columns=name", delivery="inline"
        )
    get_logger().info("still written", k="{1}")
    container.shutdown()

    (line,) = read_lines(log_file)
    assert {"postgres_lookup": "unavailable"} == line[ERRORS]
    assert "key column 'id'" in caplog.text
    assert "a column holding arrays cannot be a lookup key" in caplog.text
