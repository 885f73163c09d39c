"""Extra: events and callers that misbehave: huge events, exceptions that
cannot be printed, ``ainfo`` from loops that close before the line is
written, contextvars bound per request on many tasks and threads, a signal
handler that logs."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger
from tests.faults.runner import run_script


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


class Slow(AsyncEnricher):
    name = "slow"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.1)
        event_dict["slow"] = True
        return event_dict


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_an_event_with_ten_thousand_keys_and_one_with_a_ten_megabyte_value_are_written(
    log_file: Path, delivery: str
) -> None:
    container = configure_logging(enrichers=[Tag()], output=str(log_file), delivery=delivery)
    log = get_logger()

    log.info("wide", **{f"key{i}": i for i in range(10_000)})
    log.info("big", blob="x" * (10 * 1024 * 1024))
    report = container.shutdown()

    wide, big = (json.loads(line) for line in log_file.read_text().splitlines())
    assert 2 == report["written"]
    assert (10_000 + 4, True) == (len(wide), wide["tag"])  # + event, level, timestamp, tag
    assert (10 * 1024 * 1024, True) == (len(big["blob"]), big["tag"])


class Unprintable(Exception):
    """An exception whose ``__str__`` and ``__repr__`` raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _log_unprintable_exceptions() -> tuple[int, list[str]]:
    log = get_logger()
    raised: list[str] = []
    logged = 0
    for how in ("exception()", "exc_info=exc", "exc_info=tuple", "exc_info=True", "as a value"):
        try:
            raise Unprintable
        except Unprintable as exc:
            try:
                logged += 1
                if how == "exception()":
                    log.exception("unprintable")
                elif how == "exc_info=exc":
                    log.error("unprintable", exc_info=exc)
                elif how == "exc_info=tuple":
                    log.error("unprintable", exc_info=(type(exc), exc, exc.__traceback__))
                elif how == "exc_info=True":
                    log.error("unprintable", exc_info=True)
                else:
                    log.error("unprintable", error=exc)
            except Exception as error:  # the log call must not raise
                raised.append(f"{how}: {type(error).__name__}")
    return logged, raised


@pytest.mark.parametrize("delivery", ["inline", "background"])
@pytest.mark.parametrize("fmt", ["json", "logfmt", "console"])
def test_an_exception_whose_str_raises_never_makes_the_log_call_raise(
    log_file: Path, fmt: str, delivery: str
) -> None:
    container = configure_logging(
        enrichers=[Tag()], output=str(log_file), delivery=delivery, format=fmt
    )

    logged, raised = _log_unprintable_exceptions()
    report = container.shutdown()

    assert [] == raised
    assert (5, 5) == (logged, report["written"])
    if fmt == "json":
        lines = [json.loads(line) for line in log_file.read_text().splitlines()]
        assert 5 == sum(1 for line in lines if line["event"] == "unprintable")


def test_ainfo_from_loops_that_close_before_the_line_is_written_loses_no_event(
    log_file: Path,
) -> None:
    container = configure_logging(enrichers=[Slow()], output=str(log_file), delivery="inline")
    log = get_logger()

    async def fire_and_forget() -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(log.ainfo("forgotten", i=i)) for i in range(100)]
        await asyncio.sleep(0)  # each task hands its event off; nobody awaits them
        assert all(not task.done() for task in tasks)

    async def cancelled_waits() -> None:
        for i in range(100):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.ainfo("cancelled", i=i), 0.001)

    asyncio.run(fire_and_forget())  # closes its loop with the lines unwritten
    asyncio.run(cancelled_waits())
    for i in range(3):
        asyncio.run(log.ainfo("short-lived loop", i=i))
    flushed = container.flush(30)
    report = container.shutdown()

    kinds = Counter(json.loads(line)["event"] for line in log_file.read_text().splitlines())
    assert flushed
    assert {"forgotten": 100, "cancelled": 100, "short-lived loop": 3} == dict(kinds)
    assert 203 == report["written"]


