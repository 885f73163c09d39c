"""Found by the fourth outside attack round (a tester with only the README
and the docs), each kept as a test. (The others of that round are kept
beside the behaviour they test: the output, start-up, reconfiguration and
configure-time errors.)"""

from __future__ import annotations

from pathlib import Path

from tests.faults.runner import run_script


def test_a_shutdown_giving_up_on_calls_queued_for_a_slot_leaves_no_pending_task(
    tmp_path: Path,
) -> None:
    run = run_script("slot_queue_at_shutdown.py", tmp_path / "out.log")

    assert 0 == run.returncode, run.stderr
    assert (40, 40) == (run.summary["written"], run.summary["logged"])
    assert "Task was destroyed but it is pending" not in run.stderr
