"""Found by the twelfth outside attack round (testers with only the README
and the docs: cached and batched enrichers against their per-event twins;
metrics, health and Prometheus against what happened), each kept as a test."""

from __future__ import annotations

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
    reported = [
        int(line.split("dropped ", 1)[1].split()[0])
        for line in proc.stderr.splitlines()
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
