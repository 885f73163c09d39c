"""Tests for :mod:`enrichlog.engine.processor`: ``AsyncEnricherProcessor`` used
directly as a structlog processor, without a container."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog import configure_logging, get_logger
from enrichlog.container import LoggingContainer
from enrichlog.engine.processor import AsyncEnricherProcessor
from enrichlog.enricher import AsyncEnricher, register_enricher
from enrichlog.exceptions import EnricherDependencyError
from enrichlog.settings import LoggingSettings


class Lines:
    """A wrapped logger that keeps what it is given to write."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def info(self, line: str) -> None:
        self.lines.append(json.loads(line))

    warning = error = info


def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    return json.dumps(event_dict, sort_keys=True)


class Tenant(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        event_dict["tenant"] = "acme"
        return event_dict


class Plan(AsyncEnricher):
    dependencies = ("tenant",)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["plan"] = {"acme": "gold"}.get(event_dict.get("tenant"), "none")
        return event_dict


def add_host(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["host"] = "web-1"
    return event_dict


@pytest.fixture
def make_processor() -> Iterator[Any]:
    """Builds started processors (inline delivery, JSON tail) and shuts them
    down after the test."""
    built: list[AsyncEnricherProcessor] = []

    def make(enrichers: Iterable[object], **settings: Any) -> AsyncEnricherProcessor:
        settings.setdefault("delivery", "inline")
        processor = LoggingContainer(LoggingSettings(**settings), list(enrichers)).processor
        assert processor is not None
        processor.set_tail([render])
        processor.startup(timeout=10)
        built.append(processor)
        return processor

    yield make
    for processor in built:
        processor.shutdown(timeout=5)


def call(
    processor: AsyncEnricherProcessor, logger: Lines, event_dict: EventDict
) -> EventDict | None:
    """Call the processor as structlog would: ``None`` when it took the event
    over (``DropEvent``) to write it itself."""
    try:
        return processor(logger, "info", event_dict)
    except structlog.DropEvent:
        return None


def test_sync_only_plan_returns_the_enriched_event_to_the_chain(
    make_processor: Any,
) -> None:
    processor = make_processor([add_host])
    logger = Lines()

    result = call(processor, logger, {"event": "hello"})

    assert ({"event": "hello", "host": "web-1"}, []) == (result, logger.lines)


def test_async_plan_takes_the_event_over_and_writes_it_before_returning(
    make_processor: Any,
) -> None:
    processor = make_processor([Tenant(), Plan()])
    logger = Lines()

    result = call(processor, logger, {"event": "hello"})

    assert (None, [{"event": "hello", "tenant": "acme", "plan": "gold"}]) == (
        result,
        logger.lines,
    )


def test_levels_follow_the_dependencies(make_processor: Any) -> None:
    processor = make_processor([Plan(), add_host, Tenant()])

    assert [["add_host", "tenant"], ["plan"]] == [
        [e.name for e in level] for level in processor.levels
    ]


def test_a_cycle_is_rejected_before_anything_starts() -> None:
    with pytest.raises(EnricherDependencyError, match="tenant -> plan -> tenant"):
        LoggingContainer(LoggingSettings(), [Tenant(dependencies=["plan"]), Plan()])


def test_startup_reports_which_enrichers_started() -> None:
    class Broken(Tenant):
        async def _startup(self) -> None:
            raise OSError("down")

    processor = LoggingContainer(
        LoggingSettings(delivery="inline"), [Broken(name="broken"), Plan(dependencies=())]
    ).processor
    assert processor is not None
    try:
        started = processor.startup(timeout=10)
    finally:
        processor.shutdown(timeout=5)

    assert {"broken": False, "plan": True} == started


def test_event_logged_from_an_enricher_is_not_enriched_again(
    make_processor: Any,
) -> None:
    inner = Lines()
    seen: list[EventDict | None] = []

    class LogsItself(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            seen.append(call(processor, inner, {"event": "from inside"}))
            return event_dict

    processor = make_processor([LogsItself()])

    call(processor, Lines(), {"event": "outer"})

    assert [{"event": "from inside"}] == seen


def test_after_shutdown_events_are_written_with_async_enrichers_unavailable(
    make_processor: Any,
) -> None:
    processor = make_processor([add_host, Tenant()])
    processor.shutdown(timeout=5)
    logger = Lines()

    result = call(processor, logger, {"event": "late"})

    assert {
        "event": "late",
        "host": "web-1",
        "enrichment_errors": {"tenant": "unavailable"},
    } == result


def test_shutdown_reports_written_events(make_processor: Any) -> None:
    processor = make_processor([Tenant()])
    logger = Lines()
    for n in range(4):
        call(processor, logger, {"event": "e", "n": n})

    report = processor.shutdown(timeout=5)

    assert {"written": 4, "dropped": 0, "pending": 0} == {
        key: report[key] for key in ("written", "dropped", "pending")
    }


def test_inline_call_from_many_threads_keeps_each_event_whole(
    make_processor: Any,
) -> None:
    processor = make_processor([Tenant(), Plan()])
    logger = Lines()
    lock = threading.Lock()

    def info(line: str) -> None:
        with lock:
            logger.lines.append(json.loads(line))

    logger.info = info  # type: ignore[method-assign]

    def work(n: int) -> None:
        for i in range(20):
            call(processor, logger, {"event": "e", "thread_no": n, "i": i})

    workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert (160, {("acme", "gold")}) == (
        len(logger.lines),
        {(ln["tenant"], ln["plan"]) for ln in logger.lines},
    )


def test_metrics_count_calls_and_failures_per_enricher(make_processor: Any) -> None:
    class FailsOnce(Tenant):
        calls = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise ValueError("first")
            return event_dict

    processor = make_processor([FailsOnce(name="flaky")])
    call(processor, Lines(), {"event": "one"})
    call(processor, Lines(), {"event": "two"})

    stats = processor.metrics()["enrichers"]["flaky"]

    assert (2, 1, "closed") == (stats["calls"], stats["failures"], stats["breaker"])


def test_blocking_sync_enricher_is_bounded_by_the_enricher_timeout(
    make_processor: Any,
) -> None:
    release = threading.Event()

    @register_enricher(blocking=True)
    def stuck(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        release.wait(5)

    processor = make_processor([stuck], enricher_timeout=0.05)
    logger = Lines()
    try:
        call(processor, logger, {"event": "hello"})
    finally:
        release.set()

    assert [{"event": "hello", "enrichment_errors": {"stuck": "timeout"}}] == (logger.lines)


def test_process_ends_the_chain_by_returning_none_where_call_raises_drop_event(
    make_processor: Any,
) -> None:
    """``process()`` is the processor without the exception: enrichlog's own
    bound logger calls it; any other chain gets ``DropEvent`` from
    ``__call__``."""
    processor = make_processor([Tenant()])
    logger = Lines()

    returned = processor.process(logger, "info", {"event": "one"})
    with pytest.raises(structlog.DropEvent):
        processor(logger, "info", {"event": "two"})

    assert None is returned
    assert ["one", "two"] == [line["event"] for line in logger.lines]


def test_the_installed_logger_hands_an_event_off_without_raising_an_exception(
    log_file: Path,
) -> None:
    """No exception (and no traceback built and unwound) per handed-off
    event on the caller's thread."""
    container = configure_logging(enrichers=[Tenant()], output=str(log_file), delivery="background")
    log = get_logger()
    log.info("warm")
    container.flush()
    raised: list[str] = []

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception":
            raised.append(arg[0].__name__)
        return trace

    sys.settrace(trace)
    try:
        log.info("handed off", n=1)
    finally:
        sys.settrace(None)
    container.shutdown()

    assert "DropEvent" not in raised
    assert ["warm", "handed off"] == [
        json.loads(line)["event"] for line in log_file.read_text().splitlines()
    ]
