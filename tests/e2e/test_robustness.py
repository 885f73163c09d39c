"""Regressions from the runtime review: stalls, losses and reorderings that
only show under bursts, shutdown races and hostile enrichers."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from enrichlog.container import configure_logging, get_logger
from enrichlog.enricher import AsyncEnricher, SyncEnricher
from tests.helpers import read_lines


class SlowFirstLookup(AsyncEnricher):
    """Cached by ``user``; the lookup for user 0 waits for ``release``."""

    name = "lookup"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = threading.Event()

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict.get("user")

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict["user"] == 0:
            while not self.release.is_set():
                await asyncio.sleep(0.001)
        event_dict["looked_up"] = event_dict["user"]
        return event_dict


def test_cache_hits_queued_behind_a_slow_miss_do_not_stall_the_queue(log_file: Path) -> None:
    lookup = SlowFirstLookup(timeout=10.0)
    container = configure_logging(
        enrichers=[lookup], output=str(log_file), delivery="background", max_in_flight=4
    )
    log = get_logger()
    log.info("warm", user=1)
    container.flush(5.0)

    log.info("slow miss", user=0)
    for i in range(2_000):
        log.info("hit", user=1, i=i)
    lookup.release.set()
    flushed = container.flush(10.0)

    lines = read_lines(log_file)
    assert flushed
    assert 2_002 == len(lines)
    assert list(range(2_000)) == [line["i"] for line in lines if line["event"] == "hit"]


def test_a_threads_cache_hit_never_overtakes_its_earlier_queued_event(log_file: Path) -> None:
    lookup = SlowFirstLookup(timeout=10.0)
    container = configure_logging(enrichers=[lookup], output=str(log_file), delivery="background")
    log = get_logger()
    log.info("warm", user=1)
    container.flush(5.0)

    log.info("A-first", user=0)
    log.info("B-second", user=1)  # a cache hit: it could be written at once
    lookup.release.set()
    container.flush(5.0)

    assert ["warm", "A-first", "B-second"] == [line["event"] for line in read_lines(log_file)]


class Sleepy(AsyncEnricher):
    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.002)
        event_dict["slept"] = True
        return event_dict


def test_logging_while_shutting_down_loses_nothing(log_file: Path) -> None:
    container = configure_logging(
        enrichers=[Sleepy()], output=str(log_file), delivery="background", queue_size=500
    )
    log = get_logger()
    stop = threading.Event()
    sent = [0] * 4

    def produce(n: int) -> None:
        while not stop.is_set():
            log.info("e", t=n, i=sent[n])
            sent[n] += 1

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    report = container.shutdown(timeout=0.1)
    stop.set()
    for thread in threads:
        thread.join()

    lines = read_lines(log_file)
    per_thread = {n: [line["i"] for line in lines if line["t"] == n] for n in range(4)}
    assert 0 == report["dropped"]
    assert {n: list(range(sent[n])) for n in range(4)} == per_thread


def test_an_unhashable_cache_key_is_an_error_reason_not_a_raise(log_file: Path) -> None:
    class ListKey(AsyncEnricher):
        name = "listkey"

        def cache_key(self, event_dict: Any) -> Any:
            return [event_dict.get("user")]

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            return event_dict

    configure_logging(enrichers=[ListKey()], output=str(log_file), delivery="inline")

    get_logger().info("hello", user=1)

    assert [{"listkey": "error: TypeError"}] == [
        line["enrichment_errors"] for line in read_lines(log_file)
    ]


async def test_a_full_queue_never_blocks_a_thread_that_runs_a_loop(log_file: Path) -> None:
    lookup = SlowFirstLookup(timeout=10.0)
    container = configure_logging(
        enrichers=[lookup],
        output=str(log_file),
        delivery="background",
        queue_size=2,
        max_in_flight=1,
        overflow="block",
        overflow_block_timeout=5.0,
    )
    log = get_logger()

    started = time.monotonic()
    for _ in range(6):
        log.info("from the loop", user=0)
    elapsed = time.monotonic() - started
    lookup.release.set()
    await container.aflush(5.0)

    assert elapsed < 2.0
    assert 6 == container.metrics()["written"] + container.metrics()["dropped"]


def test_a_blocking_enricher_that_logs_does_not_wait_on_itself(log_file: Path) -> None:
    class LogsFromItsThread(SyncEnricher):
        name = "chatty"
        blocking = True

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            structlog.get_logger().info("from the worker thread")
            event_dict["chatty"] = True
            return event_dict

    configure_logging(
        enrichers=[LogsFromItsThread()],
        output=str(log_file),
        delivery="inline",
        enricher_timeout=5.0,
    )

    started = time.monotonic()
    get_logger().info("outer")
    elapsed = time.monotonic() - started

    events = {line["event"]: line for line in read_lines(log_file)}
    assert elapsed < 2.0
    assert events["outer"]["chatty"] is True
    assert "from the worker thread" in events


def test_a_failed_start_is_retried_without_health_checks(log_file: Path) -> None:
    class UpSoon(AsyncEnricher):
        name = "db"
        attempts = 0

        async def _startup(self) -> None:
            type(self).attempts += 1
            if type(self).attempts == 1:
                raise ConnectionError("not up yet")

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["db"] = "up"
            return event_dict

    container = configure_logging(enrichers=[UpSoon()], output=str(log_file), delivery="inline")
    deadline = time.monotonic() + 10
    while not container.health()["db"]["available"] and time.monotonic() < deadline:
        time.sleep(0.05)

    get_logger().info("after the retry")

    assert "up" == read_lines(log_file)[-1].get("db")


def test_an_enricher_that_swallows_its_cancellation_still_times_out(log_file: Path) -> None:
    class Stubborn(AsyncEnricher):
        name = "stubborn"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # ignores the cancellation
            event_dict["late"] = True
            return event_dict

    configure_logging(enrichers=[Stubborn(timeout=0.05)], output=str(log_file), delivery="inline")

    get_logger().info("e")

    (line,) = read_lines(log_file)
    assert ({"stubborn": "timeout"}, None) == (line["enrichment_errors"], line.get("late"))


def test_timeouts_of_interleaved_fast_and_hanging_calls_each_fire(log_file: Path) -> None:
    class HangsOnEven(AsyncEnricher):
        name = "maybe"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            if event_dict["i"] % 2 == 0:
                await asyncio.sleep(30)
            event_dict["fast"] = True
            return event_dict

    container = configure_logging(
        enrichers=[HangsOnEven(timeout=0.05, failure_threshold=100)],
        output=str(log_file),
        delivery="background",
    )
    log = get_logger()

    for i in range(20):
        log.info("e", i=i)
        if i == 10:
            time.sleep(0.08)  # later calls start after earlier deadlines fired
    container.flush(10.0)

    lines = read_lines(log_file)
    assert list(range(20)) == [line["i"] for line in lines]
    assert all(
        (line.get("enrichment_errors") == {"maybe": "timeout"}) == (line["i"] % 2 == 0)
        for line in lines
    )


FORK_WHILE_LOGGING = """
import os, sys, threading, time
from enrichlog import configure_logging, get_logger
sys.path.insert(0, sys.argv[2])
from tests.e2e.test_robustness import Sleepy

