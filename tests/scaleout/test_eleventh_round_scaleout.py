"""Found by the eleventh round's outside re-test (a tester with only the
README and the docs): a worker started with a standard stream closed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Streams, lines_of, wait_until, worker_env
from .test_tenth_round_scaleout import _produce


def _worker_in_shell(
    streams: Streams, tmp_path: Path, redirections: str, output: str
) -> subprocess.Popen[str]:
    command = f"exec {sys.executable} -m enrichlog worker --stats-interval 0 {redirections}"
    return subprocess.Popen(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=worker_env(streams, output),
        stdout=subprocess.DEVNULL if ">" not in redirections.replace("2>", "") else None,
        stderr=subprocess.PIPE if "2>" not in redirections else None,
        text=True,
    )


def test_a_worker_without_stderr_writes_every_event_and_keeps_running(
    streams: Streams, tmp_path: Path
) -> None:
    # Its first metrics line wrote to a missing sys.stderr: the worker
    # crashed at once, silently, status 1, with 0 of 20 events written (and
    # each crash used up one delivery of the events it held).
    output = tmp_path / "out.jsonl"
    _produce(streams, tmp_path, 20)
    worker = _worker_in_shell(streams, tmp_path, "2>&-", str(output))
    try:
        wait_until(lambda: len(lines_of(output)) >= 20, 30, "20 lines")
        time.sleep(0.5)
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        status = worker.wait(20)

    assert 0 == status
    assert 20 == len(lines_of(output))


def test_a_worker_without_the_stdout_it_writes_to_takes_no_event(
    streams: Streams, tmp_path: Path
) -> None:
    # A closed stdout made enrichlog point descriptor 1 at /dev/null: the
    # event loop's own descriptor by then, so the loop broke ("[Errno 22]
    # Invalid argument"). And each run took every event and handed it back
    # unwritten, a delivery used up each time: three restarts later, a
    # healthy worker dead-lettered them all. Now it takes none.
    _produce(streams, tmp_path, 5)
    for _ in range(6):  # more runs than max_deliver (5)
        worker = _worker_in_shell(streams, tmp_path, ">&-", "stdout")
        _, err = worker.communicate(timeout=60)
        assert 1 == worker.returncode
        assert "Traceback" not in err
        assert err.strip().startswith("error: the output is stdout, and the worker was started")

    output = tmp_path / "out.jsonl"
    healthy = _worker_in_shell(streams, tmp_path, "", str(output))
    try:
        wait_until(lambda: len(lines_of(output)) >= 5, 30, "the 5 events")
    finally:
        healthy.send_signal(signal.SIGTERM)
        healthy.wait(20)
    assert 5 == len(lines_of(output))
