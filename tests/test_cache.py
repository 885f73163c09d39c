"""Tests for :mod:`enrichlog.resilience.cache`."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Hashable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from enrichlog.exceptions import CachedError
from enrichlog.resilience.cache import AsyncSmartCache, EnricherCache, cached_enricher


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def until(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds: hand-offs, not sleeps."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# -- get / set ----------------------------------------------------------------


def test_get_returns_value_that_was_set() -> None:
    cache = EnricherCache()
    cache.set("user:1", {"name": "ada"})

    actual = cache.get("user:1")

    expected = {"name": "ada"}
    assert expected == actual


def test_get_returns_none_on_miss() -> None:
    cache = EnricherCache()

    actual = cache.get("absent")

    assert actual is None


def test_get_returns_given_default_on_miss() -> None:
    cache = EnricherCache()

    actual = cache.get("absent", "fallback")

    expected = "fallback"
    assert expected == actual


def test_entry_expires_once_its_ttl_has_passed() -> None:
    clock = FakeClock()
    cache = EnricherCache(ttl=10.0, clock=clock)
    cache.set("k", "v")
    clock.now = 9.999
    still_there = cache.get("k")
    clock.now = 10.0

    actual = cache.get("k")

    expected = ("v", None)
    assert expected == (still_there, actual)


def test_ttl_given_to_set_overrides_the_default() -> None:
    clock = FakeClock()
    cache = EnricherCache(ttl=10.0, clock=clock)
    cache.set("short", 1, ttl=1.0)
    cache.set("long", 2, ttl=100.0)
    clock.now = 50.0

    actual = (cache.get("short"), cache.get("long"))

    expected = (None, 2)
    assert expected == actual


def test_least_recently_used_entry_is_evicted_when_full() -> None:
    cache = EnricherCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("c", 3)

    actual = (cache.get("a"), cache.get("b"), cache.get("c"))

    expected = (None, 2, 3)
    assert expected == actual


def test_an_entry_read_since_the_others_outlives_them() -> None:
    cache = EnricherCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")
    cache.set("c", 3)

    actual = (cache.get("a"), cache.get("b"))

    expected = (1, None)
    assert expected == actual


def test_an_entry_is_spared_once_per_read() -> None:
    # Second chance: "a" read once is spared by one eviction, then it is the
    # oldest unread entry and goes.
    cache = EnricherCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")
    cache.set("c", 3)  # spares "a", drops "b"
    cache.set("d", 4)  # "a" was not read again: it goes

    actual = (cache.get("a"), cache.get("b"), cache.get("c"), cache.get("d"))

    expected = (None, None, 3, 4)
    assert expected == actual


def test_set_of_existing_key_replaces_value_without_evicting() -> None:
    cache = EnricherCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.set("a", 10)

    actual = (cache.get("a"), cache.get("b"), cache.stats()["evictions"])

    expected = (10, 2, 0)
    assert expected == actual


def test_size_never_exceeds_max_size() -> None:
    cache = EnricherCache(max_size=5)

    sizes = []
    for number in range(50):
        cache.set(number, number)
        sizes.append(len(cache))

    expected = 5
    assert expected == max(sizes)


def test_eviction_of_an_expired_entry_counts_as_expiration() -> None:
    clock = FakeClock()
    cache = EnricherCache(max_size=2, ttl=10.0, clock=clock)
    cache.set("old", 1, ttl=1.0)
    cache.set("b", 2)
    clock.now = 5.0
    cache.set("c", 3)

    stats = cache.stats()

    expected = (1, 0)
    assert expected == (stats["expirations"], stats["evictions"])


def test_delete_forgets_the_key() -> None:
    cache = EnricherCache()
    cache.set("k", "v")
    cache.delete("k")

    actual = ("k" in cache, len(cache))

    expected = (False, 0)
    assert expected == actual


def test_delete_of_absent_key_is_a_no_op() -> None:
    cache = EnricherCache()

    cache.delete("absent")

    expected = 0
    assert expected == len(cache)


def test_clear_forgets_entries_but_keeps_counters() -> None:
    cache = EnricherCache()
    cache.set("k", "v")
    cache.get("k")
    cache.clear()

    stats = cache.stats()

    expected = (0, 1)
    assert expected == (stats["size"], stats["hits"])


def test_contains_changes_neither_stats_nor_recency() -> None:
    cache = EnricherCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    before = cache.stats()
    present = "a" in cache
    cache.set("c", 3)

    actual = (present, cache.stats()["hits"], cache.stats()["misses"], "a" in cache)

    expected = (True, before["hits"], before["misses"], False)
    assert expected == actual


def test_contains_is_false_for_an_expired_entry() -> None:
    clock = FakeClock()
    cache = EnricherCache(ttl=1.0, clock=clock)
    cache.set("k", "v")
    clock.now = 1.0

    actual = "k" in cache

    assert actual is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": 0},
        {"max_size": -1},
        {"max_size": 1.5},
        {"max_size": True},
        {"ttl": 0},
        {"ttl": -1.0},
        {"ttl": float("nan")},
        {"error_ttl": 0.0},
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        EnricherCache(**kwargs)


def test_set_with_non_positive_ttl_raises_value_error() -> None:
    cache = EnricherCache()

    with pytest.raises(ValueError, match="ttl must be a positive"):
        cache.set("k", "v", ttl=0)


# -- stats --------------------------------------------------------------------


def test_stats_before_any_lookup() -> None:
    cache = EnricherCache()

    actual = cache.stats()

    expected = {
        "hits": 0,
        "misses": 0,
        "hit_rate": 0.0,
        "evictions": 0,
        "expirations": 0,
        "size": 0,
        "in_flight": 0,
        "errors": 0,
    }
    assert expected == actual


def test_stats_count_hits_misses_and_rate() -> None:
    clock = FakeClock()
    cache = EnricherCache(ttl=1.0, clock=clock)
    cache.set("k", "v")
    cache.get("k")
    cache.get("k")
    cache.get("absent")
    clock.now = 2.0
    cache.get("k")

    stats = cache.stats()

    expected = (2, 2, 0.5, 1, 0)
    assert expected == (
        stats["hits"],
        stats["misses"],
        stats["hit_rate"],
        stats["expirations"],
        stats["size"],
    )


# -- thread safety ------------------------------------------------------------


def test_lock_free_reads_survive_concurrent_writers() -> None:
    cache = EnricherCache(max_size=8)
    errors: list[BaseException] = []
    wrong: list[tuple[int, Any]] = []

    def read() -> None:
        try:
            for number in range(20_000):
                key = number % 16
                value = cache.get(key)
                if value is not None and value != key * 10:
                    wrong.append((key, value))
        except BaseException as exc:
            errors.append(exc)

    def write() -> None:
        try:
            for number in range(20_000):
                cache.set(number % 16, (number % 16) * 10)
                if number % 7 == 0:
                    cache.delete((number + 3) % 16)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    threads += [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert (not errors, not wrong, len(cache) <= 8) == (True, True, True)


# -- stateful: the cache against a model --------------------------------------

MAX_SIZE = 3
DEFAULT_TTL = 4.0
MISSING = object()
KEYS = st.sampled_from(["a", "b", "c", "d", "e"])


class CacheAgainstModel(RuleBasedStateMachine):
    """The cache behaves like a dict + an insertion order with second chances
    (CLOCK) + expiry times."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = EnricherCache(MAX_SIZE, DEFAULT_TTL, clock=self.clock)
        self.values: dict[str, tuple[int, float]] = {}
        self.order: list[str] = []  # oldest first
        self.used: set[str] = set()  # hit since stored or last spared
        self.hits = self.misses = self.evictions = self.expirations = 0

    def _forget(self, key: str) -> None:
        del self.values[key]
        self.order.remove(key)
        self.used.discard(key)

    @rule(
        key=KEYS,
        value=st.integers(),
        ttl=st.none() | st.sampled_from([0.5, 1.0, 8.0]),
    )
    def set(self, key: str, value: int, ttl: float | None) -> None:
        now = self.clock.now
        if key in self.values:
            self._forget(key)
        elif len(self.values) >= MAX_SIZE:
            spares = len(self.order)
            while True:
                oldest = self.order[0]
                alive = now < self.values[oldest][1]
                if oldest not in self.used or not alive or spares <= 0:
                    break
                spares -= 1
                self.used.discard(oldest)
                self.order.append(self.order.pop(0))
            if now < self.values[oldest][1]:
                self.evictions += 1
            else:
                self.expirations += 1
            self._forget(oldest)
        self.values[key] = (value, now + (DEFAULT_TTL if ttl is None else ttl))
        self.order.append(key)

        self.cache.set(key, value, ttl)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        expected: object = MISSING
        if key in self.values:
            value, expires_at = self.values[key]
            if self.clock.now < expires_at:
                expected = value
                self.used.add(key)
            else:
                self._forget(key)
                self.expirations += 1
        if expected is MISSING:
            self.misses += 1
        else:
            self.hits += 1

        actual = self.cache.get(key, MISSING)

        assert expected == actual

    @rule(key=KEYS)
    def contains(self, key: str) -> None:
        expected = key in self.values and self.clock.now < self.values[key][1]

        actual = key in self.cache

        assert expected == actual

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        if key in self.values:
            self._forget(key)

        self.cache.delete(key)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def stats_match_the_model(self) -> None:
        looked_up = self.hits + self.misses
        expected = {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / looked_up if looked_up else 0.0,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "size": len(self.values),
            "in_flight": 0,
            "errors": 0,
        }

        actual = self.cache.stats()

        assert expected == actual

    @invariant()
    def size_is_bounded(self) -> None:
        assert len(self.cache) <= MAX_SIZE


CacheAgainstModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
test_cache_behaves_like_its_model = CacheAgainstModel.TestCase
test_cache_behaves_like_its_model = pytest.mark.slow(test_cache_behaves_like_its_model)


# -- get_or_compute -----------------------------------------------------------


async def test_get_or_compute_caches_an_async_result() -> None:
    cache = EnricherCache()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        return "value"

    first = await cache.get_or_compute("k", compute)
    second = await cache.get_or_compute("k", compute)

    expected = ("value", "value", 1, "value")
    assert expected == (first, second, calls, cache.get("k"))


async def test_get_or_compute_accepts_a_sync_function() -> None:
    cache = EnricherCache()

    actual = await cache.get_or_compute("k", lambda: 42)

    expected = (42, 42)
    assert expected == (actual, cache.get("k"))


async def test_get_or_compute_recomputes_after_expiry() -> None:
    clock = FakeClock()
    cache = EnricherCache(ttl=1.0, clock=clock)
    await cache.get_or_compute("k", lambda: "old")
    clock.now = 1.0

    actual = await cache.get_or_compute("k", lambda: "new")

    expected = ("new", 1)
    assert expected == (actual, cache.stats()["expirations"])


async def test_thousand_concurrent_callers_of_one_key_share_one_computation() -> None:
    cache = EnricherCache()
    release = asyncio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "shared"

    callers = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(1000)]
    await until(lambda: cache.stats()["hits"] + cache.stats()["misses"] == 1000)
    release.set()
    results = await asyncio.gather(*callers)

    expected = (1, {"shared"}, 1000)
    assert expected == (calls, set(results), len(results))


