"""Extra: enrichers that misbehave in ways the cases above suggest: odd
return values, logging from inside themselves, enrichlog's own reports
routed back into structlog, a blocking call that never ends."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger
from tests.faults.runner import run_script


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class _UnreadableMapping(Mapping[str, Any]):
    """A mapping that fails when read."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("cannot iterate")

    def __len__(self) -> int:
        return 1


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


ODD_RETURNS: dict[str, Any] = {
    "unreadable-mapping": _UnreadableMapping,
    "generator": lambda: (pair for pair in [("a", 1)]),
    "list-of-pairs": lambda: [("a", 1)],
    "string": lambda: "a string",
    "number": lambda: 42,
    "exception-instance": _Unprintable,
    "the-enricher-itself": None,  # filled in by the enricher
}


def _odd_enricher(kind: str, returns: str) -> Any:
    def odd(enricher: Any) -> Any:
        make = ODD_RETURNS[returns]
        return enricher if make is None else make()

    class AsyncOdd(AsyncEnricher):
        name = "odd"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            return odd(self)

    class SyncOdd(SyncEnricher):
        name = "odd"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            return odd(self)

    return AsyncOdd(failure_threshold=1000) if kind == "async" else SyncOdd()


@pytest.mark.parametrize("returns", list(ODD_RETURNS))
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_enricher_returning_something_odd_is_an_invalid_return_and_the_event_is_written(
    log_file: Path, kind: str, returns: str
) -> None:
    container = configure_logging(
        enrichers=[_odd_enricher(kind, returns)], output=str(log_file), delivery="background"
    )

    get_logger().info("e", keep="me")
    report = container.shutdown()

    (line,) = _lines(log_file)
    assert 1 == report["written"]
    assert ("me", {"odd": "invalid_return"}) == (line["keep"], line["enrichment_errors"])


class _EqualityRaises(dict[str, Any]):
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no equality")

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "returns",
    ["int-keys", "dict-subclass-whose-eq-raises", "ten-thousand-new-keys", "empty-mapping"],
)
def test_an_enricher_returning_an_odd_but_valid_mapping_has_its_event_written(
    log_file: Path, returns: str
) -> None:
    class Returns(AsyncEnricher):
        name = "odd"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            if returns == "int-keys":
                return {**event_dict, 1: "one"}
            if returns == "dict-subclass-whose-eq-raises":
                return _EqualityRaises(event_dict, added=True)
            if returns == "ten-thousand-new-keys":
                return {**event_dict, **{f"k{i}": i for i in range(10_000)}}
            return {}  # keys it lacks are removed: even "event"

    container = configure_logging(
        enrichers=[Returns()], output=str(log_file), delivery="background"
    )

    get_logger().info("e")
    report = container.shutdown()

    lines = log_file.read_bytes().splitlines()
    assert (1, 1) == (len(lines), report["written"])
    json.loads(lines[0])  # a line a JSON reader takes


def test_an_event_logged_by_an_async_enricher_is_written_as_it_is(log_file: Path) -> None:
    class Chatty(AsyncEnricher):
        name = "chatty"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            structlog.get_logger().info("from inside")
            event_dict["chatty"] = True
            return event_dict

    container = configure_logging(enrichers=[Chatty()], output=str(log_file), delivery="inline")

    get_logger().info("outer")
    container.flush(10)

    events = {line["event"]: line for line in _lines(log_file)}
    assert {"outer", "from inside"} == set(events)
    assert (True, None) == (events["outer"].get("chatty"), events["from inside"].get("chatty"))


def test_an_event_logged_by_an_inline_sync_enricher_is_written_as_it_is(log_file: Path) -> None:
    class Chatty(SyncEnricher):
        name = "chatty"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            structlog.get_logger().info("from inside")
            event_dict["chatty"] = True
            return event_dict

    container = configure_logging(enrichers=[Chatty()], output=str(log_file), delivery="inline")

    get_logger().info("outer")
    container.flush(10)

    assert ["from inside", "outer"] == sorted(line["event"] for line in _lines(log_file))


class _ToStructlog(logging.Handler):
    """Routes stdlib records into structlog, as applications often do."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.forwarded = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.forwarded += 1
        structlog.get_logger().warning("enrichlog-report", report=record.getMessage())


class _Troublesome(AsyncEnricher):
    """Fails one event in three (retried, then the breaker opens and
    half-opens), and ignores its cancellation on one event in fifty: every
    kind of report enrichlog makes."""

    name = "trouble"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.001)
        i = event_dict.get("i", 0)
        if i % 3 == 0:
            raise ConnectionError("down")
        if i % 50 == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(1)  # past the grace: abandoned
        event_dict["trouble"] = True
        return event_dict


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_enrichlogs_own_reports_routed_into_structlog_neither_recurse_nor_deadlock(
    log_file: Path, delivery: str
) -> None:
    handler = _ToStructlog()
    reports = logging.getLogger("enrichlog")
    reports.addHandler(handler)
    level, reports.level = reports.level, logging.INFO
    try:
        container = configure_logging(
            enrichers=[
                _Troublesome(
                    timeout=0.1,
                    retry_attempts=2,
                    retry_base_delay=0.001,
                    failure_threshold=3,
                    recovery_timeout=0.05,
                )
            ],
            output=str(log_file),
            delivery=delivery,
            queue_size=50,
            overflow="drop_new",
            drop_report_interval=0.01,
        )
        log = get_logger()

        def produce(number: int) -> None:
            for i in range(500):
                log.info("app", t=number, i=i)

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        alive = [thread for thread in threads if thread.is_alive()]
        report = container.shutdown(timeout=20)
    finally:
        reports.removeHandler(handler)
        reports.level = level

    kinds = Counter(line["event"] for line in _lines(log_file))
    assert [] == alive
    assert handler.forwarded > 0
    assert 2000 == kinds["app"] + report["dropped"]
    assert handler.forwarded == kinds["enrichlog-report"]


@pytest.mark.slow
def test_a_blocking_enricher_stuck_in_its_thread_does_not_keep_the_process_alive(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.log"

    run = run_script("stuck_blocking.py", out, "shutdown", env={"STUCK": "6"})
    exited_after = time.time() - run.summary["main_done"]

    assert 10 == len(_lines(out))
    assert exited_after < 3.0, f"the process exited {exited_after:.1f}s after main returned"
