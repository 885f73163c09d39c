"""Case 10: the shutdown report. Two threads calling ``shutdown()`` at once
get the same exact report; ``written`` counts every line, whichever thread
wrote it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, LoggingContainer, configure_logging, get_logger

EVENTS = 3000
REPORT_KEYS = {"written", "dropped", "pending", "write_failed", "abandoned", "filtered"}


class CachedLookup(AsyncEnricher):
    """Cached per user: after the first miss of each user, events complete
    on the logging thread and are written there."""

    name = "lookup"

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict.get("user")

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.002)
        event_dict["user_name"] = f"u{event_dict['user']}"
        return event_dict


def _shutdown_from_two_threads(container: LoggingContainer) -> list[Any]:
    barrier = threading.Barrier(2)
    reports: list[Any] = []

    def shut() -> None:
        barrier.wait()
        reports.append(container.shutdown())

    threads = [threading.Thread(target=shut) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return reports


@pytest.mark.parametrize("flushed_first", [True, False], ids=["drained", "still-pending"])
def test_two_threads_shutting_down_at_once_get_the_same_report(
    log_file: Path, flushed_first: bool
) -> None:
    container = configure_logging(
        enrichers=[CachedLookup()], output=str(log_file), delivery="background"
    )
    log = get_logger()
    for i in range(EVENTS):
        log.info("e", i=i, user=i % 10)
    if flushed_first:
        container.flush(10)

    first, second = _shutdown_from_two_threads(container)

    assert first == second
    assert REPORT_KEYS == set(first)


def test_written_counts_lines_written_on_the_logging_threads_and_by_the_runtime(
    log_file: Path,
) -> None:
    container = configure_logging(
        enrichers=[CachedLookup()], output=str(log_file), delivery="background"
    )
    log = get_logger()
    for i in range(EVENTS):
        log.info("e", i=i, user=i % 10)
        if i == 100:
            container.flush(10)  # from here most events are cache hits, written here
    handed_off = container.metrics()["handed_off"]

    report, _ = _shutdown_from_two_threads(container)

    lines = log_file.read_bytes().splitlines()
    assert handed_off < EVENTS  # some lines were written by this thread, not the runtime
    assert (EVENTS, EVENTS, 0) == (len(lines), report["written"], report["pending"])