async def test_starter_of_a_computation_is_a_miss_and_joiners_are_hits() -> None:
    cache = EnricherCache()
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "v"

    callers = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(3)]
    await until(lambda: cache.stats()["hits"] == 2)
    in_flight = cache.stats()["in_flight"]
    release.set()
    await asyncio.gather(*callers)

    stats = cache.stats()

    expected = (1, 2, 1, 0)
    assert expected == (
        stats["misses"],
        stats["hits"],
        in_flight,
        stats["in_flight"],
    )


async def test_slow_key_does_not_block_another_key() -> None:
    cache = EnricherCache()
    release_slow = asyncio.Event()

    async def slow() -> str:
        await release_slow.wait()
        return "slow"

    slow_caller = asyncio.create_task(cache.get_or_compute("slow", slow))
    await until(lambda: cache.stats()["in_flight"] == 1)
    async with asyncio.timeout(5):  # a safety net only; this should not wait
        fast = await cache.get_or_compute("fast", lambda: "fast")
    still_waiting = not slow_caller.done()
    release_slow.set()
    await slow_caller

    expected = ("fast", True)
    assert expected == (fast, still_waiting)


async def test_cancelled_waiter_does_not_cancel_the_shared_computation() -> None:
    cache = EnricherCache()
    release = asyncio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "done"

    impatient = asyncio.create_task(cache.get_or_compute("k", compute))
    patient = asyncio.create_task(cache.get_or_compute("k", compute))
    await until(lambda: cache.stats()["hits"] == 1)
    impatient.cancel()
    await until(impatient.done)
    release.set()
    result = await patient

    expected = (True, "done", 1, "done")
    assert expected == (
        impatient.cancelled(),
        result,
        calls,
        cache.get("k"),
    )


