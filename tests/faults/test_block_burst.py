"""Held before: the ``block`` overflow policy under a burst loses nothing.

8 threads log 2,500 events each into a queue of 200 (so they block most of
the time) with a long ``overflow_block_timeout``. The brief's 100,000
events take about 45 s on this machine (the runtime writes about 2,000 to
4,000 events a second here); the script's THREADS, EVENTS and QUEUE_SIZE
raise it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.runner import run_script


@pytest.mark.slow
def test_a_burst_into_a_small_blocking_queue_is_written_whole_and_in_order(
    tmp_path: Path,
) -> None:
    run = run_script(
        "block_burst.py",
        tmp_path / "out.log",
        env={"THREADS": "8", "EVENTS": "2500", "QUEUE_SIZE": "200"},
        timeout=180,
    )
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (20_000, 20_000, 20_000) == (summary["logged"], summary["lines"], summary["tagged"])
    assert {"written": 20_000, "dropped": 0, "pending": 0} == {
        key: summary["report"][key] for key in ("written", "dropped", "pending")
    }
    assert summary["in_order"]
    assert 200 == summary["queue_high_water"]  # the queue was full: callers blocked
