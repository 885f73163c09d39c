"""The ``dlq`` and ``worker`` commands as an outside tester met them: a replay
the server's duplicate window dropped, sequence numbers no stream has, an
unreachable broker reported without a reason, a worker stopped while it
starts, and a worker that came back from a broker outage holding far more
than ``max_in_flight`` events."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enrichlog import worker as worker_module
from enrichlog.cli.dlq import run_dlq
from enrichlog.settings import LoggingSettings
from enrichlog.transport.config import TransportConfig
from enrichlog.transport.deadletter import dead_letter_body
from enrichlog.transport.nats import ensure_stream
from enrichlog.worker import Worker
from tests.services import tcp_proxy

from .conftest import NATS_HOST, NATS_PORT, Streams, js_call, lines_of, wait_until, worker_env

pytestmark = pytest.mark.services


# -- dlq --------------------------------------------------------------------------


def _dead_letter(streams: Streams, event_id: str = "ev-1") -> None:
    """One dead letter (sequence 1) holding an event, as a worker writes it."""
    config = TransportConfig.parse(streams.uri())

    async def publish(js: Any) -> None:
        await ensure_stream(js, config.dlq_stream, config.dlq_subject)
        body = dead_letter_body(
            data=b"",
            event={"event": "order", "event_id": event_id, "level": "info"},
            event_id=event_id,
            reason="output '/x' cannot be written: IsADirectoryError: Is a directory",
            deliveries=3,
            subject=streams.subject,
            stream_sequence=1,
        )
        await js.publish(config.dlq_subject, body)

    js_call(publish)


def _messages_in(stream: str) -> int:
    """How many messages ``stream`` holds (0 when it does not exist)."""

    async def count(js: Any) -> int:
        from nats.js.errors import NotFoundError

        try:
            messages: int = (await js.stream_info(stream)).state.messages
        except NotFoundError:
            return 0
        return messages

    result: int = js_call(count)
    return result


def _dlq(*args: Any, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_dlq(*args, out=out, err=err, **kwargs)
    return status, out.getvalue(), err.getvalue()


def test_a_keep_replay_run_again_within_the_duplicate_window_says_it_published_nothing(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by an outside tester: the second run printed "replayed 1
    # event(s)" while the server dropped the copy (same message id).
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    _dead_letter(streams)

    first = _dlq("replay", [1], keep=True)
    second = _dlq("replay", [1], keep=True)

    assert (0, f"replayed 1 event(s) to {streams.subject}\n", "") == first
    status, out, err = second
    assert (0, "") == (status, err)
    assert out.startswith(f"replayed 0 event(s) to {streams.subject}\n")
    assert (
        "1 event(s) not published again (dead letter 1): already replayed within the "
        f"duplicate window of {streams.stream} (120 s)\n"
    ) in out
    assert 1 == _messages_in(streams.stream)  # what the server kept: one replay
    assert 1 == _messages_in(streams.dlq_stream)  # --keep


def test_a_replay_the_server_already_had_still_deletes_its_dead_letter(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command run again after it published and failed before deleting, or
    # after a --keep replay: the event is in the stream; the dead letter goes.
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    _dead_letter(streams)
    _dlq("replay", [1], keep=True)

    status, out, _ = _dlq("replay", [], replay_all=True)

    assert 0 == status
    assert out.startswith(f"replayed 0 event(s) to {streams.subject}\n")
    assert "; deleted, as their earlier replay is in the stream" in out
    assert (1, 0) == (_messages_in(streams.stream), _messages_in(streams.dlq_stream))


@pytest.mark.parametrize("keep", [False, True])
def test_a_sequence_given_twice_is_replayed_once(
    streams: Streams, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    # Found by the re-test: `dlq replay 1 1` replayed, deleted, then failed
    # on the second 1 with a raw BadRequestError; with --keep it counted the
    # dead letter twice as not published again.
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    _dead_letter(streams)

    status, out, err = _dlq("replay", [1, 1], keep=keep)

    assert (0, f"replayed 1 event(s) to {streams.subject}\n", "") == (status, out, err)
    assert (1, int(keep)) == (_messages_in(streams.stream), _messages_in(streams.dlq_stream))


def test_all_and_sequence_numbers_together_are_refused_before_anything_is_replayed(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the second re-test: `dlq replay --all 5` replayed and deleted
    # every dead letter, then failed on 5 with a raw ServerError.
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    _dead_letter(streams)

    status, out, err = _dlq("replay", [1], replay_all=True)

    assert (1, "", "error: give either --all or sequence numbers, not both\n") == (status, out, err)
    assert (0, 1) == (_messages_in(streams.stream), _messages_in(streams.dlq_stream))


@pytest.mark.parametrize("action", ["show", "replay"])
@pytest.mark.parametrize(
    ("sequence", "said"),
    [
        (0, "sequence numbers start at 1"),
        (-3, "sequence numbers start at 1"),
        (999, "(dlq list shows them)"),
        (2**64, "(dlq list shows them)"),  # past a stream's last possible one
    ],
)
def test_a_sequence_that_names_no_dead_letter_is_a_clear_error(
    streams: Streams, monkeypatch: pytest.MonkeyPatch, action: str, sequence: int, said: str
) -> None:
    # Found by an outside tester: `dlq show 0` printed the server's raw
    # "BadRequestError: ... bad request".
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    _dead_letter(streams)

    status, out, err = _dlq(action, [sequence])

    assert (1, "") == (status, out)
    assert err.startswith(f"error: no dead letter {sequence} in {streams.dlq_stream}")
    assert said in err
    assert "BadRequest" not in err
    assert 0 == _messages_in(streams.stream)  # nothing replayed


def test_dlq_show_0_exits_1_with_the_reason(streams: Streams) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "enrichlog", "dlq", "show", "0"],
        env=worker_env(streams, "stdout"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert (1, "") == (shown.returncode, shown.stdout)
    assert shown.stderr == (
        f"error: no dead letter 0 in {streams.dlq_stream}: sequence numbers start at 1 "
        "(dlq list shows them)\n"
    )


# -- an unreachable broker --------------------------------------------------------


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word (no NATS
    greeting): a client waits until it gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def _unreachable_report(worker: Worker, caplog: pytest.LogCaptureFixture) -> str:
    """Run ``worker`` until it reports its broker unreachable, stop it, and
    return that report (the only one)."""

    async def run_until_reported() -> None:
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        while "unreachable" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        worker.request_stop()
        await running

    with caplog.at_level(logging.WARNING, logger="enrichlog.worker"):
        asyncio.run(run_until_reported())
    (message,) = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    return message


def test_an_unreachable_broker_is_reported_with_a_reason_and_secrets_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by an outside tester: "(TimeoutError: )", an empty reason.
    monkeypatch.setattr(worker_module, "CONNECT_WAIT", 0.3)
    stats = io.StringIO()
    with _silent_server() as port:
        settings = LoggingSettings(
            transport=f"nats://ops:s3cret@127.0.0.1:{port}?stream=S&subject=s.logs",
            output=str(tmp_path / "out.log"),
        )
        message = _unreachable_report(Worker(settings, stats_out=stats), caplog)

    assert message == (
        f"enrichlog worker: the broker at nats://ops:***@127.0.0.1:{port}?stream=S&subject=s.logs"
        " is unreachable (TimeoutError: no connection within 0.3s); retrying"
    )
    assert "s3cret" not in caplog.text
    # Stopped before it ever connected: the metrics line all the same.
    assert json.loads(stats.getvalue().splitlines()[-1])["enrichlog_worker"]["consumed"] == 0


def test_an_unreachable_broker_is_reported_with_what_the_attempts_met(
    streams: Streams,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Found by the re-test: tls:// against the plain server was reported as
    # "TimeoutError: no connection within 10s", where the producer and dlq
    # said SSLError: the client's own retries hid it.
    monkeypatch.setattr(worker_module, "CONNECT_WAIT", 1.5)
    tls = streams.uri().replace("nats://", "tls://ops:s3cret@")
    worker = Worker(LoggingSettings(transport=tls, output=str(tmp_path / "out.log")))

    message = _unreachable_report(worker, caplog)

    assert re.search(
        r"\(TimeoutError: no connection within [\d.]+s; last error SSLError: ", message
    )
    assert "s3cret" not in caplog.text


# -- SIGTERM while a worker starts ---------------------------------------------------


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "enrichlog", "worker", "--stats-interval", "0", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _stopped_cleanly(process: subprocess.Popen[bytes], log: Path) -> list[str]:
    """SIGTERM, then: exit 0, the final metrics line last; the lines of stderr."""
    process.send_signal(signal.SIGTERM)
    assert 0 == process.wait(30), log.read_text()
    lines = log.read_text().splitlines()
    assert lines, "no output at all"
    assert "Traceback" not in log.read_text()
    assert json.loads(lines[-1])["enrichlog_worker"]["in_flight"] == 0
    return lines


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_sigterm_as_soon_as_the_command_takes_it_stops_the_worker_cleanly(
    streams: Streams, tmp_path: Path
) -> None:
    # Found by an outside tester: SIGTERM in a worker's first second or so
    # (before its "started" line) ended it with status -15 and no metrics
    # line. Sent here the moment the command takes the signal, before its
    # slow part (nats-py, the engine, the connection).
    log = tmp_path / "worker.stderr"
    process = _start(worker_env(streams, tmp_path / "out.log"), log)
    try:
        deadline = time.monotonic() + 30
        while not _catches_sigterm(process.pid):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the worker never took SIGTERM"
            time.sleep(0.001)
        lines = _stopped_cleanly(process, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)

    assert not any('"started"' in line for line in lines)


def test_sigterm_while_the_worker_imports_its_modules_stops_it_cleanly(
    streams: Streams, tmp_path: Path
) -> None:
    # A --import module that takes a while: SIGTERM during it used to kill
    # the process (-15); the worker now starts nothing and exits 0.
    (tmp_path / "slow_plugin.py").write_text(
        "import pathlib, time\n"
        f"pathlib.Path({str(tmp_path / 'importing')!r}).touch()\n"
        "time.sleep(1.5)\n"
    )
    env = worker_env(streams, tmp_path / "out.log")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    log = tmp_path / "worker.stderr"
    process = _start(env, log, "--import", "slow_plugin")
    try:
        wait_until((tmp_path / "importing").exists, 30, "the slow import")
        lines = _stopped_cleanly(process, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)

    assert 1 == len(lines)  # the metrics line only: it never started
    assert [] == lines_of(tmp_path / "out.log")


# -- a broker outage ---------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_back_from_a_broker_outage_holds_at_most_max_in_flight(
    streams: Streams, tmp_path: Path
) -> None:
    # While the connection was down, each fetch (one a second) was kept by
    # the client and sent at reconnection: every one brought up to
    # max_in_flight events, 145 in flight for a max_in_flight of 20 after an
    # 8 s outage.
    js_call(lambda js: js.add_stream(name=streams.stream, subjects=[streams.subject]))
    output, log = tmp_path / "out.log", tmp_path / "worker.stderr"
    with tcp_proxy(NATS_HOST, NATS_PORT) as proxy:
        env = worker_env(streams, output, max_in_flight="20")
        env["ENRICHLOG_TRANSPORT"] = streams.uri(port=proxy.port)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enrichlog",
                "worker",
                "--stats-interval",
                "0.05",
                "--enrichers",
                "tests.scaleout.worker_enrichers:slow",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            wait_until(lambda: '"started"' in log.read_text(), 30, "the worker to start")
            proxy.stop()

            async def publish(js: Any) -> None:
                for index in range(600):
                    body = {"event": "e", "event_id": f"e{index}", "level": "info"}
                    await js.publish(streams.subject, json.dumps(body).encode())

            js_call(publish)  # straight to the server, while the worker is cut off
            time.sleep(6)
            proxy.start()
            wait_until(lambda: len(lines_of(output)) >= 600, 60, "600 lines")
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)

    figures = [
        json.loads(line)["enrichlog_worker"]
        for line in log.read_text().splitlines()
        if line.startswith('{"enrichlog_worker": {')
    ]
    assert 600 == figures[-1]["acknowledged"]
    # At most one fetch beyond it: what the server sent for a fetch the
    # worker had stopped waiting for (docs/scale-out.md).
    assert max(figure["in_flight"] for figure in figures) <= 2 * 20
