"""Case 1: async enrichers that ignore their cancellation.

One enricher catches ``CancelledError`` and keeps awaiting; another awaits
for seconds in its ``finally:``. Every 100th of 1,000 background events
reaches them. Each script run is shared by the tests that read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults.runner import Run, run_script

TIMEOUT = 0.2
SHUTDOWN_TIMEOUT = 3.0


def _run(tmp_path: Path, mode: str, **env: str) -> Run:
    return run_script(
        "stubborn_enricher.py",
        tmp_path / "out.log",
        mode,
        env={"TIMEOUT": str(TIMEOUT), "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT), **env},
    )


@pytest.fixture(
    scope="module",
    params=[
        ("swallow", "0"),
        ("finally", "0"),
        ("swallow", "1"),  # through the cache: a single-flight computation
    ],
    ids=["swallows-cancellation", "awaits-in-finally", "swallows-cancellation-cached"],
)
def stubborn(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    mode, cached = request.param
    return _run(tmp_path_factory.mktemp("stubborn"), mode, CACHED=cached)


def test_every_event_logged_is_written_once(stubborn: Run) -> None:
    summary = stubborn.summary

    assert (summary["logged"], summary["logged"]) == (summary["lines"], summary["distinct"])


def test_the_stubborn_enrichers_field_is_missing_with_reason_timeout(stubborn: Run) -> None:
    summary = stubborn.summary

    assert (["None"], ["timeout"]) == (summary["stubborn_fields"], summary["stubborn_reasons"])


def test_the_other_enrichers_still_add_their_fields(stubborn: Run) -> None:
    summary = stubborn.summary

    assert (["True"], ["fast"]) == (summary["quick_fields"], summary["fast_fields"])


def test_abandoned_calls_are_counted_per_enricher_in_total_and_in_the_report(
    stubborn: Run,
) -> None:
    summary = stubborn.summary
    expected = summary["stubborn_logged"]

    assert (expected, expected, expected) == (
        summary["enricher_abandoned"],
        summary["metrics_abandoned"],
        summary["report"]["abandoned"],
    )


def test_an_abandoned_call_is_in_the_latency_histogram_while_it_lingers(stubborn: Run) -> None:
    """Found by an outside tester: an abandoned call was observed only when
    its coroutine ended, so the histogram's count (documented as the calls
    made) fell behind ``calls``, for good for a call that never ends."""
    summary = stubborn.summary

    assert summary["enricher_calls"] == summary["enricher_calls_timed"]


def test_a_call_ignoring_its_cancellation_is_given_up_within_a_second_of_its_deadline(
    stubborn: Run,
) -> None:
    late = stubborn.summary["late_after_deadline"]

    assert late <= 1.0, f"given up {late:.2f}s after its deadline"


def test_an_event_logged_after_an_abandoned_call_is_written_promptly(stubborn: Run) -> None:
    summary = stubborn.summary

    # The pair (stubborn event, then an ordinary one) is flushed once the
    # stubborn call is abandoned, long before its coroutine ends (30 s).
    assert summary["pair_flushed"]
    assert summary["pair_seconds"] <= TIMEOUT + 1.0


def test_shutdown_returns_within_its_timeout_plus_two_seconds(stubborn: Run) -> None:
    summary = stubborn.summary

    assert 0 == summary["report"]["pending"]
    assert summary["shutdown_seconds"] <= SHUTDOWN_TIMEOUT + 2.0


def test_shutdown_with_stubborn_calls_in_flight_writes_every_event_in_time(
    tmp_path: Path,
) -> None:
    run = _run(tmp_path, "finally", DRAIN_AT_ONCE="1")
    summary: dict[str, Any] = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (summary["logged"], summary["logged"]) == (summary["lines"], summary["distinct"])
    assert ["timeout"] == summary["stubborn_reasons"]
    assert 0 == summary["report"]["pending"]
    assert summary["shutdown_seconds"] <= SHUTDOWN_TIMEOUT + 2.0


def test_a_drain_shorter_than_the_stubborn_calls_salvages_every_event(tmp_path: Path) -> None:
    # shutdown_timeout 0.1 s, enricher timeout 1 s: the drain gives up on
    # the calls still running and writes their events with what they have.
    run = _run(tmp_path, "swallow", DRAIN_AT_ONCE="1", TIMEOUT="1.0", SHUTDOWN_TIMEOUT="0.1")
    summary = run.summary

    assert (summary["logged"], summary["logged"]) == (summary["lines"], summary["distinct"])
    assert summary["logged"] == summary["report"]["salvaged"]
    assert summary["shutdown_seconds"] <= 0.1 + 2.0
