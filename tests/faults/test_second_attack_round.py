"""Cases found by the second outside attack round (README and docs only),
kept as tests: BaseExceptions from an enricher's hooks, a CancelledError
its own lifecycle hook raises, remembered failures served like cache hits,
and a forked child's counters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.testing import LineSink
from tests.faults.runner import run_script

ERRORS = "enrichment_errors"


class StopTheWorld(BaseException):
    """Neither an Exception nor an interrupt."""


class AppliesBadly(AsyncEnricher):
    """A batched lookup whose apply() raises ``raises`` for key 3."""

    name = "bad"

    def __init__(self, raises: BaseException, **options: Any) -> None:
        super().__init__(**options)
        self.raises = raises

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict["k"]

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        await asyncio.sleep(0.001)
        return {key: key for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        if value == 3:
            raise self.raises
        event_dict["bad"] = value
        return event_dict


class Healthy(AsyncEnricher):
    name = "healthy"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["healthy"] = True
        return event_dict


@pytest.mark.parametrize(
    "raised",
    [KeyboardInterrupt(), SystemExit(1), StopTheWorld(), asyncio.CancelledError()],
    ids=["KeyboardInterrupt", "SystemExit", "BaseException", "CancelledError"],
)
def test_apply_raising_a_base_exception_fails_its_key_alone(raised: BaseException) -> None:
    # Before: an interrupt killed the runtime thread (every later event
    # 'unavailable'); another BaseException left its batch pending until
    # shutdown.
    sink = LineSink()
    container = configure_logging(
        enrichers=[AppliesBadly(raised), Healthy()], output=sink, delivery="background"
    )
    log = get_logger()
    for i in range(100):
        log.info("e", k=i % 10, i=i)
    flushed = container.flush(timeout=10)
    container.shutdown()

    lines = [json.loads(line) for line in sink.lines]
    failed = [line for line in lines if ERRORS in line]
    assert (True, 100, 10) == (flushed, len(lines), len(failed))
    assert {line["k"] for line in failed} == {3}
    assert {f"error: {type(raised).__name__}"} == {line[ERRORS]["bad"] for line in failed}
    assert all(line["healthy"] for line in lines)


class KeyRaises(AsyncEnricher):
    name = "bad"

    def __init__(self, raises: BaseException) -> None:
        super().__init__()
        self.raises = raises

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        if event_dict["i"] == 3:
            raise self.raises
        return event_dict["i"]

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["bad"] = True
        return event_dict


@pytest.mark.parametrize(
    "raised", [StopTheWorld(), asyncio.CancelledError()], ids=["BaseException", "CancelledError"]
)
def test_cache_key_raising_a_base_exception_loses_no_event(raised: BaseException) -> None:
    sink = LineSink()
    container = configure_logging(enrichers=[KeyRaises(raised)], output=sink, delivery="inline")
    log = get_logger()
    for i in range(10):
        log.info("e", i=i)
    report = container.shutdown()

    lines = [json.loads(line) for line in sink.lines]
    assert 10 == report.written
    assert [{"bad": f"error: {type(raised).__name__}"}] == [
        ln[ERRORS] for ln in lines if ERRORS in ln
    ]


def test_cache_key_raising_keyboardinterrupt_writes_the_event_then_raises() -> None:
    sink = LineSink()
    container = configure_logging(
        enrichers=[KeyRaises(KeyboardInterrupt())], output=sink, delivery="inline"
    )
    log = get_logger()
    interrupted = []
    for i in range(10):
        try:
            log.info("e", i=i)
        except KeyboardInterrupt:
            interrupted.append(i)
    report = container.shutdown()

    assert ([3], 10) == (interrupted, report.written)


class StartCancels(AsyncEnricher):
    name = "bad"

    async def _startup(self) -> None:
        raise asyncio.CancelledError

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        return event_dict


class StopCancels(Healthy):
    name = "bad"

    async def _shutdown(self) -> None:
        raise asyncio.CancelledError


class StopRecorded(Healthy):
    name = "other"
    stopped = False

    async def _shutdown(self) -> None:
        StopRecorded.stopped = True


def test_a_startup_that_raises_cancelled_error_is_a_failed_start() -> None:
    sink = LineSink()
    container = configure_logging(enrichers=[StartCancels(), Healthy()], output=sink)
    get_logger().info("e")
    health = container.health()
    container.shutdown()

    line = json.loads(sink.lines[0])
    assert ({"bad": "unavailable"}, True) == (line[ERRORS], line["healthy"])
    assert "startup failed: CancelledError" == health["bad"]["last_error"]


def test_a_shutdown_that_raises_cancelled_error_stops_everything_else() -> None:
    container = configure_logging(enrichers=[StopRecorded(), StopCancels()], output=LineSink())
    get_logger().info("e")

    report = container.shutdown()

    assert (1, True, True) == (report.written, StopRecorded.stopped, container.closed)


class FailsFor(AsyncEnricher):
    """Fails for key 'bad', after the first call remembered for 60 s."""

    name = "user"
    cache_error_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict["user"]

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict["user"] == "bad":
            raise ValueError("no such user")
        event_dict["name"] = "ann"
        return event_dict


def test_a_remembered_failure_is_served_on_the_calling_thread() -> None:
    # Before: every event with a remembered failure went to the runtime and
    # counted as a cache miss.
    container = configure_logging(enrichers=[FailsFor()], output=LineSink(), delivery="inline")
    log = get_logger()
    log.info("e", user="bad")
    before = container.metrics()

    for _ in range(100):
        log.info("e", user="bad")
    after = container.metrics()
    container.shutdown()

    hits = after.enrichers["user"].cache_hits - before.enrichers["user"].cache_hits
    assert (0, 100) == (after.handed_off - before.handed_off, hits)
    assert 1 == after.enrichers["user"].calls


def test_a_forked_child_counts_its_own_events(tmp_path: Path) -> None:
    run = run_script("fork_counts.py", tmp_path / "out.log")

    assert 0 == run.returncode, run.stderr
    assert {
        "written": 10,
        "events_in": 10,
        "handed_off": 10,
        "calls": 10,
        "latency_count": 10,
    } == run.summary["child"]
    assert 100 == run.summary["parent_written"]
    assert 110 == len((tmp_path / "out.log").read_text().splitlines())
