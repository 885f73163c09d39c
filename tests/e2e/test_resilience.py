"""End to end: cache, circuit breaker, retry, concurrency limit and health
checks of async enrichers, through ``configure_logging`` and a real file."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.typing import EventDict, WrappedLogger

from enrichlog.container import LoggingContainer, configure_logging, get_logger
from enrichlog.enricher import AsyncEnricher
from tests.helpers import read_lines

ERRORS = "enrichment_errors"


def configure(
    log_file: Path, enrichers: Iterable[object] = (), **overrides: Any
) -> LoggingContainer:
    """``configure_logging`` writing JSON lines to ``log_file``, inline by default."""
    overrides.setdefault("delivery", "inline")
    return configure_logging(enrichers=list(enrichers), output=str(log_file), **overrides)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (for
    behaviour driven by real time: recovery timeouts, health intervals)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def reasons(lines: list[dict[str, Any]], name: str) -> list[str | None]:
    """The reason recorded for enricher ``name`` on each line, or None."""
    return [line.get(ERRORS, {}).get(name) for line in lines]


class UserLookup(AsyncEnricher):
    """Adds ``user_name`` for ``user_id``; cached per user id; counts calls."""

    name = "user"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        event_dict["user_name"] = f"name-{event_dict['user_id']}"
        return event_dict


class TeamLookup(AsyncEnricher):
    """Adds ``team`` for the ``user_name`` the ``user`` enricher added;
    cached per user name."""

    name = "team"
    dependencies = ("user",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_name")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        event_dict["team"] = f"team-of-{event_dict['user_name']}"
        return event_dict


class Backend:
    """A remote service that is up or down, as the test flips it."""

    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.calls = 0

    def answer(self) -> str:
        self.calls += 1
        if not self.up:
            raise ConnectionError("geo service unreachable")
        return "eu-west"


class GeoLookup(AsyncEnricher):
    """Adds ``region`` from a :class:`Backend`; not cached."""

    name = "geo"

    def __init__(self, backend: Backend, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend = backend

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        event_dict["region"] = self.backend.answer()
        return event_dict


class CachedGeoLookup(GeoLookup):
    """:class:`GeoLookup` cached per ``ip``; each answer takes a little while."""

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("ip")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.05)
        event_dict["region"] = self.backend.answer()
        return event_dict


def warm_up(container: LoggingContainer, user_id: int = 7) -> None:
    """Log one event for ``user_id`` and wait until it is written."""
    get_logger().info("warm-up", user_id=user_id)
    container.flush(5.0)


# -- cache hits cost no hop --------------------------------------------------------


def test_cache_hit_does_not_call_the_enricher_again(log_file: Path) -> None:
    user = UserLookup()
    container = configure(log_file, [user])
    warm_up(container)

    get_logger().info("hit", user_id=7)

    assert 1 == user.calls


def test_cache_hit_line_is_written_when_the_inline_call_returns(log_file: Path) -> None:
    container = configure(log_file, [UserLookup()])
    warm_up(container)

    get_logger().info("hit", user_id=7)

    assert ["warm-up", "hit"] == [line["event"] for line in read_lines(log_file)]


def test_cache_hit_is_written_by_the_caller_without_the_pipeline(log_file: Path) -> None:
    container = configure(log_file, [UserLookup()])
    warm_up(container)
    handed_off = container.metrics()["handed_off"]

    get_logger().info("hit", user_id=7)

    assert handed_off == container.metrics()["handed_off"]


def test_cache_hit_line_carries_the_cached_fields(log_file: Path) -> None:
    container = configure(log_file, [UserLookup()])
    warm_up(container)

    get_logger().info("hit", user_id=7)
    line = read_lines(log_file)[-1]

    assert ("hit", "name-7", None) == (line["event"], line["user_name"], line.get(ERRORS))


def test_two_level_cache_hits_call_neither_enricher_again(log_file: Path) -> None:
    user, team = UserLookup(), TeamLookup()
    container = configure(log_file, [user, team])
    warm_up(container)

    get_logger().info("hit", user_id=7)

    assert (1, 1) == (user.calls, team.calls)


def test_two_level_cache_hits_are_written_by_the_caller_without_the_pipeline(
    log_file: Path,
) -> None:
    container = configure(log_file, [UserLookup(), TeamLookup()])
    warm_up(container)
    handed_off = container.metrics()["handed_off"]

    get_logger().info("hit", user_id=7)
    line = read_lines(log_file)[-1]

    assert (handed_off, "hit", "name-7", "team-of-name-7") == (
        container.metrics()["handed_off"],
        line["event"],
        line["user_name"],
        line["team"],
    )


def test_dependant_cache_miss_still_runs_on_the_runtime(log_file: Path) -> None:
    user, team = UserLookup(), TeamLookup()
    container = configure(log_file, [user, team])
    warm_up(container, user_id=7)
    written_before = container.metrics()["written"]

    get_logger().info("other user", user_id=8)
    line = read_lines(log_file)[-1]

    assert ((2, 2), written_before + 1, "team-of-name-8") == (
        (user.calls, team.calls),
        container.metrics()["written"],
        line["team"],
    )


# -- what is cached, and for how long -----------------------------------------------


def test_cache_key_none_calls_the_enricher_for_every_event(log_file: Path) -> None:
    class UncachedForAnonymous(UserLookup):
        def cache_key(self, event_dict: EventDict) -> Hashable | None:
            return None

    user = UncachedForAnonymous()
    configure(log_file, [user])
    log = get_logger()

    for _ in range(3):
        log.info("anonymous", user_id=0)

    assert (3, ["name-0"] * 3) == (user.calls, [ln["user_name"] for ln in read_lines(log_file)])


def test_cached_result_expires_after_cache_ttl(log_file: Path) -> None:
    user = UserLookup(cache_ttl=0.05)
    container = configure(log_file, [user])
    warm_up(container)
    time.sleep(0.1)

    get_logger().info("after expiry", user_id=7)

    assert (2, "name-7") == (user.calls, read_lines(log_file)[-1]["user_name"])


def test_cache_ttl_override_in_settings_applies_to_the_named_enricher(log_file: Path) -> None:
    user = UserLookup()
    container = configure(log_file, [user], enricher_options={"user": {"cache_ttl": 0.05}})
    warm_up(container)
    time.sleep(0.1)

    get_logger().info("after expiry", user_id=7)

    assert 2 == user.calls


def test_events_with_one_key_share_one_lookup_while_it_is_held(log_file: Path) -> None:
    released = threading.Event()

    class HeldLookup(UserLookup):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            self.calls += 1
            while not released.is_set():
                await asyncio.sleep(0.001)
            event_dict["user_name"] = "held"
            return event_dict

    user = HeldLookup(timeout=5.0)
    container = configure(log_file, [user], delivery="background")
    log = get_logger()

    for i in range(200):
        log.info("burst", user_id=1, i=i)
    started = wait_until(lambda: user.calls >= 1)
    released.set()
    container.flush(5.0)
    lines = read_lines(log_file)

    assert (True, 1, 200, {"held"}) == (
        started,
        user.calls,
        len(lines),
        {line.get("user_name") for line in lines},
    )


class FailingForUnknownUsers(UserLookup):
    """Raises ``LookupError`` for user ids below zero."""

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        if event_dict["user_id"] < 0:
            raise LookupError(f"no user {event_dict['user_id']}")
        event_dict["user_name"] = f"name-{event_dict['user_id']}"
        return event_dict


def test_failed_lookup_is_not_repeated_for_its_key_within_cache_error_ttl(
    log_file: Path,
) -> None:
    user = FailingForUnknownUsers()
    configure(log_file, [user], cache_error_ttl=5.0)
    log = get_logger()

    for _ in range(3):
        log.info("unknown", user_id=-1)

    assert (1, ["error: LookupError"] * 3) == (user.calls, reasons(read_lines(log_file), "user"))


def test_failed_lookup_for_one_key_does_not_stop_lookups_for_other_keys(
    log_file: Path,
) -> None:
    user = FailingForUnknownUsers()
    configure(log_file, [user], cache_error_ttl=5.0)
    log = get_logger()

    log.info("unknown", user_id=-1)
    log.info("known", user_id=2)
    log.info("other unknown", user_id=-3)

    assert (3, [None, "name-2", None]) == (
        user.calls,
        [ln.get("user_name") for ln in read_lines(log_file)],
    )


def test_failed_lookup_is_tried_again_after_cache_error_ttl(log_file: Path) -> None:
    user = FailingForUnknownUsers()
    configure(log_file, [user], cache_error_ttl=0.05)
    log = get_logger()

    log.info("unknown", user_id=-1)
    time.sleep(0.1)
    log.info("unknown again", user_id=-1)

    assert 2 == user.calls


def test_cache_stats_in_metrics_count_one_miss_per_missed_event(log_file: Path) -> None:
    container = configure(log_file, [UserLookup()])
    warm_up(container)
    log = get_logger()

    for _ in range(3):
        log.info("hit", user_id=7)
    stats = container.metrics()["enrichers"]["user"]["cache"]

    assert (3, 1, 0.75) == (stats["hits"], stats["misses"], stats["hit_rate"])


def test_a_cached_enrichers_call_time_counts_in_the_events_enricher_time(
    log_file: Path,
) -> None:
    """Found by an outside tester: an enricher with ``cache_key`` added 0 s
    to ``enricher_time``, and ``stats`` read the whole call as waiting."""

    class SlowUserLookup(UserLookup):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(0.02)
            return await super().enrich_async(logger, method_name, event_dict)

    container = configure(log_file, [SlowUserLookup()])
    for user_id in range(3):  # three keys: three calls
        get_logger().info("request", user_id=user_id)
    enricher_time = container.metrics().enricher_time

    # asyncio.sleep(0.02) never returns early: at least 60 ms in all.
    assert (3, True) == (enricher_time.count, enricher_time.sum >= 0.06)


@pytest.mark.parametrize("batching", [False, True], ids=["per-event", "batching"])
def test_cache_counters_never_go_down_while_events_wait_for_one_key(
    log_file: Path, batching: bool
) -> None:
    """Found by an outside tester: an event handed to the loop counted a miss,
    then became a hit when it joined the call fetching its key; a scrape in
    between saw the miss counter go down (a counter reset to Prometheus)."""

    class Lookup(AsyncEnricher):
        name = "user"

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["user"] = "ada"
            return event_dict

        def cache_key(self, event_dict: EventDict) -> Hashable:
            return event_dict["user_id"]

    class BatchLookup(AsyncEnricher):
        name = "user"

        async def enrich_many(self, keys: Any) -> dict[Hashable, str]:
            return dict.fromkeys(keys, "ada")

        def apply(self, event_dict: EventDict, value: Any) -> EventDict:
            event_dict["user"] = value
            return event_dict

        def cache_key(self, event_dict: EventDict) -> Hashable:
            return event_dict["user_id"]

    def cache_counts(container: LoggingContainer) -> tuple[int, int]:
        metrics = container.metrics()["enrichers"]["user"]
        return metrics["cache_misses"], metrics["cache_hits"]

    async def main() -> list[tuple[int, int]]:
        enricher = BatchLookup() if batching else Lookup()
        async with configure_logging(
            enrichers=[enricher], output=str(log_file), runtime="loop"
        ) as container:
            log = get_logger()
            for _ in range(5):  # on the loop: nothing runs until it awaits
                log.info("request", user_id=7)
            before = cache_counts(container)
            await container.aflush()
            return [before, cache_counts(container)]

    reads = asyncio.run(main())

    assert ([(0, 0), (1, 4)], ["ada"] * 5) == (
        reads,
        [line["user"] for line in read_lines(log_file)],
    )


# -- circuit breaker -------------------------------------------------------------------


def breaker_settings() -> dict[str, Any]:
    return {"breaker_failure_threshold": 3, "breaker_recovery_timeout": 0.3}


def test_failing_backend_events_keep_flowing_with_the_error_marker(log_file: Path) -> None:
    configure(log_file, [GeoLookup(Backend(up=False))], **breaker_settings())
    log = get_logger()

    for i in range(3):
        log.info("request", i=i)

    assert ["error: ConnectionError"] * 3 == reasons(read_lines(log_file), "geo")


def test_circuit_opens_after_failure_threshold_and_skips_the_enricher(log_file: Path) -> None:
    backend = Backend(up=False)
    configure(log_file, [GeoLookup(backend)], **breaker_settings())
    log = get_logger()

    for i in range(6):
        log.info("request", i=i)

    assert (3, ["error: ConnectionError"] * 3 + ["circuit_open"] * 3) == (
        backend.calls,
        reasons(read_lines(log_file), "geo"),
    )


def test_health_shows_the_open_circuit_and_the_last_error(log_file: Path) -> None:
    container = configure(log_file, [GeoLookup(Backend(up=False))], **breaker_settings())
    log = get_logger()

    for i in range(4):
        log.info("request", i=i)
    view = container.health()["geo"]

    assert ("open", "error: ConnectionError") == (view["breaker"], view["last_error"])


def test_per_enricher_breaker_settings_override_the_defaults(log_file: Path) -> None:
    backend = Backend(up=False)
    configure(
        log_file,
        [GeoLookup(backend, failure_threshold=1, recovery_timeout=30.0)],
        **breaker_settings(),
    )
    log = get_logger()

    log.info("first")
    log.info("second")

    assert (1, ["error: ConnectionError", "circuit_open"]) == (
        backend.calls,
        reasons(read_lines(log_file), "geo"),
    )


def test_breaker_override_in_settings_beats_the_enricher_attribute(log_file: Path) -> None:
    backend = Backend(up=False)
    configure(
        log_file,
        [GeoLookup(backend, failure_threshold=5)],
        enricher_options={"geo": {"failure_threshold": 1}},
    )
    log = get_logger()

    log.info("first")
    log.info("second")

    assert 1 == backend.calls


def open_then_recover(
    log_file: Path, container: LoggingContainer, backend: Backend
) -> tuple[bool, int]:
    """Open the circuit, bring the backend back and log until an event
    carries the field again; return whether it did and how many were logged."""
    log = get_logger()
    logged = 0
    for i in range(4):
        log.info("while down", i=i)
        logged += 1
    backend.up = True

    def next_event_is_enriched() -> bool:
        nonlocal logged
        log.info("probing")
        logged += 1
        container.flush(5.0)
        return "region" in read_lines(log_file)[-1]

    return wait_until(next_event_is_enriched), logged


def test_open_circuit_closes_when_the_backend_recovers(log_file: Path) -> None:
    backend = Backend(up=False)
    container = configure(log_file, [GeoLookup(backend)], **breaker_settings())

    recovered, _ = open_then_recover(log_file, container, backend)
    get_logger().info("after recovery")
    line = read_lines(log_file)[-1]

    assert (True, "closed", "eu-west", None) == (
        recovered,
        container.health()["geo"]["breaker"],
        line.get("region"),
        line.get(ERRORS),
    )


def test_open_circuit_lets_one_probe_through_after_recovery_timeout(log_file: Path) -> None:
    backend = Backend(up=False)
    container = configure(log_file, [GeoLookup(backend)], **breaker_settings())

    opened_at = time.monotonic()
    recovered, _ = open_then_recover(log_file, container, backend)
    waited = time.monotonic() - opened_at

    # Three failures, then nothing until the one probe that succeeded.
    assert (True, 4, True) == (recovered, backend.calls, waited >= 0.3)


def test_no_event_is_lost_while_the_circuit_opens_and_closes(log_file: Path) -> None:
    backend = Backend(up=False)
    container = configure(
        log_file, [GeoLookup(backend)], delivery="background", **breaker_settings()
    )

    _, logged = open_then_recover(log_file, container, backend)
    container.shutdown()

    assert logged == len(read_lines(log_file))


def test_cached_enricher_rejected_while_half_open_is_used_once_the_circuit_closes(
    log_file: Path,
) -> None:
    backend = Backend(up=False)
    container = configure(
        log_file,
        [CachedGeoLookup(backend)],
        delivery="background",
        cache_error_ttl=5.0,
        breaker_failure_threshold=2,
        breaker_recovery_timeout=0.2,
    )
    log = get_logger()
    log.info("down", ip="10.0.0.1")
    log.info("down", ip="10.0.0.2")
    container.flush(5.0)
    backend.up = True
    time.sleep(0.3)

    # One probe (10.0.0.3) is let through; 10.0.0.4 arrives while it runs.
    log.info("probe", ip="10.0.0.3")
    log.info("rejected while half open", ip="10.0.0.4")
    container.flush(5.0)
    log.info("after the circuit closed", ip="10.0.0.4")
    container.flush(5.0)
    lines = read_lines(log_file)

    assert ("closed", "eu-west", None) == (
        container.health()["geo"]["breaker"],
        lines[-1].get("region"),
        lines[-1].get(ERRORS),
    )


def test_enricher_that_hangs_opens_the_circuit(log_file: Path) -> None:
    class Hangs(AsyncEnricher):
        name = "slow"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.calls = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            self.calls += 1
            await asyncio.sleep(10)
            return event_dict

    slow = Hangs(timeout=0.05, failure_threshold=2)
    container = configure(log_file, [slow])
    log = get_logger()

    for i in range(3):
        log.info("request", i=i)

    assert (2, ["timeout", "timeout", "circuit_open"], "open") == (
        slow.calls,
        reasons(read_lines(log_file), "slow"),
        container.health()["slow"]["breaker"],
    )


def test_drop_event_from_an_enricher_drops_the_event_and_is_not_a_failure(
    log_file: Path,
) -> None:
    class DropsHealthChecks(AsyncEnricher):
        name = "filter"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.calls = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            self.calls += 1
            if event_dict["event"] == "healthz":
                raise structlog.DropEvent
            event_dict["kept"] = True
            return event_dict

    dropper = DropsHealthChecks(failure_threshold=1)
    container = configure(log_file, [dropper])
    log = get_logger()

    for _ in range(3):
        log.info("healthz")
    log.info("order placed")

    assert (4, [("order placed", True, None)], "closed") == (
        dropper.calls,
        [(ln["event"], ln.get("kept"), ln.get(ERRORS)) for ln in read_lines(log_file)],
        container.health()["filter"]["breaker"],
    )


def test_circuit_state_changes_are_reported_through_the_enrichlog_logger(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrichlog")
    container = configure(log_file, [GeoLookup(Backend(up=False))], **breaker_settings())
    log = get_logger()

    for i in range(3):
        log.info("request", i=i)
    container.flush(5.0)
    reports = [r for r in caplog.records if r.name == "enrichlog" and "circuit" in r.getMessage()]

    assert (
        [(logging.WARNING, "enricher 'geo': circuit closed -> open")],
        ["request"] * 3,
    ) == (
        [(r.levelno, r.getMessage()) for r in reports],
        [line["event"] for line in read_lines(log_file)],
    )


def test_timed_out_cached_lookup_counts_one_failure(log_file: Path) -> None:
    class HangingUserLookup(UserLookup):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            self.calls += 1
            await asyncio.sleep(10)
            return event_dict

    container = configure(log_file, [HangingUserLookup(timeout=0.05)])

    get_logger().info("request", user_id=1)
    wait_until(lambda: container.metrics()["enrichers"]["user"]["failures"] >= 1)
    time.sleep(0.05)  # let the shared call report its own timeout, if it does
    stats = container.metrics()["enrichers"]["user"]

    assert (1, 1) == (stats["calls"], stats["failures"])


# -- retry -------------------------------------------------------------------------------


class FailsFirst(AsyncEnricher):
    """Raises ``error`` on its first ``failures`` calls, then adds ``answer``."""

    name = "flaky"

    def __init__(self, error: type[Exception], failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error
        self.failures = failures
        self.calls = 0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("not this time")
        event_dict["answer"] = 42
        return event_dict


def test_transient_errors_are_retried_until_the_call_succeeds(log_file: Path) -> None:
    flaky = FailsFirst(ConnectionError, failures=2)
    configure(log_file, [flaky], retry_attempts=3, retry_base_delay=0.001)

    get_logger().info("request")
    line = read_lines(log_file)[-1]

    assert (3, 42, None) == (flaky.calls, line.get("answer"), line.get(ERRORS))


def test_retries_are_counted_in_metrics(log_file: Path) -> None:
    flaky = FailsFirst(ConnectionError, failures=2)
    container = configure(log_file, [flaky], retry_attempts=3, retry_base_delay=0.001)

    get_logger().info("request")
    stats = container.metrics()["enrichers"]["flaky"]

    assert (1, 2, 0) == (stats["calls"], stats["retries"], stats["failures"])


def test_non_transient_error_is_not_retried(log_file: Path) -> None:
    flaky = FailsFirst(ValueError, failures=2)
    configure(log_file, [flaky], retry_attempts=3, retry_base_delay=0.001)

    get_logger().info("request")

    assert (1, ["error: ValueError"]) == (flaky.calls, reasons(read_lines(log_file), "flaky"))


def test_is_transient_override_decides_what_is_retried(log_file: Path) -> None:
    class RetriesValueErrors(FailsFirst):
        def is_transient(self, exc: BaseException) -> bool:
            return isinstance(exc, ValueError)

    flaky = RetriesValueErrors(ValueError, failures=1)
    configure(log_file, [flaky], retry_attempts=2, retry_base_delay=0.001)

    get_logger().info("request")

    assert (2, 42) == (flaky.calls, read_lines(log_file)[-1].get("answer"))


def test_per_enricher_retry_attempts_override_the_default(log_file: Path) -> None:
    flaky = FailsFirst(ConnectionError, failures=1, retry_attempts=2)
    configure(log_file, [flaky], retry_base_delay=0.001)

    get_logger().info("request")

    assert (2, 42) == (flaky.calls, read_lines(log_file)[-1].get("answer"))


def test_retries_stay_within_the_timeout_budget(log_file: Path) -> None:
    flaky = FailsFirst(ConnectionError, failures=1_000, timeout=0.1)
    configure(log_file, [flaky], retry_attempts=50, retry_base_delay=0.2)

    started = time.monotonic()
    get_logger().info("request")
    elapsed = time.monotonic() - started

    # Full jitter makes the number of attempts random, but every backoff has
    # to end before the 0.1 s budget does: eight attempts would need seven
    # draws summing under 0.1 s from ever wider ranges (odds below 1e-6).
    assert (True, True, ["error: ConnectionError"]) == (
        elapsed < 1.0,
        flaky.calls < 8,
        reasons(read_lines(log_file), "flaky"),
    )


# -- concurrency limit ----------------------------------------------------------------


def test_max_concurrency_bounds_the_calls_in_flight(log_file: Path) -> None:
    class TracksConcurrency(AsyncEnricher):
        name = "db"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.in_flight = 0
            self.peak = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            # All on the runtime loop: no lock needed around the counters.
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await asyncio.sleep(0.01)
            self.in_flight -= 1
            event_dict["row"] = "found"
            return event_dict

    db = TracksConcurrency(max_concurrency=2, timeout=5.0)
    container = configure(log_file, [db], delivery="background")
    log = get_logger()

    for i in range(20):
        log.info("query", i=i)
    container.flush(5.0)

    assert (2, ["found"] * 20) == (db.peak, [ln.get("row") for ln in read_lines(log_file)])


# -- health --------------------------------------------------------------------------------


class Switchable(AsyncEnricher):
    """Healthy while ``healthy`` is set; counts calls."""

    name = "db"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.healthy = True
        self.calls = 0

    async def _health_check(self) -> bool:
        return self.healthy

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        event_dict["row"] = "found"
        return event_dict


def test_unhealthy_enricher_is_skipped_as_unavailable_without_being_called(
    log_file: Path,
) -> None:
    db = Switchable()
    container = configure(log_file, [db], health_check_interval=0.05)
    db.healthy = False
    went_down = wait_until(lambda: not container.health()["db"]["available"])

    get_logger().info("while unhealthy")

    assert (True, 0, ["unavailable"]) == (went_down, db.calls, reasons(read_lines(log_file), "db"))


def test_enricher_is_used_again_once_its_health_check_passes(log_file: Path) -> None:
    db = Switchable()
    container = configure(log_file, [db], health_check_interval=0.05)
    db.healthy = False
    wait_until(lambda: not container.health()["db"]["available"])
    db.healthy = True
    came_back = wait_until(lambda: container.health()["db"]["available"])

    get_logger().info("healthy again")

    assert (True, 1, "found") == (came_back, db.calls, read_lines(log_file)[-1].get("row"))


class FailsToStartOnce(Switchable):
    """``_startup`` raises the first time only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.startups = 0

    async def _startup(self) -> None:
        self.startups += 1
        if self.startups == 1:
            raise ConnectionRefusedError("database at db:5432 refused")


