"""``redis-lookup://`` against a real Redis server.

Each test writes its keys under its own prefix (``redis_prefix``), which is
deleted afterwards, and gives its enricher a unique ``client_name`` so that
``CLIENT LIST`` shows exactly that enricher's connections.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enrichlog.container import LoggingContainer, configure_logging, get_logger
from enrichlog.enrichers import RedisLookupEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.settings import LoggingSettings
from enrichlog.uri.factory import EnricherFactory
from tests.helpers import read_lines
from tests.services import REDIS_HOST, REDIS_PORT, redis_client, tcp_proxy

ERRORS = "enrichment_errors"
BASE = f"redis-lookup://{REDIS_HOST}:{REDIS_PORT}/0"


def configure(log_file: Path, *uris: str, **overrides: Any) -> LoggingContainer:
    """``configure_logging`` with enricher URIs, JSON lines to ``log_file``."""
    return configure_logging(
        settings=LoggingSettings(enrichers=list(uris)), output=str(log_file), **overrides
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def connections(client_name: str) -> int:
    """Connections to the server that carry ``client_name``."""
    with redis_client() as client:
        return sum(1 for entry in client.client_list() if entry.get("name") == client_name)


def unique_name() -> str:
    return f"enrichlog-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def users(redis_prefix: str) -> str:
    """Hashes ``<prefix>user:1`` (ann) and ``<prefix>user:2`` (bob), the
    string ``<prefix>plan:1``, JSON documents ``<prefix>doc:1`` (an object),
    ``<prefix>doc:2`` (a list) and ``<prefix>doc:bad`` (not JSON)."""
    with redis_client() as client:
        client.hset(f"{redis_prefix}user:1", mapping={"name": "ann", "tier": "gold"})
        client.hset(f"{redis_prefix}user:2", mapping={"name": "bob", "tier": "free"})
        client.set(f"{redis_prefix}plan:1", "enterprise")
        client.set(f"{redis_prefix}doc:1", json.dumps({"name": "ann", "age": 41, "tags": ["a"]}))
        client.set(f"{redis_prefix}doc:2", json.dumps(["x", "y"]))
        client.set(f"{redis_prefix}doc:bad", "{not json")
    return redis_prefix


class CountingLookup(RedisLookupEnricher):
    """Counts the round trips it makes and the keys each carried."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.round_trips: list[list[str]] = []

    async def fetch(self, names: list[str]) -> list[Any]:
        self.round_trips.append(names)
        return await super().fetch(names)


# -- end to end ------------------------------------------------------------------


@pytest.mark.services
def test_hash_fields_end_to_end(users: str, log_file: Path) -> None:
    container = configure(log_file, f"{BASE}?key={users}user:{{user_id}}&into=user")
    log = get_logger()

    log.info("known", user_id=1)
    log.info("known as text", user_id="2")
    log.info("no such key", user_id=999)
    log.info("no user at all")
    container.shutdown()

    lines = {line["event"]: line for line in read_lines(log_file)}
    assert {"name": "ann", "tier": "gold"} == lines["known"]["user"]
    assert {"name": "bob", "tier": "free"} == lines["known as text"]["user"]
    for quiet in ("no such key", "no user at all"):
        assert "user" not in lines[quiet]
        assert ERRORS not in lines[quiet]


@pytest.mark.services
def test_strings_json_fields_and_top_level(users: str, log_file: Path) -> None:
    container = configure(
        log_file,
        f"{BASE}?key={users}plan:{{user_id}}&type=string&into=plan&name=plan",
        f"{BASE}?key={users}doc:{{doc_id}}&type=json&into=doc&fields=name,age&name=doc",
        f"{BASE}?key={users}user:{{user_id}}&fields=tier&name=tier",
        delivery="inline",
    )
    log = get_logger()

    log.info("one", user_id=1, doc_id=1, tier="call site wins")
    log.info("two", user_id=2, doc_id=2)
    container.shutdown()

    one, two = read_lines(log_file)
    assert "enterprise" == one["plan"]
    assert {"name": "ann", "age": 41} == one["doc"]
    assert "call site wins" == one["tier"]
    assert "plan" not in two
    assert "doc" not in two  # fields= needs an object: a list is an error
    assert "error: ValueError" == two[ERRORS]["doc"]
    assert "free" == two["tier"]