REQUEST: contextvars.ContextVar[str | None] = contextvars.ContextVar("request", default=None)


class SeesContext(AsyncEnricher):
    name = "sees"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(random.random() * 0.005)  # interleave the requests
        event_dict["async_saw"] = [REQUEST.get(), get_contextvars().get("request_id")]
        return event_dict


class SyncSeesContext(SyncEnricher):
    name = "sync_sees"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["sync_saw"] = REQUEST.get()
        return event_dict


def _bind(request_id: str) -> None:
    clear_contextvars()
    bind_contextvars(request_id=request_id)
    REQUEST.set(request_id)


@pytest.mark.parametrize("blocking", [False, True], ids=["inline-sync", "blocking-sync"])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_contextvars_bound_per_request_reach_each_event_and_its_enrichers_only(
    log_file: Path, delivery: str, blocking: bool
) -> None:
    container = configure_logging(
        enrichers=[SeesContext(), SyncSeesContext(blocking=blocking)],
        output=str(log_file),
        delivery=delivery,
    )
    log = get_logger()

    async def handle(number: int) -> None:
        _bind(f"task-{number}")
        for i in range(4):
            await asyncio.sleep(random.random() * 0.002)
            if i % 2:
                await log.ainfo("request", request=f"task-{number}")
            else:
                log.info("request", request=f"task-{number}")  # sync call on a loop

    async def serve() -> None:
        await asyncio.gather(*(handle(n) for n in range(100)))

    def worker(number: int) -> None:
        for n in range(25):
            _bind(f"thread-{number}-{n}")
            log.info("request", request=f"thread-{number}-{n}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(serve())
    for thread in threads:
        thread.join(timeout=60)
    container.shutdown()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    mismatched = [
        line
        for line in lines
        if not (
            line["request"]
            == line.get("request_id")
            == line["async_saw"][0]
            == line["async_saw"][1]
            == line["sync_saw"]
        )
    ]
    assert 400 + 100 == len(lines)
    assert [] == mismatched[:3]


def test_a_signal_handler_that_logs_while_the_runtime_writes_loses_nothing(
    tmp_path: Path,
) -> None:
    # Background delivery: the lines are written on the runtime's thread,
    # so the signal never finds the main thread inside the writer.
    run = run_script("signal_handler_logs.py", tmp_path / "out.log", "background")
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert summary["handled"] > 0
    assert (summary["logged"], summary["logged"]) == (
        summary["lines"],
        summary["report"]["written"],
    )


@pytest.mark.slow
def test_a_signal_handler_that_logs_while_the_main_thread_writes_does_not_deadlock(
    tmp_path: Path,
) -> None:
    # No enricher: the main thread writes its own lines, and 150 SIGUSR1s
    # land while it logs.
    run = run_script("signal_handler_logs.py", tmp_path / "out.log", "plain", timeout=10)
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (summary["logged"], summary["logged"]) == (
        summary["lines"],
        summary["report"]["written"],
    )


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_fields_named_like_the_logging_methods_parameters_are_written(
    log_file: Path, delivery: str
) -> None:
    """``method_name=`` raised TypeError from structlog's _proxy_to_logger
    into the caller, ``self=`` from the bound method, and the event was
    lost."""
    container = configure_logging(enrichers=[Tag()], output=str(log_file), delivery=delivery)
    log = get_logger()

    log.info("one", method_name="checkout")
    log.warning("two", self="<Order 7>")
    log.log(30, "three", self="x", method_name="y")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("four", self="z")
    asyncio.run(log.ainfo("five", self="a", method_name="b"))
    container.shutdown()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [
        ("one", None, "checkout"),
        ("two", "<Order 7>", None),
        ("three", "x", "y"),
        ("four", "z", None),
        ("five", "a", "b"),
    ] == [(line["event"], line.get("self"), line.get("method_name")) for line in lines]
    assert all(line["tag"] for line in lines)
    assert ("ValueError", "boom") == (
        lines[3]["exception"][0]["exc_type"],
        lines[3]["exception"][0]["exc_value"],
    )
