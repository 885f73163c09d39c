"""Case 8: overload. 8 threads log as fast as they can through a 5 ms async
enricher with a drop overflow policy.

The brief's 8 x 50,000 events take about 35 s per policy on this 2-core
machine; the suite logs 8 x 10,000 per policy (THREADS and EVENTS of the
script raise it). The worst duration of one log call is measured against a
plain lock-and-deque hand-off run by the same threads in the same process;
it is a measurement, asserted only to stay under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
def test_the_worst_log_call_stays_under_a_second(
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

    assert summary["worst_call"] < 1.0, figures


@pytest.mark.xfail(
    strict=True,
    reason="a deadline timer that fires less than max(0.1 x timeout, 50 ms) late is not "
    "taken for the loop's overload: a 5 ms call whose loop is too busy to resume it before "
    "its 50 ms deadline is cancelled as a 'timeout', counted by the breaker, and a burst of "
    "64 such calls (the concurrency limit) opens the circuit",
)
def test_timeouts_caused_by_our_own_burst_are_overloaded_not_breaker_failures(
    tmp_path: Path,
) -> None:
    # One thread, 20,000 events, a 5 ms enricher with a 50 ms timeout.
    run = run_script(
        "overload.py",
        tmp_path / "out.log",
        "drop_new",
        env={"THREADS": "1", "EVENTS": "20000", "DELAY": "0.005", "TIMEOUT": "0.05"},
        timeout=120,
    )
    summary = run.summary

    assert ("closed", 0, 0) == (
        summary["breaker"],
        summary["failures_by_reason"]["timeout"],
        summary["failures_by_reason"]["circuit_open"],
    )
