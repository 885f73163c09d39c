"""Batched lookups: enrichers with ``enrich_many`` and ``apply``."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from structlog.typing import EventDict

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.testing import LineSink
from tests.helpers import read_lines

ERRORS = "enrichment_errors"


class Users(AsyncEnricher):
    """Looks users up many at a time; records every call's keys."""

    name = "users"

    def __init__(
        self,
        known: Mapping[int, Any] | None = None,
        delay: float = 0.0,
        fail: BaseException | None = None,
        gate: threading.Event | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.known = dict(known if known is not None else {i: f"user-{i}" for i in range(100)})
        self.delay = delay
        self.fail = fail
        self.gate = gate
        self.calls: list[list[Hashable]] = []

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.calls.append(list(keys))
        if self.gate is not None:
            while not self.gate.is_set():
                await asyncio.sleep(0.001)
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return {key: self.known[key] for key in keys if key in self.known}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["user"] = value
        return event_dict


def configure(log_file: Path, enricher: Users, **settings: Any) -> Any:
    settings.setdefault("delivery", "background")
    return configure_logging(enrichers=[enricher], output=str(log_file), **settings)


def log_users(user_ids: Sequence[int | None]) -> None:
    log = get_logger()
    for user_id in user_ids:
        if user_id is None:
            log.info("anonymous")
        else:
            log.info("request", user_id=user_id)


#: Long enough for a test to log its events into one batch: keys arriving
#: within the window share a call.
WINDOW = 0.5


def test_events_logged_within_the_batch_window_share_one_call(log_file: Path) -> None:
    users = Users(batch_window=WINDOW)
    container = configure(log_file, users)
    log_users(range(1, 40))

    container.shutdown()

    lines = read_lines(log_file)
    assert (39, [f"user-{i}" for i in range(1, 40)], [list(range(1, 40))]) == (
        len(lines),
        [ln["user"] for ln in lines],
        [sorted(call) for call in users.calls],
    )


def test_a_key_is_asked_once_however_many_events_carry_it(log_file: Path) -> None:
    users = Users(batch_window=WINDOW)
    container = configure(log_file, users)
    log_users([7, 7, 8, 7, 8])

    container.shutdown()

    assert [[7, 8]] == [sorted(call) for call in users.calls]
    assert ["user-7", "user-7", "user-8", "user-7", "user-8"] == [
        ln["user"] for ln in read_lines(log_file)
    ]


def test_an_event_whose_key_is_being_fetched_waits_for_that_fetch(log_file: Path) -> None:
    gate = threading.Event()
    users = Users(gate=gate)
    container = configure(log_file, users)
    log_users([3])
    for _ in range(1000):  # until the first call is out
        if users.calls:
            break
        threading.Event().wait(0.005)
    log_users([3])

    gate.set()
    container.shutdown()

    assert ([[3]], ["user-3", "user-3"]) == (
        users.calls,
        [ln["user"] for ln in read_lines(log_file)],
    )


def test_a_key_missing_from_the_answer_adds_nothing_and_is_no_error(log_file: Path) -> None:
    container = configure(log_file, Users(known={1: "ann"}), delivery="inline")
    log_users([1, 2])
    container.shutdown()

    assert [("ann", None), (None, None)] == [
        (ln.get("user"), ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


def test_an_event_without_a_key_is_not_looked_up(log_file: Path) -> None:
    users = Users()
    container = configure(log_file, users, delivery="inline")
    log_users([None])
    container.shutdown()

    assert ([], [(None, None)]) == (
        users.calls,
        [(ln.get("user"), ln.get(ERRORS)) for ln in read_lines(log_file)],
    )


def test_a_failing_batch_fails_every_event_with_the_same_reason(log_file: Path) -> None:
    users = Users(batch_window=WINDOW, fail=ConnectionError("db down"))
    container = configure(log_file, users)
    log_users([1, 2, 3, 4])

    container.shutdown()

    assert [{"users": "error: ConnectionError"}] * 4 == [ln[ERRORS] for ln in read_lines(log_file)]
    assert (1, 1) == (len(users.calls), container.metrics().enrichers["users"].failures)


def test_one_failing_batch_is_one_failure_for_the_breaker(log_file: Path) -> None:
    users = Users(batch_window=WINDOW, fail=ConnectionError("db down"), failure_threshold=2)
    container = configure(log_file, users)
    log_users(range(10))
    container.flush(10)

    breaker = container.health()["users"]["breaker"]
    container.shutdown()

    assert "closed" == breaker


def test_an_exception_as_a_value_fails_that_key_alone(log_file: Path) -> None:
    container = configure(
        log_file, Users(known={1: "ann", 2: LookupError("bad row")}), delivery="inline"
    )
    log_users([1, 2])
    container.shutdown()

    assert [("ann", None), (None, {"users": "error: LookupError"})] == [
        (ln.get("user"), ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


class Flaky(Users):
    """Answers a key with ConnectionError its first ``failures[key]`` times."""

    def __init__(self, failures: dict[int, int], **kw: Any) -> None:
        super().__init__(**kw)
        self.failures = failures
        self.deadlines: list[float | None] = []

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.deadlines.append(self.batch_deadline())
        found = dict(await super().enrich_many(keys))
        for key in keys:
            if self.failures.get(key, 0) > 0:  # type: ignore[call-overload]
                self.failures[key] -= 1  # type: ignore[index]
                found[key] = ConnectionError("reset")
        return found


def test_a_key_that_failed_transiently_is_retried_alone(log_file: Path) -> None:
    # Found by an outside tester: retries ran only for a batch that failed as
    # a whole, so under load (keys batched) a transient failure was not
    # retried. Each key gets retry_attempts attempts in all.
    users = Flaky({2: 1, 3: 5}, retry_attempts=3, retry_base_delay=0.001, batch_window=WINDOW)
    container = configure(log_file, users)
    log_users([1, 2, 3])
    container.flush(10)
    retries = container.metrics().enrichers["users"].retries
    container.shutdown()

    assert [[1, 2, 3], [2, 3], [3]] == users.calls
    assert 2 == retries  # backend calls made again
    assert [("user-1", None), ("user-2", None), (None, {"users": "error: ConnectionError"})] == [
        (ln.get("user"), ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


def test_a_timeout_error_as_a_value_or_raised_is_the_reason_timeout(log_file: Path) -> None:
    users = Users(known={1: "ann", 2: TimeoutError("no answer")})
    container = configure(log_file, users, delivery="inline")
    log_users([1, 2])
    users.fail = TimeoutError("pool exhausted")
    log_users([3])
    container.shutdown()

    assert [None, {"users": "timeout"}, {"users": "timeout"}] == [
        ln.get(ERRORS) for ln in read_lines(log_file)
    ]


def test_enrich_many_knows_when_the_runtime_times_it_out(log_file: Path) -> None:
    users = Flaky({}, timeout=0.5)
    container = configure(log_file, users, delivery="inline")
    loop = container._runtime.loop
    before = asyncio.run_coroutine_threadsafe(_loop_time(), loop).result()
    log_users([1])
    container.shutdown()

    (deadline,) = users.deadlines
    assert deadline is not None
    assert before + 0.5 <= deadline < before + 0.5 + 5.0
    assert users.batch_deadline() is None  # outside a call


async def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def test_a_failed_batch_is_remembered_for_cache_error_ttl(log_file: Path) -> None:
    users = Users(fail=ConnectionError("db down"), cache_error_ttl=60)
    container = configure(log_file, users, delivery="inline")
    log_users([1, 2])
    log_users([1, 2, 1])  # remembered: no second call for these keys
    users.fail = None
    log_users([3])  # a key never asked is looked up
    container.shutdown()

    assert [[1], [2], [3]] == users.calls
    assert [{"users": "error: ConnectionError"}] * 5 + [None] == [
        ln.get(ERRORS) for ln in read_lines(log_file)
    ]


def test_a_key_that_failed_alone_is_remembered_for_cache_error_ttl(log_file: Path) -> None:
    users = Users(known={1: "ann", 2: LookupError("bad row")}, cache_error_ttl=60)
    container = configure(log_file, users, delivery="inline")
    log_users([1, 2, 2])
    container.shutdown()

    assert [[1], [2]] == users.calls
    assert [None, {"users": "error: LookupError"}, {"users": "error: LookupError"}] == [
        ln.get(ERRORS) for ln in read_lines(log_file)
    ]


def test_a_failed_key_is_remembered_for_the_default_cache_error_ttl_too(log_file: Path) -> None:
    users = Users(fail=ConnectionError("db down"))
    container = configure(log_file, users, delivery="inline")
    log_users([1, 1])
    remembered = container.metrics().enrichers["users"].cache
    container.shutdown()

    assert [[1]] == users.calls
    assert remembered is not None
    assert 1 == remembered["errors"]


def test_a_looked_up_key_is_served_from_the_cache_on_the_calling_thread(log_file: Path) -> None:
    users = Users()
    container = configure(log_file, users, delivery="inline")
    log_users([5])
    handed_off = container.metrics()["handed_off"]

    log_users([5, 5])
    container.shutdown()

    assert (1, handed_off) == (len(users.calls), container.metrics()["handed_off"])
    assert ["user-5"] * 3 == [ln["user"] for ln in read_lines(log_file)]


def test_a_batch_past_its_timeout_fails_its_events_with_timeout(log_file: Path) -> None:
    container = configure(log_file, Users(delay=5, timeout=0.05), delivery="inline")
    log_users([1])
    container.shutdown()

    assert [{"users": "timeout"}] == [ln[ERRORS] for ln in read_lines(log_file)]


def test_metrics_count_backend_calls_and_keys(log_file: Path) -> None:
    users = Users(batch_window=WINDOW)
    container = configure(log_file, users)
    log_users(range(5))
    container.flush(10)
    log_users(range(5, 11))
    container.flush(10)

    metrics = container.metrics().enrichers["users"]
    container.shutdown()

    assert (2, 11, 5.5) == (metrics.batch_calls, metrics.batch_keys, metrics.keys_per_batch)


def test_batch_size_bounds_the_keys_of_one_call(log_file: Path) -> None:
    users = Users(batch_window=WINDOW, batch_size=4)
    container = configure(log_file, users)
    log_users(range(11))

    container.shutdown()

    assert [4, 4, 3] == sorted((len(call) for call in users.calls), reverse=True)
    assert list(range(11)) == sorted(key for call in users.calls for key in call)


REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")


class SeesTheContext(Users):
    """Records the request each ``enrich_many`` call runs in."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.requests: list[str] = []

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.requests.append(REQUEST.get())
        return await super().enrich_many(keys)


def test_a_batch_runs_in_the_context_of_its_first_event(log_file: Path) -> None:
    users = SeesTheContext(batch_window=WINDOW, batch_size=3)  # full: sent by the third
    container = configure(log_file, users)
    log = get_logger()
    for user_id in (1, 2, 3):
        REQUEST.set(f"request-{user_id}")
        log.info("request", user_id=user_id)
    container.shutdown()

    assert ([[1, 2, 3]], ["request-1"]) == (users.calls, users.requests)


# -- found by the outside attack round -------------------------------------------------


class ByKey(AsyncEnricher):
    """Answers every key of a batch after 2 ms."""

    name = "e"
    timeout = 0.5

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict["k"]

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        await asyncio.sleep(0.002)
        return {key: key for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["v"] = value
        return event_dict


def test_a_burst_over_few_keys_completes_every_event_enriched() -> None:
    # Events whose keys a batch had just cached completed while they were
    # being started; each completion started the next event from inside
    # the last one's start: recursion without bound, events stuck in flight
    # until shutdown and some written 'unavailable'.
    sink = LineSink()
    container = configure_logging(enrichers=[ByKey()], output=sink)
    log = get_logger()
    for i in range(2_000):
        log.info("x", k=i % 5, i=i)

    flushed = container.flush(timeout=10)
    pending = container.metrics()["pending"]
    container.shutdown()

    lines = [json.loads(line) for line in sink.lines]
    assert (True, 0, 2_000) == (flushed, pending, len(lines))
    assert [] == [ln for ln in lines if ERRORS in ln or ln["v"] != ln["k"]]


def test_a_key_is_fetched_once_while_its_answer_reaches_its_events(log_file: Path) -> None:
    # The keys of a batch were released before they were cached: events let
    # in by the batch's first completions fetched keys it had just answered.
    users = Users()
    container = configure(log_file, users)
    log_users([i % 100 for i in range(3_000)])
    container.shutdown()

    fetched = [key for call in users.calls for key in call]
    assert sorted(set(fetched)) == sorted(fetched)
    assert 3_000 == len(read_lines(log_file))


def test_cache_lookups_are_counted_once_per_event(log_file: Path) -> None:
    # The loop looked the key up again (and counted it) after the logging
    # thread had: 6,000 lookups counted for 3,000 events.
    users = Users()
    container = configure(log_file, users)
    log_users([i % 100 for i in range(3_000)])
    container.flush()
    metrics = container.metrics().enrichers["users"]
    container.shutdown()

    assert 3_000 == metrics.cache_hits + metrics.cache_misses


class AppliesAList(Users):
    def apply(self, event_dict: EventDict, value: Any) -> Any:
        return [value]


def test_apply_returning_no_mapping_is_an_invalid_return(log_file: Path) -> None:
    container = configure(log_file, AppliesAList(), delivery="inline")
    log_users([1, 2])
    container.shutdown()

    assert [{"users": "invalid_return"}] * 2 == [ln[ERRORS] for ln in read_lines(log_file)]


def _wait_for(condition: Any) -> None:
    for _ in range(2_000):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError("timed out")


# Found by an outside tester: a batch skipped as a whole (circuit open, no
# concurrency slot in time) gave each of its events the reason, but counted
# one skip for the batch; the docs count skipped *events*.
def test_a_batch_skipped_because_the_circuit_opened_counts_each_event(log_file: Path) -> None:
    gate = threading.Event()
    users = Users(gate=gate, fail=ConnectionError("db down"), failure_threshold=1)
    container = configure(log_file, users)
    log_users([0])
    _wait_for(lambda: len(users.calls) == 1)
    log_users([1])
    _wait_for(lambda: len(users.calls) == 2)  # two batches out: the next keys gather
    log_users(range(2, 12))
    gate.set()  # both calls fail: the circuit opens before the gathered keys go
    container.flush(10)
    reasons = container.metrics().enrichers["users"].failures_by_reason
    container.shutdown()

    skipped = [ln for ln in read_lines(log_file) if ln[ERRORS] == {"users": "circuit_open"}]
    assert (2, 10, 10) == (len(users.calls), len(skipped), reasons["circuit_open"])


class Stubborn(Users):
    """Its first call ignores its cancellation until the gate opens."""

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        if self.calls:
            return await super().enrich_many(keys)
        self.calls.append(list(keys))
        assert self.gate is not None
        while not self.gate.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.001)
        return {}


def test_a_batch_that_got_no_concurrency_slot_counts_each_event_overloaded(
    log_file: Path,
) -> None:
    gate = threading.Event()
    users = Stubborn(gate=gate, max_concurrency=1, timeout=0.1)
    container = configure(log_file, users)
    log_users([0])  # holds the only slot past its timeout and the grace
    _wait_for(lambda: len(users.calls) == 1)
    log_users(range(1, 11))
    _wait_for(lambda: container.metrics().enrichers["users"].abandoned == 1)
    gate.set()
    container.flush(10)
    reasons = container.metrics().enrichers["users"].failures_by_reason
    container.shutdown()

    overloaded = [ln for ln in read_lines(log_file) if ln[ERRORS] == {"users": "overloaded"}]
    assert (10, 10) == (len(overloaded), reasons["overloaded"])


class Stalled(Users):
    """Its first two calls ignore their cancellation until ``released`` is
    set (a connection that stopped answering)."""

    released = threading.Event()

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        if len(self.calls) >= 2:
            return await super().enrich_many(keys)
        self.calls.append(list(keys))
        while not self.released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.001)
        return {}


# Found by an outside tester (a PostgreSQL connection stalled behind a
# proxy): keys that gathered while two abandoned batches were out waited
# for the next event to arrive, and with none, until shutdown; every later
# line waited behind them.
def test_keys_gathered_behind_abandoned_batches_go_without_a_later_event(
    log_file: Path,
) -> None:
    users = Stalled(timeout=0.1)
    users.released = threading.Event()
    container = configure(log_file, users)
    log_users([0])
    _wait_for(lambda: len(users.calls) == 1)
    log_users([1])
    _wait_for(lambda: len(users.calls) == 2)  # two batches out: the next keys gather
    log_users([2, 3, None])

    try:
        written = container.flush(10)  # nothing else is logged
        lines = read_lines(log_file)
    finally:
        users.released.set()
        container.shutdown()

    assert written
    assert [ln.get("user") for ln in lines] == [None, None, "user-2", "user-3", None]
    assert [ln.get(ERRORS) for ln in lines[:2]] == [{"users": "timeout"}] * 2
    assert (container.metrics().enrichers["users"].abandoned, users.calls[2]) == (2, [2, 3])