@pytest.mark.services
def test_call_site_values_win_over_cached_values(users: str, log_file: Path) -> None:
    # Found by an outside tester: the first event of a key decided for every
    # later one (its call-site field blanked the key's lookup while cached).
    container = configure(
        log_file,
        f"{BASE}?key={users}user:{{user_id}}&fields=name,tier",
        delivery="inline",
    )
    log = get_logger()

    log.info("a1", user_id=1, tier="call site")
    log.info("a2", user_id=1)
    log.info("b1", user_id=2)
    log.info("b2", user_id=2, tier="call site")
    container.shutdown()

    lines = {line["event"]: (line.get("name"), line.get("tier")) for line in read_lines(log_file)}
    assert {
        "a1": ("ann", "call site"),
        "a2": ("ann", "gold"),
        "b1": ("bob", "free"),
        "b2": ("bob", "call site"),
    } == lines


@pytest.mark.services
async def test_json_values_and_failures(users: str) -> None:
    whole = EnricherFactory.build(f"{BASE}?key={users}doc:{{d}}&type=json&into=doc")
    merged = EnricherFactory.build(f"{BASE}?key={users}doc:{{d}}&type=json&name=merged")
    await whole.startup()
    await merged.startup()
    try:
        documents = await whole.enrich_many([(1,), (2,), (3,)])  # type: ignore[attr-defined]
        # A value that cannot be read fails its key alone: its exception is
        # the key's value, and the other keys of the batch keep theirs.
        mixed = await whole.enrich_many([(1,), ("bad",)])  # type: ignore[attr-defined]
        not_an_object = await merged.enrich_many([(2,)])  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="under into="):
            await merged.enrich_async(None, "info", {"d": 2})  # one key: the call fails
        event = await merged.enrich_async(None, "info", {"d": 1, "age": 7})
    finally:
        await whole.shutdown()
        await merged.shutdown()

    assert {(1,): {"name": "ann", "age": 41, "tags": ["a"]}, (2,): ["x", "y"]} == documents
    assert documents[(1,)] == mixed[(1,)]
    assert isinstance(mixed[("bad",)], json.JSONDecodeError)
    assert "under into=" in str(not_an_object[(2,)])
    # Called alone, the enricher gives its answer whole; the runtime keeps an
    # event's own fields when it merges it (keep_existing, per event).
    assert {"d": 1, "age": 41, "name": "ann", "tags": ["a"]} == event


@pytest.mark.services
async def test_a_key_of_another_type_fails_the_lookup(users: str) -> None:
    enricher = EnricherFactory.build(
        f"{BASE}?key={users}plan:{{user_id}}"
    )  # a string, read as hash
    await enricher.startup()
    try:
        # The command's error is the key's value: that key fails alone.
        found = await enricher.enrich_many([(1,)])  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="WRONGTYPE") as caught:
            await enricher.enrich_async(None, "info", {"user_id": 1})
    finally:
        await enricher.shutdown()

    assert ("ResponseError", "ResponseError") == (
        type(found[(1,)]).__name__,
        type(caught.value).__name__,
    )
    assert "WRONGTYPE" in str(found[(1,)])


@pytest.mark.services
@pytest.mark.parametrize("kind", ["hash", "string", "json"])
async def test_a_value_that_is_not_utf8_fails_its_key_alone(redis_prefix: str, kind: str) -> None:
    # Found by an outside tester: decoded by the client, one such value
    # failed its whole batch (UnicodeDecodeError for every key, remembered
    # for the good ones too).
    good: Any = {"name": "ann"} if kind == "hash" else '{"name": "ann"}'
    bad: Any = {"name": b"\xff\xfe"} if kind == "hash" else b"\xff\xfe"
    with redis_client() as client:
        for name, value in ((f"{redis_prefix}v:good", good), (f"{redis_prefix}v:bad", bad)):
            if kind == "hash":
                client.hset(name, mapping=value)
            else:
                client.set(name, value)
    enricher = EnricherFactory.build(f"{BASE}?key={redis_prefix}v:{{k}}&type={kind}&into=v")
    await enricher.startup()
    try:
        found = await enricher.enrich_many([("good",), ("bad",)])  # type: ignore[attr-defined]
    finally:
        await enricher.shutdown()

    expected = {"name": "ann"} if kind != "string" else '{"name": "ann"}'
    assert expected == found[("good",)]
    assert isinstance(found[("bad",)], UnicodeDecodeError)


