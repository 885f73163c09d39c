"""Tests for :mod:`enrichlog.engine.pipeline` against a fake plan: ordering,
overflow, flush and drain, with the test deciding when each event's
enrichment completes."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog.engine.pipeline import (
    CLOSED,
    DROPPED,
    QUEUED,
    EventPipeline,
    PendingEvent,
    PipelineState,
    _Reporting,
)
from enrichlog.engine.plan import Enrichment
from enrichlog.engine.runtime import EnrichmentRuntime


class FakePlan:
    """One level; an event completes when the test says so."""

    depth = 1

    def __init__(self) -> None:
        self.started: list[Enrichment] = []
        self.advanced = threading.Event()
        self.unenriched: list[str] = []

    def advance(self, enrichment: Enrichment) -> bool:
        self.started.append(enrichment)
        self.advanced.set()
        return False

    def finish_unenriched(self, enrichment: Enrichment, outcome: Any = None) -> None:
        self.unenriched.append(enrichment.event["event"])
        enrichment.level = self.depth

    def cancel_calls(self) -> None:
        pass


class Lines:
    """A writer that keeps the events it is given."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.written = threading.Condition()

    def write(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bool:
        with self.written:
            self.events.append(event_dict["event"])
            self.written.notify_all()
        return True


@pytest.fixture
def runtime() -> Iterator[EnrichmentRuntime]:
    runtime = EnrichmentRuntime()
    runtime.start()
    yield runtime
    runtime.stop()


def make(runtime: EnrichmentRuntime, plan: FakePlan, lines: Lines, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "queue_size": 100,
        "overflow": "block",
        "block_timeout": 0.1,
        "max_in_flight": 10,
        "report_interval": 10.0,
    }
    settings.update(options)
    return EventPipeline(runtime, plan, lines, **settings)  # type: ignore[arg-type]


def event(name: str, method_name: str = "info") -> PendingEvent:
    item = PendingEvent(None, method_name, {"event": name}, 0, [None])
    item.context = contextvars.copy_context()
    return item


def complete(runtime: EnrichmentRuntime, enrichment: Enrichment) -> None:
    """Finish ``enrichment`` on the loop, as the plan would."""

    def done() -> None:
        enrichment.level = 1
        assert enrichment.on_done is not None
        enrichment.on_done(enrichment)

    runtime.call_soon(done)


def wait_for_started(plan: FakePlan, count: int) -> None:
    for _ in range(200):
        if len(plan.started) >= count:
            return
        plan.advanced.wait(0.05)
        plan.advanced.clear()
    raise AssertionError(f"only {len(plan.started)} of {count} events started")


def test_lines_leave_in_submission_order_whatever_order_enrichment_ends(
    runtime: EnrichmentRuntime,
) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    for name in ("a", "b", "c"):
        pipeline.submit(event(name))
    wait_for_started(plan, 3)

    for enrichment in reversed(plan.started):
        complete(runtime, enrichment)
    pipeline.flush(5)

    assert ["a", "b", "c"] == lines.events


def test_a_line_waits_for_the_events_logged_before_it(runtime: EnrichmentRuntime) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    pipeline.submit(event("first"))
    pipeline.submit(event("second"))
    wait_for_started(plan, 2)

    complete(runtime, plan.started[1])
    flushed_early = pipeline.flush(0.2)

    assert (False, [], 2) == (flushed_early, lines.events, pipeline.pending)


def test_drop_new_refuses_an_event_when_the_queue_is_full(runtime: EnrichmentRuntime) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines, queue_size=1, max_in_flight=1, overflow="drop_new")
    pipeline.submit(event("in flight"))
    wait_for_started(plan, 1)
    pipeline.submit(event("queued"))

    result = pipeline.submit(event("one too many"))

    assert (DROPPED, 1) == (result, pipeline.metrics()["dropped_by_kind"]["overflow"])


def test_drop_new_lets_an_error_push_out_the_newest_lower_level_event(
    runtime: EnrichmentRuntime,
) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines, queue_size=1, max_in_flight=1, overflow="drop_new")
    pipeline.submit(event("in flight"))
    wait_for_started(plan, 1)
    pipeline.submit(event("queued"))

    result = pipeline.submit(event("failure", "error"))

    assert (QUEUED, 1) == (result, pipeline.metrics()["dropped_by_kind"]["evicted"])


