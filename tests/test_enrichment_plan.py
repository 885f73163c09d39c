"""Tests for :mod:`enrichlog.engine.plan` without a pipeline: settling on
the calling thread, advancing on a loop, merging, failures, abandonment."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog.engine.plan import Enrichment, EnrichmentPlan
from enrichlog.engine.registry import EnricherRegistry
from enrichlog.enricher import AsyncEnricher, register_enricher
from enrichlog.settings import LoggingSettings


class Adds(AsyncEnricher):
    """Adds ``field=value`` after ``delay`` seconds; records what it saw."""

    def __init__(self, name: str, field: str, value: Any, delay: float = 0.0, **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.field, self.value, self.delay = field, value, delay
        self.seen: list[dict[str, Any]] = []

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.seen.append(dict(event_dict))
        await asyncio.sleep(self.delay)
        event_dict[self.field] = self.value
        return event_dict


class Swallows(AsyncEnricher):
    """Swallows its cancellation: keeps waiting until ``release`` is set."""

    def __init__(self, release: asyncio.Event, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = release

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue  # swallowed: keeps waiting
        return event_dict


def plan_for(*enrichers: object, **settings: Any) -> EnrichmentPlan[Enrichment]:
    levels = EnricherRegistry(enrichers).levels()

    async def run_blocking(fn: Any, *args: Any) -> Any:
        return fn(*args)

    for level in levels:
        for enricher in level:
            enricher.available = True  # started, as the lifecycle manager would
    return EnrichmentPlan(levels, LoggingSettings(**settings), run_blocking, Enrichment)


async def enrich(plan: EnrichmentPlan[Enrichment], event: EventDict) -> Enrichment | None:
    """Settle ``event``, then advance it on this loop until it completes."""
    enrichment = plan.settle(None, "info", event)
    if enrichment is None:
        return None
    done = asyncio.Event()
    enrichment.on_done = lambda _: done.set()
    if not plan.advance(enrichment):
        await asyncio.wait_for(done.wait(), 10)
    return enrichment


def add_host(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["host"] = "web-1"
    return event_dict


def test_sync_enrichers_complete_on_the_calling_thread() -> None:
    plan = plan_for(register_enricher(add_host))
    event: EventDict = {"event": "x"}

    pending = plan.settle(None, "info", event)

    assert (None, {"event": "x", "host": "web-1"}) == (pending, event)


def test_settle_stops_at_the_first_level_that_must_await() -> None:
    plan = plan_for(register_enricher(add_host), Adds("user", "user", "u1"))

    enrichment = plan.settle(None, "info", {"event": "x"})

    assert enrichment is not None
    assert enrichment.outcomes is not None
    # The level's sync outcome waits to be merged with the async one.
    assert (0, 1, {"event": "x"}) == (
        enrichment.level,
        enrichment.outcomes.count(None),
        enrichment.event,
    )


def test_advance_runs_levels_in_order_and_siblings_see_the_level_start() -> None:
    tenant = Adds("tenant", "tenant", "acme", delay=0.01)
    region = Adds("region", "region", "eu")
    plan_enricher = Adds("plan", "plan", "gold", dependencies=("tenant",))
    plan = plan_for(tenant, region, plan_enricher)
    event: EventDict = {"event": "x"}

    asyncio.run(enrich(plan, event))

    assert (
        {"event": "x", "tenant": "acme", "region": "eu", "plan": "gold"},
        [{"event": "x"}],
        [{"event": "x", "tenant": "acme", "region": "eu"}],
    ) == (event, region.seen, plan_enricher.seen)


def test_a_failing_enricher_leaves_nothing_behind_even_nested() -> None:
    class MutatesThenFails(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["ctx"]["touched"] = True
            raise ValueError("boom")

    application_owned = {"id": 1}
    plan = plan_for(MutatesThenFails(name="bad"))
    event: EventDict = {"event": "x", "ctx": application_owned}

    asyncio.run(enrich(plan, event))

    assert ({"id": 1}, {"bad": "error: ValueError"}) == (
        application_owned,
        event["enrichment_errors"],
    )


def test_dependants_of_a_failed_enricher_still_run() -> None:
    class Fails(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            raise ValueError("down")

    dependant = Adds("after", "after", True, dependencies=("first",))
    plan = plan_for(Fails(name="first"), dependant)
    event: EventDict = {"event": "x"}

    asyncio.run(enrich(plan, event))

    assert (True, {"first": "error: ValueError"}) == (event["after"], event["enrichment_errors"])


def test_finish_unenriched_marks_what_is_missing_unavailable() -> None:
    plan = plan_for(register_enricher(add_host), Adds("user", "user", "u1"))
    event: EventDict = {"event": "x"}
    enrichment = plan.settle(None, "info", event)
    assert enrichment is not None

    plan.finish_unenriched(enrichment)

    assert (plan.depth, {"user": "unavailable"}, "web-1") == (
        enrichment.level,
        event["enrichment_errors"],
        event["host"],
    )


def test_drop_event_from_an_enricher_filters_the_event() -> None:
    class Drops(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            raise structlog.DropEvent

    plan = plan_for(Drops(name="drops"))

    enrichment = asyncio.run(enrich(plan, {"event": "x"}))

    assert enrichment is not None
    assert enrichment.filtered


def test_a_call_that_ignores_cancellation_is_abandoned_and_holds_up_nothing() -> None:
    release = asyncio.Event()

    plan = plan_for(Swallows(release, name="stubborn", timeout=0.05))

    async def scenario() -> tuple[Any, ...]:
        first: EventDict = {"event": "first"}
        await enrich(plan, first)
        second: EventDict = {"event": "second"}
        await enrich(plan, second)
        abandoned = plan.enricher_metrics()["stubborn"].abandoned
        release.set()
        await asyncio.sleep(0.01)
        return (
            first["enrichment_errors"],
            second["enrichment_errors"],
            abandoned,
            plan.breaker_states()["stubborn"],
        )

    result = asyncio.run(asyncio.wait_for(scenario(), 10))

    assert ({"stubborn": "timeout"}, {"stubborn": "timeout"}, 2, "closed") == result


def test_an_abandoned_call_is_timed_before_it_is_counted_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI failed once on ``calls == latency count`` read from another thread:
    that thread saw the abandonment counted while the loop was still writing
    its warning, before the call's latency was observed."""
    from enrichlog.resilience import guard as guard_module

    release = asyncio.Event()
    seen_during_warning: list[tuple[int, int]] = []

    plan = plan_for(Swallows(release, name="stubborn", timeout=0.05))
    warning = guard_module._report.warning

    def reading_metrics(*args: Any, **kwargs: Any) -> None:
        metrics = plan.enricher_metrics()["stubborn"]
        seen_during_warning.append((metrics.abandoned, metrics.latency.count))
        warning(*args, **kwargs)

    monkeypatch.setattr(guard_module._report, "warning", reading_metrics)

    async def scenario() -> None:
        await enrich(plan, {"event": "x"})
        release.set()
        await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(scenario(), 10))

    assert [(1, 1)] == seen_during_warning


@pytest.mark.parametrize("level_timeout", [0.05])
def test_level_timeout_shorter_than_an_enricher_timeout_bounds_the_level(
    level_timeout: float,
) -> None:
    slow = Adds("slow", "slow", True, delay=5, timeout=2)
    plan = plan_for(slow, level_timeout=level_timeout)
    event: EventDict = {"event": "x"}

    asyncio.run(asyncio.wait_for(enrich(plan, event), 3))

    assert {"slow": "timeout"} == event["enrichment_errors"]


def test_the_wait_bound_counts_the_wait_for_a_concurrency_slot() -> None:
    grace = 0.5  # an abandoned call's grace
    limited = plan_for(Adds("a", "x", 1, timeout=1.0, max_concurrency=1))
    bounded = plan_for(Adds("a", "x", 1, timeout=1.0, max_concurrency=1), level_timeout=1.5)

    # A slot may take the timeout to come, then the call takes the timeout.
    assert (1.0 + 1.0 + grace, 1.5) == (limited.wait_bound(), bounded.wait_bound())
