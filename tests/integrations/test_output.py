"""Outputs: a sink object with ``write(str)``, and files reopened on SIGHUP."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
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
    # Named by what the sink raised (it read "(OSError)" for any exception).
    assert any(
        "could not write 1 line(s) to <FailingSink> (RuntimeError, raised by the output)"
        in r.getMessage()
        for r in caplog.records
    )


class SinkRaisingOnce:
    """A sink whose ``call``-th write raises ``error`` (a Ctrl-C landing in
    its write looks the same), then works again."""

    def __init__(self, error: type[BaseException], call: int = 2) -> None:
        self.error, self.call = error, call
        self.attempts = 0
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.attempts += 1
        if self.attempts == self.call:
            raise self.error()
        self.lines.append(json.loads(text)["event"])


class FlushInterruptedOnce(io.BytesIO):
    """A binary stream whose first flush is interrupted, as a SIGINT landing
    in a file's flush interrupts it."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = False

    def flush(self) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().flush()


@pytest.mark.parametrize("error", [GeneratorExit, BaseException])
def test_a_sink_raising_a_base_exception_is_a_failed_write_and_logging_goes_on(
    error: type[BaseException],
) -> None:
    sink = SinkRaisingOnce(error)
    container = configure_logging(output=sink)
    for name in ("a", "b", "c", "d"):
        get_logger().info(name)

    assert (["a", "c", "d"], 3, 1) == (
        sink.lines,
        container.metrics()["written"],
        container.metrics()["write_failed"],
    )


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_in_the_output_reaches_the_caller_and_logging_goes_on(
    error: type[BaseException],
) -> None:
    # On the main thread, where signal handlers run, an interrupt raised in
    # the output's write is the application's: it is raised again, and the
    # writer is not left marked as writing (it kept every later line for good).
    sink = SinkRaisingOnce(error)
    container = configure_logging(output=sink)
    get_logger().info("a")
    with pytest.raises(error):
        get_logger().info("b")
    for name in ("c", "d"):
        get_logger().info(name)

    assert (["a", "c", "d"], 3, 1, True) == (
        sink.lines,
        container.metrics()["written"],
        container.metrics()["write_failed"],
        container.flush(5),
    )


def test_an_interrupted_flush_counts_its_line_as_written() -> None:
    stream = FlushInterruptedOnce()
    container = configure_logging(output=stream)
    with pytest.raises(KeyboardInterrupt):
        get_logger().info("interrupted")
    get_logger().info("after")

    assert (["interrupted", "after"], 2, 0) == (
        [json.loads(line)["event"] for line in stream.getvalue().splitlines()],
        container.metrics()["written"],
        container.metrics()["write_failed"],
    )


def test_an_interrupt_raised_by_a_sink_on_the_runtime_thread_is_a_failed_write() -> None:
    # No signal handler runs there: the sink raised it itself, and the
    # runtime goes on writing.
    async def handed_off(_logger: Any, _method: str, event_dict: Any) -> Any:
        return event_dict  # awaits: the runtime writes the line

    sink = SinkRaisingOnce(KeyboardInterrupt)
    container = configure_logging(output=sink, delivery="background", enrichers=[handed_off])
    for name in ("a", "b", "c", "d"):
        get_logger().info(name, user_id=1)
    container.flush(5)

    assert (3, 1) == (container.metrics()["written"], container.metrics()["write_failed"])
    assert 3 == len(sink.lines)


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


# -- lines written together ---------------------------------------------------------


