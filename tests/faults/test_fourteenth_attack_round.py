"""Found by the fourteenth outside attack round (testers with only the README
and the docs: batched lookups and the built-in PostgreSQL, Redis and HTTP
lookups under faults; the loop runtime, reconfiguring and the loop's end),
each kept as a test."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.testing import LineSink


class Incomparable:
    """A hashable key that cannot be compared (its ``__eq__`` raises)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")


class IncomparableKeys(AsyncEnricher):
    name = "u"
    cache_ttl = 60.0

    def __init__(self, batched: bool) -> None:
        super().__init__()
        self.batched = batched

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return Incomparable(event_dict["k"])


class BatchedIncomparable(IncomparableKeys):
    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        await asyncio.sleep(0.01)
        return dict.fromkeys(keys, 1)

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["x"] = value
        return event_dict


class PerEventIncomparable(IncomparableKeys):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.01)
        event_dict["x"] = 1
        return event_dict


@pytest.mark.parametrize("enricher", [BatchedIncomparable, PerEventIncomparable])
def test_a_key_that_cannot_be_compared_fails_its_events_with_error_and_counts_them(
    enricher: type[IncomparableKeys], caplog: pytest.LogCaptureFixture
) -> None:
    # Batched, 79 of 200 events were written as "unavailable" after a
    # traceback of the batch's bookkeeping on stderr, and counted nowhere.
    sink = LineSink()
    container = configure_logging(enrichers=[enricher(batched=True)], output=sink)
    log = get_logger()
    for seq in range(200):
        log.info("ev", seq=seq, k=seq % 2)
    container.shutdown()

    events = sink.events()
    assert list(range(200)) == sorted(event["seq"] for event in events)
    reasons = {event.get("enrichment_errors", {}).get("u", event.get("x")) for event in events}
    assert reasons <= {"error: RuntimeError", 1}, reasons
    failed = sum(1 for event in events if "enrichment_errors" in event)
    metrics = container.metrics()["enrichers"]["u"]
    assert failed == metrics["failures_by_reason"].get("error", 0)
    assert "enriching an event failed" not in caplog.text


class ApplyFails(AsyncEnricher):
    """One key; ``apply`` fails (raises, or returns something not a mapping)."""

    name = "u"
    cache_error_ttl = 60.0
    failure_threshold = 1000

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.asked: list[Hashable] = []

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("k")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.asked.extend(keys)
        if self.how == "unreadable":
            return _Unreadable(dict.fromkeys(keys, "v"))
        return dict.fromkeys(keys, "v")

    def apply(self, event_dict: EventDict, value: Any) -> Any:
        if self.how == "raises":
            raise ValueError("apply")
        if self.how == "not a mapping":
            return 42
        event_dict["x"] = value
        return event_dict


class _Unreadable(dict[Hashable, Any]):
    """An answer that fails whenever it is read."""

    def __getitem__(self, key: Hashable) -> Any:
        raise RuntimeError("unreadable")

    def get(self, key: Hashable, default: Any = None) -> Any:
        raise RuntimeError("unreadable")


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("raises", "error: ValueError"),
        ("not a mapping", "invalid_return"),
        ("unreadable", "error: RuntimeError"),
    ],
)
def test_a_key_whose_value_cannot_be_applied_is_remembered_as_failed(
    how: str, reason: str
) -> None:
    # The failure was not remembered: the backend was asked again for
    # every event (5 calls for 5 events of one key), while a failed call or
    # an exception as the key's value is asked once for cache_error_ttl.
    enricher = ApplyFails(how)
    sink = LineSink()
    container = configure_logging(enrichers=[enricher], output=sink)
    log = get_logger()
    for seq in range(5):
        log.info("ev", seq=seq, k=1)
        assert container.flush(timeout=10)
    container.shutdown()

    assert [1] == enricher.asked
    assert [reason] * 5 == [event["enrichment_errors"]["u"] for event in sink.events()]
    metrics = container.metrics()["enrichers"]["u"]
    assert (1, 4) == (metrics["cache_misses"], metrics["cache_hits"])
