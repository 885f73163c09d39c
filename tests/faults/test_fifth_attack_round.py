"""Found by the fifth outside attack round (a tester with only the README
and the docs), each kept as a test. (The others of that round are kept
beside the behaviour they test: rendering, batching, enricher shapes.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, configure_logging, get_logger
from tests.faults.test_rendering import Passes, RaisesOnRepr


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit]
)
def test_a_report_that_fails_again_through_the_stdlib_bridge_costs_no_event(
    log_file: Path, exc: type[BaseException]
) -> None:
    # The console renderer failed on a value whose __repr__ raised; the report
    # of that failure went through the stdlib bridge into the same renderer,
    # whose traceback showed the locals (the value again): the interrupt left
    # the runtime thread (KeyboardInterrupt, SystemExit: every later event
    # lost) or wedged its loop (CancelledError, GeneratorExit).
    container = configure_logging(
        enrichers=[Passes()],
        output=str(log_file),
        format="console",
        stdlib=True,
        delivery="background",
        shutdown_timeout=5,
    )
    log = get_logger("app")
    log.info("bad", v=RaisesOnRepr(exc))
    for i in range(100):
        log.info("good", i=i)
    flushed = container.flush(10)
    runtime_alive = any(t.name == "enrichlog-runtime" for t in threading.enumerate())
    report = container.shutdown()

    lines = log_file.read_text().splitlines()
    assert (True, True, 0) == (flushed, runtime_alive, report["pending"])
    assert 100 == sum("passed=True" in line for line in lines if " good " in line)
    assert 1 == sum(" bad " in line for line in lines)


def test_the_console_shows_no_local_variables_in_a_traceback(log_file: Path) -> None:
    # Locals are where passwords live; the JSON renderer already left them out.
    container = configure_logging(output=str(log_file), format="console", delivery="inline")
    password = "hunter" + str(2)  # the secret that must not be written (not in the source)
    try:
        raise ValueError("login failed")
    except ValueError:
        get_logger().exception("login failed")
    container.shutdown()

    text = log_file.read_text()
    assert "ValueError" in text
    assert password not in text
    assert "\x1b[" not in text  # and no colour codes in a file


class SlowUser(AsyncEnricher):
    name = "user"
    cache_ttl = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict.get("user_id")

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        event_dict["user_name"] = "alice"
        return event_dict


class SlowUsers(SlowUser):
    async def enrich_many(self, keys: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0.05)
        return dict.fromkeys(keys, "alice")

    def apply(self, event_dict: Any, value: Any) -> Any:
        event_dict["user_name"] = value
        return event_dict


@pytest.mark.parametrize("enricher", [SlowUser, SlowUsers], ids=["per event", "batched"])
def test_events_that_share_a_lookup_in_flight_count_as_cache_hits(
    log_file: Path, enricher: type[SlowUser]
) -> None:
    # Every event that joined the one call in flight counted as a miss: 50
    # misses, hit rate 0, for one backend call.
    user = enricher()
    container = configure_logging(enrichers=[user], output=str(log_file), delivery="background")
    for _ in range(50):
        get_logger().info("burst", user_id=42)
    container.flush(10)
    metrics = container.metrics()["enrichers"]["user"]
    container.shutdown()

    assert (1, 49, 1) == (user.calls, metrics["cache_hits"], metrics["cache_misses"])
    assert 0.98 == metrics["cache"]["hit_rate"]


STDLIB_ARGUMENT_SCRIPT = """
import logging, sys, threading
from enrichlog import configure_logging

class RaisesOnRepr:
    def __repr__(self):
        raise KeyboardInterrupt
    __str__ = __repr__

container = configure_logging(output=sys.argv[1], stdlib=True, delivery="background")

def work():
    logging.getLogger("lib").warning("v=%s", RaisesOnRepr())
    logging.getLogger("lib").warning("after")

worker = threading.Thread(target=work)
worker.start()
worker.join(10)
container.shutdown()
"""


def test_a_stdlib_argument_raising_an_interrupt_costs_neither_the_record_nor_the_thread(
    log_file: Path,
) -> None:
    # In a process of its own: pytest's log capture is a stdlib handler too,
    # and would format the record (and raise) before enrichlog's does.
    result = subprocess.run(
        [sys.executable, "-c", STDLIB_ARGUMENT_SCRIPT, str(log_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 == result.returncode, result.stderr
    assert "Exception in thread" not in result.stderr
    first, after = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert ("v=%s", "KeyboardInterrupt", "after") == (
        first["event"],
        first["format_error"],
        after["event"],
    )


CYCLIC_CHAIN_SCRIPT = """
import sys
from enrichlog import configure_logging, get_logger

container = configure_logging(
    output=sys.argv[1], format=sys.argv[2], delivery=sys.argv[3], shutdown_timeout=2
)
log = get_logger()
try:
    try:
        raise KeyError("inner")
    except KeyError as inner:
        try:
            raise ValueError("outer") from inner
        except ValueError as outer:
            inner.__cause__ = outer  # a loop: outer -> inner -> outer
            raise