def test_the_high_water_is_the_deepest_the_queue_has_been(runtime: EnrichmentRuntime) -> None:
    # The loop records it when it takes events, and metrics() reads the
    # current depth too: no logging thread pays for it.
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines, max_in_flight=1)
    pipeline.submit(event("in flight"))
    wait_for_started(plan, 1)
    for name in "abcd":
        pipeline.submit(event(name))
    while_queued = pipeline.metrics()["queue_high_water"]

    for index in range(5):
        wait_for_started(plan, index + 1)
        complete(runtime, plan.started[index])
    pipeline.flush(5)
    pipeline.submit(event("alone"))
    wait_for_started(plan, 6)
    complete(runtime, plan.started[5])
    pipeline.flush(5)

    assert (4, 4, 0) == (
        while_queued,
        pipeline.metrics()["queue_high_water"],
        pipeline.metrics()["queue_depth"],
    )


def test_a_queue_that_was_full_reports_its_size_as_its_high_water(
    runtime: EnrichmentRuntime,
) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines, queue_size=2, max_in_flight=1, overflow="drop_new")
    pipeline.submit(event("in flight"))
    wait_for_started(plan, 1)
    pipeline.submit(event("a"))
    pipeline.submit(event("b"))
    pipeline.submit(event("failure", "error"))  # pushes out "b"
    pipeline.submit(event("one too many"))  # dropped

    for index in range(3):
        wait_for_started(plan, index + 1)
        complete(runtime, plan.started[index])
    pipeline.flush(5)
    metrics = pipeline.metrics()

    assert (2, 0, ["in flight", "a", "failure"]) == (
        metrics["queue_high_water"],
        metrics["queue_depth"],
        lines.events,
    )


def test_closing_still_queues_events_but_completes_them_unenriched(
    runtime: EnrichmentRuntime,
) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    pipeline.submit(event("enriched"))
    wait_for_started(plan, 1)
    pipeline.state = PipelineState.CLOSING

    result = pipeline.submit(event("late"))
    complete(runtime, plan.started[0])
    pipeline.flush(5)

    assert (QUEUED, ["late"], ["enriched", "late"]) == (result, plan.unenriched, lines.events)


def test_close_salvages_events_whose_enrichment_never_ends(runtime: EnrichmentRuntime) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    pipeline.submit(event("stuck"))
    wait_for_started(plan, 1)

    report = pipeline.close(0.1)

    assert (1, 1, ["stuck"], ["stuck"]) == (
        report["pending"],
        report["salvaged"],
        plan.unenriched,
        lines.events,
    )


def test_a_closed_and_drained_pipeline_refuses_events(runtime: EnrichmentRuntime) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    pipeline.close(1.0)

    result = pipeline.submit(event("after"))

    assert (CLOSED, PipelineState.CLOSED) == (result, pipeline.state)


def test_events_that_need_no_await_take_no_in_flight_slot(runtime: EnrichmentRuntime) -> None:
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines, max_in_flight=1)
    pipeline.submit(event("awaits"))
    wait_for_started(plan, 1)
    done_already = event("complete")
    done_already.level = 1

    pipeline.submit(done_already)
    complete(runtime, plan.started[0])
    pipeline.flush(5)

    assert (["awaits", "complete"], 1) == (lines.events, len(plan.started))


def test_an_interrupt_while_waking_the_loop_still_wakes_it_then_reaches_the_caller(
    runtime: EnrichmentRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal handler's KeyboardInterrupt landing in the wake used to leave
    # the loop said awake and asleep: every later event waited for shutdown.
    plan, lines = FakePlan(), Lines()
    pipeline = make(runtime, plan, lines)
    call_soon = runtime.call_soon
    interrupts = [KeyboardInterrupt()]

    def interrupted_once(*args: Any) -> Any:
        if interrupts:
            raise interrupts.pop()
        return call_soon(*args)

    monkeypatch.setattr(runtime, "call_soon", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        pipeline.submit(event("first"))
    pipeline.submit(event("second"))

    wait_for_started(plan, 2)
    for enrichment in plan.started:
        complete(runtime, enrichment)
    assert pipeline.flush(5)
    assert ["first", "second"] == lines.events


def test_only_the_reporting_thread_is_marked_as_reporting() -> None:
    """The hot path reads ``anywhere`` (a plain attribute) before the
    thread's own flag: both must say the truth, on each thread, and go back
    to rest when the report ends, even when it raises."""
    reporting = _Reporting()
    seen_elsewhere: list[bool] = []
    assert not reporting.anywhere
    assert not reporting.active
    with reporting.reporting():
        assert reporting.anywhere == 1
        assert reporting.active
        other = threading.Thread(target=lambda: seen_elsewhere.append(reporting.active))
        other.start()
        other.join()
    assert seen_elsewhere == [False]
    assert not reporting.anywhere
    assert not reporting.active
    with pytest.raises(ZeroDivisionError), reporting.reporting():
        1 / 0  # noqa: B018 - a handler that fails while reporting
    assert not reporting.anywhere
    assert not reporting.active
