"""Case 9: an output that refuses lines: a full disk (``/dev/full``), a
standard output whose reader is gone, a closed ``sys.stdout``.

Paths: ``plain`` (no enricher: structlog writes on the calling thread),
``inline`` and ``background`` (an async enricher: the runtime writes).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.faults.runner import Run, run_script, script_command, script_env

PATHS = ["plain", "inline", "background"]
WARNING = "enrichlog could not write"


@contextmanager
def _pipe_nobody_reads() -> Iterator[int]:
    """The write end of a pipe whose reader is alive but never reads: a
    stalled consumer. Writes block once its buffer (64 KiB) is full."""
    read_end, write_end = os.pipe()
    try:
        yield write_end
    finally:
        os.close(write_end)
        os.close(read_end)


@contextmanager
def _pipe_without_reader() -> Iterator[int]:
    """The write end of a pipe whose read end is already closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def _assert_nothing_raised_and_every_line_counted_as_failed(run: Run, logged: int) -> None:
    summary = run.summary
    assert 0 == run.returncode, run.stderr[-2000:]
    assert [] == summary["raised"]
    assert (logged, logged) == (summary["report"]["write_failed"], summary["metrics_write_failed"])
    assert (0, 0) == (summary["report"]["written"], summary["metrics_written"])


@pytest.fixture(scope="module", params=PATHS)
def full_disk(request: pytest.FixtureRequest) -> Run:
    """1,000 events logged to /dev/full."""
    return run_script("failing_output.py", "/dev/full", request.param)


def test_a_full_disk_raises_nothing_and_counts_every_line_as_failed(full_disk: Run) -> None:
    _assert_nothing_raised_and_every_line_counted_as_failed(full_disk, 1000)


def test_a_full_disk_is_reported_once_within_the_report_interval(full_disk: Run) -> None:
    # drop_report_interval is 10 s; the run takes well under that.
    run = full_disk

    assert run.summary["seconds"] < 10.0
    assert 1 == len(_during_the_run(run))


def test_a_lasting_failure_is_reported_at_most_once_per_interval() -> None:
    interval = 0.05

    run = run_script(
        "failing_output.py",
        "/dev/full",
        "inline",
        env={"EVENTS": "3000", "DROP_REPORT_INTERVAL": str(interval)},
    )

    warnings = len(_during_the_run(run))
    allowed = int(run.summary["seconds"] / interval) + 1
    assert 1 < warnings <= allowed, (warnings, allowed)


@pytest.mark.parametrize("path", PATHS)
def test_a_stdout_whose_reader_is_gone_raises_nothing_and_the_process_exits_cleanly(
    path: str,
) -> None:
    with _pipe_without_reader() as stdout:
        run = run_script("failing_output.py", "stdout", path, stdout=stdout)

    _assert_nothing_raised_and_every_line_counted_as_failed(run, 1000)
    assert 1 == len(_during_the_run(run))
    assert "Traceback" not in run.stderr
    assert "Exception ignored" not in run.stderr


@pytest.mark.parametrize(
    ("path", "when"),
    [("plain", "1"), ("background", "after")],
    ids=["plain-closed-before-configure", "background-closed-after-configure"],
)
def test_a_closed_sys_stdout_raises_nothing_and_counts_every_line_as_failed(
    path: str, when: str
) -> None:
    run = run_script("failing_output.py", "stdout", path, env={"CLOSE_STDOUT": when})

    _assert_nothing_raised_and_every_line_counted_as_failed(run, 1000)
    assert 1 == len(_during_the_run(run))


def test_piped_into_head_the_script_ends_quietly_with_status_zero() -> None:
    command = " ".join(shlex.quote(part) for part in script_command("failing_output.py"))
    shell = f"{command} stdout plain | head -1; echo status=${{PIPESTATUS[0]}} >&2"

    proc = subprocess.run(
        ["bash", "-c", shell],
        env=script_env({"EVENTS": "20000"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert 1 == len(proc.stdout.splitlines())
    assert "status=0" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_broken_pipe_does_not_make_a_hundred_thousand_events_slow() -> None:
    env = {"EVENTS": "100000"}
    baseline = run_script("failing_output.py", os.devnull, "plain", env=env, timeout=120)

    with _pipe_without_reader() as stdout:
        broken = run_script("failing_output.py", "stdout", "plain", env=env, stdout=stdout)

    figures = {
        "broken_pipe_s": round(broken.summary["seconds"], 2),
        "dev_null_s": round(baseline.summary["seconds"], 2),
    }
    print(f"100,000 events, no enricher: {figures}")
    assert 100_000 == broken.summary["report"]["write_failed"]
    assert broken.summary["seconds"] <= 2 * baseline.summary["seconds"] + 1.0, figures


@pytest.mark.slow
def test_shutdown_returns_in_time_when_the_output_blocks() -> None:
    # 5,000 background events into a pipe nobody reads; background log
    # calls never wait, but shutdown must not wait forever either.
    env = {"EVENTS": "5000", "SHUTDOWN_TIMEOUT": "1", "FLUSH_TIMEOUT": "1"}
    with _pipe_nobody_reads() as stdout:
        run = run_script(
            "failing_output.py", "stdout", "background", env=env, stdout=stdout, timeout=10
        )

    assert [] == run.summary["raised"]
    assert run.summary["shutdown_seconds"] <= 1 + 3.0


@pytest.mark.slow
def test_a_blocked_output_is_waited_for_once_at_shutdown() -> None:
    # Found by an outside tester: shutdown waited shutdown_timeout for the
    # drain, then as long again for the output's lock (2 x 3 s + 1 s here),
    # and counted lines of the batch being written both as written and as
    # pending.
    env = {"EVENTS": "5000", "SHUTDOWN_TIMEOUT": "3", "FLUSH_TIMEOUT": "0.5"}
    with _pipe_nobody_reads() as stdout:
        run = run_script(
            "failing_output.py", "stdout", "background", env=env, stdout=stdout, timeout=30
        )

    report = run.summary["report"]
    assert [] == run.summary["raised"]
    assert run.summary["shutdown_seconds"] <= 3 + 2.5  # the drain's timeout, plus about a second
    assert 5_000 == report["written"] + report["pending"] + report["write_failed"]


def test_every_failed_line_is_reported_by_the_end_of_shutdown() -> None:
    run = run_script("failing_output.py", "/dev/full", "background")

    reported = sum(
        int(match.group(1))
        for line in run.stderr_lines_with(WARNING)
        if (match := re.search(r"could not write (\d+) line", line))
    )
    assert run.summary["report"]["write_failed"] == reported


def _during_the_run(run: Run) -> list[str]:
    """The failure reports of the run, without shutdown's closing summary
    (which reports what the rate limit held back)."""
    return [line for line in run.stderr_lines_with(WARNING) if "since its last report" not in line]