class CountingStream(io.BytesIO):
    """A binary stream that records each write call."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[bytes] = []
        self.fail = fail

    def write(self, data: Any) -> int:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.calls.append(bytes(data))
        return super().write(data)


def gathering_writer(stream: CountingStream, limit: int = 65536) -> output_module.LineWriter:
    writer = output_module.LineWriter(stream, target="counting", owns=False)
    writer.gather_limit = limit
    return writer


def test_gathered_lines_leave_in_one_write_call_in_order() -> None:
    stream = CountingStream()
    writer = gathering_writer(stream)

    assert writer.gather()
    for n in range(5):
        writer.msg(f"line {n}".encode())
    assert [] == stream.calls  # nothing written before write_gathered
    writer.write_gathered()

    assert [b"line 0\nline 1\nline 2\nline 3\nline 4\n"] == stream.calls
    assert 5 == writer.written
    writer.msg(b"after")  # and plain writes again
    assert b"after\n" == stream.calls[-1]


def test_no_gathered_write_call_exceeds_the_limit() -> None:
    stream = CountingStream()
    writer = gathering_writer(stream, limit=100)
    lines = [(f"{n:02d}" + "x" * 30).encode() for n in range(10)]  # 33 bytes with newline

    assert writer.gather()
    for line in lines:
        writer.msg(line)
    writer.write_gathered()

    assert all(len(call) <= 100 for call in stream.calls)
    assert 4 == len(stream.calls)  # 3 lines (99 bytes) per call
    assert b"".join(line + b"\n" for line in lines) == b"".join(stream.calls)
    assert 10 == writer.written


def test_a_failed_gathered_write_counts_every_line_and_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = gathering_writer(CountingStream(fail=True))

    assert writer.gather()
    for n in range(3):
        writer.msg(f"line {n}".encode())
    writer.write_gathered()

    assert (0, 3) == (writer.written, writer.write_failed)
    reports = [r.getMessage() for r in caplog.records if "could not write" in r.getMessage()]
    expected = "enrichlog could not write 3 line(s) to counting (OSError: No space left on device)"
    assert [expected] == reports


def test_another_threads_line_waits_behind_the_gathered_lines() -> None:
    stream = CountingStream()
    writer = gathering_writer(stream)
    assert writer.gather()
    writer.msg(b"first")
    other = threading.Thread(target=writer.msg, args=(b"from another thread",))
    other.start()
    other.join(0.2)
    assert other.is_alive()  # waits for the lock the gathering thread holds
    writer.msg(b"second")
    writer.write_gathered()
    other.join(5)

    assert [b"first\nsecond\n", b"from another thread\n"] == stream.calls


def test_a_sink_never_gathers() -> None:
    assert not open_output(ListSink()).gather()
    assert not open_output(io.BytesIO()).gather()


def test_files_gather_and_standard_output_keeps_each_write_atomic_in_a_pipe(
    tmp_path: Path,
) -> None:
    file_writer = open_output(str(tmp_path / "out.log"))
    try:
        assert 65536 == file_writer.gather_limit
        assert output_module._PIPE_BUF == open_output("stdout").gather_limit
    finally:
        file_writer.close()


def test_a_batch_of_finished_events_is_written_with_few_calls_and_none_lost(
    tmp_path: Path,
) -> None:
    from tests.e2e.test_batching import Users

    log_file = tmp_path / "out.log"
    users = Users(known={i: f"user-{i}" for i in range(300)}, batch_window=0.2)
    container = configure_logging(enrichers=[users], output=str(log_file), delivery="background")
    lines_writer = container._lines  # the writer structlog's loggers hold
    write = lines_writer._write
    calls: list[bytes] = []

    def counting(data: bytes) -> int:
        calls.append(data)
        return write(data)

    lines_writer._write = counting
    log = get_logger()
    for user_id in range(300):
        log.info("request", user_id=user_id)
    container.shutdown()

    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [f"user-{i}" for i in range(300)] == [line["user"] for line in lines]
    assert 300 == sum(call.count(b"\n") for call in calls)
    assert len(calls) < 30  # 300 lines ready together: a few calls, not 300


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_wrapped_logger_raising_an_interrupt_on_the_runtime_thread_does_not_stop_it() -> None:
    # A chain in the application's own structlog configuration, its logger
    # raising KeyboardInterrupt once on the runtime's thread (where no signal
    # handler runs): that line is not written, the runtime goes on.
    import structlog

    from enrichlog.container import build_processor_chain
    from enrichlog.engine.processor import AsyncEnricherProcessor

    async def handed_off(_logger: Any, _method: str, event_dict: Any) -> Any:
        return event_dict

    class RaisingOnce:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.calls = 0

        def info(self, line: str) -> None:
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            self.lines.append(line)

    chain = build_processor_chain(LoggingSettings(delivery="background"), [handed_off])
    processor = next(p for p in chain if isinstance(p, AsyncEnricherProcessor))
    processor.startup()
    logger = RaisingOnce()
    log = structlog.wrap_logger(logger, processors=chain)
    for i in range(4):
        log.info("e", i=i)
    started = time.monotonic()
    report = processor.shutdown()

    assert (3, 4, 0) == (len(logger.lines), logger.calls, report["pending"])
    assert time.monotonic() - started < 5  # the runtime answered its shutdown


class FillingDisk(io.RawIOBase):
    """A stream with room for ``room`` bytes: a write takes what fits (as
    write(2) on a full disk does), the next one raises ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if not self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = bytes(b[: self.room])
        self.room -= len(taken)
        self.data += taken
        return len(taken)


