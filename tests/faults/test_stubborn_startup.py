"""An enricher's ``_startup`` that ignores its cancellation outlives the
shutdown that gave up on it: when it ends later, and when the interpreter
exits with it still running, nothing is reported as failed and asyncio
reports no unread exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.runner import run_script


@pytest.mark.parametrize(
    ("steps", "after"),
    [(3, "4"), (40, "0")],
    ids=["ends-after-the-shutdown", "running-at-exit"],
)
def test_a_start_up_left_running_reports_nothing_false(
    tmp_path: Path, steps: int, after: str
) -> None:
    run = run_script(
        "stubborn_startup.py",
        tmp_path / "out.log",
        env={"STEPS": str(steps), "STEP": "1", "AFTER": after},
    )

    assert run.returncode == 0, run.stderr
    assert (run.summary["logged"], run.summary["lines"]) == (2, 2)
    assert not run.stderr_lines_with("failed to start"), run.stderr
    assert not run.stderr_lines_with("never retrieved"), run.stderr
    assert not run.stderr_lines_with("Traceback"), run.stderr
