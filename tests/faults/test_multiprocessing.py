"""Case 3: multiprocessing children log through an async enricher with
background delivery; nobody calls shutdown in them.

Logging is configured at module level in the script, outside ``if __name__
== "__main__"``, so forkserver and spawn children configure it on import.
fork: 4 children x 1,000 events; forkserver and spawn: 2 children x 1,000
(each child imports enrichlog, about 2 s of this machine's time apiece).
"""

from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, configure_logging, get_logger
from tests.faults.runner import Run, run_script

METHODS = [
    # Children that import enrichlog afresh take seconds each on this machine.
    pytest.param(method, marks=[] if method == "fork" else [pytest.mark.slow])
    for method in ("fork", "forkserver", "spawn")
    if method in multiprocessing.get_all_start_methods()
]


def _children(method: str) -> int:
    return 4 if method == "fork" else 2


def _expected(method: str, kind: str) -> int:
    tasks = _children(method) * (2 if kind == "pool-maxtasks" else 1)
    return tasks * 1000


def _run(tmp_path: Path, method: str, kind: str, **env: str) -> Run:
    out = tmp_path / "children.log"
    return run_script(
        "mp_children.py",
        method,
        kind,
        env={"FAULTS_OUTPUT": str(out), "CHILDREN": str(_children(method)), **env},
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["process", "pool"])
@pytest.mark.parametrize("method", METHODS)
def test_every_event_a_child_logs_is_written_once_and_enriched(
    tmp_path: Path, method: str, kind: str
) -> None:
    run = _run(tmp_path, method, kind)
    summary = run.summary
    expected = _expected(method, kind)

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (expected, expected, expected, expected) == (
        summary["logged"],
        summary["lines"],
        summary["distinct"],
        summary["tagged"],
    )


@pytest.mark.parametrize("method", [m for m in METHODS if m.values[0] != "forkserver"])
def test_pool_workers_terminated_by_the_with_block_drain_their_queue_first(
    tmp_path: Path, method: str
) -> None:
    # ``with Pool() as pool: pool.map(...)`` terminates the workers (SIGTERM)
    # right after map() returns; a slow enricher keeps their queues full.
    run = _run(
        tmp_path, method, "pool-terminate", TAG_DELAY="0.02", MAX_IN_FLIGHT="8", EVENTS="200"
    )
    summary = run.summary
    expected = _children(method) * 200

    assert 0 == run.returncode, run.stderr[-2000:]
    assert (expected, expected, expected) == (
        summary["logged"],
        summary["lines"],
        summary["tagged"],
    )


def test_pool_workers_replaced_after_each_task_write_every_event(tmp_path: Path) -> None:
    run = _run(tmp_path, "fork", "pool-maxtasks")
    summary = run.summary

    assert (8000, 8000, 8000) == (summary["logged"], summary["lines"], summary["distinct"])


class SeesItsSignalMask(AsyncEnricher):
    """Records the signals blocked on the thread it runs on."""

    name = "mask"

    masks: list[set[int]] = []  # noqa: RUF012 - read by the test

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        SeesItsSignalMask.masks.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        return event_dict


def test_enrichlogs_threads_leave_sigterm_to_the_main_thread(tmp_path: Path) -> None:
    # A pool worker blocked on the pool's queue lock never ran its SIGTERM
    # handler when the kernel gave the signal to enrichlog's runtime thread:
    # terminate() then waited for it forever (about one run in twenty).
    container = configure_logging(
        enrichers=[SeesItsSignalMask()], output=str(tmp_path / "out.log"), delivery="inline"
    )
    get_logger().info("e")
    main_thread_mask = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    container.shutdown()

    assert {signal.SIGTERM, signal.SIGINT} <= SeesItsSignalMask.masks[0]
    assert signal.SIGTERM not in main_thread_mask