def _whole_lines(data: bytes) -> list[int]:
    numbers = []
    for line in data.split(b"\n"):
        with contextlib.suppress(ValueError):
            numbers.append(json.loads(line)["i"])
    return numbers


def test_a_disk_that_fills_up_cuts_one_line_and_the_counts_match_the_file() -> None:
    # Found by an outside tester: after a full disk, bytes of failed writes
    # stayed in the file's buffer and reached the file (or the next one,
    # after a rotation) later, torn, though counted as not written.
    disk = FillingDisk(room=1_000)
    container = configure_logging(output=disk, delivery="inline")
    log = get_logger()
    for i in range(20):
        log.info("e", i=i, pad="z" * 40)
    disk.room = 10_000  # space freed
    for i in range(20, 30):
        log.info("e", i=i)
    report = container.shutdown()

    whole = _whole_lines(bytes(disk.data))
    cut = [line for line in bytes(disk.data).split(b"\n") if line and not line.endswith(b"}")]
    assert whole == sorted(whole)
    assert (report["written"], report["write_failed"]) == (len(whole), 30 - len(whole))
    assert list(range(20, 30)) == whole[-10:]
    assert 1 == len(cut)  # the line the disk cut, ended so that the next one is whole


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (needs root; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_full_file_system_then_rotation_leaves_whole_lines_counted_right(
    small_disk: Path, delivery: str
) -> None:
    path = small_disk / "app.log"
    container = configure_logging(output=str(path), delivery=delivery)
    log = get_logger()
    for i in range(1_000):  # about 150 KB into 64 KiB
        log.info("e", i=i, pad="z" * 100)
    container.flush(10)
    rotated = path.read_bytes()
    path.unlink()  # logrotate moves it away and frees the space
    reopen_files()
    for i in range(1_000, 1_100):
        log.info("e", i=i)
    report = container.shutdown()

    fresh = path.read_bytes()
    assert list(range(1_000, 1_100)) == _whole_lines(fresh)
    assert fresh.startswith(b'{"i":1000')  # no fragment of the old file's last line
    assert report["written"] == len(_whole_lines(rotated)) + 100
    assert report["written"] + report["write_failed"] == 1_100


def test_a_relative_output_reopens_where_it_was_opened_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by an outside tester: after os.chdir(), a rotation moved the lines
    # to a file of that name in the new working directory.
    (tmp_path / "first").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    container = configure_logging(output="app.log", delivery="inline")
    get_logger().info("before")
    monkeypatch.chdir(tmp_path / "later")
    (tmp_path / "first" / "app.log").rename(tmp_path / "first" / "app.log.1")
    reopen_files()
    get_logger().info("after")
    container.shutdown()

    assert ["after"] == [ln["event"] for ln in read_lines(tmp_path / "first" / "app.log")]
    assert not (tmp_path / "later" / "app.log").exists()


def test_a_process_without_standard_output_counts_its_lines_as_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by an outside tester: `python app.py >&-` (sys.stdout is None)
    # made configure_logging() raise AttributeError.
    monkeypatch.setattr(sys, "stdout", None)
    container = configure_logging(output="stdout", delivery="inline")
    for _ in range(5):
        get_logger().info("nowhere")
    report = container.shutdown()

    assert (0, 5) == (report["written"], report["write_failed"])


def test_a_text_only_standard_output_gets_non_ascii_lines_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A text stream answers a write in characters, not bytes: read as a write
    # cut short, the rest of the line would have been written again.
    text = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text)
    container = configure_logging(output="stdout", delivery="inline")
    get_logger().info("café ☃")
    container.shutdown()

    assert ["café ☃"] == [json.loads(line)["event"] for line in text.getvalue().splitlines()]