async def test_computation_finishes_and_is_cached_when_its_only_waiter_leaves() -> None:
    cache = EnricherCache()
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "late"

    waiter = asyncio.create_task(cache.get_or_compute("k", compute))
    await until(lambda: cache.stats()["in_flight"] == 1)
    waiter.cancel()
    await until(waiter.done)
    release.set()
    await until(lambda: cache.stats()["in_flight"] == 0)

    expected = "late"
    assert expected == cache.get("k")


async def test_failure_with_every_waiter_gone_is_not_reported_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    cache = EnricherCache()
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        raise ValueError("backend down")

    waiter = asyncio.create_task(cache.get_or_compute("k", compute))
    await until(lambda: cache.stats()["in_flight"] == 1)
    waiter.cancel()
    await until(waiter.done)
    release.set()
    await until(lambda: cache.stats()["in_flight"] == 0)
    await asyncio.sleep(0)  # let the done callbacks run
    del waiter
    gc.collect()

    assert not reported


async def test_callers_sharing_a_failed_computation_get_the_original_exception() -> None:
    cache = EnricherCache(error_ttl=30.0)
    release = asyncio.Event()
    original = ValueError("backend down")

    async def compute() -> str:
        await release.wait()
        raise original

    callers = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(2)]
    await until(lambda: cache.stats()["hits"] == 1)
    release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)

    expected = [original, original]
    assert expected == outcomes


async def test_remembered_failure_raises_cached_error_caused_by_the_original() -> None:
    clock = FakeClock()
    cache = EnricherCache(error_ttl=30.0, clock=clock)
    original = ValueError("backend down")

    def compute() -> str:
        raise original

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", compute)
    clock.now = 29.0
    with pytest.raises(CachedError) as raised:
        await cache.get_or_compute("k", lambda: "unused")

    expected = (True, original)
    assert expected == (
        str(raised.value).startswith("Cached error for key 'k': ValueError"),
        raised.value.__cause__,
    )


async def test_remembered_failure_counts_as_hit_and_error_entry() -> None:
    cache = EnricherCache(error_ttl=30.0)

    def compute() -> str:
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", compute)
    with pytest.raises(CachedError):
        await cache.get_or_compute("k", compute)

    stats = cache.stats()

    expected = (1, 1, 1, 1)
    assert expected == (
        stats["misses"],
        stats["hits"],
        stats["errors"],
        stats["size"],
    )


async def test_remembered_failure_is_computed_again_after_error_ttl() -> None:
    clock = FakeClock()
    cache = EnricherCache(error_ttl=30.0, clock=clock)

    def fail() -> str:
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", fail)
    clock.now = 30.0

    actual = await cache.get_or_compute("k", lambda: "recovered")

    expected = ("recovered", 0)
    assert expected == (actual, cache.stats()["errors"])


async def test_failures_are_not_remembered_without_error_ttl() -> None:
    cache = EnricherCache()

    def fail() -> str:
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", fail)

    actual = await cache.get_or_compute("k", lambda: "recovered")

    expected = "recovered"
    assert expected == actual


