"""Found by the twelfth outside attack round (testers with only the README
and the docs: cached and batched enrichers against their per-event twins;
metrics, health and Prometheus against what happened), each kept as a test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.testing import LineSink
from tests.faults.test_eleventh_attack_round import run_code


class BatchedTier(AsyncEnricher):
    """A batching lookup with no row for user 1."""

    name = "tier"

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        return {key: LookupError("no row") if key == 1 else "gold" for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["tier"] = value
        return event_dict


class PerEventTier(AsyncEnricher):
    """The same lookup, per event and uncached."""

    name = "tier"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if event_dict["user_id"] == 1:
            raise LookupError("no row")
        event_dict["tier"] = "gold"
        return event_dict


@pytest.mark.parametrize("enricher", [BatchedTier, PerEventTier])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_the_applications_own_error_dict_never_carries_one_events_reasons_to_another(
    enricher: type[AsyncEnricher], delivery: str
) -> None:
    # The reasons were added to the application's dict in place: it kept
    # them, and every other event passing it read as failed.
    own = {"app": "quota"}
    sink = LineSink()
    container = configure_logging(enrichers=[enricher()], output=sink, delivery=delivery)
    log = get_logger()

    log.info("ok", user_id=2, enrichment_errors=own)
    log.info("fails", user_id=1, enrichment_errors=own)
    log.info("ok again", user_id=2, enrichment_errors=own)
    container.shutdown()

    assert {"app": "quota"} == own
    assert [
        ({"app": "quota"}, "gold"),
        ({"app": "quota", "tier": "error: LookupError"}, None),
        ({"app": "quota"}, "gold"),
    ] == [(event["enrichment_errors"], event.get("tier")) for event in sink.events()]


def test_a_bound_error_dict_is_not_changed_either() -> None:
    own: dict[str, Any] = {}
    sink = LineSink()
    container = configure_logging(enrichers=[PerEventTier()], output=sink)
    log = get_logger().bind(enrichment_errors=own)

    log.info("fails", user_id=1)
    log.info("ok", user_id=2)
    container.shutdown()

    assert {} == own
    assert [{"tier": "error: LookupError"}, {}] == [
        event["enrichment_errors"] for event in sink.events()
    ]


DROPS_ON_THE_LOOP = """
    import asyncio, sys
    from enrichlog import AsyncEnricher, configure_logging, get_logger

    class Slow(AsyncEnricher):
        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0.01)
            event_dict["slow"] = 1
            return event_dict

    how = sys.argv[1]

    async def main():
        container = configure_logging(
            enrichers=[Slow()], output="/dev/null", runtime="loop",
            overflow="drop_new", queue_size=100,
        )
        await container.astartup()
        for i in range(1000):
            get_logger().info("event", i=i)  # a sync call on the loop: dropped when full
        print("dropped", container.metrics()["dropped"], file=sys.stderr)
        if how == "ashutdown":
            await container.ashutdown()

    asyncio.run(main())
    print("after asyncio.run", file=sys.stderr)
"""


@pytest.mark.parametrize("how", ["ashutdown", "loop_end"])
def test_drops_on_the_loop_runtime_are_all_reported_by_shutdown(how: str) -> None:
    # Only the first drop was reported; "the rest at shutdown" never came
    # with runtime="loop" (ashutdown, or the loop ending without it).
    proc = run_code(DROPS_ON_THE_LOOP, how)

    assert 0 == proc.returncode, proc.stderr
    (dropped,) = (
        int(line.split()[1]) for line in proc.stderr.splitlines() if "dropped " in line[:8]
    )
    # Reported by the time asyncio.run returns, not at the next shutdown or
    # at exit (lost if the process dies first).
    before_the_end = proc.stderr.split("after asyncio.run", 1)[0]
    reported = [
        int(line.split("dropped ", 1)[1].split()[0])
        for line in before_the_end.splitlines()
        if line.startswith("enrichlog dropped")
    ]
    assert dropped > 0
    assert dropped == sum(reported), proc.stderr


def test_drops_reported_add_up_to_the_drops_in_the_thread_runtime_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    container = configure_logging(
        enrichers=[PerEventTier()],
        output=LineSink(),
        delivery="background",
        overflow="drop_new",
        queue_size=10,
    )
    log = get_logger()
    with caplog.at_level("WARNING", logger="enrichlog"):
        for i in range(2_000):
            log.info("event", user_id=2, i=i)
        report = container.shutdown()

    reported = [
        int(record.getMessage().split("dropped ", 1)[1].split()[0])
        for record in caplog.records
        if record.getMessage().startswith("enrichlog dropped")
    ]
    assert report["dropped"] > 0
    assert 2_000 == report["written"] + report["dropped"]
    assert report["dropped"] == sum(reported)


class Staller(AsyncEnricher):
    """Blocks the runtime's loop for a second on the event marked ``stall``."""

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if event_dict.get("stall"):
            time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop is the fault under test
        return event_dict