configure_logging(enrichers=[Sleepy()], output=sys.argv[1], delivery="background")
log = get_logger()
stop = threading.Event()

def chatter(n):
    while not stop.is_set():
        log.info("parent", t=n)

threads = [threading.Thread(target=chatter, args=(n,)) for n in range(3)]
for thread in threads:
    thread.start()
children = []
for round_ in range(5):
    time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        for i in range(20):
            log.info("child", round=round_, i=i)
        from enrichlog.container import _current
        _current.shutdown()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
stop.set()
for thread in threads:
    thread.join()
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_children_forked_while_threads_log_do_not_hang(tmp_path: Path) -> None:
    out = tmp_path / "fork.log"
    script = tmp_path / "fork_while_logging.py"
    script.write_text(FORK_WHILE_LOGGING)
    root = Path(__file__).resolve().parents[2]

    subprocess.run([sys.executable, str(script), str(out), str(root)], timeout=60, check=True)

    child_lines = [line for line in read_lines(out) if line["event"] == "child"]
    assert 100 == len(child_lines)


def test_drop_reports_routed_back_into_structlog_do_not_deadlock(log_file: Path) -> None:
    lookup = SlowFirstLookup(timeout=10.0)
    container = configure_logging(
        enrichers=[lookup],
        output=str(log_file),
        delivery="inline",
        overflow="drop_old",
        queue_size=2,
        max_in_flight=1,
        drop_report_interval=0.001,
    )
    handler = _StructlogHandler()
    report_logger = logging.getLogger("enrichlog")
    report_logger.addHandler(handler)
    try:
        threads = [
            threading.Thread(target=lambda: get_logger().info("e", user=0)) for _ in range(10)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        lookup.release.set()
        for thread in threads:
            thread.join(timeout=20)
        alive = [thread for thread in threads if thread.is_alive()]
    finally:
        report_logger.removeHandler(handler)
    container.flush(5.0)

    assert [] == alive


class _StructlogHandler(logging.Handler):
    """Routes stdlib records into structlog, as applications often do."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger().warning(record.getMessage())