@pytest.mark.services
@pytest.mark.parametrize(("kind", "stored"), [("string", "hash"), ("json", "list")])
async def test_a_key_of_another_type_fails_its_key_for_strings_and_json(
    redis_prefix: str, kind: str, stored: str
) -> None:
    # Found by an outside tester: one MGET read a hash (or a list) as a
    # missing key, so a wrong type= went unseen.
    with redis_client() as client:
        client.set(f"{redis_prefix}v:good", '{"name": "ann"}')
        if stored == "hash":
            client.hset(f"{redis_prefix}v:other", mapping={"name": "bob"})
        else:
            client.rpush(f"{redis_prefix}v:other", "bob")
    enricher = EnricherFactory.build(f"{BASE}?key={redis_prefix}v:{{k}}&type={kind}&into=v")
    await enricher.startup()
    try:
        found = await enricher.enrich_many(  # type: ignore[attr-defined]
            [("good",), ("other",), ("missing",)]
        )
    finally:
        await enricher.shutdown()

    assert {("good",), ("other",)} == set(found)
    assert "WRONGTYPE" in str(found[("other",)])


@pytest.mark.services
def test_values_python_finds_equal_are_looked_up_as_the_keys_they_fill_in(
    redis_prefix: str, log_file: Path
) -> None:
    # Found by an outside tester: 1, 1.0 and True... shared one cache entry
    # (and one key in a batch): k=1.0 got the value of user:1, not user:1.0.
    with redis_client() as client:
        for suffix in ("1", "1.0", "0", "-0.0"):
            client.set(f"{redis_prefix}u:{suffix}", f"value of {suffix}")
    container = configure(log_file, f"{BASE}?key={redis_prefix}u:{{k}}&type=string&into=v")
    for value in (1, 1.0, 0, -0.0):  # in one batch
        get_logger().info("together", k=value)
    container.flush(10)
    for value in (1.0, 1, -0.0, 0):  # then from the cache
        get_logger().info("one by one", k=value)
    container.shutdown()

    assert [
        *("value of 1", "value of 1.0", "value of 0", "value of -0.0"),
        *("value of 1.0", "value of 1", "value of -0.0", "value of 0"),
    ] == [line["v"] for line in read_lines(log_file)]


@pytest.mark.services
def test_an_enum_member_and_the_value_it_equals_are_two_keys(
    redis_prefix: str, log_file: Path
) -> None:
    # Found by a review: a (str, Enum) member shared a cache entry with the
    # plain string it equals, though it fills in as "Plan.GOLD".
    import enum

    class Plan(str, enum.Enum):  # noqa: UP042 - on purpose: its str() is "Plan.GOLD"
        GOLD = "gold"

    with redis_client() as client:
        client.set(f"{redis_prefix}p:{Plan.GOLD}", "the member's")
        client.set(f"{redis_prefix}p:gold", "the string's")
    container = configure(log_file, f"{BASE}?key={redis_prefix}p:{{k}}&type=string&into=v")
    get_logger().info("member", k=Plan.GOLD)
    container.flush(10)
    get_logger().info("string", k="gold")
    container.shutdown()

    assert ["the member's", "the string's"] == [line["v"] for line in read_lines(log_file)]


@pytest.mark.services
def test_a_redis_hash_field_named_like_the_error_field_is_not_written_there(
    redis_prefix: str, log_file: Path
) -> None:
    # Found by an outside tester: the field was written as enrichment_errors.
    with redis_client() as client:
        client.hset(f"{redis_prefix}u:1", mapping={"name": "ann", "enrichment_errors": "forged"})
    container = configure_logging(
        enrichers=[f"redis-lookup://127.0.0.1:6379/0?key={redis_prefix}u:{{k}}"],
        output=str(log_file),
    )
    get_logger().info("e", k=1)
    container.shutdown()

    (line,) = read_lines(log_file)
    assert ("ann", False) == (line["name"], "enrichment_errors" in line)