class Polite(AsyncEnricher):
    """Slow on events marked ``slow``; honours every cancellation at once."""

    timeout = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = 0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        try:
            await asyncio.sleep(5.0 if event_dict.get("slow") else 0.0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        event_dict["polite"] = True
        return event_dict


def test_a_call_cancelled_late_by_a_blocked_loop_is_not_abandoned() -> None:
    # Its grace was measured from the deadline, not from the cancellation:
    # a loop blocked past deadline + grace abandoned calls the moment it
    # cancelled them, which never had a chance to answer. They were reported
    # as having ignored their cancellation, counted against the breaker,
    # which opened on a healthy enricher.
    polite = Polite()
    sink = LineSink()
    container = configure_logging(enrichers=[Staller(), polite], output=sink, delivery="background")
    log = get_logger()
    for i in range(4):
        log.info("slow", i=i, slow=True)
    log.info("stall", stall=True)
    container.flush()
    for i in range(10):
        log.info("after", i=i)
    container.shutdown()

    polite_metrics = container.metrics()["enrichers"]["polite"]
    assert 0 == polite_metrics["abandoned"]
    assert 4 == polite.cancelled
    assert "closed" == container.health()["polite"]["breaker"]
    events = sink.events()
    assert 15 == len(events)
    assert all(event.get("polite") for event in events if event["event"] == "after")


class CancelledInside(AsyncEnricher):
    """A backend client whose inner task was cancelled: CancelledError
    escapes, though nobody cancelled the enricher."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls = 0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner
        return event_dict


def test_a_cancelled_error_the_enricher_raises_itself_opens_the_circuit() -> None:
    # It was an error in the line and the metrics, and nothing for the
    # breaker: a backend failing this way was called for every event.
    enricher = CancelledInside(failure_threshold=3)
    sink = LineSink()
    container = configure_logging(enrichers=[enricher], output=sink, delivery="inline")
    log = get_logger()
    for i in range(20):
        log.info("event", i=i)
    container.shutdown()

    reasons = [event["enrichment_errors"]["cancelled_inside"] for event in sink.events()]
    assert 3 == enricher.calls
    assert ["error: CancelledError"] * 3 + ["circuit_open"] * 17 == reasons
    assert "open" == container.health()["cancelled_inside"]["breaker"]


class FlakyKeys(AsyncEnricher):
    """A batching lookup whose even keys fail once, transiently."""

    retry_attempts = 3
    retry_base_delay = 0.001
    retry_max_delay = 0.002

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []
        self.failed: set[Hashable] = set()

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict["k"]

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.asked.append(len(keys))
        answers: dict[Hashable, Any] = {}
        for key in keys:
            if key % 2 == 0 and key not in self.failed:  # type: ignore[operator]
                self.failed.add(key)
                answers[key] = OSError("transient")
            else:
                answers[key] = key
        return answers

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["flaky"] = value
        return event_dict


def test_batch_counters_count_the_calls_that_retry_failed_keys() -> None:
    # The enrich_many() calls asking the failed keys again were left out of
    # batch_calls and batch_keys: the backend's load read low.
    enricher = FlakyKeys()
    sink = LineSink()
    container = configure_logging(enrichers=[enricher], output=sink, batch_window=0.05)
    log = get_logger()
    for k in range(10):
        log.info("event", k=k)
    container.shutdown()

    counted = container.metrics()["enrichers"]["flaky_keys"]
    assert len(enricher.asked) >= 2  # the batch, then its failed keys again
    assert (len(enricher.asked), sum(enricher.asked)) == (
        counted["batch_calls"],
        counted["batch_keys"],
    )
    assert list(range(10)) == [event["flaky"] for event in sink.events()]


class SlowCleanup(AsyncEnricher):
    """Honours its cancellation, with a clean-up of two short awaits."""

    timeout = 0.3

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
        return event_dict


class SerialStaller(AsyncEnricher):
    """Blocks the loop 0.8 s per event marked ``stall``, one event at a time."""

    max_concurrency = 1
    timeout = 30.0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if event_dict.get("stall"):
            await asyncio.sleep(0.02)
            time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is the fault under test
        return event_dict


def test_a_clean_up_the_loop_was_blocked_through_is_given_its_grace_again() -> None:
    # Back-to-back stalls: the grace after the late cancellation passed
    # while the loop was blocked again, and a call whose clean-up takes a
    # few turns was abandoned (and counted against its breaker).
    sink = LineSink()
    container = configure_logging(
        enrichers=[SlowCleanup(), SerialStaller()],
        output=sink,
        delivery="background",
        level_timeout=60.0,
    )
    log = get_logger()
    log.info("first", stall=True)
    log.info("second", stall=True)
    container.shutdown()

    assert 0 == container.metrics()["enrichers"]["slow_cleanup"]["abandoned"]
    assert 2 == len(sink.events())
