"""Case 8: overload. 8 threads log as fast as they can through a 5 ms async
enricher with a drop overflow policy.

The brief's 8 x 50,000 events take about 35 s per policy on this 2-core
machine; the suite logs 8 x 10,000 per policy (THREADS and EVENTS of the
script raise it). The worst duration of one log call is measured against a
plain lock-and-deque hand-off run by the same threads in the same process;
it is a measurement, asserted only to stay under a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, configure_logging, get_logger
from tests.faults.runner import Run, run_script

THREADS, EVENTS = 8, 10_000


@pytest.fixture(scope="module", params=["drop_old", "drop_new"])
def overload(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    out = tmp_path_factory.mktemp("overload") / "out.log"
    return run_script(
        "overload.py",
        out,
        request.param,
        env={"THREADS": str(THREADS), "EVENTS": str(EVENTS), "DELAY": "0.005"},
        timeout=180,
    )


@pytest.mark.slow
def test_lines_written_plus_events_dropped_is_exactly_what_was_logged(overload: Run) -> None:
    summary = overload.summary
    report = summary["report"]

    assert THREADS * EVENTS == summary["logged"]
    assert summary["logged"] == summary["lines"] + report["dropped"]
    assert (summary["lines"], summary["lines"], 0) == (
        summary["distinct"],
        report["written"],
        report["pending"],
    )


@pytest.mark.slow
def test_our_own_overload_never_opens_the_breaker(overload: Run) -> None:
    summary = overload.summary

    assert "closed" == summary["breaker"]
    assert 0 == summary["failures_by_reason"]["circuit_open"]
    assert {} == {
        reason: count
        for reason, count in summary["reasons"].items()
        if reason in {"circuit_open", "timeout"}
    }


@pytest.mark.slow
def test_the_worst_log_call_stays_under_a_few_seconds(
    overload: Run, record_property: Callable[[str, Any], None]
) -> None:
    summary = overload.summary
    figures = {
        key: round(summary[key] * 1000, 2)
        for key in ("worst_call", "p99_call", "worst_reference", "p99_reference")
    }
    for key, value in figures.items():
        record_property(f"{key}_ms", value)
    print(f"log call durations in ms (enrichlog vs lock-and-deque): {figures}")

    # Generous: this 2-core machine is shared with other sessions' benchmarks,
    # and the worst call of a run is where their load shows (up to 2.2 s seen).
    assert summary["worst_call"] < 5.0, figures


class Quick(AsyncEnricher):
    """A 5 ms lookup with a 50 ms timeout: ten times what it needs."""

    name = "quick"

    def __init__(self, steps: int = 1, **options: Any) -> None:
        super().__init__(**options)
        self.steps = steps

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        for _ in range(self.steps):
            await asyncio.sleep(0.005)
        event_dict["quick"] = True
        return event_dict


class StallsTheLoop(AsyncEnricher):
    """Keeps the runtime's loop busy, as a burst of the runtime's own work
    does: a call started just before it cannot be resumed meanwhile."""

    name = "stall"

    def __init__(self, seconds: float, **options: Any) -> None:
        super().__init__(**options)
        self.seconds = seconds

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        time.sleep(self.seconds)  # noqa: ASYNC251 - stalls the loop on purpose
        event_dict["stall"] = True
        return event_dict


def _through_a_stall(log_file: Path, seconds: float, steps: int = 1) -> tuple[list[Any], Any]:
    """Six events through Quick (``steps`` awaits of 5 ms) and a sibling
    that stalls the loop for ``seconds``: each line's ``quick`` field and
    error reasons, and Quick's metrics."""
    container = configure_logging(
        enrichers=[Quick(steps, timeout=0.05), StallsTheLoop(seconds, timeout=1.0)],
        output=str(log_file),
        delivery="inline",
    )
    log = get_logger()
    for i in range(6):
        log.info("e", i=i)
    quick = container.metrics()["enrichers"]["quick"]
    container.shutdown()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    return [(line.get("quick"), line.get("enrichment_errors")) for line in lines], quick


@pytest.mark.parametrize("stall", [0.075, 0.2])
def test_a_call_that_finished_its_work_while_the_loop_stalled_completes(
    log_file: Path, stall: float
) -> None:
    # Its 5 ms wait ended during the stall; its deadline (50 ms) passed
    # during the stall too. The work was done in time: the fields are kept.
    lines, quick = _through_a_stall(log_file, stall)

    assert [(True, None)] * 6 == lines
    assert ("closed", 0, 6) == (
        quick["breaker"],
        quick["failures_by_reason"]["timeout"],
        quick["successes"],
    )


def test_a_call_held_up_by_a_long_loop_stall_is_overloaded_and_spares_the_breaker(
    log_file: Path,
) -> None:
    # Its first wait ended during the 200 ms stall, the second cannot end
    # before the deadline that passed 150 ms ago: the loop's fault.
    lines, quick = _through_a_stall(log_file, 0.2, steps=2)

    assert [(None, {"quick": "overloaded"})] * 6 == lines
    assert ("closed", 0) == (quick["breaker"], quick["failures_by_reason"]["timeout"])