# -- batching --------------------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("kind", ["hash", "string"])
async def test_enrich_many_is_one_round_trip(users: str, kind: str) -> None:
    client_name = unique_name()
    template = f"{users}user:{{user_id}}" if kind == "hash" else f"{users}plan:{{user_id}}"
    built = EnricherFactory.build(
        f"{BASE}?key={template}&type={kind}&into=v&client_name={client_name}"
    )
    enricher = CountingLookup(params=built.params)  # type: ignore[attr-defined]
    keys = [(i,) for i in range(1, 51)] + [(1,), ("2",)]
    await enricher.startup()
    try:
        found = await enricher.enrich_many(keys)
        used = connections(client_name)
    finally:
        await enricher.shutdown()

    assert 1 == len(enricher.round_trips)
    assert 51 == len(enricher.round_trips[0])  # (1,) twice is read once
    assert 1 == used  # one pipeline on one connection, not 51 concurrent reads
    if kind == "hash":
        assert {(1,), (2,), ("2",)} == set(found)
    else:
        assert {(1,): "enterprise"} == found


@pytest.mark.services
async def test_concurrency_is_bounded_by_the_pool(users: str) -> None:
    client_name = unique_name()
    enricher = EnricherFactory.build(
        f"{BASE}?key={users}user:{{user_id}}&into=user&max_connections=3&client_name={client_name}"
    )
    assert 3 == enricher.max_concurrency  # type: ignore[attr-defined]
    await enricher.startup()
    try:
        events = await asyncio.gather(
            *(enricher.enrich_async(None, "info", {"user_id": i % 3}) for i in range(60))  # type: ignore[attr-defined]
        )
        used = connections(client_name)
        healthy = await enricher.health_check()
    finally:
        await enricher.shutdown()

    assert [None, "ann", "bob"] * 20 == [e.get("user", {}).get("name") for e in events]
    assert used <= 3
    assert healthy


# -- hostile data and configuration ----------------------------------------------


@pytest.mark.services
def test_hostile_event_values_change_nothing(users: str, log_file: Path) -> None:
    container = configure(
        log_file, f"{BASE}?key={users}user:{{user_id}}&into=user", delivery="inline"
    )
    log = get_logger()
    hostile = [
        "*",
        "1\r\nFLUSHALL\r\n",
        "1 2",
        "../admin",
        "\x00",
        "x" * 1_000_000,
        ["1"],
        {"$ne": None},
    ]

    for value in hostile:
        log.info("hostile", user_id=value)
    log.info("after", user_id=1)
    container.shutdown()

    *attacks, after = read_lines(log_file)
    assert len(hostile) == len(attacks)
    for line in attacks:
        assert "user" not in line
        assert ERRORS not in line
    assert {"name": "ann", "tier": "gold"} == after["user"]
    with redis_client() as client:
        assert 6 == len(list(client.scan_iter(match=f"{users}*")))


@pytest.mark.parametrize(
    ("query", "culprit"),
    [
        ("key=user", "has no {field}"),
        ("key=user:{user.__class__}", "{user.__class__}"),
        ("key=user:{id!r}", "{id!r}"),
        ("key=user:{", "query key 'key'"),
        ("key=u:{id}&type=string", "type=string needs into="),
        ("key=u:{id}&type=list", "type"),
        ("key=u:{id}&max_connections=0", "max_connections"),
        ("key=u:{id}&from=id", "'from'"),
    ],
)
def test_invalid_configuration_is_a_configure_time_error(
    query: str, culprit: str, log_file: Path
) -> None:
    with pytest.raises(EnricherConfigError) as caught:
        configure(log_file, f"redis-lookup://app:s3cret-pw@127.0.0.1:6379/0?{query}")

    message = str(caught.value)
    assert culprit in message
    assert "redis-lookup://app:***@127.0.0.1:6379/0" in message
    assert "s3cret-pw" not in message


def test_a_bad_database_path_is_refused() -> None:
    with pytest.raises(EnricherConfigError, match="database number"):
        EnricherFactory.build("redis-lookup://127.0.0.1/zero?key=u:{id}")


def test_constructible_in_code() -> None:
    enricher = RedisLookupEnricher(
        params=RedisLookupEnricher.Params(key="user:{tenant}:{user_id}", path="/2"),
        name="user",
        max_concurrency=4,
    )

    assert ("user", 4, 2) == (enricher.name, enricher.max_concurrency, enricher.params.db)
    assert ("acme", 7) == enricher.cache_key({"tenant": "acme", "user_id": 7, "x": 1})
    assert enricher.cache_key({"tenant": "acme"}) is None
    assert "user:acme:7" == enricher.redis_key(("acme", 7))