async def test_get_treats_a_remembered_failure_as_a_miss() -> None:
    cache = EnricherCache(error_ttl=30.0)

    def fail() -> str:
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", fail)

    actual = (cache.get("k"), "k" in cache)

    expected = (None, False)
    assert expected == actual


async def test_set_replaces_a_remembered_failure() -> None:
    cache = EnricherCache(error_ttl=30.0)

    def fail() -> str:
        raise ValueError("backend down")

    with pytest.raises(ValueError, match="backend down"):
        await cache.get_or_compute("k", fail)
    cache.set("k", "fixed")

    actual = await cache.get_or_compute("k", fail)

    expected = ("fixed", 0)
    assert expected == (actual, cache.stats()["errors"])


async def test_deleting_a_key_during_its_computation_keeps_the_result_out() -> None:
    cache = EnricherCache()
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "stale"

    waiter = asyncio.create_task(cache.get_or_compute("k", compute))
    await until(lambda: cache.stats()["in_flight"] == 1)
    cache.delete("k")
    release.set()
    result = await waiter

    expected = ("stale", None, 0)
    assert expected == (result, cache.get("k"), cache.stats()["in_flight"])


async def test_cancellation_inside_the_computation_is_not_cached() -> None:
    cache = EnricherCache(error_ttl=30.0)

    async def cancelled() -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cache.get_or_compute("k", cancelled)

    actual = await cache.get_or_compute("k", lambda: "fine")

    expected = "fine"
    assert expected == actual


# -- AsyncSmartCache ----------------------------------------------------------


async def test_smart_cache_stats_count_success_and_error_entries() -> None:
    cache = AsyncSmartCache(ttl=timedelta(minutes=5), retry_interval=10.0)

    def fail() -> str:
        raise OSError("unreachable")

    await cache.get_or_compute("good", lambda: "v")
    await cache.get_or_compute("good", lambda: "v")
    with pytest.raises(OSError, match="unreachable"):
        await cache.get_or_compute("bad", fail)
    with pytest.raises(CachedError):
        await cache.get_or_compute("bad", fail)

    actual = cache.get_cache_stats()

    expected = {
        "total_entries": 2,
        "success_entries": 1,
        "error_entries": 1,
        "cache_hit_rate": 0.5,
        "hits": 2,
        "misses": 2,
    }
    assert expected == actual


async def test_smart_cache_retries_a_failed_key_after_retry_interval() -> None:
    clock = FakeClock()
    cache = AsyncSmartCache(retry_interval=timedelta(seconds=30), clock=clock)

    def fail() -> str:
        raise OSError("unreachable")

    with pytest.raises(OSError, match="unreachable"):
        await cache.get_or_compute("k", fail)
    clock.now = 29.0
    with pytest.raises(CachedError):
        await cache.get_or_compute("k", fail)
    clock.now = 30.0

    actual = await cache.get_or_compute("k", lambda: "back")

    expected = "back"
    assert expected == actual


def test_smart_cache_clear_forgets_entries() -> None:
    cache = AsyncSmartCache()

    cache.clear()

    expected = 0
    assert expected == cache.get_cache_stats()["total_entries"]


def test_smart_cache_rejects_non_positive_durations() -> None:
    with pytest.raises(ValueError, match="retry_interval must be a positive"):
        AsyncSmartCache(retry_interval=timedelta(0))


# -- cached_enricher ----------------------------------------------------------


def make_user_enricher(
    cache: EnricherCache | AsyncSmartCache,
    key_func: Any = None,
) -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    @cached_enricher(cache, key_func)
    async def add_user(
        logger: object, method_name: str, event_dict: dict[str, Any]
    ) -> dict[str, Any]:
        seen.append(dict(event_dict))
        event_dict["user_name"] = f"user-{event_dict.get('user_id')}"
        return event_dict

    return add_user, seen


def by_user(event_dict: Mapping[str, Any]) -> Hashable | None:
    user_id: Hashable | None = event_dict.get("user_id")
    return user_id


