"""Case 4: the exit drain runs while the interpreter's thread pools still
accept work.

The script logs 200 background events through an enricher that needs a
thread pool (``asyncio.to_thread``, ``loop.run_in_executor(None, ...)``,
``loop.getaddrinfo``), then ends without calling shutdown or flush.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.runner import run_script

HOWS = ["to_thread", "run_in_executor", "getaddrinfo"]


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("how", HOWS)
def test_events_queued_when_the_script_ends_are_written_with_the_enrichers_field(
    tmp_path: Path, how: str
) -> None:
    out = tmp_path / "exit.log"

    run = run_script("exit_drain.py", out, how, "main")

    lines = _lines(out)
    assert 0 == run.returncode, run.stderr[-2000:]
    assert (200, 200) == (run.summary["logged"], len(lines))
    assert 200 == sum(1 for line in lines if line.get("via") == "resolved")


def test_events_a_non_daemon_thread_logs_after_the_main_thread_ended_are_all_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "exit.log"

    run = run_script("exit_drain.py", out, "to_thread", "worker")

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (200, 200) == (run.summary["logged"], len(_lines(out)))


def test_events_a_non_daemon_thread_logs_at_exit_still_get_the_enrichers_field(
    tmp_path: Path,
) -> None:
    out = tmp_path / "exit.log"

    run_script("exit_drain.py", out, "to_thread", "worker")

    lines = _lines(out)
    assert 200 == sum(1 for line in lines if line.get("via") == "resolved")