def test_a_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # as if not installed

    with pytest.raises(EnricherConfigError, match=r"pip install 'enrichlog\[redis\]'"):
        EnricherFactory.build("redis-lookup://127.0.0.1/0?key=u:{id}")


# -- failures and shutdown -------------------------------------------------------


@pytest.mark.services
def test_no_connection_is_left_after_shutdown(users: str, log_file: Path) -> None:
    client_name = unique_name()
    container = configure(
        log_file, f"{BASE}?key={users}user:{{user_id}}&into=user&client_name={client_name}"
    )
    get_logger().info("one", user_id=1)
    container.flush()
    assert connections(client_name) >= 1

    container.shutdown()

    assert wait_until(lambda: connections(client_name) == 0)
    assert "user" in read_lines(log_file)[0]


def enriched_again(log_file: Path, user_id: int) -> Callable[[], bool]:
    """A condition that logs one more event and says whether it got its user."""

    def condition() -> bool:
        get_logger().info("probe", user_id=user_id)
        return "user" in read_lines(log_file)[-1]

    return condition


# ttl=0.001: the cache would hide the server's state from these tests.
RESILIENCE = {"delivery": "inline", "cache_error_ttl": 0.001}


@pytest.mark.services
def test_killed_connections_are_replaced(users: str, log_file: Path) -> None:
    client_name = unique_name()
    container = configure(
        log_file,
        f"{BASE}?key={users}user:{{user_id}}&into=user&ttl=0.001&client_name={client_name}",
        breaker_recovery_timeout=0.05,
        **RESILIENCE,
    )
    log = get_logger()
    log.info("before", user_id=1)
    with redis_client() as client:
        for entry in client.client_list():
            if entry.get("name") == client_name:
                client.client_kill(entry["addr"])

    for user_id in (1, 2, 1, 2):
        log.info("after the kill", user_id=user_id)
    recovered = wait_until(enriched_again(log_file, 2))
    container.shutdown()

    assert recovered
    lines = [line for line in read_lines(log_file) if line["event"] == "after the kill"]
    assert 4 == len(lines)  # every event is written: enriched, or with the reason
    for line in lines:
        assert "user" in line or line[ERRORS]["redis_lookup"].startswith("error: ")


@pytest.mark.services
def test_a_server_that_goes_away_and_comes_back(users: str, log_file: Path) -> None:
    with tcp_proxy(REDIS_HOST, REDIS_PORT) as proxy:
        container = configure(
            log_file,
            f"redis-lookup://127.0.0.1:{proxy.port}/0?key={users}user:{{user_id}}"
            "&into=user&ttl=0.001&timeout=1",
            breaker_failure_threshold=3,
            breaker_recovery_timeout=0.5,
            **RESILIENCE,
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
    assert {"name": "ann", "tier": "gold"} == lines[0]["user"]
    down = [line for line in lines if line["event"] == "down"]
    assert 6 == len(down)
    reasons = [line[ERRORS]["redis_lookup"] for line in down]
    assert all(reason.startswith("error: ") for reason in reasons[:3])
    assert ["circuit_open"] * 3 == reasons[3:]  # three failures opened the breaker
    assert {"name": "ann", "tier": "gold"} == lines[-1]["user"]


@pytest.mark.services
@pytest.mark.parametrize("query", ["", "&into=doc", "&into=doc&fields=name"])
def test_json_null_and_an_empty_object_add_nothing(
    query: str, redis_prefix: str, log_file: Path
) -> None:
    # Found by an outside tester: JSON null recorded "error: ValueError"
    # (without into, or with fields), and {} under into added "doc": {}.
    client = redis_client()
    client.set(f"{redis_prefix}null", "null")
    client.set(f"{redis_prefix}empty", "{}")
    container = configure(
        log_file, f"{BASE}?key={redis_prefix}{{doc_id}}&type=json{query}&name=docs"
    )
    for doc_id in ("null", "empty"):
        get_logger().info("looked up", doc_id=doc_id)
    container.shutdown()

    lines = read_lines(log_file)
    assert [{"doc_id", "event", "level", "timestamp"}] * 2 == [set(line) for line in lines]
