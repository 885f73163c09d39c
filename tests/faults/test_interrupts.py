"""Case 7: KeyboardInterrupt, SystemExit and other BaseExceptions in
enrichers.

A real SIGINT, and an uncaught interrupt that ends the script, run in a
subprocess; the enrichers that raise interrupts themselves run here.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger
from tests.faults.runner import Run, run_script


class OwnBaseError(BaseException):
    """Neither an Exception, a KeyboardInterrupt nor a SystemExit."""


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- a real SIGINT, in a subprocess ---------------------------------------------


@pytest.fixture(scope="module")
def sigint_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """The ``sigint`` scenario's run for a delivery, run once per module."""
    runs: dict[str, Run] = {}

    def get(delivery: str) -> Run:
        if delivery not in runs:
            out = tmp_path_factory.mktemp("sigint") / "out.log"
            runs[delivery] = run_script("interrupts.py", out, "sigint", delivery)
        return runs[delivery]

    return get


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_real_sigint_during_a_slow_sync_enricher_reaches_the_application(
    sigint_runs: Callable[[str], Run], delivery: str
) -> None:
    run = sigint_runs(delivery)

    summary = run.summary
    assert 0 == run.returncode, run.stderr[-2000:]
    assert ["KeyboardInterrupt"] == summary["caught"]
    assert summary["boom_seconds"] < 1.5  # interrupted, not waited out (2 s)
    assert (3, ["before", "boom", "after"]) == (summary["lines"], summary["events"])
    assert ([None], [{"slow": "error: KeyboardInterrupt"}]) == (
        summary["boom_slow"],
        summary["boom_errors"],
    )


def test_inline_the_interrupted_event_is_written_before_the_interrupt_is_raised(
    sigint_runs: Callable[[str], Run],
) -> None:
    run = sigint_runs("inline")

    # "before" and "boom" are in the file when the application catches it.
    assert [2] == run.summary["lines_when_caught"]


@pytest.mark.parametrize(
    ("scenario", "delivery", "status"),
    [
        ("sigint", "inline", -signal.SIGINT),  # re-raised as SIGINT: the shell's 130
        ("sysexit", "background", 3),
    ],
    ids=["sigint-inline", "sysexit-background"],
)
def test_an_uncaught_interrupt_ends_the_script_and_the_exit_drain_writes_its_event(
    tmp_path: Path, scenario: str, delivery: str, status: int
) -> None:
    out = tmp_path / "out.log"

    run = run_script("interrupts.py", out, scenario, delivery, env={"UNHANDLED": "1"})

    lines = _lines(out)
    assert status == run.returncode
    assert (run.summary["logged"], ["before", "boom"]) == (
        len(lines),
        [line["event"] for line in lines],
    )
    assert "slow" not in lines[1]


# -- interrupts raised by enrichers, in this process ----------------------------


class Raises(SyncEnricher):
    name = "raiser"

    def __init__(self, exc: BaseException, **options: Any) -> None:
        super().__init__(**options)
        self.exc = exc

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict["event"] == "boom":
            raise self.exc
        event_dict["raiser"] = True
        return event_dict


class AsyncRaises(AsyncEnricher):
    name = "raiser"

    def __init__(self, exc: BaseException, **options: Any) -> None:
        super().__init__(**options)
        self.exc = exc

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        if event_dict["event"] == "boom":
            raise self.exc
        event_dict["raiser"] = True
        return event_dict


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


def _log_three(container: Any) -> list[str]:
    """Log before, boom, after; the names of what reached us."""
    caught = []
    log = get_logger()
    log.info("before")
    try:
        log.info("boom")
    except BaseException as exc:
        caught.append(type(exc).__name__)
    log.info("after")
    container.flush(10)
    return caught


@pytest.mark.parametrize("delivery", ["inline", "background"])
@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), SystemExit(3)], ids=["KeyboardInterrupt", "SystemExit"]
)
def test_an_interrupt_raised_by_a_sync_enricher_reaches_the_application_and_its_event_is_written(
    log_file: Path, exc: BaseException, delivery: str
) -> None:
    container = configure_logging(
        enrichers=[Raises(exc), Tag()], output=str(log_file), delivery=delivery
    )

    caught = _log_three(container)
    container.shutdown()

    lines = _lines(log_file)
    reason = f"error: {type(exc).__name__}"
    assert [type(exc).__name__] == caught
    assert ["before", "boom", "after"] == [line["event"] for line in lines]
    assert ({"raiser": reason}, None, True) == (
        lines[1].get("enrichment_errors"),
        lines[1].get("raiser"),
        lines[1].get("tag"),
    )


@pytest.mark.parametrize(
    ("kind", "exc"),
    [
        ("sync", OwnBaseError()),
        ("async", KeyboardInterrupt()),
        ("async", SystemExit(3)),
        ("async", OwnBaseError()),
        ("blocking", KeyboardInterrupt()),
        ("blocking", SystemExit(3)),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_other_base_exceptions_and_interrupts_off_the_logging_thread_stay_reasons(
    log_file: Path, kind: str, exc: BaseException, delivery: str
) -> None:
    raiser: Any = {
        "sync": lambda: Raises(exc),
        "async": lambda: AsyncRaises(exc, failure_threshold=100),
        "blocking": lambda: Raises(exc, blocking=True),
    }[kind]()
    container = configure_logging(
        enrichers=[raiser, Tag()], output=str(log_file), delivery=delivery
    )

    caught = _log_three(container)
    report = container.shutdown()

    lines = _lines(log_file)
    assert [] == caught
    assert (3, ["before", "boom", "after"]) == (
        report["written"],
        [line["event"] for line in lines],
    )
    assert {"raiser": f"error: {type(exc).__name__}"} == lines[1].get("enrichment_errors")
    assert [True, True] == [lines[0].get("raiser"), lines[2].get("raiser")]


@pytest.mark.slow
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_storm_of_sigints_inside_log_calls_never_loses_a_returned_event_or_stalls_flush(
    tmp_path: Path, delivery: str
) -> None:
    # KeyboardInterrupt lands anywhere inside enrichlog's log call: an
    # interrupted event may or may not have been queued, but every call
    # that returned is written, none twice, and nothing stays pending.
    run = run_script("sigint_storm.py", tmp_path / "out.log", delivery)
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert summary["interrupted"] > 0
    assert ([], []) == (summary["returned_not_written"], summary["written_not_attempted"])
    assert summary["lines"] == summary["distinct"]
    assert summary["returned"] <= summary["lines"] <= summary["attempted"]
    assert (True, 0, 0) == (
        summary["flushed"],
        summary["pending_after_flush"],
        summary["report"]["pending"],
    )