except ValueError:
    log.exception("cyclic cause")
for i in range(100):
    log.info("after", i=i)
print(dict(container.shutdown()))
"""


@pytest.mark.parametrize("fmt", ["console", "json", "logfmt"])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_an_exception_chain_that_loops_is_written_and_logging_goes_on(
    tmp_path: Path, fmt: str, delivery: str
) -> None:
    # Found by an outside tester: with the console format, rich followed the
    # loop without end: the log call never returned (inline), or the runtime
    # thread never did (background), and memory grew by gigabytes.
    out = tmp_path / "out.log"
    result = subprocess.run(
        [sys.executable, "-c", CYCLIC_CHAIN_SCRIPT, str(out), fmt, delivery],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 == result.returncode, result.stderr
    assert "'written': 101" in result.stdout
    assert "'pending': 0" in result.stdout
    assert "ValueError" in out.read_text()


def test_a_chain_that_shares_an_exception_is_no_loop() -> None:
    from enrichlog.engine.chain import _chain_loops

    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner  # cause and context: the same
    except ValueError as outer:
        shared = outer

    assert not _chain_loops(shared)


class Slow(AsyncEnricher):
    name = "slow"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.05)
        event_dict["slow"] = 1
        return event_dict


def _log_from_deep_inside(log: Any) -> None:
    def handler() -> None:
        try:
            raise ValueError("boom")
        except ValueError as exc:
            log.error("failed", exc_info=exc)
            raise

    def request() -> None:
        handler()

    with contextlib.suppress(ValueError):
        request()


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_an_exception_instance_is_shown_as_it_was_when_logged(
    log_file: Path, delivery: str
) -> None:
    # Found by an outside tester: in background delivery, exc_info=<instance>
    # was formatted when the line was written, by then with the frames it
    # had gone up through (request, the test) since the log call.
    container = configure_logging(enrichers=[Slow()], output=str(log_file), delivery=delivery)
    _log_from_deep_inside(get_logger())
    container.shutdown()

    exception = json.loads(log_file.read_text())["exception"][0]
    assert ["handler"] == [frame["name"] for frame in exception["frames"]]


async def test_an_exception_instance_is_shown_as_it_was_when_logged_on_the_loop(
    log_file: Path,
) -> None:
    async with configure_logging(enrichers=[Slow()], output=str(log_file), runtime="loop"):
        _log_from_deep_inside(get_logger())

    exception = json.loads(await asyncio.to_thread(log_file.read_text))["exception"][0]
    assert ["handler"] == [frame["name"] for frame in exception["frames"]]


def test_a_plain_function_returning_a_coroutine_is_invalid_and_leaves_no_warning(
    log_file: Path,
) -> None:
    import warnings

    async def lookup(event_dict: Any) -> Any:
        return event_dict

    def flags(logger: Any, method_name: str, event_dict: Any) -> Any:
        return lookup(event_dict)  # should have been async def and awaited

    container = configure_logging(enrichers=[flags], output=str(log_file), delivery="inline")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            get_logger().info("e")
        container.shutdown()
        import gc

        gc.collect()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [{"flags": "invalid_return"}] * 3 == [line["enrichment_errors"] for line in lines]
    assert [] == [str(w.message) for w in caught if "never awaited" in str(w.message)]


def test_health_keeps_the_last_failure_of_sync_and_blocking_enrichers(log_file: Path) -> None:
    # Found by an outside tester: their lines said why, health() said None.
    from enrichlog import SyncEnricher, register_enricher

    class Fails(SyncEnricher):
        name = "fails"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            raise ValueError("bad row")

    def blocks(logger: Any, method_name: str, event_dict: Any) -> Any:
        raise KeyError("missing")

    container = configure_logging(
        enrichers=[Fails(), register_enricher(blocks, blocking=True)],
        output=str(log_file),
        delivery="inline",
    )
    get_logger().info("e")
    health = container.health()
    container.shutdown()

    assert ("error: ValueError", "error: KeyError") == (
        health["fails"]["last_error"],
        health["blocks"]["last_error"],
    )


@pytest.mark.parametrize("fmt", ["console", "json", "logfmt"])
def test_an_exception_group_in_its_own_chain_is_written_with_its_error(
    log_file: Path, fmt: str
) -> None:
    # Found by an outside tester after the fix above: a group that a member's
    # cause leads back to sent the loop check into endless recursion (1.5 s
    # per event, a line of 80,000 characters about enrichlog's RecursionError).
    container = configure_logging(output=str(log_file), format=fmt, delivery="inline")
    inner = ValueError("the-original-error")
    group = ExceptionGroup("my-group", [inner])
    inner.__cause__ = group
    get_logger().error("request failed", exc_info=group)
    fallbacks = container.metrics()["render_fallbacks"]
    container.shutdown()

    text = log_file.read_text()
    assert ("the-original-error" in text, "my-group" in text) == (True, True)
    assert (0, "RecursionError" in text) == (fallbacks, False)