def test_enricher_that_failed_to_start_is_started_by_a_later_health_check(
    log_file: Path,
) -> None:
    db = FailsToStartOnce()
    container = configure(log_file, [db], health_check_interval=0.05)
    get_logger().info("before it started")
    started = wait_until(lambda: container.health()["db"]["available"])

    get_logger().info("after it started")

    assert (True, ["unavailable", None], [None, "found"]) == (
        started,
        reasons(read_lines(log_file), "db"),
        [ln.get("row") for ln in read_lines(log_file)],
    )


def test_startup_failure_is_reported_once_through_the_enrichlog_logger(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrichlog")
    db = FailsToStartOnce()
    container = configure(log_file, [db], health_check_interval=0.05)
    wait_until(lambda: container.health()["db"]["available"])
    container.shutdown()

    reports = [
        r for r in caplog.records if r.name == "enrichlog" and "failed to start" in r.getMessage()
    ]

    assert (1, logging.ERROR, True) == (
        len(reports),
        reports[0].levelno,
        "ConnectionRefusedError" in reports[0].getMessage(),
    )


def test_startup_that_keeps_failing_is_reported_once_across_health_checks(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class NeverStarts(Switchable):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.startups = 0

        async def _startup(self) -> None:
            self.startups += 1
            raise ConnectionRefusedError("database at db:5432 refused")

    caplog.set_level(logging.INFO, logger="enrichlog")
    db = NeverStarts()
    container = configure(log_file, [db], health_check_interval=0.05)
    retried = wait_until(lambda: db.startups >= 3)
    container.shutdown()

    reports = [
        r for r in caplog.records if r.name == "enrichlog" and "failed to start" in r.getMessage()
    ]

    assert (True, 1) == (retried, len(reports))


def test_health_shows_an_enricher_that_failed_to_start(log_file: Path) -> None:
    container = configure(log_file, [FailsToStartOnce()])

    assert {
        "started": False,
        "healthy": False,
        "available": False,
        "breaker": "closed",
        "last_error": "startup failed: ConnectionRefusedError",
    } == container.health()["db"]


def test_health_shows_a_started_healthy_enricher(log_file: Path) -> None:
    container = configure(log_file, [Switchable()])

    assert {
        "started": True,
        "healthy": True,
        "available": True,
        "breaker": "closed",
        "last_error": None,
    } == container.health()["db"]


def test_health_shows_an_enricher_that_failed_its_health_check(log_file: Path) -> None:
    db = Switchable()
    container = configure(log_file, [db], health_check_interval=0.05)
    db.healthy = False
    wait_until(lambda: not container.health()["db"]["available"])

    view = container.health()["db"]

    assert (True, False, False, "health check failed") == (
        view["started"],
        view["healthy"],
        view["available"],
        view["last_error"],
    )


class FailsWhileDown(Switchable):
    """Switchable whose calls fail while it is unhealthy."""

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if not self.healthy:
            raise ConnectionError("db down")
        return await super().enrich_async(logger, method_name, event_dict)


def test_the_last_error_is_kept_after_the_enricher_recovers(log_file: Path) -> None:
    # With health checks on, each passing check used to clear it: "the
    # enricher's most recent failure reason, kept after it recovers".
    db = FailsWhileDown()
    container = configure(log_file, [db], health_check_interval=0.05)
    db.healthy = False
    get_logger().info("while down")
    container.flush(5)
    went_down = wait_until(lambda: not container.health()["db"]["available"])
    while_down = container.health()["db"]["last_error"]
    db.healthy = True
    came_back = wait_until(lambda: container.health()["db"]["available"])
    time.sleep(0.2)  # more passing health checks

    assert (True, "health check failed", True, "error: ConnectionError") == (
        went_down,
        while_down,
        came_back,
        container.health()["db"]["last_error"],
    )


# -- property: no event lost ----------------------------------------------------------------


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(st.sampled_from(["log", "flip"]), min_size=1, max_size=25),
    delivery=st.sampled_from(["inline", "background"]),
)
def test_every_event_is_written_with_its_field_or_an_error_reason(
    steps: list[str], delivery: str
) -> None:
    backend = Backend(up=True)
    with tempfile.TemporaryDirectory() as directory:
        log_file = Path(directory) / "out.log"
        container = configure(
            log_file,
            [GeoLookup(backend)],
            delivery=delivery,
            breaker_failure_threshold=2,
            breaker_recovery_timeout=0.01,
        )
        log = get_logger()
        logged: list[int] = []
        for step in steps:
            if step == "flip":
                backend.up = not backend.up
            else:
                log.info("event", n=len(logged))
                logged.append(len(logged))
        container.shutdown()
        lines = read_lines(log_file)

    assert (logged, [True] * len(lines)) == (
        [line["n"] for line in lines],
        [("region" in line) != ("geo" in line.get(ERRORS, {})) for line in lines],
    )
