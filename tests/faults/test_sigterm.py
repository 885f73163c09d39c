"""Held before: SIGTERM, when the application installed no handler of its
own, drains every queued event, then ends the process as SIGTERM would."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.faults.runner import run_script, script_command, script_env


def test_sigterm_with_no_handler_drains_every_queued_event(tmp_path: Path) -> None:
    out = tmp_path / "out.log"

    run = run_script("sigterm.py", out, "self")

    assert -signal.SIGTERM == run.returncode
    assert run.summary["pending"] > 0  # most events were still queued
    assert run.summary["logged"] == len(out.read_bytes().splitlines())


def test_sigterm_while_the_main_thread_logs_loses_no_event_before_the_last_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.log"
    process = subprocess.Popen(
        script_command("sigterm.py", out, "stream"),
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # "ready" comes after 2,000 events; the script goes on logging, so the
    # signal lands mid-stream.
    assert "ready" == process.stdout.readline().strip()

    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=60)

    numbers = [json.loads(line)["i"] for line in out.read_text().splitlines()]
    assert -signal.SIGTERM == status
    assert len(numbers) > 0
    assert list(range(len(numbers))) == sorted(numbers)
