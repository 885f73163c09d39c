"""Outputs: a sink object with ``write(str)``, and files reopened on SIGHUP."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enrichlog import EnricherConfigError, LoggingSettings, get_logger
from enrichlog.container import configure_logging
from enrichlog.engine import output as output_module
from enrichlog.engine.output import open_output, reopen_files
from enrichlog.settings import resolve_settings
from tests.helpers import read_lines

needs_sighup = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")


class ListSink:
    """A custom sink: one call per line."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> None:
        self.calls.append(text)


class FailingSink:
    def __init__(self) -> None:
        self.attempts = 0

    def write(self, text: str) -> None:
        self.attempts += 1
        raise RuntimeError("the collector is down")


def test_a_sink_gets_each_line_in_one_write() -> None:
    sink = ListSink()
    configure_logging(output=sink)
    get_logger().info("one", n=1)
    get_logger().info("two", n=2)

    assert [("one", 1), ("two", 2)] == [
        (json.loads(call)["event"], json.loads(call)["n"]) for call in sink.calls
    ]
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in sink.calls)


def test_a_text_stream_and_a_binary_stream_are_sinks_too() -> None:
    text, binary = io.StringIO(), io.BytesIO()
    configure_logging(output=text)
    get_logger().info("to text")
    configure_logging(output=binary)
    get_logger().info("to bytes")

    assert "to text" == json.loads(text.getvalue())["event"]
    assert "to bytes" == json.loads(binary.getvalue())["event"]


def test_a_failing_sink_never_raises_into_the_log_call(caplog: pytest.LogCaptureFixture) -> None:
    sink = FailingSink()
    container = configure_logging(output=sink)
    get_logger().info("lost")
    get_logger().info("lost too")

    assert 2 == sink.attempts  # not given up on: a sink may recover
    assert 2 == container.metrics()["write_failed"]
    assert any(
        "could not write 1 line(s) to <FailingSink>" in r.getMessage() for r in caplog.records
    )


def test_a_sink_survives_resolving_the_settings() -> None:
    sink = io.StringIO()  # an iterator: pydantic would dump it as one
    settings = resolve_settings(LoggingSettings(output=sink), {"level": "debug"})

    assert settings.output is sink
    assert '"output":"<StringIO>"' in settings.model_dump_json()


def test_an_object_without_write_is_refused_naming_its_type() -> None:
    with pytest.raises(EnricherConfigError, match="output: a int cannot be an output"):
        configure_logging(output=42)


@pytest.fixture
def sighup_restored() -> Iterator[None]:
    """SIGHUP's handler and the module's record of the previous one, as before."""
    before = signal.getsignal(signal.SIGHUP)
    previous = output_module._previous_sighup
    yield
    signal.signal(signal.SIGHUP, before)
    output_module._previous_sighup = previous


@needs_sighup
@pytest.mark.usefixtures("sighup_restored")
def test_a_file_output_reopens_its_path_on_sighup(tmp_path: Path) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    path = tmp_path / "app.log"
    rotated = tmp_path / "app.log.1"
    container = configure_logging(output=str(path))
    get_logger().info("before rotation")
    path.rename(rotated)  # what logrotate does
    os.kill(os.getpid(), signal.SIGHUP)
    get_logger().info("after rotation")
    container.shutdown()

    assert ["before rotation"] == [line["event"] for line in read_lines(rotated)]
    assert ["after rotation"] == [line["event"] for line in read_lines(path)]


@needs_sighup
@pytest.mark.usefixtures("sighup_restored")
def test_sighup_chains_to_the_handler_the_application_had(tmp_path: Path) -> None:
    received: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: received.append(signum))
    path = tmp_path / "app.log"
    configure_logging(output=str(path))
    path.rename(tmp_path / "moved.log")
    os.kill(os.getpid(), signal.SIGHUP)
    get_logger().info("reopened")

    assert [signal.SIGHUP] == received
    assert ["reopened"] == [line["event"] for line in read_lines(path)]


@needs_sighup
@pytest.mark.usefixtures("sighup_restored")
def test_no_handler_is_installed_off_the_main_thread(tmp_path: Path) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    writers: list[Any] = []
    thread = threading.Thread(target=lambda: writers.append(open_output(str(tmp_path / "x.log"))))
    thread.start()
    thread.join()
    try:
        assert signal.SIG_DFL == signal.getsignal(signal.SIGHUP)
        path = tmp_path / "x.log"
        path.rename(tmp_path / "x.log.1")
        assert reopen_files() >= 1  # what the application's own handler would call
        writers[0].msg(b"line")
        assert "line\n" == path.read_text()
    finally:
        writers[0].close()


def test_reopen_never_raises_when_the_path_is_gone(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    writer = open_output(str(directory / "a.log"))
    (directory / "a.log").unlink()
    directory.rmdir()
    try:
        assert writer.reopen() is False
        writer.msg(b"still no exception")  # the old file, unlinked
    finally:
        writer.close()
    assert writer.reopen() is False  # closed
