"""Held before: ``os.fork()`` while other threads log. The parent's threads
keep logging through the forks; each child logs 100 events through the
async enricher and ends, by ``sys.exit`` (the exit drain) or by
``shutdown()`` then ``os._exit``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.runner import run_script

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.mark.parametrize("ending", ["exit", "shutdown"])
def test_children_forked_while_threads_log_write_every_event_and_so_does_the_parent(
    tmp_path: Path, ending: str
) -> None:
    run = run_script("fork_while_logging.py", tmp_path / "out.log", ending, timeout=120)
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert [0, 0, 0, 0, 0] == summary["statuses"]
    assert (500, 500, 500, 500) == (
        summary["child_logged"],
        summary["child_lines"],
        summary["child_distinct"],
        summary["child_tagged"],
    )
    assert (summary["parent_logged"], summary["parent_logged"]) == (
        summary["parent_lines"],
        summary["parent_distinct"],
    )


@pytest.mark.parametrize("what", ["shutdown", "reconfigure"])
def test_a_child_forked_while_the_parent_shuts_down_writes_its_events(
    tmp_path: Path, what: str
) -> None:
    """The child's container is shut down, as the parent's is about to be:
    its log calls write their own events at once (no runtime to wait for)."""
    run = run_script("fork_during_shutdown.py", tmp_path / "out.log", what, timeout=120)
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (0, list(range(50)), 400) == (
        summary["child_status"],
        summary["child_lines"],
        summary["parent_lines"],
    )
    assert summary["child_seconds"] < 10, summary["child_seconds"]


@pytest.mark.parametrize("where", ["thread", "loop"])
def test_a_child_forked_from_an_application_with_the_loop_runtime_writes_its_events(
    tmp_path: Path, where: str
) -> None:
    """The parent's loop is not the child's: in the child the container is
    shut down, and its log calls write their own events at once."""
    run = run_script("fork_loop_runtime.py", tmp_path / "out.log", where, timeout=120)
    summary = run.summary

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (0, list(range(50)), ["seen"]) == (
        summary["child_status"],
        summary["child_lines"],
        summary["parent_tagged"],
    )
    assert "Exception ignored" not in run.stderr, run.stderr[-2000:]