async def test_cached_enricher_runs_once_per_key() -> None:
    add_user, seen = make_user_enricher(EnricherCache(), by_user)

    await add_user(None, "info", {"event": "a", "user_id": 1})
    await add_user(None, "info", {"event": "b", "user_id": 1})
    await add_user(None, "info", {"event": "c", "user_id": 2})

    expected = 2
    assert expected == len(seen)


async def test_cached_enricher_applies_cached_changes_to_each_event() -> None:
    add_user, _ = make_user_enricher(EnricherCache(), by_user)
    await add_user(None, "info", {"event": "first", "user_id": 1})

    actual = await add_user(None, "info", {"event": "second", "user_id": 1, "x": 9})

    expected = {"event": "second", "user_id": 1, "x": 9, "user_name": "user-1"}
    assert expected == actual


async def test_cached_enricher_does_not_mutate_the_event_passed_in() -> None:
    add_user, _ = make_user_enricher(EnricherCache(), by_user)
    event = {"event": "e", "user_id": 1}

    await add_user(None, "info", event)

    expected = {"event": "e", "user_id": 1}
    assert expected == event


async def test_cached_enricher_default_key_is_method_name_and_event() -> None:
    add_user, seen = make_user_enricher(EnricherCache())

    await add_user(None, "info", {"event": "login", "user_id": 1})
    await add_user(None, "info", {"event": "login", "user_id": 2})
    await add_user(None, "warning", {"event": "login", "user_id": 3})

    expected = [1, 3]
    assert expected == [event["user_id"] for event in seen]


async def test_cached_enricher_runs_uncached_when_key_is_none() -> None:
    add_user, seen = make_user_enricher(EnricherCache(), by_user)

    await add_user(None, "info", {"event": "anonymous"})
    await add_user(None, "info", {"event": "anonymous"})

    expected = 2
    assert expected == len(seen)


async def test_cached_enricher_replays_removed_keys() -> None:
    cache = EnricherCache()

    @cached_enricher(cache, lambda event_dict: "one key")
    async def scrub(logger: object, method_name: str, event_dict: dict[str, Any]) -> None:
        event_dict.pop("password", None)
        event_dict["scrubbed"] = True

    await scrub(None, "info", {"event": "a", "password": "hunter2"})

    actual = await scrub(None, "info", {"event": "b", "password": "swordfish"})

    expected = {"event": "b", "scrubbed": True}
    assert expected == actual


async def test_cached_enricher_supports_methods() -> None:
    cache = EnricherCache()

    class Enricher:
        def __init__(self) -> None:
            self.calls = 0

        @cached_enricher(cache, by_user)
        async def enrich(
            self, logger: object, method_name: str, event_dict: dict[str, Any]
        ) -> dict[str, Any]:
            self.calls += 1
            return {**event_dict, "tenant": "acme"}

    enricher = Enricher()
    await enricher.enrich(None, "info", {"event": "a", "user_id": 1})

    actual = await enricher.enrich(None, "info", {"event": "b", "user_id": 1})

    expected = ({"event": "b", "user_id": 1, "tenant": "acme"}, 1)
    assert expected == (
        actual,
        enricher.calls,
    )


async def test_cached_enricher_works_with_async_smart_cache() -> None:
    add_user, seen = make_user_enricher(AsyncSmartCache(), by_user)

    await add_user(None, "info", {"event": "a", "user_id": 7})
    actual = await add_user(None, "info", {"event": "b", "user_id": 7})

    expected = ({"event": "b", "user_id": 7, "user_name": "user-7"}, 1)
    assert expected == (
        actual,
        len(seen),
    )


async def test_cached_enricher_rejects_a_non_mapping_return() -> None:
    @cached_enricher(EnricherCache())
    async def broken(logger: object, method_name: str, event_dict: dict[str, Any]) -> Any:
        return "not a mapping"

    with pytest.raises(TypeError, match="expected the event dict"):
        await broken(None, "info", {"event": "e"})


async def test_cached_enricher_rejects_wrong_argument_count() -> None:
    add_user, _ = make_user_enricher(EnricherCache())

    with pytest.raises(TypeError, match="takes \\(logger, method_name, event_dict\\) positionally"):
        await add_user({"event": "e"})
